"""The run folder: everything needed to use and reproduce a trained model, and nothing pickled.

RUN/fakescope.json      model spec, calibrated thresholds, face framing, training config, data
                        sources and their fingerprints, library versions (schema: ``RunMeta``)
RUN/model.safetensors   weights
RUN/split.csv           the split used (path,label,split; ``source`` column with several sources)
RUN/log.csv, RUN/tb/    per-epoch training log (CSV and TensorBoard)
RUN/resume/             state for resuming an interrupted run (safetensors + JSON)

This module is the only one that reads or writes ``fakescope.json``; everything else goes
through ``RunMeta``'s typed accessors.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import DEFAULT_FACE_MARGIN, TrainConfig
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import FakescopeError
from .model.detector import Detector

META = "fakescope.json"
WEIGHTS = "model.safetensors"
# 1: session 1-4 runs (data root stored as typed, no precision); 2: absolute data roots, a list
# of sources, precision stored with the model spec
FORMAT = 2


def versions() -> dict:
    import numpy
    import sklearn
    import torchvision

    from . import __version__

    return {
        "fakescope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def write_json(path: Path, obj) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)  # atomic: an interrupted write never leaves half a file


def save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = Path(str(path) + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


@dataclass(frozen=True)
class ModelSpec:
    """What a scorer needs to know to turn an image into the network's input and its output
    into a score; stored in the run and shared by training, scoring and Grad-CAM."""

    backbone: str
    head: str
    input_size: int
    fit: str = "resize"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    tta: bool = False  # average each image's logit with its mirror image's
    precision: str = "auto"  # "auto" (autocast where fast) or "fp32"

    @classmethod
    def of_config(cls, cfg: TrainConfig) -> ModelSpec:
        return cls(
            cfg.backbone, cfg.head, cfg.input_size, cfg.fit, tta=cfg.tta, precision=cfg.precision
        )


@dataclass
class RunMeta:
    """The parsed ``fakescope.json``. Unknown keys are kept as they are (``extra``)."""

    spec: ModelSpec
    threshold: float
    thresholds: dict  # youden, f1, kde_intersection, criterion, computed_on, n_val, ...
    faces: dict  # mode, margin, margin_source
    train: dict  # TrainConfig as a dict
    sources: list[dict]  # per data source: root (absolute), name, sha256, counts, split_origin
    format: int = FORMAT
    extra: dict = field(default_factory=dict)

    @property
    def face_mode(self) -> str:
        return self.faces.get("mode", "never")

    @property
    def face_margin(self) -> float:
        return float(self.faces.get("margin", DEFAULT_FACE_MARGIN))

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train)

    def to_json(self) -> dict:
        s = self.spec
        model = {
            "backbone": s.backbone,
            "head": s.head,
            "input_size": s.input_size,
            "fit": s.fit,
            "mean": list(s.mean),
            "std": list(s.std),
            "tta": "hflip" if s.tta else "none",
            "precision": s.precision,
            **self.extra.get("model", {}),
        }
        threshold = {**self.thresholds, "value": self.threshold}
        rest = {k: v for k, v in self.extra.items() if k != "model"}
        return {
            "format": self.format,
            "model": model,
            "threshold": threshold,
            "faces": self.faces,
            "train": self.train,
            "data": {"sources": self.sources},
            **rest,
        }

    @classmethod
    def from_json(cls, d: dict, where: str = "fakescope.json") -> RunMeta:
        fmt = d.get("format")
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise FakescopeError(f"{where}: format {fmt!r} is not a fakescope run format")
        if fmt > FORMAT:
            raise FakescopeError(
                f"{where}: written by a newer fakescope (run format {fmt}; this version reads "
                f"formats 1-{FORMAT}); upgrade fakescope to use this run"
            )
        try:
            m, t = d["model"], d["threshold"]
            train = d.get("train", {})
            spec = ModelSpec(
                m["backbone"],
                m["head"],
                int(m["input_size"]),
                m.get("fit", "resize"),
                tuple(m.get("mean", IMAGENET_MEAN)),
                tuple(m.get("std", IMAGENET_STD)),
                m.get("tta", "none") == "hflip",
                m.get("precision", train.get("precision", "auto")),
            )
            value = float(t["value"])
        except (KeyError, TypeError, ValueError) as e:
            raise FakescopeError(f"{where}: missing or malformed field ({e})") from None
        data = d.get("data", {})
        sources = data["sources"] if fmt >= 2 else [_source_of_format1(data)]
        known = {"format", "model", "threshold", "faces", "train", "data"}
        spec_keys = {"backbone", "head", "input_size", "fit", "mean", "std", "tta", "precision"}
        extra = {k: v for k, v in d.items() if k not in known}
        extra["model"] = {k: v for k, v in m.items() if k not in spec_keys}
        return cls(
            spec,
            value,
            {k: v for k, v in t.items() if k != "value"},
            d.get("faces", {}),
            train,
            sources,
            FORMAT,
            extra,
        )


def _source_of_format1(data: dict) -> dict:
    """Format 1 stored the data root as typed on the command line, relative to wherever
    training ran: it cannot be made absolute after the fact, so it is kept as a hint and the
    fingerprint decides whether evaluation sees the same data."""
    root = data.get("root", "")
    return {
        "root": root if Path(root).is_absolute() else None,
        "root_as_given": root,
        "name": Path(root).name,
        "sha256": data.get("sha256"),
        "counts": data.get("counts", {}),
        "split_origin": data.get("split_origin"),
    }


def new_meta(cfg: TrainConfig, thresholds: dict, faces: dict, sources: list[dict], **extra):
    """The metadata of a run that training has just finished."""
    return RunMeta(
        ModelSpec.of_config(cfg),
        float(thresholds["youden"]),
        {"criterion": "youden", **thresholds, "computed_on": "val"},
        faces,
        cfg.to_dict(),
        sources,
        FORMAT,
        {
            **extra,
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def write_meta(out: Path, meta: RunMeta) -> None:
    write_json(Path(out) / META, meta.to_json())


def read_meta(path: str | Path) -> RunMeta:
    f = Path(path) / META
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise FakescopeError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise FakescopeError(f"{f}: not a fakescope run description")
    return RunMeta.from_json(d, str(f))


@dataclass
class Run:
    path: Path
    meta: RunMeta
    model: Detector = field(repr=False)

    # the accessors callers use most, so that they need not know the schema
    @property
    def spec(self) -> ModelSpec:
        return self.meta.spec

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def input_size(self) -> int:
        return self.meta.spec.input_size

    @property
    def fit(self) -> str:
        return self.meta.spec.fit

    @property
    def tta(self) -> bool:
        return self.meta.spec.tta

    @property
    def mean(self):
        return self.meta.spec.mean

    @property
    def std(self):
        return self.meta.spec.std

    @property
    def split_file(self) -> Path:
        return self.path / "split.csv"


def load_run(path: str | Path) -> Run:
    path = Path(path)
    meta_file, weights_file = path / META, path / WEIGHTS
    if not meta_file.exists() or not weights_file.exists():
        raise FakescopeError(
            f"{path}: not a fakescope run folder (expected {META} and {WEIGHTS}; "
            "make one with `fakescope train`)"
        )
    meta = read_meta(path)
    s = meta.spec
    model = Detector(s.backbone, s.head, s.input_size, weights="none")
    model.load_state_dict(load_file(str(weights_file)))
    model.eval()
    return Run(path, meta, model)


# ------------------------------------------------------------------ resumable training state


def save_resume(folder: Path, model, optimizer, state: dict) -> None:
    """Model + Adam state as safetensors, counters as JSON (optimizer state flattened by hand
    because safetensors holds only tensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"opt.{pid}.{k}"] = t.detach().contiguous().cpu()
    save_file(tensors, str(folder / "state.safetensors.tmp"))
    (folder / "state.safetensors.tmp").replace(folder / "state.safetensors")
    write_json(folder / "state.json", {**state, "param_groups": opt["param_groups"]})


def read_resume_state(folder: Path) -> dict | None:
    f = Path(folder) / "state.json"
    if not f.exists() or not (Path(folder) / "state.safetensors").exists():
        return None
    state = json.loads(f.read_text())
    state.pop("param_groups", None)
    return state


def load_resume(folder: Path, model, optimizer=None) -> None:
    """Restore the model (and, when given, the optimizer) saved by ``save_resume``."""
    tensors = load_file(str(Path(folder) / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is None:
        return
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    groups = json.loads((Path(folder) / "state.json").read_text())["param_groups"]
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})

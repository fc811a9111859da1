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

import hashlib
import json
import math
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import DEFAULT_FACE_MARGIN, FUSIONS, TrainConfig, choices
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import FakescopeError
from .faults import crash_point
from .model.detector import Detector, is_supported

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
    heads: tuple[str, ...] = ()  # per-source output units (model/detector.py); () = one unit
    # an ensemble (model/ensemble.py; backbone "ensemble", head: the fusion, "max" or "mean"):
    # each member's network (backbone, head, heads; the input fields above are shared) and the
    # logit of its threshold
    members: tuple[ModelSpec, ...] = ()
    offsets: tuple[float, ...] = ()

    @classmethod
    def of_config(cls, cfg: TrainConfig, heads: tuple[str, ...] = ()) -> ModelSpec:
        return cls(
            cfg.backbone,
            cfg.head,
            cfg.input_size,
            cfg.fit,
            tta=cfg.tta,
            precision=cfg.precision,
            heads=tuple(heads),
        )

    def detector(self) -> Detector:
        """An untrained network of this shape, for weights to be loaded into."""
        if self.members:
            from .model.ensemble import Ensemble

            return Ensemble([m.detector() for m in self.members], list(self.offsets), self.head)
        return Detector(self.backbone, self.head, self.input_size, "none", self.heads)


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
    weights_sha256: str | None = None  # of model.safetensors; runs before session 6 have none

    @property
    def face_mode(self) -> str:
        return self.faces.get("mode", "never")

    @property
    def face_margin(self) -> float:
        return float(self.faces.get("margin", DEFAULT_FACE_MARGIN))

    @property
    def config(self) -> TrainConfig:
        try:
            return TrainConfig.from_dict(self.train)
        except (TypeError, ValueError) as e:
            raise FakescopeError(f"{META}: train: not a training configuration ({e})") from None

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
            **({"heads": list(s.heads)} if s.heads else {}),
            **(
                {"members": [_member_json(m) for m in s.members], "offsets": list(s.offsets)}
                if s.members
                else {}
            ),
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
            **({"weights": {"file": WEIGHTS, "sha256": self.weights_sha256}}
               if self.weights_sha256 else {}),
            **rest,
        }  # fmt: skip

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
        m, t = _section(d, "model", where), _section(d, "threshold", where)
        train = d.get("train", {})
        if not isinstance(train, dict):
            raise FakescopeError(f"{where}: train: expected an object, found {train!r:.60}")
        spec = _spec(m, train, where)
        value = _number(t, "value", "threshold.value", where)
        if not 0.0 <= value <= 1.0:
            raise FakescopeError(
                f"{where}: threshold.value: {value} is not a probability (must be in 0..1)"
            )
        faces = d.get("faces", {})
        if not isinstance(faces, dict):
            raise FakescopeError(f"{where}: faces: expected an object, found {faces!r:.60}")
        if faces.get("mode", "never") not in FACE_MODES:
            raise FakescopeError(
                f"{where}: faces.mode: {faces['mode']!r:.40} is not one of {', '.join(FACE_MODES)}"
            )
        if "margin" in faces and not _number(faces, "margin", "faces.margin", where) > 0:
            raise FakescopeError(f"{where}: faces.margin: must be positive")
        weights = d.get("weights", {})
        sha = weights.get("sha256") if isinstance(weights, dict) else None
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise FakescopeError(f"{where}: weights.sha256: {sha!r:.80} is not a SHA-256 digest")
        data = d.get("data", {})
        if not isinstance(data, dict) or (
            fmt >= 2
            and not (
                isinstance(data.get("sources"), list)
                and all(isinstance(x, dict) for x in data["sources"])
            )
        ):
            raise FakescopeError(f"{where}: data.sources: expected a list of data sources")
        sources = data["sources"] if fmt >= 2 else [_source_of_format1(data, where)]
        known = {"format", "model", "threshold", "faces", "train", "data", "weights"}
        spec_keys = {"backbone", "head", "input_size", "fit", "mean", "std", "tta", "precision",
                     "heads", "members", "offsets"}  # fmt: skip
        extra = {k: v for k, v in d.items() if k not in known}
        extra["model"] = {k: v for k, v in m.items() if k not in spec_keys}
        return cls(
            spec,
            value,
            {k: v for k, v in t.items() if k != "value"},
            faces,
            train,
            sources,
            FORMAT,
            extra,
            sha,
        )


FACE_MODES = choices("faces")
CHOICES = {**{k: choices(k) for k in ("head", "fit", "precision")}, "tta": ("none", "hflip")}


def _section(d: dict, name: str, where: str) -> dict:
    v = d.get(name)
    if not isinstance(v, dict):
        raise FakescopeError(f"{where}: {name}: " + ("missing" if v is None else "not an object"))
    return v


def _number(d: dict, key: str, name: str, where: str) -> float:
    v = d.get(key)
    if v is None:
        raise FakescopeError(f"{where}: {name}: missing")
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise FakescopeError(f"{where}: {name}: {v!r:.40} is not a number")
    return float(v)


def _spec(m: dict, train: dict, where: str) -> ModelSpec:
    """The model section, every field checked: a tampered run fails here with one line instead
    of deep inside torch (or, worse, scoring with nonsense)."""
    if "members" in m:
        return _ensemble_spec(m, train, where)
    backbone = m.get("backbone")
    if backbone is None:
        raise FakescopeError(f"{where}: model.backbone: missing")
    if not isinstance(backbone, str) or not is_supported(backbone):
        raise FakescopeError(f"{where}: model.backbone: {backbone!r:.40} is not a known backbone")
    size = m.get("input_size")
    if size is None:
        raise FakescopeError(f"{where}: model.input_size: missing")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
        raise FakescopeError(f"{where}: model.input_size: {size!r:.40} is not a size in 16..4096")
    picked = {}
    for key, allowed in CHOICES.items():
        default = {"head": None, "fit": "resize", "tta": "none"}.get(key)
        if key == "precision":
            default = train.get("precision", "auto")
        v = m.get(key, default)
        if v not in allowed:
            state = "missing" if v is None else f"{v!r:.40} is not one of {', '.join(allowed)}"
            raise FakescopeError(f"{where}: model.{key}: {state}")
        picked[key] = v
    norm = {}
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        v = m.get(key, list(default))
        ok = isinstance(v, list | tuple) and len(v) == 3
        ok = ok and all(not isinstance(x, bool) and isinstance(x, int | float) for x in v)
        ok = ok and all(math.isfinite(x) and (key == "mean" or x > 0) for x in v)
        if not ok:
            want = "three finite numbers" + (" above 0" if key == "std" else "")
            raise FakescopeError(f"{where}: model.{key}: {v!r:.60} is not {want}")
        norm[key] = tuple(float(x) for x in v)
    heads = m.get("heads", [])
    if not (
        isinstance(heads, list)
        and len(heads) <= 64
        and all(isinstance(h, str) and 0 < len(h) <= 200 for h in heads)
    ):
        raise FakescopeError(f"{where}: model.heads: {heads!r:.60} is not a list of source names")
    return ModelSpec(backbone, picked["head"], size, picked["fit"], norm["mean"], norm["std"],
                     picked["tta"] == "hflip", picked["precision"], tuple(heads))  # fmt: skip


def _member_json(m: ModelSpec) -> dict:
    return {"backbone": m.backbone, "head": m.head, **({"heads": list(m.heads)} if m.heads else {})}


def _ensemble_spec(m: dict, train: dict, where: str) -> ModelSpec:
    """An ensemble's model section: the shared input fields as for one network, then each
    member checked like one (backbone, head, heads) and one finite offset per member."""
    if m.get("backbone") != "ensemble" or m.get("head") not in FUSIONS:
        raise FakescopeError(
            f"{where}: model: members need backbone 'ensemble' and head 'max' or 'mean'"
        )
    members, offsets = m["members"], m.get("offsets")
    if not (isinstance(members, list) and 2 <= len(members) <= 16):
        raise FakescopeError(f"{where}: model.members: {members!r:.60} is not 2-16 networks")
    if not (
        isinstance(offsets, list)
        and len(offsets) == len(members)
        and all(not isinstance(o, bool) and isinstance(o, int | float) for o in offsets)
        and all(math.isfinite(o) for o in offsets)
    ):
        raise FakescopeError(
            f"{where}: model.offsets: {offsets!r:.60} is not one number per member"
        )
    shared = {k: v for k, v in m.items() if k not in ("members", "offsets", "backbone", "head")}
    specs = []
    for i, mem in enumerate(members):
        if not isinstance(mem, dict) or "members" in mem:
            raise FakescopeError(f"{where}: model.members[{i}]: not a network description")
        specs.append(_spec({**shared, **mem}, train, f"{where}: model.members[{i}]"))
    first = specs[0]
    return ModelSpec("ensemble", m["head"], first.input_size, first.fit, first.mean, first.std,
                     first.tta, first.precision, (), tuple(specs),
                     tuple(float(o) for o in offsets))  # fmt: skip


def _source_of_format1(data: dict, where: str) -> dict:
    """Format 1 stored the data root as typed on the command line, relative to wherever
    training ran: it cannot be made absolute after the fact, so it is kept as a hint and the
    fingerprint decides whether evaluation sees the same data."""
    root = data.get("root", "")
    if not isinstance(root, str):
        raise FakescopeError(f"{where}: data.root: {root!r:.40} is not a folder name")
    return {
        "root": root if Path(root).is_absolute() else None,
        "root_as_given": root,
        "name": Path(root).name,
        "sha256": data.get("sha256"),
        "counts": data.get("counts", {}),
        "split_origin": data.get("split_origin"),
    }


def new_meta(cfg: TrainConfig, thresholds: dict, faces: dict, sources: list[dict],
             heads: tuple[str, ...] = (), **extra):  # fmt: skip
    """The metadata of a run that training has just finished."""
    return RunMeta(
        ModelSpec.of_config(cfg, heads),
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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_meta(out: Path, meta: RunMeta) -> None:
    """Write ``fakescope.json`` after the weights, with their checksum (verified on load)."""
    if (Path(out) / WEIGHTS).exists():
        meta.weights_sha256 = sha256_of(Path(out) / WEIGHTS)
    write_json(Path(out) / META, meta.to_json())


def read_meta(path: str | Path) -> RunMeta:
    f = Path(path) / META
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise FakescopeError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise FakescopeError(f"{f}: not valid JSON ({str(e)[:200]})") from None
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


def read_weights(weights_file: Path, meta: RunMeta, want: dict) -> dict:
    """The run's weights, checked before use: the checksum in the JSON, a readable safetensors
    file (never a pickle), and every tensor the model ``want``s, each of its shape."""
    if meta.weights_sha256 and sha256_of(weights_file) != meta.weights_sha256:
        raise FakescopeError(
            f"{weights_file}: checksum does not match the one in {META} (the weights were "
            "changed or damaged after training)"
        )
    try:
        # safetensors never unpickles: a pickle renamed .safetensors is refused, not run
        state = load_file(str(weights_file))
    except Exception as e:  # SafetensorError, OSError: the message says which
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise FakescopeError(
            f"{weights_file}: not a readable safetensors file ({type(e).__name__}: {reason})"
        ) from None
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shaped = [k for k in want if k in state and state[k].shape != want[k].shape]
    typed = [k for k in want if k in state and state[k].dtype != want[k].dtype]
    if missing or unexpected or shaped or typed:
        parts = [f"{len(v)} {what} such as {v[0]!r}" for v, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (shaped, "of another shape"),
                  (typed, "of another type")) if v]  # fmt: skip
        s = meta.spec
        raise FakescopeError(
            f"{weights_file}: weights do not fit {s.backbone}/{s.head} at {s.input_size}px "
            f"({', '.join(parts)})"
        )
    return state


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
    model = s.detector()
    model.load_state_dict(read_weights(weights_file, meta, model.state_dict()))
    model.eval()
    return Run(path, meta, model)


# ------------------------------------------------------------------ resumable training state


def save_resume(folder: Path, model, optimizer, state: dict) -> None:
    """Model + Adam state as safetensors, counters as JSON (optimizer state flattened by hand
    because safetensors holds only tensors).

    ``state.json`` is the commit: it names the tensor file it belongs to, which is written first
    under a new name, so a kill at any instant leaves the previous commit whole or the new one.
    Files no commit names any more are removed afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"opt.{pid}.{k}"] = t.detach().contiguous().cpu()
    # a new name for every save (a checkpoint inside an epoch has its batch in it): the file
    # the committed state.json names is never overwritten
    where = f"{state['step']}-{state['epoch']}-{state['global']}-{state.get('batch', 0)}"
    name = f"state-{where}.safetensors"
    save_file(tensors, str(folder / (name + ".tmp")))
    (folder / (name + ".tmp")).replace(folder / name)
    crash_point("state")
    write_json(
        folder / "state.json", {**state, "tensors": name, "param_groups": opt["param_groups"]}
    )
    crash_point("commit")
    keep = {name, state.get("best_file")}
    for f in folder.glob("*.safetensors*"):
        if f.name not in keep and f.name.startswith(("state", "best")):
            f.unlink(missing_ok=True)


def _committed(folder: Path) -> tuple[dict, Path] | None:
    f = Path(folder) / "state.json"
    if not f.exists():
        return None
    try:
        state = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise FakescopeError(f"{f}: not valid JSON ({e})") from None
    # runs before session 6 kept one tensor file under a fixed name
    tensors = Path(folder) / state.get("tensors", "state.safetensors")
    return (state, tensors) if tensors.exists() else None


def read_resume_state(folder: Path) -> dict | None:
    got = _committed(folder)
    if got is None:
        return None
    state = dict(got[0])
    for k in ("param_groups", "tensors"):
        state.pop(k, None)
    return state


def load_resume(folder: Path, model, optimizer=None) -> None:
    """Restore the model (and, when given, the optimizer) saved by ``save_resume``."""
    state, path = _committed(folder)
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is None:
        return
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    groups = state["param_groups"]
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})

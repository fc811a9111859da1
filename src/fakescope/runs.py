"""The run folder: everything needed to use and reproduce a trained model, and nothing pickled.

RUN/fakescope.json      model description, calibrated threshold, training config, data
                        fingerprint, library versions
RUN/model.safetensors   weights
RUN/split.csv           the split used (path,label,split)
RUN/log.csv, RUN/tb/    per-epoch training log (CSV and TensorBoard)
RUN/resume/             state for resuming an interrupted run (safetensors + JSON)
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import FakescopeError
from .model.detector import Detector

META = "fakescope.json"
WEIGHTS = "model.safetensors"


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


@dataclass
class Run:
    path: Path
    meta: dict
    model: Detector = field(repr=False)

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"]["value"])

    @property
    def input_size(self) -> int:
        return int(self.meta["model"]["input_size"])

    @property
    def fit(self) -> str:
        return self.meta["model"].get("fit", "resize")

    @property
    def tta(self) -> bool:
        """Whether scores average each image with its mirror image (set at training)."""
        return self.meta["model"].get("tta", "none") == "hflip"

    @property
    def mean(self):
        return tuple(self.meta["model"]["mean"])

    @property
    def std(self):
        return tuple(self.meta["model"]["std"])


def load_run(path: str | Path) -> Run:
    path = Path(path)
    meta_file, weights_file = path / META, path / WEIGHTS
    if not meta_file.exists() or not weights_file.exists():
        raise FakescopeError(
            f"{path}: not a fakescope run folder (expected {META} and {WEIGHTS}; "
            "make one with `fakescope train`)"
        )
    meta = json.loads(meta_file.read_text())
    m = meta["model"]
    model = Detector(m["backbone"], m["head"], m["input_size"], weights="none")
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

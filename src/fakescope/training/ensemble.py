"""Combine trained runs into one run whose network is their ensemble (model/ensemble.py).

The result is an ordinary run folder: evaluate, predict, serve, matrix, robustness and export
use it as they use any other. Its threshold is calibrated like training's (Youden's J on the
validation scores of the combined network), over the validation splits of every data set a
member was trained on; the test splits are not looked at. Members must see images alike
(input size, fit, normalisation, mirror TTA, face stage) and agree on those validation splits.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from ..config import FUSIONS, TrainConfig
from ..errors import FakescopeError
from ..evaluation import metrics as M
from ..runs import (
    FORMAT,
    WEIGHTS,
    ModelSpec,
    Run,
    RunMeta,
    load_run,
    save_weights,
    versions,
    write_meta,
)

log = logging.getLogger(__name__)

# what every member must share: the scorer turns an image into one input for all of them
_SHARED = ("input_size", "fit", "mean", "std", "tta", "precision")


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _check_members(runs: list[Run]) -> None:
    if len(runs) < 2:
        raise FakescopeError("an ensemble needs two or more runs")
    first = runs[0]
    for r in runs:
        if r.spec.members:
            raise FakescopeError(f"{r.path}: already an ensemble; name its member runs instead")
        for key in _SHARED:
            if getattr(r.spec, key) != getattr(first.spec, key):
                raise FakescopeError(
                    f"{r.path}: model.{key} is {getattr(r.spec, key)!r} but {first.path} has "
                    f"{getattr(first.spec, key)!r}; members must see images alike"
                )
        if r.meta.face_mode != first.meta.face_mode:
            raise FakescopeError(
                f"{r.path}: face stage {r.meta.face_mode!r} but {first.path} has "
                f"{first.meta.face_mode!r}; members must see images alike"
            )


def _validation_samples(runs: list[Run]):
    """(roots, samples, sources): every member's data set once, with its validation split.
    A data set two members split differently (no splits.csv, other seeds) is refused: one
    member's training images would be the other's validation images."""
    from ..evaluation.evaluator import split_samples

    roots, samples, sources, seen = [], [], [], {}
    for r in runs:
        for src in r.meta.sources:
            if not src.get("root"):
                raise FakescopeError(
                    f"{r.path}: data source {src.get('name')!r} has no absolute root (a run "
                    "from before format 2); retrain it to use it in an ensemble"
                )
            root = Path(src["root"])
            val, _ = split_samples(r, root, "val")
            paths = sorted(s.path for s in val)
            if root in seen:
                if seen[root] != paths:
                    raise FakescopeError(
                        f"{root}: the members split this data set differently; give it a "
                        "splits.csv (copy a run's split.csv) and retrain"
                    )
                continue
            seen[root] = paths
            sources.append(src)
            roots += [root] * len(val)
            samples += val
    return roots, samples, sources


def combine_runs(
    runs, out, batch_size: int = 32, device: str = "auto", progress: bool = True, fusion="max"
):
    """Write the ensemble of ``runs`` (run folders or loaded runs) to ``out``; returns its
    loaded ``Run``. ``fusion``: "max" (experts on different fakes) or "mean" (one recipe's
    seeds); model/ensemble.py says why."""
    from ..data.dataset import make_loader
    from ..evaluation.evaluator import face_prepare, scoring_dataset
    from ..model.runtime import select_runtime
    from ..scoring.scorer import Scorer, TorchBackend

    runs = [r if isinstance(r, Run) else load_run(r) for r in runs]
    _check_members(runs)
    if fusion not in FUSIONS:
        raise FakescopeError(f"--fusion must be one of {', '.join(FUSIONS)}")
    out = Path(out)
    if (out / WEIGHTS).exists():
        raise FakescopeError(f"{out}: already holds a run; choose another --out")
    first = runs[0].spec
    offsets = tuple(_logit(r.threshold) for r in runs)
    spec = ModelSpec(
        "ensemble", fusion, first.input_size, first.fit, first.mean, first.std, first.tta,
        first.precision, (), tuple(r.spec for r in runs), offsets,
    )  # fmt: skip
    model = spec.detector()
    for net, r in zip(model.members, runs, strict=True):
        net.load_state_dict(r.model.state_dict())
    model.eval()

    roots, samples, sources = _validation_samples(runs)
    # members see images alike (checked above), so the first one's view is everyone's
    ds = scoring_dataset(runs[0], roots, samples, prepare=face_prepare(runs[0]))
    rt = select_runtime(device, precision=spec.precision)
    scorer = Scorer(TorchBackend(model, rt), spec, batch_size)
    s, y, _ = scorer.score_loader(make_loader(ds, batch_size), "validation", progress)
    if len(set(y.tolist())) < 2:
        raise FakescopeError("the members' validation splits do not hold both classes")
    thr = M.ideal_thresholds(y, s)
    thr["kde_intersection"] = M.kde_analysis(y, s).get("main_intersection")

    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / WEIGHTS)
    cfg = TrainConfig(
        data=tuple(str(r) for r in dict.fromkeys(Path(src["root"]) for src in sources)),
        out=str(out), input_size=spec.input_size, fit=spec.fit, tta=spec.tta,
        precision=spec.precision,
    )  # fmt: skip
    meta = RunMeta(
        spec,
        float(thr["youden"]),
        {"criterion": "youden", **thr, "n_val": int(len(y)), "computed_on": "val"},
        runs[0].meta.faces,
        cfg.to_dict(),
        sources,
        FORMAT,
        {
            "model": {
                "output": f"one logit: the {'highest' if fusion == 'max' else 'mean'} member "
                "logit minus that member's offset (the logit of its own threshold); sigmoid "
                "gives P(fake)"
            },
            "ensemble": {
                "fusion": f"{fusion} of threshold-centred logits",
                "members": [
                    {
                        "run": str(r.path.resolve()),
                        "weights_sha256": r.meta.weights_sha256,
                        "threshold": r.threshold,
                        "data": [src.get("name") for src in r.meta.sources],
                        "train": r.meta.train,
                    }
                    for r in runs
                ],
            },
            "runtime": rt.describe(),
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    write_meta(out, meta)
    log.info(
        "fakescope: ensemble of %d runs saved to %s (threshold %.4f, Youden's J on %d val images)",
        len(runs), out, thr["youden"], len(y),
    )  # fmt: skip
    return load_run(out)

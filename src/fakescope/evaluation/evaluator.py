"""Evaluation of a run on a data set: metrics, threshold stability, KDE analysis, plots, report.

The stored threshold (chosen on the validation split during training) is used as it is; nothing
here tunes on the split it reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.dataset import ImageDataset, make_loader
from ..data.folders import all_as, check_present, drop_generators, fingerprint, read_splits
from ..data.shards import ShardImages, ShardSample, ShardSet, is_shards
from ..data.transforms import Augment
from ..errors import FakescopeError
from ..runs import Run, load_run, write_json
from ..scoring.scorer import Scorer
from . import metrics as M
from . import plots


def same_data(run: Run, data: Path) -> bool:
    """Whether ``data`` is a folder the run was trained on: by its absolute root, or, for runs
    that stored a relative one, by the fingerprint of the run's split over this folder (so the
    answer does not depend on the current directory)."""
    for src in run.meta.sources:
        if src.get("root") and Path(src["root"]) == data.resolve():
            return True
    if len(run.meta.sources) == 1 and run.split_file.exists():
        sha = run.meta.sources[0].get("sha256")
        return sha is not None and fingerprint(data, read_splits(run.split_file))["sha256"] == sha
    return False


def data_name(data) -> str:
    """A data set's short name (its folder's; for shards picked by a glob, their folder's)."""
    return ShardSet.open(data).name if is_shards(data) else Path(data).name


def split_samples(run: Run, data: Path, split: str | None):
    """Samples of ``data`` for ``split``; the split comes from the data's splits.csv, else from
    the run's own split.csv when the run was trained on this very folder. Shards carry their
    split in each sample."""
    if is_shards(data):
        shards = ShardSet.open(data)
        split = split or "test"
        chosen = shards.samples(None if split == "all" else split)
        if same_data(run, shards.root):
            chosen = drop_generators(chosen, run.meta.config.exclude)
        return chosen, split
    have_csv = (data / "splits.csv").exists()
    same = same_data(run, data)
    if split is None:
        split = "test" if (have_csv or same) else "all"
    if split == "all":
        return all_as(data), split
    listed_in = data / "splits.csv" if have_csv else run.split_file
    if not (have_csv or same):
        raise FakescopeError(
            f"{data}: no splits.csv, so --split {split} is undefined; use --split all"
        )
    chosen = [s for s in read_splits(listed_in) if s.split == split]
    if same:
        chosen = drop_generators(chosen, run.meta.config.exclude)
    check_present(chosen, data, listed_in)
    return chosen, split


def face_prepare(run: Run, faces: str | None = None):
    """The face stage ``faces`` (default: the one the run was trained with) as a dataset's
    ``prepare`` step, cropping with the run's margin; None when there is no stage."""
    faces = faces or run.meta.face_mode
    if faces == "never":
        return None
    from ..data.faces import FaceCropper

    return FaceCropper(mode=faces, margin=run.meta.face_margin).training_crop


def scoring_dataset(
    run: Run, data, samples, augment=None, prepare=None, pixels: bool = False
) -> ImageDataset:
    """The images of ``samples`` as the run's model sees them (its size, fit, normalisation);
    ``pixels``: as uint8 pixels, for a scorer that takes them (``Scorer.pixels_in``)."""
    kind = ShardImages if samples and isinstance(samples[0], ShardSample) else ImageDataset
    ds = kind(
        data, samples, run.input_size, augment, prepare=prepare, mean=run.mean, std=run.std,
        fit=run.fit,
    )  # fmt: skip
    ds.pixels = pixels
    return ds


def per_source(samples, y, s, threshold) -> dict:
    """Each generator's fakes against all reals: does the detector catch every generator?"""
    sources = sorted({x.source for x in samples if x.label == 1})
    if len(sources) < 2:
        return {}
    real = np.array([x.label == 0 for x in samples])
    out = {}
    for src in sources:
        m = real | np.array([x.label == 1 and x.source == src for x in samples])
        fake = np.array([x.source == src and x.label == 1 for x in samples])
        out[src] = {
            "n": int(fake.sum()),
            "auc": M.threshold_free(y[m], s[m])["auc"],
            "recall": float((s[fake] >= threshold).mean()),
        }
    return out


def evaluate(
    run,
    data,
    split: str | None = None,
    out=None,
    batch_size: int = 32,
    device: str = "auto",
    faces: str | None = None,
    explain: int = 24,
    reencode: int | None = None,
    progress: bool = True,
    runtime: str = "auto",
) -> dict:
    """Score ``data`` with ``run`` and write metrics.json, plots and report.html into ``out``
    (default RUN/eval-<data>-<split>). ``explain`` > 0 adds Grad-CAM maps of that many faces
    per class to the report. ``reencode`` re-saves every image as JPEG at that quality before
    scoring, so both classes carry the same quantisation tables (against compression shortcuts).
    Returns the metrics dict."""
    run = run if isinstance(run, Run) else load_run(run)
    data = Path(data)
    samples, split = split_samples(run, data, split)
    if not samples or len({s.label for s in samples}) < 2:
        raise FakescopeError(f"{data}: split {split!r} needs images of both classes")
    out = Path(out) if out else run.path / f"eval-{data_name(data)}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    faces = faces or run.meta.face_mode
    scorer = Scorer.of_run(run, device, batch_size, runtime)
    prepare = face_prepare(run, faces)
    # a deterministic "augmentation": every image re-encoded at exactly this quality
    recode = Augment(hflip=False, jpeg_prob=1.0, jpeg_quality=(reencode,) * 2) if reencode else None
    ds = scoring_dataset(run, data, samples, recode, prepare, scorer.pixels_in)
    s, y, loss = scorer.score_loader(make_loader(ds, batch_size), f"scoring {split}", progress)
    thr, stored = scorer.threshold, scorer.thresholds
    result = M.summarize(y, s, thr)
    kde = M.kde_analysis(y, s, roc_threshold=thr)
    sweep = M.sweep(y, s)
    within = [r for r in sweep if abs(r["threshold"] - thr) <= 0.1 + 1e-9]
    result.update(
        {
            "data": str(data),
            "split": split,
            "reencoded_jpeg_quality": reencode,
            "faces": faces,
            "loss": loss,
            "runtime": scorer.engine,
            "threshold_source": {k: stored[k] for k in ("criterion", "computed_on")},
            "stored_thresholds": {k: stored.get(k) for k in ("youden", "f1", "kde_intersection")},
            "at_f1_threshold": M.at_threshold(y, s, stored["f1"]),
            # what the threshold would have been on this split: for comparison only, never used
            "ideal_on_this_split": M.ideal_thresholds(y, s),
            "sweep": sweep,
            "stability_within_0.1": {
                k: {"min": min(r[k] for r in within), "max": max(r[k] for r in within)}
                for k in ("accuracy", "precision", "recall", "f1")
            }
            if within
            else {},
            "kde": {k: v for k, v in kde.items() if k not in ("grid", "real", "fake")},
            "per_source": per_source(samples, y, s, thr),
        }
    )
    figures = {
        "ROC": plots.roc(y, s, thr, out / "roc.png"),
        "Precision-recall": plots.precision_recall(y, s, out / "pr.png"),
        "Score densities (KDE)": plots.kde(kde, thr, out / "kde.png"),
        "Threshold sweep": plots.threshold_sweep(sweep, thr, out / "threshold_sweep.png"),
        "Confusion matrix": plots.confusion(result["confusion"], thr, out / "confusion.png"),
    }
    curves = plots.training_curves(run.path / "log.csv", out / "training_curves.png")
    if curves:
        figures["Training curves"] = curves
    if explain:
        from ..scoring.explain import explanation_figures

        model = scorer.torch_runtime().prepare(run.model).eval()
        expl = explanation_figures(model, thr, ds, y, s, out, per_class=explain)
        figures.update(expl["figures"])
        result["explanations"] = expl["summary"]
    write_json(out / "metrics.json", result)
    with open(out / "scores.csv", "w") as fh:
        fh.write("path,label,score\n")
        for smp, sc in zip(samples, s, strict=True):
            fh.write(f"{smp.path},{'fake' if smp.label else 'real'},{sc:.6f}\n")
    from ..evaluation.report import write_report

    write_report(out / "report.html", run, result, figures)
    return result


def headline(m: dict) -> str:
    keys = ("auc", "ap", "precision", "recall", "f1", "accuracy", "eer")
    vals = "  ".join(f"{k.upper() if len(k) <= 3 else k} {m[k]:.4f}" for k in keys)
    return (
        f"{m['split']} split of {m['data']} ({m['n_real']} real, {m['n_fake']} fake) at "
        f"threshold {m['threshold']:.4f}:\n  {vals}"
    )

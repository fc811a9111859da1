"""Robustness curves: how AUC and F1 at the stored threshold fall as images are degraded.

Every image of the split is perturbed at each level of each perturbation (data/perturb.py) and
the whole split is scored again. The perturbation acts on the image the network is given (after
the face stage, if the run has one), so the curves measure the classifier, not face detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import load_rgb
from ..data.perturb import PERTURBATIONS, Perturbation, parse_perturbations
from ..errors import FakescopeError
from ..runs import Run, load_run, write_json
from ..scoring.scorer import Scorer
from . import metrics as M
from . import plots
from .evaluator import face_prepare
from .sets import cap_per_class, md_table, resolve_split, score, text_table, write_csv

DEFAULT = "jpeg,blur,downscale,noise,social"
COLUMNS = [
    "perturbation",
    "level",
    "unit",
    "auc",
    "ap",
    "f1",
    "accuracy",
    "precision",
    "recall",
    "mean_abs_shift",
    "mean_score_real",
    "mean_score_fake",
    "reused_clean",
]


@dataclass(frozen=True)
class Perturb:
    """The ImageDataset augment hook for one (perturbation, level); by name so it pickles
    cheaply into loader workers."""

    name: str
    level: float

    def __call__(self, im, rng):
        # the dataset seeds ``rng`` from the image's index, so this seed is fixed per image:
        # the same noise on every run, and the same pattern at every level of a curve
        return PERTURBATIONS[self.name].apply(im, self.level, seed=rng.getrandbits(32))


def _is_identity(p: Perturbation, level, images) -> bool:
    # checked, not assumed: jpeg at 100 is still a lossy round trip, blur 0 is a copy
    return all(
        np.array_equal(np.asarray(p.apply(im, level, seed=0)), np.asarray(im.convert("RGB")))
        for im in images
    )


def _row(name, level, unit, y, s, s0, thr, reused) -> dict:
    m = M.summarize(y, s, thr)
    return {
        "perturbation": name,
        "level": level,
        "unit": unit,
        **{k: m[k] for k in ("auc", "ap", "f1", "accuracy", "precision", "recall")},
        "mean_abs_shift": float(np.abs(s - s0).mean()),
        "mean_score_real": float(s[y == 0].mean()),
        "mean_score_fake": float(s[y == 1].mean()),
        "reused_clean": reused,
    }


def own_data(run: Run) -> Path:
    """The first folder the run was trained on (the default data set)."""
    roots = [s["root"] for s in run.meta.sources if s.get("root")]
    if not roots:
        raise FakescopeError(f"{run.path}: the run does not record its data folder; pass --data")
    return Path(roots[0])


def robustness_curves(
    run,
    data=None,
    split: str = "test",
    perturbations=DEFAULT,
    out=None,
    device: str = "auto",
    batch_size: int = 32,
    progress: bool = True,
    limit: int = 0,
) -> dict:
    """Score ``split`` of ``data`` (default: the run's own data) once clean and once per level
    of each perturbation (a comma-separated string, "all", or Perturbation objects), at the
    run's stored threshold. A clean level that leaves images unchanged reuses the clean scores.
    Writes robustness.json, .csv, .md, .png and report.html into ``out`` (default
    RUN/robustness-<data>-<split>). ``limit`` > 0 caps the images per class. Returns what
    robustness.json holds."""
    chosen = (
        parse_perturbations(perturbations)
        if isinstance(perturbations, str)
        else list(perturbations)
    )
    run = run if isinstance(run, Run) else load_run(run)
    data = Path(data) if data else own_data(run)
    samples, used = resolve_split(run, data, split)
    samples = cap_per_class(samples, limit)
    out = Path(out) if out else run.path / f"robustness-{data.name}-{used}"
    out.mkdir(parents=True, exist_ok=True)
    # the trained network at its stored threshold: an export has a threshold of its own
    scorer = Scorer.of_run(run, device, batch_size, runtime="torch")
    prepare, thr = face_prepare(run), run.threshold

    def scored(augment, desc):
        return score(scorer, run, data, samples, batch_size, augment, prepare, desc, progress)

    s0, y = scored(None, "clean")
    probe = [load_rgb(data / next(s for s in samples if s.label == c).path) for c in (0, 1)]
    clean = _row("clean", None, "", y, s0, s0, thr, False)
    curves = {}
    for p in chosen:
        rows = []
        for level in p.levels:
            if level == p.clean and _is_identity(p, level, probe):
                rows.append(_row(p.name, level, p.unit, y, s0, s0, thr, True))
                continue
            s, y_ = scored(Perturb(p.name, level), f"{p.name} {level:g}")
            rows.append(_row(p.name, level, p.unit, y_, s, s0, thr, False))
        curves[p.name] = {
            "unit": p.unit,
            "clean_level": p.clean,
            "levels": list(p.levels),
            **{k: [r[k] for r in rows] for k in ("auc", "f1", "accuracy")},
            "rows": rows,
        }
    result = {
        "run": str(run.path),
        "run_name": run.path.name,
        "data": str(data),
        "split": used,
        "threshold": thr,
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
        "limit_per_class": limit,
        "clean": clean,
        "perturbations": curves,
    }
    _write(out, result)
    return result


def table_rows(result: dict) -> list[list]:
    """perturbation, level, unit, AUC, F1, accuracy, mean |shift|: the clean row first."""
    rows = [result["clean"]] + [r for c in result["perturbations"].values() for r in c["rows"]]
    return [
        [
            r["perturbation"],
            "" if r["level"] is None else f"{r['level']:g}",
            r["unit"],
            r["auc"],
            r["f1"],
            r["accuracy"],
            r["mean_abs_shift"],
        ]
        for r in rows
    ]


HEADER = ["perturbation", "level", "unit", "AUC", "F1", "accuracy", "mean |shift|"]


def summary_text(result: dict) -> str:
    return text_table(HEADER, table_rows(result))


def _write(out: Path, result: dict) -> None:
    write_json(out / "robustness.json", result)
    rows = [result["clean"]] + [r for c in result["perturbations"].values() for r in c["rows"]]
    write_csv(out / "robustness.csv", COLUMNS, [[r[k] for k in COLUMNS] for r in rows])
    md = [
        f"# Robustness: {result['run_name']} on {result['data']} ({result['split']} split)",
        "",
        f"{result['n_real']} real, {result['n_fake']} fake; stored threshold "
        f"{result['threshold']:.4f}. Mean |shift|: mean absolute change of the score against "
        "the clean one.",
        "",
        md_table(HEADER, table_rows(result)),
    ]
    (out / "robustness.md").write_text("\n".join(md) + "\n")
    png = plots.robustness(result["perturbations"], result["clean"], out / "robustness.png")
    from .report import write_robustness_report

    write_robustness_report(out / "report.html", result, table_rows(result), png)

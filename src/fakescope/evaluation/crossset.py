"""Cross-set evaluation: every run scored on every data set, one matrix of AUC/AP/F1.

Each run keeps its STORED threshold (chosen on its own validation split during training); no
cell tunes anything on the split it scores, so the off-diagonal cells show what a deployed
detector would really do on data from elsewhere.

Leave-one-generator-out: a run trained with ``--exclude GEN`` on a data set that holds several
generators is scored here on that data set's split with GEN's fakes put back. The cell's headline
numbers leave them out (as ``evaluate`` does, so in-domain numbers match training), while the
cell's per-generator table (matrix.md, report.html, ``per_source`` in matrix.json) lists GEN,
marked held out, with its AUC against all reals and its recall at the stored threshold: the
detector's score on a generator it never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FakescopeError
from ..runs import Run, load_run, write_json
from ..scoring.scorer import Scorer
from . import metrics as M
from . import plots
from .evaluator import face_prepare, per_source, same_data
from .sets import (
    cap_per_class,
    fmt,
    held_out,
    md_table,
    resolve_split,
    score,
    text_table,
    unique_names,
    write_csv,
)

KEYS = ("auc", "ap", "f1", "precision", "recall", "accuracy")
TABLES = {"AUC": "auc", "AP": "ap", "F1 at stored threshold": "f1"}


def cross_matrix(
    runs: list,
    datasets: list,
    split: str = "test",
    out=None,
    device: str = "auto",
    batch_size: int = 32,
    progress: bool = True,
    names: list[str] | None = None,
    limit: int = 0,
    figures: bool = True,
) -> dict:
    """Score each run (folder or ``Run``) on ``split`` of each data set and write matrix.json,
    matrix.csv, matrix.md, matrix.png, scores.csv and report.html into ``out`` (default
    runs/matrix). A data set with no such split (no splits.csv, not the run's own data) is
    scored whole as "all"; each cell records the split it used. ``names`` label the runs
    (default: their folder names); ``limit`` > 0 caps the images per class (quick checks).
    ``figures=False`` leaves out matrix.png and report.html, for sweeps that score many runs and
    plot their own summary (about 0.8 s a matrix). Returns what matrix.json holds."""
    if not runs or not datasets:
        raise FakescopeError("a matrix needs at least one run and one data set")
    datasets = [Path(d) for d in datasets]
    for d in datasets:
        if not d.is_dir():
            raise FakescopeError(f"{d}: data folder not found")
    run_names = unique_names(
        [r.path if isinstance(r, Run) else Path(r) for r in runs], names, "run"
    )
    data_names = unique_names(datasets, None, "data set")
    runs = [r if isinstance(r, Run) else load_run(r) for r in runs]
    # every cell's samples first: a bad folder fails in seconds, not after an hour of scoring
    plan = {}
    for ri, run in enumerate(runs):
        for di, data in enumerate(datasets):
            samples, used = resolve_split(run, data, split)
            extra = cap_per_class(held_out(run, data, used), limit)
            plan[ri, di] = (cap_per_class(samples, limit), extra, used)
    out = Path(out) if out else Path("runs") / "matrix"
    out.mkdir(parents=True, exist_ok=True)

    cells, score_rows = [], []
    for ri, run in enumerate(runs):
        # the trained network at its stored threshold: an export has a threshold of its own
        scorer = Scorer.of_run(run, device, batch_size, runtime="torch")
        prepare = face_prepare(run)
        for di, data in enumerate(datasets):
            samples, extra, used = plan[ri, di]
            both = samples + extra
            desc = f"{run_names[ri]} on {data_names[di]}"
            s, y = score(scorer, run, data, both, batch_size, None, prepare, desc, progress)
            n = len(samples)
            m = M.summarize(y[:n], s[:n], run.threshold)
            gens = per_source(both, y, s, run.threshold)
            held = {x.source for x in extra}
            for g, v in gens.items():
                v["held_out"] = g in held
            cells.append(
                {
                    "run": run_names[ri],
                    "data": data_names[di],
                    "run_path": str(run.path.resolve()),
                    "data_path": str(data.resolve()),
                    "split": used,
                    "in_domain": same_data(run, data),
                    "threshold": run.threshold,
                    **{k: m[k] for k in KEYS},
                    "n_real": m["n_real"],
                    "n_fake": m["n_fake"],
                    "per_source": gens,
                }
            )
            score_rows += [
                [
                    run_names[ri],
                    data_names[di],
                    used,
                    x.path,
                    "fake" if x.label else "real",
                    x.source,
                    f"{sc:.6f}",
                    int(i >= n),
                ]
                for i, (x, sc) in enumerate(zip(both, s, strict=True))
            ]
    result = {
        "split": split,
        "limit_per_class": limit,
        "runs": [
            {
                "name": n,
                "path": str(r.path.resolve()),
                "threshold": r.threshold,
                "threshold_source": {
                    k: r.meta.thresholds.get(k) for k in ("criterion", "computed_on")
                },
            }
            for n, r in zip(run_names, runs, strict=True)
        ],
        "datasets": [
            {"name": n, "path": str(d.resolve())} for n, d in zip(data_names, datasets, strict=True)
        ],
        "cells": cells,
    }
    _write(out, result, score_rows, figures)
    return result


def grid(result: dict, key: str) -> np.ndarray:
    """The matrix of one metric, rows = runs, columns = data sets (in the order given)."""
    runs = [r["name"] for r in result["runs"]]
    data = [d["name"] for d in result["datasets"]]
    g = np.full((len(runs), len(data)), np.nan)
    for c in result["cells"]:
        g[runs.index(c["run"]), data.index(c["data"])] = c[key]
    return g


def tables(result: dict) -> dict[str, tuple[list, list]]:
    """{title: (header, rows)} for AUC, AP and F1; in-domain cells (the run's own data) carry a
    '*', since they are not cross-set numbers."""
    data = [d["name"] for d in result["datasets"]]
    own = {(c["run"], c["data"]) for c in result["cells"] if c["in_domain"]}
    out = {}
    for title, key in TABLES.items():
        g = grid(result, key)
        rows = [
            [r["name"]]
            + [
                fmt(v) + ("*" if (r["name"], d) in own else "")
                for v, d in zip(g[i], data, strict=True)
            ]
            for i, r in enumerate(result["runs"])
        ]
        out[title] = (["run \\ data", *data], rows)
    return out


def generator_tables(result: dict) -> list[tuple[str, list, list]]:
    """(caption, header, rows) per cell that has several generators."""
    out = []
    for c in result["cells"]:
        if c["per_source"]:
            rows = [
                [g, v["n"], v["auc"], v["recall"], "held out" if v.get("held_out") else ""]
                for g, v in c["per_source"].items()
            ]
            out.append(
                (
                    f"{c['run']} on {c['data']} ({c['split']})",
                    ["generator", "n", "AUC vs all reals", "recall", "note"],
                    rows,
                )
            )
    return out


def summary_text(result: dict) -> str:
    """The AUC table for the terminal."""
    header, rows = tables(result)["AUC"]
    return text_table(header, rows)


def _write(out: Path, result: dict, score_rows: list, figures: bool = True) -> None:
    write_json(out / "matrix.json", result)
    cols = [
        "run",
        "data",
        "split",
        "in_domain",
        "threshold",
        *KEYS,
        "n_real",
        "n_fake",
        "run_path",
        "data_path",
    ]
    write_csv(out / "matrix.csv", cols, [[c[k] for k in cols] for c in result["cells"]])
    write_csv(
        out / "scores.csv",
        ["run", "data", "split", "path", "label", "source", "score", "held_out"],
        score_rows,
    )
    splits = sorted({c["split"] for c in result["cells"]})
    parts = [
        "# Cross-set matrix",
        "",
        f"Split: {', '.join(splits)} (requested {result['split']}); each run at its stored "
        "threshold. `*`: the run's own data (in-domain).",
    ]
    if result["limit_per_class"]:
        parts.append(f"At most {result['limit_per_class']} images per class per cell.")
    for title, (header, rows) in tables(result).items():
        parts += ["", f"## {title}", "", md_table(header, rows)]
    for caption, header, rows in generator_tables(result):
        parts += ["", f"### Per generator: {caption}", "", md_table(header, rows)]
    (out / "matrix.md").write_text("\n".join(parts) + "\n")
    if not figures:
        return
    run_names = [r["name"] for r in result["runs"]]
    data_names = [d["name"] for d in result["datasets"]]
    png = plots.cross_matrix(
        run_names, data_names, grid(result, "auc"), grid(result, "f1"), out / "matrix.png"
    )
    from .report import write_matrix_report

    write_matrix_report(out / "report.html", result, tables(result), generator_tables(result), png)

"""`fakescope matrix` (cross-set evaluation) and `fakescope robustness` (perturbation curves)."""

from __future__ import annotations

from pathlib import Path

from . import HelpFormatter


def _add_matrix(sub):
    p = sub.add_parser(
        "matrix",
        help="score several runs on several data sets: AUC/AP/F1 matrix",
        description="Score every RUN on the --split of every --data folder, each run at its "
        "stored threshold (nothing is tuned on the scored data), and write matrix.json/.csv/.md, "
        "matrix.png (AUC and F1 heatmaps), scores.csv and report.html into --out. A folder "
        "without splits.csv that is not a run's own data is scored whole (split 'all'). Cells "
        "on a run's own data are marked '*'. Runs trained with --exclude GEN show GEN, held out, "
        "in the per-generator tables of their own data.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders made by `fakescope train`")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="data folder (real/ and fake/); repeat for each data set",
    )
    p.add_argument("--split", choices=["test", "val", "all"], default="test")
    p.add_argument("--out", default="runs/matrix", help="folder for the matrix files")
    p.add_argument(
        "--names",
        default=None,
        help="comma-separated row labels, one per RUN; unset: the run folder names",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        metavar="N",
        help="at most N images per class per cell (0: all)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_matrix)


def cmd_matrix(a) -> int:
    from ..evaluation.crossset import cross_matrix, summary_text

    names = [n.strip() for n in a.names.split(",")] if a.names else None
    r = cross_matrix(
        a.runs,
        a.data,
        split=a.split,
        out=a.out,
        device=a.device,
        batch_size=a.batch_size,
        names=names,
        limit=a.limit,
    )
    print(f"AUC ({a.split} split, stored thresholds; * = the run's own data)")
    print(summary_text(r))
    out = Path(a.out)
    print(
        f"  report: {out / 'report.html'}   tables: {out / 'matrix.md'}   "
        f"data: {out / 'matrix.json'}, {out / 'matrix.csv'}, {out / 'scores.csv'}"
    )
    return 0


# written out rather than read from data.perturb, which imports OpenCV: every `fakescope`
# command builds this help; tests/test_crossset.py keeps it equal to the registry
LEVELS = (
    "jpeg: 100, 90, 70, 50, 30 (JPEG quality); blur: 0, 0.5, 1, 2, 3 (Gaussian blur sigma (px)); "
    "downscale: 1, 0.75, 0.5, 0.35, 0.25 (downscale factor); noise: 0, 2, 5, 10, 20 (noise "
    "sigma (0-255)); social: 0, 1, 2, 3, 4 (social re-upload level)"
)


def _add_robustness(sub):
    p = sub.add_parser(
        "robustness",
        help="AUC/F1 curves under JPEG, blur, downscaling, noise, social re-upload",
        description="Score the --split of --data once clean and once per level of each "
        "perturbation, every image degraded alike (deterministic per image), at the run's "
        "stored threshold; write robustness.json/.csv/.md, robustness.png (one panel per "
        f"perturbation) and report.html. Levels: {LEVELS}.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", help="run folder made by `fakescope train`")
    p.add_argument("--data", default=None, help="unset: the run's own (first) data folder")
    p.add_argument("--split", choices=["test", "val", "all"], default="test")
    p.add_argument(
        "--perturb",
        default="jpeg,blur,downscale,noise,social",
        help="comma-separated perturbations, or 'all'",
    )
    p.add_argument("--out", default=None, help="default: RUN/robustness-<data>-<split>")
    p.add_argument(
        "--limit", type=int, default=0, metavar="N", help="at most N images per class (0: all)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_robustness)


def cmd_robustness(a) -> int:
    from ..data.perturb import parse_perturbations
    from ..evaluation.robustness import robustness_curves, summary_text

    chosen = parse_perturbations(a.perturb)  # a bad name fails before the run is loaded
    r = robustness_curves(
        a.run,
        a.data,
        split=a.split,
        perturbations=chosen,
        out=a.out,
        device=a.device,
        batch_size=a.batch_size,
        limit=a.limit,
    )
    out = Path(a.out) if a.out else Path(a.run) / f"robustness-{Path(r['data']).name}-{r['split']}"
    print(
        f"{r['split']} split of {r['data']} ({r['n_real']} real, {r['n_fake']} fake) at "
        f"threshold {r['threshold']:.4f}:"
    )
    print(summary_text(r))
    print(
        f"  report: {out / 'report.html'}   curves: {out / 'robustness.png'}   "
        f"data: {out / 'robustness.json'}, {out / 'robustness.csv'}"
    )
    return 0


def add(sub) -> None:
    _add_matrix(sub)
    _add_robustness(sub)

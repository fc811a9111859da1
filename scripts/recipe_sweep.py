"""Train recipes x seeds and tabulate their validation and test metrics, one CSV row per run.

Recipes are *chosen* on the validation columns; the test columns are reported, never used to pick.
Meant for a machine with spare throughput (a GPU, or many cores); on the 2-core CPU one run of
the demo recipe takes 12 minutes. ``--fp32`` keeps a GPU in plain fp32 (no autocast, no TF32)
for training and, since the run stores its precision, for evaluation too: its numbers speak
for the CPU's fp32 training, which differs only in summation order.

    python scripts/recipe_sweep.py --data ../shared/data/sg-ffhq \
        --weights ../shared/weights/mobilenet_v2-b0353104.pth --seeds 0-4 --jobs 4 --fp32 \
        --out runs/sweep base ep4 flatten
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

# The demo's recipe less its epochs (scripts/demo.sh trains 4 of 5 cosine epochs); the sweep
# scripts build their bases on it
DEMO = dict(
    backbone="mobilenet_v2",
    head="gap",
    steps=1,
    lr=2e-4,
    lr_schedule="cosine",
    batch_size=8,
    tta=True,
)
# A base recipe and variations of it, each a set of TrainConfig overrides (`ep4h5` is the demo)
BASE = dict(DEMO, epochs=3)
RECIPES = {
    "base": {},
    "ep4": dict(epochs=4),
    "ep5": dict(epochs=5),
    "flatten": dict(head="flatten"),
    "pad": dict(fit="pad"),
    "crop85": dict(crop_scale=0.85),
    "ls05": dict(label_smoothing=0.05),
    "b16": dict(batch_size=16, lr=4e-4),
    "ep4_lr3": dict(epochs=4, lr=3e-4),
    # a cosine cut off before its end, and two processes of batch 8 (DDP)
    "ep4h5": dict(epochs=4, lr_epochs=5),
    "p2b16ep5": dict(procs=2, batch_size=16, lr=4e-4, epochs=5),
    "p2b16ep4h5": dict(procs=2, batch_size=16, lr=4e-4, epochs=4, lr_epochs=5),
    "p2b16ep5lr3": dict(procs=2, batch_size=16, lr=3e-4, epochs=5),
}
FIELDS = [
    "recipe",
    "seed",
    "train_s",
    "threshold",
    "val_auc",
    "val_f1",
    "test_auc",
    "test_f1",
    "test_precision",
    "test_recall",
    "test_errors",
    "test_f1_at_f1_thr",
]


def run_one(recipe: str, seed: int, args) -> dict:
    from fakescope import TrainConfig, evaluate, train

    out = Path(args.out) / f"{recipe}-s{seed}"
    cfg = TrainConfig(
        **{**BASE, **RECIPES[recipe]},
        data=args.data,
        weights=args.weights,
        seed=seed,
        out=str(out),
        workers=args.workers,
        tensorboard=False,
        precision="fp32" if args.fp32 else "auto",
        limit_per_class=args.limit,
    )
    t0 = time.time()
    train(cfg, progress=False)
    secs = time.time() - t0
    row = {"recipe": recipe, "seed": seed, "train_s": round(secs, 1)}
    for split in ("val", "test"):
        m = evaluate(out, args.data, split=split, explain=0, progress=False)
        row["threshold"] = round(m["threshold"], 4)
        row[f"{split}_auc"] = round(m["auc"], 4)
        row[f"{split}_f1"] = round(m["f1"], 4)
        if split == "test":
            row["test_precision"] = round(m["precision"], 4)
            row["test_recall"] = round(m["recall"], 4)
            row["test_errors"] = m["confusion"]["fp"] + m["confusion"]["fn"]
            row["test_f1_at_f1_thr"] = round(m["at_f1_threshold"]["f1"], 4)
    return row


SCORE_FIELDS = ["split", "data", "auc", "ap", "f1", "precision", "recall", "threshold",
                "in_domain"]  # fmt: skip


def run_with_weights(like: Path, state: dict, out: Path) -> Path:
    """A run folder at ``out``: the run ``like``'s description and split with other weights
    (``state``, a state dict of the same network), scored as any run is."""
    import shutil

    from fakescope.runs import WEIGHTS, load_run, read_meta, save_weights, write_meta

    model = load_run(like).model
    model.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / WEIGHTS)
    write_meta(out, read_meta(like))
    shutil.copy(like / "split.csv", out / "split.csv")
    return out


def score_rows(run: Path, sets: list[Path], limit: int = 0) -> list[dict]:
    """``run`` scored on the val and test splits of every data set in ``sets`` (its stored
    threshold for F1, precision and recall): one row of SCORE_FIELDS per split and set."""
    import json

    from fakescope.evaluation.crossset import cross_matrix

    rows = []
    for split in ("val", "test"):
        done = run / f"matrix-{split}" / "matrix.json"
        m = json.loads(done.read_text()) if done.exists() else None
        want = [str(Path(d).resolve()) for d in sets]
        if (
            m is None
            or m["limit_per_class"] != limit
            or [c["data_path"] for c in m["cells"]] != want
        ):  # scored before on the same sets: reused, else scored (again)
            m = cross_matrix(
                [run], sets, split=split, out=run / f"matrix-{split}", progress=False,
                batch_size=64, limit=limit, figures=False,  # the sweep plots its summary
            )  # fmt: skip
        for c in m["cells"]:
            rows.append(
                {
                    "split": split,
                    "data": c["data"],
                    **{k: round(c[k], 4) for k in ("auc", "ap", "f1", "precision", "recall")},
                    "threshold": round(c["threshold"], 4),
                    "in_domain": c["in_domain"],
                }
            )
    return rows


def summarise(csv_path: Path, key: str = "recipe", order=None) -> str:
    """Mean ± standard deviation over seeds per ``key``, split and data set, as markdown; rows
    in ``order`` of ``key`` (default sorted)."""
    import numpy as np

    rows = list(csv.DictReader(open(csv_path)))
    cells: dict = {}
    for r in rows:
        cells.setdefault((r[key], r["split"], r["data"]), []).append(r)
    rank = {k: i for i, k in enumerate(order or [])}
    lines = [f"| {key} | split | data | seeds | AUC | AP | F1 at stored thr | train s |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (name, split, data), rs in sorted(
        cells.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0])
    ):

        def ms(k, rs=rs):
            v = np.array([float(r[k]) for r in rs])
            return f"{v.mean():.4f} ± {v.std():.4f}" if len(v) > 1 else f"{v[0]:.4f}"

        secs = np.mean([float(r["train_s"]) for r in rs])
        lines.append(
            f"| {name} | {split} | {data} | {len(rs)} | {ms('auc')} | {ms('ap')} | "
            f"{ms('f1')} | {secs:.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def sweep_pool(args) -> ProcessPoolExecutor:
    """``args.jobs`` spawned processes for ``run_sweep``; one pool can serve several sweeps, so
    that each process imports torch and fakescope once (3-4 s on the 2-core CPU)."""
    return ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"))


def run_sweep(run_one, recipes, args, csv_path: Path, fields, after=None, pool=None) -> None:
    """Run ``run_one(recipe, seed, args)`` for every recipe and seed in ``args.jobs`` processes
    (``pool``, else a ``sweep_pool`` of its own), appending the rows each returns (a dict or a
    list of dicts) to ``csv_path`` as it ends; ``after(csv_path)`` is called after each. One
    failed run does not lose the others' rows."""
    if pool is None:
        with sweep_pool(args) as own:
            return run_sweep(run_one, recipes, args, csv_path, fields, after, own)
    new = not csv_path.exists()
    # seed-major, so that a sweep cut short still has every recipe at its first seeds
    jobs = [(r, s) for s in parse_seeds(args.seeds) for r in recipes]
    with open(csv_path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        if new:
            w.writeheader()
        futures = {pool.submit(run_one, r, s, args): (r, s) for r, s in jobs}
        for fut in as_completed(futures):
            r, s = futures[fut]
            try:
                rows = fut.result()
            except Exception as e:
                print(f"{r} seed {s}: failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                continue
            for row in rows if isinstance(rows, list) else [rows]:
                w.writerow(row)
                print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            fh.flush()
            if after is not None:
                after(csv_path)


def sweep_parser(doc: str, recipes, seeds: str, out: str) -> argparse.ArgumentParser:
    """The options every sweep script shares (recipes, weights, seeds, jobs, workers, fp32,
    limit, out); each script adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("recipes", nargs="+", choices=sorted(recipes))
    p.add_argument("--weights", default="../shared/weights/mobilenet_v2-b0353104.pth")
    p.add_argument("--seeds", default=seeds, help="e.g. 0-4 or 0,3,7")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each its own process)")
    p.add_argument("--workers", type=int, default=2, help="data-loading workers per run")
    p.add_argument("--fp32", action="store_true", help="no autocast/TF32 on a GPU")
    p.add_argument("--limit", type=int, default=0, help="images per class and split (smoke)")
    p.add_argument("--out", default=out)
    return p


def main(argv=None) -> int:
    p = sweep_parser(__doc__, RECIPES, "0-2", "runs/sweep")
    p.add_argument("--data", default="../shared/data/sg-ffhq")
    p.add_argument("--csv", default=None, help="results file (default OUT/sweep.csv)")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    run_sweep(run_one, args.recipes, args, Path(args.csv or Path(args.out) / "sweep.csv"), FIELDS)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""Issue 15: the checks the paper (arXiv 2503.11389) rests on but does not run, each one command.

A check is a set of variants of one base recipe (the demo's: mobilenet_v2 from ../shared's
ImageNet file, GAP head, 299 px, every layer, Adam 2e-4 cosine, batch 8, mirror TTA), trained
over seeds on one data set and scored on the val and test splits of it and of the other
sample set. ``imbalance`` trains nothing new: it takes the base variant's runs and re-weighs
their test scores. Each check writes OUT/CHECK/cells.csv (one row per run, split and data
set), summary.md (mean ± standard deviation over seeds) and check.png.

    python scripts/paper_checks.py input_size --seeds 0-2 --scale small --out runs/checks
    python scripts/paper_checks.py finetune steps head data_size imbalance --seeds 0-2

Scales: ``full`` is the demo's 4 of 5 cosine epochs on every image (a GPU's job); ``small``
(the 2-core CPU) 2 of 3 epochs on a quarter of the training images (val and test whole;
data_size's variants set their own share); ``tiny`` is the test suite's (one batch, 4 images
per class and split, every input size a quarter). Variants are chosen on val, test reported.
A variant that is another check's in all but its folder (the base recipe is one of several
checks) is trained once and copied, with a ``copied_from`` file naming the original.
ResNet-50 starts from random weights unless --resnet50-weights names its ImageNet file (none
can be had on these machines): its rows say which.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from recipe_sweep import (
    DEMO,
    SCORE_FIELDS,
    run_sweep,
    score_rows,
    summarise,
    sweep_parser,
    sweep_pool,
)

BASE = dict(DEMO, input_size=299, tensorboard=False, patience=100)
SCALES = {
    "full": dict(epochs=4, lr_epochs=5),
    "small": dict(epochs=2, lr_epochs=3, train_fraction=0.25),
    # face_margin set: no face detector run to measure the framing
    "tiny": dict(epochs=1, limit_per_class=4, max_train_batches=1, face_margin=1.3),
}
PAPER = dict(lr=1e-3, lr_schedule="constant")  # the paper's optimiser setting
R50 = dict(backbone="resnet50")  # weights: --resnet50-weights
CHECKS = {
    # 1. does preserving detail pay? (sg-ffhq is 256 px natively)
    "input_size": {"224": dict(input_size=224), "256": dict(input_size=256), "299": {}},
    # 2. how much to fine-tune: stages frozen of (stem, stage1..4); 5 = the head alone
    "finetune": {
        "head only": dict(freeze_stages=(5,)),
        "last stage + head": dict(freeze_stages=(4,)),
        "every layer": dict(freeze_stages=(0,)),
    },
    # 3. the paper's three steps (stages frozen 0, 3, 4), with its optimiser and the demo's
    "steps": {
        "1 (demo)": {},
        "1+2 (demo)": dict(steps=2),
        "1+2+3 (demo)": dict(steps=3),
        # steps 2 and 3 add their own epochs: step 1 alone as long, so that more training
        # is not mistaken for the steps' freezing
        "1, as long as 1+2+3 (demo)": dict(epochs=6, lr_epochs=9),
        "1 (paper's Adam 1e-3)": dict(PAPER),
        "1+2 (paper's Adam 1e-3)": dict(PAPER, steps=2),
        "1+2+3 (paper's Adam 1e-3)": dict(PAPER, steps=3),
    },
    # 4. Flatten + Dense(1) against global average pooling
    "head": {
        "mobilenet_v2 gap": {},
        "mobilenet_v2 flatten": dict(head="flatten"),
        "resnet50 gap": dict(R50),
        "resnet50 flatten": dict(R50, head="flatten"),
    },
    # 6. test metrics against the number of training images
    "data_size": {
        "10%": dict(train_fraction=0.1),
        "25%": dict(train_fraction=0.25),
        "50%": dict(train_fraction=0.5),
        "100%": dict(train_fraction=1.0),
    },
}
# 5. class imbalance: real:fake ratios the test split is subsampled to, and thresholds swept
RATIOS = {"1:1": (1, 1), "1:4": (1, 4), "4:1": (4, 1)}
SWEEP = [0.4, 0.5, 0.6, 0.7, 0.8]
FIELDS = ["check", "variant", "seed", "train_s", *SCORE_FIELDS]
IMBALANCE_FIELDS = [
    "variant", "seed", "draw", "n_real", "n_fake", "threshold", "precision", "recall", "f1",
    *(f"f1@{t}" for t in SWEEP), *(f"precision@{t}" for t in SWEEP),
]  # fmt: skip


def config(check: str, variant: str, seed: int, args):
    from fakescope import TrainConfig

    over = {**BASE, **SCALES[args.scale], **CHECKS[check][variant]}
    if args.scale == "tiny":  # the suite's: every size a quarter (input_size's ratios kept)
        over["input_size"] //= 4
    r50 = over["backbone"] == "resnet50"
    return TrainConfig(
        **over,
        data=(args.data,),
        weights=(args.resnet50_weights if r50 else args.weights),
        seed=seed,
        out=str(Path(args.out) / check / f"{slug(variant)}-s{seed}"),
        workers=args.workers,
        precision="fp32" if args.fp32 else "auto",
    )


def slug(variant: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in variant).strip("_")


def run_one(job: str, seed: int, args) -> list[dict]:
    """Train one variant (``job`` is "CHECK/VARIANT") and score it on both sample sets."""
    import torch

    from fakescope import train

    torch.set_num_threads(args.threads)
    check, variant = job.split("/", 1)
    cfg = config(check, variant, seed, args)
    out = Path(cfg.out)
    twin = None if out.exists() else trained_twin(cfg, seed, args)
    if twin:  # the same recipe, trained for another check: copied, with its scores
        shutil.copytree(twin, out, ignore=shutil.ignore_patterns("resume", "tb"))
        (out / "copied_from").write_text(f"{twin}\n")
    elif not (out / "fakescope.json").exists():  # a rerun scores what an earlier one trained
        t0 = time.time()
        train(cfg, progress=False)
        (out / "train_seconds").write_text(f"{time.time() - t0:.1f}")
    secs = float((out / "train_seconds").read_text())
    label = variant
    if cfg.backbone == "resnet50" and cfg.weights == "none":
        label += " (random start)"
    head = {"check": check, "variant": label, "seed": seed, "train_s": secs}
    limit = SCALES[args.scale].get("limit_per_class", 0)
    return [{**head, **r} for r in score_rows(out, sets(args), limit)]


def trained_twin(cfg, seed: int, args) -> Path | None:
    """A finished run of another check whose configuration is ``cfg``'s but for its folder:
    the base recipe is a variant of several checks (input_size's "299", steps' "1 (demo)",
    head's "mobilenet_v2 gap", and at the tiny scale data_size's "100%")."""
    import dataclasses

    for check, variants in CHECKS.items():
        for variant in variants:
            other = config(check, variant, seed, args)
            done = Path(other.out) / "fakescope.json"
            if other.out != cfg.out and dataclasses.replace(other, out=cfg.out) == cfg:
                if done.exists() and (done.parent / "train_seconds").exists():
                    return done.parent
    return None


def sets(args) -> list[Path]:
    """The training set first, then every other sample set beside it (cross-set scores)."""
    own = Path(args.data)
    others = sorted(p for p in own.parent.iterdir() if p.is_dir() and p != own)
    return [own, *(p for p in others if (p / "splits.csv").exists())]


def imbalance(args, seeds: list[int], draws: int = 5) -> Path:
    """The base variant's runs (trained here if missing), their test scores subsampled to each
    real:fake ratio ``draws`` times: precision, recall and F1 at the stored threshold, and F1
    and precision across the sweep."""
    import numpy as np

    from fakescope import evaluate, load_run
    from fakescope.evaluation import metrics as M

    out = Path(args.out) / "imbalance"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:
        cfg = config("input_size", "299", seed, args)  # the base recipe
        if not (Path(cfg.out) / "fakescope.json").exists():
            run_one("input_size/299", seed, args)
        run = load_run(cfg.out)
        ev = out / f"eval-s{seed}"
        evaluate(run, args.data, split="test", out=ev, explain=0, progress=False)
        scores = list(csv.DictReader(open(ev / "scores.csv")))
        y = np.array([r["label"] == "fake" for r in scores], dtype=int)
        s = np.array([float(r["score"]) for r in scores])
        limit = SCALES[args.scale].get("limit_per_class", 0)
        real, fake = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        if limit:
            real, fake = real[:limit], fake[:limit]
        for name, (a, b) in RATIOS.items():
            # as many images as the ratio allows from the split's classes
            unit = min(len(real) // a, len(fake) // b)
            for draw in range(draws):
                rng = np.random.default_rng(1000 * seed + draw)
                pick = np.concatenate(
                    [rng.choice(real, unit * a, replace=False), rng.choice(fake, unit * b, False)]
                )
                at = M.at_threshold(y[pick], s[pick], run.threshold)
                row = {"variant": name, "seed": seed, "draw": draw, "n_real": unit * a,
                       "n_fake": unit * b, "threshold": round(run.threshold, 4)}  # fmt: skip
                row.update({k: round(at[k], 4) for k in ("precision", "recall", "f1")})
                for t in SWEEP:
                    swept = M.at_threshold(y[pick], s[pick], t)
                    row[f"f1@{t}"] = round(swept["f1"], 4)
                    row[f"precision@{t}"] = round(swept["precision"], 4)
                rows.append(row)
    with open(out / "cells.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, IMBALANCE_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (out / "summary.md").write_text(imbalance_summary(rows))
    from fakescope.evaluation import plots

    curves = {
        name: [[r[f"f1@{t}"] for t in SWEEP] for r in rows if r["variant"] == name]
        for name in RATIOS
    }
    stored = float(np.mean([r["threshold"] for r in rows]))
    plots.imbalance(curves, SWEEP, stored, out / "check.png")
    return out


def imbalance_summary(rows: list[dict]) -> str:
    import numpy as np

    def ms(v):
        v = np.asarray(v, float)
        return f"{v.mean():.3f} ± {v.std():.3f}"

    lines = ["| real:fake | runs x draws | precision | recall | F1 at stored thr | "
             + " | ".join(f"F1 at {t}" for t in SWEEP) + " |",
             "|---" * (5 + len(SWEEP)) + "|"]  # fmt: skip
    for name in RATIOS:
        rs = [r for r in rows if r["variant"] == name]
        cells = [ms([r[k] for r in rs]) for k in ("precision", "recall", "f1")]
        cells += [ms([r[f"f1@{t}"] for r in rs]) for t in SWEEP]
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_summary(csv_path: Path, order: list[str], own: str) -> str:
    """One row per variant (mean ± std over seeds): what the check asks, in the order given;
    ``own`` is the training set, every other set is cross-set."""
    import numpy as np

    rows = list(csv.DictReader(open(csv_path)))
    others = sorted({r["data"] for r in rows} - {own})
    cols = [("val", own, "auc"), ("test", own, "auc"), ("test", own, "f1"),
            *(("test", o, "auc") for o in others)]  # fmt: skip
    head = ["variant", "seeds", f"{own} val AUC", f"{own} test AUC", f"{own} test F1",
            *(f"{o} test AUC (cross-set)" for o in others), "train s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    rank = {v: i for i, v in enumerate(order)}
    for v in sorted({r["variant"] for r in rows}, key=lambda v: (rank.get(v, len(rank)), v)):
        mine = [r for r in rows if r["variant"] == v]
        cells = []
        for split, data, k in cols:
            x = np.array([float(r[k]) for r in mine if r["split"] == split and r["data"] == data])
            cells.append(f"{x.mean():.4f} ± {x.std():.4f}" if len(x) > 1 else f"{x[0]:.4f}")
        seeds = len({r["seed"] for r in mine})
        secs = np.mean([float(r["train_s"]) for r in mine])
        lines.append(f"| {v} | {seeds} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return "\n".join(lines) + "\n"


def plot_check(check: str, csv_path: Path, out: Path) -> None:
    """Test AUC and F1 per variant (mean ± std over seeds) on each data set."""
    import numpy as np

    from fakescope.evaluation import plots

    rows = [r for r in csv.DictReader(open(csv_path)) if r["split"] == "test"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    series = {}
    for data in dict.fromkeys(r["data"] for r in rows):
        for metric in ("auc", "f1"):
            vals = [[float(r[metric]) for r in rows if r["variant"] == v and r["data"] == data]
                    for v in variants]  # fmt: skip
            series[f"{data} {metric.upper()}"] = (
                [float(np.mean(x)) if x else np.nan for x in vals],
                [float(np.std(x)) if x else 0.0 for x in vals],
            )
    plots.variants(variants, series, f"{check} (test split; mean ± std over seeds)", out)


def main(argv=None) -> int:
    p = sweep_parser(__doc__, {**CHECKS, "imbalance": None}, "0-2", "runs/checks")
    p.add_argument("--data", default="../shared/data/sg-ffhq", help="the training set")
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--resnet50-weights", default="none", help="'imagenet', 'none' or a file")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    args = p.parse_args(argv)
    pool = sweep_pool(args)  # one for every check: each process starts once
    try:
        for check in args.recipes:
            try:
                run_check(check, args, pool)
            except BrokenProcessPool:
                # a worker died in an earlier check (killed, out of memory), which left that
                # check's rows short: this one starts again on a fresh pool
                pool.shutdown()
                pool = sweep_pool(args)
                run_check(check, args, pool)
    finally:
        pool.shutdown()
    return 0


def run_check(check: str, args, pool) -> None:
    """One check's runs (trained ones are reused), its table and plot, printed when done."""
    from recipe_sweep import parse_seeds

    if check == "imbalance":
        print((imbalance(args, parse_seeds(args.seeds)) / "summary.md").read_text())
        return
    folder = Path(args.out) / check
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "cells.csv"
    csv_path.unlink(missing_ok=True)  # rebuilt from the runs
    jobs = [f"{check}/{v}" for v in CHECKS[check]]
    order = [v + s for v in CHECKS[check] for s in ("", " (random start)")]

    def after(path):
        own = Path(args.data).name
        table = check_summary(path, order, own)
        (folder / "summary.md").write_text(table + "\n" + summarise(path, "variant", order))
        plot_check(check, path, folder / "check.png")

    run_sweep(run_one, jobs, args, csv_path, FIELDS, after=after, pool=pool)
    print(f"## {check}\n\n" + (folder / "summary.md").read_text())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""Issue 13, must-show 3: training on shards equals training on the folder, and memory stays
flat however large the shards are.

1. Packs DATA into shards (``fakescope shards``).
2. Same recipe, several seeds, from the folder and from the shards: test AUC and F1 of each,
   mean ± standard deviation (the orders differ, so the runs agree within seed noise, not
   exactly).
3. Makes a set whose training split is those shards repeated --times times (symbolic links,
   one manifest), trains one epoch on it and on the original, and prints the peak resident
   memory of each epoch (log.csv's peak_rss_mb) beside the images trained.

    python scripts/shards_scale.py --out runs/shards-scale --seeds 0-2 --times 100

Everything goes through the ``fakescope`` command; the tables go to OUT/summary.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKESCOPE = [sys.executable, "-m", "fakescope.cli"]


def recipe(args) -> list[str]:
    return [
        "--backbone", "mobilenet_v2", "--head", "gap", "--weights", args.weights,
        "--input-size", str(args.input_size), "--batch-size", "16", "--steps", "1",
        "--lr", "2e-4", "--lr-schedule", "cosine", "--patience", "100",
        "--faces", "never", "--face-margin", "1.3", "--no-tensorboard",
        "--workers", str(args.workers),
    ]  # fmt: skip


def fakescope(*argv, log: Path | None = None) -> None:
    t0 = time.time()
    with open(log or os.devnull, "w") as fh:
        r = subprocess.run([*FAKESCOPE, *argv], stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"fakescope {' '.join(argv)} failed ({r.returncode}); see {log}")
    print(f"  fakescope {argv[0]} {argv[1] if len(argv) > 1 else ''} ... {time.time() - t0:.0f} s")


def repeat(src: Path, dst: Path, times: int) -> None:
    """A shard set whose train shards are ``src``'s repeated ``times`` times (links)."""
    meta = json.loads((src / "shards.json").read_text())
    dst.mkdir(parents=True)
    shards = []
    for e in meta["shards"]:
        copies = range(times) if e["split"] == "train" else [0]
        for k in copies:
            name = e["file"] if e["split"] != "train" else f"train-r{k:03d}-{e['file'][6:]}"
            (dst / name).symlink_to((src / e["file"]).resolve())
            shards.append({**e, "file": name})
    (dst / "splits.csv").symlink_to((src / "splits.csv").resolve())
    (dst / "shards.json").write_text(json.dumps({**meta, "shards": shards}, indent=1))


def test_metrics(run: Path, data_name: str) -> dict:
    return json.loads((run / f"eval-{data_name}-test" / "metrics.json").read_text())


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def seeds(spec: str) -> list[int]:
    lo, _, hi = spec.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sg-ffhq"))
    p.add_argument("--weights", default=str(ROOT.parent / "shared" / "weights" /
                                            "mobilenet_v2-b0353104.pth"))  # fmt: skip
    p.add_argument("--out", default="runs/shards-scale")
    p.add_argument("--seeds", default="0-2", help="for the folder/shards comparison ('' skips)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the comparison's runs")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--times", type=int, default=100, help="the large set's repeats (0 skips)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = out / "shards"
    if not (shards / "shards.json").exists():
        fakescope("shards", args.data, str(shards), "--shard-size", "8", log=out / "pack.log")
    lines = [f"# Shards: {args.data}", ""]
    if args.seeds:
        rows = []
        for kind, data in (("folder", args.data), ("shards", str(shards))):
            aucs, f1s, secs = [], [], []
            for seed in seeds(args.seeds):
                run = out / f"{kind}-s{seed}"
                if not (run / "fakescope.json").exists():
                    fakescope("train", "--data", data, "--out", str(run), "--seed", str(seed),
                              "--epochs", str(args.epochs), *recipe(args),
                              log=out / f"{kind}-s{seed}.log")  # fmt: skip
                m = test_metrics(run, Path(data).name)
                aucs.append(m["auc"])
                f1s.append(m["f1"])
                log = list(csv.DictReader(open(run / "log.csv")))
                secs.append(sum(float(r["seconds"]) for r in log))
            rows.append((kind, aucs, f1s, secs))
        lines += [
            f"mobilenet_v2 (ImageNet), {args.input_size} px, {args.epochs} cosine epochs, "
            f"batch 16, seeds {args.seeds}; test split.",
            "",
            "| trained from | test AUC | test F1 | per-seed AUC | train s (mean) |",
            "|---|---|---|---|---|",
        ]
        for kind, aucs, f1s, secs in rows:
            lines.append(
                f"| {kind} | {statistics.mean(aucs):.4f} ± {sd(aucs):.4f} | "
                f"{statistics.mean(f1s):.4f} ± {sd(f1s):.4f} | "
                f"{' / '.join(f'{a:.4f}' for a in aucs)} | {statistics.mean(secs):.0f} |"
            )
        lines.append("")
    if args.times:
        big = out / f"shards-x{args.times}"
        if not big.exists():
            repeat(shards, big, args.times)
        lines += [
            f"Epochs at 32 px, batch 64, {args.workers} loader workers; "
            "peak resident memory in MB (the training process; the largest loader worker).",
            "",
            "| data | training images | epoch | peak RSS MB | images/s |",
            "|---|---|---|---|---|",
        ]
        for name, data, epochs in (("x1", shards, 2), (f"x{args.times}", big, 1)):
            run = out / f"memory-{name}"
            if not (run / "fakescope.json").exists():
                # small images and big batches: what is measured is the stream, not the model
                fakescope("train", "--data", str(data), "--out", str(run), "--epochs",
                          str(epochs), "--no-eval", *recipe(args), "--input-size", "32",
                          "--batch-size", "64", log=out / f"memory-{name}.log")  # fmt: skip
            n = sum(e["count"] for e in json.loads((data / "shards.json").read_text())["shards"]
                    if e["split"] == "train")  # fmt: skip
            for r in csv.DictReader(open(run / "log.csv")):
                lines.append(f"| {name} | {n} | {r['epoch']} | {r['peak_rss_mb']} | "
                             f"{r['images_per_s']} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Issue 10's diagnostic: how a run of a generalisation.py recipe transfers to kinds of fake
it never saw, epoch by epoch. The run trains exactly as generalisation.py trains it (same
seed, same batches, the same kept epoch); meanwhile a watcher copies each epoch's committed
weights out of the run's resume folder before the next commit replaces them (the kept epoch's
are the run's own). Afterwards every epoch is scored on the val and test splits of each data
set. The data's fakes only measure here: the run chooses its epoch by its own validation
(pseudo-fakes, for a --real-only recipe), as always.

Writes OUT/RECIPE-sSEED/ (the run, scored like generalisation.py's) and
OUT/RECIPE-sSEED-curve.csv: per epoch, the run's own val loss and AUC (log.csv) and each data
set's val and test AUC.

    python scripts/transfer_curve.py --data-dir ../shared/data --landmarks dlib68 --workers 0 \\
        --seeds 4 --out runs/curves sbi_only_authors
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import threading
from pathlib import Path

from generalisation import LFW, RECIPES, SG, parser, run_one
from recipe_sweep import parse_seeds, run_with_weights, score_rows


def watch(resume: Path, keep: Path, done: threading.Event) -> None:
    """Copy each epoch-end commit (state.json and the tensor file it names) to keep/epoch-N."""
    while not done.wait(0.5):
        try:
            state = json.loads((resume / "state.json").read_text())
            if state.get("batch", 0) or not state.get("epoch"):
                continue
            dest = keep / f"epoch-{state['global']}"
            if dest.exists():
                continue
            tmp = keep / f".epoch-{state['global']}"
            tmp.mkdir(parents=True, exist_ok=True)
            shutil.copy(resume / state["tensors"], tmp / state["tensors"])
            (tmp / "state.json").write_text(json.dumps(state))
            tmp.rename(dest)
        except (OSError, ValueError, KeyError):
            continue  # between a commit and its files: the next poll finds it whole


def epoch_run(run: Path, epoch_dir: Path, out: Path) -> Path:
    """A run folder at ``out`` with the run's description and one epoch's weights."""
    from fakescope.runs import load_resume, load_run

    model = load_run(run).model
    load_resume(epoch_dir, model)
    return run_with_weights(run, model.state_dict(), out)


def main(argv=None) -> int:
    args = parser(__doc__).parse_args(argv)
    # the kept epoch must be one an epoch commit holds (not --ema's average) and one the log
    # names by the lowest val loss (not --select-by auc's mean over sources)
    unsupported = [r for r in args.recipes
                   if RECIPES[r].get("ema") or RECIPES[r].get("select_by") == "auc"]  # fmt: skip
    if unsupported:
        raise SystemExit(f"transfer_curve.py: {', '.join(unsupported)} keeps averaged weights "
                         "(--ema) or chooses by AUC (--select-by auc); not supported")  # fmt: skip
    sets = [Path(args.data_dir) / d for d in (SG, LFW)]
    for recipe in args.recipes:
        for seed in parse_seeds(args.seeds):
            name = f"{recipe}-s{seed}"
            run, keep = Path(args.out) / name, Path(args.out) / f"{name}-epochs"
            done = threading.Event()
            watcher = threading.Thread(target=watch, args=(run / "resume", keep, done))
            watcher.start()
            try:
                run_one(recipe, seed, args)
            finally:
                done.set()
                watcher.join()
            log = {int(r["epoch"]): r for r in csv.DictReader(open(run / "log.csv"))}
            rows = []
            # the last epoch's commit lives a moment (the step's end commits again at once);
            # when it is the kept epoch, the run itself holds its weights
            kept = min(log, key=lambda e: float(log[e]["val_loss"]))
            for e in sorted(log):
                if (keep / f"epoch-{e}").exists():
                    scored = epoch_run(run, keep / f"epoch-{e}", keep / f"run-{e}")
                elif e == kept:
                    scored = run
                else:
                    print(f"{name}: epoch {e}'s weights were not caught; left out", flush=True)
                    continue
                aucs = {f"{r['split']} {r['data']}": r["auc"]
                        for r in score_rows(scored, sets, args.limit)}  # fmt: skip
                rows.append({"epoch": e, "own val loss": log[e]["val_loss"],
                             "own val AUC": log[e]["val_auc"], **aucs})  # fmt: skip
                print(name, rows[-1], flush=True)
            with open(Path(args.out) / f"{name}-curve.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

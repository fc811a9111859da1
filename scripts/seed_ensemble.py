"""The mean vote of several runs, computed from the per-image scores each run already wrote
(RUN/matrix-{val,test}/scores.csv, from scripts/generalisation.py), without scoring again.

`fakescope ensemble --fusion mean` averages the members' logits, each centred on its own
threshold; a constant shift leaves AUC alone, so the AUC of the plain logit mean here is the
ensemble's. With --size K it also scores every K-member subset of the runs, which shows how
much an ensemble's AUC depends on which seeds it holds. With --soup OUT it writes the uniform
average of the runs' weights (a "model soup", Wortsman et al. 2022: one network at one
network's scoring cost) as a run folder and scores it as generalisation.py scores a run.

    python scripts/seed_ensemble.py runs/s1[12]/sbi_only_authors-s?
    python scripts/seed_ensemble.py --size 4 runs/*/sbi_only_authors-s?
    python scripts/seed_ensemble.py --soup runs/soup4 runs/s11/sbi_only_authors-s{0,1} ...
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def read_scores(run: Path, split: str) -> dict[str, dict[str, tuple[int, float]]]:
    """data set -> image path -> (label, logit) for one run and split."""
    out: dict[str, dict[str, tuple[int, float]]] = {}
    path = run / f"matrix-{split}" / "scores.csv"
    if not path.exists():
        raise SystemExit(f"{run}: no {path.relative_to(run)} (a run not yet scored by "
                         "scripts/generalisation.py, or not a run folder)")  # fmt: skip
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            p = min(max(float(row["score"]), 1e-7), 1 - 1e-7)
            out.setdefault(row["data"], {})[row["path"]] = (
                int(row["label"] == "fake"),
                float(np.log(p / (1 - p))),
            )
    return out


def mean_vote_auc(scores: list[dict], data: str) -> float:
    """AUC of the members' mean logit on one data set (the images every member scored)."""
    paths = sorted(set.intersection(*(set(s[data]) for s in scores)))
    y = np.array([scores[0][data][p][0] for p in paths])
    z = np.mean([[s[data][p][1] for p in paths] for s in scores], axis=0)
    return float(roc_auc_score(y, z))


def soup(runs: list[Path], out: Path, data_dir: Path, limit: int = 0) -> None:
    """Average the runs' weights (BatchNorm statistics too) into a run folder at ``out`` that
    keeps the first run's description and split, and print its AUCs (``limit`` images per
    class and set: quick checks)."""
    import torch
    from recipe_sweep import run_with_weights, score_rows

    from fakescope.runs import load_run

    states = [load_run(r).model.state_dict() for r in runs]
    avg = {k: (sum(s[k] for s in states) / len(states) if v.is_floating_point() else v)
           for k, v in states[0].items()}  # fmt: skip
    run_with_weights(runs[0], avg, out)
    torch.set_num_threads(2)
    sets = [data_dir / "sg-ffhq", data_dir / "lfw-faceswap"]
    for row in score_rows(out, sets, limit):
        print(f"soup of {len(runs)}: {row['split']} {row['data']}: AUC {row['auc']:.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders scored by generalisation.py")
    ap.add_argument("--size", type=int, default=0, help="also score every subset of this size")
    ap.add_argument("--soup", type=Path, help="write the runs' weight average here and score it")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = ap.parse_args(argv)
    if args.soup:
        soup(args.runs, args.soup, args.data_dir)
        return 0
    for split in ("val", "test"):
        scores = {r: read_scores(r, split) for r in args.runs}
        sets = sorted(set.intersection(*(set(s) for s in scores.values())))
        each = {d: [mean_vote_auc([scores[r]], d) for r in args.runs] for d in sets}
        whole = {d: mean_vote_auc(list(scores.values()), d) for d in sets}
        for d in sets:
            print(f"{split} {d}: members {' '.join(f'{a:.4f}' for a in each[d])} "
                  f"(mean {np.mean(each[d]):.4f}); mean vote of all {len(args.runs)}: "
                  f"{whole[d]:.4f}")  # fmt: skip
        if args.size and args.size < len(args.runs):
            for d in sets:
                subs = [mean_vote_auc([scores[r] for r in c], d)
                        for c in itertools.combinations(args.runs, args.size)]  # fmt: skip
                print(f"{split} {d}: {len(subs)} subsets of {args.size}: mean "
                      f"{np.mean(subs):.4f} ± {np.std(subs, ddof=1):.4f}, "
                      f"min {min(subs):.4f}, max {max(subs):.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Val AUC of a trained run scored at other input sizes and their mirror images, alone and
averaged: does multi-scale test-time averaging help? (docs/results.md §1; choose on val only.)

    .venv/bin/python scripts/tta_views.py runs/demo --split val
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from fakescope.data.folders import load_samples
from fakescope.data.images import load_rgb
from fakescope.runs import load_run
from fakescope.scoring.scorer import Scorer

SIZES = (256, 299, 340)


def view_logits(scorer: Scorer, images, size: int, flip: bool) -> np.ndarray:
    """Logits of one view: the run's scorer at another input size, mirrored or not."""
    view = Scorer(scorer.backend, replace(scorer.spec, input_size=size, tta=False), 32)
    out = []
    for i in range(0, len(images), 32):
        x = view.tensors(images[i : i + 32])
        out.append(view.logits(torch.flip(x, dims=[3]) if flip else x))
    return torch.cat(out).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run")
    p.add_argument("--data", default="../shared/data/sg-ffhq")
    p.add_argument("--split", default="val")
    a = p.parse_args()
    run = load_run(a.run)
    samples, _ = load_samples(a.data, seed=0)
    chosen = [s for s in samples if s.split == a.split]
    y = np.array([s.label for s in chosen])
    images = [load_rgb(f"{a.data}/{s.path}") for s in chosen]
    scorer = Scorer.of_run(run)
    views = {(z, f): view_logits(scorer, images, z, f) for z in SIZES for f in (False, True)}
    for (z, f), v in views.items():
        print(f"{z} px{' mirrored' if f else ''}: AUC {roc_auc_score(y, v):.4f}")
    for sizes in ((299,), (256,), (340,), (256, 299), (299, 340), SIZES):
        avg = np.mean([views[(z, f)] for z in sizes for f in (False, True)], axis=0)
        name = "+".join(map(str, sizes))
        print(f"average of {name} px and mirrors: AUC {roc_auc_score(y, avg):.4f}")


if __name__ == "__main__":
    main()

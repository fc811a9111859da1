"""A grid of Self-Blended Images (fakescope.data.sbi) made from real training faces of sg-ffhq
and lfw-faceswap: per column the original (with its landmarks), the blend weight, the
pseudo-fake, and the difference to the original (amplified, since most blends are subtle).

    .venv/bin/python scripts/sbi_grid.py [docs/img/sbi_grid.jpg] [--per-set 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import time
from pathlib import Path

import matplotlib
import numpy as np

from fakescope.data.images import load_rgb
from fakescope.data.landmarks import landmark_source
from fakescope.data.sbi import SelfBlend

matplotlib.use("Agg")  # no screen on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETS = ("sg-ffhq", "lfw-faceswap")
DIFF_GAIN = 4


def real_train(root: Path) -> list[str]:
    with open(root / "splits.csv", newline="") as f:
        return sorted(
            r["path"] for r in csv.DictReader(f) if r["label"] == "real" and r["split"] == "train"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", nargs="?", default="docs/img/sbi_grid.jpg")
    shared = Path(os.environ.get("FAKESCOPE_SHARED", ROOT.parent / "shared"))
    p.add_argument("--data", default=str(shared / "data"), help="folder holding the data sets")
    p.add_argument("--per-set", type=int, default=3, help="images from each data set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--landmarks", default="auto", help="auto, dlib68 or mtcnn5")
    p.add_argument("--width", type=int, default=900, help="figure width in pixels")
    a = p.parse_args()

    pick = random.Random(a.seed)
    images = []
    for name in SETS:
        root = Path(a.data) / name
        for rel in pick.sample(real_train(root), a.per_set):
            images.append((name, rel, load_rgb(root / rel)))

    source = landmark_source(a.landmarks)
    sbi = SelfBlend()
    rng = random.Random(a.seed)
    cols = []
    t_lm = t_sbi = 0.0
    for name, rel, im in images:
        t0 = time.perf_counter()
        pts = source.landmarks(im)
        t1 = time.perf_counter()
        fake, weight = sbi(im, pts, rng)
        t_lm, t_sbi = t_lm + t1 - t0, t_sbi + time.perf_counter() - t1
        cols.append((name, rel, im, pts, weight, fake))

    n = len(cols)
    dpi = 100
    cell = a.width / dpi / n
    fig, axes = plt.subplots(4, n, figsize=(a.width / dpi, 4 * cell + 0.5), dpi=dpi, squeeze=False)
    rows = ("original", "blend weight", "pseudo-fake", f"|diff| x{DIFF_GAIN}")
    for j, (name, rel, im, pts, weight, fake) in enumerate(cols):
        diff = np.abs(np.asarray(fake, np.int16) - np.asarray(im, np.int16)).max(axis=2)
        axes[0, j].imshow(im)
        axes[0, j].scatter(pts[:, 0], pts[:, 1], s=0.6, c="lime", linewidths=0)
        axes[0, j].set_title(f"{name}\n{Path(rel).name}", fontsize=6)
        axes[1, j].imshow(weight, cmap="gray", vmin=0, vmax=1)
        axes[2, j].imshow(fake)
        axes[3, j].imshow(np.clip(diff * DIFF_GAIN, 0, 255), cmap="magma", vmin=0, vmax=255)
        for i in range(4):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(rows[i], fontsize=7)
    fig.suptitle(
        f"Self-Blended Images ({source.name} landmarks, seed {a.seed})", fontsize=8, y=0.995
    )
    fig.tight_layout(pad=0.2, h_pad=0.1, w_pad=0.1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, pil_kwargs={"quality": 80, "optimize": True})
    plt.close(fig)
    print(
        f"{out}: {n} images; landmarks ({source.name}) {1000 * t_lm / n:.1f} ms/image "
        f"(first includes loading the model), SelfBlend {1000 * t_sbi / n:.1f} ms/image"
    )


if __name__ == "__main__":
    main()

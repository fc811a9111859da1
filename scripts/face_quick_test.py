"""How the "auto" face stage's quick Haar test agrees with MTCNN, and what it saves (docs/faces.md).

    python scripts/face_quick_test.py [--per-class 60] [--data ../shared/data]

For the first N images of each class of each sample set: is the image a face crop by MTCNN's
rule alone, and by the quick test; the disagreements in both directions, and each one's rate
(one thread, images decoded beforehand).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fakescope.data.faces import FaceCropper, MTCNNDetector, QuickTightTest
from fakescope.data.images import list_files, load_rgb
from fakescope.model.runtime import cpu_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=60)
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", default=str(here.parent / "shared" / "data"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    files = []
    for d in ("sg-ffhq", "lfw-faceswap"):
        for c in ("real", "fake"):
            files += list_files([Path(a.data) / d / c])[: a.per_class]
    ims = [load_rgb(f) for f in files]
    mtcnn, quick = FaceCropper("auto", quick_test=False), QuickTightTest()
    t = time.perf_counter()
    ref = np.array([mtcnn.tight_face(im, mtcnn.faces(im)) is not None for im in ims])
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    fast = np.array([quick.tight_face(im) is not None for im in ims])
    t_fast = time.perf_counter() - t
    print(f"{len(ims)} images ({cpu_summary()}, one thread)")
    print(f"  MTCNN: {ref.sum()} face crops, {len(ims) / t_ref:.1f} img/s")
    print(f"  quick test: {fast.sum()} face crops, {len(ims) / t_fast:.1f} img/s "
          f"({t_ref / t_fast:.1f}x)")  # fmt: skip
    print(f"  quick says crop, MTCNN not: {(fast & ~ref).sum()}; "
          f"MTCNN says crop, quick not (MTCNN decides): {(ref & ~fast).sum()}")  # fmt: skip
    layouts(ims)


def layouts(ims) -> None:
    """MTCNN as fakescope runs it (channels_last) against facenet-pytorch as shipped (NCHW),
    timed in turns on the same images."""
    from facenet_pytorch import MTCNN

    ours = MTCNNDetector()
    shipped = MTCNN(keep_all=True, device="cpu", min_face_size=20, select_largest=False)
    times = {"channels_last": [], "NCHW": []}
    for _ in range(2):
        for name, detect in (("channels_last", ours.detect), ("NCHW", shipped.detect)):
            t = time.perf_counter()
            for im in ims:
                detect(im)
            times[name].append((time.perf_counter() - t) / len(ims))
    cl, nchw = min(times["channels_last"]), min(times["NCHW"])
    print(f"  MTCNN per image: channels_last {1e3 * cl:.1f} ms, NCHW {1e3 * nchw:.1f} ms "
          f"({nchw / cl:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()

"""How the "auto" face stage's quick test agrees with MTCNN, and what it saves (docs/faces.md).

    python scripts/face_quick_test.py [--per-class 60] [--composites 100] [--data ../shared/data]

For the first N images of each class of each sample set (0: all), and for composed non-crops
(faces pasted small, in a 2x2 grid, on one half of a wide canvas, three in a row): is the image
a face crop by MTCNN's rule alone, by MTCNN as "auto" runs it (a big face first, then the
whole search), and by the quick test with and without its LBP pass; the disagreements in both
directions, and each one's time per image (one thread, images decoded beforehand).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from fakescope.data.faces import FaceCropper, MTCNNDetector, QuickTightTest, lbp_cascade_file
from fakescope.data.images import list_files, load_rgb
from fakescope.model.runtime import cpu_summary

KINDS = ("small face on a blurred photo", "2x2 grid", "one half of a wide canvas", "three in a row")


def composites(ims: list, n: int, seed: int = 0) -> list:
    """Non-crops made of the sample's faces, the kinds in turn. The blurred photo behind the
    small face is itself a face, blurred past what MTCNN finds but not past Haar."""
    rng = random.Random(seed)

    def face(side: int) -> Image.Image:
        return ims[rng.randrange(len(ims))].resize((side, side))

    out = []
    for i in range(n):
        kind = i % len(KINDS)
        if kind == 0:
            c = face(32).resize((512, 512))
            c.paste(face(200), (rng.randrange(0, 312), rng.randrange(0, 312)))
        elif kind == 1:
            c = Image.new("RGB", (512, 512), (128, 128, 128))
            for j in range(4):
                c.paste(face(256), ((j % 2) * 256, (j // 2) * 256))
        elif kind == 2:
            c = Image.new("RGB", (600, 400), (30, 60, 90))
            c.paste(face(300), (rng.choice([0, 300]), 50))
        else:
            c = Image.new("RGB", (768, 300), (200, 200, 200))
            for j in range(3):
                c.paste(face(220), (j * 256 + 18, 40))
        out.append(c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=60, help="0: every image")
    ap.add_argument("--composites", type=int, default=100)
    ap.add_argument("--mtcnn-layouts", action="store_true", help="also time MTCNN's layouts")
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", default=str(here.parent / "shared" / "data"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    files = []
    for d in ("sg-ffhq", "lfw-faceswap"):
        for c in ("real", "fake"):
            found = list_files([Path(a.data) / d / c])
            files += found[: a.per_class] if a.per_class else found
    ims = [load_rgb(f) for f in files]
    made = composites(ims, a.composites)
    n = len(ims)
    mtcnn = FaceCropper("auto", quick_test=False)
    ref, t_whole = timed(lambda im: mtcnn.tight_face(im, mtcnn.faces(im)) is not None, ims, made)
    t_ref = (t_whole[0] * n + t_whole[1] * len(made)) / len(ref)
    print(f"{n} sample images and {len(made)} composed non-crops ({cpu_summary()}, one thread)")
    print(f"  MTCNN: {ref[:n].sum()} of the sample and {ref[n:].sum()} of the composed are "
          f"face crops by the rule, {1e3 * t_ref:.2f} ms per image")  # fmt: skip
    # what "auto" runs where the quick test has no answer: a big face first, then the whole
    big, t_big = timed(lambda im: whole_image(mtcnn.crops(im), im), ims, made)
    print(f"  MTCNN a big face first, then the whole search: {1e3 * t_big[0]:.2f} ms per sample "
          f"image and {1e3 * t_big[1]:.2f} per composed (the whole search alone: "
          f"{1e3 * t_whole[0]:.2f} and {1e3 * t_whole[1]:.2f}); decisions unlike the whole "
          f"search's: sample {(big != ref)[:n].sum()}, composed {(big != ref)[n:].sum()} "
          f"({by_kind(big & ~ref, n)} called crops)")  # fmt: skip
    variants = [("Haar cascades", QuickTightTest(lbp=False))]
    if lbp_cascade_file():
        variants.append(("LBP, then Haar", QuickTightTest(lbp=True)))
    else:
        print("  (no LBP cascade installed: Debian's opencv-data has one)")
    for name, quick in variants:
        t = time.perf_counter()
        fast = np.array([quick.tight_face(im) is not None for im in ims + made])
        ms = 1e3 * (time.perf_counter() - t) / len(fast)
        left = n - fast[:n].sum()
        wrong = fast & ~ref
        print(f"  quick test, {name}: {ms:.3f} ms per image; answers {fast[:n].sum()} of the "
              f"sample, leaves {left} to MTCNN ({ms + 1e3 * t_big[0] * left / n:.3f} ms "
              f"per sample image with MTCNN, a big face first, for those)")  # fmt: skip
        print(f"    says crop, MTCNN not: sample {wrong[:n].sum()}; composed {wrong[n:].sum()} "
              f"({by_kind(wrong, n)}); MTCNN says crop, quick not: "
              f"{(ref & ~fast)[:n].sum()}")  # fmt: skip
    if a.mtcnn_layouts:
        layouts(ims)


def timed(decide, ims, made) -> tuple[np.ndarray, tuple[float, float]]:
    """``decide`` on every sample image and composed one; seconds per image of each."""
    out, times = [], []
    for group in (ims, made):
        t = time.perf_counter()
        out += [decide(im) for im in group]
        times.append((time.perf_counter() - t) / max(1, len(group)))
    return np.array(out), (times[0], times[1])


def whole_image(found, im) -> bool:
    """Whether the face stage's answer is "score the whole image": a face crop."""
    return len(found) == 1 and found[0][1] is im


def by_kind(called, n: int) -> str:
    """How many composed non-crops of each kind ``called`` (over sample, then composed) holds."""
    return ", ".join(f"{k} {called[n + i :: len(KINDS)].sum()}" for i, k in enumerate(KINDS))


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

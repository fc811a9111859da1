"""What decoding big JPEGs at reduced scale saves when whole images are scored (docs/benchmarks.md).

    python scripts/draft_bench.py --run runs/demo [--n 40] [--side 4032]

``../shared`` has no big photos, so N sg-ffhq test images (half real, half fake) are enlarged
to a phone photo's size (SIDE x 3/4 SIDE, bicubic, JPEG quality 90) in a temporary folder.
Each is then read and made into the network's input twice, one thread, in turns: decoded at
full size, and at the reduced scale ``--faces never`` uses (``load_rgb(least_side=2 x
input)``). Prints ms per image both ways, their ratio, and how far the run's scores move.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fakescope.bench import spread
from fakescope.data.images import list_files, load_rgb
from fakescope.model.runtime import cpu_summary
from fakescope.scoring.scorer import Scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--side", type=int, default=4032, help="long side of the enlarged photos")
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", default=str(here.parent / "shared" / "data" / "sg-ffhq"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    scorer = Scorer.of_run(a.run, "cpu", runtime="torch")
    least = 2 * scorer.spec.input_size
    sources = spread(list_files([a.data]), a.n)
    size = (a.side, a.side * 3 // 4)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, src in enumerate(sources):
            paths.append(Path(tmp) / f"{i:03d}.jpg")
            Image.open(src).convert("RGB").resize(size, Image.BICUBIC).save(paths[-1], quality=90)
        times = {"full": [], "reduced": []}
        inputs = {}
        for _ in range(2):
            for name, side in (("full", None), ("reduced", least)):
                t = time.perf_counter()
                inputs[name] = scorer.tensors([load_rgb(p, side) for p in paths])
                times[name].append((time.perf_counter() - t) / len(paths))
        decoded = load_rgb(paths[0], least).size
    full, reduced = min(times["full"]), min(times["reduced"])
    scores = {k: scorer.score_tensors(x) for k, x in inputs.items()}
    diff = np.abs(scores["full"] - scores["reduced"])
    flips = int(
        ((scores["full"] >= scorer.threshold) != (scores["reduced"] >= scorer.threshold)).sum()
    )
    print(f"{len(paths)} JPEGs of {size[0]}x{size[1]}, {scorer.spec.backbone} at "
          f"{scorer.spec.input_size}px ({cpu_summary()}, one thread)")  # fmt: skip
    print(f"  read + input tensor: full decode {1e3 * full:.1f} ms, reduced ({decoded[0]}x"
          f"{decoded[1]}) {1e3 * reduced:.1f} ms per image ({full / reduced:.1f}x)")  # fmt: skip
    print(f"  score change: max {diff.max():.4f}, mean {diff.mean():.4f}; "
          f"verdicts changed at the run's threshold: {flips} of {len(paths)}")  # fmt: skip


if __name__ == "__main__":
    main()

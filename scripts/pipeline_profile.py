"""Where `predict`'s CPU goes, stage by stage (docs/benchmarks.md, session 36).

    python scripts/pipeline_profile.py --run runs/demo [--faces auto] [--limit 330] [--reps 3]

Runs `predict` over the files ``--reps`` times and prints images/s, the process's CPU time per
image, the time the cores stood idle, and the CPU time each stage took on the thread that ran
it: decoding, the face stage's quick test and MTCNN, the input tensors, the exported network's
calls and the run's network confirming its scores near the threshold. What is left is the
exported runtime's own threads (OpenVINO's streams) and the pipeline's glue. Each stage is
wrapped for the run only, with ``time.thread_time`` around it; the wrapping costs a few
microseconds per call. Compare a stage with the same stage timed alone on one thread
(`scripts/face_quick_test.py`, `fakescope bench --e2e`) to see what sharing the cores costs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from collections import defaultdict

from fakescope.bench import spread
from fakescope.data import faces
from fakescope.data.images import list_files
from fakescope.model.runtime import cpu_summary
from fakescope.scoring import engines, predictor, scorer

# (owner, attribute, label): what is timed. MTCNN runs inside the face stage's caller, the
# export's calls inside the screening: those two are parts of other rows, not added to them.
STAGES = (
    (predictor, "load_rgb", "decode"),
    (faces.QuickTightTest, "tight_face", "face stage: quick test"),
    (faces.FaceCropper, "faces", "face stage: MTCNN"),
    (scorer.Scorer, "tensors", "input tensors"),
    (engines.ConfirmingBackend, "_screen", "export's calls (screening)"),
    (engines.OpenVinoBackend, "logits", "  of them OpenVINO's"),
    (engines.ConfirmingBackend, "_network_logits", "network confirming"),
)
PARTS = ("face stage: MTCNN", "  of them OpenVINO's")


class StageClock:
    """Thread CPU time, wall time and calls per stage, summed over every thread."""

    def __init__(self):
        self.cpu, self.wall, self.calls = defaultdict(float), defaultdict(float), defaultdict(int)
        self._lock = threading.Lock()

    def wrap(self, fn, label: str):
        def timed(*args, **kwargs):
            c, w = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dc, dw = time.thread_time() - c, time.perf_counter() - w
                with self._lock:
                    self.cpu[label] += dc
                    self.wall[label] += dw
                    self.calls[label] += 1

        return timed

    def clear(self) -> None:
        for d in (self.cpu, self.wall, self.calls):
            d.clear()


@contextlib.contextmanager
def timed_stages(clock: StageClock):
    """Every stage of ``STAGES`` wrapped for the duration, put back afterwards."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in STAGES]
    try:
        for (owner, name, label), (_, _, fn) in zip(STAGES, saved, strict=True):
            setattr(owner, name, clock.wrap(fn, label))
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def profile(run: str, data: str, faces_mode: str, limit: int, reps: int, batch: int) -> dict:
    files = spread(list_files([data]), limit)
    clock = StageClock()
    with timed_stages(clock):
        pred = predictor.Predictor(run, batch_size=batch, faces=faces_mode, progress=False)
        for _ in pred.predict(files[:batch]):  # the runtimes set up their kernels
            pass
        clock.clear()
        t0, c0 = time.perf_counter(), os.times()
        for _ in range(reps):
            for _ in pred.predict(files):
                pass
        t1, c1 = time.perf_counter(), os.times()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    images = reps * len(files)
    wall, cpu = t1 - t0, (c1.user - c0.user) + (c1.system - c0.system)
    backend = pred.scorer.backend
    return {
        "engine": pred.scorer.engine, "files": len(files), "images": images, "cores": cores,
        "rate": images / wall, "cpu_ms": 1000 * cpu / images,
        "idle_ms": 1000 * max(cores * wall - cpu, 0.0) / images,
        "stages": {k: (1000 * clock.cpu[k] / images, 1000 * clock.wall[k] / images,
                       clock.calls[k]) for k in clock.cpu},
        "confirmed": getattr(backend, "confirmed", None), "seen": getattr(backend, "seen", None),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default="../shared/data/sg-ffhq")
    ap.add_argument("--faces", default="auto", choices=faces.FACE_MODES)
    ap.add_argument("--limit", type=int, default=330, help="files, spread over the folder")
    ap.add_argument("--reps", type=int, default=3, help="passes over the files")
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    r = profile(a.run, a.data, a.faces, a.limit, a.reps, a.batch)
    print(f"pipeline profile: {a.run} with {r['engine']}, {r['files']} files x {a.reps}, faces "
          f"{a.faces}, batch {a.batch}, CPU: {cpu_summary()}")  # fmt: skip
    print(f"  {r['rate']:.1f} img/s; process CPU {r['cpu_ms']:.2f} ms per image; "
          f"{r['cores']} cores idle {r['idle_ms']:.2f} ms per image")  # fmt: skip
    print(f"  {'stage':28} {'CPU ms/img':>10} {'wall ms/img':>11} {'calls':>6}")
    counted = 0.0
    for _, _, label in STAGES:
        if label in r["stages"]:
            cpu, wall, calls = r["stages"][label]
            print(f"  {label:28} {cpu:10.2f} {wall:11.2f} {calls:6d}")
            counted += 0.0 if label in PARTS else cpu
    print(f"  {'rest (runtime threads, glue)':28} {r['cpu_ms'] - counted:10.2f}")
    if r["confirmed"] is not None:
        print(f"  the run's network confirmed {r['confirmed']} of {r['seen']} images")


if __name__ == "__main__":
    main()

"""How close `predict`'s pipeline comes to what the CPU allows (docs/benchmarks.md, session 17).

    python scripts/pipeline_ceiling.py --run runs/demo [--faces auto] [--limit 330] [--rounds 3]

On a CPU the network and the preparation of files (decoding, the face stage, the input tensor)
share the same cores, so end to end cannot beat the two costs added: 1 / (1/model + 1/prep),
each measured alone on all the cores. Preparation alone is timed three ways: one thread, the
pipeline's worker threads, and as many worker processes (spawned, each with its own detector),
which no lock in the Python process can slow. The ceiling uses the fastest. Every figure is
timed in turns, ``--rounds`` times, and medians are printed with the CPU's flags.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import torch

from fakescope.bench import scoring_rate, spread
from fakescope.data.images import list_files
from fakescope.model.runtime import cpu_summary
from fakescope.scoring.predictor import Predictor

_worker: Predictor | None = None


def _start_worker(run: str, faces: str) -> None:
    global _worker
    torch.set_num_threads(1)
    _worker = Predictor(run, device="cpu", faces=faces, progress=False, runtime="torch")


def _prepare(pred: Predictor, path) -> int:
    prep = pred.prepare_file(path)
    if prep.units:
        pred.scorer.tensors([u.image for u in prep.units])
    return len(prep.units)


def _prepare_chunk(paths) -> int:
    return sum(_prepare(_worker, p) for p in paths)


def _rate(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default="../shared/data/sg-ffhq")
    ap.add_argument("--faces", default="auto", choices=["auto", "always", "never"])
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--limit", type=int, default=330)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    files = spread(list_files([a.data]), a.limit)
    pred = Predictor(a.run, device="cpu", batch_size=a.batch, faces=a.faces, progress=False,
                     runtime=a.runtime, workers=a.workers)  # fmt: skip
    size = pred.run.input_size
    x = torch.randn(a.batch, 3, size, size)
    print(
        f"pipeline ceiling: {a.run} ({pred.scorer.engine}), {len(files)} files of {a.data}, "
        f"faces {a.faces}, batch {a.batch}, {a.workers} workers, CPU: {cpu_summary()}"
    )
    n = len(files)
    shares = [files[i :: a.workers] for i in range(a.workers)]
    ctx = mp.get_context("spawn")  # fork would copy the parent's running threads' locks
    rates: dict[str, list[float]] = {}
    threads = ThreadPoolExecutor(a.workers)  # the pipeline's own pool is inside predict

    def threaded(paths):
        with pred.worker_threads():  # as predict runs its workers
            return list(threads.map(lambda f: _prepare(pred, f), paths))

    def one_thread(paths):
        with pred.worker_threads():
            return [_prepare(pred, f) for f in paths]

    with threads, ProcessPoolExecutor(a.workers, ctx, _start_worker, (a.run, a.faces)) as procs:
        list(procs.map(_prepare_chunk, [h[:2] for h in shares]))  # start-up, not timed
        list(pred.predict(files[:8]))
        timed = {
            "model only": lambda: scoring_rate(pred.scorer, x, max(2, n // a.batch // 4)),
            "prepare, one thread": lambda: _rate(lambda: one_thread(files), n),
            f"prepare, {a.workers} threads": lambda: _rate(lambda: threaded(files), n),
            f"prepare, {a.workers} processes": lambda: _rate(
                lambda: list(procs.map(_prepare_chunk, shares)), n
            ),
            "end to end (predict)": lambda: _rate(lambda: list(pred.predict(files)), n),
        }
        for r in range(a.rounds):
            for name, fn in timed.items():
                rates.setdefault(name, []).append(fn())
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    prep = max(v for k, v in med.items() if k.startswith("prepare"))
    ceiling = 1 / (1 / med["model only"] + 1 / prep)
    for k, v in med.items():
        print(f"  {k:28} {v:7.1f} img/s")
    e2e = med["end to end (predict)"]
    print(
        f"  ceiling 1/(1/model + 1/prepare) {ceiling:7.1f} img/s; end to end is "
        f"{e2e / ceiling:.2f}x of it and {e2e / med['model only']:.2f}x of model only"
    )


if __name__ == "__main__":
    main()

"""Training steps of mobilenet_v2 at 299 px on random input: one process with all CPU threads
against two one-thread processes, with and without DistributedDataParallel's gradient
all-reduce (gloo). Prints images per second of each and the ratios to the one-process baseline.

    .venv/bin/python scripts/procs_bench.py [--steps 12] [--batch 8]
"""

from __future__ import annotations

import argparse
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fakescope.bench import training_steps
from fakescope.model.detector import Detector
from fakescope.model.runtime import Runtime, keep_freed_memory


def _img_per_s(model, net, batch, steps) -> float:
    rt = Runtime(torch.device("cpu"), None, True)
    return training_steps(model, rt, torch.randn(batch, 3, 299, 299), steps, net=net)["img_s"]


def _model():
    torch.manual_seed(0)
    m = Detector("mobilenet_v2", "gap", 299, weights="none")
    return m.to(memory_format=torch.channels_last).train()


def _worker(rank, port, steps, batch, ddp, result):
    keep_freed_memory()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    m = _model()
    net = torch.nn.parallel.DistributedDataParallel(m) if ddp else m
    rate = _img_per_s(m, net, batch, steps)
    out = [None, None]
    dist.all_gather_object(out, rate)
    if rank == 0:
        result.put(sum(out))
    dist.destroy_process_group()


def two_processes(steps, batch, ddp) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(port, steps, batch, ddp, q), nprocs=2)
    return q.get()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8, help="images per process and step")
    a = p.parse_args()
    keep_freed_memory()
    m = _model()
    base = _img_per_s(m, m, a.batch, a.steps)
    print(f"1 process x {torch.get_num_threads()} threads: {base:6.2f} img/s")
    for ddp in (True, False):
        r = two_processes(a.steps, a.batch, ddp)
        what = "DDP all-reduce" if ddp else "no all-reduce"
        print(f"2 processes x 1 thread ({what}): {r:6.2f} img/s  ratio {r / base:.2f}x")


if __name__ == "__main__":
    main()

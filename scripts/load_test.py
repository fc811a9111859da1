"""Issue 11's load test: many concurrent clients against `fakescope serve`, with the CLI's
batch throughput on the same images measured in the same run as the baseline.

For each mode (micro-batching on: --max-batch 16; off: --max-batch 1) a server is started on a
free port, CLIENTS clients each post one image at a time (cycling through IMAGES) for SECONDS,
and the script prints images/s, latency percentiles, status counts and connection errors.
Then `fakescope predict` scores the same images once, and the ratio of each mode's throughput
to it is printed.

    OMP_NUM_THREADS=2 python scripts/load_test.py runs/demo --images ../shared/data/sg-ffhq \
        --clients 200 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fakescope.cli", "serve", run, "--port", str(port), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become ready")


async def hammer(url: str, images: list[Path], clients: int, seconds: float) -> dict:
    payloads = [(p.name, p.read_bytes()) for p in images]
    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    conn_errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(i: int, http: httpx.AsyncClient):
        nonlocal conn_errors
        k = i
        while time.perf_counter() < stop:
            name, data = payloads[k % len(payloads)]
            k += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(url + "/v1/predict", files=[("files", (name, data))])
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                conn_errors += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {
        "images_per_s": len(latencies) / wall,
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
        "statuses": dict(statuses),
        "connection_errors": conn_errors,
        "wall_s": wall,
    }


def cli_rate(run: str, images: list[Path], faces: str) -> float:
    """`fakescope predict`'s batch throughput: its own code path (Predictor.predict), timed
    after the model is loaded, so start-up does not flatter the service."""
    from fakescope.scoring.predictor import Predictor

    pred = Predictor(run, faces=faces, progress=False)
    list(pred.predict(images[:4]))  # warm up
    t0 = time.perf_counter()
    rows = list(pred.predict(images))
    assert rows
    return len(images) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    p.add_argument("--images", default="../shared/data/sg-ffhq", help="data folder (test split)")
    p.add_argument("--count", type=int, default=120, help="distinct images cycled through")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--faces", default="auto")
    a = p.parse_args(argv)
    rows = [r.split(",") for r in (Path(a.images) / "splits.csv").read_text().splitlines()[1:]]
    images = [Path(a.images) / r[0] for r in rows if r[2].strip() == "test"][: a.count]
    print(f"{len(images)} images, {a.clients} clients x {a.seconds:g} s, faces {a.faces}, "
          f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip
    results = {}
    for mode, batch in (("micro-batching on (16)", "16"), ("micro-batching off", "1")):
        proc, url = start(a.run, ["--faces", a.faces, "--max-batch", batch])
        try:
            results[mode] = asyncio.run(hammer(url, images, a.clients, a.seconds))
        finally:
            proc.terminate()
            proc.wait(30)
        r = results[mode]
        print(f"{mode}: {r['images_per_s']:.1f} img/s; latency p50 {r['p50']:.2f} s, p95 "
              f"{r['p95']:.2f} s, p99 {r['p99']:.2f} s; statuses {r['statuses']}; connection "
              f"errors {r['connection_errors']}", flush=True)  # fmt: skip
    base = cli_rate(a.run, images, a.faces)
    print(f"fakescope predict on the same {len(images)} images: {base:.1f} img/s (model loaded)")
    for mode, r in results.items():
        print(f"  {mode}: {r['images_per_s'] / base:.2f}x the CLI's rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 14's fuzzing campaign: N generated inputs per target (image bytes in every format
Pillow writes, videos, splits.csv, fakescope.json, weights files, `train` command lines), each
of which must end as a result or one clear FakescopeError. A traceback, a hang (over
--timeout seconds for one input) or a crash stops the target and prints the falsifying input.
Prints, per target: inputs tried, how they ended, seconds, and the process's peak memory.

    OMP_NUM_THREADS=1 python scripts/fuzz.py --examples 10000          # the docs' campaign
    python scripts/fuzz.py --examples 200 image splits                  # a quick look
"""

from __future__ import annotations

import argparse
import collections
import resource
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the targets live with the tests (tests/fuzz_targets.py)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang("one input took longer than the timeout")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def campaign(name: str, n: int, timeout: int, folder: Path, run_dir: Path | None):
    from hypothesis import HealthCheck, given, settings

    from tests import fuzz_targets as T

    strategy, check = T.target(name, folder, run_dir)
    outcomes: collections.Counter = collections.Counter()

    @settings(max_examples=n, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def run(data):
        signal.alarm(timeout)
        try:
            outcomes[check(data)] += 1
        finally:
            signal.alarm(0)

    t0 = time.time()
    run()
    return outcomes, time.time() - t0


def tiny_run(folder: Path) -> Path:
    """A real run to take the JSON and weights seeds from (mobilenet_v2 at 64 px, one epoch)."""
    from fakescope import TrainConfig, train

    weights = ROOT.parent / "shared" / "weights" / "mobilenet_v2-b0353104.pth"
    out = folder / "run"
    train(TrainConfig(data=str(ROOT.parent / "shared/data/sg-ffhq"), out=str(out), steps=1,
                      backbone="mobilenet_v2", head="gap", weights=str(weights), input_size=64,
                      epochs=1, limit_per_class=8, batch_size=8, face_margin=1.3,
                      tensorboard=False), progress=False)  # fmt: skip
    return out


def main(argv=None) -> int:
    from tests.fuzz_targets import TARGETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("targets", nargs="*", help=f"any of {', '.join(TARGETS)} (default: all)")
    p.add_argument("--examples", type=int, default=10_000, help="inputs per target")
    p.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    a = p.parse_args(argv)
    a.targets = a.targets or TARGETS
    if unknown := set(a.targets) - set(TARGETS):
        p.error(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")
    import tempfile

    signal.signal(signal.SIGALRM, _alarm)
    print(f"{'target':14} {'inputs':>7} {'results':>8} {'errors':>7} {'usage':>6} "
          f"{'seconds':>8} {'peak MiB':>9}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fakescope-fuzz-") as d:
        folder = Path(d)
        run_dir = tiny_run(folder) if {"run_json", "weights"} & set(a.targets) else None
        for name in a.targets:
            outcomes, secs = campaign(name, a.examples, a.timeout, folder, run_dir)
            total = sum(outcomes.values())
            print(f"{name:14} {total:7d} {outcomes['ok']:8d} {outcomes['error']:7d} "
                  f"{outcomes['usage']:6d} {secs:8.1f} {peak_mib():9.0f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

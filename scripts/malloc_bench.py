"""Training steps of mobilenet_v2 at 299 px, batch 8, channels_last, in two fresh processes:
glibc's default malloc, then with `device.keep_freed_memory()`. Prints images per second, CPU
time in user and kernel mode and minor page faults of each, and the ratio.

    .venv/bin/python scripts/malloc_bench.py [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

PROBE = """
import json, sys, torch
from fakescope.bench import training_steps
from fakescope.model.detector import Detector
from fakescope.model.runtime import Runtime, keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
torch.manual_seed(0)
rt = Runtime(torch.device("cpu"), None, True)
m = rt.prepare(Detector("mobilenet_v2", "gap", 299, weights="none"))
r = training_steps(m, rt, torch.randn(8, 3, 299, 299), int(sys.argv[2]), warmup=1)
print(json.dumps(r))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=15)
    steps = str(p.parse_args().steps)
    res = {}
    for mode in ("default", "kept"):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, mode, steps], capture_output=True, text=True, check=True
        ).stdout
        res[mode] = r = json.loads(out.strip().splitlines()[-1])
        print(
            f"{mode:8} {r['img_s']:6.2f} img/s  user {r['user_s']:5.1f} s  "
            f"kernel {r['sys_s']:5.1f} s  minor faults {r['faults']:,}"
        )
    print(f"ratio {res['kept']['img_s'] / res['default']['img_s']:.2f}x")


if __name__ == "__main__":
    main()

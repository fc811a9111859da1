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
import json, resource, sys, time, torch
from fakescope.model.runtime import keep_freed_memory
from fakescope.model.detector import Detector
if sys.argv[1] == "kept":
    assert keep_freed_memory()
torch.manual_seed(0)
m = Detector("mobilenet_v2", "gap", 299, weights="none").to(memory_format=torch.channels_last)
m.train()
x = torch.randn(8, 3, 299, 299).contiguous(memory_format=torch.channels_last)
y = torch.rand(8, 1)
opt = torch.optim.Adam(m.parameters(), 2e-4)
def step():
    opt.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(m(x), y).backward()
    opt.step()
step()
r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(int(sys.argv[2])):
    step()
secs, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"img_s": int(sys.argv[2]) * 8 / secs, "user_s": r1.ru_utime - r0.ru_utime,
                  "sys_s": r1.ru_stime - r0.ru_stime, "faults": r1.ru_minflt - r0.ru_minflt}))
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

"""The CPU runtime's malloc setting: freed activation memory is reused, not faulted in anew."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from fakescope.model.runtime import select_runtime
from fakescope.model.detector import Detector
if sys.argv[1] == "tuned":
    rt = select_runtime("cpu")
    assert rt.malloc_keeps_memory and "malloc keeps memory" in rt.describe(), rt.describe()
torch.manual_seed(0)
m = Detector("mobilenet_v2", "gap", 224, weights="none").train()
opt = torch.optim.Adam(m.parameters(), 1e-4)
x = torch.randn(8, 3, 224, 224)
def step():
    opt.zero_grad()
    m(x).sum().backward()
    opt.step()
for _ in range(2):  # warm-up: the first blocks are faulted in either way
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(r.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_cpu_runtime_reuses_freed_memory():
    """Three real training steps: with glibc's defaults each step faults in (and the kernel
    zeroes) hundreds of MB of fresh pages for its activations; the tuned runtime reuses them."""
    plain, tuned = faults("plain"), faults("tuned")
    assert plain > 50_000  # ~200 MB of pages per 3 steps at the least
    assert tuned * 5 < plain


def test_precision_fp32_never_autocasts():
    from fakescope.errors import FakescopeError
    from fakescope.model.runtime import select_runtime

    rt = select_runtime("cpu", precision="fp32")
    assert rt.amp_dtype is None and rt.channels_last and "fp32" in rt.describe()
    with pytest.raises(FakescopeError, match="precision"):
        select_runtime("cpu", precision="fp16")

"""The CPU runtime's malloc setting: freed activation memory is reused, not faulted in anew."""

import subprocess
import sys

import pytest

PROBE = """
import sys, torch
from fakescope.bench import training_steps
from fakescope.model.detector import Detector
from fakescope.model.runtime import Runtime, select_runtime
if sys.argv[1] == "tuned":
    rt = select_runtime("cpu")
    assert rt.malloc_keeps_memory and "malloc keeps memory" in rt.describe(), rt.describe()
torch.manual_seed(0)
m = Detector("mobilenet_v2", "gap", 224, weights="none")
# the first blocks are faulted in either way: three warm-up steps, then six counted (the tuned
# heap can still grow once inside the counted steps, 0-25,000 faults over session 14's probes,
# while the plain runtime faults in every step anew)
rt = Runtime(torch.device("cpu"), None, False)
r = training_steps(m, rt, torch.randn(8, 3, 224, 224), 6, warmup=3)
print(r["faults"])
"""


def faults(mode: str) -> int:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(r.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_cpu_runtime_reuses_freed_memory():
    """Six real training steps: with glibc's defaults each step faults in (and the kernel
    zeroes) hundreds of MB of fresh pages for its activations; the tuned runtime reuses them."""
    plain, tuned = faults("plain"), faults("tuned")
    assert plain > 100_000  # ~400 MB of pages per 6 steps at the least
    assert tuned * 5 < plain


def test_precision_fp32_never_autocasts():
    from fakescope.errors import FakescopeError
    from fakescope.model.runtime import select_runtime

    rt = select_runtime("cpu", precision="fp32")
    assert rt.amp_dtype is None and rt.channels_last and "fp32" in rt.describe()
    with pytest.raises(FakescopeError, match="precision"):
        select_runtime("cpu", precision="fp16")


def test_bf16_probe_is_torch_s_and_agrees_with_the_kernel():
    """The probes must exist (torch 2.14 moved them once and the old lookup found nothing, so bf16
    stayed off on every machine) and answer as the kernel's CPU flags do."""
    import torch

    from fakescope.model.runtime import (
        BF16_FLAGS,
        BF16_PROBES,
        cpu_flags,
        cpu_has_bf16,
        select_runtime,
    )

    for name in BF16_PROBES:
        assert callable(getattr(torch.cpu, name)), f"torch.cpu.{name} is gone"
    if not sys.platform.startswith("linux"):
        pytest.skip("the kernel's flags are read on Linux")
    flags = cpu_flags()
    assert "sse2" in flags or "asimd" in flags or "fp" in flags  # the flags were read at all
    assert cpu_has_bf16() == bool(flags & set(BF16_FLAGS))
    rt = select_runtime("cpu")
    assert (rt.amp_dtype == torch.bfloat16) == cpu_has_bf16()


def test_bench_times_the_loader_beside_the_model():
    """`fakescope bench --data` on real images: the loader's rate for each worker count and
    the model's training rate, each a positive number, with a verdict per worker count, and
    the rate of training fed by the loader."""
    from .conftest import SG

    r = subprocess.run(
        [sys.executable, "-m", "fakescope.cli", "bench", "--data", str(SG), "--backbone",
         "mobilenet_v2", "--input-size", "64", "--batch-size", "4", "--workers", "0,1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    model = next(float(x.split(":")[-1].split()[0]) for x in lines if "model training" in x)
    loaders = [x for x in lines if x.strip().startswith("loader (")]
    assert model > 0 and len(loaders) == 2 * 2  # two worker counts, two sets of augmentations
    assert [x.strip() for x in lines if "augmentations:" in x] == [
        "augmentations: train's defaults",
        "augmentations: forensic",
    ]
    for x in loaders:
        assert float(x.split(":")[1].split()[0]) > 0
        assert "keeps up" in x or "starves the model" in x
    # then training on batches straight from the loader, with the most workers asked for
    fed = [x for x in lines if "training fed by the loader" in x]
    assert len(fed) == 2
    for x in fed:
        assert "1 worker(s)" in x and float(x.split(":")[1].split()[0]) > 0
    bad = subprocess.run(
        [sys.executable, "-m", "fakescope.cli", "bench", "--data", str(SG), "--workers", "two"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "--workers 'two'" in bad.stderr


def test_compiled_scoring_gives_the_eager_scores(monkeypatch):
    """``TorchBackend(compile=True)`` (bench --compile) runs the same folded network through
    torch.compile: the same logits to float rounding, on a real torchvision model. With the
    aot_eager backend: the same graph capture as the default (inductor), without the C++
    kernel builds that cost about a minute on 2 cores the first time."""
    import functools

    import torch

    from fakescope.model.detector import Detector
    from fakescope.model.runtime import select_runtime
    from fakescope.scoring.scorer import TorchBackend

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch.manual_seed(0)
    model = Detector("mobilenet_v2", "flatten", 32, weights="none").eval()
    rt = select_runtime("cpu", precision="fp32")
    x = torch.randn(2, 3, 32, 32)
    eager = TorchBackend(model, rt).logits(x)
    compiled = TorchBackend(model, rt, compile=True)
    assert type(compiled.model).__name__ == "OptimizedModule"
    assert torch.allclose(compiled.logits(x), eager, atol=1e-4, rtol=1e-4)


def test_scoring_holds_the_weights_in_the_autocast_dtype_and_gives_the_same_logits():
    """``TorchBackend`` casts its folded network's convolution and linear weights to bf16 once
    (autocast casts them on every call) and clamps with integer ops on the bf16 bits: on a
    real torchvision mobilenet_v2 and real images, the logits are bit for bit those of the
    same network as autocast runs it, and the weights are bf16."""
    import torch

    from fakescope.data.images import load_rgb
    from fakescope.data.transforms import normalise, to_pixels
    from fakescope.model.detector import Detector, inference_model
    from fakescope.model.runtime import Runtime
    from fakescope.scoring.scorer import TorchBackend

    from .conftest import SG

    torch.manual_seed(0)
    model = Detector("mobilenet_v2", "gap", 96, weights="none").eval()
    rt = Runtime(torch.device("cpu"), torch.bfloat16, True)  # bf16 even where it is emulated
    images = [load_rgb(p) for p in sorted((SG / "fake").glob("*.jpg"))[:3]]
    x = normalise(torch.stack([to_pixels(im, 96) for im in images]))
    backend = TorchBackend(model, rt)
    convs = [m for m in backend.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    # and every ReLU6 clamps the bits (the equality below holds for both changes together)
    layers = [type(m).__name__ for m in backend.model.modules()]
    assert "ReLU6" not in layers and layers.count("_BitsClamp") == 35
    reference = rt.prepare(inference_model(model))  # fp32 weights, cast by autocast
    with torch.no_grad(), rt.autocast():
        want = reference(rt.batch(x)).float().reshape(-1)
    assert torch.equal(backend.logits(x), want)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model given


def test_the_bits_clamp_is_relu_and_relu6_on_every_bf16_number():
    """Every bf16 bit pattern but the NaNs, through ``_BitsClamp`` in place of ReLU and ReLU6:
    torch's own layers' results, zero's sign aside; other dtypes are clamped as the layers
    would. On a real resnet-style network (ReLU) the logits stay those of autocast's run."""
    import torch
    from torch import nn

    from fakescope.model.detector import Detector, inference_model
    from fakescope.model.runtime import Runtime
    from fakescope.scoring.scorer import TorchBackend, _BitsClamp

    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    every = every[~every.isnan()]
    for layer in (nn.ReLU(inplace=True), nn.ReLU6(inplace=True)):
        got = _BitsClamp(layer)(every.clone())
        want = layer(every.clone())
        assert torch.equal(got, want) and got.dtype == torch.bfloat16
        x = torch.randn(1000) * 8
        assert torch.equal(_BitsClamp(layer)(x.clone()), layer(x.clone()))  # float32 untouched
    assert torch.equal(
        _BitsClamp(nn.ReLU6(inplace=True))(every.clone()).max(),
        torch.tensor(6.0, dtype=torch.bfloat16),
    )
    torch.manual_seed(0)
    model = Detector("resnet18", "gap", 64, weights="none").eval()
    rt = Runtime(torch.device("cpu"), torch.bfloat16, True)
    backend = TorchBackend(model, rt)
    assert not any(type(m) is nn.ReLU for m in backend.model.modules())
    x = torch.randn(3, 3, 64, 64)
    reference = rt.prepare(inference_model(model))
    with torch.no_grad(), rt.autocast():
        want = reference(rt.batch(x)).float().reshape(-1)
    assert torch.equal(backend.logits(x), want)

"""Device choice and its fast paths: bf16 and channels_last on CPUs, mixed precision on CUDA."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from dataclasses import dataclass

import torch

from ..errors import FakescopeError

BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # in torch.cpu
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the same, as /proc/cpuinfo names them


def cpu_has_bf16() -> bool:
    # AVX-512 bf16 or AMX make bf16 autocast several times faster than fp32; without them it is
    # emulated and slower, so it stays off. torch.cpu holds the probes (torch >= 2.3); an older
    # torch gets the kernel's answer where there is one.
    probes = [getattr(torch.cpu, name, None) for name in BF16_PROBES]
    if all(fn is not None for fn in probes):
        return any(fn() for fn in probes)
    return bool(cpu_flags() & set(BF16_FLAGS))


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_summary() -> str:
    """Threads and the vector/matrix flags that decide CPU speed, for every speed figure."""
    keep = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx", "avx2", "avx_vnni")))
    return f"{torch.get_num_threads()} threads, " + (" ".join(keep) or "flags unknown")


@contextlib.contextmanager
def threads_cut(get, set_, n: int = 1):
    """A process-wide thread count (``get``/``set_``: torch's, OpenCV's) cut to ``n`` for the
    duration and put back afterwards."""
    before = get()
    set_(n)
    try:
        yield
    finally:
        set_(before)


def one_torch_thread():
    """torch's intra-op threads cut to one for the duration. For the prediction pipeline when
    an exported runtime scores: torch then only makes input tensors, one file per worker
    thread, and splitting each resize across the cores again made the workers contend with the
    network (end to end 1.05x with one thread, OpenVINO int8, mobilenet_v2;
    docs/benchmarks.md, session 18)."""
    return threads_cut(torch.get_num_threads, torch.set_num_threads)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default each block over 32 MB (a training step's large activations) is a fresh mmap and
    freed heap tops are trimmed, so every step faults in and zeroes new pages: a fifth of a
    mobilenet_v2 training step went to the kernel on the 2-core CPU, and keeping the memory made
    training 1.37x faster (docs/benchmarks.md). The price is that the process keeps its peak
    heap. Returns False where the C library is not glibc (nothing is changed there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None for plain fp32
    channels_last: bool
    malloc_keeps_memory: bool = False  # keep_freed_memory() took effect

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def loader_sends_pixels(self) -> bool:
        """Whether training loaders send uint8 pixels, normalised on the device: on a GPU, a
        quarter of the bytes to copy between processes and into pinned memory, and no float
        pass in the workers, which could not keep an H200 fed (docs/benchmarks.md). On a CPU
        the pass stays in the workers, beside the model rather than in its way."""
        return self.device.type == "cuda"

    def describe(self) -> str:
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        extra = ", channels_last" if self.channels_last else ""
        if self.malloc_keeps_memory:
            extra += ", malloc keeps memory"
        return f"{self.device.type} ({amp}{extra})"


def select_runtime(name: str = "auto", fast: bool = True, precision: str = "auto") -> Runtime:
    """Pick the device: CUDA, then Apple MPS, then CPU; ``fast=False`` gives the fp32 baseline.
    ``precision="fp32"`` keeps the fast memory layout but no autocast, and turns TF32 off on
    CUDA: the arithmetic of a CPU run, for numbers that should carry over between machines."""
    if precision not in ("auto", "fp32"):
        raise FakescopeError(f"precision must be auto or fp32, not {precision!r}")
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if not fast:
        return Runtime(device, None, False)
    if device.type == "cuda":
        # cuDNN times its convolution kernels once per input shape and keeps the fastest:
        # training and scoring feed one batch shape over and over
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda" and precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return Runtime(device, None, True)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return Runtime(device, torch.bfloat16 if bf16 else torch.float16, True)
    if device.type == "cpu":
        kept = keep_freed_memory()
        # channels_last alone doubles oneDNN convolution throughput in fp32 as well
        bf16 = precision == "auto" and cpu_has_bf16()
        return Runtime(device, torch.bfloat16 if bf16 else None, True, kept)
    return Runtime(device, None, False)

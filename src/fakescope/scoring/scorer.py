"""The one scoring path: images (or a loader of them) in, P(fake) out.

Validation during training, ``evaluate``, ``predict``, ``explain`` and the benchmarks all score
through a ``Scorer``. It owns what must be the same everywhere a score is made: the runtime and
precision the run asks for, the input transform of the run's ``ModelSpec``, batching, mirror-image
test-time averaging and the logit-to-probability step. The network itself sits behind a
``Backend`` (``logits(x)`` on a normalised NCHW batch, or on its uint8 pixels where the backend
says ``pixels_in``: an OpenVINO export normalises inside its graph), so an exported runtime (ONNX
Runtime, OpenVINO) can replace ``TorchBackend`` without any caller changing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..data.transforms import normalise, pixels_of, to_pixels
from ..model.detector import inference_model
from ..model.runtime import Runtime, one_torch_thread, select_runtime
from ..runs import ModelSpec, Run, load_run

log = logging.getLogger(__name__)


class Backend(Protocol):
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Fake logits (N,) as float32 on the CPU for a normalised batch (N, 3, H, W), or for
        its uint8 pixels where the backend has ``pixels_in = True``."""
        ...


class TorchBackend:
    """A torch model scored with BatchNorm folded into the convolutions (same logits to float
    rounding, 2.65x faster for mobilenet_v2 on a CPU; docs/benchmarks.md). The model given is
    left untouched: training goes on with it and Grad-CAM hooks its unfolded layers.
    ``compile``: run it through ``torch.compile`` (the first batch of each shape compiles)."""

    def __init__(self, model: nn.Module, runtime: Runtime, compile: bool = False):
        self.runtime = runtime
        self.model = runtime.prepare(inference_model(model))
        if runtime.amp_dtype is not None:
            _autocast_weights(self.model, runtime.amp_dtype)
        if compile:
            self.model = torch.compile(self.model)
        elif runtime.amp_dtype == torch.bfloat16 and runtime.device.type == "cpu":
            _clamp_bits(self.model)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.runtime.autocast():
            out = self.model(self.runtime.batch(x))
        return out.float().reshape(-1).cpu()


def _autocast_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """The convolution and linear layers' weights and biases held in autocast's ``dtype``:
    autocast casts them to it on every call anyway, with the same rounding, so the logits are
    the same, and a call of one image skips the cast of all its weights: mobilenet_v2 1.06-1.11x
    on a CPU, where the network confirms an export's verdicts and `serve` scores single
    requests (docs/benchmarks.md, session 31)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.to(dtype)


def _clamp_bits(model: nn.Module) -> None:
    """The network's in-place ReLU and ReLU6 layers replaced by ``_BitsClamp``."""
    for parent in list(model.modules()):
        for name, m in list(parent.named_children()):
            if type(m) in (nn.ReLU, nn.ReLU6) and m.inplace:
                setattr(parent, name, _BitsClamp(m))


class _BitsClamp(nn.Module):
    """An in-place ReLU or ReLU6 that clamps a bf16 tensor's bits. Read as int16, the bits of
    bf16 numbers order the non-negative ones as the numbers are ordered and put every negative
    one below zero, so clamping the int16s to [0, the bits of 6.0] clamps the numbers to
    [0, 6] (a NaN, which the layer would pass on, becomes 0 or 6). torch's own bf16 clamp on a
    CPU takes 2.5x as long as this integer one: a fifth of a bf16 mobilenet_v2's time went to
    ReLU6, and scoring with this is 1.16x faster with the same logits bit for bit
    (docs/benchmarks.md, session 32). Other dtypes are clamped as the layer would."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        # the bits of 6.0 for a ReLU6; a ReLU has no top
        six = torch.tensor(6.0, dtype=torch.bfloat16).view(torch.int16)
        self.top = int(six) if isinstance(layer, nn.ReLU6) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16:
            if self.top is None:
                return F.relu(x, inplace=True)
            return F.hardtanh(x, 0.0, 6.0, inplace=True)
        x.view(torch.int16).clamp_(0, self.top)
        return x


class Scorer:
    """Scores for one model as its run specifies. Build it with ``Scorer.of_run`` (a trained
    run) or ``Scorer(TorchBackend(model, runtime), spec)`` (a model in training)."""

    def __init__(
        self,
        backend: Backend,
        spec: ModelSpec,
        batch_size: int = 32,
        threshold: float = 0.5,
        thresholds: dict | None = None,
        engine: str = "torch",
    ):
        self.backend, self.spec, self.batch_size = backend, spec, batch_size
        # the verdict threshold that belongs to these scores (an export recalibrates its own)
        # and the calibration it came from
        self.threshold, self.thresholds, self.engine = threshold, thresholds or {}, engine

    @classmethod
    def of_run(
        cls, run: str | Run, device: str = "auto", batch_size: int = 32, runtime: str = "auto"
    ) -> Scorer:
        """``runtime``: torch, onnx, openvino, or auto (the fastest checked export, else torch;
        ``scoring/engines.py``)."""
        from .engines import artifact_backend, choose

        run = run if isinstance(run, Run) else load_run(run)
        art = choose(run, runtime, device)
        if art is not None:
            log.info("scoring with %s", art.describe())
            own = {**art.info["check"]["thresholds"], "computed_on": f"val ({art.name})"}
            backend = artifact_backend(art, run, batch=batch_size)
            return cls(backend, run.spec, batch_size, art.threshold, own, art.name)
        rt = select_runtime(device, precision=run.spec.precision)
        log.info("scoring with torch on %s", rt.describe())
        return cls(
            TorchBackend(run.model, rt), run.spec, batch_size, run.threshold, run.meta.thresholds
        )

    @property
    def runtime(self) -> Runtime | None:
        return getattr(self.backend, "runtime", None)

    @property
    def concurrency(self) -> int:
        """How many ``score_tensors`` calls in flight at once pay off (OpenVINO's streams: 2)."""
        return max(1, getattr(self.backend, "concurrency", 1))

    def torch_runtime(self) -> Runtime:
        """Where the run's own network runs beside an export (Grad-CAM needs its layers)."""
        return self.runtime or select_runtime("cpu", precision=self.spec.precision)

    @property
    def pixels_in(self) -> bool:
        """Whether the backend takes uint8 pixels (and normalises them itself)."""
        return bool(getattr(self.backend, "pixels_in", False))

    def tensors(self, images, pixels: bool | None = None) -> torch.Tensor:
        """The network's input for PIL images as the run's spec says (size, fit): the uint8
        pixels where the backend takes them (or ``pixels``), else normalised. Images are
        stacked as pixels and normalised as one batch: a quarter of the bytes to copy, and
        one pass instead of one per image (prediction's workers 0.2 ms per image sooner)."""
        s = self.spec
        x = torch.stack([to_pixels(im, s.input_size, s.fit) for im in images]).contiguous()
        return x if (self.pixels_in if pixels is None else pixels) else normalise(x, s.mean, s.std)

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of either kind (normalised, or uint8 pixels) as the backend takes it."""
        if self.pixels_in and x.is_floating_point():
            return pixels_of(x, self.spec.mean, self.spec.std)
        if not self.pixels_in and not x.is_floating_point():
            return normalise(x, self.spec.mean, self.spec.std)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Fake logits of a batch (normalised, or pixels: ``as_input``); with TTA the mean over
        the image and its mirror."""
        x = self.as_input(x)
        out = self.backend.logits(x)
        if self.spec.tta and not getattr(self.backend, "tta_inside", False):
            out = (out + self.backend.logits(torch.flip(x, dims=[3]))) / 2
        return out

    def score_tensors(self, x: torch.Tensor) -> np.ndarray:
        out = [
            torch.sigmoid(self.logits(x[i : i + self.batch_size]))
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def score_later(self, x: torch.Tensor) -> Later:
        """``score_tensors`` for a pipeline that can wait for some of its scores: where the
        backend confirms an export's verdicts (``ConfirmingBackend``), the images near the
        threshold wait for ``confirm_waiting``, which confirms several batches' in one call."""
        later = getattr(self.backend, "logits_later", None)
        if later is None:
            return Later([self.score_tensors(x)])
        return Later([later(self.as_input(x[i : i + self.batch_size]))
                      for i in range(0, len(x), self.batch_size)])  # fmt: skip

    def confirm_waiting(self, force: bool = False, threads: int = 1) -> None:
        """Confirm what ``score_later`` left waiting, once enough waits (``force``: all now),
        the images split across ``threads`` threads (a pipeline's last, with nothing beside)."""
        confirm = getattr(self.backend, "confirm_waiting", None)
        if confirm is not None:
            confirm(force, threads)

    def throughput(self, batches: list[torch.Tensor]) -> float:
        """Images per second over ``batches`` as ``predict`` scores them: ``concurrency`` calls
        in flight at once, confirmations pooled (``score_later``), and torch on one thread
        beside an export. The first batch is scored once first, untimed (the runtimes set up
        their kernels on the first call). What ``--runtime auto`` compares and ``bench``
        reports as model only: one batch at a time, an export with two streams and per-batch
        confirmations looked slower than bf16 torch although it ran end to end 2.1x faster
        (docs/benchmarks.md, session 33)."""
        batches = [self.as_input(x) for x in batches]
        if not batches:
            return 0.0

        def score(x):
            later = self.score_later(x)
            self.confirm_waiting()
            return later

        cores = torch.get_num_threads()  # the last confirmation's threads, as in ``predict``
        with one_torch_thread() if self.runtime is None else nullcontext():
            score(batches[0])
            self.confirm_waiting(force=True)
            t = time.perf_counter()
            with ThreadPoolExecutor(self.concurrency) as pool:
                done = list(pool.map(score, batches))
            self.confirm_waiting(force=True, threads=cores)
            seconds = time.perf_counter() - t
        assert all(later.ready for later in done)
        return sum(len(x) for x in batches) / max(seconds, 1e-9)

    def score_images(self, images) -> np.ndarray:
        """P(fake) of PIL images taken as they are (no face stage)."""
        out = [
            self.score_tensors(self.tensors(images[i : i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def score_loader(self, loader, desc: str = "scoring", progress: bool = False):
        """(scores, labels, mean BCE loss) over a loader of (tensor, label, index) batches."""
        scores, labels, loss_sum = [], [], 0.0
        bce = nn.BCEWithLogitsLoss(reduction="sum")
        for x, y, _ in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
            logit = self.logits(x)
            y = y.float()
            loss_sum += float(bce(logit, y))
            scores.append(torch.sigmoid(logit))
            labels.append(y)
        if not scores:
            return np.zeros(0, np.float32), np.zeros(0, int), 0.0
        s, y = torch.cat(scores).numpy(), torch.cat(labels).numpy().astype(int)
        return s, y, loss_sum / max(len(y), 1)


class Later:
    """A batch's scores from ``Scorer.score_later``: ``ready`` once none waits any more."""

    def __init__(self, parts: list):
        self.parts = parts  # score arrays, or ConfirmingBackend's ``Screened`` logits

    @property
    def ready(self) -> bool:
        return all(getattr(p, "done", True) for p in self.parts)

    def scores(self) -> np.ndarray:
        out = [p if isinstance(p, np.ndarray) else torch.sigmoid(p.z).numpy() for p in self.parts]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

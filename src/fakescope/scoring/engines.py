"""Exported runtimes behind the scoring seam: ONNX Runtime and OpenVINO, and the choice of one.

An export (``fakescope export``, ``scoring/export.py``) leaves ``RUN/export/NAME.json`` beside
its model file. The JSON says which run weights it came from, the threshold recalibrated on its
own validation scores, and the accuracy check it passed. ``choose`` turns a run and a
``--runtime`` choice into the export to use (None: the run's own torch network), ``backend_of``
into a ``Backend`` for ``Scorer``; ``auto`` takes the fastest checked export for these weights
(by the model-only rate measured at export) and falls back to torch where there is none, where
torch measured faster, or where a GPU is there to use.

The exported graph takes the batch ``Scorer.tensors`` makes and holds the rest: the network, the
mirror-image average when the run uses it, and the sigmoid. An OpenVINO export takes the uint8
pixels and normalises them itself (``pixels_in``), an ONNX one the normalised floats. Its
``logits`` are therefore already averaged over the mirror (``tta_inside``), and ``Scorer`` does
not flip again.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import FakescopeError
from ..runs import Run
from . import EXPORTS, RUNTIMES

log = logging.getLogger(__name__)

EXPORT_DIR = "export"


@dataclass(frozen=True)
class Artifact:
    """One checked export of a run: its files and what the check measured."""

    name: str  # e.g. onnx-int8
    runtime: str  # onnx | openvino
    int8: bool
    model_file: Path
    info: dict  # the JSON beside it

    @property
    def threshold(self) -> float:
        return float(self.info["threshold"])

    @property
    def rate(self) -> float:
        return float(self.info["check"]["img_per_s"])

    @property
    def confirmation(self) -> dict | None:
        """The band in which the run's network confirms this export's verdicts; None where
        the export scores alone (made without confirmation, or with an empty band)."""
        band = self.info.get("confirm")
        return band if band and band["half_width"] > 0 else None

    def describe(self) -> str:
        c, band = self.info["check"], self.confirmation
        confirmed = (
            f"; the run's network confirms the verdicts {describe_reach(band)} its threshold, "
            f"{100 * c['confirmed_share']:.0f} % of those images"
            if band
            else ""
        )
        return (
            f"{self.name} (checked on {c['n']} {c['split']} images: AUC {c['auc']:.4f} against "
            f"torch's {c['auc_torch']:.4f}; {c['img_per_s']:.0f} img/s at export{confirmed})"
        )


def describe_reach(band: dict) -> str:
    """Where a band reaches, in words: within 0.81 logits of (a threshold), or from 1.36
    logits below to 1.04 above where the band's line makes it uneven."""
    below, above = band_reach(band)
    if abs(below - above) < 0.005:
        return f"within {below:.2f} logits of"
    return f"from {below:.2f} logits below to {above:.2f} above"


def artifacts(run: Run) -> list[Artifact]:
    """The run's exports that passed their check and were made from its current weights."""
    out = []
    for f in sorted((run.path / EXPORT_DIR).glob("*.json")):
        try:
            info = json.loads(f.read_text())
            art = Artifact(
                f.stem, info["runtime"], bool(info["int8"]), f.parent / info["file"], info
            )
            _ = (art.threshold, art.rate)  # both must be readable numbers
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: not a readable export description (%s); ignored", f, e)
            continue
        if info.get("weights_sha256") != run.meta.weights_sha256:
            log.warning("%s: made from other weights than the run's; ignored", f)
            continue
        if not info["check"].get("passed") or not art.model_file.exists():
            continue
        out.append(art)
    return out


class OnnxBackend:
    tta_inside = True
    runtime = None  # no torch runtime: Grad-CAM and training use the run's own network

    def __init__(self, model_file: Path, threads: int | None = None, batch: int | None = None):
        import onnxruntime as ort

        # ``batch`` is ignored: ONNX Runtime's CPU kernels do not run faster for a fixed batch
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(model_file), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise FakescopeError(f"{model_file}: ONNX Runtime cannot load it ({e})") from None
        self.input = self.session.get_inputs()[0].name

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(["logit"], {self.input: x.numpy().astype(np.float32, copy=False)})
        return torch.from_numpy(np.asarray(out[0], np.float32).reshape(-1))


# OpenVINO's CPU plugin gives the thread that first compiles on a Core a signal stack of its
# own (``sigaltstack``) and, when that Core goes, puts back the stack it found there, even where
# that was another Core's and has since been unmapped. Two Cores freed in the order they were
# made thus leave the thread's signal stack in unmapped memory, and the next signal a Python
# handler takes (SIGCHLD from a DataLoader worker, Ctrl-C) kills the process with SIGSEGV and no
# traceback: session 24's crash of the test suite (docs/benchmarks.md, session 25). Our
# backends share one Core that never goes; NNCF makes Cores of its own, so exports run inside
# ``signal_stack_kept``.


@functools.cache
def openvino_core():
    """The process's one OpenVINO ``Core``, kept for its life (see above)."""
    import openvino as ov

    return ov.Core()


class _SignalStack(ctypes.Structure):
    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


def _signal_stack_now() -> _SignalStack | None:
    """The calling thread's signal stack (None: not Linux, where none of this applies)."""
    if not sys.platform.startswith("linux"):
        return None
    now = _SignalStack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(now))
    return now


def signal_stack() -> int:
    """The address of the calling thread's signal stack (0: none; or not Linux)."""
    now = _signal_stack_now()
    return (now.ss_sp or 0) if now else 0


@contextlib.contextmanager
def signal_stack_kept():
    """The calling thread's signal stack as it was before, whatever OpenVINO Cores made and
    freed inside did to it (see above). A Core made inside that outlives the block then finds
    a stack not its own in place and leaves it (OpenVINO puts back only over its own)."""
    before = _signal_stack_now()
    try:
        yield
    finally:
        if before is not None and signal_stack() != (before.ss_sp or 0):
            ctypes.CDLL(None).sigaltstack(ctypes.byref(before), None)


class OpenVinoBackend:
    tta_inside = True
    runtime = None
    pixels_in = False  # set from the file: its input is uint8 pixels, or normalised floats
    STREAMS = 2
    PART = 4  # images per request at most: see __init__
    # How many ``logits`` calls in flight at once pay off (``Predictor.predict`` and
    # ``Scorer.throughput`` use it): with full batches split across two streams (below), two
    # calls from two threads keep both streams busy while either waits for its other half.
    concurrency = 1

    def __init__(self, model_file: Path, threads: int | None = None, batch: int | None = None):
        import openvino as ov

        # Not pinned to cores: in fakescope's pipeline the worker threads preparing the next
        # files share the cores with the network, and with OpenVINO's threads pinned the
        # scheduler cannot move them out of the way (end to end 7 % faster unpinned with the
        # face stage on, 3 % with it off; docs/benchmarks.md).
        config = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = openvino_core()
        self.fixed = None  # (batch size, part size, its "logit" output) for full batches
        self._parts: queue.SimpleQueue = queue.SimpleQueue()  # its idle infer requests
        self._lock = threading.Lock()  # the dynamic model's one request
        self._taking = threading.Lock()  # a call takes all its parts' requests or none yet
        try:
            m = core.read_model(str(model_file))
            # exports since session 21 take uint8 pixels and normalise inside (export.py)
            self.pixels_in = m.input(0).get_element_type() == ov.Type.u8
            self.model = core.compile_model(m, "CPU", config)
            # The file keeps its dynamic batch. Full batches run on a second copy compiled for
            # a static shape (OpenVINO's CPU plugin picks faster kernels for one: model only
            # 1.15-1.18x for mobilenet_v2, 1.07x for resnet50), split in parts of at most PART
            # images run by two streams, each on its share of the cores. A pipeline thread
            # that takes a core then stalls one stream, not a network spread over all (end to
            # end 1.10x for mobilenet_v2), and parts of 4 keep a stream's working set in its
            # core's cache (model only 1.05x against halves of 8, resnet50 1.06x); the scores
            # are identical (docs/benchmarks.md, session 18). Other sizes (the last batch,
            # single requests in `serve`) take the dynamic copy on all cores, for latency.
            if batch and batch > 1:
                streams = self.STREAMS if batch % self.STREAMS == 0 else 1
                part = batch // streams
                while part > self.PART and part % 2 == 0:
                    part //= 2
                shape = m.input(0).get_partial_shape()
                shape[0] = part
                m.reshape(shape)
                fixed = core.compile_model(
                    m, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}
                )
                self.concurrency = 2
                for _ in range(batch // part * self.concurrency):
                    self._parts.put(fixed.create_infer_request())
                self.fixed = (batch, part, fixed.output("logit"))
        except Exception as e:  # OpenVINO raises RuntimeError with its own text
            raise FakescopeError(f"{model_file}: OpenVINO cannot load it ({e})") from None
        self.request = self.model.create_infer_request()
        self.output = self.model.output("logit")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # shared, not copied into the request: one 17 MB copy fewer per batch at 299 px; the
        # calls are waited for here, so the array outlives its use
        a = np.ascontiguousarray(x.numpy())
        if self.fixed is not None and len(a) == self.fixed[0]:
            _, part, output = self.fixed
            with self._taking:  # else callers each holding one part could wait for ever
                requests = [self._parts.get() for _ in range(0, len(a), part)]
            try:
                for i, r in enumerate(requests):
                    r.start_async([a[i * part : (i + 1) * part]], share_inputs=True)
                out = []
                for r in requests:
                    r.wait()
                    out.append(np.asarray(r.get_tensor(output).data, np.float32).reshape(-1))
                return torch.from_numpy(np.concatenate(out))  # concatenate copies
            finally:
                for r in requests:
                    self._parts.put(r)
        with self._lock:
            out = self.request.infer([a], share_inputs=True)[self.output]
            return torch.from_numpy(np.asarray(out, np.float32).reshape(-1).copy())


class ConfirmingBackend:
    """An export whose verdicts near the threshold the run's own network confirms: the export
    scores every image, and those whose logit lies in ``band`` around the export's threshold
    (an interval of logits, ``band_reach``) are scored again by ``exact`` (a ``TorchBackend``),
    whose logit, moved by the two thresholds' difference and kept within the band, replaces the
    export's. Outside the band the export moved no validation logit far enough to change its
    verdict (``export.confirmation_band``), so the verdicts are the network's throughout at the cost
    of scoring a few images twice. int8 moves single logits by ~0.5, unevenly between the
    classes (docs/benchmarks.md, session 24): no threshold absorbs that.

    ``logits`` confirms a batch's images at once. A pipeline that can wait for some of its
    scores (``predict``) calls ``logits_later`` instead and ``confirm_waiting`` now and then:
    the images near the threshold wait, and the network confirms those of several batches in
    one call, a third cheaper per image than one or two at a time (docs/benchmarks.md,
    session 32). The network's logits do not depend on the batch they are scored in, so the
    scores are the same either way."""

    tta_inside = True
    # images the network confirms in one call once that many wait: 8 cost as little per image
    # as 16 (bf16 on one thread, with the mirror), and leave fewer rows waiting
    POOL = 8

    def __init__(self, fast, exact, band: dict, spec, network_threshold: float):
        self.fast, self.exact, self.spec = fast, exact, spec
        self.centre = float(band["centre"])
        below, above = band_reach(band)
        self.low, self.high = self.centre - below, self.centre + above
        self.shift = float(band["shift"])  # the export's threshold logit minus the network's
        self.network_threshold = float(network_threshold)
        self.fake_from, self.real_to = _logits_beside(float(band["threshold"]), self.centre)
        self.pixels_in = getattr(fast, "pixels_in", False)
        self.concurrency = getattr(fast, "concurrency", 1)
        self.runtime = None  # Grad-CAM runs the run's network as with any export
        self.seen = self.confirmed = 0  # counts, for `bench` and the check
        self._lock = threading.Lock()  # the waiting list and the counts: batches score on threads
        self._waiting: list[Screened] = []

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        part = self._screen(x)
        if not part.done:
            self._confirm([part])
        return part.z

    def logits_later(self, x: torch.Tensor) -> Screened:
        """The export's logits of ``x`` now; those near the threshold wait in this backend
        until ``confirm_waiting`` replaces them (``Screened.done`` then)."""
        part = self._screen(x)
        if not part.done:
            with self._lock:
                self._waiting.append(part)
        return part

    @property
    def waiting(self) -> int:
        """Images waiting for the network."""
        with self._lock:
            return self._waiting_images()

    def _waiting_images(self) -> int:
        return sum(len(p.x) for p in self._waiting)

    def confirm_waiting(self, force: bool = False, threads: int = 1) -> None:
        """Confirm the waiting images in one call of the network, once ``POOL`` of them wait
        (``force``: however few). ``threads``: the images split across that many threads, for
        a pipeline's last confirmation, which nothing else runs beside (``_confirm``)."""
        with self._lock:
            n = self._waiting_images()
            if not n or (n < self.POOL and not force):
                return
            parts, self._waiting = self._waiting, []
        self._confirm(parts, threads)

    def _screen(self, x: torch.Tensor) -> Screened:
        z = self.fast.logits(x)
        near = (z >= self.low) & (z <= self.high)
        with self._lock:
            self.seen += len(z)
        return Screened(z, near, x[near] if near.any() else None)

    def _confirm(self, parts: list[Screened], threads: int = 1) -> None:
        from ..data.transforms import normalise

        xe = torch.cat([p.x for p in parts])
        if not xe.is_floating_point():
            xe = normalise(xe, self.spec.mean, self.spec.std)
        if threads > 1 and len(xe) > 1:
            # At a pipeline's end the last confirmation ran alone on one thread (torch's
            # threads are cut to one there) while the other core idled: 0.1 s of a 330-file
            # folder's 1.9 s. Split by images, each thread on torch's one thread, the logits
            # are the same, as they do not depend on the batch; end to end 1.04x
            # (docs/benchmarks.md, session 36).
            chunks = xe.tensor_split(min(threads, len(xe)))
            with ThreadPoolExecutor(len(chunks), "confirm") as pool:
                ze = torch.cat(list(pool.map(self._network_logits, chunks)))
        else:
            ze = self._network_logits(xe)
        # kept inside the band: the network decides the verdict and the order within it,
        # the export the order around it, so no score jumps past one it did not rank
        moved = (ze + self.shift).clamp(self.low, self.high)
        # and on its own side of the export's threshold after rounding: an image the
        # network scores at its threshold exactly (the run's threshold is one validation
        # image's score) must not fall below the export's by a float32 step
        fake = torch.sigmoid(ze) >= self.network_threshold
        moved = torch.where(fake, moved.clamp(min=self.fake_from), moved.clamp(max=self.real_to))
        start = 0
        for p in parts:
            n = len(p.x)
            z = p.z.clone()
            z[p.near] = moved[start : start + n]
            p.z, p.x, p.done, start = z, None, True, start + n
        with self._lock:
            self.confirmed += len(xe)

    def _network_logits(self, x: torch.Tensor) -> torch.Tensor:
        z = self.exact.logits(x)
        if self.spec.tta:
            z = (z + self.exact.logits(torch.flip(x, dims=[3]))) / 2
        return z


def band_reach(band: dict) -> tuple[float, float]:
    """How far below and above the export's threshold (in its logits) a band reaches. The
    check reads the export's logits through a line (``export.confirmation_band``; bands of
    older exports have none: the logits as they are), and the band holds the logits whose
    line values lie within ``half_width`` of 0."""
    width = float(band["half_width"])
    gain, offset = float(band.get("gain", 1.0)), float(band.get("offset", 0.0))
    return (width + offset) / gain, (width - offset) / gain


@dataclass
class Screened:
    """One batch's logits as the export gave them, and its images near the threshold (``x``)
    until the network has confirmed them (``done``)."""

    z: torch.Tensor
    near: torch.Tensor
    x: torch.Tensor | None

    def __post_init__(self):
        self.done = self.x is None


def _logits_beside(threshold: float, centre: float) -> tuple[float, float]:
    """Logits just above and just below ``centre`` whose float32 sigmoid is called fake and
    real at ``threshold``, compared in float32 (numpy, torch) or in float64 (Python) alike."""

    def called(z: float) -> tuple[bool, bool]:
        s = torch.sigmoid(torch.tensor(z, dtype=torch.float32))
        return bool(s >= threshold), float(s) >= threshold

    step, above, below = 1e-7, None, None
    for _ in range(64):  # 2**64 steps: past any logit whose sigmoid float32 tells apart
        if above is None and all(called(centre + step)):
            above = centre + step
        if below is None and not any(called(centre - step)):
            below = centre - step
        if above is not None and below is not None:
            break
        step *= 2
    # none: a threshold of 0 or 1, which every score or none reaches whatever the logit
    return (centre if above is None else above), (centre if below is None else below)


def backend_of(
    runtime: str, model_file: Path, threads: int | None = None, batch: int | None = None
):
    """The ``Backend`` of an exported model file of ``runtime`` (onnx, openvino); ``batch``:
    the batch size most calls will have, which OpenVINO compiles a faster copy for."""
    cls = {"onnx": OnnxBackend, "openvino": OpenVinoBackend}[runtime]
    return cls(model_file, threads, batch)


def artifact_backend(art: Artifact, run: Run, batch: int | None = None):
    """The backend an export is scored with, as its check measured it: the file's own, or,
    for an export made with ``--confirm``, the file's with the run's network confirming the
    verdicts near the threshold (``ConfirmingBackend``), unless the band is empty (the export
    moved no validation logit as far as ``export.CONFIRM_NEGLIGIBLE``)."""
    backend, band = backend_of(art.runtime, art.model_file, batch=batch), art.confirmation
    return confirming(backend, run, band) if band else backend


def confirming(backend, run: Run, band: dict) -> ConfirmingBackend:
    """``backend`` with the run's network, as `--runtime torch` runs it here, confirming."""
    from ..model.runtime import select_runtime
    from .scorer import TorchBackend

    exact = TorchBackend(run.model, select_runtime("cpu", precision=run.spec.precision))
    return ConfirmingBackend(backend, exact, band, run.spec, run.threshold)


def choose(run: Run, runtime: str = "auto", device: str = "auto") -> Artifact | None:
    """The export ``runtime`` asks for (None: the run's torch network). ``onnx``/``openvino``
    take that runtime's fastest checked export and fail if there is none (``onnx-fp32`` and
    the like name one); ``auto`` the fastest of all, unless torch is faster by the export's
    own measurement or a GPU is there."""
    if runtime not in RUNTIMES + EXPORTS:
        raise FakescopeError(
            f"--runtime must be one of {', '.join(RUNTIMES + EXPORTS)}, not {runtime!r}"
        )
    if runtime == "torch":
        return None
    gpu = device not in ("auto", "cpu") or (device == "auto" and torch.cuda.is_available())
    if runtime == "auto" and gpu:
        return None  # the exports run on CPU providers
    found = [a for a in artifacts(run) if runtime in ("auto", a.runtime, a.name)]
    if not found:
        if runtime == "auto":
            return None
        raise FakescopeError(
            f"{run.path}: no checked {runtime} export of these weights "
            f"(make one with `fakescope export {run.path} --to {runtime.split('-')[0]}"
            f"{' --int8' if runtime.endswith('int8') else ''}`)"
        )
    best = max(found, key=lambda a: a.rate)
    if runtime == "auto" and best.info["check"].get("torch_img_per_s", 0) >= best.rate:
        return None
    return best

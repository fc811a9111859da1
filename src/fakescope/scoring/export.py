"""``fakescope export``: a run's network as an ONNX or OpenVINO model, optionally int8, checked.

The graph takes the batch (N, 3, S, S) the run's transform makes, with a dynamic batch: the
normalised floats for ONNX, the uint8 pixels for OpenVINO, which normalises them in its graph
(``_save_openvino``). It returns ``logit`` and ``score`` (the sigmoid); with mirror-image TTA
both images go through the network as one batch of 2N and their logits are averaged inside the
graph. int8 is static quantisation calibrated on the run's own training images: ONNX Runtime's
``quantize_static`` (QDQ, per-channel weights) for ONNX; for OpenVINO, NNCF's quantisers in the
torch network, calibrated and then fine-tuned to reproduce the fp32 logits (``finetune``), or
with ``finetune=0`` NNCF's post-training quantisation of the OpenVINO graph alone. What needs
the fp32 ONNX graph (int8, OpenVINO) starts from the run's own checked ``onnx-fp32`` export where
it was made of the same weights (``checked_fp32_graph``) and exports one only where there is
none; ``--to onnx`` itself always exports anew.

Every export is checked before it is kept (``check``): it scores the validation split, and its
AUC must be within ``AUC_TOLERANCE`` of the torch model's on the same images. Its own threshold
is recalibrated on those scores (int8 moves scores): the one at which it gives the torch
model's verdicts most often (``metrics.agreeing_threshold``), and the check's
numbers and the model-only rate of both runtimes are written beside the model. An export that
fails is removed and refused with its numbers.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.dataset import make_loader
from ..errors import FakescopeError
from ..evaluation import metrics as M
from ..evaluation.evaluator import face_prepare, scoring_dataset, split_samples
from ..evaluation.sets import cap_per_class
from ..faults import injected
from ..model.runtime import cpu_flags, cpu_summary, select_runtime
from ..runs import Run, load_run, write_json
from .engines import (
    EXPORT_DIR,
    Artifact,
    backend_of,
    confirming,
    openvino_core,
    signal_stack_kept,
)
from .finetune import finetune_int8
from .scorer import Scorer, TorchBackend

log = logging.getLogger(__name__)

AUC_TOLERANCE = 0.002
CALIBRATION_IMAGES = 32  # per class, from the training split (see _onnx_int8 on memory)
# the confirmation band's half-width, in multiples of the widest validation disagreement: a
# safety margin for images further out than any of the few hundred validation ones (on the
# demo the test split's widest lay 1.27x out; docs/benchmarks.md, session 24)
CONFIRM_MARGIN = 1.5
# Nor is it narrower than the widest distance the export moved any validation logit from the
# network's (relative to their thresholds): a confident network leaves few validation images
# near its threshold to disagree on, and on the AVX-512 demo (session 30) a band of 1.5x the
# one disagreement at 0.165 logits let two test verdicts through whose logits int8 had moved
# 0.32 and 0.76, where validation logits moved as far as 1.1. Scores within this of 0 or 1
# carry no logit worth measuring in float32; a band narrower than CONFIRM_NEGLIGIBLE logits
# confirms nothing but ties and is left empty (an fp32 export of the same network).
CONFIRM_SATURATED = 1e-5
CONFIRM_NEGLIGIBLE = 0.01
# an export the network must confirm on more of the validation images than this is mostly
# the network again: refused, rather than kept as a slower torch that hides a bad export
CONFIRM_MAX_SHARE = 0.5
# validation batches the check times each runtime on, held in memory as the backend takes
# them (24 of 16 images at 299 px: 412 MB as floats, 103 MB as uint8 pixels)
RATE_BATCHES = 24
FINETUNE_STEPS = 300  # batches at most by default: one pass over the demo's 1,540 is 96
# What the exported graph holds and how it is named (``_Graph``, ``_onnx``): raise it when that
# changes, so that an int8 export never starts from a kept fp32 graph of the older kind
GRAPH_FORMAT = 1


class _Graph(nn.Module):
    """What scoring needs after the transform: the network, the mirror average, the sigmoid."""

    def __init__(self, model: nn.Module, tta: bool):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, image):
        if self.tta:
            logit = self.model(torch.cat([image, image.flip(3)])).reshape(2, -1).mean(0)
        else:
            logit = self.model(image).reshape(-1)
        return logit, torch.sigmoid(logit)


def _data_of(run: Run, data: str | Path | None) -> list[Path]:
    """The data folders whose splits check (val) and calibrate (train) an export: the one
    named, else every one of the run's that is here (a run of several sources, or an ensemble
    of experts, must be checked on each kind it detects)."""
    if data:
        return [Path(data)]
    here = [Path(s["root"]) for s in run.meta.sources if s.get("root")]
    here = [d for d in here if d.is_dir()]
    if here:
        return here
    raise FakescopeError(
        f"{run.path}: none of the run's data folders is here; name one with --data "
        "(its val split checks the export, its train split calibrates int8)"
    )


def _loader(run: Run, datas: list[Path], split: str, limit: int, batch_size: int, shuffle=False):
    """``split`` of every folder in ``datas``, at most ``limit`` images per class in all
    (shared out between the folders; 0: all)."""
    roots, samples = [], []
    share = -(-limit // len(datas)) if limit else 0
    for data in datas:
        got, _ = split_samples(run, data, split)
        if share:
            got = cap_per_class(got, share)
        roots += [data] * len(got)
        samples += got
    if len({s.label for s in samples}) < 2:
        where = ", ".join(str(d) for d in datas)
        raise FakescopeError(f"{where}: split {split!r} needs images of both classes")
    ds = scoring_dataset(run, roots, samples, prepare=face_prepare(run))
    return make_loader(ds, batch_size, shuffle=shuffle)


def _onnx(run: Run, path: Path, batch: int) -> None:
    graph = _Graph(run.model.eval(), run.tta).eval()
    x = torch.zeros(batch, 3, run.input_size, run.input_size)
    torch.onnx.export(
        graph, (x,), str(path), input_names=["image"], output_names=["logit", "score"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True,
        external_data=False, verbose=False,
    )  # fmt: skip


def checked_fp32_graph(run: Run) -> Path | None:
    """The run's kept ``onnx-fp32`` export where it was made of the run's present weights: the
    graph int8 and OpenVINO exports start from, so that it is not exported again (16-22 s for the
    suite's 96 px run, more at 299 px). None where there is none, it failed its check, the
    weights have changed since (or are of a run too old to record them), or it was made by a
    fakescope whose graph differs (``GRAPH_FORMAT``)."""
    folder = run.path / EXPORT_DIR
    graph, info = folder / "onnx-fp32.onnx", folder / "onnx-fp32.json"
    if not (run.meta.weights_sha256 and graph.is_file() and info.is_file()):
        return None
    try:
        made = json.loads(info.read_text())
    except (OSError, ValueError):
        return None  # unreadable: export afresh rather than trust it
    same = made.get("weights_sha256") == run.meta.weights_sha256
    same = same and made.get("graph_format") == GRAPH_FORMAT
    return graph if same and made.get("check", {}).get("passed") else None


def _calibration(loader):
    for x, _, _ in loader:
        yield x.numpy()


def _onnx_int8(fp32: Path, out: Path, calib) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"image": x}

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    # Percentile ranges: min/max lets rare outliers widen mobilenet_v2's activation ranges
    # (val AUC 0.0018 below fp32 against 0.0009 in a trial). ORT's calibrators keep every
    # activation of every calibration image (17 GB for 256 images at 299 px; its option to
    # merge as it goes drops the data instead in onnxruntime 1.32), hence CALIBRATION_IMAGES.
    # Without VNNI, ONNX Runtime's u8s8 kernels multiply-add pairs into int16 (VPMADDUBSW),
    # which saturates; its documentation's remedy is 7-bit weights (reduce_range). On an
    # AVX2-only EPYC the 96 px test run's int8 AUC was 0.66 against fp32's 0.57 without it.
    vnni = any(f in cpu_flags() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    quantize_static(
        str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=not vnni,
        calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=_onnx_head(pre),
        extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]},
    )  # fmt: skip
    pre.unlink()


def _onnx_head(path: Path) -> list[str]:
    """The ONNX graph's operations after the classifier (its last Gemm or MatMul): the mirror
    average and the sigmoid, left in float for the reason of ``_unquantised``. ONNX Runtime
    quantises a Reshape's input and output alike, so the logits would be rounded there; the
    classifier's own output is kept in float by ``OpTypesToExcludeOutputQuantization``."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    last = max(i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul"))
    reached, head = set(nodes[last].output), []
    for n in nodes[last + 1 :]:  # ONNX keeps nodes in topological order
        if reached.intersection(n.input):
            reached.update(n.output)
            head.append(n.name)
    return head


def _openvino(fp32_onnx: Path, out: Path, calib, int8: bool, spec, quantiles: bool = False) -> None:
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    if int8:
        import nncf

        batches = list(calib)  # nncf counts dataset items, here batches
        model = nncf.quantize(
            model, nncf.Dataset(batches), subset_size=len(batches),
            advanced_parameters=_quantile_ranges() if quantiles else None,
            ignored_scope=_unquantised(),
        )  # fmt: skip
    _save_openvino(model, out, spec)


def torch_to_openvino(net: nn.Module, run: Run, out: Path) -> None:
    """Save a torch network (such as ``finetune.finetune_int8``'s, whose fake quantisers
    OpenVINO turns into int8) as the run's OpenVINO graph: mirror average, sigmoid, pixels in."""
    import warnings

    import openvino as ov

    s = run.input_size
    with warnings.catch_warnings():  # the tracer's check reruns the quantisers: rounding noise
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ov.convert_model(
            _Graph(net.eval(), run.tta).eval(), example_input=torch.zeros(2, 3, s, s),
            input=[ov.PartialShape([-1, 3, s, s])],
        )  # fmt: skip
    for port, name in zip(model.outputs, ("logit", "score"), strict=True):  # as ONNX names them
        port.get_tensor().set_names({name})
        port.get_node().set_friendly_name(name)
    _save_openvino(model, out, run.spec)


def _quantile_ranges():
    """NNCF's activation ranges from quantiles (the mean over batches of each batch's 1e-4 and
    1 - 1e-4 quantiles) instead of its default extremes, for the reason ``_onnx_int8`` uses
    percentiles: the second try where the default fails the check. On the demo run's 330
    validation images (mobilenet_v2, 299 px, 32 calibration images per class) the default lost
    0.0022 AUC against torch and was refused, the quantile ranges lost 0.0018 (histogram 0.0019,
    the mean of the extremes 0.0021). Not the first try: on an untrained resnet50 (a speed run)
    they lost 0.007 where the default passes (docs/benchmarks.md, sessions 21 and 22)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_QUANTILE
    )


def _unquantised():
    """What NNCF must leave in floating point: the mirror average (the graph's ``logit``
    output, a ReduceMean that NNCF counts as quantisable). Quantised, its input, the logits of
    both images, was rounded to 256 levels over the range seen in calibration and clipped
    there: on the demo run every score beyond a logit of +-3.9 came out as 0.9803 or 0.0191,
    and an untrained network's logits, all within one level, as one score (docs/benchmarks.md,
    session 22). Without TTA there is no such operation; hence no validation of the name."""
    import nncf

    return nncf.IgnoredScope(names=["logit"], validate=False)


def _save_openvino(model, out: Path, spec) -> None:
    """Save an OpenVINO export that takes uint8 pixels (N, 3, S, S) and normalises them in its
    graph, its mirror image made by a Gather.

    Both for speed, measured in turns (docs/benchmarks.md, session 21): the pipeline's
    workers then hand over a quarter of the bytes and skip a float pass per image, and the
    CPU plugin runs the mirror's reversing Slice with its reference kernel in bf16, a Gather
    with a jitted one. The scores are those of the float graph run in fp32: the Slice had
    rounded the mirrored half to bf16 before quantising it. Quantisation happens before
    this, on the graph that takes normalised floats, so calibration is unchanged."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.preprocess import PrePostProcessor

    image = model.input(0)
    for target in list(image.get_target_inputs()):
        node = target.get_node()
        if node.get_type_name() != "Slice" or node.get_input_size() != 5:
            continue  # the mirror is a Slice with constant steps and axes (torch.flip's export)
        step, axes = (node.input_value(i).get_node() for i in (3, 4))
        if not all(n.get_type_name() == "Constant" for n in (step, axes)):
            continue
        if list(step.get_data()) == [-1] and list(axes.get_data()) == [3]:  # x[..., ::-1]
            back = np.arange(spec.input_size - 1, -1, -1, dtype=np.int64)
            mirror = ops.gather(image, ops.constant(back), ops.constant(np.int64(3)))
            node.output(0).replace(mirror.output(0))
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(
        [m * 255.0 for m in spec.mean]
    ).scale([s * 255.0 for s in spec.std])
    ov.save_model(ppp.build(), str(out), compress_to_fp16=False)


def _openvino_accuracy_control(
    fp32_onnx: Path, out: Path, calib, val_loader, max_drop: float, spec
):
    """int8 with NNCF's accuracy control: operations are returned to fp32, the most harmful
    first, until the validation AUC is within ``max_drop`` of the fp32 model's. For runs whose
    plain int8 fails the check (weaker models sit on steeper parts of their ROC curve)."""
    import nncf
    import openvino as ov

    def auc_of(compiled, data) -> tuple[float, None]:
        score = compiled.output("score")
        s, y = [], []
        for x, labels in data:
            s.append(compiled(x)[score].reshape(-1))
            y.append(labels)
        return float(M.threshold_free(np.concatenate(y), np.concatenate(s))["auc"]), None

    batches = list(calib)
    val = [(x.numpy(), y.numpy()) for x, y, _ in val_loader]
    model = nncf.quantize_with_accuracy_control(
        ov.convert_model(str(fp32_onnx)), nncf.Dataset(batches),
        nncf.Dataset(val, lambda item: item[0]), auc_of, max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=len(batches),
        ignored_scope=_unquantised(),
    )  # fmt: skip
    _save_openvino(model, out, spec)


def _scores_and_rate(backend, spec, loader, timed=True) -> tuple[np.ndarray, np.ndarray, float]:
    """(scores, labels, model-only img/s) of a backend over a loader; the rate over its first
    ``RATE_BATCHES`` batches, held in memory, as predict scores them (``Scorer.throughput``),
    where ``timed`` (else 0.0)."""
    scorer = Scorer(backend, spec)
    scores, labels, batches = [], [], []
    for x, y, _ in loader:
        x = scorer.as_input(x)
        scores.append(torch.sigmoid(scorer.logits(x)).numpy())
        labels.append(y.numpy())
        if timed and len(batches) < RATE_BATCHES:
            batches.append(x)
    return np.concatenate(scores), np.concatenate(labels).astype(int), scorer.throughput(batches)


def _first(loader, n: int) -> list:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def confirmation_band(s, reference, threshold: float, torch_threshold: float) -> dict:
    """Where the run's network must confirm an export's verdicts (``ConfirmingBackend``). ``s``
    are the export's validation scores, ``reference`` the network's (as ``--runtime torch``
    scores them), each logit taken relative to its own threshold. The export's logit ``z`` is
    read through a line, ``gain * z + offset``, as the network's: either as it is (1, 0) or
    fitted to the network's logits by least squares, whichever leaves fewer validation images
    to confirm. int8 moves logits roughly in proportion to their size, so the fitted line takes
    up what is systematic in the moves and leaves a narrower band (the demo's: 10.6 % of the
    validation images instead of 15.5 %, 2.7 % of the bench's files instead of 4.5 %;
    docs/benchmarks.md, session 37). The band holds the images whose line value lies within
    ``half_width`` of 0: the wider of ``CONFIRM_MARGIN`` times the widest line value at which
    the export's verdict differed from the network's, and the widest distance of a line value
    from the network's logit: an image further out keeps its verdict unless it moves further
    from the line than any validation image did. It is never narrower than the offset, so that
    outside it the line and the export's own logit are on the same side of the threshold."""
    s, reference = np.asarray(s, dtype=float), np.asarray(reference, dtype=float)
    z, centre = _logit(s), float(_logit(threshold))
    zr, torch_centre = _logit(reference), float(_logit(torch_threshold))
    z, zr = z - centre, zr - torch_centre
    differ = (s >= threshold) != (reference >= torch_threshold)
    measured = np.minimum(np.minimum(s, 1 - s), np.minimum(reference, 1 - reference))
    measured = measured > CONFIRM_SATURATED
    lines = [(1.0, 0.0)]
    if measured.sum() >= 3 and np.ptp(z[measured]) > 0:
        gain, offset = np.polyfit(z[measured], zr[measured], 1)
        if gain > 0:  # a line that reversed the export's order would be no reading of it
            lines.append((float(gain), float(offset)))
    best = None
    for gain, offset in lines:
        m = gain * z + offset
        widest = float(np.abs(m[differ]).max()) if differ.any() else 0.0
        moved = np.abs(m - zr)[measured]
        widest_move = float(moved.max()) if moved.size else 0.0
        width = max(CONFIRM_MARGIN * widest, widest_move, abs(offset))
        if width < CONFIRM_NEGLIGIBLE:
            width = 0.0
        band = {
            "centre": centre,
            "half_width": width,
            "gain": gain,
            "offset": offset,
            "shift": centre - torch_centre,
            "widest_difference": widest,
            "widest_move": widest_move,  # over the val images whose scores are not saturated
            "val_share_within": float((np.abs(m) <= width).mean()) if width else 0.0,
        }
        if best is None or band["val_share_within"] < best["val_share_within"]:
            best = band
    return best


def check(run: Run, model_file: Path, runtime: str, val_loader, confirm: dict | None = None):
    """Score the validation loader with the exported model and with torch; the numbers that
    decide whether the export is kept, its recalibrated thresholds, and the band in which the
    network would have to confirm its verdicts. ``confirm``: such a band (with the threshold
    it was made for): check the export with the network confirming (``ConfirmingBackend``)."""
    # checked as predict and evaluate will run it, batch size included
    backend = backend_of(runtime, model_file, batch=val_loader.batch_size)
    if confirm:
        backend = confirming(backend, run, confirm)
    s, y, rate = _scores_and_rate(backend, run.spec, val_loader)
    # of the scoring pass: the timed passes repeat the first batches
    confirmed_share = backend.confirmed / max(backend.seen, 1) if confirm else None
    # the reference is the network as trained, in fp32: what the export must reproduce
    rt = select_runtime("cpu", precision="fp32")
    # `--runtime torch` as the run scores here (bf16 where the CPU has it): the speed `--runtime
    # auto` compares against, and the verdicts the export's threshold reproduces
    own = select_runtime("cpu", precision=run.spec.precision)
    fp32 = own.amp_dtype is None
    ts, ty, trate = _scores_and_rate(TorchBackend(run.model, rt), run.spec, val_loader, fp32)
    verdicts = ts
    if not fp32:
        verdicts, _, trate = _scores_and_rate(TorchBackend(run.model, own), run.spec, val_loader)
    torch_runtime = own.describe()
    auc, auc_torch = float(M.threshold_free(y, s)["auc"]), float(M.threshold_free(ty, ts)["auc"])
    thresholds = M.ideal_thresholds(y, s)  # the export's own optima, for the record
    reference = verdicts >= run.threshold
    if confirm:  # the band was made around a threshold; moving it would undo the band
        agreement = float(confirm["threshold"])
        unlike = int(((s >= agreement) != reference).sum())
    else:
        agreement, unlike = M.agreeing_threshold(s, reference, run.threshold)
    return {
        "split": "val",
        "n": int(len(y)),
        "auc": auc,
        "auc_torch": auc_torch,
        "auc_tolerance": AUC_TOLERANCE,
        "passed": bool(abs(auc - auc_torch) <= AUC_TOLERANCE),
        # how far the difference could lie on other images: the check's sample is small
        "auc_difference_95": M.auc_difference(y, s, ts),
        "max_abs_score_difference": float(np.abs(s - ts).max()),
        "threshold_torch": float(run.threshold),  # the run's, calibrated at training
        "f1_at_own_threshold": M.at_threshold(y, s, agreement)["f1"],
        "f1_torch_at_its_threshold": M.at_threshold(ty, verdicts, run.threshold)["f1"],
        "verdicts_unlike_torch": unlike,  # at the export's threshold, of n
        "confirmation_band": confirmation_band(s, verdicts, agreement, run.threshold),
        "confirmed_share": confirmed_share,
        "img_per_s": rate,
        "torch_img_per_s": trate,
        "torch_runtime": torch_runtime,  # whose speed torch_img_per_s is, and whose verdicts
        "auc_reference": rt.describe(),  # whose scores auc_torch is
        "thresholds": {
            **thresholds,
            "agreement": agreement,
            "criterion": "agreement",  # with torch's verdicts at the run's threshold
            "run_criterion": run.meta.thresholds.get("criterion", "youden"),
        },
    }


@signal_stack_kept()  # NNCF's own OpenVINO Cores (engines.py)
def export_run(
    run: str | Path | Run,
    to: str = "onnx",
    int8: bool = False,
    data: str | Path | None = None,
    limit: int = 0,
    calibration: int = CALIBRATION_IMAGES,
    batch_size: int = 16,
    finetune: int | None = None,
    confirm: bool | None = None,
) -> Artifact:
    """Export, check and keep (or refuse) one artifact; returns it. ``limit`` caps the
    validation images per class (0: all) and ``calibration`` the training images per class, each
    in all, shared out between the data sets checked on. ``finetune``: batches of training
    images by which OpenVINO int8 is fine-tuned after calibration (``finetune.finetune_int8``;
    None: one pass over the training split, at most ``FINETUNE_STEPS``; 0: post-training
    quantisation alone). ``confirm``: the run's network confirms the export's verdicts near
    its threshold (``confirmation_band``, ``engines.ConfirmingBackend``), checked so; None:
    for int8, whose verdicts alone differed from the network's on every run measured."""
    if to not in ("onnx", "openvino"):
        raise FakescopeError(f"--to must be onnx or openvino, not {to!r}")
    if finetune is not None and (finetune < 0 or not (to == "openvino" and int8)):
        raise FakescopeError(
            f"--finetune {finetune}: a number of batches (0 or more), for --to openvino --int8 only"
        )
    run = run if isinstance(run, Run) else load_run(run)
    data = _data_of(run, data)
    confirm = int8 if confirm is None else confirm
    name = f"{to}-{'int8' if int8 else 'fp32'}"
    folder = run.path / EXPORT_DIR
    folder.mkdir(exist_ok=True)
    val = _loader(run, data, "val", limit, batch_size)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        graph, source = None, None  # the fp32 ONNX graph, once something needs it

        def fp32() -> Path:
            nonlocal graph, source
            if graph is None:
                graph = None if (to, int8) == ("onnx", False) else checked_fp32_graph(run)
                if graph:
                    log.info("starting from the run's checked fp32 graph %s", graph)
                    source = graph.name
                else:
                    log.info("exporting %s to ONNX", run.path)
                    graph, source = tmp / "fp32.onnx", "exported"
                    _onnx(run, graph, batch_size)
            return graph

        calib = _loader(run, data, "train", calibration, batch_size) if int8 else None
        finetuned = None  # what fine-tuning measured, where it ran
        if to == "onnx":
            model_file = tmp / f"{name}.onnx"
            if int8:
                log.info("calibrating int8 on up to %d training images per class", calibration)
                _onnx_int8(fp32(), model_file, _calibration(calib))
            else:
                fp32().rename(model_file)
        elif int8 and finetune != 0:
            model_file = tmp / f"{name}.xml"
            train = _loader(run, data, "train", 0, batch_size, shuffle=True)
            whole = max(1, len(train.dataset) // batch_size)  # fine-tuning skips a short batch
            steps = min(whole, FINETUNE_STEPS) if finetune is None else finetune
            log.info("int8: calibrating, then fine-tuning for %d batches of training images", steps)
            net, finetuned = finetune_int8(run.model, [x for x, _, _ in calib], train, steps)
            torch_to_openvino(net, run, model_file)
        else:
            model_file = tmp / f"{name}.xml"
            _openvino(fp32(), model_file, _calibration(calib) if int8 else (), int8, run.spec)
        if injected("export"):  # tests: a broken export must be refused, not kept
            _break(model_file)
        log.info("checking %s on the validation split", name)
        result = check(run, model_file, to, val)
        method = ("nncf" if to == "openvino" else "onnxruntime static QDQ") if int8 else "none"
        # Where OpenVINO int8 misses, more tries, each checked: after post-training
        # quantisation alone, quantile activation ranges; after either, NNCF's accuracy
        # control. FAKESCOPE_FAULT=int8-refused: tests take them all.
        accuracy_control = (
            "NNCF's accuracy control", "nncf accuracy control",
            lambda: _openvino_accuracy_control(
                fp32(), model_file, _calibration(calib), val, AUC_TOLERANCE / 2, run.spec),
        )  # fmt: skip
        if finetuned:
            method = (
                "nncf, quantisation-aware fine-tuning" if finetuned["kept"] == "fine-tuned"
                else "nncf in torch, calibrated (fine-tuning moved the logits away; not kept)"
            )  # fmt: skip
            retries = [("finetuned_int8", *accuracy_control)]
        elif to == "openvino" and int8:
            retries = [
                ("plain_int8", "quantile activation ranges", "nncf, quantile ranges",
                 lambda: _openvino(fp32(), model_file, _calibration(calib), True, run.spec, True)),
                ("quantile_int8", *accuracy_control),
            ]  # fmt: skip
        else:
            retries = []
        tried = {}  # the numbers of the tries that failed, by name
        for failed, how, again, quantise in retries:
            if result["passed"] and not injected("int8-refused"):
                break
            log.info(
                "int8 val AUC %.4f against torch's %.4f: quantising again with %s",
                result["auc"], result["auc_torch"], how,
            )  # fmt: skip
            tried[failed] = {k: result[k] for k in ("auc", "auc_torch", "passed")}
            quantise()
            result, method = check(run, model_file, to, val), again
        band = None
        if confirm:  # the export is kept or refused as it will score: confirmed
            threshold = result["thresholds"]["agreement"]
            band = {**result["confirmation_band"], "threshold": threshold}
            if band["half_width"] == 0:  # engines.artifact_backend then scores it alone
                log.info("%s moved no validation logit %.2f or more from the network's: "
                         "none to confirm", name, CONFIRM_NEGLIGIBLE)  # fmt: skip
                result["confirmed_share"] = 0.0
            elif band["val_share_within"] > CONFIRM_MAX_SHARE:
                raise FakescopeError(
                    f"{name} export refused: validation AUC {result['auc']:.4f} against "
                    f"torch's {result['auc_torch']:.4f}; it moved logits as far as "
                    f"{band['widest_move']:.3f} from the network's and its verdicts differed "
                    f"from the network's as far as {band['widest_difference']:.3f} logits from "
                    f"its threshold: the network would have to confirm "
                    f"{100 * band['val_share_within']:.0f} % of the validation images (at most "
                    f"{100 * CONFIRM_MAX_SHARE:.0f} %). Nothing was kept."
                )
            else:
                log.info(
                    "checking %s with the network confirming the verdicts within %.3f logits "
                    "of its threshold (%.1f %% of the validation images)",
                    name, band["half_width"], 100 * band["val_share_within"],
                )  # fmt: skip
                unconfirmed = {k: result[k] for k in ("auc", "auc_torch", "passed")}
                result = check(run, model_file, to, val, confirm=band)
                result["unconfirmed"] = unconfirmed
        result.update(tried)
        if not result["passed"]:
            raise FakescopeError(
                f"{name} export refused: validation AUC {result['auc']:.4f} against torch's "
                f"{result['auc_torch']:.4f} (allowed difference {AUC_TOLERANCE}); scores differ "
                f"by up to {result['max_abs_score_difference']:.4f}. Nothing was kept."
            )
        kept = [model_file, *([model_file.with_suffix(".bin")] if to == "openvino" else [])]
        for f in kept:
            shutil.move(str(f), folder / f.name)
    info = {
        "runtime": to,
        "int8": int8,
        "file": model_file.name,
        "weights_sha256": run.meta.weights_sha256,
        "graph_format": GRAPH_FORMAT,
        "threshold": result["thresholds"][result["thresholds"]["criterion"]],
        "check": result,
        "data": [str(d) for d in data],
        "calibration_images_per_class": calibration if int8 else 0,
        "quantisation": method,
        # the fp32 ONNX graph it was made from: "onnx-fp32.onnx" (the run's checked export),
        # "exported" (made for it), or None (fine-tuned in torch, nothing needed it)
        "fp32_graph": source,
        "finetune": finetuned,
        "confirm": band,  # None: the export's verdicts alone
        "input": (
            f"uint8 (N, 3, {run.input_size}, {run.input_size}) pixels, normalised in the graph"
            if to == "openvino"
            else f"float32 (N, 3, {run.input_size}, {run.input_size}), normalised"
        ),
        "outputs": "logit, score (sigmoid)" + (", mirror-averaged" if run.tta else ""),
        "cpu": cpu_summary(),
        "made": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(folder / f"{name}.json", info)
    art = Artifact(name, to, int8, folder / model_file.name, info)
    log.info("kept %s", art.describe())
    return art


def _break(model_file: Path) -> None:
    """Scale every weight of the exported model's largest tensor by -3: a deliberately broken
    export (ONNX or OpenVINO), which the check must refuse."""
    if model_file.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(model_file))
        big = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        arr = numpy_helper.to_array(big)
        big.CopyFrom(numpy_helper.from_array((arr * -3).astype(arr.dtype), big.name))
        onnx.save(m, str(model_file))
        return
    import openvino as ov
    import openvino.opset13 as ops

    model = openvino_core().read_model(str(model_file))
    weights = [op for op in model.get_ops() if op.get_type_name() == "Constant"
               and op.get_output_element_type(0) == ov.Type.f32]  # fmt: skip
    big = max(weights, key=lambda op: int(np.prod(list(op.get_output_shape(0)))))
    big.output(0).replace(ops.constant(big.get_data() * -3, ov.Type.f32).output(0))
    broken = model_file.with_name("broken.xml")  # the .bin read is mapped: not written over
    ov.save_model(model, str(broken), compress_to_fp16=False)
    for suffix in (".xml", ".bin"):
        broken.with_suffix(suffix).replace(model_file.with_suffix(suffix))

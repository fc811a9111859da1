"""`fakescope export` and `--runtime`: real ONNX Runtime and OpenVINO models of a trained run,
checked on its validation split, then chosen by predict, evaluate and serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fakescope.errors import FakescopeError
from fakescope.model.detector import inference_model
from fakescope.model.runtime import select_runtime
from fakescope.runs import load_run
from fakescope.scoring.engines import artifacts, backend_of, choose, signal_stack
from fakescope.scoring.export import export_run
from fakescope.scoring.predictor import Predictor
from fakescope.scoring.scorer import Scorer, TorchBackend

from .conftest import SG, sg_images
from .test_training_options import tiny_run

LIMIT = 16  # validation images per class for the checks: enough to rank, quick on 2 cores


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory):
    """A run of its own (exports must not reach other tests' `auto` choice), with mirror TTA
    so the graph's average is exercised: three batches at 96 px, 16 images per class."""
    return tiny_run(tmp_path_factory.mktemp("export") / "run", tta=True, limit_per_class=LIMIT)


@pytest.fixture(scope="module")
def onnx_fp32(run_copy):
    return export_run(run_copy, "onnx", limit=LIMIT)


def test_the_onnx_graph_scores_as_torch_does(run_copy, onnx_fp32):
    """Mirror average and sigmoid inside the graph, dynamic batch: the same P(fake) as the
    fp32 torch scorer for batches of 1 and 5."""
    run = load_run(run_copy)
    assert run.tta
    info = json.loads((run_copy / "export" / "onnx-fp32.json").read_text())
    assert info["check"]["passed"] and info["check"]["n"] == 2 * LIMIT
    assert abs(info["check"]["auc"] - info["check"]["auc_torch"]) <= 0.002
    d = info["check"]["auc_difference_95"]
    assert d["difference"] == pytest.approx(info["check"]["auc"] - info["check"]["auc_torch"])
    assert d["low"] <= d["difference"] <= d["high"] and d["rounds"] == 1000
    assert info["weights_sha256"] == run.meta.weights_sha256 and info["fp32_graph"] == "exported"
    assert "fp32" in info["check"]["auc_reference"] and info["check"]["torch_img_per_s"] > 0
    c = info["check"]
    assert 0 < info["threshold"] < 1 and c["thresholds"]["criterion"] == "agreement"
    assert info["threshold"] == c["thresholds"]["agreement"]
    # an fp32 graph gives fp32 torch's verdicts (bf16 torch's, where the CPU has it: nearly)
    assert c["verdicts_unlike_torch"] <= (0 if "fp32" in c["torch_runtime"] else 2)
    exported = Scorer.of_run(run, "cpu", runtime="onnx")
    assert exported.engine == "onnx-fp32" and exported.threshold == info["threshold"]
    reference = Scorer(TorchBackend(run.model, select_runtime("cpu", precision="fp32")), run.spec)
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in sg_images("fake", n=3) + sg_images("real", n=2)]
    for batch in (images[:1], images):
        got, want = exported.score_images(batch), reference.score_images(batch)
        assert got.shape == (len(batch),)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_a_broken_export_is_refused_with_its_numbers(
    run_copy, onnx_fp32, tmp_path, monkeypatch, capsys
):
    """From the command line: an OpenVINO export (made from the run's kept fp32 graph) whose
    largest weight tensor was scaled by -3 (the 'export' fault) fails the check, and nothing of
    it is kept; with --confirm, too, since the network would have to score every image again.
    The fault breaks an ONNX graph alike."""
    env = {**os.environ, "FAKESCOPE_FAULT": "export", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fakescope.cli", "export", str(run_copy), "--to", "openvino",
           "--limit", str(LIMIT)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fakescope: error: openvino-fp32 export refused: validation AUC")
    assert "Nothing was kept" in last and "Traceback" not in r.stderr
    assert "starting from the run's checked fp32 graph" in r.stdout + r.stderr
    # the earlier good export is untouched, and no stray files (.xml, .bin) are left
    left = sorted(p.name for p in (run_copy / "export").iterdir())
    assert left == ["onnx-fp32.json", "onnx-fp32.onnx"]
    assert json.loads((run_copy / "export" / "onnx-fp32.json").read_text())["check"]["passed"]
    from fakescope.cli import main

    monkeypatch.setenv("FAKESCOPE_FAULT", "export")
    assert main(["export", str(run_copy), "--to", "openvino", "--limit", str(LIMIT),
                 "--confirm"]) == 2  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("fakescope: error: openvino-fp32 export refused: validation AUC")
    assert "the network would have to confirm" in last and "(at most 50 %)" in last
    assert sorted(p.name for p in (run_copy / "export").iterdir()) == left
    # the same fault on a copy of the ONNX graph: its scores are far from the graph's own
    import shutil

    from fakescope.scoring.export import _break

    broken = tmp_path / "broken.onnx"
    shutil.copy(onnx_fp32.model_file, broken)
    _break(broken)
    size = load_run(run_copy).input_size
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    good = backend_of("onnx", onnx_fp32.model_file, batch=4).logits(x)
    bad = backend_of("onnx", broken, batch=4).logits(x)
    assert float((good - bad).abs().max()) > 0.5  # 1.0-2.9 logits on random images in a trial


def test_openvino_int8_is_checked_and_calibrated(run_copy, onnx_fp32):
    """NNCF's int8 from the run's own training images, calibrated and then fine-tuned (the
    default): kept only within 0.002 AUC; either way the numbers are there (an int8 model
    that misses is refused, not kept)."""
    before = signal_stack()
    try:
        art = export_run(run_copy, "openvino", int8=True, limit=LIMIT, calibration=8, finetune=4)
    except FakescopeError as e:
        assert "refused: validation AUC" in str(e)
        assert not (run_copy / "export" / "openvino-int8.json").exists()
        return
    finally:  # NNCF's own OpenVINO Cores came and went: the signal stack is put back
        assert signal_stack() == before
    c = art.info["check"]
    assert art.int8 and c["passed"] and abs(c["auc"] - c["auc_torch"]) <= 0.002
    assert art.info["calibration_images_per_class"] == 8
    f = art.info["finetune"]
    assert f["steps"] == 4 and art.info["input"].startswith("uint8")
    assert ("quantisation-aware" in art.info["quantisation"]) == (f["kept"] == "fine-tuned")
    # an fp32 graph only where accuracy control needed one: the run's checked ONNX export
    assert art.info["fp32_graph"] == ("onnx-fp32.onnx" if "finetuned_int8" in c else None)
    assert (run_copy / "export" / "openvino-int8.bin").exists()
    # the logits leave the classifier unrounded: quantised on their way to the mirror average,
    # they were clipped to the calibration's range (every confident fake one score)
    assert _quantisers_after_classifier(run_copy / "export" / "openvino-int8.xml") == []
    # confirmed by default: through the band the verdicts on val are the network's
    from fakescope.scoring.engines import ConfirmingBackend

    band = art.info["confirm"]
    assert band is not None and c["verdicts_unlike_torch"] == 0
    wider = max(1.5 * band["widest_difference"], band["widest_move"], abs(band["offset"]))
    assert band["half_width"] == (pytest.approx(wider) if wider >= 0.01 else 0)
    scorer = Scorer.of_run(run_copy, "cpu", runtime="openvino")
    assert scorer.engine == "openvino-int8"
    confirmed = isinstance(scorer.backend, ConfirmingBackend)
    assert confirmed == (band["half_width"] > 0) == ("unconfirmed" in c)
    assert (0 < c["confirmed_share"] <= 0.5) if confirmed else c["confirmed_share"] == 0
    # its threads share the cores with the pipeline's workers (engines.py)
    ov = scorer.backend.fast if confirmed else scorer.backend
    assert ov.model.get_property("ENABLE_CPU_PINNING") is False


def test_int8_fine_tuning_keeps_the_closer_network_and_converts_faithfully(run_copy, tmp_path):
    """Quantisation-aware fine-tuning: NNCF's quantisers in the torch network, trained towards
    the fp32 logits; the network kept is the closer of the calibrated and the fine-tuned one,
    and OpenVINO's int8 graph of it (pixels in, nothing quantised after the classifier) scores
    as the fake-quantised torch network does."""
    import openvino as ov

    from fakescope.scoring import export as X
    from fakescope.scoring.finetune import finetune_int8

    run = load_run(run_copy)
    data = X._data_of(run, None)
    calib = [x for x, _, _ in X._loader(run, data, "train", 8, 8)]
    loader = X._loader(run, data, "train", 24, 8, shuffle=True)

    class Train(list):  # the loader's six batches of 8, then a short one no step may take
        batch_size, dataset = 8, range(52)

    train = Train(loader)
    train.append((torch.full((4, 3, 96, 96), float("nan")), None, None))
    net, f = finetune_int8(run.model, calib, train, steps=12, progress=False, check_every=5)
    assert f["steps"] == 12 and f["kept"] in ("fine-tuned", "calibrated")
    assert f["lr_schedule"] == "cosine to 0" and all(np.isfinite(r) for _, r in f["trace"])
    assert (f["kept"] == "fine-tuned") == (f["logit_rmse_after"] < f["logit_rmse_before"])
    # compared with fp32 every 5 batches and after the last; the closest check is the one kept
    assert [s for s, _ in f["trace"]] == [0, 5, 10, 12]
    assert f["logit_rmse_after"] == min(r for s, r in f["trace"][1:])
    assert f["trace"][[s for s, _ in f["trace"]].index(f["best_step"])][1] == f["logit_rmse_after"]
    fp32 = inference_model(run.model)
    with torch.no_grad():
        kept_rmse = torch.cat([(net(x) - fp32(x)).reshape(-1) for x in calib])
    assert float(kept_rmse.square().mean().sqrt()) == pytest.approx(
        min(f["logit_rmse_after"], f["logit_rmse_before"]), rel=1e-4
    )
    xml = tmp_path / "int8.xml"
    X.torch_to_openvino(net, run, xml)
    ops = ov.Core().read_model(str(xml)).get_ops()
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops) > 30
    assert _quantisers_after_classifier(xml) == []
    scorer = Scorer(backend_of("openvino", xml, batch=8), run.spec)
    assert scorer.backend.pixels_in
    x = torch.cat(calib[:2])
    pixels = scorer.as_input(x)  # what the pipeline hands over; the float network sees it back
    with torch.no_grad():
        back = Scorer(TorchBackend(net, select_runtime("cpu", precision="fp32")), run.spec)
        want = back.logits(back.as_input(pixels))
    got = scorer.logits(pixels)
    # int8 kernels round where the fake quantisers do not quite (the demo: 0.46 RMS from fp32
    # either way; here mean 0.1 with VNNI, 0.3 and at most 0.66 on an AVX2-only CPU); a graph
    # that lost the normalisation, the mirror or the classifier's float output would be off by
    # whole logits
    assert float((got - want).abs().mean()) < 0.5 and float((got - want).abs().max()) < 1.0
    assert float(torch.corrcoef(torch.stack([got, want]))[0, 1]) > 0.99


@pytest.mark.parametrize("to, int8, batches", [("onnx", True, 5), ("openvino", False, 5),
                                               ("openvino", True, -1)])  # fmt: skip
def test_finetune_is_refused_where_it_has_no_meaning(run_copy, to, int8, batches):
    with pytest.raises(FakescopeError, match="--finetune"):
        export_run(run_copy, to, int8=int8, finetune=batches)


def test_onnx_int8_is_checked_and_leaves_the_logits_in_float(run_copy, onnx_fp32, tmp_path, caplog):
    """ONNX Runtime's static int8 (QDQ), calibrated on the run's training images and checked
    like every export (kept or refused with its numbers: this 96 px run, three batches from
    chance, scores its images within a few hundredths of each other, which int8's rounding
    can reorder, notably with the 7-bit weights of a CPU without VNNI); nothing after the
    classifier is quantised (see the OpenVINO test)."""
    import onnx

    from fakescope.scoring import export as X

    caplog.set_level("INFO", logger="fakescope.scoring.export")
    try:
        art = export_run(run_copy, "onnx", int8=True, limit=LIMIT, calibration=8)
    except FakescopeError as e:
        assert "onnx-int8 export refused: validation AUC" in str(e)
        assert not list((run_copy / "export").glob("onnx-int8.*"))
    else:
        c = art.info["check"]
        assert art.int8 and c["passed"] and abs(c["auc"] - c["auc_torch"]) <= 0.002
        assert art.info["fp32_graph"] == "onnx-fp32.onnx"
        assert art.info["confirm"] is not None and c["verdicts_unlike_torch"] == 0  # default
        for p in (run_copy / "export").glob("onnx-int8.*"):
            p.unlink()  # the other tests' choices are among the exports they made
    run = load_run(run_copy)
    # quantised from the run's checked fp32 export, which is left as it was
    assert "starting from the run's checked fp32 graph" in caplog.text
    assert X.checked_fp32_graph(run) == onnx_fp32.model_file
    # the quantised graph itself, kept or not
    int8 = tmp_path / "int8.onnx"
    calibration = X._loader(run, X._data_of(run, None), "train", 8, 8)
    X._onnx_int8(onnx_fp32.model_file, int8, X._calibration(calibration))
    nodes = onnx.load(str(int8)).graph.node
    assert any(n.op_type == "QuantizeLinear" for n in nodes)
    last = max(i for i, n in enumerate(nodes) if n.op_type == "Gemm")
    assert [n.op_type for n in nodes[last + 1 :]] == ["Reshape", "ReduceMean", "Sigmoid"]
    assert nodes[last].input[0].endswith("DequantizeLinear_Output")  # the classifier: int8


def test_confirm_gives_the_networks_verdicts(run_copy, onnx_fp32, tmp_path):
    """``--confirm``: the band around the export's threshold is 1.5x the widest validation
    disagreement or the widest validation move of a logit relative to the thresholds, and
    within it the logit is the network's moved by the thresholds' difference (kept in the
    band), outside it the export's. The fp32 graph keeps the (fp32) network's logits, so its
    logits move only by the thresholds' difference: its threshold lies mid-gap between two
    validation scores (``metrics.agreeing_threshold``), as far from the run's as the gap is
    wide on these 32 images, and a test image in that gap would change its verdict. Where that
    is under 0.01 logits the band is empty and the export scores alone. (On a copy of the run:
    its export must not reach the other tests.)"""
    import shutil

    from fakescope.scoring.engines import ConfirmingBackend, confirming
    from fakescope.scoring.export import _logit

    copy = tmp_path / "run"
    shutil.copytree(run_copy, copy, ignore=shutil.ignore_patterns("export"))
    art = export_run(copy, "onnx", limit=LIMIT, confirm=True)
    run = load_run(copy)
    band, c = art.info["confirm"], art.info["check"]
    assert band["centre"] == pytest.approx(_logit(art.threshold))
    assert band["shift"] == pytest.approx(_logit(art.threshold) - _logit(run.threshold))
    assert band["widest_difference"] == 0 and c["verdicts_unlike_torch"] == 0
    # the same network: its logits are the export's moved by the thresholds' difference, which
    # the export's logits as they are leave as their widest move, and a fitted line takes up
    assert band["widest_move"] <= abs(band["shift"]) + 1e-3
    empty = abs(band["shift"]) < 0.01
    wider = max(band["widest_move"], abs(band["offset"]))
    assert band["half_width"] == (0 if empty else pytest.approx(wider))
    assert (c["confirmed_share"] == 0) if empty else (c["confirmed_share"] <= 0.5)
    assert ("unconfirmed" in c) != empty  # nothing to confirm: checked once
    scorer = Scorer.of_run(run, "cpu", runtime="onnx")
    assert isinstance(scorer.backend, ConfirmingBackend) != empty
    assert scorer.engine == "onnx-fp32"
    # what predict and evaluate say they score with names the confirmation where there is one
    assert ("confirms" in art.describe()) != empty
    wider = {**art.info, "confirm": {**band, "half_width": 0.81},
             "check": {**c, "confirmed_share": 0.109}}  # fmt: skip
    said = type(art)(art.name, art.runtime, art.int8, art.model_file, wider).describe()
    assert "the run's network confirms the verdicts within 0.81 logits" in said
    assert "11 % of those images" in said
    # the mechanics, with a band wide enough to hold some of a handful of images
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in sg_images("fake", n=4) + sg_images("real", n=4)]
    x = scorer.tensors(images)
    alone = scorer.backend if empty else scorer.backend.fast
    plain = alone.logits(x)
    centre = float(plain.median())  # as if the export's threshold lay there
    shift = centre - float(_logit(run.threshold))
    at = float(torch.sigmoid(torch.tensor(centre)))
    wide = confirming(
        alone, run, {"centre": centre, "half_width": 0.5, "shift": shift, "threshold": at}
    )
    exact = Scorer(wide.exact, run.spec).logits(x)
    got = wide.logits(x)
    near = (plain - centre).abs() <= 0.5
    assert 0 < int(near.sum()) == wide.confirmed and wide.seen == len(x)
    want = (exact[near] + shift).clamp(centre - 0.5, centre + 0.5)
    torch.testing.assert_close(got[near], want, atol=1e-4, rtol=0)
    assert torch.equal(got[~near], plain[~near])
    # an image the network scores at its threshold exactly is called fake through the band
    # too, however the float32 rounding of the shift falls (before the fix, on this run's val
    # split: 0.99255836 against the export's threshold 0.99255845)
    assert torch.equal(got[near] >= centre, torch.sigmoid(exact[near]) >= run.threshold)
    from fakescope.scoring.engines import _logits_beside

    for t in (run.threshold, art.threshold, 0.5, 1e-3, 0.9999):
        above, below = _logits_beside(t, float(_logit(t)))
        s_above, s_below = torch.sigmoid(torch.tensor([above, below]))
        assert s_above >= t and float(s_above) >= t and s_below < t and float(s_below) < t
        assert below < above and above - below < 1e-2
    assert _logits_beside(0.0, -16.1) == (pytest.approx(-16.1, abs=1e-5), -16.1)  # ends
    # the check scores the validation split through a band as predict will: the images
    # within it confirmed, and the verdicts the network's
    from fakescope.scoring import export as X

    val = X._loader(run, X._data_of(run, None), "val", LIMIT, 16)
    checked = X.check(run, art.model_file, "onnx", val, {**band, "half_width": 0.5,
                                                         "threshold": art.threshold})  # fmt: skip
    assert 0 < checked["confirmed_share"] <= 1 and checked["verdicts_unlike_torch"] == 0
    assert checked["auc"] == pytest.approx(checked["auc_torch"], abs=1e-3)


@pytest.mark.parametrize("pool, most_waiting, threads", [(8, 16, 2), (1, 0, 1)])
def test_predict_pools_the_confirmations_and_scores_as_one_batch_at_a_time(
    run_copy, onnx_fp32, monkeypatch, pool, most_waiting, threads
):
    """``predict`` lets the images near the threshold wait, and the network confirms those of
    several batches in one call: once ``POOL`` of them wait, once ``MAX_WAITING`` batches
    wait for them, and at the end. The rows come in input order with the scores of
    confirming each batch as it comes (the network's logits do not depend on the batch).
    The files go from the furthest from the threshold to the nearest, so that only the last
    batch waits."""
    from fakescope.data.images import load_rgb
    from fakescope.scoring import predictor
    from fakescope.scoring.engines import ConfirmingBackend, confirming
    from fakescope.scoring.export import _logit

    monkeypatch.setattr(ConfirmingBackend, "POOL", pool)
    monkeypatch.setattr(predictor, "MAX_WAITING", most_waiting)
    run = load_run(run_copy)
    files = sg_images("fake", n=8) + sg_images("real", n=8)
    alone = backend_of("onnx", onnx_fp32.model_file)
    plain = Scorer(alone, run.spec)
    z = plain.logits(plain.tensors([load_rgb(f) for f in files]))
    centre = float(z.median())  # as if the export's threshold lay there
    off = (z - centre).abs()
    order = torch.argsort(off, descending=True, stable=True)
    files = [files[i] for i in order]
    images = [load_rgb(f) for f in files]
    width = float(off.sort().values[3:5].mean())  # the four nearest: the last batch of four
    at = float(torch.sigmoid(torch.tensor(centre)))
    band = {"centre": centre, "half_width": width, "threshold": at,
            "shift": centre - float(_logit(run.threshold))}  # fmt: skip
    one_at_a_time = Scorer(confirming(alone, run, band), run.spec, 4, at).score_images(images)
    pooled = confirming(alone, run, band)
    pooled.concurrency = threads  # as OpenVINO's two streams score two batches at once
    pred = Predictor(run, device="cpu", batch_size=4, faces="never", progress=False,
                     scorer=Scorer(pooled, run.spec, 4, at))  # fmt: skip
    rows = list(pred.predict(files))
    assert [r.path for r in rows] == [str(f) for f in files]
    assert [r.score for r in rows] == [round(float(s), 6) for s in one_at_a_time]
    assert pooled.confirmed == 4 and pooled.waiting == 0
    from fakescope.bench import confirmation_counts  # what `bench --e2e` reports

    assert confirmation_counts(pred) == (len(files), 4)
    # the mechanics: screened now, confirmed when enough wait or when asked to
    x = pred.scorer.tensors(images[-4:])
    part = pooled.logits_later(x)
    near = int(part.near.sum())
    assert part.done == (near == 0) and pooled.waiting == near
    pooled.confirm_waiting()  # fewer than POOL wait on
    assert part.done == (near == 0 or near >= pooled.POOL)
    pooled.confirm_waiting(force=True)
    assert part.done and torch.equal(part.z, pooled.logits(x))


def test_the_last_confirmation_runs_on_every_core_with_the_same_logits(run_copy, onnx_fp32):
    """Nothing runs beside a pipeline's last confirmation: ``predict`` splits its images across
    the threads torch had before it cut them to one, each half on one thread, and the logits
    are those of one call. Each call of the network waits at a barrier for the other thread's,
    so halves run one after the other (or one thread doing it all) fail it."""
    import threading

    from fakescope.data.images import load_rgb
    from fakescope.scoring.engines import confirming
    from fakescope.scoring.export import _logit

    run = load_run(run_copy)
    files = sg_images("fake", n=4) + sg_images("real", n=4)
    alone = backend_of("onnx", onnx_fp32.model_file)
    plain = Scorer(alone, run.spec)
    x = plain.tensors([load_rgb(f) for f in files])
    z = plain.logits(x)
    centre = float(z.median())
    at = float(torch.sigmoid(torch.tensor(centre)))
    band = {"centre": centre, "half_width": float((z - centre).abs().max()) + 1.0,
            "threshold": at, "shift": centre - float(_logit(run.threshold))}  # fmt: skip
    want = confirming(alone, run, band).logits(x)  # every image confirmed, in one call

    def split_backend():
        backend = confirming(alone, run, band)
        backend.POOL = 100  # every image waits for the end
        barrier, exact = threading.Barrier(2, timeout=60), backend.exact.logits
        seen = []

        def logits(xs):
            seen.append((threading.current_thread().name, len(xs)))
            barrier.wait()
            return exact(xs)

        backend.exact.logits = logits
        return backend, seen

    backend, seen = split_backend()
    part = backend.logits_later(x)
    backend.confirm_waiting(force=True, threads=2)
    assert part.done and torch.equal(part.z, want)
    assert len({name for name, _ in seen}) == 2 and sorted(n for _, n in seen) == [4, 4, 4, 4]

    backend, seen = split_backend()
    pred = Predictor(run, device="cpu", batch_size=4, faces="never", progress=False,
                     scorer=Scorer(backend, run.spec, 4, at))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two cores, whatever the test worker runs on
    try:
        rows = list(pred.predict(files))
        assert torch.get_num_threads() == 2  # given back after the pipeline's one
    finally:
        torch.set_num_threads(threads)
    assert [r.score for r in rows] == [round(float(s), 6) for s in torch.sigmoid(want)]
    assert len({name for name, _ in seen}) == 2 and backend.confirmed == len(files)


def test_predict_keeps_the_rows_of_a_batch_screened_after_a_confirmation_ended(
    run_copy, onnx_fp32, monkeypatch
):
    """Three batches on two scoring threads, the network confirming each image as soon as it
    waits (``POOL`` 1): the first batch's near images are confirmed while the third is still
    being screened, so at the end the first batch is ready and the third still waits. Every
    row comes out, in order; the third batch's were lost before (26 of 330 rows in
    `scripts/runtime_agreement.py`). The export and the network are slowed by sleeps so that
    the order is the same on every machine."""
    import time

    from fakescope.data.images import load_rgb
    from fakescope.scoring.engines import ConfirmingBackend, confirming
    from fakescope.scoring.export import _logit

    monkeypatch.setattr(ConfirmingBackend, "POOL", 1)
    run = load_run(run_copy)
    files = sg_images("fake", n=6) + sg_images("real", n=6)
    alone = backend_of("onnx", onnx_fp32.model_file)
    plain = Scorer(alone, run.spec)
    z = plain.logits(plain.tensors([load_rgb(f) for f in files]))
    centre = float(z.median())
    by_distance = [int(i) for i in torch.argsort((z - centre).abs(), stable=True)]
    near, far = by_distance[:2], by_distance[2:]
    order = [near[0], *far[:3], *far[3:7], near[1], *far[7:]]  # batches of 4: near, far, near
    files = [files[i] for i in order]
    gap = sorted(float((z[i] - centre).abs()) for i in by_distance[1:3])
    at = float(torch.sigmoid(torch.tensor(centre)))
    band = {"centre": centre, "half_width": sum(gap) / 2, "threshold": at,
            "shift": centre - float(_logit(run.threshold))}  # fmt: skip
    want = Scorer(confirming(alone, run, band), run.spec, 4, at).score_images(
        [load_rgb(f) for f in files]
    )

    def slowed(f, seconds):
        return lambda x: (time.sleep(seconds), f(x))[1]

    pooled = confirming(alone, run, band)
    pooled.fast = type("Slow", (), {"logits": staticmethod(slowed(alone.logits, 0.4))})()
    pooled.exact.logits = slowed(pooled.exact.logits, 0.1)
    pooled.concurrency = 2
    pred = Predictor(run, device="cpu", batch_size=4, faces="never", progress=False,
                     scorer=Scorer(pooled, run.spec, 4, at))  # fmt: skip
    rows = list(pred.predict(files))
    assert [r.path for r in rows] == [str(f) for f in files]
    assert [r.score for r in rows] == [round(float(s), 6) for s in want]
    assert pooled.confirmed == 2


def test_the_band_covers_the_widest_move_not_only_the_widest_disagreement():
    """A network confident on validation leaves few images near its threshold to disagree on:
    the band must still reach as far as the export moved any validation logit (saturated
    scores, whose float32 logits mean nothing, left out), and moves too small to matter leave
    it empty."""
    from scipy.special import expit as sig

    from fakescope.scoring.export import _logit, confirmation_band

    net = np.array([-6.0, -3.0, -0.1, 0.3, 4.0, 7.0, 30.0])  # logits; 30 saturates
    moved = net + np.array([0.2, -0.9, -0.05, 0.1, 0.4, -0.3, -25.0])
    band = confirmation_band(sig(moved), sig(net), 0.5, 0.5)
    assert band["widest_difference"] == 0  # every verdict the network's: no disagreement
    assert band["widest_move"] == pytest.approx(0.9, abs=1e-6)  # not the saturated 25
    assert band["half_width"] == pytest.approx(0.9, abs=1e-6)
    assert band["val_share_within"] == pytest.approx(2 / 7)  # -0.15 and 0.4
    # a disagreement 0.7 out: 1.5x it is wider than any move
    off = moved.copy()
    off[3] = -0.7
    band = confirmation_band(sig(off), sig(net), 0.5, 0.5)
    assert band["widest_difference"] == pytest.approx(0.7) and band["half_width"] == (
        pytest.approx(1.05)
    )
    # the thresholds differ: moves are measured from each one's own
    band = confirmation_band(sig(net + 0.5), sig(net), sig(0.5), 0.5)
    assert band["widest_move"] < 1e-6 and band["half_width"] == 0
    assert band["shift"] == pytest.approx(0.5) and band["centre"] == pytest.approx(_logit(sig(0.5)))
    # moves under 0.01 logits confirm nothing but ties: empty
    band = confirmation_band(sig(net + 0.004 * np.sign(net)), sig(net), 0.5, 0.5)
    assert band["half_width"] == 0 and 0 < band["widest_move"] < 0.01


def test_the_band_reads_the_export_through_a_fitted_line_where_that_confirms_fewer():
    """int8 moves logits roughly in proportion to their size: read through the line fitted to
    the network's logits, the export's logits leave a narrower band, which still holds every
    image whose verdict moved, and the confirming backend confirms exactly the images whose
    line values lie in it."""
    from scipy.special import expit as sig

    from fakescope.scoring.engines import ConfirmingBackend
    from fakescope.scoring.export import confirmation_band

    rng = np.random.default_rng(0)
    net = rng.normal(0, 3, 400).clip(-8, 8)  # none saturated
    export = 0.8 * net - 0.2 + rng.normal(0, 0.1, 400)  # shrunk and shifted, a little noise
    band = confirmation_band(sig(export), sig(net), 0.5, 0.5)
    plain = _identity(export, net)
    assert band["gain"] == pytest.approx(1.25, abs=0.05)
    assert band["offset"] == pytest.approx(0.25, abs=0.05)
    assert band["half_width"] < 0.6 and band["val_share_within"] < plain["val_share_within"] / 3
    m = band["gain"] * export + band["offset"]
    assert band["widest_move"] == pytest.approx(np.abs(m - net).max())
    unlike = (export >= 0) != (net >= 0)
    assert unlike.any() and (np.abs(m[unlike]) <= band["half_width"]).all()
    backend = ConfirmingBackend(None, None, {**band, "threshold": 0.5}, None, 0.5)
    near = (export >= backend.low) & (export <= backend.high)
    assert near.sum() == round(band["val_share_within"] * 400) and near[unlike].all()
    # moves that are only noise: no line reads them better than the logits as they are
    noise = net + rng.normal(0, 0.3, 400)
    band = confirmation_band(sig(noise), sig(net), 0.5, 0.5)
    assert (band["gain"], band["offset"]) == (1.0, 0.0) or band["val_share_within"] <= (
        _identity(noise, net)["val_share_within"]
    )


def _identity(export, net) -> dict:
    """The band of the export's logits as they are (the line 1, 0), as the check measures it."""
    moved = np.abs(export - net).max()
    unlike = (export >= 0) != (net >= 0)
    widest = np.abs(export[unlike]).max() if unlike.any() else 0.0
    width = max(1.5 * widest, moved)
    return {"half_width": width, "val_share_within": float((np.abs(export) <= width).mean())}


def _quantisers_after_classifier(xml) -> list[str]:
    """The FakeQuantize operations between the graph's ``logit`` output and the last MatMul."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    node = next(op for op in model.get_ops() if op.get_friendly_name() == "logit")
    found, todo = [], [node]
    while todo:
        node = todo.pop()
        if node.get_type_name() == "FakeQuantize":
            found.append(node.get_friendly_name())
        if node.get_type_name() != "MatMul":
            todo += [v.get_node() for v in node.input_values()
                     if v.get_node().get_type_name() not in ("Constant", "Parameter")]  # fmt: skip
    return found


def test_openvino_exports_take_pixels_and_score_as_torch_does(run_copy, onnx_fp32, tmp_path):
    """An OpenVINO export takes uint8 pixels and normalises and mirrors them in its graph:
    compiled in fp32 it gives torch's fp32 scores; ``Scorer`` hands it pixels, and a
    normalised batch (the loaders' kind) is turned back into exactly the same pixels. (Built
    without the check: on a CPU with bf16 the fp32 graph runs in bf16, which moves this
    untrained run's chance-level AUC by more than the check allows.)"""
    from PIL import Image

    from fakescope.scoring.engines import backend_of
    from fakescope.scoring.export import _openvino

    run = load_run(run_copy)
    model_file = tmp_path / "pixels.xml"
    _openvino(onnx_fp32.model_file, model_file, (), False, run.spec)
    scorer = Scorer(backend_of("openvino", model_file, batch=6), run.spec, 6)
    assert scorer.pixels_in
    paths = sg_images("fake", n=3) + sg_images("real", n=3)
    images = [Image.open(p).convert("RGB") for p in paths]
    pixels = scorer.tensors(images)
    floats = scorer.tensors(images, pixels=False)
    assert pixels.dtype == torch.uint8 and floats.dtype == torch.float32
    assert torch.equal(scorer.as_input(floats), pixels)
    np.testing.assert_array_equal(scorer.logits(floats), scorer.logits(pixels))
    # The graph itself with every operation in fp32 (the CPU plugin may otherwise pick bf16),
    # in a child process: a second OpenVINO core compiled in the test process made a later
    # test that forks (test_shards) crash with a segmentation fault.
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    child = (
        "import sys, numpy as np, openvino as ov\n"
        "core = ov.Core()\n"
        "m = core.compile_model(core.read_model(sys.argv[1]), 'CPU',"
        " {'INFERENCE_PRECISION_HINT': 'f32'})\n"
        "x = np.load(sys.argv[2])\n"
        "out = [m([a])[m.output('score')].reshape(-1) for a in (x, x[..., ::-1].copy())]\n"
        "np.save(sys.argv[3], np.stack(out))\n"
    )
    cmd = [sys.executable, "-c", child, str(model_file), str(tmp_path / "pixels.npy"),
           str(tmp_path / "scores.npy")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got, flipped = np.load(tmp_path / "scores.npy")
    fp32 = select_runtime("cpu", precision="fp32")
    want = Scorer(TorchBackend(run.model, fp32), run.spec).score_tensors(floats)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the mirror is the graph's own: one image scores as its mirror image does
    np.testing.assert_allclose(flipped, got, atol=1e-5)
    # evaluate's loaders send such a scorer pixels too, and score as the images do
    from fakescope.data.dataset import make_loader
    from fakescope.data.folders import read_splits
    from fakescope.evaluation.evaluator import scoring_dataset

    samples = [x for x in read_splits(SG / "splits.csv") if x.split == "val"][:6]
    ds = scoring_dataset(run, SG, samples, pixels=scorer.pixels_in)
    assert ds[0][0].dtype == torch.uint8
    from_loader, _, _ = scorer.score_loader(make_loader(ds, 6))
    from_images = scorer.score_images([Image.open(SG / x.path).convert("RGB") for x in samples])
    np.testing.assert_array_equal(from_loader, from_images)


def _openvino_file(onnx_fp32, tmp_path):
    """The ONNX export as an OpenVINO file."""
    import openvino as ov

    tmp_path.mkdir(exist_ok=True)
    model_file = tmp_path / "model.xml"
    ov.save_model(ov.convert_model(str(onnx_fp32.model_file)), str(model_file))
    return model_file


def _openvino_of(onnx_fp32, tmp_path, batch):
    """The ONNX export as OpenVINO reads it, behind the backend ``Scorer`` uses."""
    return backend_of("openvino", _openvino_file(onnx_fp32, tmp_path), batch=batch)


def test_openvino_splits_full_batches_across_two_streams(run_copy, onnx_fp32, tmp_path):
    """The exported file keeps its dynamic batch; full batches of the scorer's size run in two
    halves on a copy compiled for the half (a static shape, two streams) and other sizes on the
    dynamic one. All give the same scores, also with more callers at once than requests."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    backend = _openvino_of(onnx_fp32, tmp_path, batch=4)
    batch, part, output = backend.fixed
    assert (batch, part) == (4, 2) and backend.concurrency == 2
    # bigger batches in parts of at most 4 (a stream's working set in its core's cache)
    assert _openvino_of(onnx_fp32, tmp_path / "b16", batch=16).fixed[:2] == (16, 4)
    assert output.get_partial_shape().is_static and output.get_shape()[0] == 2
    assert backend.model.input(0).get_partial_shape()[0].is_dynamic
    scorer = Scorer(backend, load_run(run_copy).spec, 4)
    images = [Image.open(p).convert("RGB") for p in sg_images("fake", n=2) + sg_images("real", n=2)]
    x = scorer.tensors(images)
    whole = backend.logits(x)
    assert backend.request.latency == 0  # the full batch: the halves, not the dynamic model
    parts = torch.cat([backend.logits(x[:3]), backend.logits(x[3:])])
    assert backend.request.latency > 0  # the ragged ones: the dynamic model
    np.testing.assert_allclose(whole.numpy(), parts.numpy(), atol=1e-4)
    # six callers, four requests, two per call: each call takes both of its halves or waits
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(backend.logits, x) for _ in range(18)]
        got = [f.result(timeout=120) for f in futures]
    assert all(torch.equal(g, whole) for g in got)


# Run as a child: before the fix its death was the test process's (SIGSEGV, no traceback).
SIGNAL_AFTER_TWO_BACKENDS = """
import gc, os, signal, sys
from pathlib import Path
from fakescope.scoring.engines import backend_of
first = backend_of("openvino", Path(sys.argv[1]), batch=4)
second = backend_of("openvino", Path(sys.argv[1]), batch=4)
del first; gc.collect(); del second; gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("survived")
"""


def test_a_signal_after_openvino_backends_go_is_handled(onnx_fp32, tmp_path):
    """OpenVINO's CPU plugin swaps a thread's signal stack for its own and, as its Core goes,
    puts back the one it found, even one since unmapped: two backends freed in the order they
    were made left the main thread's signal stack in unmapped memory and the next Python
    signal handler (a DataLoader's SIGCHLD) crashed session 24's suite. With one Core for the
    process (``engines.openvino_core``) the handler runs."""
    model_file = _openvino_file(onnx_fp32, tmp_path)
    done = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_TWO_BACKENDS, str(model_file)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["handled", "survived"]


def test_predict_keeps_two_batches_in_flight_and_torch_to_one_thread(run_copy, onnx_fp32, tmp_path):
    """With OpenVINO's two streams, predict scores two batches at a time on their own threads:
    rows stay in input order with the scores of a pipeline without threads. torch, which then
    only makes input tensors, runs on one thread while the rows come and gets its threads back
    after; with the torch runtime it keeps them."""
    backend = _openvino_of(onnx_fp32, tmp_path, batch=4)
    run = load_run(run_copy)
    files = sg_images("fake", n=6) + sg_images("real", n=5)  # two full batches of 4, one of 3

    def predictor(workers, scorer):
        return Predictor(run, device="cpu", batch_size=4, faces="never", progress=False,
                         workers=workers, scorer=scorer)  # fmt: skip

    threads = torch.get_num_threads()
    seen = []
    piped = []
    for row in predictor(2, Scorer(backend, run.spec, 4)).predict(files):
        seen.append(torch.get_num_threads())
        piped.append(row)
    plain = list(predictor(0, Scorer(backend, run.spec, 4)).predict(files))
    assert [r.path for r in piped] == [r.path for r in plain] == [str(f) for f in files]
    assert [r.score for r in piped] == [r.score for r in plain]
    assert set(seen) == {1} and torch.get_num_threads() == threads
    if threads > 1:
        own = Scorer.of_run(run, "cpu", 4, runtime="torch")
        for _ in predictor(2, own).predict(files[:2]):
            assert torch.get_num_threads() == threads


def test_throughput_times_an_export_as_predict_scores_it(run_copy, onnx_fp32, tmp_path):
    """``Scorer.throughput``, the rate ``--runtime auto`` compares (the export's check) and
    ``bench`` reports: with OpenVINO's two streams two batches are in flight at once (the two
    timed calls below wait for each other, so timing one batch at a time fails), the images
    near the threshold are confirmed by the end, and torch runs on one thread meanwhile."""
    import threading

    from PIL import Image

    from fakescope.scoring.engines import confirming
    from fakescope.scoring.export import _logit

    run = load_run(run_copy)
    fast = _openvino_of(onnx_fp32, tmp_path, batch=4)
    files = sg_images("fake", n=8) + sg_images("real", n=8)
    plain = Scorer(fast, run.spec, 4)
    x = plain.tensors([Image.open(f).convert("RGB") for f in files])
    z = plain.logits(x)
    centre = float(z.median())
    width = float((z - centre).abs().sort().values[5])  # six images near the threshold
    band = {"centre": centre, "half_width": width,
            "threshold": float(torch.sigmoid(torch.tensor(centre))),
            "shift": centre - float(_logit(run.threshold))}  # fmt: skip
    backend = confirming(fast, run, band)
    both, calls, threads = threading.Barrier(2, timeout=120), [], torch.get_num_threads()
    inner = fast.logits

    def logits(batch):
        calls.append(torch.get_num_threads())
        if len(calls) in (2, 3):  # the first two timed calls, after the untimed one
            both.wait()
        return inner(batch)

    fast.logits = logits
    scorer = Scorer(backend, run.spec, 4)
    assert scorer.concurrency == 2
    rate = scorer.throughput([x[i : i + 4] for i in range(0, 16, 4)])
    assert rate > 0 and len(calls) == 5
    assert backend.waiting == 0 and backend.confirmed >= 6  # the warm-up's too
    assert set(calls) == {1} and torch.get_num_threads() == threads


def test_int8_that_misses_is_quantised_again_with_accuracy_control(run_copy, tmp_path, monkeypatch):
    """Where plain int8 fails the check (forced here), it is quantised again with quantile
    activation ranges, and where that fails too, NNCF's accuracy control returns the most
    harmful operations to fp32; each is checked. The JSON says which was kept and what the
    others measured."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("openvino-*", "onnx-int8.*"))
    monkeypatch.setenv("FAKESCOPE_FAULT", "int8-refused")
    try:
        art = export_run(run, "openvino", int8=True, limit=LIMIT, calibration=8, finetune=0,
                         confirm=False)  # fmt: skip
    except FakescopeError as e:  # refused after both tries: the numbers are given
        assert "refused: validation AUC" in str(e)
        return
    info = art.info
    assert info["quantisation"] == "nncf accuracy control"
    assert info["confirm"] is None and info["check"]["confirmed_share"] is None  # asked not to
    assert info["fp32_graph"] == "onnx-fp32.onnx"  # the copy's checked export, each try
    for tried in ("plain_int8", "quantile_int8"):
        assert set(info["check"][tried]) == {"auc", "auc_torch", "passed"}
    assert (
        info["check"]["passed"] and abs(info["check"]["auc"] - info["check"]["auc_torch"]) <= 0.002
    )


def test_only_a_checked_fp32_graph_of_these_weights_is_reused(run_copy, onnx_fp32, tmp_path):
    """int8 exports start from the run's kept onnx-fp32 graph, but only one that passed its
    check and was made of the weights the run has now; anything else is exported afresh."""
    import shutil

    from fakescope.scoring.export import checked_fp32_graph

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("openvino-*", "onnx-int8.*"))
    info_file = run / "export" / "onnx-fp32.json"
    good = json.loads(info_file.read_text())
    assert checked_fp32_graph(load_run(run)) == run / "export" / "onnx-fp32.onnx"
    for changed in (
        {"weights_sha256": "0" * 64},
        {"check": {**good["check"], "passed": False}},
        {"graph_format": good["graph_format"] - 1},  # made by a fakescope of another graph
    ):
        info_file.write_text(json.dumps({**good, **changed}))
        assert checked_fp32_graph(load_run(run)) is None, changed
    info_file.write_text("{not json")
    assert checked_fp32_graph(load_run(run)) is None
    info_file.write_text(json.dumps(good))
    (run / "export" / "onnx-fp32.onnx").unlink()
    assert checked_fp32_graph(load_run(run)) is None


def test_runtime_choice(run_copy, onnx_fp32, tmp_path):
    run = load_run(run_copy)
    assert choose(run, "torch") is None
    # the fastest checked export wins auto: here ONNX's alone (the OpenVINO one set aside)
    aside = [p for p in (run_copy / "export").iterdir() if p.name.startswith("openvino")]
    for p in aside:
        p.rename(tmp_path / p.name)
    assert choose(run, "onnx").name == "onnx-fp32"
    with pytest.raises(FakescopeError, match="--runtime must be one of"):
        choose(run, "tensorrt")
    # auto: the export when it measured faster than torch, torch when not
    f = run_copy / "export" / "onnx-fp32.json"
    info = json.loads(f.read_text())
    try:
        info["check"].update(img_per_s=100.0, torch_img_per_s=50.0)
        f.write_text(json.dumps(info))
        assert choose(run, "auto", "cpu").name == "onnx-fp32"
        assert choose(run, "auto", "cuda") is None  # exports run on CPU providers
        info["check"].update(img_per_s=40.0)
        f.write_text(json.dumps(info))
        assert choose(run, "auto", "cpu") is None
        # an export of other weights is never taken, and asked for by name it is an error
        info["weights_sha256"] = "0" * 64
        f.write_text(json.dumps(info))
        assert all(a.name != "onnx-fp32" for a in artifacts(run))
        with pytest.raises(FakescopeError, match="no checked onnx export"):
            choose(run, "onnx")
        assert choose(run, "auto", "cpu") is None
    finally:
        info["check"].update(img_per_s=100.0, torch_img_per_s=50.0)
        info["weights_sha256"] = run.meta.weights_sha256
        f.write_text(json.dumps(info))
        for p in aside:
            (tmp_path / p.name).rename(run_copy / "export" / p.name)


def test_predict_and_evaluate_agree_across_runtimes(run_copy, onnx_fp32, tmp_path):
    from fakescope.evaluation.evaluator import evaluate

    files = sg_images("fake", n=4) + sg_images("real", n=4)
    rows = {}
    for rt in ("torch", "onnx"):
        pred = Predictor(run_copy, device="cpu", faces="never", progress=False, runtime=rt)
        assert pred.scorer.engine == ("torch" if rt == "torch" else "onnx-fp32")
        rows[rt] = {r.path: (r.score, r.verdict, pred.threshold) for r in pred.predict(files)}
    for path, (s_t, v_t, thr_t) in rows["torch"].items():
        s_o, v_o, thr_o = rows["onnx"][path]
        if abs(s_o - thr_o) > 0.01 and abs(s_t - thr_t) > 0.01:
            assert v_t == v_o, path
    m = evaluate(run_copy, SG, split="val", out=tmp_path, progress=False, explain=0,
                 runtime="onnx")  # fmt: skip
    assert m["runtime"] == "onnx-fp32" and m["threshold_source"]["computed_on"] == "val (onnx-fp32)"
    assert torch.isfinite(torch.tensor(m["auc"]))


def test_bench_e2e_limit_takes_files_from_every_class():
    from fakescope.bench import spread
    from fakescope.data.images import list_files

    files = list_files([SG])
    picked = spread(files, 10)
    assert len(picked) == 10 and len(set(picked)) == 10
    assert {p.parent.name for p in picked} == {"fake", "real"}
    assert spread(files[:5], 10) == files[:5] and spread(files, 0) == files


def test_bench_e2e_times_models_on_the_files_not_on_noise(run_copy, tmp_path):
    """The batch each model-only rate repeats is made of the folder's own images (a confirmed
    export's speed depends on how many lie in its band), passing over a file that will not
    open; noise only where none does."""
    from fakescope.bench import _model_batch, spread
    from fakescope.data.images import list_files, load_rgb

    run = load_run(run_copy)
    files = list_files([SG])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    x = _model_batch(run, [bad, *files], 6)
    assert x.shape == (6, 3, run.input_size, run.input_size) and x.is_floating_point()
    good = [f for f in spread([bad, *files], 6) if f != bad]  # five, from both classes
    assert len(good) == 5 and {f.parent.name for f in good} == {"fake", "real"}
    want = Scorer(None, run.spec).tensors([load_rgb(f, run.input_size) for f in good])
    assert torch.equal(x[:5], want) and torch.equal(x[5], x[0])  # as the network takes them
    # two files for a batch of four: they repeat
    two = _model_batch(run, files[:2], 4)
    assert torch.equal(two[2:], two[:2])
    noise = _model_batch(run, [bad], 3)
    assert noise.shape == (3, 3, run.input_size, run.input_size)


def test_bench_e2e_times_every_runtime_against_the_eager_baseline(run_copy, onnx_fp32, capsys):
    from fakescope.bench import run_e2e_bench

    rows = run_e2e_bench(run_copy, SG / "real", faces="never", limit=8, batch=4, iters=1, rounds=2)
    names = [r["runtime"] for r in rows]
    assert names[0].startswith("torch fp32 eager") and rows[0]["ratio"] == 1.0
    # the plain baseline and the same network once malloc keeps memory
    assert "plain malloc" in names[0] and "malloc kept" in names[1]
    assert "onnx-fp32" in names and any(n.startswith("torch cpu") for n in names)
    assert all(r["e2e"] > 0 and r["model"] > 0 for r in rows)
    # two rounds, taking turns: the median of two rates lies between them
    assert all(len(r["e2e_all"]) == len(r["model_all"]) == 2 for r in rows)
    # the plain baseline too (it runs in a child process, whose malloc fakescope leaves as it
    # is): each round starts with it, after every runtime's round before
    starts = [r["started"] for r in rows]
    assert starts[0][0] < min(s[0] for s in starts[1:])
    assert max(s[0] for s in starts[1:]) < starts[0][1] < min(s[1] for s in starts[1:])
    assert all(min(r["e2e_all"]) <= r["e2e"] <= max(r["e2e_all"]) for r in rows)
    assert all(r["of_model"] == pytest.approx(r["e2e"] / r["model"]) for r in rows)
    out = capsys.readouterr().out
    assert "x baseline" in out and "threads" in out  # the CPU beside the figures
    assert "e2e/model" in out and "min-max of the rounds" in out
    # each export also as a user would run the file, model only: the "peer"
    onnx = next(r for r in rows if r["runtime"] == "onnx-fp32")
    assert onnx["peer_model"] > 0
    assert onnx["of_peer"] == pytest.approx(onnx["e2e"] / onnx["peer_model"])
    assert "onnx-fp32 as exported (dynamic batch), model only" in out
    # the share the network confirmed end to end: only for confirmed exports (none here)
    assert all(r["confirmed_share"] is None for r in rows) and "confirmed" not in out


def test_serve_answers_with_the_export_as_predict_does(run_copy, onnx_fp32, tmp_path):
    """A real server with --runtime onnx-fp32: /v1/model names it, and its scores and verdicts
    are predict's with the same runtime."""
    import httpx

    from .test_serve import Server, _post

    srv = Server(run_copy, tmp_path, "--runtime", "onnx-fp32", "--faces", "never")
    try:
        m = httpx.get(srv.url + "/v1/model").json()
        assert m["runtime"] == "onnx-fp32" and m["threshold"] == pytest.approx(onnx_fp32.threshold)
        assert m["threshold_chosen"]["computed_on"] == "val (onnx-fp32)"
        files = sg_images("fake", n=2) + sg_images("real", n=2)
        r = _post(srv, [(f.name, f.read_bytes()) for f in files])
        assert r.status_code == 200
        served = {f["name"]: f["rows"][0] for f in r.json()["files"]}
    finally:
        srv.close()
    pred = Predictor(run_copy, faces="never", progress=False, runtime="onnx-fp32")
    for row in pred.predict(files):
        got = served[os.path.basename(row.path)]
        assert got["score"] == pytest.approx(row.score, abs=1e-5) and got["verdict"] == row.verdict


def test_an_uneven_band_says_how_far_it_reaches_each_way():
    """A band read through a line reaches unevenly below and above the export's threshold, and
    its description says so; one without a line (an older export's) is as it was."""
    from fakescope.scoring.engines import band_reach, describe_reach

    even = {"half_width": 0.81}
    assert band_reach(even) == (0.81, 0.81)
    assert describe_reach(even) == "within 0.81 logits of"
    uneven = {"half_width": 1.256, "gain": 1.048, "offset": 0.171}
    below, above = band_reach(uneven)
    assert below == pytest.approx(1.3616, abs=1e-4) and above == pytest.approx(1.0353, abs=1e-4)
    # the line values at the two ends are the half-width, on either side
    assert 1.048 * -below + 0.171 == pytest.approx(-1.256)
    assert 1.048 * above + 0.171 == pytest.approx(1.256)
    assert describe_reach(uneven) == "from 1.36 logits below to 1.04 above"

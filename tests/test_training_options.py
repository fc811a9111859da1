"""Training options that change what a run computes: weight averaging (--ema) and mirror-image
test-time augmentation (--tta), on tiny real runs of mobilenet_v2 over sg-ffhq images."""

import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fakescope.config import TrainConfig
from fakescope.data.transforms import normalise, to_tensor
from fakescope.errors import FakescopeError
from fakescope.evaluation.evaluator import evaluate
from fakescope.runs import load_run
from fakescope.scoring.predictor import Predictor
from fakescope.training.loop import train
from fakescope.training.sam import SharpnessAware

from .conftest import SG, sg_images, threads_per_process


def tiny_run(out, resume=False, **kw):
    base = dict(
        data=str(SG),
        out=str(out),
        backbone="mobilenet_v2",
        head="gap",
        weights="imagenet",
        input_size=96,
        # exact comparisons (one process against two, the mirror average by hand) want fp32
        # arithmetic; bf16 autocast is on by default where the CPU has it
        precision="fp32",
        lr=1e-3,
        batch_size=8,
        epochs=1,
        steps=1,
        limit_per_class=12,
        max_train_batches=3,
        tensorboard=False,
    )
    cfg = TrainConfig(**{**base, **kw})
    return train(cfg, progress=False, resume=resume)


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs") / "tta", tta=True, label_smoothing=0.1)


def test_tta_is_stored_and_used_by_predict_and_evaluate(tta_run, tmp_path):
    run = load_run(tta_run)
    assert run.meta.to_json()["model"]["tta"] == "hflip" and run.tta
    img = sg_images("fake", n=1)[0]
    x = to_tensor(Image.open(img).convert("RGB"), 96, run.mean, run.std)[None]
    with torch.no_grad():
        plain = run.model(x).item()
        mirrored = run.model(torch.flip(x, dims=[3])).item()
    expected = 1 / (1 + np.exp(-(plain + mirrored) / 2))
    assert abs(plain - mirrored) > 1e-4  # the mirror really scores differently

    predicted = next(iter(Predictor(tta_run, faces="never", progress=False).predict([img])))
    assert predicted.score == pytest.approx(expected, abs=1e-4)

    evaluate(tta_run, SG, split="test", out=tmp_path, progress=False, explain=0)
    rows = {r["path"]: float(r["score"]) for r in csv.DictReader(open(tmp_path / "scores.csv"))}
    scored = [v for k, v in rows.items() if k.endswith(img.name)]
    assert scored and scored[0] == pytest.approx(expected, abs=1e-4)


def test_bad_option_values_are_clear_errors(tmp_path):
    with pytest.raises(FakescopeError, match="label-smoothing"):
        tiny_run(tmp_path / "a", label_smoothing=1.5)
    with pytest.raises(FakescopeError, match="--ema"):
        tiny_run(tmp_path / "b", ema=2.0)
    with pytest.raises(FakescopeError, match="multiple of --procs"):
        tiny_run(tmp_path / "c", batch_size=6, procs=4)
    # raised inside the training processes, passed on as the same one-line error
    with pytest.raises(FakescopeError, match=r"^--weights '/nonexistent.pth': no such file"):
        tiny_run(tmp_path / "d", procs=2, weights="/nonexistent.pth")


def test_two_processes_train_as_one(tmp_path):
    """--procs 2 (DistributedDataParallel over gloo, real processes): with BatchNorm statistics
    frozen, two processes of 4 images each take the same Adam step as one process of all 8,
    so the kept weights agree; the step itself moved them far more than they differ. The one
    process gets the threads each of the two gets (threads_per_process)."""
    kw = dict(limit_per_class=4, max_train_batches=1, freeze_bn=True, hflip=False)
    with threads_per_process(2):
        one = tiny_run(tmp_path / "one", **kw)
    two = tiny_run(tmp_path / "two", procs=2, **kw)
    start = load_run(tiny_run(tmp_path / "start", lr=0.0, **kw)).model.state_dict()
    w1 = load_file(str(one / "model.safetensors"))
    w2 = load_file(str(two / "model.safetensors"))
    moved = differ = total = 0
    for k, w in w1.items():
        if w.is_floating_point():
            moved += (w - start[k]).abs().sum().item()
            # Adam's first step is ~lr * sign(gradient): a gradient within rounding of zero
            # can flip sign between the two sums, so a handful of weights may disagree
            differ += ((w - w2[k]).abs() > 2e-5).sum().item()
            total += w.numel()
    assert moved / total > 5e-4  # the step moved the weights by ~lr each
    assert differ / total < 1e-4
    m1, m2 = load_run(one).meta, load_run(two).meta
    assert "2 processes" in m2.extra["runtime"] and "processes" not in m1.extra["runtime"]
    # each process scored half of val; pooled, the calibration matches the single process's
    assert m2.thresholds["n_val"] == m1.thresholds["n_val"] == 8
    assert m2.threshold == pytest.approx(m1.threshold, abs=1e-3)


def test_cosine_cut_before_its_end(tmp_path):
    """--lr-epochs 2 with one epoch: the step ends halfway down the cosine, at half the rate."""
    run = tiny_run(tmp_path / "half", lr_schedule="cosine", lr_epochs=2)
    with open(run / "log.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["lr"]) == pytest.approx(5e-4)


def test_ema_keeps_averaged_weights(tmp_path):
    """Same seed and data, with and without --ema: the kept weights differ, and the averaged
    ones moved less far from the ImageNet start than the live ones."""
    plain = load_file(str(tiny_run(tmp_path / "plain") / "model.safetensors"))
    ema = load_file(str(tiny_run(tmp_path / "ema", ema=0.5) / "model.safetensors"))
    start = load_run(tiny_run(tmp_path / "start", max_train_batches=1, lr=0.0)).model.state_dict()
    key = "features.18.0.weight"  # the last convolution
    moved_plain = (plain[key] - start[key]).norm()
    moved_ema = (ema[key] - start[key]).norm()
    assert 0 < moved_ema < moved_plain


def test_epochs_per_step(tmp_path):
    """--epochs 1,2 with two steps: one epoch with stem and stage1 frozen, then two with all
    layers; each step's cosine schedule ends at zero, and the stored config round-trips."""
    run = tiny_run(
        tmp_path / "steps",
        steps=2,
        freeze_stages=(2, 0),
        epochs=(1, 2),
        lr_schedule="cosine",
        patience=5,
    )
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["epoch"], r["frozen_stages"]) for r in rows] == [
        ("1", "1", "2"),
        ("2", "1", "0"),
        ("2", "2", "0"),
    ]
    assert float(rows[0]["lr"]) == 0 and float(rows[1]["lr"]) > 0 and float(rows[2]["lr"]) == 0
    meta = load_run(run).meta
    assert meta.config.epochs == (1, 2)
    with pytest.raises(Exception, match="one per step"):
        tiny_run(tmp_path / "bad", steps=3, epochs=(1, 2))


def test_torchrun_trains_as_procs_does(tmp_path):
    """The same two-process training launched by torchrun (env:// rendezvous, the console
    command under torchrun), by two torchrun commands as two "machines" (--nnodes 2, c10d
    rendezvous on localhost) and by --procs 2 (fakescope spawns its own processes) reaches the
    same weights and threshold: one code path, any launcher."""
    import socket
    import subprocess
    import sys

    kw = dict(limit_per_class=4, max_train_batches=1, freeze_bn=True, hflip=False)
    spawned = tiny_run(tmp_path / "spawned", procs=2, **kw)

    def train_argv(out):
        return [
            "-m", "fakescope.cli", "train", "--data", str(SG), "--out", str(out),
            "--backbone", "mobilenet_v2", "--head", "gap", "--input-size", "96", "--lr", "1e-3",
            "--batch-size", "8", "--epochs", "1", "--steps", "1", "--limit-per-class", "4",
            "--max-train-batches", "1", "--freeze-bn", "--no-hflip", "--no-tensorboard",
            "--no-eval", "--precision", "fp32",  # exact comparison: no bf16 autocast
        ]  # fmt: skip

    run = [sys.executable, "-m", "torch.distributed.run"]
    one_node = tmp_path / "torchrun"
    r = subprocess.run(
        [*run, "--standalone", "--nproc-per-node", "2", *train_argv(one_node)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("run saved to") == 1  # only the lead process writes and reports
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two_nodes = tmp_path / "two-nodes"
    # each "machine" its own share of the cores, as two machines would have: a process uses as
    # many threads as its machine has cores per process, and the thread count decides the
    # order of the sums (see test_two_processes_train_as_one)
    cores = sorted(os.sched_getaffinity(0))
    shares = [set(cores[: len(cores) // 2] or cores), set(cores[len(cores) // 2 :])]
    nodes = [
        subprocess.Popen(
            [
                *run,
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "fakescope-test",
                *train_argv(two_nodes),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda share=share: os.sched_setaffinity(0, share),
        )  # fmt: skip
        for share in shares
    ]
    outs = [n.communicate(timeout=600) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), [e[-2000:] for _, e in outs]
    assert sum(o.count("run saved to") for o, _ in outs) == 1
    w1 = load_file(str(spawned / "model.safetensors"))
    m1 = load_run(spawned).meta
    w2 = load_file(str(one_node / "model.safetensors"))
    for k, w in w1.items():
        assert torch.allclose(w.float(), w2[k].float(), atol=1e-6), k
    # across "machines" gloo may sum the gradients in another order: as in
    # test_two_processes_train_as_one, a gradient within rounding of zero may flip the sign of
    # Adam's first step for a handful of weights (measured before the machines had their own
    # cores, so with 2 threads per process against 1: 82 of 2.26 million, later 519)
    w3 = load_file(str(two_nodes / "model.safetensors"))
    differ = sum(((w - w3[k]).abs() > 2e-5).sum().item() for k, w in w1.items())
    assert differ / sum(w.numel() for w in w1.values()) < 1e-4
    for out, tol in ((one_node, 1e-6), (two_nodes, 1e-4)):
        m2 = load_run(out).meta
        assert m2.threshold == pytest.approx(m1.threshold, abs=tol)
        assert "2 processes" in m2.extra["runtime"]


def test_sam_ascends_by_rho_along_the_gradient_and_comes_back():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    x, y = torch.randn(16, 6), torch.rand(16, 1)
    start = [p.detach().clone() for p in net.parameters()]

    def loss():
        return torch.nn.functional.mse_loss(net(x), y)

    before = loss()
    before.backward()
    sam = SharpnessAware(net, rho=0.01)
    sam.ascend()
    moved = torch.cat([(p - s).flatten() for p, s in zip(net.parameters(), start, strict=True)])
    assert moved.norm().item() == pytest.approx(0.01, rel=1e-4)
    with torch.no_grad():
        assert loss() > before  # uphill: the worst weights nearby, not a step down
    sam.descend()
    for p, s in zip(net.parameters(), start, strict=True):
        torch.testing.assert_close(p.detach(), s, rtol=0, atol=1e-7)


def test_sam_second_pass_leaves_batchnorm_statistics_alone(tmp_path):
    """One training batch with and without --sam: the first pass is the same in both, and the
    perturbed second pass must not count in BatchNorm's running statistics, so those agree
    exactly; the weights do not (the gradient came from elsewhere)."""
    plain = load_file(str(tiny_run(tmp_path / "plain", max_train_batches=1) / "model.safetensors"))
    run = tiny_run(tmp_path / "sam", max_train_batches=1, sam=0.05)
    sam = load_file(str(run / "model.safetensors"))
    stats = [k for k in plain if k.endswith("running_mean") or k.endswith("running_var")]
    assert stats
    for k in stats:
        torch.testing.assert_close(sam[k], plain[k], rtol=0, atol=0)
    key = "features.18.0.weight"
    assert not torch.equal(sam[key], plain[key])
    assert load_run(run).meta.to_json()["train"]["sam"] == 0.05
    with pytest.raises(FakescopeError, match="--sam"):
        TrainConfig(sam=-0.1).check()


def test_pixels_normalised_on_the_device_and_compile_train_alike(tmp_path, monkeypatch):
    """Where training runs on a GPU its loader sends uint8 pixels, normalised on the device;
    --compile trains through torch.compile. Here both run on the CPU (the pixel path switched
    on as a GPU would have it): the normalisation is called on the batch, and the kept
    weights are the plain run's exactly with pixels alone, and to compiled kernels' rounding
    with --compile too. torch.compile runs with its aot_eager backend here: the same graph
    capture and autograd tracing as the default (inductor), without the C++ kernel builds that
    take 2-3 minutes for this network's training step on 2 cores."""
    import functools

    import fakescope.training.loop as loop
    from fakescope.model.runtime import Runtime

    kw = dict(limit_per_class=4, hflip=False)  # one batch of 8
    start = load_run(tiny_run(tmp_path / "start", lr=0.0, **kw)).model.state_dict()
    plain = load_file(str(tiny_run(tmp_path / "plain", **kw) / "model.safetensors"))
    calls = []

    def spy(x, mean, std):
        calls.append(x.dtype)
        return normalise(x, mean, std)

    monkeypatch.setattr(Runtime, "loader_sends_pixels", property(lambda self: True))
    monkeypatch.setattr(loop, "normalise", spy)
    pixels = load_file(str(tiny_run(tmp_path / "pixels", **kw) / "model.safetensors"))
    assert calls == [torch.uint8]
    compiled_with = []

    def compile_(net, real=torch.compile):
        compiled_with.append(type(net).__name__)
        return functools.partial(real, backend="aot_eager")(net)

    monkeypatch.setattr(torch, "compile", compile_)
    compiled = load_file(str(tiny_run(tmp_path / "compiled", compile=True, **kw)
                             / "model.safetensors"))  # fmt: skip
    assert calls == [torch.uint8] * 2 and compiled_with == ["Detector"]
    moved = off = 0.0
    for k, w in plain.items():
        if w.is_floating_point():
            assert torch.equal(pixels[k], w), k
            moved += (w - start[k]).abs().sum().item()
            off += (compiled[k] - w).abs().sum().item()
    # Adam's first step moves every weight by about lr; compiled rounding flips the sign of
    # a few near-zero gradients, a small share of that movement
    assert moved > 0 and off < 0.05 * moved

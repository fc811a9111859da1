"""Training options that change what a run computes: weight averaging (--ema) and mirror-image
test-time augmentation (--tta), on tiny real runs of mobilenet_v2 over sg-ffhq images."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fakescope.config import TrainConfig
from fakescope.data import to_tensor
from fakescope.evaluation import evaluate
from fakescope.inference import Predictor
from fakescope.runs import load_run
from fakescope.training import train

from .conftest import SG, sg_images


def tiny_run(out, **kw):
    base = dict(
        data=str(SG),
        out=str(out),
        backbone="mobilenet_v2",
        head="gap",
        weights="imagenet",
        input_size=96,
        lr=1e-3,
        batch_size=8,
        epochs=1,
        steps=1,
        limit_per_class=12,
        max_train_batches=3,
        tensorboard=False,
    )
    cfg = TrainConfig(**{**base, **kw})
    return train(cfg, progress=False)


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("runs") / "tta", tta=True, label_smoothing=0.1)


def test_tta_is_stored_and_used_by_predict_and_evaluate(tta_run, tmp_path):
    run = load_run(tta_run)
    assert run.meta["model"]["tta"] == "hflip" and run.tta
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
    from fakescope.errors import FakescopeError

    with pytest.raises(FakescopeError, match="label-smoothing"):
        tiny_run(tmp_path / "a", label_smoothing=1.5)
    with pytest.raises(FakescopeError, match="--ema"):
        tiny_run(tmp_path / "b", ema=2.0)


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
    assert TrainConfig.from_dict(meta["train"]).epochs == (1, 2)
    with pytest.raises(Exception, match="one per step"):
        tiny_run(tmp_path / "bad", steps=3, epochs=(1, 2))

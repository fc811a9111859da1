"""The run folder's schema (runs.py) and the command line generated from TrainConfig."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields

import pytest

from fakescope.cli import build_parser
from fakescope.commands.train import config_from_args
from fakescope.config import TrainConfig
from fakescope.errors import FakescopeError
from fakescope.evaluation.evaluator import same_data
from fakescope.runs import FORMAT, load_run

from .conftest import SG


def _copy_run(small_run, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("eval-*", "resume", "tb"))
    meta = json.loads((run / "fakescope.json").read_text())
    edit(meta)
    (run / "fakescope.json").write_text(json.dumps(meta))
    return run


def _as_format_1(meta: dict) -> None:
    """The layout sessions 1-4 wrote: one data root as typed, no precision in the model."""
    (src,) = meta["data"].pop("sources")
    meta["data"] = {"root": "../shared/data/sg-ffhq", **{k: src[k] for k in ("sha256", "counts")}}
    meta["model"].pop("precision")
    meta["format"] = 1


def test_a_run_written_before_format_2_still_loads(small_run, tmp_path, monkeypatch):
    new = load_run(small_run)
    old = load_run(_copy_run(small_run, tmp_path, _as_format_1))
    assert old.meta.format == FORMAT  # migrated on load
    assert old.spec == new.spec and old.threshold == new.threshold
    assert old.meta.face_margin == new.meta.face_margin
    # its relative root cannot be resolved, but the fingerprint recognises its data from any
    # working directory
    monkeypatch.chdir(tmp_path)
    assert same_data(old, SG) and same_data(new, SG)
    assert not same_data(new, SG.parent / "lfw-faceswap")


@pytest.mark.parametrize(
    "value, message",
    [(FORMAT + 1, "newer fakescope"), ("2", "not a fakescope run format"), (None, "format")],
)
def test_a_tampered_format_is_refused_clearly(small_run, tmp_path, value, message):
    run = _copy_run(small_run, tmp_path, lambda m: m.update(format=value))
    with pytest.raises(FakescopeError, match=message) as e:
        load_run(run)
    assert str(run / "fakescope.json") in str(e.value)


def test_broken_json_and_missing_fields_are_one_line(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path, lambda m: m["model"].pop("backbone"))
    with pytest.raises(FakescopeError, match="model.backbone: missing"):
        load_run(run)
    (run / "fakescope.json").write_text("{not json")
    with pytest.raises(FakescopeError, match="not valid JSON"):
        load_run(run)


def test_meta_round_trips_through_json(small_run):
    from fakescope.runs import RunMeta

    meta = load_run(small_run).meta
    again = RunMeta.from_json(meta.to_json())
    assert again.to_json() == meta.to_json()


def _train_args(argv):
    return build_parser().parse_args(["train", *argv])


def test_every_config_field_is_an_option_with_the_same_default():
    args = _train_args([])
    assert config_from_args(args) == TrainConfig()
    for f in fields(TrainConfig):
        assert f.name in vars(args), f"TrainConfig.{f.name} has no command-line option"
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help text"


def test_options_reach_the_config():
    a = _train_args(
        "--epochs 1,3 --exclude faceswap,stargan --no-hflip --tta --freeze-stages 0,2 "
        "--jpeg-quality 70,90 --lr 3e-4 --head gap --no-tensorboard --data A --data B "
        "--sbi 0.5 --real-only --time-budget 12".split()
    )
    cfg = config_from_args(a)
    assert cfg.epochs == (1, 3) and cfg.exclude == ("faceswap", "stargan")
    assert not cfg.hflip and cfg.tta and not cfg.tensorboard and cfg.head == "gap"
    assert cfg.freeze_stages == (0, 2) and cfg.jpeg_quality == (70, 90) and cfg.lr == 3e-4
    assert cfg.data == ("A", "B") and cfg.sbi == 0.5 and cfg.real_only and cfg.time_budget == 12


def test_bad_config_values_are_clear_errors():
    with pytest.raises(FakescopeError, match="--fit must be one of"):
        TrainConfig(fit="stretch").check()
    with pytest.raises(FakescopeError, match="--ema"):
        TrainConfig(ema=1.5).check()


# ---------------------------------------------------------------- a tampered run (issue 14, 1)


def _edit(path, _unused, value):
    def edit(meta):
        *parents, last = path.split(".")
        d = meta
        for p in parents:
            d = d[p]
        if value is _DROP:
            d.pop(last)
        else:
            d[last] = value

    return edit


_DROP = object()


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("threshold.value", 7.5, "threshold.value: 7.5 is not a probability"),
        ("threshold.value", -0.1, "threshold.value: -0.1 is not a probability"),
        ("threshold.value", "0.5", "threshold.value: '0.5' is not a number"),
        ("threshold.value", _DROP, "threshold.value: missing"),
        ("threshold.value", float("nan"), "threshold.value: nan is not a number"),
        ("model.input_size", 0, "model.input_size: 0 is not a size"),
        ("model.input_size", "299", "model.input_size: '299' is not a size"),
        ("model.backbone", "resnet9000", "model.backbone: 'resnet9000' is not a known backbone"),
        ("model.head", "mlp", "model.head: 'mlp' is not one of flatten, gap"),
        ("model.std", [0.2, 0, 0.2], "model.std: .* is not three finite numbers above 0"),
        ("model.tta", True, "model.tta: True is not one of none, hflip"),
        ("faces.mode", "sometimes", "faces.mode: 'sometimes' is not one of"),
        ("weights.sha256", "abc", "weights.sha256: 'abc' is not a SHA-256 digest"),
        ("data.sources", "x", "data.sources: expected a list"),
    ],
)
def test_every_field_of_a_tampered_run_is_checked(small_run, tmp_path, path, value, message):
    run = _copy_run(small_run, tmp_path, _edit(path, None, value))
    with pytest.raises(FakescopeError, match=message) as e:
        load_run(run)
    assert str(run / "fakescope.json") in str(e.value) and "\n" not in str(e.value)


def test_a_threshold_outside_0_1_fails_the_command_line_in_one_line(small_run, tmp_path, capsys):
    from fakescope.cli import main

    from .conftest import sg_images

    run = _copy_run(small_run, tmp_path, _edit("threshold.value", None, 7.5))
    assert main(["predict", str(run), str(sg_images("fake", n=1)[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a probability" in err


def test_weights_carry_a_checksum_that_is_verified(small_run, tmp_path):
    meta = json.loads((small_run / "fakescope.json").read_text())
    assert len(meta["weights"]["sha256"]) == 64
    run = _copy_run(small_run, tmp_path, lambda m: None)
    w = run / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in a weight: loads fine, scores wrongly
    w.write_bytes(bytes(data))
    with pytest.raises(FakescopeError, match="checksum does not match"):
        load_run(run)


def _no_checksum(meta):
    meta.pop("weights", None)  # as runs written before checksums were stored


@pytest.mark.parametrize("damage", ["truncated", "pickle", "other_backbone"])
def test_bad_weight_files_are_one_line(small_run, tmp_path, damage):
    import torch
    from safetensors.torch import save_file

    run = _copy_run(small_run, tmp_path, _no_checksum)
    w = run / "model.safetensors"
    if damage == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        message = "not a readable safetensors file"
    elif damage == "pickle":
        torch.save({"x": torch.zeros(3)}, w)  # a pickle (zip) renamed .safetensors
        message = "not a readable safetensors file"
    else:
        save_file({"fc.weight": torch.zeros(1, 7), "fc.bias": torch.zeros(1)}, str(w))
        message = "weights do not fit mobilenet_v2/flatten at 160px .* missing"
    with pytest.raises(FakescopeError, match=message) as e:
        load_run(run)
    assert "\n" not in str(e.value)

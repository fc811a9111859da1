"""Issue 15: every check of scripts/paper_checks.py at its tiny scale (one batch per run), run as
a user runs it, and what each variant must have changed in the runs it trained."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from .conftest import LFW, MOBILENET_FILE, ROOT, SG

CHECKS = ["input_size", "finetune", "steps", "head", "data_size", "imbalance"]


@pytest.fixture(scope="module")
def checks(tmp_path_factory, torch_home):
    out = tmp_path_factory.mktemp("checks")
    # the runs get this process's threads: one each under the suite's two xdist workers
    threads = str(torch.get_num_threads())
    cmd = [sys.executable, str(ROOT / "scripts" / "paper_checks.py"), *CHECKS, "--scale", "tiny",
           "--seeds", "0", "--threads", threads, "--workers", "0", "--data", str(SG),
           "--weights", str(MOBILENET_FILE), "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def rows(path):
    return list(csv.DictReader(open(path)))


def test_every_check_writes_its_table_and_plot(checks):
    out, stdout = checks
    variants = {
        "input_size": {"224", "256", "299"},
        "finetune": {"head only", "last stage + head", "every layer"},
        "steps": {
            f"{s} ({w})" for s in ("1", "1+2", "1+2+3") for w in ("demo", "paper's Adam 1e-3")
        }
        | {"1, as long as 1+2+3 (demo)"},
        "head": {
            "mobilenet_v2 gap",
            "mobilenet_v2 flatten",
            "resnet50 gap (random start)",
            "resnet50 flatten (random start)",
        },  # fmt: skip
        "data_size": {"10%", "25%", "50%", "100%"},
    }
    for check, names in variants.items():
        cells = rows(out / check / "cells.csv")
        # every variant scored on val and test of the training set and of the other set
        assert {(r["variant"], r["split"], r["data"]) for r in cells} == {
            (v, sp, d) for v in names for sp in ("val", "test") for d in (SG.name, LFW.name)
        }
        assert all(0 <= float(r["auc"]) <= 1 for r in cells)
        summary = (out / check / "summary.md").read_text()
        assert all(f"| {v} |" in summary for v in names)
        assert (out / check / "check.png").stat().st_size > 10_000
        assert f"## {check}" in stdout
    # each run's own matrices without figures: the check plots its summary
    scored = out / "finetune" / "head_only-s0" / "matrix-test"
    assert (scored / "matrix.json").exists() and not (scored / "matrix.png").exists()


def test_variants_change_what_they_say(checks):
    out, _ = checks
    imagenet = torch.load(MOBILENET_FILE, weights_only=True)
    conv0 = imagenet["features.0.0.weight"]
    last = imagenet["features.18.0.weight"]

    def weights(check, variant):
        return load_file(str(out / check / f"{variant}-s0" / "model.safetensors"))

    head_only = weights("finetune", "head_only")
    assert torch.equal(head_only["features.0.0.weight"], conv0)
    assert torch.equal(head_only["features.18.0.weight"], last)
    last_stage = weights("finetune", "last_stage___head")
    assert torch.equal(last_stage["features.0.0.weight"], conv0)
    assert not torch.equal(last_stage["features.18.0.weight"], last)
    assert not torch.equal(weights("finetune", "every_layer")["features.0.0.weight"], conv0)

    def meta(check, variant):
        return json.loads((out / check / f"{variant}-s0" / "fakescope.json").read_text())

    # the base recipe, a variant of four checks at this scale, is trained once and copied
    base = out / "input_size" / "299-s0"
    assert not (base / "copied_from").exists()
    for check, variant in (("steps", "1__demo"), ("head", "mobilenet_v2_gap"),
                           ("data_size", "100")):  # fmt: skip
        assert (out / check / f"{variant}-s0" / "copied_from").read_text().strip() == str(base)
        got, want = weights(check, variant), weights("input_size", "299")
        assert torch.equal(got["fc.weight"], want["fc.weight"])
    assert not (out / "steps" / "1_2__demo-s0" / "copied_from").exists()

    assert len(meta("steps", "1_2_3__paper_s_Adam_1e_3")["steps"]) == 3
    assert meta("steps", "1_2__demo")["train"]["lr"] == 2e-4
    assert meta("head", "resnet50_flatten")["model"]["head"] == "flatten"
    assert meta("input_size", "224")["model"]["input_size"] == 224 // 4  # tiny scale
    # 10% of 4 training images per class rounds to 1, and val keeps its 4
    split = rows(out / "data_size" / "10-s0" / "split.csv")
    assert sum(r["split"] == "train" for r in split) == 2
    assert sum(r["split"] == "val" for r in split) == 8


def test_imbalance_subsamples_the_test_split_to_each_ratio(checks):
    out, _ = checks
    cells = rows(out / "imbalance" / "cells.csv")
    for r in cells:
        a, b = {"1:1": (1, 1), "1:4": (1, 4), "4:1": (4, 1)}[r["variant"]]
        assert int(r["n_real"]) * b == int(r["n_fake"]) * a > 0
    assert {r["variant"] for r in cells} == {"1:1", "1:4", "4:1"}
    # the same scores: with more fakes, precision at one threshold cannot fall on average
    mean = {
        v: sum(float(r["precision"]) for r in cells if r["variant"] == v) / 5
        for v in ("1:4", "4:1")
    }
    assert mean["1:4"] >= mean["4:1"] or mean["1:4"] == 0
    assert (out / "imbalance" / "check.png").exists()

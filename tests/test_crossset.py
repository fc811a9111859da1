"""Cross-set matrix and robustness curves on the small trained run and the real sample images."""

from __future__ import annotations

import csv
import json
import pickle
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fakescope.data.folders import Sample, read_splits
from fakescope.data.images import load_rgb
from fakescope.data.perturb import PERTURBATIONS
from fakescope.errors import FakescopeError
from fakescope.evaluation import metrics as M
from fakescope.evaluation.crossset import cross_matrix
from fakescope.evaluation.robustness import Perturb, robustness_curves
from fakescope.evaluation.sets import cap_per_class, unique_names
from fakescope.runs import load_run
from fakescope.scoring.scorer import Scorer

from .conftest import LFW, SG, sg_images


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fakescope.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def two_generators(tmp_path_factory):
    """A folder with fakes of two generators (StyleGAN faces, LFW face swaps) and no
    splits.csv: what a cross-set matrix meets in the wild."""
    root = tmp_path_factory.mktemp("two_generators")
    lfw = sorted((LFW / "fake").glob("*.jpg"))[:3]
    for sub, files in (
        ("real", sg_images("real", n=4)),
        ("fake/stylegan", sg_images("fake", n=3)),
        ("fake/faceswap", lfw),
    ):
        (root / sub).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / sub / f.name)
    return root


@pytest.fixture(scope="module")
def matrix(small_run, two_generators, tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix")
    m = cross_matrix(
        [small_run], [SG, LFW, two_generators], out=out, progress=False, limit=4, batch_size=16
    )
    return m, out


def two_name(m) -> str:
    return m["datasets"][2]["name"]


def test_matrix_cells_files_and_stored_threshold(small_run, matrix):
    m, out = matrix
    for name in ("matrix.json", "matrix.csv", "matrix.md", "matrix.png", "report.html"):
        assert (out / name).stat().st_size > 0
    cells = {c["data"]: c for c in m["cells"]}
    assert set(cells) == {"sg-ffhq", "lfw-faceswap", two_name(m)}
    thr = load_run(small_run).threshold
    for c in cells.values():
        assert 0 <= c["auc"] <= 1 and 0 <= c["ap"] <= 1 and 0 <= c["f1"] <= 1
        assert c["threshold"] == thr  # stored on val, not tuned on the scored split
        assert c["n_real"] == c["n_fake"] == 4
    assert cells["sg-ffhq"]["split"] == cells["lfw-faceswap"]["split"] == "test"
    assert cells["sg-ffhq"]["in_domain"] and not cells["lfw-faceswap"]["in_domain"]
    assert json.loads((out / "matrix.json").read_text())["cells"][0]["run"] == small_run.name
    rows = list(csv.DictReader(open(out / "matrix.csv")))
    assert [(r["run"], r["data"]) for r in rows] == [(small_run.name, d) for d in cells]
    md = (out / "matrix.md").read_text()
    assert "## AUC" in md and "## AP" in md and "## F1 at stored threshold" in md
    html = (out / "report.html").read_text()
    assert "Cross-set matrix" in html and "data:image/png;base64," in html


def test_matrix_scores_csv_reproduces_the_cells(matrix):
    m, out = matrix
    rows = list(csv.DictReader(open(out / "scores.csv")))
    for c in m["cells"]:
        mine = [r for r in rows if r["data"] == c["data"] and r["held_out"] == "0"]
        y = np.array([r["label"] == "fake" for r in mine], int)
        s = np.array([float(r["score"]) for r in mine])
        at = M.at_threshold(y, s, c["threshold"])
        assert at["f1"] == pytest.approx(c["f1"]) and at["recall"] == pytest.approx(c["recall"])
        assert M.threshold_free(y, s)["auc"] == pytest.approx(c["auc"], abs=1e-4)


def test_matrix_falls_back_to_all_and_breaks_down_generators(matrix):
    m, out = matrix
    cell = next(c for c in m["cells"] if c["data"] == two_name(m))
    assert cell["split"] == "all"  # no splits.csv and not the run's data
    assert set(cell["per_source"]) == {"faceswap", "stylegan"}
    assert sum(v["n"] for v in cell["per_source"].values()) == cell["n_fake"]
    assert not any(v["held_out"] for v in cell["per_source"].values())
    assert "Per generator" in (out / "matrix.md").read_text()


def test_cli_matrix_prints_the_auc_table(small_run, tmp_path):
    r = cli(
        "matrix",
        small_run,
        "--data",
        SG,
        "--data",
        LFW,
        "--limit",
        3,
        "--out",
        tmp_path,
        "--names",
        "tiny",
    )
    assert r.returncode == 0, r.stderr
    assert "run \\ data" in r.stdout and "sg-ffhq" in r.stdout and "lfw-faceswap" in r.stdout
    assert r.stdout.count("tiny") == 1 and (tmp_path / "report.html").exists()


def test_cli_matrix_name_count_must_match(small_run, tmp_path):
    r = cli("matrix", small_run, "--data", SG, "--out", tmp_path, "--names", "a,b")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["fakescope: error: 2 name(s) given for 1 run(s)"]


@pytest.fixture(scope="module")
def curves(small_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness")
    r = robustness_curves(
        small_run, SG, perturbations="blur,jpeg", out=out, progress=False, limit=8, batch_size=16
    )
    return r, out


def test_robustness_curves_and_files(curves):
    r, out = curves
    assert list(r["perturbations"]) == ["blur", "jpeg"]
    for name, c in r["perturbations"].items():
        n = len(PERTURBATIONS[name].levels)
        assert len(c["levels"]) == len(c["auc"]) == len(c["f1"]) == len(c["accuracy"]) == n
        assert all(0 <= v <= 1 for v in c["auc"] + c["f1"] + c["accuracy"])
    assert r["n_real"] == r["n_fake"] == 8
    for name in ("robustness.json", "robustness.csv", "robustness.md", "robustness.png"):
        assert (out / name).stat().st_size > 0
    assert "Robustness" in (out / "report.html").read_text()
    rows = list(csv.DictReader(open(out / "robustness.csv")))
    assert len(rows) == 1 + 5 + 5 and rows[0]["perturbation"] == "clean"


def test_clean_blur_is_plain_scoring(small_run, curves):
    """Blur 0 reuses the clean pass, and that pass agrees with scoring the same files directly
    (the path evaluate and predict share), so the curves start from the evaluate numbers."""
    r, _ = curves
    blur0 = r["perturbations"]["blur"]["rows"][0]
    assert blur0["reused_clean"] and blur0["auc"] == r["clean"]["auc"]
    run = load_run(small_run)
    samples = cap_per_class([s for s in read_splits(SG / "splits.csv") if s.split == "test"], 8)
    s = Scorer.of_run(run, "cpu", 16).score_images([load_rgb(SG / x.path) for x in samples])
    y = np.array([x.label for x in samples])
    assert M.summarize(y, s, run.threshold)["auc"] == pytest.approx(r["clean"]["auc"], abs=1e-6)
    assert M.at_threshold(y, s, run.threshold)["f1"] == pytest.approx(r["clean"]["f1"])


def test_heavy_jpeg_changes_scores_and_jpeg_100_is_scored(curves):
    r, _ = curves
    rows = r["perturbations"]["jpeg"]["rows"]
    assert not rows[0]["reused_clean"]  # quality 100 is still a lossy round trip
    assert rows[-1]["level"] == 30 and rows[-1]["mean_abs_shift"] > 1e-3
    assert rows[-1]["mean_abs_shift"] > rows[0]["mean_abs_shift"]


def test_perturb_hook_is_deterministic_and_pickles():
    im = Image.open(sg_images("fake", n=1)[0]).convert("RGB")
    hook = pickle.loads(pickle.dumps(Perturb("noise", 10)))
    a = hook(im, random.Random(hash((0, 0, 5))))
    b = Perturb("noise", 10)(im, random.Random(hash((0, 0, 5))))
    c = Perturb("noise", 10)(im, random.Random(hash((0, 0, 6))))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_cli_robustness_unknown_perturbation(small_run):
    r = cli("robustness", small_run, "--perturb", "jpeg,bogus")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("fakescope: error: unknown perturbation bogus; known: jpeg")


def test_cap_per_class_takes_generators_in_turn():
    fakes = [Sample(f"fake/{g}/{i}.jpg", 1, "test", g) for g in ("a", "b") for i in range(5)]
    reals = [Sample(f"real/{i}.jpg", 0, "test", "real") for i in range(5)]
    got = cap_per_class(reals + fakes, 3)
    assert [s.source for s in got] == ["real"] * 3 + ["a", "b", "a"]
    assert cap_per_class(reals, 0) == reals
    with pytest.raises(FakescopeError):
        cap_per_class(reals, -1)


def test_unique_names(tmp_path):
    paths = [tmp_path / "x" / "best", tmp_path / "y" / "best"]
    assert unique_names(paths, None, "run") == ["x/best", "y/best"]
    with pytest.raises(FakescopeError, match="unique"):
        unique_names(paths, ["a", "a"], "run")


def test_robustness_help_lists_the_registry_levels():
    from fakescope.commands.compare import LEVELS

    expected = "; ".join(
        f"{p.name}: {', '.join(f'{v:g}' for v in p.levels)} ({p.unit})"
        for p in PERTURBATIONS.values()
    )
    assert LEVELS == expected

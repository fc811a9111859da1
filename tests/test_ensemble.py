"""Experts on different kinds of fake combined into one run (`fakescope ensemble`), and the
training option that lets an expert see another set's real images (`--reals-from`): real
runs on the sample sets, scored through the same paths as any run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from fakescope.cli import main as cli_main
from fakescope.config import TrainConfig
from fakescope.errors import FakescopeError
from fakescope.runs import load_run
from fakescope.scoring.predictor import Predictor
from fakescope.scoring.scorer import Scorer
from fakescope.training.ensemble import combine_runs
from fakescope.training.loop import train

from .conftest import LFW, SG, sg_images

BASE = dict(
    backbone="mobilenet_v2", head="gap", weights="imagenet", input_size=96, precision="fp32",
    lr=1e-3, batch_size=8, epochs=1, steps=1, limit_per_class=12, max_train_batches=3,
    tensorboard=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """A synthesis expert (sg-ffhq) and a blend expert (lfw-faceswap's swaps and self-blended
    fakes, with sg-ffhq's real photos as real)."""
    root = tmp_path_factory.mktemp("experts")
    sg = train(TrainConfig(data=(str(SG),), out=str(root / "sg"), **BASE), progress=False)
    blend = train(
        TrainConfig(data=(str(LFW),), reals_from=(str(SG),), sbi=0.5, landmarks="mtcnn5",
                    out=str(root / "blend"), **BASE),
        progress=False,
    )  # fmt: skip
    return load_run(sg), load_run(blend)


@pytest.fixture(scope="module")
def ensemble(experts, tmp_path_factory):
    return combine_runs(experts, tmp_path_factory.mktemp("ens") / "both", progress=False)


def test_reals_from_adds_real_images_only(experts):
    _, blend = experts
    sources = blend.meta.sources
    assert [s["name"] for s in sources] == ["lfw-faceswap", "sg-ffhq"]
    assert sources[1]["use"] == "real images only" and "use" not in sources[0]
    rows = list(csv.DictReader(open(blend.split_file)))
    from_sg = [r for r in rows if r["source"] == "sg-ffhq"]
    assert from_sg and {r["label"] for r in from_sg} == {"real"}
    # the fakes of lfw-faceswap are still there
    assert any(r["label"] == "fake" and r["source"] == "lfw-faceswap" for r in rows)


def test_reals_from_cannot_repeat_a_data_folder():
    with pytest.raises(FakescopeError, match="already a --data folder"):
        TrainConfig(data=(str(SG),), reals_from=(str(SG),)).check()


def test_ensemble_logit_is_the_highest_centred_member_logit(experts, ensemble):
    from fakescope.data.images import load_rgb

    pil = [load_rgb(p) for p in sg_images("fake", n=3) + sg_images("real", n=3)]
    got = Scorer.of_run(ensemble, runtime="torch").score_images(pil)
    member = np.stack([Scorer.of_run(r, runtime="torch").score_images(pil) for r in experts])
    logits = np.log(member / (1 - member))
    offsets = [math.log(r.threshold / (1 - r.threshold)) for r in experts]
    want = 1 / (1 + np.exp(-(logits - np.array(offsets)[:, None]).max(axis=0)))
    assert np.allclose(got, want, atol=1e-4)
    # and it is not merely one member's score
    assert not np.allclose(got, member[0], atol=1e-3)


def test_mean_fusion_averages_the_centred_member_logits(experts, ensemble, tmp_path):
    """`fakescope ensemble --fusion mean` (one recipe's seeds): the mean vote, stored in the run
    (head "mean") so that loading it again scores alike."""
    from fakescope.data.images import load_rgb

    out = tmp_path / "mean"
    argv = ["ensemble", *(str(r.path) for r in experts), "--out", str(out), "--no-eval"]
    assert cli_main([*argv, "--fusion", "mean"]) == 0
    mean = load_run(out)
    assert mean.spec.head == "mean" and ensemble.spec.head == "max"
    pil = [load_rgb(p) for p in sg_images("fake", n=3) + sg_images("real", n=3)]
    got = Scorer.of_run(mean, runtime="torch").score_images(pil)
    member = np.stack([Scorer.of_run(r, runtime="torch").score_images(pil) for r in experts])
    centred = (
        np.log(member / (1 - member))
        - np.array([math.log(r.threshold / (1 - r.threshold)) for r in experts])[:, None]
    )
    assert np.allclose(got, 1 / (1 + np.exp(-centred.mean(axis=0))), atol=1e-4)
    assert not np.allclose(
        got, Scorer.of_run(ensemble, runtime="torch").score_images(pil), atol=1e-3
    )


def test_ensemble_run_is_a_run(experts, ensemble, tmp_path):
    again = load_run(ensemble.path)
    assert again.spec == ensemble.spec and again.spec.backbone == "ensemble"
    assert [m.backbone for m in again.spec.members] == ["mobilenet_v2", "mobilenet_v2"]
    meta = json.loads((ensemble.path / "fakescope.json").read_text())
    assert [m["threshold"] for m in meta["ensemble"]["members"]] == [r.threshold for r in experts]
    # calibrated on both data sets' validation splits (165 + 225 per class), not the test splits
    assert meta["threshold"]["n_val"] == 2 * 165 + 2 * 225
    assert {s["name"] for s in meta["data"]["sources"]} == {"sg-ffhq", "lfw-faceswap"}
    rows = list(Predictor(ensemble.path, faces="never").predict(sg_images("fake", n=2)))
    assert len(rows) == 2 and all(0 <= r.score <= 1 for r in rows)
    # Grad-CAM reads the members' last stages
    code = cli_main(["explain", str(ensemble.path), str(sg_images("fake", n=1)[0]),
                     "--out", str(tmp_path / "cam"), "--faces", "never"])  # fmt: skip
    assert code == 0 and list((tmp_path / "cam").glob("*.png"))


def test_cli_ensemble_evaluates_every_members_test_split(experts, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["ensemble", *(str(r.path) for r in experts), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test split of" in printed and printed.count("AUC") >= 2
    assert (out / "eval-sg-ffhq-test" / "metrics.json").exists()
    assert (out / "eval-lfw-faceswap-test" / "metrics.json").exists()
    with pytest.raises(FakescopeError, match="already holds a run"):
        combine_runs(experts, out, progress=False)


def test_members_must_see_images_alike(experts, tmp_path):
    other = train(
        TrainConfig(data=(str(SG),), out=str(tmp_path / "r128"), **{**BASE, "input_size": 128}),
        progress=False,
    )
    with pytest.raises(FakescopeError, match="input_size is 128"):
        combine_runs([experts[0], other], tmp_path / "bad", progress=False)
    with pytest.raises(FakescopeError, match="two or more"):
        combine_runs([experts[0]], tmp_path / "one", progress=False)


def test_tampered_ensemble_json_is_one_clear_error(ensemble, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ensemble.path, bad)
    meta = json.loads((bad / "fakescope.json").read_text())
    meta["model"]["offsets"] = meta["model"]["offsets"][:1]
    (bad / "fakescope.json").write_text(json.dumps(meta))
    with pytest.raises(FakescopeError, match="model.offsets"):
        load_run(bad)
    meta["model"]["offsets"] = [0.0, 0.0]
    meta["model"]["members"][1]["backbone"] = "nonsense"
    (bad / "fakescope.json").write_text(json.dumps(meta))
    with pytest.raises(FakescopeError, match=r"members\[1\].*not a known backbone"):
        load_run(bad)


def test_ensemble_exports_like_a_run(ensemble):
    """The ensemble is one graph to ONNX: max over members inside it."""
    from fakescope.scoring.export import export_run

    art = export_run(ensemble.path, to="onnx", limit=16)
    c = art.info["check"]
    assert c["passed"] and c["max_abs_score_difference"] < 1e-3
    assert torch.is_tensor(ensemble.model.offsets)


def test_seed_ensemble_script_matches_the_mean_fusion_and_soups_weights(experts, tmp_path):
    """scripts/seed_ensemble.py: the mean vote's AUC from the members' saved scores is the
    AUC of the `--fusion mean` run, and --soup writes the members' weight average as a run."""
    import shutil
    import sys

    from sklearn.metrics import roc_auc_score

    from fakescope.evaluation.crossset import cross_matrix

    from .conftest import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    import seed_ensemble

    runs = []
    for r in experts:  # copies: the scores are written into the run folder
        runs.append(tmp_path / r.path.name)
        shutil.copytree(r.path, runs[-1])
        cross_matrix([runs[-1]], [SG], out=runs[-1] / "matrix-test", progress=False, limit=6)
    mean = combine_runs([load_run(r) for r in runs], tmp_path / "mean", progress=False,
                        fusion="mean")  # fmt: skip
    fused = cross_matrix([mean.path], [SG], out=tmp_path / "m", progress=False, limit=6)
    scores = [seed_ensemble.read_scores(r, "test") for r in runs]
    assert seed_ensemble.mean_vote_auc(scores, "sg-ffhq") == pytest.approx(
        fused["cells"][0]["auc"], abs=1e-6
    )
    one = seed_ensemble.mean_vote_auc(scores[:1], "sg-ffhq")
    y, s = zip(*scores[0]["sg-ffhq"].values(), strict=True)
    assert one == pytest.approx(roc_auc_score(y, s))

    seed_ensemble.soup(runs, tmp_path / "soup", SG.parent, limit=3)
    got = load_run(tmp_path / "soup").model.state_dict()
    parts = [r.model.state_dict() for r in experts]
    key = next(k for k, v in got.items() if v.is_floating_point() and v.ndim == 4)
    assert torch.allclose(got[key], (parts[0][key] + parts[1][key]) / 2, atol=1e-6)
    assert not torch.allclose(got[key], parts[0][key])
    assert (tmp_path / "soup" / "matrix-test" / "matrix.json").exists()

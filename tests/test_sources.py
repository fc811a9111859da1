"""Several data sources in one run, self-blended pseudo-fakes in training, and the time budget,
on the real sample sets."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest

from fakescope.config import TrainConfig
from fakescope.data.dataset import ImageDataset
from fakescope.data.images import load_rgb
from fakescope.data.sources import BalancedSampler, SelfBlender, load_sources, make_split
from fakescope.training.loop import train

from .conftest import LFW, SG


@pytest.fixture(scope="module")
def sources():
    return load_sources([SG, LFW], seed=0, limit_per_class=6)


def test_splits_of_several_sources(sources):
    both = make_split(sources, "train", 0, False, 0)
    assert both.counts() == {
        "lfw-faceswap/fake": 6, "lfw-faceswap/real": 6, "sg-ffhq/fake": 6, "sg-ffhq/real": 6,
    }  # fmt: skip
    pseudo = make_split(sources, "train", 1.0, True, 0)
    assert pseudo.counts() == {"lfw-faceswap/real": 6, "sbi/fake": 12, "sg-ffhq/real": 6}
    # every pseudo-fake is made from a real image of its own source
    assert all(s.label == 0 for s, b in zip(pseudo.samples, pseudo.blend, strict=True) if b)
    half = make_split(sources, "train", 0.5, False, 0)
    assert half.counts()["sbi/fake"] == 6
    assert make_split(sources, "train", 0.5, False, 0).samples == half.samples  # seeded


def test_balanced_sampler_draws_each_source_alike():
    groups = ["a"] * 10 + ["b"] * 3
    s = BalancedSampler(groups, seed=1)
    s.set_epoch(0)
    first = list(s)
    assert Counter(groups[i] for i in first) == {"a": 10, "b": 10} and len(first) == len(s)
    s.set_epoch(0)
    assert list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    shards = [BalancedSampler(groups, seed=1, rank=r, world=2) for r in (0, 1)]
    a, b = (list(x) for x in shards)
    assert len(a) == len(b) == 10 and sorted(a + b) == sorted(first)


def test_pseudo_fakes_in_the_dataset(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKESCOPE_CACHE", str(tmp_path))
    split = make_split(sources, "train", 1.0, True, 0)
    blender = SelfBlender(sources, "auto", progress=False)
    assert list(tmp_path.glob("landmarks-*.npz"))  # computed once, kept
    ds = ImageDataset(split.roots, split.samples, 128, blend=split.blend, blender=blender)
    labels = [ds[i][1] for i in range(len(ds))]
    assert labels == [int(b) for b in split.blend]
    i = split.blend.index(True)
    a, b = ds[i][0], ds[i][0]
    assert np.array_equal(a.numpy(), b.numpy())  # deterministic for (seed, epoch, index)
    ds.epoch = 1
    assert not np.array_equal(a.numpy(), ds[i][0].numpy())  # a new blend each epoch
    real = np.asarray(load_rgb(ds.path_of(i)), np.float32)
    fake = np.asarray(
        blender(load_rgb(ds.path_of(i)), ds.path_of(i), __import__("random").Random(3))
    )
    changed = np.abs(fake.astype(np.float32) - real).sum(axis=2) > 0
    h, w = changed.shape
    # the blend stays on the face: the image border is untouched
    assert changed.any() and not changed[:4].any() and not changed[:, :4].any()
    assert changed.mean() < 0.6 and h == w


def test_a_run_on_two_sources_with_only_pseudo_fakes(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKESCOPE_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(
        data=(str(SG), str(LFW)), out=str(tmp_path / "run"), backbone="mobilenet_v2",
        head="gap", weights="imagenet", input_size=64, batch_size=8, epochs=1, steps=1,
        limit_per_class=6, sbi=1.0, real_only=True, tensorboard=False, time_budget=0.75,
        patience=100,
    )  # fmt: skip
    run = train(cfg, progress=False)
    meta = json.loads((run / "fakescope.json").read_text())
    assert [s["name"] for s in meta["data"]["sources"]] == ["sg-ffhq", "lfw-faceswap"]
    assert all(len(s["sha256"]) == 64 for s in meta["data"]["sources"])
    assert meta["sbi"]["landmarks"] in ("dlib68", "mtcnn5")
    assert meta["training_images"] == {"lfw-faceswap/real": 6, "sbi/fake": 12, "sg-ffhq/real": 6}
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert rows[0]["val_auc_by_source"].startswith("sbi:")
    # the budget planned the epochs from measured speed; the log has as many rows
    assert meta["time_budget"]["epochs"] == len(rows) >= 1
    split = list(csv.DictReader(open(run / "split.csv")))
    assert {r["source"] for r in split} == {"sg-ffhq", "lfw-faceswap"}


def test_source_checks_name_what_is_missing(tmp_path):
    (tmp_path / "real").mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (32, 32), (i, 0, 0)).save(tmp_path / "real" / f"{i}.jpg")
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), steps=1)
    with pytest.raises(Exception, match="no fake images in the train split"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # nothing half-made

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
from fakescope.data.order import BalancedOrder, PairedOrder
from fakescope.data.sources import SelfBlender, load_sources, make_split
from fakescope.errors import FakescopeError
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


def test_balanced_order_draws_each_source_alike():
    groups = ["a"] * 10 + ["b"] * 3
    s = BalancedOrder(groups, seed=1)
    s.set_epoch(0)
    first = list(s)
    assert Counter(groups[i] for i in first) == {"a": 10, "b": 10} and len(first) == len(s)
    s.set_epoch(0)
    assert list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    shards = [BalancedOrder(groups, seed=1, rank=r, world=2) for r in (0, 1)]
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


def train_tiny(tmp_path, monkeypatch, **kw):
    """A mobilenet_v2 run at 64 px on 6 images per class of each sample set, one epoch unless
    ``kw`` says otherwise."""
    monkeypatch.setenv("FAKESCOPE_CACHE", str(tmp_path / "cache"))
    base = dict(
        data=(str(SG), str(LFW)), out=str(tmp_path / "run"), backbone="mobilenet_v2",
        head="gap", weights="imagenet", input_size=64, batch_size=8, epochs=1, steps=1,
        limit_per_class=6, tensorboard=False, patience=100,
    )  # fmt: skip
    cfg = TrainConfig(**{**base, **kw})
    return train(cfg, progress=False)


def test_a_run_on_two_sources_with_only_pseudo_fakes(tmp_path, monkeypatch):
    run = train_tiny(tmp_path, monkeypatch, sbi=1.0, real_only=True, time_budget=0.3)
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


def test_paired_order_keeps_each_real_beside_its_pseudo_fake(sources):
    tr = make_split(sources, "train", 1.0, True, 0)
    pairs = tr.pairs()
    assert len(pairs) == 12
    assert all(tr.samples[a] is tr.samples[b] and not tr.blend[a] and tr.blend[b] for a, b in pairs)
    partner = dict(pairs)

    def order(epoch, rank=0, world=1):
        units = BalancedOrder([str(tr.roots[a]) for a, _ in pairs], seed=0)
        o = PairedOrder(units, pairs, rank, world)
        o.set_epoch(epoch, 7 + epoch)
        return list(o)

    for world in (1, 2):
        shares = [order(1, rank, world) for rank in range(world)]
        # each process's share is whole pairs, real first, so any even batch share holds both
        for share in shares:
            assert all(partner[share[k]] == share[k + 1] for k in range(0, len(share), 2))
        assert sorted(i for share in shares for i in share[::2]) == sorted(partner)
    # seeded per epoch, as the other orders
    assert order(1) == order(1) and order(2) != order(1)
    with pytest.raises(FakescopeError, match="--sbi-pairs"):
        TrainConfig(data=(str(SG),), sbi=0.5, sbi_pairs=True).check()


def test_a_paired_run_with_the_authors_mask_shapes(tmp_path, monkeypatch):
    run = train_tiny(tmp_path, monkeypatch, sbi=1.0, real_only=True, sbi_pairs=True,
                     sbi_masks="mixed")  # fmt: skip
    meta = json.loads((run / "fakescope.json").read_text())
    assert meta["sbi"]["mask_shapes"] == ["facehull", "dfl_full", "components", "extended"]
    assert meta["train"]["sbi_pairs"] is True
    assert len(list(csv.DictReader(open(run / "log.csv")))) == 1
    with pytest.raises(FakescopeError, match="pairs need an even number"):
        train_tiny(tmp_path / "odd", monkeypatch, sbi=1.0, real_only=True, sbi_pairs=True,
                   batch_size=5)  # fmt: skip


def test_source_checks_name_what_is_missing(tmp_path):
    (tmp_path / "real").mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (32, 32), (i, 0, 0)).save(tmp_path / "real" / f"{i}.jpg")
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), steps=1)
    with pytest.raises(Exception, match="no fake images in the train split"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # nothing half-made


def test_a_fake_teaches_only_its_own_sources_head():
    import torch

    from fakescope.training.loop import source_head_loss

    logits = torch.zeros(3, 2, requires_grad=True)
    head = torch.tensor([0, -1, 1])  # a fake of source 0, a real image, a fake of source 1
    source_head_loss(logits, head).backward()
    g = logits.grad
    assert g[0, 0] < 0 and g[0, 1] == 0  # pushed up on its own head, silent on the other
    assert g[2, 1] < 0 and g[2, 0] == 0
    assert (g[1] > 0).all()  # a real image pushes every head down
    # with one head it is plain binary cross-entropy
    one = torch.tensor([[0.3], [-1.2], [2.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(one[:, 0], torch.tensor([1, 0, 1.0]))
    assert torch.isclose(source_head_loss(one, torch.tensor([0, -1, 0])), bce)


def test_a_run_with_per_source_heads(tmp_path, monkeypatch):
    import torch

    from fakescope.model.detector import inference_model
    from fakescope.runs import load_run

    run = train_tiny(tmp_path, monkeypatch, sbi=0.5, source_heads=True)
    meta = json.loads((run / "fakescope.json").read_text())
    assert meta["model"]["heads"] == ["lfw-faceswap", "sbi", "sg-ffhq"]
    model = load_run(run).model
    assert model.fc.out_features == 3
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        units = model.fc(model.pool(model.features(x)))
        assert torch.allclose(model(x), units.amax(1, keepdim=True))  # the score: the highest
        assert units.std(0).gt(0).all() and not torch.allclose(units[:, 0], units[:, 2])
        assert torch.allclose(inference_model(model)(x), model(x), atol=1e-5)
    # a run description that names fewer heads than the weights have is refused
    meta["model"]["heads"] = ["a", "b"]
    (run / "fakescope.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="fc.weight"):
        load_run(run)


def test_select_by_auc_keeps_the_epoch_whose_sources_rank_best(tmp_path, monkeypatch):
    run = train_tiny(tmp_path, monkeypatch, epochs=3, max_train_batches=2, select_by="auc")
    meta = json.loads((run / "fakescope.json").read_text())
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 3  # patience 100: every epoch ran

    def mean_auc(row):  # "lfw-faceswap:0.9 sg-ffhq:0.8": each source counts alike
        return np.mean([float(p.split(":")[1]) for p in row["val_auc_by_source"].split()])

    (step,) = meta["steps"]
    assert "best_val_loss" not in step
    assert step["best_val_auc"] == pytest.approx(max(mean_auc(r) for r in rows), abs=1e-4)

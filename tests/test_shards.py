"""Tar shards (data/shards.py): packed in the WebDataset format any reader takes, streamed in
the same global batches for any number of processes and loader workers, trained on and
evaluated like the folder they came from, and resumed after a kill with another process count.
Small slices of sg-ffhq, read in place through symbolic links."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from fakescope.data.folders import fingerprint, read_splits
from fakescope.data.shards import ShardSet, ShardStream, pack
from fakescope.errors import FakescopeError
from fakescope.evaluation.evaluator import evaluate

from .conftest import SG, threads_per_process
from .test_order import share_apart
from .test_training_options import tiny_run


def small_folder(root, per_class: int = 12):
    """A data folder of the first ``per_class`` images per class and split of sg-ffhq."""
    root.mkdir()
    for d in ("real", "fake"):
        (root / d).symlink_to(SG / d)
    rows, seen = [], {}
    for s in read_splits(SG / "splits.csv"):
        k = (s.split, s.label)
        if seen.get(k, 0) < per_class:
            seen[k] = seen.get(k, 0) + 1
            rows.append(s)
    with open(root / "splits.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows([s.path, ("real", "fake")[s.label], s.split] for s in rows)
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    data = small_folder(base / "data")
    out = base / "shards"
    # about 0.1 MB a shard: several shards per split, so shard order and the buffer matter
    pack(data, out, shard_mb=0.1, progress=False)
    return data, out


def test_pack_writes_shards_a_webdataset_reader_takes(packed):
    import webdataset as wds

    data, out = packed
    shards = ShardSet.open(out)
    assert len(shards.files("train")) > 2
    assert shards.counts() == {f"{s}/{k}": 12 for s in ("train", "val", "test") for k in
                               ("fake", "real")}  # fmt: skip
    meta = json.loads((out / "shards.json").read_text())
    want = fingerprint(data, read_splits(data / "splits.csv"))["sha256"]
    assert meta["packed_from"]["sha256"] == want
    seen = 0
    for sample in wds.WebDataset([str(f) for f in shards.files("val")], shardshuffle=False):
        info = json.loads(sample["json"])
        image = sample["jpg"]  # the original bytes, not re-encoded
        assert image == (data / info["path"]).read_bytes()
        assert int(sample["cls"]) == info["label"] and info["split"] == "val"
        seen += 1
    assert seen == 24
    with pytest.raises(FakescopeError, match="already holds shards"):
        pack(data, out, progress=False)


def test_an_unreadable_image_is_named_and_left_out(tmp_path):
    data = tmp_path / "data"
    for d, names in (("real", ("a", "b", "c")), ("fake", ("d", "e", "f"))):
        (data / d).mkdir(parents=True)
        src = sorted((SG / d).iterdir())
        for n, f in zip(names, src, strict=False):
            shutil.copy(f, data / d / f"{n}.jpg")
    (data / "real" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    r = pack(data, tmp_path / "shards", progress=False)
    assert len(r["errors"]) == 1 and "bad.jpg" in r["errors"][0]
    assert sum(e["count"] for e in r["shards"]) == 6
    assert "bad.jpg" not in (tmp_path / "shards" / "splits.csv").read_text()


def _batches(stream, batch, workers=0):
    """The stream's batches, each image named by its pixel sum and label."""
    loader = torch.utils.data.DataLoader(stream, batch_size=batch, num_workers=workers)
    return [[(round(float(t.sum()), 2), int(y)) for t, y in zip(x, ys, strict=True)]
            for x, ys, _ in loader]  # fmt: skip


def test_the_stream_is_the_same_for_any_process_and_worker_count(packed):
    _, out = packed
    shards = ShardSet.open(out)
    kw = dict(size=32, buffer=10, seed=3)
    one = ShardStream(shards, "train", 6, **kw)
    one.set_epoch(0, 5)
    whole = _batches(one, 6)
    images = [i for b in whole for i in b]
    assert len(whole) == 24 // 6 and len(set(images)) == 24  # each image once
    assert sum(y for _, y in images) == 12
    assert _batches(one, 6, workers=2) == whole  # workers take turns, batch by batch
    parts = []
    for rank in range(2):
        s = ShardStream(shards, "train", 6, rank=rank, world=2, **kw)
        s.set_epoch(0, 5)
        assert len(s) == 4 * 3
        parts.append(_batches(s, 3, workers=2))
    assert [sorted(a + b) for a, b in zip(*parts, strict=True)] == [sorted(b) for b in whole]
    late = ShardStream(shards, "train", 6, rank=1, world=2, **kw)
    late.set_epoch(0, 5, start_batch=2)
    assert _batches(late, 3) == parts[1][2:]
    nxt = ShardStream(shards, "train", 6, **kw)
    nxt.set_epoch(1, 6)
    again = [i for b in _batches(nxt, 6) for i in b]
    assert again != images and {y for _, y in again} == {0, 1}  # another order
    val = ShardStream(shards, "val", 5, train=False, **kw)
    assert len(val) == 24 and len({i for b in _batches(val, 5, workers=2) for i in b}) == 24


def test_training_on_shards_is_training_on_the_folder(packed, tmp_path):
    """A run trained on shards records them, scores its test split exactly as the folder's
    (same bytes), and evaluating it on the folder finds the folder its own data."""
    data, out = packed
    run = tiny_run(tmp_path / "run", data=str(out), limit_per_class=0, max_train_batches=2,
                   workers=2)  # fmt: skip
    meta = json.loads((run / "fakescope.json").read_text())
    (src,) = meta["data"]["sources"]
    assert (
        src["format"] == "webdataset"
        and src["sha256"] == fingerprint(data, read_splits(data / "splits.csv"))["sha256"]
    )
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert float(rows[0]["peak_rss_mb"].split()[0]) > 0
    a = evaluate(run, out, out=tmp_path / "a", explain=2, progress=False)
    b = evaluate(run, data, out=tmp_path / "b", explain=0, progress=False)
    assert a["split"] == b["split"] == "test" and a["n_real"] == b["n_real"] == 12
    sa = {r["path"]: r["score"] for r in csv.DictReader(open(tmp_path / "a" / "scores.csv"))}
    sb = {r["path"]: r["score"] for r in csv.DictReader(open(tmp_path / "b" / "scores.csv"))}
    assert sa == sb and np.isclose(a["auc"], b["auc"])
    c = evaluate(run, out / "test-00000[01].tar", out=tmp_path / "c", explain=0, progress=False)
    assert 0 < c["n_real"] + c["n_fake"] < 24  # a glob picks some shards


def test_a_kill_on_shards_resumes_with_another_process_count(packed, tmp_path, monkeypatch):
    """As test_order's test of folders: two processes, a checkpoint every 2 steps, one killed
    at its 3rd batch, resumed with one process; it ends where an uninterrupted run ends."""
    _, out = packed
    kw = dict(data=str(out), limit_per_class=0, max_train_batches=0, epochs=2, freeze_bn=True,
              hflip=False, lr_schedule="cosine", checkpoint_every=2, patience=5)  # fmt: skip
    with threads_per_process(2):  # the threads each of the two processes gets
        whole = tiny_run(tmp_path / "whole", **kw)
    cut = tmp_path / "cut"
    monkeypatch.setenv("FAKESCOPE_CRASH_AT", "batch:3@1")
    with pytest.raises(FakescopeError):
        tiny_run(cut, procs=2, **kw)
    monkeypatch.delenv("FAKESCOPE_CRASH_AT")
    with threads_per_process(2):
        tiny_run(cut, procs=1, resume=True, **kw)
    rows = list(csv.DictReader(open(cut / "log.csv")))
    assert rows[0]["resumed_at"] == "batch 3 (2 -> 1 processes)"
    want = list(csv.DictReader(open(whole / "log.csv")))
    assert float(rows[0]["train_loss"]) == pytest.approx(float(want[0]["train_loss"]), rel=1e-3)
    assert share_apart(whole, cut, tiny_run(tmp_path / "start", **{**kw, "lr": 0.0})) < 0.02


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sbi=0.5), "does not take --sbi|takes no --sbi"),
        (dict(limit_per_class=4), "--limit-per-class"),
        (dict(exclude=("x",)), "--exclude"),
    ],
)
def test_what_shards_cannot_do_is_refused_before_training(packed, tmp_path, change, message):
    _, out = packed
    with pytest.raises(FakescopeError, match=message):
        tiny_run(tmp_path / "r", data=str(out), **{"limit_per_class": 0, **change})
    assert not (tmp_path / "r").exists()


def test_bad_shard_paths_say_what_is_wrong(packed, tmp_path):
    _, out = packed
    with pytest.raises(FakescopeError, match="no shard files match"):
        ShardSet.open(tmp_path / "none-*.tar")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(out / "val-000000.tar", lone)
    with pytest.raises(FakescopeError, match="no shards.json"):
        ShardSet.open(lone / "val-000000.tar")


def test_a_stream_sends_uint8_pixels_where_a_gpu_normalises_them(packed):
    """``pixels``: the stream's items as uint8 (a quarter of the bytes), which ``normalise``
    turns into exactly the float items the stream sends otherwise."""
    from fakescope.data.transforms import normalise

    _, out = packed
    kw = dict(size=32, buffer=10, seed=3)
    floats, pixels = (ShardStream(ShardSet.open(out), "train", 6, **kw) for _ in range(2))
    pixels.pixels = True
    for s in (floats, pixels):
        s.set_epoch(0, 5)
    (xf, yf, _), (xp, yp, _) = (next(iter(torch.utils.data.DataLoader(s, batch_size=6)))
                                for s in (floats, pixels))  # fmt: skip
    assert xp.dtype == torch.uint8 and xf.dtype == torch.float32 and torch.equal(yp, yf)
    assert torch.equal(normalise(xp, floats.mean, floats.std), xf)

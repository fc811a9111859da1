"""The training order (data/order.py): the one a one-process run always had, the same batches
for any number of processes, and a run killed inside an epoch that resumes with another
number of processes where it stopped."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
from safetensors.torch import load_file

from fakescope.data.order import ShuffledOrder
from fakescope.errors import FakescopeError

from .conftest import threads_per_process
from .test_training_options import tiny_run


def test_one_process_keeps_the_dataloaders_shuffle():
    n, seed = 37, 11
    loader = torch.utils.data.DataLoader(
        list(range(n)), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    order = ShuffledOrder(n)
    order.set_epoch(3, seed)
    assert list(order) == [i for b in loader for i in b.tolist()]


@pytest.mark.parametrize("world", [2, 4])
def test_every_process_count_trains_the_same_batches(world):
    n, batch = 45, 8
    one = ShuffledOrder(n)
    one.set_epoch(0, 5)
    whole = list(one)
    shards = []
    for rank in range(world):
        o = ShuffledOrder(n, rank, world)
        o.set_epoch(0, 5)
        mine = list(o)
        shards.append([mine[i : i + batch // world] for i in range(0, len(mine), batch // world)])
    for g in range(len(shards[0])):  # global batch g: the shares together are one batch
        together = sorted(i for rank in range(world) for i in shards[rank][g])
        expect = whole[g * batch : (g + 1) * batch]
        padded = expect + whole[: len(together) - len(expect)]  # the last one padded
        assert together == sorted(padded)
    # resuming after 3 batches: the same shares from batch 4 on
    late = ShuffledOrder(n, 1, world)
    late.set_epoch(0, 5, start_batch=3, batch_size=batch)
    assert list(late) == [i for b in shards[1][3:] for i in b]


def test_killed_inside_an_epoch_resumes_with_another_process_count(tmp_path, monkeypatch):
    """Two processes, a checkpoint every 2 steps; one process SIGKILLed at its 3rd batch.
    Resumed with one process, training ends where an uninterrupted run ends: the order and
    the cosine schedule went on from batch 3, one step was redone, and the log says so."""
    kw = dict(limit_per_class=16, max_train_batches=0, epochs=2, freeze_bn=True, hflip=False,
              lr_schedule="cosine", checkpoint_every=2, patience=5)  # fmt: skip
    with threads_per_process(2):  # the threads each of the two processes gets
        whole = tiny_run(tmp_path / "whole", **kw)
    out = tmp_path / "cut"
    monkeypatch.setenv("FAKESCOPE_CRASH_AT", "batch:3@1")
    with pytest.raises(FakescopeError):
        tiny_run(out, procs=2, **kw)
    monkeypatch.delenv("FAKESCOPE_CRASH_AT")
    assert not (out / "model.safetensors").exists()
    with threads_per_process(2), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_run(out, procs=1, **kw, resume=True)
    # fast-forwarding the schedule must not look like a misordered lr_scheduler.step()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["resumed_at"] == "batch 3 (2 -> 1 processes)" and rows[1]["resumed_at"] == ""
    want = list(csv.DictReader(open(whole / "log.csv")))
    assert float(rows[1]["lr"]) == pytest.approx(float(want[1]["lr"]))
    assert float(rows[0]["train_loss"]) == pytest.approx(float(want[0]["train_loss"]), rel=1e-3)
    start = tiny_run(tmp_path / "start", **{**kw, "lr": 0.0})
    # one and two processes sum gradients in different orders: over these 8 steps that alone
    # leaves them 0.8% of the distance trained apart (measured); a batch trained twice or
    # skipped, or the schedule restarted, would be far more
    assert share_apart(whole, out, start) < 0.02


def share_apart(a, b, start) -> float:
    """How far apart two runs' weights are, as a share of how far ``a`` moved from ``start``."""
    w1, w2, w0 = (load_file(str(r / "model.safetensors")) for r in (a, b, start))
    floats = [k for k, w in w1.items() if w.is_floating_point()]
    moved = sum((w1[k] - w0[k]).abs().sum().item() for k in floats)
    return sum((w1[k] - w2[k]).abs().sum().item() for k in floats) / moved

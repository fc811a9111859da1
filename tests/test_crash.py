"""Crash consistency (issue 14): training killed with SIGKILL at 23 points (during a batch,
during validation, while writing the log, the best weights, the resume state, its commit, a
checkpoint inside an epoch and the finished run) resumes to a run identical to one never
interrupted: the same weights, the same threshold and exactly one log row per finished epoch.

Each run is a process forked from a forkserver that has imported torch once, so that a kill
is cheap and the test process itself never forks with live OpenMP threads."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os

import pytest
import torch
from safetensors.torch import load_file

from fakescope.config import TrainConfig

from .conftest import MOBILENET_FILE, SG

# 2 steps x 2 epochs x 2 batches, a checkpoint after each epoch's first batch as well: every
# kind of point is reached more than once
TINY = dict(data=str(SG), backbone="mobilenet_v2", head="gap", weights=str(MOBILENET_FILE),
            input_size=64, batch_size=8, epochs=2, steps=2, limit_per_class=8, lr=1e-3,
            patience=100, tensorboard=False, face_margin=1.3, checkpoint_every=1)  # fmt: skip
# (point, n): killed the n-th time the point is reached
POINTS = [
    *(("batch", n) for n in (1, 2, 3, 5, 8)),
    *(("validate", n) for n in (1, 2, 4)),
    *(("log", n) for n in (1, 2, 3, 5)),
    *(("best", n) for n in (1, 2)),
    *(("state", n) for n in (1, 3, 4, 6)),
    *(("commit", n) for n in (2, 5)),
    *(("checkpoint", n) for n in (1, 3)),
    ("finish", 1),
]
LOGGED = ["step", "epoch", "train_loss", "val_loss", "val_auc"]  # the columns that are not times


def _train(out: str, crash_at: str | None, resume: bool) -> None:
    from fakescope.training.loop import train

    torch.set_num_threads(1)  # a tiny model; and no OpenMP spinning against a busy machine
    if crash_at:
        os.environ["FAKESCOPE_CRASH_AT"] = crash_at
    train(TrainConfig(**TINY, out=out), progress=False, resume=resume)


@pytest.fixture(scope="module")
def ctx():
    c = mp.get_context("forkserver")
    c.set_forkserver_preload(["torch", "torchvision", "fakescope.training.loop"])
    return c


def _run(ctx, out, crash_at=None, resume=False) -> int:
    p = ctx.Process(target=_train, args=(str(out), crash_at, resume))
    p.start()
    p.join(300)
    return p.exitcode


def _log(run):
    with open(run / "log.csv", newline="") as fh:
        return [[r[k] for k in LOGGED] for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def uninterrupted(ctx, tmp_path_factory):
    out = tmp_path_factory.mktemp("crash") / "whole"
    assert _run(ctx, out) == 0
    return out


@pytest.mark.parametrize("point, nth", POINTS, ids=[f"{p}-{n}" for p, n in POINTS])
def test_a_kill_anywhere_resumes_to_the_same_run(ctx, uninterrupted, tmp_path, point, nth):
    import json

    out = tmp_path / "run"
    assert _run(ctx, out, f"{point}:{nth}") == -9, f"{point}:{nth} was never reached"
    assert not (out / "fakescope.json").exists()
    assert _run(ctx, out, resume=True) == 0
    assert _log(out) == _log(uninterrupted), "one log row per finished epoch, none twice"
    a, b = (
        load_file(str(out / "model.safetensors")),
        load_file(str(uninterrupted / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ta = json.loads((out / "fakescope.json").read_text())["threshold"]["value"]
    tb = json.loads((uninterrupted / "fakescope.json").read_text())["threshold"]["value"]
    assert ta == pytest.approx(tb, abs=1e-6)
    assert (
        not list((out / "resume").glob("*.tmp"))
        and len(list((out / "resume").glob("state-*"))) == 1
    )

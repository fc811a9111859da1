"""A short fuzzing run over every input users hand fakescope (issue 14): each generated input
ends as a result or one clear FakescopeError, never a traceback. The long campaign (10,000
inputs per target) is scripts/fuzz.py; its counts are in docs/robustness.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from . import fuzz_targets as T

SHORT = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def folder():
    with T.scratch() as d:
        yield Path(d)


def test_image_bytes(folder):
    @SHORT
    @given(T.mutated(T.image_seeds()))
    def run(data):
        T.check_image(data, folder)

    run()


def test_video_bytes(folder):
    @SHORT
    @given(T.mutated([T.video_seed(folder)]))
    def run(data):
        T.check_video(data, folder)

    run()


def test_splits_csv(folder):
    @SHORT
    @given(T.splits_text())
    def run(data):
        T.check_splits(data, folder)

    run()


def test_run_json(small_run, folder):
    valid = json.loads((small_run / "fakescope.json").read_text())

    @SHORT
    @given(T.run_json(valid))
    def run(data):
        T.check_run_json(data, folder)

    run()


def test_weights_files(small_run, folder):
    from fakescope.runs import load_run

    r = load_run(small_run)
    want = r.model.state_dict()
    seed = (small_run / "model.safetensors").read_bytes()
    r.meta.weights_sha256 = None  # else every mutation is caught by the checksum alone

    @SHORT
    @given(T.mutated([seed[:4096] + seed[-4096:], seed]))
    def run(data):
        T.check_weights(data, folder, r.meta, want)

    run()


def test_command_lines(folder):
    @SHORT
    @given(T.command_lines())
    def run(argv):
        T.check_command_line(argv, folder)

    run()

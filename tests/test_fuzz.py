"""A short fuzzing run over every input users hand fakescope (issue 14): each generated input
ends as a result or one clear FakescopeError, never a traceback. The long campaign (10,000
inputs per target) is scripts/fuzz.py; its counts are in docs/robustness.md."""

from __future__ import annotations

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


@pytest.mark.parametrize("name", T.TARGETS)
def test_every_input_ends_as_a_result_or_one_line(name, folder, small_run):
    strategy, check = T.target(name, folder, small_run)

    @SHORT
    @given(strategy)
    def run(data):
        check(data)

    run()

#!/usr/bin/env bash
# README command 2: set up and run the whole test suite (and the linter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests
# Two pytest-xdist workers, each taking whole files (module fixtures are made once) and the
# slowest files first (tests/conftest.py): 14-15 min of a fresh clone's CI on 2 AVX2 cores
# (session 27) against 25.5 min for one process (docs/benchmarks.md, sessions 26-27). `-n 0`
# after the command runs the suite in one process.
# The slowest tests are listed, so that a suite creeping past its 15 minutes shows where.
.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 "$@"

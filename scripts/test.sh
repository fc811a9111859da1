#!/usr/bin/env bash
# README command 2: set up and run the whole test suite (and the linter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests
# the slowest tests are listed, so that a suite creeping past its 15 minutes shows where
.venv/bin/python -m pytest -q --durations=15 "$@"

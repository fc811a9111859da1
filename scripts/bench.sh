#!/usr/bin/env bash
# Speed of training and inference at 299 px against the fp32 eager baseline, measured in the same
# run. Results are recorded in docs/benchmarks.md with the machine they came from.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in ${BACKBONES:-resnet50 mobilenet_v2}; do
  .venv/bin/fakescope bench --backbone "$b" --input-size 299 --batch-size 16 --iters 3
done

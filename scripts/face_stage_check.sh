#!/usr/bin/env bash
# Does scoring through the face stage change the result on face crops? Scores the sg-ffhq test
# split with a trained run three ways: directly, face stage "auto", face stage "always" (every
# image re-cropped around its detected face with the margin stored in the run). Also writes the
# Grad-CAM section of the report (--explain).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo}
DATA=${DATA:-../shared/data/sg-ffhq}
for mode in never auto always; do
  .venv/bin/fakescope evaluate "$RUN" --data "$DATA" --split test --faces "$mode" \
    --out "$RUN/eval-faces-$mode" $([ "$mode" = never ] && echo --explain 32)
done

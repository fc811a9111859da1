#!/usr/bin/env bash
# The lfw-faceswap compression trap (../shared/README.md): its fakes were saved at about JPEG
# q95 and its reals at about q90. Two models are trained, with and without JPEG re-compression
# augmentation (both classes alike), and each is evaluated on the test split twice: as stored,
# and with every image re-saved at q90 so that both classes carry the same quantisation tables.
# A model that reads faces keeps its AUC; one that reads compression loses it.
# The two trainings run side by side, one thread each (faster than one after the other on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/lfw-faceswap}
W=${WEIGHTS:-../shared/weights/mobilenet_v2-b0353104.pth}
EPOCHS=${EPOCHS:-2}
SIZE=${SIZE:-224}
variant() {
  local name=$1; shift
  local out=runs/lfw-$name
  rm -rf "$out"
  .venv/bin/fakescope train --out "$out" --data "$DATA" --backbone mobilenet_v2 --head gap \
    --weights "$W" --input-size "$SIZE" --steps 1 --epochs "$EPOCHS" --lr 2e-4 \
    --lr-schedule cosine --batch-size 32 --no-eval "$@" > "$out.log" 2>&1
  .venv/bin/fakescope evaluate "$out" --data "$DATA" --split test --out "$out/eval-stored" \
    --explain 32
  .venv/bin/fakescope evaluate "$out" --data "$DATA" --split test --reencode 90 \
    --out "$out/eval-q90"
}
mkdir -p runs
export OMP_NUM_THREADS=1
variant jpegaug --jpeg-prob 1.0 --jpeg-quality 60,100 &
variant plain &
wait

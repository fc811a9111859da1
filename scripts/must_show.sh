#!/usr/bin/env bash
# Issue 12's must-shows 1-3 on this machine in one go (docs/benchmarks.md: the AVX2-only EPYC's
# figures in sessions 24, 28 and 29, the AVX-512 EPYC's in sessions 30-32, a Zen 5 EPYC's in
# session 33 and AMX Xeons' in sessions 34, 36 and 37):
#   1. the OpenVINO int8 export as `export` makes it by default (fine-tuned, confirmed);
#   2. its test-split AUC, F1 and verdicts against --runtime torch through evaluate, predict
#      and serve (scripts/runtime_agreement.py);
#   3. files to verdicts against the plain fp32 eager pipeline, faces auto and never.
# Every log goes to $OUT with the CPU's flags; paste the tables into docs/benchmarks.md.
# About 35-45 minutes on 2 cores (plus 19 to train the demo run where it is missing).
#   bash scripts/must_show.sh [RUN]          # RUN: runs/demo
#   EXPORT=0 bash scripts/must_show.sh       # keep the run's checked export (about 10 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/demo}
DATA=${DATA:-../shared/data/sg-ffhq}
OUT=${OUT:-/tmp/must-show}
mkdir -p "$OUT"
grep -o -w -E 'avx2|avx512[a-z0-9_]*|avx_vnni|amx[a-z0-9_]*' /proc/cpuinfo | sort -u \
  | tr '\n' ' ' | tee "$OUT/cpu-flags.txt"
echo
[ -f "$RUN/model.safetensors" ] || OUT="$RUN" bash scripts/demo.sh
export TORCH_HOME=${TORCH_HOME:-$OUT/torch-home}
mkdir -p "$TORCH_HOME/hub/checkpoints"
cp -n ../shared/weights/*.pth "$TORCH_HOME/hub/checkpoints/" 2>/dev/null || true
fs=.venv/bin/fakescope
if [ "${EXPORT:-1}" = 0 ] && [ -f "$RUN/export/openvino-int8.json" ]; then
  echo "EXPORT=0: keeping $RUN/export/openvino-int8.*" | tee "$OUT/export.log"
else
  { time $fs export "$RUN" --to openvino --int8; } 2>&1 | tee "$OUT/export.log"
fi
.venv/bin/python scripts/runtime_agreement.py "$RUN" --data "$DATA" \
  --runtimes torch openvino-int8 --out "$OUT/agree" 2>&1 | tee "$OUT/agree.log"
for faces in auto never; do
  $fs bench --e2e "$DATA" --run "$RUN" --limit 330 --iters 10 --rounds 3 --faces "$faces" \
    2>&1 | tee "$OUT/bench-$faces.log"
done
echo "logs in $OUT"

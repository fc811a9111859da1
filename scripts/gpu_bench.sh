#!/usr/bin/env bash
# Issues 12 and 13 on a lent GPU, in one short call: ResNet-50 and mobilenet_v2 at 299 px,
# training and inference images/s on the fast path (bf16 autocast, channels_last, BN folded)
# against the fp32 eager baseline measured in the same process, then the training loader's rate
# beside the model's with several worker counts. Results go to docs/benchmarks.md.
#
# The lent machine has its own python3 with torch, torchvision, scikit-learn, safetensors, tqdm
# and Pillow, and no copy of ../shared: stage the data in an ignored folder and carry it.
#   here:  mkdir -p .gpu && cp -r ../shared/data/sg-ffhq .gpu/      (29 MB; .gpu/ is ignored)
#   device tool: run(command="bash scripts/gpu_bench.sh .gpu/sg-ffhq", carry=[".gpu"],
#                    timeout_s=420)
# Each measurement prints its own line; the whole log also goes to $OUT/gpu_bench.log.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/sg-ffhq}
LOG=${OUT:-/tmp}/gpu_bench.log
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  for b in resnet50 mobilenet_v2; do
    for bs in 64 256; do
      echo "== model: $b, batch $bs"
      timeout 120 "$PY" -m fakescope.cli bench --backbone "$b" --device cuda --input-size 299 \
        --batch-size "$bs" --iters 20
    done
  done
  echo "== loader: resnet50, batch 256, against the model's training rate"
  timeout 150 "$PY" -m fakescope.cli bench --data "$DATA" --backbone resnet50 --device cuda \
    --batch-size 256 --workers 0,4,8,14
} 2>&1 | tee "$LOG"

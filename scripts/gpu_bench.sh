#!/usr/bin/env bash
# Issues 12 and 13 on a lent GPU, in one short call: ResNet-50 and mobilenet_v2 at 299 px,
# training and inference images/s on the fast path (bf16 autocast, channels_last, BN folded,
# cuDNN's kernel search) against the fp32 eager baseline measured in the same process; the
# training loader's rate beside the model's with several worker counts, and training fed by
# the loader; last, the same with torch.compile. Results go to docs/benchmarks.md.
#
# The lent machine has its own python3 with torch, torchvision, safetensors, tqdm and Pillow,
# and no copy of ../shared: stage the data in an ignored folder and carry it.
#   here:  mkdir -p .gpu && cp -r ../shared/data/sg-ffhq .gpu/      (29 MB; .gpu/ is ignored)
#   device tool: run(command="bash scripts/gpu_bench.sh .gpu/sg-ffhq", carry=[".gpu"],
#                    timeout_s=420)
# Each step has its own time limit, most important first, so a slow step costs only itself.
# The whole log also goes to $OUT/gpu_bench.log.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/sg-ffhq}
LOG=${OUT:-/tmp}/gpu_bench.log
export PYTHONPATH=src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
FS=("$PY" -m fakescope.cli)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  df -h /dev/shm | tail -1
  echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  echo "== model: resnet50, batch 256"
  timeout 100 "${FS[@]}" bench --backbone resnet50 --device cuda --input-size 299 --batch-size 256 --iters 20
  echo "== loader: resnet50, batch 256, against the model's training rate, then fed by it"
  timeout 100 "${FS[@]}" bench --data "$DATA" --backbone resnet50 --device cuda --batch-size 256 \
    --workers 0,6,15
  echo "== model: mobilenet_v2, batch 256"
  timeout 80 "${FS[@]}" bench --backbone mobilenet_v2 --device cuda --input-size 299 --batch-size 256 --iters 20
  echo "== model: resnet50, batch 256, with torch.compile"
  timeout 150 "${FS[@]}" bench --backbone resnet50 --device cuda --input-size 299 --batch-size 256 \
    --iters 20 --compile
} 2>&1 | tee "$LOG"

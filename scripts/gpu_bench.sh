#!/usr/bin/env bash
# Issues 12 and 13 on a lent GPU, in one short call: first the training loader's rate (uint8
# pixels, as training sends them to a GPU) beside ResNet-50's training rate at 299 px, and
# training fed by the loader; then ResNet-50's training and inference images/s on the fast
# path (bf16 autocast, channels_last, BN folded, cuDNN's kernel search) against the fp32
# eager baseline measured in the same process; last, the same through torch.compile.
# Results go to docs/benchmarks.md (session 20 measured mobilenet_v2 too).
#
# The lent machine has its own python3 with torch, torchvision, safetensors, tqdm and Pillow,
# and no copy of ../shared: stage the data in an ignored folder and carry it.
#   here:  mkdir -p .gpu && cp -r ../shared/data/sg-ffhq .gpu/      (29 MB; .gpu/ is ignored)
#   device tool: run(command="bash scripts/gpu_bench.sh .gpu/sg-ffhq", carry=[".gpu"],
#                    timeout_s=600)
# Each step has its own time limit, most important first, so a slow step costs only itself.
# On the H200 of session 20 the machine started in about 30 s; the resnet50 step took 146 s
# (cuDNN's kernel search for three paths), mobilenet_v2 about 70 s, and torch.compile of
# resnet50 did not finish in 150 s (docs/benchmarks.md).
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
  echo "== loader: resnet50, batch 256, against the model's training rate, then fed by it"
  timeout 150 "${FS[@]}" bench --data "$DATA" --backbone resnet50 --device cuda --batch-size 256 \
    --workers 4,8,15
  echo "== model: resnet50, batch 256"
  timeout 200 "${FS[@]}" bench --backbone resnet50 --device cuda --input-size 299 --batch-size 256 \
    --iters 10
  echo "== model: resnet50, batch 256, with torch.compile"
  timeout 240 "${FS[@]}" bench --backbone resnet50 --device cuda --input-size 299 --batch-size 256 \
    --iters 10 --compile
} 2>&1 | tee "$LOG"

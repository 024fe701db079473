#!/usr/bin/env bash
# Create .venv and install the project into it. Sourced by serve.sh and test.sh.
#   setup_env service   -> the service only (no torch)
#   setup_env all       -> service, training (torch, CPU or CUDA) and the test tools
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
# torchvision's wheels import only with the torch build they were made for: install the pair together.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

setup_env() {
  local what=$1
  if [[ ! -x $VENV/bin/python ]]; then
    echo "creating $VENV"
    python3 -m venv "$VENV"
  fi
  local stamp=$VENV/.installed-$what
  if [[ ! -f $stamp || $REPO/pyproject.toml -nt $stamp ]]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if [[ $what == all ]]; then
      "$VENV/bin/python" -m pip install -q -e "$REPO[train,dev]" "${TORCH_PINS[@]}"
    else
      "$VENV/bin/python" -m pip install -q -e "$REPO"
    fi
    touch "$stamp"
  fi
  export PATH=$VENV/bin:$PATH
}

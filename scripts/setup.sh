#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent and quick when nothing changed.
# torch is pinned to 2.13.0 and installed FIRST: a bare `torch` requirement would pull a multi-GB CUDA build
# on machines without a local CPU wheel (on a GPU machine the same pin gives the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${X2X_TORCH_VERSION:-2.13.0}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "x2x setup: Python >= 3.10 is required (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    echo "x2x setup: python3-venv missing; installing it" >&2
    rm -rf .venv
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$PYTHON" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
fi

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "x2x setup: installing torch==${TORCH_VERSION} first"
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
fi

# Re-install the project only when its metadata changed.
stamp=".venv/.x2x-setup-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "x2x setup: installing instructx2x-node and its dependencies into .venv"
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.x2x-setup-* && touch "$stamp"
fi

#!/usr/bin/env bash
# Set-up on a fresh machine: a virtualenv in .venv with the package built from source
# (the Rust extension included, release profile) and the test/dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo (Rust toolchain) is required to build kvmclock._native" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "maturin>=1.9,<2"
.venv/bin/python -m pip install -q -e ".[dev,plot,fuzz]"

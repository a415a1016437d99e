#!/usr/bin/env bash
# All tests: build (scripts/setup.sh), then Rust unit tests, lint/type checks, the Python suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== cargo test (rust/core)"
cargo test -p kvmclock-core --release
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== ruff"
.venv/bin/ruff check python tests benches fuzz scripts
echo "== mypy --strict"
.venv/bin/mypy
echo "== stubtest (the .pyi against the built module)"
.venv/bin/python -m mypy.stubtest kvmclock._native
echo "== wheel: build, install into a fresh venv, run"
./scripts/check_wheel.sh
echo "== pytest"
.venv/bin/python -m pytest tests "$@"

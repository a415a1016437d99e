#!/usr/bin/env bash
# All tests: set up with the test tools (scripts/setup.sh --extras dev,plot,fuzz,sweep,dask:
# pytest, hypothesis, mypy, ruff, matplotlib, atheris, pyarrow, dask[distributed]; each installed
# once, then stamped), then Rust unit tests, lint/type checks, the wheel check, the Python suite.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --extras dev,plot,fuzz,sweep,dask
if ! cargo clippy --version >/dev/null 2>&1; then
  echo "test: cargo clippy is needed (rustup component add clippy)" >&2
  exit 1
fi
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

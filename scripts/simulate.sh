#!/usr/bin/env bash
# The main job on a fresh machine: set up (scripts/setup.sh), then `kvmclock simulate`
# (built-in `nested` scenario, both profiles side by side). Extra arguments go to simulate.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/kvmclock simulate "$@"

#!/usr/bin/env bash
# The main job: set up when needed (scripts/setup.sh: the first time it creates .venv and builds
# the Rust extension; later it only checks its stamps, well under a second, and works offline),
# then `kvmclock simulate` (built-in `nested` scenario, the three profiles side by side).
# Extra arguments go to simulate. Set-up messages go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/kvmclock simulate "$@"

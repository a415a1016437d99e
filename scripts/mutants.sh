#!/usr/bin/env bash
# Mutation testing (long: not part of CI). Usage: scripts/mutants.sh [all|rust|kvm|timekeeping]
#   rust         cargo mutants over rust/core
#   kvm          mutmut over python/kvmclock/kvm/
#   timekeeping  mutmut over python/kvmclock/timekeeping/ and python/kvmclock/kernel.py
# Each part prints its score; docs/testing.md records the last scores and the mutants judged
# equivalent. Run after ./scripts/setup.sh (the Python parts use .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
case "$what" in
  all) parts=(rust kvm timekeeping) ;;
  rust|kvm|timekeeping) parts=("$what") ;;
  *) echo "mutants.sh: unknown part '$what' (valid: all, rust, kvm, timekeeping)" >&2; exit 2 ;;
esac
for p in "${parts[@]}"; do
  echo "== mutation testing: $p"
  "./scripts/mutants-$p.sh"
done

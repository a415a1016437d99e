#!/usr/bin/env bash
# Mutation testing (long: not part of CI).
# Usage: scripts/mutants.sh [all|rust|kvm|timekeeping|switches]
#   rust         cargo mutants over rust/core
#   kvm          mutmut over python/kvmclock/kvm/
#   timekeeping  mutmut over python/kvmclock/timekeeping/ and python/kvmclock/kernel.py
#   switches     every profile switch flipped in turn: some test must fail for each
# Each part prints its score; docs/testing.md records the last scores and the mutants judged
# equivalent. Run after ./scripts/setup.sh (the Python parts use .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
case "$what" in
  all) parts=(rust kvm timekeeping switches) ;;
  rust|kvm|timekeeping|switches) parts=("$what") ;;
  *) echo "mutants.sh: unknown part '$what' (valid: all, rust, kvm, timekeeping, switches)" >&2
     exit 2 ;;
esac
for p in "${parts[@]}"; do
  echo "== mutation testing: $p"
  if [ "$p" = switches ]; then
    .venv/bin/python scripts/switch_flips.py
  else
    "./scripts/mutants-$p.sh"
  fi
done

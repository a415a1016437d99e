#!/usr/bin/env bash
# Mutation testing of the Rust core (rust/core, crate kvmclock-core) with cargo-mutants.
# Long (about an hour on 2 cores; one mutant at a time): not part of CI; scripts/mutants.sh
# runs it as the `rust` part. cargo-mutants copies the tree to a temporary directory, so the
# working tree is never modified. Results go to target/mutants-rust/mutants.out/.
#
# Exit status: 0 when every surviving ("missed") mutant is one of the known survivors listed
# below (the equivalent mutants, and one EINTR path no test can reach deterministically; the
# reason for each is in docs/testing.md); 1 when another mutant survives (a test is missing),
# or when cargo-mutants itself fails.
set -euo pipefail
cd "$(dirname "$0")/.."

MUTANTS_VERSION=27.1.0
if ! cargo mutants --version >/dev/null 2>&1; then
  echo "== installing cargo-mutants $MUTANTS_VERSION (crates.io)"
  cargo install cargo-mutants --version "$MUTANTS_VERSION" --locked
fi
echo "== $(cargo mutants --version)"

out=target/mutants-rust
mkdir -p "$out"
rc=0
cargo mutants -p kvmclock-core -j 1 --timeout 120 -o "$out" || rc=$?
res=$out/mutants.out
# cargo-mutants: 0 all caught, 2 some missed, 3 some timed out; anything else is a failure
# of the run itself (4: the unmutated tree fails its tests).
case $rc in
  0|2|3) ;;
  *) echo "mutants-rust: cargo mutants failed (exit $rc); see $res/debug.log" >&2; exit 1 ;;
esac

count() { if [[ -s $res/$1.txt ]]; then wc -l <"$res/$1.txt"; else echo 0; fi; }
caught=$(count caught); missed=$(count missed); timeout=$(count timeout); unviable=$(count unviable)
echo "== rust core score: caught $caught, missed $missed, timeout $timeout, unviable $unviable" \
  "(timeouts are mutants the tests stop by hanging: detected)"

# Known survivors, as "file: description" without line:column so that edits elsewhere in a
# file do not invalidate the list. Reasons: docs/testing.md.
known=$(cat <<'EOF'
rust/core/src/batch.rs: replace < with <= in scale_one
rust/core/src/batch.rs: replace < with <= in kernel_into
rust/core/src/batch.rs: replace < with <= in kernel_in_place
rust/core/src/batch.rs: replace has_avx2 -> bool with true
rust/core/src/batch.rs: replace has_avx2 -> bool with false
rust/core/src/math64.rs: replace < with <= in mul_s64_u64_shr
rust/core/src/pvclock.rs: replace << with >>
rust/core/src/pvclock.rs: replace < with <= in scale_delta_unchecked
rust/core/src/pvclock.rs: replace < with <= in pvclock_tsc_khz
rust/core/src/pvclock.rs: replace backoff with ()
rust/core/src/pvclock.rs: replace < with == in backoff
rust/core/src/pvclock.rs: replace < with > in backoff
rust/core/src/pvclock.rs: replace < with <= in backoff
rust/core/src/real.rs: replace ^= with |= in probe_in_child
rust/core/src/real.rs: replace ^= with &= in probe_in_child
rust/core/src/real.rs: replace != with == in probe_in_child
rust/core/src/timescale.rs: replace > with >= in get_time_scale
rust/core/src/tsc.rs: replace unsupported -> crate::error::CoreError with Default::default()
EOF
)
strip() { sed -E 's/^([^:]+):[0-9]+:[0-9]+: /\1: /' | sort; }
unexpected=$( { [[ -s $res/missed.txt ]] && strip <"$res/missed.txt"; } | comm -23 - <(sort <<<"$known") || true)
if [[ -n $unexpected ]]; then
  echo "== surviving mutants that are not known survivors (add a test that kills each):"
  echo "$unexpected"
  exit 1
fi
echo "== every surviving mutant ($missed) is a documented known survivor"

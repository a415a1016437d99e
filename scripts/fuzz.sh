#!/usr/bin/env bash
# Run every kvmclock fuzz harness (fuzz/targets.py: trace, decode, records) for SECONDS each,
# reproducibly (libFuzzer -seed / fixed hypothesis seeds, fresh corpus, no database).
#
#   scripts/fuzz.sh SECONDS [TARGET ...]
#
# Env: FUZZ_ENGINE=auto|atheris|hypothesis (default auto: atheris when installed),
#      FUZZ_SEED=N (default 1), FUZZ_PARALLEL=1 runs the targets concurrently,
#      FUZZ_TOLERATE_KNOWN=1 counts the bugs listed in fuzz/targets.py KNOWN_BUGS instead of
#      stopping on them (libFuzzer stops at the first crash),
#      FUZZ_WORKDIR=DIR keeps corpora, artifacts and libFuzzer logs (default: temporary).
# Prints one line per target (examples, examples/s, crashes) and a total; exits 1 on a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "usage: scripts/fuzz.sh SECONDS [trace|decode|records ...]" >&2
    exit 2
fi
seconds=$1
shift
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(trace decode records)
py=${PYTHON:-.venv/bin/python}
engine=${FUZZ_ENGINE:-auto}
seed=${FUZZ_SEED:-1}
out=$(mktemp -d "${TMPDIR:-/tmp}/kvmclock-fuzz.XXXXXX")

run_one() {
    local t=$1 wd=()
    [[ -n "${FUZZ_WORKDIR:-}" ]] && wd=(--workdir "$FUZZ_WORKDIR/$t")
    [[ "${FUZZ_TOLERATE_KNOWN:-0}" == 1 ]] && wd+=(--tolerate-known)
    "$py" fuzz/run.py "$t" --seconds "$seconds" --engine "$engine" --seed "$seed" "${wd[@]}" \
        >"$out/$t.out" 2>"$out/$t.err" || true
}

echo "kvmclock fuzz: ${targets[*]}; ${seconds} s each; engine $engine; seed $seed; $(date -u +%FT%TZ)"
if [[ "${FUZZ_PARALLEL:-0}" == 1 ]]; then
    for t in "${targets[@]}"; do run_one "$t" & done
    wait
else
    for t in "${targets[@]}"; do run_one "$t"; done
fi

total=0 crashes=0
for t in "${targets[@]}"; do
    line=$(grep '^fuzz ' "$out/$t.out" | tail -n 1 || true)
    if [[ -z "$line" ]]; then
        echo "fuzz $t: no result (see $out/$t.err)"
        tail -n 20 "$out/$t.err" >&2 || true
        crashes=$((crashes + 1))
        continue
    fi
    echo "$line"
    grep -h 'known bugs hit' "$out/$t.err" || true
    n=$(sed -n 's/.* examples=\([0-9]*\) .*/\1/p' <<<"$line")
    c=$(sed -n 's/.* crashes=\([0-9]*\)$/\1/p' <<<"$line")
    total=$((total + n))
    crashes=$((crashes + c))
    if [[ "$c" != 0 ]]; then
        tail -n 80 "$out/$t.err" >&2
    fi
done
echo "total examples=$total crashes=$crashes (logs in $out)"
[[ "$crashes" == 0 ]]

#!/usr/bin/env bash
# Packaging check: build a release wheel with maturin, install it into a fresh virtual
# environment outside the source tree, and run the package from there:
# `import kvmclock`, `kvmclock --version`, `kvmclock simulate` (short), a native call.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
MATURIN=${MATURIN:-$root/.venv/bin/maturin}
"$MATURIN" build --release --quiet --out "$work/dist" >/dev/null
wheel=$(ls "$work"/dist/kvmclock-*.whl)
echo "wheel: $(basename "$wheel")"
# the licence texts pyproject declares (license-files) are in the wheel
${PYTHON:-python3} -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); missing = [f for f in ('LICENSE-MIT', 'LICENSE-APACHE') if not any(n.endswith('.dist-info/licenses/' + f) for n in names)]; sys.exit('wheel lacks ' + ', '.join(missing) if missing else 0)" "$wheel"
${PYTHON:-python3} -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel"
cd "$work"   # away from the source tree so nothing imports from python/
"$work/venv/bin/python" -c "import kvmclock, sys; assert kvmclock.get_time_scale(scaled_hz=10**9, base_hz=2_100_000_000) == (-1, 4090445043); print('import ok', kvmclock.__version__, kvmclock.__file__)"
"$work/venv/bin/kvmclock" --version
"$work/venv/bin/kvmclock" simulate --duration 6 >"$work/simulate.txt"
grep -q "L2" "$work/simulate.txt"
echo "simulate ok ($(wc -l <"$work/simulate.txt") lines)"
echo "check_wheel: OK"

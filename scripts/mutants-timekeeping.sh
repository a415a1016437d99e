#!/usr/bin/env bash
# Mutation testing of the Python timekeeping model (python/kvmclock/timekeeping/ and
# python/kvmclock/kernel.py) with mutmut 3, in a private copy of the tree.
#
#   ./scripts/mutants-timekeeping.sh [WORKDIR]      (default WORKDIR: ../mut-tk)
#
# Needs .venv from ./scripts/setup.sh (the built kvmclock._native); installs mutmut into it.
# Layout trick: mutmut names a mutant after its file path and only strips a leading "src/",
# while the tests import ``kvmclock.*``; so the copy holds the package under src/ (python/ is
# renamed) and mutmut puts mutants/src first on sys.path, ahead of the editable install.
# The config is written into the copy only ([tool.mutmut] of the repository is not used), so
# other mutation runs (kvm/) can keep their own.
# One worker (MUTMUT_JOBS to change it).  Prints the summary; survivors: `mutmut results`
# in WORKDIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-"$ROOT/../mut-tk"}
JOBS=${MUTMUT_JOBS:-1}
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "run ./scripts/setup.sh first (.venv missing)" >&2; exit 1; }
"$PY" -m pip install -q "mutmut>=3.3,<4"
MUTMUT="$ROOT/.venv/bin/mutmut"

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
case "$WORK" in "$ROOT" | "$ROOT"/* | /) echo "WORKDIR must be outside the repository" >&2; exit 1 ;; esac
if [ -n "$(ls -A "$WORK")" ] && [ ! -e "$WORK/.mutants-timekeeping-workdir" ]; then
  echo "$WORK is not empty and not a previous work directory of this script" >&2; exit 1
fi
find "$WORK" -mindepth 1 -delete
touch "$WORK/.mutants-timekeeping-workdir"
tar -C "$ROOT" -cf - \
  --exclude=./.git --exclude=./.venv --exclude=./target --exclude=./mutants --exclude=./python \
  --exclude=.hypothesis --exclude=.pytest_cache --exclude=__pycache__ . | tar -C "$WORK" -xf -
mkdir "$WORK/src"
tar -C "$ROOT/python" -cf - --exclude=__pycache__ --exclude='*.so' . | tar -C "$WORK/src" -xf -
# the native module of this checkout's build (editable installs keep it in python/kvmclock)
NATIVE=$("$PY" -c 'import kvmclock._native as n; print(n.__file__)')
cp "$NATIVE" "$WORK/src/kvmclock/"

# per-run config: drop any [tool.mutmut] table of the repository, append this run's
"$PY" - "$WORK/pyproject.toml" <<'EOF'
import re, sys
p = sys.argv[1]
text = open(p, encoding="utf-8").read()
text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
text = text.rstrip("\n") + """

[tool.mutmut]
source_paths = ["src/kvmclock"]
only_mutate = ["src/kvmclock/timekeeping/*", "src/kvmclock/kernel.py"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:benchmark"]
pytest_add_cli_args_test_selection = [
  "tests/test_timekeeper.py",
  "tests/test_watchdog.py",
  "tests/test_notifier.py",
  "tests/test_kernel.py",
  "tests/test_clocksource.py",
  "tests/test_timekeeping_rules.py",
  "tests/test_kernel_rules.py",
]
"""
open(p, "w", encoding="utf-8").write(text)
EOF
# the new rule tests may be absent in an older checkout: select only what exists
"$PY" - "$WORK/pyproject.toml" "$WORK" <<'EOF'
import os, re, sys
p, work = sys.argv[1], sys.argv[2]
text = open(p, encoding="utf-8").read()
def keep(m):
    return m.group(0) if os.path.exists(os.path.join(work, m.group(1))) else ""
text = re.sub(r'\n  "(tests/test_[a-z_]+\.py)",', keep, text)
open(p, "w", encoding="utf-8").write(text)
EOF

cd "$WORK"
# the copied package, not the repository's, must be what the tests import
"$PY" - <<'EOF'
import os, sys
sys.path.insert(0, "src")
import kvmclock.timekeeping.timekeeper as t
assert os.path.abspath(t.__file__).startswith(os.path.abspath("src")), t.__file__
EOF
"$MUTMUT" run --max-children "$JOBS"
"$MUTMUT" results >mutmut-results.txt || true
echo "survivors and untested mutants: $(grep -c ': ' mutmut-results.txt || true) (list in $WORK/mutmut-results.txt)"

#!/usr/bin/env bash
# Mutation testing of the Python timekeeping model (python/kvmclock/timekeeping/: clocksource.py,
# timekeeper.py, watchdog.py, notifier.py; and python/kvmclock/kernel.py) with mutmut 3, in a
# private copy of the tree.
#
#   ./scripts/mutants-timekeeping.sh [WORKDIR [MUTANT_NAME...]]    (default WORKDIR: ../mut-tk)
#
# MUTANT_NAMEs (e.g. 'kvmclock.timekeeping.watchdog.*') restrict the run to those mutants.
# Needs .venv from ./scripts/setup.sh (the built kvmclock._native); installs mutmut into it.
# Layout: mutmut names a mutant after its file path and only strips a leading "src/", while
# the tests import ``kvmclock.*``; so the copy holds the package under src/ (python/ is
# renamed) and mutmut puts mutants/src first on sys.path, ahead of the editable install.
# The config is written into the copy only (the repository has no [tool.mutmut] table, so the
# kvm/ run keeps its own).  Tests: the fast timekeeping/kernel tests only (TK_MUTANTS_TESTS, a
# space-separated list, overrides them; the "before" score of docs/testing.md is this script
# with TK_MUTANTS_TESTS="tests/test_timekeeper.py tests/test_watchdog.py tests/test_notifier.py
# tests/test_kernel.py tests/test_clocksource.py").
# One worker (MUTMUT_JOBS to change it).  Prints the summary; survivors: `mutmut results`
# in WORKDIR, a mutant's diff: `mutmut show NAME`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-"$ROOT/../mut-tk"}
shift || true
JOBS=${MUTMUT_JOBS:-1}
TESTS=${TK_MUTANTS_TESTS:-"tests/test_timekeeper.py tests/test_watchdog.py tests/test_notifier.py \
tests/test_kernel.py tests/test_clocksource.py tests/test_timekeeping_rules.py \
tests/test_kernel_rules.py"}
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

# per-run config: drop any [tool.mutmut] table, append this run's (test files that exist)
# shellcheck disable=SC2086
"$PY" - "$WORK/pyproject.toml" "$WORK" $TESTS <<'EOF'
import os, re, sys
p, work, tests = sys.argv[1], sys.argv[2], sys.argv[3:]
tests = [t for t in tests if os.path.exists(os.path.join(work, t))]
assert tests, "no test file of the selection exists"
text = open(p, encoding="utf-8").read()
text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
sel = "".join(f'  "{t}",\n' for t in tests)
text = text.rstrip("\n") + f"""

[tool.mutmut]
source_paths = ["src/kvmclock"]
only_mutate = ["src/kvmclock/timekeeping/*", "src/kvmclock/kernel.py"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:benchmark"]
pytest_add_cli_args_test_selection = [
{sel}]
# an infinite-loop mutant (update_wall_time, the seqcount read loop) costs this multiple of
# its covering tests' time; 5x (default 15x) still leaves a wide margin
timeout_multiplier = 5.0
use_git_change_detection = false
"""
open(p, "w", encoding="utf-8").write(text)
print("tests:", " ".join(tests))
EOF

cd "$WORK"
# 1. the copied package, not the repository's, is what the tests import
"$PY" - <<'EOF'
import os, sys
sys.path.insert(0, "src")
import kvmclock.timekeeping.watchdog as w
assert os.path.abspath(w.__file__).startswith(os.path.abspath("src")), w.__file__
EOF
# 2. a hand-made mutant of the copy (WATCHDOG_THRESHOLD one ns larger) must make a test fail;
#    then the copy is restored before mutmut copies it
if [ -e tests/test_timekeeping_rules.py ]; then
  WD=src/kvmclock/timekeeping/watchdog.py
  cp "$WD" "$WD.orig"
  "$PY" - "$WD" <<'EOF'
import sys
p = sys.argv[1]
s = open(p, encoding="utf-8").read()
old = "WATCHDOG_THRESHOLD = NSEC_PER_SEC >> 4"
assert s.count(old) == 1, "hand-made mutant: pattern not found once"
open(p, "w", encoding="utf-8").write(s.replace(old, old + " + 1"))
EOF
  if PYTHONPATH=src "$PY" -m pytest -q -x -p no:cacheprovider tests/test_timekeeping_rules.py \
      -k threshold_edges >/dev/null 2>&1; then
    mv "$WD.orig" "$WD"
    echo "hand-made mutant survived: the tests do not import the mutated copy" >&2; exit 1
  fi
  mv "$WD.orig" "$WD"
  echo "hand-made mutant (watchdog threshold +1 ns) killed: tests import the copy"
fi
# 3. mutmut (it also runs its own forced-fail check of the trampolines before the mutants)
"$MUTMUT" run --max-children "$JOBS" "$@"
"$MUTMUT" results >mutmut-results.txt || true
total=$(find mutants/src/kvmclock/timekeeping mutants/src/kvmclock/kernel.py.meta -name '*.meta' \
  -exec "$PY" -c '
import json, sys
print(sum(len(json.load(open(f))["exit_code_by_key"]) for f in sys.argv[1:]))' {} +)
echo "mutants: $total; not killed (survived, timeout, not checked): $(grep -c ': ' mutmut-results.txt || true) (list in $WORK/mutmut-results.txt)"

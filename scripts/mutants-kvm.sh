#!/usr/bin/env bash
# Mutation testing of the Python KVM model (python/kvmclock/kvm/: x86.py, vm.py, requests.py)
# with mutmut 3, in a private copy of the tree.
#
#   ./scripts/mutants-kvm.sh [WORKDIR [MUTANT_NAME...]]     (default WORKDIR: ../mut-kvm)
#
# MUTANT_NAMEs (e.g. 'kvmclock.kvm.x86.*kvm_write_tsc*') restrict the run to those mutants.
# Needs .venv from ./scripts/setup.sh (the built kvmclock._native); installs mutmut into it.
# Layout: mutmut names a mutant after its file path and only strips a leading "src/", while
# the tests import ``kvmclock.*``; so the copy holds the package under src/ (python/ is
# renamed) and mutmut puts mutants/src first on sys.path, ahead of the editable install.
# The config is written into the copy only (the repository has no [tool.mutmut] table, so the
# timekeeping run keeps its own).  Tests: the KVM model test files and the verify-model tests
# that drive KVM_KVMCLOCK_CTRL (about 3 s together; every surviving mutant costs one full
# pass, so the slower scenario and invariant files are left to the normal suite).
# KVM_MUTANTS_TESTS, a space-separated list, overrides them: the "before" score of
# docs/testing.md is KVM_MUTANTS_TESTS=tests/test_kvm_x86.py.
# One worker (MUTMUT_JOBS to change it); a mutant that hangs the model is stopped after
# 3 x 2 x (its tests' CPU time + 1 s) (timeout_multiplier = 3).  Prints the summary;
# survivors: WORKDIR/mutmut-results.txt, a mutant's diff: `mutmut show NAME` in WORKDIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-"$ROOT/../mut-kvm"}
shift || true
JOBS=${MUTMUT_JOBS:-1}
TESTS=${KVM_MUTANTS_TESTS:-"tests/test_kvm_x86.py tests/test_kvm_rules.py tests/test_verify_model.py"}
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "run ./scripts/setup.sh first (.venv missing)" >&2; exit 1; }
"$PY" -m pip install -q "mutmut>=3.3,<4"
MUTMUT="$ROOT/.venv/bin/mutmut"

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
case "$WORK" in "$ROOT" | "$ROOT"/* | /) echo "WORKDIR must be outside the repository" >&2; exit 1 ;; esac
if [ -n "$(ls -A "$WORK")" ] && [ ! -e "$WORK/.mutants-kvm-workdir" ]; then
  echo "$WORK is not empty and not a previous work directory of this script" >&2; exit 1
fi
find "$WORK" -mindepth 1 -delete
touch "$WORK/.mutants-kvm-workdir"
tar -C "$ROOT" -cf - \
  --exclude=./.git --exclude=./.venv --exclude=./target --exclude=./mutants --exclude=./python \
  --exclude=.hypothesis --exclude=.pytest_cache --exclude=__pycache__ . | tar -C "$WORK" -xf -
mkdir "$WORK/src"
tar -C "$ROOT/python" -cf - --exclude=__pycache__ --exclude='*.so' . | tar -C "$WORK/src" -xf -
# the native module of this checkout's build (editable installs keep it in python/kvmclock)
NATIVE=$("$PY" -c 'import kvmclock._native as n; print(n.__file__)')
cp "$NATIVE" "$WORK/src/kvmclock/"

# per-run config: drop any [tool.mutmut] table, append this run's (test files that exist)
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
only_mutate = ["src/kvmclock/kvm/*"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:benchmark"]
pytest_add_cli_args_test_selection = [
{sel}]
use_git_change_detection = false
timeout_multiplier = 3.0
"""
open(p, "w", encoding="utf-8").write(text)
print("tests:", " ".join(tests))
EOF

cd "$WORK"
# 1. the copied package, not the repository's, is what the tests import
"$PY" - <<'EOF'
import os, sys
sys.path.insert(0, "src")
import kvmclock.kvm.x86 as x
assert os.path.abspath(x.__file__).startswith(os.path.abspath("src")), x.__file__
EOF
# 2. a hand-made mutant of the copy (the 1 s matching window of kvm_write_tsc made 2 s) must
#    make a test fail; then the copy is restored before mutmut copies it
if [ -e tests/test_kvm_rules.py ]; then
  X86=src/kvmclock/kvm/x86.py
  cp "$X86" "$X86.orig"
  "$PY" - "$X86" <<'EOF'
import sys
p = sys.argv[1]
s = open(p, encoding="utf-8").read()
old = "tsc_hz = vcpu.virtual_tsc_khz * 1000"
assert s.count(old) == 1, "hand-made mutant: pattern not found once"
open(p, "w", encoding="utf-8").write(s.replace(old, "tsc_hz = vcpu.virtual_tsc_khz * 2000"))
EOF
  if PYTHONPATH=src "$PY" -m pytest -q -x -p no:cacheprovider tests/test_kvm_rules.py \
      -k window >/dev/null 2>&1; then
    mv "$X86.orig" "$X86"
    echo "hand-made mutant survived: the tests do not import the mutated copy" >&2; exit 1
  fi
  mv "$X86.orig" "$X86"
  echo "hand-made mutant (window 1 s -> 2 s) killed: tests import the copy"
fi
# 3. mutmut (it also runs its own forced-fail check of the trampolines before the mutants)
"$MUTMUT" run --max-children "$JOBS" "$@"
"$MUTMUT" results >mutmut-results.txt || true
"$MUTMUT" export-cicd-stats >/dev/null
"$PY" - <<'EOF'
import json
s = json.load(open("mutants/mutmut-cicd-stats.json"))
caught = s["killed"] + s["timeout"]
print(f"kvm/ mutants: {s['total']}; killed {s['killed']}, timeout {s['timeout']} "
      f"(caught {caught}, {100 * caught / s['total']:.1f}%); survived {s['survived']}, "
      f"no tests {s['no_tests']}")
EOF
echo "survivors: $WORK/mutmut-results.txt (the equivalent ones are listed in docs/testing.md)"

#!/usr/bin/env bash
# Set-up: a virtualenv in .venv with kvmclock installed editable from this checkout (the Rust
# extension kvmclock._native built by maturin, release profile) and its runtime dependencies:
# what `kvmclock simulate` needs and nothing more.
#
#   ./scripts/setup.sh [--extras NAME[,NAME...]]
#
# --extras also installs optional dependency groups of pyproject.toml: scripts/test.sh asks for
# dev,plot,fuzz,sweep,dask; `--extras plot` is enough for `kvmclock simulate --plot`, `--extras
# sweep` for `kvmclock sweep --out PATH.parquet`.
#
# Each step runs only when what it depends on changed. It records a stamp in .venv/.kvmclock-setup/
# (the Python version and SHA-256 hashes of its inputs) and compares it with a fresh one:
#   venv        .venv created (by $PYTHON, default python3)
#   deps        maturin + the runtime dependencies: Python version, pyproject.toml
#   build       the Rust extension: Python version, pyproject.toml, Cargo.toml, Cargo.lock, rust/**
#   extra-NAME  one extra: Python version, pyproject.toml
# When every stamp matches (and the built module and .venv/bin/kvmclock are there) it runs no
# pip, no cargo and needs no network, and prints nothing. Python sources need no step: the
# install is editable. Messages go to stderr, so `./scripts/simulate.sh --json -` stays JSON.
# Needs (first time): network for pip, Python >= 3.10 with venv (Debian: python3-venv), Rust at
# the rust-version of Cargo.toml, a C compiler/linker (cc). Env: PYTHON=path (a Python of
# another version than .venv's makes a new .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

STAMP_FORMAT=1          # change to redo every step after a change of this script's logic
FIRST_BUILD_MIN=1       # the first Rust build: cargo took 63 s, the set-up 92 s, on 2 shared cores
VENV=.venv
STATE=$VENV/.kvmclock-setup
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "setup: $*" >&2; }
die() { echo "setup: $*" >&2; exit 1; }
bad_args() { echo "setup: $*" >&2; exit 2; }

extras=()
while [ $# -gt 0 ]; do
  case "$1" in
    --extras) [ $# -ge 2 ] || bad_args "--extras needs NAME[,NAME...] (optional dependencies of pyproject.toml, e.g. plot)"
              IFS=, read -ra extras <<<"$2"; shift 2 ;;
    --extras=*) IFS=, read -ra extras <<<"${1#--extras=}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) bad_args "unknown argument '$1' (valid: --extras NAME[,NAME...], --help)" ;;
  esac
done
for e in "${extras[@]}"; do
  [[ "$e" =~ ^[A-Za-z0-9_-]+$ ]] || bad_args "--extras: '$e' is not an extra name (e.g. dev,plot,fuzz)"
done

# "cpython-311 3.11.7" for an interpreter, empty when it does not run
pyver() { "$1" -c 'import sys; print(sys.implementation.cache_tag, "%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || true; }
sha() { sha256sum | cut -d' ' -f1; }
stamp_ok() { [ -f "$STATE/$1" ] && [ "$(cat "$STATE/$1")" = "$2" ]; }
write_stamp() { printf '%s\n' "$2" >"$STATE/$1.tmp" && mv "$STATE/$1.tmp" "$STATE/$1"; }
# the inputs (first words) of a stamp that differ from the recorded one: "rust/, pyproject.toml"
changed() {
  if [ ! -f "$STATE/$1" ]; then echo "first time"; return; fi
  local names
  names=$({ grep -vxFf "$STATE/$1" <<<"$2" || true; } | cut -d' ' -f1 | paste -sd, - | sed 's/,/, /g')
  if [ -n "$names" ]; then echo "$names changed"; else echo "nothing changed"; fi
}

# 1. the virtualenv
have=""
if [ -x "$VENV/bin/python" ]; then have=$(pyver "$VENV/bin/python"); fi
if [ -n "$have" ] && [ ! -f "$STATE/venv" ]; then
  # a .venv of an earlier set-up without stamps is kept when it has pip; the steps below redo
  # what they cannot vouch for
  if "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
    mkdir -p "$STATE"; write_stamp venv "python $have"
  else
    have=""
  fi
fi
if [ -n "$have" ] && [ -n "${PYTHON:-}" ]; then
  want=$(pyver "$PYTHON")
  [ -n "$want" ] || die "PYTHON=$PYTHON does not run"
  if [ "$want" != "$have" ]; then
    say "PYTHON=$PYTHON is $want but .venv has $have: making a new .venv"
    rm -rf "$VENV"; have=""
  fi
fi
if [ -z "$have" ]; then
  if [ -e "$VENV" ]; then
    say ".venv is incomplete or its python does not run (was its Python removed?): making a new one"
    rm -rf "$VENV"
  fi
  PY=${PYTHON:-python3}
  command -v "$PY" >/dev/null 2>&1 || die "$PY not found: Python >= 3.10 is needed (or set PYTHON=/path/to/python3)"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PY is Python $(pyver "$PY"); kvmclock needs >= 3.10 (set PYTHON=/path/to/python3)"
  "$PY" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$PY has no venv module with ensurepip; on Debian/Ubuntu: apt install python3-venv"
  say "creating .venv with $PY ($(pyver "$PY"))"
  "$PY" -m venv "$VENV"
  have=$(pyver "$VENV/bin/python")
  [ -n "$have" ] || die ".venv/bin/python does not run after '$PY -m venv .venv'"
  # editable installs of a pyproject-only project (PEP 660) need pip >= 21.3; only the venvs of
  # early Python 3.10 releases come with an older one
  if ! "$VENV/bin/python" -c 'import sys, pip; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (21, 3))'; then
    say "upgrading .venv's pip to >= 21.3 (editable installs need it)"
    "$VENV/bin/python" -m pip install -q "pip>=21.3" >&2
  fi
  mkdir -p "$STATE"
  write_stamp venv "python $have"
fi
mkdir -p "$STATE"

fmt="format $STAMP_FORMAT"
py="python $have"
pyproject="pyproject.toml $(sha <pyproject.toml)"

requirements() {  # requirement strings of pyproject.toml, one per line
  "$VENV/bin/python" scripts/setup_requirements.py "$@"
}

# 2. maturin (the build backend, used without build isolation so a rebuild needs no network)
#    and the runtime dependencies
deps_stamp=$(printf '%s\n' "$fmt" "$py" "$pyproject")
if ! stamp_ok deps "$deps_stamp"; then
  why=$(changed deps "$deps_stamp")
  build_reqs=$(requirements build)
  runtime_reqs=$(requirements runtime)
  mapfile -t reqs <<<"$build_reqs"$'\n'"$runtime_reqs"
  say "installing maturin and the runtime dependencies ($why): $(requirements --names runtime)"
  "$VENV/bin/python" -m pip install -q "${reqs[@]}" >&2
  write_stamp deps "$deps_stamp"
fi

# 3. the Rust extension and the kvmclock package (editable: python/ is used in place)
cargo_files="Cargo.toml+Cargo.lock $(cat Cargo.toml Cargo.lock | sha)"
rust_files="rust/ $(find rust -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha)"
build_stamp=$(printf '%s\n' "$fmt" "$py" "$pyproject" "$cargo_files" "$rust_files")
built() { compgen -G "python/kvmclock/_native*.so" >/dev/null && [ -x "$VENV/bin/kvmclock" ]; }

check_rust() {
  local need have_rust
  need=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
  if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
    die "cargo and rustc (Rust >= $need) are needed to build kvmclock._native: install Rust with rustup (https://rustup.rs)"
  fi
  have_rust=$(rustc --version | cut -d' ' -f2)
  if [ "$(printf '%s\n%s\n' "$need" "$have_rust" | sort -V | head -n 1)" != "$need" ]; then
    die "Rust >= $need is needed (Cargo.toml rust-version); rustc is $have_rust: rustup update stable"
  fi
  command -v cc >/dev/null 2>&1 \
    || die "a C compiler and linker (cc) is needed to link the Rust extension; on Debian/Ubuntu: apt install build-essential"
}

hb=""
stop_heartbeat() {
  if [ -n "$hb" ]; then kill "$hb" 2>/dev/null || true; wait "$hb" 2>/dev/null || true; hb=""; fi
}
trap stop_heartbeat EXIT

if ! stamp_ok build "$build_stamp" || ! built; then
  why=""
  if [ -f "$STATE/build" ]; then
    why=$(changed build "$build_stamp")
    if ! built; then
      if [ "$why" = "nothing changed" ]; then why=""; else why="$why; "; fi
      why="${why}python/kvmclock/_native*.so or .venv/bin/kvmclock is missing"
    fi
    why=" ($why)"
  fi
  check_rust
  say "building the Rust extension (first time: about $FIRST_BUILD_MIN min)$why"
  log=$STATE/build.log
  t0=$(date +%s)
  ( s=""; trap '[ -n "$s" ] && kill "$s" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 20 </dev/null >/dev/null 2>&1 & s=$!; wait "$s"
      echo "setup:   still building ($(( $(date +%s) - t0 )) s; cargo output in $log)" >&2
    done ) &
  hb=$!
  if ! "$VENV/bin/python" -m pip install -v --no-build-isolation --no-deps -e . >"$log" 2>&1; then
    stop_heartbeat
    tail -n 40 "$log" >&2
    die "the build failed (above: the end of $log)"
  fi
  stop_heartbeat
  built || die "the build ran but python/kvmclock/_native*.so or .venv/bin/kvmclock is missing (see $log)"
  say "built in $(( $(date +%s) - t0 )) s"
  write_stamp build "$build_stamp"
fi

# 4. optional dependency groups asked for with --extras
missing=()
for e in "${extras[@]}"; do
  stamp_ok "extra-$e" "$(printf '%s\n' "$fmt" "$py" "$pyproject" "extra $e")" || missing+=("$e")
done
if [ ${#missing[@]} -gt 0 ]; then
  extra_reqs=$(requirements extra "${missing[@]}")
  if [ -n "$extra_reqs" ]; then
    mapfile -t reqs <<<"$extra_reqs"
    say "installing the extras ${missing[*]}: $(requirements --names extra "${missing[@]}")"
    "$VENV/bin/python" -m pip install -q "${reqs[@]}" >&2
  fi
  for e in "${missing[@]}"; do
    write_stamp "extra-$e" "$(printf '%s\n' "$fmt" "$py" "$pyproject" "extra $e")"
  done
fi

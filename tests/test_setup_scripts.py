"""scripts/setup.sh: idempotent set-up, keyed on stamps; nothing installed or built twice.

Runs the real script in a temporary copy of the build inputs (pyproject.toml, Cargo files,
rust/) with fake ``python3``, ``cargo``, ``rustc`` and ``cc`` first on PATH. The fakes record
every call in a log; the fake venv python records ``-m pip`` calls and, for the editable
install, plays maturin: it runs ``cargo build`` and leaves a module file and
``.venv/bin/kvmclock`` behind. No network, no real build, no timing: the tests assert which
steps run (pip, cargo) after each kind of change, and that nothing runs when nothing changed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("sha256sum") is None,
    reason="needs bash and coreutils (sha256sum)",
)

# The base interpreter: `-m venv DIR` makes DIR/bin/python the fake venv python; the version
# query answers $FAKE_PYVER; anything else goes to the real interpreter.
FAKE_PYTHON3 = r"""#!/usr/bin/env bash
echo "python3 $*" >>"$FAKE_LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin" && cp "$FAKE_BIN/venv-python" "$3/bin/python" && touch "$3/pyvenv.cfg"
  exit 0
fi
if [ "$1" = -c ] && [[ "$2" == *cache_tag* ]]; then echo "$FAKE_PYVER"; exit 0; fi
exec "$REAL_PYTHON" "$@"
"""

# The venv interpreter: pip is recorded (never run); the editable install "builds".
FAKE_VENV_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = -m ] && [ "$2" = pip ]; then
  shift 2
  echo "pip $*" >>"$FAKE_LOG"
  case " $* " in
    *" -e "*)
      cargo build --release >/dev/null
      touch python/kvmclock/_native.fake.so
      printf '#!/usr/bin/env bash\necho "kvmclock $*"\n' >.venv/bin/kvmclock
      chmod +x .venv/bin/kvmclock ;;
  esac
  exit 0
fi
if [ "$1" = -c ] && [[ "$2" == *cache_tag* ]]; then echo "$FAKE_PYVER"; exit 0; fi
exec "$REAL_PYTHON" "$@"
"""

FAKE_TOOL = r"""#!/usr/bin/env bash
echo "$(basename "$0") $*" >>"$FAKE_LOG"
if [ "$1" = --version ]; then echo "$(basename "$0") ${FAKE_RUSTC_VERSION:-1.95.0} (fake)"; fi
exit 0
"""


class Tree:
    """A temporary copy of the set-up inputs, with the fakes and a call log."""

    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "repo"
        self.bin = tmp / "fakebin"
        self.log = tmp / "calls.log"
        (self.repo / "scripts").mkdir(parents=True)
        for name in ("setup.sh", "simulate.sh", "setup_requirements.py"):
            shutil.copy2(SCRIPTS / name, self.repo / "scripts" / name)
        for name in ("pyproject.toml", "Cargo.toml", "Cargo.lock"):
            shutil.copy2(ROOT / name, self.repo / name)
        shutil.copytree(ROOT / "rust", self.repo / "rust", ignore=shutil.ignore_patterns("target"))
        (self.repo / "python" / "kvmclock").mkdir(parents=True)
        self.bin.mkdir()
        for name, text in (
            ("python3", FAKE_PYTHON3),
            ("venv-python", FAKE_VENV_PYTHON),
            ("cargo", FAKE_TOOL),
            ("rustc", FAKE_TOOL),
            ("cc", FAKE_TOOL),
        ):
            p = self.bin / name
            p.write_text(text)
            p.chmod(0o755)
        self.log.touch()
        self.env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(tmp),
            "LC_ALL": "C",
            "FAKE_LOG": str(self.log),
            "FAKE_BIN": str(self.bin),
            "FAKE_PYVER": "cpython-311 3.11.7",
            "REAL_PYTHON": sys.executable,
        }

    def run(self, *args: str, script: str = "setup.sh", **env: str) -> tuple[str, str, list[str]]:
        """Run a script; return its stdout, stderr and the calls it made (then clear the log)."""
        self.log.write_text("")
        r = subprocess.run(
            ["bash", f"scripts/{script}", *args],
            cwd=self.repo,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        calls = self.log.read_text().splitlines()
        if r.returncode != 0:
            raise AssertionError(f"{script} {args} exit {r.returncode}\n{r.stderr}")
        return r.stdout, r.stderr, calls

    def run_fails(self, *args: str, **env: str) -> str:
        r = subprocess.run(
            ["bash", "scripts/setup.sh", *args],
            cwd=self.repo,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0, r.stderr
        return r.stderr


def pip_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("pip ")]


def builds(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("cargo build")]


def set_up(tmp_path: Path) -> Tree:
    t = Tree(tmp_path)
    t.run()
    return t


def test_first_setup_installs_runtime_only_and_says_it_builds(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    out, err, calls = t.run()
    assert out == ""  # messages go to stderr: `simulate.sh --json -` stays JSON
    assert "python3 -m venv .venv" in calls
    pips = pip_calls(calls)
    assert len(pips) == 2, pips
    deps, build = pips
    # the build backend and the runtime dependencies of pyproject.toml, nothing else
    assert "maturin>=1.9,<2" in deps
    for req in ("numpy", "pydantic", "typing-extensions"):
        assert req in deps
    for extra in ("pytest", "hypothesis", "mypy", "ruff", "matplotlib", "atheris", "pyarrow",
                  "dask", "[dev"):
        assert extra not in " ".join(pips)
    assert "--upgrade pip" not in deps
    # the build needs no network: no build isolation, dependencies already there
    assert build.split() == ["pip", "install", "-v", "--no-build-isolation", "--no-deps", "-e", "."]
    assert builds(calls)
    assert re.search(r"building the Rust extension \(first time: about \d+ min\)", err), err


def test_second_run_installs_and_builds_nothing(tmp_path: Path) -> None:
    t = set_up(tmp_path)
    out, err, calls = t.run()
    assert (out, err) == ("", "")
    assert pip_calls(calls) == []
    assert [c for c in calls if c.split()[0] in ("cargo", "rustc", "cc")] == []
    assert not any("-m venv" in c for c in calls)


def test_simulate_sh_runs_simulate_without_setup_work_the_second_time(tmp_path: Path) -> None:
    t = set_up(tmp_path)
    out, err, calls = t.run("--help", script="simulate.sh")
    assert out == "kvmclock simulate --help\n"
    assert err == ""
    assert pip_calls(calls) == [] and builds(calls) == []


def test_rust_source_change_rebuilds_without_reinstalling_dependencies(tmp_path: Path) -> None:
    t = set_up(tmp_path)
    src = t.repo / "rust" / "core" / "src" / "lib.rs"
    src.write_text(src.read_text() + "\n// changed\n")
    _, err, calls = t.run()
    assert pip_calls(calls) == ["pip install -v --no-build-isolation --no-deps -e ."]
    assert builds(calls)
    assert "rust/ changed" in err
    # and the new stamp holds
    _, _, calls = t.run()
    assert pip_calls(calls) == []


@pytest.mark.parametrize("name", ["Cargo.lock", "Cargo.toml", "rust/bindings/Cargo.toml"])
def test_cargo_file_change_rebuilds(tmp_path: Path, name: str) -> None:
    t = set_up(tmp_path)
    p = t.repo / name
    p.write_text(p.read_text() + "\n# changed\n")
    _, _, calls = t.run()
    assert builds(calls)
    assert pip_calls(calls) == ["pip install -v --no-build-isolation --no-deps -e ."]


def test_pyproject_change_reinstalls_dependencies_and_rebuilds(tmp_path: Path) -> None:
    t = set_up(tmp_path)
    p = t.repo / "pyproject.toml"
    p.write_text(p.read_text() + "\n# changed\n")
    _, err, calls = t.run()
    pips = pip_calls(calls)
    assert len(pips) == 2 and "maturin" in pips[0] and "-e ." in pips[1]
    assert "pyproject.toml changed" in err


def test_python_version_change_reinstalls_and_rebuilds(tmp_path: Path) -> None:
    t = set_up(tmp_path)
    _, err, calls = t.run(FAKE_PYVER="cpython-311 3.11.9")
    assert len(pip_calls(calls)) == 2 and builds(calls)
    assert "python changed" in err


def test_missing_module_rebuilds_even_when_stamps_match(tmp_path: Path) -> None:
    t = set_up(tmp_path)
    (t.repo / "python" / "kvmclock" / "_native.fake.so").unlink()
    _, err, calls = t.run()
    assert builds(calls)
    assert "(python/kvmclock/_native*.so or .venv/bin/kvmclock is missing)" in err


def test_extras_installed_once_and_only_when_asked(tmp_path: Path) -> None:
    t = set_up(tmp_path)
    _, err, calls = t.run("--extras", "dev,plot,fuzz")
    pips = pip_calls(calls)
    assert len(pips) == 1 and not builds(calls)
    for req in ("pytest", "hypothesis", "mypy", "ruff", "matplotlib", "atheris"):
        assert req in pips[0]
    assert "installing the extras dev plot fuzz" in err
    _, err, calls = t.run("--extras", "dev,plot,fuzz")
    assert (err, pip_calls(calls)) == ("", [])
    # one already there, one new: only the new one is installed
    _, _, calls = t.run("--extras", "plot,test")
    assert len(pip_calls(calls)) == 1 and "matplotlib" not in pip_calls(calls)[0]


def test_unknown_extra_is_refused_with_the_valid_names(tmp_path: Path) -> None:
    t = set_up(tmp_path)
    err = t.run_fails("--extras", "plots")
    assert "unknown extra plots" in err and "plot" in err and "dev" in err


def test_build_without_rust_says_what_to_install(tmp_path: Path) -> None:
    if shutil.which("cargo", path="/usr/bin:/bin"):
        pytest.skip("cargo is installed system-wide here")
    t = Tree(tmp_path)
    (t.bin / "cargo").unlink()
    err = t.run_fails()
    assert "cargo and rustc (Rust >= " in err and "rustup" in err


def test_old_rust_is_refused_with_the_required_version(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    err = t.run_fails(FAKE_RUSTC_VERSION="1.70.0")
    need = re.search(r'^rust-version = "(.+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    assert need is not None
    assert f"Rust >= {need[1]} is needed" in err and "1.70.0" in err


def test_test_sh_installs_the_extras_and_checks_clippy() -> None:
    text = (SCRIPTS / "test.sh").read_text()
    assert "./scripts/setup.sh --extras dev,plot,fuzz,sweep,dask" in text
    assert "rustup component add clippy" in text


def test_setup_requirements_reads_pyproject() -> None:
    def reqs(*args: str) -> list[str]:
        r = subprocess.run(
            [sys.executable, str(SCRIPTS / "setup_requirements.py"), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return r.stdout.splitlines()

    assert reqs("build") == ["maturin>=1.9,<2"]
    assert "numpy>=1.24" in reqs("runtime")
    assert not any("pytest" in r or "matplotlib" in r for r in reqs("runtime"))
    assert "matplotlib>=3.7" in reqs("extra", "plot")
    assert reqs("extra", "sweep") == ["pyarrow>=14"]
    assert reqs("extra", "dask") == ["dask[distributed]>=2024.1", "pyarrow>=14"]


def test_readme_lists_every_prerequisite() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    need = re.search(r'^rust-version = "(.+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    assert need is not None
    for what in (
        f"Rust >= {need[1]}",
        "python3-venv",
        "clippy",
        "network",
        "C compiler",
        "Python >= 3.10",
        "offline",
        "--extras plot",
    ):
        assert what in section, what
    assert os.access(SCRIPTS / "setup.sh", os.X_OK)


def test_existing_venv_without_stamps_is_kept_and_completed(tmp_path: Path) -> None:
    # a .venv made by an earlier set-up (no stamps): not thrown away, only completed
    t = Tree(tmp_path)
    (t.repo / ".venv" / "bin").mkdir(parents=True)
    shutil.copy2(t.bin / "venv-python", t.repo / ".venv" / "bin" / "python")
    _, _, calls = t.run()
    assert not any("-m venv" in c for c in calls)
    assert len(pip_calls(calls)) == 2 and builds(calls)
    _, _, calls = t.run()
    assert pip_calls(calls) == []


def test_broken_venv_is_made_again(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    (t.repo / ".venv" / "bin").mkdir(parents=True)
    (t.repo / ".venv" / "bin" / "python").write_text("#!/bin/sh\nexit 127\n")
    (t.repo / ".venv" / "bin" / "python").chmod(0o755)
    _, err, calls = t.run()
    assert "python3 -m venv .venv" in calls
    assert "making a new one" in err


def test_bad_arguments_exit_2_with_the_valid_ones(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    for args, msg in (
        (["--bogus"], "unknown argument '--bogus' (valid: --extras NAME[,NAME...], --help)"),
        (["--extras"], "--extras needs NAME[,NAME...]"),
        (["--extras", "../x"], "'../x' is not an extra name"),
    ):
        r = subprocess.run(
            ["bash", "scripts/setup.sh", *args],
            cwd=t.repo,
            env=t.env,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert not (t.repo / ".venv").exists()

"""Seconds-long smoke runs of the fuzz harnesses (fuzz/targets.py, fuzz/run.py).

The long runs are ``scripts/fuzz.sh SECONDS`` (see fuzz/README.md). Here every target's seed
inputs pass its checks, each target runs for about two seconds under hypothesis (fixed seed, no
database) and, when atheris is installed, under libFuzzer, with zero crashes; and the harness
itself is shown to report a planted contract violation, and to tolerate a listed known bug
only when asked (``fuzz/targets.py`` KNOWN_BUGS, empty while no bug is open).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
TARGET_NAMES = ("trace", "decode", "records")
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
SMOKE_SECONDS = 1.5
SUMMARY = re.compile(r"^fuzz (\w+) engine=(\w+) seed=(\d+) seconds=([\d.]+) examples=(\d+) "
                     r"rate=(\d+)/s crashes=(\d+)$", re.M)


def _load(name: str) -> ModuleType:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    if name in sys.modules:
        return sys.modules[name]
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


targets = _load("targets")
runner = _load("run")


def test_registry_matches_runner() -> None:
    assert tuple(targets.TARGETS) == TARGET_NAMES == runner.TARGET_NAMES


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_seed_inputs_pass(name: str) -> None:
    t = targets.TARGETS[name]
    seeds = t.seeds()
    assert len(seeds) >= 5
    for s in seeds:
        assert len(s) <= t.max_len or name == "trace"  # real captures exceed the fuzz max_len
        t.check(s)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_hypothesis_smoke(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.run_hypothesis(name, SMOKE_SECONDS, 1) == 0
    out = capsys.readouterr().out
    m = SUMMARY.search(out)
    assert m is not None, out
    assert m.group(1) == name and m.group(2) == "hypothesis"
    assert int(m.group(5)) > 0 and int(m.group(7)) == 0


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed (pip install atheris)")
@pytest.mark.parametrize("name", TARGET_NAMES)
def test_atheris_smoke(name: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    p = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), name, "--engine", "atheris", "--seconds",
         str(SMOKE_SECONDS), "--seed", "1", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    m = SUMMARY.search(p.stdout)
    assert p.returncode == 0 and m is not None, (p.stdout, p.stderr[-3000:])
    assert int(m.group(5)) > 100 and int(m.group(7)) == 0
    assert not list((tmp_path / "artifacts").glob("crash-*"))


def test_harness_reports_violations(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks are not vacuous: an undocumented exception escapes, a wrong value fails."""

    def boom(data: bytes) -> None:
        raise KeyError("planted")

    monkeypatch.setattr(targets.T, "parse_bytes", boom)
    with pytest.raises(KeyError, match="planted"):
        targets.check_trace(b"x-1 [000] 1.0: kvm_track_tsc: y\n")
    monkeypatch.undo()
    # a record whose read_cycles the reference computes differently would be caught
    raw = targets.records_seeds()[0]
    assert targets.read_cycles_ref(raw, 0) != targets.read_cycles_ref(raw, 1 << 40)
    with pytest.raises(targets.FuzzFailure):
        targets._require(False, "planted")


def test_known_bugs_are_recognised_only_when_tolerated(monkeypatch: pytest.MonkeyPatch) -> None:
    def planted(data: bytes) -> None:
        raise ValueError("planted known bug")

    monkeypatch.setattr(targets.T, "parse_bytes", planted)
    monkeypatch.setattr(targets, "KNOWN_BUGS", {"planted": ("planted known bug", "targets.py")})
    monkeypatch.setattr(targets, "known_hits", {})
    monkeypatch.setattr(targets, "tolerate_known", False)
    with pytest.raises(ValueError, match="planted"):
        targets.check_trace(b"x\n")
    monkeypatch.setattr(targets, "tolerate_known", True)
    targets.check_trace(b"x\n")
    assert targets.known_hits == {"planted": 1}
    # an unlisted ValueError is never tolerated
    monkeypatch.setattr(targets, "KNOWN_BUGS", {})
    with pytest.raises(ValueError, match="planted"):
        targets.check_trace(b"x\n")


def test_decode_harness_checks_independent_struct_decode() -> None:
    """check_decode compares the CLI's JSON with struct.unpack of the record's own hex."""
    good = {"type": "wall_clock", "version": 1, "sec": 2, "nsec": 3,
            "hex": "010000000200000003000000"}
    targets._check_decoded([good], None)
    with pytest.raises(targets.FuzzFailure):
        targets._check_decoded([{**good, "nsec": 4}], None)

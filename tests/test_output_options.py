"""Output options: ``-`` means stdout for every one of them (simulate's --json, --trace,
--perfetto, --plot; every command's --json), at most one of them per run; ``--json [PATH|-]``
on every command; simulate's progress line on a terminal stderr."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

SHORT = ("simulate", "--scenario", "nested", "--duration", "1", "--profile", "upstream")


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from kvmclock import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class _FakeStdout(io.TextIOWrapper):
    """A text stdout over a byte buffer, a terminal or not."""

    def __init__(self, tty: bool) -> None:
        self.raw_bytes = io.BytesIO()
        super().__init__(self.raw_bytes, encoding="utf-8")
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def data(self) -> bytes:
        self.flush()
        return self.raw_bytes.getvalue()


# ----------------------------------------------------------------------- '-' means stdout
def test_perfetto_dash_is_stdout(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(capsys, *SHORT, "--perfetto", "-")
    assert code == 0, err
    assert not (tmp_path / "-").exists()  # no file named '-'
    doc = json.loads(out)  # only the trace on stdout, no text report
    assert doc["traceEvents"] and "wrote" not in err


def test_trace_and_json_dash_is_stdout(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(capsys, *SHORT, "--trace", "-")
    assert code == 0, err
    assert "kvm_write_tsc_offset" in out and "wrote" not in err
    code, out, err = _main(capsys, *SHORT, "--json")  # no value: stdout as well
    assert code == 0, err
    assert json.loads(out)["runs"][0]["profile"] == "upstream"
    assert list(tmp_path.iterdir()) == []


def test_plot_dash_writes_png_bytes_to_stdout(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from kvmclock import cli

    monkeypatch.chdir(tmp_path)
    fake = _FakeStdout(tty=False)
    monkeypatch.setattr("sys.stdout", fake)
    assert cli.main([*SHORT, "--plot", "-"]) == 0
    assert fake.data().startswith(b"\x89PNG\r\n\x1a\n")
    assert not (tmp_path / "-").exists()


def test_plot_dash_refused_on_a_terminal(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmclock import cli, sim

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("simulated although the arguments are refused")

    monkeypatch.setattr(sim, "run_scenario", never)
    fake = _FakeStdout(tty=True)
    monkeypatch.setattr("sys.stdout", fake)
    assert cli.main([*SHORT, "--plot", "-"]) == 2
    err = capsys.readouterr().err
    assert "--plot - would write binary PNG data to the terminal" in err
    assert fake.data() == b""


@pytest.mark.parametrize(("argv", "named"), [
    (("--json", "-", "--trace", "-"), "--json - and --trace -"),
    (("--json", "--perfetto", "-"), "--json - and --perfetto -"),
    (("--trace", "-", "--plot", "-"), "--trace - and --plot -"),
    (("--json", "-", "--trace", "-", "--perfetto", "-"),
     "--json - and --trace - and --perfetto - would all write to stdout"),
])
def test_two_outputs_to_stdout_are_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  argv: tuple[str, ...], named: str) -> None:
    from kvmclock import sim

    monkeypatch.setattr(sim, "run_scenario", lambda *_a, **_k: pytest.fail("simulated"))
    code, out, err = _main(capsys, *SHORT, *argv)
    assert code == 2 and out == ""
    assert err.startswith("kvmclock simulate: ") and named in err and "stdout" in err


# ------------------------------------------------------------ --json [PATH|-] everywhere
@pytest.mark.parametrize("argv", [
    ("drift", "--tsc-khz", "1995311"),
    ("profiles",),
    ("profiles", "upstream"),
    ("scenarios",),
])
def test_json_alone_dash_and_path(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  argv: tuple[str, ...]) -> None:
    code, text, err = _main(capsys, *argv)
    assert code == 0, err
    code, out, err = _main(capsys, *argv, "--json")
    assert code == 0, err
    doc = json.loads(out)
    code, out, err = _main(capsys, *argv, "--json", "-")
    assert code == 0 and json.loads(out) == doc
    path = tmp_path / "out.json"
    code, out, err = _main(capsys, *argv, "--json", str(path))
    assert code == 0, err
    assert out == text  # the text still printed
    assert json.loads(path.read_text()) == doc
    code, out, err = _main(capsys, *argv, "--json", str(tmp_path / "no" / "x.json"))
    assert code == 2 and "--json" in err and "No such file or directory" in err


def test_profiles_json_swallowing_a_profile_name(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _out, err = _main(capsys, "profiles", "--json", "upstream")
    assert code == 2 and "kvmclock profiles upstream --json" in err
    assert not (tmp_path / "upstream").exists()


def test_verify_json_path(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmclock.real import capture, verify

    result: dict[str, Any] = {"ok": True, "relations": [], "profile": {"name": "upstream"}}
    monkeypatch.setattr(capture, "real_run", lambda _trace: (None, "no trace"))
    monkeypatch.setattr(verify, "verify_run", lambda *_a, **_k: result)
    monkeypatch.setattr(verify, "format_verify", lambda r: "verify report")
    path = tmp_path / "v.json"
    code, out, err = _main(capsys, "verify", "--json", str(path))
    assert code == 0, err
    doc = {"schema": "kvmclock.verify", "schema_version": 1, "ok": True,
           "profiles_matching": ["upstream"], "runs": [result]}
    assert out == "verify report\n" and json.loads(path.read_text()) == doc
    code, out, err = _main(capsys, "verify", "--json", "-")
    assert code == 0 and json.loads(out) == doc


# ------------------------------------------------------------------------------ progress
class _TtyStream(io.StringIO):
    def __init__(self, tty: bool = True) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class _Clock:
    """A wall clock that moves only when told (seconds)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_line_on_a_terminal() -> None:
    from kvmclock.cli.common import _Progress

    stream, clock = _TtyStream(), _Clock()
    p = _Progress(stream, "simulating nested, profile upstream", clock=clock,
                  delay_s=0.5, every_s=0.25)
    assert p.callback is not None
    p.update(100_000_000, 3_000_000_000)
    assert stream.getvalue() == ""  # a short run shows nothing
    clock.t += 0.6
    p.update(1_500_000_000, 3_000_000_000)
    # 1.5 simulated s in 0.6 wall s: 2.5x real time, 1.5 s left to simulate = 0.6 s of wall
    line = ("\rsimulating nested, profile upstream: 1.50 s of 3 s simulated (50%), "
            "2.5x real time, about 0.6 s left\033[K")
    assert stream.getvalue() == line
    clock.t += 0.1  # too soon: at most every 0.25 s
    p.update(1_600_000_000, 3_000_000_000)
    assert stream.getvalue() == line
    clock.t += 0.2
    p.update(3_000_000_000, 3_000_000_000)
    assert stream.getvalue().endswith(": 3.00 s of 3 s simulated (100%)\033[K")
    p.close()
    assert stream.getvalue().endswith("\r\033[K")  # erased at the end


def test_progress_silent_when_not_a_terminal() -> None:
    from kvmclock.cli.common import _Progress

    stream, clock = _TtyStream(tty=False), _Clock()
    with _Progress(stream, "x", clock=clock) as p:
        assert p.callback is None  # the run is not even cut into steps
        clock.t += 10
        p.update(1, 2)
    assert stream.getvalue() == ""


def test_run_is_the_same_with_progress() -> None:
    from kvmclock import sim

    seen: list[tuple[int, int]] = []
    plain = sim.run_scenario("nested", "upstream", duration_s=1)
    stepped = sim.run_scenario("nested", "upstream", duration_s=1,
                               progress=lambda now, dur: seen.append((now, dur)))
    assert stepped == plain
    assert seen[-1] == (1_000_000_000, 1_000_000_000)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(seen))
    assert len(seen) == 200


def test_simulate_shows_progress_on_a_terminal_stderr(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import functools

    from kvmclock import cli
    from kvmclock.cli import common, simulate

    clock = _Clock()

    def ticking() -> float:  # one second of wall time per reading
        clock.t += 1.0
        return clock.t

    monkeypatch.setattr(simulate, "_Progress", functools.partial(common._Progress,
                                                                 clock=ticking))
    err = _TtyStream()
    monkeypatch.setattr("sys.stderr", err)
    assert cli.main([*SHORT, "--profile", "upstream,gtod"]) == 0
    text = err.getvalue()
    assert "\rsimulating nested, profile upstream (1/2): " in text
    assert "\rsimulating nested, profile gtod (2/2): 1.00 s of 1 s simulated (100%)" in text
    assert text.endswith("\r\033[K")  # erased at the end
    out = capsys.readouterr().out
    assert "\r" not in out and "upstream" in out


def test_progress_time_left_units() -> None:
    from kvmclock.cli.common import _fmt_left

    assert [_fmt_left(s) for s in (0.64, 9.94, 42.4, 119.4, 720, 7199, 11_160)] == [
        "0.6 s", "9.9 s", "42 s", "119 s", "12 min", "120 min", "3.1 h"]

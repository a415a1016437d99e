"""The ``kvmclock`` command through its real entry points (``python -m kvmclock`` in a
subprocess, and the ``kvmclock`` console script when installed), plus the simulate renderers
on a run dict built from the documented run schema."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
from kvmclock import trace as T
from kvmclock.render.ftrace import trace_text
from kvmclock.render.perfetto import perfetto_trace
from kvmclock.render.text import describe_timeline, render_simulation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "trace")
S9_PIPE = os.path.join(DATA, "series-upstream-s9-trace_pipe.txt")
COMMANDS = ["simulate", "sweep", "scenarios", "scale", "decode", "trace", "host", "verify"]

# matplotlib is the optional extra "plot" (CI installs it); without it the plot tests check
# the install hint instead
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def run(*args: str, stdin: bytes | None = None, timeout: float = 300,
        exe: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = (exe or [sys.executable, "-m", "kvmclock"]) + list(args)
    p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, cwd=ROOT,
                       check=False)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(),
                                       p.stderr.decode())


def assert_usage_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, the line names the problem."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ---------------------------------------------------------------------------- generic


def test_version_and_help() -> None:
    p = run("--version")
    assert p.returncode == 0 and p.stdout.startswith("kvmclock ")
    p = run("--help")
    assert p.returncode == 0
    for c in COMMANDS:
        assert c in p.stdout
        h = run(c, "--help")
        assert h.returncode == 0, (c, h.stderr)
        assert "example" in h.stdout and f"kvmclock {c}" in h.stdout, c


def test_bad_arguments_one_line() -> None:
    assert_usage_error(run(), "a command is required", "simulate")
    assert_usage_error(run("frobnicate"), "invalid choice")
    assert_usage_error(run("simulate", "--seed", "x"), "seed")
    assert_usage_error(run("simulate", "--profile", "both2"), "profile")
    assert_usage_error(run("simulate", "--duration", "-1"), "duration")
    assert_usage_error(run("scale"), "--tsc-khz")
    assert_usage_error(run("scale", "--tsc-khz", "0"), "--tsc-khz", "1..")
    assert_usage_error(run("decode"), "HEX")
    assert_usage_error(run("trace"), "FILE")


def test_console_script() -> None:
    # the package is installed (the native module needs the build), so its console script
    # is next to this interpreter
    script = shutil.which("kvmclock", path=os.path.dirname(sys.executable))
    assert script is not None, f"no kvmclock console script next to {sys.executable}"
    exe = [script]
    p = run("--version", exe=exe)
    assert p.returncode == 0 and p.stdout.startswith("kvmclock ")
    p = run("trace", S9_PIPE, exe=exe)
    assert p.returncode == 0, p.stderr


# ---------------------------------------------------------------------------- trace


def test_trace_text_and_json() -> None:
    p = run("trace", S9_PIPE)
    assert p.returncode == 0, p.stderr
    assert "VM 20024 (by one task)" in p.stdout and "-6815369687214825" in p.stdout
    p = run("trace", S9_PIPE, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    for key in ("events", "skipped_lines", "by_event", "masterclock", "vms", "anomalies"):
        assert key in doc
    assert doc["events"] == 4 and doc["skipped_lines"] == 0
    assert doc["by_event"]["kvm_update_master_clock"] == 2
    assert [m["on"] for m in doc["masterclock"]] == [False, True]
    assert all(isinstance(m["time_ns"], int) for m in doc["masterclock"])
    with open(S9_PIPE, "rb") as f:
        p2 = run("trace", "-", "--json", stdin=f.read())
    assert json.loads(p2.stdout) == doc


def test_trace_bad_inputs(tmp_path: Any) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert_usage_error(run("trace", str(empty)), "empty")
    binary = tmp_path / "trace.dat"
    binary.write_bytes(b"\x17\x08\x44tracing6\x00\x00" + bytes(range(256)) * 8)
    assert_usage_error(run("trace", str(binary)), "binary")
    assert_usage_error(run("trace", str(tmp_path / "missing.txt")), "cannot read")
    assert_usage_error(run("trace", "-", stdin=b""), "empty")
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"hello\nworld\n\xff\xfe\n")
    p = run("trace", str(garbage), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["skipped_lines"] == 3


# ---------------------------------------------------------------------------- scale


def test_scale_json_recomputed() -> None:
    khz = 2933437
    p = run("scale", "--tsc-khz", str(khz), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    a = doc["tsc_to_ns"]
    mult, shift = a["tsc_to_system_mul"], a["tsc_shift"]
    # mult * 2**shift / 2**32 ns per cycle must be 10**6 / khz within the u32 mantissa's
    # precision (mult >= 2**31 after kvm_get_time_scale's normalisation)
    assert 2**31 <= mult < 2**32
    exact = 10**6 / khz
    assert abs(mult * 2.0**shift / 2**32 - exact) / exact < 2**-30
    back = (10**6 << 32) // mult
    back = back << -shift if shift < 0 else back >> shift
    assert a["pvclock_tsc_khz"] == back
    b = doc["ns_to_tsc"]
    assert abs(b["mult"] * 2.0 ** b["shift"] / 2**32 - khz / 10**6) / (khz / 10**6) < 2**-30
    c = doc["clocksource_tsc"]
    assert abs(c["mult"] / 2.0 ** c["shift"] - exact) / exact < 1e-6
    text = run("scale", "--tsc-khz", str(khz))
    assert text.returncode == 0 and f"{mult:#010x}" in text.stdout


def test_scale_tsc_scaling() -> None:
    p = run("scale", "--tsc-khz", "3000000", "--guest-khz", "1500000", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    by_vendor = {s["scaling"]: s for s in doc["tsc_scaling"]}
    for vendor, frac in (("vmx", 48), ("svm", 32)):
        s = by_vendor[vendor]
        assert s["frac_bits"] == frac
        assert s["ratio"] == (1500000 << frac) // 3000000  # exact: 1/2
        assert s["guest_tsc_khz"] == (3000000 * s["ratio"]) >> frac == 1500000
        assert s["accepted_by_set_tsc_khz"] is True and s["rule"] == "scaled"
    # KVM_SET_TSC_KHZ refuses khz >= max_guest_tsc_khz ((2**40 - 1) * 1 >> 32 = 255 on SVM)
    # before computing any ratio: the vCPU keeps the default one
    p = run("scale", "--tsc-khz", "1", "--guest-khz", "4294967295", "--vendor", "svm", "--json")
    (s,) = json.loads(p.stdout)["tsc_scaling"]
    assert s["ratio"] == 1 << 32 and s["accepted_by_set_tsc_khz"] is False
    assert "max_guest_tsc_khz=255" in s["refusal"]
    p = run("scale", "--tsc-khz", "3000000", "--ratio", "0.5", "--vendor", "svm", "--json")
    (s,) = json.loads(p.stdout)["tsc_scaling"]
    assert s["ratio"] == 1 << 31 and s["guest_tsc_khz"] == 1500000
    assert_usage_error(run("scale", "--tsc-khz", "3000000", "--ratio", "abc"), "--ratio")
    assert_usage_error(run("scale", "--tsc-khz", "1", "--ratio", "1", "--guest-khz", "1"),
                       "not both")


# ---------------------------------------------------------------------------- host / verify


@pytest.mark.parametrize("cmd", ["host", "verify"])
def test_real_commands_exit_codes(cmd: str) -> None:
    p = run(cmd, "--json", timeout=600)
    assert "Traceback" not in p.stderr
    if p.returncode == 3:
        assert len(p.stderr.strip().splitlines()) == 1 and "unavailable" in p.stderr
        return
    assert p.returncode in ((0,) if cmd == "host" else (0, 1)), p.stderr
    doc = json.loads(p.stdout)
    if cmd == "verify":
        assert (p.returncode == 0) == bool(doc["ok"])
    else:
        assert doc["kernel"] == os.uname().release


# ---------------------------------------------------------------------------- simulate renderers
# A run dict built from the documented run schema: not a model result.


def schema_run(profile: str) -> dict[str, Any]:
    def tl(*changes: tuple[int, bool]) -> list[dict[str, Any]]:
        return [{"t_ns": t, "on": on} for t, on in changes]

    stable_l2 = tl((0, False)) if profile == "gtod" else tl(
        (0, False), (1_000_000, True), (5_000_000_000, False))
    levels = []
    for lvl, name, cs in ((0, "host", "hpet"), (1, "L1 guest", "kvm-clock"),
                          (2, "L2 guest", "kvm-clock")):
        levels.append({
            "level": lvl, "name": name, "clocksource": cs,
            "masterclock": None if lvl == 2 else False,
            "pvclock_stable": None if lvl == 0 else False,
            "masterclock_timeline": [] if lvl == 2 else tl((0, True), (5_000_000_000, False)),
            "pvclock_stable_timeline": [] if lvl == 0 else (
                stable_l2 if lvl == 2 else tl((0, True), (5_000_000_000, False))),
            "masterclock_updates": 3 + lvl, "notifier_calls": 2500 if profile == "gtod" else 2,
            "gtod_copies": 2500 if profile == "gtod" else 0, "guest_backwards": 0,
            "max_cross_vcpu_skew_ns": None if lvl == 0 else 40 * lvl,
            "last_value_clamp_hits": 7 * lvl, "timekeeping_updates": 2500, "vcpus": 4 // (lvl or 1),
            "clock_definitions": {"max_abs_a_minus_b_ns": 3, "max_abs_a_minus_c_ns": 2,
                                  "max_abs_b_minus_c_ns": 1},
        })
    fields = T.fields_track_tsc(profile, 1, True, 1, 4, host_clock=1, host_clock_stable=True)
    return {
        "scenario": "nested", "seed": 0, "profile": profile, "params": {"duration_s": 10.0},
        "duration_ns": 10_000_000_000, "end_ns": 10_000_000_000, "stopped_early": False,
        "stop_reason": None, "levels": levels,
        "moments": [{"t_ns": 5_000_000_000, "level": 0,
                     "text": "watchdog marks tsc unstable; clocksource hpet"}],
        "samples": [{"t_ns": t, "level": 2, "kernel": "L2 guest", "skew_ns": 10 + t // 10**9,
                     "stable": t < 5 * 10**9} for t in range(0, 10**10, 10**9)],
        "livelock": None, "stats": {"events": 1000, "guest_reads": 500},
        "trace": [{"t_ns": 1_000_000, "level": 1, "comm": "qemu", "pid": 100, "cpu": 0,
                   "event": "kvm_track_tsc", "fields": fields},
                  {"t_ns": 1_000_500, "level": 1, "comm": "qemu", "pid": 100, "cpu": 0,
                   "event": "kvm_write_tsc_offset",
                   "fields": T.fields_write_tsc_offset(1, 0, -5)}],
    }


def test_render_text_from_schema_run() -> None:
    runs = [schema_run("gtod"), schema_run("series")]
    text = render_simulation("nested", "desc", 0, runs, [0.5, 0.5])
    assert "profile gtod" in text and "profile series" in text
    assert "L2 pvclock stable bit never set" in text
    assert "set from 0.001 s, lost at 5.000 s" in text
    assert "watchdog marks tsc unstable" in text
    assert "2,000 events/s" in text
    assert describe_timeline([{"t_ns": 0, "on": True}], None) == "set from 0.000 s to the end"


def test_render_ftrace_and_perfetto_from_schema_run() -> None:
    run_ = schema_run("series")
    text = trace_text(run_, "nested", 0)
    res = T.parse_text(text)
    assert res.skipped == [] and [r.level for r in res.records] == [1, 1]
    assert res.records[1].flags == "d..." and res.records[1].data is not None
    assert T.to_signed64(res.records[1].data["next_tsc_offset"]) == -5
    doc = perfetto_trace([schema_run("gtod"), run_])
    assert doc["displayTimeUnit"] == "ns"
    for e in doc["traceEvents"]:
        assert {"name", "ph", "ts", "pid", "tid"} <= set(e)
    phs = {e["ph"] for e in doc["traceEvents"]}
    assert {"M", "C", "i"} <= phs
    vcpu_threads = {(e["pid"], e["tid"]) for e in doc["traceEvents"]
                    if e["ph"] == "i" and e.get("cat") == "ftrace"}
    assert (2001, 2) in vcpu_threads  # series (2nd run) L1, vCPU 1 -> tid 2


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib not installed (optional extra 'plot')")
def test_render_plot_from_schema_run(tmp_path: Any) -> None:
    from kvmclock.render.plot import write_plot

    out = tmp_path / "p.png"
    write_plot([schema_run("gtod"), schema_run("series")], str(out), "schema")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- simulate e2e

RUN_KEYS = {"scenario", "seed", "profile", "params", "duration_ns", "end_ns", "stopped_early",
            "stop_reason", "levels", "moments", "samples", "livelock", "stats"}
LEVEL_KEYS = {"level", "clocksource", "masterclock", "pvclock_stable", "masterclock_timeline",
              "pvclock_stable_timeline", "masterclock_updates", "notifier_calls", "gtod_copies",
              "guest_backwards", "max_cross_vcpu_skew_ns"}


def _short_args() -> list[str]:
    """--duration 2 when the nested scenario takes a duration (keeps the tests quick)."""
    from kvmclock import sim

    params = set(getattr(sim.SCENARIOS["nested"], "params", {}) or {})
    if params & {"duration_s", "duration", "duration_ns"}:
        return ["--duration", "6"]
    return []


def test_scenarios_list() -> None:
    from kvmclock import sim

    p = run("scenarios")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == len(sim.SCENARIOS)
    for name in ("nested", "tsc-sync", "unstable-tsc", "set-clock", "patch09-hang"):
        assert any(line.split()[0] == name for line in lines), name


def test_simulate_json_schema_and_determinism(tmp_path: Any) -> None:
    short = _short_args()
    p1 = run("simulate", *short, "--seed", "7", "--json", "-")
    assert p1.returncode == 0, p1.stderr
    doc = json.loads(p1.stdout)
    assert doc["schema"] == "kvmclock.simulate" and doc["schema_version"] == 1
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert doc["scenario"] == "nested" and doc["seed"] == 7
    from kvmclock import sim

    assert doc["description"] == sim.SCENARIOS["nested"].description
    assert [r["profile"] for r in doc["runs"]] == ["gtod", "series", "upstream"]
    assert [r["switches"]["kvmclock_base"] for r in doc["runs"]] == ["boot", "boot", "raw"]
    for r in doc["runs"]:
        assert RUN_KEYS <= set(r) and "trace" not in r
        assert [lv["level"] for lv in r["levels"]] == list(range(len(r["levels"])))
        assert r["levels"][0]["pvclock_stable"] is None
        for lv in r["levels"]:
            assert LEVEL_KEYS <= set(lv)
            for key in ("masterclock_timeline", "pvclock_stable_timeline"):
                for e in lv[key]:
                    assert set(e) == {"t_ns", "on"}
                    assert isinstance(e["t_ns"], int) and isinstance(e["on"], bool)
    out = tmp_path / "run.json"
    p2 = run("simulate", *short, "--seed", "7", "--json", str(out))
    assert p2.returncode == 0, p2.stderr
    assert json.loads(out.read_text()) == doc
    assert "profile gtod" in p2.stdout and "Headline" in p2.stdout


def test_simulate_default_text() -> None:
    p = run("simulate", *_short_args())
    assert p.returncode == 0, p.stderr
    assert "profile gtod" in p.stdout and "profile series" in p.stdout
    assert "Key moments" in p.stdout and "Traceback" not in p.stderr


def test_simulate_trace_perfetto_plot(tmp_path: Any) -> None:
    short = _short_args()
    tr = tmp_path / "sim.txt"
    pf = tmp_path / "sim.perfetto.json"
    p = run("simulate", *short, "--profile", "series", "--trace", str(tr), "--perfetto", str(pf))
    assert p.returncode == 0, p.stderr
    res = T.parse_text(tr.read_text())
    assert res.skipped == [] and res.records
    assert {r.level for r in res.records} <= {0, 1, 2, 3, 4}
    assert all(r.fmt in (None, "after") for r in res.records)  # series prints "stable %u"
    tp = run("trace", str(tr), "--json")
    assert tp.returncode == 0 and json.loads(tp.stdout)["events"] == len(res.records)
    doc = json.loads(pf.read_text())
    assert doc["displayTimeUnit"] == "ns" and doc["traceEvents"]
    for e in doc["traceEvents"]:
        assert {"name", "ph", "ts", "pid", "tid"} <= set(e)
    assert any(e["ph"] == "C" and e["name"] == "pvclock stable" for e in doc["traceEvents"])
    png = tmp_path / "sim.png"
    p = run("simulate", *short, "--plot", str(png))
    if HAVE_MPL:
        assert p.returncode == 0, p.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert_usage_error(p, "--plot needs matplotlib", "kvmclock[plot]")
        assert not png.exists()


def test_simulate_bad_arguments() -> None:
    assert_usage_error(run("simulate", "--scenario", "no-such"), "unknown scenario", "nested")
    assert_usage_error(run("simulate", "--json", "-", "--trace", "-", "--profile", "gtod"),
                       "stdout")


def test_decode_happy_path_is_in_test_decode() -> None:
    # decode has its own module (tests/test_decode.py); here only the wiring
    p = run("decode", "--help")
    assert p.returncode == 0 and "12 bytes" in p.stdout


class _Tty:
    """A stream that says it is a terminal (the spinner only draws on one)."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        return None


def test_spinner_only_on_a_terminal_and_only_when_slow() -> None:
    import time

    from kvmclock.cli import _spinner

    tty = _Tty(True)
    with _spinner("work", tty, delay_s=0.0):  # type: ignore[arg-type]
        time.sleep(0.25)
    assert "work ..." in tty.text and tty.text.endswith("\r\033[K")
    quick = _Tty(True)
    with _spinner("work", quick, delay_s=5.0):  # type: ignore[arg-type]
        pass
    assert quick.text == ""
    pipe = _Tty(False)
    with _spinner("work", pipe, delay_s=0.0):  # type: ignore[arg-type]
        time.sleep(0.15)
    assert pipe.text == ""


def test_simulate_params_and_trace_per_profile(tmp_path: Any) -> None:
    from kvmclock import sim

    params = set(sim.SCENARIOS["nested"].params)
    extra = ["--param", "l2_vcpus=1"] if "l2_vcpus" in params else []
    tr = tmp_path / "both.txt"
    p = run("simulate", *_short_args(), "--vcpus", "2", *extra, "--trace", str(tr),
            "--json", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    for r in doc["runs"]:
        if "l1_vcpus" in params:
            assert r["params"]["l1_vcpus"] == 2 and r["levels"][1]["vcpus"] == 2
        if extra:
            assert r["params"]["l2_vcpus"] == 1
    for prof in ("gtod", "series"):
        res = T.parse_text((tmp_path / f"both-{prof}.txt").read_text())
        assert res.skipped == [] and res.records
        want = "before" if prof == "gtod" else "after"
        assert {r.fmt for r in res.records if r.fmt} == {want}
    assert not tr.exists()
    assert_usage_error(run("simulate", "--param", "nope=1"), "no parameter", "nope")
    assert_usage_error(run("simulate", "--param", "novalue"), "KEY=VALUE")


def test_simulate_headline_of_spec_section_6() -> None:
    """The README's main command shows the nested scenario's headline: under gtod L2 never gets
    the stable bit; under series it has it, then loses it when L0's TSC goes bad."""
    p = run("simulate", "--json", "-")
    assert p.returncode == 0, p.stderr
    runs = {r["profile"]: r for r in json.loads(p.stdout)["runs"]}
    l2 = {prof: r["levels"][2]["pvclock_stable_timeline"] for prof, r in runs.items()}
    assert not any(e["on"] for e in l2["gtod"])
    states = [e["on"] for e in l2["series"]]
    assert True in states and states[-1] is False
    text = run("simulate").stdout
    assert "L2 pvclock stable bit never set" in text
    assert "L2 pvclock stable bit set from" in text


# ---------------------------------------------------------------------------- exit codes
# In process through kvmclock.cli.main(argv): every class of failure and its exit code.


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from kvmclock import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# the parser takes each command's function from its module (kvmclock.cli.scenarios), so a
# replacement goes there
SCENARIOS_COMMAND = "kvmclock.cli.scenarios.cmd_scenarios"


def _boom(exc: BaseException) -> Any:
    def command(_args: Any) -> int:
        raise exc

    return command


def test_exit_0_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(capsys, "scenarios")
    assert (code, err) == (0, "") and "nested" in out


def test_exit_1_only_for_a_relation_that_did_not_hold(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmclock.real import capture, verify

    result: dict[str, Any] = {"ok": False, "relations": [], "profile": {"name": "upstream"}}
    monkeypatch.setattr(capture, "real_run", lambda _trace: (None, "no trace"))
    monkeypatch.setattr(verify, "verify_run", lambda *_a, **_k: result)
    code, out, err = _main(capsys, "verify", "--json")
    assert code == 1, err
    assert json.loads(out)["ok"] is False
    result["ok"] = True
    code, out, err = _main(capsys, "verify", "--json")
    assert code == 0, err
    # several profiles: one capture judged under each, and the ones it matches named
    def judged(_real: Any, **kw: Any) -> dict[str, Any]:
        name = kw["profile"].name
        return {"ok": name == "upstream", "relations": [],
                "profile": {"name": name, "kernel": kw["profile"].kernel}}

    monkeypatch.setattr(verify, "verify_run", judged)
    monkeypatch.setattr(verify, "format_verify", lambda r: f"report {r['profile']['name']}")
    code, out, err = _main(capsys, "verify", "--profile", "gtod,upstream")
    assert code == 1, err
    assert out.rstrip().endswith("this capture matches: upstream")
    code, out, err = _main(capsys, "verify", "--profile", "gtod,series", "--json")
    assert code == 1 and json.loads(out)["profiles_matching"] == []


def test_exit_2_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(capsys, "scale", "--tsc-khz", "0")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--tsc-khz" in err and "internal error" not in err


def test_exit_3_missing_real_resource(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmclock.errors import RealResourceUnavailable
    from kvmclock.real import host

    def missing(*_a: Any, **_k: Any) -> Any:
        raise RealResourceUnavailable("/dev/kvm: No such file or directory")

    monkeypatch.setattr(host, "host_report", missing)
    code, out, err = _main(capsys, "host")
    assert code == 3 and out == ""
    assert err == "kvmclock: real resource unavailable: /dev/kvm: No such file or directory\n"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("bad value deep inside"),
                                 OverflowError("too big"), ZeroDivisionError("x / 0"),
                                 TypeError("wrong type"), KeyError("k")],
                         ids=lambda e: type(e).__name__)
def test_exit_70_unexpected_exception_is_an_internal_error(
        exc: Exception, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Any exception a command does not expect is a bug: exit 70 (EX_SOFTWARE), one line that
    says so and how to report it, no traceback. ValueError & co. raised inside a command are
    no longer taken for bad arguments (exit 2): the arguments were validated before."""
    from kvmclock import cli

    monkeypatch.setattr(SCENARIOS_COMMAND, _boom(exc))
    code, out, err = _main(capsys, "scenarios")
    assert code == 70 == cli.EXIT_SOFTWARE
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kvmclock: internal error (a bug in kvmclock): "
                               f"{type(exc).__name__}: ")
    assert "please report it with the command line and `--debug` output" in lines[0]
    assert out == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where: str, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SCENARIOS_COMMAND, _boom(RuntimeError("boom in scenarios")))
    argv = ["--debug", "scenarios"] if where == "before" else ["scenarios", "--debug"]
    code, _out, err = _main(capsys, *argv)
    assert code == 70
    assert err.startswith("Traceback (most recent call last):")
    assert "in command\n" in err and "RuntimeError: boom in scenarios" in err
    assert err.splitlines()[-1].startswith("kvmclock: internal error")


def test_debug_is_quiet_when_nothing_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(capsys, "--debug", "scenarios")
    assert (code, err) == (0, "") and "nested" in out
    code, _out, err = _main(capsys, "--debug", "scale", "--tsc-khz", "0")
    assert code == 2 and "Traceback" not in err  # usage errors stay one line


def test_exit_130_interrupted(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SCENARIOS_COMMAND, _boom(KeyboardInterrupt()))
    code, _out, err = _main(capsys, "scenarios")
    assert (code, err) == (130, "kvmclock: interrupted\n")


def test_help_and_version_return_0_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = _main(capsys, "--help")
    assert code == 0
    # the epilog documents every exit code
    assert "decode --strict" in out  # the other command that exits 1
    for line in ("0    ok", "1    a check failed: verify", "2    bad arguments",
                 "3    a real resource", "70   internal error", "130  interrupted"):
        assert line in out, line
    code, out, _err = _main(capsys, "--version")
    assert code == 0 and out.startswith("kvmclock ")


def test_detected_livelock_is_a_result_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """patch09-hang: the model detects the spin, the run stops there and reports it; the
    command succeeds (exit 0) with the livelock in the JSON."""
    code, out, err = _main(capsys, "simulate", "--scenario", "patch09-hang", "--profile",
                           "series", "--json", "-")
    assert code == 0, err
    (run_,) = json.loads(out)["runs"]
    ll = run_["livelock"]
    assert ll is not None and ll["spins"] > 0
    assert run_["end_ns"] < run_["duration_ns"]  # stopped at the livelock
    # under gtod the seed's loop does not exist: no livelock
    code, out, err = _main(capsys, "simulate", "--scenario", "patch09-hang", "--profile",
                           "gtod", "--json", "-")
    assert code == 0 and json.loads(out)["runs"][0]["livelock"] is None


def test_livelock_escaping_a_command_is_an_internal_error(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmclock import sim
    from kvmclock.errors import LivelockDetected

    def spin(*_a: Any, **_k: Any) -> Any:
        raise LivelockDetected("read section never ends")

    monkeypatch.setattr(sim, "run_scenario", spin)
    code, _out, err = _main(capsys, "simulate", "--profile", "gtod")
    assert code == 70 and "internal error" in err and "LivelockDetected" in err


def test_plot_without_matplotlib_exits_2_before_simulating(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any) -> None:
    from kvmclock import sim

    # a None entry in sys.modules makes `import matplotlib` raise ImportError
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("simulated although --plot cannot be written")

    monkeypatch.setattr(sim, "run_scenario", never)
    png = tmp_path / "p.png"
    code, out, err = _main(capsys, "simulate", "--plot", str(png))
    assert code == 2 and out == ""
    # both ways to get it: the checkout's setup script and the package's extra
    assert err == ("kvmclock: --plot needs matplotlib: in a checkout: ./scripts/setup.sh "
                   "--extras plot; from PyPI: pip install 'kvmclock[plot]'\n")
    assert not png.exists()


def test_bad_arguments_are_found_before_simulating(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any) -> None:
    from kvmclock import sim

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("simulated although the arguments are bad")

    monkeypatch.setattr(sim, "run_scenario", never)
    cases = [
        (["--param", "hz=0"], "hz=0 out of range (15..10000)"),
        (["--scenario", "patch09-hang", "--param", "fault=nope"], "fault='nope' invalid"),
        (["--scenario", "tsc-sync", "--vcpus", "65"], "vcpus=65 out of range (1..64)"),
        (["--json", str(tmp_path / "no" / "r.json")], "No such file or directory"),
        (["--profile", "gtod", "--trace", str(tmp_path)], "Is a directory"),
        (["--perfetto", str(tmp_path / "f.txt" / "x")], "Not a directory"),
    ]
    (tmp_path / "f.txt").write_text("")
    for argv, needle in cases:
        code, out, err = _main(capsys, "simulate", *argv)
        assert code == 2 and out == "", (argv, err)
        assert err.count("\n") == 1 and needle in err, (argv, err)

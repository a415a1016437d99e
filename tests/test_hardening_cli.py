"""Bad-input catalogue of the ``kvmclock`` command (issue 7): every bad invocation exits 2 with
exactly one line on stderr and no traceback; odd but legal trace files (huge, truncated, mixed
formats) are summarised with the bad lines counted, never a crash.

Most cases call :func:`kvmclock.cli.main` in process (fast); a few representative ones run the
real entry point ``python -m kvmclock`` in a subprocess. The cases tests/test_cli.py and
tests/test_decode.py already cover (no command, ``frobnicate``, ``--seed x``, ``--duration -1``,
empty/binary/missing trace file, ``abc`` as hex...) are not repeated here.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import kvmclock
import pytest
from kvmclock import cli
from kvmclock import trace as T

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def call(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str,
         stdin: bytes = b"") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", _Stdin(stdin))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_exit2(code: int, out: str, err: str, *needles: str) -> str:
    assert code == 2, (code, out[-500:], err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "internal error" not in lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def run_module(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "kvmclock", *args], input=stdin,
                       capture_output=True, timeout=300, cwd=ROOT, check=False)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(errors="replace"),
                                       p.stderr.decode(errors="replace"))


def pv_line(t_ns: int, vcpu: int, version: int, *, flags: str | None = "....",
            raw: bool = False) -> str:
    fields = T.fields_pvclock_update(vcpu, version, 0x1000 + version, 0x2000 + version,
                                     0xF3D0E5A3, -1, 1)
    return T.format_line("qemu-kvm", 4242, vcpu, t_ns, "kvm_pvclock_update", fields,
                         flags=flags, raw_timestamp=raw)


# ------------------------------------------------------------------------------ argument errors

BAD_ARGV = [
    # unknown options (top level and per command)
    (["--frobnicate"], ["unrecognized arguments", "--frobnicate"]),
    (["simulate", "--frob"], ["unrecognized arguments", "--frob"]),
    (["scale", "--tsc-khz", "1000", "--mhz", "1"], ["unrecognized arguments"]),
    (["decode", "00", "--nope"], ["unrecognized arguments", "--nope"]),
    (["trace", "x.txt", "--yaml"], ["unrecognized arguments", "--yaml"]),
    (["scenarios", "extra"], ["unrecognized arguments", "extra"]),
    (["host", "--all"], ["unrecognized arguments"]),
    # an option without its value
    (["simulate", "--seed"], ["--seed", "expected one argument"]),
    (["simulate", "--scenario"], ["--scenario", "expected one argument"]),
    (["simulate", "--profile"], ["--profile", "expected one argument"]),
    (["simulate", "--duration"], ["--duration", "expected one argument"]),
    (["scale", "--tsc-khz"], ["--tsc-khz", "expected one argument"]),
    (["decode", "--tsc"], ["--tsc", "expected one argument"]),
    # a missing positional argument
    (["decode", "--json"], ["HEX"]),
    (["trace", "--json"], ["FILE"]),
    # --seed out of range or not an integer
    (["simulate", "--seed", "-1"], ["seed", "0..9223372036854775807"]),
    (["simulate", "--seed", str(2**63)], ["seed", "0..9223372036854775807"]),
    (["simulate", "--seed", "1.5"], ["seed must be an integer", "1.5"]),
    (["simulate", "--seed", ""], ["seed must be an integer"]),
    (["simulate", "--seed", "0x"], ["seed must be an integer"]),
    (["simulate", "--seed", "1" * 5000], ["seed"]),
    # --profile outside its choices
    (["simulate", "--profile", "GTOD"], ["profile", "'GTOD' invalid", "gtod, series, upstream"]),
    (["simulate", "--profile", "both"], ["profile", "'both' invalid", "gtod, series, upstream"]),
    (["simulate", "--profile", ""], ["--profile", "empty name", "gtod, series, upstream"]),
    (["simulate", "--profile", "gtod,,series"], ["--profile", "empty name"]),
    (["simulate", "--profile", "gtod,gtod"], ["--profile", "names a profile twice"]),
    # --set: unknown switch, bad value, no '='
    (["simulate", "--set", "nope=1"], ["unknown switch 'nope'", "user_set_tsc"]),
    (["simulate", "--set", "user_set_tsc=maybe"], ["switch user_set_tsc", "valid: on, off"]),
    (["simulate", "--set", "kvmclock_base=mono"], ["switch kvmclock_base", "valid: boot, raw"]),
    (["simulate", "--set", "user_set_tsc"], ["expected SWITCH=VALUE"]),
    (["simulate", "--profile", "gtod", "--set", "kvm_host_clock=timekeeper"],
     ["kvm_host_clock=timekeeper needs clocksource_change_chain=on"]),
    # --duration: zero, not finite, too long, not a number
    (["simulate", "--duration", "0"], ["duration", "(0, 31536000]"]),
    (["simulate", "--duration", "nan"], ["duration", "(0, 31536000]"]),
    (["simulate", "--duration", "inf"], ["duration", "(0, 31536000]"]),
    (["simulate", "--duration", "-0.5"], ["duration"]),
    (["simulate", "--duration", "1e9"], ["duration", "(0, 31536000]"]),
    (["simulate", "--duration", "5s"], ["duration must be seconds", "5s"]),
    # other ranges and choices
    (["simulate", "--vcpus", "0"], ["vcpus", "1..1024"]),
    (["simulate", "--scenario", "nope"], ["unknown scenario", "nested", "tsc-sync"]),
    (["simulate", "--json", "-", "--trace", "-"], ["stdout"]),
    (["scale", "--tsc-khz", str(2**32)], ["--tsc-khz", "1..4294967295"]),
    (["scale", "--tsc-khz", "1000", "--vendor", "arm"], ["--vendor", "invalid choice"]),
    (["scale", "--tsc-khz", "1000", "--ratio", "one"], ["--ratio"]),
    (["scale", "--tsc-khz", "1000", "--ratio", "1/0"], ["--ratio"]),
    (["scale", "--tsc-khz", "1000", "--ratio", "2", "--guest-khz", "5"], ["not both"]),
    (["decode", "00" * 32, "--tsc", "-1"], ["--tsc", "0..18446744073709551615"]),
    (["decode", "00" * 32, "--tsc", str(2**64)], ["--tsc", "0..18446744073709551615"]),
    (["decode", "00" * 32, "--type", "tsc"], ["--type", "invalid choice"]),
    # (a guest kHz whose ratio would not fit 64 bits is not a usage error: KVM_SET_TSC_KHZ
    # refuses it at max_guest_tsc_khz first; tests/test_scale_cli.py)
    (["scale", "--tsc-khz", "3000000", "--ratio", str(2**64)], ["--ratio", "1..2**64-1"]),
    (["scale", "--tsc-khz", "3000000", "--ratio", "0"], ["--ratio", "1..2**64-1"]),
]


@pytest.mark.parametrize(("argv", "needles"), BAD_ARGV, ids=[" ".join(a)[:60] for a, _ in BAD_ARGV])
def test_bad_invocation_exits_2_one_line(argv: list[str], needles: list[str],
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = call(capsys, monkeypatch, *argv)
    assert_one_line_exit2(code, out, err, *needles)
    assert out == ""


# ------------------------------------------------------------------------------ odd hex

ODD_HEX = [
    (["0x0"], b"", ["odd number of hex digits (1)"]),
    (["00", "0"], b"", ["odd number of hex digits (3)"]),
    (["00" * 32 + "\n" + "0" * 7], b"", ["line 2", "odd number of hex digits (7)"]),
    (["-"], b"0" * 63 + b"\n", ["odd number of hex digits (63)"]),
    (["-"], b"00 00\r\n000\r\n", ["line 2", "odd number"]),
    (["00" * 32, "--type", "wallclock"], b"", ["32 bytes", "multiple of 12"]),
    (["00" * 7], b"", ["7 bytes"]),
    (["0xg0"], b"", ["not hex"]),
    (["-"], "é00".encode(), ["not hex"]),
    # (a tsc_shift of 64 or more either way is no usage error any more: the record is shown
    # with the field flagged, exit 1 only with --strict: tests/test_decode_fields.py)
]


@pytest.mark.parametrize(("argv", "stdin", "needles"), ODD_HEX,
                         ids=[f"odd-hex-{i}" for i in range(len(ODD_HEX))])
def test_bad_hex_exits_2_one_line(argv: list[str], stdin: bytes, needles: list[str],
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = call(capsys, monkeypatch, "decode", *argv, stdin=stdin)
    line = assert_one_line_exit2(code, out, err, *needles)
    assert line.startswith("kvmclock decode:"), line


# ------------------------------------------------------------------------------ files


def test_unreadable_and_special_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text(pv_line(10**9, 0, 2) + "\n")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    cases = {
        str(tmp_path): "Is a directory",
        str(plain / "child"): "Not a directory",
        str(loop): "Too many levels of symbolic links",
        str(dangling): "No such file or directory",
        "/proc/self/mem": "Input/output error",  # opens, but reading offset 0 fails (EIO)
    }
    for path, reason in cases.items():
        code, out, err = call(capsys, monkeypatch, "trace", path)
        assert_one_line_exit2(code, out, err, "cannot read trace file", path, reason)


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: mode 000 does not stop root")
def test_file_without_read_permission(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "secret.txt"
    f.write_text(pv_line(10**9, 0, 2) + "\n")
    f.chmod(0)
    code, out, err = call(capsys, monkeypatch, "trace", str(f))
    assert_one_line_exit2(code, out, err, "cannot read trace file", "Permission denied")


def test_unwritable_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """--json/--trace into a directory or a missing directory: exit 2, one line."""
    for target in (str(tmp_path), str(tmp_path / "missing" / "out.json")):
        code, out, err = call(capsys, monkeypatch, "simulate", "--scenario", "set-clock",
                              "--profile", "series", "--duration", "0.2", "--json", target)
        assert_one_line_exit2(code, out, err, "cannot write", target)


def test_whitespace_only_trace_is_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "blank.txt"
    f.write_bytes(b" \n\t\r\n\n")
    code, out, err = call(capsys, monkeypatch, "trace", str(f))
    assert_one_line_exit2(code, out, err, "empty")


def test_huge_binary_trace_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """20 MiB of bytes that never form a text line (a trace.dat-like file)."""
    block = bytes(range(128, 256)) + b"\x00" * 128  # no newline, invalid UTF-8 and NULs
    f = tmp_path / "huge.dat"
    f.write_bytes(block * (20 * MIB // len(block)))
    assert f.stat().st_size == 20 * MIB
    code, out, err = call(capsys, monkeypatch, "trace", str(f))
    assert_one_line_exit2(code, out, err, "binary", str(20 * MIB))


def test_huge_text_trace_is_summarised(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """20 MiB of legal trace text (and a garbage line every 1000): every line accounted for."""
    lines: list[str] = []
    size = 0
    version = 0
    while size < 20 * MIB:
        i = len(lines)
        if i % 1000 == 999:
            line = "garbage " * 8
        else:
            version += 2
            line = pv_line(10**9 + 1000 * i, i % 4, version & 0xFFFFFFFF)
        lines.append(line)
        size += len(line) + 1
    f = tmp_path / "huge.txt"
    f.write_text("\n".join(lines) + "\n")
    garbage = len(lines) // 1000
    code, out, err = call(capsys, monkeypatch, "trace", str(f), "--json")
    assert code == 0, err
    import json

    doc = json.loads(out)
    assert doc["events"] == len(lines) - garbage
    assert doc["skipped_lines"] == garbage
    assert sum(v["pvclock_updates"] for vm in doc["vms"] for v in vm["vcpus"]) == (
        len(lines) - garbage)


def test_truncated_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture cut in the middle of its last line: the whole lines count, the cut is skipped."""
    text = "".join(pv_line(10**9 + k * 10**6, k % 2, 2 * k + 2) + "\n" for k in range(20))
    import json

    for cut in (len(text) - 1 - 5, len(text) - 1 - 40, len(text) - 1 - 100):
        f = tmp_path / f"cut{cut}.txt"
        f.write_text(text[:cut])
        code, out, err = call(capsys, monkeypatch, "trace", str(f), "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["events"] == 19 and doc["skipped_lines"] == 1, (cut, doc["skipped_lines"])
    # cut inside a multi-byte UTF-8 character of a comm: still one skipped line
    f = tmp_path / "cut-utf8.txt"
    f.write_bytes(text.encode() + "qémù-1 [000] 1.0: kvm_".encode()[:5])
    code, out, err = call(capsys, monkeypatch, "trace", str(f), "--json")
    assert code == 0, err
    assert json.loads(out)["skipped_lines"] == 1


def test_mixed_format_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """before/after formats, with and without the latency column, level column, counter
    timestamps, trace-cmd headers, CRLF, perf script lines and a binary line, in one file."""
    import json

    w = T.format_line
    lines = [
        "# tracer: nop",
        "cpus=2",
        w("qemu", 10, 0, 1_000_000_000, "kvm_update_master_clock",
          T.fields_update_master_clock_before(True, 1, True)),
        w("qemu", 10, 0, 1_100_000_000, "kvm_update_master_clock",
          T.fields_update_master_clock_after(False, False, True), flags=None),
        w("qemu", 10, 1, 1_200_000_000, "kvm_track_tsc",
          T.fields_track_tsc_before(1, True, 2, 2, 1), flags="d..1.", level=1),
        w("qemu", 10, 1, 1_300_000_000, "kvm_track_tsc",
          T.fields_track_tsc_after(1, True, 2, 2, True), level=2) + "\r",
        w("qemu", 10, 1, 117471684343752, "kvm_write_tsc_offset",
          T.fields_write_tsc_offset(1, 0, -5), raw_timestamp=True),
        "qemu 10 [001] 1.400000: kvm:kvm_pvclock_update: "
        + T.fields_pvclock_update(1, 4, 0x10, 0x20, 0xF3D0E5A3, -1, 1),
        "CPU 1 is empty",
        "this is not a trace line",
        w("qemu", 10, 0, 1_500_000_000, "sched_switch", "prev_comm=a next_comm=b"),
    ]
    data = "\n".join(lines).encode() + b"\n\xff\xfe\x00binary\n"
    f = tmp_path / "mixed.txt"
    f.write_bytes(data)
    code, out, err = call(capsys, monkeypatch, "trace", str(f), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["events"] == 7
    assert doc["skipped_lines"] == 2
    assert doc["by_event"]["kvm_update_master_clock"] == 2
    assert doc["by_event"]["kvm_track_tsc"] == 2
    assert doc["timestamp_unit"] == "mixed"
    assert doc["formats"] == {"before": 2, "after": 2}


def test_line_with_a_5000_digit_number_is_skipped(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "digits.txt"
    f.write_text(pv_line(10**9, 0, 2) + "\n" + "a-1 [000] " + "9" * 5000 + ".5: kvm_x: y\n")
    code, _out, err = call(capsys, monkeypatch, "trace", str(f), "--json")
    assert code == 0, err


def test_pvclock_update_with_out_of_range_shift_is_summarised(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    fields = T.fields_pvclock_update(0, 2, 0x10, 0x20, 0xF3D0E5A3, 71, 1)
    f = tmp_path / "shift71.txt"
    f.write_text(pv_line(10**9, 0, 2) + "\n"
                 + T.format_line("qemu", 1, 0, 2 * 10**9, "kvm_pvclock_update", fields) + "\n")
    code, _out, err = call(capsys, monkeypatch, "trace", str(f), "--json")
    assert code == 0, err


# ------------------------------------------------------------------------------ real entry point

SUBPROCESS_CASES = [
    (["simulate", "--frob"], None, ["unrecognized arguments"]),
    (["simulate", "--duration", "nan"], None, ["duration"]),
    (["trace", "/"], None, ["cannot read trace file", "Is a directory"]),
    (["trace", "/proc/self/mem"], None, ["cannot read trace file"]),
    (["decode", "-"], b"0x0\n", ["odd number of hex digits"]),
    (["trace", "-"], b"\x00\xff" * 50_000, ["binary"]),
]


@pytest.mark.parametrize(("argv", "stdin", "needles"), SUBPROCESS_CASES,
                         ids=[" ".join(a) for a, _, _ in SUBPROCESS_CASES])
def test_python_m_kvmclock_bad_input(argv: list[str], stdin: bytes | None,
                                     needles: list[str]) -> None:
    p = run_module(*argv, stdin=stdin)
    assert_one_line_exit2(p.returncode, p.stdout, p.stderr, *needles)


def test_native_contract_is_present() -> None:
    """The decode path relies on the native record classes being importable."""
    assert hasattr(kvmclock, "PvclockVcpuTimeInfo") and hasattr(kvmclock, "PvclockWallClock")


def test_scale_guest_beyond_max_guest_tsc_khz_is_refused(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """4294967295 kHz on a 65536 kHz VMX host: the ratio would fit 64 bits, but
    KVM_SET_TSC_KHZ refuses khz >= max_guest_tsc_khz (capped at 0x7fffffff) first."""
    code, out, err = call(capsys, monkeypatch, "scale", "--tsc-khz", "65536", "--guest-khz",
                          "4294967295", "--vendor", "vmx", "--json")
    assert code == 0, err
    import json

    (s,) = json.loads(out)["tsc_scaling"]
    assert s["rule"] == "refused" and s["max_guest_tsc_khz"] == 0x7FFFFFFF
    assert s["ratio"] == 1 << 48


def test_scale_ratio_svm_cannot_program_has_no_guest_record(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--ratio 2**64-1 on SVM is above SVM_TSC_RATIO_MAX: set_tsc_khz never programs it, the
    vCPU keeps the default ratio and the report has no guest record."""
    import json

    code, out, err = call(capsys, monkeypatch, "scale", "--tsc-khz", "4294967295", "--ratio",
                          str(2**64 - 1), "--vendor", "svm", "--json")
    assert code == 0, err
    (s,) = json.loads(out)["tsc_scaling"]
    assert s["guest_tsc_khz"] == 4294967295 and s["ratio"] == 1 << 32
    assert s["guest_record"] is None and s["accepted_by_set_tsc_khz"] is False


def test_decode_record_whose_khz_is_beyond_u32(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """mul 0x80000000, shift -34: pvclock_tsc_khz = (10**6 << 32) / 2**31 << 34 kHz, far beyond
    the u32 kHz KVM derives records from, so there is no get_time_scale comparison; the record
    still decodes (exit 0)."""
    import json
    import struct

    raw = struct.pack("<IIQQIbBH", 2, 0, 0, 0, 0x80000000, -34, 0, 0)
    code, out, err = call(capsys, monkeypatch, "decode", raw.hex(), "--json")
    assert code == 0, err
    (r,) = json.loads(out)["records"]
    assert r["tsc_khz"] == ((10**6 << 32) // 0x80000000) << 34
    assert r["matches_get_time_scale_of_tsc_khz"] is None


#: each command with the arguments it requires
_REQUIRED = {"simulate": [], "profiles": [], "scenarios": [], "scale": ["--tsc-khz", "1"],
             "drift": ["--tsc-khz", "1"], "decode": ["00"], "trace": ["-"], "host": [],
             "verify": []}


@pytest.mark.parametrize("command", sorted(_REQUIRED))
def test_unrecognized_arguments_point_at_the_commands_help(
        command: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """argparse reports extra arguments from the top parser; the line names the command's own
    help, not ``kvmclock --help``."""
    code, out, err = call(capsys, monkeypatch, command, *_REQUIRED[command],
                          "--no-such-option-xyz")
    assert_one_line_exit2(code, out, err, f"kvmclock {command}: unrecognized arguments: "
                          f"--no-such-option-xyz (see 'kvmclock {command} --help')")
    code, out, err = call(capsys, monkeypatch, "--no-such-option-xyz")
    assert_one_line_exit2(code, out, err, "(see 'kvmclock --help')")


@pytest.mark.parametrize("argv", [["profiles"], ["trace", "-"]])
def test_json_write_failure_names_the_option(argv: list[str],
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A --json file that cannot be written (here under /proc, which the early check may let
    through) names the option, as the early check does: "cannot write PATH (--json): ..."."""
    target = "/proc/kvmclock-no-such-file/out.json" if os.geteuid() else "/proc/kvmclock-x"
    code, _out, err = call(capsys, monkeypatch, *argv, "--json", target,
                          stdin=(pv_line(10**9, 0, 2) + "\n").encode())
    assert code == 2 and err.count("\n") == 1
    assert f"cannot write {target} (--json): " in err


def test_dump_json_names_its_option(tmp_path: Path) -> None:
    from kvmclock.cli.common import _dump_json

    with pytest.raises(cli.UsageError, match=r"cannot write .*out\.json \(--json\): "):
        _dump_json({}, str(tmp_path / "missing" / "out.json"))

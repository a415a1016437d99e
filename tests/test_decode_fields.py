"""``kvmclock decode`` shows every field of a record, flags the invalid ones in words, exits
non-zero for them only under ``--strict``, prints seconds exactly, names unknown flag bits once,
and says which record kind it assumed when a length fits both. Expected texts are written out
by hand (struct pvclock_vcpu_time_info and pvclock_wall_clock, arch/x86/include/asm/
pvclock-abi.h)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import jsonschema
from kvmclock import trace as T
from kvmclock.decode import exact_seconds, known_flag_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(ROOT, "python", "kvmclock", "schemas", "decode.schema.json")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmclock", "decode", *args], input=stdin,
                          text=True, capture_output=True, timeout=120, cwd=ROOT, check=False)


def pvclock_hex(version: int, tsc: int, system_time: int, mul: int, shift: int, flags: int,
                pad0: int = 0, pad: bytes = b"\0\0") -> str:
    # u32 version, u32 pad0, u64 tsc_timestamp, u64 system_time, u32 mul, s8 shift, u8 flags,
    # u8 pad[2]; little endian
    return struct.pack("<IIQQIbB2s", version, pad0, tsc, system_time, mul, shift, flags,
                       pad).hex()


# tsc_shift 127 (byte 28 = 0x7f), flags 0xf9 = TSC_STABLE (0x1) + unknown bits 0xf8,
# system_time 9999999999999999 ns = 9999999.999999999 s (a float prints 10000000.000000000)
BAD = pvclock_hex(2, 0x1C4E1E2F0A, 9_999_999_999_999_999, 0xA3D70A3D, 127, 0xF9)
BAD_TEXT = """\
record 0: pvclock_vcpu_time_info
  version           2
  pad0              0
  tsc_timestamp     121569685258 (0x1c4e1e2f0a) cycles
  system_time       9999999999999999 ns (9999999.999999999 s)
  tsc_to_system_mul 0xa3d70a3d
  tsc_shift         127   INVALID: must be an integer from -63 to 63 (pvclock_scale_delta \
shifts the 64-bit TSC delta by it, and a shift by 64 or more is undefined; kvmclock cannot be \
read from this record)
  flags             0xf9 TSC_STABLE, unknown bits 0xf8
  pad               0000
  TSC frequency     - (tsc_shift is invalid)
  kvmclock at tsc_timestamp: - (tsc_shift is invalid)
1 invalid field: tsc_shift of record 0 (exit status 0; --strict would exit 1)
"""
# with --strict the records are the same, only the last line says which exit status
BAD_TEXT_STRICT = BAD_TEXT.replace("(exit status 0; --strict would exit 1)",
                                   "(--strict: exit status 1)")


def test_bad_shift_shows_every_field() -> None:
    # before: exit 2 and only "tsc_shift 127 is outside -63..63 (...)"
    assert BAD == ("02000000" "00000000" "0a2f1e4e1c000000" "ffffc06ff2862300" "3d0ad7a3" "7f"
                   "f9" "0000")
    p = run(BAD)
    assert p.returncode == 0, p.stderr
    assert p.stdout == BAD_TEXT
    assert "..=" not in p.stdout and ".." not in p.stdout.replace("...", "")
    assert p.stdout.count("0xf8") == 1  # unknown bits named once


def test_strict_exits_1_and_still_prints() -> None:
    p = run(BAD, "--strict")
    assert p.returncode == 1
    assert p.stdout == BAD_TEXT_STRICT
    # named like every other command's stderr line: "kvmclock <command>: ..."
    assert p.stderr.strip() == "kvmclock decode: 1 invalid field (--strict: exit status 1)"
    ok = run(pvclock_hex(2, 1, 2, 0xA3D70A3D, -1, 1), "--strict")
    assert ok.returncode == 0 and "invalid" not in ok.stdout


def test_bad_shift_json() -> None:
    p = run(BAD, "--json", "--tsc", "5")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    jsonschema.Draft202012Validator(json.load(open(SCHEMA))).validate(doc)
    assert doc["invalid_fields"] == 1
    (r,) = doc["records"]
    assert (r["version"], r["tsc_timestamp_cycles"], r["system_time_ns"],
            r["tsc_to_system_mul"], r["tsc_shift"], r["flags"]) == (
                2, 121569685258, 9_999_999_999_999_999, 0xA3D70A3D, 127, 0xF9)
    assert r["system_time_s_text"] == "9999999.999999999"
    assert (r["flag_names"], r["unknown_flag_bits"]) == (["TSC_STABLE"], 0xF8)
    (bad,) = r["invalid"]
    assert (bad["field"], bad["value"], bad["valid"]) == ("tsc_shift", 127,
                                                         "an integer from -63 to 63")
    assert r["kvmclock_ns_at_tsc_timestamp"] is None and r["kvmclock_ns_at_tsc"] is None
    assert r["tsc_cycles"] == 5 and r["tsc_khz"] is None
    assert bytes.fromhex(r["hex"]) == bytes.fromhex(BAD)


def test_exact_seconds() -> None:
    assert exact_seconds(9_999_999_999_999_999) == "9999999.999999999"
    assert exact_seconds(0) == "0.000000000"
    assert exact_seconds(1) == "0.000000001"
    assert exact_seconds(2**64 - 1) == "18446744073.709551615"
    assert exact_seconds(-1_500_000_000) == "-1.500000000"
    # the record path too: u64 max ns
    p = run(pvclock_hex(0, 0, 2**64 - 1, 0, 0, 0))
    assert "18446744073709551615 ns (18446744073.709551615 s)" in p.stdout


def test_flag_names() -> None:
    assert known_flag_names(0) == ([], 0)
    assert known_flag_names(7) == (["TSC_STABLE", "GUEST_STOPPED", "COUNTS_FROM_ZERO"], 0)
    assert known_flag_names(0x8A) == (["GUEST_STOPPED"], 0x88)
    p = run(pvclock_hex(2, 0, 0, 0xA3D70A3D, -1, 0x08))
    assert "  flags             0x8 none, unknown bits 0x8\n" in p.stdout
    assert p.stdout.count("unknown") == 1
    p = run(pvclock_hex(2, 0, 0, 0xA3D70A3D, -1, 0))
    assert "  flags             0x0 none\n" in p.stdout


def test_ambiguous_length_says_what_was_assumed() -> None:
    # 96 bytes = 3 x 32 = 8 x 12
    rec = pvclock_hex(2, 0x10, 0x20, 0xA3D70A3D, -1, 1)
    p = run(rec * 3)
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0]
    assert first == ("96 bytes fit 3 pvclock_vcpu_time_info records (32 bytes) or 8 "
                     "pvclock_wall_clock records (12 bytes): read as pvclock_vcpu_time_info; "
                     "give --type wallclock to read wall clocks")
    assert p.stdout.count("record ") == 3
    w = run(rec * 3, "--type", "wallclock")
    assert w.stdout.count(": pvclock_wall_clock") == 8 and "fit" not in w.stdout
    j = json.loads(run(rec * 3, "--json").stdout)
    assert j["assumption"] == {"assumed": "pvclock", "bytes": 96, "pvclock_records": 3,
                               "wall_clock_records": 8, "choose_with": "--type wallclock"}
    # 32 or 12 bytes alone fit one kind only: nothing to say
    assert json.loads(run(rec, "--json").stdout)["assumption"] is None
    assert json.loads(run("00" * 12, "--json").stdout)["assumption"] is None


def test_wall_clock_exact_and_invalid_nsec() -> None:
    ok = struct.pack("<III", 4, 1_700_000_000, 123).hex()
    p = run(ok)
    assert p.stdout == (
        "record 0: pvclock_wall_clock\n"
        "  version 4\n"
        "  sec     1700000000\n"
        "  nsec    123\n"
        "  time    1700000000.000000123 s since the epoch (2023-11-14T22:13:20.000000123+00:00)\n")
    bad = struct.pack("<III", 5, 10, 1_500_000_000).hex()
    p = run(bad)
    assert p.returncode == 0
    # 10 s + 1.5 s = 11.500000000 s; version 5 is odd
    assert p.stdout.startswith(
        "record 0: pvclock_wall_clock\n"
        "  version 5 (odd: update in progress)\n"
        "  sec     10\n"
        "  nsec    1500000000   INVALID: must be below 1000000000 (less than one second) (")
    assert "  time    11.500000000 s since the epoch (nsec is invalid)\n" in p.stdout
    assert run(bad, "--strict").returncode == 1


def test_trace_line_with_bad_shift() -> None:
    line = T.format_line("vmm", 5, 0, 10**9, "kvm_pvclock_update",
                         T.fields_pvclock_update(3, 2, 0x10, 0x20, 0xA3D70A3D, -100, 1))
    p = run("-", "--json", stdin=line + "\n")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    jsonschema.Draft202012Validator(json.load(open(SCHEMA))).validate(doc)
    (r,) = doc["records"]
    assert (r["line"], r["vcpu_id"], r["time_ns"], r["tsc_shift"]) == (1, 3, 10**9, -100)
    assert [b["field"] for b in r["invalid"]] == ["tsc_shift"]
    # 0x9c = -100 as s8 at byte 28
    assert r["hex"][56:58] == "9c"
    assert run("-", "--strict", stdin=line + "\n").returncode == 1


def test_notes_for_odd_version_padding_and_zero_mul() -> None:
    p = run(pvclock_hex(3, 0, 0, 0, 0, 0, pad0=1, pad=b"\x01\x00"))
    assert "  pad0              1\n" in p.stdout and "  pad               0100\n" in p.stdout
    assert "note: version is odd" in p.stdout
    assert "note: padding is not zero" in p.stdout
    assert "note: tsc_to_system_mul is 0" in p.stdout
    assert p.returncode == 0 and "invalid field" not in p.stdout


# A kvm_pvclock_update line as arch/x86/kvm/trace.h prints it (its only TP_printk form; no
# padding fields): 0x1c4e1e2f0a = 121569685258, 0x3b9aca00 = 1000000000.
TRACE_LINE = ("CPU 0/KVM-4321 [000] ..... 10.000006: kvm_pvclock_update: vcpu_id 0, pvclock { "
              "version 2, tsc_timestamp 0x1c4e1e2f0a, system_time 0x3b9aca00, "
              "tsc_to_system_mul 0xa3d70a3d, tsc_shift -1, flags 0x1 }\n")


def run_stdin(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmclock", "decode", "-", *args], input=stdin,
                          text=True, capture_output=True, timeout=120, check=False)


def test_trace_line_padding_is_not_in_the_trace() -> None:
    p = run_stdin(TRACE_LINE)
    assert p.returncode == 0, p.stderr
    assert "  pad0              - (not in the trace)\n" in p.stdout
    assert "  pad               - (not in the trace)\n" in p.stdout
    assert "  tsc_timestamp     121569685258 (0x1c4e1e2f0a) cycles\n" in p.stdout
    j = run_stdin(TRACE_LINE, "--json")
    (rec,) = json.loads(j.stdout)["records"]
    assert rec["pad0"] is None and rec["pad"] is None
    # the hex: version 2, zero pad0, the fields little-endian, zero pad
    assert rec["hex"] == ("02000000" "00000000" "0a2f1e4e1c000000" "00ca9a3b00000000"
                          "3d0ad7a3" "ff" "01" "0000")


def test_no_valid_trace_line_shows_the_expected_form() -> None:
    # a line with pad0 is no kernel's (TP_STRUCT__entry has no padding field): not read
    bad = TRACE_LINE.replace("version 2,", "version 2, pad0 0,")
    p = run_stdin(bad)
    assert p.returncode == 2
    line = p.stderr.strip()
    assert line.startswith("kvmclock decode: no valid kvm_pvclock_update line in the input")
    assert ("kvm_pvclock_update: vcpu_id 0, pvclock { version 2, tsc_timestamp 0x1c4e1e2f0a, "
            "system_time 0x3b9aca00, tsc_to_system_mul 0xa3d70a3d, tsc_shift -1, flags 0x1 }"
            ) in line
    assert "no pad0/pad field" in line

"""``kvmclock decode``: 32-byte pvclock_vcpu_time_info and 12-byte pvclock_wall_clock records
(arch/x86/include/asm/pvclock-abi.h) from hex or kvm_pvclock_update trace lines."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
from kvmclock import trace as T
from kvmclock.cli import UsageError, _split_records, parse_hex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "kvmclock", *args], input=stdin,
                       capture_output=True, timeout=120, cwd=ROOT, check=False)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(),
                                       p.stderr.decode())


def assert_usage_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def pvclock_bytes(version: int, tsc: int, system_time: int, mul: int, shift: int,
                  flags: int) -> bytes:
    # u32 version, u32 pad, u64 tsc_timestamp, u64 system_time, u32 mul, s8 shift, u8 flags,
    # u8 pad[2]; little endian
    return struct.pack("<IIQQIbB2x", version, 0, tsc, system_time, mul, shift, flags)


RECORDS = [
    (2, 0x1C4E1E2F0A, 0x3B9ACA00, 0xA3D70A3D, -1, 1),
    (7, 2**64 - 1, 123456789, 0xC53756F3, 2, 0x7),
    (0, 0, 0, 0, 0, 0),
]


# ---------------------------------------------------------------------------- in-process


def test_parse_hex_spellings() -> None:
    raw = bytes(range(32))
    plain = raw.hex()
    spaced = " ".join(f"{b:02x}" for b in raw)
    prefixed = " ".join(f"0x{b:02X}" for b in raw)
    lines = plain[:20] + "\n" + plain[20:]
    assert parse_hex(plain) == [raw]
    assert parse_hex(spaced) == [raw]
    assert parse_hex(prefixed) == [raw]
    assert b"".join(parse_hex(lines)) == raw
    assert parse_hex("0x" + plain + ", ") == [raw]
    with pytest.raises(UsageError, match="odd number of hex digits \\(63\\)"):
        parse_hex(plain[:-1])
    with pytest.raises(UsageError, match="not hex"):
        parse_hex("zz")


def test_split_records() -> None:
    a, b = bytes(32), bytes(12)
    assert _split_records([a + a], "auto") == [("pvclock", a), ("pvclock", a)]
    assert _split_records([b + b], "auto") == [("wallclock", b), ("wallclock", b)]
    assert _split_records([a, b], "auto") == [("pvclock", a), ("wallclock", b)]
    assert _split_records([a * 3], "wallclock") == [("wallclock", b)] * 8
    with pytest.raises(UsageError, match="31 bytes"):
        _split_records([bytes(31)], "auto")
    with pytest.raises(UsageError, match="12 bytes is not a multiple of 32"):
        _split_records([b], "pvclock")


# ---------------------------------------------------------------------------- subprocess


def _expected_khz(mul: int, shift: int) -> int | None:
    if mul == 0:
        return None
    khz = (10**6 << 32) // mul
    return khz << -shift if shift < 0 else khz >> shift


def test_decode_pvclock_records_json() -> None:
    blob = b"".join(pvclock_bytes(*r) for r in RECORDS)
    p = run("decode", blob.hex(), "--json", "--tsc", str(0x1C4E1E2F0A + 2000))
    assert p.returncode == 0, p.stderr
    recs = json.loads(p.stdout)["records"]
    assert len(recs) == len(RECORDS)
    for got, (ver, tsc, st, mul, shift, flags) in zip(recs, RECORDS, strict=True):
        assert got["type"] == "pvclock"
        assert (got["version"], got["tsc_timestamp_cycles"], got["system_time_ns"],
                got["tsc_to_system_mul"], got["tsc_shift"], got["flags"]) == (
                    ver, tsc, st, mul, shift, flags)
        assert got["version_odd"] == bool(ver & 1)
        assert got["kvmclock_ns_at_tsc_timestamp"] == st
        assert got["tsc_khz"] == _expected_khz(mul, shift)
        assert got["flag_names"] == T.flag_names(flags)  # flags 1, 7, 0: no unknown bits
    # kvmclock at tsc_timestamp + 2000 with shift -1: st + ((2000 >> 1) * mul >> 32)
    first = recs[0]
    assert first["kvmclock_ns_at_tsc"] == 0x3B9ACA00 + ((1000 * 0xA3D70A3D) >> 32)
    text = run("decode", blob.hex())
    assert text.returncode == 0 and "TSC_STABLE" in text.stdout


def test_decode_wall_clock_and_mixed_lines_from_stdin() -> None:
    wc = struct.pack("<III", 4, 1_700_000_000, 123)
    pv = pvclock_bytes(*RECORDS[0])
    text = f"0x{wc.hex()}\n{' '.join(f'{b:02x}' for b in pv)}\n".encode()
    p = run("decode", "-", "--json", stdin=text)
    assert p.returncode == 0, p.stderr
    w, r = json.loads(p.stdout)["records"]
    assert (w["type"], w["version"], w["sec"], w["nsec"]) == ("wall_clock", 4, 1_700_000_000,
                                                              123)
    assert w["utc"].startswith("2023-11-14T22:13:20")
    assert r["type"] == "pvclock" and r["system_time_ns"] == RECORDS[0][2]


def test_decode_trace_lines() -> None:
    line = T.format_line("vmm", 5, 0, 10**9, "kvm_pvclock_update",
                         T.fields_pvclock_update(3, *RECORDS[0]))
    noise = "vmm-5 [000] .... 1.000000: kvm_exit: vcpu 0 reason HLT\n"
    p = run("decode", "-", "--json", stdin=(noise + line + "\n").encode())
    assert p.returncode == 0, p.stderr
    (rec,) = json.loads(p.stdout)["records"]
    assert rec["vcpu_id"] == 3 and rec["line"] == 2
    assert bytes.fromhex(rec["hex"]) == pvclock_bytes(*RECORDS[0])


@pytest.mark.parametrize(
    ("args", "stdin", "needles"),
    [
        (["abc"], None, ["odd number of hex digits (3)"]),
        (["00" * 31], None, ["31 bytes"]),
        (["00" * 33], None, ["33 bytes"]),
        (["00" * 12, "--type", "pvclock"], None, ["12 bytes", "multiple of 32"]),
        (["-"], b"", ["empty input"]),
        (["-"], b"   \n\n", ["empty input"]),
        (["-"], b"\x00\x01\x02\x03", ["binary"]),
        (["-"], b"\xff\xfe\xfd", ["not text"]),
        (["xyz!"], None, ["not hex"]),
        (["-"], b"x kvm_pvclock_update: garbage\n", ["no valid kvm_pvclock_update"]),
        # (a bad tsc_shift is no longer a usage error: every field is shown and the shift
        # flagged; tests/test_decode_fields.py)
    ],
)
def test_decode_bad_input(args: list[str], stdin: bytes | None, needles: list[str]) -> None:
    assert_usage_error(run("decode", *args, stdin=stdin), *needles)

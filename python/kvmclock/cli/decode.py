"""``kvmclock decode``: decode pvclock (32-byte) and wall clock (12-byte) records."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from kvmclock.cli.common import EXIT_OK, U32_MAX, _int_arg
from kvmclock.errors import UsageError

PVCLOCK_SIZE = 32
WALL_CLOCK_SIZE = 12
_HEX_TOKEN = re.compile(r"(?:0[xX])?([0-9a-fA-F]*)")


def parse_hex(text: str) -> list[bytes]:
    """Hex text to byte strings, one per non-empty line. Spaces, commas, newlines and ``0x``
    prefixes (per token) are allowed. The digits are the bytes in memory order."""
    chunks = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        digits = []
        for tok in re.split(r"[\s,]+", line.strip()):
            if not tok:
                continue
            m = _HEX_TOKEN.fullmatch(tok)
            if m is None:
                raise UsageError(f"decode: line {lineno}: {tok[:40]!r} is not hex")
            digits.append(m.group(1))
        joined = "".join(digits)
        if not joined:
            continue
        if len(joined) % 2:
            raise UsageError(
                f"decode: line {lineno}: odd number of hex digits ({len(joined)}); "
                "every byte needs two digits"
            )
        chunks.append(bytes.fromhex(joined))
    return chunks


def _split_records(chunks: list[bytes], kind: str) -> list[tuple[str, bytes]]:
    """Cut the input into (kind, 32- or 12-byte record) pieces."""
    pieces = _cut_records(chunks, kind)
    for i, (k, raw) in enumerate(pieces):
        if k == "pvclock":
            _check_tsc_shift(int.from_bytes(raw[28:29], "little", signed=True), f"record {i}")
    return pieces


def _cut_records(chunks: list[bytes], kind: str) -> list[tuple[str, bytes]]:
    sizes = {"pvclock": PVCLOCK_SIZE, "wallclock": WALL_CLOCK_SIZE}
    if kind == "auto" and len(chunks) > 1 and all(len(c) in sizes.values() for c in chunks):
        return [("pvclock" if len(c) == PVCLOCK_SIZE else "wallclock", c) for c in chunks]
    data = b"".join(chunks)
    n = len(data)
    if kind == "auto":
        if n % PVCLOCK_SIZE == 0:
            kind = "pvclock"
        elif n % WALL_CLOCK_SIZE == 0:
            kind = "wallclock"
        else:
            raise UsageError(
                f"decode: {n} bytes is not a whole number of pvclock_vcpu_time_info (32 bytes) "
                f"or pvclock_wall_clock (12 bytes) records"
            )
    size = sizes[kind]
    if n % size:
        raise UsageError(f"decode: {n} bytes is not a multiple of {size} ({kind} records)")
    return [(kind, data[i : i + size]) for i in range(0, n, size)]


# pvclock_scale_delta shifts a u64 by tsc_shift: 64 or more either way is undefined in C, and
# the native record refuses it; every other byte pattern of the 32 bytes is a valid record.
TSC_SHIFT_MAX = 63


def _check_tsc_shift(shift: int, where: str) -> None:
    if not -TSC_SHIFT_MAX <= shift <= TSC_SHIFT_MAX:
        raise UsageError(
            f"decode: {where}: tsc_shift {shift} is outside -{TSC_SHIFT_MAX}..{TSC_SHIFT_MAX} "
            "(pvclock_scale_delta would shift a u64 by 64 or more)"
        )


def _pvclock_entry(info: Any, tsc: int | None) -> dict[str, Any]:
    import kvmclock
    from kvmclock.trace import flag_names

    rec: dict[str, Any] = {
        "type": "pvclock",
        "version": int(info.version),
        "tsc_timestamp": int(info.tsc_timestamp),
        "system_time": int(info.system_time),
        "tsc_to_system_mul": int(info.tsc_to_system_mul),
        "tsc_shift": int(info.tsc_shift),
        "flags": int(info.flags),
    }
    rec["flag_names"] = flag_names(rec["flags"])
    rec["version_odd"] = bool(rec["version"] & 1)
    rec["tsc_khz"] = (
        int(kvmclock.pvclock_tsc_khz(tsc_to_system_mul=rec["tsc_to_system_mul"],
                                     tsc_shift=rec["tsc_shift"]))
        if rec["tsc_to_system_mul"]
        else None
    )
    rec["kvmclock_ns_at_tsc_timestamp"] = int(info.read_cycles(rec["tsc_timestamp"]))
    if tsc is not None:
        rec["tsc"] = tsc
        rec["kvmclock_ns_at_tsc"] = int(info.read_cycles(tsc))
    if rec["tsc_khz"] and rec["tsc_khz"] <= U32_MAX:
        # does mul/shift equal what KVM derives from that kHz (kvm_guest_time_update)? (a kHz
        # beyond u32 cannot be KVM's: its TSC frequencies are u32 kHz)
        shift, mult = kvmclock.get_time_scale(scaled_hz=10**9, base_hz=rec["tsc_khz"] * 1000)
        rec["matches_get_time_scale_of_tsc_khz"] = (
            mult == rec["tsc_to_system_mul"] and shift == rec["tsc_shift"]
        )
    return rec


def decode_records(pieces: list[tuple[str, bytes]], tsc: int | None) -> list[dict[str, Any]]:
    """Decode raw records with the native ABI classes (``PvclockVcpuTimeInfo``,
    ``PvclockWallClock``)."""
    import datetime

    import kvmclock

    out: list[dict[str, Any]] = []
    for i, (kind, raw) in enumerate(pieces):
        if kind == "pvclock":
            rec = _pvclock_entry(kvmclock.PvclockVcpuTimeInfo.from_bytes(raw), tsc)
        else:
            wc = kvmclock.PvclockWallClock.from_bytes(raw)
            rec = {
                "type": "wall_clock",
                "version": int(wc.version),
                "sec": int(wc.sec),
                "nsec": int(wc.nsec),
                "version_odd": bool(int(wc.version) & 1),
            }
            try:
                rec["utc"] = datetime.datetime.fromtimestamp(
                    rec["sec"], tz=datetime.timezone.utc
                ).isoformat()
            except (OverflowError, OSError, ValueError):
                rec["utc"] = None
        rec = {"index": i, **rec, "hex": raw.hex()}
        out.append(rec)
    return out


def decode_trace_lines(text: str, tsc: int | None) -> list[dict[str, Any]]:
    """Records from ``kvm_pvclock_update`` lines (other lines are ignored)."""
    import kvmclock
    from kvmclock.trace import parse_text

    out: list[dict[str, Any]] = []
    for rec in parse_text(text).records:
        if rec.event != "kvm_pvclock_update" or rec.data is None:
            continue
        d = rec.data
        _check_tsc_shift(d["tsc_shift"], f"line {rec.line_no}")
        info = kvmclock.PvclockVcpuTimeInfo(
            version=d["version"], tsc_timestamp=d["tsc_timestamp"],
            system_time=d["system_time"], tsc_to_system_mul=d["tsc_to_system_mul"],
            tsc_shift=d["tsc_shift"], flags=d["flags"],
        )
        entry = {"index": len(out), "line": rec.line_no, "vcpu_id": d["vcpu_id"],
                 "timestamp": rec.timestamp, **_pvclock_entry(info, tsc),
                 "hex": info.to_bytes().hex()}
        out.append(entry)
    return out


def format_decoded(records: list[dict[str, Any]]) -> str:
    """Text of decoded records."""
    out = []
    for r in records:
        where = f" (line {r['line']}, vCPU {r['vcpu_id']})" if "line" in r else ""
        if r["type"] == "pvclock":
            khz = "-" if r["tsc_khz"] is None else f"{r['tsc_khz']} kHz"
            odd = " (odd: update in progress)" if r["version_odd"] else ""
            out.append(f"record {r['index']}: pvclock_vcpu_time_info{where}")
            out.append(f"  version           {r['version']}{odd}")
            out.append(f"  tsc_timestamp     {r['tsc_timestamp']} ({r['tsc_timestamp']:#x})")
            out.append(f"  system_time       {r['system_time']} ns "
                       f"({r['system_time'] / 1e9:.9f} s)")
            out.append(f"  tsc_to_system_mul {r['tsc_to_system_mul']:#010x}")
            out.append(f"  tsc_shift         {r['tsc_shift']}")
            out.append(f"  flags             {r['flags']:#x} "
                       f"{'|'.join(r['flag_names']) or '-'}")
            extra = ""
            if "matches_get_time_scale_of_tsc_khz" in r:
                extra = (" (mul/shift = get_time_scale of it)"
                         if r["matches_get_time_scale_of_tsc_khz"]
                         else " (mul/shift differ from get_time_scale of it)")
            out.append(f"  TSC frequency     {khz}{extra}")
            out.append(f"  kvmclock at tsc_timestamp: {r['kvmclock_ns_at_tsc_timestamp']} ns")
            if "kvmclock_ns_at_tsc" in r:
                out.append(f"  kvmclock at TSC {r['tsc']}: {r['kvmclock_ns_at_tsc']} ns")
        else:
            odd = " (odd: update in progress)" if r["version_odd"] else ""
            out.append(f"record {r['index']}: pvclock_wall_clock")
            out.append(f"  version {r['version']}{odd}")
            out.append(f"  sec {r['sec']} nsec {r['nsec']} ({r['utc'] or 'out of range'})")
    return "\n".join(out)


def cmd_decode(args: argparse.Namespace) -> int:
    if args.input == ["-"]:
        raw = sys.stdin.buffer.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("decode: stdin is not text (give hex digits or trace lines)") \
                from None
        if "\0" in text:
            raise UsageError("decode: stdin is binary (NUL bytes); give hex digits")
    else:
        text = " ".join(args.input)
    if not text.strip():
        raise UsageError("decode: empty input: give hex bytes, '-' for stdin, or trace lines")
    # parse_hex, _split_records and decode_trace_lines reject bad input (UsageError) before
    # any record is built; what they accept decodes
    if "kvm_pvclock_update" in text:
        records = decode_trace_lines(text, args.tsc)
        if not records:
            raise UsageError("decode: no valid kvm_pvclock_update line in the input")
    else:
        records = decode_records(_split_records(parse_hex(text), args.type), args.tsc)
    print(json.dumps({"records": records}, indent=2) if args.json
          else format_decoded(records))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock decode``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "decode", help="decode pvclock (32-byte) and wall clock (12-byte) records",
        description="Decode pvclock_vcpu_time_info (32 bytes) and pvclock_wall_clock "
        "(12 bytes) records from hex (bytes in memory order; spaces, commas, newlines and 0x "
        "allowed; one record per line or several concatenated) or from kvm_pvclock_update "
        "trace lines. '-' reads stdin.",
        epilog="examples:\n"
        "  kvmclock decode 02000000 00000000 0a2f1e4e1c000000 00ca9a3b00000000 "
        "3d0ad7a3 ff 01 0000\n"
        "  grep kvm_pvclock_update trace.txt | kvmclock decode - --json",
        formatter_class=fmt,
    )
    s.add_argument("input", nargs="+", metavar="HEX|-")
    s.add_argument("--type", choices=["auto", "pvclock", "wallclock"], default="auto",
                   help="record type (auto: by length)")
    s.add_argument("--tsc", type=_int_arg("--tsc", 0, 2**64 - 1), metavar="TSC",
                   help="also compute kvmclock at this TSC value")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_decode)

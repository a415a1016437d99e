"""Decoding of the two KVM clock records a guest reads (arch/x86/include/asm/pvclock-abi.h):
``struct pvclock_vcpu_time_info`` (32 bytes) and ``struct pvclock_wall_clock`` (12 bytes),
from hex bytes or from ``kvm_pvclock_update`` trace lines (arch/x86/kvm/trace.h).

Every field is shown, also when another one is invalid; an invalid field is flagged with what
is valid, in words. The record logic of ``kvmclock decode`` (:mod:`kvmclock.cli.decode` is the
command line around it); the JSON shape is ``kvmclock/schemas/decode.schema.json``.
"""

from __future__ import annotations

import datetime
import re
import struct
from typing import Any

from kvmclock.errors import UsageError

__all__ = [
    "FLAG_BITS",
    "KNOWN_FLAGS",
    "PVCLOCK_SIZE",
    "TSC_SHIFT_MAX",
    "WALL_CLOCK_SIZE",
    "cut_records",
    "decode_document",
    "decode_records",
    "decode_trace_lines",
    "exact_seconds",
    "format_decoded",
    "known_flag_names",
    "no_trace_line_message",
    "parse_hex",
]

PVCLOCK_SIZE = 32
WALL_CLOCK_SIZE = 12
#: pvclock_scale_delta (arch/x86/include/asm/pvclock.h) shifts the u64 TSC delta left by
#: tsc_shift, or right by -tsc_shift: a shift by 64 or more is undefined in C.
TSC_SHIFT_MAX = 63
NSEC_PER_SEC = 1_000_000_000
#: The pvclock flag bits (pvclock-abi.h): PVCLOCK_TSC_STABLE_BIT, PVCLOCK_GUEST_STOPPED,
#: PVCLOCK_COUNTS_FROM_ZERO.
FLAG_BITS: tuple[tuple[int, str], ...] = (
    (1, "TSC_STABLE"), (2, "GUEST_STOPPED"), (4, "COUNTS_FROM_ZERO"))
KNOWN_FLAGS = 0x7
_PVCLOCK_STRUCT = struct.Struct("<IIQQIbB2s")  # version, pad0, tsc_timestamp, system_time,
#                                               tsc_to_system_mul, tsc_shift, flags, pad[2]
_WALL_STRUCT = struct.Struct("<III")  # version, sec, nsec
_HEX_TOKEN = re.compile(r"(?:0[xX])?([0-9a-fA-F]*)")
KIND_TEXT = {"pvclock": "pvclock_vcpu_time_info", "wallclock": "pvclock_wall_clock"}
SHIFT_VALID = f"an integer from -{TSC_SHIFT_MAX} to {TSC_SHIFT_MAX}"


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


def cut_records(
    chunks: list[bytes], kind: str
) -> tuple[list[tuple[str, bytes]], dict[str, Any] | None]:
    """Cut the input into ``(kind, raw)`` records, ``kind`` "pvclock" (32 bytes) or
    "wallclock" (12 bytes), and say which kind was assumed when the length fits both.

    ``kind`` "auto": several lines that are each 32 or 12 bytes are one record each; otherwise
    the bytes are joined and read as pvclock records when their number is a multiple of 32,
    else as wall clock records. A multiple of 96 bytes fits both: the second value is then
    ``{"assumed": "pvclock", "bytes": n, "pvclock_records": n // 32,
    "wall_clock_records": n // 12, "choose_with": "--type wallclock"}``, else None."""
    sizes = {"pvclock": PVCLOCK_SIZE, "wallclock": WALL_CLOCK_SIZE}
    if kind not in ("auto", *sizes):
        raise ValueError(f"kind must be 'auto', 'pvclock' or 'wallclock', got {kind!r}")
    if kind == "auto" and len(chunks) > 1 and all(len(c) in sizes.values() for c in chunks):
        return [("pvclock" if len(c) == PVCLOCK_SIZE else "wallclock", c) for c in chunks], None
    data = b"".join(chunks)
    n = len(data)
    assumption: dict[str, Any] | None = None
    if kind == "auto":
        if n % PVCLOCK_SIZE == 0:
            kind = "pvclock"
            if n % WALL_CLOCK_SIZE == 0:
                assumption = {"assumed": "pvclock", "bytes": n,
                              "pvclock_records": n // PVCLOCK_SIZE,
                              "wall_clock_records": n // WALL_CLOCK_SIZE,
                              "choose_with": "--type wallclock"}
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
    return [(kind, data[i : i + size]) for i in range(0, n, size)], assumption


def exact_seconds(ns: int) -> str:
    """``ns`` nanoseconds as exact decimal seconds with nine digits, by integer arithmetic
    (9999999999999999 -> "9999999.999999999"); negative values get a leading minus."""
    sign = "-" if ns < 0 else ""
    secs, rem = divmod(abs(ns), NSEC_PER_SEC)
    return f"{sign}{secs}.{rem:09d}"


def known_flag_names(flags: int) -> tuple[list[str], int]:
    """(names of the known pvclock flag bits set in ``flags``, the remaining unknown bits)."""
    return [name for bit, name in FLAG_BITS if flags & bit], flags & ~KNOWN_FLAGS


def _pvclock_fields(version: int, pad0: int | None, tsc_timestamp: int, system_time: int,
                    mul: int, shift: int, flags: int, pad: bytes | None,
                    tsc: int | None) -> dict[str, Any]:
    """A pvclock_vcpu_time_info record with everything derived from it (kvmclock through the
    native ``__pvclock_read_cycles``, TSC kHz through ``pvclock_tsc_khz``, KVM's
    ``kvm_get_time_scale`` of that kHz); derived values are None when a field they need is
    invalid."""
    import kvmclock

    names, unknown = known_flag_names(flags)
    invalid: list[dict[str, Any]] = []
    notes: list[str] = []
    shift_ok = -TSC_SHIFT_MAX <= shift <= TSC_SHIFT_MAX
    if not shift_ok:
        invalid.append({
            "field": "tsc_shift", "value": shift, "valid": SHIFT_VALID,
            "reason": "pvclock_scale_delta shifts the 64-bit TSC delta by it, and a shift by "
            "64 or more is undefined; kvmclock cannot be read from this record",
        })
    if version & 1:
        notes.append("version is odd: KVM was writing the record when it was copied "
                     "(a guest reads it again)")
    if pad0 or (pad is not None and any(pad)):
        notes.append("padding is not zero (guests ignore it)")
    if mul == 0:
        notes.append("tsc_to_system_mul is 0: the clock does not advance with the TSC")
    rec: dict[str, Any] = {
        "type": "pvclock",
        "version": version,
        "version_odd": bool(version & 1),
        "pad0": pad0,
        "tsc_timestamp_cycles": tsc_timestamp,
        "system_time_ns": system_time,
        "system_time_s_text": exact_seconds(system_time),
        "tsc_to_system_mul": mul,
        "tsc_shift": shift,
        "flags": flags,
        "flag_names": names,
        "unknown_flag_bits": unknown,
        "pad": None if pad is None else pad.hex(),
        "invalid": invalid,
        "notes": notes,
        "tsc_khz": None,
        "matches_get_time_scale_of_tsc_khz": None,
        "kvmclock_ns_at_tsc_timestamp": None,
        "tsc_cycles": tsc,
        "kvmclock_ns_at_tsc": None,
    }
    if not shift_ok:
        return rec
    info = kvmclock.PvclockVcpuTimeInfo(
        version=version, tsc_timestamp=tsc_timestamp, system_time=system_time,
        tsc_to_system_mul=mul, tsc_shift=shift, flags=flags)
    if mul:
        rec["tsc_khz"] = int(kvmclock.pvclock_tsc_khz(tsc_to_system_mul=mul, tsc_shift=shift))
    rec["kvmclock_ns_at_tsc_timestamp"] = int(info.read_cycles(tsc_timestamp))
    if tsc is not None:
        rec["kvmclock_ns_at_tsc"] = int(info.read_cycles(tsc))
    if rec["tsc_khz"] and rec["tsc_khz"] <= (1 << 32) - 1:
        # does mul/shift equal what KVM derives from that kHz (kvm_guest_time_update)? (a kHz
        # beyond u32 cannot be KVM's: its TSC frequencies are u32 kHz)
        k_shift, k_mult = kvmclock.get_time_scale(scaled_hz=10**9,
                                                  base_hz=rec["tsc_khz"] * 1000)
        rec["matches_get_time_scale_of_tsc_khz"] = k_mult == mul and k_shift == shift
    return rec


def _wall_clock_fields(version: int, sec: int, nsec: int) -> dict[str, Any]:
    """A pvclock_wall_clock record: the host's wall time at guest kvmclock 0."""
    invalid: list[dict[str, Any]] = []
    notes: list[str] = []
    if nsec >= NSEC_PER_SEC:
        invalid.append({
            "field": "nsec", "value": nsec, "valid": "below 1000000000 (less than one second)",
            "reason": "KVM writes the remainder of a division by one second; a guest "
            "normalising the time carries the excess into the seconds",
        })
    if version & 1:
        notes.append("version is odd: KVM was writing the record when it was copied "
                     "(a guest reads it again)")
    total_ns = sec * NSEC_PER_SEC + nsec
    utc = None
    if nsec < NSEC_PER_SEC:
        dt = datetime.datetime.fromtimestamp(sec, tz=datetime.timezone.utc)
        utc = f"{dt:%Y-%m-%dT%H:%M:%S}.{nsec:09d}+00:00"
    return {
        "type": "wall_clock",
        "version": version,
        "version_odd": bool(version & 1),
        "sec": sec,
        "nsec": nsec,
        "time_s_text": exact_seconds(total_ns),
        "utc": utc,
        "invalid": invalid,
        "notes": notes,
    }


def decode_records(pieces: list[tuple[str, bytes]], tsc: int | None) -> list[dict[str, Any]]:
    """Decode raw records (from :func:`cut_records`): every field, even next to an invalid
    one. ``tsc`` (TSC cycles): also the kvmclock (ns) at that TSC value."""
    out: list[dict[str, Any]] = []
    for i, (kind, raw) in enumerate(pieces):
        if kind == "pvclock":
            ver, pad0, ts, st, mul, shift, flags, pad = _PVCLOCK_STRUCT.unpack(raw)
            rec = _pvclock_fields(ver, pad0, ts, st, mul, shift, flags, pad, tsc)
        else:
            rec = _wall_clock_fields(*_WALL_STRUCT.unpack(raw))
        out.append({"index": i, **rec, "hex": raw.hex()})
    return out


#: The one TP_printk form of ``kvm_pvclock_update`` (arch/x86/kvm/trace.h): unchanged since
#: the event was added; its TP_STRUCT__entry has no ``pad0`` or ``pad`` field, so no kernel
#: prints the padding (a line with ``pad0`` is not a kernel's and is not accepted).
PVCLOCK_UPDATE_EXAMPLE = (
    "CPU 0/KVM-4321 [000] ..... 10.000006: kvm_pvclock_update: vcpu_id 0, pvclock { "
    "version 2, tsc_timestamp 0x1c4e1e2f0a, system_time 0x3b9aca00, "
    "tsc_to_system_mul 0xa3d70a3d, tsc_shift -1, flags 0x1 }"
)

#: The text for a padding field a trace line does not carry.
NOT_IN_TRACE = "not in the trace"


def no_trace_line_message() -> str:
    """The error for input that mentions kvm_pvclock_update but has no line of its form."""
    return (
        "decode: no valid kvm_pvclock_update line in the input; the kernel prints one form "
        "(arch/x86/kvm/trace.h TP_printk, the same in every version; it has no pad0/pad "
        f"field), e.g.: {PVCLOCK_UPDATE_EXAMPLE} (the 'comm-pid [cpu] flags time:' prefix "
        "may also be trace-cmd's or perf script's)"
    )


def decode_trace_lines(text: str, tsc: int | None) -> list[dict[str, Any]]:
    """Records from ``kvm_pvclock_update`` lines (other lines are ignored). The trace event
    has no padding fields: ``pad0`` and ``pad`` are None ("not in the trace"); the hex is the
    record with zero padding (what KVM writes: it never sets the padding)."""
    from kvmclock.trace import parse_text

    out: list[dict[str, Any]] = []
    for rec in parse_text(text).records:
        if rec.event != "kvm_pvclock_update" or rec.data is None:
            continue
        d = rec.data
        fields = (d["version"], 0, d["tsc_timestamp"], d["system_time"],
                  d["tsc_to_system_mul"], d["tsc_shift"], d["flags"], b"\0\0")
        entry = {"index": len(out), "line": rec.line_no, "vcpu_id": d["vcpu_id"],
                 "time_ns": rec.t_ns, "time_counter": rec.counter,
                 **_pvclock_fields(d["version"], None, d["tsc_timestamp"], d["system_time"],
                                   d["tsc_to_system_mul"], d["tsc_shift"], d["flags"], None,
                                   tsc),
                 "hex": _PVCLOCK_STRUCT.pack(*fields).hex()}
        out.append(entry)
    return out


def decode_document(records: list[dict[str, Any]], source: str, type_option: str,
                    assumption: dict[str, Any] | None) -> dict[str, Any]:
    """The ``kvmclock.decode`` JSON document around decoded records."""
    return {
        "schema": "kvmclock.decode",
        "schema_version": 1,
        "source": source,
        "type_option": type_option,
        "assumption": assumption,
        "invalid_fields": sum(len(r["invalid"]) for r in records),
        "records": records,
    }


def _invalid_text(r: dict[str, Any], name: str) -> str:
    for bad in r["invalid"]:
        if bad["field"] == name:
            return f"   INVALID: must be {bad['valid']} ({bad['reason']})"
    return ""


def format_decoded(doc: dict[str, Any], strict: bool = False) -> str:
    """Text of a :func:`decode_document`: every field of every record, invalid ones flagged;
    ``strict``: the command runs with --strict (the last line says which exit status)."""
    out: list[str] = []
    a = doc["assumption"]
    if a is not None:
        out.append(f"{a['bytes']} bytes fit {a['pvclock_records']} pvclock_vcpu_time_info "
                   f"records (32 bytes) or {a['wall_clock_records']} pvclock_wall_clock "
                   f"records (12 bytes): read as pvclock_vcpu_time_info; give "
                   f"{a['choose_with']} to read wall clocks")
    for r in doc["records"]:
        where = f" (line {r['line']}, vCPU {r['vcpu_id']})" if "line" in r else ""
        odd = " (odd: update in progress)" if r["version_odd"] else ""
        if r["type"] == "pvclock":
            out.append(f"record {r['index']}: pvclock_vcpu_time_info{where}")
            out.append(f"  version           {r['version']}{odd}")
            pad0 = f"- ({NOT_IN_TRACE})" if r["pad0"] is None else r["pad0"]
            out.append(f"  pad0              {pad0}")
            out.append(f"  tsc_timestamp     {r['tsc_timestamp_cycles']} "
                       f"({r['tsc_timestamp_cycles']:#x}) cycles")
            out.append(f"  system_time       {r['system_time_ns']} ns "
                       f"({r['system_time_s_text']} s)")
            out.append(f"  tsc_to_system_mul {r['tsc_to_system_mul']:#010x}")
            out.append(f"  tsc_shift         {r['tsc_shift']}{_invalid_text(r, 'tsc_shift')}")
            flag_txt = "|".join(r["flag_names"]) or "none"
            if r["unknown_flag_bits"]:
                flag_txt += f", unknown bits 0x{r['unknown_flag_bits']:x}"
            out.append(f"  flags             {r['flags']:#x} {flag_txt}")
            pad = f"- ({NOT_IN_TRACE})" if r["pad"] is None else r["pad"]
            out.append(f"  pad               {pad}")
            if r["invalid"]:
                out.append("  TSC frequency     - (tsc_shift is invalid)")
                out.append("  kvmclock at tsc_timestamp: - (tsc_shift is invalid)")
            else:
                khz = "-" if r["tsc_khz"] is None else f"{r['tsc_khz']} kHz"
                extra = ""
                if r["matches_get_time_scale_of_tsc_khz"] is not None:
                    extra = (" (mul/shift = get_time_scale of it)"
                             if r["matches_get_time_scale_of_tsc_khz"]
                             else " (mul/shift differ from get_time_scale of it)")
                out.append(f"  TSC frequency     {khz}{extra}")
                out.append(f"  kvmclock at tsc_timestamp: {r['kvmclock_ns_at_tsc_timestamp']} "
                           "ns")
                if r["kvmclock_ns_at_tsc"] is not None:
                    out.append(f"  kvmclock at TSC {r['tsc_cycles']}: "
                               f"{r['kvmclock_ns_at_tsc']} ns")
        else:
            out.append(f"record {r['index']}: pvclock_wall_clock")
            out.append(f"  version {r['version']}{odd}")
            out.append(f"  sec     {r['sec']}")
            out.append(f"  nsec    {r['nsec']}{_invalid_text(r, 'nsec')}")
            out.append(f"  time    {r['time_s_text']} s since the epoch "
                       f"({r['utc'] or 'nsec is invalid'})")
        out.extend(f"  note: {n}" for n in r["notes"])
    n = doc["invalid_fields"]
    if n:
        bad = ", ".join(f"{b['field']} of record {r['index']}"
                        for r in doc["records"] for b in r["invalid"])
        status = ("--strict: exit status 1" if strict
                  else "exit status 0; --strict would exit 1")
        out.append(f"{n} invalid field{'s' if n != 1 else ''}: {bad} ({status})")
    return "\n".join(out)

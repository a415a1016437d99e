"""Fuzz targets of kvmclock: one ``check(data: bytes) -> None`` per target.

Each check feeds ``data`` to a public entry point and enforces its documented contract:

* ``trace``: :func:`kvmclock.trace.parse_bytes` (the ``kvmclock trace`` input path), then
  :func:`~kvmclock.trace.summarize` and :func:`~kvmclock.trace.format_summary`. The only
  documented failure is :class:`kvmclock.errors.TraceParseError` (an input with no text line).
* ``decode``: :func:`kvmclock.cli.cmd_decode` called in process with an ``argparse.Namespace``
  (no subprocess), on the argument path and the stdin path; the only documented failure is
  ``kvmclock.cli.UsageError`` (exit 2, one line). Anything else would be an "internal error".
* ``records``: ``PvclockVcpuTimeInfo.from_bytes`` / ``PvclockWallClock.from_bytes`` (exactly 32 /
  12 bytes, otherwise ValueError), the round trip through ``to_bytes`` (pads are not part of the
  value: arch/x86/include/asm/pvclock-abi.h, encoded as zero), ``read_cycles``
  (``__pvclock_read_cycles`` in arch/x86/include/asm/pvclock.h, recomputed here with Python ints;
  |tsc_shift| >= 64 is an undefined C shift and must raise ValueError naming ``tsc_shift``),
  ``pvclock_read`` (version-retry read, arch/x86/kernel/pvclock.c; an odd version must raise
  ``PvclockRetryError`` after ``max_retries``) and ``pvclock_read_cycles_batch``.

A property violation raises :class:`FuzzFailure`; any other escaping exception is a crash.
Used by ``fuzz/run.py`` (atheris or hypothesis) and ``tests/test_fuzz_smoke.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pickle
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import kvmclock
import numpy as np
from kvmclock import cli
from kvmclock import trace as T
from kvmclock.errors import TraceParseError

ROOT = Path(__file__).resolve().parent.parent
TRACE_DATA = ROOT / "tests" / "data" / "trace"

U64 = (1 << 64) - 1
PVCLOCK_FMT = "<I4xQQIbB2x"  # struct pvclock_vcpu_time_info (pvclock-abi.h)
WALL_FMT = "<III"  # struct pvclock_wall_clock


class FuzzFailure(AssertionError):
    """A documented property of the fuzzed entry point did not hold."""


# Bugs the fuzzer found in code this harness does not own, while they are open: key ->
# (message text, file of a traceback frame). A run can tolerate them (count, go on) so libFuzzer,
# which stops at the first crash, explores past them: ``fuzz/run.py --tolerate-known`` or
# FUZZ_TOLERATE_KNOWN=1 for scripts/fuzz.sh. Off by default. Empty now: the two the trace
# harness found (a > 4300-digit number in a line made int() raise out of parse_bytes; a
# kvm_pvclock_update with |tsc_shift| >= 64 made summarize raise) are fixed (commit abbb12a)
# and have regression tests in tests/test_hardening_cli.py.
KNOWN_BUGS: dict[str, tuple[str, str]] = {}
tolerate_known = False
known_hits: dict[str, int] = {}


def _known_bug(exc: BaseException) -> str | None:
    """The KNOWN_BUGS key ``exc`` matches (message text and a frame in the named file)."""
    import traceback

    if not isinstance(exc, ValueError):
        return None
    files = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
    for key, (needle, where) in KNOWN_BUGS.items():
        if needle in str(exc) and any(f.endswith(where) for f in files):
            return key
    return None


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise FuzzFailure(what)


# ------------------------------------------------------------------------------------ trace

# str.splitlines() splits on these too; bytes.splitlines() only on \n, \r, \r\n.
_EXTRA_LINE_BREAKS = "\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def check_trace(data: bytes) -> None:
    """parse_bytes -> summarize -> format_summary / JSON; counts and round trips hold."""
    try:
        _check_trace(data)
    except ValueError as exc:
        key = _known_bug(exc) if tolerate_known else None
        if key is None:
            raise
        known_hits[key] = known_hits.get(key, 0) + 1


def _check_trace(data: bytes) -> None:
    try:
        result = T.parse_bytes(data)
    except TraceParseError:
        # documented: only for non-empty input without a single text line
        _require(bool(data.strip()), "TraceParseError on an input that is blank")
        return
    n_lines = len(data.splitlines())
    _require(result.total_lines == n_lines, f"total_lines {result.total_lines} != {n_lines}")
    parts = len(result.records) + len(result.skipped) + result.header_lines + result.blank_lines
    _require(parts == result.total_lines, "records+skipped+headers+blanks != total_lines")
    for rec in result.records:
        if rec.data is None:
            continue
        # the typed fields re-formatted by the writer parse back to the same values
        again = T.parse_fields(rec.event, _reformat(rec.event, rec.data, rec.fmt))
        _require(again is not None and again[0] == rec.data,
                 f"line {rec.line_no}: {rec.event} fields do not round-trip")
    summary = T.summarize(result)
    _require(summary["events"] == len(result.records), "summary events != records")
    _require(summary["skipped_lines"] == len(result.skipped), "summary skipped != skipped")
    json.dumps(summary)
    text = T.format_summary(summary)
    _require(isinstance(text, str), "format_summary did not return text")
    # the text path sees the same lines when the bytes are NUL-free UTF-8 with plain line ends
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    if "\0" in s or any(c in s for c in _EXTRA_LINE_BREAKS):
        return
    _require(T.parse_text(s).records == result.records, "parse_text != parse_bytes records")


def _reformat(event: str, d: dict[str, object], fmt: str | None) -> str:
    def i(k: str) -> int:
        v = d[k]
        assert isinstance(v, int)
        return int(v)

    if event == "kvm_pvclock_update":
        return T.fields_pvclock_update(i("vcpu_id"), i("version"), i("tsc_timestamp"),
                                       i("system_time"), i("tsc_to_system_mul"),
                                       i("tsc_shift"), i("flags"))
    if event == "kvm_write_tsc_offset":
        return T.fields_write_tsc_offset(i("vcpu_id"), i("previous_tsc_offset"),
                                         i("next_tsc_offset"))
    if event == "kvm_update_master_clock":
        if fmt == "after":
            return T.fields_update_master_clock_after(bool(d["use_master_clock"]),
                                                      bool(d["host_clock_stable"]),
                                                      bool(d["offset_matched"]))
        # the symbol as printed (an old trace's "hpet" is value 2, which today prints 0x2)
        return (f"masterclock {int(bool(d['use_master_clock']))} hostclock "
                f"{d['host_clock_symbol']} offsetmatched {int(bool(d['offset_matched']))}")
    assert event == "kvm_track_tsc"
    head = (f"vcpu_id {i('vcpu_id')} masterclock {int(bool(d['use_master_clock']))} "
            f"offsetmatched {i('nr_vcpus_matched_tsc')} nr_online {i('online_vcpus')} ")
    if fmt == "after":
        return head + f"hostclock stable {int(bool(d['host_clock_stable']))}"
    return head + f"hostclock {d['host_clock_symbol']}"


def trace_seeds() -> list[bytes]:
    """Seed inputs: the repository's real captures and writer output of every event/format."""
    seeds = [p.read_bytes() for p in sorted(TRACE_DATA.glob("*.txt"))]
    lines = [
        T.format_line("qemu-kvm", 1000, 1, 5_000_123_456, "kvm_update_master_clock",
                      T.fields_update_master_clock_after(True, True, True)),
        T.format_line("qemu-kvm", 1000, 1, 5_000_200_000, "kvm_update_master_clock",
                      T.fields_update_master_clock_before(False, 2, True), flags=None),
        T.format_line("qemu-kvm", 1000, 0, 6_000_000_000, "kvm_track_tsc",
                      T.fields_track_tsc_before(0, True, 1, 2, 1), level=1),
        T.format_line("qemu-kvm", 1000, 0, 6_000_000_000, "kvm_track_tsc",
                      T.fields_track_tsc_after(1, False, 2, 2, True), flags="d..1."),
        T.format_line("qemu-kvm", 1000, 0, 117471684343752, "kvm_write_tsc_offset",
                      T.fields_write_tsc_offset(0, 0, -123456789), raw_timestamp=True),
        T.format_line("qemu-kvm", 1000, 1, 7_000_000_000, "kvm_pvclock_update",
                      T.fields_pvclock_update(1, 4, 0x1234567890, 0x5F5E100, 0xF3D0E5A3, -1, 1)),
    ]
    seeds.append(("\n".join(lines) + "\n").encode())
    seeds.extend(line.encode() for line in lines)
    return seeds


# ------------------------------------------------------------------------------------ decode


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def _check_decoded(records: list[dict[str, object]], tsc: int | None) -> None:
    """Every decoded record agrees with an independent struct decode of its own hex."""
    for r in records:
        raw = bytes.fromhex(str(r["hex"]))
        if r["type"] == "pvclock":
            _require(len(raw) == 32, "pvclock record hex is not 32 bytes")
            ver, ts, st, mul, shift, flags = struct.unpack(PVCLOCK_FMT, raw)
            _require((r["version"], r["tsc_timestamp_cycles"], r["system_time_ns"],
                      r["tsc_to_system_mul"], r["tsc_shift"], r["flags"])
                     == (ver, ts, st, mul, shift, flags), f"decoded fields != struct: {r}")
            bad_shift = not -63 <= shift <= 63
            # every field is shown; an undefined shift is flagged and nothing is derived
            _require(bad_shift == any(b["field"] == "tsc_shift" for b in r["invalid"]),
                     f"tsc_shift {shift} flagged wrongly: {r['invalid']}")
            if bad_shift:
                _require(r["kvmclock_ns_at_tsc_timestamp"] is None
                         and r["kvmclock_ns_at_tsc"] is None, "kvmclock of an invalid shift")
                continue
            _require(r["kvmclock_ns_at_tsc_timestamp"] == st, "read_cycles(tsc_timestamp) != "
                     "system_time")
            if tsc is not None:
                _require(r["kvmclock_ns_at_tsc"] == read_cycles_ref(raw, tsc),
                         "kvmclock_ns_at_tsc != Python recomputation")
        else:
            _require(r["type"] == "wall_clock" and len(raw) == 12, f"bad record type {r}")
            _require((r["version"], r["sec"], r["nsec"]) == struct.unpack(WALL_FMT, raw),
                     "decoded wall clock != struct")


def check_decode(data: bytes) -> None:
    """``kvmclock decode`` in process: UsageError or JSON whose records match struct."""
    if not data:
        return
    mode = data[0]
    rest = data[1:]
    kind = ("auto", "pvclock", "wallclock", "auto")[mode & 3]
    use_stdin = bool(mode & 8)
    tsc: int | None = None
    if mode & 16 and len(rest) >= 8:
        tsc, rest = int.from_bytes(rest[:8], "little"), rest[8:]
    if use_stdin:
        inputs = ["-"]
    else:
        # argv items are NUL-free; invalid UTF-8 arrives surrogate-escaped (os.fsdecode)
        inputs = [a for a in rest.decode("utf-8", "surrogateescape").split("\0") if a] or [""]
    ns = argparse.Namespace(input=inputs, type=kind, tsc=tsc, json="-", strict=False)
    out = io.StringIO()
    saved = sys.stdin
    sys.stdin = cast(TextIO, _Stdin(rest))
    try:
        with contextlib.redirect_stdout(out):
            code = cli.cmd_decode(ns)
    except cli.UsageError as exc:
        msg = str(exc)
        _require(msg.startswith("decode:"), f"UsageError without the command name: {msg!r}")
        return
    finally:
        sys.stdin = saved
    _require(code == cli.EXIT_OK, f"cmd_decode returned {code}")
    text = out.getvalue()
    text.encode("utf-8")  # what a UTF-8 stdout would have to write
    doc = json.loads(text)
    _check_decoded(doc["records"], tsc)


def decode_seeds() -> list[bytes]:
    """Mode byte + payload: hex records, concatenated records, trace lines, odd hex."""
    pv = kvmclock.PvclockVcpuTimeInfo(version=2, tsc_timestamp=0x1C4E1E2F0A,
                                      system_time=10**9, tsc_to_system_mul=0xA3D70A3D,
                                      tsc_shift=-1, flags=1).to_bytes()
    wc = kvmclock.PvclockWallClock(version=2, sec=1_700_000_000, nsec=5).to_bytes()
    line = T.format_line("qemu", 7, 0, 10**9, "kvm_pvclock_update",
                         T.fields_pvclock_update(3, 2, 0x10, 0x20, 0xA3D70A3D, -1, 1))
    return [
        b"\x00" + pv.hex().encode(),
        b"\x00" + (pv.hex() + "\n" + wc.hex()).encode(),
        b"\x01" + " ".join(f"0x{b:02x}" for b in pv).encode(),
        b"\x02" + wc.hex().encode(),
        b"\x08" + (pv + wc).hex().encode(),
        b"\x10" + (10**12).to_bytes(8, "little") + pv.hex().encode(),
        b"\x08" + ("noise\n" + line + "\n").encode(),
        b"\x00abc",
    ]


# ------------------------------------------------------------------------------------ records


def scale_delta_ref(delta: int, mul: int, shift: int) -> int:
    """pvclock_scale_delta (pvclock.h) with Python ints: pre-shift in u64, then (d*mul) >> 32."""
    d = delta >> -shift if shift < 0 else (delta << shift) & U64
    return (d * mul >> 32) & U64


def read_cycles_ref(raw: bytes, tsc: int) -> int:
    """__pvclock_read_cycles (pvclock.h) of the 32-byte record ``raw`` at ``tsc``."""
    _v, ts, st, mul, shift, _f = struct.unpack(PVCLOCK_FMT, raw)
    return (int(st) + scale_delta_ref((tsc - int(ts)) & U64, int(mul), int(shift))) & U64


def _zero_pads(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[4:8] = bytes(4)
    b[30:32] = bytes(2)
    return bytes(b)


def _check_pvclock_record(raw: bytes) -> None:
    info = kvmclock.PvclockVcpuTimeInfo.from_bytes(raw)
    ver, ts, st, mul, shift, flags = struct.unpack(PVCLOCK_FMT, raw)
    _require((info.version, info.tsc_timestamp, info.system_time, info.tsc_to_system_mul,
              info.tsc_shift, info.flags) == (ver, ts, st, mul, shift, flags),
             "from_bytes fields != struct")
    _require(info.to_bytes() == _zero_pads(raw), "to_bytes != input with pads zeroed")
    if raw == _zero_pads(raw):
        _require(info.to_bytes() == raw, "round trip changed a record with zero pads")
    same = kvmclock.PvclockVcpuTimeInfo(version=ver, tsc_timestamp=ts, system_time=st,
                                        tsc_to_system_mul=mul, tsc_shift=shift, flags=flags)
    _require(same == info and hash(same) == hash(info), "equal fields but unequal objects")
    _require(pickle.loads(pickle.dumps(info)) == info, "pickle round trip")
    _require(kvmclock.PvclockVcpuTimeInfo.from_bytes(bytearray(raw)) == info, "bytearray")
    _require(kvmclock.PvclockVcpuTimeInfo.from_bytes(memoryview(raw)) == info, "memoryview")
    tscs = [ts, (ts + 1) & U64, (ts + st) & U64, (ts - 1) & U64, 0, U64, st]
    if -63 <= shift <= 63:
        want = [read_cycles_ref(raw, t) for t in tscs]
        _require([info.read_cycles(t) for t in tscs] == want, "read_cycles != recomputation")
        got = kvmclock.pvclock_read_cycles_batch(info, cast(Any, np.array(tscs, dtype=np.uint64)))
        _require([int(x) for x in got] == want, "pvclock_read_cycles_batch != scalar")
        buf = bytearray(raw)
        if ver & 1:
            try:
                kvmclock.pvclock_read(buf, tscs[2], max_retries=3)
            except kvmclock.PvclockRetryError:
                pass
            else:
                raise FuzzFailure("pvclock_read returned on an odd version")
        else:
            ns, fl, stamp = kvmclock.pvclock_read(buf, tscs[2], max_retries=3)
            _require((ns, fl, stamp) == (want[2], flags, tscs[2]), "pvclock_read != read_cycles")
    else:
        for t in tscs[:2]:
            try:
                info.read_cycles(t)
            except ValueError as exc:
                _require("tsc_shift" in str(exc), f"error does not name tsc_shift: {exc}")
            else:
                raise FuzzFailure(f"read_cycles accepted tsc_shift {shift}")


def check_records(data: bytes) -> None:
    """from_bytes of both ABI records on the input, its 32/12-byte prefixes, and read_cycles."""
    for cls, size in ((kvmclock.PvclockVcpuTimeInfo, 32), (kvmclock.PvclockWallClock, 12)):
        if len(data) != size:
            try:
                cls.from_bytes(data)
            except ValueError as exc:
                _require(str(size) in str(exc), f"length error does not say {size}: {exc}")
            else:
                raise FuzzFailure(f"{cls.__name__}.from_bytes accepted {len(data)} bytes")
    if len(data) >= 32:
        _check_pvclock_record(data[:32])
    if len(data) >= 12:
        raw = data[:12]
        wc = kvmclock.PvclockWallClock.from_bytes(raw)
        _require((wc.version, wc.sec, wc.nsec) == struct.unpack(WALL_FMT, raw), "wall fields")
        _require(wc.to_bytes() == raw, "wall clock round trip")
        _require(pickle.loads(pickle.dumps(wc)) == wc, "wall clock pickle")


def records_seeds() -> list[bytes]:
    """A live-looking record, an odd version, shifts at and past the range, a wall clock."""
    good = kvmclock.PvclockVcpuTimeInfo(version=2, tsc_timestamp=0x1C4E1E2F0A,
                                        system_time=10**9, tsc_to_system_mul=0xF3D0E5A3,
                                        tsc_shift=-1, flags=1).to_bytes()
    odd = b"\x03" + good[1:]
    return [good, odd, good[:28] + bytes([63, 1, 0, 0]), good[:28] + bytes([64, 0, 0, 0]),
            good[:28] + bytes([0x80, 7, 0, 0]), good[:12], good + b"\x00"]


# ------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Target:
    """A fuzz target: its check, seed inputs, and the libFuzzer max input length."""

    name: str
    check: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    max_len: int


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("trace", check_trace, trace_seeds, 8192),
        Target("decode", check_decode, decode_seeds, 4096),
        Target("records", check_records, records_seeds, 64),
    )
}

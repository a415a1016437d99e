"""The pvclock ABI record, its readers and writer vs the independent reference.

PvclockVcpuTimeInfo packs exactly like ``struct pvclock_vcpu_time_info`` (pvclock-abi.h);
``read_cycles`` is ``__pvclock_read_cycles`` (pvclock.h); ``pvclock_read`` is the guest's
version-retry read; ``PvclockClock`` is ``pvclock_clocksource_read`` (pvclock.c) with its
shared ``last_value`` clamp and GUEST_STOPPED clearing.
"""

from __future__ import annotations

import mmap
import struct

import kvmclock
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import kernel_math as km

u8s = st.integers(0, 0xFF)
s8s = st.integers(-128, 127)
u32s = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1]), st.integers(0, km.U32_MAX))
u64s = st.one_of(st.sampled_from([0, 1, 2**32, 2**63, 2**64 - 1]), st.integers(0, km.U64_MAX))
pv_shifts = st.integers(-63, 63)

records = st.builds(
    km.Record,
    version=u32s,
    tsc_timestamp=u64s,
    system_time=u64s,
    tsc_to_system_mul=u32s,
    tsc_shift=s8s,
    flags=u8s,
)
readable_records = st.builds(
    km.Record,
    version=u32s.map(lambda v: v & ~1),
    tsc_timestamp=u64s,
    system_time=u64s,
    tsc_to_system_mul=u32s,
    tsc_shift=pv_shifts,
    flags=u8s,
)

SETTINGS = settings(max_examples=1000, deadline=None)


def native_record(rec: km.Record) -> kvmclock.PvclockVcpuTimeInfo:
    """Build the native record from the reference one, by keyword."""
    return kvmclock.PvclockVcpuTimeInfo(
        version=rec.version,
        tsc_timestamp=rec.tsc_timestamp,
        system_time=rec.system_time,
        tsc_to_system_mul=rec.tsc_to_system_mul,
        tsc_shift=rec.tsc_shift,
        flags=rec.flags,
    )


def fields(info: kvmclock.PvclockVcpuTimeInfo) -> km.Record:
    """The native record's fields as a reference Record."""
    return km.Record(
        info.version,
        info.tsc_timestamp,
        info.system_time,
        info.tsc_to_system_mul,
        info.tsc_shift,
        info.flags,
    )


def test_flag_constants() -> None:
    assert kvmclock.PVCLOCK_TSC_STABLE_BIT == 1
    assert kvmclock.PVCLOCK_GUEST_STOPPED == 2
    assert kvmclock.PVCLOCK_COUNTS_FROM_ZERO == 4


def test_defaults_are_zero() -> None:
    info = kvmclock.PvclockVcpuTimeInfo()
    assert fields(info) == km.Record()
    assert info.to_bytes() == bytes(32)


@SETTINGS
@given(rec=records)
def test_to_bytes_matches_abi(rec: km.Record) -> None:
    info = native_record(rec)
    assert fields(info) == rec
    raw = info.to_bytes()
    assert isinstance(raw, bytes)
    assert raw == rec.pack()
    assert len(raw) == 32


@SETTINGS
@given(raw=st.binary(min_size=32, max_size=32))
def test_from_bytes_decodes_abi(raw: bytes) -> None:
    info = kvmclock.PvclockVcpuTimeInfo.from_bytes(b=raw)
    assert fields(info) == km.Record.unpack(raw)
    # pads are not part of the value: re-encoding zeroes them
    assert info.to_bytes() == km.Record.unpack(raw).pack()
    for buf in (bytearray(raw), memoryview(raw)):
        assert kvmclock.PvclockVcpuTimeInfo.from_bytes(buf) == info


@SETTINGS
@given(rec=records)
def test_value_semantics(rec: km.Record) -> None:
    a = native_record(rec)
    b = kvmclock.PvclockVcpuTimeInfo.from_bytes(rec.pack())
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    other = native_record(km.Record(**{**rec.__dict__, "flags": rec.flags ^ 1}))
    assert a != other
    with pytest.raises(AttributeError):
        a.version = 2  # type: ignore[misc]


@SETTINGS
@given(rec=readable_records, tsc=u64s)
def test_read_cycles(rec: km.Record, tsc: int) -> None:
    assert native_record(rec).read_cycles(tsc=tsc) == km.read_cycles(rec, tsc)


def test_read_cycles_wraps() -> None:
    # a TSC slightly before tsc_timestamp gives a huge delta (u64 wrap), system_time wraps too
    rec = km.Record(0, 1000, 2**64 - 5, 2**31, 0, 0)
    for tsc in (0, 999, 1000, 1001, 2**64 - 1):
        assert native_record(rec).read_cycles(tsc=tsc) == km.read_cycles(rec, tsc)


@settings(max_examples=300, deadline=None)
@given(version=u32s, sec=u32s, nsec=u32s)
def test_wall_clock_abi(version: int, sec: int, nsec: int) -> None:
    wc = kvmclock.PvclockWallClock(version=version, sec=sec, nsec=nsec)
    assert (wc.version, wc.sec, wc.nsec) == (version, sec, nsec)
    raw = wc.to_bytes()
    assert raw == km.pack_wall_clock(version, sec, nsec)
    assert kvmclock.PvclockWallClock.from_bytes(b=raw) == wc


# ------------------------------------------------------------------ pvclock_read / pvclock_write


def _buffers(size: int) -> list[object]:
    return [bytearray(size), np.zeros(size, dtype=np.uint8), mmap.mmap(-1, size)]


@settings(max_examples=300, deadline=None)
@given(rec=readable_records, tsc=u64s, slot=st.integers(0, 3))
def test_pvclock_read_static_record(rec: km.Record, tsc: int, slot: int) -> None:
    offset = slot * 32
    for buf in _buffers(128):
        memoryview(buf).cast("B")[offset : offset + 32] = rec.pack()  # type: ignore[arg-type]
        ns, flags, stamp = kvmclock.pvclock_read(buffer=buf, tsc=tsc, offset=offset)
        assert ns == km.read_cycles(rec, tsc)
        assert flags == rec.flags
        assert stamp == tsc


def test_pvclock_read_tsc_callable_stamp() -> None:
    rec = km.Record(2, 10**6, 5 * 10**9, 4090445043, -1, 1)
    buf = bytearray(rec.pack())
    calls: list[int] = []

    def tsc() -> int:
        calls.append(10**6 + 2_100_000 * (len(calls) + 1))
        return calls[-1]

    ns, flags, stamp = kvmclock.pvclock_read(buf, tsc)
    assert calls, "the callable is read inside the retry loop"
    assert stamp == calls[-1]
    assert ns == km.read_cycles(rec, stamp)
    assert flags == 1


def test_pvclock_read_tsc_callable_sees_retry() -> None:
    # The callable bumps the version (a concurrent update) on its first call: the read
    # retries and the stamp is the TSC of the iteration that succeeded.
    rec = km.Record(2, 0, 0, 2**31, 0, 0)
    buf = bytearray(rec.pack())
    calls: list[int] = []

    def tsc() -> int:
        calls.append(1000 * (len(calls) + 1))
        if len(calls) == 1:
            struct.pack_into("<I", buf, 0, 4)  # writer published a new version
        return calls[-1]

    ns, _flags, stamp = kvmclock.pvclock_read(buffer=buf, tsc=tsc)
    assert len(calls) == 2
    assert stamp == 2000
    assert ns == km.read_cycles(rec, 2000)


def test_pvclock_read_tsc_callable_error_propagates() -> None:
    buf = bytearray(km.Record(2, 0, 0, 1, 0, 0).pack())

    def boom() -> int:
        raise RuntimeError("tsc source failed")

    with pytest.raises(RuntimeError, match="tsc source failed"):
        kvmclock.pvclock_read(buffer=buf, tsc=boom)


@settings(max_examples=300, deadline=None)
@given(rec=readable_records, slot=st.integers(0, 3))
def test_pvclock_write(rec: km.Record, slot: int) -> None:
    info = native_record(rec)
    offset = slot * 32
    for buf in _buffers(128):
        kvmclock.pvclock_write(buffer=buf, info=info, offset=offset)
        view = bytes(memoryview(buf).cast("B"))  # type: ignore[arg-type]
        assert view[offset : offset + 32] == rec.pack()
        assert view[:offset] == bytes(offset)
        assert view[offset + 32 :] == bytes(128 - offset - 32)


def test_pvclock_write_requires_even_version() -> None:
    buf = bytearray(32)
    with pytest.raises(ValueError, match="version"):
        kvmclock.pvclock_write(buf, kvmclock.PvclockVcpuTimeInfo(version=3))
    assert buf == bytearray(32)


# ------------------------------------------------------------------ PvclockClock


@settings(max_examples=200, deadline=None)
@given(
    valid_flags=st.sampled_from([0, 1]),
    last_value=u64s,
    steps=st.lists(st.tuples(readable_records, u64s), min_size=1, max_size=12),
)
def test_pvclock_clock_matches_reference(
    valid_flags: int, last_value: int, steps: list[tuple[km.Record, int]]
) -> None:
    clock = kvmclock.PvclockClock(valid_flags=valid_flags, last_value=last_value)
    assert clock.last_value == last_value
    ref_last = last_value
    for i, (rec, tsc) in enumerate(steps):
        buf = bytearray(64)
        buf[32:] = rec.pack()
        expected, ref_last, flags_after = km.pvclock_clocksource_read(
            rec, tsc, valid_flags, ref_last
        )
        if i % 2:
            got = clock.read(buffer=buf, tsc=tsc, offset=32)
            assert got == expected
        else:
            ns, flags, stamp = clock.read_with_stamp(buffer=buf, tsc=tsc, offset=32)
            assert (ns, flags, stamp) == (expected, rec.flags, tsc)
        assert clock.last_value == ref_last
        # GUEST_STOPPED is cleared in the shared record, nothing else changes
        assert km.Record.unpack(buf, 32) == km.Record(**{**rec.__dict__, "flags": flags_after})
        assert buf[:32] == bytes(32)


def test_pvclock_clock_clamp_is_unsigned_and_stable_path_skips_it() -> None:
    back = km.Record(0, 0, 100, 2**31, 0, 0)
    clock = kvmclock.PvclockClock(valid_flags=1, last_value=2**63 + 5)
    buf = bytearray(back.pack())
    assert clock.read(buf, 0) == 2**63 + 5  # unsigned compare: 2**63+5 > 100
    stable = km.Record(0, 0, 100, 2**31, 0, km.PVCLOCK_TSC_STABLE_BIT)
    buf[:] = stable.pack()
    assert clock.read(buf, 0) == 100  # both carry the stable bit: raw value, no clamp
    assert clock.last_value == 2**63 + 5
    unstable_guest = kvmclock.PvclockClock(valid_flags=0, last_value=1000)
    assert unstable_guest.read(buf, 0) == 1000  # valid_flags lacks the bit: clamp applies


def test_pvclock_clock_clears_guest_stopped_even_when_stable() -> None:
    flags = km.PVCLOCK_TSC_STABLE_BIT | km.PVCLOCK_GUEST_STOPPED | km.PVCLOCK_COUNTS_FROM_ZERO
    rec = km.Record(6, 0, 7, 2**31, 0, flags)
    buf = bytearray(rec.pack())
    clock = kvmclock.PvclockClock(valid_flags=1)
    ns, seen, _ = clock.read_with_stamp(buf, 0)
    assert ns == 7
    assert seen == flags
    after = km.Record.unpack(buf)
    assert after.flags == flags & ~km.PVCLOCK_GUEST_STOPPED
    assert after.version == 6

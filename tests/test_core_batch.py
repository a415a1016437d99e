"""Batch conversion: element by element equal to the scalar kernel functions.

``pvclock_scale_delta_batch`` is pvclock_scale_delta over a u64 buffer and
``pvclock_read_cycles_batch`` is __pvclock_read_cycles over a u64 buffer of TSC values
(arch/x86/include/asm/pvclock.h); both are checked against the independent reference.
"""

from __future__ import annotations

import array

import kvmclock
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import kernel_math as km

u64s = st.one_of(st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1]),
                 st.integers(0, km.U64_MAX))
u32s = st.integers(0, km.U32_MAX)
pv_shifts = st.integers(-63, 63)
s8_readable = st.integers(-63, 63)


def ref_scale(deltas: list[int], mul_frac: int, shift: int) -> list[int]:
    return [km.pvclock_scale_delta(d, mul_frac, shift) for d in deltas]


def as_u64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


@settings(max_examples=500, deadline=None)
@given(deltas=st.lists(u64s, max_size=64), mul_frac=u32s, shift=pv_shifts)
def test_scale_delta_batch_matches_scalar(deltas: list[int], mul_frac: int, shift: int) -> None:
    arr = as_u64(deltas)
    got = kvmclock.pvclock_scale_delta_batch(deltas=arr, mul_frac=mul_frac, shift=shift)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.uint64
    assert got.shape == (len(deltas),)
    assert [int(x) for x in got] == ref_scale(deltas, mul_frac, shift)
    # the scalar native function agrees too
    assert [int(x) for x in got] == [
        kvmclock.pvclock_scale_delta(delta=d, mul_frac=mul_frac, shift=shift) for d in deltas
    ]
    # input untouched
    assert [int(x) for x in arr] == deltas


@settings(max_examples=500, deadline=None)
@given(
    rec=st.builds(
        km.Record,
        version=st.integers(0, km.U32_MAX // 2).map(lambda v: v * 2),
        tsc_timestamp=u64s,
        system_time=u64s,
        tsc_to_system_mul=u32s,
        tsc_shift=s8_readable,
        flags=st.integers(0, 255),
    ),
    tscs=st.lists(u64s, max_size=64),
)
def test_read_cycles_batch_matches_scalar(rec: km.Record, tscs: list[int]) -> None:
    info = kvmclock.PvclockVcpuTimeInfo.from_bytes(rec.pack())
    got = kvmclock.pvclock_read_cycles_batch(info=info, tscs=as_u64(tscs))
    assert got.dtype == np.uint64
    assert [int(x) for x in got] == [km.read_cycles(rec, t) for t in tscs]
    assert [int(x) for x in got] == [info.read_cycles(t) for t in tscs]


def test_empty_arrays() -> None:
    empty = np.zeros(0, dtype=np.uint64)
    got = kvmclock.pvclock_scale_delta_batch(deltas=empty, mul_frac=2**31, shift=1)
    assert got.shape == (0,) and got.dtype == np.uint64
    out = np.zeros(0, dtype=np.uint64)
    assert kvmclock.pvclock_scale_delta_batch(empty, 2**31, 1, out=out) is out
    info = kvmclock.PvclockVcpuTimeInfo(tsc_to_system_mul=2**31)
    assert kvmclock.pvclock_read_cycles_batch(info=info, tscs=empty).shape == (0,)
    assert kvmclock.pvclock_scale_delta_batch(b"", 1, 0).shape == (0,)


def test_out_is_filled_and_returned() -> None:
    rng = np.random.default_rng(1)
    deltas = rng.integers(0, 2**64, size=1000, dtype=np.uint64)
    out = np.full(1000, 7, dtype=np.uint64)
    ret = kvmclock.pvclock_scale_delta_batch(deltas, 4090445043, -1, out=out)
    assert ret is out
    assert [int(x) for x in out] == ref_scale([int(d) for d in deltas], 4090445043, -1)
    rec = km.Record(2, 12345, 10**9, 4090445043, -1, 1)
    info = kvmclock.PvclockVcpuTimeInfo.from_bytes(rec.pack())
    out2 = np.zeros(1000, dtype=np.uint64)
    assert kvmclock.pvclock_read_cycles_batch(info, deltas, out=out2) is out2
    assert [int(x) for x in out2] == [km.read_cycles(rec, int(t)) for t in deltas]


def test_in_place() -> None:
    rng = np.random.default_rng(2)
    data = rng.integers(0, 2**64, size=4096, dtype=np.uint64)
    expected = ref_scale([int(d) for d in data], 2254857830, 2)
    ret = kvmclock.pvclock_scale_delta_batch(data, 2254857830, 2, out=data)
    assert ret is data
    assert [int(x) for x in data] == expected
    tscs = rng.integers(0, 2**64, size=4096, dtype=np.uint64)
    rec = km.Record(0, 2**63, 5, 2**32 - 1, 3, 0)
    expected2 = [km.read_cycles(rec, int(t)) for t in tscs]
    info = kvmclock.PvclockVcpuTimeInfo.from_bytes(rec.pack())
    assert kvmclock.pvclock_read_cycles_batch(info, tscs, out=tscs) is tscs
    assert [int(x) for x in tscs] == expected2


def test_bytes_and_array_inputs() -> None:
    values = [0, 1, 2**32, 2**63 + 12345, 2**64 - 1, 987654321987654321]
    expected = ref_scale(values, 3_000_000_000, -5)
    for buf in (
        array.array("Q", values),
        array.array("Q", values).tobytes(),
        bytearray(array.array("Q", values).tobytes()),
        memoryview(array.array("Q", values)),
    ):
        got = kvmclock.pvclock_scale_delta_batch(buf, 3_000_000_000, -5)
        assert [int(x) for x in got] == expected, type(buf)
    rec = km.Record(0, 100, 200, 3_000_000_000, -5, 0)
    info = kvmclock.PvclockVcpuTimeInfo.from_bytes(rec.pack())
    got2 = kvmclock.pvclock_read_cycles_batch(info, array.array("Q", values))
    assert [int(x) for x in got2] == [km.read_cycles(rec, v) for v in values]
    # out may be an array.array('Q') as well
    out = array.array("Q", bytes(8 * len(values)))
    kvmclock.pvclock_scale_delta_batch(array.array("Q", values), 3_000_000_000, -5, out=out)
    assert list(out) == expected


@pytest.mark.parametrize("shift", [-63, -1, 0, 5, 63])
def test_large_array(shift: int) -> None:
    rng = np.random.default_rng(shift + 100)
    n = 2**20
    deltas = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    mul = int(rng.integers(0, 2**32))
    got = kvmclock.pvclock_scale_delta_batch(deltas, mul, shift)
    # exact check on a sample against the big-int reference ...
    idx = rng.integers(0, n, size=2000)
    for i in idx:
        assert int(got[i]) == km.pvclock_scale_delta(int(deltas[i]), mul, shift)
    # ... and the whole array against an exact numpy formulation (32-bit halves, no overflow)
    d = deltas >> np.uint64(-shift) if shift < 0 else deltas << np.uint64(shift)
    lo = (d & np.uint64(0xFFFFFFFF)) * np.uint64(mul)
    hi = (d >> np.uint64(32)) * np.uint64(mul)
    expected = hi + (lo >> np.uint64(32))
    assert np.array_equal(got, expected)


def test_large_read_cycles_batch() -> None:
    rng = np.random.default_rng(7)
    n = 2**20
    tscs = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    rec = km.Record(2, int(tscs[0]), 10**12, 4090445043, -1, 1)
    info = kvmclock.PvclockVcpuTimeInfo.from_bytes(rec.pack())
    got = kvmclock.pvclock_read_cycles_batch(info, tscs)
    for i in rng.integers(0, n, size=2000):
        assert int(got[i]) == km.read_cycles(rec, int(tscs[i]))
    deltas = tscs - np.uint64(rec.tsc_timestamp)  # u64 wrap, as in __pvclock_read_cycles
    scalar = kvmclock.pvclock_scale_delta_batch(deltas, rec.tsc_to_system_mul, -1)
    assert np.array_equal(got, scalar + np.uint64(rec.system_time))


def test_non_contiguous_slice_copy_is_fine() -> None:
    # a contiguous copy of a strided view converts like the scalar function
    base = np.arange(0, 2000, dtype=np.uint64) * np.uint64(2**40 + 3)
    view = np.ascontiguousarray(base[::2])
    got = kvmclock.pvclock_scale_delta_batch(view, 2**31 + 1, 1)
    assert [int(x) for x in got] == ref_scale([int(x) for x in view], 2**31 + 1, 1)

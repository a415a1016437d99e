"""Native core math vs the independent kernel reference (tests/reference/kernel_math.py).

Every scalar function of the native contract is compared with the big-integer transcription of its
kernel source over the full input ranges (hypothesis), on a grid of edge values, and on real
TSC rates. Calls use keyword names, as callers outside the project do. When the reference
raises (the kernel would spin or fault), the native function must raise the same class.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import kvmclock
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import kernel_math as km

U64_MAX = km.U64_MAX
U32_MAX = km.U32_MAX

U64_EDGES = [
    0, 1, 2, 3, 999_999_999, 10**9, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1,
    2**62, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1,
]
U32_EDGES = [0, 1, 2, 1000, 10**6, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 2, 2**32 - 1]
S64_EDGES = [-(2**63), -(2**63) + 1, -(2**32), -3, -1, 0, 1, 3, 2**32, 2**63 - 1]
S32_EDGES = [-(2**31), -(2**31) + 1, -1_000_000, -1_000_001, -250, -1, 0, 1, 250,
             2**31 - 1 - 1_000_000, 2**31 - 1_000_000, 2**31 - 1]
PV_SHIFTS = [-63, -62, -33, -32, -31, -1, 0, 1, 31, 32, 33, 62, 63]
SHR_SHIFTS = [0, 1, 31, 32, 33, 63, 64, 65, 95, 96, 97, 126, 127]

u64s = st.one_of(st.sampled_from(U64_EDGES), st.integers(0, U64_MAX))
u32s = st.one_of(st.sampled_from(U32_EDGES), st.integers(0, U32_MAX))
s64s = st.one_of(st.sampled_from(S64_EDGES), st.integers(-(2**63), 2**63 - 1))
s32s = st.one_of(st.sampled_from(S32_EDGES), st.integers(-(2**31), 2**31 - 1))
pv_shifts = st.integers(-63, 63)
shr_shifts = st.integers(0, 127)
frac_bits = st.integers(0, 63)
# Real TSC rates: 1 MHz .. 10 GHz, in kHz as the kernel stores them.
tsc_khz = st.integers(1_000, 10_000_000)

KERNEL_ERRORS = (ValueError, ZeroDivisionError, OverflowError)

CHEAP = settings(max_examples=2000, deadline=None)
MEDIUM = settings(max_examples=1000, deadline=None)


def assert_matches(name: str, **kwargs: int) -> Any:
    """Call ``kvmclock.<name>(**kwargs)`` and the reference; same value or same exception class."""
    native: Callable[..., Any] = getattr(kvmclock, name)
    reference: Callable[..., Any] = getattr(km, name)
    try:
        expected = reference(**kwargs)
    except KERNEL_ERRORS as exc:
        with pytest.raises(type(exc)):
            native(**kwargs)
        return None
    actual = native(**kwargs)
    assert actual == expected, f"{name}({kwargs}) = {actual!r}, kernel reference {expected!r}"
    assert type(actual) is type(expected), f"{name} returned {type(actual).__name__}"
    if isinstance(expected, tuple):
        assert all(type(x) is int for x in actual)
    return actual


# ------------------------------------------------------------------------ math64.h


@CHEAP
@given(a=u64s, mul=u32s, shift=shr_shifts)
def test_mul_u64_u32_shr(a: int, mul: int, shift: int) -> None:
    assert_matches("mul_u64_u32_shr", a=a, mul=mul, shift=shift)


@CHEAP
@given(a=u64s, mul=u64s, shift=shr_shifts)
def test_mul_u64_u64_shr(a: int, mul: int, shift: int) -> None:
    assert_matches("mul_u64_u64_shr", a=a, mul=mul, shift=shift)


@CHEAP
@given(a=s64s, b=u64s, shift=shr_shifts)
def test_mul_s64_u64_shr(a: int, b: int, shift: int) -> None:
    assert_matches("mul_s64_u64_shr", a=a, b=b, shift=shift)


@CHEAP
@given(a=u64s, mul=u32s, divisor=u32s)
def test_mul_u64_u32_div(a: int, mul: int, divisor: int) -> None:
    assert_matches("mul_u64_u32_div", a=a, mul=mul, divisor=divisor)


def test_math64_edge_grid() -> None:
    for a, mul, shift in itertools.product(U64_EDGES, U32_EDGES, SHR_SHIFTS):
        assert_matches("mul_u64_u32_shr", a=a, mul=mul, shift=shift)
    for a, mul, shift in itertools.product(U64_EDGES, U64_EDGES, SHR_SHIFTS):
        assert_matches("mul_u64_u64_shr", a=a, mul=mul, shift=shift)
    for a, b, shift in itertools.product(S64_EDGES, U64_EDGES, SHR_SHIFTS):
        assert_matches("mul_s64_u64_shr", a=a, b=b, shift=shift)
    for a, mul, divisor in itertools.product(U64_EDGES, U32_EDGES, U32_EDGES):
        assert_matches("mul_u64_u32_div", a=a, mul=mul, divisor=divisor)


def test_mul_s64_u64_shr_rounds_toward_zero() -> None:
    # sign-magnitude, -3 * 1 >> 1 is -1 (not -2 as an arithmetic shift).
    assert kvmclock.mul_s64_u64_shr(a=-3, b=1, shift=1) == (-1) & U64_MAX
    # abs(S64_MIN) wraps back to 2**63, the right magnitude.
    assert kvmclock.mul_s64_u64_shr(a=-(2**63), b=1, shift=0) == 2**63
    assert kvmclock.mul_s64_u64_shr(a=-(2**63), b=2, shift=1) == 2**63


def test_mul_u64_u32_div_faults_like_divq() -> None:
    with pytest.raises(ZeroDivisionError):
        kvmclock.mul_u64_u32_div(a=1, mul=1, divisor=0)
    with pytest.raises(OverflowError):  # quotient 2**64 does not fit: #DE since the 2019 asm
        kvmclock.mul_u64_u32_div(a=2**63, mul=2, divisor=1)
    assert kvmclock.mul_u64_u32_div(a=U64_MAX, mul=U32_MAX, divisor=U32_MAX) == U64_MAX


# ------------------------------------------------------------------------ pvclock.h / pvclock.c


@CHEAP
@given(delta=u64s, mul_frac=u32s, shift=pv_shifts)
def test_pvclock_scale_delta(delta: int, mul_frac: int, shift: int) -> None:
    got = assert_matches("pvclock_scale_delta", delta=delta, mul_frac=mul_frac, shift=shift)
    if shift == 0:  # x86-64: mulq; shrd $32 is mul_u64_u32_shr(delta, mul, 32)
        assert got == kvmclock.mul_u64_u32_shr(a=delta, mul=mul_frac, shift=32)


def test_pvclock_scale_delta_edge_grid() -> None:
    for delta, mul, shift in itertools.product(U64_EDGES, U32_EDGES, PV_SHIFTS):
        assert_matches("pvclock_scale_delta", delta=delta, mul_frac=mul, shift=shift)


@CHEAP
@given(tsc_to_system_mul=u32s, tsc_shift=pv_shifts)
def test_pvclock_tsc_khz(tsc_to_system_mul: int, tsc_shift: int) -> None:
    assert_matches(
        "pvclock_tsc_khz", tsc_to_system_mul=tsc_to_system_mul, tsc_shift=tsc_shift
    )


def test_pvclock_tsc_khz_edge_grid() -> None:
    for mul, shift in itertools.product(U32_EDGES, PV_SHIFTS):
        assert_matches("pvclock_tsc_khz", tsc_to_system_mul=mul, tsc_shift=shift)
    # left shift wraps: (10**6 << 32) / 1 = 2**32 * 10**6; << 63 keeps only bit 63.
    assert kvmclock.pvclock_tsc_khz(tsc_to_system_mul=1, tsc_shift=-63) == 0


# ------------------------------------------------------------------------ x86.c


@CHEAP
@given(dividend=u32s, divisor=u32s)
def test_div_frac(dividend: int, divisor: int) -> None:
    assert_matches("div_frac", dividend=dividend, divisor=divisor)


@CHEAP
@given(divisor=st.integers(1, U32_MAX), data=st.data())
def test_div_frac_valid_domain(divisor: int, data: st.DataObject) -> None:
    dividend = data.draw(st.integers(0, divisor - 1))
    got = assert_matches("div_frac", dividend=dividend, divisor=divisor)
    assert got == (dividend << 32) // divisor


@CHEAP
@given(scaled_hz=u64s, base_hz=u64s)
def test_get_time_scale_full_range(scaled_hz: int, base_hz: int) -> None:
    got = assert_matches("get_time_scale", scaled_hz=scaled_hz, base_hz=base_hz)
    if got is not None:
        shift, mult = got
        assert -62 <= shift <= 64
        assert 0 <= mult <= U32_MAX


def test_get_time_scale_edge_grid() -> None:
    for scaled, base in itertools.product(U64_EDGES, U64_EDGES):
        assert_matches("get_time_scale", scaled_hz=scaled, base_hz=base)


def test_get_time_scale_known_values() -> None:
    # A real host pair and the extreme shift 64.
    assert kvmclock.get_time_scale(scaled_hz=10**9, base_hz=2_100_000_000) == (-1, 4090445043)
    assert kvmclock.get_time_scale(scaled_hz=2_100_000_000, base_hz=10**9) == (2, 2254857830)
    assert kvmclock.get_time_scale(scaled_hz=2**63 + 1, base_hz=1) == (64, 2**31)


@pytest.mark.parametrize(
    ("scaled_hz", "base_hz", "arg"),
    [
        (0, 1, "scaled_hz"),
        (2**63, 10**9, "scaled_hz"),
        (10**9, 0, "base_hz"),
        (0, 0, "scaled_hz|base_hz"),
    ],
)
def test_get_time_scale_endless_loop_inputs(scaled_hz: int, base_hz: int, arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        kvmclock.get_time_scale(scaled_hz=scaled_hz, base_hz=base_hz)


@MEDIUM
@given(khz=tsc_khz)
def test_get_time_scale_real_tsc_rates(khz: int) -> None:
    hz = khz * 1000
    # TSC -> ns (kvm_guest_time_update): one second of cycles scales to 10**9 ns.
    shift, mult = assert_matches("get_time_scale", scaled_hz=10**9, base_hz=hz)
    assert abs(kvmclock.pvclock_scale_delta(delta=hz, mul_frac=mult, shift=shift) - 10**9) <= 2
    # round trip through the guest's pvclock_tsc_khz (kvm_get_tsc_khz)
    back = assert_matches("pvclock_tsc_khz", tsc_to_system_mul=mult, tsc_shift=shift)
    assert abs(back - khz) <= 1 + (1 << max(0, -shift))
    # ns -> TSC (kvm_set_tsc_khz / nsec_to_cycles)
    shift2, mult2 = assert_matches("get_time_scale", scaled_hz=hz, base_hz=10**9)
    cycles = kvmclock.pvclock_scale_delta(delta=10**9, mul_frac=mult2, shift=shift2)
    assert abs(cycles - hz) <= max(hz >> 30, 1 << abs(shift2)) + 1


def test_get_time_scale_rate_sweep() -> None:
    for khz in [1_000, 1_001, 14_318, 1_000_000, 2_100_000, 2_099_999, 3_579_545,
                4_294_967, 4_294_968, 9_999_999, 10_000_000]:
        assert_matches("get_time_scale", scaled_hz=10**9, base_hz=khz * 1000)
        assert_matches("get_time_scale", scaled_hz=khz * 1000, base_hz=10**9)


@CHEAP
@given(khz=u32s, ppm=s32s)
def test_adjust_tsc_khz(khz: int, ppm: int) -> None:
    assert_matches("adjust_tsc_khz", khz=khz, ppm=ppm)


def test_adjust_tsc_khz_edges() -> None:
    for khz, ppm in itertools.product(U32_EDGES, S32_EDGES):
        assert_matches("adjust_tsc_khz", khz=khz, ppm=ppm)
    # default tsc_tolerance_ppm 250 around a 2.1 GHz host
    assert kvmclock.adjust_tsc_khz(khz=2_100_000, ppm=-250) == 2_099_475
    assert kvmclock.adjust_tsc_khz(khz=2_100_000, ppm=250) == 2_100_525


@CHEAP
@given(tsc=u64s, ratio=u64s, frac_bits=frac_bits)
def test_scale_tsc(tsc: int, ratio: int, frac_bits: int) -> None:
    assert_matches("scale_tsc", tsc=tsc, ratio=ratio, frac_bits=frac_bits)


@MEDIUM
@given(tsc=u64s, frac_bits=frac_bits)
def test_scale_tsc_default_ratio_is_identity(tsc: int, frac_bits: int) -> None:
    assert kvmclock.scale_tsc(tsc=tsc, ratio=1 << frac_bits, frac_bits=frac_bits) == tsc


@CHEAP
@given(user_tsc_khz=u32s, tsc_khz=u32s, frac_bits=frac_bits)
def test_tsc_scaling_ratio(user_tsc_khz: int, tsc_khz: int, frac_bits: int) -> None:
    assert_matches(
        "tsc_scaling_ratio", user_tsc_khz=user_tsc_khz, tsc_khz=tsc_khz, frac_bits=frac_bits
    )


def test_tsc_scaling_ratio_vendor_constants() -> None:
    for user, host, frac in itertools.product(U32_EDGES, U32_EDGES, [0, 1, 32, 48, 62, 63]):
        assert_matches("tsc_scaling_ratio", user_tsc_khz=user, tsc_khz=host, frac_bits=frac)
    # a 1 kHz guest on a 2.1 GHz VMX host
    assert kvmclock.tsc_scaling_ratio(user_tsc_khz=1, tsc_khz=2_100_000, frac_bits=48) == (
        134035703
    )
    # VMX overflow (user/host >= 2**16) raises instead of wrapping (current x86-64 divq)
    with pytest.raises(OverflowError):
        kvmclock.tsc_scaling_ratio(user_tsc_khz=2**16, tsc_khz=1, frac_bits=48)


# ------------------------------------------------------------------------ clocksource


@CHEAP
@given(from_hz=u32s, to_hz=u32s, maxsec=u32s)
def test_clocks_calc_mult_shift(from_hz: int, to_hz: int, maxsec: int) -> None:
    assert_matches("clocks_calc_mult_shift", from_hz=from_hz, to_hz=to_hz, maxsec=maxsec)


def test_clocks_calc_mult_shift_edges_and_quirk() -> None:
    for f, t, m in itertools.product(U32_EDGES, U32_EDGES, [0, 1, 600, 2**31, U32_MAX]):
        assert_matches("clocks_calc_mult_shift", from_hz=f, to_hz=t, maxsec=m)
    assert kvmclock.clocks_calc_mult_shift(from_hz=24_000_000, to_hz=10**9, maxsec=600) == (
        0x29AAAAAB, 24,
    )
    # Fall-through: no shift 32..1 fits, the loop ends at shift 0 with the shift-1 mult.
    mult, shift = kvmclock.clocks_calc_mult_shift(from_hz=1, to_hz=U32_MAX, maxsec=U32_MAX)
    assert shift == 0
    assert mult == ((U32_MAX << 1) // 1) & U32_MAX
    assert mult != U32_MAX  # not the shift-0 candidate


@CHEAP
@given(cycles=u64s, mult=u32s, shift=st.integers(0, 63))
def test_clocksource_cyc2ns(cycles: int, mult: int, shift: int) -> None:
    assert_matches("clocksource_cyc2ns", cycles=cycles, mult=mult, shift=shift)


def test_clocksource_cyc2ns_edges() -> None:
    for c, m, s in itertools.product(U64_EDGES, U32_EDGES, [0, 1, 22, 31, 32, 63]):
        assert_matches("clocksource_cyc2ns", cycles=c, mult=m, shift=s)
    # The 64-bit product wraps (no 128-bit widening).
    assert kvmclock.clocksource_cyc2ns(cycles=2**32, mult=2**32 - 1, shift=32) == (
        ((2**64 - 2**32) & U64_MAX) >> 32
    )
    assert kvmclock.clocksource_cyc2ns(cycles=2**33, mult=2**31, shift=1) == 0

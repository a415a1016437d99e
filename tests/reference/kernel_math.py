"""Independent big-integer reference of the kernel clock math behind the native contract.

Written from the kernel's C semantics (torvalds/linux), not from the Rust core: every value is
a Python int and every place where C arithmetic wraps is masked explicitly (``& MASK64``,
``& MASK32``). Where the kernel would spin forever or fault, the reference raises the
exception class the package promises: endless loop or undefined shift -> ValueError, division by
zero -> ZeroDivisionError, quotient that does not fit -> OverflowError. This module must never
import kvmclock: it is what the tests compare kvmclock against.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MASK32 = (1 << 32) - 1
MASK64 = (1 << 64) - 1
U32_MAX = MASK32
U64_MAX = MASK64
S64_MIN = -(1 << 63)
S64_MAX = (1 << 63) - 1
S32_MIN = -(1 << 31)
S32_MAX = (1 << 31) - 1

PVCLOCK_TSC_STABLE_BIT = 1
PVCLOCK_GUEST_STOPPED = 2
PVCLOCK_COUNTS_FROM_ZERO = 4

# struct pvclock_vcpu_time_info (arch/x86/include/asm/pvclock-abi.h), packed, little endian:
# u32 version, u32 pad0, u64 tsc_timestamp, u64 system_time, u32 tsc_to_system_mul,
# s8 tsc_shift, u8 flags, u8 pad[2].
PVCLOCK_RECORD = struct.Struct("<I4xQQIbB2x")
# struct pvclock_wall_clock: u32 version, u32 sec, u32 nsec.
PVCLOCK_WALL_CLOCK = struct.Struct("<III")
assert PVCLOCK_RECORD.size == 32
assert PVCLOCK_WALL_CLOCK.size == 12


def _to_s64(v: int) -> int:
    """Reinterpret the low 64 bits of ``v`` as a signed s64 (two's complement)."""
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def _to_s32(v: int) -> int:
    """Reinterpret the low 32 bits of ``v`` as a signed s32 (two's complement)."""
    v &= MASK32
    return v - (1 << 32) if v >> 31 else v


# --------------------------------------------------------------------------------------------
# include/linux/math64.h, arch/x86/include/asm/div64.h (x86-64, ARCH_SUPPORTS_INT128)
# --------------------------------------------------------------------------------------------


def mul_u64_u32_shr(a: int, mul: int, shift: int) -> int:
    """math64.h ``mul_u64_u32_shr``: low 64 bits of the 128-bit (a * mul) >> shift, shift 0..127."""
    if not 0 <= shift <= 127:
        raise ValueError(f"shift must be in 0..127, got {shift}")
    return ((a * mul) >> shift) & MASK64


def mul_u64_u64_shr(a: int, mul: int, shift: int) -> int:
    """math64.h ``mul_u64_u64_shr``: low 64 bits of the 128-bit (a * mul) >> shift, shift 0..127."""
    if not 0 <= shift <= 127:
        raise ValueError(f"shift must be in 0..127, got {shift}")
    return ((a * mul) >> shift) & MASK64


def mul_s64_u64_shr(a: int, b: int, shift: int) -> int:
    """math64.h ``mul_s64_u64_shr``: sign-magnitude, so it rounds toward zero; result as u64.

    ``abs(S64_MIN)`` wraps back to S64_MIN, whose u64 value 2**63 is the right magnitude.
    """
    magnitude = (abs(a)) & MASK64
    ret = mul_u64_u64_shr(magnitude, b, shift)
    if a < 0:
        ret = (-_to_s64(ret)) & MASK64  # -((s64) ret), wrapping
    return ret


def mul_u64_u32_div(a: int, mul: int, divisor: int) -> int:
    """x86-64 ``mul_u64_u32_div`` (``mulq; divq`` since 2019): #DE when the quotient >= 2**64."""
    if divisor == 0:
        raise ZeroDivisionError("divisor must be non-zero (divq faults on 0)")
    q = (a * mul) // divisor
    if q > MASK64:
        raise OverflowError(f"quotient a*mul/divisor = {q} does not fit u64 (divq #DE)")
    return q


# --------------------------------------------------------------------------------------------
# arch/x86/include/asm/pvclock.h, arch/x86/kernel/pvclock.c
# --------------------------------------------------------------------------------------------


def pvclock_scale_delta(delta: int, mul_frac: int, shift: int) -> int:
    """pvclock.h ``pvclock_scale_delta``: pre-shift the u64 delta, then bits 32..95 of delta*mul.

    |shift| >= 64 is an undefined C shift; the model rejects it.
    """
    if not -63 <= shift <= 63:
        raise ValueError(f"shift must be in -63..63, got {shift}")
    if shift < 0:
        delta = delta >> (-shift)
    else:
        delta = (delta << shift) & MASK64  # bits fall off the top
    # mulq; shrd $32: bits 32..95 of the 96-bit product
    return ((delta * mul_frac) >> 32) & MASK64


def pvclock_tsc_khz(tsc_to_system_mul: int, tsc_shift: int) -> int:
    """pvclock.c ``pvclock_tsc_khz``: (10**6 << 32) / mul, shifted by tsc_shift (left wraps)."""
    if tsc_to_system_mul == 0:
        raise ZeroDivisionError("tsc_to_system_mul must be non-zero")
    if not -63 <= tsc_shift <= 63:
        raise ValueError(f"tsc_shift must be in -63..63, got {tsc_shift}")
    khz = ((1_000_000 << 32) // tsc_to_system_mul) & MASK64  # do_div: u64 by u32
    if tsc_shift < 0:
        khz = (khz << (-tsc_shift)) & MASK64
    else:
        khz >>= tsc_shift
    return khz


@dataclass(frozen=True)
class Record:
    """struct pvclock_vcpu_time_info as plain ints (pvclock-abi.h)."""

    version: int = 0
    tsc_timestamp: int = 0
    system_time: int = 0
    tsc_to_system_mul: int = 0
    tsc_shift: int = 0
    flags: int = 0

    def pack(self) -> bytes:
        """The 32 little-endian ABI bytes, pads zero."""
        return PVCLOCK_RECORD.pack(
            self.version,
            self.tsc_timestamp,
            self.system_time,
            self.tsc_to_system_mul,
            self.tsc_shift,
            self.flags,
        )

    @classmethod
    def unpack(cls, b: bytes | bytearray | memoryview, offset: int = 0) -> Record:
        """Decode 32 ABI bytes at ``offset`` (pads ignored, as the guest ignores them)."""
        return cls(*PVCLOCK_RECORD.unpack_from(b, offset))


def pack_record(
    version: int,
    tsc_timestamp: int,
    system_time: int,
    tsc_to_system_mul: int,
    tsc_shift: int,
    flags: int,
) -> bytes:
    """Pack a pvclock_vcpu_time_info record into its 32 ABI bytes."""
    return Record(version, tsc_timestamp, system_time, tsc_to_system_mul, tsc_shift, flags).pack()


def pack_wall_clock(version: int, sec: int, nsec: int) -> bytes:
    """Pack a pvclock_wall_clock record into its 12 ABI bytes."""
    return PVCLOCK_WALL_CLOCK.pack(version, sec, nsec)


def pvclock_read_cycles(
    tsc_timestamp: int, system_time: int, tsc_to_system_mul: int, tsc_shift: int, tsc: int
) -> int:
    """pvclock.h ``__pvclock_read_cycles``: system_time + scale(tsc - tsc_timestamp), u64 wrap."""
    delta = (tsc - tsc_timestamp) & MASK64
    offset = pvclock_scale_delta(delta, tsc_to_system_mul, tsc_shift)
    return (system_time + offset) & MASK64


def read_cycles(rec: Record, tsc: int) -> int:
    """``__pvclock_read_cycles`` of a Record."""
    return pvclock_read_cycles(
        rec.tsc_timestamp, rec.system_time, rec.tsc_to_system_mul, rec.tsc_shift, tsc
    )


def pvclock_clocksource_read(
    rec: Record, tsc: int, valid_flags: int, last_value: int
) -> tuple[int, int, int]:
    """pvclock.c ``pvclock_clocksource_read`` after a successful version-retry iteration.

    Returns ``(value, new_last_value, record_flags_after)``: GUEST_STOPPED is cleared in the
    shared record before the stable check; the raw value is returned untouched when both
    valid_flags and the record's flags carry the stable bit; otherwise value = max(raw, last)
    compared as u64 and last_value moves up to it (single-threaded view of the cmpxchg loop).
    """
    raw = read_cycles(rec, tsc)
    flags_after = rec.flags
    if rec.flags & PVCLOCK_GUEST_STOPPED:
        flags_after = rec.flags & ~PVCLOCK_GUEST_STOPPED & 0xFF
    if valid_flags & PVCLOCK_TSC_STABLE_BIT and rec.flags & PVCLOCK_TSC_STABLE_BIT:
        return raw, last_value, flags_after
    if raw < last_value:
        return last_value, last_value, flags_after
    return raw, raw, flags_after


# --------------------------------------------------------------------------------------------
# arch/x86/kvm/x86.c (host side)
# --------------------------------------------------------------------------------------------


def div_frac(dividend: int, divisor: int) -> int:
    """x86.c ``div_frac``: (dividend << 32) / divisor with one ``divl``; #DE unless it fits u32."""
    if divisor == 0:
        raise ZeroDivisionError("divisor must be non-zero (divl faults on 0)")
    if dividend >= divisor:
        raise OverflowError(
            f"dividend must be < divisor for the quotient to fit u32, got {dividend} >= {divisor}"
        )
    return ((dividend << 32) // divisor) & MASK32


def get_time_scale(scaled_hz: int, base_hz: int) -> tuple[int, int]:
    """x86.c ``kvm_get_time_scale``: a literal transcription of its two loops with u64 wraps.

    Returns ``(shift, mult)``. The kernel spins forever when loop 1 halves base to 0
    (base_hz == 0, or 2*scaled_hz wraps to 0: scaled_hz in {0, 2**63}); that raises ValueError.
    """
    scaled64 = scaled_hz & MASK64
    tps64 = base_hz & MASK64
    shift = 0  # int32_t in the kernel, stored through an s8 pointer
    while tps64 > ((scaled64 * 2) & MASK64) or (tps64 & 0xFFFF_FFFF_0000_0000):
        tps64 >>= 1
        shift -= 1
    tps32 = tps64 & MASK32
    if tps32 == 0:
        # Loop 2 would double 0 forever (after halving scaled64 below 2**32).
        if base_hz == 0:
            raise ValueError("base_hz must be non-zero: kvm_get_time_scale would never return")
        raise ValueError(
            f"scaled_hz must not be 0 or 2**63 (got {scaled_hz}): 2*scaled_hz wraps to 0 "
            "and kvm_get_time_scale would never return"
        )
    iterations = 0
    while tps32 <= scaled64 or (scaled64 & 0xFFFF_FFFF_0000_0000):
        if (scaled64 & 0xFFFF_FFFF_0000_0000) or (tps32 & 0x8000_0000):
            scaled64 >>= 1
        else:
            tps32 = (tps32 << 1) & MASK32
        shift += 1
        iterations += 1
        assert iterations < 256, "loop 2 terminates for every non-zero tps32"
    return _s8(shift), div_frac(scaled64, tps32)


def _s8(v: int) -> int:
    """Store an int through an ``s8 *`` (truncate to 8 bits, signed)."""
    v &= 0xFF
    return v - 256 if v >> 7 else v


def adjust_tsc_khz(khz: int, ppm: int) -> int:
    """x86.c ``adjust_tsc_khz``: (u64)khz * (1000000 + ppm) / 10**6, truncated to u32.

    ``1000000 + ppm`` is an ``int``: the kernel builds with -fno-strict-overflow, so it wraps
    as s32; the factor is then sign-extended to u64 and the product wraps mod 2**64.
    """
    factor = _to_s32(1_000_000 + ppm) & MASK64
    v = (khz * factor) & MASK64
    v //= 1_000_000
    return v & MASK32


def scale_tsc(tsc: int, ratio: int, frac_bits: int) -> int:
    """x86.c ``__scale_tsc``/``kvm_scale_tsc``: mul_u64_u64_shr(tsc, ratio, frac).

    kvm_scale_tsc returns tsc unchanged when ratio is the default 2**frac; that is the same
    number the multiply gives for frac_bits 0..63.
    """
    if ratio == (1 << frac_bits):
        return tsc
    return mul_u64_u64_shr(tsc, ratio, frac_bits)


def tsc_scaling_ratio(user_tsc_khz: int, tsc_khz: int, frac_bits: int) -> int:
    """x86.c ``set_tsc_khz`` ratio step: mul_u64_u32_div(1 << frac, user_tsc_khz, tsc_khz)."""
    if not 0 <= frac_bits <= 63:
        raise ValueError(f"frac_bits must be in 0..63, got {frac_bits}")
    return mul_u64_u32_div(1 << frac_bits, user_tsc_khz, tsc_khz)


# --------------------------------------------------------------------------------------------
# kernel/time/clocksource.c, include/linux/clocksource.h
# --------------------------------------------------------------------------------------------


def clocks_calc_mult_shift(from_hz: int, to_hz: int, maxsec: int) -> tuple[int, int]:
    """clocksource.c ``clocks_calc_mult_shift`` (all u32 args), including its fall-through.

    When no shift in 32..1 fits, the loop ends with shift 0 and the shift-1 mult (truncated).
    """
    if from_hz == 0:
        raise ZeroDivisionError("from_hz must be non-zero (do_div by 0)")
    tmp = ((maxsec * from_hz) & MASK64) >> 32
    sftacc = 32
    while tmp:
        tmp >>= 1
        sftacc -= 1
    sft = 32
    while sft > 0:
        tmp = ((to_hz << sft) & MASK64)
        tmp = (tmp + from_hz // 2) & MASK64
        tmp //= from_hz
        if (tmp >> sftacc) == 0:
            break
        sft -= 1
    return tmp & MASK32, sft


def clocksource_cyc2ns(cycles: int, mult: int, shift: int) -> int:
    """clocksource.h ``clocksource_cyc2ns``: ((u64)cycles * mult) >> shift, product wraps at 64
    bits, returned through s64 (so shift 0 with the top bit set is negative)."""
    if not 0 <= shift <= 63:
        raise ValueError(f"shift must be in 0..63, got {shift}")
    return _to_s64(((cycles * mult) & MASK64) >> shift)

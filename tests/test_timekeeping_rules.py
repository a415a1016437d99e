"""Edge tests of the timekeeping rules (kernel/time/timekeeping.c, clocksource.c, kernel/notifier.c
of Linux 4.13), each at its boundary, with expected values written out from the kernel's integer
arithmetic in the test (never read back from the model).

A ``ManualCs`` clocksource returns a counter value the test sets, so every delta, wrap and
interval is chosen exactly; the kernel under test is built but not booted (no tick, no watchdog
timer), and the timekeeper / watchdog functions are called directly as the kernel calls them.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmclock.errors import LivelockDetected
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalCpu, PhysicalMachine, World
from kvmclock.timekeeping import (
    CLOCK_SOURCE_IS_CONTINUOUS,
    CLOCK_SOURCE_MUST_VERIFY,
    CLOCK_SOURCE_RESELECT,
    CLOCK_SOURCE_SUSPEND_NONSTOP,
    CLOCK_SOURCE_UNSTABLE,
    CLOCK_SOURCE_VALID_FOR_HRES,
    CLOCK_SOURCE_WATCHDOG,
    NOTIFY_BAD,
    NOTIFY_DONE,
    NOTIFY_OK,
    NOTIFY_STOP,
    NOTIFY_STOP_MASK,
    TK_OFFS_BOOT,
    TK_OFFS_REAL,
    TK_OFFS_TAI,
    VCLOCK_HVCLOCK,
    VCLOCK_NONE,
    VCLOCK_PVCLOCK,
    VCLOCK_TSC,
    WATCHDOG_THRESHOLD,
    Clocksource,
    NotifierChain,
    clocksource_delta,
)
from kvmclock.timekeeping.clocksource import (
    clocksource_mask,
    clocksource_max_adjustment,
    jiffies_shift,
    tick_nsec,
)
from kvmclock.timekeeping.timekeeper import (
    NTP_SCALE_SHIFT,
    TK_CLEAR_NTP,
    TK_CLOCK_WAS_SET,
    TK_MIRROR,
)
from reference import kernel_math as km

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
NSEC = 1_000_000_000
THRESHOLD = NSEC >> 4  # WATCHDOG_THRESHOLD of 2017: 62.5 ms, written out here


class ManualCs(Clocksource):
    """A clocksource whose counter is ``value`` (masked), read on any CPU; counts its reads.

    Its stamp is ``stamp_of(value)``, deliberately not the counter (patch 01 lets a non-TSC
    driver report anything), so a consumer that takes the stamp for the cycles is caught.
    """

    def __init__(
        self,
        kernel: Kernel,
        name: str = "manual",
        *,
        rating: int = 100,
        mask: int = U64,
        mult: int = 3,
        shift: int = 1,
        flags: int = CLOCK_SOURCE_IS_CONTINUOUS,
        vclock_mode: int = VCLOCK_NONE,
    ) -> None:
        super().__init__(
            kernel, name, rating, mask, flags=flags, vclock_mode=vclock_mode, mult=mult, shift=shift
        )
        self.value = 0
        self.reads = 0

    def _read_counter(self) -> tuple[int, int]:
        self.reads += 1
        v = self.value & self.mask
        return v, stamp_of(v)


def stamp_of(v: int) -> int:
    """ManualCs's stamp for counter value ``v``."""
    return v ^ 0x5A5A_5A5A_5A5A


def bare_kernel(profile: str = "gtod", hz: int = 250, ncpus: int = 1) -> Kernel:
    """A kernel on a machine without platform counters or TSC clocksource, not booted."""
    m = PhysicalMachine(World(0), ncpus, hpet=False, acpi_pm=False, features={"notsc"})
    return Kernel(m, profile, hz=hz)


def tk_on(
    *,
    now_ns: int,
    c0: int = 0,
    hz: int = 250,
    profile: str = "gtod",
    boot_ns: int = 0,
    **cs_kw: Any,
) -> tuple[Kernel, ManualCs]:
    """``timekeeping_init`` on a ManualCs at counter ``c0`` and wall time ``now_ns``."""
    k = bare_kernel(profile, hz)
    cs = ManualCs(k, **cs_kw)
    cs.value = c0
    k.timekeeper.timekeeping_init(cs, now_ns, boot_ns)
    return k, cs


# ================================================================================================
# clocksource helpers (include/linux/clocksource.h, jiffies.h, kernel/time/clocksource.c)
# ================================================================================================
def test_clocksource_mask_edges() -> None:
    assert clocksource_mask(1) == 1
    assert clocksource_mask(24) == 0xFFFFFF
    assert clocksource_mask(64) == U64
    for bad in (0, 65):
        with pytest.raises(ValueError, match="bits"):
            clocksource_mask(bad)


@pytest.mark.parametrize(
    ("now", "last", "mask", "expected"),
    [
        (0x10 + 0x7FFFFFFF, 0x10, U32, 0x7FFFFFFF),  # exactly mask >> 1: still forward motion
        (0x10 + 0x80000000, 0x10, U32, 0),  # one more: top half-range bit -> negative -> 0
        (0x0F, 0x10, U32, 0),  # one cycle behind -> 0
        (0x10, 0xFFFFFFF0, U32, 0x20),  # 32-bit counter wrap
        (0x000010, 0xFFFFF0, 0xFFFFFF, 0x20),  # 24-bit (acpi_pm) wrap
        (0x7FFFFF, 0, 0xFFFFFF, 0x7FFFFF),
        (0x800000, 0, 0xFFFFFF, 0),
        ((1 << 63) - 1 + 5, 5, U64, (1 << 63) - 1),
        ((1 << 63) + 5, 5, U64, 0),
        (5, 5, U64, 0),
    ],
)
def test_clocksource_delta_half_range_edges(now: int, last: int, mask: int, expected: int) -> None:
    # x86 CONFIG_CLOCKSOURCE_VALIDATE_LAST_CYCLE: ret = (now - last) & mask;
    # return ret & ~(mask >> 1) ? 0 : ret
    assert clocksource_delta(now, last, mask) == expected


def test_max_adjustment_tick_nsec_jiffies_shift() -> None:
    # (u64)mult * 11 / 100
    assert clocksource_max_adjustment(100) == 11
    assert clocksource_max_adjustment(99) == 10  # 1089 / 100
    assert clocksource_max_adjustment(U32) == U32 * 11 // 100
    # TICK_NSEC = (NSEC_PER_SEC + HZ/2) / HZ
    assert tick_nsec(250) == 4_000_000
    assert tick_nsec(1024) == 976_563  # 1_000_000_512 / 1024: the +HZ/2 rounds up
    assert tick_nsec(300) == 3_333_333  # 1_000_000_150 / 300 = 3333333.83
    assert tick_nsec(7) == 142_857_143  # 1_000_000_003 / 7 (plain 1e9 / 7 = 142857142.86)
    # JIFFIES_SHIFT: 6 below HZ 34, 7 below 67, else 8
    assert [jiffies_shift(hz) for hz in (1, 33, 34, 66, 67, 1000)] == [6, 6, 7, 7, 8, 8]


def _calc_max(mult: int, shift: int, maxadj: int, mask: int) -> tuple[int, int]:
    """clocks_calc_max_nsecs: (max_cycles, max_nsecs)."""
    max_cycles = min(U64 // (mult + maxadj), mask)
    return max_cycles, km.clocksource_cyc2ns(max_cycles, mult - maxadj, shift) >> 1


@pytest.mark.parametrize(
    ("mask", "scale", "freq"),
    [
        ((1 << 24) - 1, 1, 1 << 25),  # mask / freq == 0 -> sec = 1
        ((1 << 24) - 1, 1, 3_579_545),  # acpi_pm: sec = 4
        (U32, 1, 14_318_180),  # hpet: sec = 299
        (U32, 1, 1_000_000),  # sec = 4294 > 600 but mask <= 32 bits: not capped
        ((1 << 33) - 1, 1, 14_316_557),  # sec = 600 exactly (mask > 32 bits): kept
        ((1 << 33) - 1, 1, 14_292_736),  # sec = 601 -> capped to 600
        ((1 << 33) - 1, 1, 1_717_986),  # sec = 5000 -> 600 (the cap changes mult/shift here)
        ((1 << 33) - 1, 1, 100_000_000),  # sec = 85: mask > 32 bits alone does not cap
        (U64, 1000, 2_000_000),  # tsc 2 GHz
        (U64, 1, 1_831_045_531),  # sec capped: maxsec 600 and 601 give different mult/shift
        (U64, 1000, 3_662_050),  # the same for a kHz registration (maxsec 600_000)
        (U64, 1, 1_000_000_000),  # kvm-clock
        (U32, 1, 1),  # 1 Hz on 32 bits: the maxadj loop halves mult
        (U32, 1, 2),
    ],
)
def test_update_freq_scale(mask: int, scale: int, freq: int) -> None:
    k = bare_kernel()
    cs = ManualCs(k, mask=mask, mult=0, shift=0)
    cs.update_freq_scale(scale, freq)
    # __clocksource_update_freq_scale, written out
    sec = mask // freq // scale
    if sec == 0:
        sec = 1
    elif sec > 600 and mask > U32:
        sec = 600
    mult, shift = km.clocks_calc_mult_shift(freq, NSEC // scale, sec * scale)
    maxadj = mult * 11 // 100
    while mult + maxadj > U32 or mult - maxadj < 0:
        mult >>= 1
        shift -= 1
        maxadj = mult * 11 // 100
    assert (cs.mult, cs.shift, cs.maxadj) == (mult, shift, maxadj)
    assert cs.freq_hz == scale * freq
    assert (cs.max_cycles, cs.max_idle_ns) == _calc_max(mult, shift, maxadj, mask)


def test_update_freq_scale_maxadj_loop_and_sec_cap_matter() -> None:
    """The parameters above are not vacuous: the cap and the halving change mult/shift."""
    capped = km.clocks_calc_mult_shift(1_717_986, NSEC, 600)
    assert capped != km.clocks_calc_mult_shift(1_717_986, NSEC, 5000)
    assert capped != km.clocks_calc_mult_shift(100_000_000, NSEC, 85)
    mult, _shift = km.clocks_calc_mult_shift(1, NSEC, U32)
    assert mult + mult * 11 // 100 > U32  # 1 Hz: the first mult needs halving


def test_update_freq_scale_zero_freq_keeps_driver_mult_and_rejects_bad_args() -> None:
    k = bare_kernel()
    cs = ManualCs(k, mask=U32, mult=4_000_000 << 8, shift=8)  # jiffies-like
    cs.update_freq_scale(1, 0)
    assert (cs.mult, cs.shift) == (4_000_000 << 8, 8)
    assert cs.maxadj == (4_000_000 << 8) * 11 // 100
    assert (cs.max_cycles, cs.max_idle_ns) == _calc_max(cs.mult, 8, cs.maxadj, U32)
    assert cs.freq_hz == 0
    with pytest.raises(ValueError, match="scale"):
        cs.update_freq_scale(0, 1)
    with pytest.raises(ValueError, match="freq"):
        cs.update_freq_scale(1, -1)
    with pytest.raises(ValueError, match="freq"):
        cs.update_freq_scale(1, U32 + 1)
    cs.update_freq_scale(1, U32)  # the top of the u32 range is accepted


def test_update_freq_scale_without_mult_leaves_limits() -> None:
    k = bare_kernel()
    cs = ManualCs(k, mult=0, shift=0)
    cs.update_freq_scale(1, 0)
    assert (cs.mult, cs.maxadj, cs.max_cycles, cs.max_idle_ns) == (0, 0, 0, 0)


def test_cyc2ns_wraps_at_64_bits() -> None:
    k = bare_kernel()
    cs = ManualCs(k, mult=4, shift=2)
    assert cs.cyc2ns((1 << 62) + 5) == ((((1 << 62) + 5) * 4) & U64) >> 2 == 5
    assert cs.cyc2ns(1000) == 1000


def test_clocksource_flag_and_vclock_values() -> None:
    # include/linux/clocksource.h and arch/x86/include/asm/clocksource.h (2017)
    assert (
        CLOCK_SOURCE_IS_CONTINUOUS,
        CLOCK_SOURCE_MUST_VERIFY,
        CLOCK_SOURCE_WATCHDOG,
        CLOCK_SOURCE_VALID_FOR_HRES,
        CLOCK_SOURCE_UNSTABLE,
        CLOCK_SOURCE_SUSPEND_NONSTOP,
        CLOCK_SOURCE_RESELECT,
    ) == (0x01, 0x02, 0x10, 0x20, 0x40, 0x80, 0x100)
    assert (VCLOCK_NONE, VCLOCK_TSC, VCLOCK_PVCLOCK, VCLOCK_HVCLOCK) == (0, 1, 2, 3)
    assert WATCHDOG_THRESHOLD == 62_500_000
    assert (TK_OFFS_REAL, TK_OFFS_BOOT, TK_OFFS_TAI) == (0, 1, 2)
    assert (TK_CLEAR_NTP, TK_MIRROR, TK_CLOCK_WAS_SET) == (1, 2, 4)
    assert NTP_SCALE_SHIFT == 32


# ================================================================================================
# tk_setup_internals
# ================================================================================================
@pytest.mark.parametrize(
    ("hz", "mult", "shift", "cycle_interval"),
    [
        (1000, 400_000, 0, 3),  # 1_000_000 / 400_000 = 2.5: rounds half up
        (1000, 400_001, 0, 2),  # (1_000_000 + 200_000) / 400_001 = 2.99999
        (1000, 2_000_000, 0, 1),  # (1e6 + 1e6) / 2e6 = 1
        (1000, 2_000_001, 0, 1),  # rounds to 0 -> clamped to 1
        (1000, 4_000_000, 0, 1),  # (1e6 + 2e6) / 4e6 = 0 -> 1
        (250, 3, 1, 2_666_667),  # (8_000_000 + 1) / 3
        (250, 3 << 30, 32, 5_333_333),  # (4e6 << 32 + 3 << 29) / (3 << 30)
        (100, 1, 0, 10_000_000),
    ],
)
def test_setup_internals_intervals(hz: int, mult: int, shift: int, cycle_interval: int) -> None:
    k, cs = tk_on(now_ns=0, c0=12_345, hz=hz, mult=mult, shift=shift)
    tk = k.timekeeper
    ntpinterval = (NSEC // hz) << shift  # NTP_INTERVAL_LENGTH << clock->shift
    assert tk.cycle_interval == cycle_interval
    assert tk.xtime_interval == cycle_interval * mult
    assert tk.raw_interval == cycle_interval * mult
    assert tk.xtime_remainder == ntpinterval - cycle_interval * mult
    assert tk.ntp_error_shift == 32 - shift
    assert tk.ntp_tick == ntpinterval << (32 - shift)
    assert tk.ntp_tick_length == (NSEC << 32) // hz
    for tkr in (tk.tkr_mono, tk.tkr_raw):
        assert tkr.clock is cs
        assert (tkr.mask, tkr.mult, tkr.shift, tkr.cycle_last) == (U64, mult, shift, 12_345)
    assert tk.cs_was_changed_seq == 1


def test_setup_internals_remainder_sign() -> None:
    k, _cs = tk_on(now_ns=0, hz=1000, mult=400_000, shift=0)
    assert k.timekeeper.xtime_remainder == -200_000  # 1_000_000 - 3 * 400_000
    k, _cs = tk_on(now_ns=0, hz=250, mult=3, shift=1)
    assert k.timekeeper.xtime_remainder == -1  # 8_000_000 - 2_666_667 * 3


# ================================================================================================
# timekeeping_init and the reads
# ================================================================================================
R = 1_500_000_000 * NSEC + 123_456_789  # wall time at init
RS, RN = divmod(R, NSEC)


def test_init_fields_and_reads_at_init() -> None:
    k, _cs = tk_on(now_ns=R, c0=777, mult=3, shift=1)
    tk = k.timekeeper
    assert tk.xtime_sec == RS
    assert tk.tkr_mono.xtime_nsec == RN << 1  # tk_set_xtime: nsec << shift
    assert tk.tkr_raw.xtime_nsec == 0 and tk.raw_sec == 0
    assert tk.wall_to_monotonic == -R  # boot unknown -> boot = now
    assert tk.offs_real == R and tk.offs_boot == 0 and tk.offs_tai == R
    # tk_update_ktime_data: base = (xtime_sec + wtm.tv_sec) * 1e9 + wtm.tv_nsec, with wtm
    # normalised to tv_nsec in [0, 1e9): wtm = (-RS - 1, 1e9 - RN)
    assert tk.tkr_mono.base == (RS + (-RS - 1)) * NSEC + (NSEC - RN) == -RN
    assert tk.tkr_raw.base == 0
    # wtm.tv_nsec + (xtime_nsec >> shift) = 1e9 - RN + RN = 1e9 exactly: the second carries
    assert tk.ktime_sec == 0
    assert tk.ktime_get_ns() == 0
    assert tk.ktime_get_raw_ns() == 0
    assert tk.ktime_get_boot_ns() == 0
    assert tk.ktime_get_real_ns() == R
    assert tk.ktime_get_tai_ns() == R
    assert tk.clock_was_set_seq == 1
    assert k.counters["timekeeping_updates"] == 1
    assert tk.seq.sequence == 2


def test_init_with_known_boot_time() -> None:
    k, _cs = tk_on(now_ns=R, boot_ns=R - 5 * NSEC - 1, mult=3, shift=1)
    tk = k.timekeeper
    assert tk.wall_to_monotonic == -(R - 5 * NSEC - 1)
    assert tk.offs_real == R - 5 * NSEC - 1
    assert tk.ktime_get_ns() == 5 * NSEC + 1  # monotonic = now - boot
    assert tk.ktime_get_real_ns() == R
    assert tk.ktime_sec == 5


def test_ktime_sec_without_carry() -> None:
    # wall 0.3 s into a second, booted 5.5 s ago: wtm.tv_nsec = 0.2 s, 0.2 + 0.3 < 1 s
    now = RS * NSEC + 300_000_000
    k, _cs = tk_on(now_ns=now, boot_ns=now - 5_500_000_000, mult=3, shift=1)
    tk = k.timekeeper
    assert tk.wall_to_monotonic == -(now - 5_500_000_000)
    assert tk.ktime_sec == 5
    assert tk.ktime_get_ns() == 5_500_000_000


def test_init_on_whole_second_ktime_sec() -> None:
    k, _cs = tk_on(now_ns=RS * NSEC, mult=3, shift=1)
    tk = k.timekeeper
    assert tk.tkr_mono.base == 0 and tk.ktime_sec == 0
    assert tk.ktime_get_real_ns() == RS * NSEC


@pytest.mark.parametrize("d", [0, 1, 2, 1_000_001, 2_666_666])
def test_reads_at_a_counter_value(d: int) -> None:
    k, cs = tk_on(now_ns=R, c0=777, mult=3, shift=1)
    tk = k.timekeeper
    tk.tai_offset = 37
    tk._set_wall_to_mono(tk.wall_to_monotonic)  # offs_tai = offs_real + 37 s
    cs.value = 777 + d
    # timekeeping_get_ns: (delta * mult + xtime_nsec) >> shift, plus the base
    mono = -RN + (((d * 3) + (RN << 1)) >> 1)
    raw = (d * 3) >> 1
    assert tk.ktime_get_ns() == mono
    assert tk.ktime_get_raw_ns() == raw
    assert tk.ktime_get_boot_ns() == mono
    assert tk.ktime_get_real_ns() == mono + R
    assert tk.ktime_get_tai_ns() == mono + R + 37 * NSEC
    stamp = stamp_of(777 + d)
    assert tk.ktime_get_with_offset(TK_OFFS_TAI) == (mono + R + 37 * NSEC, stamp)
    assert tk.ktime_get_with_offset(TK_OFFS_BOOT) == (mono, stamp)
    assert tk.ktime_get_with_offset(TK_OFFS_REAL) == (mono + R, stamp)
    assert tk.ktime_get_boot_ns_with_cycles() == (mono, stamp)
    assert tk.ktime_get_real_ns_with_cycles() == (mono + R, stamp)


def test_read_clamps_negative_delta_and_keeps_half_range() -> None:
    k, cs = tk_on(now_ns=RS * NSEC, c0=0x10, mask=U32, mult=1, shift=0)
    tk = k.timekeeper
    cs.value = 0x10 + 0x7FFFFFFF
    assert tk.ktime_get_ns() == 0x7FFFFFFF
    cs.value = 0x10 + 0x80000000
    assert tk.ktime_get_ns() == 0  # clocksource_delta -> 0: xtime only
    cs.value = 0x0F
    assert tk.ktime_get_ns() == 0
    assert tk.ktime_get_raw_ns() == 0


def test_read_across_counter_wrap() -> None:
    k, cs = tk_on(now_ns=RS * NSEC, c0=0xFFFFFFF0, mask=U32, mult=1, shift=0)
    cs.value = 0x1_0000_0010
    assert k.timekeeper.ktime_get_ns() == 0x20


def test_read_product_wraps_u64() -> None:
    # 2017: no max_cycles check; (delta * mult + xtime_nsec) is a u64 and wraps
    k, cs = tk_on(now_ns=RS * NSEC, c0=0, mult=4, shift=2)
    cs.value = (1 << 62) + 5
    assert k.timekeeper.ktime_get_ns() == ((((1 << 62) + 5) * 4) & U64) >> 2 == 5


# ================================================================================================
# update_wall_time / logarithmic_accumulation
# ================================================================================================
def test_update_wall_time_one_cycle_short_does_nothing() -> None:
    k, cs = tk_on(now_ns=R, c0=1000, mult=3, shift=1)
    tk = k.timekeeper
    ci = 2_666_667
    cs.value = 1000 + ci - 1
    seq = tk.seq.sequence
    tk.update_wall_time()
    assert tk.tkr_mono.cycle_last == tk.tkr_raw.cycle_last == 1000
    assert tk.seq.sequence == seq
    assert k.counters["timekeeping_updates"] == 1
    assert k.counters["notifier_calls.pvclock_gtod"] == 1  # only the init


def test_update_wall_time_exactly_one_interval() -> None:
    k, cs = tk_on(now_ns=R, c0=1000, mult=3, shift=1)
    tk = k.timekeeper
    ci, xti = 2_666_667, 8_000_001
    got: list[tuple[int, Any]] = []
    k.pvclock_gtod_chain.register(lambda a, d: got.append((a, d)) or NOTIFY_DONE)
    cs.value = 1000 + ci
    seq = tk.seq.sequence
    tk.update_wall_time()
    assert tk.tkr_mono.cycle_last == tk.tkr_raw.cycle_last == 1000 + ci
    assert tk.tkr_mono.xtime_nsec == (RN << 1) + xti
    assert tk.tkr_raw.xtime_nsec == xti
    assert tk.xtime_sec == RS and tk.raw_sec == 0
    assert tk.seq.sequence == seq + 2
    assert k.counters["timekeeping_updates"] == 2
    assert got == [(0, tk)]  # a tick: was_set = 0
    assert tk.clock_was_set_seq == 1  # unchanged by a tick
    # tkr_mono.base = (xtime_sec + wtm_sec) * 1e9 + wtm_nsec: unchanged by a tick
    assert tk.tkr_mono.base == -RN
    assert tk.ktime_get_ns() == (xti + (RN << 1)) // 2 - RN


def test_update_wall_time_second_carries() -> None:
    # mult 1 shift 0, HZ 250: interval = 4_000_000 cycles = 4 ms; wall starts 4 ms before a second
    k, cs = tk_on(now_ns=RS * NSEC + NSEC - 4_000_000, c0=0, mult=1, shift=0)
    tk = k.timekeeper
    cs.value = 4_000_000
    tk.update_wall_time()
    assert (tk.xtime_sec, tk.tkr_mono.xtime_nsec) == (RS + 1, 0)  # exactly one second: carries
    assert (tk.raw_sec, tk.tkr_raw.xtime_nsec) == (0, 4_000_000)
    assert tk.ktime_sec == 0  # mono = 4 ms
    cs.value = 8_000_000 - 1
    tk.update_wall_time()
    assert (tk.xtime_sec, tk.tkr_mono.xtime_nsec) == (RS + 1, 0)


def test_raw_second_carries_exactly() -> None:
    k, cs = tk_on(now_ns=RS * NSEC, c0=0, mult=1, shift=0)
    tk = k.timekeeper
    cs.value = 249 * 4_000_000
    tk.update_wall_time()
    assert (tk.raw_sec, tk.tkr_raw.xtime_nsec) == (0, 996_000_000)
    assert tk.tkr_raw.base == 0
    cs.value = 250 * 4_000_000
    tk.update_wall_time()
    assert (tk.raw_sec, tk.tkr_raw.xtime_nsec) == (1, 0)
    assert tk.tkr_raw.base == NSEC  # raw_sec * 1e9
    assert tk.ktime_sec == 1
    assert tk.ktime_get_raw_ns() == NSEC


MULT32, SHIFT32, CI32 = 3 << 30, 32, 5_333_333  # 0.75 ns per cycle, shift 32
XTI32 = CI32 * MULT32


# 1 << 40 intervals (a clock ~2**62.3 ns ahead) is 2**31 chunks at the top shift: the model
# takes them at once and must give the same totals as the kernel's one-chunk loop
@pytest.mark.parametrize(
    "k_intervals", [1, 2, 3, 511, 512, 513, 1023, 1024, 2500, 12_345, (1 << 40) + 3]
)
@pytest.mark.parametrize("rest", [0, 1, CI32 - 1])
@pytest.mark.parametrize("rn", [0, 999_999_999])
def test_logarithmic_accumulation_totals(k_intervals: int, rest: int, rn: int) -> None:
    """After any skipped-tick offset, whole intervals are in xtime and the rest is pending.

    With shift 32 one interval is ~2**53.9 ns<<shift, so the chunk ``interval << 10`` plus a
    large sub-second xtime_nsec would overflow u64: the maxshift cap (9 at HZ 250) matters.
    """
    now = RS * NSEC + rn
    k, cs = tk_on(now_ns=now, c0=5, mult=MULT32, shift=SHIFT32)
    tk = k.timekeeper
    assert tk.cycle_interval == CI32
    n = k_intervals * CI32 + rest
    cs.value = 5 + n
    tk.update_wall_time()
    snsps = NSEC << 32
    mono_total = (rn << 32) + k_intervals * XTI32  # exact, no u64
    assert tk.tkr_mono.cycle_last == tk.tkr_raw.cycle_last == 5 + k_intervals * CI32
    assert tk.xtime_sec == RS + mono_total // snsps
    assert tk.tkr_mono.xtime_nsec == mono_total % snsps
    raw_total = k_intervals * XTI32
    assert tk.raw_sec == raw_total // snsps
    assert tk.tkr_raw.xtime_nsec == raw_total % snsps
    mono = (((rn << 32) + n * MULT32) >> 32) - rn
    assert tk.ktime_get_ns() == mono
    assert tk.ktime_get_raw_ns() == (n * MULT32) >> 32
    assert tk.ktime_get_real_ns() == now + mono
    assert k.counters["timekeeping_updates"] == 2  # one update however many intervals


def test_accumulation_negative_offset_is_ignored() -> None:
    k, cs = tk_on(now_ns=R, c0=1 << 40, mult=3, shift=1)
    tk = k.timekeeper
    cs.value = (1 << 40) - 1  # counter behind cycle_last
    tk.update_wall_time()
    assert tk.tkr_mono.cycle_last == 1 << 40
    assert k.counters["timekeeping_updates"] == 1


def test_accumulation_across_mask_wrap() -> None:
    k, cs = tk_on(now_ns=RS * NSEC, c0=0xFFFFFF - 10, mask=0xFFFFFF, mult=1 << 10, shift=10)
    tk = k.timekeeper
    ci = ((4_000_000 << 10) + (1 << 9)) // (1 << 10)  # (ntpinterval + mult / 2) / mult
    assert tk.cycle_interval == ci == 4_000_000
    cs.value = 0xFFFFFF - 10 + 4_000_000 + 3  # wraps the 24-bit counter
    tk.update_wall_time()
    # cycle_last is a plain u64 sum (not masked to the clocksource mask)
    assert tk.tkr_mono.cycle_last == 0xFFFFFF - 10 + 4_000_000
    assert tk.ktime_get_ns() == 4_000_003


# ================================================================================================
# settimeofday, sleep time, clocksource change
# ================================================================================================
def test_settimeofday_drops_mono_sub_ns_raw_keeps_it() -> None:
    k, cs = tk_on(now_ns=RS * NSEC, c0=100, mult=3, shift=1)
    tk = k.timekeeper
    got: list[int] = []
    k.pvclock_gtod_chain.register(lambda a, d: got.append(a) or NOTIFY_DONE)
    cs.value = 101  # 1.5 ns since init
    t = (RS + 1000) * NSEC + 7
    tk.do_settimeofday64(t)
    # timekeeping_forward_now: cycle_last = now, xtime_nsec += delta * mult (both)
    assert tk.tkr_mono.cycle_last == tk.tkr_raw.cycle_last == 101
    assert tk.tkr_raw.xtime_nsec == 3
    # tk_set_xtime: xtime = t, xtime_nsec = nsec << shift (the .5 ns of mono is dropped)
    assert (tk.xtime_sec, tk.tkr_mono.xtime_nsec) == (RS + 1000, 7 << 1)
    # wtm -= (t - xt) with xt = RS s + (3 >> 1) ns; mono at this instant stays 1 ns
    assert tk.wall_to_monotonic == -RS * NSEC - (t - (RS * NSEC + 1))
    assert tk.offs_real == t - 1
    assert tk.ktime_get_ns() == 1
    assert tk.ktime_get_real_ns() == t
    assert got == [1]  # TK_CLOCK_WAS_SET
    assert tk.clock_was_set_seq == 2
    cs.value = 102
    assert tk.ktime_get_ns() == 1 + (3 >> 1)  # (1 * 3 + 14) >> 1 - 7 = 1 ns more
    assert tk.ktime_get_raw_ns() == (3 + 3) >> 1  # raw kept its half ns: 3
    # every mono-based read uses tkr_mono (2 ns here), the raw read tkr_raw (3 ns)
    assert tk.ktime_get_boot_ns() == 2
    assert tk.ktime_get_real_ns() == t + 1
    assert tk.ktime_get_tai_ns() == t + 1  # tai_offset 0
    assert tk.ktime_get_with_offset(TK_OFFS_REAL) == (t + 1, stamp_of(102))
    assert tk.ktime_get_boot_ns_with_cycles() == (2, stamp_of(102))
    assert tk.ktime_get_real_ns_with_cycles() == (t + 1, stamp_of(102))
    tk.do_settimeofday64(0)  # the epoch itself is valid
    assert tk.ktime_get_real_ns() == 0


@pytest.mark.parametrize(("delta", "carry"), [(400_000_000, True), (399_999_999, False)])
def test_inject_sleeptime_second_carry(delta: int, carry: bool) -> None:
    now = RS * NSEC + 600_000_000
    k, _cs = tk_on(now_ns=now, c0=0, mult=1, shift=0)
    tk = k.timekeeper
    tk.inject_sleeptime(5 * NSEC + delta)
    assert tk.xtime_sec == RS + 5 + (1 if carry else 0)
    assert tk.tkr_mono.xtime_nsec == (600_000_000 + delta) % NSEC
    assert tk.offs_boot == 5 * NSEC + delta
    assert tk.wall_to_monotonic == -now - 5 * NSEC - delta
    assert tk.offs_real == now + 5 * NSEC + delta
    assert tk.ktime_get_ns() == 0
    assert tk.ktime_get_boot_ns() == 5 * NSEC + delta
    assert tk.ktime_get_real_ns() == now + 5 * NSEC + delta
    assert tk.clock_was_set_seq == 2


def test_inject_sleeptime_accumulates_in_offs_boot() -> None:
    k, cs = tk_on(now_ns=R, c0=0, mult=1, shift=0)
    tk = k.timekeeper
    tk.inject_sleeptime(3 * NSEC)
    tk.inject_sleeptime(4 * NSEC + 1)
    assert tk.offs_boot == 7 * NSEC + 1
    cs.value = 10
    assert tk.ktime_get_boot_ns_with_cycles() == (7 * NSEC + 11, stamp_of(10))
    assert tk.ktime_get_with_offset(TK_OFFS_BOOT) == (7 * NSEC + 11, stamp_of(10))
    assert tk.ktime_get_real_ns_with_cycles() == (R + 7 * NSEC + 11, stamp_of(10))
    assert tk.ktime_get_ns() == 10


def test_inject_sleeptime_zero_and_type_errors() -> None:
    k, _cs = tk_on(now_ns=R, mult=1, shift=0)
    tk = k.timekeeper
    tk.inject_sleeptime(0)
    assert tk.offs_boot == 0 and tk.ktime_get_real_ns() == R
    for bad, name in ((True, "bool"), (1.0, "float")):
        with pytest.raises(TypeError, match=f"delta_ns must be an int, got {name}"):
            tk.inject_sleeptime(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=f"real_ns must be an int, got {name}"):
            tk.do_settimeofday64(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("profile", ["gtod", "series"])
@pytest.mark.parametrize(
    ("new_mult", "new_shift"),
    [(3 << 2, 3), (3, 1), (1, 0)],  # shift +2, 0, -1
)
def test_change_clocksource(profile: str, new_mult: int, new_shift: int) -> None:
    k, old = tk_on(now_ns=R, c0=100, mult=6, shift=2, profile=profile)  # 1.5 ns / cycle
    tk = k.timekeeper
    new = ManualCs(k, "new", mask=0xFFFFFF, mult=new_mult, shift=new_shift)
    new.value = 0xABCDEF
    seen: list[tuple[str, int, bool]] = []
    k.pvclock_gtod_chain.register(
        lambda a, d: seen.append(("gtod", a, tk.in_write_section)) or NOTIFY_DONE
    )
    k.clocksource_changes_chain.register(
        lambda a, d: seen.append(("change", a, tk.in_write_section)) or NOTIFY_DONE
    )
    old.value = 103  # 4.5 ns after init
    mono_before = tk.ktime_get_ns()
    assert mono_before == ((3 * 6 + (RN << 2)) >> 2) - RN == 4
    tk.change_clocksource(new)
    # forward_now on the old clock: xtime_nsec = RN<<2 + 18 (mono), 18 (raw); then the shift
    # conversion of tk_setup_internals
    sc = new_shift - 2
    conv = (lambda x: x << sc) if sc >= 0 else (lambda x: x >> -sc)
    assert tk.tkr_mono.xtime_nsec == conv((RN << 2) + 18)
    assert tk.tkr_raw.xtime_nsec == conv(18)
    for tkr in (tk.tkr_mono, tk.tkr_raw):
        assert tkr.clock is new
        assert (tkr.mask, tkr.mult, tkr.shift, tkr.cycle_last) == (
            0xFFFFFF,
            new_mult,
            new_shift,
            0xABCDEF,
        )
    ntpinterval = 4_000_000 << new_shift
    assert tk.cycle_interval == max(1, (ntpinterval + new_mult // 2) // new_mult)
    assert tk.ktime_get_ns() == conv((RN << 2) + 18) // (1 << new_shift) - RN
    assert tk.ktime_get_real_ns() == R + tk.ktime_get_ns()
    assert k.counters["clocksource_changes"] == 1
    assert tk.cs_was_changed_seq == 2
    assert tk.clock_was_set_seq == 2
    if profile == "gtod":
        assert seen == [("gtod", 1, True)]
    else:
        assert seen == [("change", 0, True)]  # inside the write section (later patch 07)
    log = [e for e in k.world.events if e["kind"] == "clocksource_change"]
    assert [(e["kernel"], e["old"], e["new"]) for e in log] == [("L0", "manual", "new")]


@pytest.mark.parametrize(
    ("d", "xtime", "raw"),
    [
        # wall starts 0.6 s into a second; mult 1 shift 0: d cycles = d ns
        (399_999_999, (0, 999_999_999), (0, 399_999_999)),
        (400_000_000, (1, 0), (0, 400_000_000)),  # exactly one second: carries
        (1_000_000_000, (1, 600_000_000), (1, 0)),  # raw exactly one second
        (2_500_000_000, (3, 100_000_000), (2, 500_000_000)),  # several seconds at once
    ],
)
def test_forward_now_normalises_both_xtimes(
    d: int, xtime: tuple[int, int], raw: tuple[int, int]
) -> None:
    """tk_normalize_xtime after timekeeping_forward_now (here through change_clocksource)."""
    k, cs = tk_on(now_ns=RS * NSEC + 600_000_000, c0=0, mult=1, shift=0)
    tk = k.timekeeper
    cs.value = d  # no tick in between: the whole delta is folded by forward_now
    tk.change_clocksource(ManualCs(k, "b", mult=1, shift=0))
    assert (tk.xtime_sec - RS, tk.tkr_mono.xtime_nsec) == xtime
    assert (tk.raw_sec, tk.tkr_raw.xtime_nsec) == raw
    assert tk.ktime_get_ns() == d


def test_cs_was_changed_seq_is_u8() -> None:
    k, _old = tk_on(now_ns=R, mult=3, shift=1)
    tk = k.timekeeper
    tk.cs_was_changed_seq = 255
    tk.change_clocksource(ManualCs(k, "b"))
    assert tk.cs_was_changed_seq == 0


def test_init_notifies_per_profile() -> None:
    for profile, gtod, change in (("gtod", 1, 0), ("series", 0, 1)):
        k, _cs = tk_on(now_ns=R, profile=profile)
        assert k.counters["notifier_calls.pvclock_gtod"] == gtod
        assert k.counters["notifier_calls.clocksource_changes"] == change


def test_tick_in_series_calls_no_chain() -> None:
    k, cs = tk_on(now_ns=R, profile="series", mult=1, shift=0)
    cs.value = 4_000_000
    k.timekeeper.update_wall_time()
    assert k.counters["timekeeping_updates"] == 2
    assert k.counters["notifier_calls.pvclock_gtod"] == 0
    assert k.counters["notifier_calls.clocksource_changes"] == 1  # init only


# ================================================================================================
# seqcount, vclock mode, errors
# ================================================================================================
def test_tk_seq_read_retry() -> None:
    k, cs = tk_on(now_ns=R, mult=1, shift=0)
    tk = k.timekeeper
    seq = tk.get_tk_seq()
    assert seq is tk.seq
    start = seq.read_begin()
    assert start == 2 and not seq.read_retry(start)
    cs.value = 4_000_000
    tk.update_wall_time()
    assert seq.read_retry(start)
    assert seq.sequence == 4
    inside: list[int] = []
    k.pvclock_gtod_chain.register(lambda a, d: inside.append(seq.sequence) or NOTIFY_DONE)
    cs.value = 8_000_000
    tk.update_wall_time()
    assert inside == [5]  # odd: write-held while the chain runs
    assert not tk.in_write_section and seq.sequence == 6


def test_reader_retries_once_per_interleaved_writer() -> None:
    k, cs = tk_on(now_ns=R, mult=1, shift=0)
    tk = k.timekeeper
    writes = [8_000_000, 12_000_000]

    def writer() -> None:
        if writes:
            cs.value = writes.pop(0)
            tk.update_wall_time()

    cs.value = 4_000_000
    tk.interleave = writer
    assert tk.ktime_get_ns() == 12_000_000  # the value after the last writer
    assert k.counters["timekeeper.read_retries"] == 2


def test_write_section_read_detected_in_series_change_chain() -> None:
    k, _cs = tk_on(now_ns=R, profile="series")
    tk = k.timekeeper
    k.clocksource_changes_chain.register(lambda a, d: tk.ktime_get_ns())
    with pytest.raises(LivelockDetected):
        tk.change_clocksource(ManualCs(k, "b"))
    assert not tk.in_write_section and tk.seq.sequence % 2 == 0


@pytest.mark.parametrize("mode", [VCLOCK_NONE, VCLOCK_TSC, VCLOCK_PVCLOCK, VCLOCK_HVCLOCK])
def test_clock_mode_follows_the_current_clocksource(mode: int) -> None:
    k, _cs = tk_on(now_ns=R, vclock_mode=mode)
    tk = k.timekeeper
    assert tk.get_tk_mono_clock_mode() == mode
    tk.change_clocksource(ManualCs(k, "b", vclock_mode=VCLOCK_TSC))
    assert tk.get_tk_mono_clock_mode() == VCLOCK_TSC


def test_timekeeper_without_clocksource() -> None:
    k = bare_kernel()
    with pytest.raises(RuntimeError, match="no clocksource"):
        k.timekeeper.get_tk_mono_clock_mode()
    with pytest.raises(RuntimeError, match="timekeeping_init"):
        k.timekeeper.ktime_get_raw_ns()


def test_snapshot_is_a_copy() -> None:
    k, cs = tk_on(now_ns=R, c0=9, mult=3, shift=1)
    tk = k.timekeeper
    snap = tk.snapshot()
    cs.value = 9 + 2_666_667
    tk.update_wall_time()
    mono = snap["tkr_mono"]
    assert getattr(mono, "cycle_last") == 9 and getattr(mono, "xtime_nsec") == RN << 1  # noqa: B009
    assert getattr(snap["tkr_raw"], "xtime_nsec") == 0  # noqa: B009
    assert (snap["xtime_sec"], snap["wall_to_monotonic"], snap["offs_real"]) == (RS, -R, R)
    assert (snap["offs_boot"], snap["raw_sec"]) == (0, 0)
    assert (snap["cycle_interval"], snap["xtime_interval"], snap["raw_interval"]) == (
        2_666_667,
        8_000_001,
        8_000_001,
    )


# ================================================================================================
# the watchdog (kernel/time/clocksource.c, 2017)
# ================================================================================================
def wd_kernel(
    *,
    cs_mult: int = 1,
    cs_shift: int = 0,
    wd_mult: int = 1,
    wd_shift: int = 0,
    wd_mask: int = U64,
    wd_flags: int = CLOCK_SOURCE_IS_CONTINUOUS,
    booted: bool = True,
) -> tuple[Kernel, ManualCs, ManualCs]:
    """A kernel with a MUST_VERIFY ``cs`` (rating 300) watched by ``wd`` (rating 250)."""
    k = bare_kernel()
    wd = ManualCs(k, "wd", rating=250, mask=wd_mask, mult=wd_mult, shift=wd_shift, flags=wd_flags)
    cs = ManualCs(
        k,
        "cs",
        rating=300,
        mult=cs_mult,
        shift=cs_shift,
        flags=CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_MUST_VERIFY,
    )
    k.clocksource_register(wd)
    k.clocksource_register(cs)
    wd.value = 0
    k.timekeeper.timekeeping_init(wd, 0)
    k.curr_clocksource = wd
    k.finished_booting = booted
    return k, cs, wd


def two_checks(k: Kernel, cs: ManualCs, wd: ManualCs, cs_d: int, wd_d: int) -> None:
    """Initialising pass at (1000, 5000), comparing pass after cs_d / wd_d more cycles."""
    cs.value, wd.value = 1000, 5000
    k.watchdog.clocksource_watchdog()
    cs.value, wd.value = 1000 + cs_d, 5000 + wd_d
    k.watchdog.clocksource_watchdog()


@pytest.mark.parametrize(
    ("skew", "unstable"),
    [
        (THRESHOLD, False),
        (THRESHOLD + 1, True),
        (-THRESHOLD, False),
        (-THRESHOLD - 1, True),
        (0, False),
    ],
)
def test_watchdog_threshold_edges(skew: int, unstable: bool) -> None:
    k, cs, wd = wd_kernel()
    base = 500_000_000
    two_checks(k, cs, wd, base + skew, base)
    assert bool(cs.flags & CLOCK_SOURCE_UNSTABLE) is unstable
    assert k.counters["watchdog.unstable"] == (1 if unstable else 0)
    assert k.counters["watchdog.ok"] == (0 if unstable else 1)
    assert k.watchdog.checks == 2
    checks = [e for e in k.world.events if e["kind"] == "watchdog_check"]
    assert [(e["cs_nsec"], e["wd_nsec"], e["skew_ns"]) for e in checks] == [
        (base + skew, base, skew)
    ]
    assert checks[0] == {
        "t_ns": 0,
        "kind": "watchdog_check",
        "kernel": "L0",
        "cpu": 0,
        "cs": "cs",
        "wd": "wd",
        "cs_nsec": base + skew,
        "wd_nsec": base,
        "skew_ns": skew,
    }
    if unstable:
        assert not cs.flags & (CLOCK_SOURCE_WATCHDOG | CLOCK_SOURCE_VALID_FOR_HRES)
        levels = [e["level"] for e in k.world.events if e["kind"] == "printk"]
        assert levels[-3:] == ["warn"] * 3
        assert [e for e in k.world.events if e["kind"] == "clocksource_unstable"] == [
            {"t_ns": 0, "kind": "clocksource_unstable", "kernel": "L0", "cs": "cs"}
        ]
        texts = [e["text"] for e in k.world.events if e["kind"] == "printk"]
        assert texts[-3:] == [
            "clocksource: timekeeping watchdog on CPU0: Marking clocksource 'cs' as unstable "
            "because the skew is too large:",
            "clocksource:                       'wd' wd_now: "
            f"{5000 + base:x} wd_last: {5000:x} mask: {U64:x}",
            "clocksource:                       'cs' cs_now: "
            f"{1000 + base + skew:x} cs_last: {1000:x} mask: {U64:x}",
        ]
    else:
        assert cs.flags & CLOCK_SOURCE_VALID_FOR_HRES
    # cs_last / wd_last move to this pass's reads either way
    assert (cs.cs_last, cs.wd_last) == (1000 + base + skew, 5000 + base)


def test_watchdog_converts_each_side_with_its_own_mult_shift() -> None:
    # cs: 3/2 ns per cycle; wd: 5/4 ns per cycle (clocksource_cyc2ns: (delta * mult) >> shift)
    k, cs, wd = wd_kernel(cs_mult=3, cs_shift=1, wd_mult=5, wd_shift=2)
    cs_d = 2 * (400_000_000 + THRESHOLD) // 3 + 1  # cs_nsec just above wd + threshold
    wd_d = 4 * 400_000_000 // 5
    assert (wd_d * 5) >> 2 == 400_000_000
    assert (cs_d * 3) >> 1 == 400_000_000 + THRESHOLD + 1
    two_checks(k, cs, wd, cs_d, wd_d)
    assert cs.flags & CLOCK_SOURCE_UNSTABLE
    k2, cs2, wd2 = wd_kernel(cs_mult=3, cs_shift=1, wd_mult=5, wd_shift=2)
    two_checks(k2, cs2, wd2, cs_d - 1, wd_d)  # (cs_d - 1) * 3 >> 1 = threshold - 0.5 -> floor
    assert not cs2.flags & CLOCK_SOURCE_UNSTABLE


def test_watchdog_counter_wrap_and_negative_motion() -> None:
    # a 24-bit watchdog that wraps between the passes: delta is masked, not negative
    k, cs, wd = wd_kernel(wd_mask=0xFFFFFF)
    cs.value, wd.value = 1000, 0xFFFF00
    k.watchdog.clocksource_watchdog()
    cs.value, wd.value = 1000 + 0x200, 0x100
    k.watchdog.clocksource_watchdog()
    assert not cs.flags & CLOCK_SOURCE_UNSTABLE  # both moved 0x200 ns
    # the watched clocksource moving backwards reads as 0 ns (clocksource_delta clamp)
    cs.value, wd.value = 1000 + 0x200 - 1, 0x100 + 0x100000
    k.watchdog.clocksource_watchdog()
    checks = [e for e in k.world.events if e["kind"] == "watchdog_check"]
    assert (checks[-1]["cs_nsec"], checks[-1]["wd_nsec"]) == (0, 0x100000)
    # the 24-bit watchdog moving more than half its range reads as 0 ns too
    cs.value, wd.value = 1000 + 0x200 - 1, 0x100 + 0x100000 + 0x800000
    k.watchdog.clocksource_watchdog()
    checks = [e for e in k.world.events if e["kind"] == "watchdog_check"]
    assert (checks[-1]["cs_nsec"], checks[-1]["wd_nsec"]) == (0, 0)
    assert not cs.flags & CLOCK_SOURCE_UNSTABLE


def test_watchdog_first_pass_only_initialises() -> None:
    k, cs, wd = wd_kernel()
    cs.value, wd.value = 10**15, 0  # wildly apart: not compared on the first pass
    k.watchdog.clocksource_watchdog()
    assert cs.flags == CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_MUST_VERIFY | CLOCK_SOURCE_WATCHDOG
    assert (cs.cs_last, cs.wd_last) == (10**15, 0)
    assert k.counters["watchdog.ok"] == 0 and k.counters["watchdog.unstable"] == 0


def test_watchdog_change_resets_the_watched_sources() -> None:
    k, cs, wd = wd_kernel()
    cs.value, wd.value = 1000, 5000
    k.watchdog.clocksource_watchdog()
    assert cs.flags & CLOCK_SOURCE_WATCHDOG
    better = ManualCs(k, "better", rating=260)
    k.clocksource_register(better)
    assert k.watchdog.watchdog is better
    assert not cs.flags & CLOCK_SOURCE_WATCHDOG  # clocksource_reset_watchdog
    cs.value, better.value = 10**12, 0  # would be a huge skew: re-initialised instead
    k.watchdog.clocksource_watchdog()
    assert not cs.flags & CLOCK_SOURCE_UNSTABLE
    assert (cs.cs_last, cs.wd_last) == (10**12, 0)
    # an equal-rated newcomer does not replace the watchdog (strictly better only)
    same = ManualCs(k, "same", rating=260)
    k.clocksource_register(same)
    assert k.watchdog.watchdog is better
    assert cs.flags & CLOCK_SOURCE_WATCHDOG  # not reset


def test_watchdog_valid_for_hres_needs_both_continuous() -> None:
    k, cs, _wd = wd_kernel(wd_flags=0)  # a non-continuous watchdog
    assert not cs.flags & CLOCK_SOURCE_VALID_FOR_HRES
    two_checks(k, cs, _wd, 100, 100)
    assert not cs.flags & CLOCK_SOURCE_VALID_FOR_HRES
    assert k.counters["watchdog.ok"] == 1
    assert not _wd.flags & CLOCK_SOURCE_VALID_FOR_HRES  # enqueue: only continuous watchdogs


def test_enqueue_flags() -> None:
    k, cs, wd = wd_kernel()
    assert wd.flags & CLOCK_SOURCE_VALID_FOR_HRES  # a continuous non-MUST_VERIFY source
    assert not cs.flags & CLOCK_SOURCE_VALID_FOR_HRES  # watched: only after a good check
    assert k.watchdog.watchdog_list == [cs]
    cs.flags |= CLOCK_SOURCE_WATCHDOG
    k.watchdog.enqueue(cs)  # re-enqueue: not listed twice, WATCHDOG cleared
    assert k.watchdog.watchdog_list == [cs]
    assert not cs.flags & CLOCK_SOURCE_WATCHDOG


def test_unstable_source_is_skipped_and_kicks_the_work() -> None:
    k, cs, wd = wd_kernel()
    two_checks(k, cs, wd, 10**9, 0)  # marked unstable
    assert cs.flags & CLOCK_SOURCE_UNSTABLE
    reads = cs.reads
    pending = k.world.pending()
    assert pending == 1  # the work, scheduled once
    k.watchdog.clocksource_watchdog()
    assert cs.reads == reads  # not read again
    assert k.world.pending() == 1  # schedule_work on a pending work is a no-op
    k.world.run_until(0)  # the work runs: rating 0, off the list, reselect
    assert cs.rating == 0 and cs not in k.watchdog.watchdog_list
    assert k.clocksource_list[-1] is cs
    # a cancelled work is scheduled again
    k2, cs2, wd2 = wd_kernel()
    two_checks(k2, cs2, wd2, 10**9, 0)
    work = k2.watchdog._work
    assert work is not None
    work.cancel()
    k2.watchdog.clocksource_watchdog()
    assert k2.watchdog._work is not work and k2.world.pending() == 1


def test_unstable_before_boot_finished_schedules_nothing() -> None:
    k, cs, wd = wd_kernel(booted=False)
    two_checks(k, cs, wd, 10**9, 0)
    assert cs.flags & CLOCK_SOURCE_UNSTABLE
    assert k.world.pending() == 0


def test_mark_unstable_once_and_list_membership() -> None:
    k, cs, _wd = wd_kernel()
    hooks: list[str] = []
    cs.on_mark_unstable = lambda: hooks.append("cs")  # type: ignore[method-assign]
    k.watchdog.watchdog_list.clear()
    cs.mark_unstable()
    assert k.watchdog.watchdog_list == [cs]  # registered: put on the watchdog list
    assert hooks == ["cs"]
    cs.mark_unstable()  # already unstable: nothing
    assert hooks == ["cs"]
    assert [e["cs"] for e in k.world.events if e["kind"] == "clocksource_unstable"] == ["cs"]
    loose = ManualCs(k, "loose")  # never registered
    loose.mark_unstable()
    assert loose not in k.watchdog.watchdog_list and loose.unstable


def test_kthread_without_unstable_does_not_select() -> None:
    k, cs, _wd = wd_kernel()
    calls: list[int] = []
    k.clocksource_select = lambda: calls.append(1)  # type: ignore[method-assign]
    k.watchdog.watchdog_kthread()
    assert calls == [] and cs in k.watchdog.watchdog_list
    cs.flags |= CLOCK_SOURCE_UNSTABLE
    k.watchdog.watchdog_kthread()
    assert calls == [1] and cs not in k.watchdog.watchdog_list and cs.rating == 0


def test_select_watchdog_best_non_must_verify() -> None:
    k = bare_kernel()
    w = k.watchdog
    a = ManualCs(k, "a", rating=200)
    b = ManualCs(k, "b", rating=250)
    v = ManualCs(k, "v", rating=999, flags=CLOCK_SOURCE_MUST_VERIFY)
    k.clocksource_register(v)
    assert w.watchdog is None  # only a MUST_VERIFY source: no watchdog
    k.clocksource_register(a)
    assert w.watchdog is a
    k.clocksource_register(b)
    assert w.watchdog is b


def test_watchdog_start_stop_conditions() -> None:
    k = bare_kernel()
    w = k.watchdog
    w.start()
    assert not w.running  # no watchdog, no list
    v = ManualCs(k, "v", rating=300, flags=CLOCK_SOURCE_MUST_VERIFY)
    k.clocksource_register(v)
    w.start()
    assert not w.running  # a list but no watchdog
    k.clocksource_register(ManualCs(k, "wd", rating=250))
    w.start()
    assert w.running
    timer = w.timer
    w.start()
    assert w.timer is timer  # already running
    w.stop()
    assert w.running  # something is still watched
    w.watchdog_list.clear()
    w.stop()
    assert not w.running
    w.stop()  # idempotent
    assert not w.running


@pytest.mark.parametrize(
    ("hz", "interval"),
    [
        (250, 500_000_000),
        (100, 500_000_000),
        (1024, 512 * 976_563),
        (300, 150 * 3_333_333),
        (251, 125 * 3_984_064),
    ],
)
def test_watchdog_interval_is_half_hz_jiffies(hz: int, interval: int) -> None:
    # WATCHDOG_INTERVAL = HZ >> 1 jiffies of TICK_NSEC
    assert tick_nsec(251) == 3_984_064
    assert bare_kernel(hz=hz).watchdog.interval_ns == interval


def test_watchdog_timer_rotates_cpus_from_cpu0() -> None:
    w = World(0)
    m = PhysicalMachine(w, 3)
    k = Kernel(m, "gtod")
    k.boot()
    w.run_until(5 * NSEC)
    checks = [(e["t_ns"], e["cpu"]) for e in w.events if e["kind"] == "watchdog_check"]
    # expiry n at n * 0.5 s on CPU (n - 1) % 3; the first pass (t = 0.5 s, CPU0) initialises
    assert checks == [(n * 500_000_000, (n - 1) % 3) for n in range(2, 11)]
    assert k.watchdog.checks == 10


# ================================================================================================
# notifier chains (kernel/notifier.c)
# ================================================================================================
def _cb(log: list[str], name: str, ret: int = NOTIFY_DONE) -> Any:
    def cb(action: int, data: Any) -> int:
        log.append(name)
        return ret

    return cb


def test_notifier_priority_edges_and_fifo() -> None:
    log: list[str] = []
    ch = NotifierChain("t")
    lo, hi = -(1 << 31), (1 << 31) - 1
    ch.register(_cb(log, "min"), lo)
    ch.register(_cb(log, "zero"), 0)
    ch.register(_cb(log, "max"), hi)
    ch.register(_cb(log, "max2"), hi)
    ch.register(_cb(log, "one"), 1)
    ch.register(_cb(log, "min2"), lo)
    ch.register(_cb(log, "minus1"), -1)
    ch.call()
    assert log == ["max", "max2", "one", "zero", "minus1", "min", "min2"]
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ValueError, match="priority"):
            ch.register(_cb(log, "x"), bad)
    with pytest.raises(TypeError, match="priority"):
        ch.register(_cb(log, "x"), True)
    with pytest.raises(TypeError, match="callable"):
        ch.register(42)  # type: ignore[arg-type]
    assert len(ch) == 7


@pytest.mark.parametrize(
    ("ret", "stops"),
    [
        (NOTIFY_DONE, False),
        (NOTIFY_OK, False),
        (0x7FFF, False),
        (NOTIFY_STOP_MASK, True),
        (NOTIFY_STOP, True),
        (NOTIFY_BAD, True),
        (0xFFFF, True),
    ],
)
def test_notify_stop_mask(ret: int, stops: bool) -> None:
    log: list[str] = []
    ch = NotifierChain()
    ch.register(_cb(log, "first", ret), 1)
    ch.register(_cb(log, "second", NOTIFY_OK), 0)
    result = ch.call(3, None)
    assert log == (["first"] if stops else ["first", "second"])
    assert result == (ret if stops else NOTIFY_OK)


def test_notifier_duplicates_unregister_and_action_range() -> None:
    log: list[str] = []
    ch = NotifierChain("d")
    a = _cb(log, "a")
    b = _cb(log, "b")
    ch.register(a, 5)
    ch.register(b, 0)
    with pytest.raises(ValueError, match="already registered"):
        ch.register(a, 5)
    with pytest.raises(ValueError, match="already registered"):
        ch.register(b, 10)  # a duplicate found after a lower-priority block too
    ch.unregister(b)
    assert b not in ch and a in ch and len(ch) == 1
    ch.register(b, 10)  # re-registration after unregister is fine
    assert ch.callbacks == [b, a]
    ch.unregister(a)
    ch.unregister(b)
    assert ch.callbacks == [] and ch.call() == NOTIFY_DONE
    with pytest.raises(ValueError, match="not registered"):
        ch.unregister(a)
    ch.register(a)
    for ok in (0, (1 << 64) - 1):
        ch.call(ok)
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError, match="action"):
            ch.call(bad)
    with pytest.raises(TypeError, match="action"):
        ch.call(True)
    assert ch.calls == 3  # the three accepted walks of this chain since it was empty
    assert "NotifierChain(name='d', callbacks=1, calls=" in repr(ch)


def test_notifier_callback_must_return_int() -> None:
    ch = NotifierChain()
    ch.register(lambda a, d: True)
    with pytest.raises(TypeError, match="must return an int"):
        ch.call()
    ch2 = NotifierChain()
    ch2.register(lambda a, d: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="NoneType"):
        ch2.call()


def test_notifier_unregister_head_middle_tail() -> None:
    log: list[str] = []
    ch = NotifierChain()
    cbs = {n: _cb(log, n) for n in "abcd"}
    for p, n in zip((4, 3, 2, 1), "abcd", strict=True):
        ch.register(cbs[n], p)
    ch.unregister(cbs["b"])  # middle
    ch.unregister(cbs["d"])  # tail
    ch.unregister(cbs["a"])  # head
    ch.call()
    assert log == ["c"]


def test_watchdog_flags_exact_through_a_good_and_a_bad_check() -> None:
    k, cs, wd = wd_kernel()
    cv = CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_MUST_VERIFY
    assert cs.flags == cv
    two_checks(k, cs, wd, 100, 100)
    assert cs.flags == cv | CLOCK_SOURCE_WATCHDOG | CLOCK_SOURCE_VALID_FOR_HRES
    assert wd.flags == CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_VALID_FOR_HRES
    cs.value += 10**9
    wd.value += 1
    k.watchdog.clocksource_watchdog()
    assert cs.flags == cv | CLOCK_SOURCE_UNSTABLE


def test_watchdog_marks_every_skewed_source_in_one_pass() -> None:
    k, cs, wd = wd_kernel()
    cs2 = ManualCs(k, "cs2", rating=50, flags=CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_MUST_VERIFY)
    k.clocksource_register(cs2)
    cs.value, cs2.value, wd.value = 1000, 2000, 5000
    k.watchdog.clocksource_watchdog()
    cs.value, cs2.value, wd.value = 1000 + 10**9, 2000 + 10**9, 5000
    k.watchdog.clocksource_watchdog()
    assert cs.unstable and cs2.unstable
    assert k.counters["watchdog.unstable"] == 2
    assert (cs2.cs_last, cs2.wd_last) == (2000 + 10**9, 5000)


def test_clocksource_repr() -> None:
    k = bare_kernel()
    cs = ManualCs(k, "m", rating=7, mask=0xFF, mult=3, shift=1, vclock_mode=VCLOCK_TSC)
    assert repr(cs) == (
        "ManualCs(name='m', rating=7, mask=0xff, mult=3, shift=1, flags=0x1, vclock_mode=1)"
    )


def test_watchdog_two_watched_sources() -> None:
    """Every source on the list is visited: an unstable or a just-initialised one is skipped
    with ``continue``, not the end of the pass."""
    k, cs, wd = wd_kernel()
    cs2 = ManualCs(k, "cs2", rating=50, flags=CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_MUST_VERIFY)
    k.clocksource_register(cs2)
    cs.value, cs2.value, wd.value = 1000, 2000, 5000
    k.watchdog.clocksource_watchdog()  # initialises both
    assert cs.flags & CLOCK_SOURCE_WATCHDOG and cs2.flags & CLOCK_SOURCE_WATCHDOG
    assert (cs2.cs_last, cs2.wd_last) == (2000, 5000)
    cs.flags |= CLOCK_SOURCE_UNSTABLE
    cs.value, cs2.value, wd.value = 1000 + 10**9, 2000 + 10**9, 5000
    k.watchdog.clocksource_watchdog()  # cs skipped; cs2 compared and marked
    assert cs2.flags & CLOCK_SOURCE_UNSTABLE
    assert [e["cs"] for e in k.world.events if e["kind"] == "watchdog_check"] == ["cs2"]
    k.world.run_until(0)  # the work re-rates both and drops them from the list
    assert (cs.rating, cs2.rating) == (0, 0)
    assert k.watchdog.watchdog_list == [] and not k.watchdog.running


def test_guest_tsc_watched_by_kvmclock_stays_stable() -> None:
    """In a guest the tsc's watchdog is kvm-clock, whose read returns ns (cycles) and a TSC
    stamp: the watchdog must compare the ns."""
    from test_clocksource import booted_guest

    w, _vm, k = booted_guest("gtod", kvmclock_rating=299)
    assert k.watchdog.watchdog is k.clocksources["kvm-clock"]
    assert k.timekeeper.clock.name == "tsc"
    w.run_until(3 * NSEC)
    # booted at 1 ms: passes at 0.501 s (initialises), 1.001, 1.501, 2.001, 2.501 s
    assert k.counters["watchdog.ok"] == 4 and k.counters["watchdog.unstable"] == 0
    assert not k.clocksources["tsc"].unstable


def test_notifier_default_priority_is_zero() -> None:
    log: list[str] = []
    ch = NotifierChain()
    ch.register(_cb(log, "default"))
    ch.register(_cb(log, "one"), 1)
    ch.register(_cb(log, "zero"), 0)
    ch.call()
    assert log == ["one", "default", "zero"]


def test_notifier_defaults() -> None:
    got: list[tuple[int, Any]] = []
    ch = NotifierChain()
    assert ch.name == "" and ch.calls == 0
    ch.register(lambda a, d: got.append((a, d)) or NOTIFY_DONE)
    ch.call()
    assert got == [(0, None)]  # action 0, data NULL
    bad = NotifierChain("b")
    bad.register(lambda a, d: False)
    with pytest.raises(TypeError, match="returned bool"):
        bad.call()


def test_notifier_bound_method_identity() -> None:
    class Listener:
        def __init__(self) -> None:
            self.calls = 0

        def notify(self, action: int, data: Any) -> int:
            self.calls += 1
            return NOTIFY_DONE

    a, b = Listener(), Listener()
    log: list[str] = []
    plain = _cb(log, "plain")
    ch = NotifierChain()
    ch.register(a.notify)
    assert a.notify in ch and b.notify not in ch and plain not in ch
    ch.register(b.notify)  # another object's method is another callback
    ch.register(plain)
    with pytest.raises(ValueError, match="not registered"):
        ch.unregister(_cb(log, "other"))
    ch.unregister(b.notify)
    ch.call()
    assert (a.calls, b.calls, log) == (1, 0, ["plain"])


def test_notifier_error_messages_name_the_type() -> None:
    ch = NotifierChain()
    with pytest.raises(TypeError, match="got int"):
        ch.register(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got str"):
        ch.register(lambda a, d: 0, "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got float"):
        ch.call(1.0)  # type: ignore[arg-type]


def test_watchdog_non_continuous_watched_source_never_valid_for_hres() -> None:
    k = bare_kernel()
    wd = ManualCs(k, "wd", rating=250)
    cs = ManualCs(k, "cs", rating=300, flags=CLOCK_SOURCE_MUST_VERIFY)
    k.clocksource_register(wd)
    k.clocksource_register(cs)
    two_checks(k, cs, wd, 100, 100)
    assert k.counters["watchdog.ok"] == 1
    assert cs.flags == CLOCK_SOURCE_MUST_VERIFY | CLOCK_SOURCE_WATCHDOG


def test_watchdog_work_can_be_scheduled_again_after_it_ran() -> None:
    k, cs, wd = wd_kernel()
    two_checks(k, cs, wd, 10**9, 0)
    k.world.run_until(0)
    assert k.world.pending() == 0
    other = ManualCs(k, "other", rating=10, flags=CLOCK_SOURCE_MUST_VERIFY)
    k.clocksource_register(other)
    other.mark_unstable()
    assert k.world.pending() == 1


def test_watchdog_work_switches_on_cpu0() -> None:
    """The switch after marking runs change_clocksource through stop_machine on the first online
    CPU: timekeeping_forward_now reads the old TSC there, not on the CPU that marked it."""
    w = World(0)
    khz = 2_000_000
    ahead = khz * 80  # CPU1 80 ms ahead: the watchdog on CPU1 marks the tsc at t = 1 s
    cpus = [
        PhysicalCpu(w, 0, khz, boot_offset=10**9),
        PhysicalCpu(w, 1, khz, boot_offset=10**9 + ahead),
    ]
    k = Kernel(PhysicalMachine(w, cpus), "gtod")
    k.boot()
    tsc = k.clocksources["tsc"]
    w.run_until(NSEC)
    assert k.timekeeper.clock.name == "hpet"
    # NTP-free: mono = ((tsc0(t) - tsc0(0)) * mult) >> shift, read at the switch on CPU0
    assert k.timekeeper.ktime_get_ns() == ((cpus[0].tsc_at(NSEC) - 10**9) * tsc.mult) >> tsc.shift

"""Independent reference of the drift between the three KVM clock definitions.

Written from the kernel's C (kernel/time/clocksource.c, kernel/time/timekeeping.c,
arch/x86/kvm/x86.c, arch/x86/include/asm/pvclock.h) on top of ``reference.kernel_math``;
it never imports kvmclock.  Where ``kvmclock.drift`` uses one closed-form product for the
host base clock, this module runs the timekeeper tick by tick (whole ``cycle_interval``s
folded into ``xtime_nsec``, seconds carried out, the read adding the remainder), so the two
agree only if the closed form is right.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference.kernel_math import (
    MASK32,
    MASK64,
    adjust_tsc_khz,
    clocks_calc_mult_shift,
    get_time_scale,
    mul_u64_u32_div,
    mul_u64_u64_shr,
    pvclock_read_cycles,
    pvclock_scale_delta,
)

NSEC_PER_SEC = 1_000_000_000
TSC_TOLERANCE_PPM = 250
# name -> (has_tsc_control, tsc_scaling_ratio_frac_bits, max_tsc_scaling_ratio)
# vmx.c: KVM_VMX_TSC_MULTIPLIER_MAX = ~0ULL, frac 48; svm.c/svm.h: SVM_TSC_RATIO_MAX =
# 0x000000ffffffffffULL, frac 32.
CAPS = {
    "vmx": (True, 48, 0xFFFF_FFFF_FFFF_FFFF),
    "svm": (True, 32, 0x0000_00FF_FFFF_FFFF),
    "none": (False, 0, 0),
}


def clocksource_update_freq_scale(mask: int, scale: int, freq: int) -> tuple[int, int]:
    """``__clocksource_update_freq_scale(cs, scale, freq)``: ``(mult, shift)``."""
    sec = mask
    sec //= freq  # do_div(sec, freq)
    sec //= scale  # do_div(sec, scale)
    if not sec:
        sec = 1
    elif sec > 600 and mask > MASK32:
        sec = 600
    mult, shift = clocks_calc_mult_shift(freq, NSEC_PER_SEC // scale, sec * scale)
    maxadj = (mult * 11) // 100  # clocksource_max_adjustment
    while freq and (((mult + maxadj) & MASK32) < mult or ((mult - maxadj) & MASK32) > mult):
        mult >>= 1
        shift -= 1
        maxadj = (mult * 11) // 100
    return mult, shift


def tsc_clocksource(tsc_khz: int) -> tuple[int, int]:
    """``clocksource_register_khz(&clocksource_tsc, tsc_khz)``: 64-bit mask, scale 1000."""
    return clocksource_update_freq_scale(MASK64, 1000, tsc_khz)


@dataclass
class TickedClock:
    """A timekeeper base clock (``tkr_raw``, or ``tkr_mono`` without NTP) from one anchor.

    ``cycle_last`` starts at the anchor's TSC with ``xtime_nsec = frac0``; ``tick(now)``
    folds whole ``cycle_interval``s (``tk_setup_internals``: NSEC_PER_SEC / HZ in cycles,
    rounded) as ``logarithmic_accumulation`` does with shift 0; ``read(now)`` is
    ``timekeeping_get_ns`` plus the whole seconds.
    """

    mult: int
    shift: int
    hz: int
    cycle_last: int
    xtime_nsec: int
    sec: int = 0

    @property
    def interval(self) -> int:
        ntpinterval = (NSEC_PER_SEC // self.hz) << self.shift
        return max(1, (ntpinterval + self.mult // 2) // self.mult)

    def tick(self, now: int) -> None:
        interval = self.interval
        while now - self.cycle_last >= interval:
            self.cycle_last += interval
            self.xtime_nsec += interval * self.mult
            while self.xtime_nsec >= NSEC_PER_SEC << self.shift:
                self.xtime_nsec -= NSEC_PER_SEC << self.shift
                self.sec += 1

    def read(self, now: int) -> int:
        delta = (now - self.cycle_last) & MASK64
        return self.sec * NSEC_PER_SEC + (((delta * self.mult + self.xtime_nsec) & MASK64)
                                          >> self.shift)


def guest_setup(host_khz: int, guest_khz: int | None, vendor: str,
                clamp: bool = True) -> tuple[str, int, int, int]:
    """``(mode, frac_bits, ratio, tgt_tsc_khz)`` as KVM_SET_TSC_KHZ, kvm_set_tsc_khz,
    set_tsc_khz and kvm_guest_time_update decide; ValueError where KVM refuses."""
    has_ctl, frac, max_ratio = CAPS[vendor]
    if guest_khz is None:
        return "native", frac, 1 << frac, host_khz
    if has_ctl:
        max_guest = min(0x7FFFFFFF, mul_u64_u64_shr(host_khz, max_ratio, frac))
        if guest_khz >= max_guest:
            raise ValueError("KVM_SET_TSC_KHZ: -EINVAL (above max_guest_tsc_khz)")
    if guest_khz == 0:
        raise ValueError("kvm_set_tsc_khz: 0")
    lo = adjust_tsc_khz(host_khz, -TSC_TOLERANCE_PPM)
    hi = adjust_tsc_khz(host_khz, TSC_TOLERANCE_PPM)
    if not (guest_khz < lo or guest_khz > hi):
        return "native", frac, 1 << frac, host_khz
    if not has_ctl:
        if guest_khz > host_khz:
            return "catchup", 0, 1, host_khz
        raise ValueError("user requested TSC rate below hardware speed")
    ratio = mul_u64_u32_div(1 << frac, guest_khz, host_khz)
    if ratio == 0 or ratio >= max_ratio:
        raise ValueError("Invalid TSC scaling ratio")
    tgt = mul_u64_u64_shr(host_khz, ratio, frac)
    if tgt == 0:
        if not clamp:
            raise ValueError("kvm_get_time_scale(NSEC_PER_SEC, 0) never returns")
        tgt = 1
    return "scaled", frac, ratio, tgt


def reanchor(host_khz: int, guest_khz: int | None, vendor: str, cycles: int, *,
             frac0: int = 0, anchor_tsc: int = 0, hz: int = 250,
             kvmclock_offset: int = 0) -> dict[str, int]:
    """One masterclock anchor at host TSC ``anchor_tsc``, ``cycles`` later the next one.

    Returns the old record, the guest TSC values, ``b_before`` (the guest's reading of the
    old record just before the update), ``a_after`` (the new record's ``system_time``, which
    the guest reads right after) and ``jump = a_after - b_before``.
    """
    mult, shift = tsc_clocksource(host_khz)
    mode, frac, ratio, tgt = guest_setup(host_khz, guest_khz, vendor)

    def guest_tsc(h: int) -> int:  # kvm_read_l1_tsc with offset 0 (the offset cancels)
        if mode != "scaled" or ratio == 1 << frac:
            return h & MASK64
        return mul_u64_u64_shr(h & MASK64, ratio, frac)

    base = TickedClock(mult, shift, hz, anchor_tsc, frac0)
    k0 = base.read(anchor_tsc)
    pv_shift, pv_mul = get_time_scale(NSEC_PER_SEC, tgt * 1000)
    old = {
        "tsc_timestamp": guest_tsc(anchor_tsc),
        "system_time": (k0 + kvmclock_offset) & MASK64,
        "mul": pv_mul,
        "shift": pv_shift,
    }
    now = anchor_tsc + cycles
    base.tick(now)
    k1 = base.read(now)
    g_now = guest_tsc(now)
    b_before = pvclock_read_cycles(old["tsc_timestamp"], old["system_time"], pv_mul, pv_shift,
                                   g_now)
    a_after = (k1 + kvmclock_offset) & MASK64
    h_shift, h_mul = get_time_scale(NSEC_PER_SEC, host_khz * 1000)
    c_now = pvclock_read_cycles(anchor_tsc, old["system_time"], h_mul, h_shift, now)
    return {
        **{f"old_{k}": v for k, v in old.items()},
        "raw_mult": mult,
        "raw_shift": shift,
        "guest_tsc_now": g_now,
        "b_before": b_before,
        "a_after": a_after,
        "c_now": c_now,
        "jump": a_after - b_before,
    }


def scaled_delta(delta: int, mul: int, shift: int) -> int:
    """``pvclock_scale_delta`` (re-exported for the tests)."""
    return pvclock_scale_delta(delta, mul, shift)

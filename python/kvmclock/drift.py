"""The three KVM clock definitions and how far they drift apart, by the kernel's integer math.

A VM whose host runs on the TSC clocksource has one guest clock but three ways of saying what
it should read (David Woodhouse's naming, 2024), all counting the host TSC at a fixed-point
rate and differing only in that rate's rounding:

* **A**: the host's kvmclock base clock plus ``kvmclock_offset`` (``get_kvmclock_base_ns``,
  arch/x86/kvm/x86.c).  The base runs at the TSC clocksource's ``mult / 2**shift`` ns per cycle
  (``clocks_calc_mult_shift``, kernel/time/clocksource.c); it is CLOCK_BOOTTIME (profile switch
  ``kvmclock_base=boot``, Linux before 5.5) or CLOCK_MONOTONIC_RAW + the boot offset
  (``raw``, 5.5+).  Without NTP both run at that same rate.  KVM re-anchors the guest to A at
  every masterclock update (``pvclock_update_vm_gtod_copy`` takes a fresh master pair).
* **B**: what the guest computes: the master pair extrapolated by the *guest* TSC (the host
  TSC scaled by the TSC scaling ratio) with the record's ``tsc_to_system_mul``/``tsc_shift``,
  ``kvm_get_time_scale(NSEC_PER_SEC, tgt_tsc_khz * 1000)`` where ``tgt_tsc_khz =
  kvm_scale_tsc(host kHz, ratio)`` in whole kHz (``kvm_guest_time_update``).
* **C**: the master pair extrapolated from the *host* TSC with the host kHz's mul/shift:
  KVM_GET_CLOCK's ``clock`` (``__get_kvmclock``), ``kvm_get_wall_clock_epoch``.

Between two masterclock updates B runs free, so at the next one the guest clock steps from B
to A: :func:`predict` gives that step (``jump_ns``, positive = forward) after T seconds, exactly
as the kernel's integers give it: the base clock accumulates the cycles in its shifted
nanoseconds (``xtime_nsec`` keeps the fraction, so the whole interval is one product
``cycles * mult`` shifted once), the guest TSC is ``mul_u64_u64_shr(host TSC, ratio, frac)``
(``__scale_tsc``) at both ends, and the guest's delta goes through ``pvclock_scale_delta``.
The two free phases, the base clock's sub-nanosecond fraction at the anchor and the host TSC
value there (it decides how the scaled TSC truncates), default to 0; each moves the step by at
most 1 ns, and :func:`predict` takes both so a simulation can be reproduced to the nanosecond.

TSC frequency setup (``KVM_SET_TSC_KHZ``, ``kvm_set_tsc_khz``, ``set_tsc_khz``; x86.c): the
host's TSC scaling capability is ``vmx`` (48 fraction bits, ratio below 2**64 - 1), ``svm``
(32 bits, ratio below 2**40 - 1) or ``none``.  A guest frequency within ``tsc_tolerance_ppm``
(250) of the host's runs unscaled; outside it, ``vmx``/``svm`` scale (ratio =
``mul_u64_u32_div(1 << frac, guest, host)``), ``none`` runs a faster guest with catch-up
(the guest TSC counts at the host rate and is pushed forward at each record update; the
record keeps the host kHz, so B = C) and refuses a slower one.

Units: frequencies in kHz, times in ns, rates in ppb (parts per 10**9) against true time,
where true time is the host TSC at exactly its calibrated ``tsc_khz``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import kvmclock as _k
from kvmclock.profiles import Profile, resolve_profile

__all__ = [
    "MAX_GUEST_TSC_KHZ_CAP",
    "TSC_SCALING",
    "TSC_TOLERANCE_PPM",
    "Drift",
    "DriftInputError",
    "GuestTsc",
    "TscScaling",
    "guest_tsc",
    "jump_ns",
    "predict",
    "tsc_clocksource_mult_shift",
]

NSEC_PER_SEC = 1_000_000_000
U32_MAX = (1 << 32) - 1
U64_MASK = (1 << 64) - 1
TSC_TOLERANCE_PPM = 250  # x86.c module parameter tsc_tolerance_ppm
#: kvm_caps.max_guest_tsc_khz never exceeds this (x86.c __kvm_x86_vendor_init: "fit into a
#: signed integer").
MAX_GUEST_TSC_KHZ_CAP = 0x7FFFFFFF
#: ``(1 << 63)``: a longer interval does not fit the kernel's signed 64-bit deltas.
_MAX_CYCLES = 1 << 63


class DriftInputError(ValueError):
    """An input the calculator (or the kernel) refuses; the message names the argument."""


@dataclass(frozen=True)
class TscScaling:
    """The host's TSC scaling hardware (``kvm_caps``): ``has_tsc_control``,
    ``tsc_scaling_ratio_frac_bits`` and ``max_tsc_scaling_ratio`` (vmx.c
    KVM_VMX_TSC_MULTIPLIER_MAX, arch/x86/include/asm/svm.h SVM_TSC_RATIO_MAX)."""

    name: str
    has_tsc_control: bool
    frac_bits: int
    max_ratio: int


TSC_SCALING: Mapping[str, TscScaling] = MappingProxyType(
    {
        "vmx": TscScaling("vmx", True, 48, U64_MASK),
        "svm": TscScaling("svm", True, 32, (1 << 40) - 1),
        "none": TscScaling("none", False, 0, 0),
    }
)


@dataclass(frozen=True)
class GuestTsc:
    """What KVM decides for one guest TSC frequency.

    ``mode``: ``native`` (same rate as the host: no guest kHz, or within the tolerance),
    ``scaled`` (hardware ratio ``ratio`` with ``frac_bits`` fraction bits) or ``catchup`` (no
    scaling hardware, guest faster than the host).  ``record_khz`` is ``tgt_tsc_khz``, the
    frequency the guest's pvclock mul/shift are computed from (kHz).
    """

    host_khz: int
    guest_khz: int
    vendor: str
    mode: str
    frac_bits: int
    ratio: int
    record_khz: int

    def scale(self, host_tsc: int) -> int:
        """The guest TSC (offset 0) at host TSC ``host_tsc``: ``kvm_scale_tsc`` (u64)."""
        if self.mode != "scaled":
            return host_tsc & U64_MASK
        return int(_k.scale_tsc(host_tsc & U64_MASK, self.ratio, self.frac_bits))


def _check_khz(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DriftInputError(f"{name} must be an integer number of kHz, got {value!r}")
    if not 1 <= value <= U32_MAX:
        raise DriftInputError(f"{name}={value} out of range (1..{U32_MAX} kHz: a u32)")
    return value


def _vendor(vendor: str) -> TscScaling:
    try:
        return TSC_SCALING[vendor]
    except (KeyError, TypeError):
        raise DriftInputError(
            f"vendor={vendor!r} invalid; choose one of {', '.join(TSC_SCALING)}"
        ) from None


def _profile(profile: str | Profile) -> Profile:
    try:
        return resolve_profile(profile)
    except ValueError as exc:
        raise DriftInputError(str(exc)) from None


def tsc_clocksource_mult_shift(tsc_khz: int) -> tuple[int, int]:
    """``(mult, shift)`` of the host's ``tsc`` clocksource (ns = cycles * mult >> shift).

    ``clocksource_register_khz(&clocksource_tsc, tsc_khz)`` (arch/x86/kernel/tsc.c) runs
    ``__clocksource_update_freq_scale(cs, 1000, tsc_khz)`` (kernel/time/clocksource.c): the
    64-bit mask gives more than 600 s, capped to 600, so ``clocks_calc_mult_shift(tsc_khz,
    NSEC_PER_SEC / 1000, 600 * 1000)``; then mult is halved (shift decremented) while mult
    +- 11% (``clocksource_max_adjustment``) would wrap a u32.
    """
    khz = _check_khz("tsc_khz", tsc_khz)
    sec = U64_MASK // khz // 1000
    if sec == 0:
        sec = 1
    elif sec > 600:  # mask 2**64-1 > UINT_MAX
        sec = 600
    mult, shift = (int(v) for v in _k.clocks_calc_mult_shift(
        from_hz=khz, to_hz=NSEC_PER_SEC // 1000, maxsec=sec * 1000
    ))
    maxadj = mult * 11 // 100
    while ((mult + maxadj) & U32_MAX) < mult or ((mult - maxadj) & U32_MAX) > mult:
        mult >>= 1
        shift -= 1
        maxadj = mult * 11 // 100
    return mult, shift


def guest_tsc(
    tsc_khz: int,
    guest_khz: int | None = None,
    vendor: str = "vmx",
    profile: str | Profile = "upstream",
) -> GuestTsc:
    """KVM's decision for a guest TSC of ``guest_khz`` (None: the host's) on a host TSC of
    ``tsc_khz`` with TSC scaling ``vendor``: KVM_SET_TSC_KHZ (refuses ``guest_khz >=
    kvm_caps.max_guest_tsc_khz`` with scaling hardware), ``kvm_set_tsc_khz`` (tolerance),
    ``set_tsc_khz`` (ratio, its bounds, catch-up) and ``kvm_guest_time_update``'s
    ``tgt_tsc_khz = kvm_scale_tsc(tsc_khz, ratio)`` (0 becomes 1 when the profile has
    ``tiny_ratio_clamp``, Linux 6.16+; before it the kernel loops forever in
    ``kvm_get_time_scale``).  Every refusal raises :class:`DriftInputError`.
    """
    host = _check_khz("tsc_khz", tsc_khz)
    cap = _vendor(vendor)
    cfg = _profile(profile)
    if guest_khz is None:
        return GuestTsc(host, host, cap.name, "native", cap.frac_bits, 1 << cap.frac_bits, host)
    guest = _check_khz("guest_khz", guest_khz)
    if cap.has_tsc_control:
        # kvm_caps.max_guest_tsc_khz = min(0x7fffffff, __scale_tsc(max ratio, tsc_khz))
        max_khz = min(
            MAX_GUEST_TSC_KHZ_CAP, (cap.max_ratio * host >> cap.frac_bits) & U64_MASK
        )
        if guest >= max_khz:
            raise DriftInputError(
                f"guest_khz={guest} refused: KVM_SET_TSC_KHZ takes less than "
                f"max_guest_tsc_khz {max_khz} kHz on a {host} kHz host with {cap.name} TSC "
                "scaling (-EINVAL)"
            )
    lo = int(_k.adjust_tsc_khz(host, -TSC_TOLERANCE_PPM))
    hi = int(_k.adjust_tsc_khz(host, TSC_TOLERANCE_PPM))
    if lo <= guest <= hi:
        return GuestTsc(host, guest, cap.name, "native", cap.frac_bits, 1 << cap.frac_bits, host)
    if not cap.has_tsc_control:
        if guest > host:
            return GuestTsc(host, guest, cap.name, "catchup", 0, 1, host)
        raise DriftInputError(
            f"guest_khz={guest} refused: below the host's {host} kHz (and outside the "
            f"{TSC_TOLERANCE_PPM} ppm tolerance {lo}..{hi} kHz) without TSC scaling "
            "hardware (vendor none): KVM says \"user requested TSC rate below hardware "
            "speed\" (-EINVAL); use vendor vmx or svm"
        )
    ratio = (guest << cap.frac_bits) // host  # mul_u64_u32_div; fits: guest < max_guest_tsc_khz
    if ratio == 0 or ratio >= cap.max_ratio:
        raise DriftInputError(
            f"guest_khz={guest} refused: TSC scaling ratio {ratio:#x} is 0 or not below "
            f"{cap.name}'s maximum {cap.max_ratio:#x} (set_tsc_khz: -EINVAL)"
        )
    tgt = int(_k.scale_tsc(host, ratio, cap.frac_bits))  # tgt_tsc_khz: unsigned long, kHz
    if tgt == 0:
        if not cfg.tiny_ratio_clamp:
            raise DriftInputError(
                f"guest_khz={guest} on a {host} kHz host scales the record frequency to 0 kHz: "
                f"profile {cfg.name} (Linux {cfg.kernel}) has no tiny-ratio clamp "
                "(tiny_ratio_clamp=off; the clamp came in 6.16) and loops forever in "
                "kvm_get_time_scale; with the clamp on (profile upstream) it takes 1 kHz"
            )
        tgt = 1
    return GuestTsc(host, guest, cap.name, "scaled", cap.frac_bits, ratio, tgt)


def _ns_per_cycle(mul: int, shift: int) -> Fraction:
    """ns per cycle of a pvclock ``(tsc_to_system_mul, tsc_shift)``: mul * 2**shift / 2**32."""
    if shift >= 0:
        return Fraction(mul << shift, 1 << 32)
    return Fraction(mul, 1 << (32 - shift))


def _ppb(rate: Fraction) -> Fraction:
    return (rate - 1) * NSEC_PER_SEC


@dataclass(frozen=True)
class Drift:
    """Everything :func:`predict` computes.  Multipliers: ``base_mult``/``base_shift`` (A's
    clocksource), ``guest_mul``/``guest_shift`` (B's record), ``host_mul``/``host_shift``
    (C).  ``cycles`` host TSC cycles elapse between the two anchors; ``a_ns``/``b_ns``/``c_ns``
    are how far each definition advanced over them (ns, exact kernel integers) and
    ``jump_ns = a_ns - b_ns`` the guest clock's step at the re-anchor (positive = forward)."""

    profile: str
    kernel: str
    time_base: str
    tsc: GuestTsc
    base_mult: int
    base_shift: int
    guest_mul: int
    guest_shift: int
    host_mul: int
    host_shift: int
    seconds: Fraction
    cycles: int
    base_frac: int
    anchor_tsc: int
    a_ns: int
    b_ns: int
    c_ns: int

    @property
    def jump_ns(self) -> int:
        """The guest clock's step at the re-anchor, A - B (ns; positive = forward)."""
        return self.a_ns - self.b_ns

    @property
    def a_rate(self) -> Fraction:
        """A's ns per true ns: ``mult / 2**shift`` ns per cycle over ``10**6 / tsc_khz``."""
        return Fraction(self.base_mult * self.tsc.host_khz, (1 << self.base_shift) * 10**6)

    @property
    def b_rate(self) -> Fraction:
        """B's ns per true ns: guest cycles per host cycle times the record's ns per cycle."""
        per_host = (
            Fraction(self.tsc.ratio, 1 << self.tsc.frac_bits) if self.tsc.mode == "scaled" else 1
        )
        return (
            per_host
            * _ns_per_cycle(self.guest_mul, self.guest_shift)
            * Fraction(self.tsc.host_khz, 10**6)
        )

    @property
    def c_rate(self) -> Fraction:
        """C's ns per true ns: the host-kHz record's ns per cycle."""
        return _ns_per_cycle(self.host_mul, self.host_shift) * Fraction(self.tsc.host_khz, 10**6)

    @property
    def a_ppb(self) -> Fraction:
        """A against true time (ppb, exact)."""
        return _ppb(self.a_rate)

    @property
    def b_ppb(self) -> Fraction:
        """B against true time (ppb, exact)."""
        return _ppb(self.b_rate)

    @property
    def c_ppb(self) -> Fraction:
        """C against true time (ppb, exact)."""
        return _ppb(self.c_rate)

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``kvmclock drift --json`` (schema ``kvmclock.drift`` version 1,
        python/kvmclock/schemas/drift.schema.json): ppb as floats, ns and cycles as ints."""
        t = self.tsc
        a_b = self.a_ppb - self.b_ppb
        return {
            "schema": "kvmclock.drift",
            "schema_version": 1,
            "profile": self.profile,
            "kernel": self.kernel,
            "time_base": self.time_base,
            "tsc_khz": t.host_khz,
            "guest_khz": t.guest_khz,
            "vendor": t.vendor,
            "tsc_mode": t.mode,
            "frac_bits": t.frac_bits if t.mode == "scaled" else None,
            "tsc_scaling_ratio": t.ratio if t.mode == "scaled" else None,
            "record_tsc_khz": t.record_khz,
            "a": {"mult": self.base_mult, "shift": self.base_shift},
            "b": {"tsc_to_system_mul": self.guest_mul, "tsc_shift": self.guest_shift},
            "c": {"tsc_to_system_mul": self.host_mul, "tsc_shift": self.host_shift},
            "a_ppb": float(self.a_ppb),
            "b_ppb": float(self.b_ppb),
            "c_ppb": float(self.c_ppb),
            "a_minus_b_ppb": float(a_b),
            "b_minus_c_ppb": float(self.b_ppb - self.c_ppb),
            "a_minus_b_ms_per_day": float(a_b * 86400 / 10**6),
            "interval_s": float(self.seconds),
            "interval_cycles": self.cycles,
            "base_frac_shifted_ns": self.base_frac,
            "anchor_tsc_cycles": self.anchor_tsc,
            "a_ns": self.a_ns,
            "b_ns": self.b_ns,
            "c_ns": self.c_ns,
            "jump_ns": self.jump_ns,
        }


def _seconds(seconds: int | float | str | Fraction) -> Fraction:
    if isinstance(seconds, bool):
        raise DriftInputError(f"seconds must be a number, got {seconds!r}")
    try:
        value = Fraction(repr(seconds)) if isinstance(seconds, float) else Fraction(seconds)
    except (ValueError, TypeError, ZeroDivisionError):
        raise DriftInputError(f"seconds must be a number, got {seconds!r}") from None
    if value <= 0:
        raise DriftInputError(f"seconds={seconds} must be > 0")
    return value


def predict(
    tsc_khz: int,
    guest_khz: int | None = None,
    vendor: str = "vmx",
    seconds: int | float | str | Fraction = 5,
    profile: str | Profile = "upstream",
    *,
    cycles: int | None = None,
    base_frac: int = 0,
    anchor_tsc: int = 0,
) -> Drift:
    """The three rates and the re-anchor step ``seconds`` after the last masterclock update.

    ``cycles`` (host TSC cycles between the two updates) overrides ``seconds`` (default:
    ``floor(seconds * tsc_khz * 1000)``).  ``base_frac`` is the base clock's shifted
    nanoseconds at the first anchor modulo ``2**shift`` (``(xtime_nsec + (tsc - cycle_last) *
    mult) mod 2**shift`` of ``tkr_raw`` or ``tkr_mono``), ``anchor_tsc`` the host TSC there
    (``master_cycle_now``).  Raises :class:`DriftInputError` for any input KVM refuses or the
    kernel's 64-bit arithmetic cannot carry.
    """
    cfg = _profile(profile)
    tsc = guest_tsc(tsc_khz, guest_khz, vendor, cfg)
    secs = _seconds(seconds)
    if cycles is None:
        n = int(secs * tsc.host_khz * 1000)
    else:
        if isinstance(cycles, bool) or not isinstance(cycles, int):
            raise DriftInputError(f"cycles must be an int, got {cycles!r}")
        n = cycles
        secs = Fraction(n, tsc.host_khz * 1000)
    if not 1 <= n < _MAX_CYCLES:
        raise DriftInputError(
            f"the interval is {n} host TSC cycles; it must be 1..2**63-1 "
            f"(seconds={float(secs)} at {tsc.host_khz} kHz)"
        )
    if isinstance(anchor_tsc, bool) or not isinstance(anchor_tsc, int) or not (
        0 <= anchor_tsc <= U64_MASK
    ):
        raise DriftInputError(f"anchor_tsc={anchor_tsc!r} out of range (0..2**64-1)")
    mult, shift = tsc_clocksource_mult_shift(tsc.host_khz)
    if isinstance(base_frac, bool) or not isinstance(base_frac, int) or not (
        0 <= base_frac < 1 << shift
    ):
        raise DriftInputError(f"base_frac={base_frac!r} out of range (0..2**{shift}-1)")
    # A: the base clock's shifted ns grow by cycles * mult in total (every tick adds whole
    # intervals to xtime_nsec, a read adds the rest); a read shifts the sum once.
    a_ns = ((base_frac + n * mult) >> shift) - (base_frac >> shift)
    # B: the guest TSC at both ends (kvm_read_l1_tsc; the offset cancels), pvclock_scale_delta
    g_shift, g_mul = (int(v) for v in _k.get_time_scale(
        scaled_hz=NSEC_PER_SEC, base_hz=tsc.record_khz * 1000
    ))
    g_delta = (tsc.scale(anchor_tsc + n) - tsc.scale(anchor_tsc)) & U64_MASK
    if g_shift > 0 and g_delta << g_shift > U64_MASK:
        raise DriftInputError(
            f"seconds={float(secs)} too long for a {tsc.record_khz} kHz guest record: "
            f"{g_delta} guest cycles << tsc_shift {g_shift} overflow 64 bits (the guest's "
            "pvclock reading would wrap)"
        )
    b_ns = int(_k.pvclock_scale_delta(g_delta, g_mul, g_shift))
    # C: the host TSC delta with the host kHz's mul/shift (__get_kvmclock)
    h_shift, h_mul = (int(v) for v in _k.get_time_scale(
        scaled_hz=NSEC_PER_SEC, base_hz=tsc.host_khz * 1000
    ))
    c_ns = int(_k.pvclock_scale_delta(n, h_mul, h_shift))
    return Drift(
        profile=cfg.name,
        kernel=cfg.kernel,
        time_base=str(cfg.kvmclock_base),
        tsc=tsc,
        base_mult=mult,
        base_shift=shift,
        guest_mul=g_mul,
        guest_shift=g_shift,
        host_mul=h_mul,
        host_shift=h_shift,
        seconds=secs,
        cycles=n,
        base_frac=base_frac,
        anchor_tsc=anchor_tsc,
        a_ns=a_ns,
        b_ns=b_ns,
        c_ns=c_ns,
    )


def jump_ns(
    tsc_khz: int,
    guest_khz: int | None = None,
    vendor: str = "vmx",
    seconds: int | float | str | Fraction = 5,
    profile: str | Profile = "upstream",
    *,
    cycles: int | None = None,
    base_frac: int = 0,
    anchor_tsc: int = 0,
) -> int:
    """The guest clock's step (ns, positive = forward) at a masterclock update ``seconds``
    after the previous one: ``predict(...).jump_ns``."""
    return predict(
        tsc_khz,
        guest_khz,
        vendor,
        seconds,
        profile,
        cycles=cycles,
        base_frac=base_frac,
        anchor_tsc=anchor_tsc,
    ).jump_ns

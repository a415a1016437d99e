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
from kvmclock.errors import LivelockDetected
from kvmclock.profiles import Profile, resolve_profile

__all__ = [
    "MAX_GUEST_TSC_KHZ_CAP",
    "TSC_SCALING",
    "TSC_TOLERANCE_PPM",
    "Drift",
    "DriftInputError",
    "GuestTsc",
    "KvmRefused",
    "RatioInput",
    "TscScaling",
    "guest_tsc",
    "jump_ns",
    "model_tsc_scaling",
    "predict",
    "refusal_document",
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


class KvmRefused(DriftInputError):
    """KVM refuses the guest TSC frequency (``KVM_SET_TSC_KHZ`` returns -EINVAL): a result of
    the model, not a bad input.  ``refusal`` says why, in the words ``kvmclock scale`` prints."""

    def __init__(self, guest_khz: int, refusal: str) -> None:
        super().__init__(f"guest_khz={guest_khz} refused (-EINVAL): {refusal}")
        self.guest_khz = guest_khz
        self.refusal = refusal


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
    #: the record's ``tsc_to_system_mul``/``tsc_shift`` as the model wrote them (None:
    #: ``kvm_get_time_scale(NSEC_PER_SEC, record_khz * 1000)``)
    record_mul: int | None = None
    record_shift: int | None = None

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


@dataclass(frozen=True)
class RatioInput:
    """``--ratio`` as typed: ``form`` is ``fixed_point`` (an integer, decimal or 0x hex, used
    as the raw multiplier) or ``real`` (``1.5``, ``3/2``: converted exactly, truncated to the
    host's fraction bits)."""

    text: str
    form: str
    value: Fraction | int

    def fixed_point(self, frac_bits: int) -> int:
        """The multiplier with ``frac_bits`` fraction bits (VMX 48, SVM 32)."""
        if self.form == "real":
            return int(Fraction(self.value) * (1 << frac_bits))
        return int(self.value)



def _model_host(tsc_khz: int, scaling: str, profile: str | Profile) -> tuple[Any, Any]:
    """A booted one-CPU model host of ``tsc_khz`` kHz with TSC scaling hardware ``scaling``,
    KVM loaded under ``profile``, one VM with one vCPU: ``(KvmModule, Kvm)``."""
    from kvmclock.kernel import Kernel
    from kvmclock.machine import PhysicalMachine, World

    world = World(0)
    machine = PhysicalMachine(world, 1, tsc_khz=tsc_khz, tsc_scaling=scaling)
    host = Kernel(machine, profile, name="L0")
    host.boot()
    world.run_until(1_000_000)  # 1 ms before KVM loads
    module = host.load_kvm()
    vm = module.create_vm(name="guest")
    vm.create_vcpu()
    return module, vm


def model_tsc_scaling(
    tsc_khz: int,
    scaling: str,
    *,
    guest_khz: int | None = None,
    ratio: RatioInput | None = None,
    profile: str | Profile = "upstream",
) -> dict[str, Any]:
    """What KVM does on a ``tsc_khz`` kHz host with TSC scaling hardware ``scaling`` (``vmx``,
    ``svm``, ``none``) for a vCPU asking ``guest_khz`` kHz (``KVM_SET_TSC_KHZ``, x86.c
    ``kvm_arch_vcpu_ioctl`` -> ``kvm_set_tsc_khz`` -> ``set_tsc_khz``) or given the TSC
    multiplier ``ratio`` (``kvm_vcpu_write_tsc_multiplier``), computed by the model and read
    back from its vCPU; then the pvclock record ``kvm_guest_time_update`` writes for it (a
    fresh vCPU: its ``hw_tsc_khz`` is 0, so a record frequency that scales to 0 kHz keeps
    ``tsc_to_system_mul`` 0 before Linux 6.16 instead of calling ``kvm_get_time_scale``).
    ``guest_khz`` 0 is the ioctl's "the host's ``tsc_khz``" (``kvm_arch_vcpu_ioctl``:
    ``if (user_tsc_khz == 0) user_tsc_khz = tsc_khz``).

    Shared by ``kvmclock scale`` and ``kvmclock drift`` (:func:`guest_tsc`), so both give
    the same answer.

    ``rule``: ``no_scaling`` (within ``tsc_tolerance_ppm`` of the host: default ratio),
    ``scaled`` (a ratio), ``catchup`` (no scaling hardware, faster guest) or ``refused``
    (-EINVAL; ``refusal`` says why).  Frequencies in kHz, ratios fixed point with
    ``frac_bits`` fraction bits."""
    import kvmclock as k
    from kvmclock.kvm import MSR_KVM_SYSTEM_TIME_NEW
    from kvmclock.kvm.x86 import TSC_TOLERANCE_PPM

    module, vm = _model_host(tsc_khz, scaling, profile)
    vcpu = vm.vcpus[0]
    lo = int(k.adjust_tsc_khz(tsc_khz, -TSC_TOLERANCE_PPM))
    hi = int(k.adjust_tsc_khz(tsc_khz, TSC_TOLERANCE_PPM))
    has_control = bool(module.has_tsc_control)
    frac = int(module.tsc_scaling_ratio_frac_bits)
    refusal: str | None = None
    if guest_khz is not None:
        try:
            vm.set_vcpu_tsc_khz(0, guest_khz)
        except ValueError as exc:
            rule = "refused"
            refusal = (
                str(exc)
                .removeprefix(f"{vm.name} vcpu 0: ")
                .removeprefix(f"KVM_SET_TSC_KHZ {guest_khz} kHz refused (-EINVAL): ")
                .removesuffix(" (-EINVAL)")
            )
        else:  # accepted: name the rule kvm_set_tsc_khz took (the vCPU holds its result)
            plan, _ = module.set_tsc_khz_plan(guest_khz or tsc_khz, tsc_khz)
            rule = {"default": "no_scaling", "ratio": "scaled", "catchup": "catchup"}[plan]
    elif ratio is not None:
        if not has_control:
            rule = "refused"
            refusal = (
                "no TSC scaling hardware (--scaling none): KVM has no TSC multiplier to "
                "program; without it a guest faster than the host runs with catch-up "
                "(ask a frequency with --guest-khz)"
            )
        else:
            r = ratio.fixed_point(frac)
            if r == 0 or r >= module.max_tsc_scaling_ratio:
                rule = "refused"
                which = ("is 0" if r == 0 else
                         f"is >= max_tsc_scaling_ratio {module.max_tsc_scaling_ratio:#x} "
                         f"({scaling})")
                refusal = (
                    f"ratio {r:#x} {which}: set_tsc_khz never programs such a multiplier "
                    "(-EINVAL)"
                )
            else:
                vcpu.tsc_scaling_ratio = r  # kvm_vcpu_write_tsc_multiplier
                rule = "no_scaling" if r == module.default_tsc_scaling_ratio else "scaled"
    else:
        raise ValueError("model_tsc_scaling needs guest_khz or ratio")
    hardware_khz = int(module.kvm_scale_tsc(vcpu, tsc_khz))
    hardware_hz = int(module.kvm_scale_tsc(vcpu, tsc_khz * 1000))
    record: dict[str, Any] | None = None
    record_note: str | None = None
    if rule == "refused":
        record_note = "no record: the frequency was refused, the vCPU keeps the host's"
    else:
        vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)  # kvmclock at guest address 0
        try:
            vm.machine.run_on_cpu(0, lambda: None)  # vCPU entry: kvm_guest_time_update
        except LivelockDetected as exc:
            record_note = f"no record: {exc}"
        except (ValueError, OverflowError) as exc:
            record_note = f"no record: KVM cannot express it ({exc})"
        else:
            hv = vcpu.hv_clock
            record = {
                "record_tsc_khz": int(vcpu.hw_tsc_khz),
                "tsc_to_system_mul": int(hv.tsc_to_system_mul),
                "tsc_shift": int(hv.tsc_shift),
                "pvclock_tsc_khz": (
                    int(k.pvclock_tsc_khz(tsc_to_system_mul=hv.tsc_to_system_mul,
                                          tsc_shift=hv.tsc_shift))
                    if hv.tsc_to_system_mul else None
                ),
            }
    ratio_now = int(vcpu.tsc_scaling_ratio) if has_control else None
    virtual_khz = int(vcpu.virtual_tsc_khz)
    return {
        "scaling": scaling,
        "has_tsc_control": has_control,
        "frac_bits": frac if has_control else None,
        "max_tsc_scaling_ratio": int(module.max_tsc_scaling_ratio) if has_control else None,
        "max_guest_tsc_khz": int(module.max_guest_tsc_khz()) if has_control else None,
        "tolerance_ppm": TSC_TOLERANCE_PPM,
        "tolerance_low_khz": lo,
        "tolerance_high_khz": hi,
        "rule": rule,
        "accepted_by_set_tsc_khz": rule != "refused",
        "refusal": refusal,
        "ratio": ratio_now,
        "ratio_hex": f"{ratio_now:#x}" if ratio_now is not None else None,
        "ratio_value": ratio_now / 2**frac if ratio_now is not None else None,
        "virtual_tsc_khz": virtual_khz,
        "tsc_catchup": bool(vcpu.tsc_catchup),
        "hardware_tsc_khz": hardware_khz,
        "hardware_tsc_hz": hardware_hz,
        "guest_tsc_khz": virtual_khz if vcpu.tsc_catchup else hardware_khz,
        "guest_record": record,
        "guest_record_note": record_note,
    }


def guest_tsc(
    tsc_khz: int,
    guest_khz: int | None = None,
    vendor: str = "vmx",
    profile: str | Profile = "upstream",
) -> GuestTsc:
    """KVM's decision for a guest TSC of ``guest_khz`` (None or 0: the host's, as
    ``KVM_SET_TSC_KHZ`` 0 is) on a host TSC of ``tsc_khz`` with TSC scaling ``vendor``, by the
    KVM model (:func:`model_tsc_scaling`, the code ``kvmclock scale`` runs): KVM_SET_TSC_KHZ
    (refuses ``guest_khz >= kvm_caps.max_guest_tsc_khz`` with scaling hardware),
    ``kvm_set_tsc_khz`` (tolerance), ``set_tsc_khz`` (ratio, its bounds, catch-up) and the
    record ``kvm_guest_time_update`` writes with ``tgt_tsc_khz = kvm_scale_tsc(tsc_khz,
    ratio)``.  When that is 0 kHz, Linux 6.16+ takes 1 kHz (profile switch
    ``tiny_ratio_clamp``); before it a fresh vCPU (``hw_tsc_khz`` 0) keeps
    ``tsc_to_system_mul`` 0, a guest clock that does not advance (``kvm_get_time_scale``
    would loop forever only once the vCPU's kHz was non-zero).  A refusal raises
    :class:`KvmRefused`, a bad argument :class:`DriftInputError`.
    """
    host = _check_khz("tsc_khz", tsc_khz)
    cap = _vendor(vendor)
    cfg = _profile(profile)
    if guest_khz is None:
        return GuestTsc(host, host, cap.name, "native", cap.frac_bits, 1 << cap.frac_bits, host)
    if isinstance(guest_khz, bool) or not isinstance(guest_khz, int) or not (
        0 <= guest_khz <= U32_MAX
    ):
        raise DriftInputError(
            f"guest_khz={guest_khz!r} out of range (0..{U32_MAX} kHz: a u32; 0 = the host's)")
    e = model_tsc_scaling(host, cap.name, guest_khz=guest_khz, profile=cfg)
    guest = guest_khz or host
    if e["rule"] == "refused":
        raise KvmRefused(guest_khz, str(e["refusal"]))
    rec = e["guest_record"]
    if rec is None:
        raise DriftInputError(f"guest_khz={guest_khz}: {e['guest_record_note']}")
    mul, shift = int(rec["tsc_to_system_mul"]), int(rec["tsc_shift"])
    if e["rule"] == "catchup":
        return GuestTsc(host, guest, cap.name, "catchup", 0, 1, int(rec["record_tsc_khz"]),
                        mul, shift)
    if e["rule"] == "no_scaling":
        return GuestTsc(host, guest, cap.name, "native", cap.frac_bits, 1 << cap.frac_bits,
                        int(rec["record_tsc_khz"]), mul, shift)
    return GuestTsc(host, guest, cap.name, "scaled", cap.frac_bits, int(e["ratio"]),
                    int(rec["record_tsc_khz"]), mul, shift)


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
            "refusal": None,
            "record_note": self.record_note,
        }

    @property
    def record_note(self) -> str | None:
        """Why B does not advance, when the guest record's ``tsc_to_system_mul`` is 0."""
        if self.guest_mul != 0:
            return None
        return (
            f"the guest record's tsc_to_system_mul is 0: kvm_scale_tsc of the host's "
            f"{self.tsc.host_khz} kHz is {self.tsc.record_khz} kHz and profile {self.profile} "
            f"(Linux {self.kernel}) has no tiny-ratio clamp, so kvm_guest_time_update skips "
            "kvm_get_time_scale on a fresh vCPU (hw_tsc_khz is 0 too) and the record keeps "
            "mul 0: the guest clock does not advance between masterclock updates; "
            "kvm_get_time_scale(NSEC_PER_SEC, 0) would loop forever once the vCPU's kHz was "
            "non-zero; Linux 6.16+ takes 1 kHz (tiny_ratio_clamp)"
        )


def refusal_document(tsc_khz: int, guest_khz: int, vendor: str, profile: str | Profile,
                     refusal: str) -> dict[str, Any]:
    """The ``kvmclock.drift`` document of a guest TSC frequency KVM refuses (``tsc_mode``
    ``refused``, ``refusal`` says why): nothing runs, so every rate and step is null."""
    cfg = _profile(profile)
    doc: dict[str, Any] = {
        "schema": "kvmclock.drift",
        "schema_version": 1,
        "profile": cfg.name,
        "kernel": cfg.kernel,
        "time_base": str(cfg.kvmclock_base),
        "tsc_khz": tsc_khz,
        "guest_khz": guest_khz,
        "vendor": vendor,
        "tsc_mode": "refused",
    }
    for key in ("frac_bits", "tsc_scaling_ratio", "record_tsc_khz", "a", "b", "c", "a_ppb",
                "b_ppb", "c_ppb", "a_minus_b_ppb", "b_minus_c_ppb", "a_minus_b_ms_per_day",
                "interval_s", "interval_cycles", "base_frac_shifted_ns", "anchor_tsc_cycles",
                "a_ns", "b_ns", "c_ns", "jump_ns"):
        doc[key] = None
    doc["refusal"] = refusal
    doc["record_note"] = None
    return doc


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
    if tsc.record_mul is not None and tsc.record_shift is not None:
        g_shift, g_mul = tsc.record_shift, tsc.record_mul
    else:
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

"""Clocksources: the framework part of kernel/time/clocksource.c and the x86 drivers.

Drivers: ``tsc`` (arch/x86/kernel/tsc.c), ``hpet`` (arch/x86/kernel/hpet.c), ``acpi_pm``
(drivers/clocksource/acpi_pm.c), ``jiffies`` (kernel/time/jiffies.c) and the guest
``kvm-clock`` (arch/x86/kernel/kvmclock.c + pvclock.c).  ``read()`` returns
``(cycles, stamp)`` as the 2017 series' patch 01 reshaped ``clocksource::read``:

* tsc: stamp = the TSC value itself (patch 04);
* kvm-clock: stamp = the TSC of the successful pvclock version-retry iteration (02/03);
* hpet, acpi_pm, jiffies: not TSC based; the stamp is the counter itself (patch 01 left the
  choice to the driver: "the counter itself or untouched").  Consumers must only trust the
  stamp of a TSC-derived clocksource (vclock mode TSC, or PVCLOCK with the stable bit).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import kvmclock as _k

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel
    from kvmclock.machine.base import Counter

__all__ = [
    "CLOCK_SOURCE_IS_CONTINUOUS",
    "CLOCK_SOURCE_MUST_VERIFY",
    "CLOCK_SOURCE_RESELECT",
    "CLOCK_SOURCE_SUSPEND_NONSTOP",
    "CLOCK_SOURCE_UNSTABLE",
    "CLOCK_SOURCE_VALID_FOR_HRES",
    "CLOCK_SOURCE_WATCHDOG",
    "VCLOCK_HVCLOCK",
    "VCLOCK_NONE",
    "VCLOCK_PVCLOCK",
    "VCLOCK_TSC",
    "WATCHDOG_MAX_SKEW",
    "WATCHDOG_THRESHOLD_618",
    "Clocksource",
    "CounterClocksource",
    "JiffiesClocksource",
    "KvmClock",
    "TscClocksource",
    "clocksource_delta",
    "clocksource_delta_max",
    "clocksource_mask",
    "clocksource_max_adjustment",
    "cycles_to_nsec_safe",
    "jiffies_shift",
    "tick_nsec",
]

NSEC_PER_SEC = 1_000_000_000
U64_MASK = (1 << 64) - 1
U32_MASK = (1 << 32) - 1

# include/linux/clocksource.h
CLOCK_SOURCE_IS_CONTINUOUS = 0x01
CLOCK_SOURCE_MUST_VERIFY = 0x02
CLOCK_SOURCE_WATCHDOG = 0x10
CLOCK_SOURCE_VALID_FOR_HRES = 0x20
CLOCK_SOURCE_UNSTABLE = 0x40
CLOCK_SOURCE_SUSPEND_NONSTOP = 0x80
CLOCK_SOURCE_RESELECT = 0x100

# archdata.vclock_mode (arch/x86/include/asm/clocksource.h, 2017); same order as today's
# enum vdso_clock_mode.  HPET's vclock (VCLOCK_HPET) is not modelled: hpet reports NONE.
VCLOCK_NONE = 0
VCLOCK_TSC = 1
VCLOCK_PVCLOCK = 2
VCLOCK_HVCLOCK = 3

# kernel/time/clocksource.c (5.14+, values of 6.18.0).  WATCHDOG_MAX_SKEW is
# CONFIG_CLOCKSOURCE_WATCHDOG_MAX_SKEW_US (Kconfig default 125, always defined on x86, which
# selects CLOCKSOURCE_WATCHDOG) microseconds; 2 * WATCHDOG_MAX_SKEW is the lower bound of every
# computed uncertainty margin.  WATCHDOG_THRESHOLD_618 (NSEC_PER_SEC >> 5, half of 2017's
# threshold) is the margin of a clocksource registered without a frequency.
WATCHDOG_MAX_SKEW = 125 * 1000
WATCHDOG_THRESHOLD_618 = NSEC_PER_SEC >> 5

MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
PVTI_SIZE = 64  # sizeof(struct pvclock_vsyscall_time_info): 32-byte record padded to a cache line


def clocksource_mask(bits: int) -> int:
    """``CLOCKSOURCE_MASK(bits)``."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits={bits} out of range (1..64)")
    return (1 << bits) - 1


def clocksource_delta(now: int, last: int, mask: int) -> int:
    """x86 ``clocksource_delta`` (CONFIG_CLOCKSOURCE_VALIDATE_LAST_CYCLE, 2017).

    ``(now - last) & mask``; a result with the top half-range bit set is negative motion
    (``now`` behind ``last``, e.g. a TSC read on a CPU slightly behind) and yields 0.
    """
    ret = (now - last) & mask
    return 0 if ret & ~(mask >> 1) else ret


def clocksource_delta_max(now: int, last: int, mask: int, max_delta: int) -> int:
    """``clocksource_delta`` of 6.13+ (include/linux/timekeeping_internal.h).

    ``(now - last) & mask``, or 0 when that exceeds ``max_delta`` (the clocksource's
    ``max_raw_delta``, 7/8 of the mask: negative motion, e.g. a TSC read behind the last one).
    """
    ret = (now - last) & mask
    return 0 if ret > max_delta else ret


def cycles_to_nsec_safe(cs: Clocksource, start: int, end: int) -> int:
    """``cycles_to_nsec_safe`` (kernel/time/clocksource.c, 6.10+): ns between two reads.

    The delta is ``clocksource_delta_max(end, start, mask, max_raw_delta)``; below
    ``max_cycles`` it is converted with ``clocksource_cyc2ns`` (64-bit product), above with
    ``mul_u64_u32_shr`` (exact 96-bit product), so a long interval does not wrap.
    """
    delta = (end - start) & cs.mask  # clocksource_delta_max, inlined (hot: the watchdog)
    if delta > cs.max_raw_delta:
        delta = 0
    if delta < cs.max_cycles:  # cs.cyc2ns(delta) without the call (delta is already u64)
        return int(_k.clocksource_cyc2ns(delta, cs.mult, cs.shift))
    return ((delta * cs.mult) >> cs.shift) & U64_MASK


def clocksource_max_adjustment(mult: int) -> int:
    """``clocksource_max_adjustment``: 11% of mult (MAX_ADJ for NTP)."""
    return (mult * 11) // 100


#: the smallest CONFIG_HZ whose jiffies clocksource mult (TICK_NSEC << JIFFIES_SHIFT,
#: kernel/time/jiffies.c) fits in u32 (the kernel's Kconfig offers 100, 250, 300, 1000)
MIN_HZ = 15


def tick_nsec(hz: int) -> int:
    """``TICK_NSEC`` = (NSEC_PER_SEC + HZ/2) / HZ (include/linux/jiffies.h)."""
    return (NSEC_PER_SEC + hz // 2) // hz


def jiffies_shift(hz: int) -> int:
    """``JIFFIES_SHIFT`` (kernel/time/timekeeping.h / jiffies.h): 6 below HZ 34, 7 below 67, else
    8.
    """
    if hz < 34:
        return 6
    if hz < 67:
        return 7
    return 8


class Clocksource(abc.ABC):
    """``struct clocksource``: name, rating, mask, mult, shift, flags, vclock mode, read().

    Subclasses implement ``_read_counter()`` -> ``(cycles, stamp)``; ``read()`` is what the
    timekeeper and the watchdog call (it counts reads in ``kernel.counters``).
    """

    def __init__(
        self,
        kernel: Kernel,
        name: str,
        rating: int,
        mask: int,
        *,
        flags: int = 0,
        vclock_mode: int = VCLOCK_NONE,
        mult: int = 0,
        shift: int = 0,
    ) -> None:
        self.kernel = kernel
        self.name = name
        self.rating = rating
        self.mask = mask
        self.mult = mult
        self.shift = shift
        self.flags = flags
        self.vclock_mode = vclock_mode
        self.maxadj = 0
        self.max_cycles = 0
        self.max_idle_ns = 0
        self.freq_hz = 0  # scale * freq given at registration (0 for jiffies)
        # 5.14+ watchdog (clocksource_watchdog=6.18): ns per half second this clocksource may
        # be off; computed at registration, 0 (unused) under the 4.13 rule.
        self.uncertainty_margin = 0
        self.max_raw_delta = mask >> 1  # 6.13+: 7/8 of the mask, set at registration
        self.cs_last = 0  # watchdog bookkeeping (cs->cs_last, cs->wd_last)
        self.wd_last = 0
        self.registered = False

    #: The driver's read writes nothing another clocksource's read observes (at most its own
    #: clamp, as kvm-clock's ``last_value``) and a second read at the same instant on the same
    #: CPU, with nothing written in between, returns the same value: a caller may reuse the
    #: first (``Timekeeper.update_wall_time``, the watchdog's read-backs).  False unless the
    #: driver says so.
    read_pure = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # hot (every clock read): a driver's ``read`` is its ``_read_counter``, one call less
        inherited = cls.read
        if inherited is Clocksource.read or inherited.__name__ == "_read_counter":
            cls.read = cls._read_counter  # type: ignore[method-assign]

    # -- the driver's read --------------------------------------------------------------------
    def read(self) -> tuple[int, int]:
        """``cs->read(cs, &stamp)`` on ``kernel.current_cpu``: ``(cycles, stamp)``."""
        return self._read_counter()

    @abc.abstractmethod
    def _read_counter(self) -> tuple[int, int]:
        """The driver's counter read: ``(cycles, stamp)`` (patches 01-04)."""

    def cyc2ns(self, cycles: int) -> int:
        """``clocksource_cyc2ns(cycles, mult, shift)`` (64-bit product wraps, as in the kernel)."""
        return int(_k.clocksource_cyc2ns(cycles & U64_MASK, self.mult, self.shift))

    # -- framework -------------------------------------------------------------------------
    def update_freq_scale(self, scale: int, freq: int) -> None:
        """``__clocksource_update_freq_scale`` (kernel/time/clocksource.c).

        ``sec = mask / freq / scale`` (at least 1; capped at 600 for masks wider than 32 bits),
        ``clocks_calc_mult_shift(freq, NSEC_PER_SEC / scale, sec * scale)``, then halve
        mult/shift until ``mult +- maxadj`` (11%) fits in u32, then ``clocks_calc_max_nsecs``.
        ``freq == 0`` keeps the driver's own mult/shift (jiffies).
        """
        if scale <= 0:
            raise ValueError(f"scale={scale} must be > 0")
        if freq < 0 or freq > U32_MASK:
            raise ValueError(f"freq={freq} out of range (0..2**32-1)")
        if freq:
            sec = self.mask // freq // scale
            if sec == 0:
                sec = 1
            elif sec > 600 and self.mask > U32_MASK:
                sec = 600
            mult, shift = _k.clocks_calc_mult_shift(
                from_hz=freq, to_hz=NSEC_PER_SEC // scale, maxsec=sec * scale
            )
            self.mult, self.shift = int(mult), int(shift)
        self.maxadj = clocksource_max_adjustment(self.mult)
        while freq and (
            ((self.mult + self.maxadj) & U32_MASK) < self.mult
            or ((self.mult - self.maxadj) & U32_MASK) > self.mult
        ):
            self.mult >>= 1
            self.shift -= 1
            self.maxadj = clocksource_max_adjustment(self.mult)
        self.freq_hz = scale * freq
        if self.kernel.cfg.clocksource_watchdog == "6.18":
            self.uncertainty_margin = self._uncertainty_margin(scale, freq)
        # clocks_calc_max_nsecs(mult, shift, maxadj, mask, &max_cycles)
        if self.mult:
            max_cycles = min(U64_MASK // (self.mult + self.maxadj), self.mask)
            self.max_cycles = max_cycles
            self.max_idle_ns = (
                int(_k.clocksource_cyc2ns(max_cycles, self.mult - self.maxadj, self.shift)) >> 1
            )
        # clocksource_update_max_deferment (6.13+): the negative-motion threshold
        self.max_raw_delta = (self.mask >> 1) + (self.mask >> 2) + (self.mask >> 3)

    #: ``.uncertainty_margin`` given in the driver's struct (ns); 0 = computed at registration.
    preset_uncertainty_margin = 0

    def _uncertainty_margin(self, scale: int, freq: int) -> int:
        """The uncertainty margin ``__clocksource_update_freq_scale`` (6.18) leaves (ns).

        The driver's preset if any; else with a frequency the counter period
        ``NSEC_PER_SEC / (scale * freq)`` (the product is u32 arithmetic in the kernel, so it
        wraps), at least ``2 * WATCHDOG_MAX_SKEW`` (250 us); without one WATCHDOG_THRESHOLD
        (31.25 ms).
        """
        if self.preset_uncertainty_margin:
            return self.preset_uncertainty_margin
        if scale and freq:
            period_div = (scale * freq) & U32_MASK
            if period_div == 0:
                raise ValueError(
                    f"clocksource {self.name}: scale={scale} * freq={freq} wraps to 0 in u32 "
                    "(the kernel would divide by zero); valid: a product that is not a "
                    "multiple of 2**32"
                )
            return max(NSEC_PER_SEC // period_div, 2 * WATCHDOG_MAX_SKEW)
        return WATCHDOG_THRESHOLD_618

    def mark_unstable(self) -> None:
        """``clocksource_mark_unstable(cs)``: flag it UNSTABLE; the watchdog work rates it 0 and
        reselects.
        """
        self.kernel.watchdog.clocksource_mark_unstable(self)

    def on_mark_unstable(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """The driver's ``cs->mark_unstable`` hook (called from ``__clocksource_unstable``); none by
        default.
        """

    @property
    def unstable(self) -> bool:
        """CLOCK_SOURCE_UNSTABLE is set."""
        return bool(self.flags & CLOCK_SOURCE_UNSTABLE)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, rating={self.rating}, mask={self.mask:#x}, "
            f"mult={self.mult}, shift={self.shift}, flags={self.flags:#x}, "
            f"vclock_mode={self.vclock_mode})"
        )


class TscClocksource(Clocksource):
    """``clocksource_tsc``: rating 300, 64-bit, CONTINUOUS|MUST_VERIFY, vclock TSC.

    Registered with ``clocksource_register_khz(&clocksource_tsc, tsc_khz)``.  ``read_tsc`` is
    ``rdtsc_ordered()`` on the current CPU; the stamp is that value (patch 04).  MUST_VERIFY
    is dropped (the watchdog never checks tsc) with "tsc_reliable" (X86_FEATURE_TSC_RELIABLE),
    and, under the switch ``tsc_watchdog_exemption`` (5.16+, ``check_system_tsc_reliable``),
    when the machine has "constant_tsc", "nonstop_tsc" and "tsc_adjust" and at most 4
    packages (a machine's ``packages`` attribute, 1 when it has none).
    """

    def __init__(self, kernel: Kernel) -> None:
        flags = CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_MUST_VERIFY
        features = kernel.machine.features
        if "constant_tsc" in features and "nonstop_tsc" in features:
            flags |= CLOCK_SOURCE_SUSPEND_NONSTOP
        if "tsc_reliable" in features:  # X86_FEATURE_TSC_RELIABLE: no watchdog
            flags &= ~CLOCK_SOURCE_MUST_VERIFY
        if (
            kernel.cfg.tsc_watchdog_exemption
            and {"constant_tsc", "nonstop_tsc", "tsc_adjust"} <= features
            and int(getattr(kernel.machine, "packages", 1)) <= 4
        ):
            flags &= ~CLOCK_SOURCE_MUST_VERIFY  # tsc_disable_clocksource_watchdog()
        super().__init__(kernel, "tsc", 300, U64_MASK, flags=flags, vclock_mode=VCLOCK_TSC)

    read_pure = True  # the CPU's TSC at this instant

    def _read_counter(self) -> tuple[int, int]:
        k = self.kernel
        v = k.machine.cpus[k.current_cpu].read_tsc()
        return v, v

    def on_mark_unstable(self) -> None:
        """``tsc_cs_mark_unstable``: sets tsc_unstable and prints the watchdog reason."""
        k = self.kernel
        if k.tsc_unstable:
            return
        k.tsc_unstable = True
        k.printk("tsc: Marking TSC unstable due to clocksource watchdog")


class CounterClocksource(Clocksource):
    """A platform counter clocksource (hpet 250, acpi_pm 200), CONTINUOUS, vclock NONE."""

    def __init__(self, kernel: Kernel, counter: Counter, rating: int) -> None:
        super().__init__(
            kernel,
            counter.name,
            rating,
            clocksource_mask(counter.bits),
            flags=CLOCK_SOURCE_IS_CONTINUOUS,
        )
        self.counter = counter

    @property
    def read_pure(self) -> bool:  # type: ignore[override]  # follows move_to_machine's counter
        """Whether the counter's read is a pure function of the instant (a platform
        counter's ``read_pure``; an emulated one reads the host's clock: not)."""
        return bool(getattr(self.counter, "read_pure", False))

    def _read_counter(self) -> tuple[int, int]:
        v = self.counter.read() & self.mask
        return v, v


class JiffiesClocksource(Clocksource):
    """``clocksource_jiffies``: rating 1, 32-bit mask, mult TICK_NSEC << JIFFIES_SHIFT, no freq.

    Its ``.uncertainty_margin`` is 32 ms in 5.15+ kernels (used by the 6.18 watchdog rule).
    """

    preset_uncertainty_margin = 32 * 1000 * 1000

    def __init__(self, kernel: Kernel) -> None:
        hz = kernel.hz
        shift = jiffies_shift(hz)
        super().__init__(
            kernel, "jiffies", 1, clocksource_mask(32), mult=tick_nsec(hz) << shift, shift=shift
        )
        self.max_cycles = 10

    def _read_counter(self) -> tuple[int, int]:
        v = self.kernel.jiffies_64 & U64_MASK  # jiffies_read: (u64) jiffies
        return v, v


class KvmClock(Clocksource):
    """The guest ``kvm-clock`` (arch/x86/kernel/kvmclock.c): 64-bit ns, CONTINUOUS, 1 GHz.

    ``read()`` is ``kvm_clock_get_cycles`` -> ``pvclock_clocksource_read`` on the current
    vCPU's record in ``machine.memory`` with the kernel's shared ``PvclockClock`` (the
    ``last_value`` clamp unless stable); the stamp is the TSC of the successful retry
    iteration (patches 02/03).  Profile ``series`` (patch 10): the clocksource remembers the
    last observed ``PVCLOCK_TSC_STABLE_BIT`` (masked by the valid flags) and, when a read sees
    it flip, calls ``kernel.clocksource_changes_notify()`` synchronously before returning, as
    the kernel would.  The new value is recorded first, so a re-entrant read from a notifier
    callback does not fire again; the timekeeper refuses reads from inside its own write
    section, so a callback cannot deadlock on ``tk_core.seq``.
    """

    def __init__(self, kernel: Kernel, rating: int) -> None:
        super().__init__(kernel, "kvm-clock", rating, U64_MASK, flags=CLOCK_SOURCE_IS_CONTINUOUS)
        self.last_stable: bool | None = None
        self.stable_flips = 0
        # the pvclock read at one instant returns the same value twice (the last_value clamp
        # only keeps the larger); with patch 10 a read may call the change chain: not pure
        self.read_pure = not kernel.cfg.clocksource_change_chain

    def _read_counter(self) -> tuple[int, int]:
        k = self.kernel
        cpu = k.current_cpu
        pv = k.pvclock
        if pv is None:
            raise RuntimeError("kvm-clock read before kvmclock_init (kernel.pvclock is None)")
        ns, flags, stamp = pv.read_with_stamp(  # hot: k.pvti_offset(cpu) inlined
            k.machine.memory, k.machine.cpus[cpu].read_tsc, k.pvti_gpa + cpu * PVTI_SIZE
        )
        if k.cfg.clocksource_change_chain:
            stable = bool(flags & k.pvclock_valid_flags & _k.PVCLOCK_TSC_STABLE_BIT)
            if self.last_stable is None:
                self.last_stable = stable
            elif stable != self.last_stable:
                self.last_stable = stable
                self.stable_flips += 1
                k.counters["pvclock.stable_flips"] += 1
                k.world.log("pvclock_stable_flip", kernel=k.name, cpu=cpu, stable=stable)
                k.clocksource_changes_notify()
        return int(ns), int(stamp)

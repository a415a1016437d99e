"""Bare-metal hardware: per-CPU TSCs as exact functions of true time, HPET and ACPI PM timer.

All arithmetic is integer/rational (``fractions.Fraction``), never float, so the same
parameters give the same counter values everywhere.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction

from kvmclock.errors import count_ids
from kvmclock.machine.base import U64_MASK, T
from kvmclock.machine.world import World

__all__ = [
    "ACPI_PM_BITS",
    "ACPI_PM_FREQ_HZ",
    "HPET_BITS",
    "HPET_FREQ_HZ",
    "AcpiPm",
    "Hpet",
    "PhysicalCpu",
    "PhysicalMachine",
    "PlatformCounter",
    "to_fraction",
]

NSEC_PER_SEC = 1_000_000_000
HPET_FREQ_HZ = 14_318_180  # typical HPET (drivers/clocksource + arch/x86/kernel/hpet.c reads it)
HPET_BITS = 32  # HPET_MASK = CLOCKSOURCE_MASK(32)
ACPI_PM_FREQ_HZ = 3_579_545  # PMTMR_TICKS_PER_SEC (include/linux/acpi_pmtmr.h)
ACPI_PM_BITS = 24  # ACPI_PM_MASK = CLOCKSOURCE_MASK(24)
#: TSC-scaling hardware a machine can have (KVM's kvm_caps; see kvmclock.kvm.x86)
TSC_SCALING_KINDS = ("vmx", "svm", "none")


def to_fraction(name: str, value: int | Fraction | float | str) -> Fraction:
    """Exact rational from an int, Fraction, decimal string or float (taken by its repr)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got bool")
    if isinstance(value, (int, Fraction)):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(repr(value))  # the decimal the user wrote, not the binary float
    if isinstance(value, str):
        try:
            return Fraction(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a number") from None
    raise TypeError(f"{name} must be int, Fraction, float or str, got {type(value).__name__}")


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}={value} out of range ({rng})")
    return value


class PhysicalCpu:
    """A CPU whose TSC is ``boot_offset + floor(t_ns * khz * (1 + ppm/1e6) / 1e6) + jumps`` mod
    2**64.

    ``tsc_khz`` is the nominal (calibrated) frequency the kernel uses; ``drift_ppm`` makes the
    real rate differ from it.  ``jumps`` are ``(at_ns, delta_cycles)``: from true time
    ``at_ns`` on, the TSC is ``delta_cycles`` higher (negative = a backwards step), like a
    TSC write by firmware/SMM or a package losing its TSC in a deep C-state.
    """

    def __init__(
        self,
        world: World,
        index: int,
        tsc_khz: int,
        *,
        boot_offset: int = 0,
        drift_ppm: int | Fraction | float | str = 0,
        jumps: Iterable[tuple[int, int]] = (),
    ) -> None:
        self.world = world
        self.index = _check_int("index", index, 0)
        self.tsc_khz = _check_int("tsc_khz", tsc_khz, 1, 0xFFFFFFFF)
        self.boot_offset = _check_int("boot_offset", boot_offset, 0, U64_MASK)
        self.drift_ppm = to_fraction("drift_ppm", drift_ppm)
        if self.drift_ppm <= -1_000_000:
            raise ValueError(f"drift_ppm={self.drift_ppm} must be > -1000000 (TSC must advance)")
        rate = (
            Fraction(self.tsc_khz) * (1 + self.drift_ppm / 1_000_000) / 1_000_000
        )  # cycles per ns
        self._num = rate.numerator
        self._den = rate.denominator
        self._jump_t: list[int] = []
        self._jump_sum: list[int] = []  # prefix sums of deltas, aligned with _jump_t
        self._jumps: list[tuple[int, int]] = []
        # read_tsc's memo: the TSC at true time _memo_t (kernel code reads one CPU's TSC
        # many times at one instant); add_tsc_jump forgets it
        self._memo_t = -1
        self._memo_tsc = 0
        for at_ns, delta in jumps:
            self.add_tsc_jump(at_ns, delta)

    @property
    def rate(self) -> Fraction:
        """True TSC rate in cycles per ns (nominal kHz / 1e6 adjusted by drift)."""
        return Fraction(self._num, self._den)

    def add_tsc_jump(self, at_ns: int, delta_cycles: int) -> None:
        """From true time ``at_ns`` on, add ``delta_cycles`` (may be negative) to the TSC."""
        _check_int("at_ns", at_ns, 0)
        if isinstance(delta_cycles, bool) or not isinstance(delta_cycles, int):
            raise TypeError(f"delta_cycles must be an int, got {type(delta_cycles).__name__}")
        self._jumps.append((at_ns, delta_cycles))
        self._memo_t = -1
        self._jumps.sort(key=lambda j: j[0])  # stable: equal times keep insertion order
        self._jump_t = [t for t, _ in self._jumps]
        acc = 0
        self._jump_sum = []
        for _, d in self._jumps:
            acc += d
            self._jump_sum.append(acc)

    @property
    def jumps(self) -> list[tuple[int, int]]:
        """Scheduled ``(at_ns, delta_cycles)`` steps, sorted by time."""
        return list(self._jumps)

    def tsc_at(self, t_ns: int) -> int:
        """The TSC value at true time ``t_ns`` (pure function of the parameters)."""
        v = self.boot_offset + (t_ns * self._num) // self._den
        if self._jump_t:
            i = bisect.bisect_right(self._jump_t, t_ns)
            if i:
                v += self._jump_sum[i - 1]
        return v & U64_MASK

    def read_tsc(self) -> int:
        """``rdtsc`` at ``world.now_ns``."""
        t = self.world.now_ns
        if t != self._memo_t:
            self._memo_tsc = self.tsc_at(t)
            self._memo_t = t
        return self._memo_tsc

    def __repr__(self) -> str:
        return (
            f"PhysicalCpu(index={self.index}, tsc_khz={self.tsc_khz}, "
            f"boot_offset={self.boot_offset}, "
            f"drift_ppm={self.drift_ppm}, jumps={self._jumps})"
        )


class PlatformCounter:
    """A free-running counter ``start + floor(t_ns * freq * (1 + ppm/1e6) / 1e9)`` mod 2**bits."""

    def __init__(
        self,
        world: World,
        name: str,
        freq_hz: int,
        bits: int,
        *,
        start: int = 0,
        drift_ppm: int | Fraction | float | str = 0,
    ) -> None:
        self.world = world
        self.name = name
        self.freq_hz = _check_int("freq_hz", freq_hz, 1, 0xFFFFFFFF)
        self.bits = _check_int("bits", bits, 1, 64)
        self.mask = (1 << self.bits) - 1
        self.start = _check_int("start", start, 0, self.mask)
        self.drift_ppm = to_fraction("drift_ppm", drift_ppm)
        if self.drift_ppm <= -1_000_000:
            raise ValueError(f"drift_ppm={self.drift_ppm} must be > -1000000")
        rate = Fraction(self.freq_hz) * (1 + self.drift_ppm / 1_000_000) / NSEC_PER_SEC
        self._num = rate.numerator
        self._den = rate.denominator

    #: ``read()`` is a pure function of ``world.now_ns`` (see ``Clocksource.read_pure``)
    read_pure = True

    def value_at(self, t_ns: int) -> int:
        """Counter value at true time ``t_ns`` (wrapped at ``bits``)."""
        return (self.start + (t_ns * self._num) // self._den) & self.mask

    def read(self) -> int:
        """Counter value now."""
        # value_at(world.now_ns), inlined (hot: a platform clocksource's every read)
        return (self.start + (self.world.now_ns * self._num) // self._den) & self.mask

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(freq_hz={self.freq_hz}, bits={self.bits}, start={self.start})"
        )


class Hpet(PlatformCounter):
    """HPET main counter: 14.318180 MHz, 32 bits (arch/x86/kernel/hpet.c ``read_hpet``)."""

    def __init__(
        self, world: World, *, start: int = 0, drift_ppm: int | Fraction | float | str = 0
    ) -> None:
        super().__init__(world, "hpet", HPET_FREQ_HZ, HPET_BITS, start=start, drift_ppm=drift_ppm)


class AcpiPm(PlatformCounter):
    """ACPI PM timer: 3.579545 MHz, 24 bits (drivers/clocksource/acpi_pm.c ``acpi_pm_read``)."""

    def __init__(
        self, world: World, *, start: int = 0, drift_ppm: int | Fraction | float | str = 0
    ) -> None:
        super().__init__(
            world, "acpi_pm", ACPI_PM_FREQ_HZ, ACPI_PM_BITS, start=start, drift_ppm=drift_ppm
        )


DEFAULT_FEATURES = frozenset({"tsc", "constant_tsc", "nonstop_tsc"})


class PhysicalMachine:
    """Level-0 hardware implementing the ``Machine`` protocol.

    ``cpus`` is a count (CPUs built from ``tsc_khz`` with seeded offsets) or a list of
    ``PhysicalCpu``.  Seeded randomness (``world.rng``, drawn here in a fixed order): the
    machine-wide TSC value at true time 0 (power-on happened "a while ago"), a per-CPU extra
    boot offset in ``0..tsc_skew_cycles`` (default 0: synchronised TSCs, as with TSC_ADJUST),
    the HPET and ACPI PM start values, and the RTC epoch.

    ``tsc_scaling`` is the CPUs' TSC-scaling hardware, which KVM on this machine uses for
    guests asking another frequency: ``vmx`` (Intel, 48 fraction bits), ``svm`` (AMD, 32
    fraction bits, ratio below 2**40) or ``none`` (no ratio: a faster guest runs with
    catch-up, a slower one is refused).
    """

    level = 0

    def __init__(
        self,
        world: World,
        cpus: int | Sequence[PhysicalCpu] = 2,
        memory_size: int = 1 << 16,
        *,
        tsc_khz: int = 2_000_000,
        tsc_skew_cycles: int = 0,
        drift_ppm: int | Fraction | float | str = 0,
        hpet: bool = True,
        acpi_pm: bool = True,
        features: Iterable[str] | None = None,
        rtc_epoch_ns: int | None = None,
        tsc_scaling: str = "vmx",
        uptime_ns: int = 0,
    ) -> None:
        self.world = world
        self.uptime_ns = _check_int("uptime_ns", uptime_ns, 0)
        """How long the machine has been powered on at true time 0 (its TSCs counted that
        long at the nominal rate: ``tsc_khz * uptime_ns / 10**6`` cycles more)."""
        _check_int("memory_size", memory_size, 0)
        if tsc_scaling not in TSC_SCALING_KINDS:
            raise ValueError(
                f"tsc_scaling={tsc_scaling!r} invalid; choose one of {', '.join(TSC_SCALING_KINDS)}"
            )
        self.tsc_scaling = tsc_scaling
        _check_int("tsc_skew_cycles", tsc_skew_cycles, 0)
        rng = world.rng
        base_offset = rng.randrange(1 << 40)
        if isinstance(cpus, int) and not isinstance(cpus, bool):
            _check_int("cpus", cpus, 1, 4096)
            self.cpus: list[PhysicalCpu] = [
                PhysicalCpu(
                    world,
                    i,
                    tsc_khz,
                    boot_offset=(
                        base_offset
                        + uptime_ns * tsc_khz // 1_000_000
                        + (rng.randrange(tsc_skew_cycles + 1) if tsc_skew_cycles else 0)
                    )
                    & U64_MASK,
                    drift_ppm=drift_ppm,
                )
                for i in range(cpus)
            ]
        else:
            assert not isinstance(cpus, int)
            built = list(cpus)
            if not built or not all(isinstance(c, PhysicalCpu) for c in built):
                raise TypeError(
                    "cpus must be a positive int or a non-empty sequence of PhysicalCpu"
                )
            if [c.index for c in built] != list(range(len(built))):
                raise ValueError("cpus[i].index must equal i")
            self.cpus = built
        self.memory = bytearray(memory_size)
        self.platform_counters: dict[str, PlatformCounter] = {}
        hpet_start = rng.randrange(1 << HPET_BITS)
        pm_start = rng.randrange(1 << ACPI_PM_BITS)
        if hpet:
            self.platform_counters["hpet"] = Hpet(world, start=hpet_start)
        if acpi_pm:
            self.platform_counters["acpi_pm"] = AcpiPm(world, start=pm_start)
        self.features: set[str] = set(DEFAULT_FEATURES if features is None else features)
        # RTC: wall time at true time 0; somewhere in 2017 unless given.
        epoch_s = 1_500_000_000 + rng.randrange(10_000_000)
        self.rtc_epoch_ns = (
            epoch_s * NSEC_PER_SEC
            if rtc_epoch_ns is None
            else _check_int("rtc_epoch_ns", rtc_epoch_ns, 0)
        )
        self.running_cpu: int | None = None
        self.suspended = False
        """True between a system suspend and its resume: no CPU runs (see ``running``)."""

    @property
    def running(self) -> bool:
        """Whether the CPUs execute now (False while the machine is suspended)."""
        return not self.suspended

    def suspend(self) -> None:
        """Enter system sleep (S3, "suspend to RAM") now: every CPU stops (``running`` is
        False until :meth:`resume`).  The RTC keeps counting (``read_persistent_clock_ns`` is
        true time based); the TSCs' values while suspended are never read.  What the kernel
        does before it gets here is ``Kernel.pm_suspend`` (kernel/power/suspend.c)."""
        if self.suspended:
            raise RuntimeError("suspend(): the machine is already suspended (resume it first)")
        self.suspended = True
        self.world.log("machine_suspend", level=self.level)

    def resume(self, tsc_cycles: int) -> None:
        """Wake up from system sleep now: the firmware has reset every CPU's TSC, which reads
        ``tsc_cycles`` (cycles, u64; a small count: the time the firmware ran) on every CPU at
        this instant and counts on from there at each CPU's rate.

        Done with a per-CPU TSC jump at ``world.now_ns`` of ``tsc_cycles - tsc_at(now)`` (see
        ``PhysicalCpu.add_tsc_jump``), so every TSC stays an exact function of true time.
        RuntimeError if the machine is not suspended; ``tsc_cycles`` out of 0..2**64-1 is a
        ValueError naming it."""
        _check_int("tsc_cycles", tsc_cycles, 0, U64_MASK)
        if not self.suspended:
            raise RuntimeError("resume(): the machine is not suspended (call suspend() first)")
        now = self.world.now_ns
        for cpu in self.cpus:
            cpu.add_tsc_jump(now, tsc_cycles - cpu.tsc_at(now))
        self.suspended = False
        self.world.log("machine_resume", level=self.level, tsc=tsc_cycles)

    def read_persistent_clock_ns(self) -> int:
        """CMOS RTC (``mach_get_cmos_time``): wall time with one-second resolution."""
        wall = self.rtc_epoch_ns + self.world.now_ns
        return wall - wall % NSEC_PER_SEC

    def _check_cpu(self, cpu: int) -> int:
        n = len(self.cpus)
        if isinstance(cpu, int) and not isinstance(cpu, bool) and not 0 <= cpu < n:
            raise ValueError(f"cpu={cpu}: the machine has {count_ids(n, 'CPU')}")
        return _check_int("cpu", cpu, 0, n - 1)

    def run_on_cpu(self, cpu: int, fn: Callable[[], T]) -> T:
        """Run ``fn`` on physical CPU ``cpu`` (sets ``running_cpu`` for the call)."""
        if cpu.__class__ is not int or not 0 <= cpu < len(self.cpus):  # hot: every entry
            self._check_cpu(cpu)
        prev = self.running_cpu
        self.running_cpu = cpu
        try:
            return fn()
        finally:
            self.running_cpu = prev

    def wrmsr(self, cpu: int, msr: int, value: int) -> None:
        """No hypervisor below bare metal: paravirt MSRs do not exist (#GP -> ValueError)."""
        self._check_cpu(cpu)
        _check_int("msr", msr, 0, 0xFFFFFFFF)
        _check_int("value", value, 0, U64_MASK)
        raise ValueError(
            f"wrmsr(cpu={cpu}, msr={msr:#x}): unsupported MSR on a physical machine "
            "(no KVM below level 0; the CPU would raise #GP)"
        )

    def __repr__(self) -> str:
        return (
            f"PhysicalMachine(cpus={len(self.cpus)}, memory={len(self.memory)}, "
            f"counters={sorted(self.platform_counters)}, tsc_scaling={self.tsc_scaling!r})"
        )

"""A kernel booted on a machine: clocksources, timekeeper, watchdog, notifier chains.

``Kernel(machine, profile)`` models the time subsystem of one Linux kernel at one level:
level 0 on a ``PhysicalMachine``, level N on a VM that KVM at level N-1 provides.  Kernel code
gets a CPU only through ``run_on_cpu`` (which goes through ``machine.run_on_cpu`` and sets
``current_cpu``); every clocksource read happens on ``current_cpu``.

Profiles: ``gtod`` (before the 2017 series, and upstream today: the pvclock_gtod chain is
called on every timekeeping update) and ``series`` (all 11 patches: clocksource reads report
cycle stamps, the clocksource change chain fires on switches, on registration and on a
kvm-clock stable-bit flip, never on ticks).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import kvmclock as _k
from kvmclock.counters import Counters
from kvmclock.machine.base import Machine, T
from kvmclock.profiles import PROFILES, Profile, resolve_profile
from kvmclock.timekeeping.clocksource import (
    CLOCK_SOURCE_IS_CONTINUOUS,
    CLOCK_SOURCE_UNSTABLE,
    MIN_HZ,
    MSR_KVM_SYSTEM_TIME_NEW,
    PVTI_SIZE,
    VCLOCK_PVCLOCK,
    Clocksource,
    CounterClocksource,
    JiffiesClocksource,
    KvmClock,
    TscClocksource,
    tick_nsec,
)
from kvmclock.timekeeping.notifier import NotifierCallback, NotifierChain
from kvmclock.timekeeping.timekeeper import Timekeeper
from kvmclock.timekeeping.watchdog import ClocksourceWatchdog

if TYPE_CHECKING:
    from kvmclock.kvm.x86 import KvmModule
    from kvmclock.machine.world import Event, Periodic

__all__ = [
    "PM_HIBERNATION_PREPARE",
    "PM_POST_HIBERNATION",
    "PM_POST_SUSPEND",
    "PM_SUSPEND_PREPARE",
    "PROFILES",
    "RESUME_TSC_CYCLES",
    "Kernel",
]

U64_MASK = (1 << 64) - 1
NSEC_PER_SEC = 1_000_000_000
MSR_KVM_WALL_CLOCK_NEW = 0x4B564D00  # arch/x86/include/uapi/asm/kvm_para.h
# include/linux/suspend.h: the PM notifier chain's events
PM_HIBERNATION_PREPARE = 0x0001
PM_POST_HIBERNATION = 0x0002
PM_SUSPEND_PREPARE = 0x0003
PM_POST_SUSPEND = 0x0004
#: ``Kernel.pm_resume``'s default TSC value at wake-up (cycles): the firmware reset the TSC
#: and ran for a while (about 25 ms at 2 GHz) before the kernel's resume path reads it.
RESUME_TSC_CYCLES = 50_000_000
PLATFORM_RATINGS = {"hpet": 250, "acpi_pm": 200}  # clocksource_hpet, clocksource_acpi_pm


def _idle() -> None:
    """Nothing: a CPU that wakes for an interrupt whose only work is the tick's."""


def _initial_jiffies(hz: int) -> int:
    """``INITIAL_JIFFIES`` = (unsigned long)(unsigned int)(-300 * HZ)."""
    return (-300 * hz) & 0xFFFFFFFF


class Kernel:
    """The time subsystem of one kernel on ``machine`` (see module docstring)."""

    def __init__(
        self,
        machine: Machine,
        profile: str | Profile,
        *,
        name: str | None = None,
        hz: int = 250,
        clocksource_override: str | None = None,
        kvmclock_rating: int | None = None,
        pvti_gpa: int = 0,
        nohz: bool = False,
    ) -> None:
        cfg = resolve_profile(profile)
        if not isinstance(nohz, bool):
            raise TypeError(f"nohz must be a bool, got {type(nohz).__name__}")
        if isinstance(hz, bool) or not isinstance(hz, int):
            raise TypeError(f"hz must be an int, got {type(hz).__name__}")
        if not MIN_HZ <= hz <= 10_000:
            raise ValueError(
                f"hz={hz} out of range ({MIN_HZ}..10000; below {MIN_HZ} the jiffies "
                "clocksource's mult, TICK_NSEC << JIFFIES_SHIFT, does not fit in 32 bits)"
            )
        if kvmclock_rating is not None and (
            isinstance(kvmclock_rating, bool) or not isinstance(kvmclock_rating, int)
        ):
            raise TypeError(
                f"kvmclock_rating must be an int or None, got {type(kvmclock_rating).__name__}"
            )
        if kvmclock_rating is not None and not 0 <= kvmclock_rating <= 1000:
            raise ValueError(
                f"kvmclock_rating={kvmclock_rating} out of range (0..1000; 400 in 2017, 299 later)"
            )
        if clocksource_override is not None and not isinstance(clocksource_override, str):
            raise TypeError("clocksource_override must be a clocksource name (str) or None")
        if isinstance(pvti_gpa, bool) or not isinstance(pvti_gpa, int) or pvti_gpa < 0:
            raise ValueError(f"pvti_gpa={pvti_gpa!r} must be an int >= 0")
        self.machine = machine
        self.world = machine.world
        self.cfg = cfg
        """The profile: the behaviour switches this kernel asks (kvmclock.profiles)."""
        self.profile = cfg.name
        self.level = machine.level
        self.name = name if name is not None else f"L{machine.level}"
        self.hz = hz
        self.tick_nsec = tick_nsec(hz)
        """TICK_NSEC of this kernel's HZ (ns): the period of its tick."""
        self.clocksource_override = clocksource_override
        self.kvmclock_rating_override = kvmclock_rating
        """An explicit kvm-clock rating (None: the profile's ``kvmclock_rating`` rule)."""
        self.pvti_gpa = pvti_gpa
        self.counters: collections.Counter[str] = Counters()
        self.current_cpu = 0
        self.jiffies_64 = _initial_jiffies(hz)
        self.tsc_unstable = False
        self.finished_booting = False
        self.booted = False
        self.boot_ns: int | None = None
        self.clocksources: dict[str, Clocksource] = {}
        self.clocksource_list: list[Clocksource] = []  # sorted by rating, like clocksource_list
        self.curr_clocksource: Clocksource | None = None
        self.pvclock_gtod_chain = NotifierChain("pvclock_gtod_chain")
        self.clocksource_changes_chain = NotifierChain("clocksource_changes_chain")
        self.pm_chain = NotifierChain("pm_chain_head")
        """The PM notifier chain (kernel/power/main.c ``pm_chain_head``): PM_SUSPEND_PREPARE
        before a system suspend, PM_POST_SUSPEND after it (``register_pm_notifier``)."""
        self.pm_suspended = False
        self.timekeeper = Timekeeper(self)
        self.watchdog = ClocksourceWatchdog(self)
        self.kvm: KvmModule | None = None
        self.pvclock: Any = None  # kvmclock.PvclockClock once kvmclock_init ran
        self.pvclock_valid_flags = 0
        self.tick_cpu = 0  # tick_do_timer_cpu
        self.tick_timer: Periodic | None = None
        self.tick_overdue = False
        """A tick expired while the machine did not run (see :meth:`run_overdue_tick`)."""
        self.nohz = nohz
        """CONFIG_NO_HZ_IDLE with ``nohz=on``: an idle CPU stops its tick (see
        :meth:`tick_nohz_irq_enter`); False: the periodic tick (``nohz=off``)."""
        self.last_jiffies_update_ns = 0
        """NO_HZ: true time of the last tick period ``tick_do_update_jiffies64`` accounted
        (``last_jiffies_update``, on the tick grid ``boot_ns + k * TICK_NSEC``)."""
        self._cpu_depth = 0  # nesting of run_on_cpu: 0 = every CPU of this kernel is idle
        self._deferment: Event | None = None  # the tick programmed at the max deferment
        # NO_HZ: (true ns, CLOCK_MONOTONIC ns) of the last jiffies update, and the
        # max_idle_ns the programmed deferment was computed with
        self._nohz_anchor = (0, 0)
        self._nohz_max_idle_ns = 0

    # -- CPUs ---------------------------------------------------------------------------------
    def run_on_cpu(self, cpu: int, fn: Callable[[], T]) -> T:
        """Run kernel code ``fn`` on ``cpu`` through ``machine.run_on_cpu``; sets
        ``current_cpu``.  On a ``nohz`` kernel the outermost call is an interrupt on an idle
        CPU: :meth:`tick_nohz_irq_enter` runs before ``fn`` and :meth:`tick_nohz_idle_enter`
        after it (every CPU idle again).
        """

        def body() -> T:  # hot: every entry of kernel code
            prev = self.current_cpu
            self.current_cpu = cpu
            depth = self._cpu_depth = self._cpu_depth + 1
            try:
                if depth == 1 and self.nohz and self.booted:
                    self.tick_nohz_irq_enter()
                return fn()
            finally:
                depth = self._cpu_depth = self._cpu_depth - 1
                self.current_cpu = prev
                if depth == 0 and self.nohz and self.booted:
                    self.tick_nohz_idle_enter()

        return self.machine.run_on_cpu(cpu, body)

    @property
    def kvmclock_rating(self) -> int:
        """The rating kvm-clock registers with (``kvmclock_init``, arch/x86/kernel/kvmclock.c).

        The explicit ``kvmclock_rating`` argument if given; else 400, or 299 under the switch
        ``kvmclock_rating=299_if_invariant_tsc`` (5.1+, 7539b174aef4) when the machine offers
        CONSTANT_TSC and NONSTOP_TSC ("constant_tsc", "nonstop_tsc": the guest sees an
        invariant TSC) and the TSC is not marked unstable.  (In the real kernel the unstable
        test can never be true there: kvmclock_init runs before ``tsc=unstable`` is parsed;
        here a TSC marked unstable before boot counts.)
        """
        if self.kvmclock_rating_override is not None:
            return self.kvmclock_rating_override
        features = self.machine.features
        if (
            self.cfg.kvmclock_rating == "299_if_invariant_tsc"
            and "constant_tsc" in features
            and "nonstop_tsc" in features
            and not self.check_tsc_unstable()
        ):
            return 299
        return 400

    def printk(self, text: str, level: str = "info") -> None:
        """A kernel log line, appended to the world's event log."""
        self.world.log("printk", kernel=self.name, level=level, text=text)

    def pvti_offset(self, cpu: int) -> int:
        """Guest-physical address of ``hv_clock[cpu].pvti`` (64-byte per-CPU slots from
        ``pvti_gpa``).
        """
        return self.pvti_gpa + cpu * PVTI_SIZE

    # -- notifier chains --------------------------------------------------------------------------
    def update_pvclock_gtod(self, was_set: bool) -> int:
        """``update_pvclock_gtod(tk, was_set)``: call the pvclock_gtod chain with the timekeeper."""
        self.counters["notifier_calls.pvclock_gtod"] += 1
        return self.pvclock_gtod_chain.call(int(was_set), self.timekeeper)

    def pvclock_gtod_register_notifier(self, fn: NotifierCallback, priority: int = 0) -> None:
        """``pvclock_gtod_register_notifier``: register, then call the chain once with was_set=1."""
        self.pvclock_gtod_chain.register(fn, priority)
        self.update_pvclock_gtod(True)

    def pvclock_gtod_unregister_notifier(self, fn: NotifierCallback) -> None:
        """``pvclock_gtod_unregister_notifier``."""
        self.pvclock_gtod_chain.unregister(fn)

    def clocksource_changes_notify(self) -> int:
        """``clocksource_changes_notify()`` (patch 07): ``raw_notifier_call_chain(chain, 0,
        NULL)``.
        """
        self.counters["notifier_calls.clocksource_changes"] += 1
        return self.clocksource_changes_chain.call(0, None)

    def clocksource_changes_register_notifier(
        self, fn: NotifierCallback, priority: int = 0
    ) -> None:
        """``clocksource_changes_register_notifier`` (patch 07): register, then notify the chain
        once.
        """
        self.clocksource_changes_chain.register(fn, priority)
        self.clocksource_changes_notify()

    def clocksource_changes_unregister_notifier(self, fn: NotifierCallback) -> None:
        """``clocksource_changes_unregister_notifier`` (patch 07)."""
        self.clocksource_changes_chain.unregister(fn)

    # -- clocksource framework -------------------------------------------------------------------
    def _enqueue(self, cs: Clocksource) -> None:
        """``clocksource_enqueue``: after every source of equal or higher rating."""
        pos = len(self.clocksource_list)
        for i, other in enumerate(self.clocksource_list):
            if other.rating < cs.rating:
                pos = i
                break
        self.clocksource_list.insert(pos, cs)

    def clocksource_register(self, cs: Clocksource, *, scale: int = 1, freq: int = 0) -> None:
        """``__clocksource_register_scale``: mult/shift from the frequency, enqueue, watchdog,
        select.
        """
        if cs.name in self.clocksources:
            raise ValueError(f"clocksource {cs.name!r} already registered on kernel {self.name}")
        cs.update_freq_scale(scale, freq)
        self.clocksources[cs.name] = cs
        cs.registered = True
        self._enqueue(cs)
        self.watchdog.enqueue(cs)
        self.clocksource_select()
        self.watchdog.select_watchdog()
        self.world.log(
            "clocksource_register",
            kernel=self.name,
            cs=cs.name,
            rating=cs.rating,
            mult=cs.mult,
            shift=cs.shift,
        )

    def clocksource_change_rating(self, cs: Clocksource, rating: int) -> None:
        """``__clocksource_change_rating``: re-enqueue with the new rating."""
        self.clocksource_list.remove(cs)
        cs.rating = rating
        self._enqueue(cs)

    def clocksource_select(self) -> None:
        """``clocksource_select``: the override by name if usable, else the best rating; switch if
        different.

        No high-resolution/oneshot mode is modelled, so VALID_FOR_HRES does not gate the choice;
        an override naming an UNSTABLE clocksource is dropped with the kernel's warning (what
        the kernel does once it runs in oneshot mode).
        """
        if not self.finished_booting or not self.clocksource_list:
            return
        best = self.clocksource_list[0]
        name = self.clocksource_override
        if name is not None:
            cs = self.clocksources.get(name)
            if cs is not None:
                if cs.flags & CLOCK_SOURCE_UNSTABLE:
                    self.printk(
                        f"clocksource: Override clocksource {name} is unstable and not HRT "
                        "compatible - "
                        "cannot switch while in HRT/NOHZ mode",
                        level="warn",
                    )
                    self.clocksource_override = None
                else:
                    best = cs
        if best is not self.curr_clocksource:
            self.timekeeping_notify(best)
            self.printk(f"clocksource: Switched to clocksource {best.name}")
            self.curr_clocksource = best

    def timekeeping_notify(self, clock: Clocksource) -> None:
        """``timekeeping_notify``: nothing if already current, else ``change_clocksource``
        (stop_machine).
        """
        if self.timekeeper.tkr_mono.clock is clock:
            return
        self.timekeeper.change_clocksource(clock)

    def mark_tsc_unstable(self, reason: str) -> None:
        """``mark_tsc_unstable`` (arch/x86/kernel/tsc.c): once; rating 0 and reselect via the
        watchdog work.
        """
        if self.tsc_unstable:
            return
        self.tsc_unstable = True
        self.printk(f"tsc: Marking TSC unstable due to {reason}")
        tsc = self.clocksources.get("tsc")
        if tsc is not None and tsc.mult:
            tsc.mark_unstable()
        elif tsc is not None:
            tsc.flags |= CLOCK_SOURCE_UNSTABLE
            tsc.rating = 0

    def check_tsc_unstable(self) -> bool:
        """``check_tsc_unstable``."""
        return self.tsc_unstable

    # -- boot -------------------------------------------------------------------------------------
    def _kvmclock_init(self) -> None:
        """``kvmclock_init`` on the boot CPU: valid flags, PvclockClock, MSR_KVM_SYSTEM_TIME_NEW for
        CPU 0.
        """
        m = self.machine
        need = self.pvti_offset(len(m.cpus))
        if need > len(m.memory):
            raise ValueError(
                f"machine memory ({len(m.memory)} bytes) too small for {len(m.cpus)} "
                "pvclock records "
                f"at pvti_gpa={self.pvti_gpa:#x} (needs {need} bytes)"
            )
        stable = "kvmclock_stable_bit" in m.features
        self.pvclock_valid_flags = _k.PVCLOCK_TSC_STABLE_BIT if stable else 0
        self.pvclock = _k.PvclockClock(valid_flags=self.pvclock_valid_flags)
        self._kvm_register_clock(0)

    def _kvm_register_clock(self, cpu: int) -> None:
        """``kvm_register_clock``: wrmsr(MSR_KVM_SYSTEM_TIME_NEW, pa(hv_clock[cpu]) | 1) on that
        CPU.
        """
        self.machine.wrmsr(cpu, MSR_KVM_SYSTEM_TIME_NEW, self.pvti_offset(cpu) | 1)
        self.world.log("kvmclock_register", kernel=self.name, cpu=cpu, gpa=self.pvti_offset(cpu))

    def _kvm_setup_vsyscall_timeinfo(self) -> int:
        """``kvm_setup_vsyscall_timeinfo`` on CPU 0: the vclock mode is PVCLOCK only if the boot
        vCPU's record carries the stable bit (masked by the valid flags) now; else NONE."""
        off = self.pvti_offset(self.current_cpu)
        info = _k.PvclockVcpuTimeInfo.from_bytes(bytes(self.machine.memory[off : off + 32]))
        return int(info.flags) & self.pvclock_valid_flags & int(_k.PVCLOCK_TSC_STABLE_BIT)

    def boot(self) -> None:
        """Boot the time subsystem now (``world.now_ns``).

        Order: kvmclock_init (boot CPU MSR) and the secondary CPUs' MSRs when the machine has
        "kvmclock"; kvm_setup_vsyscall_timeinfo; register kvm-clock (rating ``kvmclock_rating``:
        the explicit one, else the profile's rule);
        timekeeping_init on jiffies; register tsc (registered at once, as with a known TSC
        frequency: the 2017 delayed refinement is not modelled), hpet, acpi_pm (a VM's emulated
        ones when it offers them);
        clocksource_done_booting (selection, possibly an override); start the tick on
        ``tick_cpu`` every TICK_NSEC (a ``nohz`` kernel: the tick stays stopped while its
        CPUs idle, programmed at the max deferment, see :meth:`tick_nohz_idle_enter`) and
        the watchdog every 0.5 s.
        """
        if self.booted:
            raise RuntimeError(f"kernel {self.name} already booted")
        m = self.machine
        self.boot_ns = self.world.now_ns
        kvmclock = "kvmclock" in m.features
        if kvmclock:
            self.run_on_cpu(0, self._kvmclock_init)
            for cpu in range(1, len(m.cpus)):
                self.run_on_cpu(cpu, lambda c=cpu: self._kvm_register_clock(c))  # type: ignore[misc]
        self.run_on_cpu(0, self._boot_on_cpu0)
        if not self.nohz:
            self.tick_timer = self.world.every(self.tick_nsec, self._tick)
        if self.nohz:
            # tick_init_jiffy_update: the jiffies grid starts at CLOCK_MONOTONIC now
            mono = self.run_on_cpu(0, self.timekeeper.ktime_get_ns)
            self.last_jiffies_update_ns = mono
            self._nohz_anchor = (self.world.now_ns, mono)
        self.watchdog.start()
        self.booted = True
        if self.nohz:
            self.tick_nohz_idle_enter()
        self.world.log(
            "boot",
            kernel=self.name,
            profile=self.profile,
            level=self.level,
            clocksource=self.timekeeper.clock.name,
            tsc=[c.read_tsc() for c in m.cpus],
        )

    def _boot_on_cpu0(self) -> None:
        m = self.machine
        if "kvmclock" in m.features:
            stable = bool(self._kvm_setup_vsyscall_timeinfo())
            kc = KvmClock(self, self.kvmclock_rating)
            if stable:
                kc.vclock_mode = VCLOCK_PVCLOCK
            kc.last_stable = stable
            self.clocksource_register(
                kc, scale=1, freq=1_000_000_000
            )  # clocksource_register_hz(NSEC_PER_SEC)
        # timekeeping_init: read_persistent_clock64 + clocksource_default_clock() (jiffies)
        jiffies = JiffiesClocksource(self)
        self.clocksource_register(jiffies)
        now = self.read_persistent_clock_ns()
        uptime = int(getattr(m, "uptime_ns", 0))
        self.timekeeper.timekeeping_init(jiffies, now, uptime_ns=uptime)
        self.curr_clocksource = jiffies
        # tsc_init / init_tsc_clocksource: clocksource_register_khz(&clocksource_tsc, tsc_khz)
        tsc_khz = m.cpus[0].tsc_khz if m.cpus else 0
        if tsc_khz > 0 and "notsc" not in m.features:
            tsc = TscClocksource(self)
            if self.tsc_unstable:
                tsc.rating = 0
                tsc.flags &= ~CLOCK_SOURCE_IS_CONTINUOUS
            self.clocksource_register(tsc, scale=1000, freq=tsc_khz)
        for cname, counter in m.platform_counters.items():
            rating = PLATFORM_RATINGS.get(cname)
            if rating is None:
                continue
            self.clocksource_register(
                CounterClocksource(self, counter, rating), scale=1, freq=counter.freq_hz
            )
        # clocksource_done_booting (fs_initcall)
        self.finished_booting = True
        self.watchdog.watchdog_kthread()
        self.clocksource_select()

    # -- the persistent clock -----------------------------------------------------------------
    def wall_clock_gpa(self) -> int:
        """Guest-physical address of the kernel's ``struct pvclock_wall_clock wall_clock``
        (arch/x86/kernel/kvmclock.c, a static variable of its own, 12 bytes): the last
        16-byte slot of guest memory, or, when the pvclock records (``pvti_offset``) reach
        it, the 16-byte slot just below ``pvti_gpa``.  ValueError when neither exists."""
        mem = len(self.machine.memory)
        recs_end = self.pvti_offset(len(self.machine.cpus))
        top = (mem - _k.PVCLOCK_WALL_CLOCK_SIZE) & ~15
        if top >= 0 and top >= recs_end:
            return top
        below = (self.pvti_gpa - _k.PVCLOCK_WALL_CLOCK_SIZE) & ~15
        if below >= 0 and self.pvti_gpa >= _k.PVCLOCK_WALL_CLOCK_SIZE:
            return below
        raise ValueError(
            f"machine memory ({mem} bytes) has no room for the pvclock wall clock "
            f"({_k.PVCLOCK_WALL_CLOCK_SIZE} bytes) beside {len(self.machine.cpus)} pvclock "
            f"records at pvti_gpa={self.pvti_gpa:#x}"
        )

    def _kvm_get_wallclock(self) -> int:
        """``kvm_get_wallclock`` (arch/x86/kernel/kvmclock.c, ``x86_platform.get_wallclock``
        on a kvmclock guest) on the current CPU: wrmsr(MSR_KVM_WALL_CLOCK_NEW, gpa of
        ``wall_clock``), which makes KVM write the VM's epoch there
        (``kvm_write_wall_clock``), then ``pvclock_read_wallclock`` (arch/x86/kernel/pvclock.c):
        sec/nsec under the version check, plus ``pvclock_clocksource_read`` of this CPU's
        record (the shared ``last_value`` clamp), u64 ns since 1970."""
        gpa = self.wall_clock_gpa()
        self.machine.wrmsr(self.current_cpu, MSR_KVM_WALL_CLOCK_NEW, gpa)
        mem = self.machine.memory
        raw = bytes(mem[gpa : gpa + _k.PVCLOCK_WALL_CLOCK_SIZE])
        wc = _k.PvclockWallClock.from_bytes(raw)
        if int(wc.version) & 1:
            raise RuntimeError(
                f"{self.name}: pvclock_read_wallclock: wall clock version {wc.version} is odd "
                "(a writer never finished; the guest would spin)"
            )
        pv = self.pvclock
        if pv is None:
            raise RuntimeError("kvm_get_wallclock before kvmclock_init (kernel.pvclock is None)")
        cpu = self.current_cpu
        since_boot = int(
            pv.read_with_stamp(mem, self.machine.cpus[cpu].read_tsc, self.pvti_offset(cpu))[0]
        )
        return (since_boot + int(wc.sec) * NSEC_PER_SEC + int(wc.nsec)) & U64_MASK

    def read_persistent_clock_ns(self) -> int:
        """``read_persistent_clock64`` (ns since 1970): on a machine with "kvmclock" the
        paravirt wall clock (``kvm_get_wallclock``, which ``kvmclock_init`` installs as
        ``x86_platform.get_wallclock``); else the machine's RTC (``mach_get_cmos_time``:
        ``read_persistent_clock_ns``, whole seconds) when it has one; else 0 (1970)."""
        if "kvmclock" in self.machine.features:
            return self._kvm_get_wallclock()
        read_rtc = getattr(self.machine, "read_persistent_clock_ns", None)
        return int(read_rtc()) if callable(read_rtc) else 0

    # -- system suspend (kernel/power/suspend.c) --------------------------------------------
    def _check_can_suspend(self, what: str) -> None:
        m = self.machine
        if self.level != 0 or not callable(getattr(m, "suspend", None)):
            raise ValueError(
                f"{what} on kernel {self.name} (level {self.level}): a VM does not suspend its "
                "host; pause it (only a level-0 kernel on a PhysicalMachine suspends)"
            )
        if not self.booted:
            raise ValueError(f"{what} on kernel {self.name} before boot()")

    def _syscore_ops(self) -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
        """The registered ``syscore_ops`` in registration order (drivers/base/syscore.c
        ``syscore_ops_list``): timekeeping's (device_initcall, at boot) then KVM's
        (``kvm_init`` registers ``kvm_syscore_ops`` when the module loads)."""
        tk = self.timekeeper
        ops: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
            ("timekeeping", tk.timekeeping_suspend, tk.timekeeping_resume)
        ]
        if self.kvm is not None:
            ops.append(("kvm", self.kvm.kvm_suspend, self.kvm.kvm_resume))
        return ops

    def pm_suspend(self) -> None:
        """``pm_suspend(PM_SUSPEND_MEM)`` now (kernel/power/suspend.c ``enter_state``), in the
        kernel's order:

        1. ``suspend_prepare``: ``pm_notifier_call_chain_robust(PM_SUSPEND_PREPARE, ..)`` on
           ``pm_chain`` (KVM's per-VM notifier under switch ``pm_notifier``), then
           ``suspend_freeze_processes``: every vCPU thread inside KVM_RUN (a VM that is not
           paused) leaves it (``KvmModule.kvm_freeze_vcpu_threads``: last_host_tsc now);
        2. ``suspend_devices_and_enter`` -> ``suspend_enter``: (devices: no clock effect)
           ``pm_sleep_disable_secondary_cpus``, ``syscore_suspend`` (the registered ops in
           reverse order: KVM's ``kvm_suspend``, then ``timekeeping_suspend``);
        3. the platform enters S3: ``PhysicalMachine.suspend``.

        ValueError on a guest kernel ("a VM does not suspend its host; pause it") or before
        boot; RuntimeError when already suspended.  4.13 and 6.18 run the same sequence
        (the PM notifier exists only with the switch)."""
        self._check_can_suspend("pm_suspend")
        if self.pm_suspended:
            raise RuntimeError(f"pm_suspend on kernel {self.name}: already suspended")
        self.world.log("pm_suspend", kernel=self.name)
        self.pm_chain.call(PM_SUSPEND_PREPARE, None)
        if self.kvm is not None:
            self.kvm.kvm_freeze_vcpu_threads()

        def syscore_suspend() -> None:
            for _name, suspend, _resume in reversed(self._syscore_ops()):
                suspend()

        self.run_on_cpu(0, syscore_suspend)
        self.pm_suspended = True
        machine_suspend = getattr(self.machine, "suspend")  # noqa: B009 (checked above)
        machine_suspend()

    def pm_resume(self, tsc_cycles: int = RESUME_TSC_CYCLES) -> None:
        """Wake up from the suspend of :meth:`pm_suspend` now: the machine resumes with every
        TSC at ``tsc_cycles`` (``PhysicalMachine.resume``), then the rest of
        ``suspend_enter`` and ``enter_state`` in the kernel's order:

        1. ``syscore_resume`` on the boot CPU (registered order): ``timekeeping_resume``
           (sleep time from the RTC, the clocksource watchdog reset), then KVM's
           ``kvm_resume`` (``kvm_arch_enable_virtualization_cpu``: the backwards-TSC check);
           interrupts on again: the tick that expired during the sleep runs
           (:meth:`run_overdue_tick`);
        2. ``pm_sleep_enable_secondary_cpus``: each secondary CPU comes online and KVM's
           hotplug callback enables virtualization on it (``kvm_online_cpu``; 4.13
           ``kvm_starting_cpu``), running the same check on that CPU;
        3. ``suspend_finish``: tasks thaw, ``pm_notifier_call_chain(PM_POST_SUSPEND)``.

        RuntimeError without a preceding :meth:`pm_suspend`; ValueError on a guest kernel."""
        self._check_can_suspend("pm_resume")
        if not self.pm_suspended:
            raise RuntimeError(
                f"pm_resume on kernel {self.name} without pm_suspend (the machine is running)"
            )
        machine_resume = getattr(self.machine, "resume")  # noqa: B009 (checked above)
        machine_resume(tsc_cycles)
        self.pm_suspended = False

        def syscore_resume() -> None:
            for _name, _suspend, resume in self._syscore_ops():
                resume()

        self.run_on_cpu(0, syscore_resume)
        # arch_suspend_enable_irqs: the tick that expired during the sleep fires now
        # (timekeeping_resume ran hrtimers_resume)
        self.run_overdue_tick()
        kvm = self.kvm
        if kvm is not None:
            for cpu in range(1, len(self.machine.cpus)):
                self.run_on_cpu(cpu, kvm.kvm_online_cpu)
        self.pm_chain.call(PM_POST_SUSPEND, None)
        self.world.log("pm_resume", kernel=self.name, tsc=tsc_cycles)

    @property
    def machine_running(self) -> bool:
        """Whether the machine under this kernel executes now (``Machine.running``; a machine
        without that attribute always runs).  A tick or timer due while it does not run is
        lost, as a periodic timer's expiries while a CPU is stopped collapse into none."""
        return bool(getattr(self.machine, "running", True))

    def _tick(self) -> None:
        if not self.machine_running:
            self.counters["ticks_not_running"] += 1
            self.tick_overdue = True
            return
        self.tick_overdue = False
        self.run_on_cpu(self.tick_cpu, self._do_tick)

    def run_overdue_tick(self) -> bool:
        """The tick that expired while the machine was stopped fires now, at the first entry
        after the stop, before anything else reads the clock; True when it ran.

        A paused VM: its LAPIC timer (the tick's clockevent, an hrtimer in the host) expired
        meanwhile, so KVM has a timer interrupt pending (``apic_timer_expired``) and injects
        it at the vCPU's first ``KVM_RUN`` (``kvm_inject_pending_timer_irqs`` in
        ``vcpu_enter_guest``); the guest's ``hrtimer_interrupt`` runs ``tick_sched_timer``
        -> ``tick_do_update_jiffies64`` -> ``update_wall_time``, whose logarithmic
        accumulation takes the whole offset since the last tick.  (``hrtimer_interrupt``
        first reads the clock itself, wrapped under ``tk_delta_overflow_safe`` off; in the
        rare case that wrapped reading is less than a tick after the last one, the kernel
        fires the tick at most one tick period later: not modelled.)  A resumed host: the
        hrtimers are retriggered on resume (``hrtimers_resume``) and the expired tick runs.
        Nothing happens when no tick was missed, before boot, or while the machine still
        does not run."""
        if not self.tick_overdue or not self.booted or not self.machine_running:
            return False
        self.tick_overdue = False
        self.counters["ticks_overdue"] += 1
        # NO_HZ: the programmed tick's interrupt; entering the CPU updates (tick_nohz_irq_enter)
        self.run_on_cpu(self.tick_cpu, _idle if self.nohz else self._do_tick)
        return True

    # -- NO_HZ idle (kernel/time/tick-sched.c) -------------------------------------------------
    def timekeeping_max_deferment(self) -> int:
        """``timekeeping_max_deferment`` (kernel/time/timekeeping.c): the current clocksource's
        ``max_idle_ns`` (ns): how long the timekeeper may go without an update before a
        clocksource delta could overflow ``delta * mult`` (half of ``clocks_calc_max_nsecs``).
        The model never defers less than one tick period (no clocksource has a smaller
        ``max_idle_ns``; a smaller one would make the kernel reprogram its tick in a loop)."""
        clock = self.timekeeper.tkr_mono.clock
        max_idle = clock.max_idle_ns if clock is not None else 0
        return max(max_idle, self.tick_nsec)

    def tick_do_update_jiffies64(self) -> bool:
        """``tick_do_update_jiffies64(ktime_get())`` (kernel/time/tick-sched.c), on the CPU
        that runs it: nothing while CLOCK_MONOTONIC is before the next tick period
        (``tick_next_period`` = ``last_jiffies_update`` + TICK_NSEC); else ``jiffies_64``
        advances by every whole tick period since ``last_jiffies_update`` at once (the
        kernel's one division for long idle sleeps) and ``update_wall_time`` runs once,
        taking the whole offset by its logarithmic accumulation.  True when it updated.

        The periodic tick of the model runs on a true-time grid; a NO_HZ kernel counts its
        tick periods on its own CLOCK_MONOTONIC, as the kernel does (which stops while a
        host is suspended)."""
        tk = self.timekeeper
        now, cycles = tk.ktime_get_ns_with_cycles()
        # where CLOCK_MONOTONIC stands in true time now (it stopped during a host suspend):
        # the next deferment is programmed from here
        self._nohz_anchor = (self.world.now_ns, now)
        period = self.tick_nsec
        delta = now - self.last_jiffies_update_ns
        if delta < period:
            return False
        ticks = delta // period
        self.last_jiffies_update_ns += ticks * period
        self.jiffies_64 = (self.jiffies_64 + ticks) & U64_MASK
        self.counters["nohz.jiffies_updates"] += 1
        # update_wall_time's clocksource read at this instant would repeat ktime_get's (a
        # pure read, no interleaved writer): it takes that one
        clock = tk.tkr_mono.clock
        if tk.interleave is None and clock is not None and clock.read_pure:
            tk.update_wall_time(cycles)
        else:
            tk.update_wall_time()
        return True

    def tick_nohz_irq_enter(self) -> None:
        """``tick_irq_enter`` -> ``tick_nohz_irq_enter`` -> ``tick_nohz_update_jiffies``
        (kernel/time/tick-sched.c): kernel code is about to run on a CPU of this NO_HZ kernel
        while every CPU was idle with its tick stopped (an interrupt, a timer, a vCPU entry):
        jiffies and the timekeeper are brought up to date first
        (:meth:`tick_do_update_jiffies64`, which does nothing less than a tick period after
        the last update), so whatever runs next reads a timekeeper as fresh as after a tick.
        The model runs it once per outermost :meth:`run_on_cpu`, not per CPU: any CPU that
        wakes takes the duty, as ``tick_do_update_jiffies64`` serialises it.  Nothing while
        the timekeeper is suspended (the syscore resume path runs with interrupts off)."""
        if self.timekeeper.suspended or self.timekeeper.tkr_mono.clock is None:
            return
        self.tick_do_update_jiffies64()

    def tick_nohz_idle_enter(self) -> None:
        """Every CPU of this NO_HZ kernel is idle again (``tick_nohz_idle_stop_tick`` ->
        ``tick_nohz_next_event`` / ``tick_nohz_stop_tick``): the tick stays stopped; the CPU
        that had the do_timer duty last programs its tick at the latest
        ``timekeeping_max_deferment()`` after ``last_jiffies_update`` (other timers, the
        clocksource watchdog, KVM's works, wake the CPUs themselves: they are world
        events).  The tick is reprogrammed only when that time moved earlier (a clocksource
        with a smaller ``max_idle_ns``) or none is pending; a pending one that comes too
        early finds the update done and reprograms itself (:meth:`_tick_nohz_deferment`)."""
        max_idle = self.timekeeping_max_deferment()
        ev = self._deferment
        if ev is not None and not ev.cancelled and max_idle >= self._nohz_max_idle_ns:
            return
        self._nohz_max_idle_ns = max_idle
        due = self._nohz_due_ns(max_idle)
        due = max(due, self.world.now_ns)
        if ev is not None and not ev.cancelled:
            if ev.t_ns <= due:
                return
            ev.cancel()
        self._deferment = self.world.at(due, self._tick_nohz_deferment)

    def _nohz_due_ns(self, max_idle_ns: int) -> int:
        """True time (ns) at which CLOCK_MONOTONIC reaches ``last_jiffies_update +
        max_idle_ns``, from where the last ``ktime_get`` put it in true time."""
        t_true, t_mono = self._nohz_anchor
        return t_true + (self.last_jiffies_update_ns + max_idle_ns - t_mono)

    def _tick_nohz_deferment(self) -> None:
        """The tick programmed at the max deferment expires (``tick_nohz_handler`` /
        ``tick_sched_timer`` on the CPU that had the do_timer duty last:
        ``tick_sched_do_timer`` takes the duty and runs ``tick_do_update_jiffies64``).  On
        a machine that does not run now it is overdue (:meth:`run_overdue_tick`)."""
        self._deferment = None
        if not self.machine_running:
            self.counters["ticks_not_running"] += 1
            self.tick_overdue = True
            return
        due = self._nohz_due_ns(self._nohz_max_idle_ns)
        if self.world.now_ns < due:
            self._deferment = self.world.at(due, self._tick_nohz_deferment)
            return
        self.counters["nohz.deferment_ticks"] += 1
        self.run_on_cpu(self.tick_cpu, _idle)

    def _do_tick(self) -> None:
        """Tick on the timekeeping CPU: ``tick_do_update_jiffies64`` (jiffies_64++) then
        ``update_wall_time``.
        """
        self.jiffies_64 = (self.jiffies_64 + 1) & U64_MASK
        self.counters["ticks"] += 1
        self.timekeeper.update_wall_time()

    def move_to_machine(self, machine: Machine) -> None:
        """The machine under this kernel is now ``machine`` (a VMM restored the VM elsewhere:
        same memory, same vCPU count, maybe another host).  Only the binding changes: clock
        reads go to the new machine's CPUs and memory, and each emulated platform counter
        clocksource (hpet, acpi_pm) reads the new machine's counter of the same name.  Nothing
        else in the kernel changes: the guest does not know it moved.  ``ValueError`` for a
        machine of another level or vCPU count, one lacking a counter in use, or a kernel
        whose KVM runs VMs (moving a nested hypervisor is not modelled)."""
        if machine.level != self.level:
            raise ValueError(
                f"machine level {machine.level} != kernel {self.name} level {self.level}"
            )
        if len(machine.cpus) != len(self.machine.cpus):
            raise ValueError(
                f"machine has {len(machine.cpus)} CPUs, kernel {self.name} runs on "
                f"{len(self.machine.cpus)}"
            )
        if self.kvm is not None and self.kvm.vm_list:
            raise ValueError(
                f"kernel {self.name} runs VMs of its own; moving a nested hypervisor is not "
                "modelled"
            )
        rebind = [cs for cs in self.clocksources.values() if isinstance(cs, CounterClocksource)]
        for cs in rebind:
            if cs.counter.name not in machine.platform_counters:
                raise ValueError(
                    f"machine lacks platform counter {cs.counter.name!r} used by kernel "
                    f"{self.name}; it has {sorted(machine.platform_counters)}"
                )
        for cs in rebind:
            cs.counter = machine.platform_counters[cs.counter.name]
        self.machine = machine

    # -- KVM --------------------------------------------------------------------------------------
    def load_kvm(self) -> KvmModule:
        """``kvm_arch_init``: create the KVM module of this kernel (``KvmModule(kernel)``).

        ``KvmModule.__init__`` registers KVM's notifier on the profile's chain
        (``pvclock_gtod_register_notifier`` for gtod, ``clocksource_changes_register_notifier``
        for series); both fire once at registration, as the kernel's do.
        """
        if self.kvm is not None:
            raise RuntimeError(f"KVM already loaded on kernel {self.name}")
        from kvmclock.kvm.x86 import KvmModule

        self.kvm = KvmModule(self)
        return self.kvm

    def __repr__(self) -> str:
        cs = self.timekeeper.tkr_mono.clock
        cs_name = None if cs is None else cs.name
        return (
            f"Kernel(name={self.name!r}, profile={self.profile!r}, level={self.level}, "
            f"clocksource={cs_name!r})"
        )

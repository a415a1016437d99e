"""The clocksource watchdog of kernel/time/clocksource.c (2017, before the 2021 rework).

Every ``WATCHDOG_INTERVAL`` (HZ/2 jiffies = 0.5 s) the timer reads each MUST_VERIFY
clocksource and the watchdog clocksource on the CPU it runs on, converts both intervals to
ns and marks the clocksource unstable when they differ by more than ``WATCHDOG_THRESHOLD``
(NSEC_PER_SEC >> 4 = 62.5 ms).  The timer then moves to the next online CPU, so per-CPU TSC
offsets show up as skew.  Marking unstable schedules the watchdog work, which rates the
clocksource 0 and reselects (``__clocksource_watchdog_kthread``); the work is modelled as a
world event at the same instant on CPU 0.

The watchdog clocksource is the best-rated registered clocksource without MUST_VERIFY
(``clocksource_select_watchdog``): hpet, else acpi_pm, else (in a guest) kvm-clock, else
jiffies, as the 2017 kernel picks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmclock.timekeeping.clocksource import (
    CLOCK_SOURCE_IS_CONTINUOUS,
    CLOCK_SOURCE_MUST_VERIFY,
    CLOCK_SOURCE_UNSTABLE,
    CLOCK_SOURCE_VALID_FOR_HRES,
    CLOCK_SOURCE_WATCHDOG,
    Clocksource,
    clocksource_delta,
    tick_nsec,
)

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel
    from kvmclock.machine.world import Event, Periodic

__all__ = ["NSEC_PER_SEC", "WATCHDOG_THRESHOLD", "ClocksourceWatchdog"]

NSEC_PER_SEC = 1_000_000_000
WATCHDOG_THRESHOLD = NSEC_PER_SEC >> 4
PAD = " " * 23  # the continuation indent of the kernel's pr_warn lines


class ClocksourceWatchdog:
    """``watchdog``, ``watchdog_list``, ``watchdog_timer`` and ``watchdog_work`` of one kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.watchdog: Clocksource | None = None
        self.watchdog_list: list[Clocksource] = []
        self.interval_ns = (kernel.hz >> 1) * tick_nsec(kernel.hz)  # WATCHDOG_INTERVAL in ns
        self.threshold_ns = WATCHDOG_THRESHOLD
        self.timer: Periodic | None = None
        self.next_cpu = 0
        self.checks = 0
        self._work: Event | None = None

    @property
    def running(self) -> bool:
        """``watchdog_running``."""
        return self.timer is not None

    # -- registration ---------------------------------------------------------------------------
    def enqueue(self, cs: Clocksource) -> None:
        """``clocksource_enqueue_watchdog``: watch MUST_VERIFY sources; others may become the
        watchdog.
        """
        if cs.flags & CLOCK_SOURCE_MUST_VERIFY:
            if cs not in self.watchdog_list:
                self.watchdog_list.append(cs)
            cs.flags &= ~CLOCK_SOURCE_WATCHDOG
        elif cs.flags & CLOCK_SOURCE_IS_CONTINUOUS:
            cs.flags |= CLOCK_SOURCE_VALID_FOR_HRES

    def select_watchdog(self) -> None:
        """``clocksource_select_watchdog(false)``: best-rated non-MUST_VERIFY clocksource."""
        best: Clocksource | None = None
        for cs in self.kernel.clocksource_list:
            if cs.flags & CLOCK_SOURCE_MUST_VERIFY:
                continue
            if best is None or cs.rating > best.rating:
                best = cs
        if best is not self.watchdog:
            old = self.watchdog
            self.watchdog = best
            if old is not None or best is not None:
                # clocksource_reset_watchdog(): watched sources re-initialise their last values
                for cs in self.watchdog_list:
                    cs.flags &= ~CLOCK_SOURCE_WATCHDOG

    def start(self) -> None:
        """``clocksource_start_watchdog``: first expiry after one interval on the first online
        CPU.
        """
        if self.timer is not None or self.watchdog is None or not self.watchdog_list:
            return
        self.next_cpu = 0
        self.timer = self.kernel.world.every(self.interval_ns, self._timer_fn)

    def stop(self) -> None:
        """``clocksource_stop_watchdog`` (only when nothing is left to watch)."""
        if self.timer is None or (self.watchdog is not None and self.watchdog_list):
            return
        self.timer.cancel()
        self.timer = None

    # -- the timer ------------------------------------------------------------------------------
    def _timer_fn(self) -> None:
        k = self.kernel
        cpu = self.next_cpu
        self.next_cpu = (cpu + 1) % len(k.machine.cpus)  # cpumask_next, wrapping to the first
        k.run_on_cpu(cpu, self.clocksource_watchdog)

    def clocksource_watchdog(self) -> None:
        """``clocksource_watchdog``: one pass over ``watchdog_list`` on ``kernel.current_cpu``."""
        k = self.kernel
        wd = self.watchdog
        if wd is None:
            return
        self.checks += 1
        for cs in list(self.watchdog_list):
            if cs.flags & CLOCK_SOURCE_UNSTABLE:
                self._schedule_work()
                continue
            csnow = cs.read()[0]
            wdnow = wd.read()[0]
            if not cs.flags & CLOCK_SOURCE_WATCHDOG:
                cs.flags |= CLOCK_SOURCE_WATCHDOG
                cs.wd_last = wdnow
                cs.cs_last = csnow
                continue
            wd_nsec = wd.cyc2ns(clocksource_delta(wdnow, cs.wd_last, wd.mask))
            cs_nsec = cs.cyc2ns(clocksource_delta(csnow, cs.cs_last, cs.mask))
            wdlast, cslast = cs.wd_last, cs.cs_last
            cs.cs_last = csnow
            cs.wd_last = wdnow
            skew = cs_nsec - wd_nsec
            k.world.log(
                "watchdog_check",
                kernel=k.name,
                cpu=k.current_cpu,
                cs=cs.name,
                wd=wd.name,
                cs_nsec=cs_nsec,
                wd_nsec=wd_nsec,
                skew_ns=skew,
            )
            if abs(skew) > self.threshold_ns:
                k.counters["watchdog.unstable"] += 1
                k.printk(
                    f"clocksource: timekeeping watchdog on CPU{k.current_cpu}: Marking clocksource "
                    f"'{cs.name}' as unstable because the skew is too large:",
                    level="warn",
                )
                k.printk(
                    f"clocksource:{PAD}'{wd.name}' wd_now: {wdnow:x} wd_last: {wdlast:x} "
                    f"mask: {wd.mask:x}",
                    level="warn",
                )
                k.printk(
                    f"clocksource:{PAD}'{cs.name}' cs_now: {csnow:x} cs_last: {cslast:x} "
                    f"mask: {cs.mask:x}",
                    level="warn",
                )
                self.clocksource_unstable(cs)
                continue
            k.counters["watchdog.ok"] += 1
            if (
                not cs.flags & CLOCK_SOURCE_VALID_FOR_HRES
                and cs.flags & CLOCK_SOURCE_IS_CONTINUOUS
                and wd.flags & CLOCK_SOURCE_IS_CONTINUOUS
            ):
                cs.flags |= CLOCK_SOURCE_VALID_FOR_HRES

    # -- marking unstable -------------------------------------------------------------------------
    def clocksource_unstable(self, cs: Clocksource) -> None:
        """``__clocksource_unstable``: flag UNSTABLE, call the driver hook, schedule the work."""
        cs.flags &= ~(CLOCK_SOURCE_VALID_FOR_HRES | CLOCK_SOURCE_WATCHDOG)
        cs.flags |= CLOCK_SOURCE_UNSTABLE
        self.kernel.world.log("clocksource_unstable", kernel=self.kernel.name, cs=cs.name)
        cs.on_mark_unstable()
        if self.kernel.finished_booting:
            self._schedule_work()

    def clocksource_mark_unstable(self, cs: Clocksource) -> None:
        """``clocksource_mark_unstable``: put a registered source on the list and mark it unstable
        once.
        """
        if cs.flags & CLOCK_SOURCE_UNSTABLE:
            return
        if cs.registered and cs not in self.watchdog_list:
            self.watchdog_list.append(cs)
        self.clocksource_unstable(cs)

    def _schedule_work(self) -> None:
        if self._work is not None and not self._work.cancelled:
            return  # schedule_work() on an already pending work is a no-op
        self._work = self.kernel.world.after(0, self._work_fn)

    def _work_fn(self) -> None:
        self._work = None
        self.kernel.run_on_cpu(0, self.watchdog_kthread)

    def watchdog_kthread(self) -> None:
        """``__clocksource_watchdog_kthread``: rate unstable sources 0, drop them from the list,
        reselect.
        """
        k = self.kernel
        select = False
        for cs in list(self.watchdog_list):
            if cs.flags & CLOCK_SOURCE_UNSTABLE:
                self.watchdog_list.remove(cs)
                k.clocksource_change_rating(cs, 0)
                select = True
        self.stop()
        if select:
            k.clocksource_select()

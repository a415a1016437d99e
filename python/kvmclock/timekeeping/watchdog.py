"""The clocksource watchdog of kernel/time/clocksource.c: the 2017 rule and the 6.18 rule.

The switch ``clocksource_watchdog`` of the profile picks the rule: ``4.13`` (below) or
``6.18`` (:meth:`ClocksourceWatchdog.clocksource_watchdog_618`, see "The 6.18 rule").

The 2017 rule (4.13, before the 2021 rework).

Every ``WATCHDOG_INTERVAL`` (HZ/2 jiffies = 0.5 s) the timer reads each MUST_VERIFY
clocksource and the watchdog clocksource on the CPU it runs on, converts both intervals to
ns and marks the clocksource unstable when they differ by more than ``WATCHDOG_THRESHOLD``
(NSEC_PER_SEC >> 4 = 62.5 ms).  The timer then moves to the next online CPU, so per-CPU TSC
offsets show up as skew.  Marking unstable schedules the watchdog work, which rates the
clocksource 0 and reselects (``__clocksource_watchdog_kthread``); the work is modelled as a
world event at the same instant on CPU 0.

The watchdog clocksource is the best-rated registered clocksource without MUST_VERIFY
(``clocksource_select_watchdog``): hpet, else acpi_pm, else (in a guest) kvm-clock, else
jiffies, as the 2017 kernel picks it (and 6.18 still does).

The 6.18 rule (5.14+: db3a34e17433, 2e27e793e280 and later; as in 6.18.0).  Each watched
clocksource is read between two watchdog reads, with retries (``cs_watchdog_read``):
``wd_delay`` = watchdog interval across the cs read must be <= ``md + cs->uncertainty_margin``
with ``md = 2 * watchdog->uncertainty_margin``; else, if a second watchdog read-back
(``wd_seq_delay``) is > ``md`` too, the system is busy: the check is skipped, every watched
source re-initialises and the next expiry is 300 s later; after ``ilog2(ncpus) / 2 + 1``
retries the clocksource is marked unstable.  An interval (max of cs and wd) over
``WATCHDOG_INTERVAL_MAX_NS`` (2 * WATCHDOG_INTERVAL in ns, 1 s at HZ=250) is not judged
("Long readout interval, skipping watchdog check").  Otherwise the clocksource is unstable when
``|cs_nsec - wd_nsec| > cs->uncertainty_margin + watchdog->uncertainty_margin``.  Margins
(``__clocksource_update_freq_scale``): the counter period, at least 2 * WATCHDOG_MAX_SKEW =
250 us (tsc, kvm-clock, hpet, acpi_pm all get 250 us, so tsc against kvm-clock or hpet is
judged at 500 us per 0.5 s, 1000 ppm), 31.25 ms without a frequency, 32 ms for jiffies.
Intervals use ``cycles_to_nsec_safe`` (6.13 negative-motion threshold of 7/8 of the mask).

Both rules: ``clocksource_resume`` (``timekeeping_resume``, a host waking from system sleep)
calls ``clocksource_resume_watchdog``, which raises ``watchdog_reset_pending``: the next pass
re-initialises every watched clocksource's last values instead of judging the interval that
contains the sleep (a TSC reset by the firmware would otherwise read as a huge skew), and
lowers the count again at its end (:meth:`ClocksourceWatchdog.clocksource_resume_watchdog`).

Simplifications of the 6.18 rule (each invisible in the model unless stated):

* 6.18.0 is modelled; the stable fix c06343be0b4e ("Reduce watchdog readout delay limit",
  6.19-rc, backported to 6.18.y in January 2026) lowers ``md`` to one watchdog margin.
* Model reads take no time, so ``wd_delay`` and ``wd_seq_delay`` are 0 unless a counter's
  read itself moves (a test counter does); the retry/skip paths exist for such counters.
* The long-interval path sets ``watchdog_timer.expires = jiffies`` so a late timer does not
  fire back to back; model timers are never late, so the periodic schedule is kept.
* ``system_state > SYSTEM_SCHEDULING`` (the long-interval warning's gate) is taken as
  ``finished_booting``.
* ``cs->tick_stable`` (sched_clock stability), ``tick_clock_notify`` and the per-CPU
  verification of a current clocksource marked unstable (``clocksource_verify_percpu``,
  diagnostics only, random CPUs) are not modelled.
* tsc-early (rating 299, margin 32 ms) is not modelled: the model registers tsc at once.
* ``tsc=watchdog``/``tsc=nowatchdog`` (hpet/acpi_pm made MUST_VERIFY, or tsc not) are not
  modelled: no boot parameters.  The TSC exemption on qualified machines is its own switch,
  ``tsc_watchdog_exemption`` (``TscClocksource``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmclock import limits
from kvmclock.timekeeping.clocksource import (
    CLOCK_SOURCE_IS_CONTINUOUS,
    CLOCK_SOURCE_MUST_VERIFY,
    CLOCK_SOURCE_RESELECT,
    CLOCK_SOURCE_UNSTABLE,
    CLOCK_SOURCE_VALID_FOR_HRES,
    CLOCK_SOURCE_WATCHDOG,
    WATCHDOG_MAX_SKEW,
    Clocksource,
    clocksource_delta,
    cycles_to_nsec_safe,
    tick_nsec,
)

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel
    from kvmclock.machine.world import Event, Periodic

__all__ = [
    "NSEC_PER_SEC",
    "WATCHDOG_THRESHOLD",
    "WD_READ_SKIP",
    "WD_READ_SUCCESS",
    "WD_READ_UNSTABLE",
    "ClocksourceWatchdog",
    "max_watchdog_retry",
]

NSEC_PER_SEC = 1_000_000_000
WATCHDOG_THRESHOLD = NSEC_PER_SEC >> 4
PAD = " " * 23  # the continuation indent of the kernel's pr_warn lines
EXTRA_WAIT_S = 300  # 6.18: a skipped check (WD_READ_SKIP) pauses the watchdog for HZ * 300

# enum wd_read_status (6.18 cs_watchdog_read)
WD_READ_SUCCESS = 0
WD_READ_UNSTABLE = 1
WD_READ_SKIP = 2


def max_watchdog_retry(num_online_cpus: int) -> int:
    """``clocksource_get_max_watchdog_retry`` (include/linux/clocksource.h, 6.8+):
    ``ilog2(num_online_cpus()) / 2 + 1`` retries after the first read."""
    if num_online_cpus < 1:
        raise ValueError(f"num_online_cpus={num_online_cpus} must be >= 1")
    return (num_online_cpus.bit_length() - 1) // 2 + 1


def _div_s64_msec(ns: int) -> int:
    """``div_s64_rem(ns, 1000 * 1000, &rem)``: C division, truncating towards zero."""
    q = abs(ns) // 1_000_000
    return q if ns >= 0 else -q


class ClocksourceWatchdog:
    """``watchdog``, ``watchdog_list``, ``watchdog_timer`` and ``watchdog_work`` of one kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.watchdog: Clocksource | None = None
        self.watchdog_list: list[Clocksource] = []
        self.interval_ns = (kernel.hz >> 1) * tick_nsec(kernel.hz)  # WATCHDOG_INTERVAL in ns
        self.threshold_ns = WATCHDOG_THRESHOLD
        # 6.18: WATCHDOG_INTERVAL_MAX_NS = (2 * WATCHDOG_INTERVAL) * (NSEC_PER_SEC / HZ)
        self.interval_max_ns = (2 * (kernel.hz >> 1)) * (NSEC_PER_SEC // kernel.hz)
        self.max_interval_ns = 0  # watchdog_max_interval (6.18: the last long interval warned)
        self.read_status: list[int] = []
        """6.18: ``cs_watchdog_read`` results in order, the first
        ``kvmclock.limits.READ_STATUS_CAP`` of them (``read_status_count`` counts all)."""
        self.read_status_count = 0
        self.timer: Periodic | None = None
        self.next_cpu = 0
        self.checks = 0
        self.reset_pending = 0
        """``watchdog_reset_pending`` (an atomic_t): resumes not yet followed by a full pass."""
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

    def clocksource_resume_watchdog(self) -> None:
        """``clocksource_resume_watchdog`` (from ``clocksource_resume``, 4.13 and 6.18):
        ``atomic_inc(&watchdog_reset_pending)``.  The next watchdog pass re-initialises the
        last values of every watched clocksource instead of judging it, and decrements the
        count when it finishes (``if (reset_pending) atomic_dec(..)``)."""
        self.reset_pending += 1

    def stop(self) -> None:
        """``clocksource_stop_watchdog`` (only when nothing is left to watch)."""
        if self.timer is None or (self.watchdog is not None and self.watchdog_list):
            return
        self.timer.cancel()
        self.timer = None

    # -- the timer ------------------------------------------------------------------------------
    def _timer_fn(self) -> None:
        k = self.kernel
        if not k.machine_running:
            return
        cpu = self.next_cpu
        self.next_cpu = (cpu + 1) % len(k.machine.cpus)  # cpumask_next, wrapping to the first
        k.run_on_cpu(cpu, self.clocksource_watchdog)

    def clocksource_watchdog(self) -> None:
        """``clocksource_watchdog``: one pass over ``watchdog_list`` on ``kernel.current_cpu``
        (the 2017 rule, or :meth:`clocksource_watchdog_618` when the profile says 6.18)."""
        k = self.kernel
        wd = self.watchdog
        if wd is None:
            return
        if k.cfg.clocksource_watchdog == "6.18":
            self.clocksource_watchdog_618(wd)
            return
        self.checks += 1
        reset_pending = self.reset_pending
        for cs in list(self.watchdog_list):
            if cs.flags & CLOCK_SOURCE_UNSTABLE:
                self._schedule_work()
                continue
            csnow = cs.read()[0]
            wdnow = wd.read()[0]
            if not cs.flags & CLOCK_SOURCE_WATCHDOG or self.reset_pending:
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
        if reset_pending:  # a full pass since the resume
            self.reset_pending -= 1

    # -- the 6.18 rule -------------------------------------------------------------------------
    def cs_watchdog_read(self, cs: Clocksource, wd: Clocksource) -> tuple[int, int, int]:
        """``cs_watchdog_read`` (6.18.0): ``(status, csnow, wdnow)``.

        Per attempt: wdnow, csnow, wd_end, wd_end2.  Success when the watchdog interval across
        the cs read, ``wd_delay``, is <= ``md + cs.uncertainty_margin`` with
        ``md = 2 * wd.uncertainty_margin`` (ns); a watchdog-only read-back ``wd_seq_delay``
        > ``md`` skips the check (busy system); ``max_watchdog_retry(ncpus)`` retries, then
        unstable.  The kernel's pr_warn/pr_info lines are printed.
        """
        k = self.kernel
        md = 2 * wd.uncertainty_margin
        max_retries = max_watchdog_retry(len(k.machine.cpus))
        wd_delay = wd_seq_delay = 0
        csnow = wdnow = 0
        nretries = 0
        # the model runs the four reads at one instant: with pure reads (Clocksource.read_pure)
        # the two read-backs return wdnow again, so they are not repeated (hot: every pass)
        pure = wd.read_pure and cs.read_pure
        while nretries <= max_retries:
            wdnow = wd.read()[0]
            csnow = cs.read()[0]
            if pure:
                wd_end = wd_end2 = wdnow
            else:
                wd_end = wd.read()[0]
                wd_end2 = wd.read()[0]
            wd_delay = cycles_to_nsec_safe(wd, wdnow, wd_end)
            if wd_delay <= md + cs.uncertainty_margin:
                if nretries > 1 and nretries >= max_retries:
                    k.printk(
                        f"clocksource: timekeeping watchdog on CPU{k.current_cpu}: {wd.name} "
                        f"retried {nretries} times before success",
                        level="warn",
                    )
                return WD_READ_SUCCESS, csnow, wdnow
            wd_seq_delay = cycles_to_nsec_safe(wd, wd_end, wd_end2)
            if wd_seq_delay > md:
                k.printk(
                    f"clocksource: timekeeping watchdog on CPU{k.current_cpu}: {wd.name} "
                    f"wd-wd read-back delay of {wd_seq_delay}ns"
                )
                k.printk(
                    f"clocksource: wd-{cs.name}-wd read-back delay of {wd_delay}ns, "
                    "clock-skew test skipped!"
                )
                return WD_READ_SKIP, csnow, wdnow
            nretries += 1
        k.printk(
            f"clocksource: timekeeping watchdog on CPU{k.current_cpu}: wd-{cs.name}-wd "
            f"excessive read-back delay of {wd_delay}ns vs. limit of {WATCHDOG_MAX_SKEW}ns, "
            f"wd-wd read-back delay only {wd_seq_delay}ns, attempt {nretries}, marking "
            f"{cs.name} unstable",
            level="warn",
        )
        return WD_READ_UNSTABLE, csnow, wdnow

    def clocksource_watchdog_618(self, wd: Clocksource) -> None:
        """``clocksource_watchdog`` of 6.18.0 (module docstring: "The 6.18 rule")."""
        k = self.kernel
        self.checks += 1
        extra_wait_ns = 0
        reset_pending = self.reset_pending
        for cs in list(self.watchdog_list):
            if cs.flags & CLOCK_SOURCE_UNSTABLE:
                if k.finished_booting:
                    self._schedule_work()
                continue
            status, csnow, wdnow = self.cs_watchdog_read(cs, wd)
            self.read_status_count += 1
            if len(self.read_status) < limits.READ_STATUS_CAP:
                self.read_status.append(status)
            if status == WD_READ_UNSTABLE:
                k.counters["watchdog.unstable"] += 1
                k.counters["watchdog.read_unstable"] += 1
                self.clocksource_unstable(cs)
                continue
            if status == WD_READ_SKIP:
                k.counters["watchdog.skipped"] += 1
                for other in self.watchdog_list:  # clocksource_reset_watchdog()
                    other.flags &= ~CLOCK_SOURCE_WATCHDOG
                extra_wait_ns = EXTRA_WAIT_S * k.hz * tick_nsec(k.hz)  # HZ * 300 jiffies
                break
            if not cs.flags & CLOCK_SOURCE_WATCHDOG or self.reset_pending:
                cs.flags |= CLOCK_SOURCE_WATCHDOG
                cs.wd_last = wdnow
                cs.cs_last = csnow
                continue
            wd_nsec = cycles_to_nsec_safe(wd, cs.wd_last, wdnow)
            cs_nsec = cycles_to_nsec_safe(cs, cs.cs_last, csnow)
            wdlast, cslast = cs.wd_last, cs.cs_last
            cs.cs_last = csnow
            cs.wd_last = wdnow
            md = cs.uncertainty_margin + wd.uncertainty_margin
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
                margin_ns=md,
            )
            interval = max(cs_nsec, wd_nsec)
            if interval > self.interval_max_ns:
                k.counters["watchdog.long_interval"] += 1
                if k.finished_booting and interval > 2 * self.max_interval_ns:
                    self.max_interval_ns = interval
                    k.printk(
                        "clocksource: Long readout interval, skipping watchdog check: "
                        f"cs_nsec: {cs_nsec} wd_nsec: {wd_nsec}",
                        level="warn",
                    )
                continue
            if abs(skew) > md:
                k.counters["watchdog.unstable"] += 1
                self._print_skew_618(cs, wd, cs_nsec, wd_nsec, csnow, cslast, wdnow, wdlast)
                self.clocksource_unstable(cs)
                continue
            k.counters["watchdog.ok"] += 1
            if (
                not cs.flags & CLOCK_SOURCE_VALID_FOR_HRES
                and cs.flags & CLOCK_SOURCE_IS_CONTINUOUS
                and wd.flags & CLOCK_SOURCE_IS_CONTINUOUS
            ):
                cs.flags |= CLOCK_SOURCE_VALID_FOR_HRES
                if k.finished_booting and cs is not k.curr_clocksource:
                    # let the watchdog work reselect: the high-res capable source may win now
                    cs.flags |= CLOCK_SOURCE_RESELECT
                    self._schedule_work()
        if reset_pending:  # a full pass since the resume
            self.reset_pending -= 1
        if extra_wait_ns and self.timer is not None:
            # watchdog_timer.expires += WATCHDOG_INTERVAL + extra_wait
            self.timer.cancel()
            self.timer = k.world.every(
                self.interval_ns,
                self._timer_fn,
                start_ns=k.world.now_ns + self.interval_ns + extra_wait_ns,
            )

    def _print_skew_618(
        self,
        cs: Clocksource,
        wd: Clocksource,
        cs_nsec: int,
        wd_nsec: int,
        csnow: int,
        cslast: int,
        wdnow: int,
        wdlast: int,
    ) -> None:
        """The five pr_warn lines of 6.18's skew verdict."""
        k = self.kernel
        k.printk(
            f"clocksource: timekeeping watchdog on CPU{k.current_cpu}: Marking clocksource "
            f"'{cs.name}' as unstable because the skew is too large:",
            level="warn",
        )
        k.printk(
            f"clocksource:{PAD}'{wd.name}' wd_nsec: {wd_nsec} wd_now: {wdnow:x} "
            f"wd_last: {wdlast:x} mask: {wd.mask:x}",
            level="warn",
        )
        k.printk(
            f"clocksource:{PAD}'{cs.name}' cs_nsec: {cs_nsec} cs_now: {csnow:x} "
            f"cs_last: {cslast:x} mask: {cs.mask:x}",
            level="warn",
        )
        k.printk(
            f"clocksource:{PAD}Clocksource '{cs.name}' skewed {cs_nsec - wd_nsec} ns "
            f"({_div_s64_msec(cs_nsec - wd_nsec)} ms) over watchdog '{wd.name}' interval of "
            f"{wd_nsec} ns ({_div_s64_msec(wd_nsec)} ms)",
            level="warn",
        )
        cur = k.curr_clocksource
        if cur is cs:
            text = f"'{cs.name}' is current clocksource."
        elif cur is not None:
            text = f"'{cur.name}' (not '{cs.name}') is current clocksource."
        else:
            text = "No current clocksource."
        k.printk(f"clocksource:{PAD}{text}", level="warn")

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
            if cs.flags & CLOCK_SOURCE_RESELECT:  # set by the 6.18 rule only
                cs.flags &= ~CLOCK_SOURCE_RESELECT
                select = True
        self.stop()
        if select:
            k.clocksource_select()

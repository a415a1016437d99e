"""The timekeeper: ``tk_core`` = {seqcount, struct timekeeper} of kernel/time/timekeeping.c (v4.13).

One object holds ``tkr_mono``/``tkr_raw`` (``struct tk_read_base``), ``xtime_sec``,
``wall_to_monotonic``, ``offs_real``/``offs_boot``/``offs_tai``, ``raw_sec`` and the
intervals ``tk_setup_internals`` computes; ``seq`` is the Rust ``SeqCount`` (``tk_core.seq``).

Model choices (documented here and in docs/ARCHITECTURE.md):
* NTP-free: ``ntp_tick`` = (NSEC_PER_SEC / HZ) << ntp_error_shift and ``timekeeping_adjust``
  never changes ``mult`` (no NTP frequency or offset adjustments are modelled).
* No separate shadow timekeeper: ``update_wall_time`` reads the clocksource outside the write
  section (as the kernel does, under ``timekeeper_lock`` only) and then accumulates and calls
  ``timekeeping_update`` inside ``write_seqcount_begin/end``.  In this single-threaded model
  the only way a reader can overlap a writer is the ``interleave`` hook, which runs a whole
  writer between a reader's ``read_begin`` and ``read_retry``; the observable result equals
  the kernel's shadow + memcpy.
* The vDSO copy (``update_vsyscall``) and the NMI-safe fast timekeepers are not modelled.
* System suspend: ``timekeeping_suspend`` / ``timekeeping_resume`` (the syscore ops that
  ``Kernel.pm_suspend`` / ``pm_resume`` run) take the sleep time from the persistent clock
  (the RTC, whole seconds) with the kernel's drift compensation; the suspend clocksource
  (CLOCK_SOURCE_SUSPEND_NONSTOP) is consulted but reads below its start after a TSC reset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import kvmclock as _k
from kvmclock.errors import LivelockDetected, ModelLimitExceeded
from kvmclock.timekeeping.clocksource import (
    CLOCK_SOURCE_SUSPEND_NONSTOP,
    Clocksource,
    clocksource_delta,
    cycles_to_nsec_safe,
)

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel

__all__ = [
    "MAX_FORWARD_CHUNKS",
    "NTP_SCALE_SHIFT",
    "TK_CLEAR_NTP",
    "TK_CLOCK_WAS_SET",
    "TK_MIRROR",
    "TK_OFFS_BOOT",
    "TK_OFFS_REAL",
    "TK_OFFS_TAI",
    "Timekeeper",
    "TkReadBase",
]

NSEC_PER_SEC = 1_000_000_000
U64_MASK = (1 << 64) - 1
NTP_SCALE_SHIFT = 32

#: The most chunks the model adds one by one in ``timekeeping_forward_now`` (switch
#: ``tk_delta_overflow_safe``) for a clocksource whose chunks can wrap; the kernel has no
#: such bound (see :meth:`Timekeeper._forward_now`).
MAX_FORWARD_CHUNKS = 1 << 16

# timekeeping_update() actions
TK_CLEAR_NTP = 1 << 0
TK_MIRROR = 1 << 1
TK_CLOCK_WAS_SET = 1 << 2

# enum tk_offsets
TK_OFFS_REAL = 0
TK_OFFS_BOOT = 1
TK_OFFS_TAI = 2


@dataclass
class TkReadBase:
    """``struct tk_read_base``: clock, mask, cycle_last, mult, shift, xtime_nsec (ns << shift), base
    (ns).
    """

    clock: Clocksource | None = None
    mask: int = 0
    cycle_last: int = 0
    mult: int = 0
    shift: int = 0
    xtime_nsec: int = 0
    base: int = 0


class _TkWriteSection:
    """``Timekeeper._write()``: a plain context manager rather than a ``@contextmanager``
    generator, whose set-up costs about 1 us on every tick."""

    __slots__ = ("tk",)

    def __init__(self, tk: Timekeeper) -> None:
        self.tk = tk

    def __enter__(self) -> None:
        tk = self.tk
        tk.seq.write_begin()
        tk._write_depth += 1

    def __exit__(self, *exc: object) -> None:
        tk = self.tk
        tk._write_depth -= 1
        tk.seq.write_end()


class Timekeeper:
    """``tk_core.timekeeper`` plus ``tk_core.seq`` and the update/read functions around them."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.hz = kernel.hz
        self.seq = _k.SeqCount()
        self.tkr_mono = TkReadBase()
        self.tkr_raw = TkReadBase()
        self.xtime_sec = 0
        self.ktime_sec = 0
        self.wall_to_monotonic = 0  # ns (timespec64 normalised: sec*1e9 + nsec)
        self.offs_real = 0
        self.offs_boot = 0
        self.offs_tai = 0
        self.tai_offset = 0
        self.raw_sec = 0
        self.clock_was_set_seq = 0
        self.cs_was_changed_seq = 0
        self.cycle_interval = 0
        self.xtime_interval = 0
        self.xtime_remainder = 0
        self.raw_interval = 0
        self.ntp_tick = 0
        self.ntp_error = 0
        self.ntp_error_shift = 0
        # tick_length of the NTP core without adjustments: (NSEC_PER_SEC << 32) / NTP_INTERVAL_FREQ
        self.ntp_tick_length = (NSEC_PER_SEC << NTP_SCALE_SHIFT) // self.hz
        self.interleave: Callable[[], None] | None = None
        self._write_depth = 0
        # system suspend (timekeeping_suspend / timekeeping_resume)
        self.suspended = False
        """``timekeeping_suspended``: between timekeeping_suspend and timekeeping_resume."""
        self.suspend_time_ns = 0  # timekeeping_suspend_time (ns since 1970)
        self.old_delta_ns = 0  # timekeeping_suspend's static old_delta (ns)
        self.persistent_clock_exists = False
        self.suspend_clocksource: Clocksource | None = None
        self.suspend_start = 0  # clocksource_start_suspend_timing's suspend_start (cycles)
        self.last_sleep_ns: int | None = None
        """The sleep time the last timekeeping_resume injected (ns; None = none injected)."""

    # -- small helpers ----------------------------------------------------------------------
    @property
    def clock(self) -> Clocksource:
        """``tkr_mono.clock`` (the current clocksource)."""
        clock = self.tkr_mono.clock
        if clock is None:
            raise RuntimeError("timekeeper has no clocksource yet (timekeeping_init not run)")
        return clock

    @property
    def in_write_section(self) -> bool:
        """True while a writer holds ``tk_core.seq`` (odd sequence)."""
        return self._write_depth > 0

    def _write(self) -> _TkWriteSection:
        """``write_seqcount_begin/end(&tk_core.seq)`` as a ``with`` block; always ends, even if
        a callback raises."""
        return _TkWriteSection(self)

    def _check_can_read(self) -> None:
        if self._write_depth:
            raise LivelockDetected(
                f"{self.kernel.name}: timekeeper read inside its own tk_core.seq write section "
                "(read_seqcount_begin would spin forever on this CPU)"
            )

    # -- tk_setup_internals / forward_now / ktime data -------------------------------------
    def _setup_internals(self, clock: Clocksource) -> None:
        """``tk_setup_internals``: new clock, cycle_last, intervals for HZ, shift conversion of
        xtime_nsec.
        """
        mono, raw = self.tkr_mono, self.tkr_raw
        old = mono.clock
        self.cs_was_changed_seq = (self.cs_was_changed_seq + 1) & 0xFF
        mono.clock = clock
        mono.mask = clock.mask
        mono.cycle_last = clock.read()[0]
        raw.clock = clock
        raw.mask = clock.mask
        raw.cycle_last = mono.cycle_last
        # ns -> cycles conversion of one NTP interval with the unadjusted mult
        ntpinterval = (NSEC_PER_SEC // self.hz) << clock.shift
        interval = (ntpinterval + clock.mult // 2) // clock.mult
        if interval == 0:
            interval = 1
        self.cycle_interval = interval
        self.xtime_interval = (interval * clock.mult) & U64_MASK
        self.xtime_remainder = ntpinterval - self.xtime_interval
        self.raw_interval = (interval * clock.mult) & U64_MASK
        if old is not None:
            shift_change = clock.shift - old.shift
            if shift_change < 0:
                mono.xtime_nsec >>= -shift_change
                raw.xtime_nsec >>= -shift_change
            else:
                mono.xtime_nsec = (mono.xtime_nsec << shift_change) & U64_MASK
                raw.xtime_nsec = (raw.xtime_nsec << shift_change) & U64_MASK
        mono.shift = raw.shift = clock.shift
        self.ntp_error = 0
        self.ntp_error_shift = NTP_SCALE_SHIFT - clock.shift
        self.ntp_tick = (
            ntpinterval << self.ntp_error_shift if self.ntp_error_shift >= 0 else ntpinterval
        )
        mono.mult = raw.mult = clock.mult

    def _normalize_xtime(self) -> None:
        """``tk_normalize_xtime``: carry whole seconds out of both xtime_nsec fields (the
        kernel subtracts one second per iteration: one divmod gives the same values)."""
        mono, raw = self.tkr_mono, self.tkr_raw
        secs, mono.xtime_nsec = divmod(mono.xtime_nsec, NSEC_PER_SEC << mono.shift)
        self.xtime_sec += secs
        secs, raw.xtime_nsec = divmod(raw.xtime_nsec, NSEC_PER_SEC << raw.shift)
        self.raw_sec += secs

    def _forward_now(self) -> None:
        """``timekeeping_forward_now``: fold the cycles since cycle_last into xtime_nsec (mono and
        raw).

        Switch ``tk_delta_overflow_safe`` off (4.13): ``xtime_nsec += delta * mult`` in u64
        (wraps once ``delta`` exceeds about ``max_cycles``).  On (6.10+, fcf190c36914): the
        delta is added in chunks of at most ``max_cycles``, normalising after each.  When no
        chunk can wrap u64 (one second of shifted ns plus one full chunk fits: true of every
        clocksource the model registers, whose ``max_cycles`` is ``U64_MAX / (mult +
        maxadj)`` or the jiffies' 10) the result is the exact sum, computed here at once
        however many chunks the kernel takes (up to about 2**32 for a 64-bit delta).  A
        clocksource whose chunks can wrap (only a hand-built one) runs the kernel's loop,
        at most :data:`MAX_FORWARD_CHUNKS` chunks: more is
        :class:`~kvmclock.errors.ModelLimitExceeded` (a detected fault that stops the run;
        nothing is changed), since which chunks wrap depends on each one before it.
        """
        mono, raw = self.tkr_mono, self.tkr_raw
        cycle_now = self.clock.read()[0]
        delta = clocksource_delta(cycle_now, mono.cycle_last, mono.mask)
        if self.kernel.cfg.tk_delta_overflow_safe:
            step = self.clock.max_cycles
            safe = step > 0 and all(
                (NSEC_PER_SEC << t.shift) + step * t.mult <= U64_MASK for t in (mono, raw)
            )
            if not safe:
                chunks = -(-delta // step) if step > 0 else min(delta, 1)
                if chunks > MAX_FORWARD_CHUNKS:
                    k = self.kernel
                    raise ModelLimitExceeded(
                        f"{k.name}: timekeeping_forward_now: {delta} cycles of clocksource "
                        f"{self.clock.name} are {chunks} chunks of max_cycles={step} "
                        f"(mult {mono.mult}, shift {mono.shift}: a chunk can wrap u64 "
                        "xtime_nsec, so there is no closed form); the model runs at most "
                        f"{MAX_FORWARD_CHUNKS}",
                        where="timekeeping_forward_now",
                        limit=MAX_FORWARD_CHUNKS,
                        needed=chunks,
                        level=k.level,
                        t_ns=k.world.now_ns,
                    )
            mono.cycle_last = raw.cycle_last = cycle_now
            if safe:
                mono.xtime_nsec += delta * mono.mult
                raw.xtime_nsec += delta * raw.mult
                self._normalize_xtime()
                return
            while delta > 0:  # the kernel's loop, at most MAX_FORWARD_CHUNKS (checked above)
                incr = min(delta, step) if step > 0 else delta
                mono.xtime_nsec = (mono.xtime_nsec + incr * mono.mult) & U64_MASK
                raw.xtime_nsec = (raw.xtime_nsec + incr * raw.mult) & U64_MASK
                self._normalize_xtime()
                delta -= incr
            return
        mono.cycle_last = raw.cycle_last = cycle_now
        mono.xtime_nsec = (mono.xtime_nsec + delta * mono.mult) & U64_MASK
        raw.xtime_nsec = (raw.xtime_nsec + delta * raw.mult) & U64_MASK
        self._normalize_xtime()

    def _set_wall_to_mono(self, wtm: int) -> None:
        """``tk_set_wall_to_mono``: offs_real = -wall_to_monotonic, offs_tai = offs_real +
        tai_offset.
        """
        self.wall_to_monotonic = wtm
        self.offs_real = -wtm
        self.offs_tai = self.offs_real + self.tai_offset * NSEC_PER_SEC

    def _set_xtime(self, real_ns: int) -> None:
        """``tk_set_xtime``: xtime_sec = sec, xtime_nsec = nsec << shift."""
        sec, nsec = divmod(real_ns, NSEC_PER_SEC)
        self.xtime_sec = sec
        self.tkr_mono.xtime_nsec = nsec << self.tkr_mono.shift

    def _update_ktime_data(self) -> None:
        """``tk_update_ktime_data``: tkr_mono.base = xtime + wall_to_monotonic; tkr_raw.base =
        raw_sec * 1e9.
        """
        mono = self.tkr_mono
        wtm_sec, wtm_nsec = divmod(self.wall_to_monotonic, NSEC_PER_SEC)
        seconds = self.xtime_sec + wtm_sec
        mono.base = seconds * NSEC_PER_SEC + wtm_nsec
        if wtm_nsec + (mono.xtime_nsec >> mono.shift) >= NSEC_PER_SEC:
            seconds += 1
        self.ktime_sec = seconds
        # v4.13 (after "time: Clean up CLOCK_MONOTONIC_RAW time handling", 2017): the raw
        # sub-second part lives in tkr_raw.xtime_nsec and is added by every read, so the base
        # is whole seconds only (kernels before that fix added it into the base).
        self.tkr_raw.base = self.raw_sec * NSEC_PER_SEC

    def timekeeping_update(self, action: int) -> None:
        """``timekeeping_update`` (called with tk_core.seq write-held).

        Recomputes the ktime bases, counts the update and, in profile ``gtod``, calls the
        pvclock_gtod chain (``update_pvclock_gtod(tk, action & TK_CLOCK_WAS_SET)``) with this
        timekeeper as data, which is what KVM's shadow copy listens to.
        """
        if action & TK_CLEAR_NTP:
            self.ntp_error = 0
        self._update_ktime_data()
        k = self.kernel
        k.counters["timekeeping_updates"] += 1
        if k.cfg.pvclock_gtod_chain:
            k.update_pvclock_gtod(bool(action & TK_CLOCK_WAS_SET))
        if action & TK_CLOCK_WAS_SET:
            self.clock_was_set_seq += 1

    # -- writers ----------------------------------------------------------------------------
    def timekeeping_init(
        self, clock: Clocksource, now_ns: int, boot_ns: int = 0, uptime_ns: int = 0
    ) -> None:
        """``timekeeping_init``: start on ``clock`` (jiffies) with wall time ``now_ns``; monotonic =
        0.

        ``boot_ns`` is ``read_boot_clock64`` (0 = unknown -> boot time = now).  Profile series
        (later revision of patch 07): the change chain is called after the first update.
        ``uptime_ns`` (a model input, not the kernel's): a kernel that booted that long before
        the simulation starts, with nothing else happening meanwhile, so CLOCK_MONOTONIC and
        CLOCK_MONOTONIC_RAW start at ``uptime_ns`` (boot time = now - uptime) instead of 0.
        """
        with self._write():
            self._setup_internals(clock)
            self._set_xtime(now_ns)
            raw_sec, raw_nsec = divmod(uptime_ns, NSEC_PER_SEC)
            self.raw_sec = raw_sec
            self.tkr_raw.xtime_nsec = raw_nsec << self.tkr_raw.shift
            boot = now_ns if boot_ns == 0 else boot_ns
            boot -= uptime_ns
            self._set_wall_to_mono(-boot)
            self.timekeeping_update(TK_MIRROR | TK_CLOCK_WAS_SET)
            if self.kernel.cfg.clocksource_change_chain:
                self.kernel.clocksource_changes_notify()

    def update_wall_time(self, cycles: int | None = None) -> None:
        """``update_wall_time`` (``timekeeping_advance``): accumulate every whole
        ``cycle_interval`` since ``cycle_last``, then update.  ``cycles``: a read of the
        current clocksource the caller made at this instant on this CPU with nothing written
        since (``tick_do_update_jiffies64``'s ``ktime_get``), when that clocksource's
        ``read_pure`` says a second read would return the same; None reads it here.

        The clocksource is read before the write section.  Less than one interval since
        cycle_last: nothing happens (no timekeeping_update, no notifier).  Otherwise the
        kernel's logarithmic accumulation: ``shift = ilog2(offset) - ilog2(cycle_interval)``
        (capped by the NTP tick length), then ``logarithmic_accumulation`` takes chunks of
        ``cycle_interval << shift`` while they fit, lowering the shift, down to single
        intervals, so an update after a long idle costs O(log n) chunks, not n ticks.  The
        chunks add up to ``offset // cycle_interval`` whole intervals, and without NTP every
        chunk adds exactly its cycles times ``mult`` to ``xtime_nsec`` (each chunk keeps
        ``xtime_nsec`` below one second plus one chunk, so the kernel's u64 sums never wrap
        in between): the model takes them as one chunk, which leaves every field as the
        kernel's loop does, in O(1).
        """
        if self.suspended:  # timekeeping_advance: "Make sure we're fully resumed"
            return
        mono = self.tkr_mono
        if cycles is None:
            cycles = self.clock.read()[0]
        offset = clocksource_delta(cycles, mono.cycle_last, mono.mask)
        if offset < self.cycle_interval:
            return
        with self._write():
            # logarithmic_accumulation's chunks taken as one: n whole intervals (no leap
            # seconds, so accumulate_nsecs_to_secs sets no clock_set action)
            interval = self.cycle_interval
            n = offset // interval
            raw = self.tkr_raw
            mono.cycle_last = (mono.cycle_last + n * interval) & U64_MASK
            raw.cycle_last = (raw.cycle_last + n * interval) & U64_MASK
            secs, mono.xtime_nsec = divmod(
                mono.xtime_nsec + n * self.xtime_interval, NSEC_PER_SEC << mono.shift
            )
            self.xtime_sec += secs
            secs, raw.xtime_nsec = divmod(
                raw.xtime_nsec + n * self.raw_interval, NSEC_PER_SEC << raw.shift
            )
            self.raw_sec += secs
            # timekeeping_adjust(): NTP not modelled, mult stays the clocksource's.
            self.timekeeping_update(0)

    def _accumulate_nsecs_to_secs(self) -> int:
        """``accumulate_nsecs_to_secs`` (no leap seconds modelled): returns the clock_set action."""
        mono = self.tkr_mono
        nsps = NSEC_PER_SEC << mono.shift
        # The kernel subtracts one second per loop iteration; with no leap seconds modelled the
        # result equals one divmod, which also keeps a wild delta (a clock that wrapped to
        # ~2**63 ns) from looping for hours in the simulator.
        secs, mono.xtime_nsec = divmod(mono.xtime_nsec, nsps)
        self.xtime_sec += secs
        return 0

    def change_clocksource(self, new: Clocksource) -> None:
        """``change_clocksource`` (run by stop_machine from ``timekeeping_notify``).

        Under the write seqcount: forward_now, tk_setup_internals(new),
        timekeeping_update(TK_CLEAR_NTP | TK_MIRROR | TK_CLOCK_WAS_SET); profile ``series``
        then calls the clocksource change chain still inside the write section (the later
        revision of patch 07 at sbourdelin/linux 04ca0266).
        """
        k = self.kernel
        old = self.tkr_mono.clock
        with self._write():
            self._forward_now()
            self._setup_internals(new)
            k.counters["clocksource_changes"] += 1
            self.timekeeping_update(TK_CLEAR_NTP | TK_MIRROR | TK_CLOCK_WAS_SET)
            if k.cfg.clocksource_change_chain:
                k.clocksource_changes_notify()
        k.world.log(
            "clocksource_change", kernel=k.name, old=None if old is None else old.name, new=new.name
        )

    def do_settimeofday64(self, real_ns: int) -> None:
        """``do_settimeofday64``: set CLOCK_REALTIME to ``real_ns``; monotonic is unchanged
        (offs_real moves).
        """
        if isinstance(real_ns, bool) or not isinstance(real_ns, int):
            raise TypeError(f"real_ns must be an int, got {type(real_ns).__name__}")
        if real_ns < 0:
            raise ValueError(f"real_ns={real_ns} must be >= 0 (timespec64_valid_strict)")
        with self._write():
            self._forward_now()
            xt = self.xtime_sec * NSEC_PER_SEC + (self.tkr_mono.xtime_nsec >> self.tkr_mono.shift)
            delta = real_ns - xt
            self._set_wall_to_mono(self.wall_to_monotonic - delta)
            self._set_xtime(real_ns)
            self.timekeeping_update(TK_CLEAR_NTP | TK_MIRROR | TK_CLOCK_WAS_SET)

    def inject_sleeptime(self, delta_ns: int) -> None:
        """``timekeeping_inject_sleeptime64``: a suspend of ``delta_ns``: realtime and boottime
        advance by it, monotonic does not (offs_boot += delta, wall_to_monotonic -= delta)."""
        if isinstance(delta_ns, bool) or not isinstance(delta_ns, int):
            raise TypeError(f"delta_ns must be an int, got {type(delta_ns).__name__}")
        if delta_ns < 0:
            raise ValueError(f"delta_ns={delta_ns} must be >= 0 (timespec64_valid_strict)")
        with self._write():
            self._forward_now()
            sec, nsec = divmod(delta_ns, NSEC_PER_SEC)
            self.xtime_sec += sec
            self.tkr_mono.xtime_nsec += nsec << self.tkr_mono.shift
            self._accumulate_nsecs_to_secs()
            self._set_wall_to_mono(self.wall_to_monotonic - delta_ns)
            self.offs_boot += delta_ns
            self.timekeeping_update(TK_CLEAR_NTP | TK_MIRROR | TK_CLOCK_WAS_SET)

    # -- system suspend / resume (syscore ops) ----------------------------------------------
    def _select_suspend_clocksource(self) -> Clocksource | None:
        """``clocksource_suspend_select``: the best-rated registered clocksource with
        CLOCK_SOURCE_SUSPEND_NONSTOP (the first registered on equal ratings), None without."""
        best: Clocksource | None = None
        for cs in self.kernel.clocksources.values():
            if not cs.flags & CLOCK_SOURCE_SUSPEND_NONSTOP:
                continue
            if best is None or cs.rating > best.rating:
                best = cs
        return best

    def timekeeping_suspend(self) -> None:
        """``timekeeping_suspend`` (kernel/time/timekeeping.c; a syscore suspend op).

        Reads the persistent clock (``Kernel.read_persistent_clock_ns``: the RTC, whole
        seconds) into ``suspend_time_ns``; forward_now; ``suspended``; starts the suspend
        timing of the suspend clocksource (``clocksource_start_suspend_timing``: its cycles
        now, or ``cycle_last`` when it is the current clocksource); with a persistent clock,
        the drift compensation: ``delta = xtime - suspend_time``, and unless ``delta -
        old_delta`` is 2 s or more (whole seconds of the normalised timespec),
        ``suspend_time += delta - old_delta`` (else ``old_delta = delta``); then
        ``timekeeping_update`` without CLOCK_WAS_SET (the pvclock_gtod chain runs).  The same
        in 4.13 and 6.18 (``timekeeping_update(tk, TK_MIRROR)`` / ``..._from_shadow(.., 0)``).
        """
        if self.suspended:
            raise RuntimeError(f"{self.kernel.name}: timekeeping_suspend while suspended")
        k = self.kernel
        self.suspend_time_ns = k.read_persistent_clock_ns()
        if self.suspend_time_ns:
            self.persistent_clock_exists = True
        with self._write():
            self._forward_now()
            self.suspended = True
            self.last_sleep_ns = None
            cycle_now = self.tkr_mono.cycle_last
            # clocksource_start_suspend_timing(curr_clock, cycle_now)
            scs = self.suspend_clocksource = self._select_suspend_clocksource()
            if scs is not None:
                self.suspend_start = cycle_now if scs is self.clock else scs.read()[0]
            if self.persistent_clock_exists:
                mono = self.tkr_mono
                xt = self.xtime_sec * NSEC_PER_SEC + (mono.xtime_nsec >> mono.shift)
                delta = xt - self.suspend_time_ns
                delta_delta = delta - self.old_delta_ns
                if abs(delta_delta // NSEC_PER_SEC) >= 2:  # timespec64 tv_sec (normalised)
                    self.old_delta_ns = delta
                else:
                    self.suspend_time_ns += delta_delta
            self.timekeeping_update(0)
        k.world.log("timekeeping_suspend", kernel=k.name, suspend_time_ns=self.suspend_time_ns)

    def _clocksource_stop_suspend_timing(self, cycle_now: int) -> int:
        """``clocksource_stop_suspend_timing`` (6.18): ns the suspend clocksource counted since
        ``suspend_start``, 0 unless its reading now is above it (a TSC reset by the firmware
        reads below: 0, and the persistent clock is used)."""
        scs = self.suspend_clocksource
        if scs is None:
            return 0
        now = cycle_now if scs is self.clock else scs.read()[0]
        if now > self.suspend_start:
            return cycles_to_nsec_safe(scs, self.suspend_start, now)
        return 0

    def _inject_sleeptime_locked(self, delta_ns: int) -> None:
        """``__timekeeping_inject_sleeptime``: ``tk_xtime_add``, wall_to_monotonic -= delta,
        ``tk_update_sleep_time`` (offs_boot += delta).  No forward_now (the callers do it, or,
        on resume, rebase ``cycle_last`` after)."""
        sec, nsec = divmod(delta_ns, NSEC_PER_SEC)
        self.xtime_sec += sec
        mono = self.tkr_mono
        mono.xtime_nsec = (mono.xtime_nsec + (nsec << mono.shift)) & U64_MASK
        self._normalize_xtime()
        self._set_wall_to_mono(self.wall_to_monotonic - delta_ns)
        self.offs_boot += delta_ns

    def timekeeping_resume(self) -> None:
        """``timekeeping_resume`` (kernel/time/timekeeping.c; a syscore resume op, on the boot
        CPU).

        Reads the persistent clock (``ts_new``), ``clocksource_resume`` (no clocksource of the
        model has a resume hook; the watchdog reset: ``clocksource_resume_watchdog``), reads
        the clocksource (``cycle_now``); the sleep time is the suspend clocksource's count
        (``clocksource_stop_suspend_timing``) if positive, else ``ts_new - suspend_time``
        when the persistent clock advanced, injected by ``__timekeeping_inject_sleeptime``
        (realtime and boottime jump by it, monotonic does not); ``cycle_last`` (mono and raw)
        rebased to ``cycle_now``; ``timekeeping_update(TK_MIRROR | TK_CLOCK_WAS_SET)``.

        4.13 differs only in the first source: it took the *current* clocksource's own
        cycles since ``cycle_last`` when that clocksource had CLOCK_SOURCE_SUSPEND_NONSTOP and
        read above ``cycle_last``; 4.19 (39232ed5a179) introduced the separate suspend
        clocksource.  Both give the persistent clock's sleep time whenever the TSC restarts
        below its suspend-time value, which is what ``PhysicalMachine.resume`` does.
        """
        if not self.suspended:
            raise RuntimeError(
                f"{self.kernel.name}: timekeeping_resume without timekeeping_suspend"
            )
        k = self.kernel
        ts_new = k.read_persistent_clock_ns()
        k.watchdog.clocksource_resume_watchdog()  # clocksource_resume()
        with self._write():
            cycle_now = self.clock.read()[0]
            nsec = self._clocksource_stop_suspend_timing(cycle_now)
            delta: int | None = None
            if nsec > 0:
                delta = nsec
            elif ts_new > self.suspend_time_ns:
                delta = ts_new - self.suspend_time_ns
            if delta is not None:
                self._inject_sleeptime_locked(delta)
            self.last_sleep_ns = delta
            self.tkr_mono.cycle_last = cycle_now
            self.tkr_raw.cycle_last = cycle_now
            self.ntp_error = 0
            self.suspended = False
            self.timekeeping_update(TK_MIRROR | TK_CLOCK_WAS_SET)
        k.world.log("timekeeping_resume", kernel=k.name, sleep_ns=delta)

    # -- readers ----------------------------------------------------------------------------
    def _delta_to_ns(self, tkr: TkReadBase, cycles: int) -> int:
        """ns since the last tick of one clocksource read ``cycles``.

        Switch ``tk_delta_overflow_safe`` off: 4.13 ``timekeeping_get_ns`` (without
        CONFIG_DEBUG_TIMEKEEPING) = ``((clocksource_delta * mult + xtime_nsec) mod 2**64) >>
        shift``: once the delta exceeds about ``max_cycles`` (a clock nobody ticked for
        2**41 ns on kvm-clock) the product wraps and the clock reads 2**(64 - shift) ns
        behind per wrap.  On: 6.10+ ``timekeeping_cycles_to_ns`` (fcf190c36914): a delta
        above ``clock->max_cycles`` with the mask's top bit set is negative motion
        (``xtime_nsec >> shift``), any other is converted by ``delta_to_ns_safe``
        (``mul_u64_u32_add_u64_shr``: the exact 128-bit ``(delta * mult + xtime_nsec) >>
        shift``, truncated to u64).
        """
        if self.kernel.cfg.tk_delta_overflow_safe:
            mask = tkr.mask
            delta = (cycles - tkr.cycle_last) & mask
            clock = tkr.clock
            if clock is not None and delta > clock.max_cycles:
                if delta & ~(mask >> 1):
                    return tkr.xtime_nsec >> tkr.shift
                return ((delta * tkr.mult + tkr.xtime_nsec) >> tkr.shift) & U64_MASK
            return ((delta * tkr.mult + tkr.xtime_nsec) & U64_MASK) >> tkr.shift
        delta = clocksource_delta(cycles, tkr.cycle_last, tkr.mask)
        return ((delta * tkr.mult + tkr.xtime_nsec) & U64_MASK) >> tkr.shift

    def _offset(self, offs: int) -> int:
        if offs == TK_OFFS_REAL:
            return self.offs_real
        if offs == TK_OFFS_BOOT:
            return self.offs_boot
        if offs == TK_OFFS_TAI:
            return self.offs_tai
        raise ValueError(f"offs={offs!r} invalid (TK_OFFS_REAL 0, TK_OFFS_BOOT 1, TK_OFFS_TAI 2)")

    def _read(self, raw: bool, offs: int | None) -> tuple[int, int]:
        """One ``tk_core.seq`` read loop: base (+ offset) + ns of one clocksource read, and its
        stamp.
        """
        if self._write_depth:  # hot: _check_can_read() only when it raises
            self._check_can_read()
        seq = self.seq
        counters = self.kernel.counters
        while True:
            start = seq.read_begin()
            tkr = self.tkr_raw if raw else self.tkr_mono
            # an invalid offs raises here, on the first pass, before anything is read
            if offs is None:
                base = tkr.base
            elif offs == TK_OFFS_BOOT:  # hot: KVM's host clock, _offset() inlined
                base = tkr.base + self.offs_boot
            else:
                base = tkr.base + self._offset(offs)
            clock = tkr.clock
            if clock is None:
                raise RuntimeError("timekeeper read before timekeeping_init")
            cycles, stamp = clock.read()
            # _delta_to_ns(tkr, cycles), inlined for the common delta (hot: KVM's host clock)
            delta = (cycles - tkr.cycle_last) & tkr.mask
            if delta <= clock.max_cycles and not delta & ~(tkr.mask >> 1):
                ns = base + (((delta * tkr.mult + tkr.xtime_nsec) & U64_MASK) >> tkr.shift)
            else:
                ns = base + self._delta_to_ns(tkr, cycles)
            hook = self.interleave
            if hook is not None:
                hook()
            if not seq.read_retry(start):
                return ns, stamp
            counters["timekeeper.read_retries"] += 1

    def ktime_get_ns_with_cycles(self) -> tuple[int, int]:
        """``ktime_get`` with the clocksource reading it used: (CLOCK_MONOTONIC ns, cycles)
        from one ``tk_core.seq`` read loop (:meth:`_read` for ``tkr_mono`` without an offset,
        specialised: it runs at every NO_HZ wake-up and every KVM host clock read)."""
        if self._write_depth:
            self._check_can_read()
        seq = self.seq
        tkr = self.tkr_mono
        while True:
            start = seq.read_begin()
            clock = tkr.clock
            if clock is None:
                raise RuntimeError("timekeeper read before timekeeping_init")
            cycles = clock.read()[0]
            # _delta_to_ns(tkr, cycles), inlined for the common delta (hot: every wake-up)
            delta = (cycles - tkr.cycle_last) & tkr.mask
            if delta <= clock.max_cycles and not delta & ~(tkr.mask >> 1):
                ns = tkr.base + (((delta * tkr.mult + tkr.xtime_nsec) & U64_MASK) >> tkr.shift)
            else:
                ns = tkr.base + self._delta_to_ns(tkr, cycles)
            hook = self.interleave
            if hook is not None:
                hook()
            if not seq.read_retry(start):
                return ns, cycles
            self.kernel.counters["timekeeper.read_retries"] += 1

    def ktime_get_ns(self) -> int:
        """``ktime_get_ns``: CLOCK_MONOTONIC."""
        return self.ktime_get_ns_with_cycles()[0]

    def ktime_get_raw_ns(self) -> int:
        """``ktime_get_raw_ns``: CLOCK_MONOTONIC_RAW (tkr_raw)."""
        return self._read(True, None)[0]

    def ktime_get_raw_boot_ns_with_cycles(self) -> tuple[int, int]:
        """(CLOCK_MONOTONIC_RAW + offs_boot ns, clocksource stamp) from one read under
        tk_core.seq: the kvmclock base of Linux 5.5+ (``get_kvmclock_base_ns``,
        arch/x86/kvm/x86.c) for a KVM that asks the timekeeper instead of its shadow copy.
        Runs at the raw rate (``tkr_raw.mult``, never NTP-adjusted)."""
        return self._read(True, TK_OFFS_BOOT)

    def ktime_get_with_offset(self, offs: int) -> tuple[int, int]:
        """``ktime_get_with_offset(offs, &cycles)`` (patch 05): (mono + offset ns, clocksource
        stamp).
        """
        return self._read(False, offs)

    def ktime_get_real_ns(self) -> int:
        """``ktime_get_real_ns``: CLOCK_REALTIME = mono + offs_real."""
        return self._read(False, TK_OFFS_REAL)[0]

    def ktime_get_boot_ns(self) -> int:
        """``ktime_get_boot_ns``: CLOCK_BOOTTIME = mono + offs_boot."""
        return self._read(False, TK_OFFS_BOOT)[0]

    def ktime_get_tai_ns(self) -> int:
        """``ktime_get_clocktai_ns``: mono + offs_tai."""
        return self._read(False, TK_OFFS_TAI)[0]

    def ktime_get_boot_ns_with_cycles(self) -> tuple[int, int]:
        """Patch 06: (boot ns, stamp) from one clocksource read under tk_core.seq."""
        return self._read(False, TK_OFFS_BOOT)

    def ktime_get_real_ns_with_cycles(self) -> tuple[int, int]:
        """Patch 06: (real ns, stamp) from one clocksource read under tk_core.seq."""
        return self._read(False, TK_OFFS_REAL)

    def get_tk_seq(self) -> _k.SeqCount:
        """Patch 08: ``&tk_core.seq``."""
        return self.seq

    def get_tk_mono_clock_mode(self) -> int:
        """Patch 08: ``tkr_mono.clock->archdata.vclock_mode`` (read without the seqcount, like the
        patch).
        """
        return self.clock.vclock_mode

    def snapshot(self) -> dict[str, object]:
        """A plain copy of the timekeeper fields (for tests, metrics and KVM's gtod copy)."""
        return {
            "tkr_mono": replace(self.tkr_mono),
            "tkr_raw": replace(self.tkr_raw),
            "xtime_sec": self.xtime_sec,
            "wall_to_monotonic": self.wall_to_monotonic,
            "offs_real": self.offs_real,
            "offs_boot": self.offs_boot,
            "raw_sec": self.raw_sec,
            "cycle_interval": self.cycle_interval,
            "xtime_interval": self.xtime_interval,
            "raw_interval": self.raw_interval,
        }

"""Simulated true time and a deterministic event queue ("World").

Time is an integer number of nanoseconds.  Events run in (time, insertion sequence) order, so
two events scheduled for the same instant run in the order they were scheduled.  The only
randomness is ``World.rng`` (seeded); nothing here reads the host clock.
"""

from __future__ import annotations

import collections
import heapq
import random
from collections.abc import Callable
from typing import Any

from kvmclock import limits
from kvmclock.counters import Counters

__all__ = ["Event", "Periodic", "World"]


def _check_ns(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of nanoseconds, got {type(value).__name__}")
    return value


class Event:
    """One scheduled call; ``cancel()`` makes the queue skip it."""

    __slots__ = ("args", "cancelled", "fn", "seq", "t_ns")

    def __init__(
        self, t_ns: int, seq: int, fn: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self.t_ns = t_ns
        self.seq = seq
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Drop the event if it has not run yet (a no-op afterwards)."""
        self.cancelled = True

    def __lt__(self, other: Event) -> bool:
        return (self.t_ns, self.seq) < (other.t_ns, other.seq)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"Event(t_ns={self.t_ns}, seq={self.seq}, fn={name}, cancelled={self.cancelled})"


class Periodic:
    """Handle of an ``every()`` timer: re-arms itself ``period_ns`` after each expiry."""

    __slots__ = ("args", "cancelled", "fired", "fn", "next_event", "period_ns", "world")

    def __init__(
        self, world: World, period_ns: int, fn: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self.world = world
        self.period_ns = period_ns
        self.fn = fn
        self.args = args
        self.next_event: Event | None = None
        self.cancelled = False
        self.fired = 0

    def cancel(self) -> None:
        """Stop the timer (like ``del_timer``); safe to call from inside its own callback."""
        self.cancelled = True
        if self.next_event is not None:
            self.next_event.cancel()

    def _fire(self) -> None:
        if self.cancelled:
            return
        # Re-arm first (like add_timer in the handler of a periodic kernel timer) so that a
        # callback that raises does not silently stop the timer, and cancel() inside fn works.
        # world.at(now + period, self._fire), inlined (hot: every tick; the time is an int
        # after now, since period_ns was checked > 0)
        world = self.world
        t_ns = world.now_ns + self.period_ns
        seq = world._seq
        world._seq = seq + 1
        ev = Event(t_ns, seq, self._fire, ())
        heapq.heappush(world._queue, (t_ns, seq, ev))
        self.next_event = ev
        self.fired += 1
        self.fn(*self.args)


class World:
    """Deterministic simulated true time: ``now_ns``, a seeded ``rng`` and an event heap."""

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.now_ns = 0
        #: the event log: its first ``kvmclock.limits.EVENTS_CAP`` entries (``log``)
        self.events: list[dict[str, Any]] = []
        #: entries logged in all (kept or not)
        self.events_logged = 0
        #: kind -> entries logged past ``kvmclock.limits.EVENTS_CAP`` (not in ``events``)
        # a Counters: its += is a dict's (hot: every entry of a long run is counted here)
        self.events_dropped: collections.Counter[str] = Counters()
        #: called with every entry as it is logged, kept or not (the run's key moments and
        #: its ``--events`` stream are built this way, so that the log need not be kept)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.events_processed = 0
        # heap of (t_ns, seq, event): tuples compare in C, the Event never (seq is unique)
        self._queue: list[tuple[int, int, Event]] = []
        self._seq = 0
        self._running = False

    # -- scheduling -------------------------------------------------------------------------
    def at(self, t_ns: int, fn: Callable[..., object], *args: Any) -> Event:
        """Schedule ``fn(*args)`` at absolute true time ``t_ns`` (>= now_ns)."""
        if t_ns.__class__ is not int:  # the common case skips the call (hot: every timer)
            _check_ns("t_ns", t_ns)
        if t_ns < self.now_ns:
            raise ValueError(
                f"t_ns={t_ns} is in the past (now_ns={self.now_ns}); valid: t_ns >= now_ns"
            )
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        seq = self._seq
        ev = Event(t_ns, seq, fn, args)
        self._seq = seq + 1
        heapq.heappush(self._queue, (t_ns, seq, ev))
        return ev

    def after(self, dt_ns: int, fn: Callable[..., object], *args: Any) -> Event:
        """Schedule ``fn(*args)`` ``dt_ns`` (>= 0) after now."""
        _check_ns("dt_ns", dt_ns)
        if dt_ns < 0:
            raise ValueError(f"dt_ns={dt_ns} must be >= 0")
        return self.at(self.now_ns + dt_ns, fn, *args)

    def every(
        self, period_ns: int, fn: Callable[..., object], *args: Any, start_ns: int | None = None
    ) -> Periodic:
        """Call ``fn(*args)`` at ``start_ns`` (default now + period) and every ``period_ns``
        after.
        """
        _check_ns("period_ns", period_ns)
        if period_ns <= 0:
            raise ValueError(f"period_ns={period_ns} must be > 0")
        first = self.now_ns + period_ns if start_ns is None else _check_ns("start_ns", start_ns)
        handle = Periodic(self, period_ns, fn, args)
        handle.next_event = self.at(first, handle._fire)
        return handle

    # -- running ----------------------------------------------------------------------------
    def pending(self) -> int:
        """Number of queued events that are not cancelled."""
        return sum(1 for _, _, ev in self._queue if not ev.cancelled)

    def next_event_ns(self) -> int | None:
        """True time of the next live event, or None when the queue is empty."""
        while self._queue and self._queue[0][2].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0][0] if self._queue else None

    def run_until(self, t_ns: int) -> None:
        """Run every event with time <= ``t_ns`` in (time, seq) order; then ``now_ns = t_ns``."""
        _check_ns("t_ns", t_ns)
        if t_ns < self.now_ns:
            raise ValueError(f"t_ns={t_ns} is in the past (now_ns={self.now_ns})")
        if self._running:
            raise RuntimeError("World.run_until() called from inside an event (re-entrant run)")
        self._running = True
        try:
            queue = self._queue
            heappop = heapq.heappop
            while queue and queue[0][0] <= t_ns:
                ev_t, _, ev = heappop(queue)
                if ev.cancelled:
                    continue
                self.now_ns = ev_t
                self.events_processed += 1
                ev.fn(*ev.args)
            self.now_ns = t_ns
        finally:
            self._running = False

    def run_for(self, dt_ns: int) -> None:
        """``run_until(now_ns + dt_ns)``."""
        _check_ns("dt_ns", dt_ns)
        self.run_until(self.now_ns + dt_ns)

    # -- log --------------------------------------------------------------------------------
    def log(self, kind: str, **fields: Any) -> None:
        """Log ``{"t_ns": now_ns, "kind": kind, **fields}``: appended to ``events`` while it
        holds fewer than ``kvmclock.limits.EVENTS_CAP`` entries (counted by kind in
        ``events_dropped`` otherwise), then passed to every listener in order."""
        if kind.__class__ is not str and not isinstance(kind, str):  # hot: the common case
            raise TypeError(f"kind must be a str, got {type(kind).__name__}")
        entry: dict[str, Any] = {"t_ns": self.now_ns, "kind": kind}
        entry.update(fields)
        self.events_logged += 1
        if len(self.events) < limits.EVENTS_CAP:
            self.events.append(entry)
        else:
            self.events_dropped[kind] += 1
        for listener in self.listeners:
            listener(entry)

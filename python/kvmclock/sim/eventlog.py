"""The run's event stream: KVM trace records (kept up to a bound for the run's ``trace``) and
every event-log entry written as JSON lines while the run goes (``simulate --events PATH``).

The event log of a run is the world log (:meth:`kvmclock.machine.world.World.log`: boots,
printks, watchdog checks, key moments, ...) and the KVM trace records (``KvmModule.trace``:
``kvm_write_tsc_offset``, ``kvm_update_master_clock``, ``kvm_pvclock_update``, ...), in
execution order.  An :class:`EventLog` listens to the world and is every KVM module's
``trace_records`` sink (:class:`TraceRecords`): it keeps the first
``kvmclock.limits.TRACE_CAP`` trace records when the run asked for its trace (counting the
rest in :attr:`EventLog.trace_dropped`) and, given a text stream, writes one JSON object per
line for every entry as it comes.  A world entry is written as logged (``{"t_ns", "kind",
...}``); a trace record as ``{"t_ns", "kind": "trace", "level", "comm", "pid", "cpu",
"event", "fields"}``.  While a scenario timeline entry runs (:meth:`hold`) the lines wait, so
that the ``cause`` the entry gives the moments and printks its kernel calls logged
(``kvmclock.scenario.engine``) is in them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TextIO

from kvmclock import limits

if TYPE_CHECKING:
    from kvmclock.machine.world import World

__all__ = ["EventLog", "TraceRecord", "TraceRecords", "trace_entry"]

#: ``(t_ns, level, comm, pid, cpu, event, fields)`` as ``KvmModule.trace`` appends it
TraceRecord = tuple[int, int, str, int, int, str, str]


def trace_entry(rec: TraceRecord) -> dict[str, Any]:
    """Trace record ``rec`` as an event-log entry (``kind`` ``"trace"``)."""
    t, level, comm, pid, cpu, event, fields = rec
    return {"t_ns": t, "kind": "trace", "level": level, "comm": comm, "pid": pid, "cpu": cpu,
            "event": event, "fields": fields}


class TraceRecords(list[TraceRecord]):
    """The trace records an :class:`EventLog` kept (a list, the first
    ``kvmclock.limits.TRACE_CAP``); ``append`` hands a new record to the log."""

    def __init__(self, log: EventLog) -> None:
        super().__init__()
        self._log = log

    def append(self, rec: TraceRecord) -> None:
        """``KvmModule.trace``'s sink: the record goes to the log (kept while there is
        room, written to the stream)."""
        self._log.record(rec)


class EventLog:
    """The event stream of one run on ``world`` (see the module docstring): ``keep_trace``
    keeps trace records for the run's ``trace``, ``stream`` (a writable text stream, or None)
    gets every entry as a JSON line."""

    def __init__(self, world: World, *, keep_trace: bool, stream: TextIO | None) -> None:
        self.keep_trace = keep_trace
        self.stream = stream
        #: the kept trace records (what ``KvmModule.trace_records`` is, in a run)
        self.trace = TraceRecords(self)
        #: trace records not kept because ``trace`` was full (0 when the trace was not asked)
        self.trace_dropped = 0
        #: trace records seen / world-log entries seen / lines written
        self.trace_records = 0
        self.log_entries = 0
        self.lines = 0
        self._held = 0
        self._pending: list[dict[str, Any]] = []
        world.listeners.append(self.entry)

    @property
    def wanted(self) -> bool:
        """Whether anything asked for trace records (the run's trace or the stream): KVM
        modules trace only then (``KvmModule.trace_enabled``)."""
        return self.keep_trace or self.stream is not None

    def record(self, rec: TraceRecord) -> None:
        """One KVM trace record."""
        self.trace_records += 1
        if self.keep_trace:
            if len(self.trace) < limits.TRACE_CAP:
                list.append(self.trace, rec)
            else:
                self.trace_dropped += 1
        if self.stream is not None:
            self._emit(trace_entry(rec))

    def entry(self, ev: dict[str, Any]) -> None:
        """One world-log entry (a ``World.listeners`` callback)."""
        self.log_entries += 1
        if self.stream is not None:
            self._emit(ev)

    def _emit(self, ev: dict[str, Any]) -> None:
        if self._held:
            self._pending.append(ev)
        else:
            self._write(ev)

    def _write(self, ev: dict[str, Any]) -> None:
        assert self.stream is not None
        self.stream.write(json.dumps(ev, default=str) + "\n")
        self.lines += 1

    def hold(self) -> None:
        """A timeline entry starts: lines wait until the matching :meth:`release`."""
        self._held += 1

    def release(self) -> None:
        """The timeline entry is done: the lines that waited are written (when no outer
        entry still runs)."""
        self._held -= 1
        if not self._held:
            self.release_all()

    def close(self) -> None:
        """The run ended: write whatever still waits (a run stopped inside an entry) and
        flush the stream."""
        self._held = 0
        self.release_all()
        if self.stream is not None:
            self.stream.flush()

    def release_all(self) -> None:
        """Write every waiting line now."""
        pending, self._pending = self._pending, []
        for ev in pending:
            self._write(ev)

"""Bounds that keep a run's memory flat whatever its simulated duration (docs/json.md).

Every structure that would otherwise grow with simulated time keeps at most this much.  The
code reads these as ``limits.NAME`` when it needs them, so a test can lower one with
``monkeypatch.setattr(kvmclock.limits, "NAME", n)`` before a run.  The built-in scenarios stay
far below every bound at their default durations, so their results do not depend on them.
"""

from __future__ import annotations

__all__ = [
    "EVENTS_CAP",
    "MOMENTS_CAP",
    "MOMENTS_TAIL",
    "READ_STATUS_CAP",
    "SERIES_ROWS",
    "TIMELINE_CAP",
    "TRACE_CAP",
    "TSC_DECISIONS_CAP",
]

#: ``World.events``: the first entries kept (later ones counted by kind in
#: ``World.events_dropped``; every entry still reaches the listeners and ``--events``).
EVENTS_CAP = 10_000

#: KVM trace records a run keeps for its ``trace`` (the first ones; the rest are counted in
#: the run's ``trace_dropped``; ``--events`` writes them all).
TRACE_CAP = 200_000

#: Key moments a run keeps (the first ones, in order; the rest are counted in
#: ``moments_dropped``).  Also the bound of ``KvmModule.moments`` and ``Sim.moments``.
MOMENTS_CAP = 10_000

#: The last key moments a run keeps besides the first :data:`MOMENTS_CAP` (``moments_last``).
MOMENTS_TAIL = 10

#: Sample rows kept per guest kernel: when full, every second row is dropped and the stride
#: doubles (``Recorder``), so the kept rows stay evenly spaced whatever the duration.
SERIES_ROWS = 2_048

#: Changes kept per VM in ``Kvm.masterclock_timeline`` and ``Kvm.pvclock_stable_timeline``
#: (the first ones; later changes are counted, the current state is still tracked).
TIMELINE_CAP = 10_000

#: ``ClocksourceWatchdog.read_status`` (6.18 rule): the first ``cs_watchdog_read`` results
#: kept (``read_status_count`` counts them all).
READ_STATUS_CAP = 1_000

#: ``Kvm.tsc_decisions``: the most recent decisions kept (a ring; ``tsc_decisions_logged``
#: counts them all).
TSC_DECISIONS_CAP = 4_096

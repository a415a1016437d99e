"""ftrace text of a simulation run (``kvmclock simulate --trace``): the run's trace rows
written with :func:`kvmclock.trace.format_line`, with the level column (``L<n>``) so that one
file holds every level; ``kvmclock trace`` reads it back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvmclock.trace import format_line


def trace_text(run: Mapping[str, Any], scenario: str, seed: int) -> str:
    """The ``trace`` file body of one run: a ``# ``-comment header like tracefs's, then one
    line per trace row ``{"t_ns", "level", "comm", "pid", "cpu", "event", "fields"}`` in
    time order (stable: rows of one time keep their order).
    ``kvm_write_tsc_offset`` gets the flags ``d...`` (traced with irqs off under
    tsc_write_lock), the other events ``....``.  A trace the run cut
    (``trace_dropped``) says so in the header, as tracefs does when its buffer overran:
    ``entries-in-buffer/entries-written: KEPT/ALL``."""
    rows = run.get("trace")
    if rows is None:
        raise ValueError("run has no 'trace' rows: call run_scenario(..., trace=True)")
    lines = [
        "# tracer: nop",
        f"# kvmclock simulate: scenario {scenario}, profile {run['profile']}, seed {seed} "
        "(simulated time; first column L<n> = level of the emitting kernel)",
        # like tracefs when the ring buffer overran: fewer entries kept than written
        f"# entries-in-buffer/entries-written: {len(rows)}/"
        f"{len(rows) + int(run.get('trace_dropped') or 0)}",
        "#",
        "#  LEVEL         TASK-PID     CPU#  ||||   TIMESTAMP  FUNCTION",
        "#                   | |         |   ||||      |         |",
    ]
    for row in sorted(rows, key=lambda r: int(r["t_ns"])):
        event = str(row["event"])
        flags = "d..." if event == "kvm_write_tsc_offset" else "...."
        lines.append(
            format_line(str(row["comm"]), int(row["pid"]), int(row["cpu"]), int(row["t_ns"]),
                        event, str(row["fields"]), flags=flags, level=int(row["level"]))
        )
    return "\n".join(lines) + "\n"

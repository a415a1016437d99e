"""Sweeps: many runs of one scenario over a grid of parameters, profiles and seeds, on this
machine (a process pool) or a Dask cluster, as one table (docs/sweeps.md).

* :func:`run`: run a sweep and get its table (a pyarrow Table, or rows); resumable with
  ``out``.
* :func:`summary` / :func:`format_summary`: a table's extremes with the parameters that
  produced them.
* :func:`expand` / :class:`SweepPoint`: the plan (what would run), without running it.

Modules: :mod:`~kvmclock.sweep.plan` (points, grids, ranges, ids), :mod:`~kvmclock.sweep.metrics`
(one row per run), :mod:`~kvmclock.sweep.execute` (run a point; executors),
:mod:`~kvmclock.sweep.store` (table files and the journal), :mod:`~kvmclock.sweep.api`.
"""

from __future__ import annotations

from kvmclock.sweep.api import (
    DroppedRowsWarning,
    SweepInterrupted,
    format_summary,
    run,
    summary,
)
from kvmclock.sweep.plan import SweepPoint, expand

__all__ = [
    "DroppedRowsWarning",
    "SweepInterrupted",
    "SweepPoint",
    "expand",
    "format_summary",
    "run",
    "summary",
]

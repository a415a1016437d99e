"""One table row per run: what ran, its status and the run's metrics, flat.

A row is a dict of plain values (str, int, float, bool, None) in :func:`columns` order:

* ``run_id`` (16 hex digits, :func:`kvmclock.sweep.plan.point_id`), ``scenario``, ``profile``,
  ``seed``, one ``param.<name>`` column per swept parameter (ints as ints, decimals as floats,
  bools, strings, None), ``status`` (``"ok"`` or ``"error"``), ``error`` (``"<Type>:
  <message>"``; None when ok);
* from the run (the simulate run format v1, docs/json.md; every metric None in an error row):
  ``end_ns`` (simulated ns reached), ``stopped_early``, ``livelock`` (a detected livelock
  stopped the run), ``events`` (world events), ``guest_reads`` (kvm-clock reads of all
  guests); over the ``levels``: ``masterclock_end`` (masterclock at the end of the deepest
  kernel that ran KVM VMs, i.e. the KVM level whose guest is deepest; the first such entry;
  None without VMs), ``stable_end`` (PVCLOCK_TSC_STABLE_BIT at the end of the deepest guest;
  the first such entry), ``masterclock_transitions`` and ``stable_transitions`` (the number
  of on/off changes over every timeline of every level, counting from off: an initial
  turn-on counts, a timeline's first "off" entry does not; a host's masterclock timelines
  are ``masterclock_timelines`` when present, else ``masterclock_timeline``),
  ``backwards_steps`` (sum of ``guest_backwards``), ``max_backwards_step_ns`` (the largest
  step back, ns: the largest ``step_ns`` of the recorded ``backwards_events`` and
  ``max_reanchor_step_ns`` of every level; 0 when nothing went back), ``max_skew_ns`` (max
  of ``max_cross_vcpu_skew_ns``), ``clamp_hits``, ``notifier_calls``,
  ``timekeeping_updates`` (sums of ``last_value_clamp_hits``, ``notifier_calls``,
  ``timekeeping_updates``), ``tsc_unstable_levels`` (kernels that marked their TSC
  unstable); over the ``lifecycle`` records: ``lifecycle_actions`` (count),
  ``lifecycle_incomplete`` (records with ``completed`` false), ``max_abs_monotonic_jump_ns``
  and ``max_abs_realtime_jump_ns`` (largest |jump| in ns; None without a measured jump),
  ``worst_jump_vm`` (the VM of the record with the largest |monotonic| or |realtime| jump,
  the first on a tie; None without one);
* ``wall_s``: wall-clock seconds the run took in its worker (the only column that differs
  between two executions of the same sweep).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmclock.sweep.plan import SweepPoint, Value

__all__ = [
    "HEAD_COLUMNS",
    "METRIC_COLUMNS",
    "METRIC_TYPES",
    "PARAM_PREFIX",
    "column_value",
    "columns",
    "error_row",
    "row_from_run",
]

PARAM_PREFIX = "param."

#: the columns before the parameters, with their types
HEAD_COLUMNS: dict[str, type] = {"run_id": str, "scenario": str, "profile": str, "seed": int}
#: the columns after the parameters, with their types (every one may be None but status)
METRIC_TYPES: dict[str, type] = {
    "status": str,
    "error": str,
    "end_ns": int,
    "stopped_early": bool,
    "livelock": bool,
    "events": int,
    "guest_reads": int,
    "masterclock_end": bool,
    "stable_end": bool,
    "masterclock_transitions": int,
    "stable_transitions": int,
    "backwards_steps": int,
    "max_backwards_step_ns": int,
    "max_skew_ns": int,
    "clamp_hits": int,
    "notifier_calls": int,
    "timekeeping_updates": int,
    "tsc_unstable_levels": int,
    "lifecycle_actions": int,
    "lifecycle_incomplete": int,
    "max_abs_monotonic_jump_ns": int,
    "max_abs_realtime_jump_ns": int,
    "worst_jump_vm": str,
    "wall_s": float,
}
#: the run's metrics (None in an error row)
METRIC_COLUMNS: tuple[str, ...] = tuple(
    c for c in METRIC_TYPES if c not in ("status", "error", "wall_s")
)


def column_value(v: Value) -> int | float | bool | str | None:
    """A parameter value as a table cell: exact decimals as floats (for plotting), the rest
    as they are."""
    if isinstance(v, Fraction):
        return float(v)
    return v


def columns(param_names: Iterable[str]) -> list[str]:
    """Every column of a sweep's table, in order, for the swept parameters
    ``param_names``."""
    return [
        *HEAD_COLUMNS,
        *(PARAM_PREFIX + n for n in sorted(param_names)),
        *METRIC_TYPES,
    ]


def _head(point: SweepPoint) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": point.id,
        "scenario": point.scenario,
        "profile": point.profile,
        "seed": point.seed,
    }
    for name in sorted(point.params):
        row[PARAM_PREFIX + name] = column_value(point.params[name])
    return row


def _transitions(timeline: Iterable[Mapping[str, Any]]) -> int:
    """On/off changes of one timeline, counting from off."""
    state = False
    n = 0
    for change in timeline:
        on = bool(change["on"])
        if on != state:
            n += 1
            state = on
    return n


def _deepest(levels: list[dict[str, Any]], key: str) -> bool | None:
    """``key`` of the first entry of the deepest level where it is not None."""
    best: dict[str, Any] | None = None
    for lv in levels:
        if lv.get(key) is None:
            continue
        if best is None or lv["level"] > best["level"]:
            best = lv
    return None if best is None else bool(best[key])


def _max_abs(records: list[dict[str, Any]], key: str) -> int | None:
    vals = [abs(int(r[key])) for r in records if r.get(key) is not None]
    return max(vals) if vals else None


def _worst_jump_vm(records: list[dict[str, Any]]) -> str | None:
    worst: tuple[int, str] | None = None
    for r in records:
        vals = [
            abs(int(r[k]))
            for k in ("monotonic_jump_ns", "realtime_jump_ns")
            if r.get(k) is not None
        ]
        if vals and (worst is None or max(vals) > worst[0]):
            worst = (max(vals), str(r["vm"]))
    return None if worst is None else worst[1]


def row_from_run(point: SweepPoint, run: Mapping[str, Any], wall_s: float) -> dict[str, Any]:
    """The row of a run that finished (``run`` as :func:`kvmclock.sim.run_scenario` returns
    it; ``wall_s`` seconds it took).  The definitions are in the module docstring."""
    levels: list[dict[str, Any]] = list(run["levels"])
    lifecycle: list[dict[str, Any]] = list(run.get("lifecycle") or [])
    mc_transitions = 0
    stable_transitions = 0
    max_step = 0
    for lv in levels:
        timelines = lv.get("masterclock_timelines")
        if timelines:
            mc_transitions += sum(_transitions(t) for t in timelines.values())
        else:
            mc_transitions += _transitions(lv["masterclock_timeline"])
        stable_transitions += _transitions(lv["pvclock_stable_timeline"])
        steps = [int(e["step_ns"]) for e in lv["backwards_events"]]
        max_step = max([max_step, int(lv["max_reanchor_step_ns"]), *steps])
    row = _head(point)
    row.update(
        {
            "status": "ok",
            "error": None,
            "end_ns": int(run["end_ns"]),
            "stopped_early": bool(run["stopped_early"]),
            "livelock": run.get("livelock") is not None,
            "events": int(run["stats"]["events"]),
            "guest_reads": int(run["stats"]["guest_reads"]),
            "masterclock_end": _deepest(levels, "masterclock"),
            "stable_end": _deepest(levels, "pvclock_stable"),
            "masterclock_transitions": mc_transitions,
            "stable_transitions": stable_transitions,
            "backwards_steps": sum(int(lv["guest_backwards"]) for lv in levels),
            "max_backwards_step_ns": max_step,
            "max_skew_ns": max((int(lv["max_cross_vcpu_skew_ns"]) for lv in levels), default=0),
            "clamp_hits": sum(int(lv["last_value_clamp_hits"]) for lv in levels),
            "notifier_calls": sum(int(lv["notifier_calls"]) for lv in levels),
            "timekeeping_updates": sum(int(lv["timekeeping_updates"]) for lv in levels),
            "tsc_unstable_levels": sum(1 for lv in levels if lv["tsc_unstable"]),
            "lifecycle_actions": len(lifecycle),
            "lifecycle_incomplete": sum(1 for r in lifecycle if not r["completed"]),
            "max_abs_monotonic_jump_ns": _max_abs(lifecycle, "monotonic_jump_ns"),
            "max_abs_realtime_jump_ns": _max_abs(lifecycle, "realtime_jump_ns"),
            "worst_jump_vm": _worst_jump_vm(lifecycle),
            "wall_s": float(wall_s),
        }
    )
    return row


def error_row(point: SweepPoint, exc: BaseException | str, wall_s: float) -> dict[str, Any]:
    """The row of a run that failed: status ``"error"``, ``error`` ``"<Type>: <message>"``
    (or ``exc`` itself when it is a string), every metric None."""
    message = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    row = _head(point)
    row["status"] = "error"
    row["error"] = message
    for c in METRIC_COLUMNS:
        row[c] = None
    row["wall_s"] = float(wall_s)
    return row

"""kvmclock.sweep.metrics: one row per run, checked against the run dict of real runs.

Every expected value is computed here from the run dict, written out independently of
``row_from_run`` (plain loops over the levels and lifecycle records)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from kvmclock.sim import run_scenario
from kvmclock.sweep import SweepPoint, expand
from kvmclock.sweep.execute import run_point
from kvmclock.sweep.metrics import METRIC_COLUMNS, columns, error_row, row_from_run


def _flips(timeline: list[dict[str, Any]]) -> int:
    """On/off changes, the state before the first entry being off."""
    states = [False] + [bool(c["on"]) for c in timeline]
    return sum(1 for a, b in itertools.pairwise(states) if a != b)


def _expected(run: dict[str, Any]) -> dict[str, Any]:
    levels = run["levels"]
    lc = run["lifecycle"]
    mc = 0
    st = 0
    biggest_step = 0
    for lv in levels:
        if "masterclock_timelines" in lv:
            for tl in lv["masterclock_timelines"].values():
                mc += _flips(tl)
        else:
            mc += _flips(lv["masterclock_timeline"])
        st += _flips(lv["pvclock_stable_timeline"])
        for e in lv["backwards_events"]:
            if e["step_ns"] > biggest_step:
                biggest_step = e["step_ns"]
        if lv["max_reanchor_step_ns"] > biggest_step:
            biggest_step = lv["max_reanchor_step_ns"]
    kvm_levels = [lv for lv in levels if lv["masterclock"] is not None]
    guests = [lv for lv in levels if lv["pvclock_stable"] is not None]
    deepest_kvm = max((lv["level"] for lv in kvm_levels), default=None)
    deepest_guest = max((lv["level"] for lv in guests), default=None)
    mono = [abs(r["monotonic_jump_ns"]) for r in lc if r["monotonic_jump_ns"] is not None]
    real = [abs(r["realtime_jump_ns"]) for r in lc if r["realtime_jump_ns"] is not None]
    worst_vm = None
    worst = -1
    for r in lc:
        for k in ("monotonic_jump_ns", "realtime_jump_ns"):
            if r[k] is not None and abs(r[k]) > worst:
                worst, worst_vm = abs(r[k]), r["vm"]
    return {
        "end_ns": run["end_ns"],
        "stopped_early": run["stopped_early"],
        "livelock": run["livelock"] is not None,
        "events": run["stats"]["events"],
        "guest_reads": run["stats"]["guest_reads"],
        "masterclock_end": None
        if deepest_kvm is None
        else next(lv for lv in kvm_levels if lv["level"] == deepest_kvm)["masterclock"],
        "stable_end": None
        if deepest_guest is None
        else next(lv for lv in guests if lv["level"] == deepest_guest)["pvclock_stable"],
        "masterclock_transitions": mc,
        "stable_transitions": st,
        "backwards_steps": sum(lv["guest_backwards"] for lv in levels),
        "max_backwards_step_ns": biggest_step,
        "max_skew_ns": max(lv["max_cross_vcpu_skew_ns"] for lv in levels),
        "clamp_hits": sum(lv["last_value_clamp_hits"] for lv in levels),
        "notifier_calls": sum(lv["notifier_calls"] for lv in levels),
        "timekeeping_updates": sum(lv["timekeeping_updates"] for lv in levels),
        "tsc_unstable_levels": len([lv for lv in levels if lv["tsc_unstable"]]),
        "lifecycle_actions": len(lc),
        "lifecycle_incomplete": len([r for r in lc if r["completed"] is False]),
        "max_abs_monotonic_jump_ns": max(mono) if mono else None,
        "max_abs_realtime_jump_ns": max(real) if real else None,
        "worst_jump_vm": worst_vm,
    }


def _point(scenario: str, profile: str, **params: Any) -> SweepPoint:
    pts = expand(scenario, grid={k: [v] for k, v in params.items()}, profiles=profile)
    assert len(pts) == 1
    return pts[0]


def _check(point: SweepPoint) -> tuple[dict[str, Any], dict[str, Any]]:
    run = run_scenario(point.scenario, point.profile, point.seed, **point.params)
    row = row_from_run(point, run, 0.25)
    exp = _expected(run)
    assert {k: row[k] for k in exp} == exp
    assert list(row) == columns(point.params)
    assert row["run_id"] == point.id and row["status"] == "ok" and row["error"] is None
    assert row["wall_s"] == 0.25
    json.dumps(row, allow_nan=False)  # plain values only
    return run, row


def test_tsc_sync_row() -> None:
    _run, row = _check(_point("tsc-sync", "upstream", vcpus=3))
    assert row["param.vcpus"] == 3
    assert (row["scenario"], row["profile"], row["seed"]) == ("tsc-sync", "upstream", 0)
    # the run has re-anchor steps back and the masterclock toggling: the row is not trivial
    assert row["backwards_steps"] > 0 and row["max_backwards_step_ns"] > 0
    assert row["masterclock_transitions"] >= 3
    assert row["lifecycle_actions"] == 0 and row["worst_jump_vm"] is None


def test_restore_shelf_row_under_upstream() -> None:
    run, row = _check(_point("restore-shelf", "upstream", shelf_s=5))
    assert row["param.shelf_s"] == 5
    assert row["lifecycle_actions"] == 3 == len(run["lifecycle"])
    # flags 0 loses the shelf time; KVM_CLOCK_REALTIME keeps it: the worst is 5 s behind
    assert row["max_abs_monotonic_jump_ns"] == 5_000_000_000
    assert row["worst_jump_vm"] == "kvmclock-flags0"  # the first of two equal jumps
    # a host running VMs of several names: every name's timeline counts
    assert any("masterclock_timelines" in lv for lv in run["levels"])


def test_patch09_hang_row_is_a_livelock() -> None:
    run, row = _check(_point("patch09-hang", "series", duration_s=2))
    assert row["livelock"] is True and row["stopped_early"] is True
    assert row["end_ns"] == 1_000_000_000 < run["duration_ns"]


def test_host_suspend_row() -> None:
    run, row = _check(_point("host-suspend", "upstream", sleep_s=3))
    assert row["lifecycle_actions"] == 1
    assert row["masterclock_end"] is False and row["stable_end"] is False
    assert row["max_abs_monotonic_jump_ns"] is not None
    assert row["worst_jump_vm"] == run["lifecycle"][0]["vm"]


def test_decimal_parameter_is_a_float_cell() -> None:
    p = _point("set-clock", "upstream", step_s=0.5, duration_s=0.2)
    row = run_point(p)
    assert row["status"] == "ok", row["error"]
    assert row["param.step_s"] == 0.5 and row["param.duration_s"] == 0.2
    assert row["end_ns"] == 200_000_000


def test_error_row() -> None:
    p = _point("tsc-sync", "upstream", vcpus=2)
    row = error_row(p, ValueError("no such thing"), 1.5)
    assert row["status"] == "error"
    assert row["error"] == "ValueError: no such thing"
    assert all(row[c] is None for c in METRIC_COLUMNS)
    assert row["param.vcpus"] == 2 and row["run_id"] == p.id and row["wall_s"] == 1.5
    assert list(row) == columns(["vcpus"])
    assert error_row(p, "executor: gone", 0.0)["error"] == "executor: gone"


@pytest.mark.parametrize(
    ("scenario", "profile", "params", "message"),
    [
        # a value within [params] that the run refuses: a timeline it makes impossible
        (
            "tsc-sync",
            "upstream",
            {"vcpus": 64},
            "ScenarioFileError: builtin:tsc-sync.toml: timeline[1].vm: VM 'L1' already has 64",
        ),
        # a profile that refuses a recipe of the scenario
        (
            "restore-shelf",
            "gtod",
            {"shelf_s": 1},
            "ScenarioFileError: builtin:restore-shelf.toml: ",
        ),
    ],
)
def test_run_point_turns_failures_into_error_rows(
    scenario: str, profile: str, params: dict[str, Any], message: str
) -> None:
    p = _point(scenario, profile, **params)
    with pytest.raises(Exception) as info:
        run_scenario(scenario, profile, 0, **params)
    row = run_point(p)
    assert row["status"] == "error"
    assert row["error"] == f"{type(info.value).__name__}: {info.value}"
    assert row["error"].startswith(message)
    assert all(row[c] is None for c in METRIC_COLUMNS)
    assert row["wall_s"] >= 0

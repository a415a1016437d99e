"""The headline of ``kvmclock simulate`` names every anomaly of a run, the title and the table
say where each run ended: hand-built runs (the simulate run format) and real runs, with the
expected numbers computed from the run data here."""

from __future__ import annotations

from typing import Any

import pytest
from kvmclock.render.text import (
    SKEW_THRESHOLD_NS,
    headline,
    moments_timeline,
    render_simulation,
    run_anomalies,
    side_by_side,
    simulated_span,
)

S = 10**9


def _tl(*changes: tuple[int, bool]) -> list[dict[str, Any]]:
    return [{"t_ns": t, "on": on} for t, on in changes]


def _exact_s(ns: int) -> str:
    """Seconds with nanosecond digits, trailing zeros dropped (independent of the renderer)."""
    whole, frac = str(ns // S), str(ns % S).rjust(9, "0").rstrip("0")
    return f"{whole}.{frac} s" if frac else f"{whole} s"


def _guest(**kw: Any) -> dict[str, Any]:
    lv: dict[str, Any] = {
        "level": 1, "name": "L1", "clocksource": "kvm-clock", "masterclock": None,
        "pvclock_stable": True, "masterclock_timeline": [],
        "pvclock_stable_timeline": _tl((S // 1000, True)), "notifier_calls": 0,
        "timekeeping_updates": 100, "guest_backwards": 0, "guest_backwards_stable": 0,
        "guest_backwards_reanchor": 0, "guest_backwards_clamped": 0,
        "max_reanchor_step_ns": 0, "backwards_events": [], "last_value_clamp_hits": 0,
        "max_cross_vcpu_skew_ns": 0, "tsc_unstable": False,
    }
    lv.update(kw)
    return lv


def _host(**kw: Any) -> dict[str, Any]:
    lv: dict[str, Any] = {
        "level": 0, "name": "L0", "clocksource": "tsc", "masterclock": True,
        "pvclock_stable": None, "masterclock_timeline": _tl((S // 1000, True)),
        "pvclock_stable_timeline": [], "notifier_calls": 100, "timekeeping_updates": 100,
        "guest_backwards": 0, "max_cross_vcpu_skew_ns": None, "last_value_clamp_hits": 0,
        "tsc_unstable": False,
    }
    lv.update(kw)
    return lv


def _run(levels: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "scenario": "t", "seed": 0, "profile": "upstream", "switches": {}, "params": {},
        "duration_ns": 5 * S, "end_ns": 5 * S, "stopped_early": False, "stop_reason": None,
        "levels": levels, "moments": [], "samples": [], "livelock": None,
        "stats": {"events": 1, "guest_reads": 1}, "lifecycle": [],
    }
    run.update(kw)
    return run


def test_clean_run_says_no_anomalies() -> None:
    lines = headline([_run([_host(), _guest()])])
    assert lines[-1].strip().startswith("no anomalies: no backwards steps, skew within 1 us")
    assert not any("!" in line for line in lines)


def test_every_anomaly_is_named() -> None:
    events: list[dict[str, Any]] = [
        {"t_ns": 2 * S, "cpu": 1, "step_ns": 7_000, "stable": True},
        {"t_ns": 3 * S, "cpu": 0, "step_ns": 2_500_000_001, "stable": True}]
    samples: list[dict[str, Any]] = [
        {"t_ns": t * S, "level": 1, "kernel": "L1", "skew_ns": skew, "stable": True}
        for t, skew in ((1, 3), (2, SKEW_THRESHOLD_NS), (3, SKEW_THRESHOLD_NS + 1),
                               (4, 9 * S))]
    guest = _guest(
        guest_backwards=12, guest_backwards_stable=2, guest_backwards_reanchor=9,
        guest_backwards_clamped=1, max_reanchor_step_ns=40, backwards_events=events,
        last_value_clamp_hits=5, max_cross_vcpu_skew_ns=max(s["skew_ns"] for s in samples),
        tsc_unstable=True,
        pvclock_stable_timeline=_tl((S // 1000, True), (3 * S, False), (4 * S, True),
                                    (4 * S + 5, False)),
    )
    host = _host(masterclock_timeline=_tl((S // 1000, True), (3 * S, False)))
    recs = [
        {"vm": "L1", "action": "restore", "t_ns": 4 * S, "completed": True,
         "monotonic_jump_ns": -60 * S, "realtime_jump_ns": 1_904},
        {"vm": "L1", "action": "pause", "t_ns": 4 * S, "completed": True,
         "monotonic_jump_ns": 10, "realtime_jump_ns": -10},  # under the threshold: not named
        {"vm": "L1", "action": "migrate", "t_ns": None, "started_ns": 4_500_000_000,
         "completed": False},
    ]
    moments = [{"t_ns": 2 * S + 1000, "level": 1,
                "text": "L1: tsc: Marking TSC unstable due to clocksource watchdog"}]
    livelock = {"t_ns": 4_750_000_000, "level": 0, "where": "kvm_get_host_time_and_cycles",
                "spins": 100000, "message": "m"}
    run = _run([host, guest], samples=samples, lifecycle=recs, moments=moments,
               livelock=livelock, end_ns=4_750_000_000, stopped_early=True,
               stop_reason="livelock in kvm_get_host_time_and_cycles at 4.75 s")
    got = run_anomalies(run)
    largest = max(e["step_ns"] for e in events)
    over = [s for s in samples if s["skew_ns"] > SKEW_THRESHOLD_NS]
    assert got == [
        "L0: masterclock of its KVM lost at 3.000 s (not back)",
        f"L1: 12 guest clock reads stepped backwards, largest {_exact_s(largest)}, first at "
        f"{events[0]['t_ns'] / S:.3f} s (stable 2, re-anchor 9, clamped 1)",
        f"L1: cross-vCPU skew up to {_exact_s(9 * S)} (threshold 1 us, {len(over)} samples over "
        f"it from {over[0]['t_ns'] / S:.3f} s)",
        "L1: 5 last_value clamp hits (reads raised to an earlier value)",
        "L1: TSC marked unstable at 2.000 s",
        "L1: pvclock stable bit lost at 3.000 s (back at 4.000 s), 4.000 s (not back)",
        "L1 restore at 4.000000 s left MONOTONIC -60.000000000 s against a guest that never "
        "stopped (threshold 1 ms)",
        "L1 migrate began at 4.500000 s, not completed by the end of the run",
        "LIVELOCK detected at 4.750000 s in L0 kvm_get_host_time_and_cycles after 100000 spins",
        "run stopped at 4.750000 s of 5 s asked: livelock in kvm_get_host_time_and_cycles at "
        "4.75 s",
    ]
    lines = headline([run])
    assert [ln.split("! ", 1)[1] for ln in lines if "! " in ln] == got


def test_skew_at_the_threshold_is_not_an_anomaly() -> None:
    run = _run([_host(), _guest(max_cross_vcpu_skew_ns=SKEW_THRESHOLD_NS)])
    assert run_anomalies(run) == []
    run = _run([_host(), _guest(max_cross_vcpu_skew_ns=SKEW_THRESHOLD_NS + 1)])
    assert run_anomalies(run) == ["L1: cross-vCPU skew up to 1.001 us (threshold 1 us)"]


def test_several_guests_at_a_level_are_named() -> None:
    a = _guest(name="a", last_value_clamp_hits=1)
    b = _guest(name="b", tsc_unstable=True)
    moments = [{"t_ns": S, "level": 1, "text": "a: tsc: Marking TSC unstable"},
               {"t_ns": 2 * S, "level": 1, "text": "b: tsc: Marking TSC unstable"}]
    got = run_anomalies(_run([_host(), a, b], moments=moments))
    assert got == ["L1 a: 1 last_value clamp hit (reads raised to an earlier value)",
                   "L1 b: TSC marked unstable at 2.000 s"]


def test_title_and_table_say_where_runs_ended() -> None:
    full = _run([_host(), _guest()], profile="gtod")
    cut = _run([_host(), _guest()], profile="series", end_ns=S, stopped_early=True,
               stop_reason="livelock in kvm_get_host_time_and_cycles at 1 s")
    assert simulated_span([full]) == "5.000000 s simulated"
    assert simulated_span([full, cut]) == "5 s asked, series stopped at 1.000 s (livelock)"
    table = side_by_side([full, cut]).splitlines()
    ended = next(line for line in table if line.startswith("ended at"))
    assert ended.split() == ["ended", "at", "5.000000", "s", "5.000000", "s", "|",
                             "1.000000", "s", "stopped", "1.000000", "s", "stopped"]
    text = render_simulation("t", None, 0, [full, cut])
    assert text.splitlines()[0] == (
        "kvmclock simulate: scenario t, seed 0, 5 s asked, series stopped at 1.000 s "
        "(livelock), profiles gtod, series")


def test_key_moments_show_the_first_backwards_step_and_skew() -> None:
    events = [{"t_ns": 3 * S, "cpu": 2, "step_ns": 5 * S, "stable": True}]
    samples = [{"t_ns": 2 * S, "level": 1, "kernel": "L1", "skew_ns": 4_000, "stable": True}]
    run = _run([_host(), _guest(guest_backwards=3, backwards_events=events,
                                max_cross_vcpu_skew_ns=4_000)], samples=samples)
    lines = moments_timeline([run])
    assert lines == [
        "    2.000000 s  upstream L1  L1: cross-vCPU skew 4 us (over 1 us)",
        "    3.000000 s  upstream L1  L1: first guest clock step backwards (5 s on vCPU 2; 3 in "
        "all)",
    ]


# ---------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def real() -> dict[str, list[dict[str, Any]]]:
    from kvmclock.sim import run_scenario

    return {
        name: [run_scenario(name, p, seed=0) for p in ("gtod", "series", "upstream")]
        for name in ("tsc-sync", "patch09-hang")
    }


def test_tsc_sync_headline_names_backwards_steps_and_skew(
    real: dict[str, list[dict[str, Any]]],
) -> None:
    runs = real["tsc-sync"]
    text = render_simulation("tsc-sync", None, 0, runs)
    head = text.split("Headline:")[1].split("Key moments:")[0]
    for run in runs:
        lv = next(lv for lv in run["levels"] if lv["level"] == 1)
        n = lv["guest_backwards"]
        assert n > 0
        events = lv["backwards_events"]
        largest = max([lv["max_reanchor_step_ns"], *(e["step_ns"] for e in events)])
        skews = [s["skew_ns"] for s in run["samples"] if s["kernel"] == lv["name"]]
        assert max(skews) == lv["max_cross_vcpu_skew_ns"] > S  # seconds of skew
        over = [s for s in run["samples"] if s["skew_ns"] > SKEW_THRESHOLD_NS]
        profile_block = head.split(f"{run['profile']}: ", 1)[1]
        assert (
            f"! L1: {n:,} guest clock reads stepped backwards, largest {_exact_s(largest)}, "
            f"first at {events[0]['t_ns'] / S:.3f} s (stable {lv['guest_backwards_stable']}, "
            f"re-anchor {lv['guest_backwards_reanchor']}, clamped "
            f"{lv['guest_backwards_clamped']})" in profile_block
        )
        assert (
            f"! L1: cross-vCPU skew up to {_exact_s(max(skews))} (threshold 1 us, {len(over)} "
            f"sample{'s' if len(over) > 1 else ''} over it from {over[0]['t_ns'] / S:.3f} s)"
            in profile_block
        )
    # the key moments name the first step back too
    assert "first guest clock step backwards" in text.split("Key moments:")[1]


def test_patch09_hang_title_says_where_series_stopped(
    real: dict[str, list[dict[str, Any]]],
) -> None:
    runs = real["patch09-hang"]
    stopped = [r for r in runs if r["stopped_early"]]
    assert [r["profile"] for r in stopped] == ["series"]
    series = stopped[0]
    assert series["end_ns"] < series["duration_ns"] and series["livelock"] is not None
    text = render_simulation("patch09-hang", None, 0, runs)
    first = text.splitlines()[0]
    assert (
        f"{series['duration_ns'] // S} s asked, series stopped at "
        f"{series['end_ns'] / S:.3f} s (livelock)" in first
    )
    assert "simulated" not in first
    ended = next(line for line in text.splitlines() if line.startswith("ended at"))
    assert ended.count(f"{series['end_ns'] / S:.6f} s stopped") == len(series["levels"])
    assert f"! run stopped at {series['end_ns'] / S:.6f} s of " in text
    assert series["stop_reason"] in text

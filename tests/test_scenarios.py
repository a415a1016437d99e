"""Built-in scenarios: the headline in ``nested``, the others, the run dict schema."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from kvmclock.errors import ScenarioError
from kvmclock.sim import SCENARIOS, format_trace_lines, run_scenario
from kvmclock.trace import parse_lines

NS = 1_000_000_000
LEVEL_KEYS = {
    "level",
    "name",
    "clocksource",
    "masterclock",
    "pvclock_stable",
    "masterclock_timeline",
    "pvclock_stable_timeline",
    "masterclock_updates",
    "notifier_calls",
    "gtod_copies",
    "guest_backwards",
    "max_cross_vcpu_skew_ns",
    "last_value_clamp_hits",
    "timekeeping_updates",
    "vcpus",
    "clock_definitions",
}
RUN_KEYS = {
    "scenario",
    "seed",
    "profile",
    "params",
    "duration_ns",
    "end_ns",
    "stopped_early",
    "stop_reason",
    "levels",
    "moments",
    "samples",
    "livelock",
    "stats",
}


@pytest.fixture(scope="module")
def nested() -> dict[str, dict[str, Any]]:
    return {p: run_scenario("nested", p, seed=0, trace=True) for p in ("gtod", "series")}


def _first(timeline: list[dict[str, Any]], value: bool) -> int | None:
    return next((e["t_ns"] for e in timeline if e["on"] == value), None)


def test_nested_schema_and_json(nested: dict[str, dict[str, Any]]) -> None:
    for profile, run in nested.items():
        assert RUN_KEYS | {"trace"} <= set(run)
        assert run["profile"] == profile and run["scenario"] == "nested"
        assert [lv["level"] for lv in run["levels"]] == [0, 1, 2]
        for lv in run["levels"]:
            assert LEVEL_KEYS <= set(lv)
            assert set(lv["clock_definitions"]) == {
                "max_abs_a_minus_b_ns",
                "max_abs_a_minus_c_ns",
                "max_abs_b_minus_c_ns",
            }
        assert run["levels"][0]["pvclock_stable"] is None
        assert run["levels"][2]["masterclock"] is None
        json.dumps(run)
        times = [m["t_ns"] for m in run["moments"]]
        assert times == sorted(times)


def test_nested_headline_gtod(nested: dict[str, dict[str, Any]]) -> None:
    run = nested["gtod"]
    l0, l1, l2 = run["levels"]
    # L2 never sees the stable bit; L1's KVM never enables masterclock (host clock PVCLOCK)
    assert not any(e["on"] for e in l2["pvclock_stable_timeline"])
    assert not any(e["on"] for e in l1["masterclock_timeline"])
    assert all(s["stable"] is False for s in run["samples"] if s["level"] == 2)
    # L1 itself is stable until L0's watchdog marks the TSC unstable, then not
    t_on = _first(l1["pvclock_stable_timeline"], True)
    t_off = _first(l1["pvclock_stable_timeline"], False)
    assert t_on is not None and t_off is not None and 5 * NS <= t_off < 5 * NS + 20_000_000
    assert l0["clocksource"] == "hpet" and l0["masterclock"] is False
    # one notifier call (and one shadow copy) per timekeeping update
    for lv in (l0, l1):
        assert lv["notifier_calls"] == lv["gtod_copies"]
        assert (
            lv["timekeeping_updates"] - 5 <= lv["notifier_calls"] <= lv["timekeeping_updates"] + 1
        )


def test_nested_headline_series(nested: dict[str, dict[str, Any]]) -> None:
    run = nested["series"]
    l0, l1, l2 = run["levels"]
    on = _first(l2["pvclock_stable_timeline"], True)
    off = _first(l2["pvclock_stable_timeline"], False)
    assert on is not None and on < NS
    assert off is not None and 5 * NS <= off
    l0_off = _first(l0["masterclock_timeline"][1:], False)
    l1_off = _first(l1["masterclock_timeline"][1:], False)
    assert l0_off is not None and l1_off is not None and l0_off <= l1_off <= off
    # within one vCPU entry per level: the next L1 tick entry, then the next L2 one (HZ 250)
    assert off - 5 * NS <= 2 * 4_000_000 + 2_000_000
    assert l2["pvclock_stable"] is False and l1["masterclock"] is False
    # the change chain fired at registration and on real changes only, never per tick: once
    # each at registration, then once for L0's switch to hpet and once for L1's kvm-clock
    # stable flip (patch 10)
    assert l0["notifier_calls"] == 2 and l1["notifier_calls"] == 2
    assert l0["gtod_copies"] == 0 == l1["gtod_copies"]
    assert l0["timekeeping_updates"] > 1500
    # the L1 loss went through L1's notifier chain (patch 10 flip -> process_clocksource_change)
    texts = [m["text"] for m in run["moments"] if m["level"] == 1]
    assert any("clocksource change notifier" in t for t in texts)
    assert run["livelock"] is None
    # no guest read went backwards at any level
    assert all(lv["guest_backwards"] == 0 for lv in run["levels"])


def test_nested_trace_text(nested: dict[str, dict[str, Any]]) -> None:
    for profile, run in nested.items():
        lines = format_trace_lines(run)
        assert lines
        parsed = parse_lines(lines)
        assert parsed.skipped == [] and len(parsed.records) == len(lines)
        want = "hostclock tsc" if profile == "gtod" else "hostclock stable 1"
        assert any("kvm_update_master_clock" in ln and want in ln for ln in lines)
        if profile == "gtod":  # L1's KVM on a kvm-clock (PVCLOCK) host: unmatched symbol
            assert any(ln.startswith("L1 ") and "hostclock 0x2" in ln for ln in lines)


def test_nested_deterministic() -> None:
    a = run_scenario("nested", "series", seed=3, duration_s=1)
    b = run_scenario("nested", "series", seed=3, duration_s=1)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = run_scenario("nested", "series", seed=4, duration_s=1)
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)


@pytest.mark.parametrize("profile", ["gtod", "series"])
def test_tsc_sync(profile: str) -> None:
    run = run_scenario("tsc-sync", profile)
    l0, l1 = run["levels"]
    assert [e["on"] for e in l0["masterclock_timeline"]] == [False, True, False, True]
    t_off = l0["masterclock_timeline"][2]["t_ns"]
    t_on = l0["masterclock_timeline"][3]["t_ns"]
    assert 3 * NS <= t_off < 3 * NS + 20_000_000 and 4 * NS <= t_on < 4 * NS + 20_000_000
    assert l1["vcpus"] == 5  # hotplugged vCPU
    assert l1["guest_backwards_clamped"] == 0


@pytest.mark.parametrize("profile", ["gtod", "series"])
def test_unstable_tsc(profile: str) -> None:
    run = run_scenario("unstable-tsc", profile)
    l0, l1 = run["levels"]
    assert l0["tsc_unstable"] and l0["clocksource"] == "hpet"
    assert any("backwards TSC" in m["text"] for m in run["moments"])
    assert l0["masterclock"] is False and l1["pvclock_stable"] is False
    # without the stable bit the last_value clamp keeps the guest monotonic
    assert l1["guest_backwards_clamped"] == 0


@pytest.mark.parametrize("profile", ["gtod", "series", "upstream"])
def test_set_clock(profile: str) -> None:
    run = run_scenario("set-clock", profile)
    texts = [m["text"] for m in run["moments"]]
    assert any("flags=0 " in t and "(diff 0 ns)" in t for t in texts)
    if profile == "upstream":  # switch kvm_clock_realtime (5.16)
        assert any("flags=REALTIME" in t and "(advanced 1000000000 ns)" in t for t in texts)
        assert any("KVM_GET_CLOCK" in t and "flags=0xe" in t for t in texts)
    else:  # 4.13 refuses the flag and reports neither realtime nor host TSC
        assert any("REALTIME refused" in t and "needs Linux 5.16" in t for t in texts)
        assert any("KVM_GET_CLOCK" in t and "flags=0x2 realtime=0 host_tsc=0" in t for t in texts)


def test_patch09_livelock_detected_only_with_fault() -> None:
    hung = run_scenario("patch09-hang", "series")
    assert hung["livelock"] is not None
    assert hung["livelock"]["where"] == "kvm_get_host_time_and_cycles"
    assert hung["livelock"]["spins"] == 100_000 and hung["livelock"]["level"] == 0
    assert hung["livelock"]["t_ns"] == pytest.approx(NS, abs=10_000_000)
    assert hung["end_ns"] < hung["duration_ns"]
    # where the run stopped and why, in the run itself
    assert hung["stopped_early"] is True
    assert hung["stop_reason"] == "livelock in kvm_get_host_time_and_cycles at 1 s"
    clean = run_scenario("patch09-hang", "series", fault="none")
    assert clean["livelock"] is None and clean["end_ns"] == clean["duration_ns"]
    assert clean["stopped_early"] is False and clean["stop_reason"] is None
    assert any("inside a tk_core.seq read section" in m["text"] for m in clean["moments"])
    assert run_scenario("patch09-hang", "gtod")["livelock"] is None


def test_run_lists_are_named_objects() -> None:
    """Every list of the run holds objects with named fields (no unnamed arrays): samples
    name their guest kernel, backwards events their vCPU and step, timelines their state."""
    run = run_scenario("tsc-sync", "series", trace=True)
    l0, l1 = run["levels"]
    assert run["samples"] and all(
        set(s) == {"t_ns", "level", "kernel", "skew_ns", "stable"} and s["kernel"] == "L1"
        for s in run["samples"]
    )
    # one row per sample time (sample_ms = 10 by default) for the one guest
    times = [s["t_ns"] for s in run["samples"]]
    assert len(set(times)) == len(times)
    assert all(b - a == 10_000_000 for a, b in itertools.pairwise(times))
    # cause: the scenario entry whose kernel calls gave it; detail: a printk's next lines
    assert all({"t_ns", "level", "text"} <= set(m) <= {"t_ns", "level", "text", "cause",
                                                       "detail"} for m in run["moments"])
    assert any("cause" in m for m in run["moments"])
    for tl in (l0["masterclock_timeline"], l1["pvclock_stable_timeline"]):
        assert tl and all(set(e) == {"t_ns", "on"} and isinstance(e["on"], bool) for e in tl)
    ev = l1["backwards_events"]
    assert len(ev) == min(100, l1["guest_backwards"]) and ev
    for e in ev:
        assert set(e) == {"t_ns", "cpu", "step_ns", "stable"}
        assert 0 <= e["cpu"] < l1["vcpus"] and e["step_ns"] > 0 and isinstance(e["stable"], bool)
    assert run["trace"] and all(
        set(r) == {"t_ns", "level", "comm", "pid", "cpu", "event", "fields"} for r in run["trace"]
    )
    assert run["stopped_early"] is False and run["stop_reason"] is None


def test_scenarios_table() -> None:
    assert {"nested", "tsc-sync", "unstable-tsc", "set-clock", "patch09-hang"} <= set(SCENARIOS)
    for name, s in SCENARIOS.items():
        assert s.name == name and "\n" not in s.description and s.description
        # the duration is a parameter, or follows the parameters (the lifecycle cases: a
        # restore after shelf_s must stay inside the run whatever shelf_s is)
        duration = s.file.model.run.duration_s
        assert "duration_s" in s.params or (isinstance(duration, str) and duration[0] == "=")


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("nope", "gtod"), {}, "nested"),
        (("nested", "nope"), {}, "gtod, series, upstream"),
        (("nested", "gtod"), {"bogus": 1}, "valid:"),
        (("nested", "gtod"), {"l1_vcpus": 0}, "l1_vcpus"),
        (("tsc-sync", "gtod"), {"vcpus": 0}, "vcpus"),
        (("nested", "gtod"), {"duration_s": -1}, "duration_s"),
        (("nested", "gtod"), {"tsc_khz": 0}, "tsc_khz"),
        (("nested", "gtod", 1.5), {}, "seed"),
        (("patch09-hang", "series"), {"fault": "x"}, "patch09-missing-do"),
    ],
)
def test_validation(args: tuple[Any, ...], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ScenarioError, match=match) as info:
        run_scenario(*args, **kwargs)
    assert isinstance(info.value, ValueError)

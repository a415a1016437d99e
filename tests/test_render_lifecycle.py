"""The lifecycle block of ``kvmclock simulate``'s text and plot, from hand-written records."""

from __future__ import annotations

import importlib.util

import pytest
from kvmclock.render.text import fmt_signed_ns, lifecycle_lines, render_simulation

REC = {
    "t_ns": 61_000_000_000,
    "started_ns": 1_000_000_000,
    "action": "restore",
    "vm": "vm0",
    "host": "h1",
    "recipe": "firecracker",
    "downtime_ns": 60_000_000_000,
    "monotonic_jump_ns": -60_000_000_000,
    "realtime_jump_ns": -60_000_000_007,
    "monotonic_step_ns": 0,
    "realtime_step_ns": 7,
    "masterclock_after": False,
    "stable_after": False,
    "masterclock_back_ns": 250_000_000,
    "stable_back_ns": None,
    "cross_vcpu_skew_ns": 12,
    "guest_stopped_seen": False,
    "guest_clocksource": "kvm-clock",
    "reason": "vCPU 1's TSC write opened generation 2",
    "rules": [
        "vCPU 0's TSC write opened generation 2",
        "KVM_SET_TSC_KHZ 2593992 kHz on a 2594000 kHz host: no scaling",
    ],
}


def _run(records: list[dict[str, object]]) -> dict[str, object]:
    return {"profile": "upstream", "levels": [], "lifecycle": records, "duration_ns": 70 * 10**9}


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "+0 ns"),
        (-3, "-3 ns"),
        (999, "+999 ns"),
        (-999, "-999 ns"),
        (1_000, "+0.000001000 s"),
        (-60_000_000_000, "-60.000000000 s"),
        (60_000_000_001, "+60.000000001 s"),
        (None, "-"),
    ],
)
def test_fmt_signed_ns(ns: int | None, text: str) -> None:
    assert fmt_signed_ns(ns) == text


def test_lifecycle_lines_name_every_field() -> None:
    lines = lifecycle_lines([_run([REC])])
    assert lines[0] == (
        "upstream: vm0 restore (firecracker) on host h1 at 61.000000 s, guest stopped 60.000000 s"
    )
    assert "MONOTONIC -60.000000000 s, REALTIME -60.000000007 s" in lines[1]
    assert "moved while stopped: MONOTONIC +0 ns, REALTIME +7 ns" in lines[1]
    assert "masterclock off, back after 0.250000 s" in lines[2]
    assert "stable bit off (not back within the run)" in lines[2]
    assert "cross-vCPU skew 12 ns" in lines[2]
    assert "PVCLOCK_GUEST_STOPPED never seen by the guest" in lines[2]
    assert lines[3] == "  why: vCPU 1's TSC write opened generation 2"
    # of the rules, only the TSC-frequency one is shown (the reason already names the rest)
    assert lines[4:] == ["  tsc: KVM_SET_TSC_KHZ 2593992 kHz on a 2594000 kHz host: no scaling"]


def test_same_frequency_rule_is_not_shown() -> None:
    rec = {**REC, "rules": ["KVM_SET_TSC_KHZ 2593992 kHz on a 2593992 kHz host: same frequency"]}
    assert not any("tsc:" in line for line in lifecycle_lines([_run([rec])]))


def test_lifecycle_on_and_unknown_stopped_flag() -> None:
    rec = {**REC, "masterclock_after": True, "stable_after": True, "guest_stopped_seen": None}
    lines = lifecycle_lines([_run([rec])])
    assert "masterclock on, stable bit on" in lines[2]
    assert "GUEST_STOPPED" not in lines[2]


def test_no_records_no_block() -> None:
    text = render_simulation("x", None, 0, [_run([])])
    assert "Lifecycle" not in text
    text = render_simulation("x", None, 0, [_run([REC])])
    assert "Lifecycle (per VM, against a guest that never stopped; negative = behind):" in text


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_plot_marks_lifecycle(tmp_path: object) -> None:
    from pathlib import Path

    from kvmclock.render.plot import write_plot

    out = Path(str(tmp_path)) / "p.png"
    write_plot([_run([REC])], str(out), title="t")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


# ------------------------------------------------------------------ incomplete records, stops
def test_incomplete_record_is_one_line_with_its_reason() -> None:
    rec = {
        **REC,
        "action": "migrate",
        "recipe": "qemu",
        "host": "dst",
        "completed": False,
        "t_ns": None,
        "started_ns": 2_000_000_000,
        "stopped_ns": 2_500_000_000,
        "downtime_ns": None,
        "monotonic_jump_ns": None,
        "realtime_jump_ns": None,
        "monotonic_step_ns": None,
        "realtime_step_ns": None,
        "reason": "not completed: the run ended 1.200 s into the downtime",
        "rules": [],
    }
    lines = lifecycle_lines([_run([rec])])
    assert lines == [
        "upstream: vm0 migrate (qemu) on host dst began at 2.000000 s, not completed; "
        "guest stopped at 2.500000 s, not running at the end",
        "  why: the run ended 1.200 s into the downtime",
    ]
    # cut short in the precopy: the guest never stopped
    lines = lifecycle_lines([_run([{**rec, "stopped_ns": None}])])
    assert lines[0].endswith("began at 2.000000 s, not completed; the guest still ran at the end")


def test_completed_record_with_precopy_says_when_the_guest_stopped() -> None:
    rec = {**REC, "action": "migrate", "started_ns": 2_000_000_000,
           "stopped_ns": 2_500_000_000, "t_ns": 2_800_000_000, "downtime_ns": 300_000_000,
           "completed": True}
    first = lifecycle_lines([_run([rec])])[0]
    assert first == (
        "upstream: vm0 migrate (firecracker) on host h1 at 2.800000 s, guest stopped "
        "0.300000 s (began at 2.000000 s; the guest ran until 2.500000 s)"
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"stopped_ns": 7, "t_ns": 100, "downtime_ns": 50, "started_ns": 1}, 7),
        ({"stopped_ns": None, "t_ns": None, "started_ns": 1}, None),
        # runs recorded before stopped_ns existed: t_ns - downtime_ns, not the precopy start
        ({"t_ns": 2_800, "downtime_ns": 300, "started_ns": 2_000}, 2_500),
        ({"t_ns": None, "downtime_ns": None, "started_ns": 2_000}, 2_000),
    ],
)
def test_stopped_at(fields: dict[str, object], expected: int | None) -> None:
    from kvmclock.render.text import stopped_at

    assert stopped_at(fields) == expected


# ------------------------------------------------------------------ headline per guest kernel
def _tl(changes: list[list[object]] | None) -> list[dict[str, object]]:
    return [{"t_ns": t, "on": on} for t, on in changes or []]


def _level(level: int, name: str, stable: list[list[object]] | None,
           master: list[list[object]] | None = None) -> dict[str, object]:
    return {
        "level": level, "name": name, "clocksource": "kvm-clock" if level else "tsc",
        "masterclock": None if master is None else bool(master[-1][1]),
        "pvclock_stable": None if stable is None else bool(stable[-1][1]) if stable else False,
        "pvclock_stable_timeline": _tl(stable),
        "masterclock_timeline": _tl(master),
        "notifier_calls": 3 * level, "timekeeping_updates": 10 + level,
    }


def test_headline_names_every_guest_kernel() -> None:
    from kvmclock.render.text import headline

    s = 10**9
    run = {
        "profile": "upstream", "duration_ns": 14 * s, "switches": {}, "lifecycle": [],
        "levels": [
            _level(0, "host", None, [[s // 1000, True], [12 * s, False], [12 * s, True]]),
            _level(1, "before-fix", [[s // 1000, True], [12 * s, False]]),
            _level(1, "fixed", [[s // 1000, True], [12 * s, False], [12 * s, True]]),
        ],
    }
    assert headline([run])[:4] == [
        "upstream: L1 before-fix: pvclock stable bit set from 0.001 s, lost at 12.000 s",
        "          L1 fixed: pvclock stable bit set from 0.001 s, lost at 12.000 s; "
        "set from 12.000 s to the end",
        "          notifier calls / timekeeping updates: L0 0/10, L1 before-fix 3/11, "
        "L1 fixed 3/11",
        "          masterclock of KVM at L0: set from 0.001 s, lost at 12.000 s; "
        "set from 12.000 s to the end",
    ]


def test_headline_nested_deepest_first_unnamed_levels() -> None:
    from kvmclock.render.text import headline

    s = 10**9
    run = {
        "profile": "gtod", "duration_ns": 10 * s, "switches": {}, "lifecycle": [],
        "levels": [
            _level(0, "L0", None, [[s // 1000, True], [5 * s, False]]),
            _level(1, "L1", [[s // 1000, True], [5 * s, False]], [[2 * s // 1000, False]]),
            _level(2, "L2", [[2 * s // 1000, False]]),
        ],
    }
    lines = headline([run])
    assert lines[:2] == [
        "   gtod: L2 pvclock stable bit never set",
        "         L1 pvclock stable bit set from 0.001 s, lost at 5.000 s",
    ]
    assert "         masterclock of KVM at L1: never set" in lines


def test_headline_per_vm_masterclock_timelines() -> None:
    from kvmclock.render.text import headline

    s = 10**9
    host = _level(0, "src", None, [[s // 1000, True]])
    dst = _level(0, "dst", None, None)
    host["masterclock_timelines"] = {"a": _tl([[s // 1000, True], [2 * s, False]]),
                                     "b": _tl([[3 * s, True]])}
    run = {"profile": "upstream", "duration_ns": 4 * s, "switches": {}, "lifecycle": [],
           "levels": [host, dst, _level(1, "a", [[s // 1000, True]])]}
    lines = headline([run])
    assert (
        "          masterclock of KVM at L0 src for VM a: set from 0.001 s, lost at 2.000 s"
        in lines
    )
    assert "          masterclock of KVM at L0 src for VM b: set from 3.000 s to the end" in lines
    # two hosts: each named; a host that ran no VM has no masterclock line
    assert not any("at L0 dst" in line for line in lines)
    assert "L0 src 0/10, L0 dst 0/10, L1 3/11" in lines[1]


def test_headline_physical_host_only() -> None:
    from kvmclock.render.text import headline

    run = {"profile": "gtod", "duration_ns": 10**9, "switches": {}, "levels": [
        _level(0, "L0", None, None)]}
    assert headline([run])[0] == "   gtod: L0 pvclock stable bit no pvclock (physical host)"


# ------------------------------------------------------------------ several guests at a level
@pytest.fixture(scope="module")
def multi_guest_runs() -> dict[str, dict[str, object]]:
    from kvmclock.sim import run_scenario

    return {
        name: run_scenario(name, "upstream", seed=0, trace=True)
        for name in ("restore-shelf", "ch-restore")
    }


def test_builtins_have_named_sample_rows(multi_guest_runs: dict[str, dict[str, object]]) -> None:
    for run in multi_guest_runs.values():
        rows = run["samples"]
        names = {lv["name"] for lv in run["levels"]}  # type: ignore[attr-defined]
        assert isinstance(rows, list) and rows and all(r["kernel"] in names for r in rows)


def test_perfetto_of_several_guests(multi_guest_runs: dict[str, dict[str, object]]) -> None:
    import json

    from kvmclock.render.perfetto import perfetto_trace

    doc = perfetto_trace([multi_guest_runs["ch-restore"]])
    json.dumps(doc)
    evs = doc["traceEvents"]
    counters = {(e["pid"], e["name"]) for e in evs if e["ph"] == "C"}
    for vm in ("before-fix", "fixed"):
        assert (1001, f"cross-vCPU skew ns {vm}") in counters
        assert (1001, f"pvclock stable {vm}") in counters
    names = {e["args"]["name"] for e in evs if e["name"] == "process_name"}
    assert "upstream L1 before-fix, fixed" in names
    life = [e for e in evs if e.get("cat") == "lifecycle"]
    assert sorted(e["name"] for e in life) == ["before-fix restore", "fixed restore"]
    recs = multi_guest_runs["ch-restore"]["lifecycle"]
    assert isinstance(recs, list)
    when = {f"{r['vm']} restore": r["t_ns"] / 1000 for r in recs}  # ts in microseconds
    assert all(e["pid"] == 1001 and e["ts"] == when[e["name"]] for e in life)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_plot_of_several_guests(
    multi_guest_runs: dict[str, dict[str, object]], tmp_path: object
) -> None:
    from pathlib import Path

    from kvmclock.render.plot import write_plot

    for name, run in multi_guest_runs.items():
        out = Path(str(tmp_path)) / f"{name}.png"
        write_plot([run], str(out), title=name)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("scenario", ["restore-shelf", "ch-restore"])
def test_cli_plot_and_perfetto_of_several_guests(
    scenario: str, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """The review's crash: exit 70 on a level with several guests."""
    from pathlib import Path

    from kvmclock import cli

    pf = Path(str(tmp_path)) / "t.json"
    args = ["simulate", "--scenario", scenario, "--perfetto", str(pf)]
    if importlib.util.find_spec("matplotlib") is not None:
        args += ["--plot", str(Path(str(tmp_path)) / "p.png")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "Headline:" in out and pf.exists()

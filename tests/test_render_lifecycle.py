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

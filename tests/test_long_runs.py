"""What a long run shows: the clock definitions are not sampled while their host is
suspended, a trace the run cut says so in its ftrace header, --json says where it wrote, a
day-long --duration is accepted and a periodic-tick run too long for the tick budget is
refused before it runs."""

from __future__ import annotations

from pathlib import Path

import kvmclock.limits
import pytest
from kvmclock.render.ftrace import trace_text
from kvmclock.sim import run_scenario
from test_cli import assert_usage_error, run

MS = 1_000_000


@pytest.mark.parametrize("profile", ["gtod", "series", "upstream"])
def test_clock_definitions_skip_a_suspended_host(profile: str) -> None:
    """The host suspends for 1200 s with a VM: while it sleeps its timekeeper (definition A)
    is frozen and nothing runs, so the definitions are sampled only while it runs; A, B and
    C then stay within a millisecond of each other (before, the frozen A against the
    advancing record read 1,099,511,592,516 ns apart: about 2**40)."""
    r = run_scenario("host-suspend", profile, 0, sleep_s=1200)
    host = next(lv for lv in r["levels"] if lv["level"] == 0)
    defs = host["clock_definitions"]
    assert defs["max_abs_a_minus_b_ns"] is not None
    assert all(v is None or v < MS for v in defs.values()), defs


def test_a_cut_trace_says_so_in_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvmclock.limits, "TRACE_CAP", 5)
    r = run_scenario("set-clock", "upstream", 0, trace=True)
    dropped = r["trace_dropped"]
    assert len(r["trace"]) == 5 and dropped > 0
    header = [ln for ln in trace_text(r, "set-clock", 0).splitlines() if "entries-" in ln]
    assert header == [f"# entries-in-buffer/entries-written: 5/{5 + dropped}"]
    monkeypatch.undo()
    full = run_scenario("set-clock", "upstream", 0, trace=True)
    assert "trace_dropped" not in full or not full["trace_dropped"]
    assert len(full["trace"]) == 5 + dropped


def test_json_file_is_said(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    p = run("simulate", "--scenario", "set-clock", "--profile", "upstream", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert f"wrote {out}" in p.stderr.splitlines()


def test_a_week_is_a_valid_duration_and_the_tick_budget_refuses_a_periodic_week() -> None:
    """--duration takes a year at most; a periodic-tick week of nested (3 kernels at 250 Hz:
    453,600,000 ticks) is refused before it runs by the scenario's tick budget, naming
    run.duration_s and nohz."""
    p = run("simulate", "--duration", "604800", "--profile", "upstream")
    assert_usage_error(p, "run.duration_s", "453600000 periodic ticks", "nohz = true")
    p = run("simulate", "--duration", "31536001")
    assert_usage_error(p, "duration", "(0, 31536000]")


def test_a_nohz_week_runs() -> None:
    r = run_scenario("nested", "upstream", 0, duration_s=604_800, nohz=True,
                     sample_ms=3_600_000, invariant_tsc=True)
    assert r["end_ns"] == 604_800 * 10**9 and r["stop_reason"] is None
    # L1 and L2 sampled every simulated hour from the start (2 ms): at 2 ms + k h, k = 1..167
    # (the 168th hour's sample would fall 2 ms after the end)
    assert len(r["samples"]) == 2 * 167


def test_watchdog_read_status_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 6.18 watchdog keeps the first READ_STATUS_CAP cs_watchdog_read results and counts
    them all (a day of guest watchdog passes would otherwise keep 172,800 per kernel)."""
    monkeypatch.setattr(kvmclock.limits, "READ_STATUS_CAP", 3)
    from kvmclock.kernel import Kernel
    from kvmclock.machine import PhysicalMachine, World

    k = Kernel(PhysicalMachine(World(0), 2, tsc_khz=2_593_992), "upstream")
    k.boot()
    k.world.run_until(10 * 10**9 + 1)
    wd = k.watchdog
    assert wd.running and wd.read_status_count == 20  # every 0.5 s for 10 s
    assert len(wd.read_status) == 3

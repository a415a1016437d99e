"""Clocksource watchdog: a drifting or jumping TSC is marked unstable within the computed number
of intervals (2017 threshold NSEC_PER_SEC >> 4 per 0.5 s interval), a good one is not; the kernel
switches to hpet and (series) the clocksource change chain fires exactly once for that switch."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalCpu, PhysicalMachine, World
from kvmclock.timekeeping import CLOCK_SOURCE_UNSTABLE, NOTIFY_DONE, WATCHDOG_THRESHOLD

NSEC = 10**9
INTERVAL = NSEC // 2  # WATCHDOG_INTERVAL at HZ=250: 125 jiffies of 4 ms


def host(
    drift_ppm: Any = 0,
    profile: str = "series",
    cpus: list[PhysicalCpu] | None = None,
    seed: int = 0,
) -> tuple[World, PhysicalMachine, Kernel]:
    w = World(seed)
    m = PhysicalMachine(w, cpus if cpus is not None else 2, drift_ppm=drift_ppm)
    k = Kernel(m, profile)
    k.boot()
    return w, m, k


def unstable_at(w: World) -> int | None:
    for e in w.events:
        if e["kind"] == "clocksource_unstable":
            return int(e["t_ns"])
    return None


def expected_first_detection(per_interval_skew_ns: Fraction) -> int | None:
    """The first run only initialises cs_last/wd_last; run n >= 2 compares one interval."""
    if abs(per_interval_skew_ns) > WATCHDOG_THRESHOLD:
        return 2 * INTERVAL
    return None


@pytest.mark.parametrize("ppm", [200_000, -300_000, 126_000, 124_000, 100, 0])
def test_drifting_tsc_detected_iff_over_threshold(ppm: int) -> None:
    w, _m, k = host(drift_ppm=ppm)
    w.run_until(10 * NSEC)
    skew = Fraction(INTERVAL) * ppm / 1_000_000  # TSC-measured minus true ns per interval
    expected = expected_first_detection(skew)
    assert unstable_at(w) == expected
    if expected is None:
        assert k.timekeeper.clock.name == "tsc"
        assert k.counters["watchdog.unstable"] == 0
        assert k.counters["watchdog.ok"] == 19  # 20 runs in 10 s, the first initialises
    else:
        assert k.counters["watchdog.unstable"] == 1
        assert k.tsc_unstable


def test_tsc_jump_detected_at_first_run_after_it() -> None:
    w = World(0)
    jump_at = 3_210_000_000
    cpus = [PhysicalCpu(w, i, 2_000_000, boot_offset=10**9) for i in range(2)]
    for c in cpus:
        c.add_tsc_jump(jump_at, 2_000_000 * 100)  # +100 ms worth of cycles
    m = PhysicalMachine(w, cpus)
    k = Kernel(m, "series")
    k.boot()
    w.run_until(10 * NSEC)
    expected = -(-jump_at // INTERVAL) * INTERVAL  # next watchdog expiry after the jump
    assert unstable_at(w) == expected


def test_unsynchronised_cpus_detected_by_cpu_rotation() -> None:
    w = World(0)
    khz = 2_000_000
    off_cycles = khz * 80  # CPU1 is 80 ms ahead of CPU0
    cpus = [
        PhysicalCpu(w, 0, khz, boot_offset=10**9),
        PhysicalCpu(w, 1, khz, boot_offset=10**9 + off_cycles),
    ]
    m = PhysicalMachine(w, cpus)
    k = Kernel(m, "gtod")
    k.boot()
    w.run_until(5 * NSEC)
    # run 1 on CPU0 initialises, run 2 on CPU1 sees +80 ms over 0.5 s: unstable at t = 1 s
    assert unstable_at(w) == 2 * INTERVAL
    texts = [e["text"] for e in w.events if e["kind"] == "printk"]
    assert (
        "clocksource: timekeeping watchdog on CPU1: Marking clocksource 'tsc' as unstable "
        "because the skew is too large:" in texts
    )
    assert "tsc: Marking TSC unstable due to clocksource watchdog" in texts
    assert texts[-1] == "clocksource: Switched to clocksource hpet"


def test_switch_to_hpet_fires_change_chain_exactly_once() -> None:
    w, _m, k = host(drift_ppm=250_000, profile="series")
    calls: list[int] = []
    k.clocksource_changes_register_notifier(lambda a, d: calls.append(w.now_ns) or NOTIFY_DONE)
    assert len(calls) == 1  # the registration call
    changes = k.counters["clocksource_changes"]
    tk = k.timekeeper
    before = tk.ktime_get_ns()
    w.run_until(5 * NSEC)
    assert tk.clock.name == "hpet"
    assert k.counters["clocksource_changes"] == changes + 1
    assert calls == [0, 2 * INTERVAL]
    tsc = k.clocksources["tsc"]
    assert tsc.rating == 0 and tsc.flags & CLOCK_SOURCE_UNSTABLE
    assert k.clocksource_list[0].name == "hpet" and k.clocksource_list[-1] is tsc
    assert tk.ktime_get_ns() > before
    assert tsc not in k.watchdog.watchdog_list and not k.watchdog.running


def test_gtod_profile_switch_does_not_use_change_chain() -> None:
    w, _m, k = host(drift_ppm=250_000, profile="gtod")
    w.run_until(2 * NSEC)
    assert k.timekeeper.clock.name == "hpet"
    assert k.counters["notifier_calls.clocksource_changes"] == 0
    assert k.counters["notifier_calls.pvclock_gtod"] == k.counters["timekeeping_updates"]


def test_mark_tsc_unstable_reselects() -> None:
    w, _m, k = host()
    w.run_until(NSEC + 123)
    k.mark_tsc_unstable("KVM discovered backwards TSC")
    k.mark_tsc_unstable("again")  # only once
    assert k.timekeeper.clock.name == "tsc"  # the work runs as the next event
    w.run_until(NSEC + 124)
    assert k.timekeeper.clock.name == "hpet"
    texts = [e["text"] for e in w.events if e["kind"] == "printk"]
    assert texts.count("tsc: Marking TSC unstable due to KVM discovered backwards TSC") == 1
    assert not any("again" in t for t in texts)


def test_acpi_pm_watchdog_without_hpet() -> None:
    w = World(0)
    m = PhysicalMachine(w, 2, hpet=False, drift_ppm=300_000)
    k = Kernel(m, "series")
    k.boot()
    assert k.watchdog.watchdog is k.clocksources["acpi_pm"]
    w.run_until(2 * NSEC)
    assert k.timekeeper.clock.name == "acpi_pm"

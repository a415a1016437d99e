"""The shipped lifecycle scenarios (``kvmclock scenarios``): the cases from public reports,
run through the scenario engine, with the values a user reads in ``lifecycle``.

Expected values come from the situation itself: KVM's ioctls take no simulated time, so a
clock restored "as saved" resumes exactly where it stopped and is behind by exactly the time
the guest did not run; the 250 ppm tolerance and the host's TSC clocksource rate are computed
here with the kernel's formulas (``tests/reference``).
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmclock.errors import ScenarioError
from kvmclock.sim import run_scenario
from reference.drift_ref import tsc_clocksource
from reference.kernel_math import adjust_tsc_khz, scale_tsc, tsc_scaling_ratio

NS = 1_000_000_000


def _records(name: str, profile: str = "upstream", **params: Any) -> dict[str, dict[str, Any]]:
    run = run_scenario(name, profile, **params)
    assert run["end_ns"] == run["duration_ns"]
    return {str(r["vm"]): r for r in run["lifecycle"]}


def test_restore_after_60s_on_the_shelf() -> None:
    recs = _records("restore-shelf")
    assert set(recs) == {"kvmclock-flags0", "kvmclock-realtime", "tsc-realtime"}
    for r in recs.values():
        assert (r["action"], r["downtime_ns"]) == ("restore", 60 * NS)
        assert r["masterclock_after"] and r["stable_after"]
        assert r["guest_stopped_seen"]  # Firecracker 1.14+: KVMCLOCK_CTRL before resume

    # flags 0: the kvm-clock resumes where it was saved, so both clocks are 60 s behind
    f0 = recs["kvmclock-flags0"]
    assert f0["guest_clocksource"] == "kvm-clock"
    assert f0["monotonic_jump_ns"] == f0["realtime_jump_ns"] == -60 * NS
    assert f0["monotonic_step_ns"] == f0["realtime_step_ns"] == 0

    # KVM_CLOCK_REALTIME: the kvm-clock advances by the host's CLOCK_REALTIME over the shelf,
    # which runs at the rate of the host's TSC clocksource (mult/shift of 2,593,992 kHz)
    mult, shift = tsc_clocksource(2_593_992)
    host_real = (60 * 2_593_992_000 * mult) >> shift
    residue = host_real - 60 * NS
    rt = recs["kvmclock-realtime"]
    assert abs(rt["realtime_jump_ns"] - residue) <= 2
    assert abs(rt["monotonic_jump_ns"] - residue) <= 2
    assert abs(rt["monotonic_step_ns"] - host_real) <= 2  # "MONOTONIC jumps 60 s"

    # the guest that chose tsc reads its restored TSC: still 60 s behind
    tsc = recs["tsc-realtime"]
    assert tsc["guest_clocksource"] == "tsc"
    assert tsc["monotonic_jump_ns"] == tsc["realtime_jump_ns"] == -60 * NS


@pytest.mark.parametrize("profile", ["gtod", "series"])
def test_restore_shelf_needs_kvm_clock_realtime(profile: str) -> None:
    with pytest.raises(ScenarioError, match="kvm_clock_realtime"):
        run_scenario("restore-shelf", profile)


@pytest.mark.parametrize("profile", ["gtod", "series", "upstream"])
def test_migration_within_tolerance_runs_at_the_destination_rate(profile: str) -> None:
    (r,) = _records("migrate-tolerance", profile).values()
    assert r["action"] == "migrate" and r["host"] == "dst"
    assert r["downtime_ns"] == 300_000_000  # downtime_ms; the precopy does not stop the guest
    assert r["monotonic_jump_ns"] == r["realtime_jump_ns"] == -300_000_000
    assert (r["guest_tsc_khz"], r["guest_tsc_runs_khz"]) == (2_593_992, 2_594_000)
    assert r["masterclock_after"]
    assert any("no scaling" in s for s in r["rules"])


def test_destination_boot_time_is_invisible_to_the_guest() -> None:
    """The destination booted a day before the source (its TSC and boot clock a day ahead):
    KVM_SET_CLOCK and the TSC writes are relative to the destination's own clocks, so the
    guest reads exactly what it reads after a migration between hosts booted together."""
    (day,) = _records("migrate-tolerance").values()
    (same,) = _records("migrate-tolerance", dst_uptime_s=0).values()
    keys = ("monotonic_jump_ns", "realtime_jump_ns", "masterclock_after", "cross_vcpu_skew_ns")
    assert [day[k] for k in keys] == [same[k] for k in keys] == [-300_000_000] * 2 + [True, 0]


def test_host_uptime_sets_its_clocks() -> None:
    from kvmclock.kernel import Kernel
    from kvmclock.machine import PhysicalMachine, World

    up = 86_400 * NS + 123
    clocks = []
    for uptime in (0, up):
        w = World(5)
        m = PhysicalMachine(w, 2, tsc_khz=2_000_000, uptime_ns=uptime)
        k = Kernel(m, "upstream")
        k.boot()
        w.run_until(NS)
        tk = k.timekeeper
        clocks.append((m.cpus[0].read_tsc(), k.run_on_cpu(0, tk.ktime_get_ns),
                       k.run_on_cpu(0, tk.ktime_get_raw_ns), k.run_on_cpu(0, tk.ktime_get_boot_ns),
                       k.run_on_cpu(0, tk.ktime_get_real_ns)))
    (tsc0, mono0, raw0, boot0, real0), (tsc1, mono1, raw1, boot1, real1) = clocks
    assert tsc1 - tsc0 == up * 2  # 2 cycles per ns since power-on
    assert mono1 - mono0 == raw1 - raw0 == boot1 - boot0 == up
    assert real1 == real0  # the wall clock does not depend on when the host booted


# kvm_set_tsc_khz: no scaling when the asked kHz is within adjust_tsc_khz(host, -+250)
LO = adjust_tsc_khz(2_594_000, -250)
HI = adjust_tsc_khz(2_594_000, 250)




def _vmx_rate(khz: int) -> int:
    """The kHz a VMX-scaled guest TSC runs at on the 2,594,000 kHz host: the host kHz through
    the truncated 48-bit ratio (just below ``khz``)."""
    return scale_tsc(2_594_000, tsc_scaling_ratio(khz, 2_594_000, 48), 48)


@pytest.mark.parametrize(
    ("src_khz", "runs_khz"),
    [(LO, 2_594_000), (LO - 1, _vmx_rate(LO - 1)), (HI, 2_594_000), (HI + 1, _vmx_rate(HI + 1))],
)
def test_tolerance_boundary_decides_scaling(src_khz: int, runs_khz: int) -> None:
    (r,) = _records("migrate-tolerance", src_tsc_khz=src_khz).values()
    assert (r["guest_tsc_khz"], r["guest_tsc_runs_khz"]) == (src_khz, runs_khz)
    if runs_khz != 2_594_000:  # scaled: the saved rate, up to the ratio's truncation
        assert 0 <= src_khz - runs_khz <= 1


def test_cloud_hypervisor_offsets_before_and_after_the_fix() -> None:
    run = run_scenario("ch-restore", "upstream", trace=True)
    recs = {str(r["vm"]): r for r in run["lifecycle"]}
    before, fixed = recs["before-fix"], recs["fixed"]
    assert not before["masterclock_after"] and not before["stable_after"]
    assert "outside the 1 s window" in before["reason"]
    assert fixed["masterclock_after"] and fixed["stable_after"]
    assert "exactly equal offset" in fixed["reason"]
    # the trace a user would capture: kvm_track_tsc says offsetmatched 0 after the restore
    restore_ns = 12 * NS
    tracks = [
        str(r["fields"])
        for r in run["trace"]
        if r["event"] == "kvm_track_tsc" and r["t_ns"] >= restore_ns
    ]
    assert any("offsetmatched 0" in f for f in tracks)


@pytest.mark.parametrize("profile", ["gtod", "upstream"])
@pytest.mark.parametrize(("gap_ms", "on"), [(999, True), (1001, False)])
def test_naive_restore_window(profile: str, gap_ms: int, on: bool) -> None:
    (r,) = _records("naive-restore", profile, gap_ms=gap_ms).values()
    assert r["masterclock_after"] is on
    assert ("inside the 1 s window" if on else "outside the 1 s window") in r["reason"]
    # saved at 1 s, restore starts at 3 s, vCPU 1 written gap_ms later: the clock resumes
    # where it was saved
    assert r["monotonic_jump_ns"] == -(2 * NS + gap_ms * 1_000_000)


@pytest.mark.parametrize("profile", ["gtod", "series", "upstream"])
def test_host_suspend_with_a_running_vm(profile: str) -> None:
    (r,) = _records("host-suspend", profile).values()
    assert r["action"] == "host_suspend" and r["downtime_ns"] == 30 * NS
    assert not r["masterclock_after"] and not r["stable_after"]
    assert r["masterclock_back_ns"] is None  # backwards_tsc_observed holds for the VM's life
    assert "backwards_tsc_observed" in r["reason"]
    # kvm-clock counts from the host's boot clock, which includes the 30 s of sleep
    assert abs(r["monotonic_step_ns"] - 30 * NS) <= 2
    assert abs(r["monotonic_jump_ns"]) <= 2
    # only the PM notifier (5.14+) marks the guest paused
    assert r["guest_stopped_seen"] is (profile == "upstream")


@pytest.mark.parametrize("profile", ["gtod", "series", "upstream"])
def test_host_suspend_moments_and_history(profile: str) -> None:
    """The suspend at 2 s and the resume at 2 + 30 = 32 s are key moments of the host's level
    (0); the guest's stable-bit timeline runs from its VM's creation at 1 ms and ends in the
    state the record saw after the resume (the host's backwards TSC clears it for good)."""
    run = run_scenario("host-suspend", profile)
    (rec,) = run["lifecycle"]
    host_moments = {(m["t_ns"], m["level"]) for m in run["moments"] if "host host " in m["text"]}
    assert {(2 * NS, 0), (32 * NS, 0)} <= host_moments
    levels = {lv["name"]: lv for lv in run["levels"]}
    stable = levels["vm"]["pvclock_stable_timeline"]
    assert stable[0] == {"t_ns": 1_000_000, "on": True}
    assert stable[-1]["on"] is rec["stable_after"] is False
    assert levels["host"]["masterclock_timeline"][-1]["on"] is rec["masterclock_after"] is False

"""``Lifecycle.host_suspend``: a host suspend/resume with a running VM, measured like the other
lifecycle actions (the host side itself is ``Kernel.pm_suspend`` / ``pm_resume``)."""

from __future__ import annotations

import pytest
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.vmm import Vmm
from kvmclock.vmm.lifecycle import Lifecycle
from vmm_util import MS, S, make_guest, make_host

RESUME_TSC = 50_000_000


@pytest.mark.parametrize("profile", ["gtod", "series", "upstream"])
def test_host_suspend_keeps_the_guest_tsc_and_turns_masterclock_off(profile: str) -> None:
    """Suspend at 20 s for 30 s; the host TSC restarts at 50,000,000.  KVM's backwards-TSC
    compensation moves every offset by the same amount, so each vCPU's TSC continues from
    its value at the suspend plus only the host cycles since the resume; it sets
    backwards_tsc_observed, so masterclock is off and stays off."""
    world, h, vmm = _suspend_setup(profile)
    g = vmm.guest
    assert g is not None
    lc = Lifecycle(world)
    other = Vmm(h, name="idle", vcpus=1)
    with pytest.raises(ValueError, match="VM vm runs on h0, not on h1"):
        lc.host_suspend(Kernel(PhysicalMachine(world, 1), profile, name="h1"), [vmm], S, 0)
    lc.host_suspend(h, [vmm], 30 * S, RESUME_TSC)
    before = [c.read_tsc() for c in vmm.machine.cpus]  # frozen: the host is suspended
    world.run_until(50 * S + 1)
    rec = lc.records[-1]
    host_since_resume = h.machine.cpus[0].read_tsc() - RESUME_TSC
    assert [c.read_tsc() - b for c, b in zip(vmm.machine.cpus, before, strict=True)] == [
        host_since_resume
    ] * 2
    assert rec["action"] == "host_suspend" and rec["recipe"] is None
    assert rec["t_ns"] == 50 * S and rec["downtime_ns"] == 30 * S
    assert rec["masterclock_after"] is False and rec["stable_after"] is False
    assert "backwards_tsc_observed is set" in rec["reason"]
    # the kvm-clock follows the host's CLOCK_BOOTTIME, which counts the sleep read from the
    # RTC (whole seconds here): the guest is not behind, up to the clocks' ns rounding
    assert abs(rec["monotonic_jump_ns"]) < 1000
    assert rec["guest_stopped_seen"] is bool(h.cfg.pm_notifier)
    assert lc.finish(100 * S)[-1]["masterclock_back_ns"] is None
    assert other.vm in (h.kvm.vm_list if h.kvm else [])


def _suspend_setup(profile: str) -> tuple[World, Kernel, Vmm]:
    world = World(4)
    h = make_host(world, profile, boot_at_ns=MS)
    vmm = make_guest(h, profile)
    world.run_until(20 * S)
    return world, h, vmm


@pytest.mark.parametrize(
    ("profile", "notifier", "watchdog"),
    [("gtod", "off", "4.13"), ("series", "off", "4.13"), ("upstream", "on", "6.18")],
)
def test_host_suspend_rules_name_the_switches(profile: str, notifier: str, watchdog: str) -> None:
    """The record's rules say why PVCLOCK_GUEST_STOPPED reached the guest or not (switch
    pm_notifier) and whether the guest's watchdog judges the 30 s interval (switch
    clocksource_watchdog: 6.18 skips an interval over WATCHDOG_INTERVAL_MAX, 1 s at HZ 250,
    4.13 judges it against WATCHDOG_THRESHOLD, 62.5 ms)."""
    world, h, vmm = _suspend_setup(profile)
    moments: list[tuple[int, str]] = []
    lc = Lifecycle(world, moment=lambda lvl, text: moments.append((lvl, text)))
    lc.host_suspend(h, [vmm], 30 * S, RESUME_TSC)
    world.run_until(50 * S + 1)
    rec = lc.records[-1]
    rules = rec["rules"]
    assert rec["guest_stopped_seen"] is (notifier == "on")
    if notifier == "on":
        assert (
            "host h0: KVM's PM notifier (switch pm_notifier on, 5.14+) marked every kvmclock "
            "vCPU paused at PM_SUSPEND_PREPARE (kvm_arch_suspend_notifier -> "
            "kvm_set_guest_paused): PVCLOCK_GUEST_STOPPED reached the guest at its first entry"
        ) in rules
    else:
        assert any("switch pm_notifier off" in x for x in rules)
    wd = [x for x in rules if f"switch clocksource_watchdog={watchdog}" in x]
    assert len(wd) == 1
    if watchdog == "6.18":
        assert "WATCHDOG_INTERVAL_MAX (1000000000 ns)" in wd[0]
    else:
        assert "WATCHDOG_THRESHOLD (62500000 ns)" in wd[0]
    assert moments == [
        (0, "host h0 suspended for 30000000000 ns (VMs vm)"),
        (0, "host h0 resumed"),
    ]


def test_host_suspend_past_the_end_is_reported() -> None:
    """A host still asleep when the run ends: ``finish`` reports it (completed False)."""
    world, h, vmm = _suspend_setup("upstream")
    lc = Lifecycle(world)
    lc.host_suspend(h, [vmm], 30 * S, RESUME_TSC)
    world.run_until(25 * S + 500 * MS)
    (rec,) = lc.finish(world.now_ns)
    assert rec["completed"] is False and rec["action"] == "host_suspend"
    assert rec["started_ns"] == 20 * S and rec["stopped_ns"] == 20 * S and rec["t_ns"] is None
    assert rec["reason"] == "not completed: the run ended 5.500 s into the host suspend"

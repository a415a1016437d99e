"""``Lifecycle.host_suspend``: a host suspend/resume with a running VM, measured like the other
lifecycle actions (the host side itself is ``Kernel.pm_suspend`` / ``pm_resume``)."""

from __future__ import annotations

import pytest
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.vmm import Vmm
from kvmclock.vmm.lifecycle import Lifecycle

S = 1_000_000_000
MS = 1_000_000
EPOCH = 1_700_000_000 * S
RESUME_TSC = 50_000_000


@pytest.mark.parametrize("profile", ["gtod", "series", "upstream"])
def test_host_suspend_keeps_the_guest_tsc_and_turns_masterclock_off(profile: str) -> None:
    """Suspend at 20 s for 30 s; the host TSC restarts at 50,000,000.  KVM's backwards-TSC
    compensation moves every offset by the same amount, so each vCPU's TSC continues from
    its value at the suspend plus only the host cycles since the resume; it sets
    backwards_tsc_observed, so masterclock is off and stays off."""
    world = World(4)
    m = PhysicalMachine(world, 2, tsc_khz=2_593_992, rtc_epoch_ns=EPOCH)
    h = Kernel(m, profile, name="h0")
    h.boot()
    world.run_until(MS)
    h.load_kvm()
    vmm = Vmm(h, name="vm", vcpus=2)
    g = Kernel(vmm.machine, profile, name="g")
    vmm.guest = g
    g.boot()
    world.run_until(20 * S)
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

"""Pause / resume through the VMM recipes, and when PVCLOCK_GUEST_STOPPED reaches the guest.

Expected values are computed here from what the test reads itself: the guest's pvclock record
bytes decoded and read with the reference pvclock arithmetic (tests/reference) at the guest
TSC, the values the ioctls returned (KVM_GET_CLOCK), and the host clock; never from the
Lifecycle code under test.
"""

from __future__ import annotations

import pytest
from kvmclock.kernel import Kernel
from kvmclock.machine import World
from kvmclock.vmm import Vmm, recipes
from kvmclock.vmm.lifecycle import Lifecycle
from kvmclock.vmm.recipes import RecipeError
from reference import kernel_math as ref
from vmm_util import MS, STOPPED, S, kvmclock_now, make_guest, make_host, record

PROFILES = ("gtod", "series", "upstream")


def setup(profile: str, *, features: set[str] | None = None) -> tuple[World, Kernel, Vmm]:
    """A host up 1 ms when KVM loads, a 2-vCPU guest, 5 s run."""
    world = World(3)
    host = make_host(world, profile, boot_at_ns=MS)
    vmm = make_guest(host, profile, features=features)
    world.run_until(5 * S)
    return world, host, vmm


@pytest.mark.parametrize("profile", PROFILES)
def test_qemu_pause_resume_stops_the_kvmclock(profile: str) -> None:
    """QEMU: KVM_GET_CLOCK at stop, KVM_SET_CLOCK of it (flags 0) at cont: the guest's
    kvm-clock resumes where KVM_GET_CLOCK left it, so the guest is 2 s behind."""
    world, _, vmm = setup(profile)
    lc = Lifecycle(world)
    r = recipes.get("qemu")
    assert r.kvmclock_ctrl == "before-resume"
    lc.pause(vmm, r)
    k_before = kvmclock_now(vmm)
    saved = vmm.saved_clock
    assert saved is not None and abs(saved.clock - k_before) < 100
    assert not record(vmm).flags & STOPPED
    world.run_until(world.now_ns + 2 * S)
    rec = lc.resume(vmm, r)
    k_after = kvmclock_now(vmm)
    assert k_after == saved.clock
    assert rec["monotonic_step_ns"] == k_after - k_before
    assert rec["monotonic_jump_ns"] == k_after - k_before - 2 * S
    assert rec["realtime_jump_ns"] == rec["monotonic_jump_ns"]
    assert rec["downtime_ns"] == 2 * S
    assert rec["guest_stopped_seen"] is True
    assert rec["masterclock_after"] is True and rec["stable_after"] is True
    assert rec["guest_clocksource"] == "kvm-clock"
    assert rec["action"] == "resume" and rec["recipe"] == "qemu"


@pytest.mark.parametrize("profile", PROFILES)
def test_firecracker_pause_resume_keeps_counting(profile: str) -> None:
    """Firecracker touches no clock on pause/resume: the record is rewritten at the first
    entry only for KVMCLOCK_CTRL's GUEST_STOPPED (same master pair), so the guest reads the
    old record at the new TSC: 2 s later by the pvclock arithmetic, a few ns off 2 s."""
    world, _, vmm = setup(profile)
    lc = Lifecycle(world)
    r = recipes.get("firecracker")
    rec_before = record(vmm)
    tsc_before = vmm.machine.cpus[0].read_tsc()
    lc.pause(vmm, r)
    world.run_until(world.now_ns + 2 * S)
    tsc_after = vmm.machine.cpus[0].read_tsc()
    out = lc.resume(vmm, r)
    rec_after = record(vmm)
    assert (rec_after.tsc_timestamp, rec_after.system_time) == (
        rec_before.tsc_timestamp,
        rec_before.system_time,
    )
    step = ref.read_cycles(rec_before, tsc_after) - ref.read_cycles(rec_before, tsc_before)
    assert out["monotonic_step_ns"] == step
    assert out["monotonic_jump_ns"] == step - 2 * S
    assert abs(out["monotonic_jump_ns"]) < 1000
    assert out["guest_stopped_seen"] is True  # KVMCLOCK_CTRL at pause, flag at next entry


@pytest.mark.parametrize("ctrl", ["none", "pause", "resume"])
def test_kvmclock_ctrl_reaches_the_guest_only_at_the_next_entry(ctrl: str) -> None:
    """KVM_KVMCLOCK_CTRL only asks (pvclock_set_guest_stopped_request + CLOCK_UPDATE): the
    record in guest memory gets PVCLOCK_GUEST_STOPPED at the vCPU's next entry."""
    world, _, vmm = setup("upstream")
    vmm.pause(kvmclock_ctrl=ctrl == "pause")
    for i in range(2):
        assert not record(vmm, i).flags & STOPPED
    assert [v.pvclock_set_guest_stopped_request for v in vmm.vm.vcpus] == [ctrl == "pause"] * 2
    world.run_until(world.now_ns + S)
    for i in range(2):
        assert not record(vmm, i).flags & STOPPED
    vmm.resume(kvmclock_ctrl=ctrl == "resume")
    # vCPU 0's record at its entry (before the guest ran), vCPU 1's record now
    assert vmm.entry_flags is not None
    assert bool(vmm.entry_flags & STOPPED) is (ctrl != "none")
    assert bool(record(vmm, 1).flags & STOPPED) is (ctrl != "none")
    # the guest's overdue tick read kvm-clock on vCPU 0 (tick_do_timer_cpu):
    # pvclock_clocksource_read cleared the flag it saw
    assert vmm.guest is not None and vmm.guest.counters["ticks_overdue"] == 1
    assert not record(vmm, 0).flags & STOPPED


def test_kvmclock_ctrl_einval_is_ignored_without_kvmclock() -> None:
    """A guest without kvm-clock: KVM_KVMCLOCK_CTRL fails with -EINVAL, which the VMMs
    ignore; the record says no GUEST_STOPPED (None: no record) and the tsc clocksource."""
    world, host, vmm = setup("upstream", features={"constant_tsc", "nonstop_tsc"})
    lc = Lifecycle(world)
    r = recipes.get("qemu")
    lc.pause(vmm, r)
    tsc0 = vmm.machine.cpus[0].read_tsc()
    host0 = host.machine.cpus[0].read_tsc()
    world.run_until(world.now_ns + S)
    rec = lc.resume(vmm, r)
    assert host.kvm is not None
    assert host.kvm.counters["vmm.kvmclock_ctrl_einval"] == 2  # before resume, 2 vCPUs
    assert rec["guest_stopped_seen"] is None and rec["stable_after"] is None
    assert rec["guest_clocksource"] == "tsc"
    # the TSC is not written back on cont: it kept counting with the host's
    assert vmm.machine.cpus[0].read_tsc() - tsc0 == host.machine.cpus[0].read_tsc() - host0
    # ... so the guest is not behind, up to the tsc clocksource's mult/shift rounding of
    # 2,593,992,000 cycles (mult 2**shift * 10**6 / 2,593,992 rounded: tens of ns)
    assert abs(rec["monotonic_jump_ns"]) < 100


def test_cloud_hypervisor_pause_resume_catches_up_with_realtime() -> None:
    """cloud-hypervisor: KVM_SET_CLOCK with the saved KVM_CLOCK_REALTIME: kvmclock = saved
    clock + (host realtime now - saved realtime)."""
    world, host, vmm = setup("upstream")
    lc = Lifecycle(world)
    r = recipes.get("cloud-hypervisor")
    assert r.kvmclock_ctrl == "at-pause"
    lc.pause(vmm, r)
    k_before = kvmclock_now(vmm)
    saved = vmm.saved_clock
    assert saved is not None and saved.flags & 4  # KVM_CLOCK_REALTIME from KVM
    world.run_until(world.now_ns + 3 * S)
    real_now = host.run_on_cpu(0, host.timekeeper.ktime_get_real_ns)
    rec = lc.resume(vmm, r)
    k_after = kvmclock_now(vmm)
    assert k_after == saved.clock + (real_now - saved.realtime)
    assert rec["monotonic_step_ns"] == k_after - k_before
    assert rec["monotonic_jump_ns"] == k_after - k_before - 3 * S
    assert abs(rec["monotonic_jump_ns"]) < 1000
    assert rec["guest_stopped_seen"] is True


def test_cloud_hypervisor_needs_kvm_clock_realtime() -> None:
    world, _, vmm = setup("gtod")
    lc = Lifecycle(world)
    with pytest.raises(RecipeError, match=r"cloud-hypervisor.*profile gtod.*kvm_clock_realtime"):
        lc.pause(vmm, recipes.get("cloud-hypervisor"))
    assert not vmm.machine.paused


def test_pause_resume_snapshot_misuse() -> None:
    world, _, vmm = setup("upstream")
    with pytest.raises(ValueError, match="must be paused"):
        vmm.snapshot()
    with pytest.raises(ValueError, match="not paused"):
        vmm.resume()
    vmm.pause()
    with pytest.raises(ValueError, match="already paused"):
        vmm.pause()
    lc = Lifecycle(world)
    with pytest.raises(ValueError, match="not paused through this Lifecycle"):
        lc.resume(vmm, recipes.get("qemu"))


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("xen", {}, r"recipe 'xen' unknown; choose one of qemu, firecracker"),
        ("qemu", {"gap_ms": 1}, r"recipe qemu: unknown option.*valid options: none"),
        ("naive", {"gap_ms": -1}, r"gap_ms=-1 must be a number >= 0"),
        ("firecracker", {"clock_realtime": 1}, r"clock_realtime=1 must be true or false"),
        ("firecracker", {"kvmclock_ctrl": "never"}, r"kvmclock_ctrl='never' invalid"),
        ("cloud-hypervisor", {"tsc_offsets": "x"}, r"tsc_offsets='x' invalid; choose 'shared'"),
    ],
)
def test_recipe_errors_name_the_bad_input(name: str, opts: dict[str, object], match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        recipes.get(name, **opts)


@pytest.mark.parametrize(
    ("recipe", "ctrl_moment"),
    [
        (recipes.get("firecracker"), "before resume"),
        (recipes.get("firecracker", kvmclock_ctrl="at-pause"), "at pause"),
        (recipes.get("qemu"), "before resume"),
    ],
)
def test_pause_resume_moments_and_stopped_ns(recipe: recipes.Recipe, ctrl_moment: str) -> None:
    """Lifecycle's moment callback: (level, text) at the pause, at KVM_KVMCLOCK_CTRL (when
    the VMM calls it) and at the resume; the record's stopped_ns is the pause time."""
    world, _, vmm = setup("upstream")
    seen: list[tuple[int, int, str]] = []
    lc = Lifecycle(world, moment=lambda lvl, text: seen.append((world.now_ns, lvl, text)))
    lc.pause(vmm, recipe)
    world.run_until(7 * S)
    rec = lc.resume(vmm, recipe)
    assert rec["stopped_ns"] == 5 * S and rec["started_ns"] == 5 * S and rec["t_ns"] == 7 * S
    assert rec["completed"] is True
    ctrl = (
        7 * S if ctrl_moment == "before resume" else 5 * S,
        1,
        f"VM vm: KVM_KVMCLOCK_CTRL on every vCPU {ctrl_moment}",
    )
    label = recipe.label()
    want = [(5 * S, 1, f"VM vm: paused ({label})"), (7 * S, 1, f"VM vm: resumed ({label})")]
    want.insert(1, ctrl)
    assert seen == want

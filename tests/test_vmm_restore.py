"""Snapshot / restore / migration through the VMM recipes: the cases of the public reports.

Expected values come from what the test reads itself (the saved KVM_GET_CLOCK and MSR values,
the pvclock record bytes read with tests/reference arithmetic, the hosts' TSC as a function
of true time, the host realtime) and from the kernel rules written out here; the Lifecycle's
records are checked against them.
"""

from __future__ import annotations

import re

import pytest
from kvmclock.kernel import Kernel
from kvmclock.kvm.x86 import KVM_CLOCK_REALTIME
from kvmclock.machine import World
from kvmclock.vmm import Vmm, recipes
from kvmclock.vmm.lifecycle import Lifecycle
from kvmclock.vmm.recipes import RecipeError
from reference import kernel_math as ref
from vmm_util import (
    KHZ,
    MS,
    STOPPED,
    U64,
    S,
    kvmclock_now,
    make_guest,
    make_host,
)


def track_fields(host: Kernel, since_ns: int) -> list[dict[str, str]]:
    """The kvm_track_tsc trace events of ``host`` from ``since_ns`` as field dicts."""
    assert host.kvm is not None
    out = []
    for t, _lvl, _comm, _pid, _cpu, event, fields in host.kvm.trace_records:
        if event == "kvm_track_tsc" and t >= since_ns:
            toks = fields.split()
            out.append(dict(zip(toks[0::2], toks[1::2], strict=False)))
    return out


# --------------------------------------------------------------------------------------------
# (a) cloud-hypervisor: one offset per vCPU (the bug) or one shared offset (the fix)
# --------------------------------------------------------------------------------------------
def test_cloud_hypervisor_per_vcpu_leaves_different_offsets_and_no_masterclock() -> None:
    """Each vCPU created and restored in turn, 50 us apart: vCPU 1's creation write (0)
    joins vCPU 0's generation and makes 0 the last written TSC, so its saved-TSC write
    lands ~17 s of cycles away from it: a new generation, offset = T1 - host TSC 50 us later,
    offsetmatched 0, masterclock off."""
    world = World(5)
    h = make_host(world, "upstream", "h0")
    world.run_until(MS)
    vmm = make_guest(h, "upstream")
    world.run_until(17 * S)
    lc = Lifecycle(world)
    r = recipes.get("cloud-hypervisor", tsc_offsets="per-vcpu", vcpu_restore_us=50)
    snap = lc.snapshot(vmm, "s", r)
    assert snap.vcpus[0].tsc == snap.vcpus[1].tsc  # the source had one offset
    assert snap.vcpus[0].tsc_offset == snap.vcpus[1].tsc_offset
    world.run_until(world.now_ns + 10 * S)
    t0 = world.now_ns
    lc.restore("s", vmm, h, r)
    world.run_until(t0 + 50_000)
    rec = lc.records[-1]
    assert rec["t_ns"] == t0 + 50_000
    c0 = h.machine.cpus[0].tsc_at(t0)
    c1 = h.machine.cpus[1].tsc_at(t0 + 50_000)
    offs = [v.tsc_offset for v in vmm.vm.vcpus]
    assert offs == [(snap.vcpus[0].tsc - c0) & U64, (snap.vcpus[1].tsc - c1) & U64]
    assert offs[0] != offs[1]
    fields = track_fields(h, t0)
    # creation vCPU 0 (new gen), MSR vCPU 0 (new gen), creation vCPU 1 (joins), MSR vCPU 1
    assert [(f["vcpu_id"], f["offsetmatched"], f["nr_online"]) for f in fields] == [
        ("0", "0", "1"),
        ("0", "0", "1"),
        ("1", "1", "2"),
        ("1", "0", "2"),
    ]
    assert vmm.vm.use_master_clock is False
    assert rec["masterclock_after"] is False and rec["stable_after"] is False
    assert "vCPU 1's TSC write of" in rec["reason"]
    assert "outside the 1 s window" in rec["reason"]
    assert "masterclock off: vCPUs not matched (offsetmatched 0" in rec["reason"]
    assert any("creation-time TSC write of 0 joined generation" in x for x in rec["rules"])


def test_cloud_hypervisor_shared_offset_keeps_masterclock() -> None:
    """The fix: vCPU 0's KVM_VCPU_TSC_OFFSET set on every vCPU; vCPU 0's own write differs
    from the last written offset (vCPU 1's) so it opens a generation, vCPU 1's equals it
    exactly and joins: all matched, masterclock on."""
    world = World(5)
    h = make_host(world, "upstream", "h0")
    world.run_until(MS)
    vmm = make_guest(h, "upstream")
    world.run_until(17 * S)
    lc = Lifecycle(world)
    r = recipes.get("cloud-hypervisor", vcpu_restore_us=50)
    assert r.label() == "cloud-hypervisor(tsc_offsets='shared', vcpu_restore_us=50)"
    snap = lc.snapshot(vmm, "s", r)
    world.run_until(world.now_ns + 10 * S)
    t0 = world.now_ns
    lc.restore("s", vmm, h, r)
    world.run_until(t0 + 50_000)
    rec = lc.records[-1]
    c0 = h.machine.cpus[0].tsc_at(t0)
    shared = (snap.vcpus[0].tsc - c0) & U64
    assert [v.tsc_offset for v in vmm.vm.vcpus] == [shared, shared]
    fields = track_fields(h, t0 + 50_000)
    assert [(f["vcpu_id"], f["offsetmatched"]) for f in fields][-2:] == [("0", "0"), ("1", "1")]
    assert rec["masterclock_after"] is True and rec["stable_after"] is True
    assert "equals the last written offset" in rec["reason"]
    assert "the attribute matches only an exactly equal offset" in rec["reason"]
    assert any(
        "vCPU 0's KVM_VCPU_TSC_OFFSET" in x and "opened generation" in x for x in rec["rules"]
    )


def test_cloud_hypervisor_shared_needs_the_attribute() -> None:
    """series has KVM_CLOCK_REALTIME (switch kvm_clock_realtime) only from 5.16 too: a
    profile with REALTIME but without the attribute gives the attribute's error."""
    from kvmclock.profiles import PROFILES

    cfg = PROFILES["upstream"].with_(vcpu_tsc_offset_attr=False)
    with pytest.raises(RecipeError, match=r"KVM_VCPU_TSC_OFFSET.*switch vcpu_tsc_offset_attr"):
        recipes.get("cloud-hypervisor").check(cfg)
    recipes.get("cloud-hypervisor", tsc_offsets="per-vcpu").check(cfg)


# --------------------------------------------------------------------------------------------
# (b) Firecracker-style restore after 60 s on the shelf
# --------------------------------------------------------------------------------------------
def shelf(
    profile: str,
    recipe: recipes.Recipe,
    *,
    features: set[str] | None = None,
    clocksource: str | None = None,
) -> tuple[Kernel, Vmm, Lifecycle, int, int, dict[str, object]]:
    """Pause + snapshot at 10 s, restore on the same host 60 s later: returns the host, the
    Vmm, the lifecycle, the guest kvm-clock the test read at the pause (0 for a guest without
    kvmclock), the host realtime the test read at the restore, and the record."""
    world = World(9)
    h = make_host(world, profile, "h0")
    world.run_until(MS)
    vmm = make_guest(h, profile, features=features, clocksource=clocksource)
    world.run_until(10 * S)
    lc = Lifecycle(world)
    lc.snapshot(vmm, "s", recipe)
    k_pause = kvmclock_now(vmm) if vmm.vm.vcpus[0].pv_time_enabled else 0
    world.run_until(70 * S)
    real_now = h.run_on_cpu(0, h.timekeeper.ktime_get_real_ns)
    lc.restore("s", vmm, h, recipe)
    return h, vmm, lc, k_pause, real_now, lc.records[-1]


@pytest.mark.parametrize("profile", ["gtod", "series", "upstream"])
def test_firecracker_flags0_kvmclock_guest_is_60s_behind(profile: str) -> None:
    """KVM_SET_CLOCK(saved clock, flags 0): the guest's kvm-clock resumes at the saved
    KVM_GET_CLOCK value, so MONOTONIC and REALTIME are 60 s behind, exactly
    -60 s + (KVM_GET_CLOCK's clock - the guest's kvm-clock at the pause), the difference of
    definitions C and B at the snapshot (a few ns)."""
    r = recipes.get("firecracker")
    _, vmm, lc, k_pause, _, rec = shelf(profile, r)
    snap = lc.snapshots["s"]
    assert kvmclock_now(vmm) == snap.clock.clock
    assert abs(snap.clock.clock - k_pause) < 100
    assert rec["monotonic_step_ns"] == snap.clock.clock - k_pause
    assert rec["monotonic_jump_ns"] == snap.clock.clock - k_pause - 60 * S
    assert rec["realtime_jump_ns"] == rec["monotonic_jump_ns"]
    assert rec["downtime_ns"] == 60 * S
    assert rec["guest_clocksource"] == "kvm-clock"
    assert rec["masterclock_after"] is True
    assert rec["guest_stopped_seen"] is True  # 1.14+: KVMCLOCK_CTRL in restore_state


def test_firecracker_clock_realtime_kvmclock_guest_is_right() -> None:
    """KVM_CLOCK_REALTIME: the kernel adds (host realtime now - saved realtime) to the saved
    clock: the kvm-clock guest's MONOTONIC steps +60 s and REALTIME is right."""
    r = recipes.get("firecracker", clock_realtime=True)
    _, vmm, lc, k_pause, real_now, rec = shelf("upstream", r)
    snap = lc.snapshots["s"]
    assert snap.clock.flags & KVM_CLOCK_REALTIME
    expect_clock = snap.clock.clock + (real_now - snap.clock.realtime)
    assert kvmclock_now(vmm) == expect_clock
    assert rec["monotonic_step_ns"] == expect_clock - k_pause
    assert rec["realtime_jump_ns"] == expect_clock - k_pause - 60 * S
    # the rest is the host CLOCK_REALTIME's own rate over 60 s (the host tsc clocksource's
    # mult rounding, parts per billion) and C - B at the snapshot: microseconds at most
    assert abs(rec["realtime_jump_ns"]) < 5000
    assert abs(rec["monotonic_step_ns"] - 60 * S) < 5000


@pytest.mark.parametrize(
    ("profile", "features", "override"),
    [
        ("upstream", {"kvmclock", "kvmclock_stable_bit", "constant_tsc", "nonstop_tsc"}, None),
        ("upstream", None, "tsc"),
    ],
)
def test_firecracker_clock_realtime_tsc_guest_is_still_60s_behind(
    profile: str, features: set[str] | None, override: str | None
) -> None:
    """A guest on the tsc clocksource: KVM_CLOCK_REALTIME moves only the kvm-clock; the TSC
    is restored to its saved value, so MONOTONIC and REALTIME are exactly 60 s behind."""
    r = recipes.get("firecracker", clock_realtime=True)
    _, vmm, lc, _, _, rec = shelf(profile, r, features=features, clocksource=override)
    snap = lc.snapshots["s"]
    assert rec["guest_clocksource"] == "tsc"
    assert vmm.machine.cpus[0].read_tsc() == snap.vcpus[0].tsc  # restored, same instant
    assert rec["monotonic_step_ns"] == 0
    assert rec["monotonic_jump_ns"] == -60 * S
    assert rec["realtime_jump_ns"] == -60 * S


def test_firecracker_clock_realtime_is_refused_under_gtod() -> None:
    world = World(1)
    h = make_host(world, "gtod", "h0")
    vmm = make_guest(h, "gtod")
    world.run_until(S)
    lc = Lifecycle(world)
    r = recipes.get("firecracker", clock_realtime=True)
    with pytest.raises(
        RecipeError,
        match=r"recipe firecracker\(clock_realtime=True\) needs KVM_SET_CLOCK with "
        r"KVM_CLOCK_REALTIME, which profile gtod \(Linux 4\.13\) does not have: it came in "
        r"Linux 5\.16 \(switch kvm_clock_realtime\)",
    ):
        lc.snapshot(vmm, "s", r)


def test_firecracker_clock_realtime_needs_realtime_in_the_snapshot() -> None:
    """A snapshot taken while masterclock was off has no KVM_CLOCK_REALTIME:
    ClockRealtimeNotInState, before anything is built."""
    world = World(1)
    h = make_host(world, "upstream", "h0")
    vmm = make_guest(h, "upstream")
    world.run_until(S)
    lc = Lifecycle(world)
    vmm.vm.write_tsc(1, 12345)  # vCPU 1 far away: masterclock off
    vmm.machine.run_on_cpu(1, lambda: None)
    assert not vmm.vm.use_master_clock
    r = recipes.get("firecracker", clock_realtime=True)
    lc.snapshot(vmm, "s", r)
    assert h.kvm is not None
    n = len(h.kvm.vm_list)
    with pytest.raises(RecipeError, match="ClockRealtimeNotInState"):
        lc.restore("s", vmm, h, r)
    assert len(h.kvm.vm_list) == n


@pytest.mark.parametrize("ctrl", ["at-pause", "before-resume"])
def test_firecracker_kvmclock_ctrl_at_pause_never_reaches_a_restored_guest(ctrl: str) -> None:
    """KVMCLOCK_CTRL after pause leaves the request in KVM: the snapshot's memory has no
    GUEST_STOPPED and the restored guest never sees it; called in restore_state (1.14+),
    the first entry of the restored vCPUs writes it."""
    r = recipes.get("firecracker", kvmclock_ctrl=ctrl)
    assert r.kvmclock_ctrl == ctrl
    _, _, lc, _, _, rec = shelf("upstream", r)
    snap = lc.snapshots["s"]
    gpa = snap.vcpus[0].system_time_msr & ~1
    assert not ref.Record.unpack(snap.memory, gpa).flags & STOPPED
    assert rec["guest_stopped_seen"] is (ctrl == "before-resume")


# --------------------------------------------------------------------------------------------
# (c) migration to a host of another TSC frequency
# --------------------------------------------------------------------------------------------
def migrate(
    dst_khz: int, recipe: recipes.Recipe, *, scaling: str = "vmx"
) -> tuple[Kernel, Vmm, dict[str, object]]:
    world = World(11)
    src = make_host(world, "upstream", "src")
    world.run_until(30 * S)  # the destination boots 30 s later: another TSC value
    dst = make_host(world, "upstream", "dst", khz=dst_khz, scaling=scaling)
    vmm = make_guest(src, "upstream")
    world.run_until(40 * S)
    lc = Lifecycle(world)
    lc.migrate(vmm, dst, recipe, downtime_ns=300 * MS, precopy_ns=2 * S)
    world.run_until(42 * S + 300 * MS)
    assert vmm.host is dst
    return dst, vmm, lc.records[-1]


def guest_tsc_over_1s(vmm: Vmm, vcpu: int = 0) -> int:
    world = vmm.vm.module.world
    a = vmm.machine.cpus[vcpu].read_tsc()
    world.run_until(world.now_ns + S)
    return vmm.machine.cpus[vcpu].read_tsc() - a


def test_migration_within_250ppm_runs_at_the_destination_rate() -> None:
    """2,593,992 kHz -> 2,594,000 kHz (+3.08 ppm, inside 250 ppm): KVM_SET_TSC_KHZ takes the
    default ratio: the guest TSC counts 2,594,000,000 cycles a second, and the record says
    so."""
    _dst, vmm, rec = migrate(2_594_000, recipes.get("qemu"))
    assert rec["action"] == "migrate" and rec["downtime_ns"] == 300 * MS
    assert rec["started_ns"] == 40 * S and rec["t_ns"] == 42 * S + 300 * MS
    assert vmm.vm.vcpus[0].virtual_tsc_khz == KHZ
    assert guest_tsc_over_1s(vmm) == 2_594_000_000
    assert rec["guest_tsc_khz"] == KHZ and rec["guest_tsc_runs_khz"] == 2_594_000
    assert any(
        "within the 250 ppm tolerance KVM applies no scaling: the guest TSC now runs at the "
        "destination's rate, 2594000 kHz (+3.084 ppm" in x
        for x in rec["rules"]  # type: ignore[union-attr]
    )
    assert rec["masterclock_after"] is True


@pytest.mark.parametrize(("scaling", "frac"), [("vmx", 48), ("svm", 32)])
def test_migration_outside_250ppm_is_scaled(scaling: str, frac: int) -> None:
    """2,593,992 kHz -> 2,800,000 kHz: outside the tolerance, the hardware ratio
    2**frac * 2593992 / 2800000 scales the host TSC: the guest still counts ~2,593,992,000."""
    dst, vmm, rec = migrate(2_800_000, recipes.get("qemu"), scaling=scaling)
    ratio = ref.tsc_scaling_ratio(KHZ, 2_800_000, frac)
    assert vmm.vm.vcpus[0].tsc_scaling_ratio == ratio
    t = dst.world.now_ns
    c = dst.machine.cpus[0]
    expect = ref.scale_tsc(c.tsc_at(t + S), ratio, frac) - ref.scale_tsc(c.tsc_at(t), ratio, frac)
    assert guest_tsc_over_1s(vmm) == expect
    assert abs(expect - 2_593_992_000) <= 1
    assert rec["guest_tsc_runs_khz"] == ref.scale_tsc(2_800_000, ratio, frac)


def test_migration_to_a_host_without_scaling() -> None:
    """A slower guest on a host without TSC scaling: KVM refuses KVM_SET_TSC_KHZ; QEMU only
    warns (the guest runs at the host rate), Firecracker fails the restore."""
    _dst, vmm, rec = migrate(2_800_000, recipes.get("qemu"), scaling="none")
    assert guest_tsc_over_1s(vmm) == 2_800_000_000
    assert any("KVM refused it" in x for x in rec["rules"])  # type: ignore[union-attr]
    world = World(2)
    src = make_host(world, "upstream", "src")
    dst2 = make_host(world, "upstream", "dst", khz=2_800_000, scaling="none")
    vmm2 = make_guest(src, "upstream")
    world.run_until(S)
    lc = Lifecycle(world)
    r = recipes.get("firecracker")
    lc.snapshot(vmm2, "s", r)
    with pytest.raises(RecipeError, match=r"recipe firecracker\(clock_realtime=False\): restore"):
        lc.restore("s", vmm2, dst2, r)
    assert dst2.kvm is not None and dst2.kvm.vm_list == []  # the new VM went away
    assert vmm2.machine.paused and not vmm2.restoring and vmm2.host is src


# --------------------------------------------------------------------------------------------
# (d) naive: vCPUs restored one by one
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["gtod", "upstream"])
@pytest.mark.parametrize(("gap_ms", "inside"), [(999, True), (1001, False)])
def test_naive_gap_inside_or_outside_the_window(profile: str, gap_ms: int, inside: bool) -> None:
    """vCPU 1 writes its own saved TSC (equal to vCPU 0's) gap_ms after vCPU 0: the kernel
    extrapolates vCPU 0's write by gap_ms of cycles; inside 1 s it matches, else it opens a
    generation and masterclock stays off."""
    world = World(4)
    h = make_host(world, profile, "h0")
    world.run_until(MS)
    vmm = make_guest(h, profile)
    world.run_until(20 * S)
    lc = Lifecycle(world)
    r = recipes.get("naive", gap_ms=gap_ms)
    assert r.kvmclock_ctrl == "never"
    lc.snapshot(vmm, "s", r)
    world.run_until(30 * S)
    lc.restore("s", vmm, h, r)
    world.run_until(30 * S + gap_ms * MS)
    rec = lc.records[-1]
    assert rec["downtime_ns"] == 10 * S + gap_ms * MS
    assert rec["masterclock_after"] is inside
    assert rec["guest_stopped_seen"] is False
    reason = str(rec["reason"])
    if inside:
        assert re.search(r"vCPU 1's TSC write of \d+ joined generation \d+: 0\.99", reason)
        assert "inside the 1 s window" in reason
    else:
        assert re.search(r"vCPU 1's TSC write of \d+ opened generation \d+: 1\.00", reason)
        assert "outside the 1 s window" in reason
        assert rec["stable_after"] is False


@pytest.mark.parametrize("profile", ["gtod", "upstream"])
def test_naive_user_set_tsc_rule(profile: str) -> None:
    """A VM saved 0.5 s after it was created: its saved TSC (~0.5 s of cycles) lies within
    1 s of the new vCPUs' creation-time 0.  4.13 synchronises vCPU 0's write with that
    generation: the guest TSC restarts at 0.  6.7's user_set_tsc rule never synchronises the
    first userspace write: the guest TSC restarts at its saved value."""
    world = World(4)
    h = make_host(world, profile, "h0")
    world.run_until(MS)
    vmm = make_guest(h, profile)
    world.run_until(MS + 500 * MS)
    lc = Lifecycle(world)
    r = recipes.get("naive")
    snap = lc.snapshot(vmm, "s", r)
    khz_cycles = KHZ * 1000
    assert 0 < snap.vcpus[0].tsc < khz_cycles
    world.run_until(5 * S)
    lc.restore("s", vmm, h, r)
    rec = lc.records[-1]
    tsc_now = vmm.machine.cpus[0].read_tsc()
    rules = " | ".join(rec["rules"])  # type: ignore[arg-type]
    if profile == "gtod":
        assert tsc_now == 0
        assert re.search(r"vCPU 0's TSC write of \d+ joined generation 1: 0\.5", rules)
    else:
        assert tsc_now == snap.vcpus[0].tsc
        assert "first userspace TSC write never synchronises" in rules
        assert "6.7 user_set_tsc rule" in rules
    assert rec["masterclock_after"] is True


# --------------------------------------------------------------------------------------------
# restore on the same host and on another host booted later
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "other"])
def test_qemu_restore_same_and_other_host(where: str) -> None:
    """The guest TSC continues from its saved value and the kvm-clock from the saved clock
    whatever the destination's TSC value; the old VM is destroyed, the guest moved (its
    emulated HPET rebound to the new VM's)."""
    world = World(6)
    h0 = make_host(world, "upstream", "h0")
    world.run_until(20 * S)
    h1 = make_host(world, "upstream", "h1")
    feats = {"kvmclock", "kvmclock_stable_bit", "constant_tsc", "hpet"}
    vmm = make_guest(h0, "upstream", features=feats)
    old = vmm.vm
    world.run_until(25 * S)
    dst = h0 if where == "same" else h1
    assert h0.machine.cpus[0].read_tsc() != h1.machine.cpus[0].read_tsc()
    lc = Lifecycle(world)
    r = recipes.get("qemu")
    snap = lc.snapshot(vmm, "s", r)
    world.run_until(27 * S)
    lc.restore("s", vmm, dst, r)
    rec = lc.records[-1]
    assert [vmm.machine.cpus[i].read_tsc() for i in range(2)] == [v.tsc for v in snap.vcpus]
    assert kvmclock_now(vmm) == snap.clock.clock
    assert rec["host"] == dst.name and vmm.host is dst
    assert old.destroyed and h0.kvm is not None and old not in h0.kvm.vm_list
    assert dst.kvm is not None and vmm.vm in dst.kvm.vm_list
    g = vmm.guest
    assert g is not None and g.machine is vmm.machine
    assert g.clocksources["hpet"].counter is vmm.machine.platform_counters["hpet"]  # type: ignore[attr-defined]
    assert rec["masterclock_after"] is True and rec["stable_after"] is True
    assert rec["cross_vcpu_skew_ns"] is not None and rec["cross_vcpu_skew_ns"] <= 1
    assert rec["monotonic_jump_ns"] == snap.clock.clock - rec_kvmclock_at_pause(lc) - 2 * S


def rec_kvmclock_at_pause(lc: Lifecycle) -> int:
    """The guest's kvm-clock at the pause, from the snapshot's memory and TSC (the record
    in the saved memory read at the saved TSC of vCPU 0)."""
    snap = lc.snapshots["s"]
    rec = ref.Record.unpack(snap.memory, snap.vcpus[0].system_time_msr & ~1)
    return ref.read_cycles(rec, snap.vcpus[0].tsc)


def test_lifecycle_finish_fills_back_times() -> None:
    """masterclock_back_ns: 0 when on right after; None when not on again within the run;
    else the ns until the VM's masterclock timeline turns on."""
    world = World(4)
    h = make_host(world, "upstream", "h0")
    world.run_until(MS)
    vmm = make_guest(h, "upstream")
    world.run_until(10 * S)
    lc = Lifecycle(world)
    r = recipes.get("naive", gap_ms=1500)
    lc.snapshot(vmm, "s", r)
    lc.restore("s", vmm, h, r)
    world.run_until(12 * S)
    assert lc.records[-1]["masterclock_after"] is False
    r2 = recipes.get("qemu")
    lc.pause(vmm, r2)
    x = vmm.vm.get_msr(0, 0x10)
    vmm.vm.write_tsc(0, x)  # a VMM re-syncs both vCPUs while paused: 1.5 s from the last
    vmm.vm.write_tsc(1, x)  # write (a new generation), then an equal one (matched)
    world.run_until(13 * S)
    lc.resume(vmm, r2)
    out = lc.finish(20 * S)
    assert out[0]["masterclock_back_ns"] == 13 * S - out[0]["t_ns"]
    assert out[1]["masterclock_after"] is True and out[1]["masterclock_back_ns"] == 0
    assert Lifecycle(world).finish(0) == []


def test_restore_errors() -> None:
    world = World(4)
    h = make_host(world, "upstream", "h0")
    vmm = make_guest(h, "upstream")
    world.run_until(S)
    lc = Lifecycle(world)
    with pytest.raises(ValueError, match=r"snapshot 'x' unknown; taken so far: none"):
        lc.restore("x", vmm, h, recipes.get("qemu"))
    snap = lc.snapshot(vmm, "s", recipes.get("qemu"))
    vmm.resume()
    with pytest.raises(ValueError, match="must be paused before it is restored"):
        vmm.restore(snap, h, recipes.get("qemu"))
    with pytest.raises(ValueError, match=r"downtime_ns=-1 must be an int >= 0"):
        lc.migrate(vmm, h, recipes.get("qemu"), -1)


def test_move_to_machine_refusals() -> None:
    """Kernel.move_to_machine keeps the guest as it is: same level, same vCPU count, the
    platform counters it uses, no VMs of its own."""
    world = World(4)
    h = make_host(world, "upstream", "h0")
    vmm = make_guest(h, "upstream", features={"kvmclock", "kvmclock_stable_bit", "hpet"})
    g = vmm.guest
    assert g is not None
    with pytest.raises(ValueError, match="machine level 0 != kernel g level 1"):
        g.move_to_machine(h.machine)
    one = Vmm(h, name="one", vcpus=1)
    with pytest.raises(ValueError, match="machine has 1 CPUs, kernel g runs on 2"):
        g.move_to_machine(one.machine)
    plain = Vmm(h, name="plain", vcpus=2)
    with pytest.raises(ValueError, match=r"lacks platform counter 'hpet'.*it has \[\]"):
        g.move_to_machine(plain.machine)
    g.load_kvm()
    assert g.kvm is not None
    g.kvm.create_vm()
    with pytest.raises(ValueError, match="runs VMs of its own"):
        g.move_to_machine(plain.machine)
    assert g.machine is vmm.machine


@pytest.mark.parametrize(("scaling", "frac"), [("vmx", 48), ("svm", 32)])
def test_migration_outside_250ppm_rule_says_scaled_with_the_ratio(scaling: str, frac: int) -> None:
    """2,593,992 kHz -> 3,000,000 kHz: KVM scales (it does not refuse): the sentence names the
    ratio 2**frac * 2593992 // 3000000 and the rate its truncation gives, 2,593,991 kHz."""
    _dst, _vmm, rec = migrate(3_000_000, recipes.get("qemu"), scaling=scaling)
    ratio = ref.tsc_scaling_ratio(KHZ, 3_000_000, frac)
    assert ratio == (KHZ << frac) // 3_000_000
    runs = ref.scale_tsc(3_000_000, ratio, frac)
    assert runs == (3_000_000 * ratio) >> frac == 2_593_991
    assert rec["guest_tsc_runs_khz"] == runs
    rules = rec["rules"]
    assert isinstance(rules, list)
    assert not any("refused" in x for x in rules)
    want = (
        f"KVM_SET_TSC_KHZ {KHZ} kHz on a 3000000 kHz host ({scaling} TSC scaling): KVM scaled "
        f"it with TSC scaling ratio {ratio:#x} ({frac} fraction bits, {scaling}): the guest TSC "
        f"runs at {runs} kHz, the ratio's truncation (-0.386 ppm from the saved {KHZ} kHz)"
    )
    assert want in rules


@pytest.mark.parametrize(
    ("dst_khz", "words"),
    [
        (2_000_000, "KVM pushes it forward at every clock update (catch-up)"),
        (3_000_000, "KVM refused it (host without TSC scaling (tsc_scaling=none)"),
    ],
)
def test_migration_without_scaling_rule_says_catchup_or_refused(dst_khz: int, words: str) -> None:
    """No TSC scaling hardware: a destination faster than the guest (3 GHz) cannot run it
    slower: KVM refuses; a slower one (2 GHz): catch-up; the sentence says which."""
    _dst, _vmm, rec = migrate(dst_khz, recipes.get("qemu"), scaling="none")
    rules = rec["rules"]
    assert isinstance(rules, list)
    assert any(words in x for x in rules), rules
    assert not any("KVM scaled it" in x for x in rules)


def test_unfinished_migration_is_reported_at_finish() -> None:
    """A migration whose downtime (or precopy) passes the end of the run: ``finish`` adds a
    record with completed False, t_ns None and where the run ended; a finished one says
    completed True, and ``stopped_ns`` is when the source stopped (after the precopy)."""
    world = World(11)
    src = make_host(world, "upstream", "src")
    dst = make_host(world, "upstream", "dst")
    a = make_guest(src, "upstream")
    world.run_until(10 * S)
    moments: list[tuple[int, int, str]] = []
    lc = Lifecycle(world, moment=lambda lvl, text: moments.append((world.now_ns, lvl, text)))
    r = recipes.get("qemu")
    lc.migrate(a, dst, r, downtime_ns=2 * S, precopy_ns=500 * MS)
    world.run_until(11 * S + 700 * MS)  # 1.2 s into the 2 s downtime
    recs = lc.finish(world.now_ns)
    assert len(recs) == 1
    rec = recs[0]
    assert rec["completed"] is False and rec["t_ns"] is None and rec["action"] == "migrate"
    assert rec["started_ns"] == 10 * S and rec["stopped_ns"] == 10 * S + 500 * MS
    assert rec["monotonic_jump_ns"] is None and rec["masterclock_after"] is None
    assert rec["reason"] == "not completed: the run ended 1.200 s into the downtime"
    assert [m[2] for m in moments][:2] == [
        "VM vm: migration to dst started (qemu, precopy 500000000 ns)",
        "VM vm: migration: source stopped (qemu)",
    ]
    assert [m[0] for m in moments][:2] == [10 * S, 10 * S + 500 * MS]
    assert all(m[1] == 1 for m in moments)

    # still in the precopy at the end: stopped_ns None
    world2 = World(11)
    s2 = make_host(world2, "upstream", "src")
    d2 = make_host(world2, "upstream", "dst")
    b = make_guest(s2, "upstream")
    world2.run_until(S)
    lc2 = Lifecycle(world2)
    lc2.migrate(b, d2, r, downtime_ns=S, precopy_ns=3 * S)
    world2.run_until(2 * S + 250 * MS)
    (rec2,) = lc2.finish(world2.now_ns)
    assert rec2["completed"] is False and rec2["stopped_ns"] is None
    assert rec2["reason"] == (
        "not completed: the run ended 1.250 s into the precopy (the guest still ran)"
    )

    # completed: stopped_ns after the precopy, moments for each step
    world3 = World(11)
    s3 = make_host(world3, "upstream", "src")
    d3 = make_host(world3, "upstream", "dst")
    c = make_guest(s3, "upstream")
    world3.run_until(S)
    seen: list[str] = []
    lc3 = Lifecycle(world3, moment=lambda lvl, text: seen.append(text))
    lc3.migrate(c, d3, r, downtime_ns=S, precopy_ns=S)
    world3.run_until(4 * S)
    (rec3,) = lc3.finish(world3.now_ns)
    assert rec3["completed"] is True and rec3["t_ns"] == 3 * S
    assert rec3["started_ns"] == S and rec3["stopped_ns"] == 2 * S
    assert seen == [
        "VM vm: migration to dst started (qemu, precopy 1000000000 ns)",
        "VM vm: migration: source stopped (qemu)",
        "VM vm: migrated to dst (qemu)",
    ]


def test_tsc_offset_sentences_print_signed_offsets() -> None:
    """KVM_VCPU_TSC_OFFSET sentences print the offset as the signed s64 it is (a guest TSC
    behind the host's is a negative offset), never as its u64 bit pattern."""
    world = World(5)
    h = make_host(world, "upstream", "h0")
    world.run_until(MS)
    vmm = make_guest(h, "upstream")
    world.run_until(17 * S)
    lc = Lifecycle(world)
    r = recipes.get("cloud-hypervisor", tsc_offsets="shared")
    lc.snapshot(vmm, "s", r)
    world.run_until(world.now_ns + 10 * S)
    lc.restore("s", vmm, h, r)
    world.run_until(world.now_ns + S)
    u = vmm.vm.vcpus[0].tsc_offset
    assert u >= 1 << 63  # the host has run longer than the guest: negative
    signed = u - (1 << 64)
    attr = [x for x in lc.records[-1]["rules"] if "KVM_VCPU_TSC_OFFSET of" in x]
    assert len(attr) == 2
    for i, x in enumerate(attr):
        assert x.startswith(f"vCPU {i}'s KVM_VCPU_TSC_OFFSET of {signed} equals"), x
        assert str(u) not in x

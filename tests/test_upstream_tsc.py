"""The TSC-write and TSC-frequency side of KVM as it changed up to Linux 6.18.

One test (at least) per behaviour switch, flipping it and showing the observable result
change: ``guest_tsc_write_syncs`` (5.10), ``user_set_tsc`` (6.7), ``masterclock_request``
(6.8), ``vcpu_tsc_offset_attr`` (5.16), ``vm_tsc_khz`` (5.18), ``tiny_ratio_clamp`` (6.16),
``nested_tsc_scaling`` (5.14); plus the host's TSC-scaling hardware (``vmx``, ``svm``,
``none``), a machine property for every profile.  Expected values are computed here from
the kernel arithmetic (``tests/reference``), with the model's inputs (host TSC, offsets,
snapshot times) read from the objects.
"""

from __future__ import annotations

import pytest
from kvmclock.kernel import Kernel
from kvmclock.kvm import (
    KVM_REQ_CLOCK_UPDATE,
    KVM_REQ_MASTERCLOCK_UPDATE,
    MSR_IA32_TSC,
    MSR_KVM_SYSTEM_TIME_NEW,
    Kvm,
    TimeScaleLivelock,
)
from kvmclock.machine import PhysicalMachine, World
from kvmclock.profiles import PROFILES, Profile
from reference import kernel_math as ref

U64 = (1 << 64) - 1
MS = 1_000_000
SEC = 1_000_000_000
KHZ = 2_593_992  # the default host of the scenarios
VMX_FRAC = 48
SVM_FRAC = 32
UPSTREAM = PROFILES["upstream"]
GTOD = PROFILES["gtod"]


def make_host(
    profile: str | Profile,
    *,
    cpus: int = 2,
    tsc_khz: int = KHZ,
    tsc_scaling: str = "vmx",
) -> Kernel:
    world = World(0)
    m = PhysicalMachine(world, cpus, tsc_khz=tsc_khz, tsc_scaling=tsc_scaling)
    k = Kernel(m, profile, name="L0")
    k.boot()
    world.run_until(MS)
    k.load_kvm()
    return k


def kvm_of(k: Kernel) -> Kvm:
    assert k.kvm is not None
    return k.kvm.create_vm()


def run(k: Kernel, t_ns: int) -> None:
    k.machine.world.run_until(t_ns)


def host_tsc(k: Kernel, cpu: int = 0) -> int:
    """The host TSC of physical CPU ``cpu`` now."""
    return int(k.machine.cpus[cpu].read_tsc())


def guest_tsc(vm: Kvm, i: int) -> int:
    return int(vm.machine.cpus[i].read_tsc())


def s64(v: int) -> int:
    v &= U64
    return v - (1 << 64) if v >> 63 else v


# --------------------------------------------------------------------------------------------
# guest_tsc_write_syncs (5.10, 0c899c25d754): kvm_set_msr_common MSR_IA32_TSC
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile", "syncs"),
    [
        (GTOD, True),
        (GTOD.with_(guest_tsc_write_syncs=False), False),
        (UPSTREAM, False),
        (UPSTREAM.with_(guest_tsc_write_syncs=True, user_set_tsc=False), True),
    ],
    ids=["gtod", "gtod-off", "upstream", "upstream-on"],
)
def test_guest_tsc_write(profile: Profile, syncs: bool) -> None:
    """A guest wrmsr(MSR_IA32_TSC) 100 ms of cycles ahead, inside the 1 s window: with the
    switch on it is a synchronisation (matched: the generation's offset stays, the write is
    discarded); off (5.10+), the vCPU's offset moves to data - host TSC and IA32_TSC_ADJUST
    by the same amount, and nothing else changes."""
    k = make_host(profile)
    vm = kvm_of(k)
    for _ in range(2):
        vm.create_vcpu()
    run(k, 500 * MS)
    v = vm.vcpus[1]
    old = v.tsc_offset
    gen, matched = vm.cur_tsc_generation, vm.nr_vcpus_matched_tsc
    data = (guest_tsc(vm, 1) + KHZ * 100) & U64
    h = host_tsc(k, v.affinity)
    vm.machine.wrmsr(1, MSR_IA32_TSC, data)
    assert vm.cur_tsc_generation == gen
    if syncs:
        assert v.tsc_offset == old == vm.cur_tsc_offset  # matched: the write is discarded
        assert guest_tsc(vm, 1) == (h + old) & U64
        assert vm.last_tsc_write == data
        assert v.ia32_tsc_adjust_msr == 0  # offset unchanged
    else:
        want = (data - h) & U64
        assert v.tsc_offset == want
        assert guest_tsc(vm, 1) == data
        assert v.ia32_tsc_adjust_msr == s64(want - old)
        assert vm.nr_vcpus_matched_tsc == matched
        assert vm.last_tsc_write == 0  # the synchronisation state is untouched
        assert v.this_tsc_write == 0


def test_guest_tsc_write_far_makes_generation_only_when_syncing() -> None:
    """A guest write 5 s ahead: a new generation with the switch on, none with it off."""
    for profile, gens in ((GTOD, 2), (UPSTREAM, 1)):
        k = make_host(profile)
        vm = kvm_of(k)
        vm.create_vcpu()
        run(k, 200 * MS)
        vm.machine.wrmsr(0, MSR_IA32_TSC, guest_tsc(vm, 0) + 5 * KHZ * 1000)
        assert vm.cur_tsc_generation == gens, profile.name


# --------------------------------------------------------------------------------------------
# user_set_tsc (6.7, bf328e22e472): kvm_synchronize_tsc(vcpu, u64 *user_value)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile", "honoured"),
    [
        (GTOD, False),
        (UPSTREAM, True),
        (UPSTREAM.with_(user_set_tsc=False), False),
        (GTOD.with_(user_set_tsc=True), True),
    ],
    ids=["gtod", "upstream", "upstream-off", "gtod-on"],
)
def test_restore_vm_younger_than_one_second(profile: Profile, honoured: bool) -> None:
    """Userspace restores a TSC of 123,456,789 cycles (a guest that ran 47.6 ms) into a VM
    created 0.5 s ago: inside the 1 s window of the creation write's extrapolation.  2017:
    synchronised to the creation generation, the restored value is lost.  6.7: the first
    userspace value is not tested against the window (no user_set_tsc yet): new generation,
    the guest TSC is the restored value; afterwards user_set_tsc is set."""
    k = make_host(profile)
    vm = kvm_of(k)
    vm.create_vcpu()
    creation_offset = vm.vcpus[0].tsc_offset
    run(k, 500 * MS)
    restored = 123_456_789
    h = host_tsc(k, 0)
    vm.write_tsc(0, restored)
    if honoured:
        assert vm.cur_tsc_generation == 2
        assert vm.vcpus[0].tsc_offset == (restored - h) & U64
        assert guest_tsc(vm, 0) == restored
        assert vm.user_set_tsc
    else:
        assert vm.cur_tsc_generation == 1
        assert vm.vcpus[0].tsc_offset == creation_offset
        assert guest_tsc(vm, 0) == (h + creation_offset) & U64
        assert not vm.user_set_tsc


def test_user_set_tsc_window_applies_after_first_user_write() -> None:
    """Upstream: once userspace set a TSC, a second vCPU's value within the 1 s window of it
    (extrapolated) matches; at +-1 s of virtual cycles the window ends (strict compare)."""
    k = make_host(UPSTREAM)
    vm = kvm_of(k)
    for _ in range(3):
        vm.create_vcpu()
    run(k, 300 * MS)
    vm.write_tsc(0, 10 * KHZ * 1000)  # first userspace value: new generation
    assert (vm.cur_tsc_generation, vm.user_set_tsc) == (2, True)
    tsc_hz = KHZ * 1000
    # same instant: elapsed 0, tsc_exp = last_tsc_write; data must be in (exp - hz, exp + hz)
    exp = vm.last_tsc_write
    vm.write_tsc(1, exp + tsc_hz - 1)  # inside by one cycle: matched
    assert vm.cur_tsc_generation == 2
    assert vm.vcpus[1].tsc_offset == vm.cur_tsc_offset
    exp = vm.last_tsc_write  # moved to the last write (exp + hz - 1)
    vm.write_tsc(2, exp + tsc_hz)  # exactly 1 s ahead: outside
    assert vm.cur_tsc_generation == 3


@pytest.mark.parametrize("profile", [GTOD, UPSTREAM], ids=["gtod", "upstream"])
def test_openvmm_host_write_of_zero_is_discarded(profile: Profile) -> None:
    """openvmm (PR 4253): 2 s after creation, a 2,701,753 kHz host, userspace writes TSC 0.
    Both kernels treat a host-initiated 0 as "synchronise" (4.13: data == 0 &&
    host_initiated; 6.7: data == 0) and, with one generation at the same kHz on a stable
    host, keep the generation's offset: the guest TSC continues (about 5.4e9 cycles), it is
    not reset.  Upstream also records that userspace set a TSC."""
    khz = 2_701_753
    k = make_host(profile, tsc_khz=khz)
    vm = kvm_of(k)
    vm.create_vcpu()
    h0 = host_tsc(k, 0)  # creation ran at this same instant (1 ms): offset = -h0
    assert vm.vcpus[0].tsc_offset == (-h0) & U64
    run(k, MS + 2 * SEC)
    before = guest_tsc(vm, 0)
    want = (MS + 2 * SEC) * khz // 1_000_000 - MS * khz // 1_000_000  # host cycles in 2 s
    assert before == want == 5_403_506_000
    vm.write_tsc(0, 0)
    assert guest_tsc(vm, 0) == before  # discarded: the guest TSC continues
    assert vm.cur_tsc_generation == 1
    assert vm.user_set_tsc == (profile is UPSTREAM)


def test_explicit_user_zero_after_user_set_still_synchronises() -> None:
    """6.7: a userspace 0 always synchronises, even after user_set_tsc (no window test)."""
    k = make_host(UPSTREAM)
    vm = kvm_of(k)
    vm.create_vcpu()
    vm.create_vcpu()
    run(k, 100 * MS)
    vm.write_tsc(0, 50 * KHZ * 1000)  # far: generation 2, user_set_tsc
    run(k, 200 * MS)
    vm.write_tsc(1, 0)  # same kHz, stable host: matched to generation 2
    assert vm.cur_tsc_generation == 2
    assert vm.vcpus[1].tsc_offset == vm.vcpus[0].tsc_offset == vm.cur_tsc_offset


# --------------------------------------------------------------------------------------------
# masterclock_request (6.8, c52ffadc65e2): kvm_track_tsc_matching(vcpu, new_generation)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile", "resnapshot"),
    [
        (GTOD, True),
        (UPSTREAM.with_(masterclock_request="on_update"), True),
        (UPSTREAM, False),
    ],
    ids=["gtod", "upstream-on_update", "upstream"],
)
def test_hotplug_of_matching_vcpu(profile: Profile, resnapshot: bool) -> None:
    """Two vCPUs run with masterclock on; a third vCPU is hotplugged and matches (creation
    write of 0).  The 2017 rule requests MASTERCLOCK_UPDATE because masterclock is on: the
    master pair is re-taken when the new vCPU enters.  6.8: masterclock needs no toggle and
    no generation started: no request, the pair stays."""
    k = make_host(profile, cpus=3)
    vm = kvm_of(k)
    for _ in range(2):
        vm.create_vcpu()
    for i in range(2):
        vm.machine.run_on_cpu(i, lambda: None)
    assert vm.use_master_clock
    pair = (vm.master_kernel_ns, vm.master_cycle_now)
    updates = vm.counters["masterclock_updates"]
    run(k, 700 * MS)
    v = vm.create_vcpu()
    assert (vm.cur_tsc_generation, vm.nr_vcpus_matched_tsc, vm.online_vcpus) == (1, 2, 3)
    assert v.kvm_test_request(KVM_REQ_MASTERCLOCK_UPDATE) == resnapshot
    vm.machine.run_on_cpu(2, lambda: None)
    assert vm.use_master_clock
    assert ((vm.master_kernel_ns, vm.master_cycle_now) != pair) == resnapshot
    assert vm.counters["masterclock_updates"] - updates == int(resnapshot)


def test_new_generation_while_on_requests_update_upstream() -> None:
    """6.8: a new generation while masterclock is on requests an update (also a toggle)."""
    k = make_host(UPSTREAM)
    vm = kvm_of(k)
    vm.create_vcpu()
    vm.machine.run_on_cpu(0, lambda: None)
    assert vm.use_master_clock
    run(k, 100 * MS)
    vm.write_tsc(0, 77 * KHZ * 1000)  # userspace, first: new generation (1 vCPU: matched)
    assert vm.cur_tsc_generation == 2
    assert vm.vcpus[0].kvm_test_request(KVM_REQ_MASTERCLOCK_UPDATE)


# --------------------------------------------------------------------------------------------
# vcpu_tsc_offset_attr (5.16, 828ca89628bf): kvm_arch_tsc_get_attr / kvm_arch_tsc_set_attr
# --------------------------------------------------------------------------------------------
def test_tsc_offset_attr_refused_without_switch() -> None:
    for profile in (GTOD, PROFILES["series"], UPSTREAM.with_(vcpu_tsc_offset_attr=False)):
        k = make_host(profile)
        vm = kvm_of(k)
        vm.create_vcpu()
        with pytest.raises(ValueError, match=r"KVM_VCPU_TSC_OFFSET.*5\.16") as e:
            vm.get_tsc_offset(0)
        assert profile.name in str(e.value)
        with pytest.raises(ValueError, match=r"5\.16"):
            vm.set_tsc_offset(0, 0)


def test_tsc_offset_attr_get_and_set_exact_match() -> None:
    """GET returns l1_tsc_offset; SET matches only the exact last_tsc_offset (offset+1 starts
    a new generation); tsc = host TSC + offset; SET sets user_set_tsc."""
    k = make_host(UPSTREAM)
    vm = kvm_of(k)
    vm.create_vcpu()
    vm.create_vcpu()
    off = vm.get_tsc_offset(0)
    assert off == vm.vcpus[0].l1_tsc_offset == vm.last_tsc_offset
    run(k, 400 * MS)
    vm.set_tsc_offset(1, off)  # exact: matched
    assert (vm.cur_tsc_generation, vm.nr_vcpus_matched_tsc) == (1, 1)
    assert vm.user_set_tsc
    run(k, 500 * MS)
    h = host_tsc(k, vm.vcpus[1].affinity)
    vm.set_tsc_offset(1, (off + 1) & U64)  # one cycle off: new generation
    assert vm.cur_tsc_generation == 2
    assert vm.nr_vcpus_matched_tsc == 0
    assert vm.vcpus[1].tsc_offset == vm.cur_tsc_offset == (off + 1) & U64
    assert vm.cur_tsc_write == vm.last_tsc_write == (h + off + 1) & U64
    # the generation is stamped with the kvmclock base now: CLOCK_MONOTONIC_RAW + offs_boot
    tk = k.timekeeper
    ns_now = k.run_on_cpu(vm.vcpus[1].affinity, tk.ktime_get_raw_ns) + tk.offs_boot
    assert vm.cur_tsc_nsec == vm.last_tsc_nsec == vm.vcpus[1].this_tsc_nsec == ns_now
    assert guest_tsc(vm, 1) == (h + off + 1) & U64
    assert vm.get_tsc_offset(1) == (off + 1) & U64
    with pytest.raises(ValueError, match="offset"):
        vm.set_tsc_offset(0, 1 << 64)


# --------------------------------------------------------------------------------------------
# vm_tsc_khz (5.18, ffbb61d09fc5): KVM_SET_TSC_KHZ on the VM
# --------------------------------------------------------------------------------------------
def test_vm_tsc_khz_refused_without_switch() -> None:
    for profile in (GTOD, UPSTREAM.with_(vm_tsc_khz=False)):
        vm = kvm_of(make_host(profile))
        with pytest.raises(ValueError, match=r"KVM_SET_TSC_KHZ as a VM ioctl.*5\.18") as e:
            vm.set_vm_tsc_khz(3_000_000)
        assert profile.name in str(e.value)


def test_vm_tsc_khz_default_for_new_vcpus() -> None:
    k = make_host(UPSTREAM)
    vm = kvm_of(k)
    assert vm.get_vm_tsc_khz() == KHZ
    vm.set_vm_tsc_khz(3_000_000)
    a = vm.create_vcpu()
    b = vm.create_vcpu()
    ratio = ref.tsc_scaling_ratio(3_000_000, KHZ, VMX_FRAC)
    assert (a.virtual_tsc_khz, a.tsc_scaling_ratio) == (3_000_000, ratio)
    assert b.tsc_scaling_ratio == ratio
    assert vm.nr_vcpus_matched_tsc == 1  # created at one frequency: they match
    assert vm.get_vm_tsc_khz() == 3_000_000
    with pytest.raises(ValueError, match="after vCPUs"):
        vm.set_vm_tsc_khz(2_000_000)
    vm2 = kvm_of(k)
    vm2.set_vm_tsc_khz(0)  # 0 = the host's tsc_khz
    assert vm2.create_vcpu().virtual_tsc_khz == KHZ


@pytest.mark.parametrize(
    ("scaling", "frac", "max_ratio"),
    [("vmx", VMX_FRAC, U64), ("svm", SVM_FRAC, (1 << 40) - 1)],
)
def test_tsc_khz_gate_boundary(scaling: str, frac: int, max_ratio: int) -> None:
    """Both KVM_SET_TSC_KHZ ioctls refuse khz >= max_guest_tsc_khz =
    min(0x7fffffff, __scale_tsc(max ratio, tsc_khz)) with scaling hardware."""
    k = make_host(UPSTREAM, tsc_scaling=scaling)
    limit = min(0x7FFFFFFF, ref.mul_u64_u64_shr(KHZ, max_ratio, frac))
    assert k.kvm is not None and k.kvm.max_guest_tsc_khz() == limit
    vm = kvm_of(k)
    with pytest.raises(ValueError, match="max_guest_tsc_khz"):
        vm.set_vm_tsc_khz(limit)
    vm.set_vm_tsc_khz(limit - 1)
    vm.create_vcpu()
    with pytest.raises(ValueError, match="max_guest_tsc_khz"):
        vm.set_vcpu_tsc_khz(0, limit)


# --------------------------------------------------------------------------------------------
# Host TSC-scaling hardware (machine property, every profile)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", [GTOD, UPSTREAM], ids=["gtod", "upstream"])
def test_no_scaling_host_refuses_slower_guest(profile: Profile) -> None:
    """gVisor-style host without TSC scaling: a 1,000,000 kHz guest on a 2,593,992 kHz host
    is refused (set_tsc_khz -1 -> -EINVAL); the edge is adjust_tsc_khz(host, -250)."""
    k = make_host(profile, tsc_scaling="none")
    assert k.kvm is not None
    with pytest.raises(ValueError, match=r"tsc_khz=1000000 refused.*tsc_scaling=none"):
        k.kvm.create_vm(tsc_khz=1_000_000)
    lo = ref.adjust_tsc_khz(KHZ, -250)
    assert lo == 2_593_343
    vm = k.kvm.create_vm(tsc_khz=lo)  # inside the tolerance: no scaling needed
    assert vm.create_vcpu().tsc_scaling_ratio == 1 << VMX_FRAC
    with pytest.raises(ValueError, match="tsc_khz=2593342 refused"):
        k.kvm.create_vm(tsc_khz=lo - 1)
    with pytest.raises(ValueError, match=r"KVM_SET_TSC_KHZ 1000000 kHz refused \(-EINVAL\)"):
        vm.set_vcpu_tsc_khz(0, 1_000_000)
    assert vm.vcpus[0].virtual_tsc_khz == 1_000_000  # as the kernel: set before the refusal


def base_ns(k: Kernel) -> int:
    """The host clock kvmclock counts from, now (x86.c get_kvmclock_base_ns)."""
    assert k.kvm is not None
    return int(k.kvm.get_kvmclock_base_ns())


@pytest.mark.parametrize("profile", [GTOD, UPSTREAM], ids=["gtod", "upstream"])
def test_no_scaling_host_runs_faster_guest_with_catchup(profile: Profile) -> None:
    """3,000,000 kHz on the same host: no ratio, tsc_catchup and tsc_always_catchup.  Without
    masterclock (vCPU 1 moved to another generation), every clock update pushes the offset
    so the TSC equals compute_guest_tsc(now) = this_tsc_write + pvclock_scale_delta(ns -
    this_tsc_nsec, virtual mult/shift of 3 GHz); every exit requests the next update."""
    k = make_host(profile, tsc_scaling="none")
    assert k.kvm is not None
    vm = k.kvm.create_vm(tsc_khz=3_000_000)
    v = vm.create_vcpu()
    vm.create_vcpu()
    assert (v.tsc_catchup, v.tsc_always_catchup) == (True, True)
    assert v.tsc_scaling_ratio == 1 << VMX_FRAC
    shift, mult = ref.get_time_scale(3_000_000 * 1000, SEC)
    assert (v.virtual_tsc_shift, v.virtual_tsc_mult) == (shift, mult)
    run(k, SEC)
    vm.write_tsc(1, 10**15)  # far: a second generation, so masterclock stays off
    t_c, w_c = v.this_tsc_nsec, v.this_tsc_write
    assert w_c == 0
    for t in (3 * SEC, 5 * SEC + 123_457):
        run(k, t)
        vm.machine.run_on_cpu(0, lambda: None)  # entry: CLOCK_UPDATE with catch-up
        assert not vm.use_master_clock
        assert v.kvm_test_request(KVM_REQ_CLOCK_UPDATE)  # the exit asked for the next one
        want = (w_c + ref.pvclock_scale_delta((base_ns(k) - t_c) & U64, mult, shift)) & U64
        assert v.hv_clock.tsc_timestamp == want
        assert guest_tsc(vm, 0) == want  # simulated time did not move since the update
    # 3 cycles per host-clock ns since the generation began (the mult/shift rounding aside),
    # where the host TSC ran only 2.593992 per ns
    assert abs(guest_tsc(vm, 0) - (base_ns(k) - t_c) * 3) <= 3


def test_catchup_is_inert_under_masterclock() -> None:
    """The same guest alone (masterclock on): kvm_guest_time_update uses the master pair's
    kernel_ns, so compute_guest_tsc is evaluated at the snapshot and never exceeds the TSC:
    after the snapshot the guest TSC runs at the host rate although it was promised 3 GHz
    (kernel behaviour: the catch-up has no masterclock exception)."""
    k = make_host(UPSTREAM, tsc_scaling="none")
    assert k.kvm is not None
    vm = k.kvm.create_vm(tsc_khz=3_000_000)
    v = vm.create_vcpu()
    vm.machine.run_on_cpu(0, lambda: None)
    assert vm.use_master_clock
    g0, h0 = guest_tsc(vm, 0), host_tsc(k, 0)
    for t in (SEC, 2 * SEC, 3 * SEC):
        run(k, t)
        vm.machine.run_on_cpu(0, lambda: None)
        assert v.kvm_test_request(KVM_REQ_CLOCK_UPDATE)
        assert guest_tsc(vm, 0) - g0 == host_tsc(k, 0) - h0  # host rate, no catch-up


def test_kubevirt_within_tolerance_runs_at_host_rate() -> None:
    """kubevirt: 2,594,000 kHz asked on a 2,593,992 kHz VMX host is within 250 ppm
    (adjust_tsc_khz(host, +250) = 2,594,640): default ratio; the record advertises the host
    rate, mul 0xc5611196 shift -1 (kvm_get_time_scale(1e9, 2,593,992,000))."""
    hi = ref.adjust_tsc_khz(KHZ, 250)
    assert hi == 2_594_640
    shift, mul = ref.get_time_scale(SEC, KHZ * 1000)
    assert (mul, shift) == (0xC5611196, -1)
    k = make_host(UPSTREAM)
    assert k.kvm is not None
    vm = k.kvm.create_vm(tsc_khz=2_594_000)
    v = vm.create_vcpu()
    assert v.virtual_tsc_khz == 2_594_000
    assert v.tsc_scaling_ratio == 1 << VMX_FRAC
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)
    assert (v.hv_clock.tsc_to_system_mul, v.hv_clock.tsc_shift) == (0xC5611196, -1)
    assert v.hw_tsc_khz == KHZ
    g0, h0 = guest_tsc(vm, 0), host_tsc(k, 0)
    run(k, 2 * SEC)
    assert guest_tsc(vm, 0) - g0 == host_tsc(k, 0) - h0  # host rate


def test_svm_ratio_and_vendor_maximum() -> None:
    """SVM: 32 fraction bits, ratios >= 2**40 - 1 refused: 256 x host is refused, one kHz less
    gets ratio 2**40 - 1656 (no ioctl gate on create_vm's frequency)."""
    k = make_host(UPSTREAM, tsc_scaling="svm")
    assert k.kvm is not None
    vm = k.kvm.create_vm(tsc_khz=3_000_000)
    v = vm.create_vcpu()
    ratio = ref.tsc_scaling_ratio(3_000_000, KHZ, SVM_FRAC)
    assert v.tsc_scaling_ratio == ratio
    run(k, SEC)
    h = host_tsc(k, 0)
    assert guest_tsc(vm, 0) == (v.tsc_offset + ref.scale_tsc(h, ratio, SVM_FRAC)) & U64
    with pytest.raises(ValueError, match="max_tsc_scaling_ratio"):
        k.kvm.create_vm(tsc_khz=256 * KHZ)
    w = k.kvm.create_vm(tsc_khz=256 * KHZ - 1).create_vcpu()
    assert w.tsc_scaling_ratio == ref.tsc_scaling_ratio(256 * KHZ - 1, KHZ, SVM_FRAC)
    assert w.tsc_scaling_ratio == (1 << 40) - 1656


def test_machine_tsc_scaling_argument_checked() -> None:
    with pytest.raises(ValueError, match=r"tsc_scaling='intel' invalid; choose one of vmx"):
        PhysicalMachine(World(0), 1, tsc_scaling="intel")


# --------------------------------------------------------------------------------------------
# tiny_ratio_clamp (6.16): kvm_guest_time_update tgt_tsc_khz ? : 1
# --------------------------------------------------------------------------------------------
TINY_HOST = 2_299_998
TINY_RATIO = 122_380_531


@pytest.mark.parametrize(
    ("profile", "clamp"),
    [(GTOD, False), (UPSTREAM, True), (UPSTREAM.with_(tiny_ratio_clamp=False), False)],
    ids=["gtod", "upstream", "upstream-off"],
)
def test_tiny_ratio(profile: Profile, clamp: bool) -> None:
    """A 1 kHz guest on a 2,299,998 kHz VMX host: ratio 122380531 (the kernel commit's case),
    kvm_scale_tsc(2299998, ratio) = 0.  After a record at the host kHz, the next clock update
    would call kvm_get_time_scale(1e9, 0): an endless loop without the clamp (detected here),
    1 kHz with it (record mul/shift of 1 kHz)."""
    assert ref.tsc_scaling_ratio(1, TINY_HOST, VMX_FRAC) == TINY_RATIO
    assert ref.scale_tsc(TINY_HOST, TINY_RATIO, VMX_FRAC) == 0
    with pytest.raises(ValueError):
        ref.get_time_scale(SEC, 0)  # the reference's "would never return"
    k = make_host(profile, tsc_khz=TINY_HOST)
    vm = kvm_of(k)
    v = vm.create_vcpu()
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)
    assert v.hw_tsc_khz == TINY_HOST
    vm.set_vcpu_tsc_khz(0, 1)
    assert v.tsc_scaling_ratio == TINY_RATIO
    if clamp:
        vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)
        shift, mul = ref.get_time_scale(SEC, 1000)
        assert v.hw_tsc_khz == 1
        assert (v.hv_clock.tsc_to_system_mul, v.hv_clock.tsc_shift) == (mul, shift)
    else:
        with pytest.raises(TimeScaleLivelock, match=r"kvm_get_time_scale\(NSEC_PER_SEC, 0\)"):
            vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)


# --------------------------------------------------------------------------------------------
# nested_tsc_scaling (5.14, d041b5ea9335): kvm_calc_nested_tsc_multiplier / _offset
# --------------------------------------------------------------------------------------------
def make_nested(profile: Profile, l1_khz: int) -> tuple[Kernel, Kvm, Kernel]:
    l0 = make_host(profile, cpus=2)
    assert l0.kvm is not None
    vm1 = l0.kvm.create_vm(name="L1", tsc_khz=l1_khz)
    for _ in range(2):
        vm1.create_vcpu()
    for i in range(2):
        vm1.machine.run_on_cpu(i, lambda: None)
    l1 = Kernel(vm1.machine, profile, name="L1")
    l1.boot()
    run(l0, 5 * MS)
    l1.load_kvm()
    return l0, vm1, l1


@pytest.mark.parametrize(
    "profile", [GTOD, UPSTREAM.with_(nested_tsc_scaling=False)], ids=["gtod", "upstream-off"]
)
def test_nested_scaling_off_l1_has_no_tsc_scaling(profile: Profile) -> None:
    """Before 5.14 nested VMX exposed no TSC scaling: L1's KVM has none, so an L2 slower than
    L1 is refused and a faster one runs with catch-up."""
    _l0, vm1, l1 = make_nested(profile, 3_000_000)
    assert vm1.machine.tsc_scaling == "none"
    assert l1.kvm is not None and not l1.kvm.has_tsc_control
    with pytest.raises(ValueError, match="tsc_scaling=none"):
        l1.kvm.create_vm(tsc_khz=1_000_000)
    v2 = l1.kvm.create_vm(tsc_khz=4_000_000).create_vcpu()
    assert v2.tsc_always_catchup


def test_nested_scaling_composes_ratios_and_offsets() -> None:
    """5.14+: L1's KVM scales (L0's VMX); L2's hardware TSC = scale(host, L1*L2 >> 48) +
    mul_s64_u64_shr(L1 offset, L2 ratio, 48) + L2 offset, which differs by rounding from L1's
    own view L2 offset + scale(L1 TSC, L2 ratio)."""
    l0, vm1, l1 = make_nested(UPSTREAM, 3_000_000)
    assert vm1.machine.tsc_scaling == "vmx"
    assert l1.kvm is not None and l1.kvm.has_tsc_control
    vm2 = l1.kvm.create_vm(name="L2", tsc_khz=1_000_000)
    v2 = vm2.create_vcpu()
    r2 = ref.tsc_scaling_ratio(1_000_000, 3_000_000, VMX_FRAC)
    assert v2.tsc_scaling_ratio == r2
    seen = set()
    for step in range(1, 40):
        run(l0, 5 * MS + step * 37 * MS)
        v1 = vm1.vcpus[v2.affinity]
        h = host_tsc(l0, v1.affinity if v1.cpu < 0 else v1.cpu)
        r1 = v1.tsc_scaling_ratio
        r12 = ref.mul_u64_u64_shr(r1, r2, VMX_FRAC)
        off12 = (ref.mul_s64_u64_shr(s64(v1.tsc_offset), r2, VMX_FRAC) + v2.tsc_offset) & U64
        hw = (ref.scale_tsc(h, r12, VMX_FRAC) + off12) & U64
        assert guest_tsc(vm2, 0) == hw
        l1_tsc = (v1.tsc_offset + ref.scale_tsc(h, r1, VMX_FRAC)) & U64
        l1_view = (v2.tsc_offset + ref.scale_tsc(l1_tsc, r2, VMX_FRAC)) & U64
        seen.add(s64(hw - l1_view))
    assert seen <= {-2, -1, 0, 1, 2}
    assert seen != {0}  # the two roundings differ (here by one cycle)


def test_user_window_lower_edge() -> None:
    """The window's lower side: data + hz > tsc_exp, so exp - hz + 1 matches and exp - hz
    does not (upstream, after a first userspace value)."""
    hz = KHZ * 1000
    for d, same_gen in ((-hz + 1, True), (-hz, False)):
        k = make_host(UPSTREAM)
        vm = kvm_of(k)
        for _ in range(2):
            vm.create_vcpu()
        vm.write_tsc(0, 20 * hz)  # generation 2, user_set_tsc
        vm.write_tsc(1, vm.last_tsc_write + d)  # same instant: tsc_exp = last_tsc_write
        assert (vm.cur_tsc_generation == 2) is same_gen, d


def test_ioctl_argument_checks() -> None:
    k = make_host(UPSTREAM)
    vm = kvm_of(k)
    vm.create_vcpu()
    with pytest.raises(TypeError, match="khz must be an int"):
        vm.set_vcpu_tsc_khz(0, "3000000")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"khz=4294967296 out of range \(0..2\*\*32-1\)"):
        vm.set_vcpu_tsc_khz(0, 1 << 32)
    with pytest.raises(ValueError, match=r"^vcpu_id=5: the VM has 1 vCPU: 0$"):
        vm.set_vcpu_tsc_khz(5, KHZ)
    with pytest.raises(ValueError, match=r"^vcpu_id=1: the VM has 1 vCPU: 0$"):
        vm.set_tsc_offset(1, 0)
    with pytest.raises(TypeError, match="offset must be an int"):
        vm.set_tsc_offset(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"khz=-1 out of range"):
        kvm_of(k).set_vm_tsc_khz(-1)
    vm.set_vcpu_tsc_khz(0, 0)  # 0 = the host's tsc_khz
    assert vm.get_vcpu_tsc_khz(0) == KHZ


def test_tiny_ratio_from_creation_never_calls_time_scale() -> None:
    """Without the clamp the loop needs a previous non-zero hw_tsc_khz: a vCPU created at
    1 kHz starts with hw_tsc_khz 0 == tgt_tsc_khz, so kvm_get_time_scale is skipped and the
    record keeps mul 0 / shift 0 (a kvmclock that stands still) instead of hanging."""
    k = make_host(GTOD, tsc_khz=TINY_HOST)
    assert k.kvm is not None
    vm = k.kvm.create_vm(tsc_khz=1)
    v = vm.create_vcpu()
    assert v.tsc_scaling_ratio == TINY_RATIO
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)
    assert (v.hw_tsc_khz, v.hv_clock.tsc_to_system_mul, v.hv_clock.tsc_shift) == (0, 0, 0)

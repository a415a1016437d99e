"""KVM clock logic (kvmclock.kvm) against known kernel behaviour (arch/x86/kvm/x86.c, 2017)."""

from __future__ import annotations

import kvmclock
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvmclock.kernel import Kernel
from kvmclock.kvm import (
    KVM_CLOCK_REALTIME,
    KVM_CLOCK_TSC_STABLE,
    KVM_REQ_CLOCK_UPDATE,
    KVM_REQ_MASTERCLOCK_UPDATE,
    MSR_KVM_SYSTEM_TIME_NEW,
    Kvm,
    KvmModule,
    SpinLock,
    request_names,
)
from kvmclock.machine import PhysicalMachine, World
from reference import kernel_math as ref

U64 = (1 << 64) - 1
MS = 1_000_000
STABLE = 1
GUEST_STOPPED = 2


def make_host(profile: str, *, cpus: int = 4, tsc_khz: int = 2_593_992, seed: int = 0) -> Kernel:
    world = World(seed)
    m = PhysicalMachine(world, cpus, tsc_khz=tsc_khz)
    k = Kernel(m, profile, name="L0")
    k.boot()
    world.run_until(MS)
    k.load_kvm()
    return k


def make_vm(host: Kernel, n: int, *, msr: bool = True) -> Kvm:
    assert host.kvm is not None
    vm = host.kvm.create_vm()
    for _ in range(n):
        vm.create_vcpu()
    if msr:
        for i in range(n):
            vm.machine.wrmsr(i, MSR_KVM_SYSTEM_TIME_NEW, (i * 64) | 1)
    return vm


def record(vm: Kvm, i: int) -> kvmclock.PvclockVcpuTimeInfo:
    gpa = vm.vcpus[i].pv_time_gpa
    return kvmclock.PvclockVcpuTimeInfo.from_bytes(bytes(vm.machine.memory[gpa : gpa + 32]))


def enter(vm: Kvm, i: int) -> None:
    vm.machine.run_on_cpu(i, lambda: None)


PROFILES = ("gtod", "series")


@pytest.mark.parametrize("profile", PROFILES)
def test_back_to_back_vcpus_match_and_enable_masterclock(profile: str) -> None:
    host = make_host(profile)
    vm = make_vm(host, 4, msr=False)
    assert vm.cur_tsc_generation == 1  # first write: new generation; the rest matched
    assert vm.nr_vcpus_matched_tsc == 3
    assert len({v.tsc_offset for v in vm.vcpus}) == 1
    assert vm.vcpus[-1].kvm_test_request(KVM_REQ_MASTERCLOCK_UPDATE)
    assert not vm.use_master_clock
    for i in range(4):
        enter(vm, i)
    assert vm.use_master_clock
    # the first recompute (VM creation, 0 vCPUs online) was off, then on
    assert [e[1] for e in vm.masterclock_timeline] == [False, True]


@pytest.mark.parametrize("profile", PROFILES)
def test_records_share_pair_after_each_vcpu_ran_twice(profile: str) -> None:
    host = make_host(profile)
    vm = make_vm(host, 4)
    for _round in range(2):
        for i in range(4):
            host.world.run_until(host.world.now_ns + 3 * MS)
            enter(vm, i)
    recs = [record(vm, i) for i in range(4)]
    assert len({(r.system_time, r.tsc_timestamp) for r in recs}) == 1
    assert all(r.flags & STABLE for r in recs)
    assert all(r.version % 2 == 0 and r.version > 0 for r in recs)
    # the shared pair is the master pair
    assert recs[0].system_time == (vm.master_kernel_ns + vm.kvmclock_offset) & U64
    assert recs[0].tsc_timestamp == (vm.master_cycle_now + vm.vcpus[0].tsc_offset) & U64


@pytest.mark.parametrize("profile", PROFILES)
def test_far_write_new_generation_then_matching_writes_snap_back(profile: str) -> None:
    host = make_host(profile)
    vm = make_vm(host, 3)
    for i in range(3):
        enter(vm, i)
    assert vm.use_master_clock
    gen0, off0 = vm.cur_tsc_generation, vm.cur_tsc_offset
    host.world.run_until(500 * MS)
    khz = vm.vcpus[0].virtual_tsc_khz
    far = vm.machine.cpus[1].read_tsc() + 5 * khz * 1000  # 5 s ahead: outside the 1 s window
    vm.write_tsc(1, far)
    assert vm.cur_tsc_generation == gen0 + 1
    assert vm.nr_vcpus_matched_tsc == 0
    assert vm.cur_tsc_offset != off0
    assert vm.vcpus[1].kvm_test_request(KVM_REQ_MASTERCLOCK_UPDATE)
    assert vm.use_master_clock  # not yet: on the next entry
    enter(vm, 1)
    assert not vm.use_master_clock
    assert not record(vm, 1).flags & STABLE
    # writes inside the window (0.2 s off the extrapolated value) snap to the generation's offset
    host.world.run_until(700 * MS)
    for i in (0, 2):
        near = vm.machine.cpus[1].read_tsc() + khz * 200
        vm.write_tsc(i, near)
        assert vm.vcpus[i].tsc_offset == vm.cur_tsc_offset
        assert vm.vcpus[i].this_tsc_generation == gen0 + 1
    assert vm.nr_vcpus_matched_tsc == 2
    assert vm.vcpus[2].kvm_test_request(KVM_REQ_MASTERCLOCK_UPDATE)  # the write that matched all
    enter(vm, 2)
    assert vm.use_master_clock
    for i in range(3):  # the others pick up the CLOCK_UPDATE on their next entry
        enter(vm, i)
    assert all(record(vm, i).flags & STABLE for i in range(3))
    assert len({vm.machine.cpus[i].read_tsc() for i in range(3)}) == 1


@settings(max_examples=60)
@given(old=st.integers(0, (1 << 32) - 1), stopped=st.booleans())
def test_version_rule_and_guest_stopped(old: int, stopped: bool) -> None:
    host = make_host("series", cpus=2)
    vm = make_vm(host, 1)
    enter(vm, 0)
    gpa = vm.vcpus[0].pv_time_gpa
    mem = vm.machine.memory
    mem[gpa : gpa + 4] = old.to_bytes(4, "little")
    mem[gpa + 29] = GUEST_STOPPED if stopped else 0
    vm.vcpus[0].kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    enter(vm, 0)
    r = record(vm, 0)
    assert r.version == (((old + 1) | 1) + 1) % 2**32
    assert bool(r.flags & GUEST_STOPPED) == stopped
    assert r.flags & STABLE


@pytest.mark.parametrize("profile", PROFILES)
def test_set_clock_sets_next_system_time_exactly(profile: str) -> None:
    host = make_host(profile)
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    host.world.run_until(250 * MS)
    target = vm.get_clock().clock + 7_000_000_123
    vm.set_clock(target)
    enter(vm, 0)
    assert vm.use_master_clock
    assert record(vm, 0).system_time == target
    data = vm.get_clock()
    assert data.clock == target and data.flags == KVM_CLOCK_TSC_STABLE
    # later: GET_CLOCK follows the record read with the host TSC (masterclock on)
    host.world.run_until(400 * MS)
    data = vm.get_clock()
    rec = record(vm, 0)
    host_tsc = host.machine.cpus[host.kvm.ioctl_cpu].read_tsc()  # type: ignore[union-attr]
    assert data.clock == rec.read_cycles((host_tsc + vm.vcpus[0].tsc_offset) & U64)


def test_set_clock_realtime_flag_and_bad_flags() -> None:
    """KVM_CLOCK_REALTIME acts under upstream (5.16+) and is refused under gtod (4.13)."""
    host = make_host("upstream")
    vm = make_vm(host, 1)
    enter(vm, 0)
    real = host.run_on_cpu(0, host.timekeeper.ktime_get_real_ns)
    target = 10**12
    vm.set_clock(target, KVM_CLOCK_REALTIME, real - 2 * 10**9)
    enter(vm, 0)
    assert record(vm, 0).system_time == target + 2 * 10**9
    with pytest.raises(ValueError, match="flags"):
        vm.set_clock(1, 1)
    with pytest.raises(ValueError, match="clock"):
        vm.set_clock(-1)
    old = make_vm(make_host("gtod"), 1)
    with pytest.raises(ValueError, match=r"profile gtod.*KVM_CLOCK_REALTIME needs Linux 5\.16"):
        old.set_clock(target, KVM_CLOCK_REALTIME, 0)


@pytest.mark.parametrize("khz", [1_000_000, 2_593_992, 2_893_437, 3_000_000, 1_234_567])
def test_record_mul_shift_equal_get_time_scale(khz: int) -> None:
    host = make_host("gtod", cpus=2, tsc_khz=khz)
    vm = make_vm(host, 2)
    enter(vm, 0)
    r = record(vm, 0)
    shift, mul = kvmclock.get_time_scale(scaled_hz=10**9, base_hz=khz * 1000)
    assert (r.tsc_shift, r.tsc_to_system_mul) == (shift, mul)
    assert (shift, mul) == ref.get_time_scale(10**9, khz * 1000)


def test_gtod_notifier_copies_every_update_series_never() -> None:
    g = make_host("gtod")
    s = make_host("series")
    assert g.kvm is not None and s.kvm is not None
    updates_at_load = g.counters["timekeeping_updates"]
    for k in (g, s):
        k.world.run_until(k.world.now_ns + 400 * MS)
    updates = g.counters["timekeeping_updates"] - updates_at_load
    assert updates >= 100  # HZ=250 ticks over 400 ms
    # pvclock_gtod_register_notifier calls the new notifier once (registration), then
    # timekeeping_update calls the chain on every update since KVM was loaded
    assert g.kvm.counters["notifier_calls"] == 1 + updates
    assert g.kvm.counters["gtod_copies"] == g.kvm.counters["notifier_calls"]
    assert g.kvm.pvclock_gtod_data.cycle_last == g.timekeeper.tkr_mono.cycle_last
    assert s.kvm.counters["notifier_calls"] == 1 and s.kvm.counters["gtod_copies"] == 0


def test_migration_to_unstable_tsc_requests_global_update() -> None:
    host = make_host("gtod", cpus=2)
    vm = make_vm(host, 1)
    enter(vm, 0)
    assert vm.use_master_clock
    host.mark_tsc_unstable("test")
    host.world.run_until(host.world.now_ns + 20 * MS)
    vm.migrate_vcpu(0, 1)
    enter(vm, 0)
    assert vm.vcpus[0].cpu == 1
    assert vm.vcpus[0].tsc_catchup
    assert not vm.use_master_clock
    assert not record(vm, 0).flags & STABLE


def test_backwards_tsc_on_migration_marks_host_unstable() -> None:
    world = World(1)
    m = PhysicalMachine(world, 2, tsc_khz=2_000_000)
    host = Kernel(m, "series", name="L0")
    host.boot()
    world.run_until(MS)
    host.load_kvm()
    vm = make_vm(host, 1)
    enter(vm, 0)
    m.cpus[1].add_tsc_jump(world.now_ns + 5 * MS, -2_000_000_000)  # CPU 1 one second behind
    world.run_until(world.now_ns + 10 * MS)
    vm.migrate_vcpu(0, 1)
    enter(vm, 0)
    assert host.tsc_unstable
    assert host.kvm is not None and host.kvm.counters["backwards_tsc"] == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_trace_sequence_at_vm_and_vcpu_creation(profile: str) -> None:
    host = make_host(profile)
    assert host.kvm is not None
    vm = make_vm(host, 1, msr=False)
    enter(vm, 0)
    events = [(r[5], r[6]) for r in host.kvm.trace_records]
    names = [e for e, _ in events]
    assert names[:4] == [
        "kvm_update_master_clock",
        "kvm_write_tsc_offset",
        "kvm_track_tsc",
        "kvm_update_master_clock",
    ]
    hc = "tsc" if profile == "gtod" else "stable 1"
    assert events[0][1] == f"masterclock 0 hostclock {hc} offsetmatched 0"
    assert events[2][1] == f"vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 1 hostclock {hc}"
    assert events[3][1] == f"masterclock 1 hostclock {hc} offsetmatched 1"
    nxt = int(events[1][1].split("next=")[1])
    assert nxt == vm.vcpus[0].tsc_offset


def test_spinlock_and_requests_helpers() -> None:
    lock = SpinLock("l")
    lock.acquire("a")
    with pytest.raises(RuntimeError, match="deadlock"):
        lock.acquire("b")
    with pytest.raises(RuntimeError, match="released"):
        lock.release("b")
    lock.release("a")
    assert not lock.locked
    assert request_names((1 << KVM_REQ_CLOCK_UPDATE) | (1 << KVM_REQ_MASTERCLOCK_UPDATE)) == [
        "KVM_REQ_CLOCK_UPDATE",
        "KVM_REQ_MASTERCLOCK_UPDATE",
    ]
    with pytest.raises(ValueError, match="mask"):
        request_names(-1)


def test_bad_arguments() -> None:
    host = make_host("series", cpus=2)
    assert host.kvm is not None
    with pytest.raises(ValueError, match="fault"):
        KvmModule(host, fault="nope")
    with pytest.raises(ValueError, match="memory_size"):
        host.kvm.create_vm(memory_size=3)
    vm = make_vm(host, 1)
    with pytest.raises(ValueError, match="affinity"):
        vm.create_vcpu(affinity=7)
    with pytest.raises(ValueError, match="cpu"):
        vm.machine.run_on_cpu(3, lambda: None)
    with pytest.raises(ValueError, match="msr"):
        vm.machine.wrmsr(0, 0x1234, 0)
    with pytest.raises(ValueError, match="vcpu_id"):
        vm.write_tsc(5, 0)

"""Edge tests pinning each rule of KVM's clock logic (arch/x86/kvm/x86.c, v4.13).

Every expected value is computed here from the kernel's integer arithmetic (``tests/reference``
for ``kvm_get_time_scale``, ``pvclock_scale_delta``, ``adjust_tsc_khz``, ``__scale_tsc``) and from
inputs the test chose or read from the host (host TSC, host ``ktime_get_boot_ns``), never from
the values the KVM model computed.  Rules are probed at +-1 cycle / +-1 kHz of their bounds:

* ``kvm_write_tsc``: the one-second window both sides, with and without elapsed time, and its
  u64 wrap-around; host- vs guest-initiated writes (``ia32_tsc_adjust_msr``); zero writes;
  ``already_matched``; a kHz change opens a generation; stable vs unstable offset; the
  generation's ``this_tsc_nsec``/``this_tsc_write``.
* ``kvm_set_msr_common``: ``boot_vcpu_runs_old_kvmclock`` (vCPU 0, guest-initiated only).
* ``kvm_arch_vcpu_load``: first load, migration, unstable host (re-offset + catch-up).
* ``kvm_guest_time_update``: catch-up only when the computed TSC is ahead; scaled kHz.
* ``pvclock_update_vm_gtod_copy``: each of the four conjuncts; ``kvm_track_tsc_matching``.
* ``kvm_set_tsc_khz``: the 250 ppm tolerance; ``kvm_setup_pvclock_page``; ``get_kvmclock_ns``;
  ``KVM_SET_CLOCK`` (2017 form and the KVM_CLOCK_REALTIME form); the request order of
  ``vcpu_enter_guest``.
"""

from __future__ import annotations

import pytest
from kvmclock.kernel import Kernel
from kvmclock.kvm import (
    KVM_CLOCK_REALTIME,
    KVM_CLOCK_TSC_STABLE,
    KVM_REQ_CLOCK_UPDATE,
    KVM_REQ_GLOBAL_CLOCK_UPDATE,
    KVM_REQ_MASTERCLOCK_UPDATE,
    KVM_REQ_MCLOCK_INPROGRESS,
    KVM_REQ_MIGRATE_TIMER,
    MSR_IA32_TSC,
    MSR_KVM_SYSTEM_TIME,
    MSR_KVM_SYSTEM_TIME_NEW,
    Kvm,
    KvmModule,
    Vcpu,
)
from kvmclock.kvm.x86 import KVMCLOCK_UPDATE_DELAY_NS
from kvmclock.machine import PhysicalMachine, World
from kvmclock.profiles import PROFILES as PROFILES_BY_NAME
from reference import kernel_math as ref

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
MS = 1_000_000
NSEC_PER_SEC = 1_000_000_000
KHZ = 2_593_992
HZ = KHZ * 1000
FRAC = 48  # VMX kvm_tsc_scaling_ratio_frac_bits
STABLE = 1
GUEST_STOPPED = 2
PROFILES = ("gtod", "series")
PROFILE_MAP = PROFILES_BY_NAME


# ---------------------------------------------------------------------------------------------
# helpers: build the stack, read the host, the kernel's arithmetic written out
# ---------------------------------------------------------------------------------------------
def make_host(profile: str = "gtod", *, cpus: int = 2, tsc_khz: int = KHZ) -> Kernel:
    world = World(0)
    k = Kernel(PhysicalMachine(world, cpus, tsc_khz=tsc_khz), profile, name="L0")
    k.boot()
    world.run_until(MS)
    k.load_kvm()
    return k


def kvm_of(host: Kernel) -> KvmModule:
    assert host.kvm is not None
    return host.kvm


def make_vm(host: Kernel, n: int, *, msr: bool = True, tsc_khz: int | None = None) -> Kvm:
    vm = kvm_of(host).create_vm(tsc_khz=tsc_khz)
    for _ in range(n):
        vm.create_vcpu()
    if msr:
        for i in range(n):
            vm.machine.wrmsr(i, MSR_KVM_SYSTEM_TIME_NEW, (i * 64) | 1)
    return vm


def enter(vm: Kvm, i: int) -> None:
    vm.machine.run_on_cpu(i, lambda: None)


def advance(host: Kernel, ns: int) -> None:
    host.world.run_until(host.world.now_ns + ns)


def boot_ns(host: Kernel, cpu: int) -> int:
    """Host ``ktime_get_boot_ns()`` on ``cpu`` now (what KVM reads at this instant)."""
    return host.run_on_cpu(cpu, host.timekeeper.ktime_get_boot_ns)


def raw_base_ns(host: Kernel, cpu: int) -> int:
    """Host CLOCK_MONOTONIC_RAW + offs_boot on ``cpu`` now (the 5.5+ kvmclock base)."""
    tk = host.timekeeper
    return host.run_on_cpu(cpu, tk.ktime_get_raw_ns) + tk.offs_boot


def real_ns(host: Kernel, cpu: int) -> int:
    return host.run_on_cpu(cpu, host.timekeeper.ktime_get_real_ns)


def host_tsc(host: Kernel, cpu: int) -> int:
    return int(host.machine.cpus[cpu].read_tsc())


def record(vm: Kvm, i: int) -> ref.Record:
    gpa = vm.vcpus[i].pv_time_gpa
    return ref.Record.unpack(bytes(vm.machine.memory[gpa : gpa + 32]))


def nsec_to_cycles(khz: int, nsec: int) -> int:
    """x86.c ``nsec_to_cycles``: pvclock_scale_delta(nsec, virtual_tsc_mult, virtual_tsc_shift)
    with (shift, mult) = kvm_get_time_scale(khz * 1000, NSEC_PER_SEC) (``kvm_set_tsc_khz``)."""
    shift, mult = ref.get_time_scale(khz * 1000, NSEC_PER_SEC)
    return ref.pvclock_scale_delta(nsec & U64, mult, shift)


def pending(v: Vcpu) -> set[int]:
    return {r for r in range(64) if v.requests >> r & 1}


def trace_events(host: Kernel, start: int) -> list[tuple[str, str]]:
    return [(r[5], r[6]) for r in kvm_of(host).trace_records[start:]]


def n_trace(host: Kernel) -> int:
    return len(kvm_of(host).trace_records)


# ---------------------------------------------------------------------------------------------
# kvm_write_tsc: the one-second window
# ---------------------------------------------------------------------------------------------
def _generation_at(host: Kernel, vm: Kvm, value: int) -> tuple[int, int, int]:
    """A host-initiated write of ``value`` on vCPU 0 far from any expectation: a new generation.
    Returns (boot ns, host TSC, offset) at that write."""
    n0, h0 = boot_ns(host, 0), host_tsc(host, 0)
    gen = vm.cur_tsc_generation
    vm.write_tsc(0, value)
    assert vm.cur_tsc_generation == gen + 1
    return n0, h0, (value - h0) & U64


@pytest.mark.parametrize("elapsed_ms", [0, 300])
@pytest.mark.parametrize(
    ("edge", "delta", "synced"),
    [("high", -1, True), ("high", 0, False), ("low", 1, True), ("low", 0, False)],
)
def test_write_window_edges(elapsed_ms: int, edge: str, delta: int, synced: bool) -> None:
    """synchronizing = data < tsc_exp + tsc_hz && data + tsc_hz > tsc_exp (strict, both)."""
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    advance(host, 2000 * MS)
    a = (vm.machine.cpus[0].read_tsc() + 5 * HZ) & U64  # 5 s ahead: outside any window
    n0, _h0, off0 = _generation_at(host, vm, a)
    gen = vm.cur_tsc_generation
    advance(host, elapsed_ms * MS)
    n1 = boot_ns(host, 1)
    tsc_exp = (a + nsec_to_cycles(KHZ, n1 - n0)) & U64
    if elapsed_ms:
        assert tsc_exp > a
    edge_value = tsc_exp + HZ if edge == "high" else tsc_exp - HZ
    data = edge_value + delta
    h1 = host_tsc(host, 1)
    vm.write_tsc(1, data)
    v1 = vm.vcpus[1]
    if synced:
        assert vm.cur_tsc_generation == gen
        assert v1.tsc_offset == off0  # stable host: the generation's offset
        assert vm.nr_vcpus_matched_tsc == 1
        assert (v1.this_tsc_write, v1.this_tsc_nsec) == (a, n0)
    else:
        assert vm.cur_tsc_generation == gen + 1
        assert v1.tsc_offset == (data - h1) & U64  # kvm_compute_tsc_offset
        assert vm.nr_vcpus_matched_tsc == 0
        assert (v1.this_tsc_write, v1.this_tsc_nsec) == (data, n1)
    assert v1.this_tsc_generation == vm.cur_tsc_generation
    assert (vm.last_tsc_write, vm.last_tsc_nsec, vm.last_tsc_khz) == (data, n1, KHZ)
    assert v1.last_guest_tsc == data


@pytest.mark.parametrize(
    ("a", "elapsed_ms", "data_of", "synced"),
    [
        # tsc_exp + tsc_hz wraps to a small number: a value 1 cycle above tsc_exp is outside
        (U64 - HZ // 2, 0, lambda exp: exp + 1, False),
        # tsc_exp just under 2**64 - tsc_hz: data + tsc_hz wraps, the second test fails
        (U64 + 1 - 3 * HZ // 2, 0, lambda exp: exp + 3 * HZ // 4, False),
        # a value below tsc_exp (no wrap) is inside: the same pair without the wrap synchronises
        (U64 + 1 - 3 * HZ // 2, 0, lambda exp: exp - 3 * HZ // 4, True),
        # last_tsc_write + cycles(elapsed) wraps to a small tsc_exp; its own value matches
        (U64 - 9, 300, lambda exp: exp, True),
    ],
)
def test_write_window_u64_wrap(a: int, elapsed_ms: int, data_of: object, synced: bool) -> None:
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    advance(host, 2000 * MS)
    n0, _h0, off0 = _generation_at(host, vm, a)
    gen = vm.cur_tsc_generation
    advance(host, elapsed_ms * MS)
    tsc_exp = (a + nsec_to_cycles(KHZ, boot_ns(host, 1) - n0)) & U64
    assert callable(data_of)
    data = data_of(tsc_exp) & U64
    vm.write_tsc(1, data)
    assert (vm.cur_tsc_generation == gen) is synced
    assert (vm.vcpus[1].tsc_offset == off0) is synced


def test_window_is_extended_by_every_matched_write() -> None:
    """last_tsc_write/last_tsc_nsec move at each write, so a chain of writes 0.9 s apart
    (in value) keeps matching though the last is 1.8 s from the generation's first."""
    host = make_host()
    vm = make_vm(host, 3, msr=False)
    advance(host, 2000 * MS)
    a = (vm.machine.cpus[0].read_tsc() + 5 * HZ) & U64
    _n0, _h0, off0 = _generation_at(host, vm, a)
    gen = vm.cur_tsc_generation
    step = 9 * HZ // 10
    vm.write_tsc(1, a + step)
    vm.write_tsc(2, a + 2 * step)
    assert vm.cur_tsc_generation == gen
    assert vm.vcpus[2].tsc_offset == off0
    assert vm.nr_vcpus_matched_tsc == 2


# ---------------------------------------------------------------------------------------------
# kvm_write_tsc: host vs guest, zero writes, already_matched, kHz, stable vs unstable
# ---------------------------------------------------------------------------------------------
def test_guest_write_inside_window_synchronises_and_moves_tsc_adjust() -> None:
    """v4.13: a guest MSR_IA32_TSC write goes through the same window; it also adds
    (new offset - old offset) to MSR_IA32_TSC_ADJUST (update_ia32_tsc_adjust_msr)."""
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    advance(host, 2000 * MS)
    a = (vm.machine.cpus[0].read_tsc() + 5 * HZ) & U64
    _n0, _h0, off0 = _generation_at(host, vm, a)
    assert vm.vcpus[0].ia32_tsc_adjust_msr == 0  # host-initiated: TSC_ADJUST untouched
    v1 = vm.vcpus[1]
    old = v1.tsc_offset
    gen = vm.cur_tsc_generation
    vm.machine.wrmsr(1, MSR_IA32_TSC, a + HZ - 1)
    assert vm.cur_tsc_generation == gen
    assert v1.tsc_offset == off0
    assert v1.ia32_tsc_adjust_msr & U64 == (off0 - old) & U64
    # a guest write outside the window: new generation, TSC_ADJUST moves by the new delta
    before_adj, before_off = v1.ia32_tsc_adjust_msr, v1.tsc_offset
    far = (a + 10 * HZ) & U64
    h = host_tsc(host, 1)
    vm.machine.wrmsr(1, MSR_IA32_TSC, far)
    assert vm.cur_tsc_generation == gen + 1
    assert v1.tsc_offset == (far - h) & U64
    assert (v1.ia32_tsc_adjust_msr - before_adj) & U64 == ((far - h) - before_off) & U64


def test_zero_write_host_synchronises_guest_does_not() -> None:
    """data == 0 && host_initiated forces synchronizing (vCPU creation/hotplug); a guest
    write of 0 goes through the window, which 0 is far outside of here."""
    host = make_host()
    vm = make_vm(host, 3, msr=False)
    advance(host, 2000 * MS)
    a = (vm.machine.cpus[0].read_tsc() + 5 * HZ) & U64  # tsc_exp >> tsc_hz: 0 is outside
    _n0, _h0, off0 = _generation_at(host, vm, a)
    gen = vm.cur_tsc_generation
    advance(host, 10 * MS)
    vm.write_tsc(1, 0)  # host-initiated
    assert vm.cur_tsc_generation == gen
    assert vm.vcpus[1].tsc_offset == off0
    assert vm.nr_vcpus_matched_tsc == 1
    # that write moved last_tsc_write to 0: open a new generation far from 0 again
    a2 = (a + 20 * HZ) & U64
    _generation_at(host, vm, a2)
    gen = vm.cur_tsc_generation
    h = host_tsc(host, vm.vcpus[2].affinity)
    vm.machine.wrmsr(2, MSR_IA32_TSC, 0)  # guest-initiated
    assert vm.cur_tsc_generation == gen + 1
    assert vm.vcpus[2].tsc_offset == (0 - h) & U64
    assert vm.nr_vcpus_matched_tsc == 0


def test_host_zero_write_with_other_khz_opens_generation() -> None:
    """A match also needs virtual_tsc_khz == last_tsc_khz: a forced (zero) write from a vCPU
    at another frequency still starts a generation, and last_tsc_khz follows it."""
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    advance(host, 100 * MS)
    m = kvm_of(host)
    v1 = vm.vcpus[1]
    other = KHZ // 2
    m.kvm_set_tsc_khz(v1, other, KHZ)  # KVM_SET_TSC_KHZ
    gen = vm.cur_tsc_generation
    vm.write_tsc(1, 0)
    assert vm.cur_tsc_generation == gen + 1
    assert vm.last_tsc_khz == other
    assert vm.nr_vcpus_matched_tsc == 0
    # back at the first frequency: vCPU 0's forced write is again a new generation
    vm.write_tsc(0, 0)
    assert vm.cur_tsc_generation == gen + 2
    assert vm.last_tsc_khz == KHZ


def test_already_matched_is_not_counted_twice() -> None:
    host = make_host()
    vm = make_vm(host, 3, msr=False)
    advance(host, 2000 * MS)
    a = (vm.machine.cpus[0].read_tsc() + 5 * HZ) & U64
    _generation_at(host, vm, a)
    assert vm.nr_vcpus_matched_tsc == 0
    vm.write_tsc(1, a)
    assert vm.nr_vcpus_matched_tsc == 1
    vm.write_tsc(1, a)  # same vCPU, same generation
    assert vm.nr_vcpus_matched_tsc == 1
    vm.write_tsc(0, a)  # the vCPU that opened the generation
    assert vm.nr_vcpus_matched_tsc == 1
    vm.write_tsc(2, a)
    assert vm.nr_vcpus_matched_tsc == 2


def test_creation_writes_match_one_generation() -> None:
    """kvm_arch_vcpu_postcreate writes 0 host-initiated: one generation, n-1 matched, and the
    generation's (cur_tsc_nsec, cur_tsc_write) = (boot ns at the first write, 0)."""
    host = make_host()
    n = boot_ns(host, 0)
    h = host_tsc(host, 0)
    vm = make_vm(host, 3, msr=False)
    assert vm.cur_tsc_generation == 1
    assert vm.nr_vcpus_matched_tsc == 2
    for v in vm.vcpus:
        assert (v.this_tsc_generation, v.this_tsc_nsec, v.this_tsc_write) == (1, n, 0)
        assert v.tsc_offset == (0 - h) & U64
    assert (vm.cur_tsc_nsec, vm.cur_tsc_write, vm.cur_tsc_offset) == (n, 0, (0 - h) & U64)


def test_unstable_host_matched_write_adds_elapsed_cycles() -> None:
    """Unstable TSC: data += nsec_to_cycles(elapsed); offset = data - rdtsc (not the
    generation's offset); last_tsc_write/last_guest_tsc take the advanced value."""
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    host.mark_tsc_unstable("test")
    advance(host, 2000 * MS)
    a = (vm.machine.cpus[0].read_tsc() + 5 * HZ) & U64
    n0, _h0, _off0 = _generation_at(host, vm, a)
    gen = vm.cur_tsc_generation
    advance(host, 250 * MS)
    n1, h1 = boot_ns(host, 1), host_tsc(host, 1)
    want = (a + nsec_to_cycles(KHZ, n1 - n0)) & U64
    vm.write_tsc(1, a)
    v1 = vm.vcpus[1]
    assert vm.cur_tsc_generation == gen
    assert v1.tsc_offset == (want - h1) & U64
    assert vm.last_tsc_write == want and v1.last_guest_tsc == want
    assert (v1.this_tsc_write, v1.this_tsc_nsec) == (a, n0)
    assert (vm.cur_tsc_write, vm.cur_tsc_nsec) == (a, n0)
    assert vm.nr_vcpus_matched_tsc == 1


def test_write_tsc_traces_offset_and_track() -> None:
    host = make_host()
    vm = make_vm(host, 1, msr=False)
    advance(host, 10 * MS)
    v = vm.vcpus[0]
    prev = v.tsc_offset
    h = host_tsc(host, 0)
    start = n_trace(host)
    far = 12345 + 10 * HZ  # 10 s past the extrapolated 0: a new generation
    vm.write_tsc(0, far)
    assert not vm.use_master_clock  # its MASTERCLOCK_UPDATE is not processed yet
    assert trace_events(host, start) == [
        ("kvm_write_tsc_offset", f"vcpu=0 prev={prev} next={(far - h) & U64}"),
        ("kvm_track_tsc", "vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 1 hostclock tsc"),
    ]


# ---------------------------------------------------------------------------------------------
# kvm_track_tsc_matching and the masterclock conditions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_track_tsc_matching_request_rule(profile: str) -> None:
    """Request MASTERCLOCK_UPDATE iff use_master_clock, or host clock qualifies and
    nr_vcpus_matched_tsc + 1 == online_vcpus."""
    host = make_host(profile)
    vm = make_vm(host, 3, msr=False)
    m = kvm_of(host)
    v = vm.vcpus[2]

    def requests_update(nr: int, use: bool) -> bool:
        vm.nr_vcpus_matched_tsc = nr
        vm.use_master_clock = use
        v.requests = 0
        host.run_on_cpu(0, lambda: m.kvm_track_tsc_matching(v))
        return v.kvm_test_request(KVM_REQ_MASTERCLOCK_UPDATE)

    assert requests_update(2, False)  # 2 + 1 == 3 online
    assert not requests_update(1, False)
    assert not requests_update(3, False)
    assert requests_update(0, True)
    # host clock not qualifying: only an active masterclock requests
    host.mark_tsc_unstable("test")
    advance(host, 2000 * MS)
    assert host.timekeeper.tkr_mono.clock is not None
    assert host.timekeeper.tkr_mono.clock.name != "tsc"
    assert not requests_update(2, False)
    assert requests_update(0, True)


@pytest.mark.parametrize("profile", PROFILES)
def test_masterclock_each_conjunct(profile: str) -> None:
    """use_master_clock = host clock qualifies && vcpus_matched && !backwards_tsc_observed
    && !boot_vcpu_runs_old_kvmclock: each term alone turns it off."""
    host = make_host(profile)
    vm = make_vm(host, 2)
    m = kvm_of(host)

    def recompute() -> bool:
        host.run_on_cpu(0, lambda: m.kvm_gen_update_masterclock(vm, "test"))
        return vm.use_master_clock

    assert recompute()
    vm.nr_vcpus_matched_tsc = 0  # 0 + 1 != 2 online
    assert not recompute()
    vm.nr_vcpus_matched_tsc = 1
    assert recompute()
    vm.backwards_tsc_observed = True
    assert not recompute()
    vm.backwards_tsc_observed = False
    assert recompute()
    vm.boot_vcpu_runs_old_kvmclock = True
    assert not recompute()
    vm.boot_vcpu_runs_old_kvmclock = False
    assert recompute()
    assert [e[1] for e in vm.masterclock_timeline][-7:] == [
        True, False, True, False, True, False, True,
    ]


@pytest.mark.parametrize("profile", PROFILES)
def test_masterclock_host_clock_term_and_master_pair(profile: str) -> None:
    """The master pair is (host boot ns, host TSC) at the recompute; once the host clock no
    longer qualifies masterclock goes off and the old pair is kept."""
    host = make_host(profile)
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    m = kvm_of(host)
    advance(host, 30 * MS)
    n, h = boot_ns(host, 0), host_tsc(host, 0)
    host.run_on_cpu(0, lambda: m.kvm_gen_update_masterclock(vm, "test"))
    assert vm.use_master_clock
    assert (vm.master_kernel_ns, vm.master_cycle_now) == (n, h)
    host.mark_tsc_unstable("test")
    advance(host, 2000 * MS)
    host.run_on_cpu(0, lambda: m.kvm_gen_update_masterclock(vm, "test"))
    assert not vm.use_master_clock
    assert (vm.master_kernel_ns, vm.master_cycle_now) == (n, h)
    start = n_trace(host)
    host.run_on_cpu(0, lambda: m.kvm_gen_update_masterclock(vm, "test"))
    hc = "none" if profile == "gtod" else "stable 0"  # trace.h host_clocks: VCLOCK_NONE
    assert trace_events(host, start) == [
        ("kvm_update_master_clock", f"masterclock 0 hostclock {hc} offsetmatched 1")
    ]


def test_gen_update_masterclock_requests_clock_update_on_all() -> None:
    host = make_host()
    vm = make_vm(host, 3)
    m = kvm_of(host)
    for v in vm.vcpus:
        v.requests = 0
    host.run_on_cpu(0, lambda: m.kvm_gen_update_masterclock(vm, "test"))
    for v in vm.vcpus:
        assert pending(v) == {KVM_REQ_CLOCK_UPDATE}
    assert not vm.masterclock_lock.locked


# ---------------------------------------------------------------------------------------------
# boot_vcpu_runs_old_kvmclock (kvm_set_msr_common)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_boot_vcpu_old_kvmclock_msr_switches_masterclock(profile: str) -> None:
    host = make_host(profile)
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    assert vm.use_master_clock
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME, 0 | 1)  # boot vCPU, old MSR
    assert vm.boot_vcpu_runs_old_kvmclock
    assert not vm.use_master_clock
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 0 | 1)
    assert not vm.boot_vcpu_runs_old_kvmclock
    assert vm.use_master_clock
    # a non-boot vCPU on the old MSR changes nothing
    vm.machine.wrmsr(1, MSR_KVM_SYSTEM_TIME, 64 | 1)
    assert not vm.boot_vcpu_runs_old_kvmclock
    assert vm.use_master_clock
    # nor does a host-initiated write on vCPU 0 (KVM_SET_MSRS when restoring)
    m = kvm_of(host)
    v0 = vm.vcpus[0]
    v0.requests = 0
    host.run_on_cpu(
        0, lambda: m.kvm_set_msr_common(v0, MSR_KVM_SYSTEM_TIME, 1, host_initiated=True)
    )
    assert not vm.boot_vcpu_runs_old_kvmclock
    assert pending(v0) == {KVM_REQ_GLOBAL_CLOCK_UPDATE}
    enter(vm, 0)
    assert vm.use_master_clock


def test_old_kvmclock_requests_masterclock_update_only_on_change() -> None:
    host = make_host()
    vm = make_vm(host, 1, msr=False)
    m = kvm_of(host)
    v0 = vm.vcpus[0]

    def guest_write(msr: int) -> set[int]:
        v0.requests = 0
        host.run_on_cpu(0, lambda: m.kvm_set_msr_common(v0, msr, 1))
        return pending(v0)

    assert guest_write(MSR_KVM_SYSTEM_TIME_NEW) == {KVM_REQ_GLOBAL_CLOCK_UPDATE}  # no switch
    assert guest_write(MSR_KVM_SYSTEM_TIME) == {
        KVM_REQ_MASTERCLOCK_UPDATE,
        KVM_REQ_GLOBAL_CLOCK_UPDATE,
    }
    assert guest_write(MSR_KVM_SYSTEM_TIME) == {KVM_REQ_GLOBAL_CLOCK_UPDATE}
    assert guest_write(MSR_KVM_SYSTEM_TIME_NEW) == {
        KVM_REQ_MASTERCLOCK_UPDATE,
        KVM_REQ_GLOBAL_CLOCK_UPDATE,
    }
    assert guest_write(MSR_KVM_SYSTEM_TIME_NEW) == {KVM_REQ_GLOBAL_CLOCK_UPDATE}


def test_system_time_msr_enable_bit_and_gpa() -> None:
    """vcpu->arch.time = data; the record is enabled at gpa data & ~1 only with bit 0 set
    and only when the 32 bytes lie in guest memory (kvm_gfn_to_hva_cache_init)."""
    host = make_host()
    vm = make_vm(host, 1, msr=False)
    m = kvm_of(host)
    v = vm.vcpus[0]
    size = len(vm.machine.memory)

    def write(data: int) -> None:
        host.run_on_cpu(0, lambda: m.kvm_set_msr_common(v, MSR_KVM_SYSTEM_TIME_NEW, data))

    write(0x101)
    assert (v.time, v.pv_time_enabled, v.pv_time_gpa) == (0x101, True, 0x100)
    write(0x200)  # bit 0 clear: disabled (kvmclock_reset), gpa kept
    assert (v.time, v.pv_time_enabled) == (0x200, False)
    write((size - 32) | 1)
    assert (v.pv_time_enabled, v.pv_time_gpa) == (True, size - 32)
    write((size - 30) | 1)
    assert not v.pv_time_enabled


# ---------------------------------------------------------------------------------------------
# kvm_arch_vcpu_load
# ---------------------------------------------------------------------------------------------
def test_first_load_requests_global_update_even_with_masterclock() -> None:
    """vcpu->cpu == -1: GLOBAL_CLOCK_UPDATE regardless of masterclock (a hotplugged vCPU)."""
    host = make_host()
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    assert vm.use_master_clock
    m = kvm_of(host)
    new = Vcpu(vm, 2, 1)  # not loaded yet: cpu == -1
    m.kvm_set_tsc_khz(new, KHZ, KHZ)
    host.run_on_cpu(1, lambda: m.kvm_arch_vcpu_load(new, 1))
    assert pending(new) == {KVM_REQ_GLOBAL_CLOCK_UPDATE, KVM_REQ_MIGRATE_TIMER}
    assert new.cpu == 1
    # a later load on the same CPU with masterclock on and a stable TSC requests nothing
    new.requests = 0
    host.run_on_cpu(1, lambda: m.kvm_arch_vcpu_put(new))
    advance(host, 5 * MS)
    host.run_on_cpu(1, lambda: m.kvm_arch_vcpu_load(new, 1))
    assert pending(new) == set()
    # migration with masterclock on: only MIGRATE_TIMER
    host.run_on_cpu(0, lambda: m.kvm_arch_vcpu_load(new, 0))
    assert pending(new) == {KVM_REQ_MIGRATE_TIMER}
    assert new.cpu == 0
    # migration with masterclock off: GLOBAL_CLOCK_UPDATE too
    vm.use_master_clock = False
    new.requests = 0
    host.run_on_cpu(1, lambda: m.kvm_arch_vcpu_load(new, 1))
    assert pending(new) == {KVM_REQ_GLOBAL_CLOCK_UPDATE, KVM_REQ_MIGRATE_TIMER}
    # same CPU, masterclock off, stable: the block is skipped entirely
    new.requests = 0
    host.run_on_cpu(1, lambda: m.kvm_arch_vcpu_load(new, 1))
    assert pending(new) == set()
    assert not new.tsc_catchup


def test_hotplugged_vcpu_gets_global_clock_update() -> None:
    host = make_host()
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    assert vm.use_master_clock
    new = vm.create_vcpu()
    assert new.kvm_test_request(KVM_REQ_GLOBAL_CLOCK_UPDATE)


def test_tsc_offset_adjustment_applied_on_load() -> None:
    host = make_host()
    vm = make_vm(host, 1)
    enter(vm, 0)
    m = kvm_of(host)
    v = vm.vcpus[0]
    before = v.tsc_offset
    v.tsc_offset_adjustment = 1000
    v.requests = 0
    host.run_on_cpu(0, lambda: m.kvm_arch_vcpu_load(v, 0))
    assert v.tsc_offset == (before + 1000) & U64
    assert v.tsc_offset_adjustment == 0
    assert pending(v) == {KVM_REQ_CLOCK_UPDATE}


def test_unstable_load_reoffsets_from_last_guest_tsc() -> None:
    """Unstable TSC: every load (same CPU too) sets offset = last_guest_tsc - rdtsc and
    tsc_catchup; GLOBAL_CLOCK_UPDATE as masterclock is off."""
    host = make_host()
    vm = make_vm(host, 1)
    enter(vm, 0)
    m = kvm_of(host)
    v = vm.vcpus[0]
    host.mark_tsc_unstable("test")
    advance(host, 40 * MS)
    enter(vm, 0)  # masterclock goes off
    assert not vm.use_master_clock
    last = v.last_guest_tsc
    advance(host, 25 * MS)
    v.requests = 0
    h = host_tsc(host, 0)
    host.run_on_cpu(0, lambda: m.kvm_arch_vcpu_load(v, 0))
    assert v.tsc_offset == (last - h) & U64
    assert v.tsc_catchup
    assert pending(v) == {KVM_REQ_GLOBAL_CLOCK_UPDATE}


def test_backwards_tsc_on_load_marks_unstable_and_stops_the_guest_tsc() -> None:
    world = World(3)
    machine = PhysicalMachine(world, 2, tsc_khz=KHZ)
    host = Kernel(machine, "gtod", name="L0")
    host.boot()
    world.run_until(MS)
    host.load_kvm()
    vm = make_vm(host, 1)
    enter(vm, 0)
    v = vm.vcpus[0]
    machine.cpus[1].add_tsc_jump(world.now_ns + 5 * MS, -HZ)
    advance(host, 10 * MS)
    m = kvm_of(host)
    last = v.last_guest_tsc
    assert not host.tsc_unstable
    h = host_tsc(host, 1)
    host.run_on_cpu(1, lambda: m.kvm_arch_vcpu_load(v, 1))
    assert host.tsc_unstable
    assert v.tsc_offset == (last - h) & U64
    assert v.tsc_catchup


# ---------------------------------------------------------------------------------------------
# kvm_guest_time_update: catch-up
# ---------------------------------------------------------------------------------------------
def test_catchup_record_follows_compute_guest_tsc() -> None:
    """Unstable host: the guest TSC stood still while descheduled (re-offset from
    last_guest_tsc); the update catches it up to compute_guest_tsc(kernel_ns) =
    this_tsc_write + cycles(kernel_ns - this_tsc_nsec)."""
    host = make_host()
    vm = make_vm(host, 1)
    enter(vm, 0)
    host.mark_tsc_unstable("test")
    advance(host, 2000 * MS)
    w = 7 * HZ
    n0, _h0, _off = _generation_at(host, vm, w)  # this_tsc_write = w, this_tsc_nsec = n0
    advance(host, 50 * MS)
    n1, h1 = boot_ns(host, 0), host_tsc(host, 0)
    enter(vm, 0)
    v = vm.vcpus[0]
    want = (w + nsec_to_cycles(KHZ, n1 - n0)) & U64
    assert want > w
    assert v.tsc_catchup
    r = record(vm, 0)
    assert r.tsc_timestamp == want
    assert r.system_time == (n1 + vm.kvmclock_offset) & U64
    assert not r.flags & STABLE
    assert v.tsc_offset == (want - h1) & U64
    assert vm.machine.cpus[0].read_tsc() == want
    assert v.last_guest_tsc == want


@pytest.mark.parametrize(("ahead", "catchup"), [(1, True), (0, True), (-1, True), (5, False)])
def test_catchup_only_when_computed_tsc_is_ahead(ahead: int, catchup: bool) -> None:
    host = make_host()
    vm = make_vm(host, 1)
    enter(vm, 0)
    host.mark_tsc_unstable("test")
    advance(host, 2000 * MS)
    enter(vm, 0)
    assert not vm.use_master_clock
    advance(host, 3 * MS)
    m = kvm_of(host)
    v = vm.vcpus[0]
    n, h = boot_ns(host, 0), host_tsc(host, 0)
    ts = (v.tsc_offset + h) & U64  # kvm_read_l1_tsc, default ratio
    off = v.tsc_offset
    v.tsc_catchup = catchup
    v.this_tsc_nsec = n  # cycles(kernel_ns - this_tsc_nsec) = 0
    v.this_tsc_write = ts + ahead
    start = n_trace(host)
    host.run_on_cpu(0, lambda: m.kvm_guest_time_update(v))
    names = [e for e, _ in trace_events(host, start)]
    if catchup and ahead > 0:
        assert v.tsc_offset == (off + ahead) & U64
        assert record(vm, 0).tsc_timestamp == ts + ahead
        assert names == ["kvm_write_tsc_offset", "kvm_pvclock_update"]
    else:
        assert v.tsc_offset == off
        assert record(vm, 0).tsc_timestamp == ts
        assert names == ["kvm_pvclock_update"]
    assert v.last_guest_tsc == record(vm, 0).tsc_timestamp


# ---------------------------------------------------------------------------------------------
# kvm_guest_time_update: the record
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_masterclock_record_uses_master_pair(profile: str) -> None:
    host = make_host(profile)
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    advance(host, 20 * MS)
    n, h = boot_ns(host, 0), host_tsc(host, 0)
    m = kvm_of(host)
    host.run_on_cpu(0, lambda: m.kvm_gen_update_masterclock(vm, "test"))
    advance(host, 7 * MS)  # the records still carry the pair of the recompute
    for i in range(2):
        enter(vm, i)
        r = record(vm, i)
        assert r.tsc_timestamp == (h + vm.vcpus[i].tsc_offset) & U64
        assert r.system_time == (n + vm.kvmclock_offset) & U64
        assert r.flags == STABLE
        assert (r.tsc_shift, r.tsc_to_system_mul) == ref.get_time_scale(NSEC_PER_SEC, HZ)


def test_record_without_masterclock_uses_fresh_reads() -> None:
    host = make_host()
    vm = make_vm(host, 1)
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME, 1)  # old MSR on the boot vCPU: no masterclock
    assert not vm.use_master_clock
    advance(host, 9 * MS)
    n, h = boot_ns(host, 0), host_tsc(host, 0)
    v = vm.vcpus[0]
    v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    enter(vm, 0)
    r = record(vm, 0)
    assert r.tsc_timestamp == (h + v.tsc_offset) & U64
    assert r.system_time == (n + vm.kvmclock_offset) & U64
    assert r.flags == 0


@pytest.mark.parametrize("user_khz", [KHZ // 2, 3 * KHZ // 2])
def test_scaled_vm_record_and_guest_tsc(user_khz: int) -> None:
    """With TSC scaling: guest TSC = offset + __scale_tsc(host TSC, ratio); the record's
    mul/shift are those of kvm_scale_tsc(cpu_tsc_khz); nsec_to_cycles at the user kHz."""
    host = make_host()
    vm = make_vm(host, 1, tsc_khz=user_khz)
    ratio = ref.tsc_scaling_ratio(user_khz, KHZ, FRAC)
    v = vm.vcpus[0]
    assert v.tsc_scaling_ratio == ratio
    enter(vm, 0)
    advance(host, 11 * MS)
    h = host_tsc(host, 0)
    assert vm.machine.cpus[0].read_tsc() == (v.tsc_offset + ref.scale_tsc(h, ratio, FRAC)) & U64
    r = record(vm, 0)
    tgt = ref.scale_tsc(KHZ, ratio, FRAC)
    assert (r.tsc_shift, r.tsc_to_system_mul) == ref.get_time_scale(NSEC_PER_SEC, tgt * 1000)
    assert v.hw_tsc_khz == tgt
    shift, mult = ref.get_time_scale(user_khz * 1000, NSEC_PER_SEC)
    assert (v.virtual_tsc_shift, v.virtual_tsc_mult, v.virtual_tsc_khz) == (shift, mult, user_khz)


def test_scaled_vm_compute_tsc_offset() -> None:
    host = make_host()
    user = KHZ // 3
    vm = make_vm(host, 1, tsc_khz=user, msr=False)
    ratio = ref.tsc_scaling_ratio(user, KHZ, FRAC)
    advance(host, 3000 * MS)
    h = host_tsc(host, 0)
    vm.write_tsc(0, 5 * user * 1000 * 1000)
    assert vm.vcpus[0].tsc_offset == (5 * user * 10**6 - ref.scale_tsc(h, ratio, FRAC)) & U64


@pytest.mark.parametrize("side", ["lo", "hi"])
@pytest.mark.parametrize("step", [-1, 0, 1])
def test_tsc_tolerance_250ppm(side: str, step: int) -> None:
    """kvm_set_tsc_khz: scaling only when user kHz < adjust_tsc_khz(tsc_khz, -250) or
    > adjust_tsc_khz(tsc_khz, +250)."""
    host = make_host(cpus=1)
    lo = ref.adjust_tsc_khz(KHZ, -250)
    hi = ref.adjust_tsc_khz(KHZ, 250)
    assert lo < KHZ < hi
    user = (lo if side == "lo" else hi) + step
    outside = user < lo or user > hi
    vm = kvm_of(host).create_vm(tsc_khz=user)
    v = vm.create_vcpu()
    want = ref.tsc_scaling_ratio(user, KHZ, FRAC) if outside else 1 << FRAC
    assert v.tsc_scaling_ratio == want
    assert v.virtual_tsc_khz == user


# ---------------------------------------------------------------------------------------------
# kvm_setup_pvclock_page
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("old", "new"), [(0, 2), (1, 4), (2, 4), (3, 6), (U32 - 2, 0), (U32 - 1, 0), (U32, 2)]
)
def test_pvclock_version_rule(old: int, new: int) -> None:
    host = make_host(cpus=1)
    vm = make_vm(host, 1)
    enter(vm, 0)
    gpa = vm.vcpus[0].pv_time_gpa
    vm.machine.memory[gpa : gpa + 4] = old.to_bytes(4, "little")
    vm.vcpus[0].kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    enter(vm, 0)
    # kernel: if (v & 1) v++; odd v + 1 while writing; + 1 after: even, u32
    want = ((old + 1 if old & 1 else old) + 2) & U32
    assert want == new
    assert record(vm, 0).version == want


def test_guest_stopped_kept_and_requested() -> None:
    host = make_host(cpus=1)
    vm = make_vm(host, 1)
    enter(vm, 0)
    v = vm.vcpus[0]
    gpa = v.pv_time_gpa
    # the guest's own GUEST_STOPPED is kept
    vm.machine.memory[gpa + 29] = GUEST_STOPPED | STABLE
    v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    enter(vm, 0)
    assert record(vm, 0).flags == STABLE | GUEST_STOPPED
    # cleared by the guest: not set again
    vm.machine.memory[gpa + 29] = STABLE
    v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    enter(vm, 0)
    assert record(vm, 0).flags == STABLE
    # pvclock_set_guest_stopped_request sets it once and is consumed
    v.pvclock_set_guest_stopped_request = True
    v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    enter(vm, 0)
    assert record(vm, 0).flags == STABLE | GUEST_STOPPED
    assert not v.pvclock_set_guest_stopped_request
    vm.machine.memory[gpa + 29] = STABLE
    v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    enter(vm, 0)
    assert record(vm, 0).flags == STABLE


def test_disabled_record_is_not_written() -> None:
    host = make_host(cpus=1)
    vm = make_vm(host, 1, msr=False)
    enter(vm, 0)
    assert bytes(vm.machine.memory[:64]) == bytes(64)
    assert vm.vcpus[0].hv_clock.tsc_to_system_mul != 0  # the update itself ran


# ---------------------------------------------------------------------------------------------
# get_kvmclock_ns, KVM_GET_CLOCK, KVM_SET_CLOCK
# ---------------------------------------------------------------------------------------------
def test_get_kvmclock_ns_without_masterclock() -> None:
    host = make_host()
    n_create = boot_ns(host, 0)
    vm = make_vm(host, 1)
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME, 1)
    assert not vm.use_master_clock
    advance(host, 123 * MS)
    n = boot_ns(host, kvm_of(host).ioctl_cpu)
    data = vm.get_clock()
    assert data.clock == (n - n_create) & U64  # kvmclock_offset = -boot ns at creation
    assert data.flags == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_get_kvmclock_ns_with_masterclock(profile: str) -> None:
    host = make_host(profile)
    n_create = boot_ns(host, 0)
    vm = make_vm(host, 1)
    enter(vm, 0)
    assert vm.use_master_clock
    advance(host, 40 * MS)
    n, h = boot_ns(host, 0), host_tsc(host, 0)
    host.run_on_cpu(0, lambda: kvm_of(host).kvm_gen_update_masterclock(vm, "test"))
    advance(host, 333 * MS)
    h_now = host_tsc(host, 0)
    shift, mul = ref.get_time_scale(NSEC_PER_SEC, KHZ * 1000)
    want = ref.pvclock_read_cycles(h, (n - n_create) & U64, mul, shift, h_now)
    data = vm.get_clock()
    assert data.clock == want
    assert data.flags == KVM_CLOCK_TSC_STABLE
    # 4.13 KVM_GET_CLOCK: no realtime, no host TSC (the 5.16 form: tests/test_upstream_clock.py)
    assert (data.realtime, data.host_tsc) == (0, 0)


@pytest.mark.parametrize("master", [True, False])
def test_set_clock_2017_form(master: bool) -> None:
    """flags 0: kvm_gen_update_masterclock, then kvmclock_offset += clock - get_kvmclock_ns."""
    host = make_host()
    vm = make_vm(host, 1)
    if not master:
        vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME, 1)
    enter(vm, 0)
    advance(host, 77 * MS)
    target = 5 * NSEC_PER_SEC + 17
    vm.set_clock(target)
    assert vm.use_master_clock is master
    # the clock reads `target` at the instant of the ioctl (simulated time stands still)
    assert vm.get_clock().clock == target
    assert vm.vcpus[0].kvm_test_request(KVM_REQ_CLOCK_UPDATE)
    enter(vm, 0)
    n = vm.master_kernel_ns if master else boot_ns(host, 0)
    assert record(vm, 0).system_time == (n + vm.kvmclock_offset) & U64
    assert record(vm, 0).system_time == target


@pytest.mark.parametrize("master", [True, False])
@pytest.mark.parametrize("late_ns", [2 * NSEC_PER_SEC, 1, 0, -5])
def test_set_clock_realtime_form(master: bool, late_ns: int) -> None:
    """KVM_CLOCK_REALTIME: clock += now_real - realtime when now_real > realtime (never
    backwards); kvmclock_offset = clock - (master_kernel_ns, or boot ns without masterclock).
    Linux 5.16+ only (switch kvm_clock_realtime), here with the 2017 boot-ns base."""
    host = make_host(PROFILE_MAP["upstream"].with_(kvmclock_base="boot"))  # type: ignore[arg-type]
    vm = make_vm(host, 1)
    if not master:
        vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME, 1)
    enter(vm, 0)
    advance(host, 55 * MS)
    cpu = kvm_of(host).ioctl_cpu
    now_real, n, h = real_ns(host, cpu), boot_ns(host, cpu), host_tsc(host, cpu)
    clock = 10**12
    vm.set_clock(clock, KVM_CLOCK_REALTIME, now_real - late_ns)
    want_clock = clock + max(late_ns, 0)
    assert vm.use_master_clock is master
    assert vm.kvmclock_offset == want_clock - n
    if master:
        assert (vm.master_kernel_ns, vm.master_cycle_now) == (n, h)
    assert vm.vcpus[0].kvm_test_request(KVM_REQ_CLOCK_UPDATE)
    assert not vm.vcpus[0].kvm_test_request(KVM_REQ_MCLOCK_INPROGRESS)
    assert not vm.masterclock_lock.locked
    enter(vm, 0)
    assert record(vm, 0).system_time == want_clock


def test_set_clock_argument_checks() -> None:
    host = make_host(cpus=1)
    vm = make_vm(host, 1)
    for bad in (KVM_CLOCK_TSC_STABLE, 1, 1 << 3):
        with pytest.raises(ValueError, match="flags"):
            vm.set_clock(1, bad)
    with pytest.raises(ValueError, match="realtime"):
        vm.set_clock(1, KVM_CLOCK_REALTIME, 1 << 64)
    with pytest.raises(ValueError, match="clock"):
        vm.set_clock(1 << 64)
    with pytest.raises(TypeError, match="clock"):
        vm.set_clock(True)
    vm.set_clock(U64, 0)  # the whole u64 range is accepted
    with pytest.raises(ValueError, match=r"needs Linux 5\.16"):  # gtod: 4.13 has no flags
        vm.set_clock(0, KVM_CLOCK_REALTIME, U64)


# ---------------------------------------------------------------------------------------------
# vcpu_enter_guest: request order; kvm_gen_kvmclock_update
# ---------------------------------------------------------------------------------------------
def test_request_order_masterclock_then_global_then_clock() -> None:
    """One pass: MIGRATE_TIMER, MASTERCLOCK_UPDATE (recompute, CLOCK_UPDATE to all),
    GLOBAL_CLOCK_UPDATE (CLOCK_UPDATE to self + delayed work), CLOCK_UPDATE: so exactly one
    record write, after the recompute."""
    host = make_host()
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    m = kvm_of(host)
    v = vm.vcpus[0]
    for r in (
        KVM_REQ_CLOCK_UPDATE,
        KVM_REQ_GLOBAL_CLOCK_UPDATE,
        KVM_REQ_MASTERCLOCK_UPDATE,
        KVM_REQ_MIGRATE_TIMER,
    ):
        v.kvm_make_request(r)
    start = n_trace(host)
    host.run_on_cpu(0, lambda: m.process_requests(v))
    ev = trace_events(host, start)
    assert [e for e, _ in ev] == ["kvm_update_master_clock", "kvm_pvclock_update"]
    rec = record(vm, 0)
    assert ev[1][1].startswith("vcpu_id 0, pvclock { version ")
    assert ev[1][1].endswith(
        f", tsc_timestamp {rec.tsc_timestamp:#x}, system_time {rec.system_time:#x}, "
        f"tsc_to_system_mul {rec.tsc_to_system_mul:#x}, tsc_shift {rec.tsc_shift}, flags 0x1 }}"
    )
    assert (rec.tsc_timestamp, rec.system_time) == (
        (vm.master_cycle_now + v.tsc_offset) & U64,
        (vm.master_kernel_ns + vm.kvmclock_offset) & U64,
    )
    assert v.requests == 0
    assert vm.vcpus[1].kvm_test_request(KVM_REQ_CLOCK_UPDATE)
    # GLOBAL_CLOCK_UPDATE alone: CLOCK_UPDATE on self now, on every vCPU 100 ms later
    vm.vcpus[1].requests = 0
    advance(host, 2 * KVMCLOCK_UPDATE_DELAY_NS)
    vm.vcpus[1].requests = 0
    v.kvm_make_request(KVM_REQ_GLOBAL_CLOCK_UPDATE)
    start = n_trace(host)
    host.run_on_cpu(0, lambda: m.process_requests(v))
    assert [e for e, _ in trace_events(host, start)] == ["kvm_pvclock_update"]
    advance(host, KVMCLOCK_UPDATE_DELAY_NS - 1)
    assert not vm.vcpus[1].kvm_test_request(KVM_REQ_CLOCK_UPDATE)
    advance(host, 1)
    assert vm.vcpus[1].kvm_test_request(KVM_REQ_CLOCK_UPDATE)
    assert v.kvm_test_request(KVM_REQ_CLOCK_UPDATE)


def test_global_update_work_is_not_queued_twice() -> None:
    host = make_host()
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    advance(host, 2 * KVMCLOCK_UPDATE_DELAY_NS)
    m = kvm_of(host)
    half = KVMCLOCK_UPDATE_DELAY_NS // 2

    def clear() -> None:
        for v in vm.vcpus:
            v.requests = 0

    host.run_on_cpu(0, lambda: m.kvm_gen_kvmclock_update(vm.vcpus[0]))
    advance(host, half)
    host.run_on_cpu(0, lambda: m.kvm_gen_kvmclock_update(vm.vcpus[1]))  # work still pending
    clear()
    advance(host, half)  # the first work fires 100 ms after it was queued
    assert all(v.kvm_test_request(KVM_REQ_CLOCK_UPDATE) for v in vm.vcpus)
    clear()
    advance(host, half)  # the second call queued nothing
    assert not any(v.requests for v in vm.vcpus)
    # once the work ran it can be queued again
    host.run_on_cpu(0, lambda: m.kvm_gen_kvmclock_update(vm.vcpus[0]))
    clear()
    advance(host, 2 * half)
    assert all(v.kvm_test_request(KVM_REQ_CLOCK_UPDATE) for v in vm.vcpus)


def test_entry_with_mclock_inprogress_is_refused() -> None:
    host = make_host(cpus=1)
    vm = make_vm(host, 1)
    v = vm.vcpus[0]
    v.kvm_make_request(KVM_REQ_MCLOCK_INPROGRESS)
    with pytest.raises(RuntimeError, match="MCLOCK_INPROGRESS"):
        enter(vm, 0)


# ---------------------------------------------------------------------------------------------
# host clock changes: pvclock_gtod_notify (gtod) / process_clocksource_change (series)
# ---------------------------------------------------------------------------------------------
def test_gtod_work_queued_once_when_host_leaves_tsc() -> None:
    """pvclock_gtod_notify: mode != TSC and some VM had masterclock -> pvclock_gtod_work (a
    little later) requests MASTERCLOCK_UPDATE on every vCPU of every VM, once."""
    host = make_host("gtod")
    m = kvm_of(host)
    vms = [make_vm(host, 2), make_vm(host, 1)]
    for vm in vms:
        for i in range(len(vm.vcpus)):
            enter(vm, i)
    assert m.kvm_guest_has_master_clock == 1
    assert m.pvclock_gtod_data.vclock_mode == 1  # VCLOCK_TSC
    for vm in vms:
        for v in vm.vcpus:
            v.requests = 0
    host.mark_tsc_unstable("test")
    advance(host, 2000 * MS)
    assert m.pvclock_gtod_data.vclock_mode == 0
    for vm in vms:
        for v in vm.vcpus:
            assert KVM_REQ_MASTERCLOCK_UPDATE in pending(v)
            v.requests = 0
    assert m.kvm_guest_has_master_clock == 0
    advance(host, 1000 * MS)  # further updates: masterclock never came back, nothing queued
    assert not any(KVM_REQ_MASTERCLOCK_UPDATE in pending(v) for vm in vms for v in vm.vcpus)


def test_gtod_notify_without_masterclock_queues_nothing() -> None:
    host = make_host("gtod")
    m = kvm_of(host)
    vm = make_vm(host, 1, msr=False)  # never entered: masterclock never on
    assert m.kvm_guest_has_master_clock == 0
    vm.vcpus[0].requests = 0
    host.mark_tsc_unstable("test")
    advance(host, 2000 * MS)
    assert KVM_REQ_MASTERCLOCK_UPDATE not in pending(vm.vcpus[0])


def test_gtod_shadow_copy_and_monotonic_boot() -> None:
    """update_pvclock_gtod copies tkr_mono under an even/odd seq; do_monotonic_boot from the
    copy equals the timekeeper's boot ns and returns the raw TSC read."""
    host = make_host("gtod")
    m = kvm_of(host)
    tk = host.timekeeper
    host.run_on_cpu(0, lambda: tk.inject_sleeptime(5 * NSEC_PER_SEC + 7))  # offs_boot != 0
    advance(host, 1237 * MS + 123)  # tkr_mono.base moves in whole seconds: past 1 s
    g = m.pvclock_gtod_data
    assert tk.offs_boot == 5 * NSEC_PER_SEC + 7 and tk.tkr_mono.base > 0
    assert g.boot_ns == tk.tkr_mono.base + tk.offs_boot
    assert g.seq == 2 * m.counters["gtod_copies"]  # write_seqcount_begin/end per copy
    assert (g.cycle_last, g.mult, g.shift, g.mask) == (
        tk.tkr_mono.cycle_last,
        tk.tkr_mono.mult,
        tk.tkr_mono.shift,
        tk.tkr_mono.mask,
    )
    n, h = boot_ns(host, 1), host_tsc(host, 1)
    mode, ns, cyc = host.run_on_cpu(1, m.do_monotonic_boot)
    assert (mode, ns, cyc) == (1, n, h)
    # written out: (nsec_base + ((h - cycle_last) & mask) * mult) >> shift + boot_ns
    want = (((g.nsec_base + ((h - g.cycle_last) & g.mask) * g.mult) & U64) >> g.shift) + g.boot_ns
    assert ns == want & U64


def test_gtod_read_tsc_is_clamped_to_cycle_last() -> None:
    host = make_host("gtod")
    m = kvm_of(host)
    g = m.pvclock_gtod_data
    h = host_tsc(host, 0)
    g.cycle_last = h + 5
    assert host.run_on_cpu(0, m._read_tsc_clamped) == h + 5
    g.cycle_last = h - 5
    assert host.run_on_cpu(0, m._read_tsc_clamped) == h
    g.cycle_last = h
    assert host.run_on_cpu(0, m._read_tsc_clamped) == h


def test_series_clocksource_change_requests_masterclock_update_everywhere() -> None:
    host = make_host("series")
    m = kvm_of(host)
    vms = [make_vm(host, 2), make_vm(host, 1)]
    for vm in vms:
        for v in vm.vcpus:
            v.requests = 0
    calls = m.counters["notifier_calls"]
    assert m.process_clocksource_change(0, None) == 0  # NOTIFY_DONE
    assert m.counters["notifier_calls"] == calls + 1
    for vm in vms:
        for v in vm.vcpus:
            assert pending(v) == {KVM_REQ_MASTERCLOCK_UPDATE}
    assert not m.kvm_lock.locked


def test_series_livelock_fault_only_with_a_moving_sequence() -> None:
    host = make_host("series")
    faulty = KvmModule.__new__(KvmModule)
    faulty.__dict__.update(kvm_of(host).__dict__)
    faulty.fault = "patch09-missing-do"
    faulty.spin_limit = 7
    faulty.counters = type(faulty.counters)()
    # the sequence does not move: one pass, no spin
    assert host.run_on_cpu(0, faulty.clocksource_stability_check) is True
    s = host.timekeeper.get_tk_seq()

    def writer_in_between() -> bool:
        s.write_begin()
        s.write_end()
        return True

    from kvmclock.kvm.x86 import MasterclockLivelock

    with pytest.raises(MasterclockLivelock) as ei:
        host.run_on_cpu(0, lambda: faulty._seq_loop("where_x", writer_in_between))
    e = ei.value
    assert (e.where, e.spins, e.level) == ("where_x", 7, 0)
    assert e.t_ns == host.world.now_ns
    assert faulty.counters["livelocks"] == 1
    # the correct loop retries once and returns
    good = kvm_of(host)
    retries = good.counters["seq_retries"]
    first = [True]

    def once() -> int:
        if first[0]:
            first[0] = False
            s.write_begin()
            s.write_end()
        return 42

    assert host.run_on_cpu(0, lambda: good._seq_loop("w", once)) == 42
    first[0] = True
    assert host.run_on_cpu(0, lambda: good._seq_loop("w", once)) == 42
    assert good.counters["seq_retries"] == retries + 2
    with pytest.raises(MasterclockLivelock):
        host.run_on_cpu(0, lambda: faulty._seq_loop("where_x", writer_in_between))
    assert faulty.counters["livelocks"] == 2


# ---------------------------------------------------------------------------------------------
# requests.py, vm.py, argument checks
# ---------------------------------------------------------------------------------------------
def test_kvm_arch_req_and_request_names() -> None:
    from kvmclock.kvm.requests import kvm_arch_req, request_names

    assert kvm_arch_req(0) == 8 and kvm_arch_req(55) == 63
    for bad in (-1, 56, True, 1.0):
        with pytest.raises(ValueError, match="nr"):
            kvm_arch_req(bad)  # type: ignore[arg-type]
    assert (KVM_REQ_MIGRATE_TIMER, KVM_REQ_CLOCK_UPDATE) == (8, 12)
    assert (KVM_REQ_MASTERCLOCK_UPDATE, KVM_REQ_MCLOCK_INPROGRESS) == (21, 22)
    assert KVM_REQ_GLOBAL_CLOCK_UPDATE == 24
    assert request_names(0) == []
    assert request_names(1 | 1 << 8 | 1 << 9 | 1 << 24) == [
        "REQ_0",
        "KVM_REQ_MIGRATE_TIMER",
        "REQ_9",
        "KVM_REQ_GLOBAL_CLOCK_UPDATE",
    ]
    assert request_names(1 << 70) == ["REQ_70"]
    for bad_mask in (-1, True, "1"):
        with pytest.raises(ValueError, match="mask"):
            request_names(bad_mask)  # type: ignore[arg-type]


def test_vcpu_request_helpers() -> None:
    host = make_host(cpus=1)
    v = make_vm(host, 1, msr=False).vcpus[0]
    v.requests = 0
    v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    v.kvm_make_request(KVM_REQ_MIGRATE_TIMER)
    assert v.requests == 1 << 12 | 1 << 8
    assert v.kvm_test_request(KVM_REQ_CLOCK_UPDATE)
    assert v.requests == 1 << 12 | 1 << 8
    assert v.kvm_check_request(KVM_REQ_CLOCK_UPDATE)
    assert not v.kvm_check_request(KVM_REQ_CLOCK_UPDATE)
    assert v.requests == 1 << 8
    v.kvm_clear_request(KVM_REQ_MIGRATE_TIMER)
    v.kvm_clear_request(KVM_REQ_MIGRATE_TIMER)
    assert v.requests == 0
    assert not v.kvm_test_request(KVM_REQ_MIGRATE_TIMER)


def test_vcpu_cpu_reads_the_host_cpu_it_runs_on() -> None:
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    c1 = vm.machine.cpus[1]
    assert vm.machine.level == 1 and c1.index == 1
    assert c1.tsc_khz == KHZ
    v = vm.vcpus[1]
    assert v.cpu == 0  # created (loaded) on the ioctl CPU
    v.cpu = 1
    assert c1.host_cpu() == 1
    v.cpu = -1
    v.affinity = 0
    assert c1.host_cpu() == 0
    v.cpu = 1
    pm = host.machine
    assert isinstance(pm, PhysicalMachine)
    pm.cpus[1].add_tsc_jump(host.world.now_ns + 1, 1000)
    advance(host, 2)
    assert c1.read_tsc() == (v.tsc_offset + host_tsc(host, 1)) & U64
    assert host_tsc(host, 1) != host_tsc(host, 0)


def test_guest_wrmsr_from_inside_the_guest_runs_on_the_loaded_cpu() -> None:
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    seen: list[int] = []

    def guest() -> None:
        # re-entrant run_on_cpu: already in guest mode, run directly
        vm.machine.run_on_cpu(1, lambda: seen.append(host.current_cpu))
        vm.machine.wrmsr(1, MSR_KVM_SYSTEM_TIME_NEW, 64 | 1)
        seen.append(host.current_cpu)

    vm.migrate_vcpu(1, 0)
    vm.machine.run_on_cpu(1, guest)
    assert seen == [0, 0]
    assert vm.vcpus[1].cpu == 0
    assert vm.vcpus[1].pv_time_enabled and vm.vcpus[1].hv_clock.version == 2
    assert not vm.vcpus[1].in_guest
    assert vm.vcpus[1].entries == 1


def test_argument_checks() -> None:
    host = make_host()
    m = kvm_of(host)
    vm = make_vm(host, 1)
    for bad in (-1, 2, True, "0"):
        with pytest.raises(ValueError, match="affinity"):
            vm.create_vcpu(affinity=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="host_cpu"):
            vm.migrate_vcpu(0, bad)  # type: ignore[arg-type]
    for bad in (-1, 1, True):
        with pytest.raises(ValueError, match="vcpu_id"):
            vm.write_tsc(bad, 0)
        with pytest.raises(ValueError, match="cpu"):
            vm.machine.run_on_cpu(bad, lambda: None)
    for bad in (-1, 1 << 64, True):
        with pytest.raises(ValueError, match="value"):
            vm.write_tsc(0, bad)
        with pytest.raises(ValueError, match="value"):
            vm.machine.wrmsr(0, MSR_IA32_TSC, bad)
    vm.write_tsc(0, U64)
    for bad in (-1, 1 << 32, True):
        with pytest.raises(ValueError, match="msr"):
            vm.machine.wrmsr(0, bad, 0)
    for bad_size in (63, True, "64"):
        with pytest.raises(ValueError, match="memory_size"):
            m.create_vm(memory_size=bad_size)  # type: ignore[arg-type]
    assert len(m.create_vm(memory_size=64).machine.memory) == 64
    for bad_khz in (0, 1 << 32, True, 1.5):
        with pytest.raises(ValueError, match="tsc_khz"):
            m.create_vm(tsc_khz=bad_khz)  # type: ignore[arg-type]
    m.create_vm(tsc_khz=1)
    m.create_vm(tsc_khz=U32)
    for bad_limit in (0, True, "5"):
        with pytest.raises(ValueError, match="spin_limit"):
            KvmModule(host, spin_limit=bad_limit)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="msr"):
        host.run_on_cpu(0, lambda: m.kvm_set_msr_common(vm.vcpus[0], 0x3B, 0))  # TSC_ADJUST


def test_create_vm_defaults_and_names() -> None:
    host = make_host()
    m = kvm_of(host)
    n = boot_ns(host, m.ioctl_cpu)
    vm = m.create_vm()
    assert vm.name == "L1"
    assert vm.kvmclock_offset == -n
    # QEMU's default CPU: no invariant TSC ("nonstop_tsc" is opt-in, like QEMU's invtsc)
    assert vm.machine.features == {"kvmclock", "kvmclock_stable_bit", "constant_tsc"}
    assert len(vm.machine.memory) == 1 << 16
    assert vm.machine.level == 1
    assert vm in m.vm_list and not m.kvm_lock.locked
    other = m.create_vm(name="x", features=set())
    assert other.name == "x" and other.machine.features == set()
    assert other.pid == vm.pid + 100
    assert vm.masterclock_lock.name.endswith("pvclock_gtod_sync_lock")
    s = kvm_of(make_host("series")).create_vm()
    assert s.masterclock_lock.name.endswith("masterclock_lock")
    assert s.pvclock_gtod_sync_lock is s.masterclock_lock
    # vCPUs are spread over the host CPUs by default
    vcpus = [vm.create_vcpu() for _ in range(3)]
    assert [v.affinity for v in vcpus] == [0, 1, 0]
    assert vm.online_vcpus == 3 and [v.vcpu_id for v in vcpus] == [0, 1, 2]
    assert len(vm.machine.cpus) == 3


def test_timelines_and_clock_definitions() -> None:
    host = make_host()
    vm = make_vm(host, 2)
    enter(vm, 0)
    enter(vm, 1)
    assert [e[1] for e in vm.masterclock_timeline] == [False, True]
    assert [e[1] for e in vm.pvclock_stable_timeline] == [True]
    advance(host, 61 * MS)
    cpu = vm.vcpus[1].affinity
    n, h = boot_ns(host, cpu), host_tsc(host, cpu)
    defs = vm.clock_definitions(1)
    assert defs is not None
    a, b, c = defs
    assert a == (n + vm.kvmclock_offset) & U64
    rec = record(vm, 1)
    assert b == ref.read_cycles(rec, (h + vm.vcpus[1].tsc_offset) & U64)
    shift, mul = ref.get_time_scale(NSEC_PER_SEC, HZ)
    sys0 = (vm.master_kernel_ns + vm.kvmclock_offset) & U64
    assert c == ref.pvclock_read_cycles(vm.master_cycle_now, sys0, mul, shift, h)
    # one record without the stable bit clears the VM's "pvclock stable"
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME, 1)
    assert [e[1] for e in vm.pvclock_stable_timeline] == [True, False]
    assert [e[1] for e in vm.masterclock_timeline] == [False, True, False]
    assert vm.clock_definitions(0) is None  # masterclock off
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 0)  # record disabled, masterclock back on
    assert vm.use_master_clock
    assert vm.clock_definitions(0) is None
    assert vm.clock_definitions(1) is not None


# ---------------------------------------------------------------------------------------------
# vCPU creation state, stable-host offsets, trace records, nested series host clock
# ---------------------------------------------------------------------------------------------
def test_creation_trace_starts_from_offset_zero() -> None:
    """A new vCPU's offset is 0 (vcpu->arch.tsc_offset zero-initialised): the creation write
    traces prev=0, and nothing else writes the offset (no adjustment, no catch-up)."""
    host = make_host()
    h = host_tsc(host, 0)
    start = n_trace(host)
    vm = make_vm(host, 1, msr=False)
    offs = [f for e, f in trace_events(host, start) if e == "kvm_write_tsc_offset"]
    assert offs == [f"vcpu=0 prev=0 next={(0 - h) & U64}"]
    v = vm.vcpus[0]
    assert (v.ia32_tsc_adjust_msr, v.tsc_catchup, v.time, v.pv_time_enabled) == (0, False, 0, False)
    assert v.hv_clock.flags == 0 and v.hv_clock.version == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_stable_host_offsets_never_move(profile: str) -> None:
    """Stable TSC, matched vCPUs: every offset stays the creation one through many entries and
    updates (no catch-up), and all vCPUs read one guest TSC."""
    host = make_host(profile)
    h = host_tsc(host, 0)
    vm = make_vm(host, 3)
    for _ in range(4):
        for i in range(3):
            advance(host, 37 * MS)
            vm.vcpus[i].kvm_make_request(KVM_REQ_CLOCK_UPDATE)
            enter(vm, i)
    assert vm.use_master_clock
    for v in vm.vcpus:
        assert v.tsc_offset == (0 - h) & U64
        assert not v.tsc_catchup
    assert len({c.read_tsc() for c in vm.machine.cpus}) == 1


def test_trace_record_time_level_cpu() -> None:
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    advance(host, 3 * MS)
    start = n_trace(host)
    vm.write_tsc(1, 0)
    recs = kvm_of(host).trace_records[start:]
    assert [(r[0], r[1], r[4], r[5]) for r in recs] == [
        (host.world.now_ns, 0, 1, "kvm_write_tsc_offset"),
        (host.world.now_ns, 0, 1, "kvm_track_tsc"),
    ]
    m = kvm_of(host)
    m.trace_enabled = False
    vm.write_tsc(1, 0)
    assert len(m.trace_records) == start + 2
    assert m.counters["trace.kvm_track_tsc"] >= 2


def _nested_series(stable_bit: bool) -> tuple[Kernel, Kernel, Kvm]:
    host = make_host("series")
    vm = kvm_of(host).create_vm()
    for _ in range(2):
        vm.create_vcpu()
    for i in range(2):
        enter(vm, i)
    if not stable_bit:
        vm.machine.features.discard("kvmclock_stable_bit")
    guest = Kernel(vm.machine, "series", name="L1")
    guest.boot()
    guest.world.run_until(guest.world.now_ns + 5 * MS)
    guest.load_kvm()
    return host, guest, vm


def test_series_clocksource_stable_on_kvmclock() -> None:
    """Patch 11 reading: mode PVCLOCK qualifies only while this CPU's record, masked by the
    guest's valid flags, carries PVCLOCK_TSC_STABLE_BIT."""
    _host, guest, _vm = _nested_series(True)
    assert guest.timekeeper.get_tk_mono_clock_mode() == 2  # VCLOCK_PVCLOCK
    gk = kvm_of(guest)
    rec_flags = guest.machine.memory[guest.pvti_offset(1) + 29]
    assert rec_flags & STABLE and guest.pvclock_valid_flags & STABLE
    assert guest.run_on_cpu(1, gk.clocksource_stable) is True
    l2 = gk.create_vm()
    l2.create_vcpu()
    l2.create_vcpu()
    for i in range(2):
        enter(l2, i)
    assert l2.use_master_clock
    # CPU 1's record loses the stable bit: CPU 1 no longer stable, CPU 0 still
    guest.machine.memory[guest.pvti_offset(1) + 29] = rec_flags & ~STABLE
    assert guest.run_on_cpu(1, gk.clocksource_stable) is False
    assert guest.run_on_cpu(0, gk.clocksource_stable) is True
    # the valid-flags mask: without the stable bit there, no record counts
    guest.pvclock_valid_flags &= ~STABLE
    assert guest.run_on_cpu(0, gk.clocksource_stable) is False


def test_series_kvmclock_without_stable_bit_is_not_stable() -> None:
    """kvm-clock without KVM_FEATURE_CLOCKSOURCE_STABLE_BIT has vclock mode NONE."""
    _host, guest, _vm = _nested_series(False)
    assert guest.timekeeper.get_tk_mono_clock_mode() == 0
    assert guest.run_on_cpu(0, kvm_of(guest).clocksource_stable) is False


# ---------------------------------------------------------------------------------------------
# second round: rules the first mutation run showed unpinned
# ---------------------------------------------------------------------------------------------
def test_gtod_work_queued_again_on_a_second_switch_away_from_tsc() -> None:
    """The work item is re-armed once it ran: TSC -> hpet -> TSC -> hpet queues it twice."""
    host = make_host("gtod")
    m = kvm_of(host)
    vm = make_vm(host, 1)
    enter(vm, 0)
    hpet, tsc = host.clocksources["hpet"], host.clocksources["tsc"]
    for _round in range(2):
        assert vm.use_master_clock and m.kvm_guest_has_master_clock == 1
        vm.vcpus[0].requests = 0
        host.run_on_cpu(0, lambda: host.timekeeping_notify(hpet))
        advance(host, MS)
        assert KVM_REQ_MASTERCLOCK_UPDATE in pending(vm.vcpus[0])
        enter(vm, 0)
        assert not vm.use_master_clock
        host.run_on_cpu(0, lambda: host.timekeeping_notify(tsc))
        vm.vcpus[0].kvm_make_request(KVM_REQ_MASTERCLOCK_UPDATE)  # as a TSC write would
        enter(vm, 0)


def test_vcpu_cpu_zero_is_a_loaded_cpu() -> None:
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    v = vm.vcpus[1]
    v.cpu, v.affinity = 0, 1
    assert vm.machine.cpus[1].host_cpu() == 0


def test_write_tsc_loads_the_vcpu_on_its_thread_cpu() -> None:
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    for i in range(2):
        enter(vm, i)
    v = vm.vcpus[1]
    assert v.cpu == 1
    vm.migrate_vcpu(1, 0)
    v.requests = 0
    vm.write_tsc(1, 0)
    assert v.cpu == 0
    assert KVM_REQ_MIGRATE_TIMER in pending(v)
    with pytest.raises(ValueError, match="vcpu_id"):
        vm.write_tsc(True, 0)  # would be vCPU 1
    with pytest.raises(ValueError, match="vcpu_id"):
        vm.write_tsc(1.0, 0)  # type: ignore[arg-type]


def test_set_clock_argument_messages() -> None:
    host = make_host(cpus=1)
    vm = make_vm(host, 1)
    with pytest.raises(ValueError, match=r"^clock=18446744073709551616 out of range"):
        vm.set_clock(1 << 64)
    with pytest.raises(ValueError, match=r"^realtime=-1 out of range"):
        vm.set_clock(0, KVM_CLOCK_REALTIME, -1)
    with pytest.raises(ValueError, match=r"^flags=4294967296 out of range"):
        vm.set_clock(0, 1 << 32)
    with pytest.raises(TypeError, match=r"^clock must be an int, got bool$"):
        vm.set_clock(True)
    with pytest.raises(TypeError, match=r"^realtime must be an int, got str$"):
        vm.set_clock(0, 0, "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^flags must be an int, got float$"):
        vm.set_clock(0, 0.0)  # type: ignore[arg-type]


def test_set_clock_realtime_without_masterclock_on_unstable_host() -> None:
    """Masterclock off because the host clock does not qualify: the base is the host boot ns
    now, not the stale master_kernel_ns of the last qualifying recompute."""
    host = make_host("upstream")  # KVM_CLOCK_REALTIME: Linux 5.16+
    vm = make_vm(host, 1)
    enter(vm, 0)
    stale = vm.master_kernel_ns
    host.mark_tsc_unstable("test")
    advance(host, 2000 * MS)
    enter(vm, 0)
    assert not vm.use_master_clock and vm.master_kernel_ns == stale
    cpu = kvm_of(host).ioctl_cpu
    now_real, n = real_ns(host, cpu), raw_base_ns(host, cpu)
    vm.set_clock(10**12, KVM_CLOCK_REALTIME, now_real)
    assert vm.kvmclock_offset == 10**12 - n


def test_clock_definitions_read_the_vcpus_record() -> None:
    host = make_host()
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    advance(host, 250 * MS)
    m = kvm_of(host)
    host.run_on_cpu(0, lambda: m.kvm_gen_update_masterclock(vm, "test"))
    for i in range(2):
        enter(vm, i)
    advance(host, 30 * MS)
    sys0 = (vm.master_kernel_ns + vm.kvmclock_offset) & U64
    assert sys0 >= 250 * MS
    vm.machine.memory[0:32] = bytes(32)  # vCPU 0's record gone: vCPU 1's must be read
    n, h = boot_ns(host, 1), host_tsc(host, 1)
    defs = vm.clock_definitions(1)
    assert defs is not None
    shift, mul = ref.get_time_scale(NSEC_PER_SEC, HZ)
    want_c = ref.pvclock_read_cycles(vm.master_cycle_now, sys0, mul, shift, h)
    assert defs == (
        (n + vm.kvmclock_offset) & U64,
        ref.read_cycles(record(vm, 1), (h + vm.vcpus[1].tsc_offset) & U64),
        want_c,
    )
    assert defs[1] == want_c  # same TSC and mul/shift: the guest's view equals C here
    one = make_vm(host, 1)
    enter(one, 0)
    assert one.clock_definitions() is not None  # default: vCPU 0


def test_series_clocksource_stable_needs_tsc_or_pvclock_mode() -> None:
    _host, guest, _vm = _nested_series(True)
    gk = kvm_of(guest)
    assert guest.run_on_cpu(0, gk.clocksource_stable) is True
    guest.timekeeper.get_tk_mono_clock_mode = lambda: 0  # type: ignore[method-assign]
    assert guest.run_on_cpu(0, gk.clocksource_stable) is False
    guest.timekeeper.get_tk_mono_clock_mode = lambda: 1  # type: ignore[method-assign]
    assert guest.run_on_cpu(0, gk.clocksource_stable) is True


def test_series_livelock_names_the_kernel_function() -> None:
    from kvmclock.kvm.x86 import MasterclockLivelock

    host = make_host("series")
    faulty = KvmModule(host, fault="patch09-missing-do", spin_limit=3)
    vm = faulty.create_vm()
    tk = host.timekeeper

    def writer_once() -> None:
        tk.interleave = None
        host.run_on_cpu(1, tk.update_wall_time)
        tk.seq.write_begin()  # a writer that moved the sequence
        tk.seq.write_end()

    tk.interleave = writer_once
    with pytest.raises(MasterclockLivelock) as ei:
        host.run_on_cpu(0, lambda: faulty.kvm_get_host_time_and_cycles(vm))
    assert ei.value.where == "kvm_get_host_time_and_cycles"
    assert "kvm_get_host_time_and_cycles: read_seqcount_retry(tk_core.seq" in str(ei.value)
    assert "spun 3 times" in str(ei.value)
    assert str(ei.value).endswith("(patch 09: loop without 'do')")
    s = tk.get_tk_seq()

    def moving() -> bool:
        s.write_begin()
        s.write_end()
        return True

    faulty.clocksource_stable = moving  # type: ignore[method-assign]
    with pytest.raises(MasterclockLivelock) as ei:
        host.run_on_cpu(0, faulty.clocksource_stability_check)
    assert ei.value.where == "clocksource_stability_check"
    assert str(ei.value).startswith("L0: clocksource_stability_check: read_seqcount_retry")


def test_vm_wrmsr_checks_before_the_exit() -> None:
    """The MSR number and value are checked by the VM (u32 / u64) before KVM sees them; an
    in-range MSR KVM does not model is refused by kvm_set_msr_common."""
    host = make_host(cpus=1)
    vm = make_vm(host, 1, msr=False)
    for bad in (-1, 1 << 32, True):
        with pytest.raises(ValueError, match=r"^msr=.* out of range \(0\.\.0xffffffff\)$"):
            vm.machine.wrmsr(0, bad, 0)
    for unmodelled in (0, 0xFFFFFFFF):
        with pytest.raises(ValueError, match=r"not modelled"):
            vm.machine.wrmsr(0, unmodelled, 0)
    vm.machine.wrmsr(0, MSR_IA32_TSC, U64)  # the whole u64 range is a valid value
    two = make_vm(host, 2, msr=False)
    with pytest.raises(ValueError, match=r"^cpu=True: VM .* has 2 vCPUs: 0\.\.1$"):
        two.machine.run_on_cpu(True, lambda: None)  # would be vCPU 1
    with pytest.raises(ValueError, match=r"^cpu=0.0: VM .* has 2 vCPUs: 0\.\.1$"):
        two.machine.run_on_cpu(0.0, lambda: None)  # type: ignore[arg-type]


def test_host_initiated_tsc_msr_through_set_msr_common() -> None:
    """KVM_SET_MSRS of MSR_IA32_TSC = 0: host-initiated, so it synchronises (vCPU hotplug)
    and leaves MSR_IA32_TSC_ADJUST alone."""
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    advance(host, 2000 * MS)
    a = (vm.machine.cpus[0].read_tsc() + 5 * HZ) & U64
    _n0, _h0, off0 = _generation_at(host, vm, a)
    gen = vm.cur_tsc_generation
    m = kvm_of(host)
    v1 = vm.vcpus[1]
    host.run_on_cpu(1, lambda: m.kvm_set_msr_common(v1, MSR_IA32_TSC, 0, host_initiated=True))
    assert vm.cur_tsc_generation == gen and v1.tsc_offset == off0
    assert v1.ia32_tsc_adjust_msr == 0


def test_backwards_tsc_is_logged_by_mark_tsc_unstable() -> None:
    world = World(3)
    machine = PhysicalMachine(world, 2, tsc_khz=KHZ)
    host = Kernel(machine, "gtod", name="L0")
    host.boot()
    world.run_until(MS)
    host.load_kvm()
    vm = make_vm(host, 1)
    enter(vm, 0)
    machine.cpus[1].add_tsc_jump(world.now_ns + 5 * MS, -HZ)
    advance(host, 10 * MS)
    vm.migrate_vcpu(0, 1)
    enter(vm, 0)
    texts = [e["text"] for e in world.events if e["kind"] == "printk"]
    assert "tsc: Marking TSC unstable due to KVM discovered backwards TSC" in texts


def test_unstable_host_creation_reoffsets_from_zero() -> None:
    """A vCPU created on an unstable host: its first load sets offset = last_guest_tsc (0)
    - rdtsc before the creation write."""
    host = make_host()
    host.mark_tsc_unstable("test")
    advance(host, 100 * MS)
    h = host_tsc(host, 0)
    start = n_trace(host)
    make_vm(host, 1, msr=False)
    offs = [f for e, f in trace_events(host, start) if e == "kvm_write_tsc_offset"]
    assert offs[0] == f"vcpu=0 prev=0 next={(0 - h) & U64}"


def test_trace_pids_and_counters() -> None:
    """Trace records carry the VMM thread ids the model gives (VM pid 1000 * (level + 1),
    + 100 per VM; vCPU thread = VM pid + 1 + vcpu_id); one counter per event."""
    host = make_host()
    m = kvm_of(host)
    vm = make_vm(host, 2, msr=False)
    assert f"{vm.pid}" == "1000"
    start = n_trace(host)
    enter(vm, 1)
    recs = m.trace_records[start:]
    assert recs and {r[3] for r in recs} == {1002}
    assert {r[2] for r in recs} == {"qemu-system-x86"}
    assert m._cur_pid == 1000
    n = sum(1 for r in m.trace_records if r[5] == "kvm_update_master_clock")
    assert m.counters["trace.kvm_update_master_clock"] == n
    assert m.counters["masterclock_updates"] == n
    assert vm.counters["masterclock_updates"] == n
    assert KvmModule(host, spin_limit=1).spin_limit == 1


def test_pvclock_stable_timeline_counts_written_records_only() -> None:
    """The VM's "pvclock stable" is over the records KVM has written: an enabled record not
    written yet (a host-initiated restore of the MSR) does not count."""
    host = make_host()
    vm = make_vm(host, 2, msr=False)
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)  # vCPU 1 never ran: no update yet
    assert vm.use_master_clock
    m = kvm_of(host)
    v1 = vm.vcpus[1]
    host.run_on_cpu(
        1, lambda: m.kvm_set_msr_common(v1, MSR_KVM_SYSTEM_TIME_NEW, 64 | 1, host_initiated=True)
    )
    assert v1.pv_time_enabled and v1.hv_clock.version == 0
    vm.vcpus[0].kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    enter(vm, 0)
    assert [e[1] for e in vm.pvclock_stable_timeline] == [True]


def test_set_clock_realtime_flag_default_realtime_is_zero() -> None:
    """realtime defaults to 0: with KVM_CLOCK_REALTIME the clock advances by all of host
    realtime (now_real - 0)."""
    host = make_host("upstream")  # KVM_CLOCK_REALTIME: Linux 5.16+
    vm = make_vm(host, 1)
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME, 1)  # masterclock off: base = raw + boot offset
    cpu = kvm_of(host).ioctl_cpu
    now_real, n = real_ns(host, cpu), raw_base_ns(host, cpu)
    vm.set_clock(1000, KVM_CLOCK_REALTIME)
    assert vm.kvmclock_offset == 1000 + now_real - n


def test_vm_creation_trace_carries_the_vm_pid() -> None:
    host = make_host()
    m = kvm_of(host)
    start = n_trace(host)
    vm = m.create_vm()
    recs = m.trace_records[start:]
    assert [(r[3], r[5]) for r in recs] == [(vm.pid, "kvm_update_master_clock")]


def test_one_khz_guest_tsc() -> None:
    """A 1 kHz guest TSC: the first vCPU still opens generation 1 (last_tsc_khz starts at 0),
    and kvm_guest_time_update's target kHz, __scale_tsc(tsc_khz, ratio), is 0 here, equal to
    the zero hw_tsc_khz of a new vCPU: mul/shift are never computed (the record has mul 0)."""
    host = make_host(cpus=1)
    vm = make_vm(host, 1, tsc_khz=1)
    assert vm.cur_tsc_generation == 1
    ratio = ref.tsc_scaling_ratio(1, KHZ, FRAC)
    assert vm.vcpus[0].tsc_scaling_ratio == ratio
    assert ref.scale_tsc(KHZ, ratio, FRAC) == 0
    enter(vm, 0)
    assert vm.vcpus[0].hw_tsc_khz == 0
    assert (record(vm, 0).tsc_to_system_mul, record(vm, 0).tsc_shift) == (0, 0)


def test_one_khz_host_tsc_still_updates_the_record() -> None:
    """Only a 0 kHz cpu_tsc_khz defers the update (re-request and return); a 1 kHz host TSC
    is a valid rate: the record gets kvm_get_time_scale(NSEC_PER_SEC, 1000)."""
    host = make_host("gtod", cpus=1, tsc_khz=1)
    vm = make_vm(host, 1)
    r = record(vm, 0)
    assert r.version == 2
    assert (r.tsc_shift, r.tsc_to_system_mul) == ref.get_time_scale(NSEC_PER_SEC, 1000)
    assert not vm.vcpus[0].kvm_test_request(KVM_REQ_CLOCK_UPDATE)


# ---------------------------------------------------------------------------------------------
# vCPU ioctls: KVM_SET_MSRS (host-initiated), KVM_KVMCLOCK_CTRL
# ---------------------------------------------------------------------------------------------
def test_set_msrs_is_host_initiated_and_loads_on_the_thread_cpu() -> None:
    """KVM_SET_MSRS of MSR_KVM_SYSTEM_TIME on vCPU 0 (a restore) is host-initiated: it does
    not touch boot_vcpu_runs_old_kvmclock; the ioctl loads the vCPU on its thread's CPU."""
    host = make_host()
    vm = make_vm(host, 2)
    for i in range(2):
        enter(vm, i)
    vm.set_msr(0, MSR_KVM_SYSTEM_TIME, 1)
    assert not vm.boot_vcpu_runs_old_kvmclock
    assert pending(vm.vcpus[0]) == {KVM_REQ_GLOBAL_CLOCK_UPDATE}
    vm.migrate_vcpu(1, 0)
    vm.vcpus[1].requests = 0
    vm.set_msr(1, MSR_KVM_SYSTEM_TIME_NEW, 64 | 1)
    assert vm.vcpus[1].cpu == 0
    assert pending(vm.vcpus[1]) == {KVM_REQ_GLOBAL_CLOCK_UPDATE, KVM_REQ_MIGRATE_TIMER}
    vm.set_msr(0, MSR_IA32_TSC, 0)  # the u64 range, both ends
    vm.set_msr(0, MSR_IA32_TSC, U64)
    for bad in (-1, 1 << 64, True):
        with pytest.raises(ValueError, match=r"^data=.* out of range \(0\.\.2\*\*64-1\)$"):
            vm.set_msr(0, MSR_IA32_TSC, bad)


def test_kvmclock_ctrl_needs_an_enabled_record() -> None:
    host = make_host(cpus=1)
    vm = make_vm(host, 1, msr=False)
    einval = r"KVM_KVMCLOCK_CTRL without kvmclock enabled \(-EINVAL\)$"
    with pytest.raises(ValueError, match=einval):
        vm.kvmclock_ctrl(0)
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)
    vm.kvmclock_ctrl(0)
    enter(vm, 0)
    assert record(vm, 0).flags & GUEST_STOPPED

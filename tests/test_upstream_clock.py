"""The clock side of KVM per profile switch (arch/x86/kvm/x86.c 4.13 against 6.18).

Every test flips one switch and checks both values against numbers computed here from the
kernel's arithmetic (tests/reference, which never imports kvmclock) and from host values the
test reads itself (host TSC, timekeeper fields), never from the KVM code under test.
"""

from __future__ import annotations

import pytest
from kvmclock.kernel import Kernel
from kvmclock.kvm import (
    KVM_CLOCK_HOST_TSC,
    KVM_CLOCK_REALTIME,
    KVM_CLOCK_TSC_STABLE,
    KVM_REQ_CLOCK_UPDATE,
    MSR_KVM_SYSTEM_TIME,
    MSR_KVM_SYSTEM_TIME_NEW,
    Kvm,
    KvmModule,
)
from kvmclock.kvm.x86 import (
    KVMCLOCK_SYNC_PERIOD_NS,
    MSR_KVM_WALL_CLOCK,
    MSR_KVM_WALL_CLOCK_NEW,
)
from kvmclock.machine import PhysicalMachine, World
from kvmclock.profiles import PROFILES, Profile
from kvmclock.trace import host_clock_symbol, parse_line
from reference import kernel_math as ref

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
MS = 1_000_000
S = 1_000_000_000
KHZ = 2_593_992


def make_host(profile: str | Profile, *, cpus: int = 2, khz: int = KHZ) -> Kernel:
    world = World(0)
    m = PhysicalMachine(world, cpus, tsc_khz=khz)
    k = Kernel(m, profile, name="L0")
    k.boot()
    world.run_until(MS)
    k.load_kvm()
    return k


def kvm_of(host: Kernel) -> KvmModule:
    assert host.kvm is not None
    return host.kvm


def make_vm(host: Kernel, n: int = 1, *, old_kvmclock: bool = False) -> Kvm:
    vm = kvm_of(host).create_vm()
    for _ in range(n):
        vm.create_vcpu()
    for i in range(n):
        msr = MSR_KVM_SYSTEM_TIME if old_kvmclock and i == 0 else MSR_KVM_SYSTEM_TIME_NEW
        vm.machine.wrmsr(i, msr, (0x400 + i * 64) | 1)
    return vm


def with_(name: str, **changes: bool | str) -> Profile:
    return PROFILES[name].with_(**changes)


def on_cpu(host: Kernel, cpu: int, fn):  # type: ignore[no-untyped-def]
    return host.run_on_cpu(cpu, fn)


def tsc(host: Kernel, cpu: int) -> int:
    return int(host.machine.cpus[cpu].read_tsc())


def base_from_fields(host: Kernel, cpu: int, *, raw: bool) -> int:
    """CLOCK_MONOTONIC_RAW + offs_boot (raw) or CLOCK_BOOTTIME (mono) now, from the
    timekeeper's fields: base + ((delta * mult + xtime_nsec) mod 2**64 >> shift) + offs_boot."""
    tk = host.timekeeper

    def read() -> int:
        tkr = tk.tkr_raw if raw else tk.tkr_mono
        cycles = int(tk.clock.read()[0])
        delta = (cycles - tkr.cycle_last) & tkr.mask
        return tkr.base + (((delta * tkr.mult + tkr.xtime_nsec) & U64) >> tkr.shift) + tk.offs_boot

    return int(on_cpu(host, cpu, read))


def ntp_slew(host: Kernel, mult_adj: int) -> None:
    """What ``timekeeping_apply_adjustment`` does for an NTP frequency correction (the model
    has no NTP): at a fresh cycle_last, tkr_mono.mult and xtime_interval grow; tkr_raw is
    untouched."""
    tk = host.timekeeper

    def slew() -> None:
        with tk._write():
            tk._forward_now()
            tk.tkr_mono.mult += mult_adj
            tk.xtime_interval += tk.cycle_interval * mult_adj
            tk.timekeeping_update(0)

    on_cpu(host, 0, slew)


def master_c(host: Kernel, vm: Kvm, cpu: int) -> int:
    """Definition C now: the master pair through this CPU's TSC at host-kHz mul/shift."""
    shift, mul = ref.get_time_scale(S, host.machine.cpus[cpu].tsc_khz * 1000)
    return ref.pvclock_read_cycles(
        vm.master_cycle_now,
        (vm.master_kernel_ns + vm.kvmclock_offset) & U64,
        mul,
        shift,
        tsc(host, cpu),
    )


# ---------------------------------------------------------------------------------------------
# kvmclock_base: ktime_get_boot_ns (4.13) vs CLOCK_MONOTONIC_RAW + offs_boot (5.5)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["boot", "raw"])
@pytest.mark.parametrize("base_profile", ["gtod", "series", "upstream"])
def test_kvmclock_base_follows_raw_or_mono(base_profile: str, value: str) -> None:
    host = make_host(with_(base_profile, kvmclock_base=value))
    kvm = kvm_of(host)
    raw = value == "raw"
    # VM-init kvmclock_offset = -base
    vm = make_vm(host, 1, old_kvmclock=True)  # boot vCPU on the old MSR: no masterclock
    # after an NTP-style slew of tkr_mono (+2000 in mult), mono and raw part
    ntp_slew(host, 2000)
    host.world.run_until(host.world.now_ns + S)
    want = base_from_fields(host, 0, raw=raw)
    other = base_from_fields(host, 0, raw=not raw)
    assert abs(want - other) > 100_000  # ~2000/mult of a second apart: the two bases differ
    assert on_cpu(host, 0, kvm.get_kvmclock_base_ns) == want
    # non-masterclock system_time: base + offset at the entry
    assert not vm.use_master_clock
    vm.machine.run_on_cpu(0, lambda: None)
    assert vm.vcpus[0].hv_clock.system_time == (want + vm.kvmclock_offset) & U64
    # KVM_GET_CLOCK without masterclock: base + offset
    assert vm.get_clock().clock == (base_from_fields(host, 0, raw=raw) + vm.kvmclock_offset) & U64


@pytest.mark.parametrize("value", ["boot", "raw"])
@pytest.mark.parametrize("base_profile", ["series", "upstream"])  # timekeeper / shadow copy
def test_master_kernel_ns_from_raw_or_mono(base_profile: str, value: str) -> None:
    host = make_host(with_(base_profile, kvmclock_base=value))
    vm = make_vm(host, 1)
    vm.machine.run_on_cpu(0, lambda: None)
    ntp_slew(host, 3000)
    host.world.run_until(host.world.now_ns + S)
    kvm = kvm_of(host)
    on_cpu(host, 0, lambda: kvm.kvm_gen_update_masterclock(vm, "test"))
    assert vm.use_master_clock
    assert vm.master_cycle_now == tsc(host, 0)
    assert vm.master_kernel_ns == base_from_fields(host, 0, raw=value == "raw")


def test_vm_init_offset_and_tsc_sync_ns_are_the_base() -> None:
    for value in ("boot", "raw"):
        host = make_host(with_("upstream", kvmclock_base=value))
        ntp_slew(host, 2000)
        host.world.run_until(host.world.now_ns + S)
        base = base_from_fields(host, kvm_of(host).ioctl_cpu, raw=value == "raw")
        vm = kvm_of(host).create_vm()
        assert vm.kvmclock_offset == -base
        vm.create_vcpu()  # kvm_synchronize_tsc's ns: the same base, same instant
        assert vm.last_tsc_nsec == base and vm.cur_tsc_nsec == base


# ---------------------------------------------------------------------------------------------
# masterclock_sync: pvclock_gtod_sync_lock (4.13) vs pvclock_sc seqcount (5.16)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["spinlock", "seqcount"])
def test_masterclock_sync_reader_against_writer(value: str) -> None:
    host = make_host(with_("upstream", masterclock_sync=value))
    vm = make_vm(host, 1)
    vm.machine.run_on_cpu(0, lambda: None)
    host.world.run_until(host.world.now_ns + 50 * MS)
    kvm = kvm_of(host)
    old_pair = (vm.master_kernel_ns, vm.master_cycle_now)
    locks_before = vm.masterclock_lock.acquisitions
    seq_before = vm.pvclock_sc.sequence
    vm.get_clock()
    # a reader takes the spinlock, or only reads the seqcount
    assert vm.masterclock_lock.acquisitions - locks_before == (1 if value == "spinlock" else 0)
    fired = []

    def writer() -> None:  # another CPU updates the master pair while the reader is inside
        if not fired:
            fired.append(1)
            kvm.kvm_gen_update_masterclock(vm, "writer")

    vm.pvclock_read_interleave = writer
    if value == "spinlock":
        with pytest.raises(RuntimeError, match="would deadlock"):
            vm.get_clock()
        return
    data = vm.get_clock()
    assert vm.counters["pvclock_sc_retries"] == 1
    assert vm.pvclock_sc.sequence == seq_before + 2  # one write section
    assert (vm.master_kernel_ns, vm.master_cycle_now) != old_pair
    cpu = kvm.ioctl_cpu
    assert data.clock == master_c(host, vm, cpu)  # the retried read saw the new pair


# ---------------------------------------------------------------------------------------------
# kvm_clock_realtime: KVM_GET_CLOCK / KVM_SET_CLOCK flags (5.16)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["gtod", "upstream"])
def test_get_clock_with_masterclock(profile: str) -> None:
    host = make_host(profile)
    vm = make_vm(host, 1)
    vm.machine.run_on_cpu(0, lambda: None)
    host.world.run_until(host.world.now_ns + 123 * MS)
    cpu = kvm_of(host).ioctl_cpu
    assert vm.use_master_clock
    data = vm.get_clock()
    assert data.clock == master_c(host, vm, cpu)
    if profile == "upstream":
        assert data.flags == KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC
        assert data.flags == 0xE
        assert data.host_tsc == tsc(host, cpu)
        assert data.realtime == on_cpu(host, cpu, host.timekeeper.ktime_get_real_ns)
    else:
        assert (data.flags, data.realtime, data.host_tsc) == (KVM_CLOCK_TSC_STABLE, 0, 0)


@pytest.mark.parametrize("profile", ["gtod", "upstream"])
def test_get_clock_without_masterclock(profile: str) -> None:
    host = make_host(profile)
    vm = make_vm(host, 1, old_kvmclock=True)
    host.world.run_until(host.world.now_ns + 77 * MS)
    assert not vm.use_master_clock
    data = vm.get_clock()
    raw = PROFILES[profile].kvmclock_base == "raw"
    want = (base_from_fields(host, kvm_of(host).ioctl_cpu, raw=raw) + vm.kvmclock_offset) & U64
    assert (data.clock, data.flags, data.realtime, data.host_tsc) == (want, 0, 0, 0)


@pytest.mark.parametrize("sync", ["seqcount", "spinlock"])
@pytest.mark.parametrize("master", [True, False])
@pytest.mark.parametrize("late_ns", [2 * S, 1, 0, -1])
def test_set_clock_realtime_upstream(master: bool, late_ns: int, sync: str) -> None:
    # spinlock: 5.16's KVM_CLOCK_REALTIME before the pvclock_sc seqcount (same result)
    host = make_host(with_("upstream", masterclock_sync=sync))
    vm = make_vm(host, 1, old_kvmclock=not master)
    vm.machine.run_on_cpu(0, lambda: None)
    host.world.run_until(host.world.now_ns + 55 * MS)
    cpu = kvm_of(host).ioctl_cpu
    now_real = on_cpu(host, cpu, host.timekeeper.ktime_get_real_ns)
    base, h = base_from_fields(host, cpu, raw=True), tsc(host, cpu)
    clock = 10**12
    vm.set_clock(clock, KVM_CLOCK_REALTIME | KVM_CLOCK_TSC_STABLE, now_real - late_ns)
    want = clock + max(late_ns, 0)  # never backwards
    assert vm.use_master_clock is master
    if master:
        assert (vm.master_kernel_ns, vm.master_cycle_now) == (base, h)
    assert vm.kvmclock_offset == want - base
    assert not vm.tsc_write_lock.locked and not vm.masterclock_lock.locked
    assert vm.pvclock_sc.sequence % 2 == 0
    from kvmclock.kvm.requests import KVM_REQ_CLOCK_UPDATE

    assert vm.vcpus[0].kvm_test_request(KVM_REQ_CLOCK_UPDATE)  # every vCPU re-reads
    vm.machine.run_on_cpu(0, lambda: None)
    assert vm.vcpus[0].hv_clock.system_time == want


def test_set_clock_flags_per_profile() -> None:
    up = make_vm(make_host("upstream"), 1)
    up.set_clock(5 * S, KVM_CLOCK_TSC_STABLE | KVM_CLOCK_HOST_TSC, 0)  # accepted, ignored
    up.set_clock(5 * S, 0xE, 1 << 63)  # GET_CLOCK's flags handed back; realtime in the future
    with pytest.raises(ValueError, match="KVM_CLOCK_VALID_FLAGS"):
        up.set_clock(5 * S, 0x10)
    with pytest.raises(ValueError, match="KVM_CLOCK_VALID_FLAGS"):
        up.set_clock(5 * S, 1)
    old = make_vm(make_host("series"), 1)
    with pytest.raises(ValueError, match=r"profile series .*KVM_CLOCK_REALTIME needs Linux 5\.16"):
        old.set_clock(5 * S, KVM_CLOCK_REALTIME, 0)
    with pytest.raises(ValueError, match="accepts only flags 0"):
        old.set_clock(5 * S, KVM_CLOCK_TSC_STABLE)
    with pytest.raises(ValueError, match="flags"):
        old.set_clock(5 * S, KVM_CLOCK_HOST_TSC)


# ---------------------------------------------------------------------------------------------
# wall_clock: getboottime (4.13) vs one TSC read (6.7)
# ---------------------------------------------------------------------------------------------
def read_wall_clock(vm: Kvm, gpa: int) -> tuple[int, int, int]:
    b = bytes(vm.machine.memory[gpa : gpa + 12])
    return (
        int.from_bytes(b[0:4], "little"),
        int.from_bytes(b[4:8], "little"),
        int.from_bytes(b[8:12], "little"),
    )


@pytest.mark.parametrize("value", ["boottime", "single_tsc_read"])
@pytest.mark.parametrize("msr", [MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW])
def test_wall_clock_msr(value: str, msr: int) -> None:
    host = make_host(with_("upstream", wall_clock=value))
    vm = make_vm(host, 1)
    vm.machine.run_on_cpu(0, lambda: None)
    ntp_slew(host, 2000)  # realtime now runs ~300 ppm faster than kvmclock
    host.world.run_until(host.world.now_ns + S)
    # a host suspend of 3 s: boottime = realtime - (offs_real - offs_boot) moves, so
    # getboottime64 is offs_real - offs_boot, not offs_real (or + offs_boot)
    on_cpu(host, 0, lambda: host.timekeeper.inject_sleeptime(3 * S))
    assert host.timekeeper.offs_boot == 3 * S
    host.world.run_until(host.world.now_ns + S // 10)
    gpa = 0x800
    vm.machine.memory[gpa : gpa + 4] = (7).to_bytes(4, "little")  # odd junk: 7 -> 8 -> 9 -> 10
    vm.machine.wrmsr(0, msr, gpa)
    tk = host.timekeeper
    if value == "boottime":
        epoch = (tk.offs_real - tk.offs_boot) - vm.kvmclock_offset
    else:
        assert vm.use_master_clock
        real = on_cpu(host, 0, tk.ktime_get_real_ns)
        epoch = real - master_c(host, vm, 0)
    other = (
        on_cpu(host, 0, tk.ktime_get_real_ns) - master_c(host, vm, 0)
        if value == "boottime"
        else (tk.offs_real - tk.offs_boot) - vm.kvmclock_offset
    )
    assert abs(epoch - other) > 100_000  # the two forms differ after the slew
    assert read_wall_clock(vm, gpa) == (10, (epoch // S) & U32, epoch % S)
    assert vm.wall_clock == gpa


def test_wall_clock_single_read_falls_back_without_masterclock() -> None:
    host = make_host("upstream")
    vm = make_vm(host, 1, old_kvmclock=True)
    host.world.run_until(host.world.now_ns + S)
    gpa = 0x900
    vm.machine.wrmsr(0, MSR_KVM_WALL_CLOCK_NEW, gpa)
    tk = host.timekeeper
    real = on_cpu(host, 0, tk.ktime_get_real_ns)
    kvmclock = (base_from_fields(host, 0, raw=True) + vm.kvmclock_offset) & U64
    epoch = (real - kvmclock) & U64
    assert read_wall_clock(vm, gpa) == (2, (epoch // S) & U32, epoch % S)
    vm.machine.wrmsr(0, MSR_KVM_WALL_CLOCK_NEW, 0)  # gpa 0: nothing written
    assert read_wall_clock(vm, gpa)[0] == 2


# ---------------------------------------------------------------------------------------------
# trace: pvclock_trace_version and the 6.18 host_clocks table
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "profile, want",
    [("gtod", "odd"), ("series", "odd"), ("upstream", "final")],
)
def test_pvclock_trace_version_default(profile: str, want: str) -> None:
    assert PROFILES[profile].pvclock_trace_version == want


@pytest.mark.parametrize("value", ["odd", "final"])
def test_pvclock_trace_version(value: str) -> None:
    host = make_host(with_("upstream", pvclock_trace_version=value))
    vm = make_vm(host, 1)
    gpa = vm.vcpus[0].pv_time_gpa
    vm.machine.memory[gpa : gpa + 4] = (41).to_bytes(4, "little")  # odd junk -> 43, 44
    vm.vcpus[0].kvm_make_request(KVM_REQ_CLOCK_UPDATE)
    vm.machine.run_on_cpu(0, lambda: None)
    recs = [r for r in kvm_of(host).trace_records if r[5] == "kvm_pvclock_update"]
    traced = parse_line(f"qemu-1 [000] 1.000000: kvm_pvclock_update: {recs[-1][6]}")
    assert traced is not None and not hasattr(traced, "reason")
    assert traced.data["version"] == (43 if value == "odd" else 44)  # type: ignore[union-attr]
    assert int.from_bytes(bytes(vm.machine.memory[gpa : gpa + 4]), "little") == 44


def test_host_clocks_6_18_prints_as_4_13() -> None:
    # VDSO_CLOCKMODE_{NONE,TSC,PVCLOCK,HVCLOCK} = 0..3 like VCLOCK_*; only none/tsc have names
    for mode, text in ((0, "none"), (1, "tsc"), (2, "0x2"), (3, "0x3")):
        assert host_clock_symbol(mode) == text
    host = make_host("upstream")
    make_vm(host, 1).machine.run_on_cpu(0, lambda: None)
    texts = [r[6] for r in kvm_of(host).trace_records if r[5] == "kvm_update_master_clock"]
    assert texts[-1] == "masterclock 1 hostclock tsc offsetmatched 1"
    line = f"qemu-1 [000] 1.000000: kvm_update_master_clock: {texts[-1]}"
    rec = parse_line(line)
    assert rec is not None and rec.data["host_clock"] == 1  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# kvmclock_sync_fn every 300 s (all profiles)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["gtod", "upstream"])
def test_kvmclock_periodic_sync(profile: str) -> None:
    host = make_host(profile, cpus=1)
    kvm = kvm_of(host)
    vm = make_vm(host, 1)
    vm.machine.run_on_cpu(0, lambda: None)
    t_created = vm._sync_work.t_ns
    assert t_created == MS + KVMCLOCK_SYNC_PERIOD_NS  # armed at the first vCPU's creation
    vm.create_vcpu()  # a second vCPU does not re-arm the pending work
    assert vm._sync_work.t_ns == t_created
    # enter both vCPUs (the new one's first load queues the 100 ms update work), let that
    # work run, take its requests: nothing is pending before the sync
    host.world.run_until(t_created - 300 * MS)
    for v in vm.vcpus:
        vm.machine.run_on_cpu(v.vcpu_id, lambda: None)
    host.world.run_until(t_created - 150 * MS)
    for v in vm.vcpus:
        vm.machine.run_on_cpu(v.vcpu_id, lambda: None)
    host.world.run_until(t_created - 1)
    assert vm.counters["kvmclock_syncs"] == 0
    assert not any(v.requests for v in vm.vcpus) and not vm._update_work_pending
    host.world.run_until(t_created)
    assert vm.counters["kvmclock_syncs"] == 1
    assert all(v.requests for v in vm.vcpus)  # the update work ran: CLOCK_UPDATE on all
    assert vm._sync_work.t_ns == t_created + KVMCLOCK_SYNC_PERIOD_NS
    kvm.kvmclock_periodic_sync = False
    host.world.run_until(t_created + KVMCLOCK_SYNC_PERIOD_NS)
    assert vm.counters["kvmclock_syncs"] == 1 and vm._sync_work is None

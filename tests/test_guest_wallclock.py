"""The guest's wall clock at boot (MSR_KVM_WALL_CLOCK_NEW: ``kvm_get_wallclock`` +
``pvclock_read_wallclock``) and the hosts' RTC epoch.

A kvmclock guest's CLOCK_REALTIME starts at the host's wall time, not at 1970.  Expected
values are written out here: the host's realtime starts at the RTC's whole second and runs at
exactly 2 cycles per ns on a 2 GHz TSC, so the guest's realtime at boot is that second plus
the true time since the host booted, to the nanosecond.
"""

from __future__ import annotations

import kvmclock
import pytest
from kvmclock.kernel import Kernel
from kvmclock.kvm.x86 import Kvm
from kvmclock.machine import PhysicalMachine, World
from kvmclock.profiles import PROFILES, SWITCHES, resolve_profile
from reference import kernel_math as km

NS = 1_000_000_000
KHZ = 2_000_000
EPOCH = 1_700_000_000_123_456_789  # the RTC's wall time at true time 0 (not a whole second)
MSR_KVM_WALL_CLOCK_NEW = 0x4B564D00


def rtc(t_ns: int) -> int:
    return (EPOCH + t_ns) // NS * NS


def host_and_vm(
    profile: object, khz: int = KHZ, memory: int = 1 << 16
) -> tuple[World, Kernel, Kvm]:
    w = World(4)
    m = PhysicalMachine(w, 2, tsc_khz=khz, rtc_epoch_ns=EPOCH)
    h = Kernel(m, profile)  # type: ignore[arg-type]
    w.run_until(300_000_000)  # the host boots 0.3 s after true time 0
    h.boot()
    h.load_kvm()
    w.run_until(2 * NS + 777)
    assert h.kvm is not None
    vm = h.kvm.create_vm(name="L1", memory_size=memory)
    for _ in range(2):
        vm.create_vcpu()
    for i in range(2):
        vm.machine.run_on_cpu(i, lambda: None)
    return w, h, vm


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("wall_clock", SWITCHES["wall_clock"].values)
def test_guest_realtime_at_boot_is_the_hosts(profile: str, wall_clock: str) -> None:
    cfg = resolve_profile(profile, wall_clock=wall_clock)
    w, h, vm = host_and_vm(cfg)
    t_host_boot = 300_000_000
    w.run_until(3 * NS + 4321)
    g = Kernel(vm.machine, cfg, name="L1")
    g.boot()
    t = w.now_ns
    # the host: the RTC's whole second at its boot, then true time (2 GHz: exact)
    host_real = rtc(t_host_boot) + (t - t_host_boot)
    assert h.timekeeper.ktime_get_real_ns() == host_real
    # the guest: KVM's epoch (either rule) plus kvm-clock read at boot lands on it exactly
    assert g.timekeeper.ktime_get_real_ns() == host_real
    assert g.timekeeper.ktime_get_real_ns() > 1_700_000_000 * NS  # not 1970
    # the guest read the struct KVM wrote, at the gpa it gave with MSR_KVM_WALL_CLOCK_NEW
    gpa = g.wall_clock_gpa()
    assert vm.wall_clock == gpa
    version, sec, nsec = km.PVCLOCK_WALL_CLOCK.unpack_from(vm.machine.memory, gpa)
    assert version % 2 == 0 and version > 0
    rec = km.Record.unpack(vm.machine.memory, g.pvti_offset(0))
    since_boot = km.read_cycles(rec, vm.machine.cpus[0].read_tsc())
    assert (sec * NS + nsec + since_boot) & km.MASK64 == host_real
    # the struct sits apart from every pvclock record
    assert not g.pvti_offset(0) <= gpa < g.pvti_offset(len(vm.vcpus))
    assert gpa + kvmclock.PVCLOCK_WALL_CLOCK_SIZE <= len(vm.machine.memory)
    # and the guest's realtime runs on with the host's
    w.run_until(t + 5 * NS)
    assert vm.machine.run_on_cpu(0, g.timekeeper.ktime_get_real_ns) == host_real + 5 * NS


@pytest.mark.parametrize("profile", PROFILES)
def test_guest_realtime_on_an_inexact_frequency(profile: str) -> None:
    """On 2,593,992 kHz the conversions truncate: single_tsc_read gives realtime and kvmclock
    from one TSC read (exact); boottime adds the host's boottime offset to the kvm-clock
    read, which extrapolates the master pair with the 32-bit pvclock factor where the host
    uses its clocksource mult/shift: they differ by the truncation of one conversion of
    under 3 s of cycles, at most a nanosecond or two."""
    _w, h, vm = host_and_vm(profile, khz=2_593_992)
    g = Kernel(vm.machine, profile, name="L1")
    g.boot()
    diff = g.timekeeper.ktime_get_real_ns() - h.timekeeper.ktime_get_real_ns()
    if PROFILES[profile].wall_clock == "single_tsc_read":
        assert diff == 0
    else:
        assert abs(diff) <= 2


def test_wall_clock_gpa_beside_the_records() -> None:
    _w, _h, vm = host_and_vm("upstream")
    g = Kernel(vm.machine, "upstream", name="L1")
    assert g.wall_clock_gpa() == (1 << 16) - 16  # the last 16-byte slot
    # records reaching the top of memory: the slot just below pvti_gpa
    g2 = Kernel(vm.machine, "upstream", name="L1", pvti_gpa=(1 << 16) - 128)
    assert g2.wall_clock_gpa() == (1 << 16) - 128 - 16
    # no room at all: a clear error naming the memory and the records
    _w3, _h3, vm3 = host_and_vm("upstream", memory=128)
    g3 = Kernel(vm3.machine, "upstream", name="L1")
    with pytest.raises(ValueError, match="no room for the pvclock wall clock"):
        g3.boot()


def test_host_without_kvmclock_reads_the_rtc() -> None:
    w = World(2)
    m = PhysicalMachine(w, 1, tsc_khz=KHZ, rtc_epoch_ns=EPOCH)
    w.run_until(1_500_000_001)
    k = Kernel(m, "gtod")
    assert k.read_persistent_clock_ns() == rtc(1_500_000_001) == 1_700_000_001_000_000_000
    k.boot()
    assert k.timekeeper.ktime_get_real_ns() == rtc(1_500_000_001)


# ------------------------------------------------------------------------------------------
# hosts of one scenario share one wall-clock epoch
# ------------------------------------------------------------------------------------------
def test_rtc_epoch_given_keeps_the_rng_draw_order() -> None:
    """PhysicalMachine draws the epoch even when one is given, so every later draw (TSC
    values, the next machine, the run) is the same as without it."""
    w1, w2 = World(9), World(9)
    a = PhysicalMachine(w1, 2, tsc_khz=KHZ, tsc_skew_cycles=100)
    b = PhysicalMachine(w2, 2, tsc_khz=KHZ, tsc_skew_cycles=100, rtc_epoch_ns=EPOCH)
    assert b.rtc_epoch_ns == EPOCH != a.rtc_epoch_ns
    assert [c.boot_offset for c in a.cpus] == [c.boot_offset for c in b.cpus]
    assert a.platform_counters["hpet"].start == b.platform_counters["hpet"].start
    assert w1.rng.random() == w2.rng.random()
    # two hosts in one world with the shared epoch read the same RTC
    c = PhysicalMachine(w2, 1, rtc_epoch_ns=EPOCH)
    w2.run_until(12_345_678_901)
    assert b.read_persistent_clock_ns() == c.read_persistent_clock_ns() == rtc(12_345_678_901)
    for bad in (-1,):
        with pytest.raises(ValueError, match="rtc_epoch_ns"):
            PhysicalMachine(World(0), 1, rtc_epoch_ns=bad)

"""Clocksources: mult/shift as __clocksource_update_freq_scale computes them, reads and stamps,
kvm-clock through a pvclock record in machine memory, and patch 10's stable-bit notification."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kvmclock
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.timekeeping import (
    CLOCK_SOURCE_MUST_VERIFY,
    MSR_KVM_SYSTEM_TIME_NEW,
    NOTIFY_DONE,
    VCLOCK_NONE,
    VCLOCK_PVCLOCK,
    VCLOCK_TSC,
    clocksource_delta,
)
from reference import kernel_math as km

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


def expected_mult_shift(mask: int, scale: int, freq: int) -> tuple[int, int]:
    """Independent recomputation of __clocksource_update_freq_scale's mult/shift."""
    sec = mask // freq // scale
    if sec == 0:
        sec = 1
    elif sec > 600 and mask > U32:
        sec = 600
    mult, shift = km.clocks_calc_mult_shift(freq, 10**9 // scale, sec * scale)
    maxadj = mult * 11 // 100
    while (mult + maxadj) > U32 or (mult - maxadj) < 0:
        mult >>= 1
        shift -= 1
        maxadj = mult * 11 // 100
    return mult, shift


class FakeCpu:
    def __init__(self, world: World, index: int, khz: int, offset: int) -> None:
        self.world = world
        self.index = index
        self.tsc_khz = khz
        self.offset = offset

    def read_tsc(self) -> int:
        return (self.offset + self.world.now_ns * self.tsc_khz // 1_000_000) & U64


class FakeVm:
    """A minimal Machine for a guest kernel: records written with kvmclock.pvclock_write."""

    level = 1

    def __init__(
        self, world: World, ncpus: int = 2, khz: int = 2_500_000, stable_bit: bool = True
    ) -> None:
        self.world = world
        self.cpus = [FakeCpu(world, i, khz, 1_000_000 + 77 * i) for i in range(ncpus)]
        self.memory = bytearray(4096)
        self.platform_counters: dict[str, Any] = {}
        self.features = {"kvmclock"} | ({"kvmclock_stable_bit"} if stable_bit else set())
        self.msrs: list[tuple[int, int, int]] = []
        self.versions = [0] * ncpus
        self.shift, self.mul = km.get_time_scale(10**9, khz * 1000)

    def run_on_cpu(self, cpu: int, fn: Callable[[], Any]) -> Any:
        return fn()

    def wrmsr(self, cpu: int, msr: int, value: int) -> None:
        self.msrs.append((cpu, msr, value))

    def publish(self, cpu: int, flags: int, system_time: int | None = None) -> None:
        """KVM-like update: tsc_timestamp = now's TSC, system_time = true ns (or given)."""
        self.versions[cpu] += 2
        tsc = self.cpus[cpu].read_tsc()
        info = kvmclock.PvclockVcpuTimeInfo(
            version=self.versions[cpu],
            tsc_timestamp=tsc,
            system_time=self.world.now_ns if system_time is None else system_time,
            tsc_to_system_mul=self.mul,
            tsc_shift=self.shift,
            flags=flags,
        )
        kvmclock.pvclock_write(self.memory, info, offset=cpu * 64)

    def record(self, cpu: int) -> km.Record:
        return km.Record.unpack(self.memory, cpu * 64)


def booted_guest(
    profile: str = "series", stable: bool = True, **kw: Any
) -> tuple[World, FakeVm, Kernel]:
    w = World(1)
    w.run_until(1_000_000)
    vm = FakeVm(w, stable_bit=stable)
    for cpu in range(len(vm.cpus)):
        vm.publish(cpu, kvmclock.PVCLOCK_TSC_STABLE_BIT)
    k = Kernel(vm, profile, name="L1", **kw)
    k.boot()
    return w, vm, k


# -- mult/shift --------------------------------------------------------------------------------
@given(st.integers(min_value=100_000, max_value=10_000_000))
def test_tsc_mult_shift(khz: int) -> None:
    m = PhysicalMachine(World(), 1, tsc_khz=khz)
    k = Kernel(m, "gtod")
    k.boot()
    tsc = k.clocksources["tsc"]
    assert (tsc.mult, tsc.shift) == expected_mult_shift(U64, 1000, khz)


def test_platform_and_jiffies_mult_shift() -> None:
    m = PhysicalMachine(World(), 1)
    k = Kernel(m, "gtod", hz=250)
    k.boot()
    hpet, pm, jif = k.clocksources["hpet"], k.clocksources["acpi_pm"], k.clocksources["jiffies"]
    assert (hpet.mult, hpet.shift) == expected_mult_shift((1 << 32) - 1, 1, 14_318_180)
    assert (pm.mult, pm.shift) == expected_mult_shift((1 << 24) - 1, 1, 3_579_545)
    assert (jif.mult, jif.shift) == (4_000_000 << 8, 8)  # TICK_NSEC << JIFFIES_SHIFT
    assert (hpet.rating, pm.rating, jif.rating, k.clocksources["tsc"].rating) == (250, 200, 1, 300)
    assert hpet.vclock_mode == VCLOCK_NONE and k.clocksources["tsc"].vclock_mode == VCLOCK_TSC
    assert k.clocksources["tsc"].flags & CLOCK_SOURCE_MUST_VERIFY


def test_clocksource_delta_negative_motion_clamp() -> None:
    assert clocksource_delta(110, 100, U64) == 10
    assert clocksource_delta(90, 100, U64) == 0  # negative motion -> 0 on x86
    assert clocksource_delta(5, (1 << 32) - 5, (1 << 32) - 1) == 10  # counter wrap
    assert clocksource_delta(1 << 31, 0, (1 << 32) - 1) == 0  # half range = negative


# -- reads and stamps --------------------------------------------------------------------------
def test_tsc_read_stamp_is_counter_on_current_cpu() -> None:
    w = World(5)
    m = PhysicalMachine(w, 2, tsc_skew_cycles=10_000)
    k = Kernel(m, "series")
    k.boot()
    w.run_until(123_456_789)
    tsc = k.clocksources["tsc"]
    for cpu in (0, 1):
        cycles, stamp = k.run_on_cpu(cpu, tsc.read)
        assert cycles == stamp == m.cpus[cpu].tsc_at(w.now_ns)
    hpet = k.clocksources["hpet"]
    assert hpet.read() == (m.platform_counters["hpet"].read(),) * 2


def test_kvmclock_boot_msrs_mode_and_stamp() -> None:
    w, vm, k = booted_guest()
    assert vm.msrs == [
        (0, MSR_KVM_SYSTEM_TIME_NEW, 0 | 1),
        (1, MSR_KVM_SYSTEM_TIME_NEW, 64 | 1),
        (0, 0x4B564D00, 4096 - 16),  # MSR_KVM_WALL_CLOCK_NEW: the last 16-byte slot
    ]
    kc = k.clocksources["kvm-clock"]
    assert kc.rating == 400 and kc.vclock_mode == VCLOCK_PVCLOCK
    assert (kc.mult, kc.shift) == expected_mult_shift(U64, 1, 10**9)
    assert k.timekeeper.clock is kc
    w.run_until(50_000_000)
    for cpu in (0, 1):
        ns, stamp = k.run_on_cpu(cpu, kc.read)
        assert stamp == vm.cpus[cpu].read_tsc()
        assert ns == km.read_cycles(vm.record(cpu), stamp)


def test_kvmclock_without_stable_bit_is_vclock_none_and_clamped() -> None:
    w, vm, k = booted_guest(stable=False)
    kc = k.clocksources["kvm-clock"]
    assert kc.vclock_mode == VCLOCK_NONE
    w.run_until(10_000_000)
    ns1, _ = k.run_on_cpu(0, kc.read)
    # CPU 1's record is 5 ms behind: the shared last_value clamp keeps the clock monotonic.
    vm.publish(1, 0, system_time=w.now_ns - 5_000_000)
    ns2, stamp2 = k.run_on_cpu(1, kc.read)
    assert ns2 == ns1
    assert km.read_cycles(vm.record(1), stamp2) < ns1


def test_kvmclock_rating_299_prefers_tsc() -> None:
    _, _, k = booted_guest(kvmclock_rating=299)
    assert k.timekeeper.clock.name == "tsc"
    assert k.clocksources["kvm-clock"].rating == 299


# -- patch 10 ----------------------------------------------------------------------------------
def test_series_stable_bit_flip_fires_change_chain_once_per_flip() -> None:
    w, vm, k = booted_guest("series")
    calls: list[int] = []
    k.clocksource_changes_register_notifier(lambda a, d: calls.append(w.now_ns) or NOTIFY_DONE)
    assert len(calls) == 1  # registration fires once (patch 07)
    w.run_until(20_000_000)  # ticks read kvm-clock: stable unchanged -> no calls
    assert len(calls) == 1
    vm.publish(0, 0)
    w.run_until(30_000_000)
    assert len(calls) == 2
    assert k.counters["pvclock.stable_flips"] == 1
    w.run_until(40_000_000)
    assert len(calls) == 2
    vm.publish(0, kvmclock.PVCLOCK_TSC_STABLE_BIT)
    k.timekeeper.ktime_get_boot_ns()
    assert len(calls) == 3
    # timekeeping_init + boot switch jiffies->kvm-clock + registration + 2 flips
    assert k.counters["notifier_calls.clocksource_changes"] == 1 + 1 + 1 + 2


def test_gtod_stable_bit_flip_does_not_notify() -> None:
    w, vm, k = booted_guest("gtod")
    calls: list[int] = []
    k.clocksource_changes_chain.register(lambda a, d: calls.append(1) or NOTIFY_DONE)
    vm.publish(0, 0)
    w.run_until(30_000_000)
    assert calls == []
    assert k.counters["pvclock.stable_flips"] == 0


def test_notifier_reading_time_from_flip_does_not_recurse() -> None:
    w, vm, k = booted_guest("series")
    seen: list[int] = []

    def listener(action: int, data: Any) -> int:
        seen.append(k.timekeeper.ktime_get_boot_ns())  # re-entrant kvm-clock read
        return NOTIFY_DONE

    k.clocksource_changes_register_notifier(listener)
    vm.publish(0, 0)
    w.run_until(10_000_000)
    assert len(seen) == 2  # registration + one flip, no recursion


def test_bad_read_before_init() -> None:
    m = PhysicalMachine(World(), 1)
    k = Kernel(m, "gtod")
    with pytest.raises(RuntimeError, match="timekeeping_init"):
        k.timekeeper.ktime_get_ns()

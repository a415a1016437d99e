"""Edge tests of kernel.py's rules: argument ranges, INITIAL_JIFFIES and the tick, clocksource list
order and selection (rating ties, overrides), mark_tsc_unstable / check_tsc_unstable
(arch/x86/kernel/tsc.c, 2017), the tsc flags, the guest side of kvm-clock (valid flags, stable
bit, vclock mode, last_value clamp; arch/x86/kernel/kvmclock.c and pvclock.c) and the notifier
registration helpers.  Expected values are written out in the test or come from
tests/reference."""

from __future__ import annotations

from typing import Any

import kvmclock
import pytest
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalCpu, PhysicalMachine, World
from kvmclock.timekeeping import (
    CLOCK_SOURCE_IS_CONTINUOUS,
    CLOCK_SOURCE_MUST_VERIFY,
    CLOCK_SOURCE_SUSPEND_NONSTOP,
    CLOCK_SOURCE_UNSTABLE,
    CLOCK_SOURCE_VALID_FOR_HRES,
    MSR_KVM_SYSTEM_TIME_NEW,
    NOTIFY_DONE,
    NOTIFY_OK,
    NOTIFY_STOP,
    VCLOCK_NONE,
    VCLOCK_PVCLOCK,
    KvmClock,
    TscClocksource,
)
from reference import kernel_math as km
from test_clocksource import FakeVm, booted_guest
from test_timekeeping_rules import ManualCs, bare_kernel

NSEC = 1_000_000_000
STABLE = kvmclock.PVCLOCK_TSC_STABLE_BIT


def printks(k: Kernel) -> list[str]:
    return [e["text"] for e in k.world.events if e["kind"] == "printk"]


# ================================================================================================
# construction
# ================================================================================================
def test_argument_edges() -> None:
    m = PhysicalMachine(World(), 1)
    for hz in (15, 10_000):
        assert Kernel(m, "gtod", hz=hz).hz == hz
        # the jiffies clocksource (mult TICK_NSEC << JIFFIES_SHIFT, a u32) registers at boot
        Kernel(PhysicalMachine(World(), 1), "gtod", hz=hz).boot()
    # HZ 14: TICK_NSEC 71,428,571 << 6 = 4,571,428,544 > 2**32 - 1
    assert (((10**9 + 7) // 14) << 6) > 2**32 - 1 >= (((10**9 + 7) // 15) << 6)
    for hz in (14, 10_001):
        with pytest.raises(ValueError, match=rf"hz={hz} out of range \(15\.\.10000"):
            Kernel(m, "gtod", hz=hz)
    with pytest.raises(TypeError, match="hz must be an int, got bool"):
        Kernel(m, "gtod", hz=True)
    for rating in (0, 1000):
        assert Kernel(m, "gtod", kvmclock_rating=rating).kvmclock_rating == rating
    with pytest.raises(ValueError, match="kvmclock_rating"):
        Kernel(m, "gtod", kvmclock_rating=1001)
    with pytest.raises(TypeError, match="kvmclock_rating must be an int or None, got bool"):
        Kernel(m, "gtod", kvmclock_rating=False)
    with pytest.raises(TypeError, match="clocksource_override"):
        Kernel(m, "gtod", clocksource_override=1)  # type: ignore[arg-type]
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="pvti_gpa"):
            Kernel(m, "gtod", pvti_gpa=bad)  # type: ignore[arg-type]
    k = Kernel(m, "series", pvti_gpa=0x1000)
    assert (k.name, k.level, k.profile, k.pvti_gpa) == ("L0", 0, "series", 0x1000)
    assert (k.pvti_offset(0), k.pvti_offset(3)) == (0x1000, 0x1000 + 3 * 64)
    assert k.tsc_unstable is False and k.check_tsc_unstable() is False
    # before boot: nothing booted, no tick, no kvmclock (valid flags 0), named chains
    assert (k.booted, k.finished_booting, k.boot_ns, k.tick_timer) == (False, False, None, None)
    assert k.pvclock_valid_flags == 0 and k.pvclock is None and k.kvm is None
    assert k.pvclock_gtod_chain.name == "pvclock_gtod_chain"
    assert k.clocksource_changes_chain.name == "clocksource_changes_chain"
    assert (k.current_cpu, k.tick_cpu, k.curr_clocksource) == (0, 0, None)
    assert repr(k) == "Kernel(name='L0', profile='series', level=0, clocksource=None)"


@pytest.mark.parametrize(
    ("hz", "jiffies"), [(250, (1 << 32) - 75_000), (1000, (1 << 32) - 300_000), (100, 4294937296)]
)
def test_initial_jiffies(hz: int, jiffies: int) -> None:
    # INITIAL_JIFFIES = (unsigned long)(unsigned int)(-300 * HZ)
    assert bare_kernel(hz=hz).jiffies_64 == jiffies


def test_tick_period_and_jiffies() -> None:
    w = World(0)
    k = Kernel(PhysicalMachine(w, 1), "gtod", hz=300)
    j0 = k.jiffies_64
    k.boot()
    # TICK_NSEC(300) = 3_333_333: the 300th tick is at 999_999_900 ns
    w.run_until(999_999_899)
    assert k.counters["ticks"] == 299 and k.jiffies_64 == j0 + 299
    w.run_until(999_999_900)
    assert k.counters["ticks"] == 300 and k.jiffies_64 == j0 + 300


def test_jiffies_wrap_u64() -> None:
    w = World(0)
    k = Kernel(PhysicalMachine(w, 1), "gtod")
    k.boot()
    k.jiffies_64 = (1 << 64) - 1
    w.run_until(4_000_000)
    assert k.jiffies_64 == 0


def test_tick_runs_on_tick_cpu() -> None:
    w = World(0)
    khz = 2_000_000
    ahead = 3 * 8_000_000  # CPU1 is 3 ticks' worth of cycles (12 ms) ahead
    cpus = [
        PhysicalCpu(w, 0, khz, boot_offset=10**9),
        PhysicalCpu(w, 1, khz, boot_offset=10**9 + ahead),
    ]
    k = Kernel(PhysicalMachine(w, cpus), "gtod")
    k.tick_cpu = 1
    k.boot()
    tk = k.timekeeper
    last0 = tk.tkr_mono.cycle_last
    assert last0 == cpus[0].tsc_at(0)  # the switch to tsc happened on CPU0 at boot
    w.run_until(4_000_000)
    # the first tick reads CPU1: 4 ms + 12 ms of cycles -> 4 whole intervals
    assert tk.tkr_mono.cycle_last - last0 == 4 * tk.cycle_interval


# ================================================================================================
# clocksource list, registration, selection
# ================================================================================================
def test_enqueue_order_and_rating_change() -> None:
    k = bare_kernel()
    cs = {
        n: ManualCs(k, n, rating=r)
        for n, r in (("a100", 100), ("b300", 300), ("c100", 100), ("d200", 200), ("e300", 300))
    }
    for c in cs.values():
        k.clocksource_register(c)
    assert [c.name for c in k.clocksource_list] == ["b300", "e300", "d200", "a100", "c100"]
    k.clocksource_change_rating(cs["b300"], 100)  # after every source of equal or higher rating
    assert [c.name for c in k.clocksource_list] == ["e300", "d200", "a100", "c100", "b300"]
    k.clocksource_change_rating(cs["c100"], 200)
    assert [c.name for c in k.clocksource_list] == ["e300", "d200", "c100", "a100", "b300"]
    assert all(c.registered for c in cs.values())
    with pytest.raises(ValueError, match="already registered"):
        k.clocksource_register(ManualCs(k, "a100"))
    log = [e for e in k.world.events if e["kind"] == "clocksource_register"]
    assert next((e["cs"], e["rating"], e["mult"], e["shift"]) for e in log) == ("a100", 100, 3, 1)


def test_select_waits_for_boot_and_switches_once() -> None:
    k = bare_kernel()
    a = ManualCs(k, "a", rating=100)
    k.clocksource_register(a)
    k.timekeeper.timekeeping_init(a, 0)
    k.curr_clocksource = a
    b = ManualCs(k, "b", rating=200)
    k.clocksource_register(b)
    assert k.timekeeper.clock is a  # not finished booting: no selection
    k.finished_booting = True
    k.clocksource_select()
    assert k.timekeeper.clock is b and k.curr_clocksource is b
    assert printks(k)[-1] == "clocksource: Switched to clocksource b"
    last = [e for e in k.world.events if e["kind"] == "printk"][-1]
    assert (last["kernel"], last["level"]) == ("L0", "info")
    n = len(printks(k))
    changes = k.counters["clocksource_changes"]
    k.clocksource_select()  # already the best: nothing
    assert len(printks(k)) == n and k.counters["clocksource_changes"] == changes
    k.timekeeping_notify(b)  # the current clock: nothing
    assert k.counters["clocksource_changes"] == changes


def test_select_with_empty_list_does_nothing() -> None:
    k = bare_kernel()
    k.finished_booting = True
    k.clocksource_select()
    assert k.curr_clocksource is None


def test_override_unstable_is_dropped_with_warning() -> None:
    w = World(0)
    k = Kernel(PhysicalMachine(w, 1), "gtod", clocksource_override="acpi_pm")
    k.boot()
    assert k.timekeeper.clock.name == "acpi_pm"
    pm = k.clocksources["acpi_pm"]
    pm.flags |= CLOCK_SOURCE_UNSTABLE
    k.clocksource_select()
    assert k.clocksource_override is None
    assert k.timekeeper.clock.name == "tsc"
    warn = [e for e in k.world.events if e["kind"] == "printk"][-2]
    assert warn["level"] == "warn"
    assert printks(k)[-2:] == [
        "clocksource: Override clocksource acpi_pm is unstable and not HRT compatible - "
        "cannot switch while in HRT/NOHZ mode",
        "clocksource: Switched to clocksource tsc",
    ]


@pytest.mark.parametrize(
    ("rating", "chosen"), [(301, "kvm-clock"), (300, "kvm-clock"), (299, "tsc")]
)
def test_guest_rating_tie_goes_to_the_first_registered(rating: int, chosen: str) -> None:
    # kvm-clock registers before tsc; clocksource_enqueue puts an equal rating after it
    _w, _vm, k = booted_guest(kvmclock_rating=rating)
    assert k.timekeeper.clock.name == chosen
    assert k.clocksources["kvm-clock"].rating == rating


# ================================================================================================
# tsc flags, mark_tsc_unstable, check_tsc_unstable
# ================================================================================================
@pytest.mark.parametrize(
    ("features", "nonstop", "verify"),
    [
        ({"tsc", "constant_tsc", "nonstop_tsc"}, True, True),
        ({"tsc", "constant_tsc"}, False, True),
        ({"tsc", "nonstop_tsc"}, False, True),
        ({"tsc", "constant_tsc", "nonstop_tsc", "tsc_reliable"}, True, False),
    ],
)
def test_tsc_flags_from_features(features: set[str], nonstop: bool, verify: bool) -> None:
    w = World(0)
    k = Kernel(PhysicalMachine(w, 1, features=features), "gtod")
    k.boot()
    tsc = k.clocksources["tsc"]
    assert tsc.flags & CLOCK_SOURCE_IS_CONTINUOUS
    assert bool(tsc.flags & CLOCK_SOURCE_SUSPEND_NONSTOP) is nonstop
    assert bool(tsc.flags & CLOCK_SOURCE_MUST_VERIFY) is verify
    # exact flags after registration: a source that is not watched is VALID_FOR_HRES at once
    expected = CLOCK_SOURCE_IS_CONTINUOUS
    expected |= CLOCK_SOURCE_SUSPEND_NONSTOP if nonstop else 0
    expected |= CLOCK_SOURCE_MUST_VERIFY if verify else CLOCK_SOURCE_VALID_FOR_HRES
    assert tsc.flags == expected
    assert (tsc in k.watchdog.watchdog_list) is verify
    assert k.watchdog.running is verify  # nothing to watch without MUST_VERIFY
    assert (tsc.rating, tsc.mask, tsc.freq_hz) == (300, (1 << 64) - 1, 2_000_000_000)


def test_mark_tsc_unstable_registered() -> None:
    w = World(0)
    k = Kernel(PhysicalMachine(w, 1), "series")
    k.boot()
    w.run_until(NSEC)
    k.mark_tsc_unstable("cpufreq changes")
    tsc = k.clocksources["tsc"]
    assert k.tsc_unstable and k.check_tsc_unstable()
    assert tsc.flags & CLOCK_SOURCE_UNSTABLE and tsc.rating == 300  # re-rated by the work
    # the driver hook does not print again: tsc_unstable was already set
    assert [t for t in printks(k) if t.startswith("tsc:")] == [
        "tsc: Marking TSC unstable due to cpufreq changes"
    ]
    w.run_until(NSEC)  # the work: same instant
    assert tsc.rating == 0 and k.timekeeper.clock.name == "hpet"
    assert k.counters["notifier_calls.clocksource_changes"] == 3  # init, boot switch, this one


def test_mark_tsc_unstable_before_registration() -> None:
    w = World(0)
    k = Kernel(PhysicalMachine(w, 1), "gtod")
    k.mark_tsc_unstable("check_tsc_sync_source failed")
    assert k.check_tsc_unstable() and "tsc" not in k.clocksources
    k.boot()
    tsc = k.clocksources["tsc"]
    # tsc_init with tsc_unstable: rating 0 and not continuous
    assert tsc.rating == 0 and not tsc.flags & CLOCK_SOURCE_IS_CONTINUOUS
    assert k.timekeeper.clock.name == "hpet"
    assert k.clocksource_list[-1] is tsc or k.clocksource_list[-2] is tsc
    # only CONTINUOUS is cleared: still watched (MUST_VERIFY), not yet checked
    assert tsc.flags == CLOCK_SOURCE_MUST_VERIFY | CLOCK_SOURCE_SUSPEND_NONSTOP


def test_mark_tsc_unstable_with_unset_mult_only_rates() -> None:
    k = bare_kernel()
    tsc = TscClocksource(k)  # known to the kernel but mult not computed (not registered)
    k.clocksources["tsc"] = tsc
    k.mark_tsc_unstable("early")
    # bare_kernel's machine lacks constant_tsc/nonstop_tsc: no SUSPEND_NONSTOP
    assert (
        tsc.flags == CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_MUST_VERIFY | CLOCK_SOURCE_UNSTABLE
    )
    assert tsc.rating == 0
    assert tsc not in k.watchdog.watchdog_list
    assert not [e for e in k.world.events if e["kind"] == "clocksource_unstable"]


def test_tsc_mark_unstable_hook_from_watchdog() -> None:
    k = bare_kernel()
    tsc = TscClocksource(k)
    tsc.on_mark_unstable()
    assert k.tsc_unstable
    assert printks(k) == ["tsc: Marking TSC unstable due to clocksource watchdog"]
    tsc.on_mark_unstable()
    assert len(printks(k)) == 1


# ================================================================================================
# kvm-clock: guest side
# ================================================================================================
def test_kvmclock_msrs_at_pvti_gpa_and_memory_edge() -> None:
    w = World(1)
    vm = FakeVm(w, ncpus=2)
    k = Kernel(vm, "gtod", pvti_gpa=4096 - 128)  # the two records end exactly at the top
    for cpu in range(2):
        kvmclock.pvclock_write(
            vm.memory,
            kvmclock.PvclockVcpuTimeInfo(
                version=2,
                tsc_timestamp=0,
                system_time=0,
                tsc_to_system_mul=vm.mul,
                tsc_shift=vm.shift,
                flags=STABLE,
            ),
            offset=4096 - 128 + 64 * cpu,
        )
    k.boot()
    assert vm.msrs == [
        (0, MSR_KVM_SYSTEM_TIME_NEW, (4096 - 128) | 1),
        (1, MSR_KVM_SYSTEM_TIME_NEW, (4096 - 64) | 1),
        # kvm_get_wallclock: the records fill the top of memory, so the 12-byte wall clock
        # takes the 16-byte slot just below them
        (0, 0x4B564D00, 4096 - 128 - 16),
    ]
    k2 = Kernel(FakeVm(World(1), ncpus=2), "gtod", pvti_gpa=4096 - 127)
    with pytest.raises(ValueError, match="too small"):
        k2.boot()


@pytest.mark.parametrize(
    ("feature", "record_flags", "valid", "mode"),
    [
        (True, STABLE, STABLE, VCLOCK_PVCLOCK),
        (True, 0, STABLE, VCLOCK_NONE),
        (False, STABLE, 0, VCLOCK_NONE),
        (False, 0, 0, VCLOCK_NONE),
    ],
)
def test_valid_flags_and_vclock_mode(
    feature: bool, record_flags: int, valid: int, mode: int
) -> None:
    w = World(1)
    w.run_until(1_000_000)
    vm = FakeVm(w, stable_bit=feature)
    for cpu in range(2):
        vm.publish(cpu, record_flags)
    k = Kernel(vm, "series", name="L1")
    k.boot()
    kc = k.clocksources["kvm-clock"]
    assert k.pvclock_valid_flags == valid
    assert kc.vclock_mode == mode
    assert k.timekeeper.get_tk_mono_clock_mode() == mode
    assert kc.last_stable is (mode == VCLOCK_PVCLOCK)
    assert (kc.rating, kc.mult, kc.shift, kc.freq_hz) == (400, *_mult_shift_1ghz(), NSEC)


def _mult_shift_1ghz() -> tuple[int, int]:
    sec = min(((1 << 64) - 1) // NSEC, 600)
    return km.clocks_calc_mult_shift(NSEC, NSEC, sec)


def test_stable_record_is_not_clamped_across_cpus() -> None:
    w, vm, k = booted_guest("gtod")
    kc = k.clocksources["kvm-clock"]
    w.run_until(10_000_000)
    ns0, _ = k.run_on_cpu(0, kc.read)
    vm.publish(1, STABLE, system_time=w.now_ns - 5_000_000)
    ns1, stamp1 = k.run_on_cpu(1, kc.read)
    # both valid flags and the record carry the stable bit: the raw value, 5 ms behind
    assert ns1 == km.read_cycles(vm.record(1), stamp1) == w.now_ns - 5_000_000 < ns0


def test_clamp_when_valid_flags_lack_the_stable_bit() -> None:
    # the record says stable, but the guest did not see KVM_FEATURE_CLOCKSOURCE_STABLE_BIT
    w = World(1)
    w.run_until(1_000_000)
    vm = FakeVm(w, stable_bit=False)
    for cpu in range(2):
        vm.publish(cpu, STABLE)
    k = Kernel(vm, "gtod", name="L1")
    k.boot()
    kc = k.clocksources["kvm-clock"]
    w.run_until(10_000_000)
    ns0, _ = k.run_on_cpu(0, kc.read)
    vm.publish(1, STABLE, system_time=w.now_ns - 5_000_000)
    ns1, stamp1 = k.run_on_cpu(1, kc.read)
    raw = km.read_cycles(vm.record(1), stamp1)
    value, last, _flags = km.pvclock_clocksource_read(vm.record(1), stamp1, 0, ns0)
    assert raw < ns0 and ns1 == value == last == ns0


def test_guest_stopped_flag_is_cleared_by_the_read() -> None:
    _w, vm, k = booted_guest("gtod")
    kc = k.clocksources["kvm-clock"]
    vm.publish(0, STABLE | kvmclock.PVCLOCK_GUEST_STOPPED)
    k.run_on_cpu(0, kc.read)
    assert vm.record(0).flags == STABLE


def test_series_flip_with_masked_valid_flags_never_notifies() -> None:
    w = World(1)
    w.run_until(1_000_000)
    vm = FakeVm(w, stable_bit=False)
    for cpu in range(2):
        vm.publish(cpu, STABLE)
    k = Kernel(vm, "series", name="L1")
    k.boot()
    n = k.counters["notifier_calls.clocksource_changes"]
    vm.publish(0, 0)
    w.run_until(20_000_000)
    vm.publish(0, STABLE)
    w.run_until(40_000_000)
    assert k.counters["notifier_calls.clocksource_changes"] == n
    assert k.counters["pvclock.stable_flips"] == 0


def test_series_flip_counts_and_first_read_only_records() -> None:
    _w, vm, k = booted_guest("series")
    kc = KvmClock(k, 100)  # a fresh clocksource: no stable state seen yet
    n = k.counters["notifier_calls.clocksource_changes"]
    k.run_on_cpu(0, kc.read)
    assert kc.last_stable is True and k.counters["notifier_calls.clocksource_changes"] == n
    vm.publish(0, 0)
    k.run_on_cpu(0, kc.read)
    assert kc.last_stable is False and kc.stable_flips == 1
    assert k.counters["notifier_calls.clocksource_changes"] == n + 1
    flips = [e for e in k.world.events if e["kind"] == "pvclock_stable_flip"]
    assert [(e["cpu"], e["stable"]) for e in flips] == [(0, False)]


def test_kvmclock_read_before_init() -> None:
    k = bare_kernel()
    with pytest.raises(RuntimeError, match="kvmclock_init"):
        KvmClock(k, 400).read()


# ================================================================================================
# notifier registration helpers
# ================================================================================================
def test_gtod_register_calls_with_was_set_and_returns_chain_result() -> None:
    w = World(0)
    k = Kernel(PhysicalMachine(w, 1), "gtod")
    k.boot()
    n = k.counters["notifier_calls.pvclock_gtod"]
    got: list[tuple[str, int]] = []
    k.pvclock_gtod_register_notifier(lambda a, d: got.append(("lo", a)) or NOTIFY_OK, -1)
    k.pvclock_gtod_register_notifier(lambda a, d: got.append(("hi", a)) or NOTIFY_DONE, 1)
    assert got == [("lo", 1), ("hi", 1), ("lo", 1)]  # each registration walks the chain once
    assert k.counters["notifier_calls.pvclock_gtod"] == n + 2
    assert k.update_pvclock_gtod(False) == NOTIFY_OK  # the last callback's result
    assert got[-2:] == [("hi", 0), ("lo", 0)]


def test_change_chain_register_notifies_and_returns() -> None:
    w = World(0)
    k = Kernel(PhysicalMachine(w, 1), "series")
    k.boot()
    got: list[tuple[int, Any]] = []

    def cb(a: int, d: Any) -> int:
        got.append((a, d))
        return NOTIFY_STOP

    k.clocksource_changes_register_notifier(cb, 5)
    assert got == [(0, None)]
    assert k.clocksource_changes_notify() == NOTIFY_STOP
    k.clocksource_changes_unregister_notifier(cb)
    assert k.clocksource_changes_notify() == NOTIFY_DONE


def test_run_on_cpu_restores_after_exception_and_nests() -> None:
    k = Kernel(PhysicalMachine(World(), 3), "gtod")

    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        k.run_on_cpu(2, boom)
    assert k.current_cpu == 0
    assert k.run_on_cpu(
        1, lambda: (k.current_cpu, k.run_on_cpu(2, lambda: k.current_cpu), k.current_cpu)
    ) == (1, 2, 1)


def test_load_kvm_once() -> None:
    k = Kernel(PhysicalMachine(World(), 1), "gtod")
    k.boot()
    kvm = k.load_kvm()
    assert k.kvm is kvm
    with pytest.raises(RuntimeError, match="already loaded"):
        k.load_kvm()


def test_repr_after_boot() -> None:
    k = Kernel(PhysicalMachine(World(), 1), "gtod", name="host")
    k.boot()
    assert repr(k) == "Kernel(name='host', profile='gtod', level=0, clocksource='tsc')"


def test_boot_log_and_guest_without_rtc() -> None:
    w, vm, k = booted_guest("gtod")
    boot = next(e for e in w.events if e["kind"] == "boot")
    assert boot["clocksource"] == "kvm-clock" and boot["level"] == 1
    assert boot["tsc"] == [c.read_tsc() for c in vm.cpus]
    assert k.boot_ns == 1_000_000
    # a kvmclock guest reads its wall time through MSR_KVM_WALL_CLOCK_NEW; this fake VM has
    # no KVM writing the struct (all zero), so the wall time at boot is the kvm-clock reading
    # itself (pvclock_read_wallclock adds "time since system boot"): the published
    # system_time 1 ms, the TSC has not moved since
    assert k.timekeeper.ktime_get_real_ns() - k.timekeeper.ktime_get_ns() == 1_000_000


def test_register_helpers_default_priority_and_unregister() -> None:
    w = World(0)
    k = Kernel(PhysicalMachine(w, 1), "gtod")
    k.boot()
    got: list[str] = []
    first = lambda a, d: got.append("default") or NOTIFY_DONE  # noqa: E731
    k.pvclock_gtod_register_notifier(first)
    k.pvclock_gtod_register_notifier(lambda a, d: got.append("one") or NOTIFY_DONE, 1)
    got.clear()
    k.update_pvclock_gtod(False)
    assert got == ["one", "default"]
    k.pvclock_gtod_unregister_notifier(first)
    got.clear()
    k.update_pvclock_gtod(False)
    assert got == ["one"]
    k2 = Kernel(PhysicalMachine(World(0), 1), "series")
    k2.boot()
    got.clear()
    k2.clocksource_changes_register_notifier(lambda a, d: got.append("default") or NOTIFY_DONE)
    k2.clocksource_changes_register_notifier(lambda a, d: got.append("one") or NOTIFY_DONE, 1)
    got.clear()
    k2.clocksource_changes_notify()
    assert got == ["one", "default"]


def test_event_fields() -> None:
    w, vm, k = booted_guest("series")
    regs = [e for e in w.events if e["kind"] == "kvmclock_register"]
    assert regs == [
        {"t_ns": 1_000_000, "kind": "kvmclock_register", "kernel": "L1", "cpu": c, "gpa": 64 * c}
        for c in (0, 1)
    ]
    kc = k.clocksources["kvm-clock"]
    reg = [e for e in w.events if e["kind"] == "clocksource_register"]
    assert reg[0] == {
        "t_ns": 1_000_000,
        "kind": "clocksource_register",
        "kernel": "L1",
        "cs": "kvm-clock",
        "rating": 400,
        "mult": kc.mult,
        "shift": kc.shift,
    }
    assert (kc.mult, kc.shift) == _mult_shift_1ghz()
    vm.publish(1, 0)
    k.run_on_cpu(1, kc.read)
    vm.publish(1, STABLE)
    k.run_on_cpu(1, kc.read)
    flips = [e for e in w.events if e["kind"] == "pvclock_stable_flip"]
    assert flips == [
        {"t_ns": 1_000_000, "kind": "pvclock_stable_flip", "kernel": "L1", "cpu": 1, "stable": s}
        for s in (False, True)
    ]
    assert kc.stable_flips == 2 and k.counters["pvclock.stable_flips"] == 2
    assert kc.flags == CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_VALID_FOR_HRES
    boot = next(e for e in w.events if e["kind"] == "boot")
    assert (boot["kernel"], boot["profile"], boot["level"]) == ("L1", "series", 1)


def test_unknown_platform_counter_is_skipped() -> None:
    from kvmclock.machine.physical import PlatformCounter

    w = World(0)
    m = PhysicalMachine(w, 1)
    other = PlatformCounter(w, "other", 32_768, 32)
    m.platform_counters = {"other": other, **m.platform_counters}
    k = Kernel(m, "gtod")
    k.boot()
    assert [c.name for c in k.clocksource_list] == ["tsc", "hpet", "acpi_pm", "jiffies"]


def test_jiffies_clocksource_parameters() -> None:
    k = Kernel(PhysicalMachine(World(0), 1), "gtod", hz=100)
    k.boot()
    jif = k.clocksources["jiffies"]
    # TICK_NSEC(100) << JIFFIES_SHIFT(100) = 10_000_000 << 8; 32-bit mask, rating 1, no freq
    assert jif.flags == 0  # not continuous: never VALID_FOR_HRES
    assert (jif.mult, jif.shift, jif.mask, jif.rating, jif.freq_hz) == (
        10_000_000 << 8,
        8,
        (1 << 32) - 1,
        1,
        0,
    )
    assert jif.read() == (k.jiffies_64, k.jiffies_64)


def test_platform_clocksources_flags_and_kernel() -> None:
    k = Kernel(PhysicalMachine(World(0), 1), "gtod")
    k.boot()
    for name in ("hpet", "acpi_pm"):
        cs = k.clocksources[name]
        assert cs.flags == CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_VALID_FOR_HRES
        assert cs.kernel is k and cs.vclock_mode == VCLOCK_NONE
    k.clocksources["acpi_pm"].mark_unstable()  # reaches this kernel's watchdog
    assert k.clocksources["acpi_pm"] in k.watchdog.watchdog_list


def test_jiffies_only_boot_does_not_switch() -> None:
    # clocksource_done_booting: curr_clocksource = the default clock (jiffies) before selecting
    k = Kernel(PhysicalMachine(World(0), 1, hpet=False, acpi_pm=False, features={"notsc"}), "gtod")
    k.boot()
    assert k.curr_clocksource is k.clocksources["jiffies"]
    assert not [t for t in printks(k) if t.startswith("clocksource: Switched")]
    assert k.counters["clocksource_changes"] == 0


def test_one_khz_tsc_is_registered() -> None:
    k = Kernel(PhysicalMachine(World(0), 1, tsc_khz=1), "gtod")
    k.boot()
    tsc = k.clocksources["tsc"]
    assert tsc.freq_hz == 1000 and k.timekeeper.clock is tsc


def test_stable_bit_flip_before_the_first_read_notifies() -> None:
    """kvm-clock remembers the stable bit seen at boot: a flip before its first read counts.

    Rated 299 it is not the boot clocksource, so nothing reads it during boot."""
    w = World(1)
    w.run_until(1_000_000)
    vm = FakeVm(w)
    for cpu in range(2):
        vm.publish(cpu, STABLE)
    k = Kernel(vm, "series", name="L1", kvmclock_rating=299)
    k.boot()
    assert k.timekeeper.clock.name == "tsc"
    n = k.counters["notifier_calls.clocksource_changes"]
    flips = k.counters["pvclock.stable_flips"]
    vm.publish(0, 0)
    k.run_on_cpu(0, k.clocksources["kvm-clock"].read)
    assert k.counters["pvclock.stable_flips"] == flips + 1
    assert k.counters["notifier_calls.clocksource_changes"] == n + 1


def test_register_default_scale_is_one() -> None:
    k = bare_kernel()
    cs = ManualCs(k, "hz", mult=0, shift=0)
    k.clocksource_register(cs, freq=1_000_000)  # clocksource_register_hz
    assert cs.freq_hz == 1_000_000
    mult, shift = km.clocks_calc_mult_shift(1_000_000, NSEC, 600)  # sec capped at 600
    assert (mult, shift) == (4_194_304_000, 22)
    # mult + 11% does not fit a u32: halved once (__clocksource_update_freq_scale)
    assert (cs.mult, cs.shift) == (mult >> 1, shift - 1)


def test_kvmclock_msrs_are_written_on_their_cpu() -> None:
    class PinnedVm(FakeVm):
        running: int | None = None

        def run_on_cpu(self, cpu: int, fn: Any) -> Any:
            prev, self.running = self.running, cpu
            try:
                return fn()
            finally:
                self.running = prev

        def wrmsr(self, cpu: int, msr: int, value: int) -> None:
            assert self.running == cpu, "wrmsr targets the CPU it runs on"
            super().wrmsr(cpu, msr, value)

    w = World(1)
    w.run_until(1_000_000)
    vm = PinnedVm(w, ncpus=3)
    for cpu in range(3):
        vm.publish(cpu, STABLE)
    k = Kernel(vm, "gtod", name="L1")
    k.boot()
    assert [c for c, _m, _v in vm.msrs] == [0, 1, 2, 0]  # the last: the wall clock on CPU 0

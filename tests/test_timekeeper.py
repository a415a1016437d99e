"""Timekeeper: reads against an independent computation from the simulated counters, clock
relations, monotonicity, interleaved writers (readers retry), cycle stamps, notifier counts."""

from __future__ import annotations

from typing import Any

import kvmclock
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from kvmclock.errors import LivelockDetected
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.timekeeping import NOTIFY_DONE, TK_OFFS_BOOT, TK_OFFS_REAL, VCLOCK_PVCLOCK, VCLOCK_TSC
from reference import kernel_math as km
from test_clocksource import booted_guest, expected_mult_shift

U64 = (1 << 64) - 1
NSEC = 10**9


def boot_host(
    seed: int = 0,
    khz: int = 2_000_000,
    ppm: Any = 0,
    boot_at: int = 0,
    profile: str = "gtod",
    **kw: Any,
) -> tuple[World, PhysicalMachine, Kernel]:
    w = World(seed)
    m = PhysicalMachine(w, 2, tsc_khz=khz, drift_ppm=ppm)
    w.run_until(boot_at)
    k = Kernel(m, profile, **kw)
    k.boot()
    return w, m, k


def independent_mono(m: PhysicalMachine, boot_at: int, t: int) -> int:
    """mono(t) = ((TSC(t) - TSC(boot)) * mult) >> shift: whole-interval accumulation, second
    carries and the jiffies->tsc shift conversion at boot all preserve this quantity exactly."""
    mult, shift = expected_mult_shift(U64, 1000, m.cpus[0].tsc_khz)
    cpu = m.cpus[0]
    return ((cpu.tsc_at(t) - cpu.tsc_at(boot_at)) * mult) >> shift


@settings(max_examples=25)
@example(khz=2_000_000, ppm=50, boot_at=123, offsets=[1, NSEC, 3 * NSEC])
@example(khz=3_333_333, ppm=-77, boot_at=10**9, offsets=[2_999_999_999, 7])
@given(
    khz=st.integers(min_value=500_000, max_value=5_000_000),
    ppm=st.integers(min_value=-100, max_value=100),
    boot_at=st.integers(min_value=0, max_value=10**9),
    offsets=st.lists(st.integers(min_value=0, max_value=3 * NSEC), min_size=1, max_size=20),
)
def test_reads_match_independent_computation(
    khz: int, ppm: int, boot_at: int, offsets: list[int]
) -> None:
    w, m, k = boot_host(khz=khz, ppm=ppm, boot_at=boot_at)
    tk = k.timekeeper
    real0 = tk.offs_real
    assert real0 == (m.rtc_epoch_ns + boot_at) // NSEC * NSEC  # CMOS second resolution
    for off in sorted(offsets):
        w.run_until(boot_at + off)
        mono = independent_mono(m, boot_at, w.now_ns)
        assert tk.ktime_get_ns() == mono
        assert tk.ktime_get_raw_ns() == mono  # NTP-free: raw == mono exactly
        assert tk.ktime_get_boot_ns() == mono
        assert tk.ktime_get_real_ns() == mono + real0


def test_reads_are_monotonic_per_clock_across_cpus() -> None:
    w = World(11)
    m = PhysicalMachine(w, 3, tsc_skew_cycles=5_000)  # CPUs a little apart
    k = Kernel(m, "series")
    k.boot()
    tk = k.timekeeper
    last = {"mono": -1, "raw": -1, "boot": -1, "real": -1}
    rng = w.rng
    for _ in range(400):
        w.run_for(rng.randrange(0, 3_000_000))
        cpu = rng.randrange(3)
        vals = k.run_on_cpu(
            cpu,
            lambda: {
                "mono": tk.ktime_get_ns(),
                "raw": tk.ktime_get_raw_ns(),
                "boot": tk.ktime_get_boot_ns(),
                "real": tk.ktime_get_real_ns(),
            },
        )
        for name, v in vals.items():
            assert v >= last[name], (name, cpu)
            last[name] = v


def test_settimeofday_and_sleeptime_relations() -> None:
    w, m, k = boot_host()
    tk = k.timekeeper
    w.run_until(1_234_567_890)
    mono_before = tk.ktime_get_ns()
    tk.do_settimeofday64(2_000_000_000 * NSEC + 5)
    assert tk.ktime_get_real_ns() == 2_000_000_000 * NSEC + 5
    assert tk.ktime_get_ns() == mono_before
    assert tk.offs_real == tk.ktime_get_real_ns() - tk.ktime_get_ns()
    tk.inject_sleeptime(7 * NSEC + 3)
    assert tk.offs_boot == 7 * NSEC + 3
    assert tk.ktime_get_ns() == mono_before  # monotonic does not count suspend
    assert tk.ktime_get_boot_ns() == mono_before + 7 * NSEC + 3
    assert tk.ktime_get_real_ns() == 2_000_000_007 * NSEC + 8
    w.run_until(3 * NSEC)
    assert tk.ktime_get_boot_ns() - tk.ktime_get_ns() == 7 * NSEC + 3
    assert tk.ktime_get_ns() == independent_mono(m, 0, w.now_ns)
    assert tk.ktime_get_raw_ns() == tk.ktime_get_ns()
    with pytest.raises(ValueError, match="real_ns"):
        tk.do_settimeofday64(-1)
    with pytest.raises(ValueError, match="delta_ns"):
        tk.inject_sleeptime(-1)
    with pytest.raises(ValueError, match="offs"):
        tk.ktime_get_with_offset(7)


def test_interleaved_writer_makes_reader_retry() -> None:
    w, m, k = boot_host()
    tk = k.timekeeper
    w.run_until(100_000_000 + 1_000_000)  # 1 ms after a tick
    seq0 = tk.seq.sequence
    fired: list[int] = []

    def writer() -> None:  # a tick on another CPU while the reader is inside its section
        if not fired:
            fired.append(tk.seq.sequence)
            w.run_until(w.now_ns + 4_000_000)

    stale = independent_mono(m, 0, w.now_ns)
    tk.interleave = writer
    ns = tk.ktime_get_ns()
    tk.interleave = None
    assert k.counters["timekeeper.read_retries"] == 1
    assert tk.seq.sequence == seq0 + 2  # exactly one write section happened
    assert ns == independent_mono(m, 0, w.now_ns) != stale  # the retried read, not a torn one


def test_with_cycles_stamp_is_the_tsc_read_for_tsc() -> None:
    w, m, k = boot_host(profile="series")
    tk = k.timekeeper
    assert tk.get_tk_mono_clock_mode() == VCLOCK_TSC
    w.run_until(777_777_777)
    ns, stamp = tk.ktime_get_boot_ns_with_cycles()
    assert stamp == m.cpus[0].tsc_at(w.now_ns)
    assert ns == independent_mono(m, 0, w.now_ns)
    rns, rstamp = tk.ktime_get_real_ns_with_cycles()
    assert rstamp == stamp and rns == ns + tk.offs_real
    assert tk.ktime_get_with_offset(TK_OFFS_BOOT) == (ns, stamp)
    assert tk.ktime_get_with_offset(TK_OFFS_REAL) == (rns, rstamp)
    assert tk.get_tk_seq() is tk.seq


def test_with_cycles_stamp_is_the_tsc_read_for_kvmclock() -> None:
    w, vm, k = booted_guest("series")
    tk = k.timekeeper
    assert tk.get_tk_mono_clock_mode() == VCLOCK_PVCLOCK
    w.run_until(55_555_555)
    for cpu in (0, 1):
        ns, stamp = k.run_on_cpu(cpu, tk.ktime_get_boot_ns_with_cycles)
        assert stamp == vm.cpus[cpu].read_tsc()
        # kvm-clock mult == 1 << shift: timekeeper ns = pvclock ns - pvclock ns at boot
        rec = vm.record(cpu)
        assert ns == km.read_cycles(rec, stamp) - 1_000_000


def test_gtod_chain_called_on_every_update_series_never() -> None:
    for profile in ("gtod", "series"):
        w, _m, k = boot_host(profile=profile)
        got: list[Any] = []
        k.pvclock_gtod_chain.register(lambda a, d, got=got: got.append(d) or NOTIFY_DONE)
        w.run_until(NSEC)
        updates = k.counters["timekeeping_updates"]
        assert k.counters["ticks"] == 250
        if profile == "gtod":
            assert k.counters["notifier_calls.pvclock_gtod"] == updates
            assert len(got) == 250 and all(d is k.timekeeper for d in got)
        else:
            assert k.counters["notifier_calls.pvclock_gtod"] == 0 and got == []
            assert (
                k.counters["notifier_calls.clocksource_changes"] == 2
            )  # init + boot switch, no ticks


def test_reading_inside_write_section_is_detected() -> None:
    w, _m, k = boot_host(profile="gtod")
    k.pvclock_gtod_chain.register(lambda a, d: k.timekeeper.ktime_get_ns())
    with pytest.raises(LivelockDetected, match="write section"):
        w.run_until(10_000_000)
    assert k.timekeeper.seq.sequence % 2 == 0  # the write section was closed despite the error
    assert not k.timekeeper.in_write_section


def test_interval_setup_for_hz() -> None:
    for hz in (100, 250, 1000):
        w, m, k = boot_host(hz=hz)
        tk = k.timekeeper
        cs = tk.clock
        ntpinterval = (NSEC // hz) << cs.shift
        interval = max(1, (ntpinterval + cs.mult // 2) // cs.mult)
        assert tk.cycle_interval == interval
        assert tk.xtime_interval == tk.raw_interval == interval * cs.mult
        assert tk.xtime_remainder == ntpinterval - interval * cs.mult
        w.run_until(NSEC // 2)
        assert k.counters["ticks"] == hz // 2
        # after any tick, at most one interval (plus the remainder of the last tick) is pending
        assert (m.cpus[0].tsc_at(w.now_ns) - tk.tkr_mono.cycle_last) < tk.cycle_interval


def test_skipped_ticks_use_logarithmic_accumulation() -> None:
    w, m, k = boot_host()
    tk = k.timekeeper
    assert k.tick_timer is not None
    k.tick_timer.cancel()  # NOHZ-like: no tick for 10 s
    w.run_until(10 * NSEC + 1_500_000)
    updates = k.counters["timekeeping_updates"]
    tk.update_wall_time()
    assert k.counters["timekeeping_updates"] == updates + 1
    assert tk.ktime_get_ns() == independent_mono(m, 0, w.now_ns)
    assert tk.xtime_sec - (m.rtc_epoch_ns // NSEC) == 10
    pending = m.cpus[0].tsc_at(w.now_ns) - tk.tkr_mono.cycle_last
    assert 0 <= pending < tk.cycle_interval


def test_stable_bit_constant_is_native() -> None:
    assert kvmclock.PVCLOCK_TSC_STABLE_BIT == 1


def test_ktime_get_ns_with_cycles_is_one_read() -> None:
    """(CLOCK_MONOTONIC, the clocksource reading it used): the TSC value on a host, the
    pvclock ns on a kvm-clock guest."""
    w, m, k = boot_host()
    w.run_until(1_234_567_891)
    ns, cycles = k.timekeeper.ktime_get_ns_with_cycles()
    assert cycles == m.cpus[0].tsc_at(w.now_ns)
    assert ns == independent_mono(m, 0, w.now_ns)
    gw, vm, g = booted_guest("upstream")
    gw.run_until(55_555_555)
    for cpu in (0, 1):
        ns, cycles = g.run_on_cpu(cpu, g.timekeeper.ktime_get_ns_with_cycles)
        assert cycles == km.read_cycles(vm.record(cpu), vm.cpus[cpu].read_tsc())
        assert ns == cycles - 1_000_000  # kvm-clock mult == 1 << shift, booted at 1 ms


@pytest.mark.parametrize("ahead", [0, 1, 10 * NSEC])
def test_update_wall_time_with_the_callers_read(ahead: int) -> None:
    """``update_wall_time(cycles)`` with a read of this instant leaves the timekeeper as
    ``update_wall_time()`` does, whether a tick's worth of cycles is due or not."""
    snaps = []
    for given_read in (False, True):
        w, m, k = boot_host()
        assert k.tick_timer is not None
        k.tick_timer.cancel()
        w.run_until(w.now_ns + ahead)
        tk = k.timekeeper
        updates = k.counters["timekeeping_updates"]
        if given_read:
            tk.update_wall_time(m.cpus[0].tsc_at(w.now_ns))
        else:
            tk.update_wall_time()
        fields = {
            key: {f: x for f, x in vars(v).items() if f != "clock"} if key.startswith("tkr") else v
            for key, v in tk.snapshot().items()
        }
        snaps.append((fields, k.counters["timekeeping_updates"] - updates))
    assert snaps[0] == snaps[1]
    assert snaps[0][1] == (1 if ahead >= NSEC else 0)


def test_read_pure_clocksources() -> None:
    """Which reads a caller may reuse at one instant: the TSC, a platform counter and
    kvm-clock without patch 10 (whose reads may call the change chain); not jiffies."""
    w = World(0)
    m = PhysicalMachine(w, 2, tsc_khz=2_000_000, hpet=True)
    k = Kernel(m, "upstream")
    k.boot()
    assert k.clocksources["tsc"].read_pure
    assert k.clocksources["hpet"].read_pure
    assert not k.clocksources["jiffies"].read_pure
    for profile, pure in (("upstream", True), ("series", False)):
        _gw, _vm, g = booted_guest(profile)
        assert g.clocksources["kvm-clock"].read_pure is pure

"""NO_HZ idle (``Kernel(nohz=True)``, scenario key ``nohz``): the tick stops while the CPUs
idle; jiffies and the timekeeper are brought up to date when kernel code runs again
(``tick_nohz_irq_enter`` -> ``tick_do_update_jiffies64``) and at the latest after the
clocksource's ``max_idle_ns`` (``timekeeping_max_deferment``).

Expected values come from the kernel's rules computed here (tests/reference for the
clocksource arithmetic), and the clock values a NO_HZ run reads at its sample points are
compared with those of the periodic tick over a window where both are run."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kvmclock.errors import ScenarioFileError
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.machine.physical import DEFAULT_FEATURES
from kvmclock.scenario import load_builtin, loads
from kvmclock.scenario.engine import run_plan
from kvmclock.scenario.loader import resolve
from kvmclock.sim import metrics, run_scenario
from kvmclock.sim.scenarios import Sim, _profile_for
from kvmclock.timekeeping.timekeeper import Timekeeper
from reference import kernel_math as ref

S = 1_000_000_000
MS = 1_000_000
KHZ = 2_593_992
PROFILES = ("gtod", "series", "upstream")


def tick_nsec(hz: int) -> int:
    """TICK_NSEC (include/linux/jiffies.h), written out here."""
    return (S + hz // 2) // hz


def tsc_max_idle_ns(khz: int) -> int:
    """``max_idle_ns`` of the tsc clocksource registered at ``khz`` (kernel/time/clocksource.c
    ``__clocksource_update_freq_scale`` with scale 1000, then ``clocks_calc_max_nsecs`` with
    its 50% margin), computed with the reference arithmetic."""
    mask = (1 << 64) - 1
    sec = mask // khz // 1000
    sec = 600 if sec > 600 else max(sec, 1)
    mult, shift = ref.clocks_calc_mult_shift(khz, S // 1000, sec * 1000)
    maxadj = mult * 11 // 100
    max_cycles = min(mask // (mult + maxadj), mask)
    return ref.clocksource_cyc2ns(max_cycles, mult - maxadj, shift) >> 1


# --------------------------------------------------------------------------- the unit rules
def nohz_host(profile: str = "upstream", *, hz: int = 250, hpet: bool = False) -> Kernel:
    """A booted 2-CPU host, NO_HZ, tsc=reliable, no platform counter unless ``hpet`` (so no
    clocksource watchdog runs: nothing wakes it but its own deferment)."""
    m = PhysicalMachine(World(0), 2, tsc_khz=KHZ, hpet=hpet, acpi_pm=False,
                        features=DEFAULT_FEATURES | {"tsc_reliable"})
    k = Kernel(m, profile, hz=hz, nohz=True)
    k.boot()
    return k


@contextmanager
def updates_of(tk: Timekeeper) -> Iterator[list[int]]:
    """True times of every ``timekeeping_update`` of ``tk`` while the block runs."""
    times: list[int] = []
    orig = tk.timekeeping_update

    def spy(action: int) -> None:
        times.append(tk.kernel.world.now_ns)
        orig(action)

    tk.timekeeping_update = spy  # type: ignore[method-assign]
    try:
        yield times
    finally:
        del tk.timekeeping_update


def test_nohz_is_a_bool() -> None:
    m = PhysicalMachine(World(0), 1, tsc_khz=KHZ)
    with pytest.raises(TypeError, match="nohz must be a bool"):
        Kernel(m, "upstream", nohz=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("hz", [100, 250, 300, 1000, 1024])
def test_jiffies_update_at_the_tick_period_boundary(hz: int) -> None:
    """``tick_do_update_jiffies64``: nothing one ns before a whole tick period of
    CLOCK_MONOTONIC since ``last_jiffies_update``; one tick at exactly one period; at k
    periods (and k periods + period - 1 ns) k ticks at once, and one update_wall_time."""
    k = nohz_host(hz=hz)
    period = tick_nsec(hz)
    tk = k.timekeeper
    for elapsed, ticks in [(period - 1, 0), (period, 1), (2 * period - 1, 1), (2 * period, 2),
                           (1000 * period + period - 1, 1000)]:
        mono = tk.ktime_get_ns()
        k.last_jiffies_update_ns = mono - elapsed
        before, j0 = k.last_jiffies_update_ns, k.jiffies_64
        updates = k.counters["nohz.jiffies_updates"]
        did = k.tick_do_update_jiffies64()
        assert did is (ticks > 0)
        assert k.jiffies_64 - j0 == ticks
        assert k.last_jiffies_update_ns == before + ticks * period
        assert k.counters["nohz.jiffies_updates"] - updates == (1 if ticks else 0)


@pytest.mark.parametrize("hz", [250, 300])
def test_max_deferment_is_max_idle_ns_at_least_a_tick(hz: int) -> None:
    """``timekeeping_max_deferment`` is the clocksource's max_idle_ns; the model never
    defers less than one tick period (TICK_NSEC, an int: 3,333,333 ns at HZ 300)."""
    k = nohz_host(hz=hz)
    assert k.timekeeping_max_deferment() == tsc_max_idle_ns(KHZ)
    k.timekeeper.clock.max_idle_ns = 1
    got = k.timekeeping_max_deferment()
    assert got == tick_nsec(hz) and isinstance(got, int)


def test_idle_host_updates_only_at_the_max_deferment() -> None:
    """An idle NO_HZ host on the TSC with nothing else to do: the timekeeper is updated at
    the tick the CPU programmed at ``last_jiffies_update + max_idle_ns``: the gaps are
    max_idle_ns within one tick period (``last_jiffies_update`` is on the tick grid, at most
    one period before the update); one pvclock_gtod notifier call per update under gtod."""
    k = nohz_host("gtod")
    max_idle = tsc_max_idle_ns(KHZ)
    assert k.timekeeper.clock.name == "tsc" and k.timekeeper.clock.max_idle_ns == max_idle
    assert not k.watchdog.running
    period = tick_nsec(k.hz)
    calls0 = k.counters["notifier_calls.pvclock_gtod"]
    with updates_of(k.timekeeper) as times:
        k.world.run_until(10 * max_idle + 5 * S)
    assert len(times) == 10
    gaps = [b - a for a, b in zip([0, *times], times, strict=False)]
    for gap in gaps:
        assert max_idle - period < gap <= max_idle + 1_000
    assert k.counters["notifier_calls.pvclock_gtod"] - calls0 == 10
    assert k.counters["ticks"] == 0 and k.counters["nohz.deferment_ticks"] == 10


def test_one_tick_programmed_at_a_time() -> None:
    """However often an idle NO_HZ host wakes, one deferment tick is pending (the CPU's tick
    device holds one expiry); after 200 wake-ups 5 ms apart the host fires exactly the
    deferment ticks of the time it idled, each max_idle_ns after the last update."""
    k = nohz_host()
    max_idle = k.timekeeping_max_deferment()
    world = k.world
    fired0 = k.counters["nohz.deferment_ticks"]
    for i in range(200):
        world.run_until(world.now_ns + 5 * MS)
        k.run_on_cpu(i % 2, lambda: None)
        assert world.pending() == 1
    # the last update was at the last wake-up (1 s in); idle from there for 3 max_idle_ns
    last, events0 = world.now_ns, world.events_processed
    world.run_until(last + 3 * max_idle + S)
    assert k.counters["nohz.deferment_ticks"] - fired0 == 3
    # nothing else but the tick programmed before the wake-ups: it expires early once, finds
    # the timekeeper updated since and reprograms itself (the model's lazy re-arm)
    assert world.events_processed - events0 == 3 + 1
    assert world.pending() == 1


def test_monotonic_stays_exact_over_a_day_without_overflow_safety() -> None:
    """4.13's conversion wraps once a delta exceeds about max_cycles; the deferment keeps
    every delta below max_idle_ns, so after an idle day CLOCK_MONOTONIC equals the
    clocksource's conversion of the whole TSC count (computed here from the cycle count and
    the tsc mult/shift, independently of the timekeeper's accumulation)."""
    k = nohz_host("gtod")
    assert not k.cfg.tk_delta_overflow_safe
    tsc = k.timekeeper.clock
    c0 = k.machine.cpus[0].read_tsc()
    m0 = k.timekeeper.ktime_get_ns()
    k.world.run_until(86_400 * S)
    c1 = k.machine.cpus[0].read_tsc()
    m1 = k.timekeeper.ktime_get_ns()
    # the timekeeper's monotonic ns are the sum of its accumulated intervals; the exact
    # conversion of the whole count may differ from it only by the shift truncations of the
    # two reads (less than 2 ns)
    exact = (c1 - c0) * tsc.mult >> tsc.shift
    assert abs((m1 - m0) - exact) <= 2
    # and that is a day, within the rounding of the tsc mult (about 32 ppb at this kHz)
    assert abs((m1 - m0) - 86_400 * S) < 86_400 * S // 10_000_000


def test_a_smaller_max_idle_after_a_clocksource_change_takes_effect_at_once() -> None:
    """The tick programmed for tsc's max_idle_ns (about 440 s) is moved earlier when the
    timekeeper switches to hpet (max_idle_ns about 133 s; its 32-bit counter wraps every
    300 s): every later gap is at most hpet's max_idle_ns, so no hpet delta wraps."""
    k = nohz_host(hpet=True)
    hpet = k.clocksources["hpet"]
    assert hpet.max_idle_ns < tsc_max_idle_ns(KHZ)
    k.world.run_until(10 * S)
    k.run_on_cpu(0, lambda: k.mark_tsc_unstable("a test"))
    k.world.run_until(11 * S)  # the watchdog work reselects
    assert k.timekeeper.clock is hpet
    with updates_of(k.timekeeper) as times:
        k.world.run_until(5_000 * S)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and max(gaps) <= hpet.max_idle_ns + 1_000


# --------------------------------------------------------------------------- equivalence
def _plan(name_or_text: str, profile: str, params: dict[str, Any], nohz: bool) -> Any:
    sf = load_builtin(name_or_text) if "\n" not in name_or_text else loads(name_or_text, "t")
    cfg = _profile_for(sf, profile, None)
    plan = resolve(sf, {**{k: p.default for k, p in sf.params.items()}, **params}, strict=False)
    plan.hosts = [dataclasses.replace(h, nohz=nohz) for h in plan.hosts]
    plan.vms = [dataclasses.replace(v, nohz=nohz) for v in plan.vms]
    return plan, cfg


def sample_values(
    name_or_text: str, profile: str, params: dict[str, Any], *, nohz: bool
) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """Every kvm-clock read the Recorder makes (true time, level, vCPU, returned ns, raw ns,
    flags) and, at each sample time, every kernel's CLOCK_MONOTONIC, REALTIME and BOOTTIME
    read on its CPU 0; with the tick mode of every kernel set to ``nohz``."""
    plan, cfg = _plan(name_or_text, profile, params, nohz)
    reads: list[tuple[Any, ...]] = []
    orig = metrics.LevelStats.record_read

    class Observed(Sim):
        def start_sampling(self) -> None:
            super().start_sampling()

            def observe() -> None:
                for k in self.kernels:
                    if k.machine_running:
                        tk = k.timekeeper
                        vals = k.run_on_cpu(0, lambda tk=tk: (tk.ktime_get_ns(),
                                                              tk.ktime_get_real_ns(),
                                                              tk.ktime_get_boot_ns()))
                        reads.append((self.world.now_ns, k.name, "clocks", *vals))

            self.world.every(self.sample_ms * MS, observe)

    def spy(self: metrics.LevelStats, t: int, cpu: int, ns: int, raw: int, flags: int,
            pair: tuple[int, int] = (0, 0)) -> None:
        reads.append((t, self.level, cpu, ns, raw, flags))
        orig(self, t, cpu, ns, raw, flags, pair)

    metrics.LevelStats.record_read = spy  # type: ignore[method-assign]
    try:
        run = run_plan(plan, cfg, 0, trace=False, sim_factory=Observed)
    finally:
        metrics.LevelStats.record_read = orig  # type: ignore[method-assign]
    return reads, run


@pytest.mark.parametrize("profile", PROFILES)
def test_nested_reads_the_same_values_under_nohz(profile: str) -> None:
    """The built-in ``nested`` (L0's TSC jumps, the watchdog switches L0 to hpet, L0's
    masterclock goes off) for 20 s: every guest kvm-clock read at every sample and every
    kernel's clocks read the same under NO_HZ as under the periodic tick, though NO_HZ
    updates the timekeepers far less often."""
    params = {"duration_s": 20, "sample_ms": 50}
    periodic, run_p = sample_values("nested", profile, params, nohz=False)
    nohz, run_n = sample_values("nested", profile, params, nohz=True)
    assert len(periodic) == len(nohz) > 1000
    assert periodic == nohz
    for lp, ln in zip(run_p["levels"], run_n["levels"], strict=True):
        assert ln["timekeeping_updates"] < lp["timekeeping_updates"] // 2
        assert ln["tsc_unstable"] == lp["tsc_unstable"] and ln["clocksource"] == lp["clocksource"]


IDLE_DAY = """
name = "idle-day"
description = "an idle host and nested guests without clocksource watchdogs"

[params]
duration_s = { default = 2100, type = "seconds", exclusive_min = true }

[run]
duration_s = "=duration_s"
hz = 15
sample_ms = 1000000

[[host]]
name = "L0"
cpus = 2
tsc_khz = 2593992
hpet = false
acpi_pm = false
tsc_reliable = true

[[vm]]
name = "L1"
host = "L0"
vcpus = 2
kvm = true
tsc_reliable = true

[[vm]]
name = "L2"
host = "L1"
vcpus = 1
tsc_reliable = true
"""


@pytest.mark.parametrize("profile", PROFILES)
def test_a_nohz_day_reads_what_the_periodic_tick_reads(profile: str) -> None:
    """A day under NO_HZ (samples every 1000 s: longer than every clocksource's
    max_idle_ns, so the kernels sleep through deferment ticks and KVM's 300 s clock sync
    between them) gives, at the sample points of the first 2100 s, the values the periodic
    tick gives over those 2100 s: exactly where the pvclock records hold a masterclock
    (series: L0's and L1's KVM both run one).  Under gtod and upstream L1's KVM has no
    masterclock for L2 (its host clocksource is kvm-clock, and only the series counts a
    pvclock host clocksource as TSC-based): KVM rewrites L2's record at the vCPU's next
    entry after the 300 s clock sync, which the periodic tick makes within a tick and NO_HZ
    only at the next wake-up, so L2 reads the same time through another anchor: equal
    within the pvclock rounding (1 ns); L0's and L1's values stay exact."""
    periodic, _ = sample_values(IDLE_DAY, profile, {"duration_s": 2100}, nohz=False)
    day, run = sample_values(IDLE_DAY, profile, {"duration_s": 86_400}, nohz=True)
    assert run["end_ns"] == 86_400 * S and run["stop_reason"] is None
    window = [r for r in day if r[0] <= 2100 * S]
    assert len(window) == len(periodic) == 2 * (3 + 3)  # 2 samples: 3 vCPU reads, 3 kernels
    if profile == "series":
        assert window == periodic
    else:
        for p, n in zip(periodic, window, strict=True):
            assert p[:3] == n[:3]
            if p[1] in (2, "L2"):
                assert all(abs(a - b) <= 1 for a, b in zip(p[3:], n[3:], strict=True))
            else:
                assert p == n
    assert len(day) == 86 * 6
    by_level = {lv["name"]: lv for lv in run["levels"]}
    # the guests woke for 86 samples and their deferment ticks, never at the tick rate
    assert by_level["L2"]["timekeeping_updates"] < 400


# --------------------------------------------------------------------------- per kernel
def test_nohz_is_per_kernel_in_a_scenario() -> None:
    text = IDLE_DAY.replace('name = "L2"\nhost = "L1"', 'name = "L2"\nhost = "L1"\nnohz = true')
    run = run_scenario(loads(text, "t"), "upstream", 0, duration_s=60)
    lv = {x["name"]: x for x in run["levels"]}
    # L0 and L1 tick at 10 Hz; L2 updates only when it wakes (no samples in 60 s, no
    # watchdog: only its boot-time updates)
    assert lv["L0"]["timekeeping_updates"] >= 590 and lv["L1"]["timekeeping_updates"] >= 590
    assert lv["L2"]["timekeeping_updates"] < 10


def test_nohz_key_must_be_a_bool() -> None:
    text = IDLE_DAY.replace("tsc_reliable = true\n", "tsc_reliable = true\nnohz = 1\n", 1)
    with pytest.raises(ScenarioFileError, match=r"host\[0\]\.nohz: 1 is not allowed"):
        loads(text, "t")


def test_builtin_nested_takes_nohz_as_a_parameter() -> None:
    run = run_scenario("nested", "series", 0, duration_s=2, nohz=True)
    assert run["params"]["nohz"] is True
    periodic = run_scenario("nested", "series", 0, duration_s=2)
    assert periodic["params"]["nohz"] is False
    assert [lv["guest_backwards"] for lv in run["levels"]] == [
        lv["guest_backwards"] for lv in periodic["levels"]
    ]
    assert sum(lv["timekeeping_updates"] for lv in run["levels"]) < sum(
        lv["timekeeping_updates"] for lv in periodic["levels"]
    )


# --------------------------------------------------------------------------- stops
def _host_and_guest(host_nohz: bool) -> tuple[Kernel, Kernel, Any]:
    from kvmclock.vmm import Vmm

    m = PhysicalMachine(World(0), 2, tsc_khz=KHZ, features=DEFAULT_FEATURES | {"tsc_reliable"},
                        hpet=False, acpi_pm=False)
    host = Kernel(m, "series", name="L0", nohz=host_nohz)
    host.boot()
    host.load_kvm()
    vmm = Vmm(host, name="vm", vcpus=2, features={"kvmclock", "kvmclock_stable_bit",
                                                   "constant_tsc", "tsc_reliable"})
    guest = Kernel(vmm.machine, "series", name="L1", nohz=True)
    vmm.guest = guest
    guest.boot()
    return host, guest, vmm


@pytest.mark.parametrize("host_nohz", [False, True])
def test_paused_nohz_guest_takes_its_expired_tick_at_resume(host_nohz: bool) -> None:
    """A NO_HZ guest paused longer than kvm-clock's max_idle_ns (about 881 s): its
    deferment tick expires while the VM does not run (counted, nothing updated), and runs
    at the first entry after the resume (``run_overdue_tick``), once; the guest's
    CLOCK_MONOTONIC then reads the kvm-clock conversion of the whole stop."""
    host, guest, vmm = _host_and_guest(host_nohz)
    kc = guest.clocksources["kvm-clock"]
    assert guest.timekeeper.clock is kc and kc.max_idle_ns > 800 * S
    world = host.world
    world.run_until(10 * S)
    vmm.pause()
    with updates_of(guest.timekeeper) as during:
        world.run_until(10 * S + 2 * kc.max_idle_ns)
    assert during == []
    assert guest.counters["ticks_not_running"] == 1 and guest.tick_overdue
    with updates_of(guest.timekeeper) as at_resume:
        vmm.resume()
    assert at_resume == [world.now_ns]
    assert guest.counters["ticks_overdue"] == 1 and not guest.tick_overdue
    # a second long stop: one more expired deferment, one more overdue tick at its resume
    world.run_until(world.now_ns + 10 * S)
    vmm.pause()
    world.run_until(world.now_ns + 2 * kc.max_idle_ns)
    vmm.resume()
    assert guest.counters["ticks_not_running"] == 2 and guest.counters["ticks_overdue"] == 2
    vmm.pause()
    vmm.resume()  # a short stop: nothing expired
    assert guest.counters["ticks_not_running"] == 2 and guest.counters["ticks_overdue"] == 2
    mono = guest.run_on_cpu(0, guest.timekeeper.ktime_get_ns)
    kvmclock_ns = guest.run_on_cpu(0, lambda: kc.read()[0])
    # CLOCK_MONOTONIC = kvm-clock ns (mult 2**shift: 1 ns per ns) minus the boot offset
    boot_offset = guest.timekeeper.tkr_mono.base - 0  # base of the last update
    assert mono <= kvmclock_ns and boot_offset <= mono


def test_nohz_host_jiffies_do_not_count_a_suspend() -> None:
    """A NO_HZ host suspended 1000 s: CLOCK_MONOTONIC stops in suspend, and NO_HZ counts
    jiffies on CLOCK_MONOTONIC (``tick_do_update_jiffies64(ktime_get())``), so jiffies after
    the resume cover only the time the host ran: the jiffies since boot are the whole tick
    periods of CLOCK_MONOTONIC since boot."""
    m = PhysicalMachine(World(0), 2, tsc_khz=KHZ, features=DEFAULT_FEATURES | {"tsc_reliable"},
                        hpet=False, acpi_pm=False, rtc_epoch_ns=1_700_000_000 * S)
    k = Kernel(m, "upstream", nohz=True)
    k.boot()
    j0, m0 = k.jiffies_64, k.last_jiffies_update_ns
    k.world.run_until(20 * S)
    k.pm_suspend()
    k.world.run_until(1020 * S)
    k.pm_resume()
    k.world.run_until(1030 * S)
    k.run_on_cpu(0, lambda: None)  # wake: bring jiffies up to date
    mono = k.timekeeper.ktime_get_ns()
    period = tick_nsec(k.hz)
    assert 29 * S < mono - m0 < 31 * S  # 30 s of running, the sleep not counted
    assert k.jiffies_64 - j0 == (mono - m0) // period
    assert k.timekeeper.last_sleep_ns is not None and k.timekeeper.last_sleep_ns >= 999 * S


def test_tick_in_read_section_needs_the_hosts_periodic_tick() -> None:
    import kvmclock.scenario

    path = Path(kvmclock.scenario.__file__).parent / "builtin" / "patch09-hang.toml"
    head = '[[host]]\nname = "L0"\n'
    text = path.read_text().replace(head, head + "nohz = true\n")
    assert "nohz = true" in text
    with pytest.raises(ScenarioFileError, match=r"timeline\[\d+\]\.host: host 'L0' has nohz"):
        loads(text, "t")

"""No input makes a run hang (issue 14): a TSC that goes back to near 0, the loops the model
bounds where the kernel does not, and the periodic actions refused before a run.

Every test here runs under the per-test bound of tests/conftest.py (``HANG_BOUND_S``): a
hang fails the test instead of blocking the suite.

The historical case: a host whose TSCs were written back to near 0 while a guest's pvclock
record stayed stable (stable bit set, masterclock on) makes the guest's kvm-clock read
``tsc - tsc_timestamp`` as a u64 close to 2**64, so its next tick's ``update_wall_time``
sees an offset of about 2**63 ns; the kernel's ``logarithmic_accumulation`` takes that in
chunks of ``cycle_interval << maxshift`` (maxshift 9 at HZ 250), about 3.5e9 of them.
The model must take them at once.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmclock import sim
from kvmclock.errors import LivelockDetected, ModelLimitExceeded, ScenarioFileError
from kvmclock.kernel import Kernel
from kvmclock.kvm.x86 import MasterclockLivelock
from kvmclock.machine import PhysicalMachine, World
from kvmclock.scenario import loads
from kvmclock.scenario.loader import MAX_REPEATS
from kvmclock.timekeeping import timekeeper as tk_mod
from kvmclock.timekeeping.clocksource import CLOCK_SOURCE_IS_CONTINUOUS, Clocksource
from kvmclock.timekeeping.timekeeper import MAX_FORWARD_CHUNKS

PROFILES = ("gtod", "series", "upstream")
KHZ = 2_593_992
SEED = 0
S = 1_000_000_000
HZ = 250
DURATION_S = 3
U64 = (1 << 64) - 1


def scenario(timeline: str, *, duration_s: int = DURATION_S) -> str:
    """L0 (2 CPUs) runs L1 (KVM, 2 vCPUs) which runs L2 (2 vCPUs), both on kvm-clock."""
    return f"""
name = "no-hang"
[run]
duration_s = {duration_s}
hz = {HZ}
[[host]]
name = "L0"
cpus = 2
tsc_khz = {KHZ}
[[vm]]
name = "L1"
host = "L0"
vcpus = 2
kvm = true
[[vm]]
name = "L2"
host = "L1"
vcpus = 2
{timeline}
"""


def host_tsc_at(t_ns: int) -> int:
    """L0's CPU 0 TSC at true time ``t_ns`` for seed SEED: the machine the run builds first
    (``PhysicalMachine`` with the run's arguments on a fresh world of that seed), so a jump
    of ``-host_tsc_at(t) + small`` takes it to ``small``."""
    m = PhysicalMachine(World(SEED), 2, tsc_khz=KHZ)
    return m.cpus[0].tsc_at(t_ns)


def tsc_jump(at_s: float, cycles: int, cpus: str = '"all"') -> str:
    return (f'[[timeline]]\nat_s = {at_s}\naction = "tsc_jump"\nhost = "L0"\n'
            f"cpus = {cpus}\ncycles = {cycles}\n")


AT = 1.2  # between two watchdog checks (every 0.5 s): the guests' records are still stable
AT_NS = int(AT * S)
CASES = {
    # (a) every host TSC written back to near 0 while the guests' records stay stable
    "all-tscs-near-0": lambda: tsc_jump(AT, -host_tsc_at(AT_NS) + 1000),
    # (b) one CPU's TSC back to near 0
    "cpu1-tsc-near-0": lambda: tsc_jump(AT, -host_tsc_at(AT_NS) + 1000, "[1]"),
    # a jump so far back that the TSC wraps to near 2**64
    "all-tscs-wrap": lambda: tsc_jump(AT, -host_tsc_at(AT_NS) - 1000),
    # (c) the host suspends and resumes with its TSCs restarted at 0
    "suspend-resume-tsc-0": lambda: (
        '[[timeline]]\nat_s = 1.2\naction = "host_suspend"\nhost = "L0"\nduration_s = 1\n'
        "tsc_after_resume_cycles = 0\n"
    ),
    # the guest writes vCPU 0's TSC to 0 itself, the VMM writes vCPU 1's
    "guest-tsc-write-0": lambda: (
        '[[timeline]]\nat_s = 1.2\naction = "tsc_write"\nvm = "L1"\nvcpu = 0\nvalue = 0\n'
        "host_initiated = false\n"
        '[[timeline]]\nat_s = 1.3\naction = "tsc_write"\nvm = "L1"\nvcpu = 1\nvalue = 0\n'
    ),
}


class _Chunks:
    """Spy on ``update_wall_time``: the most chunks of the top shift the kernel's loop would
    take in one call, per kernel, from the clocksource reading and the timekeeper fields
    (the kernel's own formula, not the model's accumulation)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.most: dict[str, int] = {}
        orig = tk_mod.Timekeeper.update_wall_time
        spy = self

        def update_wall_time(tk: tk_mod.Timekeeper) -> None:
            if not tk.suspended:
                mono = tk.tkr_mono
                cycles = tk.clock.read()[0]
                offset = (cycles - mono.cycle_last) & mono.mask
                if offset & ~(mono.mask >> 1):
                    offset = 0  # clocksource_delta: negative motion
                if offset >= tk.cycle_interval:
                    ci = tk.cycle_interval
                    shift = max(0, offset.bit_length() - ci.bit_length())
                    maxshift = 64 - tk.ntp_tick_length.bit_length() - 1
                    chunks = offset // (ci << min(shift, maxshift))
                    name = tk.kernel.name
                    spy.most[name] = max(spy.most.get(name, 0), chunks)
            orig(tk)

        monkeypatch.setattr(tk_mod.Timekeeper, "update_wall_time", update_wall_time)


def check_sane(run: dict[str, Any], asleep_ns: int = 0) -> None:
    """The run reached its end (or stopped with a reason) with counters a run of that length
    can have: every kernel updated its timekeeper at least once a second and at most once a
    tick plus a few clock changes; every guest was read."""
    assert run["end_ns"] <= run["duration_ns"]
    if run["stopped_early"]:
        assert run["stop_reason"], run
        return
    assert run["end_ns"] == run["duration_ns"]
    ticks = DURATION_S * HZ
    for lvl in run["levels"]:
        assert DURATION_S <= lvl["timekeeping_updates"] <= ticks + 50, lvl
        if lvl["level"] > 0:
            assert lvl["guest_reads"] > 0, lvl
    # sampling (every 10 ms) starts once the second VM exists, at 2 ms: two guests, none
    # while the host sleeps (from AT_NS, ``asleep_ns`` long)
    ms = 1_000_000
    times = [t for t in range(12 * ms, DURATION_S * S + 1, 10 * ms)
             if not AT_NS <= t <= AT_NS + asleep_ns or asleep_ns == 0]
    assert len(run["samples"]) == 2 * len(times)


@pytest.mark.parametrize("safe", [False, True], ids=["overflow-unsafe", "overflow-safe"])
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", list(CASES))
def test_tsc_back_near_zero_finishes(case: str, profile: str, safe: bool) -> None:
    run = sim.run_scenario(loads(scenario(CASES[case]()), case), profile, SEED,
                           switches={"tk_delta_overflow_safe": safe})
    check_sane(run, S if case.startswith("suspend") else 0)


@pytest.mark.parametrize("safe", [False, True], ids=["overflow-unsafe", "overflow-safe"])
@pytest.mark.parametrize("profile", PROFILES)
def test_historical_update_wall_time_3_5e9_chunks(
    profile: str, safe: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported input: the guests' next tick after the host TSCs went back to near 0
    would loop about 3.5e9 times in the kernel's logarithmic accumulation; the run ends
    within the test's bound, every guest took one timekeeping update for it."""
    spy = _Chunks(monkeypatch)
    run = sim.run_scenario(loads(scenario(CASES["all-tscs-near-0"]()), "historical"), profile,
                           SEED, switches={"tk_delta_overflow_safe": safe})
    check_sane(run)
    # the kvm-clock delta is ~2**64 TSC cycles scaled to ns (~7.1e9 s at 2.594 GHz): offset
    # ~2**62.6 ns, in chunks of cycle_interval (4e6 ns) << 9
    for guest in ("L1", "L2"):
        assert spy.most[guest] > 3 * 10**9, spy.most
    assert spy.most["L0"] < 1000


# --------------------------------------------------------------------------------------------
# timekeeping_forward_now (switch tk_delta_overflow_safe): closed form, or a bounded loop
# --------------------------------------------------------------------------------------------
class _Cs(Clocksource):
    """A hand-built clocksource whose counter is ``value``; ``max_cycles`` as given."""

    def __init__(self, k: Kernel, *, mult: int, shift: int, max_cycles: int) -> None:
        super().__init__(k, "hand", 100, U64, flags=CLOCK_SOURCE_IS_CONTINUOUS, mult=mult,
                         shift=shift)
        self.max_cycles = max_cycles
        self.value = 0

    def _read_counter(self) -> tuple[int, int]:
        return self.value, self.value


def _tk(mult: int, shift: int, max_cycles: int) -> tuple[Kernel, _Cs]:
    m = PhysicalMachine(World(0), 1, hpet=False, acpi_pm=False, features={"notsc"})
    k = Kernel(m, "upstream", hz=HZ)
    assert k.cfg.tk_delta_overflow_safe
    cs = _Cs(k, mult=mult, shift=shift, max_cycles=max_cycles)
    k.timekeeper.timekeeping_init(cs, 5 * S)
    return k, cs


def _kernel_forward(x: int, delta: int, mult: int, shift: int, step: int) -> tuple[int, int]:
    """6.10 ``timekeeping_forward_now`` written out: (seconds carried, xtime_nsec)."""
    nsps = 1_000_000_000 << shift
    secs = 0
    while delta > 0:
        incr = min(delta, step)
        x = (x + incr * mult) & U64
        while x >= nsps:
            x -= nsps
            secs += 1
        delta -= incr
    return secs, x


def test_forward_now_many_safe_chunks_at_once() -> None:
    """A 2**62-cycle delta in 10-cycle chunks (the jiffies' max_cycles): ~4.6e17 kernel
    iterations, taken at once with the exact result."""
    mult, shift = 3, 1
    k, cs = _tk(mult, shift, 10)
    tk = k.timekeeper
    x0, sec0 = tk.tkr_mono.xtime_nsec, tk.xtime_sec
    delta = 1 << 62
    cs.value = delta
    tk.change_clocksource(_Cs(k, mult=mult, shift=shift, max_cycles=10))
    total = x0 + delta * mult  # no chunk wraps: 1 s << 1 plus 10 * 3 fits u64
    nsps = 1_000_000_000 << shift
    assert tk.xtime_sec == sec0 + total // nsps


def test_forward_now_wrapping_chunks_follow_the_kernel_loop() -> None:
    """Chunks that can wrap: the model runs the kernel's loop (few chunks) exactly."""
    mult, shift, step = 1 << 31, 32, (1 << 33) + 12345  # step * mult > 2**64: wraps
    k, cs = _tk(mult, shift, step)
    tk = k.timekeeper
    x0, sec0 = tk.tkr_mono.xtime_nsec, tk.xtime_sec
    delta = 7 * step + 99
    cs.value = delta
    tk.change_clocksource(_Cs(k, mult=mult, shift=shift, max_cycles=step))
    secs, x = _kernel_forward(x0, delta, mult, shift, step)
    assert (tk.xtime_sec - sec0, tk.tkr_mono.xtime_nsec) == (secs, x)


def test_forward_now_too_many_wrapping_chunks_is_a_detected_fault() -> None:
    mult, shift, step = 1 << 31, 32, (1 << 33) + 12345
    k, cs = _tk(mult, shift, step)
    tk = k.timekeeper
    before = (tk.tkr_mono.xtime_nsec, tk.xtime_sec, tk.tkr_mono.cycle_last)
    cs.value = step * (MAX_FORWARD_CHUNKS + 1)
    with pytest.raises(ModelLimitExceeded, match=r"timekeeping_forward_now.*at most 65536") as ei:
        tk.change_clocksource(_Cs(k, mult=mult, shift=shift, max_cycles=step))
    assert ei.value.needed == MAX_FORWARD_CHUNKS + 1 and ei.value.limit == MAX_FORWARD_CHUNKS
    assert (tk.tkr_mono.xtime_nsec, tk.xtime_sec, tk.tkr_mono.cycle_last) == before
    assert not tk.in_write_section


def test_model_limit_stops_the_run_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ModelLimitExceeded inside a run stops it like a livelock: stopped_early, a
    stop_reason naming the function and the limit, a key moment."""
    orig = tk_mod.Timekeeper._forward_now

    def forward_now(tk: tk_mod.Timekeeper) -> None:
        w = tk.kernel.world
        if w.now_ns >= S:
            raise ModelLimitExceeded("planted", where="timekeeping_forward_now", limit=7,
                                     needed=8, level=tk.kernel.level, t_ns=w.now_ns)
        orig(tk)

    monkeypatch.setattr(tk_mod.Timekeeper, "_forward_now", forward_now)
    # timekeeping_suspend runs timekeeping_forward_now
    step = '[[timeline]]\nat_s = 1.5\naction = "host_suspend"\nhost = "L0"\nduration_s = 1\n'
    run = sim.run_scenario(loads(scenario(step), "limit"), "upstream", SEED)
    assert run["stopped_early"] and run["end_ns"] == int(1.5 * S)
    assert run["stop_reason"] == (
        "model limit in timekeeping_forward_now at 1.5 s: 8 needed, at most 7"
    )
    assert run["livelock"] is None
    assert any("MODEL LIMIT" in m["text"] for m in run["moments"])


# --------------------------------------------------------------------------------------------
# KVM's read loops: a retry that never ends is a livelock after spin_limit spins
# --------------------------------------------------------------------------------------------
def _host(profile: str) -> Kernel:
    world = World(0)
    k = Kernel(PhysicalMachine(world, 2, tsc_khz=KHZ), profile, name="L0")
    k.boot()
    world.run_until(1_000_000)
    k.load_kvm()
    return k


@pytest.mark.parametrize("fn", ["do_monotonic_boot", "do_kvmclock_base", "do_realtime"])
def test_gtod_copy_read_with_odd_seq_is_a_livelock(fn: str) -> None:
    """A shadow copy left mid-update (odd seq) would make the reader spin forever."""
    k = _host("gtod")
    kvm = k.kvm
    assert kvm is not None
    kvm.spin_limit = 50
    kvm.pvclock_gtod_data.seq |= 1
    with pytest.raises(MasterclockLivelock, match=rf"{fn}.*after 50 spins") as ei:
        k.run_on_cpu(0, getattr(kvm, fn))
    assert ei.value.spins == 50 and ei.value.where == fn


def test_pvclock_sc_reader_against_a_writer_every_time_is_a_livelock() -> None:
    k = _host(PROFILES[2])
    kvm = k.kvm
    assert kvm is not None and kvm.cfg.masterclock_sync == "seqcount"
    kvm.spin_limit = 20
    vm = kvm.create_vm()
    vm.create_vcpu()
    vm.machine.run_on_cpu(0, lambda: None)

    def writer() -> None:  # another CPU updates the master pair at every read, forever
        kvm.kvm_gen_update_masterclock(vm, "writer")

    vm.pvclock_read_interleave = writer
    with pytest.raises(LivelockDetected, match=r"pvclock_sc.*after 20 spins"):
        vm.get_clock()


# --------------------------------------------------------------------------------------------
# periodic actions: refused before the run past MAX_REPEATS
# --------------------------------------------------------------------------------------------
def _rotate(every_ms: str, duration_s: int, at_s: str = "1") -> str:
    return scenario(
        f'[[timeline]]\nat_s = {at_s}\naction = "rotate_vcpus"\nvm = "L1"\nevery_ms = {every_ms}\n',
        duration_s=duration_s,
    )


def test_rotation_every_nanosecond_for_a_day_is_refused() -> None:
    with pytest.raises(ScenarioFileError) as ei:
        loads(_rotate("0.000001", 86_400), "my.toml")
    msg = str(ei.value)
    # (86400 s - 1 s) / 1 ns + 1 turns
    assert "timeline[0].every_ms" in msg and str(86_399 * S + 1) in msg
    assert str(MAX_REPEATS) in msg and MAX_REPEATS == 100_000_000


def test_rotation_at_the_limit_is_allowed_one_more_is_not() -> None:
    # from 1 s to 101 s every 1 us: 100 s / 1 us + 1 = 1e8 + 1 turns; every 1.000001 us
    # is not a whole number of ns: use 100 s / 1e8 = 1000 ns exactly, starting one period
    # later for exactly 1e8 turns
    loads(_rotate("0.001", 101, "1.000001"), "ok.toml")
    with pytest.raises(ScenarioFileError, match=r"timeline\[0\]\.every_ms: .* 100000001 "):
        loads(_rotate("0.001", 101, "1"), "bad.toml")


def test_sampling_every_ms_for_days_is_refused() -> None:
    def every_ms_for(duration_s: int) -> str:
        return scenario("", duration_s=duration_s).replace("hz = 250", "hz = 250\nsample_ms = 1")

    with pytest.raises(ScenarioFileError) as ei:
        loads(every_ms_for(100_001), "my.toml")
    msg = str(ei.value)
    assert "run.sample_ms" in msg and "100001000 guest clock samples" in msg
    assert str(MAX_REPEATS) in msg
    loads(every_ms_for(100_000), "ok.toml")  # 1e8 samples: exactly the limit

"""Long stops: a clock nobody ticked for 2**41 ns and more.

(a) The conversion (kernel/time/timekeeping.c): 4.13 ``timekeeping_get_ns`` computes
``(delta * mult + xtime_nsec) mod 2**64 >> shift``, so a read more than about ``max_cycles``
after the last tick wraps and is exactly ``2**(64 - shift)`` ns short; 6.10+
``timekeeping_cycles_to_ns`` (fcf190c36914, switch ``tk_delta_overflow_safe``) converts such
a delta with a 128-bit multiply, and ``timekeeping_forward_now`` adds it in ``max_cycles``
chunks.  (b) What a resumed guest does first: the LAPIC timer that expired while it was
stopped fires at the first entry, so its tick's ``update_wall_time`` (logarithmic
accumulation, which takes any offset) runs before anything else reads the clock.

Expected values are written out here from the inputs the test reads (the TSC, the guest's
pvclock record decoded and read with the reference arithmetic, the timekeeper's
``tk_read_base`` fields at the stop), never from the conversion under test.
"""

from __future__ import annotations

import pytest
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.vmm import Vmm, recipes
from kvmclock.vmm.lifecycle import Lifecycle
from reference import kernel_math as ref
from vmm_util import EPOCH, KHZ, MS, STABLE, S, kvmclock_now, make_guest, make_host, record

PROFILES = ("gtod", "series", "upstream")
SAFE = {"gtod": False, "series": False, "upstream": True}
U64 = (1 << 64) - 1
HOURS_4 = 4 * 3600 * S
#: CONFIG_HZ of the kernels that sit through the long stops: every tick is an event the
#: simulator runs (a stopped kernel's ticks are skipped one by one), and nothing checked here
#: depends on the tick rate (the wrap is a property of one read's delta), so CONFIG_HZ=100
#: (a common setting) keeps the hours of simulated stop cheaper
HZ = 100


def expected_ns(base: int, delta: int, mult: int, xtime_nsec: int, shift: int, safe: bool) -> int:
    """The kernel's conversion written out: exact with the 6.10 rule, u64 product without."""
    total = delta * mult + xtime_nsec
    return base + ((total if safe else total & U64) >> shift)


def tickless_host(profile: str) -> tuple[World, Kernel]:
    """A booted host on tsc whose tick and watchdog are stopped after 10 ms (nothing calls
    update_wall_time again)."""
    world = World(5)
    m = PhysicalMachine(world, 2, tsc_khz=KHZ, rtc_epoch_ns=EPOCH)
    k = Kernel(m, profile, name="h")
    k.boot()
    world.run_until(10 * MS)
    assert k.timekeeper.clock.name == "tsc"
    assert k.tick_timer is not None
    k.tick_timer.cancel()
    if k.watchdog.timer is not None:
        k.watchdog.timer.cancel()
    return world, k


@pytest.mark.parametrize("profile", PROFILES)
def test_conversion_wraps_at_2_64_only_without_the_6_10_rule(profile: str) -> None:
    """The first delta whose product reaches 2**64 (``d0``): one cycle below it both rules
    agree; at ``d0`` the 4.13 read is exactly 2**(64 - shift) ns short."""
    _world, k = tickless_host(profile)
    tk = k.timekeeper
    tkr = tk.tkr_mono
    mult, shift, x, last = tkr.mult, tkr.shift, tkr.xtime_nsec, tkr.cycle_last
    d0 = -(-((1 << 64) - x) // mult)  # ceil: the first delta with delta * mult + x >= 2**64
    assert d0 > k.timekeeper.clock.max_cycles  # the 6.10 rule takes its safe path there
    below = tk._delta_to_ns(tkr, (last + d0 - 1) & U64)
    at = tk._delta_to_ns(tkr, (last + d0) & U64)
    assert below == ((d0 - 1) * mult + x) >> shift
    exact_at = (d0 * mult + x) >> shift
    if SAFE[profile]:
        assert at == exact_at
    else:
        assert at == exact_at - (1 << (64 - shift))
        assert at == ((d0 * mult + x) - (1 << 64)) >> shift
    # negative motion (the mask's top bit set): xtime_nsec >> shift under both rules
    assert tk._delta_to_ns(tkr, (last - 5) & U64) == x >> shift


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("after_ns", [(1 << 40) - MS, (1 << 40) + MS, HOURS_4])
def test_monotonic_read_long_after_the_last_tick(profile: str, after_ns: int) -> None:
    """CLOCK_MONOTONIC read ``after_ns`` after the last tick on a tsc host (shift 24: the
    u64 product wraps after about 2**40 ns)."""
    world, k = tickless_host(profile)
    tk = k.timekeeper
    tkr = tk.tkr_mono
    mult, shift, x, last, base = tkr.mult, tkr.shift, tkr.xtime_nsec, tkr.cycle_last, tkr.base
    assert shift == 24
    world.run_until(world.now_ns + after_ns)
    cpu = k.machine.cpus[0]
    tsc, mono = k.run_on_cpu(0, lambda: (cpu.read_tsc(), tk.ktime_get_ns()))
    delta = (tsc - last) & U64
    assert mono == expected_ns(base, delta, mult, x, shift, SAFE[profile])
    # the product wraps once the ns since the last tick plus xtime's sub-second part reach
    # 2**40: a 4.13 read is then short by exactly 2**40 ns per wrap
    wraps = (delta * mult + x) >> 64
    assert wraps == (1 if after_ns == HOURS_4 // 14 else wraps)
    exact = expected_ns(base, delta, mult, x, shift, True)
    assert exact - mono == (0 if SAFE[profile] else wraps << 40)
    if after_ns == HOURS_4:
        assert wraps == 13  # 14400 s / 1099.5 s


@pytest.mark.parametrize("profile", PROFILES)
def test_forward_now_after_a_long_tickless_time(profile: str) -> None:
    """``do_settimeofday64`` 4 h after the last tick runs ``timekeeping_forward_now``: 6.10+
    folds the cycles in max_cycles chunks (CLOCK_MONOTONIC stays right), 4.13 wraps the u64
    sum (CLOCK_MONOTONIC falls back by whole 2**40 ns)."""
    world, k = tickless_host(profile)
    tk = k.timekeeper
    tkr = tk.tkr_mono
    mult, shift, x, last, base = tkr.mult, tkr.shift, tkr.xtime_nsec, tkr.cycle_last, tkr.base
    world.run_until(world.now_ns + HOURS_4)
    cpu = k.machine.cpus[0]
    tsc = cpu.read_tsc()
    k.run_on_cpu(0, lambda: tk.do_settimeofday64(EPOCH + 7 * S))
    mono, real = k.run_on_cpu(0, lambda: (tk.ktime_get_ns(), tk.ktime_get_real_ns()))
    delta = (tsc - last) & U64
    assert mono == expected_ns(base, delta, mult, x, shift, SAFE[profile])
    assert real == EPOCH + 7 * S
    exact = expected_ns(base, delta, mult, x, shift, True)
    assert (exact - mono) % (1 << 40) == 0
    assert (exact - mono == 0) is SAFE[profile]


# --------------------------------------------------------------------------------------------
# (b) the guest's overdue tick at the first entry
# --------------------------------------------------------------------------------------------
def guest_setup(profile: str) -> tuple[World, Vmm]:
    world = World(3)
    host = make_host(world, profile, boot_at_ns=MS, hz=HZ)
    vmm = make_guest(host, profile, hz=HZ)
    world.run_until(5 * S)
    assert vmm.guest is not None and vmm.guest.timekeeper.clock.name == "kvm-clock"
    return world, vmm


STOPS = [(1 << 41) - MS, (1 << 41) + MS]
# a 4 h stop: one profile of each rule
LONG = [("gtod", HOURS_4), ("upstream", HOURS_4)]


@pytest.mark.parametrize(("profile", "stop_ns"), [(p, s) for p in PROFILES for s in STOPS])
def test_guest_read_before_its_tick(profile: str, stop_ns: int) -> None:
    """Without the overdue tick (the VM let run with no entry), the guest's CLOCK_MONOTONIC
    on kvm-clock (mult 2**23, shift 23) is its kvm-clock reading under the 6.10 rule and
    whole 2**41 ns short of it under 4.13 once the product wrapped."""
    world, vmm = guest_setup(profile)
    g = vmm.guest
    assert g is not None
    tkr = g.timekeeper.tkr_mono
    mult, shift, x, last, base = tkr.mult, tkr.shift, tkr.xtime_nsec, tkr.cycle_last, tkr.base
    assert (mult, shift) == (1 << 23, 23)
    vmm.machine.paused = True
    world.run_until(world.now_ns + stop_ns)
    vmm.machine.paused = False
    cpu = vmm.machine.cpus[0]
    tsc, mono = g.run_on_cpu(0, lambda: (cpu.read_tsc(), g.timekeeper.ktime_get_ns()))
    rec = record(vmm, 0)
    assert rec.flags & STABLE
    delta = (ref.read_cycles(rec, tsc) - last) & U64
    assert mono == expected_ns(base, delta, mult, x, shift, SAFE[profile])
    # mult is 2**23: the product wraps once delta + xtime's sub-second ns reach 2**41
    wraps = (delta * mult + x) >> 64
    assert wraps == (delta + (x >> shift)) >> 41
    if stop_ns == HOURS_4:
        assert wraps == 6  # 14400 s / 2199 s
    exact = expected_ns(base, delta, mult, x, shift, True)
    assert exact - mono == (0 if SAFE[profile] else wraps << 41)


@pytest.mark.parametrize(("profile", "stop_ns"), [(p, s) for p in PROFILES for s in STOPS] + LONG)
def test_firecracker_pause_resume_long_stop(profile: str, stop_ns: int) -> None:
    """Firecracker pause/resume (no clock ioctls): the guest's overdue tick runs at the first
    entry, so CLOCK_MONOTONIC moved by exactly what kvm-clock moved under every profile (no
    2**41 ns wrap), and the guest's jump is the kvm-clock's own, well under 1 us."""
    world, vmm = guest_setup(profile)
    g = vmm.guest
    assert g is not None
    lc = Lifecycle(world)
    r = recipes.get("firecracker")
    kc_before = kvmclock_now(vmm, 0)
    lc.pause(vmm, r)
    world.run_until(world.now_ns + stop_ns)
    rec = lc.resume(vmm, r)
    kc_after = kvmclock_now(vmm, 0)
    assert g.counters["ticks_overdue"] == 1
    assert rec["downtime_ns"] == stop_ns and rec["stopped_ns"] == 5 * S
    assert rec["monotonic_step_ns"] == kc_after - kc_before
    assert rec["monotonic_jump_ns"] == kc_after - kc_before - stop_ns
    assert abs(rec["monotonic_jump_ns"]) < stop_ns // 1_000_000  # kvm-clock's own rate error
    assert rec["realtime_step_ns"] == kc_after - kc_before


@pytest.mark.parametrize(
    ("profile", "sleep_ns"), [(p, (1 << 41) + MS) for p in PROFILES] + [("upstream", HOURS_4)]
)
def test_host_suspend_long_sleep(profile: str, sleep_ns: int) -> None:
    """A host asleep 2**41 ns + 1 ms or 4 h with a running VM: the host's and the guest's
    overdue ticks run at the resume; the guest's CLOCK_MONOTONIC moved by what its kvm-clock
    moved (the compensated TSC: about 0 over the sleep), never by a wrapped 2**41 ns."""
    world = World(4)
    h = make_host(world, profile, boot_at_ns=MS, hz=HZ)
    vmm = make_guest(h, profile, hz=HZ)
    world.run_until(20 * S)
    g = vmm.guest
    assert g is not None
    lc = Lifecycle(world)
    mono_before = g.run_on_cpu(0, g.timekeeper.ktime_get_ns)
    rec0 = record(vmm, 0)
    tsc0 = vmm.machine.cpus[0].read_tsc()
    assert ref.read_cycles(rec0, tsc0) - g.timekeeper.tkr_mono.cycle_last < 1 << 41
    lc.host_suspend(h, [vmm], sleep_ns, 50_000_000)
    world.run_until(20 * S + sleep_ns)
    rec = lc.records[-1]
    assert rec["action"] == "host_suspend" and rec["downtime_ns"] == sleep_ns
    assert h.counters["ticks_overdue"] == 1 and g.counters["ticks_overdue"] == 1
    cpu = vmm.machine.cpus[0]
    tsc, mono = g.run_on_cpu(0, lambda: (cpu.read_tsc(), g.timekeeper.ktime_get_ns()))
    assert rec["monotonic_step_ns"] == mono - mono_before
    # masterclock is off after the resume (backwards_tsc_observed): the kvm-clock follows the
    # host's boot-based clock, which counted the sleep as the RTC measured it (whole
    # seconds), so the guest is less than 1 s off; a wrapped read would be 2**41 ns behind
    assert abs(rec["monotonic_jump_ns"]) < S
    assert abs(rec["realtime_jump_ns"]) < S
    assert tsc - tsc0 < KHZ * 1000  # the compensated guest TSC: under 1 s of cycles


def test_vm_history_lists_every_vm() -> None:
    """``Vmm.vm_history``: the VM it created, then each restored one (the current last)."""
    world = World(2)
    src = make_host(world, "upstream", "src")
    dst = make_host(world, "upstream", "dst")
    vmm = make_guest(src, "upstream")
    first = vmm.vm
    world.run_until(S)
    lc = Lifecycle(world)
    r = recipes.get("qemu")
    lc.migrate(vmm, dst, r, downtime_ns=100 * MS)
    world.run_until(2 * S)
    assert vmm.vm_history == [first, vmm.vm] and vmm.vm is not first
    assert first.destroyed and vmm.vm.module is dst.kvm

"""Guest clock invariants under hypothesis-generated scenarios, and the bound on the step a
masterclock re-anchoring may take.

TSC writes only move a vCPU's TSC forward: 2017 ``kvm_write_tsc`` raises no CLOCK_UPDATE, so
without masterclock a backwards write leaves the record's ``tsc_timestamp`` ahead of the guest
TSC and the guest's kvm-clock wraps to ~2**64 ns (the kernel behaves the same; the guest
timekeeper then accumulates centuries).  That is garbage in, not an invariant.

Random vCPU and host CPU counts, TSC writes inside and outside the matching window, host
clocksource changes (tsc <-> hpet), vCPU migrations, under both profiles, with synchronised
host TSCs.  Checked on every guest read (sim/metrics.py definitions):

* with the stable bit set (and synchronised TSCs) no read on any vCPU is lower than an earlier
  stable read on any vCPU of that guest under the same master pair
  (``guest_backwards_stable == 0``);
* across a masterclock update the clock can step back (re-anchoring, or the end of a stale
  record after a forward TSC write): the kernel does that too; it is counted as
  ``guest_backwards_reanchor`` and its size, ``max_reanchor_step_ns``, is bounded (below);
* without the stable bit, the ``last_value`` clamp keeps the guest monotonic
  (``guest_backwards_clamped == 0``), and it only ever raises a read
  (``returned_below_raw == 0``).

The re-anchoring bound.  At a masterclock update the kernel takes a new pair from the host
clock (``pvclock_update_vm_gtod_copy``: ``kvm_get_time_and_clockread`` -> master_kernel_ns,
master_cycle_now) and ``kvm_guest_time_update`` writes ``system_time = master_kernel_ns +
kvmclock_offset`` with ``tsc_timestamp`` = the guest TSC at master_cycle_now.  Write each guest
read as host clock + kvmclock_offset + e; at an anchor e is 0 (up to truncation), then it
grows by the difference of two rates: the record extrapolates TSC cycles with the pvclock
mul/shift (``kvm_get_time_scale(NSEC_PER_SEC, tsc_khz * 1000)``: mul has 32 bits), the host
clock with its clocksource's mult/shift (``clocks_calc_mult_shift``: tsc's mult has ~23 bits
at 600 s, hpet's 32).  A step back is the largest earlier read minus a later one, so at most
max e - min e over the run:

    step <= D + L * (2 * rho * T + 4 ns)

* rho: the largest |pvclock rate - host clocksource rate| in ns per second over the host's
  clocksources (tsc, hpet), computed below from the kernel's formulas (tests/reference);
* T: the simulated time (the longest an anchor can age);
* 4 ns: one truncation (< 1 ns) in each of pvclock_scale_delta and the timekeeper's
  ``>> shift``, at the earlier and at the later read;
* L: the guest level: a level-2 guest extrapolates from a pair of level 1's kvm-clock, which
  is itself level 0's extrapolation, so the errors of the levels below add up (level 1's
  kvm-clock is a 1 GHz clocksource, mult = 2**shift: no rate error of its own);
* D: the TSC displacement the host clock does not see: a forward TSC write of a vCPU (its
  record is stale until the next CLOCK_UPDATE, 2017), 0 for displacements the host clock
  shares (nested: every L0 TSC jumps and L0's timekeeper is on that TSC).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvmclock.kvm import KVM_REQ_MASTERCLOCK_UPDATE
from kvmclock.sim import run_scenario
from kvmclock.sim.scenarios import Sim
from reference import kernel_math as km

MS = 1_000_000
NS_PER_S = 10**9
U32_MAX = (1 << 32) - 1
HPET_HZ = 14_318_180  # the model's HPET (a typical one)

op = st.tuples(
    st.integers(5, 590),  # ms
    st.sampled_from(["tsc_near", "tsc_far", "cs_hpet", "cs_tsc", "migrate"]),
    st.integers(0, 7),
    st.integers(0, 7),
)
NEAR_MS, FAR_MS = 100, 3000


def pvclock_rate(tsc_khz: int) -> Fraction:
    """ns per cycle of a kvm-clock record: kvm_get_time_scale(NSEC_PER_SEC, tsc_khz * 1000)."""
    shift, mul = km.get_time_scale(NS_PER_S, tsc_khz * 1000)
    return Fraction(mul) * Fraction(2) ** shift / 2**32


def clocksource_rate(freq: int, scale: int, mask: int) -> Fraction:
    """ns per cycle of a registered clocksource: __clocksource_update_freq_scale (maxsec from
    the mask, capped at 600 s for masks wider than 32 bits) and its maxadj loop."""
    sec = max(1, mask // freq // scale)
    if sec > 600 and mask > U32_MAX:
        sec = 600
    mult, shift = km.clocks_calc_mult_shift(freq, NS_PER_S // scale, sec * scale)
    while mult + mult * 11 // 100 > U32_MAX:
        mult >>= 1
        shift -= 1
    return Fraction(mult, 2**shift)


def drift_ns_per_s(tsc_khz: int) -> Fraction:
    """rho: the largest |guest extrapolation - host clock| rate, ns per simulated second."""
    tsc_hz = tsc_khz * 1000
    guest = pvclock_rate(tsc_khz) * tsc_hz
    hosts = [clocksource_rate(tsc_khz, 1000, (1 << 64) - 1) * tsc_hz,
             clocksource_rate(HPET_HZ, 1, U32_MAX) * HPET_HZ]
    return max(abs(guest - h) for h in hosts)


def reanchor_bound_ns(tsc_khz: int, level: int, t_ns: int, displacement_ns: int) -> int:
    """The module docstring's bound on a re-anchoring step."""
    rho = drift_ns_per_s(tsc_khz)
    return displacement_ns + level * (math.ceil(2 * rho * Fraction(t_ns, NS_PER_S)) + 4)


def test_drift_rates_of_the_builtin_frequency() -> None:
    """The numbers behind the bound (2 593 992 kHz, the scenarios' TSC): the tsc clocksource's
    23-bit mult dominates; the pvclock mul is within 2**-31."""
    khz = 2_593_992
    tsc = clocksource_rate(khz, 1000, (1 << 64) - 1)
    assert tsc == Fraction(6467721, 2**24)
    # mul is normalised to >= 2**31 and truncated: relative error below 2**-31
    assert abs(pvclock_rate(khz) * khz * 1000 / NS_PER_S - 1) < Fraction(1, 2**31)
    assert 31 < drift_ns_per_s(khz) < 33  # ~32 ns/s: the host clock runs ahead
    assert 59 < drift_ns_per_s(3_000_000) < 60  # there the guest runs ahead


def _run(
    profile: str,
    host_cpus: int,
    vcpus: int,
    nested: bool,
    ops: list[tuple[int, str, int, int]],
    seed: int,
    tsc_khz: int = 2_593_992,
) -> Sim:
    sim = Sim(profile, seed, hz=250, sample_ms=5, fault=None, spin_limit=1000)
    l0 = sim.host(cpus=host_cpus, tsc_khz=tsc_khz)
    sim.world.run_until(MS)
    vm, g = sim.guest(l0, vcpus=vcpus, kvm=nested)
    if nested:
        sim.guest(g, vcpus=max(1, vcpus - 1), kvm=False)
    sim.start_sampling()

    def make(kind: str, a: int, b: int) -> None:
        v = a % len(vm.vcpus)
        if kind == "tsc_near":
            vm.write_tsc(v, vm.machine.cpus[v].read_tsc() + tsc_khz * NEAR_MS)
        elif kind == "tsc_far":
            vm.write_tsc(v, vm.machine.cpus[v].read_tsc() + tsc_khz * FAR_MS)
        elif kind in ("cs_hpet", "cs_tsc"):
            l0.clocksource_override = kind[3:]
            l0.clocksource_select()
        else:
            vm.migrate_vcpu(v, b % host_cpus)

    for t_ms, kind, a, b in sorted(ops):
        sim.world.at(MS + t_ms * MS, make, kind, a, b)
    sim.world.run_until(600 * MS)
    return sim


@settings(max_examples=40)
@given(
    profile=st.sampled_from(["gtod", "series"]),
    host_cpus=st.integers(1, 4),
    vcpus=st.integers(1, 4),
    nested=st.booleans(),
    ops=st.lists(op, max_size=8),
    seed=st.integers(0, 2**16),
    tsc_khz=st.sampled_from([2_593_992, 3_000_000]),
)
def test_guest_reads_never_go_backwards(
    profile: str,
    host_cpus: int,
    vcpus: int,
    nested: bool,
    ops: list[tuple[int, str, int, int]],
    seed: int,
    tsc_khz: int,
) -> None:
    sim = _run(profile, host_cpus, vcpus, nested, ops, seed, tsc_khz)
    assert sim.recorder is not None
    # every forward TSC write displaces one vCPU's clock until its next CLOCK_UPDATE
    displacement_ns = sum(
        {"tsc_near": NEAR_MS, "tsc_far": FAR_MS}.get(kind, 0) * MS for _, kind, _, _ in ops
    )
    for level, stats in sim.recorder.stats.items():
        if level == 0:
            continue
        assert stats.guest_reads > 0
        assert stats.guest_backwards_stable == 0, (level, stats.backwards_events)
        assert stats.guest_backwards_clamped == 0, (level, stats.backwards_events)
        # a read the clamp changed returned more than its raw value, never less
        assert stats.returned_below_raw == 0, (level, stats.backwards_events)
        bound = reanchor_bound_ns(tsc_khz, level, sim.world.now_ns, displacement_ns)
        assert stats.max_reanchor_step_ns <= bound, (level, bound, stats.backwards_events)
        assert (stats.max_reanchor_step_ns > 0) == (stats.guest_backwards_reanchor > 0)


@pytest.mark.parametrize("profile", ["gtod", "series"])
def test_reanchor_step_is_the_drift_since_the_last_anchor(profile: str) -> None:
    """At 3 GHz the record (mul/shift of 32 bits) runs 59.37 ns/s ahead of the host's tsc
    clocksource (23-bit mult): a masterclock update after T seconds steps the guest back by
    T * 59.37 ns, within the truncations.  The update is requested on the last vCPU only, so
    in the next sample vCPU 0 still reads the old record and the last vCPU the new one, at
    the same true time."""
    khz = 3_000_000
    sim = Sim(profile, 0, hz=250, sample_ms=10, fault=None, spin_limit=1000)
    l0 = sim.host(cpus=2, tsc_khz=khz)
    sim.world.run_until(MS)
    vm, _g = sim.guest(l0, vcpus=2, kvm=False)
    sim.start_sampling()

    def request_update() -> None:
        vm.vcpus[-1].kvm_make_request(KVM_REQ_MASTERCLOCK_UPDATE)

    for t_ms in (2_005, 4_005, 8_005):  # anchors then ~2 s, ~2 s and ~4 s old
        sim.world.at(t_ms * MS, request_update)
    sim.world.run_until(9 * NS_PER_S)
    assert vm.use_master_clock
    assert sim.recorder is not None
    st1 = sim.recorder.stats[1]
    assert st1.guest_backwards_stable == 0 and st1.guest_backwards_clamped == 0
    assert st1.guest_backwards_reanchor == 3
    rho = drift_ns_per_s(khz)
    # the last interval is 4 s give or take one sample period (the update is taken when the
    # last vCPU enters in the next sample), +-4 ns of truncation
    lo = rho * Fraction(4 * NS_PER_S - 10 * MS, NS_PER_S) - 4
    hi = rho * Fraction(4 * NS_PER_S + 10 * MS, NS_PER_S) + 4
    assert lo <= st1.max_reanchor_step_ns <= hi, (float(lo), st1.max_reanchor_step_ns, float(hi))
    assert st1.max_reanchor_step_ns <= reanchor_bound_ns(khz, 1, sim.world.now_ns, 0)


def _builtin_cases() -> list[tuple[str, str]]:
    return [(name, prof) for name in ("nested", "tsc-sync", "unstable-tsc", "set-clock",
                                      "patch09-hang") for prof in ("gtod", "series")]


def _displacement_ns(name: str, p: dict[str, Any]) -> int:
    """D of the module docstring for a built-in scenario (its default parameters)."""
    if name == "tsc-sync":
        # vCPU 1 written inside_ms ahead (inside the window), vCPU 2 far_s ahead (new
        # generation, stale record until the rematch)
        return int(p["inside_ms"]) * MS + int(p["far_s"]) * NS_PER_S
    if name == "unstable-tsc":
        # unsynchronised pCPUs and a backwards step (masterclock never on, so no stable read
        # is expected at all; the bound is only the fallback)
        return int(p["skew_us"]) * 1000 + int(p["backwards_ms"]) * MS
    # nested: the L0 TSC jump moves L0's timekeeper (on that TSC) as well; set-clock:
    # KVM_SET_CLOCK requests a CLOCK_UPDATE on every vCPU, taken at each one's next entry,
    # before its next read; patch09-hang: no TSC change
    return 0


@pytest.mark.parametrize(("name", "profile"), _builtin_cases())
def test_builtin_scenarios_reanchor_steps_are_bounded(name: str, profile: str) -> None:
    run = run_scenario(name, profile)
    p = run["params"]
    d = _displacement_ns(name, p)
    for lv in run["levels"][1:]:
        step = lv["max_reanchor_step_ns"]
        bound = reanchor_bound_ns(int(p["tsc_khz"]), lv["level"], run["end_ns"], d)
        assert 0 <= step <= bound, (lv["level"], step, bound)
        assert (step > 0) == (lv["guest_backwards_reanchor"] > 0)
    if name == "tsc-sync":
        # the step back when vCPU 2's stale record (far_s ahead) is left: at least far_s
        # minus the drift allowance (the other vCPUs were not displaced backwards)
        step = run["levels"][1]["max_reanchor_step_ns"]
        far = int(p["far_s"]) * NS_PER_S
        assert step >= far - reanchor_bound_ns(int(p["tsc_khz"]), 1, run["end_ns"], 0)

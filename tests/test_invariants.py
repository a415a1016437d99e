"""Guest clock invariants under hypothesis-generated scenarios.

TSC writes only move a vCPU's TSC forward: 2017 ``kvm_write_tsc`` raises no CLOCK_UPDATE, so
without masterclock a backwards write leaves the record's ``tsc_timestamp`` ahead of the guest
TSC and the guest's kvm-clock wraps to ~2**64 ns (the kernel behaves the same; the guest
timekeeper then accumulates centuries).  That is garbage in, not an invariant.

Random vCPU and host CPU counts, TSC writes inside and outside the matching window, host
clocksource changes (tsc <-> hpet), vCPU migrations, under both profiles, with synchronised
host TSCs.  Checked on every guest read (sim/metrics.py definitions):

* with the stable bit set (and synchronised TSCs) no read on any vCPU is lower than an earlier
  stable read on any vCPU of that guest under the same master pair
  (``guest_backwards_stable == 0``).  Across a masterclock update the clock can step back
  (re-anchoring, or the end of a stale record after a forward TSC write): the kernel does that
  too; it is counted as ``guest_backwards_reanchor`` and not asserted;
* without it, the ``last_value`` clamp keeps the guest monotonic
  (``guest_backwards_clamped == 0``), and it is what hides the raw steps.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kvmclock.sim.scenarios import Sim

MS = 1_000_000

op = st.tuples(
    st.integers(5, 590),  # ms
    st.sampled_from(["tsc_near", "tsc_far", "cs_hpet", "cs_tsc", "migrate"]),
    st.integers(0, 7),
    st.integers(0, 7),
)


def _run(
    profile: str,
    host_cpus: int,
    vcpus: int,
    nested: bool,
    ops: list[tuple[int, str, int, int]],
    seed: int,
) -> Sim:
    sim = Sim(profile, seed, hz=250, sample_ms=5, fault=None, spin_limit=1000)
    l0 = sim.host(cpus=host_cpus, tsc_khz=2_593_992)
    sim.world.run_until(MS)
    vm, g = sim.guest(l0, vcpus=vcpus, kvm=nested)
    if nested:
        sim.guest(g, vcpus=max(1, vcpus - 1), kvm=False)
    sim.start_sampling()
    khz = 2_593_992

    def make(kind: str, a: int, b: int) -> None:
        v = a % len(vm.vcpus)
        if kind == "tsc_near":
            vm.write_tsc(v, vm.machine.cpus[v].read_tsc() + khz * 100)
        elif kind == "tsc_far":
            vm.write_tsc(v, vm.machine.cpus[v].read_tsc() + khz * 3000)
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
)
def test_guest_reads_never_go_backwards(
    profile: str,
    host_cpus: int,
    vcpus: int,
    nested: bool,
    ops: list[tuple[int, str, int, int]],
    seed: int,
) -> None:
    sim = _run(profile, host_cpus, vcpus, nested, ops, seed)
    assert sim.recorder is not None
    for level, stats in sim.recorder.stats.items():
        if level == 0:
            continue
        assert stats.guest_reads > 0
        assert stats.guest_backwards_stable == 0, (level, stats.backwards_events)
        assert stats.guest_backwards_clamped == 0, (level, stats.backwards_events)
        # a read the clamp changed returned more than its raw value, never less
        assert stats.last_value_clamp_hits <= stats.guest_reads

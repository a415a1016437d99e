"""Per-level metrics of a simulation run (the run JSON; the three KVM clock definitions A/B/C).

Definitions (what the numbers mean, precisely):

* A **guest clock read** at level N >= 1 is the guest kernel's ``kvm-clock`` clocksource read
  (``pvclock_clocksource_read`` with the shared ``last_value`` clamp unless the record and the
  valid flags carry PVCLOCK_TSC_STABLE_BIT) on one vCPU, entered through the host's KVM.  At
  the same instant the model also computes the *raw* value (the same record and TSC, no clamp).
* Reads are ordered by simulation order (true time never decreases).  ``guest_backwards``
  counts reads whose returned value is lower than the largest value any earlier read on any
  vCPU of that guest returned.  ``guest_backwards_stable`` counts stable-bit reads (no clamp
  applies to them) lower than an earlier stable read *of the same master pair* (the record's
  ``(system_time, tsc_timestamp)``, shared by all vCPUs under one masterclock): the guarantee
  masterclock gives.  ``guest_backwards_reanchor`` counts stable reads lower than an earlier
  read of another pair or without the stable bit: the step back when a masterclock update
  re-anchors the clock (Woodhouse's definitions A vs B) or ends a stale-record period; the
  kernel has it too and the clamp does not cover it.  ``max_reanchor_step_ns`` is the largest
  of those steps (``largest earlier read - this read``, ns; 0 when there was none).  At a
  masterclock update the kernel re-anchors (``pvclock_update_vm_gtod_copy`` takes a new
  ``(master_kernel_ns, master_cycle_now)`` from ``kvm_get_time_and_clockread``, then
  ``kvm_guest_time_update`` writes ``system_time = master_kernel_ns + kvmclock_offset`` and
  ``tsc_timestamp`` = the guest TSC at ``master_cycle_now``): the step is the old record's
  extrapolation at that TSC minus the host clock there, i.e. the drift between the guest's
  TSC-based extrapolation (pvclock mul/shift) and the host clock (clocksource mult/shift)
  accumulated since the previous anchor, plus any TSC displacement the host clock did not
  see (a TSC write, a stale record).  ``guest_backwards_clamped`` counts
  non-stable reads lower than the largest earlier *non-stable* read (the domain of the clamp;
  always 0 when the clamp works); ``guest_backwards_unclamped`` counts raw values lower than
  the largest earlier raw value (what the guest would see without the clamp).
* ``max_cross_vcpu_skew_ns``: at each sample every vCPU of the guest is read at the same true
  time; the skew is max - min of the raw values; the maximum over samples.
* ``last_value_clamp_hits``: reads where the clamp returned ``last_value`` (returned > raw).
  ``returned_below_raw`` counts reads that returned less than their raw value: the clamp only
  ever raises a read (``max(last_value, raw)``), so it is 0 unless the model is wrong.
* ``max_seen_stable`` (the largest stable read per master pair) holds only the pairs some
  vCPU record of the guest held at its latest sample: after every sample the pairs no vCPU
  read there are dropped (:meth:`LevelStats.forget_pairs`), so it stays as small as the
  number of vCPUs.  That is exact unless a record later gets back a pair it had replaced
  (both ``system_time`` and ``tsc_timestamp`` equal to an earlier anchor's: a re-anchor that
  lands on the same host clock value and the same guest TSC, which takes a KVM_SET_CLOCK and
  a TSC write that undo the time elapsed exactly); such a read would be compared with the
  reads since the pair came back only (a step back from an older read of it counted as a
  re-anchor, not as stable).
* Sample series: a run keeps per guest kernel streaming aggregates over every sample
  (:class:`SampleSummary`: count, skew min/max, a skew histogram with the bucket edges
  :data:`SKEW_HISTOGRAM_EDGES_NS`, stable/unstable counts, first and worst sample) and at most
  ``kvmclock.limits.SERIES_ROWS`` rows: the kernel's samples number 0, 1, 2, ... and those
  whose number is a multiple of the stride (1 at first) are kept; when a kept row would make
  one too many, every second kept row is dropped and the stride doubles.  The kept rows are
  therefore evenly spaced and a subset of the full series, whatever the duration.
* Clock definitions (per VM run by KVM at level N, sampled on vCPU 0's host CPU while
  masterclock is on and the host runs: a suspended host's clock is frozen): A = host base +
  kvmclock_offset, B = the record through the guest TSC, C = the master pair through the
  host TSC with host-frequency mul/shift; max |A-B|, |A-C|, |B-C| in ns (None when never
  sampled).
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kvmclock as _k
from kvmclock import limits

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel

__all__ = ["SKEW_HISTOGRAM_EDGES_NS", "LevelStats", "Recorder", "SampleSummary", "guest_read"]

_STABLE = 1

#: Edges (ns) of the cross-vCPU skew histogram: 0, then decades from 1 ns to 1 s.  There is
#: one bucket more than edges: bucket 0 counts ``skew_ns <= edges[0]`` (no skew), bucket i
#: ``edges[i - 1] < skew_ns <= edges[i]``, the last one ``skew_ns > edges[-1]``; so the
#: samples over an edge (the text report's 1 us threshold) are a sum of buckets.
SKEW_HISTOGRAM_EDGES_NS: tuple[int, ...] = (0, *(10**e for e in range(10)))


def guest_read(kernel: Kernel) -> tuple[int, int, int, tuple[int, int]]:
    """On ``kernel.current_cpu``: ``(returned_ns, raw_ns, flags, (system_time, tsc_timestamp))``
    of one kvm-clock read."""
    cs = kernel.clocksources["kvm-clock"]
    ns, _stamp = cs.read()
    cpu = kernel.current_cpu
    mem = kernel.machine.memory
    off = kernel.pvti_offset(cpu)
    raw, flags, _ = _k.pvclock_read(mem, kernel.machine.cpus[cpu].read_tsc(), off)
    rec = _k.PvclockVcpuTimeInfo.from_bytes(mem[off : off + 32])
    return ns, raw, flags, (rec.system_time, rec.tsc_timestamp)


@dataclass
class LevelStats:
    """Counters for one guest level."""

    level: int
    guest_reads: int = 0
    guest_backwards: int = 0
    guest_backwards_stable: int = 0
    guest_backwards_reanchor: int = 0
    max_reanchor_step_ns: int = 0
    max_seen_stable: dict[tuple[int, int], int] = field(default_factory=dict)
    guest_backwards_clamped: int = 0
    guest_backwards_unclamped: int = 0
    last_value_clamp_hits: int = 0
    returned_below_raw: int = 0
    max_cross_vcpu_skew_ns: int = 0
    max_seen: int | None = None
    max_seen_unstable: int | None = None
    max_seen_raw: int | None = None
    max_abs: dict[str, int | None] = field(
        default_factory=lambda: {
            "max_abs_a_minus_b_ns": None,
            "max_abs_a_minus_c_ns": None,
            "max_abs_b_minus_c_ns": None,
        }
    )
    #: the first 100 reads that went backwards: ``[t_ns, cpu, step_ns, stable]`` (true time,
    #: the vCPU, largest earlier read - this read in ns, whether the read carried
    #: PVCLOCK_TSC_STABLE_BIT)
    backwards_events: list[list[Any]] = field(default_factory=list)

    def record_read(
        self, t_ns: int, cpu: int, ns: int, raw: int, flags: int, pair: tuple[int, int] = (0, 0)
    ) -> None:
        """Account one read (see the module docstring for the definitions)."""
        self.guest_reads += 1
        stable = bool(flags & _STABLE)
        same_pair_back = False
        if stable:
            prev = self.max_seen_stable.get(pair)
            same_pair_back = prev is not None and ns < prev
            if same_pair_back:
                self.guest_backwards_stable += 1
            self.max_seen_stable[pair] = ns if prev is None else max(prev, ns)
        if self.max_seen is not None and ns < self.max_seen:
            self.guest_backwards += 1
            if stable and not same_pair_back:
                self.guest_backwards_reanchor += 1
                self.max_reanchor_step_ns = max(self.max_reanchor_step_ns, self.max_seen - ns)
            if len(self.backwards_events) < 100:
                self.backwards_events.append([t_ns, cpu, self.max_seen - ns, stable])
        if not stable:
            if self.max_seen_unstable is not None and ns < self.max_seen_unstable:
                self.guest_backwards_clamped += 1
            self.max_seen_unstable = (
                ns if self.max_seen_unstable is None else max(self.max_seen_unstable, ns)
            )
        if self.max_seen_raw is not None and raw < self.max_seen_raw:
            self.guest_backwards_unclamped += 1
        if ns != raw:
            self.last_value_clamp_hits += 1
        if ns < raw:
            self.returned_below_raw += 1
        self.max_seen = ns if self.max_seen is None else max(self.max_seen, ns)
        self.max_seen_raw = raw if self.max_seen_raw is None else max(self.max_seen_raw, raw)

    def forget_pairs(self, held: set[tuple[int, int]]) -> None:
        """Drop the ``max_seen_stable`` entries of master pairs not in ``held`` (the pairs
        every vCPU's record held at the sample just taken; see the module docstring)."""
        if len(self.max_seen_stable) > len(held) or any(
            p not in held for p in self.max_seen_stable
        ):
            self.max_seen_stable = {
                p: v for p, v in self.max_seen_stable.items() if p in held
            }

    def record_definitions(self, a: int, b: int, c: int) -> None:
        """Account one A/B/C sample."""
        for key, d in (
            ("max_abs_a_minus_b_ns", abs(a - b)),
            ("max_abs_a_minus_c_ns", abs(a - c)),
            ("max_abs_b_minus_c_ns", abs(b - c)),
        ):
            cur = self.max_abs[key]
            self.max_abs[key] = d if cur is None else max(cur, d)


@dataclass
class SampleSummary:
    """Streaming aggregates of one guest kernel's samples (every sample, kept or not) and
    its decimated series (see the module docstring)."""

    kernel: str
    level: int
    samples: int = 0
    stable: int = 0
    unstable: int = 0
    skew_min_ns: int | None = None
    skew_max_ns: int | None = None
    #: counts per bucket of :data:`SKEW_HISTOGRAM_EDGES_NS` (one more than the edges)
    skew_histogram: list[int] = field(
        default_factory=lambda: [0] * (len(SKEW_HISTOGRAM_EDGES_NS) + 1)
    )
    #: the first sample and the first of the largest skew (rows as in :attr:`rows`)
    first: list[Any] | None = None
    worst: list[Any] | None = None
    #: kept rows ``[seq, t_ns, level, skew_ns, stable, kernel]`` (``seq`` orders the rows of
    #: all kernels as they were taken)
    rows: list[list[Any]] = field(default_factory=list)
    #: a sample is kept when its number (0, 1, ... per kernel) is a multiple of ``stride``
    stride: int = 1

    def add(self, row: list[Any]) -> None:
        """Account sample ``row`` and keep it if the stride says so."""
        n = self.samples
        self.samples += 1
        skew = int(row[3])
        if row[4]:
            self.stable += 1
        else:
            self.unstable += 1
        if self.first is None:
            self.first = row
        if self.skew_max_ns is None or skew > self.skew_max_ns:
            self.skew_max_ns = skew
            self.worst = row
        if self.skew_min_ns is None or skew < self.skew_min_ns:
            self.skew_min_ns = skew
        self.skew_histogram[bisect.bisect_left(SKEW_HISTOGRAM_EDGES_NS, skew)] += 1
        if n % self.stride:
            return
        if len(self.rows) >= limits.SERIES_ROWS:
            del self.rows[1::2]
            self.stride *= 2
            if n % self.stride:
                return
        self.rows.append(row)


class Recorder:
    """Samples every guest kernel at fixed true-time intervals (a World periodic event).

    ``kernels`` is the run's list of kernels (a kernel appended later, a VM created during
    the run, is sampled from then on).  Counters are kept per kernel (:attr:`by_kernel`, by
    kernel name), and so are the sample aggregates and the decimated series
    (:attr:`summaries`); a sample row is ``[t_ns, level, skew_ns, stable, kernel_name]``
    (the run dict names these fields: ``kvmclock.scenario.engine``).
    """

    def __init__(self, kernels: list[Kernel], sample_ns: int) -> None:
        self.kernels = kernels
        self.world = kernels[0].world
        self.sample_ns = sample_ns
        self.by_kernel: dict[str, LevelStats] = {k.name: LevelStats(k.level) for k in kernels}
        self.summaries: dict[str, SampleSummary] = {}
        self._seq = 0
        self.handle = self.world.every(sample_ns, self.sample)

    @property
    def samples(self) -> list[list[Any]]:
        """The kept sample rows of every kernel in the order they were taken (each kernel's
        rows are evenly spaced: :attr:`SampleSummary.stride`)."""
        rows = sorted(
            (r for s in self.summaries.values() for r in s.rows), key=lambda r: int(r[0])
        )
        return [r[1:] for r in rows]

    @property
    def decimated(self) -> bool:
        """Whether some kernel's series kept only every ``stride``-th sample (stride > 1)."""
        return any(s.stride > 1 for s in self.summaries.values())

    def stats_of(self, kernel: Kernel) -> LevelStats:
        """The counters of ``kernel`` (created empty for a kernel not seen yet)."""
        st = self.by_kernel.get(kernel.name)
        if st is None:
            st = self.by_kernel[kernel.name] = LevelStats(kernel.level)
        return st

    @property
    def stats(self) -> dict[int, LevelStats]:
        """Counters by level (the first kernel of each level; :attr:`by_kernel` has all)."""
        out: dict[int, LevelStats] = {}
        for st in self.by_kernel.values():
            out.setdefault(st.level, st)
        return out

    def sample(self) -> None:
        """Read every vCPU of every guest kernel now; then the clock definitions of each VM."""
        t = self.world.now_ns
        for k in self.kernels:
            if k.level == 0 or "kvm-clock" not in k.clocksources or k.pvclock is None:
                continue
            if not k.machine_running:
                continue
            st = self.stats_of(k)
            raws: list[int] = []
            pairs: set[tuple[int, int]] = set()
            stable = True
            for cpu in range(len(k.machine.cpus)):
                ns, raw, flags, pair = k.run_on_cpu(cpu, functools.partial(guest_read, k))
                st.record_read(t, cpu, ns, raw, flags, pair)
                raws.append(raw)
                pairs.add(pair)
                stable = stable and bool(flags & _STABLE)
            st.forget_pairs(pairs)
            skew = max(raws) - min(raws)
            st.max_cross_vcpu_skew_ns = max(st.max_cross_vcpu_skew_ns, skew)
            summ = self.summaries.get(k.name)
            if summ is None:
                summ = self.summaries[k.name] = SampleSummary(k.name, k.level)
            summ.add([self._seq, t, k.level, skew, stable, k.name])
            self._seq += 1
        for k in self.kernels:
            # a suspended host has no clock to compare with (its timekeeper is frozen)
            if k.kvm is None or not k.machine_running:
                continue
            for vm in k.kvm.vm_list[:1]:
                if not vm.vcpus:
                    continue
                defs = vm.clock_definitions(0)
                if defs is not None:
                    self.stats_of(k).record_definitions(*defs)

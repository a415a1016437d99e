"""The built-in scenarios, ``Sim`` and ``run_scenario`` (one run as the dict ``simulate --json``
prints).

A scenario is a TOML file (docs/scenarios.md; :mod:`kvmclock.scenario`): the ten built-in
ones ship in ``kvmclock/scenario/builtin`` and run through the same engine as a user's file
(:mod:`kvmclock.scenario.engine`).  Every scenario builds the stack in simulated time from a
seed: ``PhysicalMachine``s with a ``Kernel`` (level 0) and KVM, VMs whose vCPUs are started
once (a VMM starting the vCPU threads: each enters the guest, processing its requests), guest
kernels booted on them, and timed events.  A ``Recorder`` reads every guest's kvm-clock on
every vCPU each ``sample_ms``.  Nothing reads the host wall clock; the result is a pure
function of (scenario, profile, seed, params).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TextIO

from kvmclock import limits
from kvmclock.errors import ScenarioError
from kvmclock.kernel import Kernel
from kvmclock.kvm.x86 import Kvm, KvmModule
from kvmclock.machine.physical import DEFAULT_FEATURES, PhysicalMachine
from kvmclock.machine.world import World
from kvmclock.profiles import Profile, SwitchValue, resolve_profile
from kvmclock.scenario.loader import (
    KTIME_MAX_NS,
    ScenarioFile,
    builtin_names,
    check_params,
    load,
    load_builtin,
    resolve,
)
from kvmclock.sim.eventlog import EventLog, TraceRecords
from kvmclock.sim.metrics import Recorder
from kvmclock.vmm import Vmm

__all__ = ["KTIME_MAX_NS", "SCENARIOS", "Scenario", "Sim", "format_trace_lines", "run_scenario"]

NSEC_PER_SEC = 1_000_000_000
NSEC_PER_MSEC = 1_000_000


class Sim:
    """The objects of one run: world, kernels by level, shared trace sink and moments.

    ``trace``: keep KVM's trace records for the run's ``trace`` (the first
    ``kvmclock.limits.TRACE_CAP``); ``events``: a writable text stream that gets every
    event-log entry as a JSON line (:mod:`kvmclock.sim.eventlog`).  KVM traces only when
    one of them asks (``KvmModule.trace_enabled``)."""

    def __init__(
        self,
        profile: str | Profile,
        seed: int,
        *,
        hz: int,
        sample_ms: int,
        fault: str | None,
        spin_limit: int,
        trace: bool = False,
        events: TextIO | None = None,
    ) -> None:
        self.world = World(seed)
        self.event_log = EventLog(self.world, keep_trace=trace, stream=events)
        self.profile = profile
        self.hz = hz
        self.sample_ms = sample_ms
        self.fault = fault
        self.spin_limit = spin_limit
        self.kernels: list[Kernel] = []
        self.vmms: list[Vmm] = []
        #: the kept trace records (every KVM module's ``trace_records``)
        self.trace: TraceRecords = self.event_log.trace
        #: scenario and KVM key moments ``[t_ns, level, text]``: the first
        #: ``kvmclock.limits.MOMENTS_CAP`` (``moments_dropped`` counts the rest)
        self.moments: list[list[Any]] = []
        self.moments_dropped = 0
        self.recorder: Recorder | None = None

    def _load_kvm(self, kernel: Kernel) -> KvmModule:
        mod = kernel.load_kvm()
        # the patch-09 read loops exist only where KVM asks the timekeeper itself
        mod.fault = self.fault if mod.cfg.kvm_host_clock == "timekeeper" else None
        mod.spin_limit = self.spin_limit
        # one chronological sink for the whole stack
        mod.trace_enabled = self.event_log.wanted
        for rec in mod.trace_records:
            self.trace.append(rec)
        mod.trace_records = self.trace
        for m in mod.moments:
            self._keep_moment(m)
        mod.moments = self.moments
        return mod

    def _keep_moment(self, m: list[Any]) -> None:
        if len(self.moments) < limits.MOMENTS_CAP:
            self.moments.append(m)
        else:
            self.moments_dropped += 1

    def host(
        self,
        *,
        cpus: int,
        tsc_khz: int,
        tsc_skew_cycles: int = 0,
        kvm: bool = True,
        tsc_scaling: str = "vmx",
        name: str = "L0",
        drift_ppm: int | Fraction | float | str = 0,
        hpet: bool = True,
        acpi_pm: bool = True,
        rtc_epoch_ns: int | None = None,
        uptime_ns: int = 0,
        nohz: bool = False,
        tsc_reliable: bool = False,
    ) -> Kernel:
        """Level 0: a physical machine (HPET and ACPI PM unless switched off), its kernel
        ``name`` booted, KVM loaded.  ``tsc_khz`` nominal kHz, ``tsc_skew_cycles`` the spread
        of the CPUs' boot TSCs, ``drift_ppm`` the true rate error, ``tsc_scaling`` the CPUs'
        TSC-scaling hardware (``vmx``, ``svm`` or ``none``), ``rtc_epoch_ns`` the wall clock
        at true time 0 (None: drawn from the seed; hosts of one scenario share one),
        ``uptime_ns`` how long the host has been up at true time 0 (its TSC counted and its
        CLOCK_MONOTONIC/BOOTTIME/RAW start there), ``nohz`` its kernel's tick mode (NO_HZ
        idle, ``Kernel(nohz=True)``, or the periodic tick), ``tsc_reliable`` the kernel's
        ``tsc=reliable`` (the machine feature "tsc_reliable": no watchdog on the TSC)."""
        m = PhysicalMachine(
            self.world,
            cpus,
            tsc_khz=tsc_khz,
            tsc_skew_cycles=tsc_skew_cycles,
            drift_ppm=drift_ppm,
            hpet=hpet,
            acpi_pm=acpi_pm,
            rtc_epoch_ns=rtc_epoch_ns,
            tsc_scaling=tsc_scaling,
            uptime_ns=uptime_ns,
            features=DEFAULT_FEATURES | {"tsc_reliable"} if tsc_reliable else None,
        )
        k = Kernel(m, self.profile, name=name, hz=self.hz, nohz=nohz)
        k.boot()
        self.kernels.append(k)
        if kvm:
            self._load_kvm(k)
        return k

    def guest(
        self,
        host: Kernel,
        *,
        vcpus: int,
        kvm: bool,
        tsc_khz: int | None = None,
        name: str | None = None,
        features: set[str] | frozenset[str] | None = None,
        clocksource_override: str | None = None,
        nohz: bool = False,
    ) -> tuple[Kvm, Kernel]:
        """A VM ``name`` (default ``L<level>``) of ``vcpus`` on ``host`` (vCPU i on host CPU i
        mod n) created by a :class:`~kvmclock.vmm.Vmm` (appended to :attr:`vmms`), its vCPUs
        started, and a guest kernel booted on it (kvm-clock unless ``clocksource_override``
        or ``features`` say otherwise; ``nohz``: NO_HZ idle), optionally running KVM
        itself."""
        level = host.level + 1
        vm_name = name if name is not None else f"L{level}"
        vmm = Vmm(host, name=vm_name, vcpus=vcpus, tsc_khz=tsc_khz, features=features)
        self.vmms.append(vmm)
        vm = vmm.vm
        g = Kernel(
            vm.machine,
            self.profile,
            name=vm_name,
            hz=self.hz,
            clocksource_override=clocksource_override,
            nohz=nohz,
        )
        vmm.guest = g
        g.boot()
        self.kernels.append(g)
        if kvm:
            self._load_kvm(g)
        return vm, g

    def start_sampling(self) -> None:
        """Start the periodic guest reads (every ``sample_ms`` of true time)."""
        self.recorder = Recorder(self.kernels, self.sample_ms * NSEC_PER_MSEC)

    def at(self, t_ns: int, fn: Callable[[], object]) -> None:
        """Schedule a scenario action."""
        self.world.at(t_ns, fn)

    def moment(self, level: int, text: str) -> None:
        """A scenario-level key moment (also in the world log, which orders all moments)."""
        self._keep_moment([self.world.now_ns, level, text])
        self.world.log("moment", level=level, text=text)


@dataclass(frozen=True)
class Scenario:
    """A built-in scenario: ``name``, one-line ``description``, ``params`` (name -> default)
    and ``file`` (the checked TOML file it runs from)."""

    name: str
    description: str
    params: dict[str, Any]
    file: ScenarioFile = field(repr=False)


def _builtins() -> dict[str, Scenario]:
    out: dict[str, Scenario] = {}
    for name in builtin_names():
        sf = load_builtin(name)
        out[name] = Scenario(sf.name, sf.description, sf.defaults(), sf)
    return out


SCENARIOS: dict[str, Scenario] = _builtins()


def _scenario_file(name: Any) -> ScenarioFile:
    """A built-in scenario's name, a path to a scenario file (``.toml``) or a loaded
    :class:`ScenarioFile`."""
    if isinstance(name, ScenarioFile):
        return name
    if isinstance(name, str) and name in SCENARIOS:
        return SCENARIOS[name].file
    if isinstance(name, os.PathLike) or (
        isinstance(name, str) and (name.endswith(".toml") or os.sep in name)
    ):
        return load(os.fspath(name))
    raise ScenarioError(
        f"scenario={name!r} unknown; choose one of: {', '.join(SCENARIOS)} "
        "(or give the path of a .toml scenario file)"
    )


def _validate(
    name: Any, profile: Any, seed: Any, params: dict[str, Any]
) -> tuple[ScenarioFile, dict[str, Any]]:
    """The scenario file and the run's parameter values (ScenarioError naming the bad
    argument and the valid choices; nothing is simulated)."""
    sf = _scenario_file(name)
    try:
        resolve_profile(profile)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ScenarioError(f"seed={seed!r} must be an int")
    p = check_params(sf.name, sf.params, params)
    plan = resolve(sf, p, strict=False)
    from kvmclock.scenario.engine import check_recipes

    check_recipes(plan, sf.label, _profile_for(sf, profile, None))
    return sf, p


def _profile_for(
    sf: ScenarioFile, profile: Any, switches: Mapping[str, SwitchValue] | None
) -> Profile:
    """``profile`` with the file's ``[run] switches`` (except those ``profile`` already
    flipped), then ``switches``, applied."""
    file_switches = dict(sf.model.run.switches)
    if isinstance(profile, Profile):
        file_switches = {k: v for k, v in file_switches.items() if k not in profile.changed}
    try:
        return resolve_profile(profile, **{**file_switches, **dict(switches or {})})
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None


def run_scenario(
    name: str | ScenarioFile | os.PathLike[str],
    profile: str | Profile,
    seed: int = 0,
    *,
    trace: bool = False,
    events: str | os.PathLike[str] | TextIO | None = None,
    switches: Mapping[str, SwitchValue] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Run scenario ``name`` (a built-in's name, the path of a scenario file, or a
    :class:`~kvmclock.scenario.ScenarioFile`) under ``profile`` (a name of
    :data:`kvmclock.profiles.PROFILES` or a :class:`~kvmclock.profiles.Profile`), with the
    file's ``[run] switches`` and then ``switches`` flipped from it (a switch the Profile
    already flipped keeps its value), and ``params`` overriding the file's ``[params]``.
    Returns one run: ``scenario``, ``seed``, ``profile`` (its name, which records the flipped
    switches), ``switches`` (every switch's value), ``params``, ``duration_ns``, ``end_ns``
    (simulated ns reached), ``stopped_early`` (``end_ns < duration_ns``), ``stop_reason``
    (``"livelock in WHERE at T s"``, None when the duration was reached), ``levels`` (one
    entry per kernel: a guest's ``pvclock_stable_timeline`` covers every KVM VM it ran on, a
    host's ``masterclock_timeline`` is that of the first VM its KVM ran, and
    ``masterclock_timelines``, VM name -> timeline, is there when it ran VMs of several
    names; a timeline is a list of ``{"t_ns", "on"}`` changes, ``backwards_events`` a list of
    ``{"t_ns", "cpu", "step_ns", "stable"}``), ``moments`` (``{"t_ns", "level", "text"}``),
    ``samples`` (``{"t_ns", "level", "kernel", "skew_ns", "stable"}``, one per guest kernel
    per sample time: every sample, or when a kernel had more than
    ``kvmclock.limits.SERIES_ROWS`` an evenly spaced subset, and then ``samples_summary``
    has its exact aggregates), ``livelock``, ``stats``, ``lifecycle`` (the lifecycle records;
    empty without lifecycle actions) and ``trace`` (``{"t_ns", "level", "comm", "pid",
    "cpu", "event", "fields"}``, the first ``kvmclock.limits.TRACE_CAP`` records;
    ``trace_dropped`` counts the rest) when ``trace=True``.  ``events``, a path or a
    writable text stream, gets every event-log entry (world-log entries and KVM trace
    records, in execution order) as a JSON line while the run goes
    (:mod:`kvmclock.sim.eventlog`; a path is created or truncated, a stream is left open),
    and the run then has ``event_log`` (the counts written).  Bounds that keep memory flat
    (``kvmclock.limits``) add ``moments_dropped``/``moments_last``, ``samples_summary`` and
    a level's ``timeline_changes_dropped`` only when they are reached.  The layout is that of
    ``kvmclock/schemas/simulate.schema.json`` (docs/json.md).  Bad input raises
    ``ScenarioError`` (a ValueError; ``ScenarioFileError`` for a bad file) naming the valid
    choices, before anything is simulated; what KVM, a VMM or a recipe refuses only when the
    run reaches it raises ``ScenarioRunError`` (a ScenarioFileError) naming the timeline
    entry.  ``progress(now_ns, duration_ns)``, when given, is called as simulated time
    advances (the run is the same with or without it)."""
    from kvmclock.scenario.engine import run_plan

    sf = _scenario_file(name)
    cfg = _profile_for(sf, profile, switches)
    sf, p = _validate(sf, cfg, seed, params)
    plan = resolve(sf, p, strict=False)
    if not isinstance(events, (str, os.PathLike)):
        return run_plan(plan, cfg, seed, trace=trace, events=events, sim_factory=Sim,
                        progress=progress)
    with open(os.fspath(events), "w", encoding="utf-8") as stream:
        return run_plan(plan, cfg, seed, trace=trace, events=stream, sim_factory=Sim,
                        progress=progress)


def format_trace_lines(run: dict[str, Any]) -> list[str]:
    """The run's trace rows as ftrace text lines (``kvmclock.trace.format_line``, level column,
    ``d...`` for kvm_write_tsc_offset which the kernel traces with irqs off)."""
    from kvmclock.trace import format_line

    rows = run.get("trace")
    if rows is None:
        raise ValueError("run has no 'trace' rows: call run_scenario(..., trace=True)")
    return [
        format_line(
            str(r["comm"]),
            int(r["pid"]),
            int(r["cpu"]),
            int(r["t_ns"]),
            str(r["event"]),
            str(r["fields"]),
            flags="d..." if r["event"] == "kvm_write_tsc_offset" else "....",
            level=int(r["level"]),
        )
        for r in rows
    ]

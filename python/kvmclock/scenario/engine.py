"""The scenario engine: builds what a resolved scenario (:class:`~kvmclock.scenario.loader.Plan`)
describes, schedules its timeline on the world, runs it and returns one run dict (the
``simulate --json`` run: ``kvmclock.sim.run_scenario``).

Order of construction (the built-in scenarios' results depend on it, so it is fixed):
every ``[[host]]`` at true time 0 in file order (a ``PhysicalMachine`` with its kernel booted
and KVM loaded; all hosts share the first host's wall-clock epoch), then the VMs without
``created_at_s`` in file order, the k-th at k ms (the world runs up to that time, then a VMM
creates the VM and its vCPUs and the guest kernel boots), then sampling starts; VMs with
``created_at_s`` and the timeline entries are scheduled as world events at their times, VMs
first.  Nothing reads the host's wall clock: the run is a pure function of (scenario,
profile, seed, params).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any, TextIO, cast

from kvmclock import limits
from kvmclock.errors import LivelockDetected, ModelLimitExceeded, ScenarioError
from kvmclock.scenario.loader import NSEC_PER_SEC, Plan, Step, fmt_number
from kvmclock.scenario.model import LIFECYCLE_ACTIONS

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel
    from kvmclock.profiles import Profile
    from kvmclock.sim.scenarios import Sim
    from kvmclock.vmm import Vmm

__all__ = ["check_recipes", "run_plan"]


def check_recipes(plan: Plan, label: str, cfg: Profile) -> None:
    """Every recipe of the timeline exists with its options and can run under ``cfg`` (a
    ScenarioFileError naming the entry's recipe key otherwise: e.g. KVM_CLOCK_REALTIME
    under a profile before Linux 5.16)."""
    from kvmclock.errors import ScenarioFileError

    specs = [s for s in plan.steps if "recipe" in s.args]
    if not specs:
        return
    from kvmclock.vmm import recipes

    for s in specs:
        name, options = s.args["recipe"]
        try:
            recipes.get(name, **options).check(cfg)
        except ValueError as exc:
            raise ScenarioFileError(label, f"{s.key}.recipe", str(exc)) from None


def run_plan(
    plan: Plan,
    cfg: Profile,
    seed: int,
    *,
    trace: bool,
    sim_factory: Callable[..., Sim],
    progress: Callable[[int, int], None] | None = None,
    events: TextIO | None = None,
) -> dict[str, Any]:
    """Run ``plan`` under profile ``cfg`` with ``seed``; the run dict (see
    :func:`kvmclock.sim.run_scenario`) with ``lifecycle`` (the lifecycle records).
    ``progress(now_ns, duration_ns)``, when given, is called as the run advances (the same
    events in the same order: ``World.run_until`` in steps of 1/200 of the duration).
    ``events``, a writable text stream, gets every event-log entry as a JSON line
    (:mod:`kvmclock.sim.eventlog`)."""
    from kvmclock.kvm.x86 import MasterclockLivelock, TimeScaleLivelock

    sim = sim_factory(
        cfg,
        seed,
        hz=plan.hz,
        sample_ms=plan.sample_ms,
        fault=plan.fault,
        spin_limit=plan.spin_limit,
        trace=trace,
        events=events,
    )
    eng = _Engine(sim, plan)
    livelock: dict[str, Any] | None = None
    limit_stop: str | None = None
    try:
        eng.build()
        eng.schedule()
        if progress is not None:
            step_ns = max(1, plan.duration_ns // 200)
            while sim.world.now_ns < plan.duration_ns:
                sim.world.run_until(min(plan.duration_ns, sim.world.now_ns + step_ns))
                progress(sim.world.now_ns, plan.duration_ns)
        elif plan.duration_ns > sim.world.now_ns:
            sim.world.run_until(plan.duration_ns)
    except LivelockDetected as exc:
        kvm_loop = exc if isinstance(exc, (MasterclockLivelock, TimeScaleLivelock)) else None
        lvl = kvm_loop.level if kvm_loop is not None else -1
        livelock = {
            "t_ns": kvm_loop.t_ns if kvm_loop is not None else sim.world.now_ns,
            "level": lvl,
            "where": kvm_loop.where if kvm_loop is not None else "timekeeper",
            "spins": kvm_loop.spins if kvm_loop is not None else 0,
            "message": str(exc),
        }
        sim.moment(
            lvl,
            f"LIVELOCK in {livelock['where']} after {livelock['spins']} spins; simulation stopped",
        )
    except ModelLimitExceeded as exc:
        limit_stop = (
            f"model limit in {exc.where} at {_fmt_s(exc.t_ns)}: {exc.needed} needed, "
            f"at most {exc.limit}"
        )
        sim.moment(max(exc.level, 0), f"MODEL LIMIT: {exc}; simulation stopped")
    if sim.recorder is None:
        sim.start_sampling()
    lifecycle: list[dict[str, Any]] = []
    if eng.lifecycle is not None:
        eng.lifecycle.finish(sim.world.now_ns)
        eng.unfinished_moments()
        lifecycle = list(eng.lifecycle.records)
    sim.event_log.close()
    level_of = {k.name: k.level for k in sim.kernels}
    moments = eng.moments.finish(level_of)
    assert sim.recorder is not None
    run: dict[str, Any] = {
        "scenario": plan.name,
        "seed": seed,
        "profile": cfg.name,
        "switches": dict(cfg.values),
        "params": {
            k: (v if isinstance(v, (int, str)) or v is None else str(v))
            for k, v in plan.params.items()
        },
        "duration_ns": plan.duration_ns,
        "end_ns": sim.world.now_ns,
        "stopped_early": sim.world.now_ns < plan.duration_ns,
        "stop_reason": (
            f"livelock in {livelock['where']} at {_fmt_s(int(livelock['t_ns']))}"
            if livelock is not None
            else limit_stop
        ),
        "levels": [_level_entry(sim, k) for k in sim.kernels],
        "moments": moments,
        "samples": [_sample(row) for row in sim.recorder.samples],
        "livelock": livelock,
        "stats": {
            "events": sim.world.events_processed,
            "guest_reads": sum(s.guest_reads for s in sim.recorder.by_kernel.values()),
        },
        "lifecycle": lifecycle,
    }
    if trace:
        run["trace"] = [
            {"t_ns": t, "level": lvl, "comm": comm, "pid": pid, "cpu": cpu, "event": ev,
             "fields": f}
            for t, lvl, comm, pid, cpu, ev, f in sim.trace
        ]
        if sim.event_log.trace_dropped:
            run["trace_dropped"] = sim.event_log.trace_dropped
    # the bounds (kvmclock.limits): their keys only when one was reached, so that a run
    # below every bound keeps its JSON
    if eng.moments.dropped:
        run["moments_dropped"] = eng.moments.dropped
        run["moments_last"] = eng.moments.last(level_of)
    if sim.recorder.decimated:
        run["samples_summary"] = [
            _summary(s) for s in sim.recorder.summaries.values()
        ]
    if events is not None:
        run["event_log"] = {
            "log_entries": sim.event_log.log_entries,
            "trace_records": sim.event_log.trace_records,
            "lines": sim.event_log.lines,
        }
    return run


def _sample(row: list[Any]) -> dict[str, Any]:
    """A ``Recorder`` sample row ``[t_ns, level, skew_ns, stable, kernel]`` as the run's
    object."""
    t, lvl, skew, stable, name = row
    return {"t_ns": t, "level": lvl, "kernel": name, "skew_ns": skew, "stable": bool(stable)}


def _summary(s: Any) -> dict[str, Any]:
    """One kernel's :class:`~kvmclock.sim.metrics.SampleSummary` as a ``samples_summary``
    entry."""
    from kvmclock.sim.metrics import SKEW_HISTOGRAM_EDGES_NS as edges

    return {
        "kernel": s.kernel,
        "level": s.level,
        "samples": s.samples,
        "kept": len(s.rows),
        "stride": s.stride,
        "stable": s.stable,
        "unstable": s.unstable,
        "skew_min_ns": s.skew_min_ns,
        "skew_max_ns": s.skew_max_ns,
        "skew_histogram": [
            {"above_ns": lo, "max_ns": hi, "count": n}
            for lo, hi, n in zip([None, *edges], [*edges, None], s.skew_histogram, strict=True)
        ],
        "first": None if s.first is None else _sample(s.first[1:]),
        "worst": None if s.worst is None else _sample(s.worst[1:]),
    }


def _fmt_s(ns: int) -> str:
    """``ns`` as exact seconds (``1.000001 s``)."""
    return fmt_number(Fraction(ns, NSEC_PER_SEC)) + " s"


def _timeline(changes: list[list[Any]]) -> list[dict[str, Any]]:
    """A model timeline (``[t_ns, state]`` changes: ``Kvm.masterclock_timeline``) as the
    run's ``[{"t_ns", "on"}]``."""
    return [{"t_ns": int(t), "on": bool(on)} for t, on in changes]


def _backwards_events(events: list[list[Any]]) -> list[dict[str, Any]]:
    """``LevelStats.backwards_events`` rows as the run's named objects."""
    return [
        {"t_ns": t, "cpu": cpu, "step_ns": step, "stable": bool(stable)}
        for t, cpu, step, stable in events
    ]


class _Engine:
    def __init__(self, sim: Sim, plan: Plan) -> None:
        self.sim = sim
        self.plan = plan
        self.kernels: dict[str, Kernel] = {}
        self.vmms: dict[str, Vmm] = {}
        self.lifecycle: Any = None
        self._step: Step | None = None  # the entry being scheduled
        if any(s.action in LIFECYCLE_ACTIONS for s in plan.steps):
            try:
                from kvmclock.vmm.lifecycle import Lifecycle
            except ImportError:
                raise ScenarioError(
                    f"scenario {plan.name!r}: its lifecycle actions need "
                    "kvmclock.vmm.lifecycle, which this installation lacks"
                ) from None
            self.lifecycle = Lifecycle(sim.world, moment=self._lifecycle_moment)
        #: the running lifecycle entry's ``note``, not yet used: it replaces the text of the
        #: first moment the entry gives
        self._note: str | None = None
        #: the moments and printks logged while a timeline entry runs, with the key moment
        #: each gave (None: not one); cleared when no entry runs
        self._action_log: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        #: index in ``_action_log`` where the running timeline entry began
        self._action_start: int | None = None
        #: the run's key moments, built as the world logs
        self.moments = _MomentLog()
        sim.world.listeners.append(self._logged)

    def _logged(self, ev: dict[str, Any]) -> None:
        """A world ``listeners`` callback: the entry's key moment, if it gives one, and the
        entry kept for :meth:`_own` while a timeline entry runs."""
        m = self.moments.entry(ev)
        if self._action_start is not None and ev.get("kind") in ("moment", "printk"):
            self._action_log.append((ev, m))

    # -- construction ---------------------------------------------------------------------
    def build(self) -> None:
        sim, plan = self.sim, self.plan
        epoch: int | None = None
        for h in plan.hosts:
            k = sim.host(
                name=h.name,
                cpus=h.cpus,
                tsc_khz=h.tsc_khz,
                tsc_skew_cycles=h.tsc_skew_cycles,
                tsc_scaling=h.tsc_scaling,
                drift_ppm=h.drift_ppm,
                hpet=h.hpet,
                acpi_pm=h.acpi_pm,
                rtc_epoch_ns=epoch,
                uptime_ns=h.uptime_ns,
                nohz=h.nohz,
                tsc_reliable=h.tsc_reliable,
            )
            if epoch is None:
                epoch = int(getattr(k.machine, "rtc_epoch_ns", 0))
            self.kernels[h.name] = k
        for vm in plan.vms:
            if vm.at_start:
                sim.world.run_until(vm.created_ns)
                self._create(vm.name)
        sim.start_sampling()

    def _create(self, name: str) -> None:
        vm = next(v for v in self.plan.vms if v.name == name)
        _kvm, g = self.sim.guest(
            self.kernels[vm.host],
            name=vm.name,
            vcpus=vm.vcpus,
            kvm=vm.kvm,
            tsc_khz=vm.tsc_khz,
            features=vm.features,
            clocksource_override=vm.clocksource,
            nohz=vm.nohz,
        )
        self.kernels[vm.name] = g
        self.vmms[vm.name] = self.sim.vmms[-1]

    # -- the timeline ---------------------------------------------------------------------
    def schedule(self) -> None:
        sim = self.sim
        for vm in self.plan.vms:
            if not vm.at_start:
                sim.at(vm.created_ns, lambda n=vm.name: self._create(n))  # type: ignore[misc]
        for step in self.plan.steps:
            if step.t_ns < sim.world.now_ns:
                continue  # before the start (only with overridden parameters): skipped
            self._step = step
            getattr(self, f"_do_{step.action}")(step)

    def at(self, t_ns: int, fn: Callable[[], object]) -> None:
        """Schedule ``fn`` for the entry being scheduled, under :meth:`guarded`."""
        assert self._step is not None
        self.sim.at(t_ns, self.guarded(self._step, fn))

    def guarded(self, step: Step, fn: Callable[[], object]) -> Callable[[], None]:
        """``fn`` run for timeline entry ``step``: a refusal it meets at run time (a
        ``ValueError`` from KVM, a VMM or a recipe: an ioctl's -EINVAL, ``RecipeError``)
        becomes a :class:`~kvmclock.errors.ScenarioRunError` naming the entry (exit 2),
        never an internal error; a livelock (a result) and anything else pass through.
        The steps the entry schedules for later on the world (``kvmclock.vmm``: a
        migration's stop and restore, a recipe's vCPUs restored in turn, a host's resume)
        run under the same guard."""
        from kvmclock.errors import ScenarioRunError
        from kvmclock.machine.world import World

        world = self.sim.world

        def later(dt_ns: int, f: Callable[..., object], *args: Any) -> Any:
            if str(getattr(f, "__module__", "")).startswith("kvmclock.vmm"):
                inner = functools.partial(f, *args)
                return World.after(world, dt_ns, self.guarded(step, inner))
            return World.after(world, dt_ns, f, *args)

        def run() -> None:
            had = "after" in vars(world)
            saved = vars(world).get("after")
            setattr(world, "after", later)  # noqa: B010 - an instance attribute, undone below
            outer, self._action_start = self._action_start, len(self._action_log)
            self.sim.event_log.hold()
            try:
                fn()
            except ScenarioError:
                raise
            except ValueError as exc:
                when = _secs(step.t_ns)
                now = world.now_ns
                at = "" if now == step.t_ns else f", in its later step at {_secs(now)}"
                raise ScenarioRunError(
                    self.plan.label or self.plan.name,
                    step.key,
                    f"{step.action} at {when} refused at run time{at}: {exc}",
                ) from None
            finally:
                self._action_start = outer
                if outer is None:
                    self._action_log.clear()
                self.sim.event_log.release()
                if had:
                    setattr(world, "after", saved)  # noqa: B010
                else:
                    delattr(world, "after")

        return run

    def _vmm(self, name: str) -> Vmm:
        return self.vmms[name]

    def _level(self, vm: str) -> int:
        g = self._vmm(vm).guest
        return g.level if g is not None else 0

    def _own(self, level: int, text: str) -> None:
        """The running timeline entry's own key moment, recorded once its kernel calls are
        done (its text may say what they did): every key moment and printk those calls
        logged at this time gets ``cause`` = ``text``, so that a reader puts the entry's
        moment first (``render.text.cause_first``)."""
        world = self.sim.world
        start = self._action_start
        self.sim.moment(level, text)
        if start is None:
            return
        now = world.now_ns
        for ev, m in self._action_log[start:-1]:
            if ev.get("t_ns") == now:
                ev.setdefault("cause", text)
                if m is not None:
                    m.setdefault("cause", str(ev["cause"]))

    def _moment_at(self, step: Step, level: int, default: str) -> None:
        self.at(step.t_ns, lambda: self.sim.moment(level, step.note or default))

    def _do_moment(self, step: Step) -> None:
        a = step.args
        level = 0
        sim = self.sim

        def note() -> None:
            lvl = level
            if a["vm"] is not None:
                lvl = self._level(a["vm"])
            elif a["host"] is not None:
                lvl = self.kernels[a["host"]].level
            sim.moment(lvl, step.note or a["text"])

        self.at(step.t_ns, note)

    def _do_tsc_jump(self, step: Step) -> None:
        from kvmclock.machine.physical import PhysicalMachine

        a = step.args
        host = a["host"]
        machine = cast(PhysicalMachine, self.kernels[host].machine)
        cpus = list(range(len(machine.cpus))) if a["cpus"] == "all" else a["cpus"]
        for c in cpus:
            machine.cpus[c].add_tsc_jump(step.t_ns, a["cycles"])
        amount = (
            f"{fmt_number(abs(a['ms']))} ms of cycles"
            if a["ms"] is not None
            else f"{abs(a['cycles'])} cycles"
        )
        way = "jumps forward by" if a["cycles"] >= 0 else "steps back by"
        if a["cpus"] == "all":
            who = "every TSC"
        elif len(cpus) == 1:
            who = f"CPU {cpus[0]}'s TSC"
        else:
            who = f"the TSCs of CPUs {', '.join(map(str, cpus))}"
            way = way.replace("jumps", "jump").replace("steps", "step")
        self._moment_at(step, self.kernels[host].level, f"{host}: {who} {way} {amount}")

    def _do_tsc_write(self, step: Step) -> None:
        a = step.args

        def write() -> None:
            vm = self._vmm(a["vm"]).vm
            if "value" in a:
                vm.write_tsc(a["vcpu"], a["value"], host_initiated=a["host_initiated"])
                text = f"vCPU {a['vcpu']}: TSC write of {a['value']}"
            else:
                ref = a["relative_to"]

                def ref_tsc() -> int:
                    return int(vm.machine.cpus[ref].read_tsc()) + int(a["ahead_cycles"])

                if a["vcpu"] == "all":
                    for v in vm.vcpus:
                        if v.vcpu_id != ref:
                            vm.write_tsc(
                                v.vcpu_id, ref_tsc(), host_initiated=a["host_initiated"]
                            )
                    text = f"every vCPU but {ref}: TSC write of vCPU {ref}'s TSC"
                else:
                    vm.write_tsc(a["vcpu"], ref_tsc(), host_initiated=a["host_initiated"])
                    text = (
                        f"vCPU {a['vcpu']}: TSC write of vCPU {ref}'s TSC + "
                        f"{a['ahead_cycles']} cycles"
                    )
            if not a["host_initiated"]:
                text += " (guest-initiated)"
            self._own(self._level(a["vm"]), step.note or text)

        self.at(step.t_ns, write)

    def _do_vcpu_hotplug(self, step: Step) -> None:
        from kvmclock.timekeeping.clocksource import MSR_KVM_SYSTEM_TIME_NEW

        a = step.args

        def hotplug() -> None:
            vmm = self._vmm(a["vm"])
            vm = vmm.vm
            v = vm.create_vcpu()
            vm.machine.run_on_cpu(v.vcpu_id, lambda: None)
            g = vmm.guest
            # the guest's CPU-online path: kvm_register_clock on the new CPU
            if g is not None and "kvmclock" in vm.machine.features:
                vm.machine.wrmsr(v.vcpu_id, MSR_KVM_SYSTEM_TIME_NEW, g.pvti_offset(v.vcpu_id) | 1)
            self._own(
                self._level(a["vm"]),
                step.note or f"vCPU {v.vcpu_id} hotplugged (host-initiated TSC write of 0)",
            )

        self.at(step.t_ns, hotplug)

    def _do_vcpu_migrate(self, step: Step) -> None:
        a = step.args

        def migrate() -> None:
            self._vmm(a["vm"]).vm.migrate_vcpu(a["vcpu"], a["host_cpu"])
            if step.note:
                self._own(self._level(a["vm"]), step.note)

        self.at(step.t_ns, migrate)

    def _do_rotate_vcpus(self, step: Step) -> None:
        a = step.args
        turn = [0]

        def rotate() -> None:
            vmm = self._vmm(a["vm"])
            vm = vmm.vm
            n = len(vmm.host.machine.cpus)
            turn[0] += 1
            for v in vm.vcpus:
                vm.migrate_vcpu(v.vcpu_id, (v.vcpu_id + turn[0]) % n)

        self.sim.world.every(a["period_ns"], rotate, start_ns=step.t_ns)
        if step.note:
            note = step.note
            self.at(step.t_ns, lambda: self.sim.moment(self._level(a["vm"]), note))

    def _do_set_clock(self, step: Step) -> None:
        from kvmclock.kvm.x86 import KVM_CLOCK_REALTIME

        a = step.args

        def set_clock() -> None:
            vmm = self._vmm(a["vm"])
            vm = vmm.vm
            level = self._level(a["vm"])
            if not a["realtime"]:
                target = vm.get_clock().clock + a["step_ns"]
                vm.set_clock(target)
                vm.machine.run_on_cpu(0, lambda: None)
                st = vm.vcpus[0].hv_clock.system_time
                self._own(
                    level,
                    step.note
                    or f"KVM_SET_CLOCK flags=0 clock={target}: next system_time={st} "
                    f"(diff {st - target} ns)",
                )
                return
            host = vmm.host
            real = host.run_on_cpu(0, host.timekeeper.ktime_get_real_ns)
            target = vm.get_clock().clock + a["step_ns"]
            try:
                vm.set_clock(target, KVM_CLOCK_REALTIME, real - a["lag_ns"])
            except ValueError as exc:  # a profile without switch kvm_clock_realtime
                self._own(level, f"KVM_SET_CLOCK flags=REALTIME refused: {exc}")
                return
            vm.machine.run_on_cpu(0, lambda: None)
            st = vm.vcpus[0].hv_clock.system_time
            self._own(
                level,
                step.note
                or f"KVM_SET_CLOCK flags=REALTIME realtime {a['lag_text']} s behind: "
                f"system_time={st} (advanced {st - target} ns)",
            )

        self.at(step.t_ns, set_clock)

    def _do_get_clock(self, step: Step) -> None:
        a = step.args

        def get() -> None:
            d = self._vmm(a["vm"]).vm.get_clock()
            self._own(
                self._level(a["vm"]),
                step.note
                or f"KVM_GET_CLOCK clock={d.clock} flags={d.flags:#x} realtime={d.realtime} "
                f"host_tsc={d.host_tsc}",
            )

        self.at(step.t_ns, get)

    def _do_tick_in_read_section(self, step: Step) -> None:
        a = step.args
        sim = self.sim
        host = self.kernels[a["host"]]
        tk = host.timekeeper
        writer_cpu = 1 % len(host.machine.cpus)

        def concurrent_tick() -> None:
            tk.interleave = None  # one shot
            before = tk.seq.sequence
            host.run_on_cpu(writer_cpu, tk.update_wall_time)
            sim.moment(
                host.level,
                f"{host.name}: tick on CPU {writer_cpu} inside a tk_core.seq read section "
                f"(seq {before} -> {tk.seq.sequence})",
            )

        def trigger() -> None:
            vm = self._vmm(a["vm"]).vm
            vm.write_tsc(0, int(vm.machine.cpus[0].read_tsc()))
            tk.interleave = concurrent_tick
            try:
                vm.machine.run_on_cpu(0, lambda: None)
            finally:
                tk.interleave = None

        # At an exact tick time, scheduled before the tick's own event: the concurrent tick
        # does the update (a full cycle_interval has elapsed), the regular one finds nothing.
        tick = (NSEC_PER_SEC + self.plan.hz // 2) // self.plan.hz
        self.at((step.t_ns // tick) * tick, trigger)

    # -- lifecycle (kvmclock.vmm.lifecycle) -----------------------------------------------
    def _recipe(self, spec: tuple[str, dict[str, Any]]) -> Any:
        from kvmclock.vmm import recipes

        name, options = spec
        return recipes.get(name, **options)

    def _host_kernel(self, name: str) -> Kernel:
        return self.kernels[name]

    def _lifecycle_moment(self, level: int, text: str) -> None:
        """The ``moment`` callback of the Lifecycle: a key moment at ``level``; the first one
        of an entry with a ``note`` says the note instead."""
        if self._note is not None:
            text, self._note = self._note, None
        self.sim.moment(level, text)

    def _lifecycle_at(self, step: Step, level: Callable[[], int], fn: Callable[[], object]) -> None:
        """Run lifecycle call ``fn`` at the entry's time; its ``note`` replaces the first
        moment the call gives (or is a moment at ``level()`` when it gives none then)."""

        def run() -> None:
            self._note = step.note
            try:
                fn()
            finally:
                note, self._note = self._note, None
            if note is not None:
                self.sim.moment(level(), note)

        self.at(step.t_ns, run)

    def _do_pause(self, step: Step) -> None:
        a = step.args
        self._lifecycle_at(
            step,
            lambda: self._level(a["vm"]),
            lambda: self.lifecycle.pause(self._vmm(a["vm"]), self._recipe(a["recipe"])),
        )

    def _do_resume(self, step: Step) -> None:
        a = step.args
        self._lifecycle_at(
            step,
            lambda: self._level(a["vm"]),
            lambda: self.lifecycle.resume(self._vmm(a["vm"]), self._recipe(a["recipe"])),
        )

    def _do_snapshot(self, step: Step) -> None:
        a = step.args
        self._lifecycle_at(
            step,
            lambda: self._level(a["vm"]),
            lambda: self.lifecycle.snapshot(
                self._vmm(a["vm"]), a["name"], self._recipe(a["recipe"])
            ),
        )

    def _do_restore(self, step: Step) -> None:
        a = step.args
        self._lifecycle_at(
            step,
            lambda: self._level(a["vm"]),
            lambda: self.lifecycle.restore(
                a["snapshot"],
                self._vmm(a["vm"]),
                self._host_kernel(a["host"]),
                self._recipe(a["recipe"]),
            ),
        )

    def _do_migrate(self, step: Step) -> None:
        a = step.args
        self._lifecycle_at(
            step,
            lambda: self._level(a["vm"]),
            lambda: self.lifecycle.migrate(
                self._vmm(a["vm"]),
                self._host_kernel(a["host"]),
                self._recipe(a["recipe"]),
                a["downtime_ns"],
                a["precopy_ns"],
            ),
        )

    def _do_host_suspend(self, step: Step) -> None:
        from kvmclock.kernel import RESUME_TSC_CYCLES

        a = step.args

        def suspend() -> None:
            host = self._host_kernel(a["host"])
            on_it = [v for v in self.vmms.values() if v.host is host]
            cycles = a["tsc_cycles"] if a["tsc_cycles"] is not None else RESUME_TSC_CYCLES
            self.lifecycle.host_suspend(host, on_it, a["duration_ns"], cycles)

        self._lifecycle_at(step, lambda: self._host_kernel(a["host"]).level, suspend)

    def unfinished_moments(self) -> None:
        """After ``Lifecycle.finish``: a key moment (now, the run's end) for every action
        the run ended in the middle of (its record has ``"completed": false``)."""
        if self.lifecycle is None:
            return
        for rec in self.lifecycle.records:
            if rec.get("completed", True):
                continue
            k = self.kernels.get(str(rec["vm"]))
            level = k.level if k is not None else 0
            what = str(rec["action"]).replace("_", " ")
            reason = str(rec.get("reason") or "not completed")
            self.sim.moment(level, f"VM {rec['vm']}: {what} {reason}")


# --------------------------------------------------------------------------------------------
# the run dict
# --------------------------------------------------------------------------------------------
def _secs(ns: int) -> str:
    return fmt_number(Fraction(ns, NSEC_PER_SEC)) + " s"


def _own_vm(sim: Sim, k: Kernel) -> Any:
    """The KVM VM whose machine ``k`` runs on (None for a host kernel)."""
    if k.level == 0:
        return None
    for other in sim.kernels:
        if other.kvm is None:
            continue
        for vm in other.kvm.vm_list:
            if vm.machine is k.machine:
                return vm
    return None


def _merge(timelines: list[list[list[Any]]]) -> list[list[Any]]:
    """Timelines of ``[t_ns, state]`` changes, one per KVM VM in the order they were
    created, as one: time-ordered (stable: creation order at equal times), an entry that
    repeats the state before it dropped."""
    out: list[list[Any]] = []
    for e in sorted((list(e) for tl in timelines for e in tl), key=lambda e: e[0]):
        if not out or bool(out[-1][1]) != bool(e[1]):
            out.append(e)
    return out


def _guest_vms(sim: Sim, k: Kernel) -> list[Any]:
    """Every KVM VM guest kernel ``k`` ran on, in order: its VMM's ``vm_history`` (a restore
    or a migration adds a VM); the VM under it when no VMM drove it."""
    for vmm in sim.vmms:
        if vmm.guest is k:
            return list(vmm.vm_history)
    own = _own_vm(sim, k)
    return [own] if own is not None else []


def _hosted_vms(sim: Sim, k: Kernel) -> dict[str, list[Any]]:
    """VM name -> the KVM VMs of that name host kernel ``k``'s KVM ran (a VM restored on
    the same host twice has two), in the order the VMMs were created."""
    out: dict[str, list[Any]] = {}
    if k.kvm is None:
        return out
    seen: set[int] = set()
    for vmm in sim.vmms:
        for vm in vmm.vm_history:
            if vm.module is k.kvm:
                out.setdefault(vmm.name, []).append(vm)
                seen.add(id(vm))
    for vm in k.kvm.vm_list:
        if id(vm) not in seen:
            out.setdefault(vm.name, []).append(vm)
    return out


def _level_entry(sim: Sim, k: Kernel) -> dict[str, Any]:
    """One ``levels`` entry.  A guest's ``pvclock_stable_timeline`` covers every VM it ran
    on (restores, migrations); a host's ``masterclock_timeline`` is that of the first VM its
    KVM ran (every VM of that name), and when it ran VMs of several names
    ``masterclock_timelines`` (VM name -> timeline) has each (the key is absent otherwise,
    so that runs with one VM per KVM keep their JSON)."""
    own_vm = k.kvm.vm_list[0] if k.kvm is not None and k.kvm.vm_list else None
    host_vm = _own_vm(sim, k)
    assert sim.recorder is not None
    st = sim.recorder.stats_of(k)
    guest_vms = _guest_vms(sim, k) if k.level > 0 else []
    stable_tl = _merge([vm.pvclock_stable_timeline for vm in guest_vms])
    hosted = {
        name: _merge([vm.masterclock_timeline for vm in vms])
        for name, vms in _hosted_vms(sim, k).items()
    }
    entry: dict[str, Any] = {
        "level": k.level,
        "name": k.name,
        "clocksource": k.timekeeper.clock.name,
        "masterclock": own_vm.use_master_clock if own_vm is not None else None,
        "pvclock_stable": (bool(stable_tl[-1][1]) if stable_tl else False)
        if host_vm is not None or guest_vms
        else None,
        "masterclock_timeline": _timeline(next(iter(hosted.values()), [])),
        "pvclock_stable_timeline": _timeline(stable_tl),
        "masterclock_updates": k.kvm.counters["masterclock_updates"] if k.kvm is not None else 0,
        "notifier_calls": k.kvm.counters["notifier_calls"] if k.kvm is not None else 0,
        "gtod_copies": k.kvm.counters["gtod_copies"] if k.kvm is not None else 0,
        "guest_backwards": st.guest_backwards,
        "guest_backwards_stable": st.guest_backwards_stable,
        "guest_backwards_reanchor": st.guest_backwards_reanchor,
        "max_reanchor_step_ns": st.max_reanchor_step_ns,
        "guest_backwards_clamped": st.guest_backwards_clamped,
        "guest_backwards_unclamped": st.guest_backwards_unclamped,
        "backwards_events": _backwards_events(st.backwards_events),
        "guest_reads": st.guest_reads,
        "max_cross_vcpu_skew_ns": st.max_cross_vcpu_skew_ns,
        "last_value_clamp_hits": st.last_value_clamp_hits,
        "timekeeping_updates": k.counters["timekeeping_updates"],
        "tsc_unstable": k.tsc_unstable,
        "vcpus": len(k.machine.cpus),
        "kvm_entries": k.kvm.counters["entries"] if k.kvm is not None else 0,
        "clock_definitions": dict(st.max_abs),
    }
    if len(hosted) > 1:
        entry["masterclock_timelines"] = {name: _timeline(tl) for name, tl in hosted.items()}
    # changes past kvmclock.limits.TIMELINE_CAP of the VMs behind this entry's timelines
    dropped = sum(vm.timeline_dropped["pvclock_stable_timeline"] for vm in guest_vms) + sum(
        vm.timeline_dropped["masterclock_timeline"]
        for vms in _hosted_vms(sim, k).values()
        for vm in vms
    )
    if dropped:
        entry["timeline_changes_dropped"] = dropped
    return entry


class _MomentLog:
    """The run's key moments in execution order (``{"t_ns", "level", "text"}``): KVM and
    scenario moments and the clocksource printks (``detail`` on a "skew is too large"
    printk, from the kernel's last watchdog check; ``cause`` from the timeline entry that
    gave it, set by ``_Engine._own``), built from the world log as it is logged so that the
    log need not be kept.  The first ``kvmclock.limits.MOMENTS_CAP`` are kept, then the
    last ``kvmclock.limits.MOMENTS_TAIL``; :attr:`dropped` counts those after the first.
    A printk moment's level is its kernel's, looked up when the run ends (:meth:`finish`)."""

    _KEYS = ("Switched to clocksource", "unstable", "Marking")

    def __init__(self) -> None:
        #: (moment, the kernel name a printk moment takes its level from)
        self._head: list[tuple[dict[str, Any], str | None]] = []
        self._tail: collections.deque[tuple[dict[str, Any], str | None]] = collections.deque(
            maxlen=limits.MOMENTS_TAIL
        )
        self.dropped = 0
        self._checks: dict[str, dict[str, Any]] = {}  # kernel -> its last watchdog check

    def entry(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        """World-log entry ``ev``: the key moment it gives (kept), or None."""
        kind = ev.get("kind")
        m: dict[str, Any] | None = None
        kernel: str | None = None
        if kind == "watchdog_check":
            self._checks[str(ev.get("kernel"))] = ev
        elif kind == "moment":
            m = {"t_ns": ev["t_ns"], "level": ev["level"], "text": str(ev["text"])}
        elif kind == "printk" and any(s in str(ev.get("text", "")) for s in self._KEYS):
            text = str(ev.get("text"))
            kernel = str(ev.get("kernel"))
            m = {"t_ns": ev["t_ns"], "level": 0, "text": f"{ev.get('kernel')}: {text}"}
            check = self._checks.get(kernel)
            if text.endswith("skew is too large:") and check is not None:
                m["detail"] = _skew_detail(check)
        if m is None:
            return None
        if "cause" in ev:
            m["cause"] = str(ev["cause"])
        if len(self._head) < limits.MOMENTS_CAP:
            self._head.append((m, kernel))
        else:
            self.dropped += 1
            self._tail.append((m, kernel))
        return m

    @staticmethod
    def _resolved(
        items: Any, level_of: dict[str, int]
    ) -> list[dict[str, Any]]:
        out = []
        for m, kernel in items:
            if kernel is not None:
                m["level"] = level_of.get(kernel, 0)
            out.append(m)
        return out

    def finish(self, level_of: dict[str, int]) -> list[dict[str, Any]]:
        """The kept first moments, each printk's level from ``level_of`` (kernel name ->
        level)."""
        return self._resolved(self._head, level_of)

    def last(self, level_of: dict[str, int]) -> list[dict[str, Any]]:
        """The last moments after the first ``MOMENTS_CAP`` (at most ``MOMENTS_TAIL``)."""
        return self._resolved(self._tail, level_of)


def _skew_detail(check: dict[str, Any]) -> str:
    """The numbers the kernel prints on the lines after its "Marking clocksource ... as
    unstable because the skew is too large:" (kernel/time/clocksource.c
    ``clocksource_watchdog``: 4.13 prints the raw cycle counts, 6.18 also ``wd_nsec``,
    ``cs_nsec`` and the skew) as one phrase, from the watchdog check that gave the verdict."""
    cs_nsec, wd_nsec = int(check["cs_nsec"]), int(check["wd_nsec"])
    skew = cs_nsec - wd_nsec
    ms = abs(skew) // 1_000_000 * (-1 if skew < 0 else 1)  # the kernel's div_s64 (toward 0)
    return (
        f"'{check['cs']}' cs_nsec {cs_nsec} vs '{check['wd']}' wd_nsec {wd_nsec}: skewed "
        f"{skew} ns ({ms} ms)"
    )

"""``Lifecycle``: the VM lifecycle actions of a run and what each did to the guest's clocks.

Every action that stops a guest and lets it run again (resume after pause, restore of a
snapshot, live migration, host suspend) gives one record (:attr:`Lifecycle.records`, dicts
ready for JSON) measured the way a user would: the guest's CLOCK_MONOTONIC and
CLOCK_REALTIME read by the guest kernel on vCPU 0 right before it stopped and right after it
ran again, against a guest that never stopped (``before + true time elapsed``), the
masterclock and PVCLOCK_TSC_STABLE_BIT in vCPU 0's record at the first entry after, the
cross-vCPU kvm-clock skew, whether PVCLOCK_GUEST_STOPPED reached the guest, and the sentences
of the kernel rules that decided (KVM's TSC-sync decision log, ``Kvm.tsc_decisions``).
``stopped_ns`` is when the guest stopped running (after a migration's precopy), and
``completed`` is False for an action the run ended in the middle of (see ``finish``).  The
"after" readings come after the guest's overdue tick (``Vmm.enter_all``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kvmclock as _k
from kvmclock.vmm.recipes import Recipe

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel
    from kvmclock.kvm.x86 import Kvm
    from kvmclock.machine.world import World
    from kvmclock.vmm.snapshot import VmSnapshot
    from kvmclock.vmm.vmm import Vmm

__all__ = ["Lifecycle"]

_STABLE = 1  # PVCLOCK_TSC_STABLE_BIT
_STOPPED = 2  # PVCLOCK_GUEST_STOPPED


@dataclass
class _Stop:
    """Where a guest stopped: true time and its clocks then (None without a guest)."""

    t_ns: int
    mono_ns: int | None
    real_ns: int | None
    started_ns: int
    #: id(Kvm) -> ``Kvm.tsc_decisions_logged`` when the guest stopped
    decisions_from: dict[int, int] = field(default_factory=dict)


@dataclass
class _Pending:
    """A scheduled action not completed yet (migration, host suspend): what
    :meth:`Lifecycle.finish` reports when the run ends first."""

    action: str
    vmm: Vmm
    host: str
    recipe: Recipe | None
    started_ns: int
    stopped_ns: int | None = None  # None: still in precopy (the guest runs)
    phase: str = "precopy"


class Lifecycle:
    """The lifecycle actions of one run on ``world`` (see the module docstring).

    Methods take effect now (``world.now_ns``); :meth:`migrate` and :meth:`host_suspend`
    schedule their later steps on the world.  Call :meth:`finish` at the end of the run to
    fill ``masterclock_back_ns`` and ``stable_back_ns``.
    """

    def __init__(
        self, world: World, moment: Callable[[int, str], None] | None = None
    ) -> None:
        self.world = world
        self.moment = moment
        """Called ``moment(level, text)`` at each step (paused, KVMCLOCK_CTRL, snapshot
        taken, migration started / source stopped / restored, host suspended / resumed):
        ``level`` is the guest's level for a VM step, the host kernel's for a host step
        (``Sim.moment`` fits)."""
        self.records: list[dict[str, Any]] = []
        self._pending: dict[int, _Pending] = {}  # id(Vmm) -> pending scheduled action
        self.snapshots: dict[str, VmSnapshot] = {}
        self._stops: dict[int, _Stop] = {}
        self._record_vms: list[tuple[dict[str, Any], Kvm]] = []

    # -- measurements --------------------------------------------------------------------------
    @staticmethod
    def guest_clocks(vmm: Vmm) -> tuple[int | None, int | None]:
        """The guest kernel's ``(CLOCK_MONOTONIC, CLOCK_REALTIME)`` in ns, read on its vCPU
        0 (``ktime_get_ns``, ``ktime_get_real_ns``); ``(None, None)`` without a guest or
        while its machine does not run (paused VM, suspended host)."""
        g = vmm.guest
        if g is None or not vmm.machine.running:
            return None, None
        tk = g.timekeeper
        return g.run_on_cpu(0, lambda: (tk.ktime_get_ns(), tk.ktime_get_real_ns()))

    @staticmethod
    def record_flags(vm: Kvm, vcpu_id: int = 0) -> int | None:
        """The flags byte of vCPU ``vcpu_id``'s pvclock record in guest memory (None when
        its kvmclock is not enabled)."""
        v = vm.vcpus[vcpu_id]
        if not v.pv_time_enabled:
            return None
        return int(vm.machine.memory[v.pv_time_gpa + 29])

    @staticmethod
    def kvmclock_skew_ns(vm: Kvm) -> int | None:
        """max - min of the kvm-clock each vCPU reads now (``pvclock_read`` of its record at
        its TSC, without the guest's last_value clamp), ns; None without two records."""
        mem = vm.machine.memory
        values = [
            int(_k.pvclock_read(mem, cpu.read_tsc(), cpu.vcpu.pv_time_gpa)[0])
            for cpu in vm.machine.cpus
            if cpu.vcpu.pv_time_enabled and cpu.vcpu.hv_clock.version
        ]
        if len(values) < 2:
            return None if not values else 0
        return max(values) - min(values)

    # -- stop / start bookkeeping ---------------------------------------------------------------
    def _moment(self, level: int, text: str) -> None:
        if self.moment is not None:
            self.moment(level, text)

    def _vm_moment(self, vmm: Vmm, text: str) -> None:
        self._moment(vmm.machine.level, f"VM {vmm.name}: {text}")

    def _pause_moments(self, vmm: Vmm, recipe: Recipe, what: str) -> None:
        self._vm_moment(vmm, f"{what} ({recipe.label()})")
        if recipe.kvmclock_ctrl == "at-pause":
            self._vm_moment(vmm, "KVM_KVMCLOCK_CTRL on every vCPU at pause")

    def _note_stop(self, vmm: Vmm, started_ns: int | None = None) -> None:
        now = self.world.now_ns
        mono, real = self.guest_clocks(vmm)
        vmm.entry_flags = None
        self._stops[id(vmm)] = _Stop(now, mono, real, now if started_ns is None else started_ns, {})

    def _mark_decisions(self, stop: _Stop, vm: Kvm) -> None:
        stop.decisions_from.setdefault(id(vm), vm.tsc_decisions_logged)

    def _record(
        self,
        action: str,
        vmm: Vmm,
        recipe: Recipe | None,
        stop: _Stop,
        old_vm: Kvm | None = None,
    ) -> dict[str, Any]:
        """Measure now (the vCPUs have just entered once) and append the record."""
        now = self.world.now_ns
        vm = vmm.vm
        # the record at the first entry, before the guest's overdue tick read the clock
        flags = vmm.entry_flags if vmm.entry_flags is not None else self.record_flags(vm)
        vmm.entry_flags = None
        stopped_seen = None if flags is None else bool(flags & _STOPPED)
        stable = None if flags is None else bool(flags & _STABLE)
        skew = self.kvmclock_skew_ns(vm)
        mono, real = self.guest_clocks(vmm)
        elapsed = now - stop.t_ns

        def jump(after: int | None, before: int | None) -> int | None:
            return None if after is None or before is None else after - (before + elapsed)

        def step(after: int | None, before: int | None) -> int | None:
            return None if after is None or before is None else after - before

        rules: list[str] = []
        decisions = []
        for k in ([old_vm] if old_vm is not None else []) + [vm]:
            decisions.extend(_decisions_since(k, stop.decisions_from.get(id(k))))
        for d in decisions:
            if not rules or rules[-1] != d.text:
                rules.append(d.text)
        rules.extend(vmm.restore_notes if action in ("restore", "migrate") else [])
        if action == "host_suspend":
            rules.extend(self._host_suspend_rules(vmm, elapsed, stopped_seen))
        g = vmm.guest
        cs = g.timekeeper.clock.name if g is not None else None
        v0 = vm.vcpus[0] if vm.vcpus else None
        rec: dict[str, Any] = {
            "t_ns": now,
            "started_ns": stop.started_ns,
            "action": action,
            "vm": vmm.name,
            "host": vmm.host.name,
            "recipe": recipe.label() if recipe is not None else None,
            "downtime_ns": elapsed,
            "stopped_ns": stop.t_ns,
            "completed": True,
            "monotonic_jump_ns": jump(mono, stop.mono_ns),
            "realtime_jump_ns": jump(real, stop.real_ns),
            "monotonic_step_ns": step(mono, stop.mono_ns),
            "realtime_step_ns": step(real, stop.real_ns),
            "masterclock_after": vm.use_master_clock,
            "stable_after": stable,
            "masterclock_back_ns": None,
            "stable_back_ns": None,
            "cross_vcpu_skew_ns": skew,
            "guest_stopped_seen": stopped_seen,
            "guest_clocksource": cs,
            "guest_tsc_khz": None if v0 is None else v0.virtual_tsc_khz,
            "guest_tsc_runs_khz": (
                None if v0 is None else vm.module.kvm_scale_tsc(v0, vm.module.host_tsc_khz())
            ),
            "reason": self._reason(vm, decisions),
            "rules": rules,
        }
        self.records.append(rec)
        self._record_vms.append((rec, vm))
        self._stops.pop(id(vmm), None)
        self._pending.pop(id(vmm), None)
        return rec

    @staticmethod
    def _host_suspend_rules(vmm: Vmm, downtime_ns: int, stopped_seen: bool | None) -> list[str]:
        """The switches that decide what a host suspend does to the guest beyond KVM's TSC
        rules: the host's PM notifier (``pm_notifier``) and the guest's clocksource
        watchdog (``clocksource_watchdog``)."""
        host = vmm.host
        out: list[str] = []
        if host.cfg.pm_notifier:
            out.append(
                f"host {host.name}: KVM's PM notifier (switch pm_notifier on, 5.14+) marked "
                "every kvmclock vCPU paused at PM_SUSPEND_PREPARE "
                "(kvm_arch_suspend_notifier -> kvm_set_guest_paused): PVCLOCK_GUEST_STOPPED "
                + (
                    "reached the guest at its first entry"
                    if stopped_seen
                    else "was pending but did not reach vCPU 0's record"
                )
            )
        else:
            out.append(
                f"host {host.name}: no KVM PM notifier (switch pm_notifier off; it came in "
                "5.14): nothing sets PVCLOCK_GUEST_STOPPED on a host suspend, so the guest "
                "is not told it was stopped"
            )
        g = vmm.guest
        if g is not None:
            wd = g.watchdog
            if g.cfg.clocksource_watchdog == "6.18":
                if downtime_ns > wd.interval_max_ns:
                    out.append(
                        f"guest {g.name}: its clocksource watchdog (switch "
                        "clocksource_watchdog=6.18) does not judge the interval across the "
                        f"{downtime_ns / 1e9:.3f} s stop: longer than WATCHDOG_INTERVAL_MAX "
                        f"({wd.interval_max_ns} ns), 'Long readout interval, skipping "
                        "watchdog check', so the stop cannot mark a clocksource unstable"
                    )
                else:
                    out.append(
                        f"guest {g.name}: its clocksource watchdog (switch "
                        "clocksource_watchdog=6.18) judges the interval across the stop "
                        "against both clocksources' uncertainty margins"
                    )
            else:
                out.append(
                    f"guest {g.name}: its clocksource watchdog (switch "
                    "clocksource_watchdog=4.13) judges the interval across the "
                    f"{downtime_ns / 1e9:.3f} s stop at its next run, however long: a watched "
                    "clocksource that counted the stop differently from the watchdog by more "
                    f"than WATCHDOG_THRESHOLD ({wd.threshold_ns} ns) is marked unstable"
                )
        return out

    @staticmethod
    def _reason(vm: Kvm, decisions: Sequence[Any]) -> str:
        """One sentence: the masterclock state after the action and the rule behind it."""
        state = "on" if vm.use_master_clock else "off"
        mc = [d for d in decisions if d.rule in ("masterclock-on", "masterclock-off")]
        gens = [
            d
            for d in decisions
            if d.rule
            in ("outside-window", "user-set-tsc-first", "khz-differs", "attr-mismatch", "no-khz")
        ]
        joins = [d for d in decisions if d.rule in ("window-match", "attr-exact-match")]
        parts: list[str] = []
        if mc:
            parts.append(mc[-1].text)
        else:
            parts.append(
                f"VM {vm.name}: masterclock {state}: no masterclock update during the action"
            )
        if not vm.use_master_clock and gens:
            parts.append(gens[-1].text)
        elif vm.use_master_clock and joins:
            parts.append(joins[-1].text)
        if vm.backwards_tsc_observed and not vm.use_master_clock and not mc:
            parts.append("backwards_tsc_observed is set")
        return "; ".join(parts)

    # -- actions -----------------------------------------------------------------------------------
    def pause(self, vmm: Vmm, recipe: Recipe) -> None:
        """Pause ``vmm``'s VM now the way ``recipe``'s VMM does (``Recipe.pause``); the
        guest's clocks are read first (the moment it stopped)."""
        recipe.check(vmm.host.cfg)
        self._note_stop(vmm)
        stop = self._stops[id(vmm)]
        self._mark_decisions(stop, vmm.vm)
        recipe.pause(vmm)
        self._pause_moments(vmm, recipe, "paused")

    def resume(self, vmm: Vmm, recipe: Recipe) -> dict[str, Any]:
        """Resume ``vmm``'s paused VM now (``Recipe.resume``) and record action "resume"."""
        stop = self._stops.get(id(vmm))
        if stop is None:
            raise ValueError(f"VM {vmm.name} was not paused through this Lifecycle")
        if recipe.kvmclock_ctrl == "before-resume":
            self._vm_moment(vmm, "KVM_KVMCLOCK_CTRL on every vCPU before resume")
        recipe.resume(vmm)
        self._vm_moment(vmm, f"resumed ({recipe.label()})")
        return self._record("resume", vmm, recipe, stop)

    def snapshot(self, vmm: Vmm, name: str, recipe: Recipe) -> VmSnapshot:
        """Save ``vmm``'s VM as snapshot ``name`` (pausing it first the recipe's way when it
        runs; it stays paused)."""
        if not vmm.machine.paused:
            self.pause(vmm, recipe)
        snap = vmm.snapshot()
        self.snapshots[name] = snap
        self._vm_moment(vmm, f"snapshot {name!r} taken")
        return snap

    def restore(
        self,
        name: str,
        vmm: Vmm,
        host: Kernel,
        recipe: Recipe,
        *,
        action: str = "restore",
        on_done: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Restore snapshot ``name`` into ``vmm`` on ``host`` (``Vmm.restore``); the record
        (action "restore") is taken when the recipe is done."""
        snap = self.snapshots.get(name)
        if snap is None:
            raise ValueError(
                f"snapshot {name!r} unknown; taken so far: {sorted(self.snapshots) or 'none'}"
            )
        stop = self._stops.get(id(vmm))
        if stop is None:
            # paused outside this Lifecycle: measure from the snapshot's moment, no clocks
            stop = _Stop(snap.t_ns, None, None, snap.t_ns, {})
            self._stops[id(vmm)] = stop

        def done() -> None:
            stop.decisions_from.setdefault(id(vmm.vm), 0)  # the new VM: its whole log
            self._vm_moment(
                vmm,
                ("migrated to" if action == "migrate" else "restored on")
                + f" {vmm.host.name} ({recipe.label()})",
            )
            rec = self._record(action, vmm, recipe, stop)
            if on_done is not None:
                on_done(rec)

        vmm.restore(snap, host, recipe, on_done=done, action=action)

    def migrate(
        self,
        vmm: Vmm,
        host: Kernel,
        recipe: Recipe,
        downtime_ns: int,
        precopy_ns: int = 0,
    ) -> None:
        """Live migration of ``vmm`` to ``host``: the source keeps running ``precopy_ns``
        (memory copied while it runs), then pauses and is snapshotted (the recipe's pause),
        and ``downtime_ns`` later the destination restores it (record action "migrate",
        ``started_ns`` = now)."""
        for nm, v in (("downtime_ns", downtime_ns), ("precopy_ns", precopy_ns)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{nm}={v!r} must be an int >= 0 (ns)")
        recipe.check(host.cfg)
        recipe.check(vmm.host.cfg)
        started = self.world.now_ns
        key = f"migrate:{vmm.name}:{started}"
        pending = _Pending("migrate", vmm, host.name, recipe, started)
        self._pending[id(vmm)] = pending
        self._vm_moment(
            vmm, f"migration to {host.name} started ({recipe.label()}, precopy {precopy_ns} ns)"
        )

        def stop_and_copy() -> None:
            self._note_stop(vmm, started)
            self._mark_decisions(self._stops[id(vmm)], vmm.vm)
            recipe.pause(vmm)
            pending.stopped_ns = self.world.now_ns
            pending.phase = "downtime"
            self._pause_moments(vmm, recipe, "migration: source stopped")
            self.snapshots[key] = vmm.snapshot()
            self.world.after(
                downtime_ns, lambda: self.restore(key, vmm, host, recipe, action="migrate")
            )

        if precopy_ns:
            self.world.after(precopy_ns, stop_and_copy)
        else:
            stop_and_copy()

    def host_suspend(
        self,
        host_kernel: Kernel,
        vmms_on_it: Sequence[Vmm],
        duration_ns: int,
        tsc_cycles: int,
    ) -> None:
        """Suspend ``host_kernel`` now (``Kernel.pm_suspend``) and resume it ``duration_ns``
        later with every CPU's TSC restarting at ``tsc_cycles`` (``Kernel.pm_resume``); the
        VMs of ``vmms_on_it`` are not paused by their VMM: their vCPU threads are frozen with
        the host and enter again after its resume (one record each, action
        "host_suspend", recipe None)."""
        if isinstance(duration_ns, bool) or not isinstance(duration_ns, int) or duration_ns < 0:
            raise ValueError(f"duration_ns={duration_ns!r} must be an int >= 0 (ns)")
        for v in vmms_on_it:
            if v.host is not host_kernel:
                raise ValueError(f"VM {v.name} runs on {v.host.name}, not on {host_kernel.name}")
        stops = []
        now = self.world.now_ns
        for v in vmms_on_it:
            self._note_stop(v)
            st = self._stops[id(v)]
            self._mark_decisions(st, v.vm)
            stops.append(st)
            self._pending[id(v)] = _Pending(
                "host_suspend", v, host_kernel.name, None, now, now, "host suspend"
            )
        host_kernel.pm_suspend()
        self._moment(
            host_kernel.level,
            f"host {host_kernel.name} suspended for {duration_ns} ns"
            + (f" (VMs {', '.join(v.name for v in vmms_on_it)})" if vmms_on_it else ""),
        )

        def wake() -> None:
            host_kernel.pm_resume(tsc_cycles)
            self._moment(host_kernel.level, f"host {host_kernel.name} resumed")
            for v, st in zip(vmms_on_it, stops, strict=True):
                if not v.machine.paused:
                    v.enter_all()
                self._record("host_suspend", v, None, st)

        self.world.after(duration_ns, wake)

    # -- end of run ----------------------------------------------------------------------------
    def _unfinished(self, pending: _Pending, end_ns: int) -> None:
        self.records.append(_unfinished_record(pending, end_ns))

    def finish(self, end_ns: int) -> list[dict[str, Any]]:
        """Fill every record's ``masterclock_back_ns`` / ``stable_back_ns``: true ns after
        its ``t_ns`` until the VM's masterclock timeline (``Kvm.masterclock_timeline``) and
        pvclock stable timeline are on again (0 when on right after; None when not before
        ``end_ns``), and add a record with ``"completed": False`` for each action still
        under way at ``end_ns`` (a migration in its precopy or downtime, a host still
        suspended): ``t_ns`` None, every clock jump and state None, ``stopped_ns`` when the
        guest stopped (None in precopy) and ``reason`` saying where the run ended.
        Returns :attr:`records`."""
        for pending in list(self._pending.values()):
            self._unfinished(pending, end_ns)
        self._pending.clear()
        for rec, vm in self._record_vms:
            t = rec["t_ns"]
            rec["masterclock_back_ns"] = _back(vm.masterclock_timeline, t, end_ns)
            rec["stable_back_ns"] = _back(vm.pvclock_stable_timeline, t, end_ns)
        return self.records


def _secs(ns: int) -> str:
    return f"{ns / 1e9:.3f} s"


def _decisions_since(vm: Kvm, logged: int | None) -> list[Any]:
    """The decisions ``vm`` logged after its ``tsc_decisions_logged`` was ``logged`` (none
    for None), oldest first; of those, the ring ``Kvm.tsc_decisions`` holds the most recent
    ``kvmclock.limits.TSC_DECISIONS_CAP``."""
    if logged is None:
        return []
    new = min(vm.tsc_decisions_logged - logged, len(vm.tsc_decisions))
    return list(vm.tsc_decisions)[len(vm.tsc_decisions) - new :] if new > 0 else []


def _unfinished_record(p: _Pending, end_ns: int) -> dict[str, Any]:
    vmm = p.vmm
    if p.stopped_ns is None:
        where = f"{_secs(end_ns - p.started_ns)} into the precopy (the guest still ran)"
    else:
        where = f"{_secs(end_ns - p.stopped_ns)} into the {p.phase}"
    g = vmm.guest
    return {
        "t_ns": None,
        "started_ns": p.started_ns,
        "action": p.action,
        "vm": vmm.name,
        "host": p.host,
        "recipe": p.recipe.label() if p.recipe is not None else None,
        "downtime_ns": None,
        "stopped_ns": p.stopped_ns,
        "completed": False,
        "monotonic_jump_ns": None,
        "realtime_jump_ns": None,
        "monotonic_step_ns": None,
        "realtime_step_ns": None,
        "masterclock_after": None,
        "stable_after": None,
        "masterclock_back_ns": None,
        "stable_back_ns": None,
        "cross_vcpu_skew_ns": None,
        "guest_stopped_seen": None,
        "guest_clocksource": g.timekeeper.clock.name if g is not None else None,
        "guest_tsc_khz": None,
        "guest_tsc_runs_khz": None,
        "reason": f"not completed: the run ended {where}",
        "rules": [],
    }


def _back(timeline: Sequence[Sequence[Any]], t_ns: int, end_ns: int) -> int | None:
    """ns after ``t_ns`` until ``timeline`` ([t, bool] changes) is True, within ``end_ns``."""
    state = False
    for t, on in timeline:
        if t > t_ns:
            break
        state = bool(on)
    if state:
        return 0
    for t, on in timeline:
        if t > t_ns and on and t <= end_ns:
            return int(t) - t_ns
    return None

"""Built-in scenarios and ``run_scenario`` (one run as the dict ``simulate --json`` prints).

Every scenario builds the stack in simulated time from a seed: a ``PhysicalMachine`` with a
``Kernel`` (level 0) and KVM, VMs whose vCPUs are started once (QEMU starting the vCPU
threads: each enters the guest, processing its requests), guest kernels booted on them, and
timed events.  A ``Recorder`` reads every guest's kvm-clock on every vCPU each
``sample_ms``.  Nothing reads the host wall clock; the result is a pure function of
(scenario, profile, seed, params).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, cast

from kvmclock.errors import LivelockDetected, ScenarioError
from kvmclock.kernel import Kernel
from kvmclock.kvm.x86 import (
    FAULTS,
    KVM_CLOCK_REALTIME,
    Kvm,
    KvmModule,
    MasterclockLivelock,
    TimeScaleLivelock,
)
from kvmclock.machine.physical import PhysicalMachine
from kvmclock.machine.world import World
from kvmclock.profiles import Profile, SwitchValue, resolve_profile
from kvmclock.sim.metrics import Recorder
from kvmclock.timekeeping.clocksource import MSR_KVM_SYSTEM_TIME_NEW
from kvmclock.vmm import Vmm

__all__ = ["SCENARIOS", "Scenario", "Sim", "format_trace_lines", "run_scenario"]

NSEC_PER_SEC = 1_000_000_000
NSEC_PER_MSEC = 1_000_000


def _ns(seconds: Any) -> int:
    """Seconds (int, float taken by its repr, str, Fraction) -> integer ns, exactly."""
    if isinstance(seconds, float):
        seconds = repr(seconds)
    return int(Fraction(seconds) * NSEC_PER_SEC)


class Sim:
    """The objects of one run: world, kernels by level, shared trace sink and moments."""

    def __init__(
        self,
        profile: str | Profile,
        seed: int,
        *,
        hz: int,
        sample_ms: int,
        fault: str | None,
        spin_limit: int,
    ) -> None:
        self.world = World(seed)
        self.profile = profile
        self.hz = hz
        self.sample_ms = sample_ms
        self.fault = fault
        self.spin_limit = spin_limit
        self.kernels: list[Kernel] = []
        self.trace: list[tuple[int, int, str, int, int, str, str]] = []
        self.moments: list[list[Any]] = []
        self.recorder: Recorder | None = None

    def _load_kvm(self, kernel: Kernel) -> KvmModule:
        mod = kernel.load_kvm()
        # the patch-09 read loops exist only where KVM asks the timekeeper itself
        mod.fault = self.fault if mod.cfg.kvm_host_clock == "timekeeper" else None
        mod.spin_limit = self.spin_limit
        # one chronological sink for the whole stack
        self.trace.extend(mod.trace_records)
        mod.trace_records = self.trace
        self.moments.extend(mod.moments)
        mod.moments = self.moments
        return mod

    def host(
        self,
        *,
        cpus: int,
        tsc_khz: int,
        tsc_skew_cycles: int = 0,
        kvm: bool = True,
        tsc_scaling: str = "vmx",
    ) -> Kernel:
        """Level 0: a physical machine with HPET and ACPI PM, its kernel booted, KVM loaded.
        ``tsc_scaling``: the CPUs' TSC-scaling hardware (``vmx``, ``svm`` or ``none``)."""
        m = PhysicalMachine(
            self.world,
            cpus,
            tsc_khz=tsc_khz,
            tsc_skew_cycles=tsc_skew_cycles,
            tsc_scaling=tsc_scaling,
        )
        # cast: PhysicalMachine's concrete list types do not match the protocol's
        # invariant mutable members exactly (machine/base.py), the behaviour does.
        k = Kernel(m, self.profile, name="L0", hz=self.hz)
        k.boot()
        self.kernels.append(k)
        if kvm:
            self._load_kvm(k)
        return k

    def guest(
        self, host: Kernel, *, vcpus: int, kvm: bool, tsc_khz: int | None = None
    ) -> tuple[Kvm, Kernel]:
        """A VM of ``vcpus`` on ``host`` (vCPU i on host CPU i mod n), its vCPUs started, and a
        guest kernel booted on it (kvm-clock), optionally running KVM itself."""
        level = host.level + 1
        vmm = Vmm(host, name=f"L{level}", vcpus=vcpus, tsc_khz=tsc_khz)
        vm = vmm.vm
        g = Kernel(vm.machine, self.profile, name=f"L{level}", hz=self.hz)
        vmm.guest = g
        g.boot()
        self.kernels.append(g)
        if kvm:
            self._load_kvm(g)
        return vm, g

    def start_sampling(self) -> None:
        """Start the periodic guest reads."""
        self.recorder = Recorder(self.kernels, self.sample_ms * NSEC_PER_MSEC)

    def at(self, t_ns: int, fn: Callable[[], object]) -> None:
        """Schedule a scenario action."""
        self.world.at(t_ns, fn)

    def moment(self, level: int, text: str) -> None:
        """A scenario-level key moment (also in the world log, which orders all moments)."""
        self.moments.append([self.world.now_ns, level, text])
        self.world.log("moment", level=level, text=text)


@dataclass(frozen=True)
class Scenario:
    """A built-in scenario: ``name``, one-line ``description``, ``params`` (name -> default)."""

    name: str
    description: str
    params: dict[str, Any]
    setup: Callable[[Sim, dict[str, Any]], None] = field(repr=False)


_COMMON: dict[str, Any] = {
    "duration_s": 8,
    "hz": 250,
    "sample_ms": 10,
    "tsc_khz": 2_593_992,
    "seed_note": None,
}
del _COMMON["seed_note"]


# --------------------------------------------------------------------------------------------
# nested
# --------------------------------------------------------------------------------------------
def _setup_nested(sim: Sim, p: dict[str, Any]) -> None:
    l0 = sim.host(cpus=p["host_cpus"], tsc_khz=p["tsc_khz"])
    sim.world.run_until(NSEC_PER_MSEC)
    _vm1, l1 = sim.guest(l0, vcpus=p["l1_vcpus"], kvm=True)
    sim.world.run_until(2 * NSEC_PER_MSEC)
    sim.guest(l1, vcpus=p["l2_vcpus"], kvm=False)
    sim.start_sampling()
    # The TSC misbehaves shortly before the watchdog check at unstable_at_s: every pCPU's TSC
    # jumps forward by jump_ms worth of cycles (still synchronised); the next watchdog run
    # sees TSC and HPET intervals differ by more than WATCHDOG_THRESHOLD (62.5 ms) and marks
    # the TSC unstable; L0 switches to hpet.  The flip is the real watchdog's decision.
    t_jump = _ns(p["unstable_at_s"]) - 50 * NSEC_PER_MSEC
    if t_jump > sim.world.now_ns:
        cycles = p["tsc_khz"] * p["jump_ms"]
        for cpu in cast(PhysicalMachine, l0.machine).cpus:
            cpu.add_tsc_jump(t_jump, cycles)
        sim.at(
            t_jump,
            lambda: sim.moment(0, f"L0: every TSC jumps forward by {p['jump_ms']} ms of cycles"),
        )


# --------------------------------------------------------------------------------------------
# tsc-sync
# --------------------------------------------------------------------------------------------
def _setup_tsc_sync(sim: Sim, p: dict[str, Any]) -> None:
    l0 = sim.host(cpus=p["host_cpus"], tsc_khz=p["tsc_khz"])
    sim.world.run_until(NSEC_PER_MSEC)
    vm, g = sim.guest(l0, vcpus=p["vcpus"], kvm=False)
    sim.start_sampling()
    khz = p["tsc_khz"]

    def guest_tsc(i: int) -> int:
        return int(vm.machine.cpus[i].read_tsc())

    def hotplug() -> None:
        v = vm.create_vcpu()
        vm.machine.run_on_cpu(v.vcpu_id, lambda: None)
        # the guest's CPU-online path: kvm_register_clock on the new CPU
        vm.machine.wrmsr(v.vcpu_id, MSR_KVM_SYSTEM_TIME_NEW, g.pvti_offset(v.vcpu_id) | 1)
        sim.moment(1, f"vCPU {v.vcpu_id} hotplugged (host-initiated TSC write of 0)")

    def write_inside() -> None:
        # 2017 kvm_write_tsc compares with last_tsc_write extrapolated by the elapsed boot ns
        # (after a hotplug write of 0 that base is 0: a real quirk, hence inside_at < hotplug_at).
        value = guest_tsc(0) + khz * p["inside_ms"]
        vm.write_tsc(1, value)
        sim.moment(
            1, f"vCPU 1: TSC write {p['inside_ms']} ms of cycles ahead (inside the 1 s window)"
        )

    def write_far() -> None:
        value = guest_tsc(0) + khz * 1000 * p["far_s"]
        vm.write_tsc(2 % len(vm.vcpus), value)
        sim.moment(
            1, f"vCPU 2: TSC write {p['far_s']} s ahead (outside the window: new generation)"
        )

    def write_match_all() -> None:
        ref = 2 % len(vm.vcpus)
        for v in vm.vcpus:
            if v.vcpu_id != ref:
                vm.write_tsc(v.vcpu_id, guest_tsc(ref))
        sim.moment(1, "all other vCPUs write the new generation's TSC (matched)")

    sim.at(_ns(p["hotplug_at_s"]), hotplug)
    sim.at(_ns(p["inside_at_s"]), write_inside)
    sim.at(_ns(p["far_at_s"]), write_far)
    sim.at(_ns(p["rematch_at_s"]), write_match_all)


# --------------------------------------------------------------------------------------------
# unstable-tsc
# --------------------------------------------------------------------------------------------
def _setup_unstable_tsc(sim: Sim, p: dict[str, Any]) -> None:
    khz = p["tsc_khz"]
    l0 = sim.host(cpus=p["host_cpus"], tsc_khz=khz, tsc_skew_cycles=khz * p["skew_us"] // 1000)
    sim.world.run_until(NSEC_PER_MSEC)
    vm, _g = sim.guest(l0, vcpus=p["vcpus"], kvm=False)
    sim.start_sampling()
    back_cpu = p["host_cpus"] - 1
    t_back = _ns(p["backwards_at_s"])
    back = cast(PhysicalMachine, l0.machine).cpus[back_cpu]
    back.add_tsc_jump(t_back, -khz * p["backwards_ms"])
    sim.at(
        t_back,
        lambda: sim.moment(
            0, f"L0: CPU {back_cpu}'s TSC steps back by {p['backwards_ms']} ms of cycles"
        ),
    )
    period = p["migrate_ms"] * NSEC_PER_MSEC
    n = p["host_cpus"]
    step = [0]

    def migrate() -> None:
        step[0] += 1
        for v in vm.vcpus:
            vm.migrate_vcpu(v.vcpu_id, (v.vcpu_id + step[0]) % n)

    sim.world.every(period, migrate, start_ns=sim.world.now_ns + period // 2)


# --------------------------------------------------------------------------------------------
# set-clock
# --------------------------------------------------------------------------------------------
def _setup_set_clock(sim: Sim, p: dict[str, Any]) -> None:
    l0 = sim.host(cpus=p["host_cpus"], tsc_khz=p["tsc_khz"])
    sim.world.run_until(NSEC_PER_MSEC)
    vm, _g = sim.guest(l0, vcpus=p["vcpus"], kvm=False)
    sim.start_sampling()

    def set_plain() -> None:
        target = vm.get_clock().clock + _ns(p["step_s"])
        vm.set_clock(target)
        vm.machine.run_on_cpu(0, lambda: None)
        st = vm.vcpus[0].hv_clock.system_time
        sim.moment(
            1,
            f"KVM_SET_CLOCK flags=0 clock={target}: next system_time={st} (diff {st - target} ns)",
        )

    def set_realtime() -> None:
        real = l0.run_on_cpu(0, l0.timekeeper.ktime_get_real_ns)
        target = vm.get_clock().clock
        try:
            vm.set_clock(target, KVM_CLOCK_REALTIME, real - _ns(p["realtime_lag_s"]))
        except ValueError as exc:  # a profile without switch kvm_clock_realtime refuses it
            sim.moment(1, f"KVM_SET_CLOCK flags=REALTIME refused: {exc}")
            return
        vm.machine.run_on_cpu(0, lambda: None)
        st = vm.vcpus[0].hv_clock.system_time
        sim.moment(
            1,
            f"KVM_SET_CLOCK flags=REALTIME realtime {p['realtime_lag_s']} s behind: "
            f"system_time={st} (advanced {st - target} ns)",
        )

    def get() -> None:
        d = vm.get_clock()  # REALTIME|HOST_TSC only under switch kvm_clock_realtime
        sim.moment(
            1,
            f"KVM_GET_CLOCK clock={d.clock} flags={d.flags:#x} realtime={d.realtime} "
            f"host_tsc={d.host_tsc}",
        )

    sim.at(_ns(p["set_at_s"]), set_plain)
    sim.at(_ns(p["set_realtime_at_s"]), set_realtime)
    sim.at(_ns(p["get_at_s"]), get)


# --------------------------------------------------------------------------------------------
# patch09-hang
# --------------------------------------------------------------------------------------------
def _setup_patch09(sim: Sim, p: dict[str, Any]) -> None:
    l0 = sim.host(cpus=p["host_cpus"], tsc_khz=p["tsc_khz"])
    sim.world.run_until(NSEC_PER_MSEC)
    vm, _g = sim.guest(l0, vcpus=p["vcpus"], kvm=False)
    sim.start_sampling()
    tk = l0.timekeeper
    writer_cpu = 1 % len(l0.machine.cpus)

    def concurrent_tick() -> None:
        tk.interleave = None  # one shot
        before = tk.seq.sequence
        l0.run_on_cpu(writer_cpu, tk.update_wall_time)
        sim.moment(
            0,
            f"L0: tick on CPU {writer_cpu} inside a tk_core.seq read section "
            f"(seq {before} -> {tk.seq.sequence})",
        )

    def trigger() -> None:
        # QEMU writes vCPU 0's TSC (a matching value): kvm_track_tsc_matching requests a
        # masterclock update, which vCPU 0 runs on its next entry; a timekeeping tick on
        # another CPU lands inside the read section of kvm_get_host_time_and_cycles.
        vm.write_tsc(0, int(vm.machine.cpus[0].read_tsc()))
        tk.interleave = concurrent_tick
        try:
            vm.machine.run_on_cpu(0, lambda: None)
        finally:
            tk.interleave = None

    # At an exact tick time, scheduled before the tick's own event: the concurrent tick does
    # the update (a full cycle_interval has elapsed) and the regular one finds nothing to do.
    tick = (NSEC_PER_SEC + p["hz"] // 2) // p["hz"]
    t = (_ns(p["trigger_at_s"]) // tick) * tick
    sim.at(t, trigger)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "nested",
            "L0 tsc host (hpet watchdog), L1 with KVM on kvm-clock, L2 guest; "
            "L0's TSC goes bad at ~5 s",
            {
                **_COMMON,
                "host_cpus": 4,
                "l1_vcpus": 4,
                "l2_vcpus": 2,
                "unstable_at_s": 5,
                "jump_ms": 100,
            },
            _setup_nested,
        ),
        Scenario(
            "tsc-sync",
            "vCPU hotplug and TSC writes inside and outside the 1 s matching window",
            {
                **_COMMON,
                "duration_s": 5,
                "host_cpus": 4,
                "vcpus": 4,
                "inside_at_s": 1,
                "hotplug_at_s": 2,
                "inside_ms": 300,
                "far_at_s": 3,
                "far_s": 10,
                "rematch_at_s": 4,
            },
            _setup_tsc_sync,
        ),
        Scenario(
            "unstable-tsc",
            "unsynchronised pCPU TSCs, vCPU migration and a backwards TSC step",
            {
                **_COMMON,
                "duration_s": 4,
                "host_cpus": 4,
                "vcpus": 4,
                "skew_us": 50,
                "migrate_ms": 100,
                "backwards_at_s": 2,
                "backwards_ms": 500,
            },
            _setup_unstable_tsc,
        ),
        Scenario(
            "set-clock",
            "KVM_SET_CLOCK with flags 0 (2017) and KVM_CLOCK_REALTIME (5.16+), KVM_GET_CLOCK",
            {
                **_COMMON,
                "duration_s": 4,
                "host_cpus": 2,
                "vcpus": 2,
                "set_at_s": 1,
                "step_s": 5,
                "set_realtime_at_s": 2,
                "realtime_lag_s": 1,
                "get_at_s": 3,
            },
            _setup_set_clock,
        ),
        Scenario(
            "patch09-hang",
            "the seed's missing 'do': a tick inside the read section spins forever (detected)",
            {
                **_COMMON,
                "duration_s": 3,
                "host_cpus": 2,
                "vcpus": 2,
                "trigger_at_s": 1,
                "fault": "patch09-missing-do",
                "spin_limit": 100_000,
            },
            _setup_patch09,
        ),
    )
}

# ktime_t is an s64 of ns (include/linux/ktime.h KTIME_MAX): no simulated time lies beyond it.
KTIME_MAX_NS = (1 << 63) - 1

_POSITIVE_INT = {
    "hz",
    "sample_ms",
    "tsc_khz",
    "host_cpus",
    "l1_vcpus",
    "l2_vcpus",
    "vcpus",
    "spin_limit",
    "migrate_ms",
}
_NONNEG_INT = {"jump_ms", "inside_ms", "far_s", "skew_us", "backwards_ms"}
_NONNEG_TIME = {
    "unstable_at_s",
    "hotplug_at_s",
    "inside_at_s",
    "far_at_s",
    "rematch_at_s",
    "backwards_at_s",
    "set_at_s",
    "step_s",
    "set_realtime_at_s",
    "realtime_lag_s",
    "get_at_s",
    "trigger_at_s",
}
_LIMITS = {
    "hz": 10_000,
    "tsc_khz": 0xFFFFFFFF,
    "host_cpus": 64,
    "l1_vcpus": 64,
    "l2_vcpus": 64,
    "vcpus": 64,
}


def _validate(
    name: str, profile: Any, seed: Any, params: dict[str, Any]
) -> tuple[Scenario, dict[str, Any]]:
    if not isinstance(name, str) or name not in SCENARIOS:
        raise ScenarioError(f"scenario={name!r} unknown; choose one of: {', '.join(SCENARIOS)}")
    try:
        resolve_profile(profile)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ScenarioError(f"seed={seed!r} must be an int")
    scn = SCENARIOS[name]
    unknown = sorted(set(params) - set(scn.params))
    if unknown:
        raise ScenarioError(
            f"scenario {name!r} has no parameter {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(scn.params))}"
        )
    p = {**scn.params, **params}
    for key, v in p.items():
        if key in _POSITIVE_INT or key in _NONNEG_INT:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ScenarioError(f"{key}={v!r} must be an int")
            lo = 1 if key in _POSITIVE_INT else 0
            hi = _LIMITS.get(key)
            if v < lo or (hi is not None and v > hi):
                raise ScenarioError(
                    f"{key}={v} out of range ({lo}..{hi if hi is not None else 'inf'})"
                )
        elif key == "duration_s" or key in _NONNEG_TIME:
            if isinstance(v, bool) or not isinstance(v, (int, float, str, Fraction)):
                raise ScenarioError(f"{key}={v!r} must be a number of seconds")
            try:
                ns = _ns(v)
            except (ValueError, ZeroDivisionError, OverflowError):
                raise ScenarioError(f"{key}={v!r} is not a number of seconds") from None
            if key == "duration_s" and ns <= 0:
                raise ScenarioError(f"duration_s={v!r} must be > 0 seconds")
            if ns < 0:
                raise ScenarioError(f"{key}={v!r} must be >= 0 seconds")
            if ns > KTIME_MAX_NS:
                raise ScenarioError(
                    f"{key}={v!r} is beyond the kernel's ktime_t range "
                    f"(at most {KTIME_MAX_NS} ns, about 292 years)"
                )
        elif key == "fault":
            if v not in (None, "none", *FAULTS):
                raise ScenarioError(
                    f"fault={v!r} invalid; choose one of: none, {', '.join(FAULTS)}"
                )
    return scn, p


def _level_entry(sim: Sim, k: Kernel, end_ns: int) -> dict[str, Any]:
    host = sim.kernels[k.level - 1] if k.level > 0 else None
    own_vm = k.kvm.vm_list[0] if k.kvm is not None and k.kvm.vm_list else None
    host_vm = (
        host.kvm.vm_list[0]
        if host is not None and host.kvm is not None and host.kvm.vm_list
        else None
    )
    assert sim.recorder is not None
    st = sim.recorder.stats[k.level]
    stable_tl = [list(e) for e in host_vm.pvclock_stable_timeline] if host_vm is not None else []
    return {
        "level": k.level,
        "name": k.name,
        "clocksource": k.timekeeper.clock.name,
        "masterclock": own_vm.use_master_clock if own_vm is not None else None,
        "pvclock_stable": (bool(stable_tl[-1][1]) if stable_tl else False)
        if host_vm is not None
        else None,
        "masterclock_timeline": [list(e) for e in own_vm.masterclock_timeline]
        if own_vm is not None
        else [],
        "pvclock_stable_timeline": stable_tl,
        "masterclock_updates": k.kvm.counters["masterclock_updates"] if k.kvm is not None else 0,
        "notifier_calls": k.kvm.counters["notifier_calls"] if k.kvm is not None else 0,
        "gtod_copies": k.kvm.counters["gtod_copies"] if k.kvm is not None else 0,
        "guest_backwards": st.guest_backwards,
        "guest_backwards_stable": st.guest_backwards_stable,
        "guest_backwards_reanchor": st.guest_backwards_reanchor,
        "max_reanchor_step_ns": st.max_reanchor_step_ns,
        "guest_backwards_clamped": st.guest_backwards_clamped,
        "guest_backwards_unclamped": st.guest_backwards_unclamped,
        "backwards_events": st.backwards_events,
        "guest_reads": st.guest_reads,
        "max_cross_vcpu_skew_ns": st.max_cross_vcpu_skew_ns,
        "last_value_clamp_hits": st.last_value_clamp_hits,
        "timekeeping_updates": k.counters["timekeeping_updates"],
        "tsc_unstable": k.tsc_unstable,
        "vcpus": len(k.machine.cpus),
        "kvm_entries": k.kvm.counters["entries"] if k.kvm is not None else 0,
        "clock_definitions": dict(st.max_abs),
    }


def _moments(sim: Sim, level_of: dict[str, int]) -> list[list[Any]]:
    """Key moments in execution order: KVM/scenario moments and the clocksource printks."""
    keys = ("Switched to clocksource", "unstable", "Marking")
    out: list[list[Any]] = []
    for ev in sim.world.events:
        kind = ev.get("kind")
        if kind == "moment":
            out.append([ev["t_ns"], ev["level"], str(ev["text"])])
        elif kind == "printk" and any(s in str(ev.get("text", "")) for s in keys):
            out.append(
                [
                    ev["t_ns"],
                    level_of.get(str(ev.get("kernel")), 0),
                    f"{ev.get('kernel')}: {ev.get('text')}",
                ]
            )
    return out


def run_scenario(
    name: str,
    profile: str | Profile,
    seed: int = 0,
    *,
    trace: bool = False,
    switches: Mapping[str, SwitchValue] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Run built-in scenario ``name`` under ``profile`` (a name of
    :data:`kvmclock.profiles.PROFILES` or a :class:`~kvmclock.profiles.Profile`), with
    ``switches`` flipped from it, and return one run: ``profile`` (its name, which records the
    flipped switches), ``switches`` (every switch's value), the levels, ``moments``,
    ``samples``, ``livelock``, ``stats``, and ``trace`` rows ``[t_ns, level, comm, pid, cpu,
    event, fields]`` when ``trace=True``. Bad input raises ``ScenarioError`` (a ValueError)
    naming the valid choices."""
    try:
        cfg = resolve_profile(profile, **dict(switches or {}))
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    profile = cfg
    scn, p = _validate(name, profile, seed, params)
    fault = p.get("fault")
    sim = Sim(
        profile,
        seed,
        hz=p["hz"],
        sample_ms=p["sample_ms"],
        fault=None if fault in (None, "none") else str(fault),
        spin_limit=p.get("spin_limit", 100_000),
    )
    duration_ns = _ns(p["duration_s"])
    livelock: dict[str, Any] | None = None
    try:
        scn.setup(sim, p)
        if sim.recorder is None:
            sim.start_sampling()
        if duration_ns > sim.world.now_ns:
            sim.world.run_until(duration_ns)
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
    if sim.recorder is None:
        sim.start_sampling()
    level_of = {k.name: k.level for k in sim.kernels}
    moments = _moments(sim, level_of)
    assert sim.recorder is not None
    run: dict[str, Any] = {
        "scenario": name,
        "seed": seed,
        "profile": cfg.name,
        "switches": dict(cfg.values),
        "params": {
            k: (v if isinstance(v, (int, str)) or v is None else str(v)) for k, v in p.items()
        },
        "duration_ns": duration_ns,
        "end_ns": sim.world.now_ns,
        "levels": [_level_entry(sim, k, sim.world.now_ns) for k in sim.kernels],
        "moments": moments,
        "samples": sim.recorder.samples,
        "livelock": livelock,
        "stats": {
            "events": sim.world.events_processed,
            "guest_reads": sum(s.guest_reads for s in sim.recorder.stats.values()),
        },
    }
    if trace:
        run["trace"] = [list(r) for r in sim.trace]
    return run


def format_trace_lines(run: dict[str, Any]) -> list[str]:
    """The run's trace rows as ftrace text lines (``kvmclock.trace.format_line``, level column,
    ``d...`` for kvm_write_tsc_offset which the kernel traces with irqs off)."""
    from kvmclock.trace import format_line

    rows = run.get("trace")
    if rows is None:
        raise ValueError("run has no 'trace' rows: call run_scenario(..., trace=True)")
    return [
        format_line(
            str(comm),
            int(pid),
            int(cpu),
            int(t),
            str(ev),
            str(f),
            flags="d..." if ev == "kvm_write_tsc_offset" else "....",
            level=int(lvl),
        )
        for t, lvl, comm, pid, cpu, ev, f in rows
    ]

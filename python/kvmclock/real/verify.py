"""``kvmclock verify``: one scripted scenario run on the real /dev/kvm and on the model with the
same inputs, and the SPEC §7 relations checked on both.

The script (``SCRIPT``) is a list of operations; the real executor records, for every
operation, the host time (CLOCK_MONOTONIC_RAW relative to VM creation), the host TSC, and what
KVM returned (records, KVM_GET_CLOCK, TSC offsets, the guest's own rdtsc). The concrete values it
chose (TSC values written, the KVM_SET_CLOCK value) are stored as ``inputs`` so the model replays
exactly the same thing. Relations read the per-operation observations through their labels, so
the same relation code judges both sides.

Where the real kernel departs from the model for a known reason, the relation carries
``known_departure`` with the reason's name (``KNOWN_DEPARTURES``); such a relation never makes
``ok`` false, and it is never hidden.

The model side (``replay_model``) replays the real ``inputs`` on ``kvmclock.kvm``: a gtod kernel
(tsc clocksource) on a physical host whose TSC reaches each recorded host TSC at the simulated
instant of its operation, KVM loaded, the VM created at the recorded KVM_CREATE_VM instant, the
same vCPU creations, MSR writes, KVM_RUN entries, TSC writes, KVM_SET_CLOCK values and
KVM_KVMCLOCK_CTRL calls in the same order.  The same relation code then judges the model's run,
and ``compare_runs`` compares the two field by field (exact fields, same-operation windows for
TSC stamps, one kvmclock constant per kvmclock_offset segment within ``EPSILON_NS``), naming
every departure (``KNOWN_DEPARTURES``, ``COMPARISON_DEPARTURES``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmclock import PvclockVcpuTimeInfo, get_time_scale
from kvmclock.errors import RealResourceUnavailable
from kvmclock.real import kvmdev
from kvmclock.real.guest import MEM_SIZE, RDTSC_HLT, load, record_gpa, run_to_hlt

PVCLOCK_TSC_STABLE_BIT = 1
PVCLOCK_GUEST_STOPPED = 2

KNOWN_DEPARTURES: dict[str, str] = {
    "pvm-tsc-offset-not-applied": (
        "PVM (kvm_pvm) computes and traces the L1 TSC offset (kvm_write_tsc_offset) but runs the"
        " guest on the host TSC: the guest's rdtsc and KVM_GET_MSRS(IA32_TSC) return the host"
        " TSC and the KVM_VCPU_TSC_OFFSET attribute reads 0"
    ),
    "extra-publish-on-host-kvmclock-msr-write": (
        "on this kernel a host-initiated MSR_KVM_SYSTEM_TIME_NEW write publishes the record at"
        " once (no kvm_pvclock_update trace event) and the next entry publishes again, so the"
        " version advances two steps; upstream kvm_write_system_time (x86.c) only requests"
        " KVM_REQ_GLOBAL_CLOCK_UPDATE"
    ),
}

# Operations: (op, args...). Labels name observations the relations read.
SCRIPT: tuple[tuple[Any, ...], ...] = (
    ("create_vcpu", 0, "create0"),
    ("create_vcpu", 1, "create1"),
    ("enable_kvmclock", 0),
    ("enable_kvmclock", 1),
    ("run", 0, "run0a"),
    ("run", 1, "run1a"),
    ("run", 0, "run0b"),
    ("run", 1, "run1b"),
    ("get_clock", "clock_matched"),
    ("set_tsc", 1, "far", "far_write"),
    ("run", 1, "run1_far"),
    ("run", 0, "run0_far"),
    ("get_clock", "clock_far"),
    ("set_tsc", 0, "match", "match_write"),
    ("run", 1, "run1_back_a"),
    ("run", 0, "run0_back_a"),
    ("run", 1, "run1_back_b"),
    ("run", 0, "run0_back_b"),
    ("get_clock", "clock_back"),
    ("plant", 0, 7, PVCLOCK_GUEST_STOPPED),
    ("plant", 1, 0xFFFFFFFF, 0),
    ("set_clock", "plus_1s", "set_clock"),
    ("run", 0, "run0_set"),
    ("run", 1, "run1_set"),
    ("kvmclock_ctrl", 1),
    ("run", 1, "run1_ctrl"),
    ("plant", 0, 21, 0),
    ("enable_kvmclock", 0, "msr_rewrite"),
    ("run", 0, "run0_msr"),
)

FAR_SECONDS = 1000  # "far outside the 1 s window"


def _rec(info: PvclockVcpuTimeInfo) -> dict[str, int]:
    return {
        "version": info.version,
        "tsc_timestamp": info.tsc_timestamp,
        "system_time": info.system_time,
        "tsc_to_system_mul": info.tsc_to_system_mul,
        "tsc_shift": info.tsc_shift,
        "flags": info.flags,
    }


def _info(rec: dict[str, int]) -> PvclockVcpuTimeInfo:
    return PvclockVcpuTimeInfo(**rec)


@dataclass
class ScenarioRun:
    """One side's run: concrete inputs and labelled observations."""

    side: str
    tsc_khz: int
    inputs: list[dict[str, Any]] = field(default_factory=list)
    obs: dict[str, dict[str, Any]] = field(default_factory=dict)
    trace: str | None = None
    # KVM_CREATE_VM: {"t_ns": raw-clock ns before it, relative to t0 (< 0), "host_tsc": host TSC
    # before it, "host_tsc_after": host TSC once it returned (VM and memory slot set up)}.
    # Absent in captures made before it was recorded (the 6.18 fixture).
    vm_create: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "tsc_khz": self.tsc_khz,
            "inputs": self.inputs,
            "obs": self.obs,
            "trace": self.trace,
            "vm_create": self.vm_create,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ScenarioRun:
        return cls(
            doc["side"],
            doc["tsc_khz"],
            doc["inputs"],
            doc["obs"],
            doc.get("trace"),
            doc.get("vm_create"),
        )


def _planted(vm: kvmdev.KvmVm, vcpu: int, version: int, or_flags: int) -> None:
    """Write ``version`` and OR ``or_flags`` into the guest's copy of the record (what a guest
    may legally leave there: KVM reads both back in kvm_setup_guest_pvclock)."""
    gpa = record_gpa(vcpu)
    raw = bytearray(vm.memory.read(gpa, 32))
    raw[0:4] = version.to_bytes(4, "little")
    raw[29] |= or_flags
    vm.memory.write(gpa, bytes(raw))


def run_real_scenarios(script: tuple[tuple[Any, ...], ...] = SCRIPT) -> ScenarioRun:
    """Execute ``script`` on /dev/kvm; every fd and mapping released on return or error."""
    from kvmclock.real import rdtsc

    with kvmdev.KvmSystem() as system:
        t_create = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
        tsc_create = rdtsc()
        with system.create_vm(MEM_SIZE) as vm:
            created = {"t_ns": t_create, "host_tsc": tsc_create, "host_tsc_after": rdtsc()}
            return _run_real_script(vm, script, created)


def _run_real_script(
    vm: kvmdev.KvmVm, script: tuple[tuple[Any, ...], ...], created: dict[str, int]
) -> ScenarioRun:
    """The body of ``run_real_scenarios`` on an open VM; ``created`` holds the raw-clock ns
    and host TSC read just before KVM_CREATE_VM and the host TSC read once it returned."""
    from kvmclock.real import rdtsc

    load(vm, RDTSC_HLT)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
    vcpus: dict[int, kvmdev.KvmVcpu] = {}
    run = ScenarioRun("real", 0)
    run.vm_create = dict(created, t_ns=created["t_ns"] - t0)
    last_write: tuple[int, int] | None = None  # (value, host tsc at the write)

    def offsets() -> dict[str, int]:
        return {str(i): v.tsc_offset() for i, v in vcpus.items()}

    for n, step in enumerate(script):
        op = step[0]
        t_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) - t0
        host_tsc = rdtsc()
        inp: dict[str, Any] = {"n": n, "op": op, "t_ns": t_ns, "host_tsc": host_tsc}
        ob: dict[str, Any] = {"n": n, "op": op, "t_ns": t_ns}
        label: str | None = None
        if op == "create_vcpu":
            vid = step[1]
            label = step[2]
            vcpus[vid] = vm.create_vcpu(vid)
            if not run.tsc_khz:
                run.tsc_khz = vcpus[vid].get_tsc_khz()
            inp["vcpu"] = vid
            ob["offsets"] = offsets()
        elif op == "enable_kvmclock":
            vid = step[1]
            label = step[2] if len(step) > 2 else None
            vcpus[vid].enable_kvmclock(record_gpa(vid))
            inp.update(vcpu=vid, gpa=record_gpa(vid))
            ob["record_after_write"] = _rec(vm.read_record(record_gpa(vid)))
        elif op == "run":
            vid, label = step[1], step[2]
            before = rdtsc()
            g = run_to_hlt(vcpus[vid])
            after = rdtsc()
            inp["vcpu"] = vid
            ob.update(
                vcpu=vid,
                record=_rec(vm.read_record(record_gpa(vid))),
                guest_tsc=g.guest_tsc,
                host_tsc_before=before,
                host_tsc_after=after,
                offset=vcpus[vid].tsc_offset(),
            )
        elif op == "get_clock":
            label = step[1]
            c = vm.get_clock()
            ob.update(
                clock=c.clock,
                flags=c.flags,
                realtime=c.realtime,
                host_tsc=c.host_tsc,
                offsets=offsets(),
            )
        elif op == "set_tsc":
            vid, how, label = step[1], step[2], step[3]
            now = rdtsc()
            if how == "far":
                value = now + FAR_SECONDS * run.tsc_khz * 1000
            else:  # "match": the last written value extrapolated by the elapsed cycles
                if last_write is None:
                    raise ValueError("script: 'match' TSC write before any write")
                value = last_write[0] + (now - last_write[1])
            vcpus[vid].set_tsc(value)
            last_write = (value, now)
            inp.update(vcpu=vid, value=value, how=how)
            ob.update(vcpu=vid, value=value, offsets=offsets())
        elif op == "plant":
            vid, version, or_flags = step[1], step[2], step[3]
            _planted(vm, vid, version, or_flags)
            inp.update(vcpu=vid, version=version, or_flags=or_flags)
        elif op == "set_clock":
            label = step[2]
            value = vm.get_clock().clock + 10**9
            vm.set_clock(value)
            inp.update(clock=value, flags=0)
            ob.update(clock=value)
        elif op == "kvmclock_ctrl":
            vid = step[1]
            vcpus[vid].kvmclock_ctrl()
            inp["vcpu"] = vid
        else:
            raise ValueError(f"script op must be one of the SCRIPT ops, got {op!r}")
        run.inputs.append(inp)
        if label is not None:
            run.obs[label] = ob
    return run


# --- relations ------------------------------------------------------------------------------
Relation = dict[str, Any]


def _version_step(old: int) -> int:
    """SPEC §7 version rule: ((old + 1) | 1) + 1 mod 2**32 (x86.c kvm_setup_guest_pvclock)."""
    return (((old + 1) | 1) + 1) & 0xFFFFFFFF


def _stable(rec: dict[str, int]) -> bool:
    return bool(rec["flags"] & PVCLOCK_TSC_STABLE_BIT)


def _check(
    run: ScenarioRun,
) -> dict[str, tuple[bool, str]]:
    """Evaluate every relation on one side's observations: name -> (held, detail)."""
    o = run.obs
    res: dict[str, tuple[bool, str]] = {}

    shift, mul = get_time_scale(scaled_hz=10**9, base_hz=run.tsc_khz * 1000)
    recs = [v["record"] for v in o.values() if "record" in v]
    bad = [r for r in recs if (r["tsc_to_system_mul"], r["tsc_shift"]) != (mul, shift)]
    res["record-mul-shift"] = (
        not bad,
        f"{len(recs)} records vs get_time_scale(10**9, {run.tsc_khz}*1000) = shift {shift}"
        f" mul {mul:#x}" + (f"; {len(bad)} differ" if bad else ""),
    )

    c = o["clock_matched"]
    rec0 = o["run0b"]["record"]
    host_tsc = c["host_tsc"] if c["flags"] & kvmdev.KVM_CLOCK_HOST_TSC else None
    if host_tsc is None or not c["flags"] & kvmdev.KVM_CLOCK_TSC_STABLE:
        res["get-clock-equals-record"] = (
            False,
            f"KVM_GET_CLOCK flags {c['flags']:#x}: no masterclock/host_tsc to compare",
        )
    else:
        off = c["offsets"]["0"]
        expect = _info(rec0).read_cycles((host_tsc + off) & (2**64 - 1))
        res["get-clock-equals-record"] = (
            expect == c["clock"],
            f"clock {c['clock']} vs read_cycles(host_tsc {host_tsc} + offset {off}) = {expect}"
            f" (diff {c['clock'] - expect} ns)",
        )

    offs = o["create1"]["offsets"]
    same_off = offs["0"] == offs["1"]
    r0, r1 = o["run0b"]["record"], o["run1b"]["record"]
    share = (r0["system_time"], r0["tsc_timestamp"]) == (r1["system_time"], r1["tsc_timestamp"])
    res["creation-match-and-shared-records"] = (
        same_off
        and share
        and _stable(r0)
        and _stable(r1)
        and bool(c["flags"] & kvmdev.KVM_CLOCK_TSC_STABLE),
        f"offsets after creation {offs}; after two runs each: system_time {r0['system_time']}"
        f"/{r1['system_time']}, tsc_timestamp {r0['tsc_timestamp']}/{r1['tsc_timestamp']},"
        f" stable {_stable(r0)}/{_stable(r1)}",
    )

    rf1, rf0, cf = o["run1_far"]["record"], o["run0_far"]["record"], o["clock_far"]
    res["far-write-masterclock-off"] = (
        not _stable(rf1) and not _stable(rf0) and not cf["flags"] & kvmdev.KVM_CLOCK_TSC_STABLE,
        f"after the far write on vCPU 1: stable bit {int(_stable(rf1))} (vCPU 1),"
        f" {int(_stable(rf0))} (vCPU 0), KVM_GET_CLOCK flags {cf['flags']:#x}",
    )

    rb0, rb1, cb = o["run0_back_b"]["record"], o["run1_back_b"]["record"], o["clock_back"]
    mo = o["match_write"]["offsets"]
    back = (
        _stable(rb0)
        and _stable(rb1)
        and bool(cb["flags"] & kvmdev.KVM_CLOCK_TSC_STABLE)
        and mo["0"] == mo["1"]
        and (rb0["system_time"], rb0["tsc_timestamp"]) == (rb1["system_time"], rb1["tsc_timestamp"])
    )
    res["matching-write-masterclock-back"] = (
        back,
        f"after the matching write on vCPU 0: offsets {mo} (snapped: {mo['0'] == mo['1']}),"
        f" stable {int(_stable(rb0))}/{int(_stable(rb1))}, KVM_GET_CLOCK flags {cb['flags']:#x}",
    )

    v0 = o["run0_set"]["record"]["version"]
    v1 = o["run1_set"]["record"]["version"]
    res["version-rule"] = (
        v0 == _version_step(7) and v1 == _version_step(0xFFFFFFFF),
        f"guest copy 7 -> {v0} (rule {_version_step(7)}), 0xffffffff -> {v1}"
        f" (rule {_version_step(0xFFFFFFFF)})",
    )

    gs = bool(o["run0_set"]["record"]["flags"] & PVCLOCK_GUEST_STOPPED)
    ctrl = bool(o["run1_ctrl"]["record"]["flags"] & PVCLOCK_GUEST_STOPPED)
    res["guest-stopped-kept"] = (
        gs and ctrl,
        f"GUEST_STOPPED planted in vCPU 0's copy kept: {gs}; set by KVM_KVMCLOCK_CTRL on"
        f" vCPU 1: {ctrl}",
    )

    want = o["set_clock"]["clock"]
    got0 = o["run0_set"]["record"]["system_time"]
    got1 = o["run1_set"]["record"]["system_time"]
    res["set-clock-system-time"] = (
        got0 == want and got1 == want,
        f"KVM_SET_CLOCK {want}: next system_time {got0} (vCPU 0), {got1} (vCPU 1)",
    )

    far = o["far_write"]
    g = o["run1_far"]
    lo = far["value"]
    hi = far["value"] + (g["host_tsc_after"] - run_inputs_tsc(run, "far_write"))
    res["guest-tsc-follows-write"] = (
        lo <= g["guest_tsc"] <= hi,
        f"guest rdtsc {g['guest_tsc']} after writing IA32_TSC={lo}: expected within"
        f" [{lo}, {hi}] (host TSC at that run {g['host_tsc_before']})",
    )

    old = 21
    vm_ = o["run0_msr"]["record"]["version"]
    res["version-rule-msr-rewrite"] = (
        vm_ == _version_step(old),
        f"guest copy {old}, MSR_KVM_SYSTEM_TIME_NEW rewritten, one entry -> {vm_}"
        f" (one step: {_version_step(old)}, two steps: {_version_step(_version_step(old))})",
    )
    return res


def run_inputs_tsc(run: ScenarioRun, label: str) -> int:
    """Host TSC recorded in the inputs at the operation labelled ``label``."""
    n = run.obs[label]["n"]
    tsc: int = run.inputs[n]["host_tsc"]
    return tsc


EXACT = {
    "record-mul-shift": True,
    "get-clock-equals-record": True,
    "creation-match-and-shared-records": True,
    "far-write-masterclock-off": True,
    "matching-write-masterclock-back": True,
    "version-rule": True,
    "guest-stopped-kept": True,
    "set-clock-system-time": True,
    "guest-tsc-follows-write": False,
    "version-rule-msr-rewrite": True,
}

DEPARTURE_FOR = {
    "guest-tsc-follows-write": "pvm-tsc-offset-not-applied",
    "version-rule-msr-rewrite": "extra-publish-on-host-kvmclock-msr-write",
}


def _departure_applies(name: str, real: ScenarioRun, held_real: bool) -> str | None:
    dep = DEPARTURE_FOR.get(name)
    if dep is None or held_real:
        return None
    if dep == "pvm-tsc-offset-not-applied":
        g = real.obs["run1_far"]
        pvm = os.path.isdir("/sys/module/kvm_pvm")
        on_host = g["host_tsc_before"] <= g["guest_tsc"] <= g["host_tsc_after"]
        return dep if (pvm or on_host) else None
    if dep == "extra-publish-on-host-kvmclock-msr-write":
        v = real.obs["run0_msr"]["record"]["version"]
        return dep if v == _version_step(_version_step(21)) else None
    return None


ModelRunner = Callable[[ScenarioRun], ScenarioRun]

# --- model replay -----------------------------------------------------------------------------
MODEL_PROFILE = "gtod"
"""Upstream KVM today has the gtod shape (shadow copy, masterclock only on a TSC host)."""
MODEL_LEAD_NS = 1_000_000_000
"""Simulated time between the model host's boot and the first replayed operation."""
MODEL_HOST_CPUS = 2
_U64 = (1 << 64) - 1


def _s64(value: int) -> int:
    """A u64 read as the kernel's s64 (the KVM_VCPU_TSC_OFFSET attribute is signed)."""
    value &= _U64
    return value - (1 << 64) if value >> 63 else value


class _TscTimeline:
    """World time <-> host TSC for a ``PhysicalCpu`` whose TSC runs at exactly ``khz``.

    The replay places operation ``n`` at the first simulated ns at which the model's TSC
    reaches the recorded ``inputs[n]["host_tsc"]`` (so the model TSC equals it to within
    one ns of cycles, 2-3 cycles at 2.6 GHz).  The recorded CLOCK_MONOTONIC_RAW ``t_ns`` is
    not used for placement: the real side reads it a variable Python call before the TSC
    (the fixture's (ns, tsc) pairs scatter by up to 3.4 us around the recorded kHz line).
    """

    def __init__(self, khz: int, first_tsc: int, lead_ns: int) -> None:
        lead = min(lead_ns, first_tsc * 1_000_000 // khz)
        if lead < 1_000_000:
            raise ValueError(
                f"first recorded host TSC {first_tsc} is less than 1 ms of cycles at {khz} kHz:"
                " no room for the model host to boot before it"
            )
        self.khz = khz
        self.lead_ns = lead
        self.boot_offset = first_tsc - lead * khz // 1_000_000

    def world_ns(self, tsc: int) -> int:
        """Smallest ns at which ``boot_offset + floor(ns * khz / 1e6) >= tsc``."""
        return -(-(tsc - self.boot_offset) * 1_000_000 // self.khz)


def _labels(run: ScenarioRun) -> dict[int, str]:
    return {int(ob["n"]): label for label, ob in run.obs.items()}


def replay_model(real: ScenarioRun, *, profile: str = MODEL_PROFILE, seed: int = 0) -> ScenarioRun:
    """Replay ``real.inputs`` on the model: a ``profile`` kernel (tsc clocksource) on a
    2-CPU physical host whose TSC hits every recorded host TSC, KVM loaded, one VM created
    at the recorded creation instant (or, when it was not recorded, at the first operation),
    then the same operations in the same order.  Returns the model's ``ScenarioRun`` with
    the same labels; its ``inputs`` carry the model's own host TSC per operation and the
    vCPUs' TSC offsets after it, its ``trace`` the model's ftrace text."""
    from kvmclock.kernel import PROFILES, Kernel
    from kvmclock.kvm import (
        KVM_REQ_CLOCK_UPDATE,
        MSR_KVM_SYSTEM_TIME_NEW,
        Kvm,
        KvmModule,
        Vcpu,
        VcpuCpu,
    )
    from kvmclock.machine.physical import PhysicalCpu, PhysicalMachine
    from kvmclock.machine.world import World
    from kvmclock.trace import format_line

    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} invalid; choose one of {', '.join(PROFILES)}")
    if isinstance(real.tsc_khz, bool) or not isinstance(real.tsc_khz, int) or real.tsc_khz <= 0:
        raise ValueError(f"real.tsc_khz={real.tsc_khz!r} must be a positive int (kHz)")
    if not real.inputs:
        raise ValueError("real.inputs is empty: nothing to replay")
    inputs = real.inputs
    create_tsc = int(real.vm_create["host_tsc"]) if real.vm_create else int(inputs[0]["host_tsc"])
    tl = _TscTimeline(real.tsc_khz, min(create_tsc, int(inputs[0]["host_tsc"])), MODEL_LEAD_NS)

    world = World(seed)
    cpus = [
        PhysicalCpu(world, i, real.tsc_khz, boot_offset=tl.boot_offset)
        for i in range(MODEL_HOST_CPUS)
    ]
    machine = PhysicalMachine(world, cpus)
    # cast: PhysicalMachine's list/dict attributes do not match the Machine protocol's
    # invariant Sequence[Cpu]/dict[str, Counter] member types under mypy (machine/base.py).
    kernel = Kernel(machine, profile, name="L0", clocksource_override="tsc")
    kernel.boot()
    module: KvmModule = kernel.load_kvm()
    cpu = module.ioctl_cpu  # one thread does every ioctl, as the real script does

    def host_tsc() -> int:
        return int(machine.cpus[cpu].read_tsc())

    world.run_until(max(world.now_ns, tl.world_ns(create_tsc)))
    if kernel.timekeeper.clock.name != "tsc":
        raise RuntimeError(f"model host clocksource is {kernel.timekeeper.clock.name}, not tsc")
    kvm: Kvm = module.create_vm(name="verify", memory_size=MEM_SIZE)
    mem = kvm.machine.memory
    origin = tl.world_ns(int(inputs[0]["host_tsc"])) - int(inputs[0]["t_ns"])
    run = ScenarioRun("model", 0)
    run.vm_create = {"t_ns": world.now_ns - origin, "host_tsc": host_tsc()}
    labels = _labels(real)

    def offsets() -> dict[str, int]:
        return {str(v.vcpu_id): _s64(v.tsc_offset) for v in kvm.vcpus}

    def record(gpa: int) -> dict[str, int]:
        return _rec(PvclockVcpuTimeInfo.from_bytes(bytes(mem[gpa : gpa + 32])))

    def on_vcpu_thread(vid: int, fn: Callable[[], None]) -> None:
        """A vCPU ioctl: vcpu_load on the thread's CPU, the handler, vcpu_put."""
        vcpu = kvm.vcpus[vid]

        def body() -> None:
            module.kvm_arch_vcpu_load(vcpu, kernel.current_cpu)
            fn()
            module.kvm_arch_vcpu_put(vcpu)

        kernel.run_on_cpu(vcpu.affinity, body)

    for n, inp in enumerate(inputs):
        op = inp["op"]
        world.run_until(max(world.now_ns, tl.world_ns(int(inp["host_tsc"]))))
        now_tsc = host_tsc()
        minp: dict[str, Any] = {
            "n": n,
            "op": op,
            "t_ns": world.now_ns - origin,
            "host_tsc": now_tsc,
        }
        ob: dict[str, Any] = {"n": n, "op": op, "t_ns": minp["t_ns"]}
        vid = inp.get("vcpu")
        if vid is not None:
            if isinstance(vid, bool) or not isinstance(vid, int) or vid < 0:
                raise ValueError(f"inputs[{n}]['vcpu']={vid!r} must be an int >= 0")
            if op != "create_vcpu" and vid >= len(kvm.vcpus):
                raise ValueError(f"inputs[{n}]: vcpu {vid} used before it was created")
            minp["vcpu"] = vid
        if op == "create_vcpu":
            vcpu = kvm.create_vcpu(affinity=cpu)
            if vcpu.vcpu_id != vid:
                raise ValueError(f"inputs[{n}]: created vcpu {vcpu.vcpu_id}, recorded {vid}")
            if not run.tsc_khz:
                run.tsc_khz = vcpu.virtual_tsc_khz  # KVM_GET_TSC_KHZ
            ob["offsets"] = offsets()
        elif op == "enable_kvmclock":
            gpa = int(inp["gpa"])
            assert vid is not None
            target = kvm.vcpus[vid]

            def write_msr(v: Vcpu = target, g: int = gpa) -> None:
                # KVM_SET_MSRS (host-initiated): kvm_set_msr_common(MSR_KVM_SYSTEM_TIME_NEW)
                module.kvm_set_msr_common(v, MSR_KVM_SYSTEM_TIME_NEW, g | 1, host_initiated=True)

            on_vcpu_thread(vid, write_msr)
            minp["gpa"] = gpa
            ob["record_after_write"] = record(gpa)
        elif op == "run":
            assert vid is not None
            vm = kvm.machine
            guest_cpu = vm.cpus[vid]

            def rdtsc_hlt(c: VcpuCpu = guest_cpu) -> int:
                return c.read_tsc()  # the guest's ``rdtsc; hlt``

            guest_tsc = vm.run_on_cpu(vid, rdtsc_hlt)
            ob.update(
                vcpu=vid,
                record=record(record_gpa(vid)),
                guest_tsc=guest_tsc,
                host_tsc_before=now_tsc,
                host_tsc_after=host_tsc(),  # simulated time does not move inside an operation
                offset=_s64(kvm.vcpus[vid].tsc_offset),
            )
        elif op == "get_clock":
            # KVM_GET_CLOCK as since 5.16: KVM_CLOCK_REALTIME|KVM_CLOCK_HOST_TSC only with
            # masterclock (__get_kvmclock); the 2017 ioctl had neither.
            c = kvm.get_clock(extended=kvm.use_master_clock)
            ob.update(
                clock=c.clock,
                flags=c.flags,
                realtime=c.realtime,
                host_tsc=c.host_tsc,
                offsets=offsets(),
            )
        elif op == "set_tsc":
            assert vid is not None
            value = int(inp["value"])
            kvm.write_tsc(vid, value, host_initiated=True)  # KVM_SET_MSRS(IA32_TSC)
            minp.update(value=value, how=inp.get("how"))
            ob.update(vcpu=vid, value=value, offsets=offsets())
        elif op == "plant":
            assert vid is not None
            gpa = record_gpa(vid)
            mem[gpa : gpa + 4] = int(inp["version"]).to_bytes(4, "little")
            mem[gpa + 29] |= int(inp["or_flags"])
            minp.update(version=inp["version"], or_flags=inp["or_flags"])
        elif op == "set_clock":
            kvm.set_clock(int(inp["clock"]), flags=int(inp.get("flags", 0)))
            minp.update(clock=inp["clock"], flags=inp.get("flags", 0))
            ob["clock"] = inp["clock"]
        elif op == "kvmclock_ctrl":
            assert vid is not None
            v = kvm.vcpus[vid]
            # KVM_KVMCLOCK_CTRL = x86.c kvm_set_guest_paused (not in kvmclock.kvm): -EINVAL
            # unless kvmclock is enabled; else request GUEST_STOPPED in the next record.
            if not v.pv_time_enabled:
                raise ValueError(f"inputs[{n}]: KVM_KVMCLOCK_CTRL on vcpu {vid} without kvmclock")

            def paused(v: Vcpu = v) -> None:
                v.pvclock_set_guest_stopped_request = True
                v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)

            on_vcpu_thread(vid, paused)
        else:
            raise ValueError(f"inputs[{n}]['op']={op!r} is not one of the SCRIPT ops")
        minp["offsets"] = offsets()
        run.inputs.append(minp)
        if n in labels:
            run.obs[labels[n]] = ob
    lines = ["# tracer: nop", "#"] + [
        format_line(
            comm, pid, c, t, ev, f, flags="d..1." if ev != "kvm_pvclock_update" else "....."
        )
        for t, _lvl, comm, pid, c, ev, f in module.trace_records
    ]
    run.trace = "\n".join(lines) + "\n"
    return run


def _model_runner() -> tuple[ModelRunner | None, str]:
    """The model replay of a real run (``replay_model``), or (None, why not)."""
    try:
        import kvmclock.kvm.x86  # noqa: F401
    except ImportError as exc:
        return None, f"model unavailable: {exc}"
    return replay_model, f"replayed on a {MODEL_PROFILE} kernel with a tsc host"


# --- real vs model, field by field ------------------------------------------------------------
EPSILON_NS = 250
"""Per-segment spread allowed in the kvmclock difference real - model at one host TSC: the
real kernel reads rdtsc and the raw clock a few instructions apart for a non-masterclock
record (kvm_guest_time_update), each side truncates once in pvclock scaling, and the real
raw clock's mult differs from the records' mul by parts per billion."""

COMPARISON_DEPARTURES: dict[str, str] = {
    "kvmclock-base-monotonic-raw": (
        "the real kvmclock base is CLOCK_MONOTONIC_RAW + the boot offset (x86.c"
        " get_kvmclock_base_ns since 2020, not NTP-slewed); the model follows 2017"
        " ktime_get_boot_ns on an NTP-free timekeeper: both advance at the TSC rate, so the"
        " difference is one constant per kvmclock_offset segment, not a drift"
    ),
    "vm-creation-instant-not-recorded": (
        "the capture predates recording the host TSC at KVM_CREATE_VM: the model creates the"
        " VM at the first operation, so the creation segment's constant (real - model) is only"
        " known to be >= 0"
    ),
    "get-clock-realtime-not-compared": (
        "KVM_GET_CLOCK realtime is host wall-clock time; the model's wall clock is its own"
        " seeded RTC epoch"
    ),
}


def _ns_signed(delta: int, mul: int, shift: int) -> int:
    """pvclock_scale_delta of a signed cycle count (the record's mul/shift)."""
    from kvmclock import pvclock_scale_delta

    mag = int(pvclock_scale_delta(abs(delta), mul, shift))
    return mag if delta >= 0 else -mag


def _op_window(run: ScenarioRun, n: int) -> tuple[int, int]:
    """Host TSC window of real operation ``n``: from its recorded TSC to the TSC read after
    its KVM_RUN, else to the next operation's recorded TSC."""
    a = int(run.inputs[n]["host_tsc"])
    for ob in run.obs.values():
        if ob["n"] == n and "host_tsc_after" in ob:
            return a, int(ob["host_tsc_after"])
    if n + 1 < len(run.inputs):
        return a, int(run.inputs[n + 1]["host_tsc"])
    return a, max(
        [a] + [int(ob["host_tsc_after"]) for ob in run.obs.values() if "host_tsc_after" in ob]
    )


def _real_offset(run: ScenarioRun, vid: int, n: int) -> int:
    """The real vCPU's KVM_VCPU_TSC_OFFSET attribute as last read at or before op ``n``."""
    best: tuple[int, int] = (-1, 0)
    for ob in run.obs.values():
        m = int(ob["n"])
        if m > n or m < best[0]:
            continue
        if "offset" in ob and ob.get("vcpu") == vid:
            best = (m, int(ob["offset"]))
        elif str(vid) in ob.get("offsets", {}):
            best = (m, int(ob["offsets"][str(vid)]))
    return best[1]


def _model_op_at(model: ScenarioRun, tsc: int, n: int) -> int | None:
    """The last model operation at or before ``n`` that ran at host TSC ``tsc``."""
    for k in range(n, -1, -1):
        if int(model.inputs[k]["host_tsc"]) == tsc:
            return k
    return None


def _entry(
    label: str, fld: str, real: Any, model: Any, rule: str, held: bool, dep: str | None = None
) -> dict[str, Any]:
    return {
        "label": label,
        "field": fld,
        "real": real,
        "model": model,
        "rule": rule,
        "held": held,
        "known_departure": None if held else dep,
    }


def compare_runs(real: ScenarioRun, model: ScenarioRun) -> dict[str, Any]:
    """Compare the real records (and KVM_GET_CLOCK results, TSC offsets, traced events) with
    the model's, label by label.

    * exact: version, tsc_to_system_mul, tsc_shift, flags; KVM_GET_CLOCK flags; the event
      sequence of the two traces (names, vCPUs, masterclock/matching fields, record versions
      and flags).
    * same operation: a record's ``tsc_timestamp`` (host TSC domain on both sides: tsc_timestamp
      minus the vCPU's applied TSC offset) is taken by the model at the instant of operation
      m; the real one must lie in the real host TSC window of the same operation m.  Likewise
      KVM_GET_CLOCK host_tsc and the guest's rdtsc (host domain).
    * kvmclock at one host TSC: D = real system_time - model kvmclock at the real record's
      tsc_timestamp is one constant per kvmclock_offset segment (VM creation, KVM_SET_CLOCK)
      within ``EPSILON_NS``, and the constant lies within the segment's instant window.
    * TSC offsets (attribute and traced): model - real in [-3, W] cycles, W the largest window
      of a TSC-writing operation (the offset is target - host TSC at the write).
    A mismatch that a known departure explains carries its name; ``held`` is True when every
    entry held or is explained.
    """
    from kvmclock.real import kvmdev as kd

    pvm = _departure_applies("guest-tsc-follows-write", real, False) is not None
    msr = _departure_applies("version-rule-msr-rewrite", real, False) is not None
    pvm_dep = "pvm-tsc-offset-not-applied" if pvm else None
    msr_dep = "extra-publish-on-host-kvmclock-msr-write" if msr else None
    entries: list[dict[str, Any]] = []
    shift, mul = get_time_scale(scaled_hz=10**9, base_hz=real.tsc_khz * 1000)
    set_ops = [n for n, i in enumerate(real.inputs) if i["op"] == "set_clock"]
    set_op = set_ops[0] if set_ops else None
    # D samples: (segment, label, lo, hi) with lo == hi for a point
    samples: list[tuple[str, str, int, int]] = []
    tsc_write_ops = [n for n, i in enumerate(real.inputs) if i["op"] in ("create_vcpu", "set_tsc")]
    w_tsc = max((_op_window(real, n)[1] - _op_window(real, n)[0] for n in tsc_write_ops), default=0)
    off_rule = f"model - real offset in [-3, {w_tsc}] cycles (largest TSC-write op window)"

    def seg_of(m: int) -> str:
        return "set_clock" if set_op is not None and m >= set_op else "creation"

    def off_ok(o_model: int, o_real: int) -> bool:
        return -3 <= o_model - o_real <= w_tsc

    for label, ro in real.obs.items():
        mo = model.obs.get(label)
        if mo is None:
            entries.append(_entry(label, "*", "observed", None, "label present", False))
            continue
        n = int(ro["n"])
        key = (
            "record"
            if "record" in ro
            else "record_after_write"
            if "record_after_write" in ro
            else None
        )
        if key is not None:
            rr, mr = ro[key], mo[key]
            vid = int(real.inputs[n]["vcpu"])
            dep_here = (
                msr_dep
                if label == "msr_rewrite" or (label == "run0_msr" and key == "record")
                else None
            )
            for fld in ("version", "tsc_to_system_mul", "tsc_shift", "flags"):
                entries.append(
                    _entry(label, fld, rr[fld], mr[fld], "exact", rr[fld] == mr[fld], dep_here)
                )
            m_off = int(model.inputs[n]["offsets"][str(vid)])
            x_m = (int(mr["tsc_timestamp"]) - m_off) & _U64
            x_r = (int(rr["tsc_timestamp"]) - _real_offset(real, vid, n)) & _U64
            m = _model_op_at(model, x_m, n)
            if m is None:
                entries.append(
                    _entry(label, "tsc_timestamp", x_r, x_m, "model snapshot at an op", False)
                )
                continue
            a, b = _op_window(real, m)
            entries.append(
                _entry(
                    label,
                    "tsc_timestamp",
                    x_r,
                    x_m,
                    f"same operation: real in op {m}'s host TSC window [{a}, {b}]"
                    f" ({b - a} cycles), model at {x_m} (real - model {x_r - x_m} cycles)",
                    a <= x_r <= b,
                )
            )
            d = (
                int(rr["system_time"])
                - int(mr["system_time"])
                - _ns_signed(x_r - x_m, int(mr["tsc_to_system_mul"]), int(mr["tsc_shift"]))
            )
            samples.append((seg_of(m), f"{label}.{key}", d, d))
            if "guest_tsc" in ro:
                g = int(ro["guest_tsc"]) - _real_offset(real, vid, n)
                gm = int(mo["guest_tsc"]) - int(mo["offset"])
                lo, hi = int(ro["host_tsc_before"]), int(ro["host_tsc_after"])
                entries.append(
                    _entry(
                        label,
                        "guest_tsc - offset",
                        g,
                        gm,
                        f"same operation: real in [{lo}, {hi}], model at op instant",
                        lo <= g <= hi and gm == int(model.inputs[n]["host_tsc"]),
                    )
                )
        if "clock" in ro and ro["op"] == "get_clock":
            entries.append(
                _entry(
                    label, "flags", ro["flags"], mo["flags"], "exact", ro["flags"] == mo["flags"]
                )
            )
            entries.append(
                _entry(
                    label,
                    "realtime",
                    ro["realtime"],
                    mo["realtime"],
                    "not compared",
                    False,
                    "get-clock-realtime-not-compared",
                )
            )
            a, b = _op_window(real, n)
            x_m = int(model.inputs[n]["host_tsc"])
            if ro["flags"] & kd.KVM_CLOCK_HOST_TSC:
                x_r = int(ro["host_tsc"])
                entries.append(
                    _entry(
                        label,
                        "host_tsc",
                        x_r,
                        mo["host_tsc"],
                        f"same operation: real in [{a}, {b}]",
                        a <= x_r <= b,
                    )
                )
                d = int(ro["clock"]) - int(mo["clock"]) - _ns_signed(x_r - x_m, mul, shift)
                samples.append((seg_of(n), f"{label}.clock", d, d))
            else:
                base = int(ro["clock"]) - int(mo["clock"])
                samples.append(
                    (
                        seg_of(n),
                        f"{label}.clock",
                        base - _ns_signed(b - x_m, mul, shift),
                        base - _ns_signed(a - x_m, mul, shift),
                    )
                )
        if "offsets" in ro:
            for vs, o_r in ro["offsets"].items():
                o_m = int(mo["offsets"][vs])
                entries.append(
                    _entry(
                        label,
                        f"tsc_offset[{vs}]",
                        o_r,
                        o_m,
                        off_rule,
                        off_ok(o_m, int(o_r)),
                        pvm_dep,
                    )
                )
        if "offset" in ro and "vcpu" in ro:
            o_m = int(mo["offset"])
            entries.append(
                _entry(
                    label,
                    "tsc_offset",
                    ro["offset"],
                    o_m,
                    off_rule,
                    off_ok(o_m, int(ro["offset"])),
                    pvm_dep,
                )
            )
    entries.extend(_compare_traces(real, model, off_ok, off_rule, msr_dep))

    segments: list[dict[str, Any]] = []
    for seg in ("creation", "set_clock"):
        pts = [s for s in samples if s[0] == seg]
        if not pts:
            continue
        points = sorted(lo for _, _, lo, hi in pts if lo == hi)
        if points:
            c = points[len(points) // 2]
        else:
            c = max(lo for _, _, lo, _ in pts)
        if seg == "creation":
            if real.vm_create:
                a = int(real.vm_create["host_tsc"])
                b = int(real.vm_create.get("host_tsc_after", real.inputs[0]["host_tsc"]))
                c_lo, c_hi = -_ns_signed(b - a, mul, shift), 0
                seg_dep: str | None = None
            else:
                c_lo, c_hi = 0, None
                seg_dep = "vm-creation-instant-not-recorded"
            why = "KVM_CREATE_VM instant"
        else:
            assert set_op is not None
            a, b = _op_window(real, set_op)
            x_s = int(model.inputs[set_op]["host_tsc"])
            c_lo, c_hi = -_ns_signed(b - x_s, mul, shift), _ns_signed(x_s - a, mul, shift)
            seg_dep = None
            why = f"KVM_SET_CLOCK (op {set_op}) instant"
        in_bound = c >= c_lo - EPSILON_NS and (c_hi is None or c <= c_hi + EPSILON_NS)
        for _, lbl, lo, hi in pts:
            ok = lo - EPSILON_NS <= c <= hi + EPSILON_NS
            entries.append(
                _entry(
                    lbl,
                    "kvmclock real - model at one host TSC",
                    lo if lo == hi else [lo, hi],
                    c,
                    f"segment {seg}: within {EPSILON_NS} ns of the segment constant {c} ns",
                    ok,
                )
            )
        segments.append(
            {
                "segment": seg,
                "constant_ns": c,
                "samples": len(pts),
                "spread_ns": max((abs(p - c) for p in points), default=None),
                "bound_ns": [c_lo, c_hi],
                "bound_from": why,
                "held": in_bound,
                "known_departure": seg_dep,
                "also": "kvmclock-base-monotonic-raw",
            }
        )
        entries.append(
            _entry(
                seg,
                "segment constant",
                c,
                [c_lo, c_hi],
                f"constant within the {why} window (+-{EPSILON_NS} ns)",
                in_bound,
                seg_dep,
            )
        )
    bad = [e for e in entries if not e["held"] and e["known_departure"] is None]
    departures = sorted(
        {e["known_departure"] for e in entries if e["known_departure"]}
        | {sg["known_departure"] for sg in segments if sg["known_departure"]}
    )
    return {
        "held": not bad,
        "entries": entries,
        "segments": segments,
        "epsilon_ns": EPSILON_NS,
        "compared": len(entries),
        "exact_held": sum(1 for e in entries if e["held"] and e["rule"] == "exact"),
        "not_held": bad,
        "departures": {
            d: KNOWN_DEPARTURES.get(d) or COMPARISON_DEPARTURES.get(d) for d in departures
        }
        | {"kvmclock-base-monotonic-raw": COMPARISON_DEPARTURES["kvmclock-base-monotonic-raw"]},
    }


def _compare_traces(
    real: ScenarioRun,
    model: ScenarioRun,
    off_ok: Callable[[int, int], bool],
    off_rule: str,
    msr_dep: str | None,
) -> list[dict[str, Any]]:
    """Event by event: the same sequence of the four KVM clock events on both sides."""
    if not real.trace or not model.trace:
        return []
    from kvmclock.trace import parse_text

    rs = [r for r in parse_text(real.trace).records if r.data is not None]
    ms = [r for r in parse_text(model.trace).records if r.data is not None]
    out: list[dict[str, Any]] = []
    names_r = [(r.event, r.data.get("vcpu_id") if r.data else None) for r in rs]
    names_m = [(r.event, r.data.get("vcpu_id") if r.data else None) for r in ms]
    out.append(
        _entry(
            "trace",
            "event sequence",
            len(rs),
            len(ms),
            "exact (event, vcpu) sequence",
            names_r == names_m,
        )
    )
    if names_r != names_m:
        return out
    exact_keys = {
        "kvm_update_master_clock": ("use_master_clock", "offset_matched", "host_clock"),
        "kvm_track_tsc": (
            "vcpu_id",
            "use_master_clock",
            "nr_vcpus_matched_tsc",
            "online_vcpus",
            "host_clock",
        ),
        "kvm_pvclock_update": ("version", "tsc_to_system_mul", "tsc_shift", "flags"),
    }
    offs_r: list[int] = []
    offs_m: list[int] = []
    last_pv = {i for i, r in enumerate(rs) if r.event == "kvm_pvclock_update"}
    last_pv_i = max(last_pv) if last_pv else -1
    for i, (r, m) in enumerate(zip(rs, ms, strict=True)):
        assert r.data is not None and m.data is not None
        lbl = f"trace[{i}] {r.event}"
        if r.event == "kvm_write_tsc_offset":
            o_r, o_m = _s64(r.data["next_tsc_offset"]), _s64(m.data["next_tsc_offset"])
            offs_r.append(o_r)
            offs_m.append(o_m)
            out.append(_entry(lbl, "next_tsc_offset", o_r, o_m, off_rule, off_ok(o_m, o_r)))
            continue
        for k in exact_keys.get(r.event, ()):
            # the last kvm_pvclock_update is the entry after the MSR rewrite: on a kernel with
            # the extra publish its version is one step further than the model's
            dep = msr_dep if r.event == "kvm_pvclock_update" and i == last_pv_i else None
            out.append(_entry(lbl, k, r.data[k], m.data[k], "exact", r.data[k] == m.data[k], dep))
    snap_r = [[a == b for b in offs_r] for a in offs_r]
    snap_m = [[a == b for b in offs_m] for a in offs_m]
    out.append(
        _entry(
            "trace",
            "offset equality pattern",
            snap_r,
            snap_m,
            "exact: the same writes share a generation offset (creation, snapped match)",
            snap_r == snap_m,
        )
    )
    return out


_OFFSET_RE = re.compile(r"kvm_write_tsc_offset: vcpu=(\d+) prev=(\d+) next=(\d+)")


def trace_offsets(text: str) -> list[tuple[int, int]]:
    """(vcpu, next offset) of every ``kvm_write_tsc_offset`` line, in order."""
    return [(int(m[1]), int(m[3])) for m in _OFFSET_RE.finditer(text)]


def _trace_relation(real: ScenarioRun) -> tuple[bool, str] | None:
    """From the captured trace: the 4 kvm_write_tsc_offset lines are creation 0, creation 1,
    far write (vCPU 1), matching write (vCPU 0); creation offsets equal and the matching write
    snapped to the far write's generation offset."""
    if not real.trace:
        return None
    offs = trace_offsets(real.trace)
    if len(offs) != 4:
        return False, f"expected 4 kvm_write_tsc_offset events, got {len(offs)}: {offs}"
    (c0, o0), (c1, o1), (f1, of), (m0, om) = offs
    held = (c0, c1, f1, m0) == (0, 1, 1, 0) and o0 == o1 and om == of and of != o0
    return held, (
        f"traced offsets: creation {o0}/{o1}, far write (vCPU {f1}) {of}, matching write"
        f" (vCPU {m0}) {om}: snapped {om == of}"
    )


def _real_run(trace: bool | None) -> tuple[ScenarioRun, str]:
    """Run the real scenario, with a trace capture when asked (None: when possible)."""
    from kvmclock.real import tracefs

    if trace is False:
        return run_real_scenarios(), "not requested"
    try:
        if tracefs.find_tracefs() is not None:
            run, text = tracefs.capture(run_real_scenarios)
        else:
            doc, text = tracefs.capture_private_namespace()
            run = ScenarioRun.from_json(doc)
        run.trace = text
        return run, "captured"
    except (RealResourceUnavailable, OSError) as exc:
        if trace:
            raise
        return run_real_scenarios(), f"no trace: {exc}"


def run_verify(scenarios: list[str] | None = None, trace: bool | None = None) -> dict[str, Any]:
    """Run the real scenario and the model replay of its inputs, check every relation on both
    sides and compare the records field by field (``verify_run``).

    ``scenarios``: None or a subset of ``["clock-relations"]``; ``trace``: capture the four KVM
    clock events in a private tracefs instance (None = when possible). Raises
    RealResourceUnavailable when /dev/kvm is missing.
    """
    names = ["clock-relations"] if scenarios is None else list(scenarios)
    unknown = [n for n in names if n != "clock-relations"]
    if unknown:
        raise ValueError(f"scenarios must be a subset of ['clock-relations'], got {unknown}")
    real, trace_status = _real_run(trace)
    result = verify_run(real, trace_status=trace_status)
    result["scenarios"] = names
    return result


def verify_run(real: ScenarioRun, *, trace_status: str = "from the run") -> dict[str, Any]:
    """Everything ``run_verify`` does after the real run: the model replay of ``real.inputs``,
    the relations on both sides, the field-by-field comparison. Works on a stored capture.

    ``ok`` is False when a relation did not hold on the real side without a known departure,
    did not hold on the model (the model has no departures), the model replay failed, or the
    comparison found a difference outside its bounds that no known departure explains.
    """
    runner, why = _model_runner()
    model: ScenarioRun | None = None
    model_error: str | None = None
    if runner is not None:
        try:
            model = runner(real)
        except (ValueError, RuntimeError, ArithmeticError, KeyError, ImportError) as exc:
            model_error = why = f"model replay failed: {type(exc).__name__}: {exc}"
    real_res = _check(real)
    model_res = _check(model) if model is not None else {}
    relations: list[Relation] = []
    ok = model_error is None
    for name, (held, detail) in real_res.items():
        dep = _departure_applies(name, real, held)
        held_model: bool | None = model_res[name][0] if name in model_res else None
        rel: Relation = {
            "name": name,
            "scenario": "clock-relations",
            "held_real": held,
            "held_model": held_model,
            "exact": EXACT[name],
            "detail": detail,
            "detail_model": model_res[name][1] if name in model_res else why,
            "known_departure": dep,
            "known_departure_text": KNOWN_DEPARTURES.get(dep) if dep else None,
        }
        if not EXACT[name]:
            rel["bound"] = "guest rdtsc within the host TSC window of the run"
        if (not held and dep is None) or held_model is False:
            ok = False
        relations.append(rel)
    traced = _trace_relation(real)
    if traced is not None:
        traced_model = _trace_relation(model) if model is not None else None
        relations.append(
            {
                "name": "traced-offsets-snapped",
                "scenario": "clock-relations",
                "held_real": traced[0],
                "held_model": traced_model[0] if traced_model else None,
                "exact": True,
                "detail": traced[1],
                "detail_model": traced_model[1] if traced_model else why,
                "known_departure": None,
                "known_departure_text": None,
            }
        )
        ok = ok and traced[0] and (traced_model is None or traced_model[0])
    comparison = compare_runs(real, model) if model is not None else None
    if comparison is not None and not comparison["held"]:
        ok = False
    return {
        "ok": ok,
        "kernel": os.uname().release,
        "trace": trace_status,
        "scenarios": ["clock-relations"],
        "model": "ran" if model is not None else why,
        "model_setup": why if model is not None else None,
        "relations": relations,
        "comparison": comparison,
        "real": real.to_json(),
        "model_run": model.to_json() if model is not None else None,
    }


def format_verify(result: dict[str, Any]) -> str:
    """Readable report: one line per relation, real and model verdicts, departures by name."""

    def v(x: bool | None) -> str:
        return "n/a" if x is None else ("held" if x else "DID NOT HOLD")

    lines = [f"kvmclock verify on {result['kernel']} (model: {result['model']})"]
    for r in result["relations"]:
        kind = "exact" if r["exact"] else f"bound: {r.get('bound')}"
        lines.append(
            f"- {r['name']} [{kind}]: real {v(r['held_real'])}, model {v(r['held_model'])}"
        )
        lines.append(f"    real: {r['detail']}")
        if r["held_model"] is not None:
            lines.append(f"    model: {r['detail_model']}")
        if r["known_departure"]:
            lines.append(f"    known departure {r['known_departure']}: {r['known_departure_text']}")
    comp = result.get("comparison")
    if comp is not None:
        n_dep = sum(1 for e in comp["entries"] if e["known_departure"])
        lines.append(
            f"real vs model, field by field: {v(comp['held'])} ({comp['compared']} comparisons,"
            f" {comp['exact_held']} exact fields equal, {n_dep} differences explained by a known"
            f" departure, {len(comp['not_held'])} unexplained)"
        )
        for sg in comp["segments"]:
            lo, hi = sg["bound_ns"]
            hi = "+inf" if hi is None else hi
            lines.append(
                f"    kvmclock real - model, segment {sg['segment']}:"
                f" constant {sg['constant_ns']} ns"
                f" over {sg['samples']} samples (max deviation {sg['spread_ns']} ns, allowed"
                f" {comp['epsilon_ns']}); {sg['bound_from']} window [{lo}, {hi}] ns:"
                f" {v(sg['held'])}"
                + (f" ({sg['known_departure']})" if sg["known_departure"] else "")
            )
        for e in comp["not_held"]:
            lines.append(
                f"    DIFFERS {e['label']}.{e['field']}: real {e['real']} model {e['model']}"
                f" ({e['rule']})"
            )
        for name, text in comp["departures"].items():
            lines.append(f"    known departure {name}: {text}")
    lines.append("OK" if result["ok"] else "FAILED: a relation that should hold did not")
    return "\n".join(lines)


__all__ = [
    "COMPARISON_DEPARTURES",
    "EPSILON_NS",
    "KNOWN_DEPARTURES",
    "MODEL_PROFILE",
    "SCRIPT",
    "RealResourceUnavailable",
    "ScenarioRun",
    "compare_runs",
    "format_verify",
    "replay_model",
    "run_real_scenarios",
    "run_verify",
    "verify_run",
]

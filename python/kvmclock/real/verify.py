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
    # Host time just before KVM_CREATE_VM: {"t_ns": ns relative to t0 (<= 0), "host_tsc"}.
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
            return _run_real_script(vm, script, t_create, tsc_create)


def _run_real_script(
    vm: kvmdev.KvmVm, script: tuple[tuple[Any, ...], ...], t_create: int, tsc_create: int
) -> ScenarioRun:
    """The body of ``run_real_scenarios`` on an open VM (KVM_CREATE_VM at ``t_create``)."""
    from kvmclock.real import rdtsc

    load(vm, RDTSC_HLT)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
    vcpus: dict[int, kvmdev.KvmVcpu] = {}
    run = ScenarioRun("real", 0)
    run.vm_create = {"t_ns": t_create - t0, "host_tsc": tsc_create}
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


def _model_runner() -> tuple[ModelRunner | None, str]:
    """The model replay of a real run, or (None, why not).

    The replay must drive ``kvmclock.kvm`` (KvmModule/Kvm/Vcpu on a gtod-profile kernel with a
    TSC host) with ``run.inputs``; it is not wired yet, and this says so in every result.
    """
    import importlib.util

    if importlib.util.find_spec("kvmclock.kvm") is None:
        return None, "model unavailable: kvmclock.kvm is not in this tree yet"
    return None, "model replay of the real inputs not wired to kvmclock.kvm yet"


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
    """Run the real scenario (and the model replay), check every relation on both sides.

    ``scenarios``: None or a subset of ``["clock-relations"]``; ``trace``: capture the four KVM
    clock events in a private tracefs instance (None = when possible). Raises
    RealResourceUnavailable when /dev/kvm is missing.
    """
    names = ["clock-relations"] if scenarios is None else list(scenarios)
    unknown = [n for n in names if n != "clock-relations"]
    if unknown:
        raise ValueError(f"scenarios must be a subset of ['clock-relations'], got {unknown}")
    real, trace_status = _real_run(trace)
    runner, why = _model_runner()
    model: ScenarioRun | None = None
    if runner is not None:
        try:
            model = runner(real)
        except (NotImplementedError, ImportError, AttributeError) as exc:
            why = f"model replay failed: {type(exc).__name__}: {exc}"
    real_res = _check(real)
    model_res = _check(model) if model is not None else {}
    relations: list[Relation] = []
    ok = True
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
        if (not held and dep is None) or (held_model is False and dep is None):
            ok = False
        relations.append(rel)
    traced = _trace_relation(real)
    if traced is not None:
        relations.append(
            {
                "name": "traced-offsets-snapped",
                "scenario": "clock-relations",
                "held_real": traced[0],
                "held_model": None,
                "exact": True,
                "detail": traced[1],
                "detail_model": "the model's own trace is compared by the trace parser tests",
                "known_departure": None,
                "known_departure_text": None,
            }
        )
        ok = ok and traced[0]
    return {
        "ok": ok,
        "kernel": os.uname().release,
        "trace": trace_status,
        "scenarios": names,
        "model": "ran" if model is not None else why,
        "relations": relations,
        "real": real.to_json(),
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
    lines.append("OK" if result["ok"] else "FAILED: a relation that should hold did not")
    return "\n".join(lines)


__all__ = [
    "KNOWN_DEPARTURES",
    "SCRIPT",
    "RealResourceUnavailable",
    "ScenarioRun",
    "format_verify",
    "run_real_scenarios",
    "run_verify",
]

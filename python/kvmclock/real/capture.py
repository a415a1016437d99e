"""The real side of ``kvmclock verify``: the scripted scenario (``SCRIPT``) executed on /dev/kvm,
the machine's evidence, and the capture (``ScenarioRun``) with its JSON form.

For every operation the executor records the host time (CLOCK_MONOTONIC_RAW relative to the
first operation), the host TSC and what KVM returned (records, KVM_GET_CLOCK, TSC offset
attributes, the guest's own rdtsc). The concrete values it chose (TSC values written, the
KVM_SET_CLOCK value) are stored as ``inputs`` so the model replays exactly the same thing.

The capture also stores ``evidence`` about the machine it ran on (``collect_evidence``): which
KVM flavour module is loaded, the kernel release and KVM_CHECK_EXTENSION results. A named
departure (``kvmclock.real.relations.DEPARTURES``) is judged from this stored evidence only, so
a capture checked on another computer is judged by the machine it was made on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from kvmclock import PvclockVcpuTimeInfo
from kvmclock.errors import RealResourceUnavailable
from kvmclock.real import kvmdev
from kvmclock.real.guest import MEM_SIZE, RDTSC_HLT, load, record_gpa, run_to_hlt

PVCLOCK_TSC_STABLE_BIT = 1
PVCLOCK_GUEST_STOPPED = 2

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

KVM_FLAVOUR_MODULES: tuple[str, ...] = ("kvm_pvm", "kvm_intel", "kvm_amd")
"""The vendor modules of x86 KVM: PVM (software, no VMX/SVM), VMX, SVM."""

EVIDENCE_CAPABILITIES: tuple[str, ...] = (
    "KVM_CAP_ADJUST_CLOCK",
    "KVM_CAP_TSC_CONTROL",
    "KVM_CAP_VM_TSC_CONTROL",
    "KVM_CAP_GET_TSC_KHZ",
    "KVM_CAP_KVMCLOCK_CTRL",
    "KVM_CAP_VCPU_ATTRIBUTES",
)
"""KVM_CHECK_EXTENSION probes stored with a capture (value 0 = absent; KVM_CAP_ADJUST_CLOCK
returns the KVM_CLOCK_* flags KVM_GET_CLOCK/KVM_SET_CLOCK accept, x86.c
``kvm_vm_ioctl_check_extension``)."""


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


def flavour_of(modules: dict[str, bool]) -> str:
    """The KVM flavour from the loaded vendor modules: the one loaded module's name, ``"none"``
    when none is, ``"ambiguous:a+b"`` when several are."""
    loaded = [m for m in KVM_FLAVOUR_MODULES if modules.get(m)]
    if not loaded:
        return "none"
    if len(loaded) > 1:
        return "ambiguous:" + "+".join(loaded)
    return loaded[0]


def kvm_modules(sys_module: str = "/sys/module") -> dict[str, bool]:
    """Which of ``KVM_FLAVOUR_MODULES`` are loaded (a directory under /sys/module)."""
    return {m: os.path.isdir(os.path.join(sys_module, m)) for m in KVM_FLAVOUR_MODULES}


def collect_evidence(system: kvmdev.KvmSystem, sys_module: str = "/sys/module") -> dict[str, Any]:
    """The machine facts a departure may rest on, read from this system at capture time:
    ``kvm_modules`` (/sys/module), ``flavour`` (``flavour_of``), ``kernel_release``
    (uname -r) and ``capabilities`` (KVM_CHECK_EXTENSION on /dev/kvm, see
    ``EVIDENCE_CAPABILITIES``). ``vcpu_tsc_offset_attr`` (KVM_HAS_DEVICE_ATTR of
    KVM_VCPU_TSC_OFFSET on a vCPU) is filled in by the script once a vCPU exists."""
    modules = kvm_modules(sys_module)
    return {
        "kvm_modules": modules,
        "flavour": flavour_of(modules),
        "kernel_release": os.uname().release,
        "capabilities": {
            name: system.check_extension(kvmdev.CAPABILITIES[name])
            for name in EVIDENCE_CAPABILITIES
        },
        "vcpu_tsc_offset_attr": None,
    }


@dataclass
class ScenarioRun:
    """One side's run: concrete inputs, labelled observations, the trace text, the
    KVM_CREATE_VM instant and (real side) the machine's evidence."""

    side: str
    tsc_khz: int
    inputs: list[dict[str, Any]] = field(default_factory=list)
    obs: dict[str, dict[str, Any]] = field(default_factory=dict)
    trace: str | None = None
    # KVM_CREATE_VM: {"t_ns": raw-clock ns before it, relative to t0 (< 0), "host_tsc": host TSC
    # before it, "host_tsc_after": host TSC once it returned (VM and memory slot set up)}.
    vm_create: dict[str, int] | None = None
    # collect_evidence() of the machine that made the capture; None for the model and for
    # captures made before evidence was recorded (then no departure applies).
    evidence: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "tsc_khz": self.tsc_khz,
            "inputs": self.inputs,
            "obs": self.obs,
            "trace": self.trace,
            "vm_create": self.vm_create,
            "evidence": self.evidence,
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
            doc.get("evidence"),
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
        evidence = collect_evidence(system)
        t_create = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
        tsc_create = rdtsc()
        with system.create_vm(MEM_SIZE) as vm:
            created = {"t_ns": t_create, "host_tsc": tsc_create, "host_tsc_after": rdtsc()}
            return _run_real_script(vm, script, created, evidence)


def _run_real_script(
    vm: kvmdev.KvmVm,
    script: tuple[tuple[Any, ...], ...],
    created: dict[str, int],
    evidence: dict[str, Any] | None = None,
) -> ScenarioRun:
    """The body of ``run_real_scenarios`` on an open VM; ``created`` holds the raw-clock ns
    and host TSC read just before KVM_CREATE_VM and the host TSC read once it returned;
    ``evidence`` (``collect_evidence``) is stored in the run, completed with the vCPU
    attribute probe once the first vCPU exists."""
    from kvmclock.real import rdtsc

    load(vm, RDTSC_HLT)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
    vcpus: dict[int, kvmdev.KvmVcpu] = {}
    run = ScenarioRun("real", 0)
    run.vm_create = dict(created, t_ns=created["t_ns"] - t0)
    run.evidence = evidence
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
            if evidence is not None and evidence.get("vcpu_tsc_offset_attr") is None:
                # KVM_HAS_DEVICE_ATTR(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET): capability probe
                evidence["vcpu_tsc_offset_attr"] = vcpus[vid].has_attr(
                    kvmdev.KVM_VCPU_TSC_CTRL, kvmdev.KVM_VCPU_TSC_OFFSET
                )
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


def real_run(trace: bool | None) -> tuple[ScenarioRun, str]:
    """Run the real scenario, with a trace capture when asked (None: when possible); returns
    the capture and the trace status text."""
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


__all__ = [
    "EVIDENCE_CAPABILITIES",
    "FAR_SECONDS",
    "KVM_FLAVOUR_MODULES",
    "PVCLOCK_GUEST_STOPPED",
    "PVCLOCK_TSC_STABLE_BIT",
    "SCRIPT",
    "ScenarioRun",
    "collect_evidence",
    "flavour_of",
    "kvm_modules",
    "real_run",
    "run_real_scenarios",
]

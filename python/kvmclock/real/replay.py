"""The model side of ``kvmclock verify``: the recorded real inputs replayed on ``kvmclock.kvm``.

``replay_model`` builds a ``gtod`` kernel (tsc clocksource) on a physical host whose TSC reaches
each recorded host TSC at the simulated instant of its operation, loads KVM, creates the VM at
the recorded KVM_CREATE_VM instant and issues the same vCPU creations, MSR writes, KVM_RUN
entries, TSC writes, KVM_SET_CLOCK values and KVM_KVMCLOCK_CTRL calls in the same order, through
the model's own ioctl methods (``Kvm.create_vcpu``, ``Kvm.set_msr``, ``Kvm.write_tsc``,
``Kvm.get_clock``, ``Kvm.set_clock``, ``Kvm.kvmclock_ctrl``, ``VirtualMachine.run_on_cpu``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmclock import PvclockVcpuTimeInfo
from kvmclock.profiles import Profile, resolve_profile
from kvmclock.real.capture import ScenarioRun, _rec
from kvmclock.real.guest import MEM_SIZE, record_gpa

ModelRunner = Callable[[ScenarioRun], ScenarioRun]

MODEL_PROFILE = "upstream"
"""The default profile of the replay: today's kernel (Linux 6.18), the one verify runs on."""
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


def replay_model(
    real: ScenarioRun, *, profile: str | Profile = MODEL_PROFILE, seed: int = 0
) -> ScenarioRun:
    """Replay ``real.inputs`` on the model: a ``profile`` kernel (a name or a
    :class:`~kvmclock.profiles.Profile`; default ``upstream``, the kernel verify has been run
    against) (tsc clocksource) on a
    2-CPU physical host whose TSC hits every recorded host TSC, KVM loaded, one VM created
    at the recorded creation instant (or, when it was not recorded, at the first operation),
    then the same operations in the same order.  Returns the model's ``ScenarioRun`` with
    the same labels; its ``inputs`` carry the model's own host TSC per operation and the
    vCPUs' TSC offsets after it, its ``trace`` the model's ftrace text."""
    from kvmclock.kernel import Kernel
    from kvmclock.kvm import (
        KVM_CLOCK_HOST_TSC,
        KVM_CLOCK_REALTIME,
        MSR_KVM_SYSTEM_TIME_NEW,
        Kvm,
        KvmModule,
        VcpuCpu,
    )
    from kvmclock.machine.physical import PhysicalCpu, PhysicalMachine
    from kvmclock.machine.world import World
    from kvmclock.trace import format_line

    cfg = resolve_profile(profile)
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
    kernel = Kernel(machine, cfg, name="L0", clocksource_override="tsc")
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
            # KVM_SET_MSRS (host-initiated): kvm_set_msr_common(MSR_KVM_SYSTEM_TIME_NEW)
            kvm.set_msr(vid, MSR_KVM_SYSTEM_TIME_NEW, gpa | 1)
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
            # KVM_GET_CLOCK of the profile: KVM_CLOCK_REALTIME|KVM_CLOCK_HOST_TSC only with
            # switch kvm_clock_realtime (5.16+) and masterclock (__get_kvmclock).  A 2017
            # profile's ioctl has neither: with masterclock the replay reads the ioctl CPU's
            # TSC and realtime at the same simulated instant, as the 5.16 ioctl would report.
            c = kvm.get_clock()
            if kvm.use_master_clock and not c.flags & KVM_CLOCK_HOST_TSC:
                c.host_tsc = host_tsc()
                c.realtime = kernel.run_on_cpu(cpu, kernel.timekeeper.ktime_get_real_ns)
                c.flags |= KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC
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
            try:
                kvm.kvmclock_ctrl(vid)  # x86.c kvm_set_guest_paused
            except ValueError as exc:
                raise ValueError(f"inputs[{n}]: {exc}") from exc
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


def model_runner(profile: str | Profile = MODEL_PROFILE) -> tuple[ModelRunner | None, str]:
    """The model replay of a real run under ``profile`` (``replay_model``), or (None, why
    not). ValueError for an unknown profile."""
    cfg = resolve_profile(profile)
    try:
        import kvmclock.kvm.x86  # noqa: F401
    except ImportError as exc:
        return None, f"model unavailable: {exc}"

    def run(real: ScenarioRun) -> ScenarioRun:
        return replay_model(real, profile=cfg)

    return run, f"replayed on a {cfg.name} kernel (Linux {cfg.kernel}) with a tsc host"


__all__ = ["MODEL_LEAD_NS", "MODEL_PROFILE", "ModelRunner", "model_runner", "replay_model"]

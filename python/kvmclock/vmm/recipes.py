"""VMM recipes: how each VMM pauses, resumes and restores the KVM clock and the TSC.

A recipe is the ioctl sequence of one VMM (docs/vmm.md gives each step with its source file
and function):

* ``qemu``: hw/i386/kvm/clock.c ``kvmclock_vm_state_change`` (stop: ``KVM_GET_CLOCK`` after
  ``kvm_synchronize_all_tsc``; run: ``KVM_SET_CLOCK`` of the saved clock with flags 0, then
  ``KVM_KVMCLOCK_CTRL`` on every vCPU before they resume) and target/i386/kvm/kvm.c
  ``kvm_arch_put_registers`` (incoming migration, KVM_PUT_FULL_STATE only:
  ``KVM_SET_TSC_KHZ`` of the saved kHz, a refusal only warned about; MSR_IA32_TSC and the
  kvmclock MSRs).
* ``firecracker`` (option ``clock_realtime``, default False; ``kvmclock_ctrl``
  "before-resume" (1.14+, default) or "at-pause" (1.10-1.13)): src/vmm/src/builder.rs
  ``build_microvm_from_snapshot``, arch/x86_64/vcpu.rs ``KvmVcpu::restore_state``,
  arch/x86_64/vm.rs ``ArchVm::restore_state`` (``KVM_SET_CLOCK`` flags 0, or
  KVM_CLOCK_REALTIME with the saved realtime).
* ``cloud-hypervisor`` (option ``tsc_offsets``: "shared", the default, the code since
  993ac5c90 "Re-sync vCPU TSC offsets after restore"; "per-vcpu", the code before it,
  whose per-vCPU writes leave different offsets): vmm/src/cpu.rs ``create_vcpus`` /
  ``synchronize_tsc_offsets``, hypervisor/src/kvm/mod.rs ``set_state``, vmm/src/vm.rs
  ``capture_guest_clock`` / ``restore_guest_clock`` (the saved ``kvm_clock_data`` with
  ``realtime`` filled from the host clock, flags kept: KVM_CLOCK_REALTIME acts).
* ``naive`` (option ``gap_ms``): no VMM in particular: each vCPU restored from its own saved
  TSC, written at its own moment ``gap_ms`` after the previous one, then QEMU's
  ``KVM_SET_CLOCK`` with flags 0 and no ``KVM_KVMCLOCK_CTRL``.

A recipe the host kernel's profile cannot run is refused before any ioctl with
:class:`RecipeError` naming the recipe, the profile and the switch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvmclock.errors import KvmclockError
from kvmclock.kvm.x86 import (
    KVM_CLOCK_REALTIME,
    MSR_IA32_TSC,
    MSR_KVM_SYSTEM_TIME_NEW,
    MSR_KVM_WALL_CLOCK_NEW,
    TSC_TOLERANCE_PPM,
    KvmClockData,
)

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel
    from kvmclock.kvm.x86 import Kvm
    from kvmclock.profiles import Profile
    from kvmclock.vmm.snapshot import VmSnapshot
    from kvmclock.vmm.vmm import Vmm

__all__ = ["CTRL_TIMINGS", "NAMES", "Recipe", "RecipeError", "get"]

CTRL_TIMINGS = ("at-pause", "before-resume", "never")
NAMES = ("qemu", "firecracker", "cloud-hypervisor", "naive")
MS = 1_000_000


class RecipeError(KvmclockError, ValueError):
    """A recipe name or option that does not exist, or a recipe the host kernel's profile
    cannot run (an ioctl or flag its kernel lacks)."""


class Recipe(ABC):
    """One VMM's way of pausing, resuming and restoring the clock (see module docstring).

    ``name`` and ``options`` as given to :func:`get`; ``kvmclock_ctrl`` when the VMM calls
    ``KVM_KVMCLOCK_CTRL``: "at-pause" (on every vCPU right after it stopped),
    "before-resume" (on every vCPU of the VM that will run, right before the vCPUs run
    again, after a restore's clock steps) or "never".
    """

    name = "recipe"
    kvmclock_ctrl = "never"

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = dict(options)

    # -- what the profile allows ---------------------------------------------------------------
    def require(self) -> list[tuple[str, str, str]]:
        """``(switch, what, linux version)`` this recipe needs from the host kernel."""
        return []

    def check(self, cfg: Profile) -> None:
        """``RecipeError`` naming the recipe, the profile and the switch when the kernel of
        profile ``cfg`` lacks what this recipe needs."""
        for switch, what, version in self.require():
            if not cfg[switch]:
                raise RecipeError(
                    f"recipe {self.label()} needs {what}, which profile {cfg.name} "
                    f"(Linux {cfg.kernel}) does not have: it came in Linux {version} "
                    f"(switch {switch})"
                )

    def label(self) -> str:
        """``name(option=value, ...)``."""
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"{self.name}({opts})" if opts else self.name

    # -- pause / resume ------------------------------------------------------------------------
    def pause(self, vmm: Vmm) -> None:
        """What the VMM does when it pauses the VM (vCPUs out of KVM_RUN)."""
        vmm.pause(kvmclock_ctrl=self.kvmclock_ctrl == "at-pause")

    def resume(self, vmm: Vmm) -> None:
        """What the VMM does when it resumes a paused VM."""
        vmm.resume(kvmclock_ctrl=self.kvmclock_ctrl == "before-resume")

    # -- restore ---------------------------------------------------------------------------------
    def check_snapshot(self, snapshot: VmSnapshot) -> None:  # noqa: B027 (a no-op by default)
        """``RecipeError`` when the snapshot lacks what the recipe restores from (by default
        every snapshot will do)."""

    @abstractmethod
    def restore_steps(
        self, vmm: Vmm, vm: Kvm, snapshot: VmSnapshot, notes: list[str], done: Callable[[], None]
    ) -> None:
        """Build the vCPUs of the new ``vm`` and apply the recipe's clock and TSC steps, then
        call ``done`` (at once, or later in simulated time for a recipe that spreads its
        writes).  ``notes`` collects sentences for the lifecycle record.  Each VMM's recipe
        defines it."""

    def __repr__(self) -> str:
        return f"Recipe({self.label()}, kvmclock_ctrl={self.kvmclock_ctrl!r})"


# ----------------------------------------------------------------------------------------------
# Steps shared by the recipes
# ----------------------------------------------------------------------------------------------
def _host_khz(vm: Kvm) -> int:
    return vm.module.host_tsc_khz()


def khz_sentence(vm: Kvm, vcpu_id: int, saved_khz: int, asked: bool, vmm_name: str) -> str:
    """What became of the saved TSC frequency on the new host (kHz), from vCPU ``vcpu_id``'s
    state after the recipe's ``KVM_SET_TSC_KHZ`` (or its absence): the rate the guest TSC
    runs at now is ``kvm_scale_tsc(host kHz)`` with the vCPU's ratio."""
    host = _host_khz(vm)
    v = vm.vcpus[vcpu_id]
    m = vm.module
    runs = m.kvm_scale_tsc(v, host)
    ppm = (runs - saved_khz) * 1_000_000 / saved_khz
    if not asked:
        head = f"{vmm_name} does not call KVM_SET_TSC_KHZ ({saved_khz} kHz saved, host {host} kHz)"
    else:
        head = f"KVM_SET_TSC_KHZ {saved_khz} kHz on a {host} kHz host ({m.tsc_scaling} TSC scaling)"
    if v.tsc_always_catchup:
        return (
            f"{head}: no TSC scaling hardware for a faster guest: the guest TSC runs at the "
            f"host's {host} kHz and KVM pushes it forward at every clock update (catch-up)"
        )
    if runs == saved_khz:
        how = (
            "same frequency" if host == saved_khz else f"TSC scaling ratio {v.tsc_scaling_ratio:#x}"
        )
        return f"{head}: {how}: the guest TSC keeps {saved_khz} kHz"
    plan = m.set_tsc_khz_plan(saved_khz, host)[0] if asked else None
    if plan == "ratio":
        # kvm_set_tsc_khz scaled it; the rate is the ratio's truncation (kvm_scale_tsc)
        return (
            f"{head}: KVM scaled it with TSC scaling ratio {v.tsc_scaling_ratio:#x} "
            f"({m.tsc_scaling_ratio_frac_bits} fraction bits, {m.tsc_scaling}): the guest TSC "
            f"runs at {runs} kHz, the ratio's truncation ({ppm:+.3f} ppm from the saved "
            f"{saved_khz} kHz)"
        )
    if plan == "default":
        why = f"within the {TSC_TOLERANCE_PPM} ppm tolerance KVM applies no scaling"
    elif asked:
        why = f"KVM refused it ({m.tsc_khz_refusal(saved_khz, host)})"
    else:
        why = f"within Firecracker's own {TSC_TOLERANCE_PPM} ppm tolerance"
    return (
        f"{head}: {why}: the guest TSC now runs at the destination's rate, {runs} kHz "
        f"({ppm:+.3f} ppm from the saved {saved_khz} kHz)"
    )


def _set_khz(vm: Kvm, vcpu_id: int, khz: int, *, fatal: bool, label: str) -> bool:
    """``KVM_SET_TSC_KHZ`` on one vCPU: True if KVM took it; a refusal raises
    ``RecipeError`` when the VMM treats it as fatal, else it is ignored (QEMU warns)."""
    try:
        vm.set_vcpu_tsc_khz(vcpu_id, khz)
    except ValueError as e:
        if fatal:
            raise RecipeError(f"recipe {label}: restore failed: {e}") from e
        return False
    return True


def _put_msrs(vm: Kvm, vcpu_id: int, snapshot: VmSnapshot, tsc: int | None = None) -> None:
    """``KVM_SET_MSRS`` of the clock MSRs of one vCPU, host-initiated, in the order QEMU's
    ``kvm_put_msrs`` and Firecracker's saved list use: MSR_IA32_TSC, then
    MSR_KVM_SYSTEM_TIME_NEW, then (vCPU 0) MSR_KVM_WALL_CLOCK_NEW."""
    s = snapshot.vcpus[vcpu_id]
    vm.write_tsc(vcpu_id, s.tsc if tsc is None else tsc)
    vm.set_msr(vcpu_id, MSR_KVM_SYSTEM_TIME_NEW, s.system_time_msr)
    if vcpu_id == 0 and snapshot.wall_clock_msr:
        vm.set_msr(vcpu_id, MSR_KVM_WALL_CLOCK_NEW, snapshot.wall_clock_msr)


def _in_turn(
    vm: Kvm, n: int, gap_ns: int, step: Callable[[int], None], last: Callable[[], None]
) -> None:
    """``step(i)`` for i in 0..n-1, each ``gap_ns`` of true time after the previous one
    (World events when ``gap_ns`` > 0, at once otherwise), then ``last()``."""
    world = vm.module.world

    def run(i: int) -> None:
        step(i)
        if i + 1 < n:
            if gap_ns:
                world.after(gap_ns, run, i + 1)
            else:
                run(i + 1)
            return
        last()

    if n:
        run(0)
    else:
        last()


def _ctrl_all(vm: Kvm) -> None:
    """``KVM_KVMCLOCK_CTRL`` on every vCPU; -EINVAL (kvmclock not enabled) is ignored, as
    QEMU ``do_kvmclock_ctrl`` and Firecracker ``KvmVcpu::kvmclock_ctrl`` do."""
    for i in range(len(vm.vcpus)):
        try:
            vm.kvmclock_ctrl(i)
        except ValueError:
            vm.module.counters["vmm.kvmclock_ctrl_einval"] += 1


# ----------------------------------------------------------------------------------------------
# QEMU
# ----------------------------------------------------------------------------------------------
class Qemu(Recipe):
    """QEMU (hw/i386/kvm/clock.c, target/i386/kvm/kvm.c): the kvm-clock stops while the VM
    is stopped (``KVM_SET_CLOCK`` of the clock saved at stop, flags 0), the TSC does not."""

    name = "qemu"
    kvmclock_ctrl = "before-resume"

    def __init__(self) -> None:
        super().__init__()

    def pause(self, vmm: Vmm) -> None:
        """``vm_stop`` -> ``kvmclock_vm_state_change(running=0)``: ``kvm_synchronize_all_tsc``
        (KVM_GET_MSRS IA32_TSC of every vCPU, kept in ``env->tsc``) then ``kvm_update_clock``
        (KVM_GET_CLOCK, kept as ``s->clock``)."""
        vmm.pause()
        vmm.saved_tsc = [vmm.vm.get_msr(i, MSR_IA32_TSC) for i in range(len(vmm.vm.vcpus))]
        vmm.saved_clock = vmm.vm.get_clock()

    def resume(self, vmm: Vmm) -> None:
        """``vm_start`` -> ``kvmclock_vm_state_change(running=1)``: KVM_SET_CLOCK of the saved
        clock, flags 0; KVM_KVMCLOCK_CTRL on every vCPU (``do_kvmclock_ctrl``); then the
        vCPUs resume.  The TSC is not written back (KVM_PUT_RUNTIME_STATE)."""
        saved = vmm.saved_clock
        if saved is not None:
            vmm.vm.set_clock(saved.clock, 0)
        vmm.saved_clock = None
        vmm.resume(kvmclock_ctrl=True)

    def restore_steps(
        self, vmm: Vmm, vm: Kvm, snapshot: VmSnapshot, notes: list[str], done: Callable[[], None]
    ) -> None:
        """Incoming migration: the vCPUs exist from machine init; memory; for each vCPU
        ``kvm_arch_put_registers(KVM_PUT_FULL_STATE)``: ``kvm_arch_set_tsc_khz`` (a refusal
        is a warning), MSR_IA32_TSC = saved, kvmclock MSRs; ``vm_start``: KVM_SET_CLOCK saved
        clock flags 0, KVM_KVMCLOCK_CTRL on every vCPU."""
        n = len(snapshot.vcpus)
        for _ in range(n):
            vm.create_vcpu()
        vm.machine.memory[:] = snapshot.memory
        asked = False
        for i in range(n):
            asked = _set_khz(vm, i, snapshot.vcpus[i].tsc_khz, fatal=False, label=self.label())
            _put_msrs(vm, i, snapshot)
        notes.append(khz_sentence(vm, 0, snapshot.vcpus[0].tsc_khz, True, "QEMU"))
        if not asked:
            notes.append(
                "QEMU: KVM_SET_TSC_KHZ refused: 'TSC frequency mismatch between VM and host, "
                "and TSC scaling unavailable' (a warning; the migration goes on)"
            )
        vm.set_clock(snapshot.clock.clock, 0)
        _ctrl_all(vm)
        done()


# ----------------------------------------------------------------------------------------------
# Firecracker
# ----------------------------------------------------------------------------------------------
class Firecracker(Recipe):
    """Firecracker (src/vmm/src): KVMCLOCK_CTRL at pause (1.10+) and at the end of every
    vCPU's ``restore_state`` (1.14+); restore writes each vCPU's saved MSRs, then
    ``KVM_SET_CLOCK`` with flags 0 or, with ``clock_realtime``, KVM_CLOCK_REALTIME."""

    name = "firecracker"

    def __init__(
        self, *, clock_realtime: bool = False, kvmclock_ctrl: str = "before-resume"
    ) -> None:
        if not isinstance(clock_realtime, bool):
            raise RecipeError(
                f"recipe firecracker: clock_realtime={clock_realtime!r} must be true or false"
            )
        if kvmclock_ctrl not in ("at-pause", "before-resume"):
            raise RecipeError(
                f"recipe firecracker: kvmclock_ctrl={kvmclock_ctrl!r} invalid; choose "
                "'before-resume' (Firecracker 1.14+: at pause and in restore_state) or "
                "'at-pause' (1.10-1.13: after pause only)"
            )
        opts: dict[str, Any] = {"clock_realtime": clock_realtime}
        if kvmclock_ctrl != "before-resume":
            opts["kvmclock_ctrl"] = kvmclock_ctrl
        super().__init__(**opts)
        self.clock_realtime = clock_realtime
        self.kvmclock_ctrl = kvmclock_ctrl

    def require(self) -> list[tuple[str, str, str]]:
        if self.clock_realtime:
            return [("kvm_clock_realtime", "KVM_SET_CLOCK with KVM_CLOCK_REALTIME", "5.16")]
        return []

    def pause(self, vmm: Vmm) -> None:
        """``Vcpu::running`` on ``VcpuEvent::Pause``: reply Paused, then KVM_KVMCLOCK_CTRL
        (both versions); the clock is not read (the kvm-clock keeps counting)."""
        vmm.pause(kvmclock_ctrl=True)

    def resume(self, vmm: Vmm) -> None:
        """``VcpuEvent::Resume``: the vCPU threads run again, no clock ioctl."""
        vmm.resume()

    def check_snapshot(self, snapshot: VmSnapshot) -> None:
        """``KvmVmError::ClockRealtimeNotInState``: clock_realtime with a snapshot whose
        KVM_GET_CLOCK had no KVM_CLOCK_REALTIME (masterclock was off, or an old kernel)."""
        if self.clock_realtime and not snapshot.clock.flags & KVM_CLOCK_REALTIME:
            raise RecipeError(
                f"recipe {self.label()}: the snapshot's KVM_GET_CLOCK flags "
                f"{snapshot.clock.flags:#x} lack KVM_CLOCK_REALTIME (masterclock was off or "
                "the source kernel predates 5.16): Firecracker refuses "
                "(ClockRealtimeNotInState)"
            )

    def restore_steps(
        self, vmm: Vmm, vm: Kvm, snapshot: VmSnapshot, notes: list[str], done: Callable[[], None]
    ) -> None:
        """``build_microvm_from_snapshot``: ``create_vcpus``; ``restore_memory_regions``;
        ``is_tsc_scaling_required`` (|host kHz - saved| > saved * 250 / 10**6) ->
        KVM_SET_TSC_KHZ on every vCPU (an error fails the restore); each vCPU's
        ``restore_state``: KVM_SET_MSRS (IA32_TSC before TSC_DEADLINE, kvmclock MSRs), then
        (1.14+) KVM_KVMCLOCK_CTRL; ``vm.restore_state``: KVM_SET_CLOCK."""
        n = len(snapshot.vcpus)
        for _ in range(n):
            vm.create_vcpu()
        vm.machine.memory[:] = snapshot.memory
        saved_khz = snapshot.vcpus[0].tsc_khz
        cur = vm.get_vcpu_tsc_khz(0)
        need = abs(cur - saved_khz) > saved_khz * 250 // 1_000_000
        if need:
            for i in range(n):
                _set_khz(vm, i, saved_khz, fatal=True, label=self.label())
        notes.append(khz_sentence(vm, 0, saved_khz, need, "Firecracker"))
        for i in range(n):
            _put_msrs(vm, i, snapshot)
            if self.kvmclock_ctrl == "before-resume":
                try:
                    vm.kvmclock_ctrl(i)
                except ValueError:
                    vm.module.counters["vmm.kvmclock_ctrl_einval"] += 1
        c = snapshot.clock
        if self.clock_realtime:
            vm.set_clock(c.clock, KVM_CLOCK_REALTIME, c.realtime)
        else:
            vm.set_clock(c.clock, 0)
        done()


# ----------------------------------------------------------------------------------------------
# cloud-hypervisor
# ----------------------------------------------------------------------------------------------
class CloudHypervisor(Recipe):
    """cloud-hypervisor: KVMCLOCK_CTRL at pause (``CpuManager::pause``), the clock captured
    after the vCPUs stopped with ``realtime`` filled (``capture_guest_clock``), and set back
    with its flags before the vCPUs resume (``restore_guest_clock``); on restore each vCPU is
    created and restored in turn, then (``shared``) every vCPU gets vCPU 0's offset."""

    name = "cloud-hypervisor"
    kvmclock_ctrl = "at-pause"

    def __init__(self, *, tsc_offsets: str = "shared", vcpu_restore_us: int = 0) -> None:
        if tsc_offsets not in ("shared", "per-vcpu"):
            raise RecipeError(
                f"recipe cloud-hypervisor: tsc_offsets={tsc_offsets!r} invalid; choose "
                "'shared' (since 993ac5c90: vCPU 0's KVM_VCPU_TSC_OFFSET set on every vCPU) "
                "or 'per-vcpu' (before it: per-vCPU writes, different offsets)"
            )
        if (
            isinstance(vcpu_restore_us, bool)
            or not isinstance(vcpu_restore_us, int)
            or vcpu_restore_us < 0
        ):
            raise RecipeError(
                f"recipe cloud-hypervisor: vcpu_restore_us={vcpu_restore_us!r} must be an "
                "int >= 0 (microseconds one vCPU's creation and restore take)"
            )
        opts: dict[str, Any] = {"tsc_offsets": tsc_offsets}
        if vcpu_restore_us:
            opts["vcpu_restore_us"] = vcpu_restore_us
        super().__init__(**opts)
        self.tsc_offsets = tsc_offsets
        self.gap_ns = vcpu_restore_us * 1000

    def require(self) -> list[tuple[str, str, str]]:
        req = [
            (
                "kvm_clock_realtime",
                "KVM_SET_CLOCK with KVM_CLOCK_REALTIME (it fills and restores realtime)",
                "5.16",
            )
        ]
        if self.tsc_offsets == "shared":
            req.append(("vcpu_tsc_offset_attr", "the KVM_VCPU_TSC_OFFSET vCPU attribute", "5.16"))
        return req

    @staticmethod
    def _filled(vmm: Vmm, clock: KvmClockData, host_realtime_ns: int | None = None) -> KvmClockData:
        """``ClockData::with_realtime_filled``: without KVM_CLOCK_REALTIME, ``realtime`` =
        the VMM's ``SystemTime::now()`` and the flag set."""
        if clock.flags & KVM_CLOCK_REALTIME:
            return clock
        if host_realtime_ns is None:
            host_realtime_ns = vmm.host_realtime_ns()
        return KvmClockData(
            clock=clock.clock,
            flags=clock.flags | KVM_CLOCK_REALTIME,
            realtime=host_realtime_ns,
            host_tsc=clock.host_tsc,
        )

    def pause(self, vmm: Vmm) -> None:
        """``Vm::pause``: ``CpuManager::pause`` (signal, KVM_KVMCLOCK_CTRL on every vCPU),
        then ``capture_guest_clock`` (KVM_GET_CLOCK, realtime filled)."""
        vmm.pause(kvmclock_ctrl=True)
        vmm.saved_clock = self._filled(vmm, vmm.vm.get_clock())

    def resume(self, vmm: Vmm) -> None:
        """``Vm::resume``: ``restore_guest_clock`` (KVM_SET_CLOCK with the saved flags) before
        ``cpu_manager.resume`` (PR #7932)."""
        saved = vmm.saved_clock
        if saved is not None:
            vmm.vm.set_clock(saved.clock, saved.flags, saved.realtime)
        vmm.saved_clock = None
        vmm.resume()

    def restore_steps(
        self, vmm: Vmm, vm: Kvm, snapshot: VmSnapshot, notes: list[str], done: Callable[[], None]
    ) -> None:
        """``Vm::new_from_snapshot``: memory first; ``CpuManager::create_vcpus`` creates and
        restores each vCPU in turn (KVM_CREATE_VCPU, then ``set_state``: KVM_SET_TSC_KHZ,
        KVM_SET_MSRS with IA32_TSC); with ``shared``, ``synchronize_tsc_offsets``: vCPU 0's
        KVM_VCPU_TSC_OFFSET read and set on every vCPU; ``Vm::resume``: KVM_SET_CLOCK of the
        snapshot's clock with realtime filled, then the vCPUs run."""
        vm.machine.memory[:] = snapshot.memory

        def one(i: int) -> None:
            vm.create_vcpu()
            _set_khz(vm, i, snapshot.vcpus[i].tsc_khz, fatal=True, label=self.label())
            _put_msrs(vm, i, snapshot)

        def rest() -> None:
            notes.append(khz_sentence(vm, 0, snapshot.vcpus[0].tsc_khz, True, "cloud-hypervisor"))
            if self.tsc_offsets == "shared":
                offset = vm.get_tsc_offset(0)
                for i in range(len(snapshot.vcpus)):
                    vm.set_tsc_offset(i, offset)
            c = self._filled(vmm, snapshot.clock, snapshot.host_realtime_ns)
            vm.set_clock(c.clock, c.flags, c.realtime)
            done()

        _in_turn(vm, len(snapshot.vcpus), self.gap_ns, one, rest)


# ----------------------------------------------------------------------------------------------
# naive
# ----------------------------------------------------------------------------------------------
class Naive(Recipe):
    """Each vCPU restored from its own saved TSC at its own moment, ``gap_ms`` apart; then
    KVM_SET_CLOCK of the saved clock, flags 0; no KVMCLOCK_CTRL."""

    name = "naive"

    def __init__(self, *, gap_ms: int | float = 0) -> None:
        if isinstance(gap_ms, bool) or not isinstance(gap_ms, (int, float)) or not gap_ms >= 0:
            raise RecipeError(f"recipe naive: gap_ms={gap_ms!r} must be a number >= 0 (ms)")
        super().__init__(gap_ms=gap_ms)
        self.gap_ns = round(gap_ms * MS)

    def pause(self, vmm: Vmm) -> None:
        """Stop the vCPUs and read the clock (as QEMU)."""
        vmm.pause()
        vmm.saved_clock = vmm.vm.get_clock()

    def resume(self, vmm: Vmm) -> None:
        """KVM_SET_CLOCK of the saved clock (flags 0), then run."""
        saved = vmm.saved_clock
        if saved is not None:
            vmm.vm.set_clock(saved.clock, 0)
        vmm.saved_clock = None
        vmm.resume()

    def restore_steps(
        self, vmm: Vmm, vm: Kvm, snapshot: VmSnapshot, notes: list[str], done: Callable[[], None]
    ) -> None:
        """All vCPUs created and the memory copied; vCPU i's KVM_SET_TSC_KHZ and MSRs
        (its own saved TSC) at ``i * gap_ms``; after the last, KVM_SET_CLOCK and run."""
        n = len(snapshot.vcpus)
        for _ in range(n):
            vm.create_vcpu()
        vm.machine.memory[:] = snapshot.memory

        def step(i: int) -> None:
            _set_khz(vm, i, snapshot.vcpus[i].tsc_khz, fatal=True, label=self.label())
            _put_msrs(vm, i, snapshot)
            if i == 0:
                notes.append(khz_sentence(vm, 0, snapshot.vcpus[0].tsc_khz, True, "naive"))

        def last() -> None:
            vm.set_clock(snapshot.clock.clock, 0)
            done()

        _in_turn(vm, n, self.gap_ns, step, last)


_FACTORIES: dict[str, Callable[..., Recipe]] = {
    "qemu": Qemu,
    "firecracker": Firecracker,
    "cloud-hypervisor": CloudHypervisor,
    "naive": Naive,
}


def get(name: str, **options: Any) -> Recipe:
    """The recipe ``name`` (one of :data:`NAMES`) with its options: firecracker
    ``clock_realtime`` (bool, default False) and ``kvmclock_ctrl`` ("before-resume" |
    "at-pause"); cloud-hypervisor ``tsc_offsets`` ("shared" default | "per-vcpu");
    naive ``gap_ms`` (ms, default 0); qemu none.  ``RecipeError`` for an unknown name or
    option."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise RecipeError(f"recipe {name!r} unknown; choose one of {', '.join(NAMES)}")
    try:
        return factory(**options)
    except TypeError as e:
        valid = {
            "qemu": "none",
            "firecracker": "clock_realtime, kvmclock_ctrl",
            "cloud-hypervisor": "tsc_offsets, vcpu_restore_us",
            "naive": "gap_ms",
        }[name]
        raise RecipeError(
            f"recipe {name}: unknown option in {sorted(options)}; valid options: {valid}"
        ) from e


def host_profile(host: Kernel) -> Profile:
    """The profile of ``host`` (the kernel whose KVM runs the recipe's ioctls)."""
    return host.cfg

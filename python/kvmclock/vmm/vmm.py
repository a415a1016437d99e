"""``Vmm``: one VMM process and the VM it drives (creation and the vCPU threads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmclock.kvm.x86 import (
    MSR_IA32_TSC,
    MSR_KVM_SYSTEM_TIME_NEW,
    MSR_KVM_WALL_CLOCK_NEW,
    KvmClockData,
)
from kvmclock.vmm.snapshot import VcpuSnapshot, VmSnapshot

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel
    from kvmclock.kvm.vm import VirtualMachine
    from kvmclock.kvm.x86 import Kvm
    from kvmclock.vmm.recipes import Recipe

__all__ = ["Vmm"]


class Vmm:
    """A VMM process on ``host`` (a kernel with KVM loaded) driving one VM.

    Creating it does what every VMM does first: ``KVM_CREATE_VM`` (``name``; ``tsc_khz`` the
    guest TSC frequency in kHz asked with KVM_SET_TSC_KHZ, None = the host's; ``features``
    the CPUID and paravirt features offered, None = KVM's QEMU-like default), one
    ``KVM_CREATE_VCPU`` per vCPU (vCPU i's thread on host CPU i mod the host's CPU count),
    then each vCPU thread's first ``KVM_RUN`` (the vCPU enters once, processing its
    requests).  The guest kernel is booted by the caller on :attr:`machine` and recorded in
    :attr:`guest`.

    Raises ``ValueError`` (from KVM) for a refused ``tsc_khz`` or ``vcpus`` < 1, and
    ``RuntimeError`` when ``host`` has no KVM loaded.
    """

    def __init__(
        self,
        host: Kernel,
        *,
        name: str,
        vcpus: int,
        tsc_khz: int | None = None,
        features: set[str] | frozenset[str] | None = None,
    ) -> None:
        if host.kvm is None:
            raise RuntimeError(f"host kernel {host.name} has no KVM loaded")
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or vcpus < 1:
            raise ValueError(f"vcpus={vcpus!r} must be an int >= 1")
        self.name = name
        self.host = host
        self.vm: Kvm = host.kvm.create_vm(name=name, tsc_khz=tsc_khz, features=features)
        self.vm_history: list[Kvm] = [self.vm]
        """Every KVM VM this VMM drove, in order (a restore or migration adds the new one);
        the current one (:attr:`vm`) last."""
        self.guest: Kernel | None = None
        #: the clock a recipe saved at pause (QEMU ``s->clock``, cloud-hypervisor
        #: ``saved_clock``), set back at resume; None when none was saved
        self.saved_clock: KvmClockData | None = None
        #: the TSC values QEMU's ``kvm_synchronize_all_tsc`` read at the last stop (cycles)
        self.saved_tsc: list[int] = []
        #: sentences about the last restore (e.g. what became of the TSC frequency)
        self.restore_notes: list[str] = []
        self.restoring = False
        #: vCPU 0's pvclock flags right after the last :meth:`enter_all` entries, before the
        #: guest ran (the guest clears PVCLOCK_GUEST_STOPPED when it reads the clock)
        self.entry_flags: int | None = None
        for _ in range(vcpus):
            self.vm.create_vcpu()
        for i in range(vcpus):
            self.machine.run_on_cpu(i, lambda: None)

    @property
    def machine(self) -> VirtualMachine:
        """The machine the guest kernel runs on (the current VM's)."""
        return self.vm.machine

    # -- pause / resume ------------------------------------------------------------------------
    def _kvmclock_ctrl_all(self) -> None:
        """``KVM_KVMCLOCK_CTRL`` on every vCPU (x86.c ``kvm_set_guest_paused``); the
        -EINVAL of a vCPU without kvmclock is ignored, as every VMM does."""
        for i in range(len(self.vm.vcpus)):
            try:
                self.vm.kvmclock_ctrl(i)
            except ValueError:
                self.vm.module.counters["vmm.kvmclock_ctrl_einval"] += 1

    def pause(self, *, kvmclock_ctrl: bool = False) -> None:
        """Stop every vCPU thread outside ``KVM_RUN`` (``VirtualMachine.paused``); with
        ``kvmclock_ctrl`` then ``KVM_KVMCLOCK_CTRL`` on each vCPU (the request waits in KVM:
        PVCLOCK_GUEST_STOPPED reaches the guest's record only at the vCPU's next entry).
        The KVM clock keeps counting: only a recipe's KVM_SET_CLOCK at resume stops it.
        ``ValueError`` if already paused."""
        if self.machine.paused:
            raise ValueError(f"VM {self.name} is already paused")
        self.machine.paused = True
        if kvmclock_ctrl:
            self._kvmclock_ctrl_all()

    def resume(self, *, kvmclock_ctrl: bool = False) -> None:
        """With ``kvmclock_ctrl`` first ``KVM_KVMCLOCK_CTRL`` on each vCPU, then let the
        vCPU threads run: each vCPU enters once (``vcpu_enter_guest`` processes its requests:
        a pending clock update writes the guest's pvclock record).  ``ValueError`` unless
        paused."""
        if not self.machine.paused:
            raise ValueError(f"VM {self.name} is not paused")
        if kvmclock_ctrl:
            self._kvmclock_ctrl_all()
        self.machine.paused = False
        self.enter_all()

    def enter_all(self) -> None:
        """Each vCPU thread enters ``KVM_RUN`` once (``vcpu_enter_guest`` processes its
        requests: a pending clock update writes the guest's pvclock record), then the guest
        kernel's tick that expired while the VM did not run fires
        (``Kernel.run_overdue_tick``: KVM injects the pending LAPIC timer interrupt at the
        entry), so its ``update_wall_time`` runs before anything else reads the clock.
        The tick does not run while the machine does not (its host still suspended)."""
        for i in range(len(self.vm.vcpus)):
            self.machine.run_on_cpu(i, lambda: None)
        self.entry_flags = self._record_flags()
        if self.guest is not None:
            self.guest.run_overdue_tick()

    def _record_flags(self) -> int | None:
        """The flags byte of vCPU 0's pvclock record in guest memory now (None without a
        vCPU or with its kvmclock off)."""
        if not self.vm.vcpus:
            return None
        v = self.vm.vcpus[0]
        if not v.pv_time_enabled:
            return None
        return int(self.machine.memory[v.pv_time_gpa + 29])

    # -- snapshot / restore ------------------------------------------------------------------------
    def host_realtime_ns(self) -> int:
        """The host's CLOCK_REALTIME as the VMM reads it (``clock_gettime``), in ns."""
        hk = self.host
        return hk.run_on_cpu(self.vm.module.ioctl_cpu, hk.timekeeper.ktime_get_real_ns)

    def snapshot(self) -> VmSnapshot:
        """Save the paused VM (see :class:`VmSnapshot`): ``KVM_GET_CLOCK``, the host
        realtime, per vCPU ``KVM_GET_TSC_KHZ``, ``KVM_GET_MSRS`` (MSR_IA32_TSC,
        MSR_KVM_SYSTEM_TIME_NEW), the ``KVM_VCPU_TSC_OFFSET`` attribute where the profile has
        it (switch ``vcpu_tsc_offset_attr``), MSR_KVM_WALL_CLOCK_NEW and the memory.
        ``ValueError`` unless paused (Firecracker: "save/restore unavailable while
        running")."""
        if not self.machine.paused:
            raise ValueError(f"VM {self.name} must be paused to be snapshotted; pause it first")
        vm = self.vm
        c = vm.get_clock()
        clock = KvmClockData(c.clock, c.flags, c.realtime, c.host_tsc)
        realtime = self.host_realtime_ns()
        attr = bool(vm.module.cfg.vcpu_tsc_offset_attr)
        vcpus = tuple(
            VcpuSnapshot(
                vcpu_id=i,
                tsc=vm.get_msr(i, MSR_IA32_TSC),
                tsc_offset=vm.get_tsc_offset(i) if attr else None,
                tsc_khz=vm.get_vcpu_tsc_khz(i),
                system_time_msr=vm.get_msr(i, MSR_KVM_SYSTEM_TIME_NEW),
            )
            for i in range(len(vm.vcpus))
        )
        return VmSnapshot(
            t_ns=vm.module.world.now_ns,
            name=vm.name,
            host=self.host.name,
            clock=clock,
            host_realtime_ns=realtime,
            tsc_khz=vcpus[0].tsc_khz if vcpus else 0,
            vcpus=vcpus,
            wall_clock_msr=vm.get_msr(0, MSR_KVM_WALL_CLOCK_NEW) if vcpus else 0,
            memory=bytes(vm.machine.memory),
            features=frozenset(vm.machine.features),
        )

    def restore(
        self,
        snapshot: VmSnapshot,
        host: Kernel,
        recipe: Recipe,
        *,
        on_done: Callable[[], None] | None = None,
        action: str = "restore",
    ) -> None:
        """Rebuild the VM of ``snapshot`` on ``host`` (this host or another) the way
        ``recipe`` does, then move the guest kernel onto it and start it.

        Checks first (``RecipeError`` naming recipe, profile and switch; nothing changed):
        the recipe against ``host``'s profile and the snapshot.  Then ``KVM_CREATE_VM`` on
        ``host`` (same memory size and features), the recipe's vCPU creation, memory copy
        (the pvclock pages travel), KVM_SET_TSC_KHZ, MSR and clock steps
        (:meth:`Recipe.restore_steps`; a step that fails raises and the new VM is destroyed,
        the old one stays paused); when they are done (at once, or ``gap_ms`` apart for
        ``naive``): ``Kernel.move_to_machine`` for the guest, the old VM destroyed, the vCPUs
        started (each enters once), ``on_done`` called.  The old VM's key moment names it as
        the VM the guest was restored (``action`` "migrate": migrated) from, with its host
        and creation time.  The current VM must be paused
        (``ValueError``): a guest cannot run in two places."""
        if self.restoring:
            raise ValueError(f"VM {self.name}: a restore is already under way")
        if not self.machine.paused:
            raise ValueError(
                f"VM {self.name} must be paused before it is restored elsewhere; pause it first"
            )
        if host.kvm is None:
            raise RuntimeError(f"host kernel {host.name} has no KVM loaded")
        if self.guest is not None and len(snapshot.vcpus) != len(self.guest.machine.cpus):
            raise ValueError(
                f"snapshot has {len(snapshot.vcpus)} vCPUs, the guest runs on "
                f"{len(self.guest.machine.cpus)}"
            )
        recipe.check(host.cfg)
        recipe.check_snapshot(snapshot)
        new = host.kvm.create_vm(
            name=snapshot.name, memory_size=len(snapshot.memory), features=set(snapshot.features)
        )
        new.machine.paused = True
        self.restoring = True
        notes: list[str] = []
        self.restore_notes = notes
        old = self.vm
        old_host = self.host.name
        verb = "migrated" if action == "migrate" else "restored"
        old_since = f", created at {old.created_ns / 1e9:.3f} s"

        def done() -> None:
            if self.guest is not None:
                self.guest.move_to_machine(new.machine)
            if not old.destroyed:
                old.destroy(f"the VM it was {verb} from (on host {old_host}{old_since})")
            self.vm = new
            self.vm_history.append(new)
            self.host = host
            self.restoring = False
            self.resume()
            if on_done is not None:
                on_done()

        try:
            recipe.restore_steps(self, new, snapshot, notes, done)
        except Exception:
            # a step refused (e.g. KVM_SET_TSC_KHZ): the VMM exits, its new VM goes away
            if self.restoring:
                self.restoring = False
                new.destroy()
            raise

    def __repr__(self) -> str:
        return f"Vmm(name={self.name!r}, host={self.host.name!r}, vm={self.vm.name!r})"

"""``VmSnapshot``: what a VMM saves of a paused VM to rebuild it later or elsewhere.

The clock part of every VMM's save path (QEMU ``kvmclock_vm_state_change`` /
``kvm_get_msrs``, Firecracker ``KvmVm::save_state`` / ``KvmVcpu::save_state``,
cloud-hypervisor ``Vm::snapshot`` / ``KvmVcpu::state``): ``KVM_GET_CLOCK``, per vCPU
``KVM_GET_TSC_KHZ``, ``KVM_GET_MSRS`` of MSR_IA32_TSC and MSR_KVM_SYSTEM_TIME_NEW (and the
``KVM_VCPU_TSC_OFFSET`` attribute where the kernel has it), and the guest memory, so the
pvclock pages travel with the VM.  See docs/vmm.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmclock.kvm.x86 import KvmClockData

__all__ = ["VcpuSnapshot", "VmSnapshot"]


@dataclass(frozen=True)
class VcpuSnapshot:
    """One vCPU's saved clock state.

    ``tsc``: MSR_IA32_TSC read by a host-initiated ``KVM_GET_MSRS`` (guest TSC cycles, L1 view);
    ``tsc_offset``: the ``KVM_VCPU_TSC_OFFSET`` attribute (u64 cycles), None when the kernel
    has no such attribute (switch ``vcpu_tsc_offset_attr``); ``tsc_khz``: ``KVM_GET_TSC_KHZ``
    (kHz); ``system_time_msr``: MSR_KVM_SYSTEM_TIME_NEW (the gpa of the guest's pvclock record
    | 1 when enabled, 0 when kvmclock is off).
    """

    vcpu_id: int
    tsc: int
    tsc_offset: int | None
    tsc_khz: int
    system_time_msr: int


@dataclass(frozen=True)
class VmSnapshot:
    """A paused VM as a VMM saves it (all times in ns, TSC values in cycles).

    ``t_ns``: true time of the save; ``name``: the VM's name; ``host``: the host kernel's
    name; ``clock``: ``KVM_GET_CLOCK`` (a copy); ``host_realtime_ns``: the host's
    CLOCK_REALTIME read by the VMM itself right after (what a VMM's ``clock_gettime`` /
    ``SystemTime::now()`` gives: cloud-hypervisor fills ``clock.realtime`` from it when
    KVM did not); ``tsc_khz``: vCPU 0's kHz; ``vcpus``: per vCPU state; ``wall_clock_msr``:
    MSR_KVM_WALL_CLOCK_NEW (gpa, 0 if never written); ``memory``: the guest memory bytes;
    ``features``: what the VM offered its guest (CPUID, paravirt, emulated timers).
    """

    t_ns: int
    name: str
    host: str
    clock: KvmClockData
    host_realtime_ns: int
    tsc_khz: int
    vcpus: tuple[VcpuSnapshot, ...]
    wall_clock_msr: int
    memory: bytes
    features: frozenset[str]

    def __repr__(self) -> str:
        return (
            f"VmSnapshot(name={self.name!r}, host={self.host!r}, t_ns={self.t_ns}, "
            f"clock={self.clock.clock}, flags={self.clock.flags:#x}, tsc_khz={self.tsc_khz}, "
            f"vcpus={len(self.vcpus)}, memory={len(self.memory)} bytes)"
        )

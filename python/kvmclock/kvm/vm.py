"""A VM is a Machine (SPEC §2): KVM turns a kernel into machines for the next level.

``VirtualMachine`` implements the ``kvmclock.machine.base.Machine`` protocol for one ``Kvm``:
its CPUs are vCPU-backed (``read_tsc`` = ``kvm_scale_tsc(host TSC of the host CPU the vCPU
runs on) + tsc_offset``), its memory is a bytearray holding the real 32-byte pvclock records
where the guest put them, ``wrmsr`` is a VM exit into KVM's ``kvm_set_msr_common`` followed by
the re-entry (requests processed), and ``run_on_cpu(i, fn)`` is the host kernel's vCPU thread
running on its host CPU: load, ``vcpu_enter_guest`` (requests), then ``fn`` as guest code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from kvmclock.machine.base import Counter, T

if TYPE_CHECKING:
    from kvmclock.kvm.x86 import Kvm, Vcpu
    from kvmclock.machine.world import World

__all__ = ["VcpuCpu", "VirtualMachine"]

U64_MASK = (1 << 64) - 1


class VcpuCpu:
    """A guest CPU backed by a ``Vcpu`` (the ``Cpu`` protocol)."""

    def __init__(self, vm: VirtualMachine, vcpu: Vcpu) -> None:
        self.vm = vm
        self.vcpu = vcpu
        self.index = vcpu.vcpu_id

    @property
    def tsc_khz(self) -> int:
        """The vCPU's TSC frequency as the guest calibrates it (``virtual_tsc_khz``)."""
        return self.vcpu.virtual_tsc_khz

    def host_cpu(self) -> int:
        """The host CPU whose TSC this vCPU reads now: where it is loaded (``vcpu->cpu``), or
        where its thread would run (``affinity``) before the first load."""
        v = self.vcpu
        return v.cpu if v.cpu >= 0 else v.affinity

    def read_tsc(self) -> int:
        """Guest ``rdtsc``: ``kvm_read_l1_tsc(vcpu, host rdtsc)`` (u64)."""
        v = self.vcpu
        host = self.vm.host_machine.cpus[self.host_cpu()].read_tsc()
        return v.kvm.module.kvm_read_l1_tsc(v, host)

    def __repr__(self) -> str:
        return f"VcpuCpu(vm={self.vm.kvm.name!r}, index={self.index}, host_cpu={self.host_cpu()})"


class VirtualMachine:
    """The machine the next-level kernel boots on (level = host level + 1)."""

    def __init__(self, kvm: Kvm, *, memory_size: int, features: set[str]) -> None:
        self.kvm = kvm
        self.host_kernel = kvm.module.kernel
        self.host_machine = self.host_kernel.machine
        self.world: World = self.host_kernel.world
        self.level = self.host_kernel.level + 1
        self._cpus: list[VcpuCpu] = []
        self.memory = bytearray(memory_size)
        self.platform_counters: dict[str, Counter] = {}  # no emulated HPET / PM timer
        self.features: set[str] = set(features)

    @property
    def cpus(self) -> Sequence[VcpuCpu]:
        """The vCPUs created so far, by ``vcpu_id``."""
        return self._cpus

    def add_cpu(self, vcpu: Vcpu) -> None:
        """Called by ``Kvm.create_vcpu`` once the vCPU exists."""
        self._cpus.append(VcpuCpu(self, vcpu))

    def _vcpu(self, cpu: int) -> Vcpu:
        if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < len(self._cpus):
            raise ValueError(
                f"cpu={cpu!r} out of range (0..{len(self._cpus) - 1}: vCPUs of {self.kvm.name})"
            )
        return self._cpus[cpu].vcpu

    def run_on_cpu(self, cpu: int, fn: Callable[[], T]) -> T:
        """Run guest code ``fn`` on vCPU ``cpu``: the host kernel runs the vCPU thread on its
        host CPU (recursively down to the physical machine), which loads the vCPU, processes
        its requests and enters the guest.  Re-entrant calls for a vCPU already in guest mode
        run ``fn`` directly."""
        vcpu = self._vcpu(cpu)
        if vcpu.in_guest:
            return fn()
        module = self.kvm.module
        return self.host_kernel.run_on_cpu(vcpu.affinity, lambda: module.vcpu_run(vcpu, fn))

    def wrmsr(self, cpu: int, msr: int, value: int) -> None:
        """Guest ``wrmsr`` on vCPU ``cpu``: a VM exit to ``kvm_set_msr_common`` (not host
        initiated), then the re-entry, which processes the requests the write raised."""
        vcpu = self._vcpu(cpu)
        if isinstance(msr, bool) or not isinstance(msr, int) or not 0 <= msr <= 0xFFFFFFFF:
            raise ValueError(f"msr={msr!r} out of range (0..0xffffffff)")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MASK:
            raise ValueError(f"value={value!r} out of range (0..2**64-1)")
        module = self.kvm.module

        def exit_and_reenter() -> None:
            module.kvm_set_msr_common(vcpu, msr, value, host_initiated=False)
            module.process_requests(vcpu)

        if vcpu.in_guest:
            # The exit is handled by the host on the CPU the vCPU runs on now.
            self.host_kernel.run_on_cpu(vcpu.cpu, exit_and_reenter)
        else:
            self.run_on_cpu(cpu, exit_and_reenter)

    def __repr__(self) -> str:
        return (
            f"VirtualMachine(vm={self.kvm.name!r}, level={self.level}, "
            f"vcpus={len(self._cpus)}, memory={len(self.memory)})"
        )

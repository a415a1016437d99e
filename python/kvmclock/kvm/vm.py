"""A VM is a Machine: KVM turns a kernel into machines for the next level.

``VirtualMachine`` implements the ``kvmclock.machine.base.Machine`` protocol for one ``Kvm``:
its CPUs are vCPU-backed (``read_tsc`` = ``kvm_scale_tsc(host TSC of the host CPU the vCPU
runs on) + tsc_offset``), its memory is a bytearray holding the real 32-byte pvclock records
where the guest put them, ``wrmsr`` is a VM exit into KVM's ``kvm_set_msr_common`` followed by
the re-entry (requests processed), and ``run_on_cpu(i, fn)`` is the host kernel's vCPU thread
running on its host CPU: load, ``vcpu_enter_guest`` (requests), then ``fn`` as guest code.

What a VM offers its guest is its ``features`` set: CPUID bits ("constant_tsc", "nonstop_tsc",
"tsc_reliable"), paravirt clocks ("kvmclock", "kvmclock_stable_bit") and emulated platform
timers ("hpet", "acpi_pm", off unless asked for).  An emulated timer is a counter the VMM
derives from the host's clock, as QEMU does: its virtual clock (QEMU_CLOCK_VIRTUAL) is the
host's CLOCK_MONOTONIC, counting from when the VM was created (here: ``ktime_get_ns`` of the
host kernel, read when the guest reads the counter).  HPET: one tick per 10 ns (QEMU's
HPET_CLK_PERIOD of 10,000,000 fs, so the guest registers a 100 MHz hpet); Linux reads its low
32 bits.  ACPI PM timer: ``ns * 3,579,545 / 10**9`` (QEMU ``acpi_pm_tmr_get``), 24 bits.
Simplifications: the VM never pauses (QEMU stops its virtual clock while the VM is stopped),
the HPET counts from VM creation rather than from the guest's enable write, and the MMIO exit
to the VMM takes no time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import kvmclock as _k
from kvmclock.errors import count_ids
from kvmclock.machine.base import Counter, T

if TYPE_CHECKING:
    from kvmclock.kvm.x86 import Kvm, Vcpu
    from kvmclock.machine.world import World

__all__ = [
    "EMULATED_TIMERS",
    "QEMU_ACPI_PM_FREQ_HZ",
    "QEMU_HPET_CLK_PERIOD_NS",
    "EmulatedCounter",
    "VcpuCpu",
    "VirtualMachine",
]

U64_MASK = (1 << 64) - 1
NSEC_PER_SEC = 1_000_000_000
QEMU_HPET_CLK_PERIOD_NS = 10  # HPET_CLK_PERIOD 10,000,000 fs (QEMU hw/timer/hpet.c)
QEMU_ACPI_PM_FREQ_HZ = 3_579_545  # PM_TIMER_FREQUENCY (QEMU hw/acpi/core.c)
#: feature name -> (frequency in Hz, counter bits the guest driver reads)
EMULATED_TIMERS: dict[str, tuple[int, int]] = {
    "hpet": (NSEC_PER_SEC // QEMU_HPET_CLK_PERIOD_NS, 32),
    "acpi_pm": (QEMU_ACPI_PM_FREQ_HZ, 24),
}


class EmulatedCounter:
    """An emulated HPET main counter or ACPI PM timer of a VM (the ``Counter`` protocol).

    ``read()`` = ``floor((host CLOCK_MONOTONIC ns - at VM creation) * freq_hz / 10**9)``
    reduced to ``bits`` bits, with the host clock read now (``ktime_get_ns`` of the host
    kernel, on the CPU the host runs the reading vCPU on).  See the module docstring.
    """

    def __init__(self, vm: VirtualMachine, name: str) -> None:
        if name not in EMULATED_TIMERS:
            raise ValueError(
                f"name={name!r} is not an emulated timer; valid: {', '.join(EMULATED_TIMERS)}"
            )
        self.vm = vm
        self.name = name
        self.freq_hz, self.bits = EMULATED_TIMERS[name]
        self.mask = (1 << self.bits) - 1
        self.start_ns = self.host_ns()

    def host_ns(self) -> int:
        """The host's CLOCK_MONOTONIC now (ns)."""
        return int(self.vm.host_kernel.timekeeper.ktime_get_ns())

    def value_at_host_ns(self, host_ns: int) -> int:
        """The counter at host CLOCK_MONOTONIC ``host_ns``."""
        vclock = host_ns - self.start_ns
        return (vclock * self.freq_hz // NSEC_PER_SEC) & self.mask

    def read(self) -> int:
        """The counter now."""
        return self.value_at_host_ns(self.host_ns())

    def __repr__(self) -> str:
        return (
            f"EmulatedCounter(vm={self.vm.kvm.name!r}, name={self.name!r}, "
            f"freq_hz={self.freq_hz}, bits={self.bits})"
        )


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
        """Guest ``rdtsc``: ``kvm_read_l1_tsc(vcpu, host rdtsc)`` (u64).

        A vCPU of a nested guest (its KVM runs in a VM) with a TSC scaling ratio of its own
        reads what the hardware gives it when the KVM below (L0) composes the two levels
        (switch ``nested_tsc_scaling``, 5.14+): ``scale(L0 host TSC, ratio) + offset`` with
        ``ratio = kvm_calc_nested_tsc_multiplier(L1 ratio, L2 ratio)`` and ``offset =
        kvm_calc_nested_tsc_offset(L1 offset, L2 offset, L2 ratio)``; these round
        differently from L1's own view ``L2 offset + scale(L1 TSC, L2 ratio)``.  Without
        that switch the KVM below exposes no TSC scaling (``VirtualMachine.tsc_scaling`` is
        ``none``), so the nested ratio is always the default and both views are equal."""
        v = self.vcpu
        m = v.kvm.module
        below = self.vm.host_machine.cpus[v.cpu if v.cpu >= 0 else v.affinity]  # host_cpu()
        if v.tsc_scaling_ratio == m.default_tsc_scaling_ratio:
            # kvm_read_l1_tsc without scaling, inlined: every guest rdtsc comes here
            return (v.tsc_offset + below.read_tsc()) & U64_MASK
        if isinstance(below, VcpuCpu):
            v1 = below.vcpu
            m0 = v1.kvm.module
            if m0.cfg.nested_tsc_scaling:
                host = below.vm.host_machine.cpus[below.host_cpu()].read_tsc()
                ratio = m0.kvm_calc_nested_tsc_multiplier(v1.tsc_scaling_ratio, v.tsc_scaling_ratio)
                offset = m0.kvm_calc_nested_tsc_offset(
                    v1.tsc_offset, v.tsc_offset, v.tsc_scaling_ratio
                )
                if ratio != m0.default_tsc_scaling_ratio:
                    host = int(_k.scale_tsc(host, ratio, m0.tsc_scaling_ratio_frac_bits))
                return (offset + host) & U64_MASK
        return m.kvm_read_l1_tsc(v, below.read_tsc())

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
        # a plain attribute, not a property: every guest rdtsc goes through it
        self.cpus: Sequence[VcpuCpu] = self._cpus
        """The vCPUs created so far, by ``vcpu_id`` (``add_cpu`` appends)."""
        self.memory = bytearray(memory_size)
        self.features: set[str] = set(features)
        # emulated HPET / ACPI PM timer only when the VM was created with them
        self.platform_counters: dict[str, Counter] = {
            name: EmulatedCounter(self, name) for name in EMULATED_TIMERS if name in self.features
        }
        # The TSC scaling the next level's KVM finds: the host's when the host KVM scales
        # nested guests (5.14+ nVMX / 5.15 nSVM, switch nested_tsc_scaling), else none
        # (earlier nested VMX/SVM did not expose TSC scaling to L1).
        module = kvm.module
        self.tsc_scaling: str = module.tsc_scaling if module.cfg.nested_tsc_scaling else "none"
        self.paused = False
        """True while the VMM keeps every vCPU out of KVM_RUN (a paused or saved VM)."""

    @property
    def running(self) -> bool:
        """Whether guest code executes now: not paused, and the host machine runs."""
        # the VMs below walked in a loop, not through each one's property (hot: every timer)
        m: object = self
        while isinstance(m, VirtualMachine):
            if m.paused:
                return False
            m = m.host_machine
        return bool(getattr(m, "running", True))

    def add_cpu(self, vcpu: Vcpu) -> None:
        """Called by ``Kvm.create_vcpu`` once the vCPU exists."""
        self._cpus.append(VcpuCpu(self, vcpu))

    def _vcpu(self, cpu: int) -> Vcpu:
        if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < len(self._cpus):
            raise ValueError(
                f"cpu={cpu!r}: VM {self.kvm.name} has {count_ids(len(self._cpus), 'vCPU')}"
            )
        return self._cpus[cpu].vcpu

    def run_on_cpu(self, cpu: int, fn: Callable[[], T]) -> T:
        """Run guest code ``fn`` on vCPU ``cpu``: the host kernel runs the vCPU thread on its
        host CPU (recursively down to the physical machine), which loads the vCPU, processes
        its requests and enters the guest.  Re-entrant calls for a vCPU already in guest mode
        run ``fn`` directly."""
        cpus = self._cpus
        # hot (every entry): the checks of _vcpu only for what is not a valid vCPU number
        vcpu = cpus[cpu].vcpu if cpu.__class__ is int and 0 <= cpu < len(cpus) else self._vcpu(cpu)
        if vcpu.in_guest:
            return fn()
        return self.host_kernel.run_on_cpu(
            vcpu.affinity, functools.partial(self.kvm.module.vcpu_run, vcpu, fn)
        )

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
            module.kvm_vcpu_exit_catchup(vcpu)
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

"""``Vmm``: one VMM process and the VM it drives (creation and the vCPU threads)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel
    from kvmclock.kvm.vm import VirtualMachine
    from kvmclock.kvm.x86 import Kvm

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
        self.guest: Kernel | None = None
        for _ in range(vcpus):
            self.vm.create_vcpu()
        for i in range(vcpus):
            self.machine.run_on_cpu(i, lambda: None)

    @property
    def machine(self) -> VirtualMachine:
        """The machine the guest kernel runs on (the current VM's)."""
        return self.vm.machine

    def __repr__(self) -> str:
        return f"Vmm(name={self.name!r}, host={self.host.name!r}, vm={self.vm.name!r})"

"""Shared set-up of the vmm/ tests: hosts and guests on the model, and the guest's pvclock
record read back with the reference arithmetic (tests/reference), never with the model."""

from __future__ import annotations

from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.vmm import Vmm
from reference import kernel_math as ref

S = 1_000_000_000
MS = 1_000_000
U64 = (1 << 64) - 1
KHZ = 2_593_992
EPOCH = 1_700_000_000 * S
STABLE = 1  # PVCLOCK_TSC_STABLE_BIT
STOPPED = 2  # PVCLOCK_GUEST_STOPPED


def make_host(
    world: World,
    profile: str,
    name: str = "h0",
    *,
    khz: int = KHZ,
    scaling: str = "vmx",
    boot_at_ns: int = 0,
    hz: int = 250,
) -> Kernel:
    """A booted 2-CPU host with KVM loaded (``boot_at_ns``: run the world there before KVM
    loads, as a host that has been up a moment; ``hz``: its CONFIG_HZ)."""
    m = PhysicalMachine(world, 2, tsc_khz=khz, rtc_epoch_ns=EPOCH, tsc_scaling=scaling)
    k = Kernel(m, profile, name=name, hz=hz)
    k.boot()
    if boot_at_ns:
        world.run_until(boot_at_ns)
    k.load_kvm()
    return k


def make_guest(
    host: Kernel,
    profile: str,
    *,
    vcpus: int = 2,
    features: set[str] | None = None,
    clocksource: str | None = None,
    hz: int = 250,
) -> Vmm:
    """A VM of ``vcpus`` driven by a ``Vmm``, its guest kernel booted (CONFIG_HZ ``hz``)."""
    vmm = Vmm(host, name="vm", vcpus=vcpus, features=features)
    g = Kernel(vmm.machine, profile, name="g", clocksource_override=clocksource, hz=hz)
    vmm.guest = g
    g.boot()
    return vmm


def record(vmm: Vmm, vcpu: int = 0) -> ref.Record:
    """vCPU ``vcpu``'s pvclock record as the guest sees it in its memory."""
    v = vmm.vm.vcpus[vcpu]
    return ref.Record.unpack(bytes(vmm.machine.memory), v.pv_time_gpa)


def kvmclock_now(vmm: Vmm, vcpu: int = 0) -> int:
    """What the guest's kvm-clock reads now on ``vcpu`` (a stable record: no clamp)."""
    rec = record(vmm, vcpu)
    assert rec.flags & STABLE
    return ref.read_cycles(rec, vmm.machine.cpus[vcpu].read_tsc())

"""Messages about a CPU or vCPU index that does not exist name the argument first, then say
what exists: ``vcpu_id=1: the VM has 1 vCPU: 0``, ``vcpu_id=5: the VM has 4 vCPUs: 0..3``
(never a range such as ``0..0``)."""

from __future__ import annotations

import re

import pytest
from kvmclock.errors import count_ids
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.real.guest import record_gpa

KHZ = 3_000_000
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01


def _host(cpus: int) -> Kernel:
    world = World(0)
    k = Kernel(PhysicalMachine(world, cpus, tsc_khz=KHZ), "upstream", name="L0")
    k.boot()
    world.run_until(1_000_000)
    k.load_kvm()
    return k


@pytest.mark.parametrize(("n", "text"), [(0, "no vCPUs"), (1, "1 vCPU: 0"),
                                         (2, "2 vCPUs: 0..1"), (4, "4 vCPUs: 0..3")])
def test_count_ids(n: int, text: str) -> None:
    assert count_ids(n, "vCPU") == text


@pytest.mark.parametrize(("nvcpus", "bad", "message"), [
    (1, 1, "vcpu_id=1: the VM has 1 vCPU: 0"),
    (4, 5, "vcpu_id=5: the VM has 4 vCPUs: 0..3"),
    (4, -1, "vcpu_id=-1: the VM has 4 vCPUs: 0..3"),
])
def test_vcpu_id(nvcpus: int, bad: int, message: str) -> None:
    host = _host(2)
    assert host.kvm is not None
    vm = host.kvm.create_vm()
    for _ in range(nvcpus):
        vm.create_vcpu()
    for call in (lambda: vm.write_tsc(bad, 0), lambda: vm.set_tsc_offset(bad, 0)):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            call()


def test_vcpu_id_of_a_vm_without_vcpus() -> None:
    host = _host(1)
    assert host.kvm is not None
    vm = host.kvm.create_vm()
    with pytest.raises(ValueError, match=r"^vcpu_id=0: the VM has no vCPUs$"):
        vm.write_tsc(0, 0)


def test_host_cpus() -> None:
    host = _host(1)
    assert host.kvm is not None
    vm = host.kvm.create_vm()
    with pytest.raises(ValueError, match=r"^affinity=1: the host has 1 CPU: 0$"):
        vm.create_vcpu(affinity=1)
    vm.create_vcpu()
    with pytest.raises(ValueError, match=r"^host_cpu=3: the host has 1 CPU: 0$"):
        vm.migrate_vcpu(0, 3)
    big = _host(4)
    assert big.kvm is not None
    with pytest.raises(ValueError, match=r"^affinity=4: the host has 4 CPUs: 0\.\.3$"):
        big.kvm.create_vm().create_vcpu(affinity=4)


def test_guest_machine_cpu() -> None:
    host = _host(2)
    assert host.kvm is not None
    vm = host.kvm.create_vm()
    vm.create_vcpu()
    with pytest.raises(ValueError, match=r"^cpu=1: VM .+ has 1 vCPU: 0$"):
        vm.machine.run_on_cpu(1, lambda: None)


def test_physical_machine_cpu() -> None:
    m = PhysicalMachine(World(0), 2, tsc_khz=KHZ)
    with pytest.raises(ValueError, match=r"^cpu=2: the machine has 2 CPUs: 0\.\.1$"):
        m.run_on_cpu(2, lambda: None)
    with pytest.raises(ValueError, match=r"^cpu=-1: the machine has 2 CPUs: 0\.\.1$"):
        m.wrmsr(-1, MSR_KVM_SYSTEM_TIME_NEW, 0)
    with pytest.raises(TypeError, match="cpu must be an int"):
        m.run_on_cpu(True, lambda: None)


def test_real_guest_record_page() -> None:
    with pytest.raises(ValueError, match=r"^vcpu_id=64: the records page holds 64 vCPUs: 0\.\.63$"):
        record_gpa(64)

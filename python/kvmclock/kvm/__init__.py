"""KVM: turns a kernel into machines for the next level (arch/x86/kvm/x86.c clock logic)."""

from kvmclock.kvm.requests import (
    KVM_REQ_CLOCK_UPDATE,
    KVM_REQ_GLOBAL_CLOCK_UPDATE,
    KVM_REQ_MASTERCLOCK_UPDATE,
    KVM_REQ_MCLOCK_INPROGRESS,
    KVM_REQ_MIGRATE_TIMER,
    request_names,
)
from kvmclock.kvm.vm import VcpuCpu, VirtualMachine
from kvmclock.kvm.x86 import (
    FAULTS,
    KVM_CLOCK_HOST_TSC,
    KVM_CLOCK_REALTIME,
    KVM_CLOCK_TSC_STABLE,
    MSR_IA32_TSC,
    MSR_KVM_SYSTEM_TIME,
    MSR_KVM_SYSTEM_TIME_NEW,
    HvClock,
    Kvm,
    KvmClockData,
    KvmModule,
    MasterclockLivelock,
    SpinLock,
    TimeScaleLivelock,
    Vcpu,
)

__all__ = [
    "FAULTS",
    "KVM_CLOCK_HOST_TSC",
    "KVM_CLOCK_REALTIME",
    "KVM_CLOCK_TSC_STABLE",
    "KVM_REQ_CLOCK_UPDATE",
    "KVM_REQ_GLOBAL_CLOCK_UPDATE",
    "KVM_REQ_MASTERCLOCK_UPDATE",
    "KVM_REQ_MCLOCK_INPROGRESS",
    "KVM_REQ_MIGRATE_TIMER",
    "MSR_IA32_TSC",
    "MSR_KVM_SYSTEM_TIME",
    "MSR_KVM_SYSTEM_TIME_NEW",
    "HvClock",
    "Kvm",
    "KvmClockData",
    "KvmModule",
    "MasterclockLivelock",
    "SpinLock",
    "TimeScaleLivelock",
    "Vcpu",
    "VcpuCpu",
    "VirtualMachine",
    "request_names",
]

"""Hardware a kernel runs on: the World, the Machine protocol and a physical machine."""

from kvmclock.machine.base import Counter, Cpu, Machine
from kvmclock.machine.physical import AcpiPm, Hpet, PhysicalCpu, PhysicalMachine, PlatformCounter
from kvmclock.machine.world import Event, Periodic, World

__all__ = [
    "AcpiPm",
    "Counter",
    "Cpu",
    "Event",
    "Hpet",
    "Machine",
    "Periodic",
    "PhysicalCpu",
    "PhysicalMachine",
    "PlatformCounter",
    "World",
]

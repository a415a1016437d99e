"""The interface a kernel runs on: CPUs with a TSC, memory, MSRs, platform counters.

A physical machine (``physical.py``) and a VM (``kvm/vm.py``, KVM turning a kernel into a
machine for the next level) implement the same protocol, so one ``Kernel`` class runs on both.
Kernel code gets a CPU only through ``Machine.run_on_cpu`` (a VM enters the vCPU through its
host KVM there, processing requests as ``vcpu_enter_guest`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from kvmclock.machine.world import World

__all__ = ["U64_MASK", "Counter", "Cpu", "Machine", "T"]

T = TypeVar("T")
U64_MASK = (1 << 64) - 1


@runtime_checkable
class Cpu(Protocol):
    """One CPU as kernel code sees it: ``rdtsc`` and the TSC frequency it was calibrated at."""

    index: int

    @property
    def tsc_khz(self) -> int:
        """The TSC frequency (kHz) this CPU reports to the kernel."""
        ...

    def read_tsc(self) -> int:
        """u64 TSC of this CPU at ``world.now_ns`` (``rdtsc_ordered``)."""
        ...


@runtime_checkable
class Counter(Protocol):
    """A free-running platform counter (HPET main counter, ACPI PM timer)."""

    name: str
    freq_hz: int
    bits: int

    def read(self) -> int:
        """Counter value at ``world.now_ns``, already reduced to ``bits`` bits."""
        ...


@runtime_checkable
class Machine(Protocol):
    """Hardware a kernel boots on.

    Optional extension used by ``Kernel`` when present: ``read_persistent_clock_ns() -> int``
    (the RTC / ``read_persistent_clock64`` wall time in ns); absent means 0 (1970-01-01);
    ``running -> bool``: False while the machine executes nothing (a suspended host, a paused
    VM or a VM whose host is suspended); absent means always running.  Timers of a kernel on a
    machine that is not running do not fire (the tick, the watchdog), and nothing samples it.
    """

    world: World
    level: int
    memory: bytearray
    features: set[str]

    @property
    def cpus(self) -> Sequence[Cpu]:
        """The CPUs (a VM: its vCPUs), indexed by CPU number."""
        ...

    @property
    def platform_counters(self) -> Mapping[str, Counter]:
        """Platform counters by clocksource name (physical: hpet, acpi_pm; a VM: the emulated
        ones its features ask for, none by default)."""
        ...

    def run_on_cpu(self, cpu: int, fn: Callable[[], T]) -> T:
        """Run kernel code ``fn`` on CPU ``cpu`` and return its result."""
        ...

    def wrmsr(self, cpu: int, msr: int, value: int) -> None:
        """``wrmsr`` executed by kernel code on CPU ``cpu`` (a VM: KVM's kvm_set_msr_common)."""
        ...

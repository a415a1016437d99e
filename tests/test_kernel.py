"""Kernel: profiles, boot order and selection, overrides, run_on_cpu, notifier registration."""

from __future__ import annotations

from typing import Any

import pytest
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.timekeeping import NOTIFY_DONE, VCLOCK_TSC
from test_clocksource import FakeVm, booted_guest


def test_profile_must_be_known() -> None:
    m = PhysicalMachine(World(), 1)
    with pytest.raises(ValueError, match="gtod, series, upstream"):
        Kernel(m, "linux-2.6")
    with pytest.raises(ValueError, match="hz"):
        Kernel(m, "gtod", hz=0)
    with pytest.raises(ValueError, match="kvmclock_rating"):
        Kernel(m, "gtod", kvmclock_rating=-1)


def test_boot_selects_best_rating_and_logs() -> None:
    w = World(2)
    m = PhysicalMachine(w, 2)
    k = Kernel(m, "gtod", name="host")
    k.boot()
    assert [cs.name for cs in k.clocksource_list] == ["tsc", "hpet", "acpi_pm", "jiffies"]
    assert k.timekeeper.clock.name == "tsc" and k.curr_clocksource is k.clocksources["tsc"]
    assert k.timekeeper.get_tk_mono_clock_mode() == VCLOCK_TSC
    assert k.watchdog.watchdog is k.clocksources["hpet"] and k.watchdog.running
    assert k.counters["clocksource_changes"] == 1
    boot = [e for e in w.events if e["kind"] == "boot"]
    assert boot and boot[0]["kernel"] == "host" and boot[0]["clocksource"] == "tsc"
    with pytest.raises(RuntimeError, match="already booted"):
        k.boot()


@pytest.mark.parametrize("override", ["hpet", "acpi_pm", "jiffies"])
def test_override_by_name(override: str) -> None:
    m = PhysicalMachine(World(), 1)
    k = Kernel(m, "series", clocksource_override=override)
    k.boot()
    assert k.timekeeper.clock.name == override


def test_override_unknown_name_keeps_rating_order() -> None:
    m = PhysicalMachine(World(), 1)
    k = Kernel(m, "series", clocksource_override="nonexistent")
    k.boot()
    assert k.timekeeper.clock.name == "tsc"


def test_jiffies_only_machine() -> None:
    w = World()
    m = PhysicalMachine(w, 1, hpet=False, acpi_pm=False, features={"notsc"})
    k = Kernel(m, "gtod", hz=100)
    k.boot()
    assert k.timekeeper.clock.name == "jiffies"
    assert not k.watchdog.running
    w.run_until(2_000_000_000)
    assert k.timekeeper.ktime_get_ns() == 2_000_000_000  # 200 jiffies of 10 ms


def test_run_on_cpu_sets_current_cpu() -> None:
    m = PhysicalMachine(World(), 3)
    k = Kernel(m, "gtod")
    assert k.run_on_cpu(2, lambda: (k.current_cpu, m.running_cpu)) == (2, 2)
    assert k.current_cpu == 0


def test_guest_kernel_on_vm_interface() -> None:
    _w, _vm, k = booted_guest("series")
    assert k.level == 1 and k.name == "L1"
    assert [cs.name for cs in k.clocksource_list] == ["kvm-clock", "tsc", "jiffies"]
    # no platform counters: the watchdog of the tsc is the best non-MUST_VERIFY source
    assert k.watchdog.watchdog is k.clocksources["kvm-clock"]


def test_kvmclock_memory_too_small() -> None:
    w = World()
    vm = FakeVm(w, ncpus=2)
    vm.memory = bytearray(100)
    k = Kernel(vm, "series")
    with pytest.raises(ValueError, match="too small"):
        k.boot()


def test_gtod_register_fires_immediately_with_timekeeper() -> None:
    w = World()
    k = Kernel(PhysicalMachine(w, 1), "gtod")
    k.boot()
    got: list[tuple[int, Any]] = []
    k.pvclock_gtod_register_notifier(lambda a, d: got.append((a, d)) or NOTIFY_DONE)
    assert got == [(1, k.timekeeper)]
    w.run_until(8_000_000)
    assert got[1:] == [(0, k.timekeeper)] * 2
    with pytest.raises(ValueError, match="not registered"):
        k.pvclock_gtod_unregister_notifier(lambda a, d: 0)


def test_change_chain_register_and_unregister() -> None:
    w = World()
    k = Kernel(PhysicalMachine(w, 1), "series")
    k.boot()
    calls: list[int] = []

    def cb(action: int, data: Any) -> int:
        calls.append(action)
        assert data is None
        return NOTIFY_DONE

    k.clocksource_changes_register_notifier(cb)
    assert calls == [0]
    w.run_until(2_000_000_000)  # ticks never notify
    assert calls == [0]
    k.clocksource_changes_unregister_notifier(cb)
    k.clocksource_changes_notify()
    assert calls == [0]

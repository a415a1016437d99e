"""Physical hardware: TSC as an exact function of true time, HPET/ACPI PM widths, and the
Machine protocol."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kvmclock.machine import AcpiPm, Cpu, Hpet, Machine, PhysicalCpu, PhysicalMachine, World

U64 = (1 << 64) - 1


def _expected_tsc(
    t: int, khz: int, ppm: Fraction, offset: int, jumps: list[tuple[int, int]]
) -> int:
    cycles = Fraction(t) * khz * (Fraction(1_000_000) + ppm) / 10**12
    v = offset + (cycles.numerator // cycles.denominator) + sum(d for at, d in jumps if at <= t)
    return v % (1 << 64)


@given(
    t=st.integers(min_value=0, max_value=10**15),
    khz=st.integers(min_value=1, max_value=10_000_000),
    ppm=st.fractions(min_value=-500_000, max_value=500_000, max_denominator=1000),
    offset=st.integers(min_value=0, max_value=U64),
)
def test_tsc_formula_exact(t: int, khz: int, ppm: Fraction, offset: int) -> None:
    w = World()
    cpu = PhysicalCpu(w, 0, khz, boot_offset=offset, drift_ppm=ppm)
    assert cpu.tsc_at(t) == _expected_tsc(t, khz, ppm, offset, [])


def test_jumps_and_backwards_steps() -> None:
    w = World()
    jumps = [(2_000, 5_000), (1_000, -300)]
    cpu = PhysicalCpu(w, 0, 1_000_000, boot_offset=10_000, jumps=jumps)
    for t in (0, 999, 1_000, 1_500, 2_000, 10_000):
        assert cpu.tsc_at(t) == _expected_tsc(t, 1_000_000, Fraction(0), 10_000, jumps)
    assert cpu.tsc_at(1_000) < cpu.tsc_at(999)  # the backwards step is visible
    cpu.add_tsc_jump(3_000, 1)
    assert cpu.tsc_at(3_000) == cpu.tsc_at(2_999) + 1 + 1
    w.run_until(1_500)
    assert cpu.read_tsc() == cpu.tsc_at(1_500)


def test_tsc_wraps_at_64_bits() -> None:
    w = World()
    cpu = PhysicalCpu(w, 0, 1_000_000, boot_offset=U64 - 10)  # 1 cycle per ns
    assert cpu.tsc_at(10) == U64
    assert cpu.tsc_at(11) == 0
    assert cpu.tsc_at(25) == 14


def test_float_ppm_is_taken_as_written_decimal() -> None:
    w = World()
    assert PhysicalCpu(w, 0, 1000, drift_ppm=12.5).drift_ppm == Fraction(25, 2)
    assert PhysicalCpu(w, 0, 1000, drift_ppm="0.1").drift_ppm == Fraction(1, 10)


@pytest.mark.parametrize(("cls", "freq", "bits"), [(Hpet, 14_318_180, 32), (AcpiPm, 3_579_545, 24)])
def test_platform_counters(cls: type[Hpet], freq: int, bits: int) -> None:
    w = World()
    start = (1 << bits) - 100
    c = cls(w, start=start)
    assert (c.freq_hz, c.bits) == (freq, bits)
    for t in (0, 1, 10**6, 10**9, 3 * 10**11):
        assert c.value_at(t) == (start + t * freq // 10**9) % (1 << bits)
    # wraps: 100 ticks after the start it is back near zero
    t_wrap = -(-100 * 10**9 // freq)
    assert c.value_at(t_wrap) < 100


def test_physical_machine_protocol_and_seeded_offsets() -> None:
    w = World(3)
    m = PhysicalMachine(w, 4, 4096, tsc_khz=3_000_000, tsc_skew_cycles=500)
    assert isinstance(m, Machine)
    assert all(isinstance(c, Cpu) for c in m.cpus)
    assert m.level == 0 and len(m.memory) == 4096
    assert set(m.platform_counters) == {"hpet", "acpi_pm"}
    offsets = [c.boot_offset for c in m.cpus]
    assert max(offsets) - min(offsets) <= 500
    m2 = PhysicalMachine(World(3), 4, 4096, tsc_khz=3_000_000, tsc_skew_cycles=500)
    assert [c.boot_offset for c in m2.cpus] == offsets
    m3 = PhysicalMachine(World(4), 4, 4096, tsc_khz=3_000_000, tsc_skew_cycles=500)
    assert [c.boot_offset for c in m3.cpus] != offsets
    synced = PhysicalMachine(World(3), 4)
    assert len({c.boot_offset for c in synced.cpus}) == 1


def test_run_on_cpu_and_wrmsr() -> None:
    w = World()
    m = PhysicalMachine(w, 2)
    assert m.run_on_cpu(1, lambda: m.running_cpu) == 1
    assert m.running_cpu is None
    with pytest.raises(ValueError, match="cpu"):
        m.run_on_cpu(2, lambda: None)
    with pytest.raises(ValueError, match="physical machine"):
        m.wrmsr(0, 0x4B564D01, 0x1001)


def test_persistent_clock_has_second_resolution() -> None:
    w = World()
    m = PhysicalMachine(w, 1, rtc_epoch_ns=1_500_000_000_123_456_789)
    w.run_until(2_500_000_000)
    assert m.read_persistent_clock_ns() == 1_500_000_002_000_000_000


def test_bad_arguments() -> None:
    w = World()
    with pytest.raises(ValueError, match="tsc_khz"):
        PhysicalCpu(w, 0, 0)
    with pytest.raises(ValueError, match="drift_ppm"):
        PhysicalCpu(w, 0, 1000, drift_ppm=-1_000_000)
    with pytest.raises(TypeError, match="drift_ppm"):
        PhysicalCpu(w, 0, 1000, drift_ppm=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cpus"):
        PhysicalMachine(w, 0)
    with pytest.raises(ValueError, match="index"):
        PhysicalMachine(w, [PhysicalCpu(w, 1, 1000)])
    with pytest.raises(ValueError, match="boot_offset"):
        PhysicalCpu(w, 0, 1000, boot_offset=1 << 64)

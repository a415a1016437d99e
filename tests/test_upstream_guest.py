"""The guest kernel of the upstream (6.18) profile: kvm-clock's rating, the 6.18 clocksource
watchdog, and a VM's emulated HPET / ACPI PM timer.

Every switch is flipped here and the observable result changes.  Expected numbers are written
out with the kernel's own arithmetic in this file (mult/shift, uncertainty margins, retries),
never taken from the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from kvmclock.kernel import Kernel
from kvmclock.kvm.requests import KVM_REQ_CLOCK_UPDATE
from kvmclock.kvm.vm import EmulatedCounter
from kvmclock.kvm.x86 import Kvm
from kvmclock.machine import PhysicalCpu, PhysicalMachine, World
from kvmclock.profiles import PROFILES, SWITCHES, Profile
from kvmclock.timekeeping import CLOCK_SOURCE_MUST_VERIFY, CLOCK_SOURCE_UNSTABLE
from kvmclock.timekeeping.clocksource import (
    clocksource_delta,
    clocksource_delta_max,
    cycles_to_nsec_safe,
)
from kvmclock.timekeeping.watchdog import (
    WD_READ_SKIP,
    WD_READ_SUCCESS,
    WD_READ_UNSTABLE,
    max_watchdog_retry,
)

NSEC = 10**9
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
INTERVAL = NSEC // 2  # WATCHDOG_INTERVAL at HZ=250: 125 jiffies of 4,000,000 ns
INVARIANT = {"kvmclock", "kvmclock_stable_bit", "constant_tsc", "nonstop_tsc"}

# -- kernel arithmetic, written out -----------------------------------------------------------
WATCHDOG_THRESHOLD_2017 = NSEC >> 4  # 62,500,000 ns (4.13)
WATCHDOG_THRESHOLD_6X = NSEC >> 5  # 31,250,000 ns (6.x: margin of a source without a freq)
WATCHDOG_MAX_SKEW = 125 * 1000  # CONFIG_CLOCKSOURCE_WATCHDOG_MAX_SKEW_US=125, in ns


def margin(scale: int, freq: int) -> int:
    """``__clocksource_update_freq_scale`` (6.18): NSEC_PER_SEC / (u32)(scale * freq), at
    least 2 * WATCHDOG_MAX_SKEW."""
    return max(NSEC // ((scale * freq) & U32), 2 * WATCHDOG_MAX_SKEW)


def calc_mult_shift(frm: int, to: int, maxsec: int) -> tuple[int, int]:
    """``clocks_calc_mult_shift`` (kernel/time/clocksource.c)."""
    tmp = (maxsec * frm) >> 32
    sftacc = 32
    while tmp:
        tmp >>= 1
        sftacc -= 1
    sft = 32
    while sft > 0:
        tmp = ((to << sft) + frm // 2) // frm
        if (tmp >> sftacc) == 0:
            break
        sft -= 1
    return tmp, sft


def registered_mult_shift(mask: int, scale: int, freq: int) -> tuple[int, int]:
    """mult/shift after ``__clocksource_update_freq_scale`` (with the 11% maxadj halving)."""
    sec = mask // freq // scale
    if sec == 0:
        sec = 1
    elif sec > 600 and mask > U32:
        sec = 600
    mult, shift = calc_mult_shift(freq, NSEC // scale, sec * scale)
    maxadj = mult * 11 // 100
    while ((mult + maxadj) & U32) < mult or ((mult - maxadj) & U32) > mult:
        mult >>= 1
        shift -= 1
        maxadj = mult * 11 // 100
    return mult, shift


def cyc2ns(cycles: int, mult: int, shift: int) -> int:
    """``clocksource_cyc2ns``: (cycles * mult) mod 2**64 >> shift."""
    return ((cycles * mult) & U64) >> shift


# -- helpers ----------------------------------------------------------------------------------
def stack(
    profile: str | Profile,
    features: Iterable[str] = INVARIANT,
    *,
    tsc_khz: int = 2_995_200,
    rating: int | None = None,
) -> tuple[World, Kernel, Kvm, Kernel]:
    """Host (2 CPUs, hpet + acpi_pm) with KVM, a 2-vCPU VM offering ``features``, its kernel."""
    w = World(0)
    m = PhysicalMachine(w, 2, tsc_khz=tsc_khz)
    host = Kernel(m, profile, name="L0")
    host.boot()
    mod = host.load_kvm()
    w.run_until(NSEC)
    vm = mod.create_vm(name="L1", features=set(features))
    for _ in range(2):
        vm.create_vcpu()
    for i in range(2):
        vm.machine.run_on_cpu(i, lambda: None)
    guest = Kernel(vm.machine, profile, name="L1", kvmclock_rating=rating)
    guest.boot()
    return w, host, vm, guest


def step_guest_tsc(vm: Kvm, cycles: int) -> None:
    """Move every vCPU's TSC by ``cycles`` (userspace sets the offset, as a restore does) and
    request a kvm-clock update: kvm-clock stays continuous, the guest TSC steps."""
    mod = vm.module
    for i, v in enumerate(vm.vcpus):

        def body(v: Any = v) -> None:
            mod.kvm_vcpu_write_tsc_offset(v, v.tsc_offset + cycles)
            v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)

        vm.vcpu_ioctl(i, body)


def unstable_times(w: World, kernel: str) -> list[int]:
    return [
        int(e["t_ns"])
        for e in w.events
        if e["kind"] == "clocksource_unstable" and e.get("kernel") == kernel
    ]


def printk(w: World, kernel: str) -> list[str]:
    return [str(e["text"]) for e in w.events if e["kind"] == "printk" and e["kernel"] == kernel]


def checks(w: World, kernel: str) -> list[dict[str, Any]]:
    return [e for e in w.events if e["kind"] == "watchdog_check" and e["kernel"] == kernel]


UPSTREAM = PROFILES["upstream"]


# -- the switches -----------------------------------------------------------------------------
def test_switch_entries_and_profile_values() -> None:
    r, wd = SWITCHES["kvmclock_rating"], SWITCHES["clocksource_watchdog"]
    assert r.values == ("always_400", "299_if_invariant_tsc")
    assert (r.since, r.commit) == ("5.1", "7539b174aef4")
    assert "kvmclock_init" in r.where
    assert wd.values == ("4.13", "6.18") and wd.since == "5.14"
    assert "cs_watchdog_read" in wd.where
    for name in ("gtod", "series"):
        assert PROFILES[name].kvmclock_rating == "always_400"
        assert PROFILES[name].clocksource_watchdog == "4.13"
    assert UPSTREAM.kvmclock_rating == "299_if_invariant_tsc"
    assert UPSTREAM.clocksource_watchdog == "6.18"
    with pytest.raises(ValueError, match="valid: always_400, 299_if_invariant_tsc"):
        UPSTREAM.with_(kvmclock_rating="299")
    with pytest.raises(ValueError, match=r"valid: 4\.13, 6\.18"):
        UPSTREAM.with_(clocksource_watchdog="5.14")


# -- 1. kvm-clock's rating --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile", "features", "rating", "current"),
    [
        (UPSTREAM, INVARIANT, 299, "tsc"),
        (UPSTREAM, INVARIANT - {"nonstop_tsc"}, 400, "kvm-clock"),
        (UPSTREAM, INVARIANT - {"constant_tsc"}, 400, "kvm-clock"),
        (UPSTREAM.with_(kvmclock_rating="always_400"), INVARIANT, 400, "kvm-clock"),
        (PROFILES["gtod"], INVARIANT, 400, "kvm-clock"),
        (PROFILES["series"], INVARIANT, 400, "kvm-clock"),
        (PROFILES["gtod"].with_(kvmclock_rating="299_if_invariant_tsc"), INVARIANT, 299, "tsc"),
    ],
)
def test_kvmclock_rating_from_invariant_tsc(
    profile: Profile, features: set[str], rating: int, current: str
) -> None:
    _w, _h, _vm, g = stack(profile, features)
    assert g.kvmclock_rating == rating
    assert g.clocksources["kvm-clock"].rating == rating
    assert g.clocksources["tsc"].rating == 300
    assert g.timekeeper.clock.name == current
    # kvm-clock is the best-rated source without MUST_VERIFY either way: the watchdog
    assert g.watchdog.watchdog is g.clocksources["kvm-clock"]


def test_kvmclock_rating_unstable_tsc_and_explicit_override() -> None:
    w = World(0)
    m = PhysicalMachine(w, 1, tsc_khz=2_995_200)
    host = Kernel(m, "upstream", name="L0")
    host.boot()
    vm = host.load_kvm().create_vm(name="L1", features=INVARIANT)
    vm.create_vcpu()
    vm.machine.run_on_cpu(0, lambda: None)
    g = Kernel(vm.machine, "upstream", name="L1")
    assert g.kvmclock_rating == 299
    g.mark_tsc_unstable("boot parameter")  # before kvmclock_init: !check_tsc_unstable() fails
    assert g.kvmclock_rating == 400
    g.boot()
    assert g.clocksources["kvm-clock"].rating == 400
    assert g.timekeeper.clock.name == "kvm-clock"
    # an explicit rating wins over the switch (the constructor override)
    assert Kernel(vm.machine, "upstream", kvmclock_rating=350).kvmclock_rating == 350
    assert Kernel(vm.machine, "gtod", kvmclock_rating=299).kvmclock_rating == 299
    with pytest.raises(TypeError, match="kvmclock_rating must be an int or None"):
        Kernel(vm.machine, "upstream", kvmclock_rating="299")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kvmclock_rating=1001 out of range"):
        Kernel(vm.machine, "upstream", kvmclock_rating=1001)


# -- 2. the watchdog: exact arithmetic on 1 GHz counters -----------------------------------------
class ScriptedCounter:
    """A 1 GHz, 32-bit platform counter named ``hpet`` (count = true ns) whose reads at one
    instant return the extra ns of ``extras`` in turn (a read that seems to take time)."""

    name = "hpet"
    freq_hz = NSEC
    bits = 32

    def __init__(self, world: World) -> None:
        self.world = world
        self.at_ns = -1
        self.extras: list[int] = []
        self.reads_at: dict[int, int] = {}

    def read(self) -> int:
        now = self.world.now_ns
        self.reads_at[now] = self.reads_at.get(now, 0) + 1
        extra = self.extras.pop(0) if now == self.at_ns and self.extras else 0
        return (now + extra) & U32


def exact_host(
    profile: str | Profile, jumps: Iterable[tuple[int, int]] = ()
) -> tuple[World, Kernel, ScriptedCounter]:
    """A host whose TSC (1,000,000 kHz) and hpet (1 GHz) count true ns exactly, so the
    watchdog's skew is the TSC jump itself.  Not booted yet."""
    w = World(0)
    cpus = [PhysicalCpu(w, i, 1_000_000, boot_offset=10**12) for i in range(2)]
    for at, cycles in jumps:
        for c in cpus:
            c.add_tsc_jump(at, cycles)
    m = PhysicalMachine(w, cpus, acpi_pm=False)
    counter = ScriptedCounter(w)
    m.platform_counters["hpet"] = counter  # type: ignore[assignment]
    k = Kernel(m, profile, name="L0")
    return w, k, counter


def test_exact_host_premise() -> None:
    _w, k, _c = exact_host("upstream")
    k.boot()
    tsc, hpet = k.clocksources["tsc"], k.clocksources["hpet"]
    # 1 GHz both ways: mult is a power of two, so cyc2ns is the identity
    assert (tsc.mult, tsc.shift) == registered_mult_shift(U64, 1000, 1_000_000) == (1 << 23, 23)
    assert (hpet.mult, hpet.shift) == registered_mult_shift(U32, 1, NSEC) == (1 << 31, 31)
    assert tsc.uncertainty_margin == margin(1000, 1_000_000) == 250_000
    assert hpet.uncertainty_margin == margin(1, NSEC) == 250_000
    assert k.clocksources["jiffies"].uncertainty_margin == 32_000_000
    assert k.watchdog.watchdog is hpet


def test_cycles_to_nsec_safe_edges() -> None:
    """6.13+ clocksource_delta (negative motion beyond 7/8 of the mask) and the exact
    mul_u64_u32_shr path above max_cycles, against the 2017 half-range delta."""
    _w, k, _c = exact_host("upstream")
    k.boot()
    tsc, hpet = k.clocksources["tsc"], k.clocksources["hpet"]
    mrd = (U32 >> 1) + (U32 >> 2) + (U32 >> 3)
    assert hpet.max_raw_delta == mrd == 3_758_096_381
    assert cycles_to_nsec_safe(hpet, 5, 5 + mrd) == mrd  # mult 2**31, shift 31: identity
    assert cycles_to_nsec_safe(hpet, 5, 5 + mrd + 1) == 0
    assert clocksource_delta(1 << 31, 0, U32) == 0  # the 2017 rule: over half the mask
    assert clocksource_delta_max(1 << 31, 0, U32, mrd) == 1 << 31
    max_cycles = U64 // ((1 << 23) + (1 << 23) * 11 // 100)
    assert tsc.max_cycles == max_cycles
    big = (1 << 41) + 5  # > max_cycles: (big * 2**23) needs 65 bits
    assert cyc2ns(big, 1 << 23, 23) == tsc.cyc2ns(big) == 5  # the 64-bit product wraps
    assert cycles_to_nsec_safe(tsc, 0, big) == big


JUMP_AT = 1_250_000_000  # between the checks at 1.0 s and 1.5 s; the one at 0.5 s initialises
MD_618 = 250_000 + 250_000  # tsc margin + hpet margin


@pytest.mark.parametrize(
    ("profile", "jump", "unstable"),
    [
        (UPSTREAM, -MD_618, False),
        (UPSTREAM, -MD_618 - 1, True),
        (UPSTREAM, MD_618, False),
        (UPSTREAM, MD_618 + 1, True),
        (PROFILES["gtod"], -MD_618 - 1, False),
        (PROFILES["gtod"], -WATCHDOG_THRESHOLD_2017, False),
        (PROFILES["gtod"], -WATCHDOG_THRESHOLD_2017 - 1, True),
        (PROFILES["series"], WATCHDOG_THRESHOLD_2017 + 1, True),
        (UPSTREAM.with_(clocksource_watchdog="4.13"), -MD_618 - 1, False),
        (PROFILES["gtod"].with_(clocksource_watchdog="6.18"), -MD_618 - 1, True),
    ],
)
def test_skew_verdict_at_the_margin(profile: Profile, jump: int, unstable: bool) -> None:
    w, k, _c = exact_host(profile, [(JUMP_AT, jump)])
    k.boot()
    w.run_until(4 * NSEC)
    skews = [c["skew_ns"] for c in checks(w, "L0")]
    assert skews[0] == 0  # the check at 1.0 s
    assert skews[1] == jump  # the check at 1.5 s sees the whole step
    if unstable:
        assert unstable_times(w, "L0") == [3 * INTERVAL]
        assert k.timekeeper.clock.name == "hpet" and k.tsc_unstable
    else:
        assert unstable_times(w, "L0") == []
        assert k.timekeeper.clock.name == "tsc"
        assert all(s == 0 for s in skews[2:])


def test_618_skew_lines() -> None:
    w, k, _c = exact_host("upstream", [(JUMP_AT, -14_500_000)])
    k.boot()
    w.run_until(2 * NSEC)
    text = printk(w, "L0")
    pad = " " * 23
    i = text.index(
        "clocksource: timekeeping watchdog on CPU0: Marking clocksource 'tsc' as unstable "
        "because the skew is too large:"
    )
    assert text[i + 3] == (
        f"clocksource:{pad}Clocksource 'tsc' skewed -14500000 ns (-14 ms) over watchdog "
        "'hpet' interval of 500000000 ns (500 ms)"
    )
    assert text[i + 4] == f"clocksource:{pad}'tsc' is current clocksource."
    assert text[i + 1].startswith(f"clocksource:{pad}'hpet' wd_nsec: 500000000 wd_now: ")
    assert text[i + 2].startswith(f"clocksource:{pad}'tsc' cs_nsec: 485500000 cs_now: ")
    assert "clocksource: Switched to clocksource hpet" in text


def test_long_interval_is_skipped_by_618_only() -> None:
    """A TSC step of +1.5 s makes the TSC interval 2 s > WATCHDOG_INTERVAL_MAX_NS (1 s at
    HZ=250): 6.18 skips the check once ("Long readout interval"), 4.13 marks the TSC."""
    interval_max = (2 * (250 >> 1)) * (NSEC // 250)
    assert interval_max == NSEC
    step = 1_500_000_000
    w, k, _c = exact_host("upstream", [(JUMP_AT, step)])
    k.boot()
    w.run_until(4 * NSEC)
    assert unstable_times(w, "L0") == []
    assert (
        "clocksource: Long readout interval, skipping watchdog check: "
        f"cs_nsec: {INTERVAL + step} wd_nsec: {INTERVAL}"
    ) in printk(w, "L0")
    assert k.counters["watchdog.long_interval"] == 1
    assert k.timekeeper.clock.name == "tsc"
    w2, k2, _c2 = exact_host(UPSTREAM.with_(clocksource_watchdog="4.13"), [(JUMP_AT, step)])
    k2.boot()
    w2.run_until(4 * NSEC)
    assert unstable_times(w2, "L0") == [3 * INTERVAL]


@pytest.mark.parametrize(
    ("ncpus", "retries"), [(1, 1), (2, 1), (3, 1), (4, 2), (15, 2), (16, 3), (1024, 6)]
)
def test_max_watchdog_retry(ncpus: int, retries: int) -> None:
    # ilog2(num_online_cpus()) / 2 + 1
    assert max_watchdog_retry(ncpus) == retries


def test_max_watchdog_retry_bad_input() -> None:
    with pytest.raises(ValueError, match="num_online_cpus=0 must be >= 1"):
        max_watchdog_retry(0)


# cs_watchdog_read on 2 CPUs: max_retries = 1 (two attempts), md = 2 * hpet margin = 500,000,
# a read passes when wd_delay <= md + tsc margin = 750,000; reads per attempt: wd, (tsc), wd, wd
READ_LIMIT = 2 * 250_000 + 250_000


@pytest.mark.parametrize(
    ("extras", "status", "hpet_reads"),
    [
        ([0, READ_LIMIT, 0], [WD_READ_SUCCESS], 3),  # at the limit: first attempt passes
        ([0, READ_LIMIT + 1, 0], [WD_READ_SUCCESS], 6),  # retried once, then passes
        # two failed attempts (6 reads), then the switch to hpet reads it once more
        ([0, READ_LIMIT + 1, 0, 0, READ_LIMIT + 1, 0], [WD_READ_UNSTABLE], 7),
        ([0, READ_LIMIT + 1, READ_LIMIT + 1 + 500_000], [WD_READ_SUCCESS], 6),  # seq = md
        ([0, READ_LIMIT + 1, READ_LIMIT + 1 + 500_001], [WD_READ_SKIP], 3),  # seq > md
    ],
)
def test_read_back_retries(extras: list[int], status: list[int], hpet_reads: int) -> None:
    w, k, counter = exact_host("upstream")
    k.boot()
    counter.at_ns, counter.extras = NSEC, list(extras)
    w.run_until(3 * NSEC)
    assert counter.reads_at[NSEC] == hpet_reads
    assert k.watchdog.read_status[1:2] == status  # [0] is the check at 0.5 s
    text = printk(w, "L0")
    if status == [WD_READ_UNSTABLE]:
        assert (
            "clocksource: timekeeping watchdog on CPU1: wd-tsc-wd excessive read-back delay of "
            f"{READ_LIMIT + 1}ns vs. limit of 125000ns, wd-wd read-back delay only 0ns, "
            "attempt 2, marking tsc unstable"
        ) in text
        assert unstable_times(w, "L0") == [NSEC]
        assert k.timekeeper.clock.name == "hpet"
    elif status == [WD_READ_SKIP]:
        assert (
            "clocksource: timekeeping watchdog on CPU1: hpet wd-wd read-back delay of 500001ns"
        ) in text
        assert (
            f"clocksource: wd-tsc-wd read-back delay of {READ_LIMIT + 1}ns, clock-skew test "
            "skipped!"
        ) in text
        assert k.counters["watchdog.skipped"] == 1
        # the watchdog pauses for HZ * 300 jiffies: no check until 1.0 + 0.5 + 300 s
        assert len(k.watchdog.read_status) == 2
        w.run_until(NSEC + INTERVAL + 300 * NSEC)
        assert len(k.watchdog.read_status) == 3
        assert unstable_times(w, "L0") == []
    else:
        assert unstable_times(w, "L0") == []
        assert k.timekeeper.clock.name == "tsc"


def test_2017_rule_reads_once_and_ignores_read_back() -> None:
    w, k, counter = exact_host("gtod")
    k.boot()
    counter.at_ns, counter.extras = NSEC, [0, READ_LIMIT + 1, 0, 0, READ_LIMIT + 1, 0]
    w.run_until(3 * NSEC)
    assert counter.reads_at[NSEC] == 1
    assert k.watchdog.read_status == []
    assert unstable_times(w, "L0") == []


# -- 2. the real case: a guest sees tsc skewed -14.5 ms against kvm-clock ---------------------
KHZ = 2_995_200
STEP = -(14_500_000 * KHZ // 1_000_000)  # -43,430,400 cycles = -14.5 ms at 2,995,200 kHz


@pytest.mark.parametrize(
    ("profile", "marked"),
    [
        (PROFILES["gtod"], False),
        (PROFILES["series"], False),
        (UPSTREAM, True),
        (UPSTREAM.with_(clocksource_watchdog="4.13"), False),
    ],
)
def test_guest_tsc_skewed_14_5_ms_against_kvm_clock(profile: Profile, marked: bool) -> None:
    assert STEP == -43_430_400
    w, _h, vm, g = stack(profile)
    w.run_until(3_200_000_000)
    step_guest_tsc(vm, STEP)
    w.run_until(5 * NSEC)
    [check] = [c for c in checks(w, "L1") if c["skew_ns"] != 0 and abs(c["skew_ns"]) > 1000]
    assert check["t_ns"] == 7 * INTERVAL and (check["cs"], check["wd"]) == ("tsc", "kvm-clock")
    # tsc: 0.5 s of cycles minus the step, converted with the kernel's mult/shift
    mult, shift = registered_mult_shift(U64, 1000, KHZ)
    cs_nsec = cyc2ns(KHZ * 1000 // 2 + STEP, mult, shift)
    assert check["cs_nsec"] == cs_nsec == 485_500_041
    # kvm-clock (1 GHz, the pvclock record) measures the 0.5 s of true time to the ns here
    assert check["wd_nsec"] == INTERVAL
    skew = cs_nsec - INTERVAL
    assert check["skew_ns"] == skew == -14_499_959
    # the verdicts: 14.5 ms is under 2017's 62.5 ms and under 6.x's 31.25 ms threshold, but
    # far over the 6.18 margin sum: tsc (NSEC_PER_SEC / (u32)(1000 * 2,995,200) = 0 -> 250 us)
    # + kvm-clock (NSEC_PER_SEC / 10**9 = 1 -> 250 us) = 500 us per 0.5 s
    md = margin(1000, KHZ) + margin(1, NSEC)
    assert md == 500_000
    assert abs(skew) <= WATCHDOG_THRESHOLD_2017 and abs(skew) <= WATCHDOG_THRESHOLD_6X
    assert abs(skew) > md
    tsc, kc = g.clocksources["tsc"], g.clocksources["kvm-clock"]
    if marked:
        assert tsc.uncertainty_margin + kc.uncertainty_margin == check["margin_ns"] == md
        assert unstable_times(w, "L1") == [7 * INTERVAL]
        assert tsc.flags & CLOCK_SOURCE_UNSTABLE and tsc.rating == 0
        assert g.timekeeper.clock.name == "kvm-clock"
        text = printk(w, "L1")
        assert "clocksource: Switched to clocksource kvm-clock" in text
        assert any(
            "Clocksource 'tsc' skewed -14499959 ns (-14 ms) over watchdog 'kvm-clock' interval "
            "of 500000000 ns (500 ms)" in t
            for t in text
        )
    else:
        assert unstable_times(w, "L1") == []
        assert not tsc.flags & CLOCK_SOURCE_UNSTABLE and tsc.rating == 300
        assert not g.tsc_unstable
        assert tsc.uncertainty_margin == kc.uncertainty_margin == 0  # the 4.13 rule has none


# -- 3. emulated HPET and ACPI PM timer -------------------------------------------------------
def test_vm_without_emulated_timers_by_default() -> None:
    _w, _h, vm, g = stack("upstream")
    assert dict(vm.machine.platform_counters) == {}
    assert set(g.clocksources) == {"kvm-clock", "jiffies", "tsc"}


def test_emulated_timers_count_from_the_host_clock() -> None:
    w = World(0)
    m = PhysicalMachine(w, 2, tsc_khz=KHZ)
    host = Kernel(m, "upstream", name="L0")
    host.boot()
    mod = host.load_kvm()
    w.run_until(NSEC + 123_456_789)
    created = host.timekeeper.ktime_get_ns()
    vm = mod.create_vm(name="L1", features=INVARIANT | {"hpet", "acpi_pm"})
    for _ in range(2):
        vm.create_vcpu()
    for i in range(2):
        vm.machine.run_on_cpu(i, lambda: None)
    g = Kernel(vm.machine, "upstream", name="L1")
    g.boot()
    hpet, pm = g.clocksources["hpet"], g.clocksources["acpi_pm"]
    # QEMU: HPET period 10 ns (100 MHz, Linux reads 32 bits); PM timer 3,579,545 Hz, 24 bits
    assert (hpet.rating, hpet.freq_hz, hpet.mask) == (250, 100_000_000, U32)
    assert (pm.rating, pm.freq_hz, pm.mask) == (200, 3_579_545, (1 << 24) - 1)
    assert (hpet.mult, hpet.shift) == registered_mult_shift(U32, 1, 100_000_000)
    assert (pm.mult, pm.shift) == registered_mult_shift((1 << 24) - 1, 1, 3_579_545)
    assert hpet.uncertainty_margin == margin(1, 100_000_000) == 250_000
    assert pm.uncertainty_margin == margin(1, 3_579_545) == 250_000
    w.run_until(7 * NSEC + 1)
    for cpu in (0, 1):
        hv = g.run_on_cpu(cpu, hpet.read)[0]
        pv = g.run_on_cpu(cpu, pm.read)[0]
        vclock = host.timekeeper.ktime_get_ns() - created  # QEMU_CLOCK_VIRTUAL
        assert hv == (vclock // 10) & U32
        assert pv == (vclock * 3_579_545 // NSEC) & ((1 << 24) - 1)
    # kvm-clock (299 here) still outranks hpet (250): it stays the watchdog
    assert g.watchdog.watchdog is g.clocksources["kvm-clock"]


@pytest.mark.parametrize(
    ("features", "watchdog"),
    [
        ({"constant_tsc", "nonstop_tsc", "hpet", "acpi_pm"}, "hpet"),
        ({"constant_tsc", "nonstop_tsc", "acpi_pm"}, "acpi_pm"),
        ({"constant_tsc", "nonstop_tsc"}, "jiffies"),
        (INVARIANT | {"hpet", "acpi_pm"}, "kvm-clock"),
    ],
)
def test_emulated_timer_serves_as_watchdog(features: set[str], watchdog: str) -> None:
    """The watchdog is the best-rated clocksource without MUST_VERIFY."""
    _w, _h, _vm, g = stack("upstream", features)
    assert g.watchdog.watchdog is not None and g.watchdog.watchdog.name == watchdog
    assert g.timekeeper.clock.name == "tsc"


@pytest.mark.parametrize(("profile", "marked"), [(UPSTREAM, True), (PROFILES["gtod"], False)])
def test_guest_without_kvmclock_tsc_skew_against_emulated_hpet(
    profile: Profile, marked: bool
) -> None:
    w, _h, vm, g = stack(profile, {"constant_tsc", "nonstop_tsc", "hpet", "acpi_pm"})
    w.run_until(3_200_000_000)
    step_guest_tsc(vm, STEP)
    w.run_until(5 * NSEC)
    [check] = [c for c in checks(w, "L1") if abs(c["skew_ns"]) > 1000]
    assert (check["cs"], check["wd"]) == ("tsc", "hpet")
    assert abs(check["skew_ns"] + 14_500_000) < 1000
    if marked:
        assert unstable_times(w, "L1") == [7 * INTERVAL]
        assert g.timekeeper.clock.name == "hpet"
    else:
        assert unstable_times(w, "L1") == []
        assert g.timekeeper.clock.name == "tsc"


def test_emulated_counter_bad_name() -> None:
    _w, _h, vm, _g = stack("upstream")
    with pytest.raises(ValueError, match="valid: hpet, acpi_pm"):
        EmulatedCounter(vm.machine, "pit")


# -- the TSC watchdog exemption on qualified machines -------------------------------------------
QUALIFIED = INVARIANT | {"tsc_adjust"}


@pytest.mark.parametrize(
    ("profile", "features", "packages", "watched"),
    [
        (UPSTREAM, QUALIFIED, None, False),
        (UPSTREAM, QUALIFIED, 4, False),
        (UPSTREAM, QUALIFIED, 5, True),
        (UPSTREAM, QUALIFIED - {"nonstop_tsc"}, None, True),
        (UPSTREAM, INVARIANT, None, True),
        (UPSTREAM.with_(tsc_watchdog_exemption=False), QUALIFIED, None, True),
        (PROFILES["gtod"], QUALIFIED, None, True),
        (PROFILES["series"].with_(tsc_watchdog_exemption=True), QUALIFIED, None, False),
    ],
)
def test_tsc_watchdog_exemption(
    profile: Profile, features: set[str], packages: int | None, watched: bool
) -> None:
    """A qualified machine's tsc is never checked: the -14.5 ms step goes unnoticed."""
    w = World(0)
    m = PhysicalMachine(w, 2, tsc_khz=KHZ)
    host = Kernel(m, profile, name="L0")
    host.boot()
    mod = host.load_kvm()
    w.run_until(NSEC)
    vm = mod.create_vm(name="L1", features=set(features))
    for _ in range(2):
        vm.create_vcpu()
    for i in range(2):
        vm.machine.run_on_cpu(i, lambda: None)
    if packages is not None:
        setattr(vm.machine, "packages", packages)  # noqa: B010 - the VM has no such attribute
    g = Kernel(vm.machine, profile, name="L1")
    g.boot()
    tsc = g.clocksources["tsc"]
    assert bool(tsc.flags & CLOCK_SOURCE_MUST_VERIFY) == watched
    assert (tsc in g.watchdog.watchdog_list) == watched
    assert g.watchdog.running == watched  # nothing to watch: the timer never starts
    w.run_until(3_200_000_000)
    step_guest_tsc(vm, STEP)
    w.run_until(5 * NSEC)
    # watched: 4.13 keeps tsc (14.5 ms < 62.5 ms), 6.18 marks it; exempt: nobody looks
    expect_marked = watched and profile.clocksource_watchdog == "6.18"
    assert (unstable_times(w, "L1") == [7 * INTERVAL]) == expect_marked
    assert bool(checks(w, "L1")) == watched

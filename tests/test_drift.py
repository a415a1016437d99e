"""The drift calculator (kvmclock.drift, ``kvmclock drift``): published numbers, an
independent tick-by-tick reference (tests/reference/drift_ref.py), KVM's TSC frequency rules
at their boundaries, the profile switches it reads, and the model run to the same instant."""

from __future__ import annotations

import json
from fractions import Fraction

import kvmclock
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvmclock import drift
from kvmclock.cli import main
from kvmclock.kernel import Kernel
from kvmclock.kvm import KVM_REQ_MASTERCLOCK_UPDATE, MSR_KVM_SYSTEM_TIME_NEW, Kvm
from kvmclock.machine import PhysicalMachine, World
from kvmclock.profiles import PROFILES
from reference import drift_ref as ref
from reference import kernel_math as km

MS = 1_000_000
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# the tsc clocksource's mult/shift
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("khz", "mult", "shift"),
    [(1_995_311, 4_204_161, 23), (2_999_999, 5_592_407, 24), (2_593_992, 6_467_721, 24)],
)
def test_tsc_clocksource_mult_shift_published(khz: int, mult: int, shift: int) -> None:
    assert drift.tsc_clocksource_mult_shift(khz) == (mult, shift)
    assert ref.tsc_clocksource(khz) == (mult, shift)


@settings(max_examples=300)
@given(st.integers(1, U32))
def test_tsc_clocksource_mult_shift_equals_reference(khz: int) -> None:
    assert drift.tsc_clocksource_mult_shift(khz) == ref.tsc_clocksource(khz)


def test_tsc_clocksource_slow_clocks() -> None:
    """Slow TSCs get big mults: the result keeps mult + 11% inside a u32, as the kernel's
    halving loop guarantees, and equals the reference."""
    for khz in (1, 2, 3, 999, 1000, 1001):
        mult, shift = drift.tsc_clocksource_mult_shift(khz)
        assert mult + mult * 11 // 100 <= U32
        assert (mult, shift) == ref.tsc_clocksource(khz)


# ---------------------------------------------------------------------------------------------
# published numbers
# ---------------------------------------------------------------------------------------------
def test_dongli_zhang_no_scaling_5s() -> None:
    d = drift.predict(1_995_311, seconds=5)
    assert d.jump_ns in (411, 412)
    assert (d.guest_mul, d.guest_shift) == (2_152_530_255, 0)
    assert d.a_ppb - d.b_ppb == pytest.approx(82.23, abs=0.01)
    assert d.b_ppb == d.c_ppb  # no scaling: the guest record is the host-kHz record
    doc = d.to_json()
    assert doc["a_minus_b_ms_per_day"] == pytest.approx(7.105, abs=1e-3)


def test_dongli_zhang_exact_pvti_numbers() -> None:
    """His old pvti {tsc_timestamp 3,277,968, system_time 11,849,519} read at the new
    tsc_timestamp 9,980,576,184 gives 5,012,221,999; the new system_time is 5,012,222,411."""
    old_tsc, old_sys, new_tsc = 3_277_968, 11_849_519, 9_980_576_184
    n = new_tsc - old_tsc
    d = drift.predict(1_995_311, cycles=n, anchor_tsc=old_tsc)
    assert old_sys + d.b_ns == 5_012_221_999
    assert km.pvclock_read_cycles(old_tsc, old_sys, d.guest_mul, d.guest_shift, new_tsc) == (
        5_012_221_999
    )
    assert old_sys + d.a_ns == 5_012_222_411  # with the base clock's fraction 0 at the anchor
    assert d.jump_ns == 412
    # any other fraction at the anchor moves A by at most 1 ns
    _, shift = drift.tsc_clocksource_mult_shift(1_995_311)
    for frac in (1, 1 << (shift - 1), (1 << shift) - 1):
        assert drift.jump_ns(1_995_311, cycles=n, base_frac=frac) in (412, 413)


def test_jack_allister_vmx_scaling_5s() -> None:
    d = drift.predict(2_999_999, 1_499_999, "vmx", 5)
    assert d.tsc.mode == "scaled"
    assert d.tsc.ratio == (1_499_999 << 48) // 2_999_999
    assert d.tsc.record_khz == 1_499_998  # kvm_scale_tsc truncates to whole kHz
    assert (d.guest_mul, d.guest_shift) == (2_863_315_348, 0)
    assert (d.base_mult, d.base_shift) == (5_592_407, 24)
    assert abs(d.jump_ns - (-3_509)) <= 1
    assert float(d.b_ppb) == pytest.approx(666.52, abs=0.01)
    assert float(d.a_ppb) == pytest.approx(-35.31, abs=0.01)
    assert float(d.a_ppb - d.b_ppb) == pytest.approx(-701.83, abs=0.01)
    assert float(d.b_ppb - d.c_ppb) == pytest.approx(666.56, abs=0.01)


def test_jump_follows_a_minus_b_rate() -> None:
    """jump_ns is the integer form of (A - B) * T: within 2 ns of the float product."""
    for khz, g, v, t in [
        (1_995_311, None, "vmx", 5),
        (2_999_999, 1_499_999, "vmx", 5),
        (2_593_992, None, "vmx", 2_592_000),  # 30 days
        (3_000_000, 1_000_000, "svm", 3600),
    ]:
        d = drift.predict(khz, g, v, t)
        assert abs(d.jump_ns - float((d.a_ppb - d.b_ppb) * t)) <= 2


# ---------------------------------------------------------------------------------------------
# the closed form against the tick-by-tick reference
# ---------------------------------------------------------------------------------------------
@settings(max_examples=150)
@given(
    khz=st.integers(100_000, 5_000_000),
    guest=st.one_of(st.none(), st.integers(100_000, 6_000_000)),
    vendor=st.sampled_from(["vmx", "svm", "none"]),
    cycles=st.integers(1, 3_000_000_000),
    frac=st.integers(0, (1 << 22) - 1),
    anchor=st.integers(0, (1 << 50)),
)
def test_predict_equals_ticked_reference(
    khz: int, guest: int | None, vendor: str, cycles: int, frac: int, anchor: int
) -> None:
    try:
        want = ref.reanchor(khz, guest, vendor, cycles, frac0=frac, anchor_tsc=anchor)
    except ValueError:
        with pytest.raises(drift.DriftInputError):
            drift.predict(khz, guest, vendor, cycles=cycles, base_frac=frac, anchor_tsc=anchor)
        return
    d = drift.predict(khz, guest, vendor, cycles=cycles, base_frac=frac, anchor_tsc=anchor)
    assert (d.base_mult, d.base_shift) == (want["raw_mult"], want["raw_shift"])
    assert (d.guest_mul, d.guest_shift) == (want["old_mul"], want["old_shift"])
    assert want["old_system_time"] + d.b_ns == want["b_before"]
    assert want["old_system_time"] + d.a_ns == want["a_after"]
    assert want["old_system_time"] + d.c_ns == want["c_now"]
    assert d.jump_ns == want["jump"]


# ---------------------------------------------------------------------------------------------
# KVM's TSC frequency rules (x86.c KVM_SET_TSC_KHZ, kvm_set_tsc_khz, set_tsc_khz)
# ---------------------------------------------------------------------------------------------
def test_tolerance_boundaries_per_vendor() -> None:
    host = 2_593_992
    lo = km.adjust_tsc_khz(host, -250)
    hi = km.adjust_tsc_khz(host, 250)
    for v in ("vmx", "svm", "none"):
        assert drift.guest_tsc(host, lo, v).mode == "native"
        assert drift.guest_tsc(host, hi, v).mode == "native"
    assert drift.guest_tsc(host, lo - 1, "vmx").mode == "scaled"
    assert drift.guest_tsc(host, hi + 1, "svm").mode == "scaled"
    assert drift.guest_tsc(host, hi + 1, "none").mode == "catchup"
    with pytest.raises(drift.KvmRefused, match="below hardware speed"):
        drift.guest_tsc(host, lo - 1, "none")
    # kubevirt: 2,594,000 on 2,593,992 is inside the tolerance: no scaling, host-kHz record
    d = drift.predict(host, 2_594_000, "vmx")
    assert d.tsc.mode == "native" and d.tsc.record_khz == host
    assert (d.guest_mul, d.guest_shift) == (0xC5611196, -1)


def test_catchup_runs_at_host_rate() -> None:
    """No scaling hardware, faster guest: the guest TSC counts at the host rate and the record
    keeps the host kHz, so B = C and the step is the unscaled one."""
    d = drift.predict(2_593_992, 3_000_000, "none")
    same = drift.predict(2_593_992)
    assert d.tsc.mode == "catchup"
    assert (d.b_ns, d.c_ns, d.jump_ns) == (same.b_ns, same.c_ns, same.jump_ns)
    assert d.b_ppb == d.c_ppb


@pytest.mark.parametrize(
    ("vendor", "frac", "max_ratio"), [("vmx", 48, U64), ("svm", 32, (1 << 40) - 1)]
)
def test_max_guest_tsc_khz_boundary(vendor: str, frac: int, max_ratio: int) -> None:
    host = 3_000_000
    max_khz = min(0x7FFFFFFF, (max_ratio * host) >> frac)
    assert drift.guest_tsc(host, max_khz - 1, vendor).mode == "scaled"
    with pytest.raises(drift.DriftInputError, match="max_guest_tsc_khz"):
        drift.guest_tsc(host, max_khz, vendor)


def test_tiny_ratio_clamp_switch() -> None:
    """A 1 kHz guest on a 3 GHz VMX host scales the record frequency to 0 kHz: 6.16+ takes
    1 kHz (tiny_ratio_clamp on). Before it (4.13 kvm_guest_time_update) the record is only
    recomputed when ``vcpu->hw_tsc_khz != tgt_tsc_khz``; a fresh vCPU has hw_tsc_khz 0 = tgt,
    so kvm_get_time_scale is not called and the record keeps tsc_to_system_mul 0 (the
    zero-allocated vCPU's), a guest clock that does not advance."""
    ratio = (1 << 48) // 3_000_000
    assert (3_000_000 * ratio) >> 48 == 0
    up = drift.guest_tsc(3_000_000, 1, "vmx", "upstream")
    assert up.record_khz == 1 and up.ratio == ratio
    assert drift.predict(3_000_000, 1, "vmx", 1).guest_shift == km.get_time_scale(10**9, 1000)[0]
    for prof in ("gtod", PROFILES["upstream"].with_(tiny_ratio_clamp=False)):
        g = drift.guest_tsc(3_000_000, 1, "vmx", prof)
        assert (g.mode, g.ratio, g.record_khz, g.record_mul, g.record_shift) == (
            "scaled", ratio, 0, 0, 0)
        d = drift.predict(3_000_000, 1, "vmx", 5, prof)
        # B stands still: 0 ns over 5 s, rate -10**9 ppb; the step is all of A
        assert (d.guest_mul, d.guest_shift, d.b_ns) == (0, 0, 0)
        assert d.b_ppb == -(10**9) and d.jump_ns == d.a_ns
        assert d.record_note is not None and "loop forever once" in d.record_note
    clamped_gtod = PROFILES["gtod"].with_(tiny_ratio_clamp=True)
    assert drift.guest_tsc(3_000_000, 1, "vmx", clamped_gtod).record_khz == 1
    # one kHz more and the scaled frequency is 1 kHz without any clamp
    assert drift.guest_tsc(3_000_000, 2, "vmx", "gtod").record_khz == 1


def test_kvmclock_base_switch_names_the_time_base() -> None:
    assert drift.predict(1_995_311, profile="upstream").time_base == "raw"
    assert drift.predict(1_995_311, profile="gtod").time_base == "boot"
    assert drift.predict(1_995_311, profile="series").time_base == "boot"
    flipped = PROFILES["upstream"].with_(kvmclock_base="boot")
    assert drift.predict(1_995_311, profile=flipped).time_base == "boot"
    # NTP-free, both bases run at the clocksource's mult: the numbers do not change
    assert drift.predict(1_995_311, profile=flipped).jump_ns == drift.jump_ns(1_995_311)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tsc_khz": 0}, "tsc_khz=0 out of range"),
        ({"tsc_khz": 1 << 32}, "tsc_khz=4294967296 out of range"),
        ({"tsc_khz": 3_000_000, "guest_khz": -1}, "guest_khz=-1 out of range"),
        ({"tsc_khz": 3_000_000, "vendor": "arm"}, "vendor='arm' invalid"),
        ({"tsc_khz": 3_000_000, "seconds": 0}, "seconds=0 must be > 0"),
        ({"tsc_khz": 3_000_000, "seconds": "x"}, "seconds must be a number"),
        ({"tsc_khz": 3_000_000, "profile": "nope"}, "profile='nope' invalid"),
        ({"tsc_khz": 3_000_000, "cycles": 1 << 63}, "must be 1..2\\*\\*63-1"),
        ({"tsc_khz": 3_000_000, "anchor_tsc": -1}, "anchor_tsc=-1 out of range"),
        ({"tsc_khz": 3_000_000, "base_frac": 1 << 24}, "base_frac=16777216 out of range"),
        ({"tsc_khz": 1_000, "guest_khz": 1, "seconds": 10**12}, "overflow 64 bits"),
    ],
)
def test_bad_input(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(drift.DriftInputError, match=match):
        drift.predict(**kwargs)  # type: ignore[arg-type]


def test_seconds_are_exact() -> None:
    d = drift.predict(3_000_000, seconds="0.000000001")
    assert d.cycles == 3 and d.seconds == Fraction(1, 10**9)
    assert drift.predict(3_000_000, seconds=2.5).cycles == 7_500_000_000


# ---------------------------------------------------------------------------------------------
# kvmclock drift (CLI)
# ---------------------------------------------------------------------------------------------
def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["drift", "--tsc-khz", "2999999", "--guest-khz", "1499999", "--vendor", "vmx",
               "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("a_ppb", "b_ppb", "c_ppb", "a_minus_b_ppb", "b_minus_c_ppb"):
        assert isinstance(doc[key], float)
    assert isinstance(doc["jump_ns"], int) and abs(doc["jump_ns"] + 3509) <= 1
    assert doc["a_minus_b_ppb"] == pytest.approx(doc["a_ppb"] - doc["b_ppb"])
    assert doc["profile"] == "upstream" and doc["time_base"] == "raw"


def test_cli_text_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drift", "--tsc-khz", "1995311"]) == 0
    out = capsys.readouterr().out
    assert "jump_ns +411" in out and "steps forward" in out
    assert main(["drift", "--tsc-khz", "1995311", "--profile", "gtod", "--seconds", "10",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["time_base"] == "boot" and doc["interval_cycles"] == 19_953_110_000


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--tsc-khz", "0"], "--tsc-khz must be in 1..4294967295, got 0"),
        (["--tsc-khz", "3000000", "--guest-khz", "-1"], "--guest-khz must be in 0..4294967295"),
        (["--tsc-khz", "3000000", "--seconds", "-1"], "--seconds=-1 must be > 0"),
        (["--tsc-khz", "3000000", "--profile", "bogus"], "profile='bogus' invalid"),
        (["--tsc-khz", "3000000", "--set", "tiny_ratio_clamp=maybe"], "tiny_ratio_clamp"),
        (["--tsc-khz", "3000000", "--bogus"], "see 'kvmclock drift --help'"),
        (["--tsc-khz", "3000000", "--vendor", "arm"], "invalid choice"),
    ],
)
def test_cli_bad_input_one_line_exit_2(
    argv: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["drift", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvmclock drift")
    assert match in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--tsc-khz", "2999999", "--guest-khz", "1499999", "--vendor", "none"],
         "user requested TSC rate below hardware speed"),
        (["--tsc-khz", "3000000", "--guest-khz", "1000", "--scaling", "none"],
         "user requested TSC rate below hardware speed"),
        (["--tsc-khz", "3000000", "--guest-khz", "800000000", "--vendor", "svm"],
         "max_guest_tsc_khz"),
    ],
)
def test_cli_kvm_refusal_is_a_result(argv: list[str], match: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A frequency KVM refuses (-EINVAL) is reported like kvmclock scale does: exit 0."""
    assert main(["drift", *argv]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "refused (-EINVAL): " in out and match in out
    assert main(["drift", *argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tsc_mode"] == "refused" and match in doc["refusal"]
    assert doc["jump_ns"] is None and doc["b"] is None


def test_cli_refusal_text_is_scales() -> None:
    """drift and scale say the same refusal through the same model code."""
    from kvmclock.cli.scale import scale_report

    rep = scale_report(3_000_000, 1000, None, "none")
    (entry,) = rep["tsc_scaling"]
    with pytest.raises(drift.KvmRefused) as exc:
        drift.guest_tsc(3_000_000, 1000, "none")
    assert exc.value.refusal == entry["refusal"]


def test_cli_one_khz_gtod_agrees_with_scale(capsys: pytest.CaptureFixture[str]) -> None:
    """--tsc-khz 3000000 --guest-khz 1 --profile gtod: both commands exit 0 and say the
    record keeps tsc_to_system_mul 0 (4.13 does not call kvm_get_time_scale on a fresh vCPU)."""
    from kvmclock.cli.scale import scale_report

    for vendor in ("vmx", "svm"):
        assert main(["drift", "--tsc-khz", "3000000", "--guest-khz", "1", "--profile", "gtod",
                     "--scaling", vendor, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        (entry,) = scale_report(3_000_000, 1, None, vendor, "gtod")["tsc_scaling"]
        rec = entry["guest_record"]
        assert (doc["b"]["tsc_to_system_mul"], doc["b"]["tsc_shift"], doc["record_tsc_khz"]) == (
            rec["tsc_to_system_mul"], rec["tsc_shift"], rec["record_tsc_khz"]) == (0, 0, 0)
        assert doc["tsc_scaling_ratio"] == entry["ratio"]
        assert doc["b_ns"] == 0 and "tsc_to_system_mul is 0" in doc["record_note"]
    assert main(["drift", "--tsc-khz", "3000000", "--guest-khz", "1", "--profile", "gtod"]) == 0
    assert "note: the guest record's tsc_to_system_mul is 0" in capsys.readouterr().out


def test_cli_guest_khz_zero_is_the_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    """KVM_SET_TSC_KHZ 0: kvm_arch_vcpu_ioctl takes the host's tsc_khz."""
    assert main(["drift", "--tsc-khz", "3000000", "--guest-khz", "0", "--json"]) == 0
    zero = json.loads(capsys.readouterr().out)
    assert main(["drift", "--tsc-khz", "3000000", "--json"]) == 0
    none = json.loads(capsys.readouterr().out)
    assert zero == none and zero["guest_khz"] == 3_000_000 and zero["tsc_mode"] == "native"


# ---------------------------------------------------------------------------------------------
# the model run to the same instant
# ---------------------------------------------------------------------------------------------
def _host(profile: str, khz: int, scaling: str) -> Kernel:
    world = World(3)
    m = PhysicalMachine(world, 2, tsc_khz=khz, tsc_scaling=scaling)
    k = Kernel(m, profile, name="L0")
    k.boot()
    world.run_until(MS + 777_777)  # off the tick grid: non-zero phases at the anchor
    k.load_kvm()
    return k


def _record(vm: Kvm) -> kvmclock.PvclockVcpuTimeInfo:
    return kvmclock.PvclockVcpuTimeInfo.from_bytes(bytes(vm.machine.memory[0:32]))


MODEL_CASES = [
    ("gtod", 1_995_311, None, "vmx"),
    ("series", 1_995_311, None, "vmx"),
    ("upstream", 1_995_311, None, "vmx"),
    ("gtod", 2_999_999, 1_499_999, "vmx"),
    ("upstream", 2_999_999, 1_499_999, "vmx"),
    ("upstream", 2_999_999, 1_499_999, "svm"),
    ("upstream", 2_593_992, 2_594_000, "none"),
    ("upstream", 2_593_992, 3_000_000, "none"),
]


@pytest.mark.parametrize(("profile", "khz", "guest", "vendor"), MODEL_CASES)
def test_model_reanchor_step_equals_prediction(
    profile: str, khz: int, guest: int | None, vendor: str
) -> None:
    """Host + VM in the model, masterclock on, 5 s later a KVM_REQ_MASTERCLOCK_UPDATE: the
    guest clock's step equals drift.jump_ns given the anchor's two phases, and is within 1 ns
    of the phase-free prediction; Kvm.clock_definitions just before the update is exactly
    (old system_time + a_ns, + b_ns, + c_ns)."""
    host = _host(profile, khz, vendor)
    assert host.kvm is not None
    vm = host.kvm.create_vm(tsc_khz=guest)
    vm.create_vcpu()
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)
    vm.machine.run_on_cpu(0, lambda: None)
    assert vm.use_master_clock
    # the anchor: master pair and the base clock's shifted-ns fraction at master_cycle_now
    h0, old = vm.master_cycle_now, _record(vm)
    tk = host.timekeeper
    tkr = tk.tkr_raw if host.cfg.kvmclock_base == "raw" else tk.tkr_mono
    frac = (tkr.xtime_nsec + ((h0 - tkr.cycle_last) & tkr.mask) * tkr.mult) % (1 << tkr.shift)
    t0 = host.world.now_ns
    host.world.run_until(t0 + 5_000_000_000)
    n = host.machine.cpus[vm.vcpus[0].affinity].read_tsc() - h0
    assert n == 5 * khz * 1000  # the model's TSC is exact
    want = drift.predict(khz, guest, vendor, 5, profile, base_frac=frac, anchor_tsc=h0)
    defs = vm.clock_definitions(0)
    assert defs == (
        old.system_time + want.a_ns,
        old.system_time + want.b_ns,
        old.system_time + want.c_ns,
    )
    before = old.read_cycles(vm.machine.cpus[0].read_tsc())
    vm.vcpus[0].kvm_make_request(KVM_REQ_MASTERCLOCK_UPDATE)
    vm.machine.run_on_cpu(0, lambda: None)
    assert vm.master_cycle_now == h0 + n
    new = _record(vm)
    after = new.read_cycles(vm.machine.cpus[0].read_tsc())
    assert after == new.system_time  # read at the new anchor's own guest TSC
    assert after - before == want.jump_ns
    assert abs(want.jump_ns - drift.jump_ns(khz, guest, vendor, 5, profile)) <= 1

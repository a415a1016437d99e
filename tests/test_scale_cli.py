"""``kvmclock scale`` with --guest-khz / --ratio: the rule KVM applies, computed through the
model's own KVM_SET_TSC_KHZ path (kvmclock.kvm.x86), and warnings on suspicious input.

Expected values come from tests/reference (adjust_tsc_khz, tsc_scaling_ratio, scale_tsc,
mul_u64_u64_shr: the kernel arithmetic written out) and from a VM created in the simulator
with the same numbers."""

from __future__ import annotations

import json
from typing import Any

import kvmclock
import pytest
from kvmclock import cli
from kvmclock.kernel import Kernel
from kvmclock.kvm import MSR_KVM_SYSTEM_TIME_NEW
from kvmclock.machine import PhysicalMachine, World
from reference import kernel_math as ref

FRAC = {"vmx": 48, "svm": 32}
MAX_RATIO = {"vmx": (1 << 64) - 1, "svm": (1 << 40) - 1}  # vmx.c / svm.h maxima
TOLERANCE_PPM = 250


def scale_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str]:
    code = cli.main(["scale", *argv, "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out), err


def by_kind(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["scaling"]: e for e in doc["tsc_scaling"]}


# ------------------------------------------------------------------ the two cases that misled


@pytest.mark.parametrize(("host", "guest"), [(3_000_000, 3_000_500), (2_593_992, 2_594_000)])
def test_within_tolerance_means_no_scaling(host: int, guest: int,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    lo, hi = ref.adjust_tsc_khz(host, -TOLERANCE_PPM), ref.adjust_tsc_khz(host, TOLERANCE_PPM)
    assert lo <= guest <= hi
    doc, err = scale_json(capsys, "--tsc-khz", str(host), "--guest-khz", str(guest))
    assert err == ""
    kinds = by_kind(doc)
    assert set(kinds) == {"vmx", "svm", "none"}
    for kind, e in kinds.items():
        assert e["rule"] == "no_scaling", e
        assert (e["tolerance_low_khz"], e["tolerance_high_khz"]) == (lo, hi)
        assert e["ratio"] == (1 << FRAC[kind] if kind in FRAC else None)
        assert e["hardware_tsc_khz"] == e["guest_tsc_khz"] == host
        assert e["virtual_tsc_khz"] == guest  # what KVM_GET_TSC_KHZ says
        shift, mul = ref.get_time_scale(10**9, host * 1000)
        assert e["guest_record"]["tsc_to_system_mul"] == mul
        assert e["guest_record"]["tsc_shift"] == shift
    code = cli.main(["scale", "--tsc-khz", str(host), "--guest-khz", str(guest)])
    text = capsys.readouterr().out
    assert code == 0
    assert text.count("no scaling: ") == 3 and "scaled with" not in text
    assert f"within tsc_tolerance_ppm 250 of the host's {host} kHz ({lo}..{hi} kHz" in text


# ------------------------------------------------------------------ the tolerance boundary


def expected_rule(host: int, guest: int, kind: str) -> dict[str, Any]:
    """The kernel's kvm_set_tsc_khz/set_tsc_khz decision, from tests/reference."""
    lo, hi = ref.adjust_tsc_khz(host, -TOLERANCE_PPM), ref.adjust_tsc_khz(host, TOLERANCE_PPM)
    if lo <= guest <= hi:
        return {"rule": "no_scaling", "hardware_tsc_khz": host}
    if kind == "none":
        if guest > host:
            return {"rule": "catchup", "hardware_tsc_khz": host, "guest_tsc_khz": guest}
        return {"rule": "refused"}
    ratio = ref.tsc_scaling_ratio(guest, host, FRAC[kind])
    assert 0 < ratio < MAX_RATIO[kind]
    return {"rule": "scaled", "ratio": ratio,
            "hardware_tsc_khz": ref.scale_tsc(host, ratio, FRAC[kind])}


BOUNDARY_HOSTS = [3_000_000, 2_593_992, 1_000_003, 4_000]


@pytest.mark.parametrize("host", BOUNDARY_HOSTS)
@pytest.mark.parametrize("kind", ["vmx", "svm", "none"])
def test_tolerance_boundary_plus_minus_one_khz(host: int, kind: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    lo, hi = ref.adjust_tsc_khz(host, -TOLERANCE_PPM), ref.adjust_tsc_khz(host, TOLERANCE_PPM)
    for guest in (lo - 1, lo, hi, hi + 1):
        doc, _ = scale_json(capsys, "--tsc-khz", str(host), "--guest-khz", str(guest),
                            "--scaling", kind)
        (e,) = doc["tsc_scaling"]
        want = expected_rule(host, guest, kind)
        got = {k: e[k] for k in want}
        assert got == want, (host, guest, kind, e["explanation"])
        assert e["accepted_by_set_tsc_khz"] == (want["rule"] != "refused")


# ------------------------------------------------------------------ equal to the simulator


def simulator_vcpu(host: int, guest: int, kind: str, profile: str = "upstream") -> Any:
    """A VM created in the simulator with ``tsc_khz=guest`` (kvm_set_tsc_khz at vCPU
    creation), kvmclock enabled and the vCPU entered once: the vCPU, or the ValueError."""
    world = World(3)
    machine = PhysicalMachine(world, 2, tsc_khz=host, tsc_scaling=kind)
    k = Kernel(machine, profile, name="L0")
    k.boot()
    world.run_until(5_000_000)
    kvm = k.load_kvm()
    try:
        vm = kvm.create_vm(tsc_khz=guest)
    except ValueError as exc:
        return exc
    vm.create_vcpu()
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 1)
    vm.machine.run_on_cpu(0, lambda: None)
    return vm.vcpus[0]


SIM_CASES = [
    (3_000_000, 3_000_500), (2_593_992, 2_594_000), (3_000_000, 1_500_000),
    (3_000_000, 6_000_000), (2_593_992, 2_593_342), (2_593_992, 2_594_641), (3_000_000, 1),
]


@pytest.mark.parametrize(("host", "guest"), SIM_CASES)
def test_scale_equals_the_simulator(host: int, guest: int,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    doc, _ = scale_json(capsys, "--tsc-khz", str(host), "--guest-khz", str(guest))
    for kind, e in by_kind(doc).items():
        v = simulator_vcpu(host, guest, kind)
        if isinstance(v, ValueError):
            assert e["rule"] == "refused", (kind, e)
            continue
        assert e["rule"] != "refused"
        assert e["virtual_tsc_khz"] == v.virtual_tsc_khz
        assert e["tsc_catchup"] == v.tsc_catchup
        if kind != "none":
            assert e["ratio"] == v.tsc_scaling_ratio
        rec = e["guest_record"]
        assert (rec["tsc_to_system_mul"], rec["tsc_shift"], rec["record_tsc_khz"]) == (
            v.hv_clock.tsc_to_system_mul, v.hv_clock.tsc_shift, v.hw_tsc_khz)


# ------------------------------------------------------------------ refusals and catch-up


def test_refused_by_max_guest_tsc_khz(capsys: pytest.CaptureFixture[str]) -> None:
    """KVM_SET_TSC_KHZ refuses khz >= max_guest_tsc_khz = min(0x7fffffff, __scale_tsc(max
    ratio, tsc_khz)) before any ratio is computed (so no 64-bit overflow either)."""
    for host, kind in ((1, "vmx"), (1, "svm"), (65_536, "vmx")):
        limit = min(0x7FFFFFFF, ref.mul_u64_u64_shr(host, MAX_RATIO[kind], FRAC[kind]))
        doc, _ = scale_json(capsys, "--tsc-khz", str(host), "--guest-khz", "4294967295",
                            "--scaling", kind)
        (e,) = doc["tsc_scaling"]
        assert e["max_guest_tsc_khz"] == limit
        assert e["rule"] == "refused" and not e["accepted_by_set_tsc_khz"]
        assert f"max_guest_tsc_khz={limit}" in e["refusal"]
        assert e["ratio"] == 1 << FRAC[kind] and e["guest_record"] is None
        # one below the limit is accepted with its ratio
        doc, _ = scale_json(capsys, "--tsc-khz", str(host), "--guest-khz", str(limit - 1),
                            "--scaling", kind)
        (e,) = doc["tsc_scaling"]
        assert e["rule"] == "scaled"
        assert e["ratio"] == ref.tsc_scaling_ratio(limit - 1, host, FRAC[kind])


def test_no_scaling_hardware(capsys: pytest.CaptureFixture[str]) -> None:
    doc, _ = scale_json(capsys, "--tsc-khz", "3000000", "--guest-khz", "1500000",
                        "--scaling", "none")
    (e,) = doc["tsc_scaling"]
    assert e["rule"] == "refused" and "below hardware speed" in e["refusal"]
    assert e["explanation"].startswith("refused (-EINVAL): ")
    doc, _ = scale_json(capsys, "--tsc-khz", "3000000", "--guest-khz", "6000000",
                        "--scaling", "none")
    (e,) = doc["tsc_scaling"]
    assert e["rule"] == "catchup" and e["tsc_catchup"]
    assert e["hardware_tsc_khz"] == 3_000_000 and e["guest_tsc_khz"] == 6_000_000
    assert e["explanation"].startswith("catch-up: ")


def test_scaled_text_names_ratio_and_rate(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["scale", "--tsc-khz", "3000000", "--guest-khz", "1500000", "--scaling",
                     "vmx"])
    out = capsys.readouterr().out
    assert code == 0
    assert ("VMX (48 fraction bits): scaled with ratio 0x800000000000 = 0.5: the guest TSC "
            "runs at 1500000 kHz") in out


# ------------------------------------------------------------------ --ratio and warnings


def test_ratio_300_warns_it_is_raw_fixed_point(capsys: pytest.CaptureFixture[str]) -> None:
    doc, err = scale_json(capsys, "--tsc-khz", "3000000", "--ratio", "300")
    codes = [w["code"] for w in doc["warnings"]]
    assert "ratio_read_as_fixed_point" in codes
    (w,) = [w for w in doc["warnings"] if w["code"] == "ratio_read_as_fixed_point"]
    assert "300 / 2**48" in w["message"] and "300 / 2**32" in w["message"]
    assert "--ratio 300.0" in w["message"] and "0x12c" in w["message"]
    assert "kvmclock scale: warning: --ratio 300 is read as a raw fixed-point" in err
    kinds = by_kind(doc)
    assert kinds["vmx"]["ratio"] == 300 and kinds["svm"]["ratio"] == 300
    assert kinds["none"]["rule"] == "refused"
    assert doc["ratio_input"] == {"text": "300", "form": "fixed_point"}
    # the decimal form means 300 and does not warn
    doc, err = scale_json(capsys, "--tsc-khz", "3000000", "--ratio", "300.0", "--scaling", "vmx")
    assert doc["warnings"] == [] and err == ""
    (e,) = doc["tsc_scaling"]
    assert e["ratio"] == 300 << 48 and e["hardware_tsc_khz"] == 900_000_000
    # hex is deliberate raw fixed point: no "read as fixed point" warning
    doc, _ = scale_json(capsys, "--tsc-khz", "3000000", "--ratio", "0x800000000000",
                        "--scaling", "vmx")
    assert doc["warnings"] == [] and doc["tsc_scaling"][0]["hardware_tsc_khz"] == 1_500_000


@pytest.mark.parametrize(("profile", "mul"), [("upstream", "clamped"), ("gtod", 0)])
def test_one_khz_guest_warns_of_a_zero_khz_record(profile: str, mul: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """1 kHz on a 3 GHz VMX host: ratio 2**48 / 3e6 is not 0, but kvm_scale_tsc(3000000 kHz)
    is 0 kHz: before 6.16 the record keeps mul 0 (the clock stands still); 6.16 takes 1 kHz."""
    ratio = ref.tsc_scaling_ratio(1, 3_000_000, 48)
    assert ratio > 0 and ref.scale_tsc(3_000_000, ratio, 48) == 0
    doc, err = scale_json(capsys, "--tsc-khz", "3000000", "--guest-khz", "1", "--scaling",
                          "vmx", "--profile", profile)
    (e,) = doc["tsc_scaling"]
    assert e["rule"] == "scaled" and e["ratio"] == ratio and e["hardware_tsc_khz"] == 0
    assert e["hardware_tsc_hz"] == ref.scale_tsc(3_000_000_000, ratio, 48)
    codes = [w["code"] for w in doc["warnings"]]
    assert codes == ["khz_looks_like_mhz", "guest_record_khz_zero"]
    rec = e["guest_record"]
    if mul == 0:
        assert rec["tsc_to_system_mul"] == 0 and rec["pvclock_tsc_khz"] is None
        assert "wrote tsc_to_system_mul 0" in err
    else:
        shift, m = ref.get_time_scale(10**9, 1000)
        assert (rec["record_tsc_khz"], rec["tsc_to_system_mul"], rec["tsc_shift"]) == (1, m, shift)
        assert "took 1 kHz" in err


def test_ratio_the_vendor_cannot_program(capsys: pytest.CaptureFixture[str]) -> None:
    doc, _ = scale_json(capsys, "--tsc-khz", "4294967295", "--ratio", str(2**64 - 1),
                        "--scaling", "svm")
    (e,) = doc["tsc_scaling"]
    assert e["rule"] == "refused" and "0xffffffffff" in e["refusal"]
    assert e["ratio"] == 1 << 32 and e["guest_record"] is None


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--ratio", "1", "--guest-khz", "1"], ["not both"]),
        (["--ratio", "abc"], ["--ratio", "real number"]),
        (["--ratio", "0"], ["--ratio", "1..2**64-1"]),
        (["--ratio", str(2**64)], ["--ratio", "1..2**64-1"]),
        (["--guest-khz", "-1"], ["--guest-khz", "0..4294967295"]),
        (["--scaling", "arm"], ["--scaling", "invalid choice", "vmx", "none"]),
        (["--profile", "nope"], ["--profile", "invalid choice", "upstream"]),
    ],
)
def test_bad_input_exits_2(argv: list[str], needles: list[str],
                           capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["scale", "--tsc-khz", "3000000", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_time_scales_unchanged_without_guest(capsys: pytest.CaptureFixture[str]) -> None:
    doc, err = scale_json(capsys, "--tsc-khz", "2593992")
    assert err == "" and doc["tsc_scaling"] == [] and doc["guest_khz"] is None
    shift, mul = ref.get_time_scale(10**9, 2_593_992_000)
    assert (doc["tsc_to_ns"]["tsc_shift"], doc["tsc_to_ns"]["tsc_to_system_mul"]) == (shift, mul)
    assert kvmclock.pvclock_tsc_khz(tsc_to_system_mul=mul, tsc_shift=shift) == \
        doc["tsc_to_ns"]["pvclock_tsc_khz"]


def test_guest_khz_zero_is_the_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    """KVM_SET_TSC_KHZ 0: kvm_arch_vcpu_ioctl replaces 0 by the host's tsc_khz (after the
    max_guest_tsc_khz check, which 0 passes), so no scaling, a host-kHz record."""
    doc, _ = scale_json(capsys, "--tsc-khz", "3000000", "--guest-khz", "0")
    assert doc["guest_khz"] == 0
    for e in doc["tsc_scaling"]:
        assert e["rule"] == "no_scaling" and e["refusal"] is None, e["scaling"]
        assert e["virtual_tsc_khz"] == 3_000_000 and e["hardware_tsc_khz"] == 3_000_000
        assert e["guest_record"]["record_tsc_khz"] == 3_000_000
        assert "KVM_SET_TSC_KHZ 0 means the host's tsc_khz 3000000 kHz" in e["explanation"]


def test_tiny_ratio_rate_reads_the_same_on_vmx_and_svm(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """--ratio 300 on 3000000 kHz: VMX 3e9 * 300 >> 48 = 0 Hz, SVM 3e9 * 300 >> 32 = 209 Hz;
    both record kHz are 0 (3e6 * 300 >> 48 = 0, >> 32 = 0): both say Hz-as-kHz and record."""
    assert (3_000_000_000 * 300) >> 48 == 0 and (3_000_000_000 * 300) >> 32 == 209
    doc, _ = scale_json(capsys, "--tsc-khz", "3000000", "--ratio", "300")
    by = {e["scaling"]: e["explanation"] for e in doc["tsc_scaling"]}
    assert by["vmx"].endswith("runs at 0.000 kHz (kvm_scale_tsc of the host's kHz: 0 kHz)")
    assert by["svm"].endswith("runs at 0.209 kHz (kvm_scale_tsc of the host's kHz: 0 kHz)")


def test_ratio_refusal_says_which_bound(capsys: pytest.CaptureFixture[str]) -> None:
    # 0x1800000000000 = 1.5 on VMX; on SVM (32 fraction bits) it is 393216.0, above the
    # SVM maximum 2**40 - 1 = 0xffffffffff
    doc, _ = scale_json(capsys, "--tsc-khz", "3000000", "--ratio", "0x1800000000000",
                        "--scaling", "svm")
    (e,) = doc["tsc_scaling"]
    assert e["refusal"].startswith(
        "ratio 0x1800000000000 is >= max_tsc_scaling_ratio 0xffffffffff (svm)")
    assert "0 or" not in e["refusal"]
    # a multiplier of 0 (the command refuses it as --ratio before the model; the model code
    # says which bound too)
    from kvmclock.drift import RatioInput, model_tsc_scaling

    e = model_tsc_scaling(3_000_000, "vmx", ratio=RatioInput("0", "fixed_point", 0))
    assert e["rule"] == "refused" and e["refusal"].startswith("ratio 0x0 is 0:")

"""Fixture-based checks of the real captures (always run; no /dev/kvm needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from kvmclock import PvclockVcpuTimeInfo, get_time_scale, pvclock_tsc_khz
from kvmclock.real import capture, relations, verify
from kvmclock.real.host import parse_tsc_khz_from_log
from kvmclock.real.maps import parse_maps

DATA = Path(__file__).parent / "data"
RUN = json.loads((DATA / "real" / "clock-relations-6.18.json").read_text())
HOST = json.loads((DATA / "real" / "host-record-6.18.json").read_text())
TRACE: str = RUN["trace"]  # the ftrace text captured with the same run


def _run() -> verify.ScenarioRun:
    return verify.ScenarioRun.from_json(RUN)


def test_fixture_relations_recomputed() -> None:
    res = verify.check_relations(_run())
    held = {k for k, (ok, _) in res.items() if ok}
    assert held == set(verify.EXACT) - set(verify.DEPARTURE_FOR)
    for name in verify.DEPARTURE_FOR:
        assert not res[name][0]


def test_fixture_evidence_was_recorded_at_capture() -> None:
    ev = RUN["evidence"]
    assert set(ev) == {
        "kvm_modules",
        "flavour",
        "kernel_release",
        "capabilities",
        "vcpu_tsc_offset_attr",
    }
    assert ev["kvm_modules"] == {"kvm_pvm": True, "kvm_intel": False, "kvm_amd": False}
    assert ev["flavour"] == "kvm_pvm"
    assert re.fullmatch(r"6\.18\.\d+.*", ev["kernel_release"])
    caps = ev["capabilities"]
    assert set(caps) == set(capture.EVIDENCE_CAPABILITIES)
    # PVM: no TSC scaling; KVM_GET_CLOCK/KVM_SET_CLOCK accept TSC_STABLE|REALTIME|HOST_TSC
    assert caps["KVM_CAP_TSC_CONTROL"] == 0
    assert caps["KVM_CAP_ADJUST_CLOCK"] == 2 | 4 | 8
    assert caps["KVM_CAP_VCPU_ATTRIBUTES"] == 1 and ev["vcpu_tsc_offset_attr"] is True


def test_departures_judged_from_stored_evidence() -> None:
    run = _run()
    for name, dep in verify.DEPARTURE_FOR.items():
        assert verify._departure_applies(name, run, False) == dep
        assert verify._departure_applies(name, run, True) is None
    intel = verify.ScenarioRun.from_json(
        dict(RUN, evidence=dict(RUN["evidence"], flavour="kvm_intel"))
    )
    none = verify.ScenarioRun.from_json(dict(RUN, evidence=None))
    for name in verify.DEPARTURE_FOR:
        assert verify._departure_applies(name, intel, False) is None
        assert verify._departure_applies(name, none, False) is None
    pvm = relations.DEPARTURES["pvm-tsc-offset-not-applied"]
    assert pvm.applies({"flavour": "kvm_pvm"})
    assert not pvm.applies({"flavour": "ambiguous:kvm_pvm+kvm_intel"})
    assert not pvm.applies({}) and not pvm.applies(None)
    extra = relations.DEPARTURES["extra-publish-on-host-kvmclock-msr-write"]
    assert extra.applies({"flavour": "kvm_pvm", "kernel_release": "6.18.0"})
    assert not extra.applies({"flavour": "kvm_pvm", "kernel_release": "6.17.9"})
    assert not extra.applies({"flavour": "kvm_pvm", "kernel_release": "garbage"})
    assert not extra.applies({"flavour": "kvm_amd", "kernel_release": "6.18.1"})


def test_flavour_from_modules(tmp_path: Path) -> None:
    assert capture.flavour_of({"kvm_pvm": True, "kvm_intel": False}) == "kvm_pvm"
    assert capture.flavour_of({"kvm_amd": True}) == "kvm_amd"
    assert capture.flavour_of({}) == "none"
    assert capture.flavour_of({"kvm_pvm": True, "kvm_intel": True}) == "ambiguous:kvm_pvm+kvm_intel"
    (tmp_path / "kvm_intel").mkdir()
    (tmp_path / "kvm").mkdir()

    class FakeSystem:
        def check_extension(self, cap: int) -> int:
            return cap * 10

    ev = capture.collect_evidence(FakeSystem(), str(tmp_path))  # type: ignore[arg-type]
    assert ev["kvm_modules"] == {"kvm_pvm": False, "kvm_intel": True, "kvm_amd": False}
    assert ev["flavour"] == "kvm_intel"
    # KVM_CAP_TSC_CONTROL = 60, KVM_CAP_ADJUST_CLOCK = 39 (include/uapi/linux/kvm.h)
    assert ev["capabilities"]["KVM_CAP_TSC_CONTROL"] == 600
    assert ev["capabilities"]["KVM_CAP_ADJUST_CLOCK"] == 390
    assert ev["vcpu_tsc_offset_attr"] is None


def test_fixture_records_decode_and_scale() -> None:
    shift, mul = get_time_scale(scaled_hz=10**9, base_hz=RUN["tsc_khz"] * 1000)
    n = 0
    for ob in RUN["obs"].values():
        if "record" in ob:
            rec = PvclockVcpuTimeInfo(**ob["record"])
            assert PvclockVcpuTimeInfo.from_bytes(rec.to_bytes()) == rec
            assert (rec.tsc_to_system_mul, rec.tsc_shift) == (mul, shift)
            n += 1
    assert n >= 10


def test_fixture_get_clock_equals_record_recomputed() -> None:
    c = RUN["obs"]["clock_matched"]
    rec = PvclockVcpuTimeInfo(**RUN["obs"]["run0b"]["record"])
    assert c["flags"] & 8 and c["flags"] & 2
    assert rec.read_cycles(c["host_tsc"] + c["offsets"]["0"]) == c["clock"]


def test_fixture_version_rule_recomputed() -> None:
    assert RUN["obs"]["run0_set"]["record"]["version"] == ((7 + 1) | 1) + 1
    assert RUN["obs"]["run1_set"]["record"]["version"] == ((0xFFFFFFFF + 1) % 2**32 | 1) + 1


def test_fixture_host_record() -> None:
    rec = PvclockVcpuTimeInfo(**HOST["record"])
    khz = HOST["tsc_khz"]["khz"]
    assert get_time_scale(scaled_hz=10**9, base_hz=khz * 1000) == (
        rec.tsc_shift,
        rec.tsc_to_system_mul,
    )
    assert pvclock_tsc_khz(tsc_to_system_mul=rec.tsc_to_system_mul, tsc_shift=rec.tsc_shift) == khz
    assert rec.read_cycles(HOST["tsc"]) == HOST["ns"]


def test_fixture_trace_offsets_snapped() -> None:
    run = _run()
    rel = verify.trace_relation(run)
    assert rel is not None and rel[0], rel
    offs = verify.trace_offsets(TRACE)
    # creation offset = 0 - host TSC at creation (u64), within the creation window
    create_tsc = RUN["inputs"][0]["host_tsc"]
    assert create_tsc <= 2**64 - offs[0][1] <= RUN["inputs"][1]["host_tsc"]
    # far write offset = value - host TSC at the write, host TSC between the two input stamps
    value = RUN["obs"]["far_write"]["value"]
    n = RUN["obs"]["far_write"]["n"]
    lo, hi = RUN["inputs"][n]["host_tsc"], RUN["inputs"][n + 1]["host_tsc"]
    assert lo <= value - offs[2][1] <= hi


def test_fixture_trace_pvclock_lines_match_records() -> None:
    pat = re.compile(
        r"kvm_pvclock_update: vcpu_id (\d+), pvclock \{ version (\d+), tsc_timestamp 0x([0-9a-f]+),"
        r" system_time 0x([0-9a-f]+), tsc_to_system_mul 0x([0-9a-f]+), tsc_shift (-?\d+),"
        r" flags 0x([0-9a-f]+) \}"
    )
    traced = {(int(m[1]), int(m[2]), int(m[3], 16), int(m[4], 16)) for m in pat.finditer(TRACE)}
    assert traced
    for ob in RUN["obs"].values():
        if "record" in ob and ob["op"] == "run":
            r = ob["record"]
            key = (ob["vcpu"], r["version"], r["tsc_timestamp"], r["system_time"])
            # every record seen after a run was published by a traced update (the planted
            # versions change only the version of the next publish)
            assert key in traced, key


def test_parse_tsc_khz_from_log() -> None:
    log = (
        "[0.0] tsc: Detected 2596.136 MHz processor\n"
        "[1.0] tsc: Refined TSC clocksource calibration: 2596.101 MHz"
    )
    assert parse_tsc_khz_from_log(log) == (
        2596101,
        "kernel log: tsc: Refined TSC clocksource calibration",
    )
    assert parse_tsc_khz_from_log("tsc: Detected 2596.136 MHz processor")[0] == 2596136  # type: ignore[index]
    assert parse_tsc_khz_from_log("nothing") is None


def test_parse_maps_finds_vvar_vclock() -> None:
    text = (
        "7fae29f5c000-7fae29f60000 r--p 00000000 00:00 0                          [vvar]\n"
        "7fae29f60000-7fae29f62000 r--p 00000000 00:00 0                          [vvar_vclock]\n"
    )
    maps = parse_maps(text)
    assert [m.name for m in maps] == ["[vvar]", "[vvar_vclock]"]
    assert maps[1].start == 0x7FAE29F60000 and maps[1].size == 0x2000


def test_version_step_wraps() -> None:
    assert verify._version_step(0xFFFFFFFF) == 2
    assert verify._version_step(0xFFFFFFFE) == 0
    assert verify._version_step(4) == 6


def test_unknown_scenario_rejected() -> None:
    with pytest.raises(ValueError, match="scenarios"):
        verify.run_verify(["nope"])

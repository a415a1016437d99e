"""The model side of ``kvmclock verify``: the replay of recorded real inputs on the KVM model.

The fixture tests always run (no /dev/kvm needed): they replay the inputs of the 6.18 capture
(tests/data/real/clock-relations-6.18.json) on a gtod kernel with a TSC host, check every SPEC §7
relation on the model's run, and compare the model's records with the real ones. The end-to-end
test runs ``run_verify()`` on this machine's /dev/kvm where it exists.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from kvmclock import PvclockVcpuTimeInfo, get_time_scale, pvclock_scale_delta
from kvmclock.real import verify

DATA = Path(__file__).parent / "data" / "real"
DOC = json.loads((DATA / "clock-relations-6.18.json").read_text())


def _real() -> verify.ScenarioRun:
    return verify.ScenarioRun.from_json(copy.deepcopy(DOC))


@pytest.fixture(scope="module")
def model() -> verify.ScenarioRun:
    return verify.replay_model(_real())


def _version_step(old: int) -> int:
    return (((old + 1) | 1) + 1) % 2**32


def test_every_relation_holds_on_the_model(model: verify.ScenarioRun) -> None:
    res = verify._check(model)
    assert set(res) == set(verify.EXACT)
    for name, (held, detail) in res.items():
        assert held, (name, detail)
    traced = verify._trace_relation(model)
    assert traced is not None and traced[0], traced


def test_relations_hold_under_the_series_profile_too() -> None:
    # A stable TSC host qualifies for masterclock under both profiles (SPEC §2).
    run = verify.replay_model(_real(), profile="series")
    for name, (held, detail) in verify._check(run).items():
        assert held, (name, detail)
    assert "hostclock stable 1" in (run.trace or "")


def test_replay_is_deterministic(model: verify.ScenarioRun) -> None:
    again = verify.replay_model(_real())
    assert again.to_json() == model.to_json()


def test_model_host_tsc_hits_every_recorded_tsc(model: verify.ScenarioRun) -> None:
    # Operation n runs at the first simulated ns whose TSC reaches the recorded one: at most
    # one ns of cycles (ceil(kHz / 1e6)) later.
    per_ns = -(-DOC["tsc_khz"] // 1_000_000)
    assert len(model.inputs) == len(DOC["inputs"])
    for mi, ri in zip(model.inputs, DOC["inputs"], strict=True):
        assert mi["op"] == ri["op"]
        assert 0 <= mi["host_tsc"] - ri["host_tsc"] <= per_ns


def test_model_mirrors_the_real_request_flow(model: verify.ScenarioRun) -> None:
    # Versions and flags of every record equal the real ones, except the one entry after the
    # host-initiated MSR rewrite, where this kernel publishes twice (a named departure).
    real = _real()
    for label, ro in real.obs.items():
        if "record" not in ro:
            continue
        r, m = ro["record"], model.obs[label]["record"]
        assert m["flags"] == r["flags"], label
        assert (m["tsc_to_system_mul"], m["tsc_shift"]) == (r["tsc_to_system_mul"], r["tsc_shift"])
        if label == "run0_msr":
            assert m["version"] == _version_step(21)
            assert r["version"] == _version_step(_version_step(21))
        else:
            assert m["version"] == r["version"], label


def test_model_snapshots_are_shared_where_the_real_ones_are(model: verify.ScenarioRun) -> None:
    # Records that share (system_time, tsc_timestamp) on the real side share them in the model.
    real = _real()
    labels = [k for k, v in real.obs.items() if "record" in v]

    def key(run: verify.ScenarioRun, lbl: str) -> tuple[int, int]:
        rec = run.obs[lbl]["record"]
        vid = run.obs[lbl]["vcpu"]
        off = run.inputs[run.obs[lbl]["n"]]["offsets"][str(vid)] if run.side == "model" else 0
        return rec["system_time"], (rec["tsc_timestamp"] - off) % 2**64

    for a in labels:
        for b in labels:
            assert (key(real, a) == key(real, b)) == (key(model, a) == key(model, b)), (a, b)


def test_model_set_clock_and_get_clock_independently(model: verify.ScenarioRun) -> None:
    value = DOC["obs"]["set_clock"]["clock"]
    assert model.obs["run0_set"]["record"]["system_time"] == value
    # KVM_GET_CLOCK with masterclock: the vCPU 0 record read at host_tsc + offset, recomputed
    # here with the scalar pvclock_scale_delta.
    c = model.obs["clock_back"]
    rec = model.obs["run0_back_b"]["record"]
    guest = (c["host_tsc"] + c["offsets"]["0"]) % 2**64
    delta = guest - rec["tsc_timestamp"]
    assert delta >= 0
    ns = rec["system_time"] + pvclock_scale_delta(delta, rec["tsc_to_system_mul"], rec["tsc_shift"])
    assert c["clock"] == ns
    assert c["flags"] == DOC["obs"]["clock_back"]["flags"]
    assert model.obs["clock_far"]["flags"] == 0


def test_comparison_on_the_fixture(model: verify.ScenarioRun) -> None:
    comp = verify.compare_runs(_real(), model)
    assert comp["held"], comp["not_held"]
    segs = {s["segment"]: s for s in comp["segments"]}
    assert set(segs) == {"creation", "set_clock"}
    # masterclock and non-masterclock records: one constant per kvmclock_offset segment
    for s in segs.values():
        assert s["spread_ns"] is not None and s["spread_ns"] <= verify.EPSILON_NS
        assert s["held"]
    # The fixture predates recording the KVM_CREATE_VM instant: named, and real is later.
    assert segs["creation"]["known_departure"] == "vm-creation-instant-not-recorded"
    assert segs["creation"]["constant_ns"] > 0
    # After KVM_SET_CLOCK both sides set the same value; the real snapshot is later in the op.
    a = DOC["inputs"][21]["host_tsc"]
    b = DOC["inputs"][22]["host_tsc"]
    shift, mul = get_time_scale(scaled_hz=10**9, base_hz=DOC["tsc_khz"] * 1000)
    assert -pvclock_scale_delta(b - a, mul, shift) <= segs["set_clock"]["constant_ns"] <= 0
    deps = {e["known_departure"] for e in comp["entries"] if e["known_departure"]}
    assert deps == {
        "pvm-tsc-offset-not-applied",
        "extra-publish-on-host-kvmclock-msr-write",
        "get-clock-realtime-not-compared",
    }
    exact = [e for e in comp["entries"] if e["rule"] == "exact"]
    assert exact and all(e["held"] or e["known_departure"] for e in exact)


def test_verify_run_on_the_fixture_reports_both_sides() -> None:
    result = verify.verify_run(_real())
    assert result["ok"], verify.format_verify(result)
    assert result["model"] == "ran"
    by_name = {r["name"]: r for r in result["relations"]}
    assert set(verify.EXACT) <= set(by_name)
    for r in result["relations"]:
        assert r["held_model"] is True, r
        assert r["held_real"] or r["known_departure"], r
    assert by_name["traced-offsets-snapped"]["held_model"] is True
    text = verify.format_verify(result)
    assert "real vs model, field by field: held" in text
    assert "model DID NOT HOLD" not in text and text.endswith("OK")


def _tamper(path: list[Any], value: int) -> verify.ScenarioRun:
    doc = copy.deepcopy(DOC)
    node: Any = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return verify.ScenarioRun.from_json(doc)


@pytest.mark.parametrize(
    ("path", "delta", "field"),
    [
        (["obs", "run1a", "record", "tsc_to_system_mul"], 1, "tsc_to_system_mul"),
        (["obs", "run0_far", "record", "version"], 2, "version"),
        (["obs", "run1_back_b", "record", "system_time"], 5_000, "kvmclock real - model"),
        (["obs", "run0a", "record", "tsc_timestamp"], 10**6, "tsc_timestamp"),
    ],
)
def test_comparison_catches_a_changed_real_field(path: list[str], delta: int, field: str) -> None:
    node: Any = DOC
    for k in path:
        node = node[k]
    real = _tamper(path, node + delta)
    model = verify.replay_model(real)
    comp = verify.compare_runs(real, model)
    assert not comp["held"]
    assert any(e["field"].startswith(field) for e in comp["not_held"]), comp["not_held"]
    assert not verify.verify_run(real)["ok"]


def test_model_relation_failure_makes_verify_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    # A model that loses the masterclock after the matching write must turn ``ok`` false.
    def broken(real: verify.ScenarioRun) -> verify.ScenarioRun:
        run = verify.replay_model(real)
        run.obs["clock_back"]["flags"] = 0
        return run

    monkeypatch.setattr(verify, "_model_runner", lambda: (broken, "broken"))
    result = verify.verify_run(_real())
    rel = {r["name"]: r for r in result["relations"]}["matching-write-masterclock-back"]
    assert rel["held_real"] is True and rel["held_model"] is False
    assert not result["ok"]


def test_replay_rejects_bad_runs() -> None:
    with pytest.raises(ValueError, match="profile"):
        verify.replay_model(_real(), profile="upstream")
    bad = _real()
    bad.tsc_khz = 0
    with pytest.raises(ValueError, match="tsc_khz"):
        verify.replay_model(bad)
    empty = _real()
    empty.inputs = []
    with pytest.raises(ValueError, match="empty"):
        verify.replay_model(empty)
    odd = _real()
    odd.inputs[3] = dict(odd.inputs[3], op="reboot")
    with pytest.raises(ValueError, match="reboot"):
        verify.replay_model(odd)
    early = _real()
    early.inputs[2] = dict(early.inputs[2], vcpu=5)
    with pytest.raises(ValueError, match="vcpu 5"):
        verify.replay_model(early)
    failed = verify.verify_run(odd)
    assert not failed["ok"] and failed["model"].startswith("model replay failed: ValueError")


def test_replay_uses_the_recorded_vm_creation_instant() -> None:
    real = _real()
    first = real.inputs[0]["host_tsc"]
    real.vm_create = {"t_ns": -5_000, "host_tsc": first - 13_000, "host_tsc_after": first - 100}
    model = verify.replay_model(real)
    assert model.vm_create is not None
    assert 0 <= model.vm_create["host_tsc"] - (first - 13_000) <= 3
    # The model's kvmclock starts 13000 cycles before vCPU 0's creation: the first record's
    # system_time grows by that much (+-1 ns) relative to a VM created at the first operation.
    base = verify.replay_model(_real())
    shift, mul = get_time_scale(scaled_hz=10**9, base_hz=DOC["tsc_khz"] * 1000)
    extra = pvclock_scale_delta(13_000, mul, shift)
    d = model.obs["run0a"]["record"]["system_time"] - base.obs["run0a"]["record"]["system_time"]
    assert abs(d - extra) <= 1
    comp = verify.compare_runs(real, model)
    seg = {s["segment"]: s for s in comp["segments"]}["creation"]
    assert seg["known_departure"] is None and seg["bound_ns"][1] == 0


def test_model_trace_is_parseable_ftrace_text(model: verify.ScenarioRun) -> None:
    from kvmclock.trace import parse_text

    parsed = parse_text(model.trace or "")
    assert not parsed.skipped
    events = [r.event for r in parsed.records]
    real_events = [r.event for r in parse_text(DOC["trace"]).records]
    assert events == real_events
    last = PvclockVcpuTimeInfo(**model.obs["run0_msr"]["record"])
    assert parsed.records[-1].data is not None
    assert parsed.records[-1].data["version"] == last.version


def _kvm_reason() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


@pytest.mark.skipif(_kvm_reason() is not None, reason=_kvm_reason() or "")
def test_run_verify_end_to_end_both_sides() -> None:
    result = verify.run_verify(trace=False)
    assert result["ok"], verify.format_verify(result)
    assert result["model"] == "ran"
    for r in result["relations"]:
        assert r["held_model"] is True, r
        assert r["held_real"] or r["known_departure"], r
    comp = result["comparison"]
    assert comp["held"], comp["not_held"]
    seg = {s["segment"]: s for s in comp["segments"]}
    # A fresh capture records the KVM_CREATE_VM instant: the creation constant is bounded.
    assert result["real"]["vm_create"] is not None
    assert seg["creation"]["known_departure"] is None and seg["creation"]["held"]
    assert seg["set_clock"]["held"]

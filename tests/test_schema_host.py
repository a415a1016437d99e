"""``kvmclock host --json`` against its JSON Schema (python/kvmclock/schemas/host.schema.json):
the schema is valid Draft 2020-12, describes every field, and real outputs validate (this
machine's, and the same command with the record, /dev/kvm or the probe VM missing)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from kvmclock import cli
from schema_util import load_schema


def schema() -> dict[str, Any]:
    return load_schema("host")


def validate(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema()).validate(doc)




def host_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = cli.main(["host", "--seconds", "0.1", *argv, "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.host", 1)
    return doc


def test_this_machine_validates(capsys: pytest.CaptureFixture[str]) -> None:
    validate(host_json(capsys))


def test_without_record_validates(capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmclock.real import host

    monkeypatch.setattr(host, "guest_record_report",
                        lambda: {"available": False, "reason": "no [vvar_vclock] mapping"})
    doc = host_json(capsys)
    assert doc["clocks"] is None
    validate(doc)


def test_without_kvm_or_with_failed_probe_validates(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmclock.real import host

    monkeypatch.setattr(host, "compare_clocks", lambda seconds: None)
    monkeypatch.setattr(host, "kvm_report",
                        lambda: {"available": False, "reason": "/dev/kvm: No such file"})
    validate(host_json(capsys))
    full = {
        "available": True, "reason": None, "api_version": 12,
        "capabilities": {"KVM_CAP_ADJUST_CLOCK": 14}, "adjust_clock_flags": [],
        "flavour": "standard (kvm_intel/kvm_amd)", "probe": {"error": "Operation not permitted"},
    }
    monkeypatch.setattr(host, "kvm_report", lambda: full)
    validate(host_json(capsys))


def test_drift_edge_values_validate() -> None:
    """Zero-width windows (bound 0) and a negative drift, through the real formatter."""
    from kvmclock.real.host import BracketSample, drift_dict, drift_estimate

    sub = {"$ref": "#/$defs/drift", "$defs": schema()["$defs"]}
    v = jsonschema.Draft202012Validator(sub)
    for a, b in (((0, 5, 0), (10**9, 10**9 + 3, 10**9)),
                 ((0, 10**12, 1), (1, 10**12 + 1, 2))):
        v.validate(drift_dict(drift_estimate(BracketSample(*a), BracketSample(*b))))
    bad = drift_dict(drift_estimate(BracketSample(0, 5, 0), BracketSample(10, 16, 10)))
    del bad["bound_ppb"]
    with pytest.raises(jsonschema.ValidationError):
        v.validate(bad)

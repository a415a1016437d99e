"""``kvmclock verify --json`` against its JSON Schema
(python/kvmclock/schemas/verify.schema.json): valid Draft 2020-12, every field described, one
document shape (schema, schema_version, ok, profiles_matching, runs) for one profile or several,
no unnamed arrays (segment bounds and value windows are named min/max, the offset equality
pattern is a list of named objects).

The documents validated are real outputs: the stored 6.18 capture
(tests/data/real/clock-relations-6.18.json) judged by the command under every profile, with
the model missing, with the model failing, without evidence, trace or KVM_CREATE_VM instant;
and, where /dev/kvm can be opened, a fresh capture of this machine."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kvmclock import cli
from kvmclock.real import capture, verify
from schema_util import load_schema

DOC = json.loads((Path(__file__).parent / "data" / "real" / "clock-relations-6.18.json")
                 .read_text())


def schema() -> dict[str, Any]:
    return load_schema("verify")


def validate(doc: dict[str, Any]) -> None:
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.verify", 1)
    jsonschema.Draft202012Validator(schema()).validate(doc)


def no_bare_arrays(node: Any, path: str = "$") -> list[str]:
    """Paths of arrays holding arrays (tuples, matrices): the conventions allow none."""
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += no_bare_arrays(v, f"{path}.{k}")
    elif isinstance(node, list):
        if any(isinstance(x, list) for x in node):
            out.append(path)
        for i, x in enumerate(node):
            out += no_bare_arrays(x, f"{path}[{i}]")
    return out


def verify_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
               doc: dict[str, Any], *argv: str,
               trace_status: str = "captured") -> tuple[int, dict[str, Any]]:
    """``kvmclock verify ARGV --json -`` on the capture ``doc`` instead of /dev/kvm."""
    run = capture.ScenarioRun.from_json(copy.deepcopy(doc))
    monkeypatch.setattr(capture, "real_run", lambda _trace: (run, trace_status))
    code = cli.main(["verify", *argv, "--json", "-"])
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    result: dict[str, Any] = json.loads(out)
    return code, result



@pytest.mark.parametrize("profiles", ["upstream", "gtod", "series", "gtod,series,upstream"])
def test_stored_capture_validates(profiles: str, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    code, doc = verify_cli(capsys, monkeypatch, DOC, "--profile", profiles)
    validate(doc)
    names = profiles.split(",")
    assert [r["profile"]["name"] for r in doc["runs"]] == names
    assert doc["profiles_matching"] == [r["profile"]["name"] for r in doc["runs"] if r["ok"]]
    assert doc["ok"] == all(r["ok"] for r in doc["runs"]) == (code == 0)
    assert no_bare_arrays(doc) == []
    for r in doc["runs"]:
        assert r["real"] == DOC  # the capture as stored, in every run
        for seg in (r["comparison"] or {}).get("segments", []):
            lo, hi = seg["bound_min_ns"], seg["bound_max_ns"]
            assert seg["held"] == (lo - 250 <= seg["constant_ns"]
                                   and (hi is None or seg["constant_ns"] <= hi + 250))


def test_upstream_matches_the_618_capture(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The 6.18 capture: upstream (6.18) matches; gtod (4.13) fails on the traced pvclock
    versions (4.13 traced the odd in-between version)."""
    code, doc = verify_cli(capsys, monkeypatch, DOC, "--profile", "gtod,upstream")
    validate(doc)
    assert code == 1 and doc["profiles_matching"] == ["upstream"] and doc["ok"] is False


def test_offset_equality_pattern_is_named(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _code, doc = verify_cli(capsys, monkeypatch, DOC)
    (e,) = [e for e in doc["runs"][0]["comparison"]["entries"]
            if e["field"] == "offset equality pattern"]
    for side in ("real", "model"):
        rows = e[side]
        assert [row["write"] for row in rows] == list(range(len(rows)))
        for row in rows:  # an equivalence: each write is in its own group, groups symmetric
            assert row["write"] in row["equal_to_writes"]
            for j in row["equal_to_writes"]:
                assert row["write"] in rows[j]["equal_to_writes"]


def test_model_missing_or_failing_validates(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "model_runner",
                        lambda profile=None: (None, "model unavailable: no x86"))
    code, doc = verify_cli(capsys, monkeypatch, DOC)
    validate(doc)
    (r,) = doc["runs"]
    assert code == 1 and r["comparison"] is None and r["model_run"] is None
    assert r["summary"]["fields"] is None and r["model_status"] == "model unavailable: no x86"

    def boom(_real: Any) -> Any:
        raise ValueError("replay blew up")

    monkeypatch.setattr(verify, "model_runner", lambda profile=None: (boom, "boom"))
    code, doc = verify_cli(capsys, monkeypatch, DOC)
    validate(doc)
    assert code == 1 and doc["runs"][0]["model_status"].startswith("model replay failed")


def test_capture_without_evidence_trace_or_create_instant(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    bare = dict(copy.deepcopy(DOC), evidence=None, trace=None, vm_create=None)
    _code, doc = verify_cli(capsys, monkeypatch, bare, trace_status="not requested")
    validate(doc)
    (r,) = doc["runs"]
    assert r["evidence"] is None and r["kernel"] is None and r["departures"] == {}
    assert r["trace_status"] == "not requested" and r["real"]["trace"] is None
    segs = r["comparison"]["segments"]
    assert any(s["bound_max_ns"] is None for s in segs)


def test_set_switch_validates(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    _code, doc = verify_cli(capsys, monkeypatch, DOC, "--profile", "upstream",
                            "--set", "masterclock_request=on_update")
    validate(doc)
    assert doc["runs"][0]["profile"]["changed"] == ["masterclock_request"]


def _kvm_reason() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no permission to open /dev/kvm read-write"
    return None


@pytest.mark.real
@pytest.mark.skipif(_kvm_reason() is not None, reason=_kvm_reason() or "")
def test_this_machine_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "verify.json"
    code = cli.main(["verify", "--profile", "gtod,upstream", "--json", str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    assert "relations" in out  # the text still printed
    doc = json.loads(path.read_text())
    validate(doc)
    assert no_bare_arrays(doc) == []
    assert doc["runs"][0]["real"] == doc["runs"][1]["real"]  # one capture, judged twice
    assert (code == 0) == doc["ok"]

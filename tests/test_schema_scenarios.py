"""``kvmclock scenarios --json`` against its JSON Schema
(python/kvmclock/schemas/scenarios.schema.json): valid Draft 2020-12, every field described,
schema and schema_version first, a list of named objects (no bare name -> value maps), and the
real output validates.  Each scenario's parameters are checked against its own TOML file as
``scenarios --show NAME`` prints it, parsed here with tomllib (not with kvmclock's loader).
``--show`` (TOML) and ``--schema`` (the scenario file format's schema) are not JSON outputs of
this kind and take no --json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kvmclock import cli
from schema_util import load_schema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def schema() -> dict[str, Any]:
    return load_schema("scenarios")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["scenarios", *argv])
    out, err = capsys.readouterr()
    return code, out, err



@pytest.mark.parametrize("argv", [("--json",), ("--json", "-")])
def test_real_output_validates(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.scenarios", 1)
    jsonschema.Draft202012Validator(schema()).validate(doc)
    code, text, err = run(capsys)
    assert [s["name"] for s in doc["scenarios"]] == [line.split()[0] for line in
                                                     text.splitlines()]


def test_params_are_the_files_params(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--json")
    assert code == 0, err
    for sc in json.loads(out)["scenarios"]:
        code, toml_text, err = run(capsys, "--show", sc["name"])
        assert code == 0, err
        f = tomllib.loads(toml_text)
        assert (f["name"], f["description"]) == (sc["name"], sc["description"])
        declared = f.get("params", {})
        assert [p["name"] for p in sc["params"]] == list(declared)
        for p in sc["params"]:
            spec = declared[p["name"]]
            spec = spec if isinstance(spec, dict) else {"default": spec}
            assert p["default"] == spec["default"], (sc["name"], p["name"])
            assert p["min"] == spec.get("min") and p["max"] == spec.get("max")
            assert p["exclusive_min"] == spec.get("exclusive_min", False)
            assert p["doc"] == spec.get("doc")
            assert p["choices"] == spec.get("choices")
            if "type" in spec:
                assert p["type"] == spec["type"]


def test_edge_values_are_in_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    """Edge cases the built-ins hold: a str parameter (patch09-hang's fault), a 4294967295 kHz
    upper bound, a seconds parameter above 0 exclusively."""
    _code, out, _err = run(capsys, "--json")
    params = {(s["name"], p["name"]): p for s in json.loads(out)["scenarios"]
              for p in s["params"]}
    assert params[("patch09-hang", "fault")]["type"] == "str"
    assert params[("migrate-tolerance", "dst_tsc_khz")]["max"] == 4294967295
    assert params[("nested", "duration_s")]["exclusive_min"] is True


def test_json_to_a_file_keeps_the_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "scenarios.json"
    code, out, err = run(capsys, "--json", str(path))
    assert code == 0, err
    assert out.startswith("nested ")
    jsonschema.Draft202012Validator(schema()).validate(json.loads(path.read_text()))


@pytest.mark.parametrize("other", ["--show", "--schema"])
def test_show_and_schema_are_not_json_documents(other: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = [other, "nested"] if other == "--show" else [other]
    code, _out, err = run(capsys, *argv, "--json")
    assert code == 2 and "not allowed with" in err

"""``kvmclock scale --json`` against its JSON Schema
(python/kvmclock/schemas/scale.schema.json): valid Draft 2020-12, every field described, and
real outputs of the command validate: plain time scales, every rule (no scaling, scaled,
catch-up, refused), --ratio in both forms, the warnings, and extremes of the kHz range."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from kvmclock import cli
from schema_util import load_schema


def schema() -> dict[str, Any]:
    return load_schema("scale")



CASES = [
    ["--tsc-khz", "2593992"],
    ["--tsc-khz", "1"],
    ["--tsc-khz", "4294967295"],
    ["--tsc-khz", "3000000", "--guest-khz", "3000500"],
    ["--tsc-khz", "2593992", "--guest-khz", "2594000"],
    ["--tsc-khz", "3000000", "--guest-khz", "1500000"],
    ["--tsc-khz", "3000000", "--guest-khz", "6000000"],
    ["--tsc-khz", "3000000", "--guest-khz", "1"],
    ["--tsc-khz", "3000000", "--guest-khz", "1", "--profile", "gtod"],
    ["--tsc-khz", "1", "--guest-khz", "4294967295"],
    ["--tsc-khz", "3000000", "--ratio", "300"],
    ["--tsc-khz", "3000000", "--ratio", "1.5"],
    ["--tsc-khz", "3000000", "--ratio", "3/2", "--scaling", "svm"],
    ["--tsc-khz", "4294967295", "--ratio", str(2**64 - 1), "--scaling", "svm"],
    ["--tsc-khz", "4294967295", "--ratio", "0xfffffffffffe", "--scaling", "vmx"],
    ["--tsc-khz", "4294967295", "--ratio", "300.0", "--scaling", "vmx"],
]


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(a) for a in CASES])
def test_real_outputs_validate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["scale", *argv, "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.scale", 1)
    jsonschema.Draft202012Validator(schema()).validate(doc)
    for w in doc["warnings"]:
        assert f"kvmclock scale: warning: {w['message']}" in err


def test_json_to_a_file_keeps_the_text(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "scale.json"
    code = cli.main(["scale", "--tsc-khz", "3000000", "--guest-khz", "3000500", "--json",
                     str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("TSC 3000000 kHz") and "no scaling" in out
    jsonschema.Draft202012Validator(schema()).validate(json.loads(path.read_text()))

"""``kvmclock profiles --json`` against its JSON Schema
(python/kvmclock/schemas/profiles.schema.json): valid Draft 2020-12, every field described,
schema and schema_version first, and real outputs validate: all profiles, each profile alone,
to stdout and to a file.  Each profile's switch map holds every switch, with one of the values
the switch list declares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kvmclock import cli
from schema_util import load_schema

#: the three profiles and the kernels they model, written out here (not read from the code)
KERNELS = {"gtod": "4.13", "series": "4.13+series", "upstream": "6.18"}


def schema() -> dict[str, Any]:
    return load_schema("profiles")



@pytest.mark.parametrize("name", [None, "gtod", "series", "upstream"])
def test_real_outputs_validate(name: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["profiles", *([name] if name else []), "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.profiles", 1)
    jsonschema.Draft202012Validator(schema()).validate(doc)
    wanted = list(KERNELS) if name is None else [name]
    assert [p["name"] for p in doc["profiles"]] == wanted
    values = {s["name"]: s["values"] for s in doc["switches"]}
    for p in doc["profiles"]:
        assert p["kernel"] == KERNELS[p["name"]] and p["changed"] == []
        assert set(p["switches"]) == set(values)
        for switch, value in p["switches"].items():
            assert value in values[switch], (p["name"], switch, value)


def test_switches_differ_where_the_kernels_differ(capsys: pytest.CaptureFixture[str]) -> None:
    """Two switches whose history is fixed: kvmclock_base became raw in 5.5 (commit
    53fafdbb8b21), the clocksource change chain exists only in the series."""
    assert cli.main(["profiles", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p["switches"] for p in doc["profiles"]}
    assert [by_name[n]["kvmclock_base"] for n in KERNELS] == ["boot", "boot", "raw"]
    assert [by_name[n]["clocksource_change_chain"] for n in KERNELS] == [False, True, False]
    (base,) = [s for s in doc["switches"] if s["name"] == "kvmclock_base"]
    assert (base["since"], base["commit"], base["values"]) == ("5.5", "53fafdbb8b21",
                                                               ["boot", "raw"])


def test_json_to_a_file_keeps_the_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "profiles.json"
    code = cli.main(["profiles", "upstream", "--json", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("upstream ") and "kvmclock_base" in out
    jsonschema.Draft202012Validator(schema()).validate(json.loads(path.read_text()))

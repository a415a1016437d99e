"""Every shipped JSON Schema (one per command's --json output) is a valid Draft 2020-12
schema, names its document, and describes every field; each command's own test file checks
real outputs against it."""

from __future__ import annotations

import jsonschema
import pytest
from schema_util import load_schema, schema_names, undescribed


def test_every_command_with_json_has_a_schema() -> None:
    assert {"decode", "drift", "host", "profiles", "scale", "scenarios", "simulate", "sweep",
            "trace", "verify"} <= set(schema_names())


@pytest.mark.parametrize("command", schema_names())
def test_schema_is_valid_and_describes_every_field(command: str) -> None:
    s = load_schema(command)
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert undescribed(s) == []


def test_undescribed_finds_a_missing_description() -> None:
    s = {"properties": {"a": {"type": "integer"}, "b": {"description": "x"}},
         "additionalProperties": {"type": "string"}}
    assert undescribed(s) == ["$.a", "$.*"]

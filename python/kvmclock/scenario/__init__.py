"""Scenario files: the TOML format (docs/scenarios.md), its checks and the engine that runs it.

* :func:`load` / :func:`loads`: a checked :class:`ScenarioFile` (or one
  :class:`~kvmclock.errors.ScenarioFileError` naming the file, the key and what is allowed).
* :func:`load_builtin` / :func:`builtin_names`: the built-in scenarios shipped as files in
  ``kvmclock/scenario/builtin``.
* :func:`json_schema` / :func:`schema_text`: the JSON Schema of the format, generated from
  the pydantic models (shipped as ``scenario.schema.json`` for editors).
* Running one: :func:`kvmclock.sim.run_scenario` (a built-in's name, a path or a
  ScenarioFile).
"""

from __future__ import annotations

import json

from kvmclock.scenario.loader import (
    Param,
    Plan,
    ScenarioFile,
    builtin_names,
    check_params,
    load,
    load_builtin,
    loads,
    resolve,
)
from kvmclock.scenario.model import ScenarioModel, json_schema

__all__ = [
    "Param",
    "Plan",
    "ScenarioFile",
    "ScenarioModel",
    "builtin_names",
    "check_params",
    "json_schema",
    "load",
    "load_builtin",
    "loads",
    "resolve",
    "schema_text",
]


def schema_text() -> str:
    """The JSON Schema as the text of ``scenario.schema.json`` (2-space indent, newline)."""
    return json.dumps(json_schema(), indent=2) + "\n"

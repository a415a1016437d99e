"""Shared helpers of the JSON Schema tests: load a shipped schema, list undescribed fields."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load_schema(command: str) -> dict[str, Any]:
    """The shipped ``python/kvmclock/schemas/<command>.schema.json``."""
    path = resources.files("kvmclock").joinpath(f"schemas/{command}.schema.json")
    doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return doc


def schema_names() -> list[str]:
    """Every shipped schema, by command name."""
    folder = resources.files("kvmclock").joinpath("schemas")
    return sorted(
        p.name.removesuffix(".schema.json")
        for p in folder.iterdir()
        if p.name.endswith(".schema.json")
    )


def undescribed(node: Any, path: str = "$") -> list[str]:
    """Paths of properties (and additionalProperties) without a description."""
    out: list[str] = []
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub:
                out.append(f"{path}.{name}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "description" not in extra:
            out.append(f"{path}.*")
        for key, sub in node.items():
            out += undescribed(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            out += undescribed(sub, f"{path}[{i}]")
    return out

"""``kvmclock scenarios``: list the built-in scenarios, show one's file, the JSON Schema."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kvmclock.cli.common import (
    EXIT_OK,
    _check_output_path,
    _dump_json,
    _scenarios,
    add_json_option,
)
from kvmclock.errors import UsageError


def scenarios_json(scenarios: dict[str, Any]) -> dict[str, Any]:
    """The document of ``kvmclock scenarios --json`` (schema ``kvmclock.scenarios`` version 1,
    python/kvmclock/schemas/scenarios.schema.json): one object per built-in scenario with its
    name, one-line description and its file's ``[params]``, each with its default, type,
    bounds, choices and doc (the unit is in each name, e.g. ``duration_s``, ``tsc_khz``)."""
    return {
        "schema": "kvmclock.scenarios",
        "schema_version": 1,
        "scenarios": [
            {
                "name": name,
                "description": getattr(s, "description", ""),
                "params": [
                    {
                        "name": p.name,
                        "default": p.default,
                        "type": p.type,
                        "min": p.min,
                        "max": p.max,
                        "exclusive_min": p.exclusive_min,
                        "choices": list(p.choices) if p.choices is not None else None,
                        "doc": p.doc,
                    }
                    for p in s.file.params.values()
                ],
            }
            for name, s in scenarios.items()
        ],
    }


def cmd_scenarios(args: argparse.Namespace) -> int:
    scenarios = _scenarios()
    if args.json is not None:
        _check_output_path(args.json, "--json")
    if args.schema:
        from kvmclock.scenario import schema_text

        sys.stdout.write(schema_text())
        return EXIT_OK
    if args.show is not None:
        if args.show not in scenarios:
            raise UsageError(
                f"scenarios: --show {args.show!r}: no such built-in scenario; choose one of: "
                + ", ".join(scenarios)
            )
        sys.stdout.write(scenarios[args.show].file.text)
        return EXIT_OK
    if args.json is not None:
        doc = scenarios_json(scenarios)
        _dump_json(doc, args.json, default=repr)
        if args.json == "-":
            return EXIT_OK
    width = max((len(n) for n in scenarios), default=0)
    for name, s in scenarios.items():
        print(f"{name:<{width}}  {getattr(s, 'description', '')}")
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock scenarios``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "scenarios", help="list the built-in scenarios",
        description="List the built-in scenarios, one line each; print one's TOML file (a "
        "starting point for your own: docs/scenarios.md) or the JSON Schema of the format.",
        epilog="examples:\n  kvmclock scenarios\n"
        "  kvmclock scenarios --show tsc-sync > my.toml\n"
        "  kvmclock simulate --scenario my.toml\n"
        "  kvmclock scenarios --schema > scenario.schema.json", formatter_class=fmt,
    )
    g = s.add_mutually_exclusive_group()
    add_json_option(g, "the list")
    g.add_argument("--show", metavar="NAME", help="print the scenario file of built-in NAME")
    g.add_argument("--schema", action="store_true",
                   help="print the JSON Schema of scenario files (for editors)")
    s.set_defaults(func=cmd_scenarios)

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
        doc = [
            {
                "name": name,
                "description": getattr(s, "description", ""),
                "params": {k: v for k, v in dict(getattr(s, "params", {}) or {}).items()},
            }
            for name, s in scenarios.items()
        ]
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

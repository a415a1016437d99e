"""``kvmclock profiles``: the profiles and their behaviour switches."""

from __future__ import annotations

import argparse
from typing import Any

from kvmclock.cli.common import EXIT_OK, _dump_json
from kvmclock.errors import UsageError


def cmd_profiles(args: argparse.Namespace) -> int:
    from kvmclock.profiles import PROFILES, profiles_json, profiles_table

    if args.name is not None and args.name not in PROFILES:
        raise UsageError(f"profiles: unknown profile {args.name!r}; choose one of: "
                         + ", ".join(PROFILES))
    names = list(PROFILES) if args.name is None else [args.name]
    if args.json:
        _dump_json(profiles_json(names), args.json)
    else:
        print(profiles_table(names))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock profiles``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "profiles", help="the profiles and their behaviour switches",
        description="Every behaviour switch (name, values, the kernel release and commit "
        "that brought the newer behaviour, what it does) and its value in each profile. "
        "simulate and verify take --profile NAME[,NAME...] and --set SWITCH=VALUE.",
        epilog="examples:\n  kvmclock profiles\n  kvmclock profiles upstream --json -\n"
        "  kvmclock simulate --profile upstream --set masterclock_request=on_update",
        formatter_class=fmt,
    )
    s.add_argument("name", nargs="?", help="show only this profile")
    s.add_argument("--json", nargs="?", const="-", metavar="PATH|-",
                   help="write JSON (to stdout without PATH or with '-')")
    s.set_defaults(func=cmd_profiles)

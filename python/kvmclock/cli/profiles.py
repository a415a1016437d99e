"""``kvmclock profiles``: the profiles and their behaviour switches."""

from __future__ import annotations

import argparse
from typing import Any

from kvmclock.cli.common import EXIT_OK, _check_output_path, _dump_json, add_json_option
from kvmclock.errors import UsageError


def cmd_profiles(args: argparse.Namespace) -> int:
    from kvmclock.profiles import PROFILES, profiles_json, profiles_table

    if args.name is not None and args.name not in PROFILES:
        raise UsageError(f"profiles: unknown profile {args.name!r}; choose one of: "
                         + ", ".join(PROFILES))
    if args.name is None and args.json in PROFILES:
        # `profiles --json upstream`: --json took the profile's name as its PATH
        raise UsageError(f"profiles: --json {args.json}: to show profile {args.json} as JSON "
                         f"write `kvmclock profiles {args.json} --json` (for a file of that "
                         f"name: --json ./{args.json})")
    if args.json is not None:
        _check_output_path(args.json, "--json")
    names = list(PROFILES) if args.name is None else [args.name]
    if args.json is not None:
        _dump_json(profiles_json(names), args.json)
    if args.json != "-":
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
    add_json_option(s, "the switches and profiles")
    s.set_defaults(func=cmd_profiles)

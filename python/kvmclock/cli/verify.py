"""``kvmclock verify``: model vs the real /dev/kvm on built-in scenarios."""

from __future__ import annotations

import argparse
from typing import Any

from kvmclock.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    _add_profile_args,
    _check_output_path,
    _dump_json,
    _profiles_arg,
    add_json_option,
)
from kvmclock.errors import UsageError


def verify_json(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The document of ``kvmclock verify --json`` (schema ``kvmclock.verify`` version 1,
    python/kvmclock/schemas/verify.schema.json): ``ok`` (every profile's judgement passed),
    ``profiles_matching`` (the profiles whose judgement passed) and ``runs``, one
    :func:`kvmclock.real.verify.verify_run` result per ``--profile``, in the order given."""
    return {
        "schema": "kvmclock.verify",
        "schema_version": 1,
        "ok": all(bool(r.get("ok")) for r in results),
        "profiles_matching": [r["profile"]["name"] for r in results if r.get("ok")],
        "runs": results,
    }


def cmd_verify(args: argparse.Namespace) -> int:
    from kvmclock.real.capture import real_run
    from kvmclock.real.verify import format_verify, verify_run

    profiles = _profiles_arg(args, "verify")
    unknown = [n for n in (args.scenario or []) if n != "clock-relations"]
    if unknown:
        raise UsageError(f"verify: unknown scenario {unknown[0]!r}; choose: clock-relations")
    if args.json is not None:
        _check_output_path(args.json, "--json")
    real, trace_status = real_run(None)  # one real capture, judged under every profile
    results = [verify_run(real, trace_status=trace_status, profile=p) for p in profiles]
    matching = [r["profile"]["name"] for r in results if r.get("ok")]
    if args.json is not None:
        _dump_json(verify_json(results), args.json, default=str)
    if args.json != "-":
        print("\n\n".join(
            (f"== profile {r['profile']['name']} (Linux {r['profile']['kernel']})\n"
             if len(results) > 1 else "") + format_verify(r)
            for r in results
        ))
        if len(results) > 1:
            print("\nthis capture matches: " + (", ".join(matching) if matching else
                                                 "none of the profiles"))
    return EXIT_OK if all(r.get("ok") for r in results) else EXIT_FAILED


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock verify``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "verify", help="model vs the real /dev/kvm on built-in scenarios",
        description="Run a scripted scenario on the real /dev/kvm, replay the same inputs on "
        "the model (profile upstream by default), and report every relation as held, "
        "departed (with the machine evidence that excuses it) or failed. Exit 1 when a "
        "relation failed, 3 when /dev/kvm is missing.",
        epilog="example:\n  kvmclock verify --json", formatter_class=fmt,
    )
    s.add_argument("--scenario", action="append", metavar="NAME",
                   help="run only this scenario (repeatable)")
    _add_profile_args(s, default="upstream")
    add_json_option(s, "the report")
    s.set_defaults(func=cmd_verify)

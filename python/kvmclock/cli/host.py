"""``kvmclock host``: what this computer is and what KVM would do here."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from kvmclock.cli.common import EXIT_OK, _check_output_path, _dump_json, _spinner, add_json_option

MAX_SECONDS = 3600.0


def _seconds_arg(text: str) -> float:
    """``--seconds S``: a finite number of seconds in (0, 3600]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seconds must be a number of seconds in (0, {MAX_SECONDS:g}], got {text!r}"
        ) from None
    if not (math.isfinite(v) and 0 < v <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(
            f"--seconds must be in (0, {MAX_SECONDS:g}] seconds, got {text}"
        )
    return v


def cmd_host(args: argparse.Namespace) -> int:
    from kvmclock.real.host import format_host_report, host_report

    if args.json:
        _check_output_path(args.json, "--json")
    with _spinner(f"measuring kvm-clock drift over {args.seconds:g} s", sys.stderr):
        report = host_report(args.seconds)
    if args.json:
        _dump_json(report, args.json)
    if args.json != "-":
        print(format_host_report(report))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock host``: its subparser (options, help texts) under ``subparsers``."""
    from kvmclock.real.host import BRACKET_READS, DEFAULT_SECONDS

    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "host", help="what this computer is and what KVM would do here",
        description="Clocksource, TSC flags and kHz, the KVM guest pvclock page decoded and "
        "checked against get_time_scale, kvm-clock's drift against CLOCK_MONOTONIC_RAW and "
        "CLOCK_BOOTTIME with its error bound, /dev/kvm capabilities, and whether a guest "
        f"here would get masterclock. The drift comes from {BRACKET_READS} bracketed reads "
        "(clock, kvm-clock, clock) at the start and at the end of --seconds, the narrowest "
        "of each kept; the bound is +-(w0 + w1) / dt for windows w0, w1 over dt, and a "
        "drift smaller than its bound is reported as below resolution.",
        epilog="examples:\n  kvmclock host\n  kvmclock host --seconds 30\n"
        "  kvmclock host --json host.json",
        formatter_class=fmt,
    )
    s.add_argument("--seconds", type=_seconds_arg, default=DEFAULT_SECONDS, metavar="S",
                   help=f"length of the drift measurement in seconds, in (0, {MAX_SECONDS:g}] "
                   f"(default {DEFAULT_SECONDS:g}); the bound shrinks as 1/S")
    add_json_option(s, "the report")
    s.set_defaults(func=cmd_host)

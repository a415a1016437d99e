"""``kvmclock host``: what this computer is and what KVM would do here."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmclock.cli.common import EXIT_OK


def cmd_host(args: argparse.Namespace) -> int:
    from kvmclock.real.host import format_host_report, host_report

    report = host_report()
    print(json.dumps(report, indent=2, default=str) if args.json
          else format_host_report(report))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock host``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "host", help="what this computer is and what KVM would do here",
        description="Clocksource, TSC flags and kHz, the KVM guest pvclock page decoded and "
        "checked against get_time_scale, /dev/kvm capabilities.",
        epilog="example:\n  kvmclock host --json", formatter_class=fmt,
    )
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_host)

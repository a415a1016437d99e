"""The argparse tree of the ``kvmclock`` command: the top-level parser, and one subparser per
command, each registered by its module's ``add_parser``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from kvmclock.cli import (
    decode,
    drift,
    host,
    profiles,
    scale,
    scenarios,
    simulate,
    sweep,
    trace,
    verify,
)
from kvmclock.errors import UsageError

#: the command modules, in the order ``kvmclock --help`` lists them
COMMAND_MODULES = (
    simulate, sweep, profiles, scenarios, scale, drift, decode, trace, host, verify
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised, printed by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> argparse.Namespace:
        """As argparse, but unrecognized arguments after a command point at that command's
        own help (``kvmclock drift --help``): argparse reports them from the top parser."""
        ns: argparse.Namespace
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(ns, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            raise UsageError(f"{prog}: unrecognized arguments: {' '.join(extras)} "
                             f"(see '{prog} --help')")
        return ns


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kvmclock")
    except Exception:  # not installed as a distribution (source tree on sys.path)
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every command (each ``--help`` ends with an example)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog="kvmclock",
        description="An executable, bit-exact model of the Linux x86 KVM clock.",
        epilog="example:\n  kvmclock simulate        # nested scenario: gtod, series, upstream\n"
        "  kvmclock simulate --json run.json --plot run.png\n"
        "\nexit codes:\n"
        "  0    ok (a livelock the model detects, or a frequency KVM refuses, is a\n"
        "       result: reported, exit 0)\n"
        "  1    a check failed: verify (a relation did not hold), decode --strict (an\n"
        "       invalid field); no other command exits 1\n"
        "  2    bad arguments or input (checked before any work starts)\n"
        "  3    a real resource (/dev/kvm, the pvclock page, tracefs) is missing\n"
        "  70   internal error (a bug): please report it with the command line and\n"
        "       the --debug output\n"
        "  130  interrupted",
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"kvmclock {_version()}")
    p.add_argument("--debug", action="store_true",
                   help="on an internal error, print the full traceback")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    # --debug after the command too (kvmclock simulate --debug); SUPPRESS keeps a --debug
    # given before the command
    for command_parser in sub.choices.values():
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="on an internal error, print the full traceback")
    return p



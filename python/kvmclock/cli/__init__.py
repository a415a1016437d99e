"""The ``kvmclock`` command (also ``python -m kvmclock``).

Commands: simulate, sweep, profiles, drift, scenarios, scale, decode, trace, host, verify. Exit
codes (one line on stderr for every failure, never a traceback unless ``--debug``):

* 0 success. A livelock the model detects (scenario ``patch09-hang``) is a result: the run
  stops there, reports it (``livelock`` in the JSON, a LIVELOCK key moment) and exits 0. So is
  a guest TSC frequency KVM refuses (``scale``, ``drift``: "refused (-EINVAL): why").
* 1 a check failed: ``verify`` found a relation or field that did not hold, or ``decode
  --strict`` found an invalid field (no other command exits 1).
* 2 bad arguments or bad input (a file, stdin, an output path), detected before any work
  starts: every command validates its arguments and inputs first and raises
  :class:`kvmclock.errors.UsageError`. The only late exit 2 is an output file that fails to
  be written at the end (disk full, a path removed meanwhile). ``--plot`` without matplotlib
  is an exit 2 too, checked before simulating.
* 3 a real resource (/dev/kvm, the pvclock page, tracefs) is missing
  (:class:`kvmclock.errors.RealResourceUnavailable`).
* 70 (``EX_SOFTWARE`` of sysexits.h) an internal error: any other exception is a bug in
  kvmclock; the line says so and asks for a report with the command line and the ``--debug``
  output (``--debug``, before or after the command, prints the traceback).
* 130 interrupted (Ctrl-C).

The commands live in one module each (``kvmclock.cli.simulate``, ``.sweep``, ``.scenarios``,
``.scale``, ``.drift``, ``.decode``, ``.trace``, ``.host``, ``.verify``, ``.profiles``: the
``cmd_*`` function and its subparser), the argparse tree in :mod:`kvmclock.cli.parser`, the
shared helpers in :mod:`kvmclock.cli.common`. The names below are re-exported for
``kvmclock.cli.NAME``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Sequence

from kvmclock.cli.common import (
    DEFAULT_PROFILES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    U32_MAX,
    U64_MAX,
    _spinner,
)
from kvmclock.cli.decode import (
    PVCLOCK_SIZE,
    TSC_SHIFT_MAX,
    WALL_CLOCK_SIZE,
    _split_records,
    cmd_decode,
    decode_records,
    decode_trace_lines,
    format_decoded,
    parse_hex,
)
from kvmclock.cli.drift import cmd_drift
from kvmclock.cli.host import cmd_host
from kvmclock.cli.parser import build_parser
from kvmclock.cli.profiles import cmd_profiles
from kvmclock.cli.scale import cmd_scale, format_scale, scale_report
from kvmclock.cli.scenarios import cmd_scenarios
from kvmclock.cli.simulate import cmd_simulate
from kvmclock.cli.sweep import cmd_sweep
from kvmclock.cli.trace import cmd_trace
from kvmclock.cli.verify import cmd_verify
from kvmclock.errors import UsageError

__all__ = [
    "DEFAULT_PROFILES",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOFTWARE",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "PVCLOCK_SIZE",
    "TSC_SHIFT_MAX",
    "U32_MAX",
    "U64_MAX",
    "WALL_CLOCK_SIZE",
    "UsageError",
    "_spinner",
    "_split_records",
    "build_parser",
    "cmd_decode",
    "cmd_drift",
    "cmd_host",
    "cmd_profiles",
    "cmd_scale",
    "cmd_scenarios",
    "cmd_simulate",
    "cmd_sweep",
    "cmd_trace",
    "cmd_verify",
    "decode_records",
    "decode_trace_lines",
    "format_decoded",
    "format_scale",
    "main",
    "parse_hex",
    "scale_report",
]


_COMMANDS = (
    "simulate", "sweep", "profiles", "drift", "scenarios", "scale", "decode", "trace", "host",
    "verify",
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _internal_error(exc: BaseException, debug: bool) -> int:
    """An exception no command expects is a bug: one line (traceback only with --debug)."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"kvmclock: internal error (a bug in kvmclock): {type(exc).__name__}: "
          f"{_one_line(str(exc))[:300]}; please report it with the command line and "
          f"`--debug` output", file=sys.stderr)
    return EXIT_SOFTWARE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (never raises). See the
    module docstring for the exit codes."""
    from kvmclock.errors import RealResourceUnavailable

    prog = "kvmclock"
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # until the arguments are parsed
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        debug = bool(getattr(args, "debug", False))
        if getattr(args, "func", None) is None:
            raise UsageError(
                f"{prog}: a command is required: {', '.join(_COMMANDS)} (see '{prog} --help')"
            )
        return int(args.func(args))
    except UsageError as exc:
        msg = _one_line(str(exc))
        if not msg.startswith(prog):
            cmd = msg.split(":", 1)[0]
            msg = f"{prog} {msg}" if cmd in _COMMANDS else f"{prog}: {msg}"
        print(msg, file=sys.stderr)
        return EXIT_USAGE
    except RealResourceUnavailable as exc:
        print(f"{prog}: real resource unavailable: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): stop quietly
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # a detected livelock never gets here: the simulation reports it as a result
        return _internal_error(exc, debug)

"""Shared pieces of the ``kvmclock`` commands: exit codes, output and input helpers, the
progress spinner, argument converters and the ``--profile``/``--set`` options."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TextIO

from typing_extensions import Self

from kvmclock.errors import UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE: internal software error
EXIT_INTERRUPTED = 130

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


def add_json_option(s: argparse._ActionsContainer, what: str) -> None:
    """``--json [PATH|-]`` on a command: ``--json`` alone or ``--json -`` prints ``what`` as
    JSON on stdout instead of the text, ``--json PATH`` writes it to PATH (the text still
    goes to stdout).  Every command spells it this way; ``s`` is a parser or an argument
    group (a mutually exclusive one too)."""
    s.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH|-",
        help=f"{what} as JSON: to PATH, or to stdout with '-' or no value",
    )


def _dump_json(doc: Any, path: str, default: Callable[[Any], Any] | None = None,
               option: str = "--json") -> None:
    """``doc`` as indented JSON to ``path`` (``-`` = stdout), the value of ``option``;
    ``default`` converts what JSON has no type for (as in :func:`json.dumps`)."""
    _write_file(path, json.dumps(doc, indent=2, sort_keys=False, default=default) + "\n",
                option)


def _cannot_write(path: str, option: str | None, exc: OSError) -> UsageError:
    """``cannot write PATH (--option): reason``, as :func:`_check_output_path` words it."""
    where = f" ({option})" if option else ""
    return UsageError(f"cannot write {path}{where}: {exc.strerror or exc}")


def _write_file(path: str, text: str, option: str | None = None) -> None:
    """``text`` to the file ``path``, or to stdout when ``path`` is ``-`` (every output
    option takes ``-``). UsageError when the file cannot be written, naming ``option``."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise _cannot_write(path, option, exc) from exc


def _write_bytes(path: str, data: bytes, option: str | None = None) -> None:
    """``data`` to the file ``path``, or to stdout's binary buffer when ``path`` is ``-``."""
    if path == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise _cannot_write(path, option, exc) from exc


def _check_outputs(
    command: str,
    outputs: Sequence[tuple[str, str | None]],
    paths_checked_by_caller: Sequence[str] = (),
) -> None:
    """Before any work: the output options ``(option, value)`` given (value not None) can be
    written (except the options in ``paths_checked_by_caller``, e.g. one PATH giving a file
    per profile). ``-`` means stdout, which only one of them may use: two are a usage error
    naming both."""
    to_stdout = [option for option, value in outputs if value == "-"]
    if len(to_stdout) > 1:
        both = "both" if len(to_stdout) == 2 else "all"
        raise UsageError(
            f"{command}: {' and '.join(f'{o} -' for o in to_stdout)} would {both} write to "
            f"stdout; give all but one of them a file name (e.g. {to_stdout[-1]} out.file)"
        )
    for option, value in outputs:
        if value is not None and option not in paths_checked_by_caller:
            _check_output_path(value, option)


def _refuse_binary_to_terminal(command: str, option: str, path: str | None) -> None:
    """``--plot -`` (binary data to stdout) when stdout is a terminal: a usage error."""
    if path == "-" and sys.stdout.isatty():
        raise UsageError(
            f"{command}: {option} - would write binary PNG data to the terminal; redirect "
            f"stdout (e.g. {option} - > out.png) or give a file name ({option} out.png)"
        )


def _check_output_path(path: str, option: str) -> None:
    """Before any work: ``path`` (an ``--option`` value) can be created or overwritten, so a
    typo does not cost a whole simulation. Checks without creating anything: not a directory,
    its directory exists, and both are writable (root passes the permission checks)."""
    if path == "-":
        return
    parent = os.path.dirname(os.path.abspath(path))

    def refuse(reason: str) -> NoReturn:
        raise UsageError(f"cannot write {path} ({option}): {reason}")

    if os.path.isdir(path):
        refuse("Is a directory")
    if not os.path.exists(parent):
        refuse("No such file or directory")
    if not os.path.isdir(parent):
        refuse("Not a directory")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        refuse("Permission denied")
    if not os.path.exists(path) and not os.access(parent, os.W_OK | os.X_OK):
        refuse("Permission denied")


def _read_input(source: str, what: str) -> bytes:
    """Bytes of FILE, or of stdin for ``-``."""
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {source}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _spinner(label: str, stream: TextIO, delay_s: float = 1.0) -> Iterator[None]:
    """A one-line progress indicator on ``stream`` for work lasting more than ``delay_s``,
    only when ``stream`` is a terminal; the line is erased at the end."""
    if not stream.isatty():
        yield
        return
    done = threading.Event()
    start = time.monotonic()
    shown = [False]

    def spin() -> None:
        frames = "|/-\\"
        i = 0
        if done.wait(delay_s):
            return
        while not done.is_set():
            stream.write(f"\r{frames[i % 4]} {label} ... {time.monotonic() - start:5.1f} s")
            stream.flush()
            shown[0] = True
            i += 1
            done.wait(0.1)

    th = threading.Thread(target=spin, daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join()
        if shown[0]:
            stream.write("\r\033[K")
            stream.flush()


class _TerminalLine:
    """One status line on ``stream`` (stderr), written only when ``stream`` is a terminal:
    :meth:`show` replaces it, :meth:`close` erases it (a context manager closes it).
    ``clock`` (seconds) and ``every_s`` pace the subclasses' updates."""

    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 0.25,
    ) -> None:
        self.stream = stream
        self.label = label
        self.clock = clock
        self.every_s = every_s
        self.active = bool(stream.isatty())
        self.start = clock()
        self.last: float | None = None
        self.shown = False

    def show(self, text: str) -> None:
        """Replace the line with ``text``."""
        self.stream.write(f"\r{text}\033[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """Erase the line (when it was shown)."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Progress(_TerminalLine):
    """A progress line on ``stream`` (stderr) while a simulation runs, only when ``stream`` is
    a terminal: ``label``, the simulated time reached out of the run's duration (seconds), the
    percentage, and while it runs the speed (simulated seconds per wall second) and the wall
    time left at that speed. Call it with ``(now_ns, duration_ns)`` as the run advances; it
    shows the line once ``delay_s`` of wall time (``clock``, seconds) has passed, then at most
    every ``every_s``; :meth:`close` erases it. Not a terminal: :attr:`callback` is None and nothing
    is written."""

    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        delay_s: float = 0.5,
        every_s: float = 0.25,
    ) -> None:
        super().__init__(stream, label, clock=clock, every_s=every_s)
        self.delay_s = delay_s

    @property
    def callback(self) -> Callable[[int, int], None] | None:
        """The ``progress`` argument of :func:`kvmclock.sim.run_scenario`: None when the
        stream is not a terminal (the run is not cut into steps at all)."""
        return self.update if self.active else None

    def update(self, now_ns: int, duration_ns: int) -> None:
        """The run reached simulated time ``now_ns`` of ``duration_ns`` (ns)."""
        if not self.active:
            return
        t = self.clock()
        if t - self.start < self.delay_s:
            return
        if self.last is not None and t - self.last < self.every_s:
            return
        self.last = t
        pct = now_ns * 100 // duration_ns if duration_ns > 0 else 100
        text = (f"{self.label}: {now_ns / 1e9:.2f} s of {duration_ns / 1e9:g} s simulated "
                f"({pct}%)")
        elapsed = t - self.start
        if 0 < now_ns < duration_ns and elapsed > 0:
            rate = now_ns / 1e9 / elapsed  # simulated s per wall s
            left = (duration_ns - now_ns) / 1e9 / rate
            shown = f"{rate:,.1f}" if rate < 10 else f"{rate:,.0f}"
            text += f", {shown}x real time, about {_fmt_left(left)} left"
        self.show(text)


def _fmt_left(seconds: float) -> str:
    """A wall-time estimate as text: ``0.6 s``, ``42 s``, ``12 min``, ``3.1 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _int_arg(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def conv(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be in {lo}..{hi}, got {v}")
        return v

    return conv


#: the host's TSC scaling hardware (``--scaling`` of scale and drift), as the model's
#: ``TSC_SCALING_CAPS`` names it
SCALINGS = ("vmx", "svm", "none")

#: the longest --duration (s): a year; what a run may cost is bounded by the scenario's own
#: checks (kvmclock.scenario.loader: periodic ticks and samples), which name the key
MAX_DURATION_S = 31_536_000


def _duration_arg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"duration must be seconds, got {text!r}") from None
    if not 0 < v <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(
            f"duration must be in (0, {MAX_DURATION_S}] seconds (a year), got {text}")
    return v


def _scenarios() -> dict[str, Any]:
    from kvmclock import sim

    return dict(sim.SCENARIOS)


def _param_value(text: str) -> int | float | bool | str | None:
    """``--param`` values: int (also 0x), float, true/false, none, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


DEFAULT_PROFILES = "gtod,series,upstream"


def _profiles_arg(
    args: argparse.Namespace, command: str, default: str = DEFAULT_PROFILES
) -> list[Any]:
    """``--profile NAME[,NAME...]`` (``default`` when not given) with every ``--set
    SWITCH=VALUE`` applied: a list of :class:`kvmclock.profiles.Profile`. UsageError names
    the unknown profile, switch or value and lists the valid ones."""
    from kvmclock.profiles import PROFILES, parse_assignments, resolve_profile

    given = args.profile if args.profile is not None else default
    names = [n.strip() for n in str(given).split(",")]
    if any(not n for n in names):
        raise UsageError(f"{command}: --profile {given!r}: empty name; give "
                         f"NAME[,NAME...] from {', '.join(PROFILES)}")
    if len(set(names)) != len(names):
        raise UsageError(f"{command}: --profile {given!r} names a profile twice")
    try:
        changes = parse_assignments(args.set or [])
        return [resolve_profile(n, **changes) for n in names]
    except ValueError as exc:
        raise UsageError(f"{command}: {exc}") from None


def _add_profile_args(s: argparse.ArgumentParser, default: str | None = DEFAULT_PROFILES) -> None:
    shown = default if default is not None else "the scenario's run.profiles, for the built-ins " \
        + DEFAULT_PROFILES
    s.add_argument("--profile", default=default, metavar="NAME[,NAME...]",
                   help=f"profiles to run side by side (default {shown}; "
                   "kvmclock profiles lists them)")
    s.add_argument("--set", action="append", metavar="SWITCH=VALUE",
                   help="flip one behaviour switch in every profile run (repeatable; "
                   "kvmclock profiles lists the switches and their values)")


"""Exception classes of kvmclock; each subclasses the builtin it refines.

``PvclockRetryError`` and ``SeqCountError`` are defined in Rust (``kvmclock._native``,
``create_exception!`` with base ``ValueError``) and re-exported here.
"""

from __future__ import annotations

from kvmclock._native import PvclockRetryError, SeqCountError

__all__ = [
    "KvmclockError",
    "LivelockDetected",
    "ModelLimitExceeded",
    "PvclockRetryError",
    "RealResourceUnavailable",
    "ScenarioError",
    "ScenarioFileError",
    "ScenarioRunError",
    "SeqCountError",
    "TraceParseError",
    "UsageError",
    "count_ids",
]


def count_ids(n: int, noun: str) -> str:
    """What exists, for a message about a CPU/vCPU index out of range: ``"1 vCPU: 0"``,
    ``"4 vCPUs: 0..3"``, ``"no vCPUs"`` (``noun`` singular; ids are 0..n-1)."""
    if n <= 0:
        return f"no {noun}s"
    if n == 1:
        return f"1 {noun}: 0"
    return f"{n} {noun}s: 0..{n - 1}"


class KvmclockError(Exception):
    """Base class of the errors kvmclock defines in Python."""


class UsageError(KvmclockError):
    """Bad command-line arguments or bad input (a file, stdin) found before any work starts:
    the ``kvmclock`` command prints it as one line and exits 2."""


class ScenarioError(KvmclockError, ValueError):
    """An unknown scenario or a bad scenario parameter."""


class ScenarioFileError(ScenarioError):
    """A scenario file (TOML, docs/scenarios.md) that cannot be run.

    The message is one line: the file, where in it (``line N`` for a TOML syntax error, else
    the key path such as ``timeline[3].vm``), what is wrong and what is allowed.  ``file``,
    ``key`` (or None) and ``line`` (or None) hold the parts."""

    def __init__(
        self, file: str, key: str | None, message: str, *, line: int | None = None
    ) -> None:
        self.file = file
        self.key = key
        self.line = line
        where = f"line {line}: " if line is not None else ""
        where += f"{key}: " if key else ""
        super().__init__(f"{file}: {where}{message}")


class ScenarioRunError(ScenarioFileError, UsageError):
    """A timeline entry of a scenario file that passed the file's checks but that KVM, a VMM
    or a recipe refuses when the run reaches it (e.g. ``KVM_SET_TSC_KHZ`` -EINVAL on a
    destination host without TSC scaling, which Firecracker treats as fatal): ``key`` names
    the entry (``timeline[3]``) and the message says when and what refused.  It is bad input
    found late, so it is also a :class:`UsageError` (``kvmclock`` exits 2), never an internal
    error."""


class TraceParseError(KvmclockError, ValueError):
    """Input that cannot be parsed as an ftrace / trace-cmd text trace."""


class LivelockDetected(KvmclockError, RuntimeError):
    """A modelled kernel loop that would spin forever (e.g. patch 09's missing ``do``).

    A detected livelock is a result of the model, not a failure of the program:
    ``kvmclock.sim.run_scenario`` catches it, stops that run and reports it in the run's
    ``livelock`` entry and key moments (``kvmclock simulate`` exits 0). One that escapes to
    the command line is a bug (exit 70)."""


class ModelLimitExceeded(KvmclockError, RuntimeError):
    """A loop of the model would run more iterations than the model allows, where the
    kernel has no such bound and no closed form gives the same result (e.g.
    ``timekeeping_forward_now``'s chunks for a clocksource whose chunks can wrap u64).

    Like a livelock, a detected fault and not a failure of the program:
    ``kvmclock.sim.run_scenario`` catches it, stops that run (``stopped_early``, with
    ``stop_reason`` naming ``where`` and the limit) and records a key moment.  ``where`` is
    the kernel function, ``limit`` the bound that was exceeded, ``needed`` what the input
    asked for, ``level`` the kernel level (-1 when unknown), ``t_ns`` the simulated time."""

    def __init__(
        self, message: str, *, where: str, limit: int, needed: int, level: int, t_ns: int
    ) -> None:
        super().__init__(message)
        self.where = where
        self.limit = limit
        self.needed = needed
        self.level = level
        self.t_ns = t_ns


class RealResourceUnavailable(KvmclockError, OSError):
    """A real resource of this computer (/dev/kvm, the vvar pvclock page, tracefs) is missing."""

"""Running sweep points: :func:`run_point` (one run -> one row, in any process),
:func:`run_points` (a chunk of points -> their rows: one executor task),
:func:`chunk_size_for` (how many points per task) and :func:`make_executor` (a local process
pool, or a Dask ``distributed`` cluster).

``run_point`` and ``run_points`` are module-level functions of picklable
:class:`~kvmclock.sweep.plan.SweepPoint` values, so any :class:`concurrent.futures.Executor`
can run them; a row depends only on its point (plus ``wall_s``), whichever executor ran it and
in whichever chunk.

Why chunks: an executor spends a fixed cost per task in the calling process (with Dask about
5 ms of CPU for the scheduler and client per task), as much as a short run takes; handing each
task several points divides that cost by their number (docs/performance.md, "Sweeps").
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from kvmclock.errors import UsageError

if TYPE_CHECKING:
    from kvmclock.scenario.loader import ScenarioFile
    from kvmclock.sweep.plan import SweepPoint

__all__ = [
    "CHUNKS_PER_WORKER",
    "CONNECT_TIMEOUT_S",
    "DASK_EXTRA",
    "MAX_CHUNK",
    "check_chunk_size",
    "check_workers",
    "chunk_size_for",
    "executor_workers",
    "make_executor",
    "run_point",
    "run_points",
]

#: the optional extra that installs Dask distributed
DASK_EXTRA = "kvmclock[dask]"

#: seconds to wait for a Dask scheduler (``--dask tcp://...``) to answer before giving up
CONNECT_TIMEOUT_S = 5

#: the automatic chunk size aims at this many chunks per worker (so a worker that finishes
#: early finds more work: the load stays balanced when runs take different times) ...
CHUNKS_PER_WORKER = 4
#: ... and never puts more points than this in one chunk (a chunk whose worker dies is run
#: again whole on resume, and a chunk already handed to a worker runs to its end)
MAX_CHUNK = 16

#: sweeps (by token) a KeyboardInterrupt stopped in this process: their later chunks run nothing
_INTERRUPTED: set[str] = set()

#: scenario files parsed in this process, by the sha256 of their text
_FILES: dict[str, ScenarioFile] = {}


def _scenario_file(point: SweepPoint) -> ScenarioFile:
    """The point's scenario file (parsed once per process): its carried text, else the
    built-in of that name, else the file at that path; a file whose text no longer has the
    point's sha256 is refused (the sweep was planned for other text)."""
    sf = _FILES.get(point.scenario_sha256)
    if sf is not None:
        return sf
    from kvmclock.scenario.loader import loads
    from kvmclock.sweep.plan import load_scenario

    sf = (
        loads(point.scenario_text, point.scenario)
        if point.scenario_text is not None
        else (load_scenario(point.scenario))
    )
    sha = hashlib.sha256(sf.text.encode("utf-8")).hexdigest()
    if sha != point.scenario_sha256:
        raise ValueError(
            f"scenario {point.scenario}: its text changed since the sweep was planned "
            f"(sha256 {sha[:16]}..., planned {point.scenario_sha256[:16]}...)"
        )
    _FILES[sha] = sf
    return sf


def run_point(point: SweepPoint) -> dict[str, Any]:
    """Run one point with :func:`kvmclock.sim.run_scenario` and return its table row
    (:func:`kvmclock.sweep.metrics.row_from_run`; ``wall_s`` is the run's wall-clock time in
    seconds).  Never raises for a failed run: any exception becomes an error row
    (:func:`kvmclock.sweep.metrics.error_row`); KeyboardInterrupt and SystemExit propagate."""
    from kvmclock.sweep.metrics import error_row, row_from_run

    t0 = time.perf_counter()
    try:
        from kvmclock.sim import run_scenario
        from kvmclock.sweep.plan import resolve_point_profile

        sf = _scenario_file(point)
        profile = resolve_point_profile(point.profile)
        params: dict[str, Any] = dict(point.params)
        run = run_scenario(sf, profile, point.seed, **params)
    except Exception as exc:
        return error_row(point, exc, time.perf_counter() - t0)
    return row_from_run(point, run, time.perf_counter() - t0)


def run_points(points: Sequence[SweepPoint], token: str = "") -> list[dict[str, Any]]:
    """Run a chunk of points, one after the other, with :func:`run_point`: row ``i`` is the
    row of ``points[i]`` (a failed run is an error row; the other points still run).

    A KeyboardInterrupt in this process (Ctrl-C reaching a pool's worker) ends the chunk:
    the rows finished so far are returned (fewer rows than points: the caller records the
    rest as lost, to run again on resume), and the later chunks of the same sweep (same
    ``token``, a string the caller makes unique per sweep) run nothing in this process; other
    sweeps are not affected."""
    rows: list[dict[str, Any]] = []
    if token and token in _INTERRUPTED:
        return rows
    try:
        for p in points:
            rows.append(run_point(p))
    except KeyboardInterrupt:
        if token:
            _INTERRUPTED.add(token)
    return rows


def check_chunk_size(chunk_size: int | None) -> None:
    """UsageError unless ``chunk_size`` is None (automatic) or a count >= 1."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise UsageError(
            f"chunk_size={chunk_size!r}: give a number of points per task >= 1, or None (automatic)"
        )


def chunk_size_for(points: int, workers: int) -> int:
    """The automatic number of points per executor task for ``points`` points on
    ``workers`` workers: enough chunks for about :data:`CHUNKS_PER_WORKER` per worker, at
    most :data:`MAX_CHUNK` points each, at least 1 (never 0, also for no points)."""
    per = math.ceil(points / (CHUNKS_PER_WORKER * max(1, workers)))
    return max(1, min(MAX_CHUNK, per))


def executor_workers(executor: Executor) -> int | None:
    """How many runs ``executor`` runs at once, when it says: the size of a
    :mod:`concurrent.futures` pool, the threads of a Dask client's workers; None when it is
    not known (another kind of executor, or a Dask cluster with no worker yet)."""
    n = getattr(executor, "_max_workers", None)  # ProcessPoolExecutor, ThreadPoolExecutor
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        return n
    client = getattr(executor, "_client", None)  # distributed's ClientExecutor
    nthreads = getattr(client, "nthreads", None)
    if callable(nthreads):
        try:
            total = sum(int(v) for v in nthreads().values())
        except Exception:
            return None
        return total if total >= 1 else None
    return None


def _pool_context() -> Any:
    """fork where there is one (Linux: the workers start at once, with kvmclock already
    imported, and a script needs no ``if __name__ == "__main__"`` guard), else the
    platform's default (spawn: the calling script must have that guard)."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


@contextlib.contextmanager
def _quiet_workers() -> Iterator[None]:
    """While a local Dask cluster starts: its workers log only distributed's errors
    (``DASK_LOGGING__DISTRIBUTED=error`` in their environment, unless set): the warnings of
    the tasks a Ctrl-C cancels mean nothing to a user."""
    env_key = "DASK_LOGGING__DISTRIBUTED"
    env_set = env_key not in os.environ
    if env_set:
        os.environ[env_key] = "error"
    try:
        yield
    finally:
        if env_set:
            os.environ.pop(env_key, None)


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """While a Dask client or cluster closes (also after Ctrl-C, with tasks cancelled and
    workers killed): none of distributed's log records or warnings reach stderr (cancelled
    tasks, closed comms, "Worker process still alive after ..." say nothing to a user)."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_workers(workers: int | None) -> None:
    """UsageError unless ``workers`` is None or a count >= 1."""
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise UsageError(f"workers={workers!r}: give a number of workers >= 1")


def make_executor(
    workers: int | None = None, dask: str | None = None
) -> tuple[Executor, Callable[[], None]]:
    """An executor for :func:`run_point` / :func:`run_points` and the function that shuts it
    down.

    * ``dask`` None: a :class:`~concurrent.futures.ProcessPoolExecutor` of ``workers``
      processes (default ``os.cpu_count()``);
    * ``dask="local"``: a ``distributed.LocalCluster`` of ``workers`` (default 2) worker
      processes with one thread each, and its client's executor; the closer stops both;
    * ``dask="tcp://host:port"`` (any scheduler address): a client of that running
      scheduler and its executor (``workers`` is ignored: the cluster has its own); the
      closer closes the client, not the cluster; a scheduler that does not answer within
      :data:`CONNECT_TIMEOUT_S` seconds is a UsageError saying so.

    UsageError when Dask is asked for but not installed (naming the extra
    ``kvmclock[dask]``) or ``workers`` is not a count >= 1."""
    check_workers(workers)
    if dask is None:
        pool = ProcessPoolExecutor(
            max_workers=workers or os.cpu_count() or 1, mp_context=_pool_context()
        )

        def close_pool() -> None:
            pool.shutdown(wait=True, cancel_futures=True)

        return pool, close_pool
    try:
        distributed: Any = importlib.import_module("distributed")
    except ImportError:
        raise UsageError(
            f"--dask {dask}: Dask distributed is not installed; pip install '{DASK_EXTRA}'"
        ) from None
    if dask == "local":
        with _quiet_workers():
            cluster = distributed.LocalCluster(
                n_workers=workers or 2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # any free port: never clash with a running cluster
                # the workers ignore SIGINT: Ctrl-C at the terminal stops only this process,
                # which closes the cluster (no traceback from every worker)
                preload=["kvmclock.sweep._dask_worker"],
            )
            client = distributed.Client(cluster)

        def close_local() -> None:
            with _quiet_dask():
                client.close()
                cluster.close()

        return client.get_executor(pure=False), close_local
    try:
        client = distributed.Client(dask, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(
            f"--dask {dask}: cannot reach a Dask scheduler there within {CONNECT_TIMEOUT_S} s "
            f"({exc}); give 'local' or a scheduler address such as tcp://host:8786"
        ) from None

    def close_client() -> None:
        with _quiet_dask():
            client.close()

    return client.get_executor(pure=False), close_client

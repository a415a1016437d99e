"""Running sweep points: :func:`run_point` (one run -> one row, in any process) and
:func:`make_executor` (a local process pool, or a Dask ``distributed`` cluster).

``run_point`` is a module-level function of a picklable :class:`~kvmclock.sweep.plan.SweepPoint`,
so any :class:`concurrent.futures.Executor` can run it; its row depends only on the point
(plus ``wall_s``), whichever executor ran it.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from kvmclock.errors import UsageError

if TYPE_CHECKING:
    from kvmclock.scenario.loader import ScenarioFile
    from kvmclock.sweep.plan import SweepPoint

__all__ = ["DASK_EXTRA", "check_workers", "make_executor", "run_point"]

#: the optional extra that installs Dask distributed
DASK_EXTRA = "kvmclock[dask]"

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


def _pool_context() -> Any:
    """fork where there is one (Linux: the workers start at once, with kvmclock already
    imported, and a script needs no ``if __name__ == "__main__"`` guard), else the
    platform's default (spawn: the calling script must have that guard)."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def check_workers(workers: int | None) -> None:
    """UsageError unless ``workers`` is None or a count >= 1."""
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise UsageError(f"workers={workers!r}: give a number of workers >= 1")


def make_executor(
    workers: int | None = None, dask: str | None = None
) -> tuple[Executor, Callable[[], None]]:
    """An executor for :func:`run_point` and the function that shuts it down.

    * ``dask`` None: a :class:`~concurrent.futures.ProcessPoolExecutor` of ``workers``
      processes (default ``os.cpu_count()``);
    * ``dask="local"``: a ``distributed.LocalCluster`` of ``workers`` (default 2) worker
      processes with one thread each, and its client's executor; the closer stops both;
    * ``dask="tcp://host:port"`` (any scheduler address): a client of that running
      scheduler and its executor (``workers`` is ignored: the cluster has its own); the
      closer closes the client, not the cluster.

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
        cluster = distributed.LocalCluster(
            n_workers=workers or 2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never clash with a running cluster
        )
        client = distributed.Client(cluster)

        def close_local() -> None:
            client.close()
            cluster.close()

        return client.get_executor(pure=False), close_local
    try:
        client = distributed.Client(dask)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(
            f"--dask {dask}: cannot reach a Dask scheduler there ({exc}); "
            "give 'local' or a scheduler address such as tcp://host:8786"
        ) from None

    def close_client() -> None:
        client.close()

    return client.get_executor(pure=False), close_client

"""``kvmclock.sweep.run``: a sweep from Python (a notebook), and ``summary`` of its table.

>>> import kvmclock.sweep as sweep
>>> t = sweep.run("restore-shelf", grid={"shelf_s": [1, 10, 60]}, seeds=2,
...               out="shelf.parquet")                     # doctest: +SKIP
>>> t.to_pandas().plot(x="param.shelf_s", y="max_abs_monotonic_jump_ns")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import TYPE_CHECKING, Any

from kvmclock.errors import UsageError
from kvmclock.sweep.execute import (
    check_chunk_size,
    check_workers,
    chunk_size_for,
    executor_workers,
    make_executor,
    run_point,
    run_points,
)
from kvmclock.sweep.metrics import PARAM_PREFIX, error_row
from kvmclock.sweep.plan import SweepPoint, expand, show_value
from kvmclock.sweep.store import (
    Journal,
    check_out,
    check_writable,
    journal_path,
    read_journal,
    read_rows,
    require_pyarrow,
    to_table,
    write_rows,
)

if TYPE_CHECKING:
    import pyarrow

    from kvmclock.profiles import Profile

__all__ = [
    "EXECUTOR_ERROR",
    "DroppedRowsWarning",
    "Progress",
    "SweepInterrupted",
    "format_summary",
    "run",
    "summary",
]

#: livelocked runs and error rows :func:`format_summary` lists, then a count of the rest
SUMMARY_LIST = 10

#: prefix of the error of a row whose run the executor lost (a worker died, the pool broke):
#: such rows are run again when the sweep is resumed
EXECUTOR_ERROR = "executor: "

#: tasks (chunks of points) in flight at once on a Dask cluster or a given executor; a local
#: pool keeps 4 per worker in flight
REMOTE_WINDOW = 4096

#: workers assumed for the automatic chunk size when the executor does not say how many it
#: has (:func:`~kvmclock.sweep.execute.executor_workers`): many, so chunks stay small
UNKNOWN_WORKERS = 64

#: ``progress(done, total)``: called after each run of this call finishes (``done`` of
#: ``total`` runs to do now; the runs already in the table are not counted); the runs of one
#: chunk are counted one by one as the chunk finishes
Progress = Callable[[int, int], None]


class SweepInterrupted(KeyboardInterrupt):
    """The KeyboardInterrupt :func:`run` raises after Ctrl-C, once it has written what it
    kept: ``out`` (the table's path, or None), ``rows`` (the rows written, or that the table
    holds without ``out``), ``ran`` (of those, the runs that finished in this call), ``lost``
    (rows of runs the interrupt cut short, marked ``executor:`` and run again on resume) and
    ``before`` (rows that were already there)."""

    def __init__(self, out: str | None, rows: int, ran: int, lost: int, before: int) -> None:
        super().__init__(f"sweep interrupted: {rows} rows kept")
        self.out = out
        self.rows = rows
        self.ran = ran
        self.lost = lost
        self.before = before


def _resumable(row: Mapping[str, Any]) -> bool:
    err = row.get("error")
    return not (isinstance(err, str) and err.startswith(EXECUTOR_ERROR))


class DroppedRowsWarning(UserWarning):
    """:func:`run` warns with this before it runs anything when ``out`` (or its journal)
    holds rows that are not points of this sweep: the table it writes keeps only this
    sweep's runs, so ``count`` rows (distinct run ids) of ``out`` are dropped."""

    def __init__(self, out: str, count: int) -> None:
        rows = "1 row" if count == 1 else f"{count} rows"
        super().__init__(f"{out}: {rows} not in this sweep dropped (the table keeps only "
                         "this sweep's runs)")
        self.out = out
        self.count = count


def _previous(out: str, wanted: set[str]) -> tuple[dict[str, dict[str, Any]], int]:
    """Rows of ``out`` and then its journal (the journal wins) that belong to the plan, and
    the number of distinct run ids there that do not (dropped when the table is written)."""
    done: dict[str, dict[str, Any]] = {}
    others: set[str] = set()
    if os.path.exists(out):
        try:
            old = read_rows(out)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"--out {out}: exists but cannot be read as a sweep table ({exc}); "
                "give another path or remove it"
            ) from None
        if any("run_id" not in r or "status" not in r for r in old):
            raise UsageError(
                f"--out {out}: exists and is not a sweep table (no run_id and status "
                "columns); give another path or remove it"
            )
        for r in old:
            if r.get("run_id") not in wanted:
                others.add(str(r.get("run_id")))
            elif _resumable(r):
                done[str(r["run_id"])] = r
    for r in read_journal(journal_path(out)):
        if r.get("run_id") not in wanted:
            others.add(str(r.get("run_id")))
        elif _resumable(r):
            done[str(r["run_id"])] = r
    return done, len(others)


def _chunks(todo: list[SweepPoint], size: int) -> Iterator[list[SweepPoint]]:
    """``todo`` in consecutive slices of ``size`` points (plan order)."""
    for i in range(0, len(todo), size):
        yield todo[i : i + size]


def _execute(
    todo: list[SweepPoint],
    executor: Executor,
    on_row: Callable[[dict[str, Any]], None],
    window: int,
    chunk_size: int,
    pending: dict[Future[list[dict[str, Any]]], list[SweepPoint]],
) -> None:
    """Run ``todo`` on ``executor`` in tasks of ``chunk_size`` points
    (:func:`~kvmclock.sweep.execute.run_points`), at most ``window`` tasks in flight;
    ``on_row`` for every row of a finished task, in plan order within it, tasks in completion
    order.  An exception of the executor itself (a worker died) makes every point of its task
    an error row prefixed :data:`EXECUTOR_ERROR`, and so does a point its task did not run
    (the worker was interrupted); a failed run is its own error row and never costs the other
    rows of its task.  ``pending`` (given empty) holds the tasks in flight, and a finished
    task until all its rows are recorded; on any exit the tasks not started are cancelled
    and the others stay in it (:func:`_keep_cut_short` records their rows)."""
    token = uuid.uuid4().hex  # this sweep, for run_points' interrupt bookkeeping
    it = _chunks(todo, chunk_size)
    try:
        while True:
            while len(pending) < window:
                chunk = next(it, None)
                if chunk is None:
                    break
                pending[executor.submit(run_points, chunk, token)] = chunk
            if not pending:
                return
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                chunk = pending[fut]  # stays in pending until its rows are recorded
                try:
                    rows = fut.result()
                    lost = f"{EXECUTOR_ERROR}KeyboardInterrupt: the worker was interrupted"
                except Exception as exc:
                    rows = []
                    lost = f"{EXECUTOR_ERROR}{type(exc).__name__}: {exc}"
                for i, p in enumerate(chunk):
                    on_row(rows[i] if i < len(rows) else error_row(p, lost, 0.0))
                del pending[fut]
    finally:
        for fut in pending:
            fut.cancel()


def _keep_cut_short(
    pending: Mapping[Future[list[dict[str, Any]]], list[SweepPoint]],
    record: Callable[[dict[str, Any]], None],
) -> None:
    """After an interrupted sweep (the executor closed, which for a local pool waits for the
    tasks its workers were running, or left as it was): ``record`` the rows of every task in
    ``pending`` that finished: whole (Ctrl-C reached only this process: the workers ended
    their chunks) or cut short by a KeyboardInterrupt in its worker (fewer rows than points:
    the runs that finished before it).  Tasks still running, cancelled or failed are dropped,
    as single runs in flight are; nothing more is waited for."""
    for fut in pending:
        if not fut.done() or fut.cancelled() or fut.exception() is not None:
            continue
        for r in fut.result():
            record(r)


def run(
    scenario: str | os.PathLike[str],
    *,
    grid: Mapping[str, Sequence[Any]] | Iterable[str] | None = None,
    ranges: Mapping[str, str] | Iterable[str] | None = None,
    seeds: int | Iterable[int] = 1,
    profiles: str | Profile | Iterable[str | Profile] | None = None,
    out: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    dask: str | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    table: bool = True,
    chunk_size: int | None = None,
) -> pyarrow.Table | list[dict[str, Any]]:
    """Run a sweep: every point of :func:`~kvmclock.sweep.plan.expand` (``scenario``,
    ``grid``, ``ranges``, ``seeds``, ``profiles``: see there) and return its table, one row
    per point in plan order (:mod:`kvmclock.sweep.metrics` defines the columns): a pyarrow
    Table, or the rows as dicts with ``table=False``.

    Where: ``executor`` (any :class:`concurrent.futures.Executor`; not shut down here), else
    ``dask`` (``"local"`` or a scheduler address: :func:`~kvmclock.sweep.execute.make_executor`),
    else ``workers=1`` runs in this process, else a local process pool of ``workers``
    (default the CPU count).  Rows are the same whichever runs them (``wall_s`` aside).

    ``chunk_size``: points per executor task (each task runs its points one after the
    other and returns their rows together); None (the default) chooses it from the number of
    points and of workers: about 4 tasks per worker, at most 16 points per task
    (:func:`~kvmclock.sweep.execute.chunk_size_for`; an executor that does not say how many
    workers it has counts as 64).  Chunks cut the executor's fixed cost per task (Dask: about
    5 ms of CPU in the calling process), which matters for runs of tens of milliseconds; 1
    submits every point alone.  It changes neither the rows nor their order; with
    ``workers=1`` (no executor) it is not used.

    ``out``: the table's path (``.parquet``, ``.csv`` or ``.jsonl``); runs already in it or
    in its journal are skipped (resume), new rows go to the journal as they finish and the
    table is rewritten at the end, also on KeyboardInterrupt (Ctrl-C), which is then
    raised again as :class:`SweepInterrupted` (a KeyboardInterrupt that says how many rows
    were kept; :mod:`kvmclock.sweep.store`): the rows of every finished chunk are kept, a
    local pool's workers first end the chunks they hold (Ctrl-C that reached only this
    process), and a chunk a worker was running when Ctrl-C reached it loses only its
    unfinished runs.  Before the first run, the temporary file and the journal next to
    ``out`` are created and removed (UsageError naming ``--out`` when they cannot be); a
    later failure to write the table or the journal is a UsageError that says where the
    journal with the finished runs is.
    ``progress(done, total)`` is called after every run of this call (``total`` = runs to do
    now).  Bad arguments raise before
    anything runs (ScenarioError / ValueError / UsageError naming what is valid)."""
    points = expand(scenario, grid, ranges, seeds, profiles)
    if table:
        require_pyarrow("kvmclock.sweep.run(table=True)")
    out_path = check_out(out) if out is not None else None
    if out_path is not None:
        check_writable(out_path)
    if dask is not None and executor is not None:
        raise ValueError("give executor or dask, not both")
    check_workers(workers)
    check_chunk_size(chunk_size)
    ids = [p.id for p in points]
    order = {rid: i for i, rid in enumerate(ids)}
    done, dropped = _previous(out_path, set(ids)) if out_path is not None else ({}, 0)
    if dropped and out_path is not None:
        warnings.warn(DroppedRowsWarning(out_path, dropped), stacklevel=2)
    todo = [p for p in points if p.id not in done]
    journal = Journal(journal_path(out_path)) if out_path is not None else None
    new: dict[str, dict[str, Any]] = {}
    total = len(todo)

    def record(row: dict[str, Any]) -> None:
        new[str(row["run_id"])] = row
        if journal is not None:
            try:
                journal.append(row)
            except OSError as exc:
                raise UsageError(
                    f"--out {out_path}: cannot write the journal {journal.path} "
                    f"({exc.strerror or exc}); the runs finished before are in it, and the "
                    "same command resumes from it once it can be written"
                ) from None

    def on_row(row: dict[str, Any]) -> None:
        record(row)
        if progress is not None:
            progress(len(new), total)

    def finish() -> list[dict[str, Any]]:
        rows = sorted({**done, **new}.values(), key=lambda r: order[str(r["run_id"])])
        if out_path is not None and journal is not None:
            journal.close()
            try:
                write_rows(rows, out_path)
            except OSError as exc:
                where = (
                    f"the {len(new)} runs finished now are in the journal {journal.path}"
                    if os.path.exists(journal.path)
                    else "no journal was written"
                )
                raise UsageError(
                    f"--out {out_path}: cannot write the table ({exc.strerror or exc}); "
                    f"{where}: the same command resumes from it once {out_path} can be written"
                ) from None
            journal.remove()
        return rows

    inflight: dict[Future[list[dict[str, Any]]], list[SweepPoint]] = {}
    try:
        if todo:
            if executor is not None:
                n = executor_workers(executor) or UNKNOWN_WORKERS
                size = chunk_size or chunk_size_for(len(todo), n)
                _execute(todo, executor, on_row, REMOTE_WINDOW, size, inflight)
            elif dask is None and workers == 1:
                for p in todo:
                    on_row(run_point(p))
            else:
                ex, close = make_executor(workers, dask)
                try:
                    n = executor_workers(ex) or workers or os.cpu_count() or 1
                    window = REMOTE_WINDOW if dask is not None else max(16, 4 * n)
                    size = chunk_size or chunk_size_for(len(todo), n)
                    _execute(todo, ex, on_row, window, size, inflight)
                finally:
                    close()  # a local pool first lets its workers end their tasks
    except BaseException as exc:
        try:
            _keep_cut_short(inflight, record)
            kept = finish()
        finally:
            if journal is not None:
                journal.close()
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, SweepInterrupted):
            lost = sum(1 for r in new.values() if not _resumable(r))
            raise SweepInterrupted(
                out_path, len(kept), len(new) - lost, lost, len(kept) - len(new)
            ) from exc
        raise
    rows = finish()
    return to_table(rows) if table else rows


# ------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------
def _rows_of(table_or_path: Any) -> list[dict[str, Any]]:
    if isinstance(table_or_path, (str, os.PathLike)):
        return read_rows(table_or_path)
    if isinstance(table_or_path, list):
        return [dict(r) for r in table_or_path]
    to_pylist = getattr(table_or_path, "to_pylist", None)
    if to_pylist is not None:
        return list(to_pylist())
    raise TypeError(
        f"summary() takes a table path, a pyarrow Table or a list of rows, "
        f"not {type(table_or_path).__name__}"
    )


def _where(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "run_id": row.get("run_id"),
        "scenario": row.get("scenario"),
        "profile": row.get("profile"),
        "seed": row.get("seed"),
        "params": {k[len(PARAM_PREFIX) :]: v for k, v in row.items() if k.startswith(PARAM_PREFIX)},
    }


def _extreme(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], int | None]) -> Any:
    """The first row with the largest non-None ``key`` and that value, or None."""
    best: tuple[int, dict[str, Any]] | None = None
    for r in rows:
        v = key(r)
        if v is not None and (best is None or v > best[0]):
            best = (v, r)
    return best


def _jump(r: Mapping[str, Any]) -> int | None:
    vals = [
        int(r[k])
        for k in ("max_abs_monotonic_jump_ns", "max_abs_realtime_jump_ns")
        if r.get(k) is not None
    ]
    return max(vals) if vals else None


def _col(name: str) -> Callable[[dict[str, Any]], int | None]:
    def get(r: dict[str, Any]) -> int | None:
        v = r.get(name)
        return None if v is None else int(v)

    return get


def summary(table_or_path: Any) -> dict[str, Any]:
    """The extremes of a sweep's table (a path, a pyarrow Table or a list of rows), over the
    rows with status ok, each with the run that produced it (``run_id``, ``scenario``,
    ``profile``, ``seed``, ``params`` by name), the first such row on a tie; None when no
    row has a value:

    * ``runs``: rows; ``by_status``: rows per status (``ok``, ``error``);
    * ``worst_jump``: the largest |lifecycle jump| (``value_ns``, ``clock``:
      ``"monotonic"`` or ``"realtime"``, ``vm``);
    * ``worst_skew``: the largest ``max_skew_ns`` (``value_ns``);
    * ``most_backwards``: the most ``backwards_steps`` (``count``, ``max_step_ns``);
    * ``livelocks``: rows whose run a livelock stopped; ``livelock_runs``: each of them
      (``run_id``, ``profile``, ``seed``, ``params``);
    * ``errors``: every error row (``run_id``, ``profile``, ``seed``, ``params``,
      ``error``)."""
    rows = _rows_of(table_or_path)
    by_status: dict[str, int] = {}
    for r in rows:
        s = str(r.get("status"))
        by_status[s] = by_status.get(s, 0) + 1
    ok = [r for r in rows if r.get("status") == "ok"]
    out: dict[str, Any] = {"runs": len(rows), "by_status": by_status}
    best = _extreme(ok, _jump)
    if best is None:
        out["worst_jump"] = None
    else:
        v, r = best
        mono = r.get("max_abs_monotonic_jump_ns")
        clock = "monotonic" if mono is not None and int(mono) == v else "realtime"
        out["worst_jump"] = {
            "value_ns": v,
            "clock": clock,
            "vm": r.get("worst_jump_vm"),
            **_where(r),
        }
    best = _extreme(ok, _col("max_skew_ns"))
    out["worst_skew"] = None if best is None else {"value_ns": best[0], **_where(best[1])}
    best = _extreme(ok, _col("backwards_steps"))
    out["most_backwards"] = (
        None
        if best is None
        else {
            "count": best[0],
            "max_step_ns": best[1].get("max_backwards_step_ns"),
            **_where(best[1]),
        }
    )
    out["livelocks"] = sum(1 for r in ok if r.get("livelock"))
    out["livelock_runs"] = [
        {k: v for k, v in _where(r).items() if k != "scenario"} for r in ok if r.get("livelock")
    ]
    out["errors"] = [
        {**{k: v for k, v in _where(r).items() if k != "scenario"}, "error": r.get("error")}
        for r in rows
        if r.get("status") == "error"
    ]
    return out


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={show_value(v)}" for k, v in params.items()) or "(defaults)"


def _run_text(e: Mapping[str, Any]) -> str:
    return f"{_params_text(e['params'])}; profile {e['profile']}, seed {e['seed']} [{e['run_id']}]"


def format_summary(s: Mapping[str, Any]) -> str:
    """:func:`summary` as text lines (no trailing newline): parameter values written by
    :func:`~kvmclock.sweep.plan.show_value` whatever the table's format (``1``, ``1.5``,
    ``true``); every livelocked run and error row up to :data:`SUMMARY_LIST` of each, then
    how many more."""
    counts = ", ".join(f"{n} {k}" for k, n in sorted(s["by_status"].items()))
    lines = [f"runs: {s['runs']} ({counts or 'none'})"]
    j = s.get("worst_jump")
    if j is None:
        lines.append("worst jump: none (no lifecycle jump measured)")
    else:
        lines.append(
            f"worst jump: {j['value_ns']} ns ({j['clock']}, vm {j['vm']}) at {_run_text(j)}"
        )
    k = s.get("worst_skew")
    lines.append(
        "worst skew: none" if k is None else f"worst skew: {k['value_ns']} ns at {_run_text(k)}"
    )
    b = s.get("most_backwards")
    if b is None:
        lines.append("most backwards steps: none")
    else:
        lines.append(
            f"most backwards steps: {b['count']} (largest {b['max_step_ns']} ns) at {_run_text(b)}"
        )
    lines.append(f"livelocks: {s.get('livelocks', 0)}")
    livelocked = s.get("livelock_runs") or []
    for e in livelocked[:SUMMARY_LIST]:
        lines.append(f"  {_run_text(e)}")
    if len(livelocked) > SUMMARY_LIST:
        lines.append(f"  ... and {len(livelocked) - SUMMARY_LIST} more")
    errors = s.get("errors") or []
    lines.append(f"errors: {len(errors)}")
    for e in errors[:SUMMARY_LIST]:
        lines.append(f"  {_run_text(e)}: {e['error']}")
    if len(errors) > SUMMARY_LIST:
        lines.append(f"  ... and {len(errors) - SUMMARY_LIST} more")
    return "\n".join(lines)

"""kvmclock.sweep.run in chunks of points per executor task: the table does not depend on the
chunk size, a failed run never costs the other rows of its chunk, progress counts runs, an
interrupt loses only the runs that had not finished."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kvmclock.sweep as sweep
import kvmclock.sweep.execute as execute
import pytest
from kvmclock.sweep.api import EXECUTOR_ERROR, _keep_cut_short
from kvmclock.sweep.execute import (
    CHUNKS_PER_WORKER,
    MAX_CHUNK,
    chunk_size_for,
    executor_workers,
    run_point,
    run_points,
)
from kvmclock.sweep.store import read_rows
from test_sweep_run import N_SMALL, SMALL, _no_wall


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    """The small sweep as a plain loop over its plan, in this process."""
    plan = sweep.expand("tsc-sync", SMALL["grid"], None, SMALL["seeds"], SMALL["profiles"])
    assert len(plan) == N_SMALL
    return [run_point(p) for p in plan]


class Counting(Executor):
    """A ThreadPoolExecutor of 2 threads that counts the tasks submitted to it and the points
    in each."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(2)
        self.sizes: list[int] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.sizes.append(len(args[0]))
        return self.pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def test_automatic_chunk_size() -> None:
    assert (CHUNKS_PER_WORKER, MAX_CHUNK) == (4, 16)
    # ceil(points / (4 * workers)), between 1 and 16
    assert chunk_size_for(1000, 2) == 16  # 125 -> the bound
    assert chunk_size_for(40, 2) == 5
    assert chunk_size_for(33, 1) == 9
    assert chunk_size_for(8, 2) == 1
    assert chunk_size_for(1, 64) == 1
    assert chunk_size_for(0, 2) == 1  # never 0
    assert chunk_size_for(10, 0) == 3  # no workers counts as one


def test_executor_workers() -> None:
    with ThreadPoolExecutor(3) as ex:
        assert executor_workers(ex) == 3
    other = Counting()
    assert executor_workers(other) is None
    other.shutdown()


@pytest.mark.parametrize("size", [1, 3, 8, 50, None])
def test_chunk_sizes_give_the_same_table(size: int | None, reference: list[dict[str, Any]]) -> None:
    ex = Counting()
    try:
        rows = sweep.run("tsc-sync", **SMALL, executor=ex, chunk_size=size, table=False)
    finally:
        ex.shutdown()
    assert isinstance(rows, list)
    assert _no_wall(rows) == _no_wall(reference)
    # Counting says no worker count: automatic = as for 64 workers = 1 point per task
    per = 1 if size is None else size
    assert sorted(ex.sizes, reverse=True) == ex.sizes  # only the last chunk is shorter
    assert len(ex.sizes) == math.ceil(N_SMALL / per) and sum(ex.sizes) == N_SMALL


def test_process_pool_chunks_give_the_same_table(reference: list[dict[str, Any]]) -> None:
    t = sweep.run("tsc-sync", **SMALL, workers=2, chunk_size=3)
    assert _no_wall(t.to_pylist()) == _no_wall(reference)


def test_a_failed_run_keeps_its_chunks_other_rows(tmp_path: Path) -> None:
    grid = {"vcpus": [1, 64, 2], "duration_s": [0.2], "hotplug_at_s": [0.1]}
    alone = sweep.run("tsc-sync", grid=grid, profiles="upstream", workers=1, table=False)
    assert isinstance(alone, list)
    assert [r["status"] for r in alone] == ["ok", "error", "ok"]
    out = tmp_path / "t.jsonl"
    rows = sweep.run(
        "tsc-sync", grid=grid, profiles="upstream", workers=2, chunk_size=3, out=out, table=False
    )
    assert isinstance(rows, list)
    assert _no_wall(rows) == _no_wall(alone)  # one chunk of 3: both ok rows are there
    assert rows[1]["error"].startswith(
        "ScenarioFileError: builtin:tsc-sync.toml: timeline[1].vm: VM 'L1' already has 64"
    )
    assert read_rows(out) == rows


def test_progress_counts_runs() -> None:
    calls: list[tuple[int, int]] = []
    with ThreadPoolExecutor(2) as ex:
        sweep.run(
            "tsc-sync",
            **SMALL,
            executor=ex,
            chunk_size=3,
            table=False,
            progress=lambda d, t: calls.append((d, t)),
        )
    assert calls == [(i, N_SMALL) for i in range(1, N_SMALL + 1)]


@pytest.mark.parametrize("size", [0, -2, True, 1.5])
def test_bad_chunk_size(size: Any) -> None:
    from kvmclock.errors import UsageError

    with pytest.raises(UsageError, match=r"chunk_size=.*give a number of points per task >= 1"):
        sweep.run("tsc-sync", **SMALL, workers=2, chunk_size=size)


def test_ctrl_c_inside_a_chunk_keeps_its_recorded_rows(tmp_path: Path) -> None:
    """Ctrl-C while the rows of a chunk of 4 are recorded (at its 2nd row): the table holds
    every row that finished: that chunk's 4 and the other chunk's 4, which the pool's close
    waited for (Ctrl-C reached only this process); resuming runs nothing."""
    out = tmp_path / "t.csv"
    calls: list[int] = []

    def stop(done: int, total: int) -> None:
        calls.append(done)
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run("tsc-sync", **SMALL, workers=2, chunk_size=4, out=out, progress=stop)
    assert len(read_rows(out)) == N_SMALL
    rest: list[tuple[int, int]] = []
    t = sweep.run(
        "tsc-sync", **SMALL, workers=1, out=out, progress=lambda d, n: rest.append((d, n))
    )
    assert rest == [] and t.num_rows == N_SMALL


def _interrupt_at(target: str, real: Callable[[Any], dict[str, Any]]) -> Callable[[Any], Any]:
    def fake(p: Any) -> dict[str, Any]:
        if p.id == target:
            raise KeyboardInterrupt
        return real(p)

    return fake


def test_run_points_stops_at_an_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = sweep.expand("tsc-sync", SMALL["grid"], None, SMALL["seeds"], SMALL["profiles"])
    monkeypatch.setattr(execute, "run_point", _interrupt_at(plan[1].id, run_point))
    rows = run_points(plan[:4], "sweep-a")
    assert [r["run_id"] for r in rows] == [plan[0].id]  # the run before the interrupt
    assert run_points(plan[4:], "sweep-a") == []  # that sweep's later chunks run nothing here
    other = run_points(plan[4:6], "sweep-b")  # another sweep runs
    assert [r["run_id"] for r in other] == [p.id for p in plan[4:6]]


def test_a_worker_interrupted_mid_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: list[dict[str, Any]]
) -> None:
    """A KeyboardInterrupt in the worker (not in the caller) at the 2nd run of the first
    chunk of 4: the 1st row is kept, the runs that did not run are ``executor:`` rows (the
    worker's later chunks of this sweep too), and resuming runs them."""
    plan = sweep.expand("tsc-sync", SMALL["grid"], None, SMALL["seeds"], SMALL["profiles"])
    monkeypatch.setattr(execute, "run_point", _interrupt_at(plan[1].id, run_point))
    out = tmp_path / "t.jsonl"
    with ThreadPoolExecutor(1) as ex:
        rows = sweep.run("tsc-sync", **SMALL, executor=ex, chunk_size=4, out=out, table=False)
    assert isinstance(rows, list)
    assert _no_wall(rows[:1]) == _no_wall(reference[:1])
    assert all(r["status"] == "error" for r in rows[1:])
    assert {r["error"] for r in rows[1:]} == {
        f"{EXECUTOR_ERROR}KeyboardInterrupt: the worker was interrupted"
    }
    monkeypatch.undo()
    again = sweep.run("tsc-sync", **SMALL, workers=2, out=out, table=False)
    assert isinstance(again, list)
    assert again[0] == rows[0]  # kept, not run again
    assert _no_wall(again) == _no_wall(reference)


def test_after_an_interrupt_finished_chunks_are_kept() -> None:
    """_keep_cut_short: of the tasks in flight when the caller was interrupted, the rows of
    every task that finished are kept: cut short by its worker's interrupt (the runs before
    it), or whole (only the caller was interrupted: the pool's close waited for it)."""
    plan = sweep.expand("tsc-sync", SMALL["grid"], None, SMALL["seeds"], SMALL["profiles"])
    rows = [{"run_id": p.id, "n": i} for i, p in enumerate(plan)]

    def fut(result: Any = None, exc: BaseException | None = None) -> Future[Any]:
        f: Future[Any] = Future()
        if exc is not None:
            f.set_exception(exc)
        elif result is not None:
            f.set_result(result)
        return f

    cancelled: Future[Any] = Future()
    cancelled.cancel()
    pending = {
        fut(rows[0:1]): plan[0:2],  # cut short: row 0 kept
        fut(rows[2:4]): plan[2:4],  # whole: finished while the pool closed, kept
        fut(exc=RuntimeError("pool broke")): plan[4:5],
        fut(): plan[5:6],  # still running
        cancelled: plan[6:8],
    }
    kept: list[dict[str, Any]] = []
    _keep_cut_short(pending, kept.append)
    assert kept == [rows[0], rows[2], rows[3]]

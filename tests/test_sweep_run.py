"""kvmclock.sweep.run: executors give the same table, resume, failed runs, Ctrl-C, formats,
and summary()."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import kvmclock.sweep as sweep
import pyarrow.parquet as pq
import pytest
from kvmclock.sweep.metrics import METRIC_COLUMNS
from kvmclock.sweep.store import journal_path, read_rows

#: a small sweep: 2 x 2 grid x 2 seeds of short tsc-sync runs
SMALL: dict[str, Any] = {
    "grid": {"vcpus": [1, 2], "hz": [100, 250], "duration_s": [0.2]},
    "seeds": 2,
    "profiles": "upstream",
}
N_SMALL = 8


def _no_wall(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.fixture(scope="module")
def sequential() -> list[dict[str, Any]]:
    """The small sweep run in this process (workers=1), the reference."""
    rows = sweep.run("tsc-sync", **SMALL, workers=1, table=False)
    assert isinstance(rows, list)
    return rows


def test_sequential_reference(sequential: list[dict[str, Any]]) -> None:
    # the plain loop over the plan gives the same rows
    from kvmclock.sweep.execute import run_point

    plan = sweep.expand("tsc-sync", SMALL["grid"], None, SMALL["seeds"], SMALL["profiles"])
    assert len(plan) == N_SMALL == len(sequential)
    assert _no_wall([run_point(p) for p in plan]) == _no_wall(sequential)
    assert [r["run_id"] for r in sequential] == [p.id for p in plan]
    assert all(r["status"] == "ok" for r in sequential)


def test_process_pool_gives_the_same_table(sequential: list[dict[str, Any]]) -> None:
    t = sweep.run("tsc-sync", **SMALL, workers=2)
    assert t.num_rows == N_SMALL
    assert _no_wall(t.to_pylist()) == _no_wall(sequential)


def test_dask_local_cluster_gives_the_same_table(sequential: list[dict[str, Any]]) -> None:
    pytest.importorskip("distributed")
    rows = sweep.run("tsc-sync", **SMALL, dask="local", workers=2, table=False)
    assert isinstance(rows, list)
    assert _no_wall(rows) == _no_wall(sequential)


def test_given_executor_is_used_and_left_open(sequential: list[dict[str, Any]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as ex:
        rows = sweep.run("tsc-sync", **SMALL, executor=ex, table=False)
        assert ex.submit(int, "3").result() == 3  # still usable
    assert isinstance(rows, list)
    assert _no_wall(rows) == _no_wall(sequential)


class Counter:
    """A progress callback that counts its calls (and can stop the sweep after ``stop``)."""

    def __init__(self, stop: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.stop = stop

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        if self.stop is not None and done >= self.stop:
            raise KeyboardInterrupt


def test_resume_skips_what_is_done(tmp_path: Path, sequential: list[dict[str, Any]]) -> None:
    out = tmp_path / "t.parquet"
    first = Counter()
    t1 = sweep.run("tsc-sync", **SMALL, workers=1, out=out, progress=first)
    assert [c[0] for c in first.calls] == list(range(1, N_SMALL + 1))
    assert {c[1] for c in first.calls} == {N_SMALL}
    assert not os.path.exists(journal_path(out))
    assert pq.read_table(out).to_pylist() == t1.to_pylist()

    again = Counter()
    t2 = sweep.run("tsc-sync", **SMALL, workers=2, out=out, progress=again)
    assert again.calls == []
    assert t2.to_pylist() == t1.to_pylist()  # wall_s too: nothing ran again

    more = Counter()
    grid = {**SMALL["grid"], "vcpus": [1, 2, 3]}
    t3 = sweep.run("tsc-sync", **{**SMALL, "grid": grid}, workers=1, out=out, progress=more)
    assert [c for c in more.calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    rows = t3.to_pylist()
    assert len(rows) == 12
    old = {r["run_id"]: r for r in t1.to_pylist()}
    kept = [r for r in rows if r["run_id"] in old]
    assert kept == [old[r["run_id"]] for r in kept] and len(kept) == N_SMALL
    assert sorted({r["param.vcpus"] for r in rows}) == [1, 2, 3]
    # rows in plan order
    plan = sweep.expand("tsc-sync", grid, None, 2, "upstream")
    assert [r["run_id"] for r in rows] == [p.id for p in plan]


def test_failed_runs_are_rows(tmp_path: Path) -> None:
    rows = sweep.run(
        "restore-shelf",
        grid={"shelf_s": [1, 2]},
        profiles=["upstream", "gtod"],
        workers=2,
        out=tmp_path / "r.jsonl",
        table=False,
    )
    assert isinstance(rows, list)
    by = {(r["param.shelf_s"], r["profile"]): r for r in rows}
    assert len(by) == 4
    for shelf in (1, 2):
        ok = by[(shelf, "upstream")]
        assert ok["status"] == "ok" and ok["error"] is None
        assert ok["max_abs_monotonic_jump_ns"] == shelf * 1_000_000_000
        bad = by[(shelf, "gtod")]
        assert bad["status"] == "error"
        assert bad["error"].startswith("ScenarioFileError: builtin:restore-shelf.toml: ")
        assert "KVM_CLOCK_REALTIME" in bad["error"]
        assert all(bad[c] is None for c in METRIC_COLUMNS)
    # a value within [params] that the run refuses (a timeline it makes impossible)
    rows = sweep.run(
        "tsc-sync",
        grid={"vcpus": [2, 64], "duration_s": [0.2], "hotplug_at_s": [0.1]},
        workers=1,
        profiles="upstream",
        table=False,
    )
    assert isinstance(rows, list)
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert rows[1]["error"].startswith(
        "ScenarioFileError: builtin:tsc-sync.toml: timeline[1].vm: VM 'L1' already has 64"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_leaves_a_valid_partial_table(tmp_path: Path, workers: int) -> None:
    out = tmp_path / "t.csv"
    stop = Counter(stop=3)
    with pytest.raises(KeyboardInterrupt):
        sweep.run("tsc-sync", **SMALL, workers=workers, out=out, progress=stop)
    assert len(stop.calls) == 3
    partial = read_rows(out)
    # workers=1: the 3 runs; a pool also keeps the runs its workers ended while it closed
    # (the interrupt reached only this process)
    kept = len(partial)
    assert (kept == 3 if workers == 1 else 3 <= kept <= N_SMALL)
    assert all(r["status"] == "ok" for r in partial)
    with open(out, newline="", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == kept
    assert not os.path.exists(journal_path(out))  # the table holds them now
    # resuming runs only the rest
    rest = Counter()
    t = sweep.run("tsc-sync", **SMALL, workers=1, out=out, progress=rest)
    assert [c[1] for c in rest.calls] == [N_SMALL - kept] * (N_SMALL - kept)
    done = {r["run_id"] for r in partial}
    assert t.num_rows == N_SMALL and done <= set(t.column("run_id").to_pylist())


def test_journal_rows_are_resumed(tmp_path: Path, sequential: list[dict[str, Any]]) -> None:
    """A sweep killed without writing its table (no Ctrl-C handler ran) left a journal, its
    last line cut short: the journal's rows are not run again."""
    out = tmp_path / "t.jsonl"
    with open(journal_path(out), "w", encoding="utf-8") as fh:
        for r in sequential[:5]:
            fh.write(json.dumps(r) + "\n")
        fh.write('{"run_id": "abc", "sta')
    c = Counter()
    rows = sweep.run("tsc-sync", **SMALL, workers=1, out=out, progress=c, table=False)
    assert len(c.calls) == N_SMALL - 5
    assert rows[:5] == sequential[:5]  # taken from the journal, wall_s included
    assert _no_wall(rows) == _no_wall(sequential)
    assert not os.path.exists(journal_path(out))
    assert read_rows(out) == rows


def _csv_text(v: Any) -> str:
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    return repr(v) if isinstance(v, float) else str(v)


def test_formats_read_back(tmp_path: Path, sequential: list[dict[str, Any]]) -> None:
    rows = sweep.run(
        "tsc-sync",
        grid={"vcpus": [1, 64], "duration_s": [0.2, 0.3], "hotplug_at_s": [0.1]},
        profiles="upstream",
        workers=1,
        table=False,
    )
    assert isinstance(rows, list) and {r["status"] for r in rows} == {"ok", "error"}
    for ext in (".parquet", ".csv", ".jsonl"):
        out = tmp_path / f"t{ext}"
        again = sweep.run(
            "tsc-sync",
            grid={"vcpus": [1, 64], "duration_s": [0.2, 0.3], "hotplug_at_s": [0.1]},
            profiles="upstream",
            workers=1,
            out=out,
            table=False,
        )
        assert _no_wall(again) == _no_wall(rows)
        assert read_rows(out) == again
        if ext == ".parquet":
            assert pq.read_table(out).to_pylist() == again
        elif ext == ".jsonl":
            with open(out, encoding="utf-8") as fh:
                assert [json.loads(line) for line in fh] == again
        else:
            with open(out, newline="", encoding="utf-8") as fh:
                got = list(csv.DictReader(fh))
            assert got == [{k: _csv_text(v) for k, v in r.items()} for r in again]


def test_bad_out_extension_is_refused_before_running(tmp_path: Path) -> None:
    from kvmclock.errors import UsageError

    with pytest.raises(UsageError, match=r"unknown table format '\.txt'; give a path ending in"):
        sweep.run("tsc-sync", out=tmp_path / "t.txt", workers=1)


# ------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------
def _row(rid: str, x: int, **metrics: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "run_id": rid,
        "scenario": "s",
        "profile": "upstream",
        "seed": 0,
        "param.x": x,
        "status": "ok",
        "error": None,
    }
    base.update({c: None for c in METRIC_COLUMNS})
    base.update(metrics)
    return base


KNOWN = [
    _row(
        "a",
        1,
        max_abs_monotonic_jump_ns=5,
        max_abs_realtime_jump_ns=7,
        worst_jump_vm="vm1",
        max_skew_ns=10,
        backwards_steps=2,
        max_backwards_step_ns=30,
        livelock=False,
    ),
    _row(
        "b",
        2,
        max_abs_monotonic_jump_ns=9,
        max_abs_realtime_jump_ns=3,
        worst_jump_vm="vm2",
        max_skew_ns=40,
        backwards_steps=2,
        max_backwards_step_ns=8,
        livelock=True,
    ),
    _row("c", 3, max_skew_ns=40, backwards_steps=1, max_backwards_step_ns=99, livelock=False),
    {**_row("d", 4), "status": "error", "error": "ScenarioError: x=4 out of range"},
]


def test_summary_of_a_known_table(tmp_path: Path) -> None:
    s = sweep.summary(KNOWN)
    assert s["runs"] == 4 and s["by_status"] == {"ok": 3, "error": 1}
    where_b = {"run_id": "b", "scenario": "s", "profile": "upstream", "seed": 0, "params": {"x": 2}}
    where_a = {**where_b, "run_id": "a", "params": {"x": 1}}
    assert s["worst_jump"] == {"value_ns": 9, "clock": "monotonic", "vm": "vm2", **where_b}
    assert s["worst_skew"] == {"value_ns": 40, **where_b}  # b before c on the tie
    assert s["most_backwards"] == {"count": 2, "max_step_ns": 30, **where_a}
    assert s["livelocks"] == 1
    assert s["errors"] == [
        {
            "run_id": "d",
            "profile": "upstream",
            "seed": 0,
            "params": {"x": 4},
            "error": "ScenarioError: x=4 out of range",
        }
    ]
    text = sweep.format_summary(s)
    assert "runs: 4 (1 error, 3 ok)" in text
    assert "worst jump: 9 ns (monotonic, vm vm2) at x=2; profile upstream, seed 0 [b]" in text
    assert "worst skew: 40 ns at x=2" in text
    assert "most backwards steps: 2 (largest 30 ns) at x=1" in text
    assert "x=4; profile upstream, seed 0 [d]: ScenarioError: x=4 out of range" in text
    # the same from a file of each format
    from kvmclock.sweep.store import write_rows

    for ext in (".parquet", ".csv", ".jsonl"):
        path = tmp_path / f"k{ext}"
        write_rows([{**r, "wall_s": 0.5} for r in KNOWN], path)
        assert sweep.summary(path) == s
        assert sweep.summary(str(path)) == s


def test_summary_of_errors_only() -> None:
    s = sweep.summary(KNOWN[3:])
    assert s["worst_jump"] is None and s["worst_skew"] is None and s["most_backwards"] is None
    assert "worst jump: none" in sweep.format_summary(s)


def test_an_unrelated_out_file_is_not_overwritten(tmp_path: Path) -> None:
    from kvmclock.errors import UsageError

    out = tmp_path / "mine.csv"
    out.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(UsageError, match="exists and is not a sweep table"):
        sweep.run("tsc-sync", **SMALL, workers=1, out=out)
    assert out.read_text(encoding="utf-8") == "a,b\n1,2\n"


@pytest.mark.parametrize("workers", [0, -1, True])
def test_bad_workers(workers: int) -> None:
    from kvmclock.errors import UsageError

    with pytest.raises(UsageError, match="give a number of workers >= 1"):
        sweep.run("tsc-sync", workers=workers)

"""``kvmclock sweep`` stopped early (review 15, items 1, 2, 4 and 6): SIGINT to the main
process only keeps the rows of the chunks it waits for; the interrupted message counts the
rows written; Ctrl-C under ``--dask local`` is one line; an output that cannot be written is
an exit-2 line before the first run, and a late write error says where the journal is."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kvmclock import cli
from kvmclock.errors import UsageError
from test_cli import assert_usage_error, run

ROOT = Path(__file__).resolve().parent.parent
# 122 runs of naive-restore (about 0.1 s each): long enough to interrupt in the middle
LONG = ("naive-restore", "--range", "gap_ms=0:3000:50", "--grid", "vcpus=2,4",
        "--profile", "upstream")
MESSAGE = re.compile(r"interrupted; wrote (\S+) \((\d+) rows?: (\d+) runs? finished now, "
                     r"(\d+) (?:was|were) already there"
                     r"(?:, (\d+) cut short \(run again on resume\))?\)")


def _rows(path: Path) -> list[dict[str, Any]]:
    from kvmclock.sweep.store import read_rows

    return read_rows(path)


def _journal_rows(journal: Path) -> list[dict[str, Any]]:
    rows = []
    for line in journal.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


def _start(out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    return subprocess.Popen(
        [sys.executable, "-m", "kvmclock", "sweep", *LONG, "--out", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        start_new_session=True,  # its own process group: the group signal reaches only it
    )


def _wait_for_rows(proc: subprocess.Popen[str], journal: Path, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists():
            rows = _journal_rows(journal)
            if len(rows) >= n:
                return rows
        time.sleep(0.05)
    raise AssertionError(f"no {n} journal rows: {proc.communicate()}")


def _interrupted(stderr: str) -> tuple[int, int, int, int]:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    m = MESSAGE.search(lines[0])
    assert m is not None, stderr
    return int(m[2]), int(m[3]), int(m[4]), int(m[5] or 0)


@pytest.mark.parametrize(("target", "ext"), [("process", ".csv"), ("group", ".jsonl")])
def test_sigint_keeps_the_finished_rows_and_counts_them(tmp_path: Path, target: str,
                                                        ext: str) -> None:
    """SIGINT to the main process only (kill -INT PID: the workers run on): the chunks it
    waits for are kept, every row written is a whole ok row, and the message counts the rows
    of the table; to the whole group (Ctrl-C: the workers are interrupted too) the message
    still counts what was written."""
    out = tmp_path / f"t{ext}"
    journal = Path(f"{out}.journal.jsonl")
    proc = _start(out, "--workers", "2")
    before = _wait_for_rows(proc, journal, 4)
    if target == "process":
        os.kill(proc.pid, signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr
    rows_n, ran, already, lost = _interrupted(stderr)
    table = _rows(out)
    assert not journal.exists()
    ids = [r["run_id"] for r in table]
    assert rows_n == len(table) == ran + already + lost and already == 0
    assert len(set(ids)) == len(ids) and len(table) < 122
    assert {r["run_id"] for r in before} <= set(ids)  # nothing the journal had is lost
    if target == "process":
        # the workers were not interrupted: every row is a finished run, none lost
        assert lost == 0 and all(r["status"] == "ok" and r["error"] is None for r in table)
        assert all(r["end_ns"] is not None for r in table)
    # the rows are those the runs give (a run is a pure function of its point)
    from kvmclock import sweep

    for r in (table[0], table[-1]):
        again = sweep.run("naive-restore", grid={"gap_ms": [r["param.gap_ms"]],
                                                 "vcpus": [r["param.vcpus"]]},
                          profiles="upstream", workers=1, table=False)
        assert isinstance(again, list)
        assert {k: v for k, v in again[0].items() if k != "wall_s"} == {
            k: v for k, v in r.items() if k != "wall_s"}


def test_ctrl_c_under_dask_local_is_one_line(tmp_path: Path) -> None:
    """SIGINT to the whole process group (Ctrl-C at a terminal) under --dask local: exit 130
    and only the interrupted line on stderr (no worker traceback, no distributed warning)."""
    pytest.importorskip("distributed")
    out = tmp_path / "d.csv"
    proc = _start(out, "--dask", "local", "--workers", "2")
    _wait_for_rows(proc, Path(f"{out}.journal.jsonl"), 2)
    os.killpg(proc.pid, signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr
    rows_n, _ran, _already, _lost = _interrupted(stderr)
    assert rows_n == len(_rows(out))


def test_an_out_that_cannot_be_created_is_refused_before_any_run(tmp_path: Path) -> None:
    """/proc exists but refuses new files (also to root): exit 2 naming --out and why,
    before anything runs."""
    p = run("sweep", "set-clock", "--grid", "duration_s=0.5", "--profile", "upstream",
            "--out", "/proc/kvmclock-sweep-test.csv")
    assert_usage_error(p, "--out /proc/kvmclock-sweep-test.csv", "cannot create")
    from kvmclock import sweep

    with pytest.raises(UsageError, match=re.escape("--out /proc/kvmclock-sweep-test.jsonl")):
        sweep.run("set-clock", grid={"duration_s": [0.5]}, profiles="upstream",
                  out="/proc/kvmclock-sweep-test.jsonl", workers=1, table=False)


def test_an_existing_journal_is_left_as_it_is(tmp_path: Path) -> None:
    from kvmclock.sweep.store import check_writable

    out = tmp_path / "r.csv"
    journal = Path(f"{out}.journal.jsonl")
    journal.write_text('{"run_id": "x", "status": "ok"}\n')
    check_writable(out)
    assert journal.read_text() == '{"run_id": "x", "status": "ok"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv.journal.jsonl"]
    check_writable(tmp_path / "s.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv.journal.jsonl"]


def test_a_late_write_error_names_the_journal(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The table cannot be written at the end (disk full): exit 2, one line saying where the
    journal with the finished runs is (never the internal-error exit 70); it resumes."""
    import kvmclock.sweep.api as api

    out = tmp_path / "r.csv"
    journal = Path(f"{out}.journal.jsonl")
    argv = ["sweep", "set-clock", "--grid", "duration_s=0.5", "--grid", "step_s=1,5",
            "--profile", "upstream", "--workers", "1", "--out", str(out)]
    real = api.write_rows

    def full(rows: Any, path: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(api, "write_rows", full)
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmclock sweep: --out "), err
    assert "cannot write the table (No space left on device)" in lines[0]
    assert f"the 2 runs finished now are in the journal {journal}" in lines[0]
    assert len(_journal_rows(journal)) == 2 and not out.exists()
    monkeypatch.setattr(api, "write_rows", real)
    assert cli.main(argv) == 0
    assert "(2 runs: 0 ran in" in capsys.readouterr().err and not journal.exists()


def test_a_late_write_error_from_python(tmp_path: Path) -> None:
    """The same from Python: --out turned into a directory during the run (the rename over
    it fails): UsageError naming the journal, which holds the rows."""
    from kvmclock import sweep

    out = tmp_path / "r.jsonl"

    def block(done: int, total: int) -> None:
        if not out.exists():
            out.mkdir()
            (out / "x").write_text("")  # a non-empty directory: nothing renames over it

    with pytest.raises(UsageError, match=r"cannot write the table .*journal"):
        sweep.run("set-clock", grid={"duration_s": [0.5], "step_s": [1, 5]},
                  profiles="upstream", out=out, workers=1, progress=block, table=False)
    assert len(_journal_rows(Path(f"{out}.journal.jsonl"))) == 2

"""``kvmclock sweep``: a small real sweep to .csv, .jsonl and .parquet (each read back here
with the csv module, json and pyarrow, not with kvmclock), resume, ``--summary``, the file's
``[sweep]`` section, every bad option as one exit-2 line naming it, Ctrl-C (exit 130 with the
partial table), the progress line, and ``--dask local`` with two process workers against the
local pool."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kvmclock import cli
from kvmclock.cli.sweep import _fmt_eta, _SweepProgress
from kvmclock.errors import ScenarioFileError
from kvmclock.scenario import load_builtin, loads
from test_cli import assert_usage_error, run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
# 2 x 2 points, seeds 0 and 1: 8 runs of set-clock cut to 0.5 s (a few ms each)
SMALL = (
    "set-clock",
    "--grid",
    "duration_s=0.5",
    "--grid",
    "step_s=1,5",
    "--range",
    "vcpus=1:2:1",
    "--seeds",
    "2",
    "--profile",
    "upstream",
)


def sweep(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["sweep", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _same(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without wall_s (the one column that differs between executions)."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_a_small_sweep_to_each_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pa_parquet = pytest.importorskip("pyarrow.parquet")
    tables: dict[str, list[dict[str, Any]]] = {}
    for ext in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"t.{ext}"
        code, text, err = sweep(capsys, *SMALL, "--workers", "1", "--out", str(out))
        assert code == 0, err
        assert f"wrote {out} (8 runs: 8 ran in " in err and "0 were already there" in err
        assert text.startswith("runs: 8 (8 ok)\n") and "worst skew:" in text
        assert not (tmp_path / f"t.{ext}.journal.jsonl").exists()
        if ext == "csv":
            rows: list[dict[str, Any]] = [dict(r) for r in read_csv(out)]
        elif ext == "jsonl":
            rows = read_jsonl(out)
        else:
            rows = pa_parquet.read_table(out).to_pylist()
        tables[ext] = rows
    # the plan: parameters by name (duration_s, step_s, vcpus), the first varying slowest,
    # then the seeds
    want = [(5 if i >= 4 else 1, 1 + (i // 2) % 2, i % 2) for i in range(8)]
    for ext, rows in tables.items():
        got = [(float(r["param.step_s"]), int(r["param.vcpus"]), int(r["seed"])) for r in rows]
        assert got == [(float(a), b, c) for a, b, c in want], ext
        assert {str(r["status"]) for r in rows} == {"ok"}
        assert len({r["run_id"] for r in rows}) == 8
    # the same runs in every format: the JSON Lines and Parquet rows are equal, the CSV
    # cells are their text
    assert _same(tables["jsonl"]) == _same(tables["parquet"])
    for c, j in zip(tables["csv"], tables["jsonl"], strict=True):
        assert c["run_id"] == j["run_id"] and int(c["end_ns"]) == j["end_ns"] == 500_000_000
        assert int(c["max_skew_ns"]) == j["max_skew_ns"]


def test_resume_runs_only_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.jsonl"
    small = [a if a != "step_s=1,5" else "step_s=1" for a in SMALL]
    code, _, err = sweep(capsys, *small, "--workers", "1", "--out", str(out))
    assert code == 0 and "(4 runs: 4 ran" in err
    first = read_jsonl(out)
    code, _, err = sweep(capsys, *SMALL, "--workers", "1", "--out", str(out))
    assert code == 0 and "(8 runs: 4 ran" in err and "4 were already there" in err
    rows = read_jsonl(out)
    assert len(rows) == 8
    by_id = {r["run_id"]: r for r in rows}
    for r in first:  # the first four rows were kept as they were, wall_s included
        assert by_id[r["run_id"]] == r


def test_summary_names_the_extremes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "n.csv"
    code, text, err = sweep(
        capsys,
        "naive-restore",
        "--grid",
        "gap_ms=999,1500",
        "--grid",
        "vcpus=2",
        "--profile",
        "upstream",
        "--workers",
        "1",
        "--out",
        str(out),
    )
    assert code == 0, err
    rows = read_csv(out)
    worst = max(rows, key=lambda r: int(r["max_abs_monotonic_jump_ns"]))
    code, summary, err = sweep(capsys, "--summary", str(out))
    assert code == 0, err
    assert summary == text
    line = next(ln for ln in summary.splitlines() if ln.startswith("worst jump:"))
    assert f"{worst['max_abs_monotonic_jump_ns']} ns (monotonic, vm vm)" in line
    assert f"gap_ms={worst['param.gap_ms']}, vcpus=2; profile upstream, seed 0" in line
    assert f"[{worst['run_id']}]" in line


def test_the_files_sweep_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """naive-restore ships a [sweep] section: without --grid/--range it is the sweep."""
    section = tomllib.loads(load_builtin("naive-restore").text)["sweep"]
    out = tmp_path / "s.jsonl"
    code, _, err = sweep(capsys, "naive-restore", "--workers", "2", "--out", str(out))
    assert code == 0, err
    rows = read_jsonl(out)
    grid = section["grid"]
    assert len(rows) == len(grid["gap_ms"]) * len(grid["vcpus"]) * section.get("seeds", 1)
    assert [(r["param.gap_ms"], r["param.vcpus"]) for r in rows] == [
        (g, v) for g in grid["gap_ms"] for v in grid["vcpus"]
    ]
    assert {r["profile"] for r in rows} == set(section["profiles"])
    # inside the 1000 ms window the restored vCPUs match and masterclock comes back
    mc = {r["param.gap_ms"]: r["masterclock_end"] for r in rows if r["param.vcpus"] == 2}
    assert mc[999] is True and mc[1001] is False
    # --grid replaces the section (and its profiles): the file's run.profiles
    out2 = tmp_path / "g.jsonl"
    code, _, err = sweep(
        capsys, "naive-restore", "--grid", "gap_ms=10", "--workers", "1", "--out", str(out2)
    )
    assert code == 0, err
    assert [r["profile"] for r in read_jsonl(out2)] == ["gtod", "series", "upstream"]


def test_a_file_with_a_sweep_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = load_builtin("set-clock").text + (
        '\n[sweep]\nseeds = 2\nprofiles = "upstream"\n'
        '[sweep.grid]\nduration_s = [0.5]\n[sweep.ranges]\nstep_s = "0.5:1.5:0.5"\n'
    )
    path = tmp_path / "my.toml"
    path.write_text(text)
    out = tmp_path / "m.csv"
    code, _, err = sweep(capsys, str(path), "--workers", "1", "--out", str(out))
    assert code == 0, err
    rows = read_csv(out)
    assert [(float(r["param.step_s"]), int(r["seed"])) for r in rows] == [
        (0.5, 0),
        (0.5, 1),
        (1.0, 0),
        (1.0, 1),
        (1.5, 0),
        (1.5, 1),
    ]
    assert {r["scenario"] for r in rows} == {str(path)}


@pytest.mark.parametrize(
    ("entry", "key", "needle"),
    [
        ("[sweep.grid]\nsteps = [1]", "sweep.grid.steps", "valid: duration_s, hz,"),
        ("[sweep.grid]\nvcpus = [2, 0]", "sweep.grid.vcpus[1]", "vcpus=0 out of range (1..64)"),
        ("[sweep.grid]\nvcpus = []", "sweep.grid.vcpus", "expected"),
        ('[sweep.ranges]\nvcpus = "1:4:0"', "sweep.ranges.vcpus", "STEP must be > 0"),
        ('[sweep.ranges]\nvcpus = "60:70:1"', "sweep.ranges.vcpus", "vcpus=65 out of range"),
        ("[sweep]\nseeds = 0", "sweep.seeds", "0 out of range (1..inf)"),
        ('[sweep]\nprofiles = ["newest"]', "sweep.profiles[0]", "'newest' unknown; choose"),
        ("[sweep]\nruns = 3", "sweep.runs", "unknown key; allowed here: grid, ranges, seeds"),
    ],
)
def test_a_bad_sweep_section_is_a_file_error(entry: str, key: str, needle: str) -> None:
    text = load_builtin("set-clock").text + "\n" + entry + "\n"
    with pytest.raises(ScenarioFileError) as info:
        loads(text, "x.toml")
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(f"x.toml: {key}: ") and needle in str(info.value)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["set-clock", "--grid", "stepp=1,2", "--out", "{t}/x.csv"],
            ["kvmclock sweep:", "no parameter stepp", "valid: duration_s, get_at_s"],
        ),
        (["set-clock", "--grid", "step_s", "--out", "{t}/x.csv"], ["--grid 'step_s'", "KEY=V1,V2"]),
        (["set-clock", "--grid", "step_s=1,1", "--out", "{t}/x.csv"], ["--grid", "twice"]),
        (
            ["set-clock", "--range", "step_s=1:5", "--out", "{t}/x.csv"],
            ["--range 'step_s=1:5'", "START:STOP:STEP"],
        ),
        (["set-clock", "--range", "step_s=1:5:-1", "--out", "{t}/x.csv"], ["STEP must be > 0"]),
        (
            ["set-clock", "--grid", "step_s=1", "--range", "step_s=1:2:1", "--out", "{t}/x.csv"],
            ["--range", "already swept"],
        ),
        (["set-clock", "--out", "{t}/x.txt"], ["--out", ".parquet, .csv, .jsonl"]),
        (["set-clock", "--out", "{t}/no/such/x.csv"], ["--out", "No such file or directory"]),
        (["set-clock", "--out", "-"], ["--out -", "not stdout"]),
        (["set-clock"], ["--out PATH is required"]),
        ([], ["give a SCENARIO"]),
        (["no-such", "--out", "{t}/x.csv"], ["unknown scenario 'no-such'", "naive-restore"]),
        (
            ["set-clock", "--profile", "newest", "--out", "{t}/x.csv"],
            ["--profile 'newest' unknown", "upstream"],
        ),
        (["set-clock", "--seeds", "0", "--out", "{t}/x.csv"], ["--seeds", "1..1000000"]),
        (["set-clock", "--workers", "0", "--out", "{t}/x.csv"], ["--workers", "1..4096"]),
        (["set-clock", "--dask", "nowhere", "--out", "{t}/x.csv"], ["--dask 'nowhere'", "tcp://"]),
        (
            ["set-clock", "--dask", "tcp://127.0.0.1:1", "--workers", "2", "--out", "{t}/x.csv"],
            ["--workers", "has its own workers"],
        ),
        (["--summary", "{t}/none.csv"], ["--summary", "no such file"]),
        (["--summary", "{t}/x.csv", "--grid", "a=1"], ["--summary reads a table", "--grid"]),
        (["set-clock", "--summary", "{t}/x.csv"], ["--summary reads a table", "SCENARIO"]),
    ],
)
def test_bad_options_are_one_line_naming_the_option(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    argv = [a.replace("{t}", str(tmp_path)) for a in args]
    p = run("sweep", *argv)
    assert_usage_error(p, *needles)
    assert not list(tmp_path.glob("x.*"))  # nothing ran, nothing written


def test_summary_of_a_file_that_is_not_a_table(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("this,is\nnot,a sweep\n")
    p = run("sweep", "--summary", str(bad))
    assert_usage_error(p, "--summary", str(bad))


def test_ctrl_c_exits_130_with_the_partial_table(tmp_path: Path) -> None:
    """SIGINT once a few rows are in the journal (runs in the command's own process:
    --workers 1): exit 130, the message names the table, which holds every finished run."""
    out = tmp_path / "big.jsonl"
    journal = tmp_path / "big.jsonl.journal.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvmclock",
            "sweep",
            "set-clock",
            "--grid",
            "duration_s=0.5",
            "--range",
            "step_s=1:400:1",
            "--profile",
            "upstream",
            "--workers",
            "1",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"interrupted; wrote {out} (" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    rows = read_jsonl(out)
    assert f"({len(rows)} rows: {len(rows)} runs finished now, 0 were already there)" in stderr
    assert "; the same command resumes" in stderr
    assert 3 <= len(rows) < 400 and not journal.exists()
    assert [r["param.step_s"] for r in rows] == list(range(1, len(rows) + 1))
    # resume: the rest runs, the first rows stay
    p = run(
        "sweep",
        "set-clock",
        "--grid",
        "duration_s=0.5",
        "--range",
        "step_s=1:10:1",
        "--profile",
        "upstream",
        "--workers",
        "1",
        "--out",
        str(out),
    )
    assert p.returncode == 0, p.stderr
    assert "(10 runs: " in p.stderr and f"{min(len(rows), 10)} were already there" in p.stderr


def test_progress_line_and_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert _SweepProgress.line("sweep x", 50, 200, 10.0) == (
        "sweep x: 50/200 runs (25%), 5.0 runs/s, ETA 30 s"
    )
    assert _SweepProgress.line("sweep x", 0, 200, 0.0) == "sweep x: 0/200 runs (0%)"
    assert (_fmt_eta(59.4), _fmt_eta(185), _fmt_eta(7620)) == ("59 s", "3 min 05 s", "2 h 07 min")
    p = _SweepProgress(sys.stderr, "sweep x")  # captured: not a terminal
    p(1, 2)
    p(2, 2)
    p.close()
    assert p.done == 2 and capsys.readouterr().err == ""


class _Tty:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def test_progress_on_a_terminal() -> None:
    now = [0.0]
    tty = _Tty()
    p = _SweepProgress(tty, "sweep x", clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] = 2.0
    p(4, 8)
    now[0] = 2.1  # within every_s: not shown
    p(5, 8)
    now[0] = 4.0
    p(8, 8)
    p.close()
    assert tty.text == (
        "\rsweep x: 4/8 runs (50%), 2.0 runs/s, ETA 2 s\033[K"
        "\rsweep x: 8/8 runs (100%), 2.0 runs/s, ETA 0 s\033[K\r\033[K"
    )


def test_dask_local_gives_the_local_pools_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("distributed")
    local, dask = tmp_path / "local.jsonl", tmp_path / "dask.jsonl"
    code, text_local, err = sweep(capsys, *SMALL, "--workers", "2", "--out", str(local))
    assert code == 0, err
    code, text_dask, err = sweep(
        capsys, *SMALL, "--dask", "local", "--workers", "2", "--out", str(dask)
    )
    assert code == 0, err
    assert "(8 runs: 8 ran" in err
    assert _same(read_jsonl(dask)) == _same(read_jsonl(local))
    assert text_dask == text_local


def test_the_docs_notebook_example_runs_and_plots(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The Python example of docs/sweeps.md, as written (a 15-run sweep and a matplotlib
    plot), in a temporary directory; its jumps are the downtimes."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("matplotlib")
    import re

    import matplotlib

    matplotlib.use("Agg")
    text = (ROOT / "docs" / "sweeps.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
               if "plt.subplots" in b]
    monkeypatch.chdir(tmp_path)
    env: dict[str, Any] = {}
    exec(compile(code, "docs/sweeps.md", "exec"), env)
    assert (tmp_path / "migrate.png").stat().st_size > 1000
    rows = env["rows"]
    assert len(rows) == 15 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        assert r["max_abs_monotonic_jump_ns"] == r["param.downtime_ms"] * 1_000_000
    assert capsys.readouterr().out.startswith("runs: 15 (15 ok)")

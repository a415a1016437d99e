"""``kvmclock sweep`` values typed by the scenario's declarations, dropped rows said, the
summary's livelocked runs and one rendering of values, the small CLI fixes (review15 items
3, 5, 7, 8, 9, 10)."""

from __future__ import annotations

import sys
import types
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from kvmclock import cli, sweep
from kvmclock.errors import ScenarioError, UsageError
from kvmclock.sweep.api import DroppedRowsWarning, format_summary, summary
from kvmclock.sweep.plan import expand, show_value
from kvmclock.sweep.store import read_rows

ROOT = Path(__file__).resolve().parent.parent


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["sweep", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------
# item 5: values typed by the declaration, checked before anything runs
# ------------------------------------------------------------------------------------------
def test_int_parameter_takes_whole_decimals_and_refuses_others() -> None:
    (p,) = expand("naive-restore", ["gap_ms=1.0", "vcpus=2"], profiles="upstream")
    assert p.params == {"gap_ms": 1, "vcpus": 2} and type(p.params["gap_ms"]) is int
    (q,) = expand("naive-restore", ["gap_ms=1", "vcpus=2.00"], profiles="upstream")
    assert q.id == p.id
    with pytest.raises(ScenarioError) as info:
        expand("naive-restore", ranges=["gap_ms=0:0.3:0.1"])
    assert str(info.value) == "--range gap_ms: gap_ms=0.1 must be an integer"
    with pytest.raises(ScenarioError, match=r"^--grid gap_ms: gap_ms=1\.5 must be an integer$"):
        expand("naive-restore", ["gap_ms=1,1.5"])
    with pytest.raises(ScenarioError, match=r"^grid gap_ms: gap_ms=0\.25 must be an integer$"):
        expand("naive-restore", {"gap_ms": [0.25]})
    with pytest.raises(ScenarioError, match=r"^--grid gap_ms: gap_ms=true must be an integer$"):
        expand("naive-restore", ["gap_ms=true"])
    with pytest.raises(ValueError, match="value 1 given twice"):
        expand("naive-restore", ["gap_ms=1,1.0"])


@pytest.mark.parametrize(
    ("grid", "ranges", "message"),
    [
        (["gap_ms=-1"], None, "--grid gap_ms: gap_ms=-1 out of range (0..inf)"),
        (["vcpus=65"], None, "--grid vcpus: vcpus=65 out of range (1..64)"),
        (None, ["vcpus=60:70:1"], "--range vcpus: vcpus=65 out of range (1..64)"),
        ({"vcpus": ["2"]}, None, "grid vcpus: vcpus=2 must be an integer"),
    ],
)
def test_bad_values_are_refused_up_front_naming_the_option(
    grid: Any, ranges: Any, message: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        expand("naive-restore", grid, ranges)
    assert str(info.value) == message


def test_number_parameter_messages_show_decimals_never_fractions() -> None:
    for grid in (["duration_s=-0.25"], {"duration_s": [Fraction(-1, 4)]}):
        with pytest.raises(ScenarioError) as info:
            expand("set-clock", grid)
        assert "duration_s=-0.25 must be > 0 seconds" in str(info.value)
        assert "Fraction" not in str(info.value)
    with pytest.raises(ScenarioError, match="must be a number of seconds") as info:
        expand("set-clock", ["duration_s=abc"])
    assert "Fraction" not in str(info.value)


def test_cli_refuses_a_bad_value_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.csv"
    code, _, err = _cli(capsys, "naive-restore", "--range", "gap_ms=0:0.3:0.1", "--out", str(out))
    assert code == 2
    assert err.strip() == "kvmclock sweep: --range gap_ms: gap_ms=0.1 must be an integer"
    assert not out.exists()
    code, _, err = _cli(capsys, "naive-restore", "--grid", "gap_ms=1.0", "--grid", "vcpus=2",
                        "--profile", "upstream", "--workers", "1", "--out", str(out))
    assert code == 0, err
    assert [r["param.gap_ms"] for r in read_rows(out)] == [1]


# ------------------------------------------------------------------------------------------
# item 3: run ids of typed values; dropped rows said
# ------------------------------------------------------------------------------------------
def test_run_ids_use_the_typed_value() -> None:
    ids = {
        expand("set-clock", [f"duration_s={v}"], profiles="upstream")[0].id
        for v in ("1", "1.0", "1.00")
    }
    ids.add(expand("set-clock", {"duration_s": [1]}, profiles="upstream")[0].id)
    ids.add(expand("set-clock", {"duration_s": [1.0]}, profiles="upstream")[0].id)
    assert len(ids) == 1
    half = {
        expand("set-clock", [f"duration_s={v}"], profiles="upstream")[0].id
        for v in ("0.5", "0.50")
    }
    assert len(half) == 1 and half.isdisjoint(ids)


def test_rows_not_in_this_sweep_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "g.csv"
    wide = {"gap_ms": [990, 1000, 1010], "vcpus": [2]}
    sweep.run("naive-restore", grid=wide, profiles="upstream", workers=1, out=out, table=False)
    with pytest.warns(DroppedRowsWarning, match=r"g\.csv: 2 rows not in this sweep dropped") as w:
        rows = sweep.run("naive-restore", grid={"gap_ms": [1000], "vcpus": [2]},
                         profiles="upstream", workers=1, out=out, table=False)
    assert [x.message.count for x in w if isinstance(x.message, DroppedRowsWarning)] == [2]
    assert len(rows) == 1 and len(read_rows(out)) == 1
    # nothing dropped: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", DroppedRowsWarning)
        sweep.run("naive-restore", grid={"gap_ms": [1000], "vcpus": [2]}, profiles="upstream",
                  workers=1, out=out, table=False)
    # the command says it on its last line, singular and plural right
    sweep.run("naive-restore", grid=wide, profiles="upstream", workers=1, out=out, table=False)
    code, _, err = _cli(capsys, "naive-restore", "--grid", "gap_ms=1000.0", "--grid", "vcpus=2",
                        "--profile", "upstream", "--workers", "1", "--out", str(out))
    assert code == 0, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"wrote {out} (1 run: 0 ran in ")
    assert line.endswith("1 was already there; 2 rows not in this sweep dropped)")


# ------------------------------------------------------------------------------------------
# item 7: a str parameter keeps "none"
# ------------------------------------------------------------------------------------------
def test_str_parameter_keeps_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pts = expand("patch09-hang", ["fault=none,patch09-missing-do"], profiles="series")
    assert [p.params["fault"] for p in pts] == ["none", "patch09-missing-do"]
    assert expand("patch09-hang", {"fault": ["none"]}, profiles="series")[0].id == pts[0].id
    with pytest.raises(ScenarioError, match=r"fault=None invalid; choose one of: none, "):
        expand("patch09-hang", {"fault": [None]})
    with pytest.raises(ScenarioError, match=r"--grid fault: fault='off' invalid; choose one of"):
        expand("patch09-hang", ["fault=off"])
    for ext in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"f{ext}"
        code, _, err = _cli(capsys, "patch09-hang", "--grid", "fault=none",
                            "--grid", "duration_s=0.5", "--profile", "series",
                            "--workers", "1", "--out", str(out))
        assert code == 0, err
        (row,) = read_rows(out)
        assert row["param.fault"] == "none" and row["status"] == "ok"


# ------------------------------------------------------------------------------------------
# item 8: the livelocked runs and the error rows, listed
# ------------------------------------------------------------------------------------------
def test_summary_lists_livelocked_runs(tmp_path: Path) -> None:
    rows = sweep.run("patch09-hang", grid={"fault": ["none", "patch09-missing-do"],
                                           "trigger_at_s": [0.1], "duration_s": [0.5]},
                     profiles="series,upstream", workers=1, table=False)
    assert isinstance(rows, list)
    s = summary(rows)
    (hung,) = [r for r in rows if r["livelock"]]
    assert s["livelocks"] == 1
    assert s["livelock_runs"] == [{
        "run_id": hung["run_id"], "profile": "series", "seed": 0,
        "params": {"duration_s": 0.5, "fault": "patch09-missing-do", "trigger_at_s": 0.1},
    }]
    text = format_summary(s)
    assert ("livelocks: 1\n  duration_s=0.5, fault=patch09-missing-do, trigger_at_s=0.1; "
            f"profile series, seed 0 [{hung['run_id']}]\nerrors: 0") in text


def test_summary_lists_ten_then_counts() -> None:
    def row(i: int, **kw: Any) -> dict[str, Any]:
        return {"run_id": f"{i:016x}", "scenario": "x", "profile": "upstream", "seed": i,
                "param.n": i, "status": "ok", "error": None, "livelock": False, **kw}

    rows = [row(i, livelock=True) for i in range(12)]
    rows += [row(100 + i, status="error", error="ValueError: no") for i in range(13)]
    text = format_summary(summary(rows))
    assert "livelocks: 12\n" in text and text.count("; profile upstream, seed ") == 20
    assert "  ... and 2 more\nerrors: 13\n" in text and text.endswith("  ... and 3 more")


# ------------------------------------------------------------------------------------------
# item 10: one rendering of values, --summary of empty files and directories, one prefix
# ------------------------------------------------------------------------------------------
def test_show_value() -> None:
    assert [show_value(v) for v in (1, 1.0, 1.5, Fraction(1, 10), Fraction(1, 3), True,
                                     False, None, "none", 1e-7)] == [
        "1", "1", "1.5", "0.1", "0.3333333333333333", "true", "false", "none", "none",
        "0.0000001"]


def test_summary_renders_values_alike_in_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (ROOT / "python/kvmclock/scenario/builtin/set-clock.toml").read_text()
    flagged = tmp_path / "flag.toml"
    flagged.write_text(text.replace("[params]\n", "[params]\nflag = false\n", 1))
    texts = []
    for ext in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"v{ext}"
        code, printed, err = _cli(capsys, str(flagged), "--grid", "duration_s=1,1.5",
                                  "--grid", "flag=true", "--grid", "vcpus=2.0",
                                  "--profile", "upstream", "--workers", "1", "--out", str(out))
        assert code == 0, err
        code, summ, err = _cli(capsys, "--summary", str(out))
        assert code == 0, err
        assert summ == printed  # the same text during the run and from the table
        texts.append(summ)
    assert texts[0] == texts[1] == texts[2]
    assert "duration_s=1, flag=true, vcpus=2;" in texts[0]
    assert "1.0" not in texts[0] and "True" not in texts[0]
    rows = read_rows(tmp_path / "v.parquet")
    assert [r["param.duration_s"] for r in rows] == [1.0, 1.5]
    assert "duration_s=1.5, flag=true" in format_summary(summary(rows[1:]))


def test_summary_of_an_empty_file_or_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    code, _, err = _cli(capsys, "--summary", str(empty))
    assert code == 2 and err.startswith("kvmclock sweep: --summary ") and "is empty" in err
    d = tmp_path / "dir.csv"
    d.mkdir()
    code, _, err = _cli(capsys, "--summary", str(d))
    assert code == 2 and "is a directory" in err and "no such file" not in err


def test_every_error_line_starts_kvmclock_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        ("naive-restore", "--out", str(tmp_path / "missing" / "r.csv")),
        ("naive-restore", "--out", str(tmp_path / "r.txt")),
        ("naive-restore", "--grid", "nope=1", "--out", str(tmp_path / "r.csv")),
        ("no-such-scenario", "--out", str(tmp_path / "r.csv")),
        ("--summary", str(tmp_path / "nothing.csv")),
    ]
    for argv in cases:
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and err.startswith("kvmclock sweep: "), (argv, err)


def test_profile_help_says_when_the_sweep_section_is_used(
    capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["sweep", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "used only without --grid/--range" in text
    doc = (ROOT / "docs/commands/sweep.md").read_text()
    assert "without `--grid`/`--range` the file's `[sweep]` profiles" in doc


def test_profile_default_follows_the_help(tmp_path: Path) -> None:
    text = (ROOT / "python/kvmclock/scenario/builtin/naive-restore.toml").read_text()
    assert 'profiles = ["upstream"]' in text  # its [sweep] section
    from kvmclock.cli.sweep import _plan_args
    from kvmclock.scenario import load_builtin

    sf = load_builtin("naive-restore")

    def args(**kw: Any) -> Any:
        base = {"grid": None, "range": None, "seeds": None, "profile": None}
        return types.SimpleNamespace(**{**base, **kw})

    assert _plan_args(args(), sf)["profiles"] == ["upstream"]
    assert _plan_args(args(grid=["gap_ms=1"]), sf)["profiles"] is None  # run.profiles


def test_unreachable_dask_scheduler_times_out_in_5_s(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmclock.sweep import execute

    seen: dict[str, Any] = {}

    class Client:
        def __init__(self, address: str, **kw: Any) -> None:
            seen.update(kw, address=address)
            raise OSError(f"Timed out trying to connect to {address} after 5 s")

    monkeypatch.setitem(sys.modules, "distributed", types.SimpleNamespace(Client=Client))
    assert execute.CONNECT_TIMEOUT_S == 5
    with pytest.raises(UsageError, match=r"cannot reach a Dask scheduler there within 5 s"):
        execute.make_executor(None, "tcp://127.0.0.1:1")
    assert seen == {"address": "tcp://127.0.0.1:1", "timeout": "5s"}


# ------------------------------------------------------------------------------------------
# item 9: the docs' example comment
# ------------------------------------------------------------------------------------------
def test_docs_example_frequencies() -> None:
    text = (ROOT / "docs/sweeps.md").read_text()
    assert "100 kHz or 1 GHz" not in text
    assert "100,008 kHz (about 100 MHz)" in text
    assert 2594000 - 2593992 == 8 and 2694000 - 2593992 == 100_008
    assert 3593992 - 2593992 == 1_000_000

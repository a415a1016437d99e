"""``kvmclock sweep --json`` against its JSON Schema (python/kvmclock/schemas/sweep.schema.json):
valid Draft 2020-12, every field described, schema and schema_version first, and real outputs
validate: a sweep with an error row, its resume, and ``--summary`` of the table. The extremes
are checked against the table read back here with the csv module (not with kvmclock)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kvmclock import cli
from schema_util import load_schema


def schema() -> dict[str, Any]:
    return load_schema("sweep")


def sweep_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = cli.main(["sweep", *argv, "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.sweep", 1)
    jsonschema.Draft202012Validator(schema()).validate(doc)
    return doc


def test_real_outputs_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.csv")
    # gap_ms=10**13 is within [params] (min 0) but makes run.duration_s beyond ktime_t: the
    # run refuses it, an error row
    argv = ("naive-restore", "--grid", "gap_ms=10000000000000,999,1001", "--grid", "vcpus=2",
            "--profile", "upstream", "--workers", "1", "--out", out)
    doc = sweep_json(capsys, *argv)
    assert (doc["scenario"], doc["out"], doc["planned"], doc["ran"], doc["resumed"]) == (
        "naive-restore", out, 3, 3, 0)
    s = doc["summary"]
    assert s["runs"] == 3 and s["by_status"] == {"ok": 2, "error": 1}
    (err,) = s["errors"]
    assert err["params"] == {"gap_ms": 10**13, "vcpus": 2} and "ktime_t" in err["error"]
    # the extremes, from the table read with the csv module
    with open(out, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    jumps = [(max(int(r["max_abs_monotonic_jump_ns"]), int(r["max_abs_realtime_jump_ns"])), r)
             for r in rows]
    value, row = max(jumps, key=lambda x: x[0])
    assert s["worst_jump"]["value_ns"] == value
    assert s["worst_jump"]["run_id"] == row["run_id"]
    assert s["worst_jump"]["params"] == {"gap_ms": int(row["param.gap_ms"]), "vcpus": 2}
    assert s["worst_skew"]["value_ns"] == max(int(r["max_skew_ns"]) for r in rows)
    # the same sweep again: everything resumed
    again = sweep_json(capsys, *argv)
    assert (again["ran"], again["resumed"]) == (0, 3)
    assert again["summary"] == s
    # --summary of the table: the same summary, no counts
    summ = sweep_json(capsys, "--summary", out)
    assert (summ["scenario"], summ["planned"], summ["ran"], summ["resumed"]) == (
        None, None, None, None)
    assert summ["summary"] == s


def test_json_to_a_file_keeps_the_text(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out, js = tmp_path / "r.jsonl", tmp_path / "sweep.json"
    code = cli.main(["sweep", "set-clock", "--grid", "duration_s=0.5", "--seeds", "2",
                     "--profile", "upstream", "--workers", "1", "--out", str(out),
                     "--json", str(js)])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert text.startswith("runs: 2 (2 ok)")
    doc = json.loads(js.read_text())
    jsonschema.Draft202012Validator(schema()).validate(doc)
    assert doc["summary"]["worst_jump"] is None  # set-clock has no lifecycle action

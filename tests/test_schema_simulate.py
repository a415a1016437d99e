"""``kvmclock simulate --json`` and ``kvmclock.sim.run_scenario`` against their JSON Schema
(python/kvmclock/schemas/simulate.schema.json): valid Draft 2020-12, every field described,
schema and schema_version first, only named fields (lists of objects, never unnamed arrays).
Real outputs validate: every built-in scenario under every profile its file runs (with
``trace=True``, the run's ``trace`` rows too), a run stopped by a livelock, a lifecycle action
the run ended in (an incomplete record), several guests at one level, a host KVM running VMs
of several names, and the CLI document."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kvmclock import cli
from kvmclock.sim import SCENARIOS, run_scenario
from schema_util import load_schema


def schema() -> dict[str, Any]:
    return load_schema("simulate")


def run_validator() -> jsonschema.Draft202012Validator:
    """A validator of one run (``$defs/run``: what run_scenario returns)."""
    s = schema()
    return jsonschema.Draft202012Validator(
        {"$schema": s["$schema"], "$defs": s["$defs"], "$ref": "#/$defs/run"}
    )



CASES = [(n, p) for n, sc in SCENARIOS.items() for p in sc.file.model.run.profiles]


def test_cases_cover_every_builtin_and_its_profiles() -> None:
    assert len(SCENARIOS) == 10
    assert [p for n, p in CASES if n in ("restore-shelf", "ch-restore")] == ["upstream"] * 2
    assert len(CASES) == 8 * 3 + 2


@pytest.mark.parametrize(("name", "profile"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_builtin_runs_validate(name: str, profile: str) -> None:
    run = run_scenario(name, profile, trace=True)
    run_validator().validate(run)
    assert run["trace"], "trace=True gives the trace rows"
    # values the schema cannot tie together
    assert run["stopped_early"] is (run["end_ns"] < run["duration_ns"])
    assert (run["stop_reason"] is None) is (run["livelock"] is None)
    names = {lv["name"]: lv["level"] for lv in run["levels"]}
    assert all(names[s["kernel"]] == s["level"] for s in run["samples"])


def test_a_run_stopped_by_a_livelock() -> None:
    run = run_scenario("patch09-hang", "series")
    run_validator().validate(run)
    assert run["stopped_early"] and run["livelock"] is not None
    assert run["stop_reason"] == "livelock in kvm_get_host_time_and_cycles at 1 s"


def test_special_shapes_occur_in_the_builtins() -> None:
    """The optional parts of a run are exercised by the cases above: several guests at one
    level (restore-shelf), masterclock_timelines (ch-restore), backwards events with and
    without the stable bit (tsc-sync)."""
    shelf = run_scenario("restore-shelf", "upstream")
    assert len({s["kernel"] for s in shelf["samples"] if s["level"] == 1}) == 3
    ch = run_scenario("ch-restore", "upstream")
    assert any("masterclock_timelines" in lv for lv in ch["levels"])
    sync = run_scenario("tsc-sync", "series")
    assert any(lv["backwards_events"] for lv in sync["levels"])


def test_an_incomplete_lifecycle_record(tmp_path: Path) -> None:
    """migrate-tolerance cut at 2.6 s: the source stopped at 2.5 s (2 s + 0.5 s of precopy),
    the run ends 0.1 s into the 0.3 s downtime: a record with completed false and nulls."""
    text = resources.files("kvmclock").joinpath(
        "scenario/builtin/migrate-tolerance.toml").read_text("utf-8")
    line = 'duration_s = "=migrate_at_s + precopy_s + downtime_ms / 1000 + 2"'
    assert line in text
    path = tmp_path / "cut.toml"
    path.write_text(text.replace(line, "duration_s = 2.6"), encoding="utf-8")
    run = run_scenario(str(path), "upstream")
    run_validator().validate(run)
    (rec,) = run["lifecycle"]
    assert rec["completed"] is False and rec["t_ns"] is None and rec["stopped_ns"] == 2_500_000_000


def test_the_old_unnamed_arrays_are_refused() -> None:
    run = run_scenario("nested", "upstream", duration_s=1)
    v = run_validator()
    v.validate(run)
    for key, old in (
        ("moments", [[0, 0, "x"]]),
        ("samples", [[10_000_000, 1, 0, True]]),
    ):
        with pytest.raises(jsonschema.ValidationError):
            v.validate({**run, key: old})
    lv = dict(run["levels"][0], masterclock_timeline=[[0, True]])
    with pytest.raises(jsonschema.ValidationError):
        v.validate({**run, "levels": [lv, *run["levels"][1:]]})
    with pytest.raises(jsonschema.ValidationError):
        v.validate({**run, "extra": 1})


def _simulate_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = cli.main(["simulate", *argv, "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.mark.parametrize(
    "argv",
    [
        ["--duration", "1"],
        ["--scenario", "patch09-hang", "--profile", "series"],
        ["--scenario", "ch-restore", "--seed", "5"],
        ["--scenario", "set-clock", "--profile", "gtod,upstream", "--duration", "0.5"],
    ],
    ids=["nested", "patch09-hang", "ch-restore", "set-clock"],
)
def test_cli_documents_validate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    doc = _simulate_json(capsys, *argv)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.simulate", 1)
    jsonschema.Draft202012Validator(schema()).validate(doc)
    assert doc["description"] == SCENARIOS[doc["scenario"]].description
    assert all("trace" not in r for r in doc["runs"])


def test_cli_document_with_trace_has_no_trace_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--trace writes the ftrace text elsewhere; the JSON runs stay without ``trace``."""
    out = tmp_path / "t.txt"
    code = cli.main(["simulate", "--scenario", "set-clock", "--profile", "upstream",
                     "--duration", "0.5", "--trace", str(out), "--json", str(tmp_path / "r.json")])
    capsys.readouterr()
    assert code == 0 and out.read_text()
    doc = json.loads((tmp_path / "r.json").read_text())
    jsonschema.Draft202012Validator(schema()).validate(doc)


def test_docs_example_is_the_real_output(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/json.md's simulate example (lists shortened) has the real values: every field it
    shows equals the command's output, and each list entry it shows is in the real list."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "json.md").read_text()
    section = text.split("### `kvmclock simulate`", 1)[1].split("\n### ", 1)[0]
    shown = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    real = _simulate_json(capsys, "--scenario", "patch09-hang", "--profile", "series")
    assert {k: v for k, v in shown.items() if k != "runs"} == {
        k: v for k, v in real.items() if k != "runs"}
    (run,), (real_run,) = shown["runs"], real["runs"]
    assert set(run) == set(real_run)
    for key, value in run.items():
        if key == "levels":
            levels = {lv["name"]: lv for lv in real_run["levels"]}
            for lv in value:
                assert lv == {k: levels[lv["name"]][k] for k in lv}, lv["name"]
        elif key in ("moments", "samples"):
            assert all(e in real_run[key] for e in value), key
        elif key == "switches":
            assert value.items() <= real_run[key].items()
        else:
            assert value == real_run[key], key


def test_docs_count_the_builtin_scenarios() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "scenarios.md").read_text()
    words = {5: "five", 10: "ten", 11: "eleven", 12: "twelve"}
    assert f"The {words[len(SCENARIOS)]} built-in scenarios are such files" in text

"""``kvmclock drift --json`` against its JSON Schema
(python/kvmclock/schemas/drift.schema.json): valid Draft 2020-12, every field described, the
conventions (schema and schema_version first, units in the key names) and real outputs of the
command validate: every TSC mode (native, within the tolerance, scaled on vmx and svm,
catch-up), both time bases, a 30-day interval, the smallest and largest kHz, a switch flipped
with --set.  The numbers are checked against the independent reference
(tests/reference/drift_ref.py), which never imports kvmclock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kvmclock import cli
from reference import drift_ref as ref
from schema_util import load_schema


def schema() -> dict[str, Any]:
    return load_schema("drift")



CASES = [
    ["--tsc-khz", "1995311"],
    ["--tsc-khz", "3000000", "--guest-khz", "3000500"],  # within 250 ppm: native
    ["--tsc-khz", "2999999", "--guest-khz", "1499999", "--vendor", "vmx"],
    ["--tsc-khz", "2999999", "--guest-khz", "1499999", "--vendor", "svm"],
    ["--tsc-khz", "3000000", "--guest-khz", "6000000", "--vendor", "none"],  # catch-up
    ["--tsc-khz", "1995311", "--profile", "gtod", "--seconds", "10"],  # CLOCK_BOOTTIME base
    ["--tsc-khz", "2593992", "--seconds", "2592000"],  # 30 days
    ["--tsc-khz", "1", "--seconds", "1"],
    ["--tsc-khz", "4294967295", "--seconds", "0.001"],
    ["--tsc-khz", "3000000", "--guest-khz", "1"],  # scales to 0 kHz: the 6.16 clamp takes 1
    ["--tsc-khz", "1995311", "--profile", "upstream", "--set", "kvmclock_base=boot"],
]


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    code = cli.main(["drift", *argv, "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def opt(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(a) for a in CASES])
def test_real_outputs_validate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, argv)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.drift", 1)
    jsonschema.Draft202012Validator(schema()).validate(doc)
    # the values, from the reference's own kernel arithmetic
    host = int(argv[1])
    guest = opt(argv, "--guest-khz")
    vendor = opt(argv, "--vendor") or "vmx"
    mode, frac, ratio, tgt = ref.guest_setup(host, int(guest) if guest else None, vendor)
    assert doc["tsc_mode"] == mode and doc["record_tsc_khz"] == tgt
    assert doc["tsc_scaling_ratio"] == (ratio if mode == "scaled" else None)
    assert doc["frac_bits"] == (frac if mode == "scaled" else None)
    assert (doc["a"]["mult"], doc["a"]["shift"]) == ref.tsc_clocksource(host)
    assert doc["jump_ns"] == doc["a_ns"] - doc["b_ns"]
    if host > 1 and doc["interval_s"] <= 10:  # the reference ticks the timekeeper at 250 Hz
        r = ref.reanchor(host, int(guest) if guest else None, vendor, doc["interval_cycles"])
        assert doc["jump_ns"] == r["jump"]


def test_no_unit_less_or_renamed_keys_left(capsys: pytest.CaptureFixture[str]) -> None:
    """The keys before the conventions (seconds, cycles, ratio, base_frac, anchor_tsc) are gone:
    every duration and count carries its unit."""
    doc = run_json(capsys, ["--tsc-khz", "1995311", "--seconds", "10"])
    assert not {"seconds", "cycles", "ratio", "base_frac", "anchor_tsc"} & set(doc)
    assert doc["interval_s"] == 10.0 and doc["interval_cycles"] == 1995311 * 1000 * 10


def test_json_to_a_file_keeps_the_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "drift.json"
    code = cli.main(["drift", "--tsc-khz", "1995311", "--json", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("host TSC 1995311 kHz") and "jump_ns +411" in out
    jsonschema.Draft202012Validator(schema()).validate(json.loads(path.read_text()))

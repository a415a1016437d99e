"""``kvmclock decode --json`` against its JSON Schema (python/kvmclock/schemas/decode.schema.json):
the schema is valid Draft 2020-12, and real outputs of the command, edge cases included,
validate."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kvmclock import trace as T
from schema_util import load_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "python" / "kvmclock" / "schemas" / "decode.schema.json"


def schema() -> dict[str, Any]:
    return load_schema("decode")


def pv(version: int, tsc: int, st: int, mul: int, shift: int, flags: int) -> str:
    return struct.pack("<IIQQIbB2x", version, 0, tsc, st, mul, shift, flags).hex()


def wc(version: int, sec: int, nsec: int) -> str:
    return struct.pack("<III", version, sec, nsec).hex()


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmclock", "decode", *args], input=stdin,
                          text=True, capture_output=True, timeout=120, cwd=ROOT, check=False)



TRACE_LINES = "\n".join(
    T.format_line("vmm", 5, 0, 10**9 + i, "kvm_pvclock_update",
                  T.fields_pvclock_update(i, 2 + i, 0x10, 0x20, 0xA3D70A3D, shift, flags))
    for i, (shift, flags) in enumerate([(-1, 1), (127, 0xFF), (-128, 0)])) + "\n"
COUNTER_LINE = T.format_line("vmm", 5, 0, 123456789, "kvm_pvclock_update",
                             T.fields_pvclock_update(0, 2, 1, 2, 3, 0, 1),
                             raw_timestamp=True) + "\n"
CASES: dict[str, tuple[list[str], str | None]] = {
    "valid-pvclock": ([pv(2, 0x1C4E1E2F0A, 10**9, 0xA3D70A3D, -1, 1)], None),
    "valid-pvclock-tsc": ([pv(2, 0x1C4E1E2F0A, 10**9, 0xA3D70A3D, -1, 1), "--tsc",
                           str(2**64 - 1)], None),
    "shift-127-unknown-flags": ([pv(3, 0, 2**64 - 1, 0, 127, 0xFF)], None),
    "shift-minus-64": ([pv(2, 1, 2, 3, -64, 0)], None),
    "khz-beyond-u32": ([pv(2, 0, 0, 0x80000000, -34, 0)], None),
    "wall-clock": ([wc(2, 1_700_000_000, 5)], None),
    "wall-clock-bad-nsec": ([wc(1, 2**32 - 1, 2**32 - 1)], None),
    "mixed-lines": (["-"], wc(2, 1, 2) + "\n" + pv(2, 1, 2, 3, 0, 1) + "\n"),
    "ambiguous-96": ([pv(2, 1, 2, 3, 0, 1) * 3], None),
    "ambiguous-96-as-wall-clocks": ([pv(2, 1, 2, 3, 0, 1) * 3, "--type", "wallclock"], None),
    "trace-lines": (["-"], TRACE_LINES),
    "trace-counter-clock": (["-"], COUNTER_LINE),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_json_validates(name: str) -> None:
    argv, stdin = CASES[name]
    p = run(*argv, "--json", stdin=stdin)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.decode", 1)
    jsonschema.Draft202012Validator(schema()).validate(doc)


def test_json_to_a_file_keeps_the_text(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    p = run(pv(2, 1, 2, 3, 127, 1), "--json", str(out), "--strict")
    assert p.returncode == 1
    assert p.stdout.startswith("record 0: pvclock_vcpu_time_info\n")
    doc = json.loads(out.read_text())
    jsonschema.Draft202012Validator(schema()).validate(doc)
    assert doc["invalid_fields"] == 1

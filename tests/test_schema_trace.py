"""``kvmclock trace --json`` against its JSON Schema (python/kvmclock/schemas/trace.schema.json):
the schema is valid Draft 2020-12, and real outputs of the command, edge cases included,
validate."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kvmclock import trace as T
from schema_util import load_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "python" / "kvmclock" / "schemas" / "trace.schema.json"
DATA = ROOT / "tests" / "data" / "trace"
sys.path.insert(0, str(ROOT / "tests"))
from test_trace_grouping import (  # noqa: E402
    CH_RESTORE,
    INTERLEAVED,
    MAIN_THREAD,
    QEMU_NO_TGID,
    QEMU_TGID,
    TWO_VMS,
)


def schema() -> dict[str, Any]:
    return load_schema("trace")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmclock", "trace", *args], input=stdin,
                          text=True, capture_output=True, timeout=120, cwd=ROOT, check=False)



INVALID_SHIFT = (
    "vmm-7 [000] ..... 1.000000: kvm_pvclock_update: vcpu_id 0, pvclock { version 2, "
    "tsc_timestamp 0x10, system_time 0x20, tsc_to_system_mul 0x0, tsc_shift 127, "
    "flags 0xf9 }\n"
    "vmm-7 [000] ..... 1.000001: kvm_pvclock_update: vcpu_id 0, pvclock { version 3, "
    "tsc_timestamp 0x8, system_time 0x10, tsc_to_system_mul 0xa3d70a3d, tsc_shift -1, "
    "flags 0x0 }\n"
)
LEVELS = (
    "L0 host-1 [000] ..... 1.000000: kvm_update_master_clock: masterclock 1 hostclock "
    "stable 1 offsetmatched 1\n"
    "L1 guest-2 [000] ..... 1.000001: kvm_write_tsc_offset: vcpu=0 prev=0 next=5\n"
)
CASES = {
    "qemu-no-tgid": QEMU_NO_TGID,
    "qemu-tgid": QEMU_TGID,
    "two-vms": TWO_VMS,
    "interleaved-guess-note": INTERLEAVED,
    "main-thread-and-vcpu-mismatch": MAIN_THREAD,
    "ch-restore": CH_RESTORE,
    "invalid-shift-and-odd-version": INVALID_SHIFT,
    "levels": LEVELS,
    "headers-and-garbage-only": "# tracer: nop\ncpus=2\nnot a trace line\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("group", ["auto", "pid", "one"])
def test_summaries_validate(name: str, group: str) -> None:
    doc = T.summarize(T.parse_text(CASES[name]), group=group)
    jsonschema.Draft202012Validator(schema()).validate(json.loads(json.dumps(doc)))


@pytest.mark.parametrize("path", sorted(glob.glob(str(DATA / "*.txt"))), ids=os.path.basename)
def test_cli_json_of_stored_captures_validates(path: str) -> None:
    p = run(path, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert list(doc)[:2] == ["schema", "schema_version"]
    jsonschema.Draft202012Validator(schema()).validate(doc)


def test_cli_json_to_a_file_keeps_the_text(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    p = run("-", "--json", str(out), stdin=CH_RESTORE)
    assert p.returncode == 0, p.stderr
    assert "masterclock stays off" in p.stdout  # the text still on stdout
    doc = json.loads(out.read_text())
    jsonschema.Draft202012Validator(schema()).validate(doc)
    kinds = [a["kind"] for a in doc["anomalies"]]
    assert kinds == ["tsc_offsets_differ"]
    # an invalid --json path is refused before any work, naming the option
    bad = run("-", "--json", str(tmp_path / "no" / "t.json"), stdin=CH_RESTORE)
    assert bad.returncode == 2 and "--json" in bad.stderr

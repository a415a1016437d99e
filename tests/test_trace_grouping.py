# ruff: noqa: E501  (the traces are whole ftrace lines, as the kernel prints them)
"""``kvmclock trace`` puts the vCPU threads of one VM together, keys per-vCPU data by VM, and
reports vCPUs of one VM that end with different TSC offsets.

The traces are written by hand in the text ftrace prints (kernel/trace/trace_output.c
``trace_print_context``: ``%16s-%-7d``, then with ``options/record-tgid`` ``(%7d)`` or
``(-------)`` when the tgid is unknown, then ``[%03d]``) and the TP_printk forms of
arch/x86/kvm/trace.h (``kvm_write_tsc_offset``: ``vcpu=%u prev=%llu next=%llu``;
``kvm_track_tsc``: ``vcpu_id %u masterclock %u offsetmatched %u nr_online %u hostclock %s``;
``kvm_update_master_clock``: ``masterclock %d hostclock %s offsetmatched %u``). Expected
values are worked out by hand in the comments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from kvmclock import trace as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
U64 = 2**64

# QEMU, no tgid column: two vCPU threads of one VM. vCPU 0's unmatched write opens generation
# 1 (offsetmatched 0; numbered from 1 as kvm->arch.cur_tsc_generation is), vCPU 1's matched
# write joins it (offsetmatched 1 = one vCPU besides the opener), then 1 + 1 == nr_online 2
# turns the masterclock on.
OFF_A = U64 - 100  # offset -100 cycles as the u64 %llu prints
QEMU_NO_TGID = f"""\
# tracer: nop
       CPU 0/KVM-4321    [000] .....    10.000001: kvm_write_tsc_offset: vcpu=0 prev=0 next={OFF_A}
       CPU 0/KVM-4321    [000] .....    10.000002: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
       CPU 1/KVM-4322    [001] .....    10.000003: kvm_write_tsc_offset: vcpu=1 prev=0 next={OFF_A}
       CPU 1/KVM-4322    [001] .....    10.000004: kvm_track_tsc: vcpu_id 1 masterclock 0 offsetmatched 1 nr_online 2 hostclock tsc
       CPU 0/KVM-4321    [000] .....    10.000005: kvm_update_master_clock: masterclock 1 hostclock tsc offsetmatched 1
"""

# The same VM traced with options/record-tgid: the main thread (tgid 4320) sets the clock, and
# one line of vCPU 1 has an unknown tgid "(-------)".
QEMU_TGID = f"""\
# tracer: nop
#
#           TASK-PID     TGID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |        |   |||||     |         |
       CPU 0/KVM-4321    (   4320) [000] .....    10.000001: kvm_write_tsc_offset: vcpu=0 prev=0 next={OFF_A}
       CPU 0/KVM-4321    (   4320) [000] .....    10.000002: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
       CPU 1/KVM-4322    (-------) [001] .....    10.000003: kvm_write_tsc_offset: vcpu=1 prev=0 next={OFF_A}
       CPU 1/KVM-4322    (   4320) [001] .....    10.000004: kvm_track_tsc: vcpu_id 1 masterclock 0 offsetmatched 1 nr_online 2 hostclock tsc
 qemu-system-x86-4320    (   4320) [002] .....    10.000005: kvm_update_master_clock: masterclock 1 hostclock tsc offsetmatched 1
"""

# Two QEMU VMs, no tgid: a second "CPU 0/KVM" thread starts the second VM.
TWO_VMS = f"""\
       CPU 0/KVM-100     [000] .....    1.000001: kvm_write_tsc_offset: vcpu=0 prev=0 next={OFF_A}
       CPU 1/KVM-101     [001] .....    1.000002: kvm_write_tsc_offset: vcpu=1 prev=0 next={OFF_A}
       CPU 0/KVM-200     [002] .....    1.000003: kvm_write_tsc_offset: vcpu=0 prev=0 next=7
       CPU 1/KVM-201     [003] .....    1.000004: kvm_write_tsc_offset: vcpu=1 prev=0 next=7
"""

# The shape reported for cloud-hypervisor's vm.restore (cloud-hypervisor pull request 8383):
# the restore writes each vCPU's TSC offset again, at different times, so the offsets differ;
# each write is unmatched (offsetmatched 0, a new generation) and the masterclock goes off.
# Offsets: boot A for both; restore B = -5000000000 for vCPU 0, C = -4999987654 for vCPU 1.
# C - B = 5000000000 - 4999987654 = 12346 cycles.
OFF_B = U64 - 5_000_000_000
OFF_C = U64 - 4_999_987_654
CH_RESTORE = f"""\
           vcpu0-5001    [000] d..1.   200.000001: kvm_write_tsc_offset: vcpu=0 prev=0 next={OFF_A}
           vcpu0-5001    [000] d..1.   200.000002: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
           vcpu1-5002    [001] d..1.   200.000003: kvm_write_tsc_offset: vcpu=1 prev=0 next={OFF_A}
           vcpu1-5002    [001] d..1.   200.000004: kvm_track_tsc: vcpu_id 1 masterclock 0 offsetmatched 1 nr_online 2 hostclock tsc
           vcpu0-5001    [000] d..1.   200.000005: kvm_update_master_clock: masterclock 1 hostclock tsc offsetmatched 1
           vcpu0-5001    [000] d..1.   300.000001: kvm_write_tsc_offset: vcpu=0 prev={OFF_A} next={OFF_B}
           vcpu0-5001    [000] d..1.   300.000002: kvm_track_tsc: vcpu_id 0 masterclock 1 offsetmatched 0 nr_online 2 hostclock tsc
           vcpu1-5002    [001] d..1.   300.000003: kvm_write_tsc_offset: vcpu=1 prev={OFF_A} next={OFF_C}
           vcpu1-5002    [001] d..1.   300.000004: kvm_track_tsc: vcpu_id 1 masterclock 1 offsetmatched 0 nr_online 2 hostclock tsc
           vcpu0-5001    [000] d..1.   300.000005: kvm_update_master_clock: masterclock 0 hostclock tsc offsetmatched 0
"""


def summary(text: str, group: str = "auto") -> dict[str, Any]:
    return T.summarize(T.parse_text(text), group=group)


def run(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmclock", *args], input=stdin, text=True,
                          capture_output=True, timeout=120, cwd=ROOT, check=False)


def test_vcpu_thread_names() -> None:
    assert T.vcpu_thread_index("CPU 0/KVM") == ("qemu", 0)
    assert T.vcpu_thread_index("CPU 12/KVM") == ("qemu", 12)
    assert T.vcpu_thread_index("vcpu3") == ("cloud-hypervisor", 3)
    assert T.vcpu_thread_index("fc_vcpu 1") == ("firecracker", 1)
    assert T.vcpu_thread_index("qemu-system-x86") is None
    assert T.vcpu_thread_index("CPU 0/TCG") is None


def _one_vm_two_vcpus(s: dict[str, Any], key: str, grouped_by: str) -> dict[str, Any]:
    (vm,) = s["vms"]
    assert (vm["vm"], vm["grouped_by"]) == (key, grouped_by)
    (gen,) = vm["tsc_generations"]
    # opened by vCPU 0 (offsetmatched 0), joined by vCPU 1 (offsetmatched 1)
    assert gen["opened_by_vcpu"] == 0 and gen["vcpus"] == [0, 1]
    assert gen["offset_cycles"] == OFF_A and gen["offset_signed_cycles"] == -100
    assert (gen["nr_vcpus_matched_tsc"], gen["online_vcpus"]) == (1, 2)
    assert [(v["vcpu_id"], v["generation"], v["tsc_offset_signed_cycles"])
            for v in vm["vcpus"]] == [(0, 1, -100), (1, 1, -100)]
    assert vm["masterclock"] is True
    assert s["anomalies"] == []
    return vm


def test_qemu_threads_without_tgid_are_one_vm() -> None:
    # before: two VMs "4321" and "4322", the second one with a generation "opened" by vCPU 1
    s = summary(QEMU_NO_TGID)
    vm = _one_vm_two_vcpus(s, "4321+4322", "vcpu_threads")
    assert [(t["pid"], t["comm"], t["vcpu_index"], t["tgid"]) for t in vm["threads"]] == [
        (4321, "CPU 0/KVM", 0, None), (4322, "CPU 1/KVM", 1, None)]


def test_qemu_threads_with_tgid_column() -> None:
    res = T.parse_text(QEMU_TGID)
    assert [r.tgid for r in res.records] == [4320, 4320, None, 4320, 4320]
    assert res.header_lines == 4 and res.skipped == []
    s = T.summarize(res)
    vm = _one_vm_two_vcpus(s, "4320", "tgid")
    # the "(-------)" line of pid 4322 went to tgid 4320 as well (seen on its other line)
    assert [t["pid"] for t in vm["threads"]] == [4321, 4322, 4320]
    assert vm["events"] == 5


def test_group_pid_still_splits_threads() -> None:
    s = summary(QEMU_NO_TGID, group="pid")
    assert [vm["vm"] for vm in s["vms"]] == ["4321", "4322"]
    one = summary(QEMU_NO_TGID, group="one")
    assert [vm["vm"] for vm in one["vms"]] == ["all"]


def test_two_qemu_vms_without_tgid() -> None:
    s = summary(TWO_VMS)
    assert [(vm["vm"], [v["vcpu_id"] for v in vm["vcpus"]]) for vm in s["vms"]] == [
        ("100+101", [0, 1]), ("200+201", [0, 1])]
    assert s["anomalies"] == []  # each VM's vCPUs share their offset


def test_generation_opened_before_the_trace() -> None:
    text = ("CPU 1/KVM-11 [001] ..... 1.000000: kvm_track_tsc: vcpu_id 1 masterclock 0 "
            "offsetmatched 1 nr_online 2 hostclock tsc\n")
    (vm,) = summary(text)["vms"]
    (gen,) = vm["tsc_generations"]
    assert gen["opened_by_vcpu"] is None and gen["vcpus"] == [1]
    assert "opened before the trace" in T.format_summary(summary(text))


def test_matched_rewrite_by_the_opener_stays_in_its_generation() -> None:
    # __kvm_synchronize_tsc: a matched write by the vCPU already in the current generation
    # leaves nr_vcpus_matched_tsc at 0 and does not start a generation
    text = f"""\
CPU 0/KVM-11 [000] ..... 1.000001: kvm_write_tsc_offset: vcpu=0 prev=0 next={OFF_A}
CPU 0/KVM-11 [000] ..... 1.000002: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
CPU 0/KVM-11 [000] ..... 1.000003: kvm_write_tsc_offset: vcpu=0 prev={OFF_A} next={OFF_A}
CPU 0/KVM-11 [000] ..... 1.000004: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
CPU 0/KVM-11 [000] ..... 1.000005: kvm_write_tsc_offset: vcpu=0 prev={OFF_A} next=5
CPU 0/KVM-11 [000] ..... 1.000006: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
"""
    (vm,) = summary(text)["vms"]
    # the third write has another offset: a new generation
    assert [(g["opened_by_vcpu"], g["offset_cycles"]) for g in vm["tsc_generations"]] == [
        (0, OFF_A), (0, 5)]


def test_cloud_hypervisor_restore_offsets_differ() -> None:
    s = summary(CH_RESTORE)
    (vm,) = s["vms"]
    assert (vm["vm"], vm["grouped_by"]) == ("5001+5002", "vcpu_threads")
    gens = vm["tsc_generations"]
    # boot: generation 1 (vCPUs 0, 1); restore: vCPU 0 opens 2, vCPU 1 opens 3
    assert [(g["opened_by_vcpu"], g["vcpus"]) for g in gens] == [(0, [0, 1]), (0, [0]),
                                                                (1, [1])]
    assert gens[1]["offset_signed_cycles"] == -5_000_000_000
    assert gens[2]["offset_signed_cycles"] == -4_999_987_654
    assert vm["masterclock"] is False
    (a,) = s["anomalies"]
    assert (a["kind"], a["vcpu"], a["reference_vcpu"], a["difference_cycles"]) == (
        "tsc_offsets_differ", 1, 0, 12346)
    assert a["line"] == 8 and a["time_ns"] == 300_000_003_000 and a["vm"] == "5001+5002"
    assert a["detail"].startswith(
        "masterclock stays off: vCPU 1's offset differs by 12346 cycles from vCPU 0's")
    assert "offsetmatched 0" in a["detail"]
    text = T.format_summary(s)
    assert "VM 5001+5002 (by vCPU thread names)" in text
    assert "masterclock stays off: vCPU 1's offset differs by 12346 cycles" in text


def test_offsets_differ_reference_is_the_majority() -> None:
    # three vCPUs: 0 and 2 at 7, 1 at 4 -> vCPU 1 differs by 4 - 7 = -3 from vCPU 0
    text = "".join(
        f"fc_vcpu {v}-{60 + v} [00{v}] ..... 1.00000{v}: kvm_write_tsc_offset: vcpu={v} "
        f"prev=0 next={off}\n" for v, off in ((0, 7), (1, 4), (2, 7)))
    (a,) = summary(text)["anomalies"]
    assert (a["vcpu"], a["reference_vcpu"], a["difference_cycles"]) == (1, 0, -3)


@pytest.mark.parametrize("text", [QEMU_NO_TGID, QEMU_TGID])
def test_cli_text_and_json(text: str) -> None:
    p = run("trace", "-", stdin=text)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("\nVM ") == 1
    assert "opened by vCPU 0" in p.stdout and "opened by vCPU 1" not in p.stdout
    j = run("trace", "-", "--json", stdin=text)
    assert j.returncode == 0, j.stderr
    doc = json.loads(j.stdout)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert (doc["schema"], doc["schema_version"]) == ("kvmclock.trace", 1)
    (vm,) = doc["vms"]
    assert [v["vcpu_id"] for v in vm["vcpus"]] == [0, 1]
    assert "vcpus" not in doc  # per-vCPU data only under its VM


# Two QEMU VMs, no tgid, lines in the order A0, B1, A1, B0. VM A (main thread 4320): vCPU
# threads 4321, 4322, offset -100; VM B: 5321, 5322, offset -616 (2**64 - 616 =
# 18446744073709551000). B1 opens B's generation (offsetmatched 0), A1 joins A's (offsetmatched
# 1 with A0's offset), B0 joins B's (offsetmatched 1 with B1's offset). Grouping in order of
# appearance paired A0 with B1 and A1 with B0, with two false tsc_offsets_differ.
OFF_B616 = U64 - 616
INTERLEAVED = f"""\
       CPU 0/KVM-4321    [000] .....    10.000001: kvm_write_tsc_offset: vcpu=0 prev=0 next={OFF_A}
       CPU 0/KVM-4321    [000] .....    10.000002: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
       CPU 1/KVM-5322    [001] .....    10.000003: kvm_write_tsc_offset: vcpu=1 prev=0 next={OFF_B616}
       CPU 1/KVM-5322    [001] .....    10.000004: kvm_track_tsc: vcpu_id 1 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
       CPU 1/KVM-4322    [001] .....    10.000005: kvm_write_tsc_offset: vcpu=1 prev=0 next={OFF_A}
       CPU 1/KVM-4322    [001] .....    10.000006: kvm_track_tsc: vcpu_id 1 masterclock 0 offsetmatched 1 nr_online 2 hostclock tsc
       CPU 0/KVM-5321    [000] .....    10.000007: kvm_write_tsc_offset: vcpu=0 prev=0 next={OFF_B616}
       CPU 0/KVM-5321    [000] .....    10.000008: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 1 nr_online 2 hostclock tsc
"""

# The same VMs with only TSC writes (no kvm_track_tsc: no generation evidence): the closest
# tids decide (4321/4322 are 1 apart, 4322/5321 999 apart).
INTERLEAVED_WRITES_ONLY = "".join(
    line + "\n" for line in INTERLEAVED.splitlines() if "kvm_write_tsc_offset" in line)

# Evidence against tid distance: 4322 is closer to 4321, but its matched write has 5321's
# offset (7), so it is with 5321; 4321 and 5322 (offset 9) pair up by elimination.
EVIDENCE = """\
       CPU 0/KVM-5321    [000] .....    1.000001: kvm_write_tsc_offset: vcpu=0 prev=0 next=7
       CPU 0/KVM-5321    [000] .....    1.000002: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
       CPU 1/KVM-4322    [001] .....    1.000003: kvm_write_tsc_offset: vcpu=1 prev=0 next=7
       CPU 1/KVM-4322    [001] .....    1.000004: kvm_track_tsc: vcpu_id 1 masterclock 0 offsetmatched 1 nr_online 2 hostclock tsc
       CPU 0/KVM-4321    [000] .....    1.000005: kvm_write_tsc_offset: vcpu=0 prev=0 next=9
       CPU 1/KVM-5322    [001] .....    1.000006: kvm_write_tsc_offset: vcpu=1 prev=0 next=9
"""

# The QEMU main thread (tgid 4320 in a record-tgid trace) sets the masterclock; without the
# tgid column it belongs with the vCPU threads whose tids follow 4320; the last line of thread
# "CPU 1/KVM" writes vcpu=5.
MAIN_THREAD = f"""\
       CPU 0/KVM-4321    [000] .....    10.000001: kvm_write_tsc_offset: vcpu=0 prev=0 next={OFF_A}
       CPU 0/KVM-4321    [000] .....    10.000002: kvm_track_tsc: vcpu_id 0 masterclock 0 offsetmatched 0 nr_online 2 hostclock tsc
       CPU 1/KVM-4322    [001] .....    10.000003: kvm_write_tsc_offset: vcpu=1 prev=0 next={OFF_A}
       CPU 1/KVM-4322    [001] .....    10.000004: kvm_track_tsc: vcpu_id 1 masterclock 0 offsetmatched 1 nr_online 2 hostclock tsc
 qemu-system-x86-4320    [001] .....    10.000005: kvm_update_master_clock: masterclock 1 hostclock tsc offsetmatched 1
       CPU 1/KVM-4322    [001] .....    10.000006: kvm_write_tsc_offset: vcpu=5 prev=0 next={OFF_A}
"""


def _vms(s: dict[str, Any]) -> list[tuple[str, list[int]]]:
    return [(vm["vm"], sorted(t["pid"] for t in vm["threads"])) for vm in s["vms"]]


def test_interleaved_vms_grouped_by_generation_evidence() -> None:
    s = summary(INTERLEAVED)
    assert _vms(s) == [("4321+4322", [4321, 4322]), ("5321+5322", [5321, 5322])]
    assert s["anomalies"] == []
    a, b = s["vms"]
    assert [(g["index"], g["opened_by_vcpu"], g["vcpus"], g["offset_signed_cycles"])
            for g in a["tsc_generations"]] == [(1, 0, [0, 1], -100)]
    assert [(g["index"], g["opened_by_vcpu"], g["vcpus"], g["offset_signed_cycles"])
            for g in b["tsc_generations"]] == [(1, 1, [1, 0], -616)]
    # two QEMU VMs and no tgid column: the grouping is a guess, and says so
    (note,) = s["notes"]
    assert note["kind"] == "grouping_guess" and note["line"] is None
    assert note["detail"].endswith(T.GROUPING_GUESS_NOTE)
    assert "record-tgid (echo 1 > options/record-tgid) makes it certain" in T.format_summary(s)


def test_interleaved_vms_without_evidence_use_closest_tids() -> None:
    s = summary(INTERLEAVED_WRITES_ONLY)
    assert _vms(s) == [("4321+4322", [4321, 4322]), ("5321+5322", [5321, 5322])]
    assert s["anomalies"] == []


def test_generation_evidence_beats_tid_distance() -> None:
    s = summary(EVIDENCE)
    assert _vms(s) == [("4322+5321", [4322, 5321]), ("4321+5322", [4321, 5322])]
    assert s["anomalies"] == []


def test_one_vm_by_names_is_no_guess_note() -> None:
    assert summary(QEMU_NO_TGID)["notes"] == []
    assert summary(QEMU_TGID)["notes"] == []
    # with a tgid column two VMs are certain
    tg = INTERLEAVED.replace("-4321    [", "-4321    (   4320) [").replace(
        "-4322    [", "-4322    (   4320) [").replace("-5321    [", "-5321    (   5320) [").replace(
        "-5322    [", "-5322    (   5320) [")
    s = summary(tg)
    assert _vms(s) == [("4320", [4321, 4322]), ("5320", [5321, 5322])]
    assert s["notes"] == []


def test_main_thread_joins_the_vm_whose_tids_follow_it() -> None:
    s = summary(MAIN_THREAD)
    (vm,) = s["vms"]
    assert vm["vm"] == "4320+4321+4322" and vm["grouped_by"] == "vcpu_threads"
    assert vm["masterclock"] is True and vm["masterclock_updates"] == 1
    assert s["masterclock"][0]["vm"] == "4320+4321+4322"
    (note,) = s["notes"]
    assert (note["kind"], note["line"], note["vm"]) == ("vcpu_name_mismatch", 6, "4320+4321+4322")
    assert "CPU 1/KVM-4322 (vCPU index 1 by its name) traces vcpu 5" in note["detail"]
    text = T.format_summary(s)
    assert "line 6 VM 4320+4321+4322: vcpu_name_mismatch: thread CPU 1/KVM-4322" in text


def test_main_thread_of_each_vm() -> None:
    # two VMs: main 4320 precedes 4321/4322, main 5320 precedes 5321/5322
    text = INTERLEAVED + (
        " qemu-system-x86-5320    [001] .....    10.000009: kvm_update_master_clock: "
        "masterclock 1 hostclock tsc offsetmatched 1\n"
        " qemu-system-x86-4320    [001] .....    10.000010: kvm_update_master_clock: "
        "masterclock 1 hostclock tsc offsetmatched 1\n")
    s = summary(text)
    assert _vms(s) == [("4320+4321+4322", [4320, 4321, 4322]),
                       ("5320+5321+5322", [5320, 5321, 5322])]
    assert [m["vm"] for m in s["masterclock"]] == ["5320+5321+5322", "4320+4321+4322"]


def test_main_thread_with_no_vcpu_threads_after_it_is_its_own_vm() -> None:
    text = (" qemu-system-x86-9000    [001] .....    1.000001: kvm_update_master_clock: "
            "masterclock 1 hostclock tsc offsetmatched 1\n")
    (vm,) = summary(text)["vms"]
    assert (vm["vm"], vm["grouped_by"]) == ("9000", "pid")


def test_text_numbers_and_plurals() -> None:
    s = summary(QEMU_NO_TGID)
    text = T.format_summary(s)
    # one kvm_update_master_clock: "1 update"; 3 lines print "hostclock tsc"
    assert "after 1 update," in text and "1 updates" not in text
    assert "formats: before" not in text
    assert 'hostclock form: "hostclock %s" (before the 2017 series; upstream today) on 3 lines' in text
    assert "vCPU 0: 1 TSC offset write, " in text and "0 pvclock updates" in text
    assert "TSC generation 1 at 10.000002s: opened by vCPU 0" in text
    assert "numbered from 1" in text and "cur_tsc_generation" in text

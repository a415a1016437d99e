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
# 0 (offsetmatched 0), vCPU 1's matched write joins it (offsetmatched 1 = one vCPU besides the
# opener), then 1 + 1 == nr_online 2 turns the masterclock on.
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
            for v in vm["vcpus"]] == [(0, 0, -100), (1, 0, -100)]
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
    # boot: generation 0 (vCPUs 0, 1); restore: vCPU 0 opens 1, vCPU 1 opens 2
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

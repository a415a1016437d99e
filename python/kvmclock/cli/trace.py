"""``kvmclock trace``: summarise an ftrace / trace-cmd text capture of KVM clock events."""

from __future__ import annotations

import argparse
from typing import Any

from kvmclock.cli.common import (
    EXIT_OK,
    _check_output_path,
    _dump_json,
    _read_input,
    add_json_option,
)
from kvmclock.errors import UsageError


def cmd_trace(args: argparse.Namespace) -> int:
    from kvmclock.errors import TraceParseError
    from kvmclock.trace import format_summary, parse_bytes, summarize

    json_to = "-" if args.json is True else args.json
    if json_to is not None:
        _check_output_path(json_to, "--json")
    data = _read_input(args.file, "trace file")
    name = "stdin" if args.file == "-" else args.file
    if not data.strip():
        raise UsageError(f"trace: {name} is empty")
    try:
        result = parse_bytes(data)
    except TraceParseError as exc:
        raise UsageError(f"trace: {name}: {exc}") from exc
    summary = summarize(result, group=args.group,
                        pvclock_trace_version=args.pvclock_trace_version)
    if json_to != "-":
        print(format_summary(summary))
    if json_to is not None:
        _dump_json(summary, json_to)
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock trace``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "trace", help="summarise an ftrace / trace-cmd text capture of KVM clock events",
        description="Parse ftrace (trace, trace_pipe) or trace-cmd report text: masterclock "
        "transitions, TSC generations and offsets, pvclock updates per VM and vCPU, "
        "anomalies (among them vCPUs of one VM that end with different TSC offsets, which "
        "keep the masterclock off). Unknown and garbled lines are counted and skipped.",
        epilog="examples:\n  kvmclock trace /sys/kernel/tracing/trace\n"
        "  trace-cmd report | kvmclock trace - --json\n"
        "timestamps are seconds, or raw counter values for a counter clock (x86-tsc); "
        "a leading 'L<n> ' column (kvmclock simulate --trace) is the level.\n"
        "grouping (auto): the tgid column (echo 1 > /sys/kernel/tracing/options/record-tgid "
        "before tracing) is exact; without it the vCPU threads of one "
        "VMM (QEMU 'CPU n/KVM', cloud-hypervisor 'vcpuN', Firecracker 'fc_vcpu N') are "
        "grouped by TSC generation evidence (a vCPU that joined a generation goes with the one "
        "that opened it), then by the closest thread ids, never two threads with one vCPU "
        "index; a main thread (qemu-system-x86) joins the VM whose vCPU tids follow it. Two "
        "VMs of one VMM grouped by names get a note: it is a guess.\n"
        "TSC generations are numbered from 1, as the kernel numbers "
        "kvm->arch.cur_tsc_generation.",
        formatter_class=fmt,
    )
    s.add_argument("file", metavar="FILE|-")
    s.add_argument("--group", choices=["auto", "pid", "one"], default="auto",
                   help="what one VM is: auto = tgid column, else level column, else vCPU "
                   "thread names of one VMM with distinct vCPU indices (TSC generation "
                   "evidence, then closest thread ids), else the pid; "
                   "pid = each task; one = all events one VM")
    s.add_argument("--pvclock-trace-version", choices=["auto", "odd", "final"], default="auto",
                   help="where the kernel traced kvm_pvclock_update: odd = before the final "
                   "version store (4.13), final = after it (today); auto = odd when every "
                   "traced version is odd")
    add_json_option(s, "the summary (schema kvmclock.trace, docs/commands/trace.md)")
    s.set_defaults(func=cmd_trace)

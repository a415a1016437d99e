"""Chrome trace-event JSON (opens in ui.perfetto.dev and chrome://tracing) of simulation runs.

Layout: one process per (profile, level) named ``<profile> L<level> <name>``; thread 0 is the
level's kernel (moments, VM-wide KVM events), thread ``vcpu + 1`` is vCPU ``vcpu`` of the VM
that KVM at that level runs (kvm_track_tsc / kvm_write_tsc_offset / kvm_pvclock_update).
Trace events and moments are instant events (``ph: "i"``); masterclock, the pvclock stable bit
and the cross-vCPU skew samples are counter events (``ph: "C"``). ``ts`` is in microseconds
(the format's unit, fractional values allowed); ``displayTimeUnit`` is ``"ns"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvmclock.trace import CLOCK_EVENTS, parse_fields

Run = Mapping[str, Any]


def _pid(profile_index: int, level: int) -> int:
    return 1000 * (profile_index + 1) + level


def _us(t_ns: int) -> float:
    return t_ns / 1000.0


def perfetto_trace(runs: Sequence[Run]) -> dict[str, Any]:
    """The ``{"traceEvents": [...], "displayTimeUnit": "ns"}`` document for ``runs``."""
    events: list[dict[str, Any]] = []
    meta: list[dict[str, Any]] = []
    threads: set[tuple[int, int]] = set()

    def thread(pid: int, tid: int, name: str) -> None:
        if (pid, tid) not in threads:
            threads.add((pid, tid))
            meta.append(
                {"name": "thread_name", "ph": "M", "ts": 0, "pid": pid, "tid": tid,
                 "args": {"name": name}}
            )

    for pi, run in enumerate(runs):
        profile = str(run["profile"])
        for lv in run["levels"]:
            level = int(lv["level"])
            pid = _pid(pi, level)
            name = f"{profile} L{level}" + (f" {lv['name']}" if lv.get("name") else "")
            meta.append({"name": "process_name", "ph": "M", "ts": 0, "pid": pid, "tid": 0,
                         "args": {"name": name}})
            meta.append({"name": "process_sort_index", "ph": "M", "ts": 0, "pid": pid,
                         "tid": 0, "args": {"sort_index": pid}})
            thread(pid, 0, f"L{level} kernel")
            for key, counter in (
                ("masterclock_timeline", "masterclock"),
                ("pvclock_stable_timeline", "pvclock stable"),
            ):
                for t_ns, state in lv.get(key) or []:
                    events.append({"name": counter, "ph": "C", "ts": _us(int(t_ns)), "pid": pid,
                                   "tid": 0, "args": {counter: 1 if state else 0}})
        for t_ns, level, text in run.get("moments") or []:
            pid = _pid(pi, int(level))
            events.append({"name": str(text), "ph": "i", "s": "p", "ts": _us(int(t_ns)),
                           "pid": pid, "tid": 0, "cat": "moment", "args": {}})
        for t_ns, level, skew_ns, _stable in run.get("samples") or []:
            pid = _pid(pi, int(level))
            events.append({"name": "cross-vCPU skew ns", "ph": "C", "ts": _us(int(t_ns)),
                           "pid": pid, "tid": 0, "args": {"skew_ns": int(skew_ns)}})
        for t_ns, level, comm, tpid, cpu, event, fields in run.get("trace") or []:
            pid = _pid(pi, int(level))
            tid = 0
            if event in CLOCK_EVENTS:
                parsed = parse_fields(str(event), str(fields))
                if parsed is not None and "vcpu_id" in parsed[0]:
                    tid = int(parsed[0]["vcpu_id"]) + 1
                    thread(pid, tid, f"L{level} KVM vCPU {tid - 1}")
            events.append({"name": str(event), "ph": "i", "s": "t", "ts": _us(int(t_ns)),
                           "pid": pid, "tid": tid, "cat": "ftrace",
                           "args": {"fields": str(fields), "comm": str(comm), "task_pid": tpid,
                                    "cpu": cpu}})
    events.sort(key=lambda e: (e["ts"], e["pid"], e["tid"]))
    return {"traceEvents": meta + events, "displayTimeUnit": "ns"}

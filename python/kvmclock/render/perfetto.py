"""Chrome trace-event JSON (opens in ui.perfetto.dev and chrome://tracing) of simulation runs.

Input: runs in the simulate run format (``kvmclock simulate --json``: moments, samples,
timelines and trace rows as lists of named objects).

Layout: one process per (profile, level) named ``<profile> L<level> <name>``; thread 0 is the
level's kernel (moments, VM-wide KVM events), thread ``vcpu + 1`` is vCPU ``vcpu`` of the VM
that KVM at that level runs (kvm_track_tsc / kvm_write_tsc_offset / kvm_pvclock_update).
Trace events and moments are instant events (``ph: "i"``); masterclock, the pvclock stable bit
and the cross-vCPU skew samples are counter events (``ph: "C"``). ``ts`` is in microseconds
(the format's unit, fractional values allowed); ``displayTimeUnit`` is ``"ns"``.

Several kernels at one level (several guests of one host, several hosts): they share the
level's process (trace events and moments carry only the level), its name lists them, and each
kernel's counters are named after it (``pvclock stable vm1``, ``cross-vCPU skew ns vm1``). A
host KVM's masterclock is one counter per VM it ran where the run has them
(``masterclock_timelines``); lifecycle records are instant events on the VM's level with the
record in ``args``.
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
        levels = list(run["levels"])
        by_level: dict[int, list[str]] = {}
        for lv in levels:
            by_level.setdefault(int(lv["level"]), []).append(str(lv.get("name") or ""))
        level_of_kernel: dict[str, int] = {}
        for level, names in by_level.items():
            pid = _pid(pi, level)
            shown = ", ".join(n for n in names if n)
            name = f"{profile} L{level}" + (f" {shown}" if shown else "")
            meta.append({"name": "process_name", "ph": "M", "ts": 0, "pid": pid, "tid": 0,
                         "args": {"name": name}})
            meta.append({"name": "process_sort_index", "ph": "M", "ts": 0, "pid": pid,
                         "tid": 0, "args": {"sort_index": pid}})
            thread(pid, 0, f"L{level} kernel")
        for lv in levels:
            level = int(lv["level"])
            pid = _pid(pi, level)
            several = len(by_level[level]) > 1
            kname = str(lv.get("name") or "")
            level_of_kernel[kname] = level
            suffix = f" {kname}" if several and kname else ""
            series: list[tuple[str, Sequence[Any]]] = [
                (f"pvclock stable{suffix}", lv.get("pvclock_stable_timeline") or [])
            ]
            per_vm = lv.get("masterclock_timelines")
            if isinstance(per_vm, Mapping) and per_vm:
                series += [(f"masterclock {vm}", tl or []) for vm, tl in per_vm.items()]
            else:
                series.append((f"masterclock{suffix}", lv.get("masterclock_timeline") or []))
            for counter, timeline in series:
                for p in timeline:
                    events.append({"name": counter, "ph": "C", "ts": _us(int(p["t_ns"])),
                                   "pid": pid, "tid": 0, "args": {counter: 1 if p["on"] else 0}})
        for m in run.get("moments") or []:
            pid = _pid(pi, int(m["level"]))
            events.append({"name": str(m["text"]), "ph": "i", "s": "p",
                           "ts": _us(int(m["t_ns"])), "pid": pid, "tid": 0, "cat": "moment",
                           "args": {}})
        for smp in run.get("samples") or []:
            level = int(smp["level"])
            pid = _pid(pi, level)
            kname = str(smp.get("kernel") or "")
            several = len(by_level.get(level, [])) > 1
            counter = "cross-vCPU skew ns" + (f" {kname}" if several and kname else "")
            events.append({"name": counter, "ph": "C", "ts": _us(int(smp["t_ns"])),
                           "pid": pid, "tid": 0, "args": {"skew_ns": int(smp["skew_ns"])}})
        for rec in run.get("lifecycle") or []:
            level = level_of_kernel.get(str(rec.get("vm")), 1)
            done = rec.get("completed") is not False
            t = rec.get("t_ns") if done else rec.get("started_ns")
            if not isinstance(t, int) or isinstance(t, bool):
                continue
            what = f"{rec.get('vm')} {rec.get('action')}" + ("" if done else " (not completed)")
            events.append({"name": what, "ph": "i", "s": "p", "ts": _us(t),
                           "pid": _pid(pi, level), "tid": 0, "cat": "lifecycle",
                           "args": {k: v for k, v in rec.items() if k != "rules"}})
        for row in run.get("trace") or []:
            t_ns, level, comm, tpid = row["t_ns"], row["level"], row["comm"], row["pid"]
            cpu, event, fields = row["cpu"], row["event"], row["fields"]
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

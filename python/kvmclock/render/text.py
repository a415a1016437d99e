"""Text output of ``kvmclock simulate``: a side-by-side table per profile and level, a headline
derived from the runs, and the key moments as a short timeline."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Run = Mapping[str, Any]


def fmt_time(t_ns: int | None) -> str:
    """Simulated time in seconds with microsecond resolution."""
    if t_ns is None:
        return "-"
    return f"{t_ns / 1e9:.6f} s"


def _onoff(v: object) -> str:
    if v is None:
        return "-"
    return "on" if v else "off"


def _num(v: object, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def _defs(level: Mapping[str, Any], key: str) -> str:
    cd = level.get("clock_definitions")
    if not isinstance(cd, Mapping):
        return "-"
    return _num(cd.get(key), " ns")


def _level_name(level: Mapping[str, Any]) -> str:
    tag = f"L{level['level']}"
    name = str(level.get("name") or "")
    if name.startswith(tag):
        return name
    return f"{tag} {name}" if name else tag


_ROWS: list[tuple[str, Any]] = [
    ("clocksource", lambda lv: str(lv.get("clocksource") or "-")),
    ("masterclock (KVM here)", lambda lv: _onoff(lv.get("masterclock"))),
    ("pvclock stable bit", lambda lv: _onoff(lv.get("pvclock_stable"))),
    ("masterclock updates", lambda lv: _num(lv.get("masterclock_updates"))),
    ("notifier calls", lambda lv: _num(lv.get("notifier_calls"))),
    ("gtod copies", lambda lv: _num(lv.get("gtod_copies"))),
    ("timekeeping updates", lambda lv: _num(lv.get("timekeeping_updates"))),
    ("guest backwards steps", lambda lv: _num(lv.get("guest_backwards"))),
    ("last_value clamp hits", lambda lv: _num(lv.get("last_value_clamp_hits"))),
    ("max cross-vCPU skew", lambda lv: _num(lv.get("max_cross_vcpu_skew_ns"), " ns")),
    ("clock defs |A-B| max", lambda lv: _defs(lv, "max_abs_a_minus_b_ns")),
    ("clock defs |A-C| max", lambda lv: _defs(lv, "max_abs_a_minus_c_ns")),
    ("clock defs |B-C| max", lambda lv: _defs(lv, "max_abs_b_minus_c_ns")),
    ("vCPUs", lambda lv: _num(lv.get("vcpus"))),
]


def ended_at(run: Run) -> str:
    """Where a run ended (simulated time, ``end_ns``), ``stopped`` added when it ended before
    its duration (``stopped_early``)."""
    end = run.get("end_ns")
    text = fmt_time(end if isinstance(end, int) else None)
    return f"{text} stopped" if run.get("stopped_early") else text


def side_by_side(runs: Sequence[Run]) -> str:
    """The per-profile, per-level table (one column per level, profiles next to each other);
    the last row says where each run ended."""
    columns: list[tuple[Run, Mapping[str, Any]]] = []
    groups: list[tuple[str, int]] = []
    for run in runs:
        levels = list(run["levels"])
        groups.append((str(run["profile"]), len(levels)))
        columns.extend((run, lv) for lv in levels)
    rows = [*_ROWS, ("ended at", None)]
    label_w = max(len(r[0]) for r in rows) + 2
    cells = [[fn(lv) for _, lv in columns] for _, fn in _ROWS]
    cells.append([ended_at(run) for run, _ in columns])
    heads = [_level_name(lv) for _, lv in columns]
    widths = [
        max(len(heads[i]), *(len(row[i]) for row in cells)) + 2 for i in range(len(columns))
    ]
    sep = " | "
    # profile header over each group of level columns
    top = " " * label_w
    i = 0
    for gi, (name, n) in enumerate(groups):
        w = sum(widths[i : i + n])
        top += (sep if gi else "") + f"profile {name}".center(w)
        i += n
    lines = [top.rstrip()]

    def row(label: str, vals: list[str]) -> str:
        out = label.ljust(label_w)
        j = 0
        for gi, (_, n) in enumerate(groups):
            out += (sep if gi else "") + "".join(
                vals[j + k].rjust(widths[j + k]) for k in range(n)
            )
            j += n
        return out.rstrip()

    lines.append(row("level", heads))
    lines.append("-" * len(lines[-1]))
    for (label, _), vals in zip(rows, cells, strict=True):
        lines.append(row(label, vals))
    return "\n".join(lines)


def describe_timeline(timeline: Sequence[Mapping[str, Any]], duration_ns: int | None) -> str:
    """Plain words for a ``[{"t_ns": int, "on": bool}, ...]`` timeline (first entry the
    initial state; times in ns of simulated time)."""
    if not timeline:
        return "no data"
    spans: list[tuple[int, int | None]] = []
    start: int | None = None
    for t, state in ((p["t_ns"], p["on"]) for p in timeline):
        if state and start is None:
            start = int(t)
        elif not state and start is not None:
            spans.append((start, int(t)))
            start = None
    if start is not None:
        spans.append((start, None))
    if not spans:
        return "never set"
    parts = []
    for a, b in spans:
        if b is None:
            parts.append(f"set from {a / 1e9:.3f} s to the end")
        else:
            parts.append(f"set from {a / 1e9:.3f} s, lost at {b / 1e9:.3f} s")
    return "; ".join(parts)


def kernel_labels(levels: Sequence[Mapping[str, Any]]) -> list[str]:
    """A short label per level entry: ``L<level>``, or ``L<level> <name>`` when several
    kernels (several guests of one host, several hosts) share that level."""
    count: dict[int, int] = {}
    for lv in levels:
        count[int(lv["level"])] = count.get(int(lv["level"]), 0) + 1
    out = []
    for lv in levels:
        tag = f"L{int(lv['level'])}"
        name = str(lv.get("name") or "")
        out.append(f"{tag} {name}" if count[int(lv["level"])] > 1 and name else tag)
    return out


def _masterclock_timelines(
    lv: Mapping[str, Any],
) -> list[tuple[str | None, Sequence[Mapping[str, Any]]]]:
    """The masterclock timelines of the KVM in a level's kernel: one per VM it ran
    (``masterclock_timelines``, VM name -> timeline) where the run has them, else the one
    ``masterclock_timeline`` (older runs)."""
    per_vm = lv.get("masterclock_timelines")
    if isinstance(per_vm, Mapping) and per_vm:
        return [(str(vm), tl or []) for vm, tl in per_vm.items()]
    return [(None, lv.get("masterclock_timeline") or [])]


SKEW_THRESHOLD_NS = 1_000
"""Cross-vCPU skew (ns) above which the headline names it as an anomaly: 1 us.  The clock
definitions of one masterclock keep vCPUs within a few ns of each other (pvclock mul/shift
rounding), so a microsecond is already far outside what the kernel guarantees."""

JUMP_THRESHOLD_NS = 1_000_000
"""A lifecycle record's MONOTONIC or REALTIME jump (ns, against a guest that never stopped)
above which the headline names it: 1 ms (a KVM_CLOCK_REALTIME restore leaves a few us)."""


def fmt_duration_ns(ns: int) -> str:
    """An unsigned duration for a headline: ``N ns`` below 1 us, ``N.nnn us`` below 1 ms,
    ``N.nnnnnn ms`` below 1 s, else seconds with nanosecond digits; trailing zeros dropped
    (``1 us``, ``60 s``); exact (integer arithmetic, no float rounding)."""
    ns = abs(int(ns))
    if ns < 1_000:
        return f"{ns} ns"
    for unit, scale in (("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000)):
        if ns < scale * 1_000 or unit == "s":
            whole, rem = divmod(ns, scale)
            digits = f"{rem:0{len(str(scale)) - 1}d}".rstrip("0")
            return f"{whole}.{digits} {unit}" if digits else f"{whole} {unit}"
    raise AssertionError("unreachable")


def fmt_seconds(ns: int) -> str:
    """Simulated seconds without trailing zeros (``3 s``, ``0.25 s``; exact)."""
    sec, rem = divmod(int(ns), 1_000_000_000)
    if not rem:
        return f"{sec} s"
    return f"{sec}.{f'{rem:09d}'.rstrip('0')} s"


def losses(timeline: Sequence[Mapping[str, Any]]) -> list[tuple[int, int | None]]:
    """Each on -> off change of an on/off timeline: ``(lost_ns, back_ns)``, ``back_ns`` the
    next off -> on change (None when it stayed off to the end)."""
    out: list[tuple[int, int | None]] = []
    prev = False
    for p in timeline:
        on = bool(p["on"])
        if prev and not on:
            out.append((int(p["t_ns"]), None))
        elif on and not prev and out and out[-1][1] is None:
            out[-1] = (out[-1][0], int(p["t_ns"]))
        prev = on
    return out


def _at_times(lost: Sequence[tuple[int, int | None]], most: int = 3) -> str:
    parts = []
    for t, back in lost[:most]:
        again = "not back" if back is None else f"back at {back / 1e9:.3f} s"
        parts.append(f"{t / 1e9:.3f} s ({again})")
    more = f" and {len(lost) - most} more times" if len(lost) > most else ""
    return "at " + ", ".join(parts) + more


def _kernel_moment(run: Run, lv: Mapping[str, Any], several: bool, needle: str) -> int | None:
    """The first key moment (ns) of ``lv``'s kernel whose text contains ``needle`` (a
    moment's text starts with the kernel's name when several kernels share the level)."""
    name = str(lv.get("name") or "")
    for m in run.get("moments") or []:
        if int(m["level"]) != int(lv["level"]) or needle not in str(m["text"]):
            continue
        if several and not str(m["text"]).startswith(f"{name}:"):
            continue
        return int(m["t_ns"])
    return None


def largest_backwards_step_ns(lv: Mapping[str, Any]) -> int:
    """The largest backwards step (ns) of a level entry: the largest of its recorded
    ``backwards_events`` (the first 100) and ``max_reanchor_step_ns`` (over all reads)."""
    steps = [int(e["step_ns"]) for e in lv.get("backwards_events") or []]
    return max([int(lv.get("max_reanchor_step_ns") or 0), *steps])


def kernel_anomalies(
    run: Run, lv: Mapping[str, Any], label: str, several: bool,
    skew_threshold_ns: int = SKEW_THRESHOLD_NS,
) -> list[str]:
    """What went wrong in one kernel (level entry) of a run, one phrase each: guest clock
    steps backwards (count, largest, kinds as sim/metrics.py counts them: ``stable`` = below
    an earlier read of the same masterclock pair, ``re-anchor`` = at a masterclock update,
    ``clamped`` = below an earlier non-stable read, the domain of pvclock_clocksource_read's
    last_value clamp), cross-vCPU skew over ``skew_threshold_ns``, last_value clamp hits, the
    TSC marked unstable (arch/x86/kernel/tsc.c mark_tsc_unstable), the masterclock of its KVM
    and its pvclock stable bit lost (on -> off)."""
    out: list[str] = []
    back = int(lv.get("guest_backwards") or 0)
    if back:
        kinds = (
            f"stable {int(lv.get('guest_backwards_stable') or 0):,}, "
            f"re-anchor {int(lv.get('guest_backwards_reanchor') or 0):,}, "
            f"clamped {int(lv.get('guest_backwards_clamped') or 0):,}"
        )
        events = lv.get("backwards_events") or []
        first = f", first at {int(events[0]['t_ns']) / 1e9:.3f} s" if events else ""
        out.append(
            f"{label}: {back:,} guest clock reads stepped backwards, largest "
            f"{fmt_duration_ns(largest_backwards_step_ns(lv))}{first} ({kinds})"
        )
    skew = lv.get("max_cross_vcpu_skew_ns")
    if isinstance(skew, int) and skew > skew_threshold_ns:
        name = str(lv.get("name") or "")
        over = [
            int(s["t_ns"]) for s in run.get("samples") or []
            if int(s["level"]) == int(lv["level"]) and str(s.get("kernel")) == name
            and int(s["skew_ns"]) > skew_threshold_ns
        ]
        n = len(over)
        exact = _samples_over(run, name, skew_threshold_ns)
        if exact is not None:  # a decimated series: the count over every sample
            n = exact
        when = (
            f", {n:,} sample{'s' if n > 1 else ''} over it from {over[0] / 1e9:.3f} s"
            if over else ""
        )
        out.append(
            f"{label}: cross-vCPU skew up to {fmt_duration_ns(skew)} (threshold "
            f"{fmt_duration_ns(skew_threshold_ns)}{when})"
        )
    hits = int(lv.get("last_value_clamp_hits") or 0)
    if hits:
        out.append(
            f"{label}: {hits:,} last_value clamp hit{'s' if hits > 1 else ''} "
            "(reads raised to an earlier value)"
        )
    if lv.get("tsc_unstable"):
        t = _kernel_moment(run, lv, several, "Marking TSC unstable")
        at = f" at {t / 1e9:.3f} s" if t is not None else ""
        out.append(f"{label}: TSC marked unstable{at}")
    for vm, tl in _masterclock_timelines(lv):
        lost = losses(tl)
        if lost:
            for_vm = f" for VM {vm}" if vm is not None else ""
            out.append(f"{label}: masterclock of its KVM{for_vm} lost {_at_times(lost)}")
    lost = losses(lv.get("pvclock_stable_timeline") or [])
    if lost:
        out.append(f"{label}: pvclock stable bit lost {_at_times(lost)}")
    return out


def _samples_over(run: Run, kernel: str, threshold_ns: int) -> int | None:
    """From a decimated run's ``samples_summary``: how many of ``kernel``'s samples had a
    skew over ``threshold_ns`` (None without a summary or when the threshold is not an edge
    of the histogram)."""
    for summ in run.get("samples_summary") or []:
        if str(summ.get("kernel")) != kernel:
            continue
        buckets = summ.get("skew_histogram") or []
        if not any(b.get("max_ns") == threshold_ns for b in buckets):
            return None
        return sum(
            int(b["count"]) for b in buckets
            if b.get("above_ns") is not None and int(b["above_ns"]) >= threshold_ns
        )
    return None


def bounds_lines(runs: Sequence[Run]) -> list[str]:
    """One line per bound a run reached (``kvmclock.limits``): its sample series decimated,
    key moments or trace records left out."""
    out: list[str] = []
    for run in runs:
        name = str(run["profile"])
        summaries = run.get("samples_summary") or []
        if summaries:
            kept = sum(int(s["kept"]) for s in summaries)
            total = sum(int(s["samples"]) for s in summaries)
            strides = ", ".join(
                f"{s['kernel']} {int(s['stride']):,}" for s in summaries
            )
            out.append(
                f"{name}: samples decimated: {kept:,} of {total:,} rows kept, evenly spaced "
                f"(stride: {strides}); samples_summary in the JSON has the aggregates of all"
            )
        dropped = int(run.get("moments_dropped") or 0)
        if dropped:
            kept = len(run.get("moments") or [])
            out.append(
                f"{name}: {dropped:,} key moments after the first {kept:,} left out (the last "
                f"{len(run.get('moments_last') or [])} are in the JSON's moments_last)"
            )
        dropped = int(run.get("trace_dropped") or 0)
        if dropped:
            kept = len(run.get("trace") or [])
            out.append(
                f"{name}: the trace keeps the first {kept:,} of {kept + dropped:,} KVM trace "
                "records; --events PATH writes every one"
            )
    return out


def run_anomalies(
    run: Run,
    skew_threshold_ns: int = SKEW_THRESHOLD_NS,
    jump_threshold_ns: int = JUMP_THRESHOLD_NS,
) -> list[str]:
    """Every anomaly of one run, one line each: per kernel (:func:`kernel_anomalies`), the
    lifecycle records that were not completed or left a MONOTONIC/REALTIME jump over
    ``jump_threshold_ns`` (ns, against a guest that never stopped), a livelock, and where the
    run stopped when it ended before its duration (``stopped_early``, ``stop_reason``)."""
    levels = list(run.get("levels") or [])
    labels = kernel_labels(levels)
    count: dict[int, int] = {}
    for lv in levels:
        count[int(lv["level"])] = count.get(int(lv["level"]), 0) + 1
    out: list[str] = []
    for label, lv in zip(labels, levels, strict=True):
        out += kernel_anomalies(run, lv, label, count[int(lv["level"])] > 1, skew_threshold_ns)
    for rec in run.get("lifecycle") or []:
        what = f"{rec.get('vm')} {rec.get('action')}"
        if rec.get("completed") is False:
            started = _int_or_none(rec.get("started_ns"))
            out.append(f"{what} began at {fmt_time(started)}, not completed by the end of the run")
            continue
        jumps = [
            f"{clock} {fmt_signed_ns(j)}"
            for clock, j in (("MONOTONIC", _int_or_none(rec.get("monotonic_jump_ns"))),
                             ("REALTIME", _int_or_none(rec.get("realtime_jump_ns"))))
            if j is not None and abs(j) > jump_threshold_ns
        ]
        if jumps:
            out.append(
                f"{what} at {fmt_time(_int_or_none(rec.get('t_ns')))} left "
                f"{', '.join(jumps)} against a guest that never stopped (threshold "
                f"{fmt_duration_ns(jump_threshold_ns)})"
            )
    ll = run.get("livelock")
    if ll:
        out.append(
            f"LIVELOCK detected at {fmt_time(ll.get('t_ns'))} in L{ll.get('level')} "
            f"{ll.get('where')} after {ll.get('spins')} spins"
        )
    if run.get("stopped_early"):
        end, dur = run.get("end_ns"), run.get("duration_ns")
        asked = f" of {fmt_seconds(int(dur))} asked" if isinstance(dur, int) else ""
        reason = run.get("stop_reason") or "no reason given"
        out.append(f"run stopped at {fmt_time(end)}{asked}: {reason}")
    return out


def derived_moments(run: Run, skew_threshold_ns: int = SKEW_THRESHOLD_NS) -> list[dict[str, Any]]:
    """Key moments derived from a run's data (``{"t_ns", "level", "text"}``), per kernel: the
    first guest clock step backwards and the first sample whose cross-vCPU skew exceeds
    ``skew_threshold_ns``."""
    out: list[dict[str, Any]] = []
    levels = list(run.get("levels") or [])
    for label, lv in zip(kernel_labels(levels), levels, strict=True):
        events = lv.get("backwards_events") or []
        if events:
            e = events[0]
            out.append({
                "t_ns": int(e["t_ns"]), "level": int(lv["level"]),
                "text": f"{label}: first guest clock step backwards "
                f"({fmt_duration_ns(int(e['step_ns']))} on vCPU {e['cpu']}; "
                f"{int(lv.get('guest_backwards') or 0):,} in all)",
            })
        name = str(lv.get("name") or "")
        for smp in run.get("samples") or []:
            if (int(smp["level"]) == int(lv["level"]) and str(smp.get("kernel")) == name
                    and int(smp["skew_ns"]) > skew_threshold_ns):
                out.append({
                    "t_ns": int(smp["t_ns"]), "level": int(lv["level"]),
                    "text": f"{label}: cross-vCPU skew {fmt_duration_ns(int(smp['skew_ns']))} "
                    f"(over {fmt_duration_ns(skew_threshold_ns)})",
                })
                break
    return out


def headline(runs: Sequence[Run]) -> list[str]:
    """Per profile: the pvclock stable bit over time of every guest kernel (deepest level
    first, file order within a level; a level's kernels are named when it has several), when
    a KVM level never gave masterclock while it ran on kvm-clock the switch that decides it,
    notifier calls against timekeeping updates, masterclock per KVM (per VM it ran), then
    every anomaly of the run (:func:`run_anomalies`), each on a line starting with ``!``, or
    a line saying there was none."""
    out = []
    w = max([7, *(len(str(r["profile"])) for r in runs)])
    for run in runs:
        levels = list(run["levels"])
        if not levels:
            continue
        labels = kernel_labels(levels)
        duration = run.get("duration_ns")
        calls = ", ".join(
            f"{label} {int(lv.get('notifier_calls') or 0):,}/"
            f"{int(lv.get('timekeeping_updates') or 0):,}"
            for label, lv in zip(labels, levels, strict=True)
        )
        guests = [(lb, lv) for lb, lv in zip(labels, levels, strict=True) if int(lv["level"])]
        if not guests:
            deepest = max(range(len(levels)), key=lambda i: int(levels[i]["level"]))
            guests = [(labels[deepest], levels[deepest])]
        guests.sort(key=lambda g: -int(g[1]["level"]))  # stable: file order within a level
        for i, (label, lv) in enumerate(guests):
            stable = describe_timeline(lv.get("pvclock_stable_timeline") or [], duration)
            if lv.get("pvclock_stable") is None and not lv.get("pvclock_stable_timeline"):
                stable = "no pvclock (physical host)"
            sep = ":" if " " in label else ""
            head = f"{run['profile']:>{w}}: " if i == 0 else f"{'':>{w}}  "
            out.append(f"{head}{label}{sep} pvclock stable bit {stable}")
        why = _kvmclock_host_reason(run)
        if why:
            out.append(f"{'':>{w}}  {why}")
        out.append(f"{'':>{w}}  notifier calls / timekeeping updates: {calls}")
        for label, lv in zip(labels, levels, strict=True):
            timelines = _masterclock_timelines(lv)
            if lv.get("masterclock") is None and not any(tl for _vm, tl in timelines):
                continue
            for vm, tl in timelines:
                for_vm = f" for VM {vm}" if vm is not None and len(timelines) > 1 else ""
                out.append(
                    f"{'':>{w}}  masterclock of KVM at {label}{for_vm}: "
                    f"{describe_timeline(tl, duration)}"
                )
        bad = run_anomalies(run)
        if bad:
            out.extend(f"{'':>{w}}  ! {line}" for line in bad)
        else:
            out.append(
                f"{'':>{w}}  no anomalies: no backwards steps, skew within "
                f"{fmt_duration_ns(SKEW_THRESHOLD_NS)}, no clamp hits, no losses, ran to the end"
            )
    return out


def _kvmclock_host_reason(run: Run) -> str | None:
    """Why a KVM running on kvm-clock did or did not give its guests masterclock: the
    ``stable_pvclock_host`` switch (the series' patch 11) decides it."""
    switches = run.get("switches") or {}
    if "stable_pvclock_host" not in switches:
        return None
    for lv in run["levels"]:
        tl = lv.get("masterclock_timeline") or []
        if int(lv["level"]) == 0 or (lv.get("masterclock") is None and not tl):
            continue
        if lv.get("clocksource") != "kvm-clock":
            continue
        ever = any(bool(p["on"]) for p in tl)
        if switches["stable_pvclock_host"]:
            if ever:
                return (
                    f"why: KVM at L{lv['level']} runs on kvm-clock and counts its stable "
                    "record as a stable host clock (stable_pvclock_host=on, the series' "
                    "patch 11)"
                )
            return None
        return (
            f"why: KVM at L{lv['level']} runs on kvm-clock, and without the series' patch 11 "
            "(stable_pvclock_host=off) only a tsc host clock gives masterclock: no kernel up "
            "to Linux 6.18 gives L2 a stable clock here"
        )
    return None


def moment_text(m: Mapping[str, Any]) -> str:
    """A key moment as one line: its ``text``, and where a multi-line printk's numbers are
    in ``detail`` (the watchdog's skew verdict), the text without its final colon, ``: ``
    and the detail."""
    text = str(m["text"])
    detail = m.get("detail")
    if detail:
        return f"{text.rstrip().removesuffix(':')}: {detail}"
    return text


def cause_first(moments: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``moments`` (execution order) with a timeline entry's own moment moved before the
    moments its kernel calls gave (those carry ``cause``, the entry's text, at its time)."""
    out: list[Mapping[str, Any]] = []
    moved: set[int] = set()
    for i, m in enumerate(moments):
        if i in moved:
            continue
        cause = m.get("cause")
        if cause is not None:
            for j in range(i + 1, len(moments)):
                c = moments[j]
                if int(c["t_ns"]) != int(m["t_ns"]):
                    break
                if j not in moved and str(c["text"]) == cause and c.get("cause") is None:
                    out.append(c)
                    moved.add(j)
                    break
        out.append(m)
    return out


MOMENT_RANKS = (
    "livelock",
    "TSC unstable, clocksource switch after boot, backwards TSC, skew or clock step back",
    "masterclock or pvclock stable bit change",
    "lifecycle action",
    "TSC write, jump or generation (and other scenario moments)",
    "start-up (VM created, boot clocksource, the new VM's first masterclock)",
)
"""What the key-moment ranks mean, most important first (:func:`moment_ranks`)."""

MOMENT_SHORT = ("livelock", "anomalies", "masterclock/stable bit", "lifecycle", "TSC and other",
                "start-up")
"""A short name per rank, for the line that counts the moments left out."""

_LIFECYCLE_WORDS = (
    "paused", "resumed", "snapshot", "restored", "migrat", "suspended", "KVMCLOCK_CTRL",
    "destroyed", "KVM_SET_CLOCK", "KVM_GET_CLOCK", "not completed", "VM created",
)
_ANOMALY_WORDS = (
    "Marking TSC unstable", "Marking clocksource", "backwards TSC", "TSC went backwards",
    "first guest clock step backwards", "cross-vCPU skew",
)


def moment_ranks(moments: Sequence[Mapping[str, Any]]) -> list[int]:
    """A rank per moment of one run (execution order), 0 most important (see
    :data:`MOMENT_RANKS`): a livelock; the TSC marked unstable, a clocksource switch after a
    kernel's boot choice, a backwards TSC, a derived skew or step-back moment; masterclock and
    stable-bit changes; lifecycle actions (a VM created again by a restore or migration is
    one); TSC writes, jumps and generations and anything else; start-up lines: a VM's first
    creation and the moments of that VM at that time, a kernel's first clocksource."""
    created: dict[str, int] = {}
    for m in moments:
        text = str(m["text"])
        if text.endswith(": VM created"):
            created.setdefault(text.removesuffix(": VM created"), int(m["t_ns"]))
    booted: set[tuple[int, str]] = set()
    seen_created: set[str] = set()
    out = []
    for m in moments:
        text, t = str(m["text"]), int(m["t_ns"])
        if text.startswith("LIVELOCK"):
            out.append(0)
            continue
        if "Switched to clocksource" in text:
            who = (int(m["level"]), text.split(":", 1)[0])
            out.append(1 if who in booted else 5)
            booted.add(who)
            continue
        if any(w in text for w in _ANOMALY_WORDS):
            out.append(1)
            continue
        if text.endswith(": VM created"):
            name = text.removesuffix(": VM created")
            out.append(3 if name in seen_created else 5)
            seen_created.add(name)
            continue
        if "masterclock" in text.lower() or "pvclock stable bit" in text:
            rank = 2
        elif any(w in text for w in _LIFECYCLE_WORDS):
            rank = 3
        else:
            rank = 4
        if rank in (2, 4):
            for name, t0 in created.items():
                if t == t0 and (text.startswith(f"{name}:") or text.startswith(f"VM {name}:")):
                    rank = 5
                    break
        out.append(rank)
    return out


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class _Line:
    """One line of the timeline: moments that differ only in numbers (collapsed)."""

    level: int
    who: str
    key: str
    rank: int
    texts: list[str]
    times: list[int]
    open: bool = True

    def text(self) -> str:
        if len(self.texts) == 1:
            return self.texts[0]
        numbers = [_NUMBER.findall(t) for t in self.texts]
        parts = _NUMBER.split(self.texts[0])
        out = parts[0]
        for i, rest in enumerate(parts[1:]):
            vals = {n[i] for n in numbers}
            out += (numbers[0][i] if len(vals) == 1 else "N") + rest
        a, b = self.times[0], self.times[-1]
        when = f"at {a / 1e9:.3f} s" if a == b else f"{a / 1e9:.3f}-{b / 1e9:.3f} s"
        return f"{out} x{len(self.texts)}, {when}"


def moments_timeline(runs: Sequence[Run], limit: int = 30) -> list[str]:
    """The key moments of all runs in time order (a timeline entry's own moment before the
    moments its kernel calls gave, :func:`cause_first`), at most ``limit`` lines.  A moment
    that every run has at the same time and level is shown once, as ``all`` (``both`` for
    two runs).  Moments of the same runs and level that differ only in numbers are one line
    (``... x20, 2.051-3.951 s``, the numbers that vary as ``N``) unless a moment as important
    (:func:`moment_ranks`) of the same runs comes between them.  When there are more lines
    than ``limit``, the most important are kept (rank, then time), still printed in time
    order, and the last line says how many moments were left out."""
    names = [str(r["profile"]) for r in runs]
    seen: dict[tuple[int, int, str], tuple[list[str], int]] = {}
    for run in runs:
        ms = cause_first([*(run.get("moments") or []), *derived_moments(run)])
        ms.sort(key=lambda m: int(m["t_ns"]))  # stable: derived moments last at their time
        for m, rank in zip(ms, moment_ranks(ms), strict=True):
            key = (int(m["t_ns"]), int(m["level"]), moment_text(m))
            profs, best = seen.get(key, ([], rank))
            if str(run["profile"]) not in profs:
                profs.append(str(run["profile"]))
            seen[key] = (profs, min(best, rank))
    everyone = "both" if len(names) == 2 else "all"
    rows = sorted(seen.items(), key=lambda kv: (kv[0][0], names.index(kv[1][0][0])))
    lines: list[_Line] = []
    open_lines: dict[tuple[str, int, str], _Line] = {}
    for (t, lvl, text), (profs, rank) in rows:
        who = everyone if len(profs) == len(names) > 1 else ",".join(profs)
        shape = (who, lvl, _NUMBER.sub("N", text))
        for k, ln in list(open_lines.items()):
            if k != shape and ln.who == who and rank <= ln.rank:
                del open_lines[k]
        line = open_lines.get(shape)
        if line is not None:
            line.texts.append(text)
            line.times.append(t)
        else:
            line = _Line(lvl, who, shape[2], rank, [text], [t])
            lines.append(line)
            open_lines[shape] = line
    kept = lines
    if len(lines) > limit:
        order = sorted(range(len(lines)), key=lambda i: (lines[i].rank, lines[i].times[0], i))
        keep = set(order[: max(limit, 0)])
        kept = [ln for i, ln in enumerate(lines) if i in keep]
    width = max([len(everyone), *(len(n) for n in names), *(len(ln.who) for ln in kept)])
    out = [f"{fmt_time(ln.times[0]):>14}  {ln.who:<{width}} L{ln.level}  {ln.text()}"
           for ln in kept]
    if len(kept) < len(lines):
        left = [ln for ln in lines if ln not in kept]
        n = sum(len(ln.texts) for ln in left)
        per_rank: dict[int, int] = {}
        for ln in left:
            per_rank[ln.rank] = per_rank.get(ln.rank, 0) + len(ln.texts)
        what = "; ".join(f"{MOMENT_SHORT[r]} {c}" for r, c in sorted(per_rank.items()))
        out.append(
            f"{'':>14}  ... {n} more moment{'s' if n > 1 else ''} left out, the least "
            f"important ({what}); --json has all of them"
        )
    return out


def fmt_signed_ns(ns: int | None) -> str:
    """A signed duration in ns as seconds with nanosecond digits (``+60.000000000 s``), or as
    ns below one microsecond (``-3 ns``); ``-`` for None."""
    if ns is None:
        return "-"
    if abs(ns) < 1_000:
        return f"{ns:+d} ns"
    sign = "-" if ns < 0 else "+"
    sec, rem = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{rem:09d} s"


def _back(ns: object, on: object) -> str:
    """``on`` right after, else when it came back (``ns`` after the record's time)."""
    if on:
        return "on"
    if isinstance(ns, bool) or not isinstance(ns, int):
        return "off (not back within the run)"
    return f"off, back after {fmt_time(ns)}"


def _int_or_none(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def stopped_at(rec: Mapping[str, Any]) -> int | None:
    """When a lifecycle record's guest stopped running (true ns): ``stopped_ns`` where the
    record has it, else ``t_ns - downtime_ns`` (runs recorded before ``stopped_ns``
    existed), else ``started_ns``; None when the guest never stopped (a migration whose
    precopy the run's end cut short)."""
    if "stopped_ns" in rec:
        return _int_or_none(rec.get("stopped_ns"))
    t, down = _int_or_none(rec.get("t_ns")), _int_or_none(rec.get("downtime_ns"))
    if t is not None and down is not None:
        return t - down
    return _int_or_none(rec.get("started_ns"))


def lifecycle_lines(runs: Sequence[Run]) -> list[str]:
    """One block per lifecycle record of every run: what ended the stop (resume, restore,
    migrate, host_suspend), the recipe, the downtime, the guest's CLOCK_MONOTONIC and
    CLOCK_REALTIME against a guest that never stopped (signed: negative = behind) and how far
    each moved while the guest did not run, masterclock and the stable bit after it (and when
    they came back), the cross-vCPU skew after it, and the kernel rule that decided.  A
    record with ``completed`` false (an action the run's end cut short) is two lines: when
    it began and when its guest stopped, and ``why:`` where the run's end cut it.
    docs/vmm.md ("Reading the lifecycle block") describes every field."""
    out: list[str] = []
    for run in runs:
        for rec in run.get("lifecycle") or []:
            recipe = rec.get("recipe")
            how = f" ({recipe})" if recipe else ""
            host = rec.get("host")
            where = f" on host {host}" if host else ""
            started = _int_or_none(rec.get("started_ns"))
            stopped = stopped_at(rec)
            what = f"{run['profile']}: {rec.get('vm')} {rec.get('action')}{how}{where}"
            if rec.get("completed") is False:
                line = f"{what} began at {fmt_time(started)}, not completed"
                if stopped is not None:
                    line += f"; guest stopped at {fmt_time(stopped)}, not running at the end"
                else:
                    line += "; the guest still ran at the end"
                out.append(line)
                reason = str(rec.get("reason") or "")
                if reason:
                    out.append(f"  why: {reason.removeprefix('not completed: ')}")
                continue
            began = ""
            if started is not None and stopped is not None and started < stopped:
                began = (
                    f" (began at {fmt_time(started)}; the guest ran until {fmt_time(stopped)})"
                )
            out.append(
                f"{what} at {fmt_time(rec.get('t_ns'))}, guest stopped "
                f"{fmt_time(rec.get('downtime_ns'))}{began}"
            )
            out.append(
                f"  vs a guest that never stopped: MONOTONIC "
                f"{fmt_signed_ns(rec.get('monotonic_jump_ns'))}, REALTIME "
                f"{fmt_signed_ns(rec.get('realtime_jump_ns'))}; moved while stopped: "
                f"MONOTONIC {fmt_signed_ns(rec.get('monotonic_step_ns'))}, REALTIME "
                f"{fmt_signed_ns(rec.get('realtime_step_ns'))}"
            )
            seen = rec.get("guest_stopped_seen")
            gs_seen = (
                ""
                if seen is None
                else f"; PVCLOCK_GUEST_STOPPED {'seen' if seen else 'never seen'} by the guest"
            )
            mc = _back(rec.get("masterclock_back_ns"), rec.get("masterclock_after"))
            out.append(
                f"  masterclock {mc}"
                f", stable bit {_back(rec.get('stable_back_ns'), rec.get('stable_after'))}"
                f", cross-vCPU skew {_num(rec.get('cross_vcpu_skew_ns'), ' ns')}"
                f", guest clocksource {rec.get('guest_clocksource') or '-'}{gs_seen}"
            )
            reason = rec.get("reason")
            if reason:
                out.append(f"  why: {reason}")
            for rule in rec.get("rules") or []:
                if str(rule).startswith("KVM_SET_TSC_KHZ") and "same frequency" not in str(rule):
                    out.append(f"  tsc: {rule}")
    return out


def simulated_span(runs: Sequence[Run]) -> str:
    """The title's time span: ``8.000000 s simulated`` when every run reached its duration,
    else the duration asked and where each stopped run ended with the first words of its
    ``stop_reason``: ``3 s asked, series stopped at 1.000 s (livelock)``."""
    dur = runs[0].get("duration_ns") if runs else None
    stopped = [r for r in runs if r.get("stopped_early")]
    if not stopped or not isinstance(dur, int):
        return f"{fmt_time(dur)} simulated"
    parts = []
    for r in stopped:
        reason = str(r.get("stop_reason") or "")
        short = reason.split(" in ", 1)[0].split(" at ", 1)[0] if reason else "no reason given"
        parts.append(f"{r['profile']} stopped at {int(r['end_ns']) / 1e9:.3f} s ({short})")
    return f"{fmt_seconds(dur)} asked, " + ", ".join(parts)


def render_simulation(
    scenario: str,
    description: str | None,
    seed: int,
    runs: Sequence[Run],
    wall_s: Sequence[float] | None = None,
    moments_limit: int = 30,
) -> str:
    """The whole ``kvmclock simulate`` text: title, table, headline, timeline, speed."""
    out = [
        f"kvmclock simulate: scenario {scenario}, seed {seed}, {simulated_span(runs)}, "
        f"profiles {', '.join(str(r['profile']) for r in runs)}"
    ]
    if description:
        out.append(f"  {description}")
    out.append("")
    out.append(side_by_side(runs))
    out.append("")
    out.append("Headline:")
    out.extend("  " + h for h in headline(runs))
    life = lifecycle_lines(runs)
    if life:
        out.append("")
        out.append("Lifecycle (per VM, against a guest that never stopped; negative = behind):")
        out.extend("  " + line for line in life)
    moments = moments_timeline(runs, moments_limit)
    if moments:
        out.append("")
        out.append("Key moments:")
        out.extend(moments)
    bounds = bounds_lines(runs)
    if bounds:
        out.append("")
        out.extend("  " + line for line in bounds)
    if wall_s is not None:
        out.append("")
        for run, w in zip(runs, wall_s, strict=True):
            st = run.get("stats") or {}
            ev = int(st.get("events") or 0)
            rd = int(st.get("guest_reads") or 0)
            rate = f"{ev / w:,.0f} events/s, {rd / w:,.0f} guest clock reads/s" if w > 0 else ""
            out.append(
                f"  {run['profile']}: {ev:,} events, {rd:,} guest clock reads in "
                f"{w:.2f} s wall ({rate})"
            )
    return "\n".join(out)

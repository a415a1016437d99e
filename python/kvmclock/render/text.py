"""Text output of ``kvmclock simulate``: a side-by-side table per profile and level, a headline
derived from the runs, and the key moments as a short timeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def side_by_side(runs: Sequence[Run]) -> str:
    """The per-profile, per-level table (one column per level, profiles next to each other)."""
    columns: list[tuple[str, Mapping[str, Any]]] = []
    groups: list[tuple[str, int]] = []
    for run in runs:
        levels = list(run["levels"])
        groups.append((str(run["profile"]), len(levels)))
        columns.extend((str(run["profile"]), lv) for lv in levels)
    label_w = max(len(r[0]) for r in _ROWS) + 2
    cells = [[fn(lv) for _, lv in columns] for _, fn in _ROWS]
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
    for (label, _), vals in zip(_ROWS, cells, strict=True):
        lines.append(row(label, vals))
    return "\n".join(lines)


def describe_timeline(timeline: Sequence[Sequence[Any]], duration_ns: int | None) -> str:
    """Plain words for a ``[[t_ns, bool], ...]`` timeline (first entry the initial state)."""
    if not timeline:
        return "no data"
    spans: list[tuple[int, int | None]] = []
    start: int | None = None
    for t, state in timeline:
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


def _masterclock_timelines(lv: Mapping[str, Any]) -> list[tuple[str | None, Sequence[Any]]]:
    """The masterclock timelines of the KVM in a level's kernel: one per VM it ran
    (``masterclock_timelines``, VM name -> timeline) where the run has them, else the one
    ``masterclock_timeline`` (older runs)."""
    per_vm = lv.get("masterclock_timelines")
    if isinstance(per_vm, Mapping) and per_vm:
        return [(str(vm), tl or []) for vm, tl in per_vm.items()]
    return [(None, lv.get("masterclock_timeline") or [])]


def headline(runs: Sequence[Run]) -> list[str]:
    """Per profile: the pvclock stable bit over time of every guest kernel (deepest level
    first, file order within a level; a level's kernels are named when it has several), when
    a KVM level never gave masterclock while it ran on kvm-clock the switch that decides it,
    notifier calls against timekeeping updates, and masterclock per KVM (per VM it ran)."""
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
        ll = run.get("livelock")
        if ll:
            out.append(
                f"{'':>{w}}  LIVELOCK detected at {fmt_time(ll.get('t_ns'))} in "
                f"L{ll.get('level')} {ll.get('where')} after {ll.get('spins')} spins"
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
        ever = any(bool(state) for _t, state in tl)
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


def moments_timeline(runs: Sequence[Run], limit: int = 30) -> list[str]:
    """The key moments of all runs in time order, at most ``limit`` lines; a moment that every
    run has at the same time and level is shown once, as ``all`` (``both`` for two runs)."""
    names = [str(r["profile"]) for r in runs]
    seen: dict[tuple[int, int, str], list[str]] = {}
    for run in runs:
        for t_ns, level, text in run.get("moments") or []:
            profs = seen.setdefault((int(t_ns), int(level), str(text)), [])
            if str(run["profile"]) not in profs:
                profs.append(str(run["profile"]))
    everyone = "both" if len(names) == 2 else "all"
    rows = sorted(seen.items(), key=lambda kv: (kv[0][0], names.index(kv[1][0])))
    shown = [
        (t, lvl, text, everyone if len(profs) == len(names) > 1 else ",".join(profs))
        for (t, lvl, text), profs in rows[:limit]
    ]
    width = max([len(everyone), *(len(n) for n in names), *(len(w) for *_, w in shown)])
    out = []
    for t, lvl, text, who in shown:
        out.append(f"{fmt_time(t):>14}  {who:<{width}} L{lvl}  {text}")
    if len(rows) > limit:
        out.append(f"{'':>14}  ... {len(rows) - limit} more moments (all of them in --json)")
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


def render_simulation(
    scenario: str,
    description: str | None,
    seed: int,
    runs: Sequence[Run],
    wall_s: Sequence[float] | None = None,
    moments_limit: int = 30,
) -> str:
    """The whole ``kvmclock simulate`` text: title, table, headline, timeline, speed."""
    dur = runs[0].get("duration_ns") if runs else None
    out = [
        f"kvmclock simulate: scenario {scenario}, seed {seed}, {fmt_time(dur)} simulated, "
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

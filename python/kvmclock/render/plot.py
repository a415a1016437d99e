"""PNG of simulation runs for a kernel developer (matplotlib, the optional extra ``plot``;
imported only when a plot is asked for).

One column per profile, one row per panel, over simulated time in seconds:

* **key moments**: a compact strip naming, at vertical lines drawn through every time panel
  below, the TSC jumps and writes, clocksource switches after boot, the TSC marked unstable,
  vCPU hotplug, a tick inside a read section, a livelock, every lifecycle step (pause,
  KVMCLOCK_CTRL, snapshot, migration start and stop, host suspend and resume) and every
  lifecycle record (restore, migration, resume, with its MONOTONIC and REALTIME jump);
  labels are rotated, and marks whose labels would overlap share one label, a line each;
* **state**: per level, the masterclock of the KVM there (per VM it ran, ``masterclock``
  in ``KVM_REQ_MASTERCLOCK_UPDATE``'s sense: arch/x86/kvm/x86.c
  ``pvclock_update_vm_gtod_copy``) and the pvclock stable bit each guest kernel saw
  (``PVCLOCK_TSC_STABLE_BIT``), green while on and red while off; intervals a lifecycle
  record's guest did not run are shaded grey (hatched when the run's end cut it short);
* **notifier calls per timekeeping update**: per level, KVM's notifier calls against
  ``timekeeping_update`` calls (a bar of the ratio with both numbers); the title names the
  profile's chain (:func:`notifier_chain`: ``pvclock_gtod_chain``, or the series'
  ``clocksource_changes_chain``);
* **cross-vCPU skew** and **guest clock steps backwards** (ns) per guest kernel, on a
  symmetric-log scale (linear below 1 ns, a decade per step above) so that 3 ns and 10 s are
  both readable; the skew panel draws the headline's 1 us threshold (a decimated series,
  ``samples_summary``, is drawn with each kernel's worst sample added).

A panel with no data in any profile, or only zeros, is not drawn: the note line at the bottom
of the figure names it and says why; a profile without data in a drawn panel says so inside
it. A run that stopped before its duration is hatched from where it stopped, with the stop
reason.  Input: runs in the simulate run format (``kvmclock simulate --json``).
"""

from __future__ import annotations

import importlib
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmclock.render.text import SKEW_THRESHOLD_NS, kernel_labels, stopped_at

Run = Mapping[str, Any]

MISSING_MATPLOTLIB = (
    "--plot needs matplotlib: in a checkout: ./scripts/setup.sh --extras plot; "
    "from PyPI: pip install 'kvmclock[plot]'"
)

PANELS = ("moments", "state", "skew", "backwards", "notifier")
"""The panels, top to bottom (``moments`` is the label strip of the key moments)."""

PANEL_TITLES = {
    "state": "masterclock (KVM) and pvclock stable bit (guest): green on, red off",
    "notifier": "notifier calls per timekeeping update",
    "skew": "cross-vCPU skew per guest kernel (symlog)",
    "backwards": "guest clock steps backwards per guest kernel (symlog)",
}

def notifier_chain(run: Run) -> str | None:
    """The notifier chain KVM listens to in ``run``'s profile (its ``switches``):
    ``pvclock_gtod_chain`` (every timekeeping update, switch ``pvclock_gtod_chain``),
    ``clocksource_changes_chain`` (the series' patch 07, switch
    ``clocksource_change_chain``), both joined by ``+``, or None when neither is on."""
    sw = run.get("switches") or {}
    names = [name for key, name in (("pvclock_gtod_chain", "pvclock_gtod_chain"),
                                    ("clocksource_change_chain", "clocksource_changes_chain"))
             if sw.get(key)]
    return " + ".join(names) or None


def panel_title(panel: str, run: Run) -> str:
    """A panel's title for ``run`` (the notifier panel names the profile's chain)."""
    title = PANEL_TITLES[panel]
    chain = notifier_chain(run) if panel == "notifier" else None
    return f"{title} ({chain})" if chain else title


SYMLOG_LINTHRESH_NS = 1
"""Linear range of the symlog axes (ns): 0..1 ns linear, a decade per tick above."""


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _short_ns(ns: int) -> str:
    """A signed duration for a label: ns, us, ms or s with three decimals."""
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if abs(ns) >= scale:
            return f"{ns / scale:+.3f} {unit}"
    return f"{ns:+d} ns"


def _axis_ns(ns: float) -> str:
    """A symlog tick label: ``0``, ``1 ns``, ``10 us``, ``1 s`` (decades)."""
    if ns == 0:
        return "0"
    sign = "-" if ns < 0 else ""
    v = abs(ns)
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3), ("ns", 1.0)):
        if v >= scale:
            return f"{sign}{v / scale:g} {unit}"
    return f"{sign}{v:g} ns"


# ------------------------------------------------------------------------------- data of panels
@dataclass
class Lane:
    """One row of the state panel: a label and an on/off timeline (``{"t_ns", "on"}``)."""

    label: str
    timeline: Sequence[Mapping[str, Any]]
    vm: str | None = None  # the guest whose stable bit it is (lifecycle shading), if any


@dataclass
class Mark:
    """A key moment drawn as a vertical line: time (ns), short label, kind."""

    t_ns: int
    label: str
    kind: str


@dataclass
class RunPanels:
    """What one run contributes to each panel (see the module docstring)."""

    lanes: list[Lane] = field(default_factory=list)
    notifier: list[tuple[str, int, int]] = field(default_factory=list)
    skew: dict[str, tuple[list[float], list[int]]] = field(default_factory=dict)
    backwards: dict[str, tuple[list[float], list[int]]] = field(default_factory=dict)
    marks: list[Mark] = field(default_factory=list)


def state_lanes(run: Run) -> list[Lane]:
    """Per level entry (file order): the masterclock of its KVM (one lane per VM when
    ``masterclock_timelines`` names several), then its pvclock stable bit; entries without
    a timeline have no lane."""
    levels = list(run.get("levels") or [])
    out: list[Lane] = []
    for label, lv in zip(kernel_labels(levels), levels, strict=True):
        per_vm = lv.get("masterclock_timelines")
        if isinstance(per_vm, Mapping) and per_vm:
            for vm, tl in per_vm.items():
                if tl:
                    out.append(Lane(f"{label} masterclock for {vm}", tl))
        elif lv.get("masterclock_timeline"):
            out.append(Lane(f"{label} masterclock", lv["masterclock_timeline"]))
        if lv.get("pvclock_stable_timeline"):
            out.append(Lane(f"{label} stable bit", lv["pvclock_stable_timeline"],
                            vm=str(lv.get("name") or "")))
    return out


def _series(run: Run, rows: Sequence[Mapping[str, Any]], value: str,
            ) -> dict[str, tuple[list[float], list[int]]]:
    levels = list(run.get("levels") or [])
    label_of = {
        (int(lv["level"]), str(lv.get("name") or "")): lb
        for lv, lb in zip(levels, kernel_labels(levels), strict=True)
    }
    out: dict[str, tuple[list[float], list[int]]] = {}
    for row in rows:
        key = (int(row["level"]), str(row.get("kernel") or ""))
        label = label_of.get(key, f"L{key[0]} {key[1]}".rstrip())
        xs, ys = out.setdefault(label, ([], []))
        xs.append(int(row["t_ns"]) / 1e9)
        ys.append(int(row[value]))
    return out


def _backwards_rows(run: Run) -> list[dict[str, Any]]:
    rows = []
    for lv in run.get("levels") or []:
        for e in lv.get("backwards_events") or []:
            rows.append({"t_ns": e["t_ns"], "level": lv["level"], "kernel": lv.get("name"),
                         "step_ns": e["step_ns"]})
    return rows


_CS_SWITCH = re.compile(r"^(?:(\S+): )?clocksource: Switched to clocksource (\S+)")
_TSC_JUMP = re.compile(
    r"(?P<who>every TSC|CPU \d+'s TSC|the TSCs of CPUs [\d, ]+) (?P<way>jumps?|steps?) "
    r"(?:forward |back )?by (?P<amount>.+?)(?: of cycles)?$"
)
_MARKED = [
    (re.compile(r"Marking TSC unstable"), "TSC unstable", "tsc_unstable"),
    (re.compile(r"\bTSCs? .*(jumps?|steps?) (forward|back)"), None, "tsc_jump"),
    (re.compile(r"TSC write"), None, "tsc_write"),
    (re.compile(r"hotplugged"), None, "hotplug"),
    (re.compile(r"inside a tk_core\.seq read section"), "tick in read section", "tick"),
    (re.compile(r"^LIVELOCK"), "LIVELOCK", "livelock"),
]


def _cut(text: str, most: int = 30) -> str:
    text = text.split(" (", 1)[0].replace(" of cycles", "")
    return text if len(text) <= most else text[: most - 1] + "~"


_LIFECYCLE_STEP = re.compile(
    r"^VM (?P<vm>\S+): (?P<step>paused|KVM_KVMCLOCK_CTRL|snapshot '[^']*' taken|"
    r"migration to \S+ started|migration: source stopped|restored on|migrated to|resumed)"
)
_HOST_STEP = re.compile(r"^host (?P<host>\S+) (?P<step>suspended|resumed)")


def _lifecycle_step(text: str) -> str | None:
    """The short label of a lifecycle step moment (``kvmclock.vmm.lifecycle``), else None."""
    m = _LIFECYCLE_STEP.match(text)
    if m:
        step = re.sub(r" '[^']*' taken", "", m.group("step")).replace("KVM_KVMCLOCK_CTRL",
                                                                       "KVMCLOCK_CTRL")
        return f"{m.group('vm')} {step}"
    h = _HOST_STEP.match(text)
    if h:
        return f"host {h.group('host')} {h.group('step')}"
    return None


def lifecycle_label(rec: Mapping[str, Any]) -> str:
    """A lifecycle record's mark label: VM and action, ``(not completed)``, or, on a second
    line, the MONOTONIC and REALTIME jumps against a guest that never stopped when either is
    1 ms or more (``MONO -60.000 s, RT -60.000 s``)."""
    label = f"{rec.get('vm')} {rec.get('action')}"
    if rec.get("completed") is False:
        return label + " (not completed)"
    jumps = [(name, _int(rec.get(key))) for name, key in (("MONO", "monotonic_jump_ns"),
                                                          ("RT", "realtime_jump_ns"))]
    if any(j is not None and abs(j) >= 1_000_000 for _n, j in jumps):
        label += "\n" + ", ".join(f"{n} {_short_ns(j)}" for n, j in jumps if j is not None)
    return label


def key_marks(run: Run) -> list[Mark]:
    """The moments marked on the time panels, in time order: clocksource switches (not a
    kernel's first, its boot choice), TSC jumps, steps and writes, the TSC marked unstable,
    vCPU hotplug, a tick inside a read section, a livelock, every lifecycle step (kind
    ``lifecycle_step``: pause, KVMCLOCK_CTRL, snapshot, migration start and stop, host
    suspend and resume; from the run's ``moments``), and every lifecycle record (kind
    ``lifecycle``, at ``t_ns`` when completed, else ``started_ns``; it stands for its own
    restored / migrated / resumed step)."""
    out: list[Mark] = []
    booted: set[tuple[int, str]] = set()
    recs = {(str(r.get("vm")), _int(r.get("t_ns"))) for r in run.get("lifecycle") or []
            if r.get("completed") is not False}
    for m in run.get("moments") or []:
        text, level, t = str(m["text"]), int(m["level"]), int(m["t_ns"])
        step = _lifecycle_step(text)
        if step is not None:
            vm = text.split(":", 1)[0].removeprefix("VM ")
            done = any(w in text for w in ("restored on", "migrated to", "resumed ("))
            if done and (vm, t) in recs:
                continue
            last = out[-1] if out else None
            if (last is not None and last.kind == "lifecycle_step" and last.t_ns == t
                    and last.label.split(" ", 1)[0] == step.split(" ", 1)[0]):
                last.label += " + " + step.split(" ", 1)[1]  # one VM's steps at one time
            else:
                out.append(Mark(t, step, "lifecycle_step"))
            continue
        cs = _CS_SWITCH.match(text)
        if cs:
            who = cs.group(1) or f"L{level}"
            if (level, who) in booted:
                out.append(Mark(t, f"{who}: clocksource {cs.group(2)}", "clocksource"))
            booted.add((level, who))
            continue
        jump = _TSC_JUMP.search(text)
        if jump:
            who = text.split(":", 1)[0] if ":" in text else f"L{level}"
            whose = jump.group("who").replace("'s TSC", "").replace("the TSCs of ", "")
            cpus = "" if whose.startswith("every") else f" {whose}"
            sign = "+" if jump.group("way").startswith("jump") else "-"
            out.append(Mark(t, f"{who}:{cpus} TSC {sign}{jump.group('amount')}", "tsc_jump"))
            continue
        for pattern, label, kind in _MARKED:
            if pattern.search(text):
                if label is not None and kind == "tsc_unstable":
                    who = text.split(":", 1)[0] if ":" in text else f"L{level}"
                    label = f"{who}: {label}"
                out.append(Mark(t, label or _cut(text), kind))
                break
    for rec in run.get("lifecycle") or []:
        done = rec.get("completed") is not False
        t_rec = _int(rec.get("t_ns")) if done else _int(rec.get("started_ns"))
        if t_rec is None:
            continue
        out.append(Mark(t_rec, lifecycle_label(rec), "lifecycle"))
    out.sort(key=lambda mk: mk.t_ns)
    return out


def merge_marks(marks: Sequence[Mark], span_ns: int, frac: float = 0.012,
                ) -> list[tuple[int, list[str]]]:
    """Marks closer than ``frac`` of the time axis (``span_ns``) merged into one line (at the
    first one's time) with their distinct labels; time order."""
    out: list[tuple[int, list[str]]] = []
    for mk in sorted(marks, key=lambda m: m.t_ns):
        if out and mk.t_ns - out[-1][0] <= frac * max(span_ns, 1):
            if mk.label not in out[-1][1]:
                out[-1][1].append(mk.label)
        else:
            out.append((mk.t_ns, [mk.label]))
    return out


LABEL_FONTSIZE = 8
"""Font size (pt) of the key-moment labels."""
LABEL_WRAP = 28
"""A key-moment label longer than this many characters is wrapped onto further lines."""
_CHAR_IN = 0.56 * LABEL_FONTSIZE / 72  # a character's advance, inches (DejaVu Sans)
_LINE_IN = 1.2 * LABEL_FONTSIZE / 72  # a rotated label's line pitch, inches


def label_lines(labels: Sequence[str], wrap: int = LABEL_WRAP) -> list[str]:
    """The lines of one merged key-moment label: each label's lines (a label may break its
    own, ``\\n``) wrapped at ``wrap`` characters (at spaces), in order."""
    out: list[str] = []
    for label in labels:
        for part in label.split("\n"):
            out += textwrap.wrap(part, wrap, break_on_hyphens=False) or [part]
    return out


def place_labels(merged: Sequence[tuple[int, list[str]]], span_ns: int, line_frac: float,
                 ) -> list[tuple[int, list[str], list[int]]]:
    """Merged marks (:func:`merge_marks`) grouped so that their rotated labels do not
    overlap: a label is drawn right of its line, one text line ``line_frac`` of the axis
    wide; a mark whose line falls under the label before it joins that label.  Returns
    ``(t_ns, lines, member_times)`` per label (``t_ns`` the first member's time)."""
    out: list[tuple[int, list[str], list[int]]] = []
    span = max(span_ns, 1)
    for t, labels in merged:
        if out:
            t0, lines, members = out[-1]
            right = t0 / span + (len(lines) + 0.5) * line_frac
            if t / span < right:
                lines.extend(ln for ln in label_lines(labels) if ln not in lines)
                members.append(t)
                continue
        out.append((t, label_lines(labels), [t]))
    return out


def skew_rows(run: Run) -> list[Mapping[str, Any]]:
    """The sample rows the skew panel draws: the run's ``samples`` and, when the series was
    decimated (``samples_summary``), each kernel's worst sample too, so that the peak is
    drawn whatever the stride (in time order)."""
    rows: list[Mapping[str, Any]] = list(run.get("samples") or [])
    extra = [s["worst"] for s in run.get("samples_summary") or [] if s.get("worst")]
    if not extra:
        return rows
    have = {(int(r["t_ns"]), str(r.get("kernel"))) for r in rows}
    rows += [w for w in extra if (int(w["t_ns"]), str(w.get("kernel"))) not in have]
    return sorted(rows, key=lambda r: int(r["t_ns"]))


def run_panels(run: Run) -> RunPanels:
    """The data of every panel for one run (no matplotlib needed)."""
    levels = list(run.get("levels") or [])
    notifier = [
        (label, int(lv.get("notifier_calls") or 0), int(lv.get("timekeeping_updates") or 0))
        for label, lv in zip(kernel_labels(levels), levels, strict=True)
    ]
    return RunPanels(
        lanes=state_lanes(run),
        notifier=notifier,
        skew=_series(run, skew_rows(run), "skew_ns"),
        backwards=_series(run, _backwards_rows(run), "step_ns"),
        marks=key_marks(run),
    )


def _has_data(p: RunPanels, panel: str) -> bool:
    if panel == "moments":
        return bool(p.marks)
    if panel == "state":
        return bool(p.lanes)
    if panel == "notifier":
        return any(calls or updates for _l, calls, updates in p.notifier)
    data = p.skew if panel == "skew" else p.backwards
    return any(any(ys) for _xs, ys in data.values())


_WHY_EMPTY = {
    "moments": "no clocksource switch, TSC jump or lifecycle action",
    "state": "no masterclock or stable-bit timeline",
    "notifier": "no notifier call and no timekeeping update",
    "skew": "no sample or every sample 0 ns",
    "backwards": "no guest clock step backwards",
}


@dataclass
class PanelPlan:
    """Which panels the figure draws (top to bottom) and a note per panel left out."""

    drawn: list[str]
    omitted: dict[str, str]
    per_run: list[RunPanels]


def plan_panels(runs: Sequence[Run]) -> PanelPlan:
    """The panels to draw for ``runs``: a panel is drawn when at least one run has non-zero
    data for it; the others are in ``omitted`` with the reason (:data:`_WHY_EMPTY`)."""
    per_run = [run_panels(r) for r in runs]
    drawn, omitted = [], {}
    for panel in PANELS:
        if any(_has_data(p, panel) for p in per_run):
            drawn.append(panel)
        else:
            omitted[panel] = _WHY_EMPTY[panel]
    return PanelPlan(drawn, omitted, per_run)


def omitted_note(plan: PanelPlan) -> str:
    """The figure's note line: the panels not drawn and why (empty when all are drawn)."""
    if not plan.omitted:
        return ""
    return "not drawn (no data in any profile):\n" + "\n".join(
        f"{PANEL_TITLES.get(k, 'key moments').split(' per ')[0].split(' (')[0]}: {why}"
        for k, why in plan.omitted.items()
    )


# ------------------------------------------------------------------------------------ drawing
def _time_axis(ax: Any, end_s: float) -> None:
    """Label the x axis (simulated seconds) in seconds, or in hours for runs of more than two
    hours (a simulated day reads 0..24 h); the data stay in seconds."""
    if end_s <= 7200:
        ax.set_xlabel("simulated time (s)")
        return
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    step_h = next(h for h in (1, 2, 3, 6, 12, 24, 48, 168, 336, 720, 8760)
                  if end_s / 3600 / h <= 12)
    ax.xaxis.set_major_locator(MultipleLocator(step_h * 3600))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x / 3600:g}"))
    ax.set_xlabel("simulated time (h)")


def _end_s(run: Run) -> float:
    dur = _int(run.get("duration_ns")) or _int(run.get("end_ns")) or 0
    return max(dur, 1) / 1e9


def _shade_lifecycle(run: Run, ax: Any, lanes: Sequence[Lane] | None = None) -> None:
    """Grey over each lifecycle record's stopped interval (``stopped_ns`` .. ``t_ns``; to the
    run's end, hatched, when not completed); on the state panel only over the VM's own
    stable-bit lane (``lanes``), elsewhere the whole height. A migration's precopy
    (``started_ns`` .. ``stopped_ns``) is a dotted line: the guest still ran."""
    end_ns = int(run.get("end_ns") or run.get("duration_ns") or 0)
    for rec in run.get("lifecycle") or []:
        done = rec.get("completed") is not False
        stopped = stopped_at(rec)
        started = _int(rec.get("started_ns"))
        t = _int(rec.get("t_ns"))
        b = (t if done and t is not None else end_ns) / 1e9
        hatch = None if done else "///"
        if stopped is not None:
            a = stopped / 1e9
            if lanes is None:
                ax.axvspan(a, max(a, b), color="tab:gray", alpha=0.25, linewidth=0, hatch=hatch)
            else:
                for i, lane in enumerate(lanes):
                    if lane.vm == str(rec.get("vm")):
                        ax.fill_between([a, max(a, b)], i - 0.45, i + 0.45, color="tab:gray",
                                        alpha=0.6, linewidth=0, hatch=hatch, zorder=3)
                        if b - a > 0.12 * _end_s(run):
                            ax.text((a + b) / 2, i, "guest not running", ha="center",
                                    va="center", fontsize=7, zorder=4)
        if started is not None and (stopped is None or started < stopped):
            ax.axvline(started / 1e9, color="tab:gray", linewidth=0.8, linestyle=":")


def _draw_marks(ax: Any, placed: Sequence[tuple[int, list[str], list[int]]], label: bool,
                span_s: float = 0.0, line_frac: float = 0.02) -> None:
    """A vertical line per mark (the first of a label's group ``gid="mark"``, the others
    ``"mark-member"``); with ``label``, the group's label: rotated, one line per label line,
    right of its line (left of it where it would leave the axis)."""
    for t_ns, lines, members in placed:
        for i, t in enumerate(members):
            ax.axvline(t / 1e9, color="tab:purple", linewidth=0.8, alpha=0.7,
                       gid="mark" if i == 0 else "mark-member")
        if label:
            x = t_ns / 1e9
            width = (len(lines) + 0.3) * line_frac * span_s
            right = x + width <= span_s
            ax.text(x, 0.04, "\n".join(lines), rotation=90,
                    ha="left" if right else "right", va="bottom", fontsize=LABEL_FONTSIZE,
                    multialignment="left",
                    color="tab:purple", transform=ax.get_xaxis_transform(), linespacing=1.1,
                    gid="mark-label")


def _draw_stop(run: Run, ax: Any, label: bool) -> None:
    if not run.get("stopped_early"):
        return
    end = int(run.get("end_ns") or 0) / 1e9
    ax.axvspan(end, _end_s(run), facecolor="none", edgecolor="tab:red", hatch="xx",
               linewidth=0, alpha=0.3, gid="stopped")
    ax.axvline(end, color="tab:red", linewidth=1.2)
    if label:
        reason = str(run.get("stop_reason") or "stopped")
        ax.text(end, 0.98, f" stopped at {end:.3f} s:\n {reason}", ha="left", va="top",
                fontsize=7, color="tab:red", transform=ax.get_xaxis_transform(),
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85})


def _draw_state(ax: Any, run: Run, lanes: Sequence[Lane]) -> None:
    end_s = int(run.get("end_ns") or run.get("duration_ns") or 1) / 1e9  # where it stopped
    for i, lane in enumerate(lanes):
        tl = list(lane.timeline)
        for j, p in enumerate(tl):
            a = int(p["t_ns"]) / 1e9
            b = int(tl[j + 1]["t_ns"]) / 1e9 if j + 1 < len(tl) else end_s
            if b > a or j + 1 == len(tl):
                # an "on" span is at least 0.5 % of the axis wide and drawn over "off":
                # a masterclock held for 4 ms of a 4 s run stays visible
                ax.broken_barh([(a, max(b - a, end_s * (0.005 if p["on"] else 0.002)))],
                               (i - 0.35, 0.7),
                               facecolors="tab:green" if p["on"] else "tab:red",
                               alpha=0.85 if p["on"] else 0.55, zorder=2 if p["on"] else 1)
                if p["on"] and b - a < 0.02 * end_s:  # too short to see: say when
                    ax.text(a + end_s * 0.007, i, f"on {a:.3f}-{b:.3f} s", va="center",
                            ha="left", fontsize=7, zorder=4, gid="short-on")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([lane.label for lane in lanes], fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)  # first lane on top


def _draw_notifier(ax: Any, rows: Sequence[tuple[str, int, int]]) -> None:
    ratios = [calls / updates if updates else 0.0 for _l, calls, updates in rows]
    ax.barh(range(len(rows)), ratios, color="tab:blue", alpha=0.7, height=0.6)
    for i, (_l, calls, updates) in enumerate(rows):
        ax.text(0.01, i, f"{calls:,} / {updates:,}", va="center", ha="left", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label for label, _c, _u in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, max(1.05, *[r * 1.05 for r in ratios]))


def _draw_symlog(ax: Any, data: Mapping[str, tuple[list[float], list[int]]], unit: str,
                 threshold: int | None) -> None:
    mpl_ticker = importlib.import_module("matplotlib.ticker")
    for label, (xs, ys) in sorted(data.items()):
        ax.plot(xs, ys, ".", markersize=3, label=label)
    ax.set_yscale("symlog", linthresh=SYMLOG_LINTHRESH_NS)
    top = max([1, threshold or 0, *(max(ys) for _xs, ys in data.values() if ys)])
    ax.set_ylim(-0.3, top * 3)
    ax.yaxis.set_major_locator(mpl_ticker.FixedLocator(
        [0.0, *(10.0**k for k in range(0, 13, 3) if 10.0**k <= top * 3)]))
    ax.yaxis.set_major_formatter(mpl_ticker.FuncFormatter(lambda v, _pos: _axis_ns(v)))
    if threshold is not None:
        ax.axhline(threshold, color="tab:orange", linestyle="--", linewidth=0.8,
                   gid="threshold")
        ax.text(0.995, threshold, f"{_axis_ns(threshold)} threshold", ha="right",
                va="bottom", fontsize=7, color="tab:orange",
                transform=ax.get_yaxis_transform())
    ax.set_ylabel(unit, fontsize=8)
    if data:
        ax.legend(loc="upper left", fontsize=7, markerscale=3)


def build_figure(runs: Sequence[Run], title: str = "") -> Any:
    """The matplotlib figure of ``runs`` (see the module docstring); each axes is labelled
    ``<panel>:<profile>`` (``Axes.get_label()``)."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise PlotUnavailable(MISSING_MATPLOTLIB) from exc

    plan = plan_panels(runs)
    ncols = max(1, len(runs))
    nlanes = max([1, *(len(p.lanes) for p in plan.per_run)])
    nlev = max([1, *(len(p.notifier) for p in plan.per_run)])
    # the axes' width (inches): the column less the state lanes' labels left of it
    lane_chars = max([8, *(len(lane.label) for p in plan.per_run for lane in p.lanes)])
    axes_in = max(2.5, 7.5 - 0.6 - 0.6 * 8 / 72 * lane_chars)
    line_frac = _LINE_IN / axes_in
    placed = [place_labels(merge_marks(p.marks, int(_end_s(r) * 1e9)), int(_end_s(r) * 1e9),
                           line_frac) for r, p in zip(runs, plan.per_run, strict=True)]
    longest = max([12, *(len(ln) for pl in placed for _t, lines, _m in pl for ln in lines)])
    # the key-moments strip is as tall as its longest rotated label line needs
    heights = {"moments": 0.3 + _CHAR_IN * longest, "state": 0.45 + 0.32 * nlanes,
               "notifier": 0.35 + 0.28 * nlev, "skew": 2.4, "backwards": 2.4}
    ratios = [heights[p] for p in plan.drawn] or [1.0]
    note = omitted_note(plan)
    fig = plt.figure(figsize=(7.5 * ncols, sum(ratios) + 1.6 + (0.3 if note else 0)),
                     layout="constrained")
    grid = fig.add_gridspec(len(ratios), ncols, height_ratios=ratios)
    for col, (run, panels) in enumerate(zip(runs, plan.per_run, strict=True)):
        end_s = _end_s(run)
        merged = placed[col]
        first_time_ax: Any = None
        for row, panel in enumerate(plan.drawn):
            shared: Any = first_time_ax if panel != "notifier" else None
            ax = fig.add_subplot(grid[row, col], sharex=shared)
            ax.set_label(f"{panel}:{run['profile']}")
            if panel != "notifier":
                first_time_ax = first_time_ax or ax
                ax.set_xlim(0, end_s)
            if panel == "moments":
                ax.set_yticks([])
                for side in ("left", "right", "top"):
                    ax.spines[side].set_visible(False)
                ax.set_title(f"profile {run['profile']}: key moments", fontsize=10)
                _draw_marks(ax, merged, label=True, span_s=end_s, line_frac=line_frac)
                if not merged:
                    ax.text(0.5, 0.5, "no clocksource switch, TSC jump or lifecycle action",
                            ha="center", va="center", fontsize=8, color="tab:gray",
                            transform=ax.transAxes)
                _draw_stop(run, ax, label=True)
                ax.tick_params(labelbottom=False)
                continue
            if not _has_data(panels, panel):
                ax.text(0.5, 0.5, f"profile {run['profile']}: {_WHY_EMPTY[panel]}",
                        ha="center", va="center", fontsize=8, color="tab:gray",
                        transform=ax.transAxes)
                ax.set_yticks([])
            elif panel == "state":
                _draw_state(ax, run, panels.lanes)
                _shade_lifecycle(run, ax, panels.lanes)
            elif panel == "notifier":
                _draw_notifier(ax, panels.notifier)
            elif panel == "skew":
                _draw_symlog(ax, panels.skew, "skew", SKEW_THRESHOLD_NS)
            else:
                _draw_symlog(ax, panels.backwards, "step back", None)
            ax.set_title(panel_title(panel, run), fontsize=9)
            if panel in ("skew", "backwards"):
                _shade_lifecycle(run, ax)
            if panel != "notifier":
                _draw_marks(ax, merged, label=False)
                _draw_stop(run, ax, label=False)
                time_rows = [p for p in plan.drawn if p != "notifier"]
                if panel == time_rows[-1]:
                    _time_axis(ax, _end_s(run))
                else:
                    ax.tick_params(labelbottom=False)
    if title:
        fig.suptitle(title)
    if note:
        fig.supxlabel(note, fontsize=8, color="tab:gray", x=0.005, ha="left")
    return fig


def write_plot(runs: Sequence[Run], path: str, title: str = "") -> None:
    """Write the PNG of ``runs`` to ``path`` (:func:`build_figure`; 100 dpi)."""
    fig = build_figure(runs, title)
    plt = importlib.import_module("matplotlib.pyplot")
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)

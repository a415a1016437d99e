"""PNG of guest clock skew and the pvclock stable bit over simulated time (matplotlib, the
optional extra ``plot``; imported only when a plot is asked for)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

Run = Mapping[str, Any]

MISSING_MATPLOTLIB = "--plot needs matplotlib: pip install 'kvmclock[plot]'"


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def _mark_lifecycle(run: Run, axes: Sequence[Any]) -> None:
    """Shade each lifecycle record's stopped interval (``started_ns`` .. ``t_ns``) on every
    axis and label it once, on the top axis, with the VM, the action and the REALTIME jump."""
    for rec in run.get("lifecycle") or []:
        a = int(rec.get("started_ns") or rec.get("t_ns") or 0) / 1e9
        b = int(rec.get("t_ns") or 0) / 1e9
        for ax in axes:
            ax.axvspan(a, max(a, b), color="tab:gray", alpha=0.25, linewidth=0)
            ax.axvline(b, color="tab:red", linewidth=0.8)
        jump = rec.get("realtime_jump_ns")
        label = f"{rec.get('vm')} {rec.get('action')}"
        if isinstance(jump, int) and not isinstance(jump, bool):
            label += f"\nREALTIME {jump / 1e9:+.3f} s"
        axes[0].annotate(
            label,
            xy=(b, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize="x-small",
            color="tab:red",
        )


def write_plot(runs: Sequence[Run], path: str, title: str = "") -> None:
    """Two rows per profile column: the cross-vCPU skew samples (ns) per guest level, and the
    stable bit (step lines, one per level) over time in seconds; each lifecycle record (pause,
    restore, migration, host suspend) shades the interval its guest did not run and is
    labelled with the REALTIME jump it left."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise PlotUnavailable(MISSING_MATPLOTLIB) from exc

    ncols = max(1, len(runs))
    fig, axes = plt.subplots(2, ncols, figsize=(6.5 * ncols, 6.5), squeeze=False, sharex="col")
    for col, run in enumerate(runs):
        ax_skew, ax_bit = axes[0][col], axes[1][col]
        end_s = (run.get("duration_ns") or 0) / 1e9
        by_level: dict[int, tuple[list[float], list[int]]] = {}
        for t_ns, level, skew_ns, _stable in run.get("samples") or []:
            xs, ys = by_level.setdefault(int(level), ([], []))
            xs.append(int(t_ns) / 1e9)
            ys.append(int(skew_ns))
        for level, (xs, ys) in sorted(by_level.items()):
            ax_skew.plot(xs, ys, ".", markersize=2, label=f"L{level}")
        ax_skew.set_title(f"profile {run['profile']}: guest clock skew across vCPUs")
        ax_skew.set_ylabel("skew (ns)")
        if by_level:
            ax_skew.legend(loc="upper left", fontsize="small")
        nlev = 0
        ticks: list[float] = []
        labels: list[str] = []
        for lv in run["levels"]:
            tl = lv.get("pvclock_stable_timeline") or []
            if not tl:
                continue
            bx = [int(t) / 1e9 for t, _ in tl] + [max(end_s, int(tl[-1][0]) / 1e9)]
            offset = 1.5 * nlev
            by = [offset + (1.0 if s else 0.0) for _, s in tl]
            by.append(by[-1])
            ax_bit.step(bx, by, where="post", label=f"L{lv['level']} stable bit")
            ticks += [offset, offset + 1.0]
            labels += [f"L{lv['level']} off", f"L{lv['level']} on"]
            nlev += 1
        ax_bit.set_yticks(ticks)
        ax_bit.set_yticklabels(labels)
        ax_bit.set_ylim(-0.25, max(1.25, 1.5 * nlev - 0.25))
        ax_bit.set_title("pvclock stable bit per guest level")
        _mark_lifecycle(run, (ax_skew, ax_bit))
        ax_bit.set_xlabel("simulated time (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)

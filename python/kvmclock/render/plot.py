"""PNG of guest clock skew and the pvclock stable bit over simulated time (matplotlib, the
optional extra ``plot``; imported only when a plot is asked for)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from kvmclock.render.text import kernel_labels, stopped_at

Run = Mapping[str, Any]

MISSING_MATPLOTLIB = "--plot needs matplotlib: pip install 'kvmclock[plot]'"


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def _sample_key(row: Sequence[Any]) -> tuple[int, str | None]:
    """A sample row's (level, kernel name): rows are ``[t_ns, level, skew_ns, stable]``, with
    the kernel's name as a fifth element when several guests share a level."""
    return int(row[1]), (str(row[4]) if len(row) > 4 else None)


def _mark_lifecycle(
    run: Run, ax_skew: Any, ax_bit: Any, rows: Mapping[str, tuple[float, float]]
) -> None:
    """Shade each lifecycle record's stopped interval (``stopped_ns`` .. ``t_ns``: the guest
    did not run; a migration's precopy, ``started_ns`` .. ``stopped_ns``, is only a dotted
    line, the guest still runs) on the skew axis, and on the stable-bit axis over the row of
    its VM (``rows``: VM name -> axes-fraction span; the whole height when unknown). The top
    axis labels each record with the VM, the action and the REALTIME jump; labels of records
    close in time are stacked. A record the run's end cut short (``completed`` false) is
    hatched to the end of the run and labelled "not completed"."""
    end_ns = int(run.get("end_ns") or run.get("duration_ns") or 0)
    x0, x1 = 0.0, max(end_ns, 1) / 1e9
    placed: list[float] = []
    shaded: set[tuple[float, float]] = set()
    for rec in run.get("lifecycle") or []:
        done = rec.get("completed") is not False
        started = _int(rec.get("started_ns"))
        stopped = stopped_at(rec)
        t = _int(rec.get("t_ns"))
        b_ns = t if done and t is not None else end_ns
        a = (stopped if stopped is not None else b_ns) / 1e9
        b = b_ns / 1e9
        hatch = None if done else "///"
        lo, hi = rows.get(str(rec.get("vm")), (0.0, 1.0))
        if stopped is not None:
            if (a, b) not in shaded:
                shaded.add((a, b))
                ax_skew.axvspan(
                    a, max(a, b), color="tab:gray", alpha=0.25, linewidth=0, hatch=hatch
                )
            ax_bit.axvspan(
                a, max(a, b), ymin=lo, ymax=hi, color="tab:gray", alpha=0.25, linewidth=0,
                hatch=hatch,
            )
        if started is not None and (stopped is None or started < stopped):
            for ax in (ax_skew, ax_bit):
                ax.axvline(started / 1e9, color="tab:gray", linewidth=0.8, linestyle=":")
            ax_skew.annotate(
                "precopy",
                xy=(started / 1e9, 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize="x-small",
                color="tab:gray",
            )
        if done:
            for ax in (ax_skew, ax_bit):
                ax.axvline(b, color="tab:red", linewidth=0.8)
        label = f"{rec.get('vm')} {rec.get('action')}"
        jump = _int(rec.get("realtime_jump_ns"))
        if not done:
            label += "\nnot completed"
        elif jump is not None:
            label += f"\nREALTIME {_short_ns(jump)}"
        at = b if done else (a if stopped is not None else (started or 0) / 1e9)
        # labels are about a quarter of the axis wide: stack those that would overlap
        near = sum(1 for p in placed if abs(p - at) < 0.25 * (x1 - x0)) % 6
        placed.append(at)
        right = at > x0 + 0.6 * (x1 - x0)  # in the right part: the label goes left of it
        ax_skew.annotate(
            label,
            xy=(at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if right else 3, -3 - 18 * near),
            textcoords="offset points",
            ha="right" if right else "left",
            va="top",
            fontsize="x-small",
            color="tab:red",
        )


def _short_ns(ns: int) -> str:
    """A signed duration for a label: ns, us, ms or s with three decimals."""
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if abs(ns) >= scale:
            return f"{ns / scale:+.3f} {unit}"
    return f"{ns:+d} ns"


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def write_plot(runs: Sequence[Run], path: str, title: str = "") -> None:
    """Two rows per profile column: the cross-vCPU skew samples (ns) per guest kernel, and the
    stable bit (step lines, one per guest kernel) over time in seconds; each lifecycle record
    (pause, restore, migration, host suspend) shades the interval its guest did not run and
    is labelled with the REALTIME jump it left.  A level with several guests shows each one,
    by name."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise PlotUnavailable(MISSING_MATPLOTLIB) from exc

    ncols = max(1, len(runs))
    nbits = max(
        [1, *(sum(1 for lv in r["levels"] if lv.get("pvclock_stable_timeline")) for r in runs)]
    )
    fig, axes = plt.subplots(
        2,
        ncols,
        figsize=(6.5 * ncols, 4.0 + 0.9 * max(3, nbits)),
        squeeze=False,
        sharex="col",
        gridspec_kw={"height_ratios": [3, max(3, nbits)]},
    )
    for col, run in enumerate(runs):
        ax_skew, ax_bit = axes[0][col], axes[1][col]
        end_s = (run.get("duration_ns") or 0) / 1e9
        levels = list(run["levels"])
        label_of = dict(
            zip(((int(lv["level"]), str(lv.get("name"))) for lv in levels),
                kernel_labels(levels), strict=True)
        )
        by_kernel: dict[tuple[int, str | None], tuple[list[float], list[int]]] = {}
        for row in run.get("samples") or []:
            xs, ys = by_kernel.setdefault(_sample_key(row), ([], []))
            xs.append(int(row[0]) / 1e9)
            ys.append(int(row[2]))
        for (level, name), (xs, ys) in sorted(
            by_kernel.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))
        ):
            if name is None:  # rows without names: one guest at this level
                at_level = [lb for (lvl, _n), lb in label_of.items() if lvl == level]
                label = at_level[0] if len(at_level) == 1 else f"L{level}"
            else:
                label = label_of.get((level, name), f"L{level} {name}")
            ax_skew.plot(xs, ys, ".", markersize=2, label=label)
        ax_skew.set_title(f"profile {run['profile']}: guest clock skew across vCPUs")
        ax_skew.set_ylabel("skew (ns)")
        if by_kernel:
            ax_skew.legend(loc="upper left", fontsize="small")
        ticks: list[float] = []
        labels: list[str] = []
        spans: list[tuple[str, int]] = []
        with_bit = [
            (lv, label)
            for lv, label in zip(levels, kernel_labels(levels), strict=True)
            if lv.get("pvclock_stable_timeline")
        ]
        n = len(with_bit)
        for i, (lv, label) in enumerate(with_bit):  # the first kernel on the top row
            tl = lv["pvclock_stable_timeline"]
            bx = [int(t) / 1e9 for t, _ in tl] + [max(end_s, int(tl[-1][0]) / 1e9)]
            row = n - 1 - i
            offset = 1.5 * row
            by = [offset + (1.0 if s else 0.0) for _, s in tl]
            by.append(by[-1])
            ax_bit.step(bx, by, where="post", label=f"{label} stable bit")
            ticks += [offset, offset + 1.0]
            labels += [f"{label} off", f"{label} on"]
            spans.append((str(lv.get("name")), row))
        ax_bit.set_yticks(ticks)
        ax_bit.set_yticklabels(labels, fontsize="small")
        ax_bit.set_ylim(-0.25, max(1.25, 1.5 * n - 0.25))
        ax_bit.set_title("pvclock stable bit per guest kernel")
        rows = {name: (i / n, (i + 1) / n) for name, i in spans} if n else {}
        _mark_lifecycle(run, ax_skew, ax_bit, rows)
        ax_bit.set_xlabel("simulated time (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)

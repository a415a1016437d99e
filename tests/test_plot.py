"""``kvmclock simulate --plot``: which panels are drawn (and which are left out, and why),
the key-moment marks at the right times, the symlog scales, runs with several guests per
level and incomplete lifecycle records."""

from __future__ import annotations

import importlib.util
import itertools
from typing import Any

import pytest
from kvmclock.render.plot import (
    MISSING_MATPLOTLIB,
    Mark,
    _short_ns,
    key_marks,
    label_lines,
    merge_marks,
    notifier_chain,
    omitted_note,
    place_labels,
    plan_panels,
)

S = 10**9
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="needs matplotlib (extra 'plot')")


def _tl(*changes: tuple[int, bool]) -> list[dict[str, Any]]:
    return [{"t_ns": t, "on": on} for t, on in changes]


def _run(skews: list[int], events: list[dict[str, Any]] | None = None,
         **kw: Any) -> dict[str, Any]:
    levels = [
        {"level": 0, "name": "L0", "masterclock_timeline": _tl((0, True), (3 * S, False)),
         "pvclock_stable_timeline": [], "notifier_calls": 9, "timekeeping_updates": 10},
        {"level": 1, "name": "L1", "masterclock_timeline": [],
         "pvclock_stable_timeline": _tl((0, True), (3 * S, False)), "notifier_calls": 0,
         "timekeeping_updates": 10, "backwards_events": events or []},
    ]
    run: dict[str, Any] = {
        "profile": "upstream", "duration_ns": 5 * S, "end_ns": 5 * S, "stopped_early": False,
        "stop_reason": None, "levels": levels, "lifecycle": [],
        "moments": [
            {"t_ns": 0, "level": 0, "text": "L0: clocksource: Switched to clocksource tsc"},
            {"t_ns": 2 * S, "level": 0, "text": "L0: every TSC jumps forward by 100 ms of cycles"},
            {"t_ns": 2 * S + 1000, "level": 0,
             "text": "L0: tsc: Marking TSC unstable due to clocksource watchdog"},
            {"t_ns": 3 * S, "level": 0, "text": "L0: clocksource: Switched to clocksource hpet"},
            {"t_ns": 3 * S, "level": 0, "text": "L1: masterclock off"},  # not marked
        ],
        "samples": [{"t_ns": (i + 1) * S // 2, "level": 1, "kernel": "L1", "skew_ns": v,
                     "stable": True} for i, v in enumerate(skews)],
    }
    run.update(kw)
    return run


@pytest.mark.parametrize(("ns", "text"), [(63, "+63 ns"), (-999, "-999 ns"),
                                          (1_904, "+1.904 us"), (-300_000_000, "-300.000 ms"),
                                          (-60_000_000_000, "-60.000 s"), (0, "+0 ns")])
def test_plot_label_durations(ns: int, text: str) -> None:
    assert _short_ns(ns) == text


def test_zero_skew_and_no_backwards_panels_are_omitted() -> None:
    plan = plan_panels([_run([0, 0, 0]), _run([])])
    assert plan.drawn == ["moments", "state", "notifier"]
    assert plan.omitted == {"skew": "no sample or every sample 0 ns",
                            "backwards": "no guest clock step backwards"}
    note = omitted_note(plan)
    assert note.startswith("not drawn (no data in any profile):")
    assert "cross-vCPU skew: no sample or every sample 0 ns" in note
    assert "guest clock steps backwards: no guest clock step backwards" in note


def test_a_panel_is_drawn_when_one_profile_has_data() -> None:
    ev = [{"t_ns": 4 * S, "cpu": 1, "step_ns": 10 * S, "stable": True}]
    plan = plan_panels([_run([0, 0]), _run([0, 5], ev)])
    assert plan.drawn == ["moments", "state", "skew", "backwards", "notifier"]
    assert plan.omitted == {} and omitted_note(plan) == ""


def test_marks_skip_boot_clocksource_and_timeline_moments() -> None:
    rec_done = {"vm": "L1", "action": "restore", "t_ns": 4 * S, "completed": True,
                "monotonic_jump_ns": -60 * S, "realtime_jump_ns": 1_904}
    rec_cut = {"vm": "L1", "action": "migrate", "t_ns": None, "started_ns": 4_500_000_000,
               "stopped_ns": None, "completed": False}
    marks = key_marks(_run([0], lifecycle=[rec_done, rec_cut]))
    assert [(m.t_ns, m.label, m.kind) for m in marks] == [
        (2 * S, "L0: TSC +100 ms", "tsc_jump"),
        (2 * S + 1000, "L0: TSC unstable", "tsc_unstable"),
        (3 * S, "L0: clocksource hpet", "clocksource"),
        # both jumps, on a line of their own, when either is 1 ms or more
        (4 * S, "L1 restore\nMONO -60.000 s, RT +1.904 us", "lifecycle"),
        (4_500_000_000, "L1 migrate (not completed)", "lifecycle"),
    ]


def test_every_lifecycle_step_is_marked() -> None:
    steps = [(S, 1, "VM L1: paused (firecracker(clock_realtime=False))"),
             (S, 1, "VM L1: snapshot 'flags0' taken"),
             (S, 1, "VM b: KVM_KVMCLOCK_CTRL on every vCPU at pause"),
             (2 * S, 1, "VM b: migration to h2 started (qemu, precopy 0 ns)"),
             (2 * S, 1, "VM b: migration: source stopped (qemu)"),
             (3 * S, 0, "host h suspended for 5 ns (VMs b)"),
             (3 * S + 5, 0, "host h resumed"),
             (4 * S, 1, "VM L1: restored on h (firecracker(clock_realtime=False))"),
             (4 * S, 0, "VM L1: KVM_SET_CLOCK clock=1 flags=0x0")]  # not a step
    run = _run([0], lifecycle=[{"vm": "L1", "action": "restore", "t_ns": 4 * S,
                                "completed": True, "monotonic_jump_ns": 0,
                                "realtime_jump_ns": 0}])
    run["moments"] = [{"t_ns": t, "level": lvl, "text": x} for t, lvl, x in steps]
    assert [(m.t_ns, m.label, m.kind) for m in key_marks(run)] == [
        (S, "L1 paused + snapshot", "lifecycle_step"),
        (S, "b KVMCLOCK_CTRL", "lifecycle_step"),
        (2 * S, "b migration to h2 started + migration: source stopped", "lifecycle_step"),
        (3 * S, "host h suspended", "lifecycle_step"),
        (3 * S + 5, "host h resumed", "lifecycle_step"),
        # the record stands for its own "restored on" step
        (4 * S, "L1 restore", "lifecycle"),
    ]


def test_labels_that_would_overlap_share_one() -> None:
    merged = [(S, ["a"]), (S + S // 100, ["b"]), (2 * S, ["c"]), (9 * S, ["d " * 20])]
    placed = place_labels(merged, 10 * S, line_frac=0.02)
    # b's line is under a's label (one line 2 % of the axis wide): one label, two lines
    assert [(t, lines, members) for t, lines, members in placed] == [
        (S, ["a", "b"], [S, S + S // 100]), (2 * S, ["c"], [2 * S]),
        (9 * S, label_lines(["d " * 20]), [9 * S])]
    assert label_lines(["d " * 20]) == ["d d d d d d d d d d d d d d", "d d d d d d"]
    assert label_lines(["x restore\nMONO -1.000 s, RT -1.000 s"]) == [
        "x restore", "MONO -1.000 s, RT -1.000 s"]
    # no two labels closer than their own width
    for (t0, lines0, _m0), (t1, _l1, _m1) in itertools.pairwise(placed):
        assert (t1 - t0) / (10 * S) >= (len(lines0) + 0.5) * 0.02


def test_notifier_chain_per_profile() -> None:
    assert notifier_chain({"switches": {"pvclock_gtod_chain": True,
                                        "clocksource_change_chain": False}}) == \
        "pvclock_gtod_chain"
    assert notifier_chain({"switches": {"pvclock_gtod_chain": False,
                                        "clocksource_change_chain": True}}) == \
        "clocksource_changes_chain"
    assert notifier_chain({"switches": {}}) is None


def test_the_install_hint_names_the_checkout_and_pypi() -> None:
    assert "./scripts/setup.sh --extras plot" in MISSING_MATPLOTLIB
    assert "pip install 'kvmclock[plot]'" in MISSING_MATPLOTLIB


def test_close_marks_merge() -> None:
    marks = [Mark(2 * S, "a", "x"), Mark(2 * S + 1000, "b", "x"), Mark(2 * S + 1000, "b", "x"),
             Mark(4 * S, "c", "x")]
    assert merge_marks(marks, 5 * S) == [(2 * S, ["a", "b"]), (4 * S, ["c"])]


# ---------------------------------------------------------------------------- matplotlib
def _axes(fig: Any) -> dict[str, Any]:
    return {ax.get_label(): ax for ax in fig.axes}


def _mark_xs(ax: Any) -> list[float]:
    return sorted(float(line.get_xdata()[0]) for line in ax.lines if line.get_gid() == "mark")


@needs_mpl
def test_figure_panels_marks_and_symlog() -> None:
    from kvmclock.render.plot import build_figure

    ev = [{"t_ns": 4 * S, "cpu": 1, "step_ns": 10 * S, "stable": True},
          {"t_ns": 4 * S + 10**7, "cpu": 0, "step_ns": 3, "stable": False}]
    gtod = _run([0, 0], profile="gtod")
    up = _run([0, 2, 9 * S], ev)
    fig = build_figure([gtod, up], "t")
    try:
        axes = _axes(fig)
        assert set(axes) == {f"{p}:{prof}" for p in ("moments", "state", "skew", "backwards",
                                                     "notifier") for prof in ("gtod", "upstream")}
        for name in ("skew:upstream", "backwards:upstream"):
            assert axes[name].get_yscale() == "symlog"
        assert axes["skew:upstream"].get_ylim()[1] >= 9 * S  # the outlier is on the axis
        # the 1 us threshold line on the skew panel
        assert [ln.get_ydata()[0] for ln in axes["skew:upstream"].lines
                if ln.get_gid() == "threshold"] == [1000]
        # marks at the TSC jump (merged with the TSC unstable 1 us later) and the switch
        want = [2.0, 3.0]
        for panel in ("moments", "state", "skew", "backwards"):
            assert _mark_xs(axes[f"{panel}:upstream"]) == want, panel
        labels = [t.get_text() for t in axes["moments:upstream"].texts
                  if t.get_gid() == "mark-label"]
        assert labels == ["L0: TSC +100 ms\nL0: TSC unstable", "L0: clocksource hpet"]
        # a profile without data in a drawn panel says so
        assert any("every sample 0 ns" in t.get_text() for t in axes["skew:gtod"].texts)
        # the notifier panel: one bar per level, the ratio of calls to updates
        bars = [p.get_width() for p in axes["notifier:upstream"].patches]
        assert bars == [0.9, 0.0]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


@needs_mpl
def test_figure_without_skew_has_no_skew_axes_and_says_so() -> None:
    from kvmclock.render.plot import build_figure

    fig = build_figure([_run([0, 0, 0])])
    try:
        assert {ax.get_label().split(":")[0] for ax in fig.axes} == {"moments", "state",
                                                                      "notifier"}
        assert fig.get_supxlabel().startswith("not drawn (no data in any profile):")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


@needs_mpl
def test_stopped_run_and_incomplete_record_and_several_guests(tmp_path: Any) -> None:
    from kvmclock.render.plot import build_figure, write_plot

    run = _run([0, 4], stopped_early=True, end_ns=S,
               stop_reason="livelock in kvm_get_host_time_and_cycles at 1 s")
    extra = {**run["levels"][1], "name": "b"}
    run["levels"] = [*run["levels"], extra]  # two guests at L1
    run["samples"] += [{"t_ns": S // 2, "level": 1, "kernel": "b", "skew_ns": 7, "stable": True}]
    run["lifecycle"] = [{"vm": "b", "action": "migrate", "t_ns": None, "completed": False,
                         "started_ns": S // 4, "stopped_ns": S // 2}]
    fig = build_figure([run])
    try:
        axes = _axes(fig)
        lanes = [t.get_text() for t in axes["state:upstream"].get_yticklabels()]
        assert lanes == ["L0 masterclock", "L1 L1 stable bit", "L1 b stable bit"]
        legend = axes["skew:upstream"].get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["L1 L1", "L1 b"]
        stopped = [p for p in axes["skew:upstream"].patches if p.get_gid() == "stopped"]
        assert len(stopped) == 1
        assert any(t.get_text().startswith(" stopped at 1.000 s")
                   for t in axes["moments:upstream"].texts)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    out = tmp_path / "p.png"
    write_plot([run], str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def real() -> dict[str, dict[str, Any]]:
    from kvmclock.sim import run_scenario

    return {name: run_scenario(name, "upstream", seed=0)
            for name in ("nested", "tsc-sync", "restore-shelf")}


def test_real_runs_panels_follow_the_data(real: dict[str, dict[str, Any]]) -> None:
    for name, run in real.items():
        plan = plan_panels([run])
        skew = any(s["skew_ns"] for s in run["samples"])
        back = any(lv.get("backwards_events") for lv in run["levels"])
        assert ("skew" in plan.drawn) is skew, name
        assert ("backwards" in plan.drawn) is back, name
    assert "skew" in plan_panels([real["tsc-sync"]]).drawn
    assert "backwards" in plan_panels([real["tsc-sync"]]).drawn
    assert plan_panels([real["nested"]]).omitted.keys() == {"skew", "backwards"}
    # nested: the TSC jump, the TSC marked unstable and the switch to hpet are marked
    kinds = {m.kind for m in key_marks(real["nested"])}
    assert {"tsc_jump", "tsc_unstable", "clocksource"} <= kinds
    jump = next(m for m in real["nested"]["moments"] if "TSC jumps forward" in m["text"])
    assert any(m.t_ns == jump["t_ns"] and m.kind == "tsc_jump"
               for m in key_marks(real["nested"]))
    # restore-shelf: one lifecycle mark per record, at its t_ns
    recs = real["restore-shelf"]["lifecycle"]
    life = [m.t_ns for m in key_marks(real["restore-shelf"]) if m.kind == "lifecycle"]
    assert sorted(life) == sorted(r["t_ns"] for r in recs)
    # ... and the pause + snapshot of every VM, at the time of its snapshot moment
    steps = {m.label: m.t_ns for m in key_marks(real["restore-shelf"])
             if m.kind == "lifecycle_step"}
    for r in recs:
        snap = next(m["t_ns"] for m in real["restore-shelf"]["moments"]
                    if m["text"].startswith(f"VM {r['vm']}: snapshot"))
        assert steps[f"{r['vm']} paused + snapshot"] == snap


@needs_mpl
def test_real_runs_strip_is_compact_and_labels_readable(real: dict[str, dict[str, Any]],
                                                        ) -> None:
    import matplotlib.pyplot as plt
    from kvmclock.render.plot import LABEL_FONTSIZE, build_figure

    for name, run in real.items():
        fig = build_figure([run], name)
        try:
            fig.canvas.draw()
            axes = _axes(fig)
            strip = axes["moments:upstream"]
            # at most a quarter of the figure's height
            assert strip.get_position().height <= 0.25, name
            labels = [t for t in strip.texts if t.get_gid() == "mark-label"]
            assert labels and all(t.get_fontsize() >= LABEL_FONTSIZE >= 8 for t in labels)
            assert all(t.get_rotation() == 90 for t in labels)
            # no two labels overlap, and each fits in the strip's height
            r = fig.canvas.get_renderer()
            boxes = sorted((t.get_window_extent(r) for t in labels), key=lambda b: b.x0)
            for a, b in itertools.pairwise(boxes):
                assert a.x1 <= b.x0 + 0.5, name
            top = strip.get_window_extent(r).y1
            assert all(b.y1 <= top + 1 for b in boxes), name
            chain = "clocksource_changes_chain" if run["switches"].get(
                "clocksource_change_chain") else "pvclock_gtod_chain"
            assert axes["notifier:upstream"].get_title() == (
                f"notifier calls per timekeeping update ({chain})")
        finally:
            plt.close(fig)
    # nested: the TSC jump, the TSC marked unstable and the switch to hpet share one label
    fig = build_figure([real["nested"]])
    try:
        (label,) = [t.get_text() for t in _axes(fig)["moments:upstream"].texts
                    if t.get_gid() == "mark-label"]
        assert label == "L0: TSC +100 ms\nL0: TSC unstable\nL0: clocksource hpet"
    finally:
        plt.close(fig)


@needs_mpl
def test_real_runs_write_png(real: dict[str, dict[str, Any]], tmp_path: Any) -> None:
    from kvmclock.render.plot import write_plot

    for name, run in real.items():
        out = tmp_path / f"{name}.png"
        write_plot([run], str(out), title=name)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

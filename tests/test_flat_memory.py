"""Flat memory for long runs (``kvmclock.limits``): every structure that grows with simulated
time is bounded, and a run below the bounds is the run it was.  Tiny caps make the bounds
bite in short runs; the expected values come from an uncapped run of the same scenario,
computed here without the implementation's code (the histogram edges are written out)."""

from __future__ import annotations

import collections
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from kvmclock import limits
from kvmclock.sim import Sim, run_scenario
from kvmclock.sim.metrics import LevelStats

# 0, then decades from 1 ns to 1 s: the documented edges of the skew histogram
EDGES = [0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000,
         1_000_000_000]


def _keep_sims(monkeypatch: pytest.MonkeyPatch) -> list[Sim]:
    """Every Sim the runs create (run_scenario looks Sim up in its module)."""
    import kvmclock.sim.scenarios as scenarios_mod

    sims: list[Sim] = []

    def keep(*a: Any, **k: Any) -> Sim:
        sims.append(Sim(*a, **k))
        return sims[-1]

    monkeypatch.setattr(scenarios_mod, "Sim", keep)
    return sims


def _by_kernel(samples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for s in samples:
        out[s["kernel"]].append(s)
    return dict(out)


def _without(run: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in keys}


# ------------------------------------------------------------------------------ the series
def test_decimated_series_is_evenly_spaced_subset_with_exact_aggregates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full = run_scenario("tsc-sync", "series")
    assert "samples_summary" not in full  # below the default bound: the run as it was
    rows = 16
    monkeypatch.setattr(limits, "SERIES_ROWS", rows)
    capped = run_scenario("tsc-sync", "series")
    # the bound changes the series only
    assert _without(capped, "samples", "samples_summary") == _without(full, "samples")
    want_rows = _by_kernel(full["samples"])
    got_rows = _by_kernel(capped["samples"])
    summaries = {s["kernel"]: s for s in capped["samples_summary"]}
    assert set(summaries) == set(want_rows) == set(got_rows)
    for kernel, every in want_rows.items():
        n = len(every)
        # the smallest power of two that leaves at most `rows` of the n samples
        stride = 1
        while math.ceil(n / stride) > rows:
            stride *= 2
        assert stride > 1
        kept = got_rows[kernel]
        assert len(kept) <= rows
        assert kept == every[::stride]  # a subset of the full series
        gaps = {b["t_ns"] - a["t_ns"] for a, b in itertools.pairwise(kept)}
        assert len(gaps) == 1  # evenly spaced
        skews = [s["skew_ns"] for s in every]
        hist = [sum(1 for x in skews if x == 0)]
        hist += [sum(1 for x in skews if lo < x <= hi) for lo, hi in itertools.pairwise(EDGES)]
        hist.append(sum(1 for x in skews if x > EDGES[-1]))
        worst = next(s for s in every if s["skew_ns"] == max(skews))
        summ = summaries[kernel]
        assert summ == {
            "kernel": kernel,
            "level": every[0]["level"],
            "samples": n,
            "kept": len(kept),
            "stride": stride,
            "stable": sum(1 for s in every if s["stable"]),
            "unstable": sum(1 for s in every if not s["stable"]),
            "skew_min_ns": min(skews),
            "skew_max_ns": max(skews),
            "skew_histogram": [
                {"above_ns": lo, "max_ns": hi, "count": c}
                for lo, hi, c in zip([None, *EDGES], [*EDGES, None], hist, strict=True)
            ],
            "first": every[0],
            "worst": worst,
        }
    assert any(s["skew_max_ns"] > 0 for s in summaries.values())  # the histogram was used


def test_decimation_keeps_rows_bounded_for_any_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows stay within the bound at every count (checked on the recorder as it goes)."""
    from kvmclock.sim.metrics import SampleSummary

    monkeypatch.setattr(limits, "SERIES_ROWS", 6)
    summ = SampleSummary("k", 1)
    for i in range(1000):
        summ.add([i, i * 10, 1, i % 7, True, "k"])
        assert len(summ.rows) <= 6
        assert [r[0] for r in summ.rows] == list(range(0, i + 1, summ.stride))
    assert summ.stride == 256 and summ.samples == 1000  # ceil(1000/256) = 4 <= 6 < 8


# ------------------------------------------------------------------------ moments and log
def test_moments_capped_first_and_last_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    full = run_scenario("unstable-tsc", "gtod")
    n = len(full["moments"])
    assert n > 8
    monkeypatch.setattr(limits, "MOMENTS_CAP", 5)
    monkeypatch.setattr(limits, "MOMENTS_TAIL", 3)
    sims = _keep_sims(monkeypatch)
    capped = run_scenario("unstable-tsc", "gtod")
    assert capped["moments"] == full["moments"][:5]
    assert capped["moments_dropped"] == n - 5
    assert capped["moments_last"] == full["moments"][-3:]
    assert _without(capped, "moments", "moments_dropped", "moments_last") == _without(
        full, "moments")
    (sim,) = sims
    assert len(sim.moments) <= 5


def test_world_log_capped_gives_the_same_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key moments (with a timeline entry's cause and a watchdog verdict's detail) are
    built as entries are logged: a world log that keeps nothing gives the same run."""
    sims = _keep_sims(monkeypatch)
    full = {n: run_scenario(n, "gtod", trace=True) for n in ("set-clock", "nested")}
    uncapped = [s.world.events for s in sims]
    assert any("cause" in m for m in full["set-clock"]["moments"])
    assert any("detail" in m for m in full["nested"]["moments"])
    sims.clear()
    monkeypatch.setattr(limits, "EVENTS_CAP", 3)
    for n, want in full.items():
        assert run_scenario(n, "gtod", trace=True) == want
    for sim, log in zip(sims, uncapped, strict=True):
        assert sim.world.events == log[:3]
        assert sim.world.events_logged == len(log)
        assert sim.world.events_dropped == collections.Counter(e["kind"] for e in log[3:])


def test_trace_only_when_asked_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = _keep_sims(monkeypatch)
    plain = run_scenario("nested", "gtod", duration_s=1)
    traced = run_scenario("nested", "gtod", duration_s=1, trace=True)
    quiet, loud = sims
    assert all(not k.kvm.trace_enabled for k in quiet.kernels if k.kvm is not None)
    assert len(quiet.trace) == 0
    assert all(k.kvm.trace_enabled for k in loud.kernels if k.kvm is not None)
    assert _without(traced, "trace") == plain and "trace_dropped" not in traced
    total = len(traced["trace"])
    assert total > 10
    monkeypatch.setattr(limits, "TRACE_CAP", 10)
    capped = run_scenario("nested", "gtod", duration_s=1, trace=True)
    assert capped["trace"] == traced["trace"][:10]
    assert capped["trace_dropped"] == total - 10
    assert _without(capped, "trace", "trace_dropped") == plain


# ------------------------------------------------------------------------ KVM's own lists
def test_kvm_lists_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = _keep_sims(monkeypatch)
    full = run_scenario("nested", "gtod", duration_s=6)
    vms = [vm for k in sims[0].kernels if k.kvm is not None for vm in k.kvm.vm_list]
    decisions = [list(vm.tsc_decisions) for vm in vms]
    timelines = [list(vm.masterclock_timeline) for vm in vms]
    assert max(len(d) for d in decisions) > 3 and max(len(t) for t in timelines) > 1
    monkeypatch.setattr(limits, "TSC_DECISIONS_CAP", 3)
    monkeypatch.setattr(limits, "TIMELINE_CAP", 1)
    capped = run_scenario("nested", "gtod", duration_s=6)
    vms = [vm for k in sims[1].kernels if k.kvm is not None for vm in k.kvm.vm_list]
    for vm, d, tl in zip(vms, decisions, timelines, strict=True):
        assert list(vm.tsc_decisions) == d[-3:]  # the most recent
        assert vm.tsc_decisions_logged == len(d)
        assert vm.masterclock_timeline == tl[:1]
    # moments still follow every change; the levels say how many changes were left out
    assert capped["moments"] == full["moments"]
    for lv, lv_full in zip(capped["levels"], full["levels"], strict=True):
        n = len(lv_full["masterclock_timeline"]) + len(lv_full["pvclock_stable_timeline"])
        kept = len(lv["masterclock_timeline"]) + len(lv["pvclock_stable_timeline"])
        assert lv.get("timeline_changes_dropped", 0) == n - kept


def test_max_seen_stable_holds_only_current_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = _keep_sims(monkeypatch)
    run_scenario("nested", "gtod", duration_s=6)
    (sim,) = sims
    assert sim.recorder is not None
    for k in sim.kernels:
        if k.level:
            assert len(sim.recorder.stats_of(k).max_seen_stable) <= len(k.machine.cpus)
    # a pair the vCPUs no longer hold is forgotten, the others keep their maxima
    st = LevelStats(1)
    st.record_read(0, 0, 100, 100, 1, (1, 1))
    st.record_read(0, 1, 90, 90, 1, (2, 2))
    st.forget_pairs({(2, 2)})
    assert st.max_seen_stable == {(2, 2): 90}


# ------------------------------------------------------------------------- the event log
def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_events_file_has_every_entry_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sims = _keep_sims(monkeypatch)
    traced = run_scenario("set-clock", "gtod", trace=True)
    log = sims[0].world.events
    assert len(log) < limits.EVENTS_CAP  # the whole log, to compare with
    path = tmp_path / "ev.jsonl"
    run = run_scenario("set-clock", "gtod", events=str(path))
    assert _without(run, "event_log") == _without(traced, "trace")
    sim = sims[1]
    lines = _lines(path.read_text())
    # every trace() call is counted by KVM whether it keeps the record or not
    traces = sum(n for k in sim.kernels if k.kvm is not None
                 for key, n in k.kvm.counters.items() if key.startswith("trace."))
    assert len(lines) == sim.world.events_logged + traces == run["event_log"]["lines"]
    assert run["event_log"] == {"log_entries": sim.world.events_logged,
                                "trace_records": traces, "lines": len(lines)}
    # in execution order: the world entries (with the cause the timeline entries gave) and
    # the trace rows of a traced run, interleaved in time order
    assert [e for e in lines if e["kind"] != "trace"] == json.loads(json.dumps(log))
    assert any("cause" in e for e in lines)
    assert [{k: v for k, v in e.items() if k != "kind"} for e in lines
            if e["kind"] == "trace"] == traced["trace"]
    assert [e["t_ns"] for e in lines] == sorted(e["t_ns"] for e in lines)
    # a stream works the same, and is left open
    stream = io.StringIO()
    run_scenario("set-clock", "gtod", events=stream)
    assert stream.getvalue() == path.read_text()


def test_events_file_is_complete_when_everything_else_is_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ev.jsonl"
    whole = run_scenario("nested", "gtod", duration_s=1, events=path)
    monkeypatch.setattr(limits, "EVENTS_CAP", 0)
    monkeypatch.setattr(limits, "TRACE_CAP", 0)
    capped_path = tmp_path / "capped.jsonl"
    capped = run_scenario("nested", "gtod", duration_s=1, events=capped_path, trace=True)
    assert capped_path.read_text() == path.read_text()
    assert capped["trace"] == [] and capped["trace_dropped"] == whole["event_log"][
        "trace_records"]


def test_capped_run_validates_against_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key a bound adds is in the schema (simulate.schema.json, ``$defs/run``)."""
    import jsonschema
    from schema_util import load_schema, undescribed

    for name, cap in (("TRACE_CAP", 5), ("SERIES_ROWS", 8), ("MOMENTS_CAP", 3),
                      ("MOMENTS_TAIL", 2), ("TIMELINE_CAP", 1)):
        monkeypatch.setattr(limits, name, cap)
    run = run_scenario("nested", "gtod", duration_s=6, trace=True,
                       events=tmp_path / "e.jsonl")
    for key in ("trace_dropped", "moments_dropped", "moments_last", "samples_summary",
                "event_log"):
        assert key in run
    assert any("timeline_changes_dropped" in lv for lv in run["levels"])
    s = load_schema("simulate")
    jsonschema.Draft202012Validator(
        {"$schema": s["$schema"], "$defs": s["$defs"], "$ref": "#/$defs/run"}
    ).validate(run)
    assert undescribed(s) == []


# ------------------------------------------------------------------------------- the CLI
def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from kvmclock import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ev.jsonl"
    code, out, err = _main(capsys, "simulate", "--profile", "gtod", "--duration", "1",
                           "--events", str(path), "--json", "-")
    assert code == 0
    run = json.loads(out)["runs"][0]
    lines = _lines(path.read_text())
    assert len(lines) == run["event_log"]["lines"] > 0
    assert f"wrote {path} ({len(lines):,} event lines)" in err
    # several profiles: a file per profile; '-' only with one
    code, _out, err = _main(capsys, "simulate", "--profile", "gtod,upstream", "--duration",
                            "0.5", "--events", str(tmp_path / "e.jsonl"))
    assert code == 0
    assert (tmp_path / "e-gtod.jsonl").stat().st_size > 0
    assert (tmp_path / "e-upstream.jsonl").stat().st_size > 0
    code, _out, err = _main(capsys, "simulate", "--profile", "gtod,upstream", "--events", "-")
    assert code == 2 and "--events - needs a single --profile" in err
    code, out, _err = _main(capsys, "simulate", "--profile", "gtod", "--duration", "0.5",
                            "--events", "-")
    assert code == 0 and all(json.loads(line)["kind"] for line in out.splitlines())
    code, _out, err = _main(capsys, "simulate", "--events", str(tmp_path / "no" / "e"))
    assert code == 2 and "cannot write" in err and "--events" in err


def test_cli_says_the_trace_was_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "TRACE_CAP", 10)
    monkeypatch.setattr(limits, "SERIES_ROWS", 8)
    monkeypatch.setattr(limits, "MOMENTS_CAP", 4)
    trace = tmp_path / "t.txt"
    code, out, err = _main(capsys, "simulate", "--profile", "gtod", "--duration", "1",
                           "--trace", str(trace))
    assert code == 0
    cut = [line for line in err.splitlines() if "trace keeps" in line]
    assert len(cut) == 1 and cut[0].startswith("gtod: the trace keeps the first 10 of ")
    assert cut[0].endswith("KVM trace records; --events PATH writes every one")
    # the text report: one line per bound reached
    assert sum("samples decimated" in line for line in out.splitlines()) == 1
    assert sum("key moments after the first 4 left out" in line for line in out.splitlines()) == 1
    assert sum("the trace keeps the first 10" in line for line in out.splitlines()) == 1


# --------------------------------------------------------------------------- unit rules
def test_event_log_holds_lines_until_the_outermost_entry_ends() -> None:
    """Lines logged while a timeline entry runs wait for it (nested entries: the outermost);
    a line logged outside any entry is written at once; a value JSON lacks is written as its
    str; close() writes what still waits."""
    from fractions import Fraction

    from kvmclock.machine.world import World
    from kvmclock.sim.eventlog import EventLog

    out = io.StringIO()
    log = EventLog(World(0), keep_trace=False, stream=out)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(x) for x in out.getvalue().splitlines()]

    log.entry({"kind": "a", "v": Fraction(1, 3)})
    assert lines() == [{"kind": "a", "v": "1/3"}]
    log.hold()
    log.entry({"kind": "b"})
    log.hold()
    log.entry({"kind": "c"})
    log.release()
    assert [e["kind"] for e in lines()] == ["a"]  # the outer entry still runs
    log.release()
    assert [e["kind"] for e in lines()] == ["a", "b", "c"]
    log.entry({"kind": "d"})
    assert [e["kind"] for e in lines()] == ["a", "b", "c", "d"]
    log.hold()
    log.entry({"kind": "e"})
    log.close()  # a run stopped inside an entry
    assert [e["kind"] for e in lines()] == ["a", "b", "c", "d", "e"] and log.lines == 5
    log.entry({"kind": "f"})
    assert log.lines == 6


def test_forget_pairs_keeps_only_the_pairs_the_vcpus_hold() -> None:
    """After each sample only the master pairs some vCPU's record held stay: a guest
    re-anchored a thousand times on one vCPU keeps one pair."""
    st = LevelStats(1)
    for i in range(1000):
        pair = (10 * i, 20 * i)
        st.record_read(i, 0, 100 + i, 100 + i, 1, pair)
        st.forget_pairs({pair})
        assert list(st.max_seen_stable) == [pair]
    st.record_read(1000, 0, 5000, 5000, 1, (1, 1))
    st.record_read(1000, 1, 5000, 5000, 1, (2, 2))
    st.forget_pairs({(1, 1), (2, 2)})
    assert set(st.max_seen_stable) == {(1, 1), (2, 2)}


def test_sample_summary_worst_is_the_first_sample_of_the_largest_skew() -> None:
    from kvmclock.sim.metrics import SampleSummary

    s = SampleSummary("L1", 1)
    rows = [[i, 10 * i, 1, skew, True, "L1"] for i, skew in enumerate([5, 9, 3, 9, 3])]
    for r in rows:
        s.add(r)
    assert s.first == rows[0] and s.worst == rows[1]
    assert (s.skew_min_ns, s.skew_max_ns) == (3, 9)


def test_recorder_keeps_the_pairs_the_vcpus_hold_across_samples(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stable read lower than an earlier stable read of the same master pair is counted
    across samples (the pair a vCPU still holds is kept from one sample to the next), and
    a pair no vCPU holds any more is forgotten."""
    from types import SimpleNamespace

    from kvmclock.machine.world import World
    from kvmclock.sim import metrics as metrics_mod

    world = World(0)

    class Guest:
        name, level, pvclock, kvm, machine_running = "L1", 1, object(), None, True

        def __init__(self) -> None:
            self.world = world
            self.clocksources = {"kvm-clock": None}
            self.machine = SimpleNamespace(cpus=[0])

        def run_on_cpu(self, cpu: int, fn: Any) -> Any:
            return fn()

    p, q = (1_000, 2_000), (3_000, 4_000)
    script = iter([(100, 100, 1, p), (90, 90, 1, p), (95, 95, 1, q), (80, 80, 1, p)])
    monkeypatch.setattr(metrics_mod, "guest_read", lambda _k: next(script))
    guest = Guest()
    rec = metrics_mod.Recorder([guest], 10**6)  # type: ignore[list-item]
    st = rec.stats_of(guest)  # type: ignore[arg-type]
    rec.sample()
    rec.sample()  # 90 after 100 with the same pair p: a stable step back
    assert st.guest_backwards_stable == 1 and set(st.max_seen_stable) == {p}
    rec.sample()  # re-anchored to q: p is forgotten
    assert set(st.max_seen_stable) == {q}
    rec.sample()  # p again (as if restored): nothing of p is remembered, no stable step back
    assert st.guest_backwards_stable == 1 and st.guest_backwards_reanchor >= 1

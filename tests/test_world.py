"""World: integer true time, deterministic (time, insertion) ordering, periodic events, log."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World


def test_ties_run_in_insertion_order_and_time_advances() -> None:
    w = World()
    seen: list[tuple[int, str]] = []
    w.at(10, lambda: seen.append((w.now_ns, "b")))
    w.at(5, lambda: seen.append((w.now_ns, "a")))
    w.at(10, lambda: seen.append((w.now_ns, "c")))
    w.run_until(20)
    assert seen == [(5, "a"), (10, "b"), (10, "c")]
    assert w.now_ns == 20
    assert w.events_processed == 3


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=40))
def test_events_run_sorted_by_time_then_seq(times: list[int]) -> None:
    w = World()
    order: list[tuple[int, int]] = []
    for i, t in enumerate(times):
        w.at(t, order.append, (t, i))
    w.run_until(1000)
    assert order == sorted(order)
    assert len(order) == len(times)


def test_every_and_cancel() -> None:
    w = World()
    hits: list[int] = []
    h = w.every(100, lambda: hits.append(w.now_ns))
    w.run_until(350)
    assert hits == [100, 200, 300]
    h.cancel()
    w.run_until(1000)
    assert hits == [100, 200, 300]
    hits2: list[int] = []
    w.every(10, lambda: hits2.append(w.now_ns), start_ns=1000)
    w.run_until(1025)
    assert hits2 == [1000, 1010, 1020]


def test_cancel_inside_own_callback() -> None:
    w = World()
    hits: list[int] = []

    def fn() -> None:
        hits.append(w.now_ns)
        if len(hits) == 2:
            handle.cancel()

    handle = w.every(7, fn)
    w.run_until(100)
    assert hits == [7, 14]


def test_event_cancel_and_after() -> None:
    w = World()
    hits: list[str] = []
    ev = w.after(5, hits.append, "x")
    w.after(6, hits.append, "y")
    ev.cancel()
    assert w.pending() == 1
    assert w.next_event_ns() == 6
    w.run_for(10)
    assert hits == ["y"]
    assert w.now_ns == 10


def test_bad_arguments() -> None:
    w = World()
    w.run_until(100)
    with pytest.raises(ValueError, match="t_ns"):
        w.at(50, lambda: None)
    with pytest.raises(ValueError, match="dt_ns"):
        w.after(-1, lambda: None)
    with pytest.raises(ValueError, match="period_ns"):
        w.every(0, lambda: None)
    with pytest.raises(TypeError, match="t_ns"):
        w.at(1.5, lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        w.at(200, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        World("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="past"):
        w.run_until(10)


def test_reentrant_run_is_refused() -> None:
    w = World()
    w.at(1, lambda: w.run_until(5))
    with pytest.raises(RuntimeError, match="re-entrant"):
        w.run_until(10)


def test_log_entries() -> None:
    w = World()
    w.at(42, lambda: w.log("thing", a=1))
    w.run_until(50)
    assert w.events == [{"t_ns": 42, "kind": "thing", "a": 1}]


def _run(seed: int, profile: str = "series") -> list[dict[str, object]]:
    w = World(seed)
    m = PhysicalMachine(w, 2, tsc_skew_cycles=1000)
    k = Kernel(m, profile)
    k.boot()
    w.run_until(3_000_000_000)
    return w.events


def test_same_seed_same_events_different_seeds_differ() -> None:
    a = _run(7)
    b = _run(7)
    c = _run(8)
    assert a == b
    assert repr(a) == repr(b)
    assert a != c
    assert any(e["kind"] == "watchdog_check" for e in a)

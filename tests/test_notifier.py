"""NotifierChain: raw notifier chain semantics of kernel/notifier.c and include/linux/notifier.h."""

from __future__ import annotations

from typing import Any

import pytest
from kvmclock.timekeeping import (
    NOTIFY_BAD,
    NOTIFY_DONE,
    NOTIFY_OK,
    NOTIFY_STOP,
    NOTIFY_STOP_MASK,
    NotifierChain,
)


def _recorder(log: list[str], name: str, ret: int = NOTIFY_OK) -> Any:
    def cb(action: int, data: Any) -> int:
        log.append(name)
        return ret

    cb.__name__ = name
    return cb


def test_values_match_notifier_h() -> None:
    assert (NOTIFY_DONE, NOTIFY_OK, NOTIFY_STOP_MASK) == (0x0000, 0x0001, 0x8000)
    assert NOTIFY_BAD == 0x8000 | 0x0002
    assert NOTIFY_STOP == 0x8000 | 0x0001


def test_descending_priority_fifo_among_equals() -> None:
    log: list[str] = []
    ch = NotifierChain()
    ch.register(_recorder(log, "a0"))
    ch.register(_recorder(log, "b10"), priority=10)
    ch.register(_recorder(log, "c0"))
    ch.register(_recorder(log, "d-5"), priority=-5)
    ch.register(_recorder(log, "e10"), priority=10)
    assert ch.call() == NOTIFY_OK
    assert log == ["b10", "e10", "a0", "c0", "d-5"]
    assert len(ch) == 5


def test_empty_chain_returns_done_and_last_result_is_returned() -> None:
    ch = NotifierChain()
    assert ch.call() == NOTIFY_DONE
    log: list[str] = []
    ch.register(_recorder(log, "x", NOTIFY_OK))
    ch.register(_recorder(log, "y", NOTIFY_DONE))
    assert ch.call(5, "data") == NOTIFY_DONE
    assert ch.calls == 2


def test_action_and_data_are_passed() -> None:
    got: list[tuple[int, Any]] = []
    ch = NotifierChain()
    ch.register(lambda a, d: got.append((a, d)) or NOTIFY_DONE)
    marker = object()
    ch.call(3, marker)
    assert got == [(3, marker)]


@pytest.mark.parametrize("stop", [NOTIFY_STOP, NOTIFY_BAD, NOTIFY_STOP_MASK])
def test_stop_mask_stops(stop: int) -> None:
    log: list[str] = []
    ch = NotifierChain()
    ch.register(_recorder(log, "first"), 2)
    ch.register(_recorder(log, "stopper", stop), 1)
    ch.register(_recorder(log, "never"), 0)
    assert ch.call() == stop
    assert log == ["first", "stopper"]


def test_unregister_self_during_call_is_safe() -> None:
    log: list[str] = []
    ch = NotifierChain()

    def once(action: int, data: Any) -> int:
        log.append("once")
        ch.unregister(once)
        return NOTIFY_OK

    ch.register(_recorder(log, "before"), 1)
    ch.register(once)
    ch.register(_recorder(log, "after"), -1)
    ch.call()
    assert log == ["before", "once", "after"]
    log.clear()
    ch.call()
    assert log == ["before", "after"]


def test_unregister_next_during_call_follows_the_kernel_walk() -> None:
    # notifier_call_chain fetches nb->next before the call: the block already fetched as
    # `next` is still called in this walk, and not in the following ones.
    log: list[str] = []
    ch = NotifierChain()
    victim = _recorder(log, "victim")

    def killer(action: int, data: Any) -> int:
        log.append("killer")
        if victim in ch:
            ch.unregister(victim)
        return NOTIFY_OK

    ch.register(killer, 1)
    ch.register(victim, 0)
    ch.call()
    assert log == ["killer", "victim"]
    log.clear()
    ch.call()
    assert log == ["killer"]


def test_unknown_unregister_raises() -> None:
    ch = NotifierChain("x")
    with pytest.raises(ValueError, match="not registered"):
        ch.unregister(lambda a, d: 0)


def test_raising_callback_propagates_and_chain_stays_usable() -> None:
    log: list[str] = []
    ch = NotifierChain()
    ch.register(_recorder(log, "a"), 1)

    def boom(action: int, data: Any) -> int:
        raise RuntimeError("boom")

    ch.register(boom, 0)
    ch.register(_recorder(log, "c"), -1)
    with pytest.raises(RuntimeError, match="boom"):
        ch.call()
    assert log == ["a"]
    ch.unregister(boom)
    log.clear()
    assert ch.call() == NOTIFY_OK
    assert log == ["a", "c"]


def test_type_and_range_errors() -> None:
    ch = NotifierChain()
    with pytest.raises(TypeError, match="callable"):
        ch.register(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="priority"):
        ch.register(lambda a, d: 0, priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="priority"):
        ch.register(lambda a, d: 0, priority=1 << 31)
    cb = _recorder([], "dup")
    ch.register(cb)
    with pytest.raises(ValueError, match="already registered"):
        ch.register(cb)
    with pytest.raises(ValueError, match="action"):
        ch.call(-1)
    bad = NotifierChain()
    bad.register(lambda a, d: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="must return an int"):
        bad.call()


def test_bound_methods_unregister() -> None:
    class Listener:
        def __init__(self) -> None:
            self.n = 0

        def notify(self, action: int, data: Any) -> int:
            self.n += 1
            return NOTIFY_DONE

    listener = Listener()
    ch = NotifierChain()
    ch.register(listener.notify)
    ch.call()
    ch.unregister(listener.notify)
    ch.call()
    assert listener.n == 1

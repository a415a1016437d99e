"""Raw notifier chains (kernel/notifier.c, include/linux/notifier.h).

``register`` keeps the chain sorted by descending priority and puts a new block after every
block of equal priority (``notifier_chain_register``: it only stops at a strictly lower
priority).  ``call`` walks the list fetching ``next`` *before* running each callback
(``notifier_call_chain``), so a callback may unregister itself safely; like the kernel, a
block unregistered by another callback during the same walk is still called if the walk had
already fetched it as ``next``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "NOTIFY_BAD",
    "NOTIFY_DONE",
    "NOTIFY_OK",
    "NOTIFY_STOP",
    "NOTIFY_STOP_MASK",
    "NotifierCallback",
    "NotifierChain",
]

NOTIFY_DONE = 0x0000  # Don't care
NOTIFY_OK = 0x0001  # Suits me
NOTIFY_STOP_MASK = 0x8000  # Don't call further
NOTIFY_BAD = NOTIFY_STOP_MASK | 0x0002  # Bad/Veto action
NOTIFY_STOP = (
    NOTIFY_OK | NOTIFY_STOP_MASK
)  # Clean way to return from the notifier and stop further calls

NotifierCallback = Callable[[int, Any], int]

_INT_MIN = -(1 << 31)
_INT_MAX = (1 << 31) - 1
_ULONG_MAX = (1 << 64) - 1


def _same(a: object, b: object) -> bool:
    """Identity, or equality for bound methods (``obj.m is obj.m`` is False in Python)."""
    return a is b or (hasattr(a, "__self__") and a == b)


class _Block:
    """``struct notifier_block``: callback, priority, next."""

    __slots__ = ("fn", "next", "priority")

    def __init__(self, fn: NotifierCallback, priority: int) -> None:
        self.fn = fn
        self.priority = priority
        self.next: _Block | None = None


class NotifierChain:
    """``struct raw_notifier_head``: callbacks ``fn(action, data) -> int``."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._head: _Block | None = None
        self.calls = 0  # number of call() invocations (chain walks)

    def register(self, fn: NotifierCallback, priority: int = 0) -> None:
        """``raw_notifier_chain_register``: insert by descending priority, FIFO among equals.

        Registering the same callable twice raises ValueError (current kernels return
        -EEXIST; 2017's only WARNed and corrupted the list).
        """
        if not callable(fn):
            raise TypeError(f"notifier callback must be callable, got {type(fn).__name__}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, got {type(priority).__name__}")
        if not _INT_MIN <= priority <= _INT_MAX:
            raise ValueError(f"priority={priority} out of range ({_INT_MIN}..{_INT_MAX}, C int)")
        # The whole chain is searched: in the kernel a block carries its own priority, so the
        # walk below always passes an earlier registration of it; here the same callable may
        # come with another priority, which would otherwise slip past an insertion point
        # ahead of its first entry.
        if fn in self:
            raise ValueError(
                f"notifier callback {fn!r} already registered on chain {self.name!r} (-EEXIST)"
            )
        new = _Block(fn, priority)
        prev: _Block | None = None
        cur = self._head
        while cur is not None:
            if priority > cur.priority:
                break
            prev, cur = cur, cur.next
        new.next = cur
        if prev is None:
            self._head = new
        else:
            prev.next = new

    def unregister(self, fn: NotifierCallback) -> None:
        """``raw_notifier_chain_unregister``; an unknown callback raises ValueError (-ENOENT)."""
        prev: _Block | None = None
        cur = self._head
        while cur is not None:
            if _same(cur.fn, fn):
                # Unlink but keep cur.next: a walk currently positioned on cur continues fine.
                if prev is None:
                    self._head = cur.next
                else:
                    prev.next = cur.next
                return
            prev, cur = cur, cur.next
        raise ValueError(
            f"notifier callback {fn!r} is not registered on chain {self.name!r} (-ENOENT)"
        )

    def call(self, action: int = 0, data: Any = None) -> int:
        """``raw_notifier_call_chain``: returns the last callback's result (NOTIFY_DONE if none).

        Stops after a result with ``NOTIFY_STOP_MASK``.  A raising callback propagates its
        exception; the chain itself is unchanged and usable afterwards.
        """
        if action.__class__ is not int or not 0 <= action <= _ULONG_MAX:  # hot: every tick
            if isinstance(action, bool) or not isinstance(action, int):
                raise TypeError(f"action must be an int, got {type(action).__name__}")
            if not 0 <= action <= _ULONG_MAX:
                raise ValueError(f"action={action} out of range (0..2**64-1, unsigned long)")
        self.calls += 1
        ret = NOTIFY_DONE
        nb = self._head
        while nb is not None:
            next_nb = nb.next
            ret = nb.fn(action, data)
            if ret.__class__ is not int and (isinstance(ret, bool) or not isinstance(ret, int)):
                raise TypeError(
                    f"notifier callback {nb.fn!r} returned {type(ret).__name__}; "
                    "it must return an int (NOTIFY_DONE, NOTIFY_OK, NOTIFY_STOP, NOTIFY_BAD)"
                )
            if ret & NOTIFY_STOP_MASK:
                break
            nb = next_nb
        return ret

    @property
    def callbacks(self) -> list[NotifierCallback]:
        """Registered callbacks in call order."""
        out: list[NotifierCallback] = []
        nb = self._head
        while nb is not None:
            out.append(nb.fn)
            nb = nb.next
        return out

    def __len__(self) -> int:
        return len(self.callbacks)

    def __contains__(self, fn: object) -> bool:
        return any(_same(cb, fn) for cb in self.callbacks)

    def __repr__(self) -> str:
        return f"NotifierChain(name={self.name!r}, callbacks={len(self)}, calls={self.calls})"

"""``Counters``: the event counters of a kernel, its KVM and its VMs (``counters[name] += 1``)."""

from __future__ import annotations

import collections

__all__ = ["Counters"]


class Counters(collections.Counter[str]):
    """A ``collections.Counter`` of event names whose item assignment is dict's own.

    ``Counter`` defines ``__delitem__`` in Python, which makes CPython send every
    ``counters[name] = value`` (so every ``+= 1``) through a generic slot, about three times
    slower than a dict's; the model counts on every vCPU entry and every tick.  The one
    difference from ``Counter``: deleting a name that is not there raises ``KeyError``
    (nothing deletes counters).
    """

    __delitem__ = dict.__delitem__  # type: ignore[assignment]

"""Shared pytest configuration: hypothesis profiles.

`KVMCLOCK_HYPOTHESIS_PROFILE=thorough` raises example counts for long local runs; CI uses the
default profile, derandomised so a run is reproducible.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=20_000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("KVMCLOCK_HYPOTHESIS_PROFILE", "default"))


#: Per-test bound in seconds for the modules whose inputs must never hang (issue 14): the
#: hardening catalogue, the fuzz smoke runs and tests/test_no_hang.py.  A test that runs
#: longer fails (SIGALRM) instead of blocking the suite.
HANG_BOUND_S = {
    "test_no_hang": 60,
    "test_hardening_sim": 120,
    "test_hardening_cli": 330,
    "test_fuzz_smoke": 330,
}


@pytest.fixture(autouse=True)
def _hang_bound(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test of a module in :data:`HANG_BOUND_S` that runs past its bound."""
    bound = HANG_BOUND_S.get(request.module.__name__.rsplit(".", 1)[-1])
    if (
        bound is None
        or not hasattr(signal, "SIGALRM")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    node = request.node.nodeid

    def expired(_sig: int, _frame: object) -> None:
        pytest.fail(f"{node} ran longer than {bound} s (a hang)", pytrace=False)

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, bound)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)

"""Shared pytest configuration: hypothesis profiles.

`KVMCLOCK_HYPOTHESIS_PROFILE=thorough` raises example counts for long local runs; CI uses the
default profile, derandomised so a run is reproducible.
"""

from __future__ import annotations

import os

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

"""Simulation: built-in scenarios, metrics, ``run_scenario`` (one run as a JSON-able dict)."""

from kvmclock.sim.metrics import LevelStats, Recorder, guest_read
from kvmclock.sim.scenarios import SCENARIOS, Scenario, Sim, format_trace_lines, run_scenario

__all__ = [
    "SCENARIOS",
    "LevelStats",
    "Recorder",
    "Scenario",
    "Sim",
    "format_trace_lines",
    "guest_read",
    "run_scenario",
]

"""Impossible simulation parameters (issue 7) are rejected by ``kvmclock.sim.run_scenario``
before anything runs, with a ValueError subclass (``kvmclock.errors.ScenarioError``) whose
message names the argument and the valid choices or range (docs/ARCHITECTURE.md).

"Before anything runs" is checked by replacing the simulation object the scenarios build
(``kvmclock.sim.Sim``) with one that fails the test if it is ever constructed.
"""

from __future__ import annotations

from typing import Any

import kvmclock.sim.scenarios as scenarios_mod
import pytest
from kvmclock import cli, sim
from kvmclock.errors import ScenarioError

PROFILES = ("gtod", "series")


class _Ran(AssertionError):
    pass


@pytest.fixture
def never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any, **_k: Any) -> None:
        raise _Ran("the simulation was started although the parameters are impossible")

    monkeypatch.setattr(scenarios_mod, "Sim", refuse)


def rejected(name: Any, profile: Any, seed: Any = 0, **params: Any) -> str:
    with pytest.raises(ValueError) as ei:
        sim.run_scenario(name, profile, seed=seed, **params)
    assert isinstance(ei.value, ScenarioError), type(ei.value)
    return str(ei.value)


def scenario_names() -> list[str]:
    return list(sim.SCENARIOS)


def test_scenarios_documented_in_spec_exist() -> None:
    for name in ("nested", "tsc-sync", "unstable-tsc", "set-clock", "patch09-hang"):
        assert name in sim.SCENARIOS


@pytest.mark.parametrize("name", ["nope", "", "NESTED", "nested ", None, 5])
def test_unknown_scenario_lists_the_choices(name: Any, never_run: None) -> None:
    msg = rejected(name, "series")
    assert "scenario" in msg
    for valid in scenario_names():
        assert valid in msg, (valid, msg)


@pytest.mark.parametrize("profile", ["GTOD", "both", "linux-6.18", "", None, 1])
def test_unknown_profile_lists_the_choices(profile: Any, never_run: None) -> None:
    msg = rejected("nested", profile)
    assert "profile" in msg
    for valid in PROFILES:
        assert valid in msg, msg


@pytest.mark.parametrize("seed", ["1", 1.0, 1.5, None, True, False, b"1", [1]])
def test_seed_that_is_not_an_int(seed: Any, never_run: None) -> None:
    msg = rejected("nested", "gtod", seed=seed)
    assert "seed" in msg and "int" in msg


def _vcpu_keys() -> list[tuple[str, str]]:
    out = []
    for name, scn in sim.SCENARIOS.items():
        for key in scn.params:
            if key in ("vcpus", "l1_vcpus", "l2_vcpus", "host_cpus"):
                out.append((name, key))
    return out


@pytest.mark.parametrize(("name", "key"), _vcpu_keys())
@pytest.mark.parametrize("value", [0, -1, 65, 10**6])
def test_impossible_cpu_counts(name: str, key: str, value: int, never_run: None) -> None:
    msg = rejected(name, "series", **{key: value})
    assert key in msg and str(value) in msg
    assert "1..64" in msg, msg


@pytest.mark.parametrize("value", [2.0, "2", True, None])
def test_cpu_count_that_is_not_an_int(value: Any, never_run: None) -> None:
    msg = rejected("tsc-sync", "gtod", vcpus=value)
    assert "vcpus" in msg and "int" in msg


@pytest.mark.parametrize("name", ["nested", "tsc-sync", "unstable-tsc", "set-clock"])
@pytest.mark.parametrize("value", [0, -1, -0.5, "-2", "0"])
def test_non_positive_duration(name: str, value: Any, never_run: None) -> None:
    msg = rejected(name, "series", duration_s=value)
    assert "duration_s" in msg and "> 0" in msg


@pytest.mark.parametrize("value", ["abc", "", float("nan"), float("inf"), "1/0", None, [1]])
def test_duration_that_is_not_seconds(value: Any, never_run: None) -> None:
    msg = rejected("nested", "series", duration_s=value)
    assert "duration_s" in msg and "seconds" in msg


def _time_keys() -> list[tuple[str, str]]:
    return [(name, key) for name, scn in sim.SCENARIOS.items() for key in scn.params
            if key.endswith("_at_s") or key in ("step_s", "realtime_lag_s")]


@pytest.mark.parametrize(("name", "key"), _time_keys())
def test_negative_event_times(name: str, key: str, never_run: None) -> None:
    msg = rejected(name, "gtod", **{key: -1})
    assert key in msg and ">= 0" in msg


@pytest.mark.parametrize("value", [0, -1, 2**32, 2.5e6, "2593992"])
def test_impossible_tsc_khz(value: Any, never_run: None) -> None:
    msg = rejected("nested", "series", tsc_khz=value)
    assert "tsc_khz" in msg
    if isinstance(value, int):
        assert "1..4294967295" in msg
    else:
        assert "int" in msg


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("hz", 0, "15..10000"), ("hz", 10_001, "15..10000"), ("sample_ms", 0, "1.."),
    ("jump_ms", -1, "0.."),
])
def test_other_ranges(key: str, value: int, needle: str, never_run: None) -> None:
    msg = rejected("nested", "series", **{key: value})
    assert key in msg and needle in msg


def test_unknown_parameter_lists_the_valid_ones(never_run: None) -> None:
    msg = rejected("nested", "series", vcpu=4)
    assert "vcpu" in msg
    for key in sim.SCENARIOS["nested"].params:
        assert key in msg, (key, msg)


def test_bad_fault_lists_the_choices(never_run: None) -> None:
    msg = rejected("patch09-hang", "series", fault="missing-while")
    assert "fault" in msg and "none" in msg and "patch09-missing-do" in msg


def test_duration_beyond_ktime_is_impossible(never_run: None) -> None:
    msg = rejected("nested", "series", duration_s=10**10)
    assert "duration_s" in msg


def test_valid_parameters_do_run() -> None:
    """The validation is not rejecting everything: a short legal run completes."""
    run = sim.run_scenario("set-clock", "series", seed=3, duration_s=0.2, vcpus=1)
    assert run["profile"] == "series" and run["seed"] == 3
    assert run["duration_ns"] == 200_000_000 and run["end_ns"] == 200_000_000


def test_cli_reports_scenario_errors_in_one_line(capsys: pytest.CaptureFixture[str],
                                                 never_run: None) -> None:
    """A parameter the CLI passes through but the scenario refuses: exit 2, one line."""
    code = cli.main(["simulate", "--scenario", "tsc-sync", "--vcpus", "65"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "vcpus" in lines[0] and "1..64" in lines[0], err
    assert "Traceback" not in err

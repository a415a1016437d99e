"""kvmclock.sweep.plan: grid and range parsing, the expansion, run ids."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from kvmclock.errors import ScenarioError
from kvmclock.scenario import load_builtin
from kvmclock.sweep import SweepPoint, expand
from kvmclock.sweep.plan import (
    ID_LEN,
    MAX_RANGE_VALUES,
    parse_grid,
    parse_range,
    parse_value,
    run_id,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# values, grids, ranges
# ------------------------------------------------------------------------------------------
def test_values_are_typed_like_param() -> None:
    key, values = parse_grid("x=1,0.05,true,False,none,abc,0x10,-3,1e-3")
    assert key == "x"
    assert values == [1, Fraction(1, 20), True, False, None, "abc", 16, -3, Fraction(1, 1000)]
    assert [type(v) for v in values[:3]] == [int, Fraction, bool]
    assert parse_value(" 2.50 ") == Fraction(5, 2)
    assert parse_value("1/3") == "1/3"  # not a decimal: the scenario reads it (to_fraction)


def test_grid_keeps_the_order_given() -> None:
    assert parse_grid("vcpus=4,1,2") == ("vcpus", [4, 1, 2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vcpus", "grid 'vcpus': expected KEY=V1,V2,..."),
        ("=1,2", "the parameter name is missing"),
        ("1x=1,2", "'1x' is not a parameter name"),
        ("vcpus=1,,2", "grid vcpus: empty value in '1,,2'"),
        ("vcpus=", "grid vcpus: empty value"),
        ("vcpus=1,2,1", "grid vcpus: value 1 given twice"),
        ("x=0.5,0.50", "grid x: value 0.5 given twice"),
    ],
)
def test_bad_grids(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_grid(text)
    assert message in str(info.value)


def test_range_is_exact_and_includes_stop() -> None:
    # 0.1 + 0.1 + 0.1 != 0.3 in floats; the range computes in fractions
    assert parse_range("x=0:0.3:0.1") == (
        "x",
        [Fraction(0), Fraction(1, 10), Fraction(2, 10), Fraction(3, 10)],
    )
    assert parse_range("n=1:10:3") == ("n", [1, 4, 7, 10])
    assert parse_range("n=1:9:3") == ("n", [1, 4, 7])  # 10 would pass STOP
    assert parse_range("n=5:5:1") == ("n", [5])
    _, vals = parse_range("s=0.5:2:0.5")
    assert vals == [Fraction(1, 2), Fraction(1), Fraction(3, 2), Fraction(2)]
    assert all(type(v) is Fraction for v in vals)  # START not an integer: all decimals
    _, vals = parse_range("n=-2:2:2")
    assert vals == [-2, 0, 2] and all(type(v) is int for v in vals)
    assert len(parse_range(f"n=1:{MAX_RANGE_VALUES}:1")[1]) == MAX_RANGE_VALUES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "range 'x': expected KEY=START:STOP:STEP"),
        ("x=1:2", "range x: expected START:STOP:STEP, got '1:2'"),
        ("x=1:2:3:4", "range x: expected START:STOP:STEP"),
        ("x=a:2:1", "range x: START 'a' is not a number"),
        ("x=0:b:1", "range x: STOP 'b' is not a number"),
        ("x=0:1:1/3", "range x: STEP '1/3' is not a number"),
        ("x=0:1:0", "range x: STEP must be > 0, got 0"),
        ("x=0:1:-0.5", "range x: STEP must be > 0, got -0.5"),
        ("x=2:1:1", "range x: STOP 1 is below START 2"),
        (f"x=0:{MAX_RANGE_VALUES}:1", f"range x: {MAX_RANGE_VALUES + 1} values; at most"),
        ("9=0:1:1", "'9' is not a parameter name"),
    ],
)
def test_bad_ranges(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_range(text)
    assert message in str(info.value)


# ------------------------------------------------------------------------------------------
# expansion
# ------------------------------------------------------------------------------------------
def test_expand_order_and_size() -> None:
    pts = expand(
        "tsc-sync",
        grid=["vcpus=2,1", "hz=100,250"],
        ranges=["inside_ms=0:200:100"],
        seeds=2,
        profiles="upstream,gtod",
    )
    assert len(pts) == 2 * 2 * 3 * 2 * 2
    sha = hashlib.sha256(load_builtin("tsc-sync").text.encode("utf-8")).hexdigest()
    expected = []
    # parameter names sorted, the first slowest; each name's values as given; then the
    # profiles in order; the seeds innermost
    for hz in (100, 250):
        for inside in (0, 100, 200):
            for vcpus in (2, 1):
                for prof in ("upstream", "gtod"):
                    for seed in (0, 1):
                        expected.append(
                            SweepPoint(
                                "tsc-sync",
                                sha,
                                {"hz": hz, "inside_ms": inside, "vcpus": vcpus},
                                prof,
                                seed,
                            )
                        )
    assert pts == expected
    assert all(list(p.params) == sorted(p.params) for p in pts)
    assert len({p.id for p in pts}) == len(pts)


def test_expand_grid_from_python_values() -> None:
    pts = expand("set-clock", grid={"step_s": [0.5, 2], "vcpus": 3}, seeds=[7, 3])
    # floats by their decimal text; a single value is a one-value axis; seeds as given
    assert [p.params for p in pts[:: 2 * 3]] == [
        {"step_s": Fraction(1, 2), "vcpus": 3},
        {"step_s": 2, "vcpus": 3},
    ]
    assert [p.seed for p in pts[:2]] == [7, 3]
    # no profiles given: the file's [run] profiles
    assert [p.profile for p in pts[:6:2]] == ["gtod", "series", "upstream"]


def test_expand_without_axes_is_one_point_per_profile_and_seed() -> None:
    pts = expand("restore-shelf", seeds=3)
    assert [(p.profile, p.seed, p.params) for p in pts] == [("upstream", s, {}) for s in range(3)]


def test_unknown_parameter_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ScenarioError) as info:
        expand("host-suspend", grid={"vcpu": [1, 2], "sleep_s": [1]})
    assert str(info.value) == (
        "scenario 'host-suspend' has no parameter vcpu; valid: sleep_s, suspend_at_s, vcpus"
    )
    with pytest.raises(ScenarioError, match="has no parameter bogus"):
        expand("host-suspend", ranges={"bogus": "1:2:1"})


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"profiles": "upstream,nope"}, ScenarioError, "profile='nope' invalid; choose one of"),
        ({"profiles": "upstream[bogus=on]"}, ScenarioError, "bogus"),
        ({"profiles": ["upstream", "upstream"]}, ValueError, "profile upstream given twice"),
        ({"seeds": 0}, ValueError, "seeds=0: the number of seeds must be >= 1"),
        ({"seeds": [1, -1]}, ValueError, "seeds: -1 is not a seed"),
        ({"seeds": [1, 1]}, ValueError, "seeds: a seed is given twice"),
        ({"grid": ["vcpus=1"], "ranges": ["vcpus=1:2:1"]}, ValueError, "vcpus is swept twice"),
        ({"grid": {"vcpus": [1, 1]}}, ValueError, "grid vcpus: value 1 given twice"),
        ({"grid": {"vcpus": [[1]]}}, ValueError, "grid vcpus: [1] is a list"),
    ],
)
def test_bad_expansions(kwargs: dict[str, object], exc: type[Exception], message: str) -> None:
    with pytest.raises(exc) as info:
        expand("host-suspend", **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_unknown_scenario() -> None:
    with pytest.raises(ScenarioError, match="scenario='nope' unknown; choose one of: "):
        expand("nope")


def test_profile_with_switches_is_normalised() -> None:
    pts = expand("host-suspend", profiles=["upstream[pm_notifier=false]"])
    assert pts[0].profile == "upstream[pm_notifier=off]"


# ------------------------------------------------------------------------------------------
# run ids
# ------------------------------------------------------------------------------------------
def _ids(pts: list[SweepPoint]) -> list[str]:
    return [run_id(p) for p in pts]


def test_run_id_is_a_sha256_and_the_column_its_prefix() -> None:
    p = expand("tsc-sync", grid={"vcpus": [2]})[0]
    rid = run_id(p)
    assert len(rid) == 64 and int(rid, 16) >= 0
    assert p.id == rid[:ID_LEN]


def test_run_ids_are_stable_across_calls_and_processes() -> None:
    grid = {"vcpus": [1, 2], "inside_ms": [5]}
    a = _ids(expand("tsc-sync", grid=grid, seeds=2, profiles="gtod,upstream"))
    b = _ids(expand("tsc-sync", grid=grid, seeds=2, profiles="gtod,upstream"))
    assert a == b
    code = (
        "from kvmclock.sweep.plan import expand, run_id;"
        "print(' '.join(run_id(p) for p in expand('tsc-sync', "
        "grid={'vcpus': [1, 2], 'inside_ms': [5]}, seeds=2, profiles='gtod,upstream')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.split() == a


def test_run_id_changes_with_every_input(tmp_path: Path) -> None:
    base = expand("tsc-sync", grid={"vcpus": [2]}, profiles="upstream")[0]
    rid = run_id(base)
    variants = {
        "param value": expand("tsc-sync", grid={"vcpus": [3]}, profiles="upstream")[0],
        "param name": expand("tsc-sync", grid={"host_cpus": [2]}, profiles="upstream")[0],
        "profile": expand("tsc-sync", grid={"vcpus": [2]}, profiles="gtod")[0],
        "switch": expand("tsc-sync", grid={"vcpus": [2]}, profiles="upstream[pm_notifier=off]")[0],
        "seed": expand("tsc-sync", grid={"vcpus": [2]}, profiles="upstream", seeds=[1])[0],
        "extra param": expand("tsc-sync", grid={"vcpus": [2], "hz": [250]}, profiles="upstream")[0],
    }
    ids = {what: run_id(p) for what, p in variants.items()}
    assert rid not in ids.values(), ids
    assert len(set(ids.values())) == len(ids)
    # the scenario file's text decides, not its path
    text = load_builtin("tsc-sync").text
    same = tmp_path / "copy.toml"
    same.write_text(text, encoding="utf-8")
    assert run_id(expand(str(same), grid={"vcpus": [2]}, profiles="upstream")[0]) == rid
    edited = tmp_path / "edited.toml"
    edited.write_text(text + "\n# one more comment\n", encoding="utf-8")
    other = expand(str(edited), grid={"vcpus": [2]}, profiles="upstream")[0]
    assert other.scenario == str(edited)
    assert other.scenario_sha256 != base.scenario_sha256
    assert run_id(other) != rid


def test_run_id_is_the_hash_of_the_documented_fields() -> None:
    from kvmclock import __version__

    p = expand("set-clock", grid={"step_s": [0.25], "vcpus": [2]}, profiles="series", seeds=[4])[0]
    doc = {
        "kvmclock": __version__,
        "params": {"step_s": {"fraction": "1/4"}, "vcpus": 2},
        "profile": "series",
        "scenario_sha256": hashlib.sha256(
            load_builtin("set-clock").text.encode("utf-8")
        ).hexdigest(),
        "seed": 4,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    assert run_id(p) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_points_pickle() -> None:
    import pickle

    for p in itertools.islice(expand("tsc-sync", grid={"inside_ms": [5, 1]}), 2):
        q = pickle.loads(pickle.dumps(p))
        assert q == p and q.id == p.id

"""The plan of a sweep: its points (scenario, parameters, profile, seed) and their ids.

* :func:`parse_grid` / :func:`parse_range`: ``KEY=V1,V2,...`` and ``KEY=START:STOP:STEP``
  (the command line's ``--grid`` / ``--range``); :func:`expand` types every value as the
  scenario declares its parameter (:func:`typed_value`: int, number and seconds as exact
  :class:`~fractions.Fraction`, str, bool).
* :func:`expand`: the cartesian product as a list of :class:`SweepPoint`, in a stable order,
  with the parameter names and profiles checked before anything runs.
* :func:`run_id`: the sha256 of what decides a run (kvmclock version, the scenario file's
  text, parameters, profile, seed); the table's ``run_id`` column is its first 16 hex digits.

A run is a pure function of its point, so two points with the same id have the same result.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kvmclock.errors import ScenarioError
from kvmclock.profiles import PROFILES, Profile, parse_assignments, resolve_profile
from kvmclock.scenario.loader import (
    Param,
    ScenarioFile,
    builtin_names,
    fmt_number,
    load,
    load_builtin,
)

__all__ = [
    "ID_LEN",
    "MAX_RANGE_VALUES",
    "SweepPoint",
    "Value",
    "expand",
    "load_scenario",
    "parse_grid",
    "parse_range",
    "parse_value",
    "point_id",
    "resolve_point_profile",
    "run_id",
    "show_value",
    "typed_value",
]

#: A parameter value of a sweep: int, exact decimal, bool, None (``none``) or a string.
Value = int | Fraction | bool | str | None

#: at most this many values in one ``--range``
MAX_RANGE_VALUES = 100_000
#: hex digits of the sha256 kept in the table's ``run_id`` column
ID_LEN = 16

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_INT = re.compile(r"[+-]?\d+\Z")


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep.

    ``scenario`` is a built-in scenario's name or a scenario file's path (as given),
    ``scenario_sha256`` the sha256 hex of the scenario file's text, ``params`` the swept
    parameters (name -> value, sorted by name; the others keep the file's defaults),
    ``profile`` a profile name (``upstream``, or with switches flipped as
    :attr:`kvmclock.profiles.Profile.name` writes it: ``upstream[pm_notifier=off]``) and
    ``seed`` the run's seed.  ``scenario_text`` carries a file's text to the workers (so a
    remote worker needs no copy of the file; None for a built-in); it is not part of the
    point's identity beyond its hash.
    """

    scenario: str
    scenario_sha256: str
    params: dict[str, Value]
    profile: str
    seed: int
    scenario_text: str | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        """The table's ``run_id``: the first :data:`ID_LEN` hex digits of :func:`run_id`."""
        return point_id(self)


def parse_value(text: str) -> Value:
    """A ``--param``-style value: ``true``/``false`` (any case) -> bool, ``none``/``null`` ->
    None, an integer (also ``0x1f``) -> int, a decimal number (``0.05``, ``1e-3``) -> the
    exact :class:`~fractions.Fraction`, anything else -> the string itself."""
    s = text.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(s, 0)
    except ValueError:
        pass
    if _DECIMAL.match(s):
        return Fraction(s)
    return s


def _check_key(key: str, what: str, text: str, form: str) -> str:
    key = key.strip()
    if not key:
        raise ValueError(f"{what} {text!r}: expected {form} (the parameter name is missing)")
    if not _KEY.match(key):
        raise ValueError(
            f"{what} {text!r}: {key!r} is not a parameter name "
            "(letters, digits and _, not starting with a digit)"
        )
    return key


def _no_duplicates(key: str, what: str, values: Sequence[Value]) -> None:
    seen: set[str] = set()
    for v in values:
        enc = json.dumps(_canonical(v), sort_keys=True)
        if enc in seen:
            raise ValueError(f"{what} {key}: value {_show(v)} given twice; give each value once")
        seen.add(enc)


class _Text(str):
    """A value given as text on the command line (``--grid``): typed by the parameter's
    declaration in :func:`expand`, not before (a str parameter keeps ``none`` or ``1.0``)."""


def _grid_texts(text: str) -> tuple[str, list[str]]:
    key, sep, rest = text.partition("=")
    if not sep:
        raise ValueError(f"grid {text!r}: expected KEY=V1,V2,...")
    key = _check_key(key, "grid", text, "KEY=V1,V2,...")
    items = rest.split(",")
    if any(not item.strip() for item in items):
        raise ValueError(f"grid {key}: empty value in {rest!r}; expected V1,V2,...")
    return key, [item.strip() for item in items]


def parse_grid(text: str) -> tuple[str, list[Value]]:
    """``"KEY=V1,V2,..."`` -> ``(KEY, [values])`` typed by :func:`parse_value`, in the order
    given.  ValueError (naming the key) for a missing ``=``, a bad name, an empty value or a
    value given twice.  (:func:`expand` types ``--grid`` text by the parameter's declaration
    instead.)"""
    key, items = _grid_texts(text)
    values = [parse_value(item) for item in items]
    _no_duplicates(key, "grid", values)
    return key, values


def show_value(v: Any) -> str:
    """A parameter value as the messages and the summary write it, whatever the table's
    format: ``1``, ``1.5``, ``0.1`` (a whole float as an integer, a decimal exactly, never
    ``Fraction(...)``), ``true``/``false``, ``none`` for None, a string as it is."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, float) and math.isfinite(v):
        v = Fraction(repr(v))
    if isinstance(v, Fraction):
        text = fmt_number(v)  # whole or terminating decimal; else "p/q"
        return repr(float(v)) if "/" in text else text
    return str(v)


def typed_value(param: Param, v: Any) -> Value:
    """``v`` typed as ``param`` declares it and checked against its bounds and choices:
    ``int`` (a whole decimal such as 1.0 is the int 1), ``number``/``seconds`` (an exact
    :class:`~fractions.Fraction`, so 1, 1.0 and 1.00 are one value), ``str`` (text kept as
    given: ``none`` stays the string), ``bool``.  Command-line text (:class:`_Text`) is read
    as that type; a Python value must already be of it (floats taken by their decimal text).
    ScenarioError ``"gap_ms=0.1 must be an integer"`` (values as :func:`show_value` writes
    them) otherwise."""
    key = param.name
    text = isinstance(v, _Text)
    shown = str(v) if text else ("None" if v is None else show_value(v))
    typ = param.type
    out: Value
    if typ == "str":
        if not isinstance(v, str):
            if param.choices is not None:
                raise ScenarioError(
                    f"{key}={shown} invalid; choose one of: {', '.join(param.choices)}"
                )
            raise ScenarioError(f"{key}={shown} must be a string")
        out = str(v)
    else:
        raw: Any = parse_value(v) if text else v
        if isinstance(raw, float):
            raw = Fraction(repr(raw)) if math.isfinite(raw) else raw
        if typ == "bool":
            if not isinstance(raw, bool):
                raise ScenarioError(f"{key}={shown} must be true or false")
            out = raw
        elif typ == "int":
            if isinstance(raw, Fraction) and raw.denominator == 1:
                raw = int(raw)
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ScenarioError(f"{key}={shown} must be an integer")
            out = raw
        else:
            what = "a number of seconds" if typ == "seconds" else "a number"
            if isinstance(raw, bool) or not isinstance(raw, (int, Fraction)):
                raise ScenarioError(f"{key}={shown} must be {what}")
            out = Fraction(raw)
    try:
        param.check(out)
    except ScenarioError as exc:
        msg = str(exc)
        if isinstance(out, Fraction):
            msg = msg.replace(repr(out), show_value(out))
        raise ScenarioError(msg) from None
    return out


def _range_number(key: str, part: str, text: str) -> Fraction:
    s = text.strip()
    if not _DECIMAL.match(s):
        raise ValueError(f"range {key}: {part} {text!r} is not a number (integer or decimal)")
    return Fraction(s)


def parse_range(text: str) -> tuple[str, list[Value]]:
    """``"KEY=START:STOP:STEP"`` -> ``(KEY, [START, START+STEP, ...])`` up to and including
    STOP when it lands on it, computed exactly (decimals as fractions: ``0:0.3:0.1`` gives
    0, 0.1, 0.2, 0.3).  The values are ints when START and STEP are integers, else exact
    :class:`~fractions.Fraction`.  ValueError (naming the key) when the form is wrong, a
    part is not a number, STEP <= 0, STOP < START or there would be more than
    :data:`MAX_RANGE_VALUES` values."""
    key, sep, rest = text.partition("=")
    if not sep:
        raise ValueError(f"range {text!r}: expected KEY=START:STOP:STEP")
    key = _check_key(key, "range", text, "KEY=START:STOP:STEP")
    parts = rest.split(":")
    if len(parts) != 3:
        raise ValueError(f"range {key}: expected START:STOP:STEP, got {rest!r}")
    start, stop, step = (
        _range_number(key, name, p)
        for name, p in zip(("START", "STOP", "STEP"), parts, strict=True)
    )
    if step <= 0:
        raise ValueError(f"range {key}: STEP must be > 0, got {parts[2].strip()}")
    if stop < start:
        raise ValueError(f"range {key}: STOP {parts[1].strip()} is below START {parts[0].strip()}")
    n = math.floor((stop - start) / step) + 1
    if n > MAX_RANGE_VALUES:
        raise ValueError(f"range {key}: {n} values; at most {MAX_RANGE_VALUES} (use a larger STEP)")
    ints = bool(_INT.match(parts[0].strip())) and bool(_INT.match(parts[2].strip()))
    values: list[Value] = []
    for i in range(n):
        v = start + i * step
        values.append(int(v) if ints else v)
    return key, values


def _python_value(key: str, v: Any) -> Value:
    """A value given from Python (an API grid): floats by their decimal text, exactly."""
    if v is None or isinstance(v, (bool, int, str, Fraction)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"grid {key}: {v!r} is not a finite number")
        return Fraction(repr(v))
    raise ValueError(
        f"grid {key}: {v!r} is a {type(v).__name__}; give an int, float, bool, str or None"
    )


def _canonical(v: Value) -> Any:
    """JSON form of a value that keeps int, decimal, bool, None and str apart."""
    if isinstance(v, Fraction):
        return {"fraction": f"{v.numerator}/{v.denominator}"}
    return v


def _show(v: Value) -> str:
    return show_value(v) if isinstance(v, Fraction) else repr(v)


def run_id(point: SweepPoint) -> str:
    """The sha256 hex of the canonical JSON of (kvmclock version, the scenario file's sha256,
    params, profile, seed): the same for the same run on any machine and executor, different
    when any of them differs (a changed scenario file included)."""
    from kvmclock import __version__

    doc = {
        "kvmclock": __version__,
        "scenario_sha256": point.scenario_sha256,
        "params": {k: _canonical(v) for k, v in sorted(point.params.items())},
        "profile": point.profile,
        "seed": point.seed,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def point_id(point: SweepPoint) -> str:
    """The ``run_id`` column: the first :data:`ID_LEN` hex digits of :func:`run_id`."""
    return run_id(point)[:ID_LEN]


def load_scenario(scenario: str | os.PathLike[str] | ScenarioFile) -> ScenarioFile:
    """A built-in scenario's name or the path of a scenario file (``.toml``), loaded and
    checked (ScenarioError naming the valid built-ins for anything else)."""
    if isinstance(scenario, ScenarioFile):
        return scenario
    if isinstance(scenario, str) and scenario in builtin_names():
        return load_builtin(scenario)
    if isinstance(scenario, os.PathLike) or (
        isinstance(scenario, str) and (scenario.endswith(".toml") or os.sep in scenario)
    ):
        return load(os.fspath(scenario))
    raise ScenarioError(
        f"scenario={scenario!r} unknown; choose one of: {', '.join(builtin_names())} "
        "(or give the path of a .toml scenario file)"
    )


def resolve_point_profile(name: str | Profile) -> Profile:
    """A profile from its name: a built-in (``upstream``) or one with switches flipped as
    :attr:`Profile.name` writes it (``upstream[pm_notifier=off,masterclock_request=...]``).
    ValueError naming the valid profiles, switches or values."""
    if isinstance(name, Profile):
        return name
    text = str(name).strip()
    base, sep, rest = text.partition("[")
    if not sep:
        return resolve_profile(base)
    if not rest.endswith("]"):
        raise ValueError(f"profile {text!r}: expected NAME or NAME[SWITCH=VALUE,...]")
    items = [i for i in rest[:-1].split(",") if i.strip()]
    try:
        changes = parse_assignments(items)
    except ValueError as exc:
        raise ValueError(f"profile {text!r}: {exc}") from None
    return resolve_profile(base.strip(), **changes)


def _profiles(
    sf: ScenarioFile, profiles: str | Profile | Iterable[str | Profile] | None
) -> list[str]:
    if profiles is None:
        default = sf.model.run.profiles
        given: list[str | Profile] = [default] if isinstance(default, str) else list(default)
    elif isinstance(profiles, (str, Profile)):
        given = [p for p in str(profiles).split(",")] if isinstance(profiles, str) else [profiles]
    else:
        given = list(profiles)
    if not given:
        raise ValueError(f"profiles: none given; choose from {', '.join(PROFILES)}")
    names: list[str] = []
    for p in given:
        try:
            name = resolve_point_profile(p).name
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        if name in names:
            raise ValueError(f"profile {name} given twice; give each profile once")
        names.append(name)
    return names


def _seeds(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise ValueError(f"seeds={seeds!r}: give a count >= 1 or a list of seeds")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds={seeds}: the number of seeds must be >= 1")
        return list(range(seeds))
    out = list(seeds)
    if not out:
        raise ValueError("seeds: an empty list; give a count >= 1 or some seeds")
    for s in out:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seeds: {s!r} is not a seed (an int >= 0)")
    if len(set(out)) != len(out):
        raise ValueError("seeds: a seed is given twice; give each seed once")
    return out


def _axes(
    grid: Mapping[str, Sequence[Any]] | Iterable[str] | None,
    ranges: Mapping[str, str] | Iterable[str] | None,
) -> dict[str, tuple[str, list[Any]]]:
    """Parameter -> (where it was given: ``--grid``/``--range`` for command-line text,
    ``grid``/``ranges`` for a mapping; its values, untyped)."""
    axes: dict[str, tuple[str, list[Any]]] = {}

    def add(key: str, what: str, values: list[Any]) -> None:
        if key in axes:
            raise ValueError(f"parameter {key} is swept twice (by --grid or --range); give it once")
        if not values:
            raise ValueError(f"{what} {key}: no values")
        axes[key] = (what, values)

    if isinstance(grid, Mapping):
        for key, vals in grid.items():
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
                vals = [vals]
            add(str(key), "grid", [_python_value(key, v) for v in vals])
    elif grid is not None:
        for text in grid:
            key, items = _grid_texts(text)
            add(key, "--grid", [_Text(item) for item in items])
    if isinstance(ranges, Mapping):
        for key, spec in ranges.items():
            add(*_range_axis("ranges", f"{key}={spec}"))
    elif ranges is not None:
        for text in ranges:
            add(*_range_axis("--range", text))
    return axes


def _range_axis(what: str, text: str) -> tuple[str, str, list[Any]]:
    key, values = parse_range(text)
    return key, what, values


def _typed_axes(sf: ScenarioFile, axes: Mapping[str, tuple[str, list[Any]]]) -> dict[
    str, list[Value]
]:
    """Every value typed by its parameter's declaration (:func:`typed_value`); ScenarioError
    naming ``--grid``/``--range`` (or ``grid``/``ranges``) and the key otherwise, and for a
    value given twice (1 and 1.0 of an int parameter are one value)."""
    out: dict[str, list[Value]] = {}
    for key, (what, values) in axes.items():
        typed: list[Value] = []
        for v in values:
            try:
                typed.append(typed_value(sf.params[key], v))
            except ScenarioError as exc:
                raise ScenarioError(f"{what} {key}: {exc}") from None
        _no_duplicates(key, what, typed)
        out[key] = typed
    return out


def expand(
    scenario: str | os.PathLike[str],
    grid: Mapping[str, Sequence[Any]] | Iterable[str] | None = None,
    ranges: Mapping[str, str] | Iterable[str] | None = None,
    seeds: int | Iterable[int] = 1,
    profiles: str | Profile | Iterable[str | Profile] | None = None,
) -> list[SweepPoint]:
    """Every point of the sweep, in a stable order: the parameters' cartesian product (names
    sorted, the first name varying slowest, each name's values in the order given), then
    the profiles (in the order given), then the seeds (innermost).

    ``grid``: ``{name: [values]}`` (Python values; floats taken by their decimal text) or
    ``["KEY=V1,V2", ...]``; ``ranges``: ``{name: "START:STOP:STEP"}`` or
    ``["KEY=START:STOP:STEP", ...]``; ``seeds``: a count N (seeds 0..N-1) or the seeds;
    ``profiles``: names (a string may list several, comma-separated); None: the scenario
    file's ``[run] profiles``.  Before anything runs: a parameter the scenario does not
    declare raises ScenarioError listing the valid ones; every value is typed as the
    scenario declares its parameter and checked against its type, bounds and choices
    (:func:`typed_value`: ``--grid``/``--range`` text and ``1.0`` for an int parameter is
    the int 1, a number an exact Fraction, a str parameter keeps ``none``), a wrong one
    raising ScenarioError naming ``--grid``/``--range`` (``grid``/``ranges`` for a mapping)
    and the key; an unknown profile raises ScenarioError listing the valid ones.  A value
    that only the run can refuse (a timeline it makes impossible) becomes that run's error
    row.  The run ids use the typed values: ``duration_s=1`` and ``1.0`` are one run."""
    sf = load_scenario(scenario)
    label = scenario if isinstance(scenario, str) else os.fspath(scenario)
    raw_axes = _axes(grid, ranges)
    unknown = sorted(set(raw_axes) - set(sf.params))
    if unknown:
        raise ScenarioError(
            f"scenario {sf.name!r} has no parameter {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(sf.params)) or 'none'}"
        )
    axes = _typed_axes(sf, raw_axes)
    names = _profiles(sf, profiles)
    seed_list = _seeds(seeds)
    sha = hashlib.sha256(sf.text.encode("utf-8")).hexdigest()
    builtin = isinstance(scenario, str) and scenario in builtin_names()
    text = None if builtin else sf.text
    keys = sorted(axes)
    points: list[SweepPoint] = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        params = dict(zip(keys, combo, strict=True))
        for prof in names:
            for seed in seed_list:
                points.append(SweepPoint(label, sha, dict(params), prof, seed, text))
    return points

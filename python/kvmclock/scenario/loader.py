"""Reading, checking and resolving scenario files (docs/scenarios.md).

:func:`load` / :func:`loads` parse the TOML (stdlib ``tomllib``; ``tomli`` on Python 3.10),
check its structure with the pydantic models of :mod:`kvmclock.scenario.model`, then resolve
it with the parameters' defaults (:func:`resolve`, ``strict``) so that every cross check runs
before anything is simulated: times in order and within ``run.duration_s``, VMs on known
hosts, actions on VMs that exist at that time, vCPU and host CPU numbers that exist, a
snapshot taken before it is restored, names used once, and the lifecycle actions in an order
they can run (a pause of a running VM, a restore into a paused one, nothing acting on a VM
being migrated or restored or on a suspended host: :class:`_State`).  Every problem is one
:class:`~kvmclock.errors.ScenarioFileError` naming the file, the key path
(``timeline[3].vm``; the line for a TOML syntax error) and what is allowed.

Parameters given for a run (``--param``, ``run_scenario(**params)``) are checked against the
declarations in ``[params]`` (:func:`check_params`, the messages of
:class:`~kvmclock.errors.ScenarioError`), then the file is resolved again with them
(non-strict: entries are run in time order, an entry whose time falls before the start is
skipped and one after the end is not reached).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from importlib import resources
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from kvmclock.errors import ScenarioError, ScenarioFileError, count_ids
from kvmclock.machine.physical import TSC_SCALING_KINDS
from kvmclock.scenario.expr import ExprError, evaluate, is_expr, to_fraction
from kvmclock.scenario.model import (
    ACTION_MODELS,
    CLOCKSOURCES,
    MAX_CPUS,
    RECIPE_NAMES,
    U32_MAX,
    U64_MAX,
    CloudHypervisorRecipe,
    FirecrackerRecipe,
    HostSpec,
    NaiveRecipe,
    ParamSpec,
    QemuRecipe,
    RunSpec,
    ScenarioModel,
    SweepSpec,
    VmSpec,
)
from kvmclock.timekeeping.clocksource import MIN_HZ

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "KTIME_MAX_NS",
    "MAX_REPEATS",
    "Param",
    "Plan",
    "ScenarioFile",
    "Step",
    "builtin_names",
    "check_params",
    "load",
    "load_builtin",
    "loads",
    "resolve",
    "sweep_values",
]

NSEC_PER_SEC = 1_000_000_000
NSEC_PER_MSEC = 1_000_000
# ktime_t is an s64 of ns (include/linux/ktime.h KTIME_MAX): no simulated time lies beyond it.
KTIME_MAX_NS = (1 << 63) - 1
#: The most times a periodic action of a scenario (the guest clock samples of
#: ``run.sample_ms``, a ``rotate_vcpus`` entry) may repeat in one run (docs/scenarios.md,
#: "Bounds"): each repetition is simulated work, so more is refused before the run.
MAX_REPEATS = 100_000_000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# recipe options that are names: their allowed values
_RECIPE_CHOICES: dict[str, tuple[str, ...]] = {
    "kvmclock_ctrl": ("before-resume", "at-pause"),
    "tsc_offsets": ("per-vcpu", "shared"),
}


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A declared parameter: ``default``, ``type`` (int, number, seconds, str, bool), the
    inclusive ``min``/``max`` (``exclusive_min``: ``> min``), ``choices`` and ``doc``."""

    name: str
    default: Any
    type: str
    min: int | float | None = None
    max: int | float | None = None
    exclusive_min: bool = False
    choices: tuple[str, ...] | None = None
    doc: str | None = None

    def check(self, v: Any) -> None:
        """ScenarioError (a ValueError) naming the parameter and what it may be."""
        key = self.name
        if self.type == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ScenarioError(f"{key}={v!r} must be an int")
            lo = self.min if self.min is not None else "-inf"
            hi = self.max if self.max is not None else "inf"
            if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
                raise ScenarioError(f"{key}={v} out of range ({lo}..{hi})")
        elif self.type in ("seconds", "number"):
            unit = " seconds" if self.type == "seconds" else ""
            what = "a number of seconds" if self.type == "seconds" else "a number"
            if isinstance(v, bool) or not isinstance(v, (int, float, str, Fraction)):
                raise ScenarioError(f"{key}={v!r} must be {what}")
            try:
                f = to_fraction(v)
            except ExprError:
                raise ScenarioError(f"{key}={v!r} is not {what}") from None
            low = self.min if self.min is not None else (0 if self.type == "seconds" else None)
            if low is not None:
                lo_f = to_fraction(low)
                if self.exclusive_min and f <= lo_f:
                    raise ScenarioError(f"{key}={v!r} must be > {low}{unit}")
                if f < lo_f:
                    raise ScenarioError(f"{key}={v!r} must be >= {low}{unit}")
            if self.max is not None and f > to_fraction(self.max):
                raise ScenarioError(f"{key}={v!r} must be <= {self.max}{unit}")
            if self.type == "seconds" and int(f * NSEC_PER_SEC) > KTIME_MAX_NS:
                raise ScenarioError(
                    f"{key}={v!r} is beyond the kernel's ktime_t range "
                    f"(at most {KTIME_MAX_NS} ns, about 292 years)"
                )
        elif self.type == "str":
            ok = isinstance(v, str)
            if self.choices is not None:
                ok = v in self.choices
                if not ok:
                    raise ScenarioError(
                        f"{key}={v!r} invalid; choose one of: {', '.join(self.choices)}"
                    )
            elif not ok:
                raise ScenarioError(f"{key}={v!r} must be a string")
        elif self.type == "bool" and not isinstance(v, bool):
            raise ScenarioError(f"{key}={v!r} must be true or false")


def _declare(label: str, name: str, decl: Any) -> Param:
    key = f"params.{name}"
    if not _IDENT.match(name):
        raise ScenarioFileError(
            label, key, "a parameter name is letters, digits and _ (not starting with a digit)"
        )
    if isinstance(decl, ParamSpec):
        d = decl.default
        typ = decl.type or _infer_type(d)
        param = Param(
            name,
            d,
            typ,
            decl.min,
            decl.max,
            decl.exclusive_min,
            tuple(decl.choices) if decl.choices is not None else None,
            decl.doc,
        )
        if decl.choices is not None and typ != "str":
            raise ScenarioFileError(label, key, "choices are only for type = \"str\"")
        if (decl.min is not None or decl.max is not None) and typ not in (
            "int",
            "number",
            "seconds",
        ):
            raise ScenarioFileError(label, key, "min/max are only for int, number and seconds")
    else:
        param = Param(name, decl, _infer_type(decl))
    if is_expr(param.default):
        raise ScenarioFileError(label, key, "a parameter's default is a value, not an expression")
    try:
        param.check(param.default)
    except ScenarioError as exc:
        raise ScenarioFileError(label, f"{key}.default", str(exc)) from None
    return param


def _infer_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "number"
    return "str"


def check_params(
    scenario: str, decls: Mapping[str, Param], given: Mapping[str, Any]
) -> dict[str, Any]:
    """The parameter values of one run (defaults, then ``given``) in declaration order;
    ScenarioError for an unknown name (listing the valid ones) or a value out of range."""
    unknown = sorted(set(given) - set(decls))
    if unknown:
        raise ScenarioError(
            f"scenario {scenario!r} has no parameter {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(decls)) or 'none'}"
        )
    p = {name: given.get(name, d.default) for name, d in decls.items()}
    for name, v in p.items():
        if v is None and decls[name].type == "str":
            # ``--param x=none`` arrives as None: a str parameter keeps the text "none"
            # (only ``run.fault`` reads "none" as no fault)
            p[name] = v = "none"
        decls[name].check(v)
    return p


# --------------------------------------------------------------------------------------------
# the loaded file
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScenarioFile:
    """A checked scenario file: ``label`` (its path, or ``builtin:NAME.toml``), the TOML
    ``text``, the validated ``model`` and the declared ``params``."""

    label: str
    text: str
    model: ScenarioModel
    params: dict[str, Param]

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def description(self) -> str:
        return self.model.description

    def defaults(self) -> dict[str, Any]:
        """Parameter name -> default value."""
        return {n: p.default for n, p in self.params.items()}


def load(path: str) -> ScenarioFile:
    """Read and check the scenario file at ``path`` (ScenarioFileError if it cannot be read
    or is not a valid scenario)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ScenarioFileError(str(path), None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ScenarioFileError(str(path), None, "not UTF-8 text (a TOML file is)") from None
    return loads(text, str(path))


def loads(text: str, label: str = "<scenario>") -> ScenarioFile:
    """Check TOML ``text`` as a scenario file named ``label`` in messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)", msg)
        line = int(m.group(1)) if m else None
        if m:
            msg = f"column {m.group(2)}: {msg[: m.start()] + msg[m.end() :]}"
        raise ScenarioFileError(label, None, f"TOML syntax error at {msg}", line=line) from None
    try:
        model = ScenarioModel.model_validate(data)
    except ValidationError as exc:
        key, message = _explain(exc)
        raise ScenarioFileError(label, key, message) from None
    params = {name: _declare(label, name, d) for name, d in model.params.items()}
    sf = ScenarioFile(label, text, model, params)
    resolve(sf, sf.defaults(), strict=True)
    if model.sweep is not None:
        sweep_values(sf)
    return sf


def sweep_values(sf: ScenarioFile) -> dict[str, list[Any]]:
    """The values of every parameter the file's ``[sweep]`` section varies (``grid`` and
    ``ranges``, in file order; empty without a section), each checked against its
    declaration in ``[params]``; ScenarioFileError naming ``sweep.grid.KEY[i]``,
    ``sweep.ranges.KEY`` or ``sweep.profiles[i]`` and what is allowed."""
    from kvmclock.profiles import PROFILES
    from kvmclock.sweep.plan import parse_range

    spec = sf.model.sweep
    if spec is None:
        return {}
    valid = ", ".join(sf.params) or "none"
    values: dict[str, list[Any]] = {}
    tables: tuple[tuple[str, Mapping[str, Any]], ...] = (("grid", spec.grid),
                                                         ("ranges", spec.ranges))
    for table, items in tables:
        for name, given in items.items():
            key = f"sweep.{table}.{name}"
            if name not in sf.params:
                raise ScenarioFileError(sf.label, key, f"no parameter {name!r} in [params]; "
                                        f"valid: {valid}")
            if name in values:
                raise ScenarioFileError(sf.label, key, "already in sweep.grid; a parameter is "
                                        "either in grid or in ranges")
            vs: list[Any]
            if isinstance(given, str):
                try:
                    _, vs = parse_range(f"{name}={given}")
                except ValueError as exc:
                    msg = str(exc).removeprefix(f"range {name}: ")
                    raise ScenarioFileError(sf.label, key, msg) from None
                where = [key] * len(vs)
            else:
                vs = list(given)
                where = [f"{key}[{i}]" for i in range(len(vs))]
            for at, v in zip(where, vs, strict=True):
                try:
                    sf.params[name].check(v)
                except ScenarioError as exc:
                    raise ScenarioFileError(sf.label, at, str(exc)) from None
            values[name] = list(vs)
    profiles = [spec.profiles] if isinstance(spec.profiles, str) else list(spec.profiles or [])
    if spec.profiles is not None and not profiles:
        raise ScenarioFileError(sf.label, "sweep.profiles", f"empty; choose from "
                                f"{', '.join(PROFILES)}")
    for i, name in enumerate(profiles):
        if name not in PROFILES:
            raise ScenarioFileError(sf.label, f"sweep.profiles[{i}]",
                                    f"{name!r} unknown; choose from {', '.join(PROFILES)}")
    return values


_BUILTIN_CACHE: dict[str, ScenarioFile] = {}


def builtin_names() -> list[str]:
    """The built-in scenarios shipped in ``kvmclock/scenario/builtin`` (their order in
    ``index.txt``)."""
    pkg = resources.files("kvmclock.scenario") / "builtin"
    return [
        ln.strip()
        for ln in (pkg / "index.txt").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]


def load_builtin(name: str) -> ScenarioFile:
    """The built-in scenario ``name`` (KeyError if there is none)."""
    if name not in _BUILTIN_CACHE:
        if name not in builtin_names():
            raise KeyError(name)
        res = resources.files("kvmclock.scenario") / "builtin" / f"{name}.toml"
        _BUILTIN_CACHE[name] = loads(res.read_text(encoding="utf-8"), f"builtin:{name}.toml")
    return _BUILTIN_CACHE[name]


# --------------------------------------------------------------------------------------------
# pydantic errors -> one line
# --------------------------------------------------------------------------------------------
_ACTION_BY_TAG: dict[str, type[BaseModel]] = {
    m.model_fields["action"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in ACTION_MODELS
}
_RECIPE_BY_TAG: dict[str, type[BaseModel]] = {
    "qemu": QemuRecipe,
    "firecracker": FirecrackerRecipe,
    "cloud-hypervisor": CloudHypervisorRecipe,
    "naive": NaiveRecipe,
}
_CHILD: dict[tuple[str, str], Any] = {
    ("ScenarioModel", "run"): RunSpec,
    ("ScenarioModel", "host"): HostSpec,
    ("ScenarioModel", "vm"): VmSpec,
    ("ScenarioModel", "timeline"): "action",
    ("ScenarioModel", "params"): "params",
    ("RunSpec", "switches"): "switches",
    ("ScenarioModel", "sweep"): SweepSpec,
    ("SweepSpec", "grid"): "switches",  # a table of names: the name joins the key path
    ("SweepSpec", "ranges"): "switches",
}
_KINDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_pattern_mismatch": "an expression string ('=...')",
    "string_type": "a string",
    "bool_type": "a boolean (true or false)",
    "list_type": "a list",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dict_type": "a table",
    "string_too_short": "a non-empty string",
}


def _walk(loc: tuple[Any, ...]) -> tuple[list[str], Any, Any]:
    """The key path of a pydantic error location, the model (or marker) it ends in, and the
    last ``(model, field name)`` entered (None at the top)."""
    parts: list[str] = []
    cur: Any = ScenarioModel
    field_of: Any = None
    for el in loc:
        if isinstance(el, int):
            if parts:
                parts[-1] += f"[{el}]"
            else:
                parts.append(f"[{el}]")
            continue
        if isinstance(cur, type) and issubclass(cur, BaseModel) and el in cur.model_fields:
            parts.append(el)
            field_of = (cur, el)
            nxt = _CHILD.get((cur.__name__, el))
            if nxt is None and el == "recipe":
                nxt = "recipe"
            cur = nxt
        elif cur == "action" and el in _ACTION_BY_TAG:
            cur = _ACTION_BY_TAG[el]
        elif cur == "recipe" and el in _RECIPE_BY_TAG:
            cur = _RECIPE_BY_TAG[el]
        elif cur == "params":
            parts.append(el)
            cur = "param"
        elif cur == "param" and el == "ParamSpec":
            cur = ParamSpec
        elif cur == "switches":
            parts.append(el)
            cur = None
        # else: a union member's label ('int', 'constrained-str', 'literal[...]', ...)
    return parts, cur, field_of


def _allowed(cur: Any) -> str:
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return ", ".join(cur.model_fields)
    return "none"


_RANGE_ERRORS = ("greater_than_equal", "greater_than", "less_than_equal", "less_than")


def _bounds(field_of: Any) -> tuple[bool, dict[str, Any]]:
    """``(integer, {"ge": .., "gt": .., "le": ..})``: the static bounds of a model field (from
    the ``Field(ge=..)`` metadata of its union members, lists looked into); ``integer`` when
    no float member has bounds."""
    found: dict[str, Any] = {}
    integer = True
    if field_of is None:
        return integer, found
    model, name = field_of

    def visit(tp: Any) -> None:
        nonlocal integer
        args = get_args(tp)
        if getattr(tp, "__metadata__", None) is not None:
            base = args[0]
            for meta in tp.__metadata__:
                for m in getattr(meta, "metadata", ()):
                    for k in ("ge", "gt", "le", "lt"):
                        if getattr(m, k, None) is not None:
                            found[k] = getattr(m, k)
                            if base is float:
                                integer = False
            return
        for a in args:
            visit(a)

    info = model.model_fields[name]
    visit(info.annotation)
    for m in info.metadata:  # bounds of a plain (not union) annotated field
        for k in ("ge", "gt", "le", "lt"):
            if getattr(m, k, None) is not None:
                found[k] = getattr(m, k)
    return integer, found


def _range_message(value: Any, field_of: Any) -> str:
    integer, b = _bounds(field_of)
    if integer and ("ge" in b or "le" in b):
        lo = b.get("ge", "-inf")
        hi = b.get("le", "inf")
        return f"{value!r} out of range ({lo}..{hi})"
    conds = [f"{op} {b[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
             if k in b]
    return f"{value!r} must be {' and '.join(conds)}"


def _explain(exc: ValidationError) -> tuple[str | None, str]:
    errors = exc.errors()
    walked: list[tuple[list[str], Any, Any, str | None, Any]] = []
    for e in errors:
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            parts, cur, field_of = _walk(loc[:-1])
            walked.append((parts, e, cur, str(loc[-1]), field_of))
        else:
            parts, cur, field_of = _walk(loc)
            walked.append((parts, e, cur, None, field_of))
    # An unknown key comes first (a misspelled key usually also makes a required one
    # missing: both are said); the table it is in is the one the user meant.
    for parts, _e, cur, extra, _f in walked:
        if extra is not None:
            missing = [
                p[-1] for p, e2, _c, x, _f2 in walked
                if x is None and e2["type"] == "missing" and p[:-1] == parts
            ]
            also = f"; missing here: {', '.join(missing)}" if missing else ""
            return (
                ".".join([*parts, extra]),
                f"unknown key; allowed here: {_allowed(cur)}{also}",
            )
    for parts, e, _cur, _x, _f in walked:
        if e["type"] == "missing":
            return ".".join(parts), "missing (a required key)"
    # the deepest location is the value the user meant (a recipe table's option rather
    # than the recipe names it is not)
    deepest = max(len(w[0]) for w in walked)
    first = next(w[0] for w in walked if len(w[0]) == deepest)
    group = [w for w in walked if w[0] == first]
    parts, e, cur, _x, field_of = group[0]
    key: str | None = ".".join(parts) or None
    ctx = e.get("ctx") or {}
    if e["type"] == "union_tag_invalid":
        return (
            f"{key}.action" if key else "action",
            f"{ctx.get('tag')!r} unknown; allowed: "
            + str(ctx.get("expected_tags", "")).replace("'", ""),
        )
    if e["type"] == "union_tag_not_found":
        allowed = ", ".join(_ACTION_BY_TAG)
        return f"{key}.action" if key else "action", f"missing; one of: {allowed}"
    if e["type"] == "too_short" and key == "host":
        return key, "at least one [[host]] table is needed"
    for w in group:
        if w[1]["type"] in _RANGE_ERRORS:
            return key, _range_message(w[1]["input"], w[4])
    kinds: list[str] = []
    for _p, err, _c, _x, _f in group:
        if err["type"] == "literal_error":
            k = "one of " + str((err.get("ctx") or {}).get("expected", ""))
        elif err["type"] == "string_type" and tuple(err["loc"])[-1] == "constrained-str":
            k = _KINDS["string_pattern_mismatch"]
        else:
            k = _KINDS.get(err["type"], err["msg"])
        if k not in kinds:
            kinds.append(k)
    if "a number" in kinds and "an integer" in kinds:
        kinds.remove("an integer")
    return key, f"{e['input']!r} is not allowed; expected {' or '.join(kinds)}"


# --------------------------------------------------------------------------------------------
# resolution: expressions -> values, cross checks -> a plan
# --------------------------------------------------------------------------------------------
@dataclass
class HostPlan:
    name: str
    cpus: int
    tsc_khz: int
    tsc_skew_cycles: int
    drift_ppm: Fraction
    tsc_scaling: str
    hpet: bool
    acpi_pm: bool
    uptime_ns: int = 0
    nohz: bool = False
    tsc_reliable: bool = False


@dataclass
class VmPlan:
    name: str
    host: str
    vcpus: int
    tsc_khz: int | None
    kvm: bool
    created_ns: int
    at_start: bool
    features: frozenset[str]
    clocksource: str | None
    level: int
    khz: int  # the guest TSC kHz in effect (requested, else the host machine's)
    nohz: bool = False


@dataclass
class Step:
    """One resolved timeline entry: ``t_ns``, its ``key`` (``timeline[i]``), ``action`` and
    the resolved ``args``."""

    t_ns: int
    key: str
    action: str
    args: dict[str, Any]
    note: str | None = None


@dataclass
class Plan:
    """A scenario with every value known: what the engine builds and runs."""

    name: str
    params: dict[str, Any]
    duration_ns: int
    hz: int
    sample_ms: int
    fault: str | None
    spin_limit: int
    profiles: list[str]
    switches: dict[str, Any]
    seed: int
    hosts: list[HostPlan]
    vms: list[VmPlan]
    start_ns: int
    steps: list[Step] = field(default_factory=list)
    shared_levels: bool = False
    label: str = ""  # the file (its path, or builtin:NAME.toml), for messages


def fmt_number(v: Any) -> str:
    """A parameter value or exact number as text (``5``, ``0.05``, ``1/3``)."""
    if isinstance(v, Fraction):
        if v.denominator == 1:
            return str(v.numerator)
        d = v.denominator
        while d % 2 == 0:
            d //= 2
        while d % 5 == 0:
            d //= 5
        if d == 1:
            return format(Decimal(v.numerator) / Decimal(v.denominator), "f")
        return str(v)
    return str(v)


def _fmt_s(ns: int) -> str:
    return fmt_number(Fraction(ns, NSEC_PER_SEC)) + " s"


class _Resolver:
    def __init__(self, sf: ScenarioFile, p: Mapping[str, Any], strict: bool) -> None:
        self.sf = sf
        self.p = p
        self.strict = strict

    def err(self, key: str | None, msg: str) -> ScenarioFileError:
        if not self.strict:
            msg += " (with the parameters of this run)"
        return ScenarioFileError(self.sf.label, key, msg)

    def val(self, raw: Any, key: str) -> Any:
        if is_expr(raw):
            try:
                return evaluate(raw, self.p)
            except ExprError as exc:
                raise self.err(key, str(exc)) from None
        return raw

    def show(self, raw: Any, v: Any) -> str:
        return f"{raw!r} = {fmt_number(v)}" if is_expr(raw) else fmt_number(v)

    def num(self, raw: Any, key: str) -> Fraction:
        v = self.val(raw, key)
        try:
            return to_fraction(v)
        except ExprError as exc:
            raise self.err(key, f"{raw!r}: {exc}") from None

    def int_(self, raw: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
        f = self.num(raw, key)
        if f.denominator != 1:
            raise self.err(key, f"{self.show(raw, f)} is not an integer")
        v = int(f)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise self.err(key, f"{self.show(raw, v)} out of range ({rng})")
        return v

    def ns(self, raw: Any, key: str, *, positive: bool = False) -> int:
        f = self.num(raw, key)
        ns = int(f * NSEC_PER_SEC)
        if positive and ns <= 0:
            raise self.err(key, f"{self.show(raw, f)} s must be > 0 seconds")
        if ns < 0:
            raise self.err(key, f"{self.show(raw, f)} s must be >= 0 seconds")
        if ns > KTIME_MAX_NS:
            raise self.err(key, f"{self.show(raw, f)} s is beyond the kernel's ktime_t range")
        return ns

    def str_(self, raw: Any, key: str) -> str:
        v = self.val(raw, key)
        if not isinstance(v, str):
            raise self.err(key, f"{self.show(raw, v)} is not a name")
        return v

    def bool_(self, raw: Any, key: str) -> bool:
        """A bool field: true/false, or an expression whose value is a bool parameter."""
        v = self.val(raw, key)
        if not isinstance(v, bool):
            shown = repr(v) if isinstance(v, str) else fmt_number(v)
            shown = f"{raw!r} = {shown}" if is_expr(raw) else shown
            raise self.err(key, f"{shown} is not a boolean; expected true or false")
        return v

    def choice(self, raw: Any, key: str, choices: Sequence[str]) -> str:
        """A name that must be one of ``choices`` (given as is or by an expression)."""
        v = self.str_(raw, key)
        if v not in choices:
            raise self.err(
                key, f"{self.show(raw, v)} is not allowed; choose one of {', '.join(choices)}"
            )
        return v

    def recipe(self, raw: Any, key: str) -> tuple[str, dict[str, Any]]:
        if isinstance(raw, str):
            return self.choice(raw, key, RECIPE_NAMES), {}
        opts: dict[str, Any] = {}
        for k, v in raw.model_dump(exclude={"name"}).items():
            if v is None:
                continue
            if k == "clock_realtime":
                v = self.bool_(v, f"{key}.{k}")
            elif k in _RECIPE_CHOICES:
                v = self.choice(v, f"{key}.{k}", _RECIPE_CHOICES[k])
            elif k in ("gap_ms", "vcpu_restore_us"):
                f = self.num(v, f"{key}.{k}")
                if f < 0:
                    raise self.err(f"{key}.{k}", f"{self.show(v, f)} must be >= 0")
                if k == "vcpu_restore_us" and f.denominator != 1:
                    raise self.err(f"{key}.{k}", f"{self.show(v, f)} is not an integer")
                v = int(f) if f.denominator == 1 else float(f)
            opts[k] = v
        return str(raw.name), opts


def _choice(r: _Resolver, raw: Any, key: str, choices: tuple[str, ...]) -> str:
    """A name that must be one of ``choices`` (given as is or by an expression)."""
    return r.choice(raw, key, choices)


def resolve(sf: ScenarioFile, p: Mapping[str, Any], *, strict: bool) -> Plan:
    """The plan of ``sf`` with parameter values ``p`` (already checked).  ``strict`` (the
    file with its defaults, at load) also refuses entries out of time order, before the start
    or past ``run.duration_s``; otherwise entries run in time order (stable), one before the
    start is skipped and one past the end is not reached."""
    from kvmclock.kvm.x86 import FAULTS
    from kvmclock.profiles import PROFILES, SWITCHES

    r = _Resolver(sf, p, strict)
    m = sf.model
    run = m.run
    duration_ns = r.ns(run.duration_s, "run.duration_s", positive=True)
    hz = r.int_(run.hz, "run.hz", MIN_HZ, 10_000)
    sample_ms = r.int_(run.sample_ms, "run.sample_ms", 1)
    spin_limit = r.int_(run.spin_limit, "run.spin_limit", 1)
    fault_v = r.val(run.fault, "run.fault") if run.fault is not None else None
    if fault_v not in (None, "none", *FAULTS):
        raise r.err("run.fault", f"{fault_v!r} invalid; choose one of: none, {', '.join(FAULTS)}")
    fault = None if fault_v in (None, "none") else str(fault_v)
    profiles = [run.profiles] if isinstance(run.profiles, str) else list(run.profiles)
    for i, name in enumerate(profiles):
        if name not in PROFILES:
            raise r.err(
                f"run.profiles[{i}]", f"{name!r} unknown; choose from {', '.join(PROFILES)}"
            )
    if not profiles:
        raise r.err("run.profiles", f"empty; choose from {', '.join(PROFILES)}")
    for sw, sw_value in run.switches.items():
        if sw not in SWITCHES:
            raise r.err(
                f"run.switches.{sw}", f"unknown switch; valid: {', '.join(SWITCHES)}"
            )
        try:
            SWITCHES[sw].check(sw_value)
        except ValueError as exc:
            raise r.err(f"run.switches.{sw}", str(exc)) from None

    names: dict[str, str] = {}

    def unique(name: str, key: str) -> None:
        if name in names:
            raise r.err(
                key, f"name {name!r} already used by {names[name]}; host and VM names are unique"
            )
        names[name] = key

    hosts: list[HostPlan] = []
    for i, h in enumerate(m.host):
        key = f"host[{i}]"
        name = r.str_(h.name, f"{key}.name")
        unique(name, f"{key}.name")
        khz = r.int_(h.tsc_khz, f"{key}.tsc_khz", 1, U32_MAX)
        if h.tsc_skew_us is not None and h.tsc_skew_cycles is not None:
            raise r.err(f"{key}.tsc_skew_cycles", "give tsc_skew_us or tsc_skew_cycles, not both")
        skew = 0
        if h.tsc_skew_cycles is not None:
            skew = r.int_(h.tsc_skew_cycles, f"{key}.tsc_skew_cycles", 0)
        elif h.tsc_skew_us is not None:
            us = r.num(h.tsc_skew_us, f"{key}.tsc_skew_us")
            if us < 0:
                raise r.err(f"{key}.tsc_skew_us", f"{r.show(h.tsc_skew_us, us)} must be >= 0")
            skew = int(khz * us // 1000)
        drift = r.num(h.drift_ppm, f"{key}.drift_ppm")
        if drift <= -1_000_000:
            raise r.err(f"{key}.drift_ppm", f"{r.show(h.drift_ppm, drift)} must be > -1000000")
        hosts.append(
            HostPlan(
                name,
                r.int_(h.cpus, f"{key}.cpus", 1, MAX_CPUS),
                khz,
                skew,
                drift,
                _choice(r, h.tsc_scaling, f"{key}.tsc_scaling", TSC_SCALING_KINDS),
                r.bool_(h.hpet, f"{key}.hpet"),
                r.bool_(h.acpi_pm, f"{key}.acpi_pm"),
                r.ns(h.uptime_s, f"{key}.uptime_s"),
                r.bool_(h.nohz, f"{key}.nohz"),
                r.bool_(h.tsc_reliable, f"{key}.tsc_reliable"),
            )
        )
    host_by = {h.name: h for h in hosts}

    vms: list[VmPlan] = []
    vm_by: dict[str, VmPlan] = {}
    boot = sum(1 for v in m.vm if v.created_at_s is None)
    start_ns = boot * NSEC_PER_MSEC
    k_boot = 0
    all_vm_names = [v.name for v in m.vm]
    for i, v in enumerate(m.vm):
        key = f"vm[{i}]"
        name = r.str_(v.name, f"{key}.name")
        unique(name, f"{key}.name")
        host = r.str_(v.host, f"{key}.host")
        if host in host_by:
            level, host_khz = 1, host_by[host].tsc_khz
            parent_ns = 0
        elif host in vm_by:
            pv = vm_by[host]
            if not pv.kvm:
                raise r.err(
                    f"{key}.host",
                    f"VM {host!r} does not run KVM; set kvm = true on it to nest VMs in it",
                )
            level, host_khz, parent_ns = pv.level + 1, pv.khz, pv.created_ns
        elif host in all_vm_names:
            raise r.err(f"{key}.host", f"VM {host!r} is defined later; define it before {name!r}")
        else:
            allowed = [h.name for h in hosts] + [x.name for x in vms if x.kvm]
            raise r.err(f"{key}.host", f"unknown host {host!r}; hosts: {', '.join(allowed)}")
        if v.created_at_s is None:
            k_boot += 1
            created = k_boot * NSEC_PER_MSEC
        else:
            created = r.ns(v.created_at_s, f"{key}.created_at_s")
            if created < start_ns:
                raise r.err(
                    f"{key}.created_at_s",
                    f"{_fmt_s(created)} is before the start at {_fmt_s(start_ns)} (the VMs "
                    "without created_at_s are created first, 1 ms apart)",
                )
            if strict and created > duration_ns:
                raise r.err(
                    f"{key}.created_at_s",
                    f"{_fmt_s(created)} is past run.duration_s = {_fmt_s(duration_ns)}",
                )
        if created < parent_ns:
            raise r.err(
                f"{key}.created_at_s",
                f"{_fmt_s(created)}: its host VM {host!r} is created only at {_fmt_s(parent_ns)}",
            )
        tsc_khz = None if v.tsc_khz is None else r.int_(v.tsc_khz, f"{key}.tsc_khz", 1, U32_MAX)
        feats = {
            f
            for f, field_name, on in (
                ("kvmclock", "kvmclock", v.kvmclock),
                ("kvmclock_stable_bit", "stable_bit", v.stable_bit),
                ("constant_tsc", "constant_tsc", v.constant_tsc),
                ("nonstop_tsc", "invariant_tsc", v.invariant_tsc),
                ("tsc_reliable", "tsc_reliable", v.tsc_reliable),
                ("tsc_adjust", "tsc_adjust", v.tsc_adjust),
                ("hpet", "hpet", v.hpet),
                ("acpi_pm", "acpi_pm", v.acpi_pm),
            )
            if r.bool_(on, f"{key}.{field_name}")
        }
        clocksource = (
            None
            if v.clocksource is None
            else r.choice(v.clocksource, f"{key}.clocksource", CLOCKSOURCES)
        )
        need = {"kvm-clock": "kvmclock", "hpet": "hpet", "acpi_pm": "acpi_pm"}.get(
            clocksource or ""
        )
        if need is not None and need not in feats:
            raise r.err(
                f"{key}.clocksource",
                f"{clocksource!r} needs {need} = true on this VM",
            )
        plan = VmPlan(
            name,
            host,
            r.int_(v.vcpus, f"{key}.vcpus", 1, MAX_CPUS),
            tsc_khz,
            r.bool_(v.kvm, f"{key}.kvm"),
            created,
            v.created_at_s is None,
            frozenset(feats),
            clocksource,
            level,
            tsc_khz if tsc_khz is not None else host_khz,
            r.bool_(v.nohz, f"{key}.nohz"),
        )
        vms.append(plan)
        vm_by[name] = plan
    levels = [v.level for v in vms]
    shared = len(levels) != len(set(levels))

    # -- timeline ------------------------------------------------------------------------
    timed: list[tuple[int, int, Any]] = []
    prev: tuple[int, str] | None = None
    for i, a in enumerate(m.timeline):
        key = f"timeline[{i}]"
        t = r.ns(a.at_s, f"{key}.at_s")
        if strict:
            if t < start_ns:
                raise r.err(
                    f"{key}.at_s",
                    f"{_fmt_s(t)} is before the start at {_fmt_s(start_ns)} (after the VMs "
                    "without created_at_s, created 1 ms apart)",
                )
            if prev is not None and t < prev[0]:
                raise r.err(
                    f"{key}.at_s",
                    f"{_fmt_s(t)} is before {prev[1]}.at_s = {_fmt_s(prev[0])}; "
                    "entries must be in time order",
                )
            if t > duration_ns:
                raise r.err(
                    f"{key}.at_s", f"{_fmt_s(t)} is past run.duration_s = {_fmt_s(duration_ns)}"
                )
        prev = (t, key)
        if not strict and not start_ns <= t <= duration_ns:
            continue  # before the start: skipped; past the end: not reached
        timed.append((t, i, a))
    timed.sort(key=lambda x: x[0])

    state = _State(r, host_by, vm_by)
    steps = [state.step(t, f"timeline[{i}]", a) for t, i, a in timed]
    _check_repeats(r, duration_ns, sample_ms, steps)
    _check_ticks(r, duration_ns, hz, hosts, vms)
    return Plan(
        m.name,
        dict(p),
        duration_ns,
        hz,
        sample_ms,
        fault,
        spin_limit,
        profiles,
        dict(run.switches),
        run.seed,
        hosts,
        vms,
        start_ns,
        steps,
        shared,
        sf.label,
    )


def _check_repeats(r: _Resolver, duration_ns: int, sample_ms: int, steps: list[Step]) -> None:
    """Refuse, before the run, a periodic action that would repeat more than
    :data:`MAX_REPEATS` times within ``run.duration_s``: the guest clock samples
    (``run.sample_ms``) and each ``rotate_vcpus`` entry (``every_ms``, from its ``at_s``).
    Each repetition is simulated work, so a tiny period over a long run would take hours
    or years; the message names the key, the count and the limit."""
    period = sample_ms * NSEC_PER_MSEC
    samples = duration_ns // period
    if samples > MAX_REPEATS:
        raise r.err(
            "run.sample_ms",
            f"{sample_ms} ms over run.duration_s = {_fmt_s(duration_ns)} is {samples} guest "
            f"clock samples, more than the {MAX_REPEATS} a run may take; sample less often "
            "or run shorter",
        )
    for st in steps:
        if st.action != "rotate_vcpus":
            continue
        turns = (duration_ns - st.t_ns) // st.args["period_ns"] + 1
        if turns > MAX_REPEATS:
            every = fmt_number(Fraction(st.args["period_ns"], NSEC_PER_MSEC))
            raise r.err(
                f"{st.key}.every_ms",
                f"every {every} ms from {_fmt_s(st.t_ns)} to run.duration_s = "
                f"{_fmt_s(duration_ns)} is {turns} rotations, more than the {MAX_REPEATS} "
                "a run may take; rotate less often or run shorter",
            )


def _check_ticks(
    r: _Resolver, duration_ns: int, hz: int, hosts: list[HostPlan], vms: list[VmPlan]
) -> None:
    """Refuse, before the run, more than :data:`MAX_REPEATS` periodic ticks in all: each
    kernel that keeps the periodic tick (``nohz = false``) runs ``hz`` ticks every simulated
    second whether its CPUs are busy or not.  The message names ``run.duration_s`` and
    points to ``nohz = true`` (NO_HZ idle: a tickless kernel costs its wake-ups only)."""
    periodic = [h.name for h in hosts if not h.nohz] + [
        v.name for v in vms if not v.nohz and v.created_ns < duration_ns
    ]
    ticks = len(periodic) * (duration_ns * hz // NSEC_PER_SEC)
    if ticks > MAX_REPEATS:
        names = ", ".join(periodic)
        raise r.err(
            "run.duration_s",
            f"{_fmt_s(duration_ns)} at hz {hz} is {ticks} periodic ticks of the kernels "
            f"{names}, more than the {MAX_REPEATS} a run may take; give them nohz = true "
            "(NO_HZ idle) or run shorter",
        )


class _State:
    """What exists at each point of the timeline (walked in time order)."""

    def __init__(
        self, r: _Resolver, hosts: dict[str, HostPlan], vms: dict[str, VmPlan]
    ) -> None:
        self.r = r
        self.hosts = hosts
        self.vms = vms
        self.vcpus = {n: v.vcpus for n, v in vms.items()}
        self.where = {n: v.host for n, v in vms.items()}
        #: paused VMs: the recipe of the pause and the entry that paused them
        self.paused: dict[str, tuple[tuple[str, dict[str, Any]], str]] = {}
        self.snapshots: dict[str, str] = {}
        self.snapshot_vcpus: dict[str, int] = {}
        #: VMs in the middle of a migration or a restore: until (ns, inclusive: the action's
        #: later steps run after any entry at the same time), the entry, what, from, to
        self.busy: dict[str, tuple[int, str, str, str, str]] = {}
        #: suspended hosts: until (ns, inclusive) and the entry
        self.suspended: dict[str, tuple[int, str]] = {}
        #: what last let a VM run again (for messages)
        self.since: dict[str, str] = {}

    # -- lifecycle state ---------------------------------------------------------------------
    @staticmethod
    def _by(key: str, t: int) -> str:
        return f"{key} at {_fmt_s(t)}"

    def _runs_since(self, vm: str) -> str:
        return f" (running again: {self.since[vm]})" if vm in self.since else ""

    @staticmethod
    def _restore_ns(recipe: tuple[str, dict[str, Any]], vcpus: int) -> int:
        """True ns a recipe's restore takes (its vCPUs restored one after another:
        ``vmm/recipes.py`` ``_in_turn``): naive ``gap_ms``, cloud-hypervisor
        ``vcpu_restore_us`` between two vCPUs; the others at once."""
        name, opts = recipe
        if name == "naive":
            gap_ms: float = opts.get("gap_ms", 0)
            gap = round(gap_ms * NSEC_PER_MSEC)
        elif name == "cloud-hypervisor":
            gap = int(opts.get("vcpu_restore_us", 0)) * 1000
        else:
            gap = 0
        return gap * (vcpus - 1)

    def _physical(self, name: str) -> str:
        """The physical host under a host or VM name (through nested VMs)."""
        while name not in self.hosts:
            name = self.where[name]
        return name

    def _asleep(self, name: str, t: int) -> tuple[str, int, str] | None:
        """``(host, until, entry)`` when the physical host under ``name`` sleeps at ``t``."""
        host = self._physical(name)
        s = self.suspended.get(host)
        if s is not None and t <= s[0]:
            return host, s[0], s[1]
        return None

    def _in_flight(self, vm: str, t: int) -> tuple[int, str, str, str, str] | None:
        b = self.busy.get(vm)
        return b if b is not None and t <= b[0] else None

    def can_act(self, vm: str, key: str, t: int) -> None:
        """``vm``'s VMM can act on it at ``t``: the VM is not in the middle of a migration or
        restore, its host does not sleep, and no VM it runs in is paused or moving."""
        r = self.r
        b = self._in_flight(vm, t)
        if b is not None:
            raise r.err(
                key,
                f"VM {vm!r} is {b[2]} (by {b[1]}) until {_fmt_s(b[0])}; act on it after that",
            )
        self.can_host(self.where[vm], key, t, vm=vm)

    def can_host(self, host: str, key: str, t: int, *, vm: str | None = None) -> None:
        """Nothing stops ``host`` (a physical host or a VM running KVM) at ``t``."""
        r = self.r
        who = f"the host {host!r} of VM {vm!r}" if vm is not None else f"host {host!r}"
        asleep = self._asleep(host, t)
        if asleep is not None:
            h, until, by = asleep
            under = "" if h == host else f" (on host {h!r})"
            raise r.err(
                key,
                f"{who}{under} is suspended (by {by}) until {_fmt_s(until)}: its VMMs and "
                "guests do not run; act after its resume",
            )
        name = host
        while name not in self.hosts:
            if name in self.paused:
                raise r.err(
                    key,
                    f"{who}: VM {name!r} is paused (by {self.paused[name][1]}); resume it first",
                )
            b = self._in_flight(name, t)
            if b is not None:
                raise r.err(
                    key, f"{who}: VM {name!r} is {b[2]} (by {b[1]}) until {_fmt_s(b[0])}"
                )
            name = self.where[name]

    def can_suspend(self, host: str, key: str, t: int, end: int) -> None:
        """``host`` can sleep from ``t`` to ``end``: not asleep already, no VM moving from or
        to it, no paused VM on it, no VM created on it meanwhile."""
        r = self.r
        s = self.suspended.get(host)
        if s is not None and t <= s[0]:
            raise r.err(
                key, f"host {host!r} is already suspended (by {s[1]}) until {_fmt_s(s[0])}"
            )
        for vm, b in self.busy.items():
            if t <= b[0] and host in (self._physical(b[3]), self._physical(b[4])):
                raise r.err(
                    key,
                    f"VM {vm!r} is {b[2]} (by {b[1]}) from or to host {host!r} until "
                    f"{_fmt_s(b[0])}; suspend the host after that",
                )
        for vm, (_recipe, by) in self.paused.items():
            if self._physical(self.where[vm]) == host:
                raise r.err(
                    key,
                    f"VM {vm!r} on host {host!r} is paused (by {by}); a host suspend with a "
                    "paused VM on it is not modelled: resume it first",
                )
        for vm, plan in self.vms.items():
            if t <= plan.created_ns <= end and self._physical(plan.host) == host:
                raise r.err(
                    key,
                    f"VM {vm!r} is created on host {host!r} at {_fmt_s(plan.created_ns)}, "
                    f"while it sleeps (until {_fmt_s(end)})",
                )

    def vm(self, raw: Any, key: str, t: int) -> str:
        r = self.r
        name = r.str_(raw, key)
        if name not in self.vms:
            raise r.err(key, f"unknown VM {name!r}; VMs: {', '.join(self.vms) or 'none'}")
        created = self.vms[name].created_ns
        if t < created:
            raise r.err(
                key,
                f"VM {name!r} does not exist yet at {_fmt_s(t)} (created_at_s = "
                f"{_fmt_s(created)})",
            )
        return name

    def host(self, raw: Any, key: str, *, physical: bool = True) -> str:
        r = self.r
        name = r.str_(raw, key)
        if name in self.hosts:
            return name
        if not physical and name in self.vms and self.vms[name].kvm:
            return name
        allowed = list(self.hosts) + ([n for n, v in self.vms.items() if v.kvm] if not physical
                                      else [])
        raise r.err(key, f"unknown host {name!r}; hosts: {', '.join(allowed)}")

    def host_cpus(self, host: str) -> int:
        return self.hosts[host].cpus if host in self.hosts else self.vcpus[host]

    def movable(self, vm: str, key: str) -> None:
        inside = [n for n, h in self.where.items() if h == vm]
        if inside:
            raise self.r.err(
                key,
                f"VM {vm!r} runs VMs of its own ({', '.join(inside)}); moving a nested "
                "hypervisor is not modelled",
            )

    def vcpu(self, raw: Any, key: str, vm: str) -> int:
        n = self.vcpus[vm]
        v = self.r.int_(raw, key)
        if not 0 <= v < n:
            raise self.r.err(key, f"vCPU {v} does not exist; VM {vm!r} has {count_ids(n, 'vCPU')}")
        return v

    def step(self, t: int, key: str, a: Any) -> Step:
        r = self.r
        kind = a.action
        args: dict[str, Any] = {}
        if kind == "tsc_write":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_host(self.where[vm], f"{key}.vm", t, vm=vm)
            if (a.value is None) == (a.relative_to is None):
                raise r.err(key, "give value or relative_to (with ahead_ms), exactly one")
            args["vcpu"] = "all" if a.vcpu == "all" else self.vcpu(a.vcpu, f"{key}.vcpu", vm)
            if a.value is not None:
                if args["vcpu"] == "all":
                    raise r.err(f"{key}.vcpu", "'all' writes relative_to's TSC: give relative_to")
                args["value"] = r.int_(a.value, f"{key}.value", 0, U64_MAX)
                if a.ahead_ms != 0:
                    raise r.err(f"{key}.ahead_ms", "only with relative_to")
            else:
                args["relative_to"] = self.vcpu(a.relative_to, f"{key}.relative_to", vm)
                ms = r.num(a.ahead_ms, f"{key}.ahead_ms")
                cycles = self.vms[vm].khz * ms
                if cycles.denominator != 1:
                    raise r.err(
                        f"{key}.ahead_ms",
                        f"{r.show(a.ahead_ms, ms)} ms is not a whole number of cycles at "
                        f"{self.vms[vm].khz} kHz",
                    )
                args["ahead_cycles"] = int(cycles)
            args["host_initiated"] = r.bool_(a.host_initiated, f"{key}.host_initiated")
        elif kind == "vcpu_hotplug":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_act(vm, f"{key}.vm", t)
            if self.vcpus[vm] >= MAX_CPUS:
                raise r.err(f"{key}.vm", f"VM {vm!r} already has {MAX_CPUS} vCPUs (the most)")
            self.vcpus[vm] += 1
        elif kind == "vcpu_migrate":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_host(self.where[vm], f"{key}.vm", t, vm=vm)
            args["vcpu"] = self.vcpu(a.vcpu, f"{key}.vcpu", vm)
            where, n_cpus = self.where[vm], self.host_cpus(self.where[vm])
            args["host_cpu"] = r.int_(a.host_cpu, f"{key}.host_cpu")
            if not 0 <= args["host_cpu"] < n_cpus:
                raise r.err(f"{key}.host_cpu", f"CPU {args['host_cpu']} does not exist; "
                            f"{where!r} has {count_ids(n_cpus, 'CPU')}")
        elif kind == "rotate_vcpus":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_host(self.where[vm], f"{key}.vm", t, vm=vm)
            ms = r.num(a.every_ms, f"{key}.every_ms")
            period = int(ms * NSEC_PER_MSEC)
            if period <= 0:
                raise r.err(f"{key}.every_ms", f"{r.show(a.every_ms, ms)} must be > 0 ms")
            args["period_ns"] = period
        elif kind == "tsc_jump":
            host = args["host"] = self.host(a.host, f"{key}.host")
            n = self.hosts[host].cpus
            if a.cpus == "all":
                args["cpus"] = "all"
            else:
                cpus = [r.int_(c, f"{key}.cpus[{j}]") for j, c in enumerate(a.cpus)]
                for j, c in enumerate(cpus):
                    if not 0 <= c < n:
                        raise r.err(f"{key}.cpus[{j}]", f"CPU {c} does not exist; host "
                                    f"{host!r} has {count_ids(n, 'CPU')}")
                if not cpus or len(set(cpus)) != len(cpus):
                    raise r.err(f"{key}.cpus", "a non-empty list of distinct host CPUs, or 'all'")
                args["cpus"] = cpus
            if (a.cycles is None) == (a.ms is None):
                raise r.err(key, "give cycles or ms, exactly one")
            if a.cycles is not None:
                args["cycles"] = r.int_(a.cycles, f"{key}.cycles")
                args["ms"] = None
            else:
                ms = r.num(a.ms, f"{key}.ms")
                cycles = self.hosts[host].tsc_khz * ms
                if cycles.denominator != 1:
                    raise r.err(f"{key}.ms", f"{r.show(a.ms, ms)} ms is not whole cycles")
                args["cycles"] = int(cycles)
                args["ms"] = ms
        elif kind == "set_clock":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_host(self.where[vm], f"{key}.vm", t, vm=vm)
            args["realtime"] = "realtime" in a.flags
            step = r.num(a.step_s, f"{key}.step_s")
            args["step_ns"] = int(step * NSEC_PER_SEC)
            if a.realtime_lag_s is not None:
                if not args["realtime"]:
                    raise r.err(f"{key}.realtime_lag_s", "only with flags = [\"realtime\"]")
                args["lag_ns"] = r.ns(a.realtime_lag_s, f"{key}.realtime_lag_s")
                args["lag_text"] = fmt_number(r.val(a.realtime_lag_s, f"{key}.realtime_lag_s"))
            else:
                args["lag_ns"] = 0
                args["lag_text"] = "0"
        elif kind == "get_clock":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_host(self.where[vm], f"{key}.vm", t, vm=vm)
        elif kind == "tick_in_read_section":
            host = args["host"] = self.host(a.host, f"{key}.host")
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_host(self.where[vm], f"{key}.vm", t, vm=vm)
            if self.where[vm] != host:
                raise r.err(f"{key}.vm", f"VM {vm!r} runs on {self.where[vm]!r}, not {host!r}")
            if self.hosts[host].nohz:
                raise r.err(
                    f"{key}.host",
                    f"host {host!r} has nohz = true: the tick inside the read section is the "
                    "periodic tick of a busy CPU; under NO_HZ idle the vCPU entry that starts "
                    "the read section wakes the host and updates its timekeeper first, so no "
                    "update falls inside it (give the host the periodic tick)",
                )
        elif kind == "moment":
            if a.vm is not None and a.host is not None:
                raise r.err(key, "give vm or host (the moment's level), not both")
            args["text"] = a.text
            args["vm"] = self.vm(a.vm, f"{key}.vm", t) if a.vm is not None else None
            args["host"] = self.host(a.host, f"{key}.host", physical=False) if a.host else None
        elif kind == "pause":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_act(vm, f"{key}.vm", t)
            if vm in self.paused:
                raise r.err(f"{key}.vm", f"VM {vm!r} is already paused (by {self.paused[vm][1]})")
            args["recipe"] = r.recipe(a.recipe, f"{key}.recipe")
            self.paused[vm] = (args["recipe"], self._by(key, t))
        elif kind == "resume":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_act(vm, f"{key}.vm", t)
            if vm not in self.paused:
                raise r.err(
                    f"{key}.vm",
                    f"VM {vm!r} is not paused{self._runs_since(vm)}; pause it first",
                )
            paused, _by = self.paused.pop(vm)
            args["recipe"] = paused if a.recipe is None else r.recipe(a.recipe, f"{key}.recipe")
            self.since[vm] = f"resumed by {self._by(key, t)}"
        elif kind == "snapshot":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_act(vm, f"{key}.vm", t)
            name = args["name"] = r.str_(a.name, f"{key}.name")
            if name in self.snapshots:
                raise r.err(f"{key}.name", f"snapshot {name!r} already taken; names are unique")
            self.snapshots[name] = vm
            self.snapshot_vcpus[name] = self.vcpus[vm]
            args["recipe"] = r.recipe(a.recipe, f"{key}.recipe")
            # a running VM is paused the recipe's way first; it stays paused
            self.paused.setdefault(vm, (args["recipe"], self._by(key, t)))
        elif kind == "restore":
            name = args["snapshot"] = r.str_(a.snapshot, f"{key}.snapshot")
            if name not in self.snapshots:
                raise r.err(
                    f"{key}.snapshot",
                    f"no snapshot {name!r} taken before; taken: "
                    f"{', '.join(self.snapshots) or 'none'}",
                )
            vm = args["vm"] = self.snapshots[name]
            self.can_act(vm, f"{key}.snapshot", t)
            self.movable(vm, f"{key}.snapshot")
            if vm not in self.paused:
                raise r.err(
                    f"{key}.snapshot",
                    f"snapshot {name!r} is of VM {vm!r}, which is not paused"
                    f"{self._runs_since(vm)}; a snapshot is restored into its VM while that "
                    "is paused (a guest runs in one place): pause or snapshot it first",
                )
            if self.snapshot_vcpus[name] != self.vcpus[vm]:
                raise r.err(
                    f"{key}.snapshot",
                    f"snapshot {name!r} has {self.snapshot_vcpus[name]} vCPUs, VM {vm!r} "
                    f"now has {self.vcpus[vm]} (a vCPU was hotplugged since)",
                )
            src = self.where[vm]
            host = args["host"] = self.host(a.host, f"{key}.host", physical=False)
            self.can_host(host, f"{key}.host", t)
            args["recipe"] = r.recipe(a.recipe, f"{key}.recipe")
            took = self._restore_ns(args["recipe"], self.vcpus[vm])
            if took:
                self.busy[vm] = (t + took, self._by(key, t), "being restored", src, host)
            self.where[vm] = host
            self.paused.pop(vm, None)
            self.since[vm] = f"restored by {self._by(key, t)}"
        elif kind == "migrate":
            vm = args["vm"] = self.vm(a.vm, f"{key}.vm", t)
            self.can_act(vm, f"{key}.vm", t)
            self.movable(vm, f"{key}.vm")
            if vm in self.paused:
                raise r.err(
                    f"{key}.vm",
                    f"VM {vm!r} is paused (by {self.paused[vm][1]}): a live migration moves a "
                    "running VM; resume it first (or restore a snapshot on the other host)",
                )
            src = self.where[vm]
            host = args["host"] = self.host(a.to_host, f"{key}.to_host", physical=False)
            self.can_host(host, f"{key}.to_host", t)
            args["recipe"] = r.recipe(a.recipe, f"{key}.recipe")
            ms = r.num(a.downtime_ms, f"{key}.downtime_ms")
            if ms < 0:
                raise r.err(f"{key}.downtime_ms", f"{r.show(a.downtime_ms, ms)} must be >= 0")
            args["downtime_ns"] = int(ms * NSEC_PER_MSEC)
            args["precopy_ns"] = r.ns(a.precopy_s, f"{key}.precopy_s")
            end = (
                t
                + args["precopy_ns"]
                + args["downtime_ns"]
                + self._restore_ns(args["recipe"], self.vcpus[vm])
            )
            self.busy[vm] = (end, self._by(key, t), "being migrated", src, host)
            self.where[vm] = host
            self.since[vm] = f"migrated by {self._by(key, t)}"
        elif kind == "host_suspend":
            host = args["host"] = self.host(a.host, f"{key}.host")
            args["duration_ns"] = r.ns(a.duration_s, f"{key}.duration_s", positive=True)
            args["tsc_cycles"] = (
                None
                if a.tsc_after_resume_cycles is None
                else r.int_(a.tsc_after_resume_cycles, f"{key}.tsc_after_resume_cycles", 0,
                            U64_MAX)
            )
            end = t + args["duration_ns"]
            self.can_suspend(host, f"{key}.host", t, end)
            self.suspended[host] = (end, self._by(key, t))
        else:  # pragma: no cover - the model admits no other action
            raise r.err(f"{key}.action", f"{kind!r} unknown")
        note = None
        if a.note is not None:
            note = re.sub(
                r"\{([A-Za-z_][A-Za-z0-9_]*)\}",
                lambda mt: str(r.p[mt.group(1)]) if mt.group(1) in r.p else mt.group(0),
                a.note,
            )
        return Step(t, key, kind, args, note)

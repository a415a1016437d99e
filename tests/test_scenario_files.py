"""Scenario files (docs/scenarios.md): loading, every kind of error with its message, exact
expressions, --param overrides, a multi-host run, the lifecycle dispatch, the shipped JSON
Schema, the docs' examples, the built-in scenarios pinned to their results before they became
files, and the CLI commands."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from kvmclock import cli
from kvmclock.errors import ScenarioError, ScenarioFileError
from kvmclock.scenario import builtin_names, load, load_builtin, loads, schema_text
from kvmclock.scenario.expr import ExprError, evaluate
from kvmclock.sim import SCENARIOS, Sim, run_scenario
from test_cli import assert_usage_error, run

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "builtin-golden.json"
DOC = ROOT / "docs" / "scenarios.md"
SCHEMA = ROOT / "python" / "kvmclock" / "scenario" / "scenario.schema.json"
NS = 1_000_000_000
MS = 1_000_000
KHZ = 2_593_992

BASE = """
name = "t"
description = "a test"

[params]
duration_s = { default = 2, type = "seconds", exclusive_min = true }
vcpus = { default = 2, min = 1, max = 64 }
jump_ms = { default = 100, min = 0 }

[run]
duration_s = "=duration_s"
profiles = "upstream"

[[host]]
name = "h"
cpus = 2
tsc_khz = 2593992

[[vm]]
name = "v"
host = "h"
vcpus = "=vcpus"
"""


def _file(tmp_path: Path, text: str, name: str = "s.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _error(text: str, label: str = "x.toml") -> ScenarioFileError:
    with pytest.raises(ScenarioFileError) as info:
        loads(text, label)
    assert isinstance(info.value, ScenarioError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{label}: ")
    assert "\n" not in str(info.value)
    return info.value


# --------------------------------------------------------------------------- the built-ins
def _golden_cases() -> list[tuple[str, str, int]]:
    """The five scenarios that were Python setups (the shipped lifecycle cases came as files)."""
    names = ("nested", "tsc-sync", "unstable-tsc", "set-clock", "patch09-hang")
    return [(n, p, s) for n in names for p in ("gtod", "series", "upstream") for s in (0, 7)]


#: parameters a golden scenario gained after its hash was made, with their defaults
PARAMS_ADDED_SINCE: dict[str, dict[str, Any]] = {
    "nested": {"nohz": False, "invariant_tsc": False}
}


def _old_arrays(run: dict[str, Any]) -> dict[str, Any]:
    """The run in the layout the golden hashes were made from (before schema_version 1 named
    every field): ``moments`` rows ``[t_ns, level, text]``, ``samples`` rows ``[t_ns, level,
    skew_ns, stable]`` (the kernel's name as a fifth element only when several guests share
    a level), timelines ``[t_ns, on]``, ``backwards_events`` ``[t_ns, cpu, step_ns, stable]``,
    ``trace`` rows ``[t_ns, level, comm, pid, cpu, event, fields]``, and no
    ``stopped_early``/``stop_reason`` (derived from ``end_ns`` and ``livelock``).  Values are
    taken as they are: equal hashes mean equal values."""
    old = dict(run)
    assert old.pop("stopped_early") is (run["end_ns"] < run["duration_ns"])
    reason = old.pop("stop_reason")
    assert (reason is None) is (run["livelock"] is None)
    guest_levels = [lv["level"] for lv in run["levels"] if lv["level"] > 0]
    shared = len(guest_levels) != len(set(guest_levels))

    def tl(entries: list[dict[str, Any]]) -> list[list[Any]]:
        return [[e["t_ns"], e["on"]] for e in entries]

    old["moments"] = [[m["t_ns"], m["level"], m["text"]] for m in run["moments"]]
    old["samples"] = [
        [s["t_ns"], s["level"], s["skew_ns"], s["stable"]] + ([s["kernel"]] if shared else [])
        for s in run["samples"]
    ]
    levels = []
    for lv in run["levels"]:
        lv = dict(lv)
        lv["masterclock_timeline"] = tl(lv["masterclock_timeline"])
        lv["pvclock_stable_timeline"] = tl(lv["pvclock_stable_timeline"])
        if "masterclock_timelines" in lv:
            lv["masterclock_timelines"] = {
                k: tl(v) for k, v in lv["masterclock_timelines"].items()
            }
        lv["backwards_events"] = [
            [e["t_ns"], e["cpu"], e["step_ns"], e["stable"]] for e in lv["backwards_events"]
        ]
        levels.append(lv)
    old["levels"] = levels
    if "trace" in run:
        old["trace"] = [
            [r["t_ns"], r["level"], r["comm"], r["pid"], r["cpu"], r["event"], r["fields"]]
            for r in run["trace"]
        ]
    return old


@pytest.mark.parametrize(("name", "profile", "seed"), _golden_cases())
def test_builtin_scenarios_give_the_results_of_the_python_setups(
    name: str, profile: str, seed: int
) -> None:
    """Byte-identical runs: the hashes were made by the Python setup functions the files
    replaced, in the old array layout (:func:`_old_arrays` converts back).  The new
    ``lifecycle`` key (empty here: no lifecycle action) is left out of the hash, and so are
    switches added since (a new switch adds its entry to ``switches`` but must not change
    these runs), nor parameters added since with their default values (``nohz``: the
    built-ins keep the periodic tick)."""
    golden = json.loads(GOLDEN.read_text())
    run_ = _old_arrays(run_scenario(name, profile, seed, trace=True))
    assert run_.pop("lifecycle") == []
    run_["switches"] = {k: v for k, v in run_["switches"].items() if k in golden["switches"]}
    for key, default in PARAMS_ADDED_SINCE.get(name, {}).items():
        assert run_["params"].pop(key) == default
    digest = hashlib.sha256(json.dumps(run_, sort_keys=True).encode()).hexdigest()
    assert digest == golden["hashes"][f"{name}/{profile}/{seed}"]


def test_builtins_are_shipped_files() -> None:
    assert builtin_names() == [
        "nested",
        "tsc-sync",
        "unstable-tsc",
        "set-clock",
        "patch09-hang",
        "restore-shelf",
        "migrate-tolerance",
        "ch-restore",
        "naive-restore",
        "host-suspend",
    ]
    assert list(SCENARIOS) == builtin_names()
    for name in builtin_names():
        sf = load_builtin(name)
        assert sf.name == name and SCENARIOS[name].file is sf
        assert sf.label == f"builtin:{name}.toml"
        # the shipped text is a valid file on its own
        assert loads(sf.text).model == sf.model


def test_schema_shipped_equals_generated() -> None:
    assert SCHEMA.read_text() == schema_text()
    schema = json.loads(schema_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "name", "description", "params", "run", "host", "vm", "timeline", "sweep",
    }
    tags = set(schema["properties"]["timeline"]["items"]["discriminator"]["mapping"])
    assert tags == {
        "tsc_write", "vcpu_hotplug", "vcpu_migrate", "rotate_vcpus", "tsc_jump", "set_clock",
        "get_clock", "tick_in_read_section", "moment", "pause", "resume", "snapshot",
        "restore", "migrate", "host_suspend",
    }


# --------------------------------------------------------------------------- expressions
@pytest.mark.parametrize(
    ("text", "env", "want"),
    [
        ("=unstable_at_s - 0.05", {"unstable_at_s": 5}, Fraction(99, 20)),
        ("=tsc_khz * jump_ms", {"tsc_khz": KHZ, "jump_ms": 100}, Fraction(259_399_200)),
        ("=1 / 3", {}, Fraction(1, 3)),
        ("=0.1 + 0.2", {}, Fraction(3, 10)),  # exact, not 0.30000000000000004
        ("=7 // 2", {}, Fraction(3)),
        ("=-7 // 2", {}, Fraction(-4)),  # floor, as Python
        ("=-(1 + 2) * 3", {}, Fraction(-9)),
        ("=+a", {"a": 2.5}, Fraction(5, 2)),
        ("=a / b", {"a": "1.5", "b": 3}, Fraction(1, 2)),  # a seconds string parameter
        ("= a", {"a": "patch09-missing-do"}, "patch09-missing-do"),  # a name alone: as is
        ("=(a)", {"a": None}, None),
    ],
)
def test_expressions_are_exact(text: str, env: dict[str, Any], want: Any) -> None:
    assert evaluate(text, env) == want


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("=a ** 2", "'a ** 2' is not allowed"),
        ("=a % 2", "is not allowed"),
        ("=f(1)", "is not allowed"),
        ("=a.b", "is not allowed"),
        ("=a < 1", "is not allowed"),
        ("=True", "is not allowed"),
        ("='x'", "is not allowed"),
        ("=1 / (a - 1)", "divides by zero"),
        ("=b + 1", "unknown parameter 'b'; parameters: a"),
        ("=", "empty expression"),
        ("=1 +", "is not an expression"),
        ("=s + 1", "parameter s='x' is not a number"),
    ],
)
def test_bad_expressions(text: str, needle: str) -> None:
    with pytest.raises(ExprError, match=re.escape(needle)):
        evaluate(text, {"a": 1, "s": "x"})


def test_expression_values_in_a_file() -> None:
    sf = loads(BASE + """
[[timeline]]
at_s = "=1 / 3"
action = "tsc_jump"
host = "h"
ms = "=jump_ms / 100"
""")
    from kvmclock.scenario import resolve

    (step,) = resolve(sf, sf.defaults(), strict=True).steps
    assert step.t_ns == 333_333_333  # 1/3 s in ns, truncated
    assert step.args["cycles"] == 2_593_992  # 100 / 100 = 1 ms of 2,593,992 kHz


def test_expression_must_be_whole_where_an_integer_is_needed() -> None:
    ok = loads(BASE + """
[[timeline]]
at_s = 1
action = "tsc_jump"
host = "h"
ms = "=jump_ms / 10"
""")
    from kvmclock.scenario import resolve

    (step,) = resolve(ok, ok.defaults(), strict=True).steps
    assert step.args["cycles"] == 2_593_992 * 10  # 10 ms
    e = _error(BASE + """
[[timeline]]
at_s = 1
action = "tsc_jump"
host = "h"
ms = "=1 / 7"
""")
    assert e.key == "timeline[0].ms" and "'=1 / 7' = 1/7 ms is not whole cycles" in str(e)
    e = _error(BASE.replace('vcpus = "=vcpus"', 'vcpus = "=vcpus / 4"'))
    assert e.key == "vm[0].vcpus" and "'=vcpus / 4' = 0.5 is not an integer" in str(e)


# --------------------------------------------------------------------------- errors
_TL = "\n[[timeline]]\n"


@pytest.mark.parametrize(
    ("text", "key", "needles"),
    [
        ("bogus = 1\n" + BASE, "bogus",
         ["unknown key; allowed here: name, description, params, run, host, vm, timeline"]),
        (BASE + _TL + 'at_s = 1\naction = "get_clock"\nvm = "v"\nvcpu = 0\n', "timeline[0].vcpu",
         ["unknown key; allowed here: at_s, note, action, vm"]),
        (BASE.replace("cpus = 2\n", "cpus = 2.5\n"), "host[0].cpus",
         ["2.5 is not allowed; expected an integer or an expression string ('=...')"]),
        (BASE.replace('tsc_khz = 2593992', 'tsc_khz = "fast"'), "host[0].tsc_khz",
         ["'fast' is not allowed"]),
        (BASE.replace('profiles = "upstream"', 'profiles = "linux"'), "run.profiles[0]",
         ["'linux' unknown; choose from gtod, series, upstream"]),
        (BASE + _TL + 'at_s = 1\naction = "jump"\n', "timeline[0].action",
         ["'jump' unknown; allowed: tsc_write, vcpu_hotplug", "host_suspend"]),
        (BASE + _TL + "at_s = 1\n", "timeline[0].action", ["missing; one of: tsc_write"]),
        (BASE.replace('name = "v"\n', ""), "vm[0].name", ["missing"]),
        (BASE + _TL + 'at_s = 1\naction = "get_clock"\nvm = "v"\n' + _TL
         + 'at_s = 0.5\naction = "get_clock"\nvm = "v"\n', "timeline[1].at_s",
         ["0.5 s is before timeline[0].at_s = 1 s; entries must be in time order"]),
        (BASE + _TL + 'at_s = 2.5\naction = "get_clock"\nvm = "v"\n', "timeline[0].at_s",
         ["2.5 s is past run.duration_s = 2 s"]),
        (BASE + _TL + 'at_s = 0\naction = "get_clock"\nvm = "v"\n', "timeline[0].at_s",
         ["0 s is before the start at 0.001 s"]),
        (BASE.replace('host = "h"', 'host = "nohost"'), "vm[0].host",
         ["unknown host 'nohost'; hosts: h"]),
        (BASE + '\n[[vm]]\nname = "w"\nhost = "v"\nvcpus = 1\n', "vm[1].host",
         ["VM 'v' does not run KVM; set kvm = true on it"]),
        (BASE + '\n[[vm]]\nname = "late"\nhost = "h"\nvcpus = 1\ncreated_at_s = 1\n' + _TL
         + 'at_s = 0.5\naction = "get_clock"\nvm = "late"\n', "timeline[0].vm",
         ["VM 'late' does not exist yet at 0.5 s (created_at_s = 1 s)"]),
        (BASE + _TL + 'at_s = 1\naction = "get_clock"\nvm = "nope"\n', "timeline[0].vm",
         ["unknown VM 'nope'; VMs: v"]),
        (BASE + _TL + 'at_s = 1\naction = "restore"\nsnapshot = "s1"\nhost = "h"\n',
         "timeline[0].snapshot", ["no snapshot 's1' taken before; taken: none"]),
        (BASE + '\n[[host]]\nname = "v"\ncpus = 1\ntsc_khz = 1000\n', "vm[0].name",
         ["name 'v' already used by host[1].name"]),
        (BASE + _TL + 'at_s = 1\naction = "snapshot"\nvm = "v"\nname = "a"\n' + _TL
         + 'at_s = 1.5\naction = "snapshot"\nvm = "v"\nname = "a"\n', "timeline[1].name",
         ["snapshot 'a' already taken"]),
        (BASE + _TL + 'at_s = 1\naction = "tsc_write"\nvm = "v"\nvcpu = 2\nvalue = 0\n',
         "timeline[0].vcpu", ["vCPU 2 does not exist; VM 'v' has 2 vCPUs: 0..1"]),
        (BASE + _TL + 'at_s = 1\naction = "vcpu_hotplug"\nvm = "v"\n' + _TL
         + 'at_s = 1.5\naction = "tsc_write"\nvm = "v"\nvcpu = 3\nvalue = 0\n',
         "timeline[1].vcpu", ["vCPU 3 does not exist; VM 'v' has 3 vCPUs: 0..2"]),
        (BASE + _TL + 'at_s = 1\naction = "tsc_write"\nvm = "v"\nvcpu = 1\n', "timeline[0]",
         ["give value or relative_to"]),
        (BASE + _TL + 'at_s = 1\naction = "vcpu_migrate"\nvm = "v"\nvcpu = 0\nhost_cpu = 2\n',
         "timeline[0].host_cpu", ["CPU 2 does not exist; 'h' has 2 CPUs: 0..1"]),
        (BASE + _TL + 'at_s = 1\naction = "tsc_jump"\nhost = "h"\ncpus = [0, 2]\ncycles = 1\n',
         "timeline[0].cpus[1]", ["CPU 2 does not exist; host 'h' has 2 CPUs: 0..1"]),
        (BASE + _TL + 'at_s = 1\naction = "resume"\nvm = "v"\n', "timeline[0].vm",
         ["VM 'v' is not paused"]),
        (BASE + _TL + 'at_s = 1\naction = "pause"\nvm = "v"\nrecipe = "xen"\n',
         "timeline[0].recipe", ["'xen' is not allowed; expected one of 'qemu'"]),
        (BASE + _TL + 'at_s = 1\naction = "pause"\nvm = "v"\n'
         'recipe = { name = "naive", gap = 1 }\n', "timeline[0].recipe.gap",
         ["unknown key; allowed here: name, gap_ms"]),
        (BASE.replace('duration_s = "=duration_s"', 'duration_s = "=duration_s ** 2"'),
         "run.duration_s", ["is not allowed; use only numbers, parameter names"]),
        (BASE.replace('duration_s = "=duration_s"', 'duration_s = "=duration_z"'),
         "run.duration_s", ["unknown parameter 'duration_z'; parameters: duration_s, vcpus"]),
        (BASE.replace("vcpus = { default = 2, min = 1, max = 64 }",
                      "vcpus = { default = 99, min = 1, max = 64 }"), "params.vcpus.default",
         ["vcpus=99 out of range (1..64)"]),
        (BASE.replace("vcpus = { default = 2, min = 1, max = 64 }",
                      "vcpus = { default = 2, mini = 1 }"), "params.vcpus.mini",
         ["unknown key; allowed here: default, type, min, max"]),
        (BASE.replace('profiles = "upstream"', 'switches = { nope = true }'),
         "run.switches.nope", ["unknown switch; valid:"]),
        (BASE.replace('vcpus = "=vcpus"', 'vcpus = "=vcpus"\nkvm = true')
         + '\n[[vm]]\nname = "w"\nhost = "v"\nvcpus = 1\n' + _TL
         + 'at_s = 1\naction = "migrate"\nvm = "v"\nto_host = "h"\ndowntime_ms = 1\n',
         "timeline[0].vm", ["VM 'v' runs VMs of its own (w); moving a nested hypervisor"]),
        (BASE + '\n[[vm]]\nname = "w"\nhost = "h"\nvcpus = 1\nclocksource = "hpet"\n',
         "vm[1].clocksource", ["'hpet' needs hpet = true on this VM"]),
    ],
)
def test_every_error_names_file_key_and_what_is_allowed(
    text: str, key: str, needles: list[str]
) -> None:
    e = _error(text)
    assert e.file == "x.toml" and e.key == key, str(e)
    for n in needles:
        assert n in str(e), (n, str(e))


def test_toml_syntax_error_names_the_line() -> None:
    e = _error('name = "x"\n\n[run\nduration_s = 1\n')
    assert e.line == 3 and e.key is None
    assert str(e).startswith("x.toml: line 3: TOML syntax error at column 5: ")


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ScenarioFileError, match="cannot read: No such file"):
        load(str(tmp_path / "none.toml"))
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioFileError, match="not UTF-8"):
        load(str(bad))


def test_recipe_the_profile_cannot_run_is_refused_before_the_run(tmp_path: Path) -> None:
    path = _file(tmp_path, BASE + _TL + 'at_s = 1\naction = "snapshot"\nvm = "v"\nname = "a"\n'
                 + _TL + 'at_s = 1.5\naction = "restore"\nsnapshot = "a"\nhost = "h"\n'
                 'recipe = { name = "firecracker", clock_realtime = true }\n')
    with pytest.raises(ScenarioFileError) as info:
        run_scenario(path, "gtod")
    assert info.value.key == "timeline[1].recipe"
    assert "kvm_clock_realtime" in str(info.value) and "5.16" in str(info.value)


# --------------------------------------------------------------------------- --param
def test_params_override_only_declared_values(tmp_path: Path) -> None:
    path = _file(tmp_path, BASE)
    r = run_scenario(path, "upstream", vcpus=3, duration_s=0.5)
    assert r["params"] == {"duration_s": "0.5", "vcpus": 3, "jump_ms": 100}
    assert r["duration_ns"] == NS // 2 and r["end_ns"] == NS // 2
    assert [lv["vcpus"] for lv in r["levels"]] == [2, 3]
    with pytest.raises(ScenarioError, match="has no parameter cpus; valid: duration_s, jump_ms"):
        run_scenario(path, "upstream", cpus=3)
    with pytest.raises(ScenarioError, match=re.escape("vcpus=65 out of range (1..64)")):
        run_scenario(path, "upstream", vcpus=65)
    with pytest.raises(ScenarioError, match=re.escape("duration_s=0 must be > 0 seconds")):
        run_scenario(path, "upstream", duration_s=0)


def test_overridden_times_run_in_order_and_past_the_end_are_not_reached(tmp_path: Path) -> None:
    text = BASE.replace("[run]", 'a_s = { default = 0.5, type = "seconds" }\n'
                        'b_s = { default = 1, type = "seconds" }\n[run]') + _TL + \
        'at_s = "=a_s"\naction = "moment"\ntext = "A"\n' + _TL + \
        'at_s = "=b_s"\naction = "moment"\ntext = "B"\n'
    path = _file(tmp_path, text)
    texts = [m["text"] for m in run_scenario(path, "upstream")["moments"] if m["text"] in "AB"]
    assert texts == ["A", "B"]
    swapped = run_scenario(path, "upstream", a_s=1.5)
    assert [(m["t_ns"], m["text"]) for m in swapped["moments"] if m["text"] in "AB"] == [
        (NS, "B"), (3 * NS // 2, "A"),
    ]
    short = run_scenario(path, "upstream", duration_s=0.75)
    assert [m["text"] for m in short["moments"] if m["text"] in "AB"] == ["A"]


# --------------------------------------------------------------------------- runs
MULTI = """
name = "two-hosts"
description = "two hosts with different TSC kHz, one VM each, one created later"

[run]
duration_s = 1
profiles = ["series", "upstream"]

[[host]]
name = "a"
cpus = 2
tsc_khz = 2593992

[[host]]
name = "b"
cpus = 4
tsc_khz = 3000000

[[vm]]
name = "va"
host = "a"
vcpus = 2

[[vm]]
name = "vb"
host = "b"
vcpus = 3

[[vm]]
name = "late"
host = "b"
vcpus = 1
created_at_s = 0.5

[[timeline]]
at_s = 0.25
action = "tsc_write"
vm = "vb"
vcpu = 1
relative_to = 0
ahead_ms = 300

[[timeline]]
at_s = 0.6
action = "moment"
vm = "late"
text = "late is up"
"""


def test_multi_host_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sims: list[Sim] = []

    def keep(*a: Any, **k: Any) -> Sim:
        sims.append(Sim(*a, **k))
        return sims[-1]

    import kvmclock.sim.scenarios as scenarios_mod

    monkeypatch.setattr(scenarios_mod, "Sim", keep)
    r = run_scenario(_file(tmp_path, MULTI), "upstream", seed=3)
    assert [(lv["name"], lv["level"], lv["vcpus"]) for lv in r["levels"]] == [
        ("a", 0, 2), ("b", 0, 4), ("va", 1, 2), ("vb", 1, 3), ("late", 1, 1),
    ]
    # several guests at level 1: every sample row names its kernel
    assert {s["kernel"] for s in r["samples"]} == {"va", "vb", "late"}
    first = {n: min(s["t_ns"] for s in r["samples"] if s["kernel"] == n)
             for n in ("va", "vb", "late")}
    # sampling every 10 ms from the start (2 ms: after the two VMs created at 1 and 2 ms)
    assert first["va"] == first["vb"] == 12 * MS and 500 * MS < first["late"] <= 512 * MS
    reads = {lv["name"]: lv["guest_reads"] for lv in r["levels"]}
    assert reads["va"] == 2 * 99 and reads["vb"] == 3 * 99  # 12 ms .. 992 ms, all vCPUs
    assert reads["late"] == sum(1 for s in r["samples"] if s["kernel"] == "late")
    assert r["stats"]["guest_reads"] == sum(reads.values())
    # the default moment of a relative TSC write names the cycles: 300 ms at 3,000,000 kHz
    assert {"t_ns": 250 * MS, "level": 1,
            "text": "vCPU 1: TSC write of vCPU 0's TSC + 900000000 cycles"} in r["moments"]
    assert {"t_ns": 600 * MS, "level": 1, "text": "late is up"} in r["moments"]
    # the hosts share one wall-clock epoch: the first host's, drawn as for a single host
    (sim,) = sims
    epochs = {k.name: k.machine.rtc_epoch_ns for k in sim.kernels if k.level == 0}
    assert epochs["a"] == epochs["b"]
    from kvmclock.machine.physical import PhysicalMachine
    from kvmclock.machine.world import World

    assert epochs["a"] == PhysicalMachine(World(3), 2, tsc_khz=KHZ).rtc_epoch_ns
    assert r["lifecycle"] == []


LIFECYCLE = BASE.replace('profiles = "upstream"', 'profiles = "upstream"') + """
[[host]]
name = "h2"
cpus = 2
tsc_khz = 2594000
""" + _TL + 'at_s = 0.2\naction = "pause"\nvm = "v"\nrecipe = "qemu"\n' \
    + _TL + 'at_s = 0.3\naction = "resume"\nvm = "v"\n' \
    + _TL + 'at_s = 0.4\naction = "snapshot"\nvm = "v"\nname = "s"\nrecipe = "firecracker"\n' \
    + _TL + 'at_s = 0.6\naction = "restore"\nsnapshot = "s"\nhost = "h2"\n' \
            'recipe = { name = "firecracker", clock_realtime = true }\n' \
    + _TL + 'at_s = 0.9\naction = "migrate"\nvm = "v"\nto_host = "h"\ndowntime_ms = 50\n' \
    + _TL + 'at_s = 1.2\naction = "host_suspend"\nhost = "h"\nduration_s = 0.3\n'


def test_lifecycle_actions_reach_the_lifecycle(tmp_path: Path) -> None:
    r = run_scenario(_file(tmp_path, LIFECYCLE), "upstream")
    got = [(x["action"], x["vm"], x["host"], x["t_ns"], x["downtime_ns"]) for x in r["lifecycle"]]
    assert got == [
        ("resume", "v", "h", 300 * MS, 100 * MS),
        ("restore", "v", "h2", 600 * MS, 200 * MS),
        ("migrate", "v", "h", 950 * MS, 50 * MS),
        ("host_suspend", "v", "h", 1500 * MS, 300 * MS),
    ]
    assert [x["recipe"] for x in r["lifecycle"]][:3] == [
        "qemu", "firecracker(clock_realtime=True)", "qemu",
    ]
    assert r["lifecycle"][3]["recipe"] is None


# --------------------------------------------------------------------------- the docs
def _doc_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_docs_base_example_loads() -> None:
    base = _doc_blocks()[0]
    assert base.startswith("# base")
    sf = loads(base, "docs/scenarios.md")
    assert [h.name for h in sf.model.host] == ["src", "dst"]


@pytest.mark.parametrize("index", range(1, len(_doc_blocks())))
def test_docs_action_examples_load_and_run(index: int) -> None:
    """Every action example of docs/scenarios.md, added to the doc's base file, is a valid
    scenario that runs (under upstream, which has every API the examples use)."""
    blocks = _doc_blocks()
    sf = loads(blocks[0] + blocks[index], f"docs/scenarios.md block {index}")
    assert sf.model.timeline
    r = run_scenario(sf, "upstream", duration_s=8)
    assert r["end_ns"] == 8 * NS and r["livelock"] is None


def test_docs_cover_every_action() -> None:
    text = "".join(_doc_blocks()[1:])
    used = set(re.findall(r'action = "([a-z_]+)"', text))
    schema = json.loads(schema_text())
    assert used == set(schema["properties"]["timeline"]["items"]["discriminator"]["mapping"])


# --------------------------------------------------------------------------- CLI
def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_scenarios_show_and_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(capsys, "scenarios")
    assert code == 0
    assert [ln.split()[0] for ln in out.splitlines()] == builtin_names()
    assert SCENARIOS["tsc-sync"].description in out
    code, out, _ = _main(capsys, "scenarios", "--show", "tsc-sync")
    assert code == 0 and out == load_builtin("tsc-sync").text
    code, out, _ = _main(capsys, "scenarios", "--schema")
    assert code == 0 and out == SCHEMA.read_text()
    code, out, err = _main(capsys, "scenarios", "--show", "nope")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "no such built-in scenario; choose one of: nested, tsc-sync" in err


def test_cli_simulate_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path, MULTI)
    code, out, _ = _main(capsys, "simulate", "--scenario", path, "--json", "-")
    assert code == 0
    doc = json.loads(out)
    # the file's run.profiles by default
    assert doc["scenario"] == "two-hosts" and doc["seed"] == 0
    assert [r["profile"] for r in doc["runs"]] == ["series", "upstream"]
    code, out, _ = _main(capsys, "simulate", "--scenario", path, "--profile", "gtod",
                         "--set", "masterclock_request=on_update", "--seed", "4", "--json", "-")
    assert code == 0
    (r,) = json.loads(out)["runs"]
    assert r["seed"] == 4 and r["switches"]["masterclock_request"] == "on_update"
    code, out, _ = _main(capsys, "simulate", "--scenario", path, "--profile", "upstream")
    assert code == 0 and "two-hosts" in out and "L1 late" in out


def test_cli_file_params_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path, BASE)
    code, out, _ = _main(capsys, "simulate", "--scenario", path, "--param", "vcpus=3",
                         "--duration", "0.5", "--json", "-")
    assert code == 0
    (r,) = json.loads(out)["runs"]
    assert r["params"]["vcpus"] == 3 and r["duration_ns"] == NS // 2
    for argv, needle in [
        (["--param", "nope=1"], "has no parameter 'nope' (its parameters: duration_s, jump_ms"),
        (["--param", "vcpus=65"], "vcpus=65 out of range (1..64)"),
        (["--profile", "linux"], "profile='linux' invalid"),
    ]:
        code, out, err = _main(capsys, "simulate", "--scenario", path, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, (argv, err)
    bad = _file(tmp_path, BASE.replace("cpus = 2\n", "cpus = 0\n"), "bad.toml")
    code, out, err = _main(capsys, "simulate", "--scenario", bad)
    assert code == 2 and out == ""
    assert err == f"kvmclock simulate: {bad}: host[0].cpus: 0 out of range (1..64)\n"


def test_cli_subprocess_one_line_errors(tmp_path: Path) -> None:
    bad = _file(tmp_path, 'name = "x"\n[run\n', "syntax.toml")
    assert_usage_error(run("simulate", "--scenario", bad), f"{bad}: line 2: TOML syntax error")
    assert_usage_error(run("simulate", "--scenario", os.path.join(str(tmp_path), "no.toml")),
                       "cannot read")
    assert_usage_error(run("simulate", "--scenario", "nope"), "unknown scenario 'nope'",
                       "nested", ".toml scenario file")


NESTED_TSC_ZERO = """
name = "nested-tsc-zero"
description = "a guest-initiated TSC write of 0 on L1's vCPU 0 while L1 runs an L2"
[run]
duration_s = 4
[[host]]
name = "L0"
cpus = 4
tsc_khz = 2593992
[[vm]]
name = "L1"
host = "L0"
vcpus = 2
kvm = true
[[vm]]
name = "L2"
host = "L1"
vcpus = 1
[[timeline]]
at_s = 3
action = "tsc_write"
vm = "L1"
vcpu = 0
value = 0
host_initiated = false
"""


@pytest.mark.parametrize("profile", ["gtod", "upstream"])
def test_wild_nested_clock_does_not_hang_the_simulator(tmp_path: Path, profile: str) -> None:
    """L1's vCPU 0 TSC going back to 0 gives L2 a kvm-clock about 2**62 ns ahead: the
    timekeeper's logarithmic accumulation then takes ~2**31 chunks at its top shift, which the
    model takes at once (it once looped for hours here).  The run reaches its end."""
    run = run_scenario(_file(tmp_path, NESTED_TSC_ZERO), profile)
    assert run["end_ns"] == run["duration_ns"] == 4 * 10**9
    assert [lv["name"] for lv in run["levels"]] == ["L0", "L1", "L2"]


# --------------------------------------------------------------------------- lifecycle plans
LC = """
name = "lc"
[params]
hp = false
rt = true
n = 3
vmm = "firecracker"
ctrl = { default = "at-pause", choices = ["at-pause", "before-resume"] }
scaling = { default = "vmx", choices = ["vmx", "svm", "none"] }
[run]
duration_s = 6
profiles = "upstream"
[[host]]
name = "h"
cpus = 2
tsc_khz = 2593992
[[host]]
name = "h2"
cpus = 2
tsc_khz = 2593992
tsc_scaling = "=scaling"
[[vm]]
name = "v"
host = "h"
vcpus = 2
"""


def _e(at: str, action: str, body: str = "") -> str:
    """One timeline entry: ``body`` is its other keys, one per line."""
    return f"{_TL}at_s = {at}\naction = \"{action}\"\n{body}"


_SNAP = _e("1", "snapshot", 'vm = "v"\nname = "s"\n')
_MIG = _e("1", "migrate", 'vm = "v"\nto_host = "h2"\nprecopy_s = 0.5\ndowntime_ms = 10\n')
_SUSP = _e("1", "host_suspend", 'host = "h"\nduration_s = 2\n')
_NESTED = ('\n[[vm]]\nname = "l1"\nhost = "h"\nvcpus = 1\nkvm = true\n'
           '\n[[vm]]\nname = "l2"\nhost = "l1"\nvcpus = 1\n')


@pytest.mark.parametrize(
    ("text", "key", "needles"),
    [
        # the reviewer's g03: a snapshot restored twice, the VM running again in between
        (_SNAP + _e("2", "restore", 'snapshot = "s"\nhost = "h2"\n')
         + _e("3", "restore", 'snapshot = "s"\nhost = "h"\n'), "timeline[2].snapshot",
         ["snapshot 's' is of VM 'v', which is not paused",
          "restored by timeline[1] at 2 s", "pause or snapshot it first"]),
        # the reviewer's g05: a live migration of a paused VM
        (_e("1", "pause", 'vm = "v"\n') + _e("2", "migrate", 'vm = "v"\nto_host = "h2"\n'
                                               'downtime_ms = 10\n'), "timeline[1].vm",
         ["VM 'v' is paused (by timeline[0] at 1 s): a live migration moves a running VM"]),
        (_SNAP + _e("2", "migrate", 'vm = "v"\nto_host = "h2"\ndowntime_ms = 10\n'),
         "timeline[1].vm", ["VM 'v' is paused (by timeline[0] at 1 s)"]),
        (_SNAP + _e("2", "pause", 'vm = "v"\n'), "timeline[1].vm",
         ["VM 'v' is already paused (by timeline[0] at 1 s)"]),
        # the migration runs from 1 s to 1 + 0.5 (precopy) + 0.010 (downtime) = 1.51 s
        (_MIG + _e("1.2", "pause", 'vm = "v"\n'), "timeline[1].vm",
         ["VM 'v' is being migrated (by timeline[0] at 1 s) until 1.51 s"]),
        (_MIG + _e("1.51", "snapshot", 'vm = "v"\nname = "s"\n'), "timeline[1].vm",
         ["being migrated (by timeline[0] at 1 s) until 1.51 s"]),
        (_MIG + _e("1.3", "migrate", 'vm = "v"\nto_host = "h"\ndowntime_ms = 1\n'),
         "timeline[1].vm", ["being migrated"]),
        (_MIG + _e("1.3", "vcpu_hotplug", 'vm = "v"\n'), "timeline[1].vm", ["being migrated"]),
        # naive with 2 vCPUs: the second restored gap_ms = 100 after the first: until 2.1 s
        (_SNAP + _e("2", "restore", 'snapshot = "s"\nhost = "h"\n'
                    'recipe = { name = "naive", gap_ms = 100 }\n')
         + _e("2.1", "resume", 'vm = "v"\n'), "timeline[2].vm",
         ["VM 'v' is being restored (by timeline[1] at 2 s) until 2.1 s"]),
        (_SNAP + _e("1.5", "vcpu_hotplug", 'vm = "v"\n')
         + _e("2", "restore", 'snapshot = "s"\nhost = "h"\n'), "timeline[2].snapshot",
         ["snapshot 's' has 2 vCPUs, VM 'v' now has 3"]),
        # the host sleeps from 1 s to 1 + 2 = 3 s, inclusive
        (_SUSP + _e("2", "host_suspend", 'host = "h"\nduration_s = 1\n'), "timeline[1].host",
         ["host 'h' is already suspended (by timeline[0] at 1 s) until 3 s"]),
        (_SUSP + _e("3", "pause", 'vm = "v"\n'), "timeline[1].vm",
         ["the host 'h' of VM 'v' is suspended (by timeline[0] at 1 s) until 3 s"]),
        (_SUSP + _e("2", "tsc_write", 'vm = "v"\nvcpu = 0\nvalue = 0\n'), "timeline[1].vm",
         ["the host 'h' of VM 'v' is suspended"]),
        (_SUSP + _e("2", "migrate", 'vm = "v"\nto_host = "h2"\ndowntime_ms = 1\n'),
         "timeline[1].vm", ["is suspended"]),
        (_e("1", "host_suspend", 'host = "h2"\nduration_s = 2\n')
         + _e("2", "migrate", 'vm = "v"\nto_host = "h2"\ndowntime_ms = 1\n'),
         "timeline[1].to_host", ["host 'h2' is suspended (by timeline[0] at 1 s) until 3 s"]),
        (_e("1", "pause", 'vm = "v"\n') + _e("2", "host_suspend", 'host = "h"\nduration_s = 1\n'),
         "timeline[1].host", ["VM 'v' on host 'h' is paused (by timeline[0] at 1 s)"]),
        (_MIG + _e("1.51", "host_suspend", 'host = "h"\nduration_s = 1\n'), "timeline[1].host",
         ["VM 'v' is being migrated (by timeline[0] at 1 s) from or to host 'h' until 1.51 s"]),
        (_MIG + _e("1.2", "host_suspend", 'host = "h2"\nduration_s = 1\n'), "timeline[1].host",
         ["from or to host 'h2'"]),
        ('\n[[vm]]\nname = "late"\nhost = "h"\nvcpus = 1\ncreated_at_s = 2\n' + _SUSP,
         "timeline[0].host", ["VM 'late' is created on host 'h' at 2 s, while it sleeps"]),
        # a VM inside a paused VM: its VMM is frozen with it
        (_NESTED + _e("1", "pause", 'vm = "l1"\n') + _e("1.5", "get_clock", 'vm = "l2"\n'),
         "timeline[1].vm", ["the host 'l1' of VM 'l2': VM 'l1' is paused (by timeline[0]"]),
        (_NESTED + _SUSP + _e("1.5", "get_clock", 'vm = "l2"\n'), "timeline[1].vm",
         ["the host 'l1' of VM 'l2' (on host 'h') is suspended"]),
    ],
)
def test_lifecycle_timelines_that_cannot_run_are_refused_before_the_run(
    text: str, key: str, needles: list[str]
) -> None:
    e = _error(LC + text)
    assert e.key == key, str(e)
    for n in needles:
        assert n in str(e), (n, str(e))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # one ns after the migration's end (1.51 s) the VM can be paused again
        (_MIG + _e("1.510000001", "pause", 'vm = "v"\n') + _e("2", "resume", 'vm = "v"\n'),
         [("migrate", 1_510 * MS), ("resume", 2 * NS)]),
        # a snapshot pauses the VM: resume goes on with the snapshot's recipe
        (_e("1", "snapshot", 'vm = "v"\nname = "s"\nrecipe = "firecracker"\n')
         + _e("2", "resume", 'vm = "v"\n'), [("resume", 2 * NS)]),
        # the same snapshot restored twice, with a pause in between
        (_SNAP + _e("2", "restore", 'snapshot = "s"\nhost = "h2"\n')
         + _e("3", "pause", 'vm = "v"\n') + _e("3.5", "restore", 'snapshot = "s"\nhost = "h"\n'),
         [("restore", 2 * NS), ("restore", 3_500 * MS)]),
        # one ns after the host's resume (1 + 2 = 3 s)
        (_SUSP + _e("3.000000001", "pause", 'vm = "v"\n') + _e("4", "resume", 'vm = "v"\n'),
         [("host_suspend", 3 * NS), ("resume", 4 * NS)]),
    ],
)
def test_lifecycle_timelines_at_the_limits_run(
    tmp_path: Path, text: str, want: list[tuple[str, int]]
) -> None:
    r = run_scenario(_file(tmp_path, LC + text), "upstream")
    assert [(x["action"], x["t_ns"]) for x in r["lifecycle"]] == want
    assert all(x["completed"] for x in r["lifecycle"])


_NO_SCALING = LC.replace('tsc_khz = 2593992\ntsc_scaling = "=scaling"',
                         'tsc_khz = 3000000\ntsc_scaling = "none"')


def test_a_refusal_at_run_time_names_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Firecracker treats KVM_SET_TSC_KHZ -EINVAL as fatal: KVM refuses a guest slower than a
    host without TSC scaling (x86.c set_tsc_khz) when 2,593,992 kHz is more than 250 ppm
    below 3,000,000 kHz.  The restore happens at 1 + 0.5 + 0.25 = 1.75 s, a later step of
    the migration entry: the error names the entry, exit 2."""
    from kvmclock.errors import ScenarioRunError, UsageError

    path = _file(tmp_path, _NO_SCALING + _e(
        "1", "migrate", 'vm = "v"\nto_host = "h2"\nrecipe = "firecracker"\nprecopy_s = 0.5\n'
        "downtime_ms = 250\n"))
    with pytest.raises(ScenarioRunError) as info:
        run_scenario(path, "upstream")
    e = info.value
    assert isinstance(e, ScenarioFileError) and isinstance(e, UsageError)
    assert e.key == "timeline[0]" and e.file == path and "\n" not in str(e)
    assert "migrate at 1 s refused at run time, in its later step at 1.75 s: " in str(e)
    assert "KVM_SET_TSC_KHZ 2593992 kHz refused" in str(e)
    code, out, err = _main(capsys, "simulate", "--scenario", path)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{path}: timeline[0]: migrate at 1 s refused at run time" in err
    # refused by the entry itself: a restore there
    path = _file(tmp_path, _NO_SCALING + _e("1", "snapshot", 'vm = "v"\nname = "s"\n')
                 + _e("2", "restore", 'snapshot = "s"\nhost = "h2"\nrecipe = "firecracker"\n'),
                 "r.toml")
    with pytest.raises(ScenarioRunError, match=r"r\.toml: timeline\[1\]: restore at 2 s refused "
                       r"at run time: recipe firecracker"):
        run_scenario(path, "upstream")


# --------------------------------------------------------------------------- params, bools
def test_a_str_parameter_keeps_none_as_a_string(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--param x=none`` arrives as None; a str parameter keeps the text "none" (only
    ``run.fault`` reads it as no fault)."""
    from kvmclock.scenario import check_params, resolve

    path = _file(tmp_path, LC + _MIG)
    sf = load(path)
    p = check_params(sf.name, sf.params, {"scaling": None})
    assert p["scaling"] == "none"
    assert resolve(sf, p, strict=False).hosts[1].tsc_scaling == "none"
    assert check_params(sf.name, sf.params, {"vmm": None})["vmm"] == "none"
    r = run_scenario(path, "upstream", scaling=None)
    assert r["params"]["scaling"] == "none"
    code, _out, err = _main(capsys, "simulate", "--scenario", path, "--param", "scaling=none")
    assert code == 0, err
    r = run_scenario("migrate-tolerance", "upstream", dst_tsc_scaling=None)
    assert r["params"]["dst_tsc_scaling"] == "none"
    # the fault parameter: "none" (or None) is no fault
    assert run_scenario("patch09-hang", "series", fault=None)["livelock"] is None


def test_bool_keys_and_recipe_options_take_expressions(tmp_path: Path) -> None:
    from kvmclock.scenario import resolve

    text = LC.replace('name = "h"\ncpus = 2', 'name = "h"\ncpus = 2\nhpet = "=hp"\nacpi_pm = "=rt"')
    text = text.replace('name = "v"\nhost = "h"\nvcpus = 2',
                        'name = "v"\nhost = "h"\nvcpus = 2\nstable_bit = "=hp"\nkvm = "=hp"')
    text += _e("1", "pause", 'vm = "v"\nrecipe = { name = "firecracker", '
               'clock_realtime = "=rt", kvmclock_ctrl = "=ctrl" }\n')
    text += _e("2", "resume", 'vm = "v"\nrecipe = "=vmm"\n')
    text += _e("3", "tsc_write", 'vm = "v"\nvcpu = 1\nvalue = 5\nhost_initiated = "=hp"\n')
    sf = loads(text)
    plan = resolve(sf, sf.defaults(), strict=True)
    assert (plan.hosts[0].hpet, plan.hosts[0].acpi_pm) == (False, True)
    assert "kvmclock_stable_bit" not in plan.vms[0].features and plan.vms[0].kvm is False
    pause, resume, write = plan.steps
    assert pause.args["recipe"] == ("firecracker",
                                    {"clock_realtime": True, "kvmclock_ctrl": "at-pause"})
    assert resume.args["recipe"] == ("firecracker", {})
    assert write.args["host_initiated"] is False
    plan = resolve(sf, {**sf.defaults(), "hp": True, "rt": False}, strict=False)
    assert plan.hosts[0].hpet and not plan.hosts[0].acpi_pm and plan.vms[0].kvm
    assert plan.steps[0].args["recipe"][1]["clock_realtime"] is False
    r = run_scenario(_file(tmp_path, text), "upstream")
    assert [x["recipe"] for x in r["lifecycle"]] == ["firecracker(clock_realtime=False)"]
    # the pause's kvmclock_ctrl = "=ctrl" (at-pause): KVM_KVMCLOCK_CTRL at the pause
    assert any(m["t_ns"] == NS and "KVMCLOCK_CTRL" in m["text"] for m in r["moments"])


@pytest.mark.parametrize(
    ("old", "new", "key", "needle"),
    [
        ("tsc_khz = 2593992\n[[host]]", 'tsc_khz = 2593992\nhpet = "=n"\n[[host]]',
         "host[0].hpet", "'=n' = 3 is not a boolean; expected true or false"),
        ("tsc_khz = 2593992\n[[host]]", 'tsc_khz = 2593992\nhpet = "yes"\n[[host]]',
         "host[0].hpet", "'yes' is not allowed; expected a boolean (true or false) or an "
         "expression string ('=...')"),
        ("vcpus = 2\n", 'vcpus = 2\nkvm = "=vmm"\n', "vm[0].kvm",
         "'=vmm' = 'firecracker' is not a boolean"),
        ("vcpus = 2\n", 'vcpus = 2\n' + _e("1", "pause", 'vm = "v"\n'
         'recipe = { name = "firecracker", clock_realtime = "yes" }\n'),
         "timeline[0].recipe.clock_realtime", "expected a boolean (true or false)"),
        ("vcpus = 2\n", 'vcpus = 2\n' + _e("1", "pause", 'vm = "v"\n'
         'recipe = { name = "firecracker", clock_realtime = "=n" }\n'),
         "timeline[0].recipe.clock_realtime", "'=n' = 3 is not a boolean"),
        ("vcpus = 2\n", 'vcpus = 2\n' + _e("1", "pause", 'vm = "v"\n'
         'recipe = { name = "cloud-hypervisor", tsc_offsets = "=vmm" }\n'),
         "timeline[0].recipe.tsc_offsets",
         "'=vmm' = firecracker is not allowed; choose one of per-vcpu, shared"),
        ("vcpus = 2\n", 'vcpus = 2\n' + _e("1", "pause", 'vm = "v"\nrecipe = "=ctrl"\n'),
         "timeline[0].recipe", "'=ctrl' = at-pause is not allowed; choose one of qemu"),
    ],
)
def test_bad_bool_and_recipe_option_values(old: str, new: str, key: str, needle: str) -> None:
    assert LC.count(old) == 1
    e = _error(LC.replace(old, new))
    assert e.key == key and needle in str(e), str(e)


# --------------------------------------------------------------------------- static bounds
def _field(schema: dict[str, Any], model: str, name: str) -> dict[str, Any]:
    return schema["$defs"][model]["properties"][name]  # type: ignore[no-any-return]


def test_schema_has_the_loaders_bounds() -> None:
    schema = json.loads(schema_text())
    ints = {
        ("HostSpec", "cpus"): (1, 64),
        ("HostSpec", "tsc_khz"): (1, 2**32 - 1),
        ("VmSpec", "vcpus"): (1, 64),
        ("VmSpec", "tsc_khz"): (1, 2**32 - 1),
        ("RunSpec", "hz"): (15, 10_000),
        ("VcpuMigrate", "host_cpu"): (0, 63),
        ("HostSuspend", "tsc_after_resume_cycles"): (0, 2**64 - 1),
    }
    for (model, name), (lo, hi) in ints.items():
        branch = next(b for b in _field(schema, model, name)["anyOf"]
                      if b.get("type") == "integer")
        assert (branch["minimum"], branch["maximum"]) == (lo, hi), (model, name)
    for model, name in (("RunSpec", "duration_s"), ("HostSuspend", "duration_s"),
                        ("RotateVcpus", "every_ms")):
        numeric = [b for b in _field(schema, model, name)["anyOf"] if b.get("type") != "string"]
        assert len(numeric) == 2 and all(b["exclusiveMinimum"] == 0 for b in numeric)
    for model, name in (("Pause", "at_s"), ("Migrate", "downtime_ms"), ("Migrate", "precopy_s"),
                        ("HostSpec", "uptime_s"), ("NaiveRecipe", "gap_ms")):
        numeric = [b for b in _field(schema, model, name)["anyOf"]
                   if b.get("type") in ("integer", "number")]
        assert numeric and all(b["minimum"] == 0 for b in numeric), (model, name)
    bools = [b["type"] for b in _field(schema, "HostSpec", "hpet")["anyOf"]]
    assert bools == ["boolean", "string"]


@pytest.mark.parametrize(
    ("host_lines", "ok", "needle"),
    [
        ("cpus = 0\ntsc_khz = 1000", False, "host[0].cpus: 0 out of range (1..64)"),
        ("cpus = 1\ntsc_khz = 1000", True, ""),
        ("cpus = 64\ntsc_khz = 1000", True, ""),
        ("cpus = 65\ntsc_khz = 1000", False, "host[0].cpus: 65 out of range (1..64)"),
        ("cpus = 1\ntsc_khz = 0", False, "host[0].tsc_khz: 0 out of range (1..4294967295)"),
        ("cpus = 1\ntsc_khz = 4294967295", True, ""),
        ("cpus = 1\ntsc_khz = 4294967296", False,
         "host[0].tsc_khz: 4294967296 out of range (1..4294967295)"),
        ("cpus = 1\ntsc_khz = 1000\ndrift_ppm = -1000000", False,
         "host[0].drift_ppm: -1000000 must be > -1000000"),
        ("cpus = 1\ntsc_khz = 1000\ndrift_ppm = -999999.5", True, ""),
        ("cpus = 1\ntsc_khz = 1000\nuptime_s = -0.5", False,
         "host[0].uptime_s: -0.5 must be >= 0"),
    ],
)
def test_static_bounds_of_host_values(host_lines: str, ok: bool, needle: str) -> None:
    import jsonschema
    text = f'name = "b"\n[run]\nduration_s = 1\n[[host]]\nname = "h"\n{host_lines}\n'
    validator = jsonschema.Draft202012Validator(json.loads(schema_text()))
    from kvmclock.scenario.loader import tomllib  # tomli on Python 3.10

    assert validator.is_valid(tomllib.loads(text)) is ok
    if ok:
        loads(text)
    else:
        assert str(_error(text, "b.toml")) == f"b.toml: {needle}"


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ('duration_s = 0', "run.duration_s: 0 must be > 0"),
        ('duration_s = 0.0', "run.duration_s: 0.0 must be > 0"),
    ],
)
def test_static_bounds_of_run_values(entry: str, needle: str) -> None:
    e = _error(LC.replace("duration_s = 6", entry))
    assert str(e) == f"x.toml: {needle}"


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        (_e("-0.001", "pause", 'vm = "v"\n'), "timeline[0].at_s: -0.001 must be >= 0"),
        (_e("1", "migrate", 'vm = "v"\nto_host = "h2"\ndowntime_ms = -1\n'),
         "timeline[0].downtime_ms: -1 must be >= 0"),
        (_e("1", "host_suspend", 'host = "h"\nduration_s = 0\n'),
         "timeline[0].duration_s: 0 must be > 0"),
        (_e("1", "tsc_write", 'vm = "v"\nvcpu = 64\nvalue = 0\n'),
         "timeline[0].vcpu: 64 out of range (0..63)"),
        (_e("1", "tsc_write", 'vm = "v"\nvcpu = 0\nvalue = -1\n'),
         "timeline[0].value: -1 out of range (0..18446744073709551615)"),
        (_e("1", "restore", 'snapshot = "s"\nhost = "h"\n'
            'recipe = { name = "naive", gap_ms = -1 }\n'),
         "timeline[0].recipe.gap_ms: -1 must be >= 0"),
    ],
)
def test_static_bounds_of_timeline_values(entry: str, needle: str) -> None:
    assert str(_error(LC + entry)) == f"x.toml: {needle}"


def test_a_misspelled_key_is_named_with_the_missing_one() -> None:
    e = _error(LC.replace('name = "h"\ncpus = 2\n', 'name = "h"\ncpu = 2\n'))
    assert e.key == "host[0].cpu"
    assert "unknown key; allowed here: name, cpus, tsc_khz" in str(e)
    assert str(e).endswith("; missing here: cpus")
    e = _error(LC + _e("1", "migrate", 'vm = "v"\nto_host = "h2"\ndowntime = 10\n'))
    assert e.key == "timeline[0].downtime" and str(e).endswith("; missing here: downtime_ms")


# --------------------------------------------------------------------------- run history
def _by_name(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lv["name"]: lv for lv in run["levels"]}


def _alternates(tl: list[dict[str, Any]]) -> bool:
    return all(a["t_ns"] <= b["t_ns"] and a["on"] != b["on"] for a, b in itertools.pairwise(tl))


def test_level_timelines_cover_every_vm_a_guest_ran_on() -> None:
    """ch-restore: two VMs created at 1 and 2 ms, each restored at 12 s into a new KVM VM on
    the same host.  Each guest's stable-bit timeline starts when its first VM was created and
    ends in the state its lifecycle record saw after the restore; the host's KVM has one
    masterclock timeline per VM name, each from the VM's creation to the state after."""
    run = run_scenario("ch-restore", "upstream")
    levels = _by_name(run)
    recs = {x["vm"]: x for x in run["lifecycle"]}
    host = levels["host"]
    assert list(host["masterclock_timelines"]) == ["before-fix", "fixed"]
    assert host["masterclock_timeline"] == host["masterclock_timelines"]["before-fix"]
    for created_ms, vm in ((1, "before-fix"), (2, "fixed")):
        stable = levels[vm]["pvclock_stable_timeline"]
        assert stable[0] == {"t_ns": created_ms * MS, "on": True} and _alternates(stable), vm
        assert stable[-1]["on"] is recs[vm]["stable_after"] is levels[vm]["pvclock_stable"]
        mc = host["masterclock_timelines"][vm]
        assert mc[0]["t_ns"] == created_ms * MS and _alternates(mc), vm
        assert any(e["t_ns"] >= 12 * NS for e in mc), vm  # the restored VM's part
        assert mc[-1]["on"] is recs[vm]["masterclock_after"]
    # per-vCPU offsets keep masterclock off; the shared offset brings it back
    assert recs["before-fix"]["masterclock_after"] is False
    assert recs["fixed"]["masterclock_after"] is True


def test_level_timelines_after_a_restore_and_a_migration() -> None:
    """restore-shelf: the three guests' timelines start at their creation (1, 2, 3 ms), not
    at the restore; migrate-tolerance: the source host's KVM ran the VM until the migration
    (its timeline is kept though the VM left) and the destination's from then on."""
    run = run_scenario("restore-shelf", "upstream")
    guests = [lv for lv in run["levels"] if lv["level"] == 1]
    assert [lv["pvclock_stable_timeline"][0]["t_ns"] for lv in guests] == [1 * MS, 2 * MS, 3 * MS]
    run = run_scenario("migrate-tolerance", "upstream")
    levels = _by_name(run)
    (rec,) = run["lifecycle"]
    src, dst = levels["src"]["masterclock_timeline"], levels["dst"]["masterclock_timeline"]
    # created at 1 ms on the source; the destination's VM at the restore, 2 + 0.5 + 0.3 s
    assert src[0]["t_ns"] == 1 * MS and src[-1]["on"] is True and _alternates(src)
    assert dst[0]["t_ns"] == 2_800 * MS and dst[-1]["on"] is rec["masterclock_after"]
    assert "masterclock_timelines" not in levels["src"]  # one VM name: the one timeline
    stable = levels["vm"]["pvclock_stable_timeline"]
    assert stable[0] == {"t_ns": 1 * MS, "on": True} and stable[-1]["on"] is rec["stable_after"]


def test_one_vm_per_kvm_keeps_the_run_json() -> None:
    run = run_scenario("nested", "upstream")
    assert all("masterclock_timelines" not in lv for lv in run["levels"])


# --------------------------------------------------------------------------- key moments
def test_lifecycle_steps_are_key_moments_and_a_note_replaces_the_first(tmp_path: Path) -> None:
    text = LC + _e("1", "pause", 'vm = "v"\nnote = "the operator pauses v"\n') \
        + _e("2", "resume", 'vm = "v"\n') \
        + _e("3", "host_suspend", 'host = "h"\nduration_s = 0.5\nnote = "lid closed"\n') \
        + _e("4", "migrate", 'vm = "v"\nto_host = "h2"\ndowntime_ms = 10\n')
    run = run_scenario(_file(tmp_path, text), "upstream")
    moments = run["moments"]
    at = {t: [(m["level"], m["text"]) for m in moments if m["t_ns"] == t] for t in
          (NS, 2 * NS, 3 * NS, 3 * NS + NS // 2, 4 * NS, 4 * NS + 10 * MS)}
    # the pause's first moment is the note (the default "VM v: paused ..." is not said)
    pause = [m for lvl, m in at[NS] if lvl == 1 and (m.startswith("VM v: ") or "operator" in m)]
    assert pause[0] == "the operator pauses v"
    assert not any(m.startswith("VM v: paused") for m in pause)
    # every other step has its default moment at the guest's level (the host's: level 0)
    for t in (2 * NS, 4 * NS, 4 * NS + 10 * MS):
        assert any(lvl == 1 and m.startswith("VM v: ") for lvl, m in at[t]), t
    assert (0, "lid closed") in at[3 * NS]
    assert any(lvl == 0 and "h" in m for lvl, m in at[3 * NS + NS // 2])  # the host resumed


def test_an_action_the_run_ends_in_is_a_record_and_a_moment(tmp_path: Path) -> None:
    """A migration at 5.5 s with 0.3 s of precopy and 1 s of downtime: the source stops at
    5.8 s, the run ends at 6 s, 0.2 s into the downtime."""
    text = LC + _e("5.5", "migrate", 'vm = "v"\nto_host = "h2"\nprecopy_s = 0.3\n'
                   "downtime_ms = 1000\n")
    run = run_scenario(_file(tmp_path, text), "upstream")
    (rec,) = run["lifecycle"]
    assert rec["completed"] is False and rec["t_ns"] is None
    assert rec["stopped_ns"] == 5_800 * MS and "0.200 s into the downtime" in rec["reason"]
    last = run["moments"][-1]
    assert (last["t_ns"], last["level"]) == (6 * NS, 1)
    assert last["text"].startswith("VM v: migrate not completed") and "0.200 s" in last["text"]


def test_builtin_files_and_doc_examples_are_valid_by_the_schema() -> None:
    import jsonschema
    from kvmclock.scenario.loader import tomllib  # tomli on Python 3.10

    validator = jsonschema.Draft202012Validator(json.loads(schema_text()))
    jsonschema.Draft202012Validator.check_schema(validator.schema)
    for name in builtin_names():
        data = tomllib.loads(load_builtin(name).text)
        assert not list(validator.iter_errors(data)), name
    base = _doc_blocks()[0]
    for block in _doc_blocks()[1:]:
        assert validator.is_valid(tomllib.loads(base + block)), block

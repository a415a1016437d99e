"""Scenario files (docs/scenarios.md): loading, every kind of error with its message, exact
expressions, --param overrides, a multi-host run, the lifecycle dispatch, the shipped JSON
Schema, the docs' examples, the built-in scenarios pinned to their results before they became
files, and the CLI commands."""

from __future__ import annotations

import hashlib
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


@pytest.mark.parametrize(("name", "profile", "seed"), _golden_cases())
def test_builtin_scenarios_give_the_results_of_the_python_setups(
    name: str, profile: str, seed: int
) -> None:
    """Byte-identical runs: the hashes were made by the Python setup functions the files
    replaced.  The new ``lifecycle`` key (empty here: no lifecycle action) is left out of the
    hash, and so are switches added since (a new switch adds its entry to ``switches`` but must
    not change these runs)."""
    golden = json.loads(GOLDEN.read_text())
    run_ = run_scenario(name, profile, seed, trace=True)
    assert run_.pop("lifecycle") == []
    run_["switches"] = {k: v for k, v in run_["switches"].items() if k in golden["switches"]}
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
        "name", "description", "params", "run", "host", "vm", "timeline",
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
    texts = [m[2] for m in run_scenario(path, "upstream")["moments"] if m[2] in "AB"]
    assert texts == ["A", "B"]
    swapped = run_scenario(path, "upstream", a_s=1.5)
    assert [(m[0], m[2]) for m in swapped["moments"] if m[2] in "AB"] == [
        (NS, "B"), (3 * NS // 2, "A"),
    ]
    short = run_scenario(path, "upstream", duration_s=0.75)
    assert [m[2] for m in short["moments"] if m[2] in "AB"] == ["A"]


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
    assert {s[4] for s in r["samples"]} == {"va", "vb", "late"}
    first = {n: min(s[0] for s in r["samples"] if s[4] == n) for n in ("va", "vb", "late")}
    # sampling every 10 ms from the start (2 ms: after the two VMs created at 1 and 2 ms)
    assert first["va"] == first["vb"] == 12 * MS and 500 * MS < first["late"] <= 512 * MS
    reads = {lv["name"]: lv["guest_reads"] for lv in r["levels"]}
    assert reads["va"] == 2 * 99 and reads["vb"] == 3 * 99  # 12 ms .. 992 ms, all vCPUs
    assert reads["late"] == sum(1 for s in r["samples"] if s[4] == "late")
    assert r["stats"]["guest_reads"] == sum(reads.values())
    # the default moment of a relative TSC write names the cycles: 300 ms at 3,000,000 kHz
    assert [250 * MS, 1, "vCPU 1: TSC write of vCPU 0's TSC + 900000000 cycles"] in r["moments"]
    assert [600 * MS, 1, "late is up"] in r["moments"]
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

"""Profiles as data: the switch table, what-if profiles, and a flip test for each switch of the
host kernel's timekeeping and of where KVM reads its host clock (the other switches have their
flip tests beside the behaviour: tests/test_upstream_*.py, tests/test_drift.py)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
from kvmclock.kernel import Kernel
from kvmclock.machine import PhysicalMachine, World
from kvmclock.profiles import (
    PROFILES,
    REQUIRES,
    SWITCHES,
    Profile,
    parse_assignments,
    profiles_json,
    resolve_profile,
)
from kvmclock.sim import run_scenario

ROOT = pathlib.Path(__file__).resolve().parents[1]
NS = 1_000_000_000


# -- the table ---------------------------------------------------------------------------------
def test_every_switch_is_documented_like_a_kconfig_entry() -> None:
    for name, s in SWITCHES.items():
        assert s.name == name and re.fullmatch(r"[a-z][a-z0-9_]*", name)
        assert len(s.values) >= 2 and len(set(s.values)) == len(s.values)
        assert s.help and s.since and s.commit and s.where, name
        assert "\n" not in s.help
        # every profile gives it an allowed value
        for p in PROFILES.values():
            assert p[name] in s.values


def test_the_three_profiles() -> None:
    assert list(PROFILES) == ["gtod", "series", "upstream"]
    g, s, u = (PROFILES[n] for n in PROFILES)
    assert (g.kernel, s.kernel, u.kernel) == ("4.13", "4.13+series", "6.18")
    # the series changes exactly what its 11 patches change
    assert {n for n in SWITCHES if g[n] != s[n]} == {
        "pvclock_gtod_chain",
        "clocksource_change_chain",
        "kvm_host_clock",
        "stable_pvclock_host",
        "trace_format",
    }
    # upstream never took the series
    for n in ("pvclock_gtod_chain", "clocksource_change_chain", "kvm_host_clock",
              "stable_pvclock_host", "trace_format"):
        assert u[n] == g[n], n
    # and differs from 4.13 in every behaviour that changed since
    assert u.kvmclock_base == "raw" and g.kvmclock_base == "boot"
    assert u.user_set_tsc is True and g.user_set_tsc is False


def test_no_model_code_branches_on_a_profile_name() -> None:
    pattern = re.compile(r"""profile\s*(==|!=)\s*["']|["'](gtod|series|upstream)["']\s*(==|!=)""")
    offenders = []
    for path in (ROOT / "python" / "kvmclock").rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []


def test_with_names_the_flipped_switches_and_validates() -> None:
    u = PROFILES["upstream"]
    w = u.with_(masterclock_request="on_update")
    assert w.name == "upstream[masterclock_request=on_update]" and w.changed == (
        "masterclock_request",
    )
    assert w.masterclock_request == "on_update" and u.masterclock_request != "on_update"
    ww = w.with_(user_set_tsc=False)
    assert ww.name == "upstream[masterclock_request=on_update,user_set_tsc=off]"
    assert resolve_profile("upstream") is u
    assert resolve_profile(u, user_set_tsc=False).user_set_tsc is False
    with pytest.raises(ValueError, match="unknown switch 'nope'; valid switches: "):
        u.with_(nope=True)
    with pytest.raises(ValueError, match="switch user_set_tsc: 1 is not a valid value; valid: "
                                         "off, on"):
        u.with_(user_set_tsc=1)
    with pytest.raises(ValueError, match="choose one of gtod, series, upstream"):
        resolve_profile("4.13")
    with pytest.raises(AttributeError, match="no switch"):
        _ = u.no_such_switch
    with pytest.raises(KeyError, match="valid switches"):
        _ = u["no_such_switch"]


@pytest.mark.parametrize(("switch", "value", "needs", "needs_value", "why"), REQUIRES)
def test_impossible_combinations_are_refused(
    switch: str, value: Any, needs: str, needs_value: Any, why: str
) -> None:
    # start from a profile where the requirement holds, break only the required switch
    base = next(p for p in PROFILES.values() if p[switch] == value)
    other = next(v for v in SWITCHES[needs].values if v != needs_value)
    with pytest.raises(ValueError, match=r"=\S+ needs \w+="):
        base.with_(**{needs: other})
    # from a profile lacking the requirement, turning the switch on gives this rule's reason
    lacking = next(p for p in PROFILES.values() if p[needs] != needs_value)
    with pytest.raises(ValueError, match=re.escape(why)):
        lacking.with_(**{switch: value})


def test_stable_pvclock_host_needs_the_timekeeper_read() -> None:
    with pytest.raises(ValueError, match=re.escape(
        "stable_pvclock_host=on needs kvm_host_clock=timekeeper (only the timekeeper read "
        "reports the TSC stamp of a kvm-clock read)"
    )):
        PROFILES["gtod"].with_(stable_pvclock_host=True)


def test_parse_assignments() -> None:
    assert parse_assignments(["user_set_tsc=off", "kvmclock_base=boot", "vm_tsc_khz=ON"]) == {
        "user_set_tsc": False,
        "kvmclock_base": "boot",
        "vm_tsc_khz": True,
    }
    for bad, msg in (
        ("user_set_tsc", "expected SWITCH=VALUE"),
        ("=on", "expected SWITCH=VALUE"),
        ("bogus=on", "unknown switch 'bogus'"),
        ("kvmclock_base=Raw", "valid: boot, raw"),
    ):
        with pytest.raises(ValueError, match=re.escape(msg)):
            parse_assignments([bad])


def test_profile_rejects_a_partial_table() -> None:
    vals = dict(PROFILES["gtod"].values)
    del vals["user_set_tsc"]
    with pytest.raises(ValueError, match="missing switches"):
        Profile("mine", "4.13", "d", vals)


def test_profiles_command_text_and_json() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kvmclock", *args], capture_output=True,
                              text=True, timeout=120)

    p = run("profiles")
    assert p.returncode == 0, p.stderr
    for name in SWITCHES:
        assert re.search(rf"^{name}\s", p.stdout, re.M), name
    assert "6.7 (bf328e22e472)" in p.stdout
    p = run("profiles", "upstream", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc == profiles_json(["upstream"])
    assert doc["schema_version"] == 1 and [x["name"] for x in doc["profiles"]] == ["upstream"]
    assert doc["profiles"][0]["switches"]["masterclock_request"] == "toggle_or_new_generation"
    p = run("profiles", "linux")
    assert p.returncode == 2 and "gtod, series, upstream" in p.stderr


# -- flip tests: the host kernel's timekeeping and KVM's host clock ------------------------------
def _booted(profile: Profile, seconds: float = 0.5) -> Kernel:
    k = Kernel(PhysicalMachine(World(0), 2), profile)
    k.boot()
    k.world.run_until(k.world.now_ns + int(seconds * NS))
    return k


@pytest.mark.parametrize("on", [False, True])
def test_switch_pvclock_gtod_chain(on: bool) -> None:
    """On: every timekeeping update walks the pvclock_gtod chain; off: never."""
    base = PROFILES["series"]  # the series removed it; flipping it on needs nothing else
    k = _booted(base.with_(pvclock_gtod_chain=on))
    updates = k.counters["timekeeping_updates"]
    assert updates > 100
    assert k.pvclock_gtod_chain.calls == (updates if on else 0)


@pytest.mark.parametrize("on", [False, True])
def test_switch_clocksource_change_chain(on: bool) -> None:
    """On: the chain is walked at each clocksource switch, never on a tick."""
    k = _booted(PROFILES["gtod"].with_(clocksource_change_chain=on))
    switches = k.counters["clocksource_changes"]
    assert switches >= 1 and k.counters["timekeeping_updates"] > 100
    # timekeeping_init notifies once more (the first clocksource is set up there)
    assert k.clocksource_changes_chain.calls == ((switches + 1) if on else 0)


@pytest.mark.parametrize("host_clock", ["pvclock_gtod_copy", "timekeeper"])
def test_switch_kvm_host_clock(host_clock: str) -> None:
    """Where KVM gets the master pair: the shadow copy refreshed on every update (one notifier
    call each), or the timekeeper asked directly (KVM hears only of clocksource changes)."""
    cfg = PROFILES["gtod"].with_(kvm_host_clock=host_clock, clocksource_change_chain=True)
    run = run_scenario("nested", cfg, duration_s=1, trace=True)
    l0 = run["levels"][0]
    if host_clock == "pvclock_gtod_copy":
        # registration (one call) plus one per update after KVM loaded
        assert l0["notifier_calls"] == l0["gtod_copies"] > 200
        assert any("hostclock tsc" in r["fields"] for r in run["trace"])
    else:
        assert l0["notifier_calls"] == 1 and l0["gtod_copies"] == 0  # the registration call
    # masterclock at L0 on a TSC host either way
    assert l0["masterclock_timeline"][-1]["on"] is True


@pytest.mark.parametrize("on", [False, True])
def test_switch_stable_pvclock_host(on: bool) -> None:
    """The series' patch 11: L1 runs on kvm-clock; only with the switch does its stable record
    count as a stable host clock, so only then does L2 get masterclock."""
    run = run_scenario("nested", PROFILES["series"].with_(stable_pvclock_host=on), duration_s=1)
    l1, l2 = run["levels"][1], run["levels"][2]
    assert l1["clocksource"] == "kvm-clock"
    assert l1["masterclock_timeline"][-1]["on"] is on
    assert (l2["pvclock_stable"] is True) is on


@pytest.mark.parametrize("fmt", ["hostclock_symbol", "hostclock_stable"])
def test_switch_trace_format(fmt: str) -> None:
    run = run_scenario("nested", PROFILES["series"].with_(trace_format=fmt), duration_s=1,
                       trace=True)
    fields = [r["fields"] for r in run["trace"]
              if r["event"] == "kvm_update_master_clock" and r["level"] == 0]
    assert fields
    want = "hostclock stable 1" if fmt == "hostclock_stable" else "hostclock 0x1"
    # series passes the bool "stable" where 4.13 passes the vclock mode: as a symbol, the
    # bool 1 prints as "tsc" (VCLOCK_TSC == 1)
    if fmt == "hostclock_symbol":
        want = "hostclock tsc"
    assert all(want in f for f in fields), fields[:3]


def test_default_simulate_shows_three_profiles_and_says_why_l2_is_unstable() -> None:
    p = subprocess.run([sys.executable, "-m", "kvmclock", "simulate", "--duration", "1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    head = p.stdout.split("Headline:")[1].split("Key moments:")[0]
    rows = {ln.split(":", 1)[0].strip(): ln for ln in head.splitlines() if ": L2 pvclock" in ln}
    assert set(rows) == {"gtod", "series", "upstream"}
    assert "never set" in rows["gtod"] and "never set" in rows["upstream"]
    assert "set from 0.002 s" in rows["series"]
    assert head.count("runs on kvm-clock, and without the series' patch 11") == 2
    assert head.count("stable_pvclock_host=on, the series' patch 11") == 1


def test_docs_table_matches_the_profiles() -> None:
    """docs/profiles.md's switch table says what PROFILES says (values and release)."""
    doc = (ROOT / "docs" / "profiles.md").read_text()

    def show(v: Any) -> str:
        return ("on" if v else "off") if isinstance(v, bool) else str(v)

    for name, s in SWITCHES.items():
        m = re.search(rf"^\| `{name}` \| ([^|]+) \| ([^|]+) \|", doc, re.M)
        assert m, f"docs/profiles.md has no row for {name}"
        assert [x.strip() for x in m.group(1).split("/")] == [
            show(PROFILES[p][name]) for p in PROFILES
        ], name
        assert m.group(2).strip() == s.since, name


def test_set_to_the_profiles_own_value_is_not_a_flip() -> None:
    u = PROFILES["upstream"]
    same = u.with_(pvclock_gtod_chain=True, masterclock_request="toggle_or_new_generation")
    assert same.name == "upstream" and same.changed == () and same.values == u.values
    back = u.with_(user_set_tsc=False).with_(user_set_tsc=True)
    assert back.name == "upstream" and back.changed == ()
    with pytest.raises(ValueError, match="--set user_set_tsc given twice"):
        parse_assignments(["user_set_tsc=off", "user_set_tsc=on"])

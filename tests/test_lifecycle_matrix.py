"""Every lifecycle action under every recipe and profile, as a scenario file: a record with
the values the recipe implies, or (where the profile lacks the kernel API the recipe needs)
one clear error naming the entry and the switch.

Hosts run their TSC at 2 GHz, where the host clocks are exact, so the values are exact:
a recipe that restores the saved kvm-clock (QEMU, Firecracker without ``clock_realtime``,
naive) leaves both guest clocks behind by exactly the time the guest did not run; one that
lets the kvm-clock keep counting (Firecracker's pause, which does not touch the clock) or
catch up with the host's CLOCK_REALTIME (KVM_CLOCK_REALTIME: Firecracker ``clock_realtime``,
cloud-hypervisor) leaves them where a guest that never stopped would be.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kvmclock.errors import ScenarioFileError
from kvmclock.sim import run_scenario

NS = 1_000_000_000
MS = 1_000_000
BASE = """
name = "matrix"
[run]
duration_s = 5
[[host]]
name = "a"
cpus = 2
tsc_khz = 2000000
[[host]]
name = "b"
cpus = 2
tsc_khz = 2000000
[[vm]]
name = "vm"
host = "a"
vcpus = 2
"""
ACTIONS = {
    # each: the timeline; the guest stops at 1 s and runs again 1 s later (+ naive's gap)
    "pause": (
        '[[timeline]]\nat_s = 1\naction = "pause"\nvm = "vm"\nrecipe = {R}\n'
        '[[timeline]]\nat_s = 2\naction = "resume"\nvm = "vm"\n'
    ),
    "restore": (
        '[[timeline]]\nat_s = 1\naction = "snapshot"\nvm = "vm"\nname = "s"\nrecipe = {R}\n'
        '[[timeline]]\nat_s = 2\naction = "restore"\nsnapshot = "s"\nhost = "b"\nrecipe = {R}\n'
    ),
    "migrate": (
        '[[timeline]]\nat_s = 1\naction = "migrate"\nvm = "vm"\nto_host = "b"\n'
        "recipe = {R}\ndowntime_ms = 1000\n"
    ),
}
GAP_MS = 10
RECIPES = {
    "qemu": '"qemu"',
    "firecracker": '"firecracker"',
    "firecracker-realtime": '{ name = "firecracker", clock_realtime = true }',
    "cloud-hypervisor": '"cloud-hypervisor"',
    "cloud-hypervisor-per-vcpu": '{ name = "cloud-hypervisor", tsc_offsets = "per-vcpu" }',
    "naive": f'{{ name = "naive", gap_ms = {GAP_MS} }}',
}
#: recipe -> the switch it needs (None: every profile has the API)
NEEDS = {
    "qemu": None,
    "firecracker": None,
    "firecracker-realtime": "kvm_clock_realtime",
    "cloud-hypervisor": "kvm_clock_realtime",
    "cloud-hypervisor-per-vcpu": "kvm_clock_realtime",
    "naive": None,
}
HAS = {"gtod": set(), "series": set(), "upstream": {"kvm_clock_realtime"}}


def expected(action: str, recipe: str) -> tuple[int, int]:
    """(downtime_ns, jump_ns of both clocks) the recipe implies."""
    down = NS + (GAP_MS * 1_000_000 if recipe == "naive" and action != "pause" else 0)
    keeps_counting = recipe.startswith(("cloud-hypervisor", "firecracker-realtime")) or (
        recipe == "firecracker" and action == "pause"
    )
    return down, 0 if keeps_counting else -down


@pytest.mark.parametrize("profile", ["gtod", "series", "upstream"])
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("action", list(ACTIONS))
def test_action_recipe_profile(tmp_path: Path, action: str, recipe: str, profile: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(BASE + ACTIONS[action].replace("{R}", RECIPES[recipe]), encoding="utf-8")
    need = NEEDS[recipe]
    if need is not None and need not in HAS[profile]:
        with pytest.raises(ScenarioFileError, match=rf"timeline\[0\]\.recipe: .*{need}"):
            run_scenario(str(path), profile)
        return
    run = run_scenario(str(path), profile)
    (rec,) = run["lifecycle"]
    down, jump = expected(action, recipe)
    assert rec["action"] == {"pause": "resume"}.get(action, action)
    assert rec["vm"] == "vm" and rec["host"] == ("a" if action == "pause" else "b")
    assert rec["downtime_ns"] == down
    assert rec["monotonic_jump_ns"] == rec["realtime_jump_ns"] == jump
    assert rec["monotonic_step_ns"] == rec["realtime_step_ns"] == down + jump
    # saved within the first second: every recipe's TSC writes stay in the 1 s window
    assert rec["masterclock_after"] is True and rec["stable_after"] is True
    assert rec["cross_vcpu_skew_ns"] == 0
    # the run's levels keep the history: the guest's stable bit from the VM's creation at
    # 1 ms, the masterclock of every host that ran it (the source's too, after it left)
    levels = {lv["name"]: lv for lv in run["levels"]}
    stable = levels["vm"]["pvclock_stable_timeline"]
    assert stable[0] == {"t_ns": MS, "on": True} and stable[-1]["on"] is True
    assert levels["a"]["masterclock_timeline"][0]["t_ns"] == MS
    dest = levels[rec["host"]]["masterclock_timeline"]
    assert dest[-1]["on"] is True
    # the stop is a key moment of the guest's level at 1 s
    assert any(
        (m["t_ns"], m["level"]) == (NS, 1) and m["text"].startswith("VM vm: ")
        for m in run["moments"]
    )


@pytest.mark.parametrize("profile", ["gtod", "upstream"])
@pytest.mark.parametrize("recipe", ["qemu", "firecracker", "naive"])
def test_migration_the_run_ends_in(tmp_path: Path, recipe: str, profile: str) -> None:
    """A migration at 1 s with 1 s of downtime in a run of 1.5 s: no restore, a record with
    "completed": false (the guest stopped at 1 s, the run ended 0.5 s into the downtime) and
    a key moment at the end saying so."""
    path = tmp_path / "m.toml"
    path.write_text(
        BASE.replace("duration_s = 5", "duration_s = 1.5")
        + ACTIONS["migrate"].replace("{R}", RECIPES[recipe]),
        encoding="utf-8",
    )
    run = run_scenario(str(path), profile)
    (rec,) = run["lifecycle"]
    assert rec["completed"] is False and rec["t_ns"] is None
    assert rec["stopped_ns"] == NS and rec["monotonic_jump_ns"] is None
    assert "0.500 s into the downtime" in rec["reason"]
    end = [m for m in run["moments"] if m["t_ns"] == 3 * NS // 2]
    assert any(m["level"] == 1 and "VM vm: migrate not completed" in m["text"] for m in end)

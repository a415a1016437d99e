"""Does every profile switch have a test that tells its values apart?

For each switch, every built-in profile gets that switch flipped to another value (the rest
unchanged), and the model's tests run against the flipped table. A switch whose flip leaves
every test green is a switch no test pins. Switches that cannot be flipped alone (a flip breaks
a combination rule of ``kvmclock.profiles.REQUIRES``) are tested explicitly in
tests/test_profiles.py and are listed here as such.

Usage: .venv/bin/python scripts/switch_flips.py [SWITCH ...]   (long: one pytest run per switch)
Exit 0 when every flip was caught.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_upstream_tsc.py",
    "tests/test_upstream_clock.py",
    "tests/test_upstream_guest.py",
    "tests/test_drift.py",
    "tests/test_kvm_rules.py",
    "tests/test_kvm_x86.py",
    "tests/test_scenarios.py",
    "tests/test_timekeeping_rules.py",
    "tests/test_watchdog.py",
    "tests/test_verify_model.py",
    "tests/test_trace.py",
]

# A pytest plugin, loaded with -p, that swaps the profile table before any test runs.
PLUGIN = '''
import os
from types import MappingProxyType

import kvmclock.profiles as P


def pytest_configure(config):
    name = os.environ["KVMCLOCK_FLIP_SWITCH"]
    sw = P.SWITCHES[name]
    flipped = {}
    for pname, prof in P.PROFILES.items():
        other = next(v for v in sw.values if v != prof[name])
        flipped[pname] = P.Profile(prof.name, prof.kernel, prof.description,
                                   {**prof.values, name: other})
    P.PROFILES = MappingProxyType(flipped)
'''


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "python"))
    from kvmclock.profiles import PROFILES, REQUIRES, SWITCHES

    chained = {n for n, *_ in REQUIRES} | {need for _n, _v, need, *_ in REQUIRES}
    names = argv or list(SWITCHES)
    plugin_dir = ROOT / "target" / "switch_flips"
    plugin_dir.mkdir(parents=True, exist_ok=True)
    (plugin_dir / "flip_plugin.py").write_text(PLUGIN)
    survivors: list[str] = []
    for name in names:
        if name in chained:
            print(f"{name:28} chained by a combination rule: tests/test_profiles.py flips it")
            continue
        env = {
            **os.environ,
            "KVMCLOCK_FLIP_SWITCH": name,
            "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(ROOT / "python")]),
        }
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "flip_plugin",
             "-p", "no:cacheprovider", *TESTS],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )
        dt = time.perf_counter() - t0
        last = (p.stdout.strip().splitlines() or ["?"])[-1]
        caught = p.returncode != 0
        flips = ", ".join(
            f"{n}->{_show(next(v for v in SWITCHES[name].values if v != PROFILES[n][name]))}"
            for n in PROFILES
        )
        print(f"{name:28} {'caught' if caught else 'SURVIVED'} ({dt:.0f} s; {flips}): {last}")
        if not caught:
            survivors.append(name)
    print(f"\n{len(survivors)} switch flip(s) survived" + (f": {survivors}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

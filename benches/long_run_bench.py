"""Long runs: a simulated day of the built-in ``nested`` scenario under NO_HZ against 120
simulated seconds with the periodic tick, timed in interleaved rounds in one invocation.

Cases (each run in a fresh child process, so its peak RSS is its own; every child runs
``kvmclock.sim.run_scenario("nested", PROFILE, 0, **params)``):

* ``periodic-120s``: the scenario as shipped (periodic tick at HZ 250, guest clocks sampled
  every 10 ms) for 120 s;
* ``periodic-60s``: the same for 60 s (the reference of the memory target);
* ``nohz-day``: 86,400 s with ``nohz = true`` (every kernel tickless) and ``sample_ms``
  60,000 (one sample per simulated minute); the VMs as shipped: both guest kernels check
  their TSC against kvm-clock with the clocksource watchdog every 0.5 s, which wakes them
  (and their hosts) 345,600 times in the day;
* ``nohz-day-invtsc``: the same day with ``invariant_tsc = true`` (the VMs' CPUID has
  invariant TSC and TSC_ADJUST, as ``-cpu host,+invtsc``): the guests rate kvm-clock 299
  and use the TSC, and under 5.16+ rules (profile upstream) no watchdog checks it, so the
  day is idle but for the samples, the deferment ticks and KVM's 300 s clock sync;
* ``baseline-periodic-120s`` (with ``--baseline TREE``): ``periodic-120s`` on another
  checkout's ``python/`` (the code before issue 14), for the events-per-second ratio.

Fairness: each round runs every case once in an order rotated by one place per round; the
ratios are taken per round and their median is reported with the min and median of each
case's wall time and CPU time of the ``run_scenario`` call alone (``time.process_time``: the
machine is shared, CPU time leaves out the time a child waited for a CPU; interpreter start
and imports are in neither) and the child's peak RSS (``ru_maxrss``, imports included).

Targets (issue 14): ``nohz-day`` wall <= 3x ``periodic-120s`` wall; ``nohz-day`` peak RSS <=
1.5x ``periodic-60s``; events per CPU second of ``periodic-120s`` >= 2x the baseline's.

Usage: ``.venv/bin/python benches/long_run_bench.py [--profile upstream] [--rounds 3]
[--baseline TREE] [--json PATH|-]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DAY_S = 86_400

CHILD = r"""
import json, resource, sys, time
from kvmclock.sim import run_scenario
profile, params = sys.argv[1], json.loads(sys.argv[2])
t0, c0 = time.perf_counter(), time.process_time()
run = run_scenario("nested", profile, 0, **params)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "wall_s": wall,
    "cpu_s": cpu,
    "rss_kb": ru.ru_maxrss,
    "events": run["stats"]["events"],
    "guest_reads": run["stats"]["guest_reads"],
    "end_ns": run["end_ns"],
    "stop_reason": run["stop_reason"],
    "updates": {lv["name"]: lv["timekeeping_updates"] for lv in run["levels"]},
}))
"""


def cases(baseline: str | None) -> dict[str, tuple[str, dict[str, Any]]]:
    """Case name -> (tree whose python/ the child imports, run_scenario params)."""
    here = str(ROOT)
    out: dict[str, tuple[str, dict[str, Any]]] = {
        "periodic-120s": (here, {"duration_s": 120}),
        "periodic-60s": (here, {"duration_s": 60}),
        "nohz-day": (here, {"duration_s": DAY_S, "nohz": True, "sample_ms": 60_000}),
        "nohz-day-invtsc": (
            here,
            {"duration_s": DAY_S, "nohz": True, "sample_ms": 60_000, "invariant_tsc": True},
        ),
    }
    if baseline is not None:
        out["baseline-periodic-120s"] = (baseline, {"duration_s": 120})
    return out


def run_child(tree: str, profile: str, params: dict[str, Any]) -> dict[str, Any]:
    """One case in a fresh interpreter importing ``tree``/python first; the child's own
    timings, CPU time (user + system, from its rusage) and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(Path(tree) / "python"))
    before = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, profile, json.dumps(params)],
        env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"case {params} in {tree} failed:\n{done.stderr}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.perf_counter() - before
    return out


def _median_ratio(rounds: list[dict[str, dict[str, Any]]], a: str, b: str, key: str) -> float:
    return statistics.median(r[a][key] / r[b][key] for r in rounds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--profile", default="upstream", help="profile of every case (upstream)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--baseline", metavar="TREE",
                    help="a checkout of the code before issue 14 (its python/ is imported)")
    ap.add_argument("--json", metavar="PATH|-", help="the raw numbers as JSON")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.baseline is not None and not (Path(args.baseline) / "python" / "kvmclock").is_dir():
        ap.error(f"--baseline {args.baseline}: no python/kvmclock there")
    todo = cases(args.baseline)
    names = list(todo)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    rounds: list[dict[str, dict[str, Any]]] = []
    for i in range(args.rounds):
        order = names[i % len(names):] + names[: i % len(names)]
        got: dict[str, dict[str, Any]] = {}
        for name in order:
            tree, params = todo[name]
            got[name] = r = run_child(tree, args.profile, params)
            print(f"round {i + 1} {name}: wall {r['wall_s']:.2f} s, cpu {r['cpu_s']:.2f} s, "
                  f"rss {r['rss_kb'] / 1024:.1f} MB, {r['events']:,} events", file=sys.stderr)
        rounds.append(got)
    load_after = os.getloadavg()

    def stat(name: str, key: str) -> tuple[float, float]:
        vals = [r[name][key] for r in rounds]
        return min(vals), statistics.median(vals)

    ratios = {
        "day_wall_over_periodic120_wall": _median_ratio(
            rounds, "nohz-day", "periodic-120s", "wall_s"),
        "day_cpu_over_periodic120_cpu": _median_ratio(rounds, "nohz-day", "periodic-120s", "cpu_s"),
        "day_rss_over_periodic60_rss": _median_ratio(rounds, "nohz-day", "periodic-60s", "rss_kb"),
        "invtsc_day_wall_over_periodic120_wall": _median_ratio(
            rounds, "nohz-day-invtsc", "periodic-120s", "wall_s"),
        "invtsc_day_rss_over_periodic60_rss": _median_ratio(
            rounds, "nohz-day-invtsc", "periodic-60s", "rss_kb"),
    }
    if args.baseline is not None:
        # events per CPU second, current / baseline (same events: the same run)
        ratios["periodic120_events_per_cpu_s_over_baseline"] = statistics.median(
            (r["periodic-120s"]["events"] / r["periodic-120s"]["cpu_s"])
            / (r["baseline-periodic-120s"]["events"] / r["baseline-periodic-120s"]["cpu_s"])
            for r in rounds
        )
        ratios["periodic120_events_per_wall_s_over_baseline"] = statistics.median(
            (r["periodic-120s"]["events"] / r["periodic-120s"]["wall_s"])
            / (r["baseline-periodic-120s"]["events"] / r["baseline-periodic-120s"]["wall_s"])
            for r in rounds
        )
    lines = [
        f"Measured {started} with `{' '.join([Path(sys.executable).name, *sys.argv])}`; "
        f"profile `{args.profile}`, {args.rounds} interleaved rounds; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f}.",
        "",
        "| case | simulated s | events | wall s, min / median | CPU s, min / median "
        "| peak RSS MB, min / median | events per CPU s (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        w, c, m = stat(name, "wall_s"), stat(name, "cpu_s"), stat(name, "rss_kb")
        ev = rounds[0][name]["events"]
        eps = statistics.median(r[name]["events"] / r[name]["cpu_s"] for r in rounds)
        sim_s = todo[name][1]["duration_s"]
        lines.append(
            f"| `{name}` | {sim_s:,} | {ev:,} | {w[0]:.2f} / {w[1]:.2f} | {c[0]:.2f} / {c[1]:.2f} "
            f"| {m[0] / 1024:.1f} / {m[1] / 1024:.1f} | {eps:,.0f} |"
        )
    lines += ["", "| ratio (median of the per-round ratios) | value |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in ratios.items()]
    print("\n".join(lines))
    if args.json:
        data = {"started": started, "profile": args.profile, "rounds": rounds,
                "ratios": ratios, "load": [load_before, load_after]}
        text = json.dumps(data, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sweep throughput: runs per second of one sweep of short runs on a local process pool with 1
and with 2 workers, and on a 2-worker Dask ``distributed.LocalCluster`` (process workers, one
thread each), timed in interleaved rounds in one process.

The sweep (default 1,000 runs): scenario ``set-clock`` with ``duration_s`` 1.5 (one run is
about 15 ms of one CPU), ``step_s`` over 40 values and 25 seeds, profile ``upstream``. Every
candidate runs the whole sweep through :func:`kvmclock.sweep.run` with its executor (no
output file: the rows come back), so the timing covers what ``kvmclock sweep`` does per run:
submitting the points (in chunks of several points per executor task, chosen by
``kvmclock.sweep.run`` from the number of points and workers unless ``--chunk-size`` is given),
running them in a worker, shipping their rows back, ordering the rows.

Fairness: the three executors are started before the first round and each is warmed up by
one run per worker (worker start-up and the first import of kvmclock in each worker are not
timed); each round runs every candidate once, the order rotated by one place per round, so a
change of the machine's load hits all of them alike; min and median runs/s over the rounds are
reported, and the ratios are taken per round (2 workers / 1 worker, Dask / local 2 workers)
and their median reported. The rows of every candidate are checked equal to the first
candidate's (all columns but ``wall_s``): the same results whichever executor ran them.

Usage: ``.venv/bin/python benches/sweep_bench.py [--seeds 25] [--values 40] [--rounds 3]
[--chunk-size N] [--json PATH|-]``. Targets (issue 15): 2 workers >= 1.7x one; Dask within
15% of the local pool with the same number of workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from kvmclock.sweep import run
from kvmclock.sweep.api import UNKNOWN_WORKERS
from kvmclock.sweep.execute import chunk_size_for, executor_workers, make_executor

SCENARIO = "set-clock"
DURATION_S = 1.5
PROFILE = "upstream"


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--seeds", type=int, default=25, help="seeds per point (default 25)")
    ap.add_argument("--values", type=int, default=40, help="step_s values (default 40)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--chunk-size", type=int, default=None, metavar="N",
                    help="points per executor task (default: kvmclock.sweep.run's automatic "
                    "size)")
    ap.add_argument("--json", metavar="PATH|-", help="the raw numbers as JSON")
    args = ap.parse_args(argv)
    grid: dict[str, list[Any]] = {"duration_s": [DURATION_S],
                                  "step_s": list(range(1, args.values + 1))}
    n_runs = args.values * args.seeds

    def sweep_with(executor: Executor) -> list[dict[str, Any]]:
        rows = run(SCENARIO, grid=grid, seeds=args.seeds, profiles=[PROFILE],
                   executor=executor, chunk_size=args.chunk_size, table=False)
        assert isinstance(rows, list)
        return rows

    print(f"starting executors (load average {os.getloadavg()[0]:.2f}) ...", file=sys.stderr)
    made: dict[str, tuple[Executor, Callable[[], None]]] = {
        "local pool, 1 worker": make_executor(workers=1),
        "local pool, 2 workers": make_executor(workers=2),
        "Dask LocalCluster, 2 workers": make_executor(workers=2, dask="local"),
    }
    names = list(made)
    # points per task as kvmclock.sweep.run chooses them (or --chunk-size)
    chunks = {n: args.chunk_size or chunk_size_for(n_runs, executor_workers(ex) or UNKNOWN_WORKERS)
              for n, (ex, _close) in made.items()}
    try:
        warm = {"duration_s": [DURATION_S], "step_s": [1]}
        for ex, _close in made.values():  # a few runs per worker, not timed
            run(SCENARIO, grid=warm, seeds=4, profiles=[PROFILE], executor=ex, table=False)
        load_before = os.getloadavg()
        rates: dict[str, list[float]] = {n: [] for n in names}
        # CPU seconds of this process (the coordinator: submitting, collecting, and for Dask
        # the scheduler and client threads) per sweep: taken from the same 2 CPUs
        coord: dict[str, list[float]] = {n: [] for n in names}
        reference: list[dict[str, Any]] | None = None
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                t0, c0 = time.perf_counter(), time.process_time()
                rows = sweep_with(made[name][0])
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                assert len(rows) == n_runs and all(x["status"] == "ok" for x in rows), name
                if reference is None:
                    reference = _comparable(rows)
                assert _comparable(rows) == reference, f"{name}: rows differ"
                rates[name].append(n_runs / wall)
                coord[name].append(cpu)
                print(f"round {r + 1}/{args.rounds}: {name}: {n_runs / wall:.1f} runs/s, "
                      f"coordinator CPU {cpu:.2f} s (load {os.getloadavg()[0]:.2f})",
                      file=sys.stderr)
        load_after = os.getloadavg()
    finally:
        for _ex, close in made.values():
            close()
    one, two, dask = (rates[n] for n in names)
    speedup = [b / a for a, b in zip(one, two, strict=True)]
    dask_ratio = [c / b for b, c in zip(two, dask, strict=True)]
    doc = {
        "scenario": SCENARIO, "duration_s": DURATION_S, "profile": PROFILE,
        "runs_per_sweep": n_runs, "rounds": args.rounds, "chunk_size": chunks,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_before": list(load_before), "load_after": list(load_after),
        "runs_per_s": {n: {"min": min(v), "median": statistics.median(v), "all": v}
                       for n, v in rates.items()},
        "coordinator_cpu_s": {n: {"median": statistics.median(v), "all": v}
                              for n, v in coord.items()},
        "two_workers_over_one": {"median": statistics.median(speedup), "all": speedup},
        "dask_over_local_two": {"median": statistics.median(dask_ratio), "all": dask_ratio},
    }
    print(f"sweep of {n_runs} runs ({SCENARIO}, duration_s {DURATION_S}, {PROFILE}), "
          f"{args.rounds} interleaved rounds, {os.cpu_count()} CPUs, load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("| executor | points per task | runs/s, min / median | coordinator CPU s per sweep, "
          "median |")
    print("| --- | ---: | ---: | ---: |")
    for n, v in rates.items():
        print(f"| {n} | {chunks[n]} | {min(v):.1f} / {statistics.median(v):.1f} | "
              f"{statistics.median(coord[n]):.2f} |")
    print(f"2 workers / 1 worker: {statistics.median(speedup):.2f}x (median of rounds: "
          f"{', '.join(f'{x:.2f}' for x in speedup)}); target >= 1.7x")
    print(f"Dask / local pool, 2 workers: {statistics.median(dask_ratio):.2f} (median of "
          f"rounds: {', '.join(f'{x:.2f}' for x in dask_ratio)}); target >= 0.85")
    if args.json:
        text = json.dumps(doc, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The kvmclock performance record (issue 7), measured in one process, interleaved.

Every section times its candidates in interleaved rounds: each round runs every candidate once,
in an order rotated by one place per round, so a change of the shared machine's load during the
run hits all of them alike; each row reports the min and the median over the rounds.

* batch (benches/compare.py ``batch_section``): ``kvmclock.pvclock_scale_delta_batch`` and
  ``pvclock_read_cycles_batch`` over N (default 10,000,000) random u64 against the same formula
  in C (``-O3 -march=native``, the reference of the ratios), a C copy loop (the bandwidth
  reference), ``memcpy``, the plain ``-O2`` ``unsigned __int128`` loop, chunked exact numpy and
  pure Python; one thread, then kvmclock's default thread count against C split the same way.
  Same input, same pre-faulted output buffer for all; every output is checked equal to
  kvmclock's. Wall time and the calling thread's CPU time.
* scalar (benches/compare.py ``scalar_section``): ns per call of ``pvclock_scale_delta`` and
  ``PvclockVcpuTimeInfo.read_cycles`` against the cheapest calls into the same native module.
* real: ``kvmclock.kvmclock_ns()`` and ``kvmclock.real.kvmclock_ns`` (full pvclock read of this
  machine's ``[vvar_vclock]`` page) and ``kvmclock.pvclock_read`` of a record the real KVM wrote
  into a /dev/kvm VM's memory, against ``time.clock_gettime_ns(time.CLOCK_MONOTONIC)``; rows
  that cannot run here are skipped with the reason.
* simulation: wall time of ``kvmclock.sim.run_scenario("nested", profile)`` (both profiles,
  alternating) and the simulated guest clock reads and world events per wall-clock second.

Prints a Markdown fragment: date, command, machine (CPU model from /proc/cpuinfo), load average
before and after (``uptime``), the tables, and the targets with the measured ratios.
``--json PATH|-`` also writes the raw numbers.

Usage: ``.venv/bin/python scripts/perf_record.py [--n N] [--rounds R] [--json PATH|-]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import shlex
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import kvmclock

ROOT = Path(__file__).resolve().parent.parent


def load_compare() -> ModuleType:
    """benches/compare.py (batch and scalar sections, interleaving helpers), imported."""
    path = ROOT / "benches" / "compare.py"
    spec = importlib.util.spec_from_file_location("kvmclock_benches_compare", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"perf_record.py: cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


COMPARE = load_compare()


def uptime() -> str:
    """The output of ``uptime`` (load averages over 1, 5, 15 minutes)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average: {COMPARE.loadavg()}"


def current_clocksource() -> str:
    try:
        return Path("/sys/devices/system/clocksource/clocksource0/current_clocksource"
                    ).read_text().strip()
    except OSError:
        return "unknown"


def per_call(fn: Callable[[], object], number: int) -> Callable[[], tuple[float, float]]:
    """A function returning (wall, calling-thread CPU) ns per call of ``number`` calls."""
    return COMPARE.per_call_ns(timeit.Timer(fn), number)  # type: ignore[no-any-return]


def real_section(rounds: int, number: int) -> dict[str, Any]:
    """Real kvm-clock reads vs time.clock_gettime_ns(CLOCK_MONOTONIC), interleaved rounds."""
    mono = time.CLOCK_MONOTONIC
    cg = time.clock_gettime_ns
    res: dict[str, Any] = {"clocksource": current_clocksource(), "skipped": {}}
    fns: dict[str, Callable[[], tuple[float, float]]] = {
        "clock_gettime_ns": per_call(lambda: cg(mono), number),
        "lambda_floor": per_call(lambda: None, number),
    }
    with contextlib.ExitStack() as stack:
        try:
            from kvmclock.real import kvmdev
            from kvmclock.real.guest import kvmclock_msr_guest, load, record_gpa, run_to_hlt

            system = stack.enter_context(kvmdev.KvmSystem())
            vm = stack.enter_context(system.create_vm())
            code = kvmclock_msr_guest(record_gpa(0))
            load(vm, code)
            run_to_hlt(vm.create_vcpu(), len(code))
            buf = vm.memory.buffer
            off = record_gpa(0)
            read = kvmclock.pvclock_read
            rdtsc = kvmclock.rdtsc
            read(buf, rdtsc, off)
            fns["pvclock_read_kvm_record"] = per_call(lambda: read(buf, rdtsc, off), number)
        except (OSError, RuntimeError) as exc:
            res["skipped"]["pvclock_read_kvm_record"] = f"no /dev/kvm VM here ({exc})"
        try:
            kvmclock.kvmclock_ns()
        except OSError as exc:
            res["skipped"]["kvmclock_ns"] = f"no readable KVM guest pvclock page here ({exc})"
        else:
            import kvmclock.real as real

            native = kvmclock.kvmclock_ns
            py = real.kvmclock_ns
            fns["kvmclock.kvmclock_ns"] = per_call(lambda: native(), number)
            fns["kvmclock.real.kvmclock_ns"] = per_call(lambda: py(), number)
        for fn in fns.values():  # warm-up
            fn()
        runs = COMPARE.interleave(fns, rounds)
    res.update(COMPARE.summarize_calls(runs, "clock_gettime_ns"))
    res.update(rounds=rounds, number=number)
    return res


def sim_section(rounds: int) -> dict[str, Any]:
    """run_scenario("nested", profile) wall time, both profiles alternating, and guest clock
    reads / events per wall-clock second."""
    try:
        from kvmclock.sim import run_scenario
    except ImportError as exc:
        return {"skipped": f"kvmclock.sim not importable ({exc})"}
    run_scenario("nested", "series", seed=0, duration_s=0.5)  # warm-up: imports, caches
    last: dict[str, dict[str, Any]] = {}

    def one(profile: str) -> Callable[[], object]:
        def run() -> None:
            last[profile] = run_scenario("nested", profile, seed=0)

        return run

    runs = COMPARE.interleave(
        {p: COMPARE.wall_and_cpu_ns(one(p)) for p in ("gtod", "series")}, rounds)
    out: dict[str, Any] = {"rounds": rounds}
    for profile, v in runs.items():
        run = last[profile]
        st = run["stats"]
        wall = COMPARE.stats([x[0] / 1e9 for x in v])
        out[profile] = {
            "wall_s": wall,
            "cpu_s": COMPARE.stats([x[1] / 1e9 for x in v]),
            "simulated_s": run["duration_ns"] / 1e9,
            "guest_reads": st["guest_reads"],
            "events": st["events"],
            "guest_reads_per_s": st["guest_reads"] / wall["median"],
            "events_per_s": st["events"] / wall["median"],
        }
    return out


# ------------------------------------------------------------------ Markdown


def _f(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _row(b: dict[str, Any], key: str) -> dict[str, Any]:
    for r in b["rows"]:
        if r["key"] == key:
            return dict(r)
    raise KeyError(key)


def batch_markdown(b: dict[str, Any]) -> list[str]:
    lines = [
        f"Batch: {b['n']:,} random u64, mul_frac {b['mul_frac']}, shift {b['shift']} "
        f"(read_cycles rows: tsc_timestamp {b['tsc_timestamp']}, system_time "
        f"{b['system_time']}); {b['rounds']} interleaved rounds; every output checked equal "
        f"to kvmclock's. One-thread rows are called on chunks of {b['one_thread_chunk']:,} "
        "elements; thread rows on the whole array in one call. Ratios: to the C same-formula "
        "row of the same group, from the same run.",
        "",
        "| formulation | threads | wall ns/element, min / median | ratio, min / median | "
        "thread CPU ns/element, min / median | ratio of CPU medians |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    group = None
    for r in b["rows"]:
        if r["group"] != group:
            group = r["group"]
            lines.append(f"| *{group}* | | | | | |")
        w, c = r["wall"], r["cpu"]
        label = r["label"]
        if r["key"] == "python_loop":
            label += "; ns per element of that slice"
        cpu = (f"{_f(c['min'])} / {_f(c['median'])}", f"{c['ratio_median']:.2f}x")
        if r["threads"] > 1:
            cpu = ("n/a (several threads)", "")
        lines.append(f"| {label} | {r['threads']} | {_f(w['min'])} / {_f(w['median'])} | "
                     f"{w['ratio_min']:.2f}x / {w['ratio_median']:.2f}x | {cpu[0]} | {cpu[1]} |")
    return lines


def calls_markdown(sec: dict[str, Any], labels: dict[str, str], ref_name: str) -> list[str]:
    """A table of ns per call (wall and thread CPU, min / median) and the ratios to the
    section's reference row."""
    lines = [
        f"| call | wall ns/call, min / median | thread CPU ns/call, min / median | "
        f"ratio to {ref_name}: CPU median / wall min |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, w in sec["wall"].items():
        c = sec["cpu"][key]
        lines.append(f"| {labels.get(key, f'`{key}`')} | {w['min']:.1f} / {w['median']:.1f} | "
                     f"{c['min']:.1f} / {c['median']:.1f} | "
                     f"{sec['cpu_ratio'][key]['median']:.2f}x / "
                     f"{sec['wall_ratio'][key]['min']:.2f}x |")
    return lines


def markdown(r: dict[str, Any]) -> str:
    """The record as a Markdown fragment (date, command, machine, load, tables, targets)."""
    m = r["machine"]
    b = r["batch"]
    lines = [
        f"Measured {r['date']} with `{r['command']}`",
        "",
        f"Machine: {m['model']} (/proc/cpuinfo), {m['cpus']} CPUs, Linux {m['kernel']}, "
        f"Python {m['python']}, numpy {m['numpy']}, {m['cc']}.",
        "",
        f"Load (`uptime`) before: `{r['uptime_before']}`; after: `{r['uptime_after']}`.",
        "",
        *batch_markdown(b),
        "",
    ]
    s = r["scalar"]
    lines += [
        f"Scalar calls: {s['rounds']} interleaved rounds of {s['number']:,} calls each; "
        f"reference: the cheapest call into the native module (`{s['reference']}`).",
        "",
        *calls_markdown(s, {}, "the cheapest"),
    ]
    real = r["real"]
    labels = {
        "clock_gettime_ns": "`time.clock_gettime_ns(time.CLOCK_MONOTONIC)` (reference)",
        "pvclock_read_kvm_record": "`kvmclock.pvclock_read(buf, kvmclock.rdtsc, off)` of a "
        "record the real KVM wrote into a /dev/kvm VM's memory",
        "kvmclock.kvmclock_ns": "`kvmclock.kvmclock_ns()`",
        "kvmclock.real.kvmclock_ns": "`kvmclock.real.kvmclock_ns()`",
        "lambda_floor": "`lambda: None` (floor of the timing loop)",
    }
    lines += [
        "",
        f"Real kvm-clock read: {real['rounds']} interleaved rounds of {real['number']:,} calls "
        f"each; host clocksource `{real['clocksource']}`.",
        "",
        *calls_markdown(real, labels, "`clock_gettime_ns`"),
    ]
    for key, why in real["skipped"].items():
        lines.append(f"| {labels.get(key, key)} | skipped: {why} | | |")
    sim = r["sim"]
    lines.append("")
    if "skipped" in sim:
        lines.append(f"Simulation: skipped: {sim['skipped']}")
    else:
        lines += [
            f"Simulation: `run_scenario(\"nested\", profile, seed=0)`, {sim['rounds']} "
            "interleaved rounds (gtod, series, series, gtod, ...).",
            "",
            "| profile | simulated s | guest clock reads | events | wall s, min / median | "
            "thread CPU s, min / median | reads/s, events/s (median wall) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for profile in ("gtod", "series"):
            v = sim[profile]
            lines.append(f"| `{profile}` | {v['simulated_s']:.0f} | {v['guest_reads']:,} | "
                         f"{v['events']:,} | {v['wall_s']['min']:.3f} / "
                         f"{v['wall_s']['median']:.3f} | {v['cpu_s']['min']:.3f} / "
                         f"{v['cpu_s']['median']:.3f} | {v['guest_reads_per_s']:,.0f}, "
                         f"{v['events_per_s']:,.0f} |")
    lines += ["", *targets_markdown(r)]
    return "\n".join(lines) + "\n"


def _judge(cpu_median: float, wall_min: float, ok: Callable[[float], bool]) -> str:
    """Judged on the thread-CPU median ratio (robust to the other processes on the shared
    machine); the wall-min ratio is quoted and flagged when it disagrees."""
    if ok(cpu_median):
        return "yes" if ok(wall_min) else "yes (wall min: no)"
    return "**no**" if not ok(wall_min) else "**no** (wall min: yes)"


def targets_markdown(r: dict[str, Any]) -> list[str]:
    """The targets of issue 7 with this run's ratios: thread-CPU medians (the verdict), wall
    mins and wall medians."""
    b = r["batch"]

    def get(key: str, kind: str, what: str) -> float:
        return float(_row(b, key)[kind][what])

    def ratio(key: str, ref: str) -> tuple[float, float, str]:
        cm = get(key, "cpu", "median") / get(ref, "cpu", "median")
        wn = get(key, "wall", "min") / get(ref, "wall", "min")
        wm = get(key, "wall", "median") / get(ref, "wall", "median")
        return cm, wn, f"{cm:.2f}x / {wn:.2f}x / {wm:.2f}x"

    lines = [
        "Targets (issue 7). Measured: ratio of thread-CPU medians / of wall mins / of wall "
        "medians. Judged on the thread-CPU medians: the CPU time of the calling thread leaves "
        "out the time it waited for a CPU, which on this shared 2-core machine dominates the "
        "wall-time spread; the wall-min verdict is added where it differs.",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    cm, wn, txt = ratio("kvmclock", "c_int128_O2")
    lines.append(f"| batch, one thread: <= 1.1x the C `-O2` `__int128` loop | {txt} | "
                 f"{_judge(cm, wn, lambda x: x <= 1.1)} |")
    cm, wn, txt = ratio("kvmclock", "c_same")
    lines.append(f"| batch, one thread, stricter: <= 1.1x the same formula in C "
                 f"`-O3 -march=native` | {txt} | {_judge(cm, wn, lambda x: x <= 1.1)} |")
    if any(row["key"] == "kvmclock_mt" for row in b["rows"]):
        t = b["threads"]
        kt = get("kvmclock_mt", "wall", "min")
        km = get("kvmclock_mt", "wall", "median")
        lines.append(
            f"| batch, {t} threads: beating the one-thread C loop is welcome (wall min / "
            f"median) | {kt / get('c_same', 'wall', 'min'):.2f}x / "
            f"{km / get('c_same', 'wall', 'median'):.2f}x C same formula one thread; "
            f"{kt / get('c_same_mt', 'wall', 'min'):.2f}x / "
            f"{km / get('c_same_mt', 'wall', 'median'):.2f}x C same formula {t} threads | "
            f"{'yes' if km < get('c_same', 'wall', 'median') else 'no'} (not required) |")
    cm, wn, txt = ratio("numpy_exact", "kvmclock")
    lines.append(f"| batch: >= 2x faster than chunked exact numpy (numpy / kvmclock) | {txt} | "
                 f"{_judge(cm, wn, lambda x: x >= 2)} |")

    def calls(sec: dict[str, Any], name: str) -> tuple[float, float, str]:
        cm = sec["cpu_ratio"][name]["median"]
        wn = sec["wall_ratio"][name]["min"]
        wm = sec["wall_ratio"][name]["median"]
        return cm, wn, f"{cm:.2f}x / {wn:.2f}x / {wm:.2f}x"

    s = r["scalar"]
    for name in ("pvclock_scale_delta(d, m, s)", "PvclockVcpuTimeInfo.read_cycles(tsc)"):
        cm, wn, txt = calls(s, name)
        lines.append(f"| scalar `{name}`: <= 1.5x the cheapest native call | {txt} | "
                     f"{_judge(cm, wn, lambda x: x <= 1.5)} |")
    real = r["real"]
    for name in ("kvmclock.kvmclock_ns", "kvmclock.real.kvmclock_ns"):
        if name in real["cpu"]:
            cm, wn, txt = calls(real, name)
            lines.append(f"| real read `{name}()`: no slower than `clock_gettime_ns` | {txt} "
                         f"| {_judge(cm, wn, lambda x: x <= 1.0)} |")
        else:
            lines.append(f"| real read `{name}()`: no slower than `clock_gettime_ns` | "
                         "skipped here | not measured |")
    sim = r["sim"]
    if "skipped" not in sim:
        worst = max(sim[p]["wall_s"]["median"] for p in ("gtod", "series"))
        lines.append(f"| simulation: `nested` finishes in a few seconds | {worst:.2f} s wall "
                     f"(slower profile, median) | {_met(worst < 5)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure everything and print the Markdown fragment."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="batch size (u64 values)")
    ap.add_argument("--rounds", type=int, default=31, help="interleaved rounds per section")
    ap.add_argument("--python-n", type=int, default=200_000, help="pure-Python slice")
    ap.add_argument("--number", type=int, default=100_000, help="scalar calls per round")
    ap.add_argument("--sim-rounds", type=int, default=5, help="rounds of both sim profiles")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH|-", help="also write the raw numbers as JSON")
    a = ap.parse_args(argv)
    if min(a.n, a.rounds, a.python_n, a.number, a.sim_rounds) < 1:
        ap.error("--n, --rounds, --python-n, --number and --sim-rounds must be positive")
    cmd = " ".join(shlex.quote(x) for x in
                   [".venv/bin/python", "scripts/perf_record.py",
                    *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": cmd,
        "machine": {**COMPARE.machine(),
                    "kvmclock": getattr(kvmclock, "__version__", "editable")},
        "uptime_before": uptime(),
    }
    result["batch"] = COMPARE.batch_section(a.n, a.rounds, min(a.python_n, a.n), a.seed)
    result["scalar"] = COMPARE.scalar_section(a.rounds, a.number)
    result["real"] = real_section(a.rounds, a.number)
    result["sim"] = sim_section(a.sim_rounds)
    result["uptime_after"] = uptime()
    sys.stdout.write(markdown(result))
    if a.json == "-":
        json.dump(result, sys.stdout, indent=2)
        print()
    elif a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

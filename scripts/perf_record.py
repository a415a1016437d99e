"""The kvmclock performance record (SPEC.md section 8, issue 7), measured in one process.

Sections (medians of several repetitions; compare ratios, the machines are shared 2-core VMs):

* batch: ``kvmclock.pvclock_scale_delta_batch`` over N (default 10,000,000) random u64 vs a C
  ``-O2`` loop with ``unsigned __int128`` (benches/c/scale_delta.c built with the system ``cc``),
  the chunked exact numpy formulation and pure Python (timed on a slice, extrapolated), with
  ``memcpy`` as the floor -- all from benches/compare.py, which also checks that every
  formulation gives identical results -- plus the batch split in halves over two threads (the
  function releases the GIL) to use both cores;
* scalar: ``pvclock_scale_delta`` and ``PvclockVcpuTimeInfo.read_cycles`` against the cheapest
  call into the same native module (benches/compare.py);
* real: ``kvmclock.kvmclock_ns()`` and ``kvmclock.real.kvmclock_ns`` (full pvclock read of this
  machine's ``[vvar_vclock]`` page) against ``time.clock_gettime_ns(time.CLOCK_MONOTONIC)``;
  skipped with the reason where the page is missing;
* simulation: wall time of ``kvmclock.sim.run_scenario("nested", profile)`` and the simulated
  guest clock reads and world events per wall-clock second, both profiles.

Prints a Markdown fragment: the machine, the command, the date, and one table with the SPEC §8
target beside each ratio. ``--json PATH|-`` also writes the raw numbers.

Usage: ``.venv/bin/python scripts/perf_record.py [--n N] [--repeat R] [--json PATH|-]``
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import kvmclock
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def load_compare() -> ModuleType:
    """benches/compare.py (the benches engineer's batch and scalar sections), imported."""
    path = ROOT / "benches" / "compare.py"
    spec = importlib.util.spec_from_file_location("kvmclock_benches_compare", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"perf_record.py: cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine() -> dict[str, Any]:
    """lscpu model name and CPU count, kernel, Python, numpy, cc."""
    info: dict[str, Any] = {"kernel": platform.release(), "python": sys.version.split()[0],
                            "numpy": np.__version__, "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["model"] = value.strip()
            elif key.strip() == "CPU(s)":
                info["cpus"] = int(value.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        info.setdefault("model", platform.processor() or "unknown")
    try:
        cc = os.environ.get("CC", "cc")
        info["cc"] = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                    check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        info["cc"] = "unknown"
    info["kvmclock"] = getattr(kvmclock, "__version__", "editable")
    return info


def median_ns(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(statistics.median(times))


def per_call_ns(fn: Callable[[], object], repeat: int, number: int) -> float:
    return statistics.median(timeit.repeat(fn, repeat=repeat, number=number)) / number * 1e9


ONE_CORE_CHUNK = (1 << 20) - 1
"""The native batch splits arrays of >= 2**20 elements over two threads (rust/core/src/batch.rs
PARALLEL_THRESHOLD, KVMCLOCK_BATCH_THREADS, read once per process); chunks one element shorter
run on the calling thread only, which gives the one-core number in the same process."""


def _buf(a: np.ndarray) -> Any:
    """numpy arrays are buffers; the .pyi's ``Buffer`` does not accept them on Python 3.11."""
    return a


def one_core_batch(n: int, repeat: int, seed: int) -> dict[str, Any]:
    """The same batch as benches/compare.py converted on one core (chunks below the split
    threshold, called in sequence) and by the default call (two threads for large arrays);
    both results must be identical."""
    mul, shift = 4090445043, -1
    rng = np.random.default_rng(seed)
    deltas = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    out1 = np.empty(n, dtype=np.uint64)
    out2 = np.empty(n, dtype=np.uint64)
    f = kvmclock.pvclock_scale_delta_batch

    def one_core() -> None:
        for i in range(0, n, ONE_CORE_CHUNK):
            f(_buf(deltas[i:i + ONE_CORE_CHUNK]), mul, shift, out=_buf(out1[i:i + ONE_CORE_CHUNK]))

    def default() -> None:
        f(_buf(deltas), mul, shift, out=_buf(out2))

    one_ns = median_ns(one_core, repeat)
    two_ns = median_ns(default, repeat)
    assert np.array_equal(out1, out2), "one-core chunks differ from the default call"
    return {"one_core_ns_per_element": one_ns / n, "default_ns_per_element": two_ns / n,
            "threads_env": os.environ.get("KVMCLOCK_BATCH_THREADS")}


def kvm_record_read(repeat: int, number: int) -> float | None:
    """ns per ``kvmclock.pvclock_read(guest_memory, kvmclock.rdtsc, offset)`` of a record the
    real KVM wrote (a /dev/kvm VM whose guest enabled kvmclock): the same version-retry read
    and rdtsc as a guest kvm-clock read, on a live KVM-written page. None without /dev/kvm."""
    try:
        from kvmclock.real import kvmdev
        from kvmclock.real.guest import kvmclock_msr_guest, load, record_gpa, run_to_hlt

        with kvmdev.KvmSystem() as system, system.create_vm() as vm:
            code = kvmclock_msr_guest(record_gpa(0))
            load(vm, code)
            run_to_hlt(vm.create_vcpu(), len(code))
            buf = vm.memory.buffer
            off = record_gpa(0)
            read = kvmclock.pvclock_read
            rdtsc = kvmclock.rdtsc
            return per_call_ns(lambda: read(buf, rdtsc, off), repeat, number)
    except (OSError, RuntimeError):
        return None


def interleaved_ns(fns: dict[str, Callable[[], object]], repeat: int,
                   number: int) -> dict[str, float]:
    """Median ns per call of each function, the functions timed in turn within each round (so
    a change of the host's clock regime during the run hits all of them alike)."""
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            runs[k].append(timeit.timeit(fn, number=number) / number * 1e9)
    return {k: statistics.median(v) for k, v in runs.items()}


def current_clocksource() -> str:
    try:
        return Path("/sys/devices/system/clocksource/clocksource0/current_clocksource"
                    ).read_text().strip()
    except OSError:
        return "unknown"


def real_section(repeat: int, number: int) -> dict[str, Any]:
    """Real kvm-clock reads vs time.clock_gettime_ns(CLOCK_MONOTONIC), interleaved."""
    mono = time.CLOCK_MONOTONIC
    cg = time.clock_gettime_ns
    res: dict[str, Any] = {"clocksource": current_clocksource()}
    proxy = kvm_record_read(repeat, number)
    if proxy is not None:
        res["pvclock_read_kvm_record"] = proxy
    fns: dict[str, Callable[[], object]] = {"clock_gettime_ns": lambda: cg(mono),
                                            "lambda_floor": lambda: None}
    try:
        kvmclock.kvmclock_ns()
    except OSError as exc:
        res["skipped"] = f"no readable KVM guest pvclock page here ({exc})"
    else:
        import kvmclock.real as real

        native = kvmclock.kvmclock_ns
        py = real.kvmclock_ns
        fns["kvmclock.kvmclock_ns"] = lambda: native()
        fns["kvmclock.real.kvmclock_ns"] = lambda: py()
    res.update(interleaved_ns(fns, repeat, number))
    return res


def sim_section(repeat: int) -> dict[str, Any]:
    """run_scenario("nested", profile) wall time and guest clock reads / events per second."""
    try:
        from kvmclock.sim import run_scenario
    except ImportError as exc:
        return {"skipped": f"kvmclock.sim not importable ({exc})"}
    out: dict[str, Any] = {}
    run_scenario("nested", "series", seed=0, duration_s=0.5)  # warm-up: imports, caches
    for profile in ("gtod", "series"):
        walls = []
        run: dict[str, Any] = {}
        for _ in range(repeat):
            t0 = time.perf_counter()
            run = run_scenario("nested", profile, seed=0)
            walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls)
        stats = run["stats"]
        out[profile] = {
            "wall_s": wall,
            "simulated_s": run["duration_ns"] / 1e9,
            "guest_reads": stats["guest_reads"],
            "events": stats["events"],
            "guest_reads_per_s": stats["guest_reads"] / wall,
            "events_per_s": stats["events"] / wall,
        }
    return out


def _fmt_ns(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(r: dict[str, Any]) -> str:
    """The record as a Markdown fragment (machine, command, date, table)."""
    m = r["machine"]
    b = r["batch"]
    nse = b["ns_per_element"]
    c = nse["c_int128_O2"]
    k = nse["kvmclock_batch"]
    oc = r["one_core"]
    k1 = oc["one_core_ns_per_element"]
    kd = oc["default_ns_per_element"]
    threads = oc["threads_env"] or "2 (default)"
    lines = [
        f"Measured {r['date']} with `{r['command']}`",
        "",
        f"Machine: {m.get('model', 'unknown')}, {m['cpus']} CPUs, Linux {m['kernel']}, "
        f"Python {m['python']}, numpy {m['numpy']}, {m['cc']}.",
        "",
        "| measurement | median | ratio | SPEC §8 target | met |",
        "| --- | ---: | ---: | --- | --- |",
        f"| **batch** `pvclock_scale_delta` over {b['n']:,} u64 (ns/element) | | | | |",
        f"| C `-O2` loop, `unsigned __int128`, one core | {_fmt_ns(c)} | 1.00x C | reference | |",
        f"| `memcpy` of the same data (floor) | {_fmt_ns(nse['memcpy'])} | "
        f"{nse['memcpy'] / c:.2f}x C | | |",
        f"| `kvmclock.pvclock_scale_delta_batch` on one core (chunks < 2**20) | {_fmt_ns(k1)} | "
        f"{k1 / c:.2f}x C | <= 1.1x C | {_met(k1 / c <= 1.1)} |",
        f"| `kvmclock.pvclock_scale_delta_batch` default call ({threads} threads for >= 2**20 "
        f"elements; benches/compare.py) | {_fmt_ns(k)} | {k / c:.2f}x C | beating C with "
        f"both cores welcome | {_met(k < c)} |",
        f"| same default call, second measurement | {_fmt_ns(kd)} | {kd / c:.2f}x C | | |",
        f"| chunked exact numpy | {_fmt_ns(nse['numpy_exact_chunked'])} | "
        f"{nse['numpy_exact_chunked'] / c:.2f}x C; kvmclock "
        f"{nse['numpy_exact_chunked'] / k1:.2f}x faster on one core, "
        f"{b['kvmclock_speedup_vs_numpy']:.2f}x by default | kvmclock >= 2x faster | "
        f"{_met(nse['numpy_exact_chunked'] / k1 >= 2)} |",
        f"| pure Python (timed on {b['python_slice']:,}, extrapolated) | "
        f"{_fmt_ns(nse['python_loop_extrapolated'])} | "
        f"{nse['python_loop_extrapolated'] / c:.0f}x C | | |",
    ]
    s = r["scalar"]
    ns = s["ns_per_call"]
    rat = s["ratio_to_cheapest_native"]
    cheapest = s["cheapest_native_call"]
    lines.append(f"| **scalar calls** (ns/call; ratio to the cheapest native call, "
                 f"`{cheapest}`) | | | | |")
    for name in ns:
        target, met = "", ""
        if name in ("pvclock_scale_delta(d, m, s)", "PvclockVcpuTimeInfo.read_cycles(tsc)"):
            target, met = "<= 1.5x cheapest", _met(rat[name] <= 1.5)
        lines.append(f"| `{name}` | {ns[name]:.1f} | {rat[name]:.2f}x | {target} | {met} |")
    real = r["real"]
    cg = real["clock_gettime_ns"]
    lines.append(f"| **real kvm-clock read** (ns/call; ratio to `clock_gettime_ns`; host "
                 f"clocksource {real['clocksource']}) | | | | |")
    lines.append(f"| `time.clock_gettime_ns(time.CLOCK_MONOTONIC)` | {cg:.1f} | 1.00x | "
                 "reference | |")
    if "pvclock_read_kvm_record" in real:
        v = real["pvclock_read_kvm_record"]
        lines.append(f"| `kvmclock.pvclock_read(buf, kvmclock.rdtsc, off)` of a record the "
                     f"real KVM wrote into a /dev/kvm VM's memory (proxy for a guest read) | "
                     f"{v:.1f} | {v / cg:.2f}x | (<= 1.0x for the real read) | |")
    if "skipped" in real:
        lines.append(f"| `kvmclock.real.kvmclock_ns()` | skipped: {real['skipped']} | | | |")
    else:
        for name in ("kvmclock.kvmclock_ns", "kvmclock.real.kvmclock_ns"):
            v = real[name]
            lines.append(f"| `{name}()` | {v:.1f} | {v / cg:.2f}x | <= 1.0x | "
                         f"{_met(v <= cg)} |")
    lines.append(f"| `lambda: None` (floor of the timing loop) | "
                 f"{real['lambda_floor']:.1f} | {real['lambda_floor'] / cg:.2f}x | | |")
    sim = r["sim"]
    lines.append("| **simulation** `run_scenario(\"nested\", profile, seed=0)` | | | | |")
    if "skipped" in sim:
        lines.append(f"| simulation | skipped: {sim['skipped']} | | | |")
    else:
        for profile, v in sim.items():
            lines.append(
                f"| `{profile}`: {v['simulated_s']:.0f} simulated s, {v['guest_reads']:,} "
                f"guest clock reads, {v['events']:,} events | {v['wall_s']:.2f} s wall | "
                f"{v['guest_reads_per_s']:,.0f} reads/s, {v['events_per_s']:,.0f} events/s | "
                f"finishes in a few seconds | {_met(v['wall_s'] < 5)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure everything and print the Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="batch size (u64 values)")
    ap.add_argument("--repeat", type=int, default=7, help="repetitions per timing")
    ap.add_argument("--python-n", type=int, default=200_000, help="pure-Python slice")
    ap.add_argument("--number", type=int, default=200_000, help="scalar calls per repetition")
    ap.add_argument("--sim-repeat", type=int, default=3, help="runs per simulation profile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH|-", help="also write the raw numbers as JSON")
    a = ap.parse_args(argv)
    if min(a.n, a.repeat, a.python_n, a.number, a.sim_repeat) < 1:
        ap.error("--n, --repeat, --python-n, --number and --sim-repeat must be positive")
    compare = load_compare()
    cmd = " ".join(shlex.quote(x) for x in
                   [".venv/bin/python", "scripts/perf_record.py",
                    *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": cmd,
        "machine": machine(),
    }
    result["batch"] = compare.batch_section(a.n, a.repeat, min(a.python_n, a.n), a.seed)
    result["one_core"] = one_core_batch(a.n, a.repeat, a.seed)
    result["scalar"] = compare.scalar_section(a.repeat, a.number)
    result["real"] = real_section(a.repeat, a.number)
    result["sim"] = sim_section(a.sim_repeat)
    sys.stdout.write(markdown(result))
    if a.json == "-":
        json.dump(result, sys.stdout, indent=2)
        print()
    elif a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

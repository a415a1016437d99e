"""Interleaved one-process comparison of batch pvclock conversions and scalar call costs.

Batch section: N (default 10,000,000) random u64 values converted by

* ``c_same``: the formula of rust/core/src/batch.rs written out in C (benches/c/scale_delta.c
  ``scale_same``: the 64x32 product split into two 32x32->64 products that vectorise), built
  here with the system ``cc -O3 -march=native``: **the reference of the ratios** (below);
* ``c_copy_loop``: ``out[i] = in[i]`` in C, same flags: the same memory traffic as a
  conversion without the arithmetic, the bandwidth reference (also built with 256-bit vectors,
  ``c_copy_loop_256``); ``memcpy`` (glibc) as an extra row;
* ``c_int128_O2``: the plain ``-O2`` loop with an ``unsigned __int128`` product;
* ``kvmclock``: ``kvmclock.pvclock_scale_delta_batch`` (and ``pvclock_read_cycles_batch``
  against ``c_same`` with the tsc_timestamp / system_time terms);
* ``numpy_exact``: chunked exact numpy (32-bit halves so no product overflows);
* ``python_loop``: plain Python ints, timed on a slice (ns per element of the slice);
* and, when kvmclock splits the array over threads (N >= 2**20; ``KVMCLOCK_BATCH_THREADS``,
  default 2, capped at the CPU count), the same formulations with that many threads:
  kvmclock's default call against ``c_same`` and ``c_copy_loop`` split the same way (first
  range on the calling thread, the others on threads created for the call).

Fairness rules: every formulation reads the same input array and writes the same output array,
allocated once and written before any timing (so no formulation pays the page faults of a fresh
allocation); one-thread rows are all called on the same consecutive chunks of 2**20 - 1
elements (kvmclock uses one thread below 2**20 elements), the thread rows on the whole array.
A verification pass before and after the timing asserts that every formulation's output equals
kvmclock's (the copies: the input) element for element. Timings are interleaved: each round runs
every formulation once, the order rotated by one place per round; min and median over the
rounds are reported, and every ratio divides by the C same-formula row with the same thread
count (and the same function) from the same run.

Scalar section: ns per call of the scalar functions and of the cheapest calls into the same
native module, interleaved the same way.

Every measurement is taken twice: wall time (``time.perf_counter_ns``) and the CPU time of the
calling thread (``time.thread_time_ns``), which leaves out the time the thread waited for a CPU
while other processes ran (the machines are shared); for the thread rows only wall time means
anything.

Usage: ``.venv/bin/python benches/compare.py [--n N] [--rounds R] [--json PATH|-]``
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import kvmclock
import numpy as np

HERE = Path(__file__).resolve().parent
C_SOURCE = HERE / "c" / "scale_delta.c"
C_FLAGS_NATIVE = ("-O3", "-march=native")
C_FLAGS_NATIVE_256 = (*C_FLAGS_NATIVE, "-mprefer-vector-width=256")
C_FLAGS_O2 = ("-O2",)

# The real-host pair: kvm_get_time_scale(NSEC_PER_SEC, 2.1 GHz) = (-1, 4090445043).
MUL_FRAC = 4090445043
SHIFT = -1
TSC_TIMESTAMP = 10**12
SYSTEM_TIME = 5 * 10**9
CHUNK = 8192  # numpy chunk: 3 x 64 KiB temporaries stay in L2
PARALLEL_THRESHOLD = 1 << 20
"""kvmclock splits arrays of >= 2**20 elements over threads (rust/core/src/batch.rs
PARALLEL_THRESHOLD)."""
ONE_THREAD_CHUNK = PARALLEL_THRESHOLD - 1
"""Chunks one element shorter than the threshold run on the calling thread only."""
SENTINEL = 0x5A5A_5A5A_5A5A_5A5A
T = TypeVar("T")


# ------------------------------------------------------------------ helpers


def interleave(fns: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Run ``rounds`` rounds; each round calls every function once, in the order of ``fns``
    rotated by one place per round (round r starts with the r-th function). Each function
    returns its own measurement; the lists of measurements are returned by name."""
    names = list(fns)
    runs: dict[str, list[T]] = {k: [] for k in names}
    for r in range(rounds):
        start = r % len(names)
        for name in names[start:] + names[:start]:
            runs[name].append(fns[name]())
    return runs


def wall_and_cpu_ns(fn: Callable[[], object]) -> Callable[[], tuple[float, float]]:
    """A function returning (wall time, CPU time of the calling thread) of one ``fn()`` in ns.
    The thread CPU time leaves out the time the thread waited for a CPU (other processes);
    it is the cost on the calling thread only (helper threads are not in it)."""

    def run() -> tuple[float, float]:
        w0 = time.perf_counter_ns()
        c0 = time.thread_time_ns()
        fn()
        c1 = time.thread_time_ns()
        w1 = time.perf_counter_ns()
        return float(w1 - w0), float(c1 - c0)

    return run


def stats(values: list[float], scale: float = 1.0) -> dict[str, float]:
    """min and median of ``values`` divided by ``scale``."""
    return {"min": min(values) / scale, "median": statistics.median(values) / scale}


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (as ``uptime`` shows them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> str:
    """``model name`` of the first CPU in /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cc_path() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("compare.py: no C compiler (cc) found")
    return cc


def machine() -> dict[str, Any]:
    """CPU model (/proc/cpuinfo), CPU count, kernel, Python, numpy, C compiler."""
    try:
        cc = subprocess.run([cc_path(), "--version"], capture_output=True, text=True,
                            check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        cc = "unknown"
    return {"model": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": sys.version.split()[0], "numpy": np.__version__, "cc": cc}


def batch_threads() -> int:
    """Threads kvmclock uses for arrays of >= 2**20 elements: ``KVMCLOCK_BATCH_THREADS``
    (default 2, values < 1 or unparsable mean 2) capped at the CPU count and 8, as
    rust/bindings/src/functions.rs batch_threads and rust/core/src/batch.rs threads_for."""
    try:
        t = int(os.environ.get("KVMCLOCK_BATCH_THREADS", "").strip())
    except ValueError:
        t = 2
    if t < 1:
        t = 2
    return 1 if t <= 1 else max(1, min(t, os.cpu_count() or 1, 8))


# ------------------------------------------------------------------ formulations


def build_c_library(workdir: Path, flags: tuple[str, ...], tag: str) -> ctypes.CDLL:
    """Compile benches/c/scale_delta.c with the system cc and ``flags`` and load it."""
    lib_path = workdir / f"libscale_delta_{tag}.so"
    subprocess.run([cc_path(), *flags, "-shared", "-fPIC", "-pthread", "-o", str(lib_path),
                    str(C_SOURCE)], check=True)
    lib = ctypes.CDLL(str(lib_path))
    vp, sz, u32, i32, u64 = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_int,
                             ctypes.c_uint64)
    sigs: dict[str, list[Any]] = {
        "scale_same": [vp, vp, sz, u32, i32, u64, u64],
        "scale_same_mt": [vp, vp, sz, u32, i32, u64, u64, i32],
        "scale_delta_int128": [vp, vp, sz, u32, i32],
        "copy_loop": [vp, vp, sz],
        "copy_loop_mt": [vp, vp, sz, i32],
        "copy_memcpy": [vp, vp, sz],
    }
    for name, argtypes in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = None
    return lib


def numpy_exact(deltas: np.ndarray, mul: int, shift: int, out: np.ndarray) -> np.ndarray:
    """Exact pvclock_scale_delta in numpy: 32-bit halves of the pre-shifted delta times mul."""
    m = np.uint64(mul)
    mask = np.uint64(0xFFFF_FFFF)
    s32 = np.uint64(32)
    sh = np.uint64(abs(shift))
    d = np.empty(CHUNK, dtype=np.uint64)
    t = np.empty(CHUNK, dtype=np.uint64)
    for start in range(0, len(deltas), CHUNK):
        stop = min(start + CHUNK, len(deltas))
        n = stop - start
        dc, tc, oc = d[:n], t[:n], out[start:stop]
        if shift < 0:
            np.right_shift(deltas[start:stop], sh, out=dc)
        else:
            np.left_shift(deltas[start:stop], sh, out=dc)
        np.bitwise_and(dc, mask, out=tc)
        np.multiply(tc, m, out=tc)  # low half * mul < 2**64
        np.right_shift(tc, s32, out=tc)
        np.right_shift(dc, s32, out=dc)
        np.multiply(dc, m, out=dc)  # high half * mul < 2**64
        np.add(dc, tc, out=oc)  # (d*mul) >> 32 < 2**64: no carry lost
    return out


def python_loop(values: list[int], mul: int, shift: int) -> list[int]:
    """pvclock_scale_delta in plain Python ints (exact: big-int product, then >> 32)."""
    mask = (1 << 64) - 1
    if shift < 0:
        s = -shift
        return [((d >> s) * mul >> 32) & mask for d in values]
    return [(((d << shift) & mask) * mul >> 32) & mask for d in values]


@dataclass(frozen=True)
class Row:
    """One batch formulation: its key, table label, group, threads and reference row."""

    key: str
    label: str
    group: str
    threads: int
    ref: str
    expect: str  # "scale_delta", "read_cycles", "copy" or "python"


def batch_section(n: int, rounds: int, py_n: int, seed: int) -> dict[str, Any]:
    """Interleaved timing of the batch formulations (module docstring); asserts equal outputs."""
    load_before = loadavg()
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    out = np.empty(n, dtype=np.uint64)
    out.fill(SENTINEL)  # write every page now: no formulation pays the first-touch faults
    threads = batch_threads()
    info = kvmclock.PvclockVcpuTimeInfo(
        version=2, tsc_timestamp=TSC_TIMESTAMP, system_time=SYSTEM_TIME,
        tsc_to_system_mul=MUL_FRAC, tsc_shift=SHIFT, flags=1,
    )
    sd = kvmclock.pvclock_scale_delta_batch
    rc = kvmclock.pvclock_read_cycles_batch
    expected = {
        "scale_delta": np.asarray(sd(src, MUL_FRAC, SHIFT)),
        "read_cycles": np.asarray(rc(info, src)),
        "copy": src,
    }
    py_values = [int(x) for x in src[:py_n]]

    spans = [(i, min(i + ONE_THREAD_CHUNK, n)) for i in range(0, n, ONE_THREAD_CHUNK)]
    a_in, a_out = src.ctypes.data, out.ctypes.data
    cspans = [(a_in + 8 * i, a_out + 8 * i, j - i) for i, j in spans]
    kspans = [(src[i:j], out[i:j]) for i, j in spans]

    rows: list[Row] = []
    fns: dict[str, Callable[[], object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        nat = build_c_library(Path(tmp), C_FLAGS_NATIVE, "native")
        n256 = build_c_library(Path(tmp), C_FLAGS_NATIVE_256, "native256")
        o2 = build_c_library(Path(tmp), C_FLAGS_O2, "o2")

        def add(row: Row, fn: Callable[[], object]) -> None:
            rows.append(row)
            fns[row.key] = fn

        g1 = "one thread, pvclock_scale_delta"
        add(Row("c_same", "C `scale_same` (formula of batch.rs), `-O3 -march=native`", g1, 1,
                "c_same", "scale_delta"),
            lambda: [nat.scale_same(a, b, m, MUL_FRAC, SHIFT, 0, 0) for a, b, m in cspans])
        add(Row("c_copy_loop", "C copy loop `out[i] = in[i]`, `-O3 -march=native` "
                "(bandwidth reference)", g1, 1, "c_same", "copy"),
            lambda: [nat.copy_loop(a, b, m) for a, b, m in cspans])
        add(Row("c_copy_loop_256", "same copy loop, `-O3 -march=native "
                "-mprefer-vector-width=256` (256-bit vectors, as kvmclock's AVX2 loop)", g1, 1,
                "c_same", "copy"),
            lambda: [n256.copy_loop(a, b, m) for a, b, m in cspans])
        add(Row("memcpy", "glibc `memcpy` of the same data", g1, 1, "c_same", "copy"),
            lambda: [nat.copy_memcpy(a, b, m) for a, b, m in cspans])
        add(Row("c_int128_O2", "C plain loop, `unsigned __int128` product, `-O2`", g1, 1,
                "c_same", "scale_delta"),
            lambda: [o2.scale_delta_int128(a, b, m, MUL_FRAC, SHIFT) for a, b, m in cspans])
        add(Row("kvmclock", "`kvmclock.pvclock_scale_delta_batch(x, m, s, out=)`", g1, 1,
                "c_same", "scale_delta"),
            lambda: [sd(x, MUL_FRAC, SHIFT, out=y) for x, y in kspans])
        add(Row("numpy_exact", "chunked exact numpy", g1, 1, "c_same", "scale_delta"),
            lambda: numpy_exact(src, MUL_FRAC, SHIFT, out))
        py_out: list[list[int]] = [[]]

        def run_python() -> None:
            py_out[0] = python_loop(py_values, MUL_FRAC, SHIFT)

        add(Row("python_loop", f"pure Python (timed on {py_n:,} values)", g1, 1, "c_same",
                "python"), run_python)
        g2 = "one thread, __pvclock_read_cycles"
        add(Row("c_same_rc", "C `scale_same` with tsc_timestamp / system_time, "
                "`-O3 -march=native`", g2, 1, "c_same_rc", "read_cycles"),
            lambda: [nat.scale_same(a, b, m, MUL_FRAC, SHIFT, TSC_TIMESTAMP, SYSTEM_TIME)
                     for a, b, m in cspans])
        add(Row("kvmclock_rc", "`kvmclock.pvclock_read_cycles_batch(info, x, out=)`", g2, 1,
                "c_same_rc", "read_cycles"),
            lambda: [rc(info, x, out=y) for x, y in kspans])
        if threads > 1 and n >= PARALLEL_THRESHOLD:
            g3 = f"{threads} threads, pvclock_scale_delta, whole array in one call"
            add(Row("c_same_mt", f"C `scale_same`, {threads} threads (pthreads)", g3, threads,
                    "c_same_mt", "scale_delta"),
                lambda: nat.scale_same_mt(a_in, a_out, n, MUL_FRAC, SHIFT, 0, 0, threads))
            add(Row("c_copy_loop_mt", f"C copy loop, {threads} threads (bandwidth reference)",
                    g3, threads, "c_same_mt", "copy"),
                lambda: nat.copy_loop_mt(a_in, a_out, n, threads))
            add(Row("kvmclock_mt", f"`kvmclock.pvclock_scale_delta_batch` default call "
                    f"({threads} threads)", g3, threads, "c_same_mt", "scale_delta"),
                lambda: sd(src, MUL_FRAC, SHIFT, out=out))
        def verify(when: str) -> None:
            for row in rows:
                out.fill(SENTINEL)
                fns[row.key]()
                if row.expect == "python":
                    ok = py_out[0] == [int(x) for x in expected["scale_delta"][:py_n]]
                else:
                    ok = bool(np.array_equal(out, expected[row.expect]))
                assert ok, f"{row.key} output differs from kvmclock's ({row.expect}, {when})"

        verify("before timing")  # also the warm-up round
        runs = interleave({k: wall_and_cpu_ns(fn) for k, fn in fns.items()}, rounds)
        verify("after timing")
    load_after = loadavg()

    # An independent spot check: the exact 128-bit product in Python ints, element by element.
    for i in range(0, n, max(1, n // 997)):
        d = int(src[i]) >> -SHIFT
        assert int(expected["scale_delta"][i]) == (d * MUL_FRAC >> 32) & (2**64 - 1)

    res_rows = []
    for row in rows:
        size = py_n if row.key == "python_loop" else n
        res: dict[str, Any] = {**asdict(row), "elements": size}
        for kind, idx in (("wall", 0), ("cpu", 1)):
            v = [x[idx] / size for x in runs[row.key]]
            ref = [x[idx] / n for x in runs[row.ref]]
            res[kind] = {
                **stats(v),
                "ratio_min": min(v) / min(ref),
                "ratio_median": statistics.median(v) / statistics.median(ref),
                "ratio_paired_median": statistics.median(
                    a / b for a, b in zip(v, ref, strict=True)),
            }
        res_rows.append(res)
    return {
        "n": n, "python_slice": py_n, "rounds": rounds, "mul_frac": MUL_FRAC, "shift": SHIFT,
        "tsc_timestamp": TSC_TIMESTAMP, "system_time": SYSTEM_TIME, "threads": threads,
        "one_thread_chunk": ONE_THREAD_CHUNK, "identical": True,
        "c_flags": {"native": " ".join(C_FLAGS_NATIVE), "native256": " ".join(C_FLAGS_NATIVE_256),
                    "o2": " ".join(C_FLAGS_O2)},
        "loadavg_before": load_before, "loadavg_after": load_after, "rows": res_rows,
    }


# ------------------------------------------------------------------ scalar calls


def scalar_section(rounds: int, number: int) -> dict[str, Any]:
    """ns per call of the scalar functions and the cheapest native calls, interleaved."""
    load_before = loadavg()
    env: dict[str, Any] = {
        "info": kvmclock.PvclockVcpuTimeInfo(
            version=2, tsc_timestamp=TSC_TIMESTAMP, system_time=SYSTEM_TIME,
            tsc_to_system_mul=MUL_FRAC, tsc_shift=SHIFT, flags=1,
        ),
        "seq": kvmclock.SeqCount(),
        "sd": kvmclock.pvclock_scale_delta,
        "gts": kvmclock.get_time_scale,
        "rdtsc": kvmclock.rdtsc,
        "mus": kvmclock.mul_u64_u32_shr,
        "m": MUL_FRAC,
        "s": SHIFT,
        "d": 2_100_000_000,
        "t": TSC_TIMESTAMP + 2_100_000_000,
        "CLOCK_MONOTONIC": time.CLOCK_MONOTONIC,
        "cg": time.clock_gettime_ns,
    }
    env["rc"] = env["info"].read_cycles
    cases = {
        "kvmclock.rdtsc()": "rdtsc()",
        "SeqCount.sequence (getter)": "seq.sequence",
        "mul_u64_u32_shr(1, 1, 0) (trivial 3-arg call)": "mus(1, 1, 0)",
        "pvclock_scale_delta(d, m, s)": "sd(d, m, s)",
        "pvclock_scale_delta(delta=, mul_frac=, shift=)": "sd(delta=d, mul_frac=m, shift=s)",
        "PvclockVcpuTimeInfo.read_cycles(tsc)": "rc(t)",
        "get_time_scale(1e9, 2.1e9)": "gts(1000000000, 2100000000)",
        "time.clock_gettime_ns(CLOCK_MONOTONIC)": "cg(CLOCK_MONOTONIC)",
        "pass (timing loop floor)": "pass",
    }

    fns = {name: per_call_ns(timeit.Timer(stmt, globals=env), number)
           for name, stmt in cases.items()}  # statements: no lambda wrapper around the call
    for fn in fns.values():  # warm-up
        fn()
    res = summarize_calls(interleave(fns, rounds), None)
    cheapest = min(("kvmclock.rdtsc()", "SeqCount.sequence (getter)"),
                   key=lambda k: res["cpu"][k]["median"])
    res.update(rounds=rounds, number=number, loadavg_before=load_before, loadavg_after=loadavg())
    return with_ratios(res, cheapest)


def per_call_ns(timer: timeit.Timer, number: int) -> Callable[[], tuple[float, float]]:
    """A function timing ``number`` runs of ``timer``: (wall, calling-thread CPU) ns per run."""

    def run() -> tuple[float, float]:
        w0 = time.perf_counter_ns()
        c0 = time.thread_time_ns()
        timer.timeit(number)
        c1 = time.thread_time_ns()
        w1 = time.perf_counter_ns()
        return (w1 - w0) / number, (c1 - c0) / number

    return run


def summarize_calls(runs: dict[str, list[tuple[float, float]]],
                    ref: str | None) -> dict[str, Any]:
    """min / median of wall and CPU ns per call, by name; ratios to ``ref`` if given."""
    res: dict[str, Any] = {
        kind: {k: stats([x[i] for x in v]) for k, v in runs.items()}
        for i, kind in enumerate(("wall", "cpu"))
    }
    return with_ratios(res, ref) if ref is not None else res


def with_ratios(res: dict[str, Any], ref: str) -> dict[str, Any]:
    """Add ``reference`` and, per kind (wall, cpu), ratio_min / ratio_median to ``ref``."""
    res["reference"] = ref
    for kind in ("wall", "cpu"):
        r = res[kind][ref]
        res[f"{kind}_ratio"] = {
            k: {"min": v["min"] / r["min"], "median": v["median"] / r["median"]}
            for k, v in res[kind].items()
        }
    return res


# ------------------------------------------------------------------ output


def print_table(result: dict[str, Any]) -> None:
    b = result["batch"]
    print(f"batch conversion of {b['n']:,} random u64 (mul_frac={b['mul_frac']}, "
          f"shift={b['shift']}); {b['rounds']} interleaved rounds; outputs identical: "
          f"{b['identical']}; load average before {b['loadavg_before']}, after "
          f"{b['loadavg_after']}")
    print("  ns/element over the rounds: wall min, wall median, ratio of wall medians to the")
    print("  reference row; calling-thread CPU min, median, ratio of CPU medians")
    print(f"  {'formulation':<16}{'thr':>4}{'w min':>8}{'w med':>8}{'x ref':>7}"
          f"{'cpu min':>9}{'cpu med':>9}{'x ref':>7}  ref")
    for r in b["rows"]:
        w, c = r["wall"], r["cpu"]
        print(f"  {r['key']:<16}{r['threads']:>4}{w['min']:>8.3f}{w['median']:>8.3f}"
              f"{w['ratio_median']:>7.2f}{c['min']:>9.3f}{c['median']:>9.3f}"
              f"{c['ratio_median']:>7.2f}  {r['ref']}")
    s = result["scalar"]
    print(f"\nscalar calls ({s['rounds']} interleaved rounds of {s['number']:,} calls; ns/call "
          f"wall min, median, calling-thread CPU min, median; ratio of CPU medians to the "
          f"cheapest native call, {s['reference']})")
    for k, w in s["wall"].items():
        c = s["cpu"][k]
        print(f"  {k:<50}{w['min']:>7.1f}{w['median']:>7.1f}{c['min']:>7.1f}{c['median']:>7.1f}"
              f"{s['cpu_ratio'][k]['median']:>7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="batch size (u64 values)")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds")
    parser.add_argument("--python-n", type=int, default=200_000, help="pure-Python slice")
    parser.add_argument("--number", type=int, default=200_000, help="scalar calls per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH|-", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if min(args.n, args.rounds, args.python_n, args.number) < 1:
        parser.error("--n, --rounds, --python-n and --number must be positive")
    result = {
        "machine": machine(),
        "batch": batch_section(args.n, args.rounds, min(args.python_n, args.n), args.seed),
        "scalar": scalar_section(args.rounds, args.number),
    }
    print_table(result)
    if args.json == "-":
        json.dump(result, sys.stdout, indent=2)
        print()
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

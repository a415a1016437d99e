"""One-run comparison of batch pvclock_scale_delta formulations and scalar call costs.

Times on the same machine, in one process (medians of several repetitions):

* (a) a C ``-O2`` loop with ``unsigned __int128`` (benches/c/scale_delta.c, compiled here with
  the system ``cc`` into a shared library and called once per repetition through ctypes),
* (b) ``kvmclock.pvclock_scale_delta_batch``,
* (c) the best exact numpy formulation (chunked; the 64x32 product split into 32-bit halves in
  uint64 so nothing overflows),
* (d) a pure-Python loop on a smaller slice, extrapolated to the full size (reported as such),
* plus ``memcpy`` of the same data as a floor,

on N (default 10,000,000) random u64 deltas, and checks that all four batch formulations give
identical results. Then it times the scalar calls against the cheapest call into the same
native module. Prints a table of ns/element and ratios; ``--json PATH|-`` writes the numbers.

Usage: ``.venv/bin/python benches/compare.py [--n N] [--repeat R] [--json PATH|-]``
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
from pathlib import Path
from typing import Any

import kvmclock
import numpy as np

HERE = Path(__file__).resolve().parent
C_SOURCE = HERE / "c" / "scale_delta.c"

# The real-host pair: kvm_get_time_scale(NSEC_PER_SEC, 2.1 GHz) = (-1, 4090445043).
MUL_FRAC = 4090445043
SHIFT = -1
CHUNK = 8192  # numpy chunk: 3 x 64 KiB temporaries stay in L2


def build_c_library(workdir: Path) -> ctypes.CDLL:
    """Compile benches/c/scale_delta.c with the system cc at -O2 and load it."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("compare.py: no C compiler (cc) found")
    lib_path = workdir / "libscale_delta.so"
    subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(lib_path), str(C_SOURCE)], check=True
    )
    lib = ctypes.CDLL(str(lib_path))
    u64p = ctypes.POINTER(ctypes.c_uint64)
    lib.scale_delta_batch.argtypes = [u64p, u64p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_int]
    lib.scale_delta_batch.restype = None
    lib.copy_u64.argtypes = [u64p, u64p, ctypes.c_size_t]
    lib.copy_u64.restype = None
    return lib


def ptr(a: np.ndarray) -> Any:
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64))


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
    """pvclock_scale_delta in plain Python ints."""
    mask = (1 << 64) - 1
    if shift < 0:
        s = -shift
        return [((d >> s) * mul >> 32) & mask for d in values]
    return [(((d << shift) & mask) * mul >> 32) & mask for d in values]


def median_ns(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn()`` in ns over ``repeat`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(statistics.median(times))


def per_call_ns(stmt: str, env: dict[str, Any], repeat: int, number: int) -> float:
    """Median ns per execution of ``stmt`` (timeit: no lambda wrapper around the call)."""
    runs = timeit.repeat(stmt, repeat=repeat, number=number, globals=env)
    return statistics.median(runs) / number * 1e9


def batch_section(n: int, repeat: int, py_n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    deltas = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    out_c = np.empty(n, dtype=np.uint64)
    out_k = np.empty(n, dtype=np.uint64)
    out_np = np.empty(n, dtype=np.uint64)
    copy = np.empty(n, dtype=np.uint64)
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_c_library(Path(tmp))
        ns: dict[str, float] = {}
        ns["memcpy"] = median_ns(lambda: lib.copy_u64(ptr(deltas), ptr(copy), n), repeat)
        ns["c_int128_O2"] = median_ns(
            lambda: lib.scale_delta_batch(ptr(deltas), ptr(out_c), n, MUL_FRAC, SHIFT), repeat
        )
    ns["kvmclock_batch"] = median_ns(
        lambda: kvmclock.pvclock_scale_delta_batch(deltas, MUL_FRAC, SHIFT, out=out_k), repeat
    )
    ns["numpy_exact_chunked"] = median_ns(
        lambda: numpy_exact(deltas, MUL_FRAC, SHIFT, out_np), max(3, repeat // 2)
    )
    py_values = [int(x) for x in deltas[:py_n]]
    py_ns = median_ns(lambda: python_loop(py_values, MUL_FRAC, SHIFT), 3)
    ns["python_loop_extrapolated"] = py_ns * (n / py_n)

    # All four formulations must agree bit for bit.
    assert np.array_equal(copy, deltas), "memcpy floor copied wrongly"
    assert np.array_equal(out_k, out_c), "kvmclock batch differs from the C loop"
    assert np.array_equal(out_np, out_c), "numpy exact formulation differs from the C loop"
    py_out = python_loop(py_values, MUL_FRAC, SHIFT)
    assert py_out == [int(x) for x in out_c[:py_n]], "pure Python differs from the C loop"

    c = ns["c_int128_O2"]
    return {
        "n": n,
        "python_slice": py_n,
        "mul_frac": MUL_FRAC,
        "shift": SHIFT,
        "identical": True,
        "ns_per_element": {k: v / n for k, v in ns.items()},
        "ratio_to_c": {k: v / c for k, v in ns.items()},
        "kvmclock_speedup_vs_numpy": ns["numpy_exact_chunked"] / ns["kvmclock_batch"],
    }


def scalar_section(repeat: int, number: int) -> dict[str, Any]:
    env: dict[str, Any] = {
        "kvmclock": kvmclock,
        "time": time,
        "info": kvmclock.PvclockVcpuTimeInfo(
            version=2, tsc_timestamp=10**12, system_time=5 * 10**9,
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
        "t": 10**12 + 2_100_000_000,
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
    ns = {name: per_call_ns(stmt, env, repeat, number) for name, stmt in cases.items()}
    cheapest_name = min(
        ("kvmclock.rdtsc()", "SeqCount.sequence (getter)"), key=lambda k: ns[k]
    )
    cheapest = ns[cheapest_name]
    return {
        "ns_per_call": ns,
        "cheapest_native_call": cheapest_name,
        "ratio_to_cheapest_native": {k: v / cheapest for k, v in ns.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    b = result["batch"]
    print(f"batch pvclock_scale_delta over {b['n']:,} random u64 "
          f"(mul_frac={b['mul_frac']}, shift={b['shift']}); medians; results identical: "
          f"{b['identical']}")
    print(f"  {'formulation':<34}{'ns/element':>12}{'x C -O2':>10}")
    for k, v in b["ns_per_element"].items():
        note = f"  (timed on {b['python_slice']:,}, extrapolated)" if k.startswith("python") else ""
        print(f"  {k:<34}{v:>12.3f}{b['ratio_to_c'][k]:>10.2f}{note}")
    print(f"  kvmclock batch vs numpy exact: {b['kvmclock_speedup_vs_numpy']:.2f}x faster")
    s = result["scalar"]
    print(f"\nscalar calls (median ns/call; ratio to the cheapest native call, "
          f"{s['cheapest_native_call']})")
    for k, v in s["ns_per_call"].items():
        print(f"  {k:<52}{v:>9.1f}{s['ratio_to_cheapest_native'][k]:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="batch size (u64 values)")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions per batch timing")
    parser.add_argument("--python-n", type=int, default=200_000, help="pure-Python slice")
    parser.add_argument("--number", type=int, default=200_000, help="scalar calls per repeat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH|-", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.python_n < 1 or args.number < 1:
        parser.error("--n, --repeat, --python-n and --number must be positive")
    result = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "numpy": np.__version__},
        "batch": batch_section(args.n, args.repeat, min(args.python_n, args.n), args.seed),
        "scalar": scalar_section(args.repeat, args.number),
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

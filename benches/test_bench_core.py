"""pytest-benchmark cases for the native core (not collected by the default run: testpaths=tests).

Run: ``.venv/bin/pytest benches/test_bench_core.py --benchmark-only``. Scalar calls are
compared with the cheapest call into the same native module; batch conversion with numpy.
"""

from __future__ import annotations

from typing import Any

import kvmclock
import numpy as np
import pytest

MUL_FRAC = 4090445043  # kvm_get_time_scale(NSEC_PER_SEC, 2.1 GHz) = (-1, 4090445043)
SHIFT = -1
INFO = kvmclock.PvclockVcpuTimeInfo(
    version=2, tsc_timestamp=10**12, system_time=5 * 10**9,
    tsc_to_system_mul=MUL_FRAC, tsc_shift=SHIFT, flags=1,
)


def test_cheapest_native_call_rdtsc(benchmark: Any) -> None:
    assert benchmark(kvmclock.rdtsc) > 0


def test_cheapest_native_getter(benchmark: Any) -> None:
    seq = kvmclock.SeqCount()
    assert benchmark(lambda: seq.sequence) == 0


def test_pvclock_scale_delta(benchmark: Any) -> None:
    assert benchmark(kvmclock.pvclock_scale_delta, 2_100_000_000, MUL_FRAC, SHIFT) == 10**9 - 1


def test_pvclock_scale_delta_keywords(benchmark: Any) -> None:
    got = benchmark(kvmclock.pvclock_scale_delta, delta=2_100_000_000, mul_frac=MUL_FRAC,
                    shift=SHIFT)
    assert got == 10**9 - 1


def test_read_cycles(benchmark: Any) -> None:
    assert benchmark(INFO.read_cycles, 10**12 + 2_100_000_000) == 6 * 10**9 - 1


def test_get_time_scale(benchmark: Any) -> None:
    assert benchmark(kvmclock.get_time_scale, 10**9, 2_100_000_000) == (SHIFT, MUL_FRAC)


def test_pvclock_read(benchmark: Any) -> None:
    buf = bytearray(INFO.to_bytes())
    ns, flags, stamp = benchmark(kvmclock.pvclock_read, buf, 10**12)
    assert (ns, flags, stamp) == (5 * 10**9, 1, 10**12)


@pytest.mark.parametrize("n", [1_000, 1_000_000])
def test_scale_delta_batch(benchmark: Any, n: int) -> None:
    deltas = np.random.default_rng(0).integers(0, 2**64, size=n, dtype=np.uint64)
    out = np.empty(n, dtype=np.uint64)
    got = benchmark(kvmclock.pvclock_scale_delta_batch, deltas, MUL_FRAC, SHIFT, out=out)
    assert got is out
    assert int(out[0]) == kvmclock.pvclock_scale_delta(int(deltas[0]), MUL_FRAC, SHIFT)


@pytest.mark.parametrize("n", [1_000_000])
def test_read_cycles_batch(benchmark: Any, n: int) -> None:
    tscs = np.random.default_rng(1).integers(0, 2**64, size=n, dtype=np.uint64)
    out = np.empty(n, dtype=np.uint64)
    benchmark(kvmclock.pvclock_read_cycles_batch, INFO, tscs, out=out)
    assert int(out[-1]) == INFO.read_cycles(int(tscs[-1]))


@pytest.mark.parametrize("n", [1_000_000])
def test_numpy_exact_baseline(benchmark: Any, n: int) -> None:
    from compare import numpy_exact  # benches/compare.py, same directory (rootdir import)

    deltas = np.random.default_rng(0).integers(0, 2**64, size=n, dtype=np.uint64)
    out = np.empty(n, dtype=np.uint64)
    benchmark(numpy_exact, deltas, MUL_FRAC, SHIFT, out)
    assert int(out[0]) == kvmclock.pvclock_scale_delta(int(deltas[0]), MUL_FRAC, SHIFT)

"""kvmclock: an executable, bit-exact model of the Linux x86 KVM clock.

The native core (``kvmclock._native``, Rust) provides the kernel's clock arithmetic
(arch/x86/kvm/x86.c, include/linux/math64.h, arch/x86/include/asm/pvclock.h,
kernel/time/clocksource.c), the pvclock ABI records and their lock-free readers/writer, and
a SeqCount; this package re-exports all of it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

from kvmclock._native import (
    DEFAULT_MAX_RETRIES,
    PVCLOCK_COUNTS_FROM_ZERO,
    PVCLOCK_GUEST_STOPPED,
    PVCLOCK_RECORD_SIZE,
    PVCLOCK_TSC_STABLE_BIT,
    PVCLOCK_WALL_CLOCK_SIZE,
    PvclockClock,
    PvclockVcpuTimeInfo,
    PvclockWallClock,
    SeqCount,
    adjust_tsc_khz,
    clocks_calc_mult_shift,
    clocksource_cyc2ns,
    div_frac,
    get_time_scale,
    kvmclock_ns,
    mul_s64_u64_shr,
    mul_u64_u32_div,
    mul_u64_u32_shr,
    mul_u64_u64_shr,
    pvclock_read,
    pvclock_read_cycles_batch,
    pvclock_scale_delta,
    pvclock_scale_delta_batch,
    pvclock_tsc_khz,
    pvclock_write,
    rdtsc,
    scale_tsc,
    tsc_scaling_ratio,
    vclock_page_address,
    vclock_read,
)
from kvmclock.errors import (
    KvmclockError,
    LivelockDetected,
    PvclockRetryError,
    RealResourceUnavailable,
    ScenarioError,
    SeqCountError,
    TraceParseError,
)

try:
    __version__: str = _dist_version("kvmclock")
except PackageNotFoundError:  # running from a source tree without installed metadata
    __version__ = "0.0.0+unknown"

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "PVCLOCK_COUNTS_FROM_ZERO",
    "PVCLOCK_GUEST_STOPPED",
    "PVCLOCK_RECORD_SIZE",
    "PVCLOCK_TSC_STABLE_BIT",
    "PVCLOCK_WALL_CLOCK_SIZE",
    "KvmclockError",
    "LivelockDetected",
    "PvclockClock",
    "PvclockRetryError",
    "PvclockVcpuTimeInfo",
    "PvclockWallClock",
    "RealResourceUnavailable",
    "ScenarioError",
    "SeqCount",
    "SeqCountError",
    "TraceParseError",
    "__version__",
    "adjust_tsc_khz",
    "clocks_calc_mult_shift",
    "clocksource_cyc2ns",
    "div_frac",
    "get_time_scale",
    "kvmclock_ns",
    "mul_s64_u64_shr",
    "mul_u64_u32_div",
    "mul_u64_u32_shr",
    "mul_u64_u64_shr",
    "pvclock_read",
    "pvclock_read_cycles_batch",
    "pvclock_scale_delta",
    "pvclock_scale_delta_batch",
    "pvclock_tsc_khz",
    "pvclock_write",
    "rdtsc",
    "scale_tsc",
    "tsc_scaling_ratio",
    "vclock_page_address",
    "vclock_read",
]

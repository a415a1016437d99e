"""This computer: the TSC, its KVM guest pvclock record, and /dev/kvm (``kvmclock.real``).

The record is vCPU 0's ``pvclock_vcpu_time_info`` at the start of ``[vvar_vclock]`` (Linux >=
6.13, arch/x86/entry/vdso/vma.c); it is read by the native, version-retry reader
(``kvmclock.vclock_read`` / ``kvmclock.kvmclock_ns``, rust/core/src/real.rs), which probes the
page safely. A missing page raises ``kvmclock.errors.RealResourceUnavailable``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import kvmclock as _k
from kvmclock import PvclockVcpuTimeInfo
from kvmclock.errors import RealResourceUnavailable
from kvmclock.real.maps import VVAR, VVAR_VCLOCK, find_mapping

__all__ = [
    "guest_record_available",
    "kvmclock_ns",
    "rdtsc",
    "read_guest_record",
    "vclock_reason",
]

rdtsc: Callable[[], int] = _k.rdtsc
"""``rdtsc`` of this CPU (native)."""


def vclock_reason() -> str | None:
    """Why the guest record cannot be read here, or None when ``[vvar_vclock]`` exists."""
    if find_mapping(VVAR_VCLOCK) is not None:
        return None
    if find_mapping(VVAR) is not None:
        return (
            f"no {VVAR_VCLOCK} mapping (kernel < 6.13 keeps the pvclock page inside {VVAR} at a"
            " layout-dependent offset, or this is not a KVM guest using kvm-clock vDSO); not read"
        )
    return f"no {VVAR_VCLOCK} mapping in /proc/self/maps (not a KVM guest with a pvclock vDSO page)"


def guest_record_available() -> bool:
    """True when this process has the KVM guest pvclock page mapped."""
    return vclock_reason() is None


def _unavailable(exc: OSError | None = None) -> RealResourceUnavailable:
    reason = vclock_reason() or f"KVM guest pvclock page unreadable: {exc}"
    return RealResourceUnavailable(exc.errno if exc and exc.errno else errno.ENOENT, reason)


def read_guest_record() -> tuple[PvclockVcpuTimeInfo, int]:
    """(vCPU 0's record, the TSC of the successful retry iteration), native version-retry read."""
    try:
        return _k.vclock_read()
    except OSError as exc:
        raise _unavailable(exc) from exc


def _kvmclock_ns_checked() -> int:
    try:
        return _k.kvmclock_ns()
    except OSError as exc:
        raise _unavailable(exc) from exc


def _select_kvmclock_ns() -> Callable[[], int]:
    # Fast path: when the page is there, hand out the native function itself (no Python frame
    # per call: this read is meant to be no slower than time.clock_gettime_ns).
    if guest_record_available():
        try:
            _k.kvmclock_ns()
        except OSError:
            return _kvmclock_ns_checked
        fn: Callable[[], int] = _k.kvmclock_ns
        return fn
    return _kvmclock_ns_checked


kvmclock_ns: Callable[[], int] = _select_kvmclock_ns()
"""Guest kvm-clock now, in ns: ``record.read_cycles(rdtsc())`` under the version-retry protocol
(arch/x86/kernel/pvclock.c ``pvclock_clocksource_read`` without the last_value clamp)."""

"""KVM request bits for the clock (include/linux/kvm_host.h, arch/x86/include/asm/kvm_host.h).

Numbers are those of the 5.16-era headers (``KVM_ARCH_REQ(n)`` = 8 + n: the first 8 bits
are generic requests); the 2017 numeric values are not verified (the names are the same).
``KVM_REQ_MCLOCK_INPROGRESS`` carries WAIT|NO_WAKEUP flags in the kernel; only the bit is
modelled.  The model keeps a vCPU's pending requests as an int bitmask (``vcpu.requests``).
"""

from __future__ import annotations

__all__ = [
    "CLOCK_REQUESTS",
    "KVM_REQUEST_ARCH_BASE",
    "KVM_REQ_CLOCK_UPDATE",
    "KVM_REQ_GLOBAL_CLOCK_UPDATE",
    "KVM_REQ_MASTERCLOCK_UPDATE",
    "KVM_REQ_MCLOCK_INPROGRESS",
    "KVM_REQ_MIGRATE_TIMER",
    "REQUEST_NAMES",
    "kvm_arch_req",
    "request_names",
]

KVM_REQUEST_ARCH_BASE = 8


def kvm_arch_req(nr: int) -> int:
    """``KVM_ARCH_REQ(nr)``: the request number ``KVM_REQUEST_ARCH_BASE + nr``."""
    if isinstance(nr, bool) or not isinstance(nr, int) or not 0 <= nr < 56:
        raise ValueError(f"nr={nr!r} out of range (0..55)")
    return KVM_REQUEST_ARCH_BASE + nr


KVM_REQ_MIGRATE_TIMER = kvm_arch_req(0)
KVM_REQ_CLOCK_UPDATE = kvm_arch_req(4)
KVM_REQ_MASTERCLOCK_UPDATE = kvm_arch_req(13)
KVM_REQ_MCLOCK_INPROGRESS = kvm_arch_req(14)
KVM_REQ_GLOBAL_CLOCK_UPDATE = kvm_arch_req(16)

REQUEST_NAMES: dict[int, str] = {
    KVM_REQ_MIGRATE_TIMER: "KVM_REQ_MIGRATE_TIMER",
    KVM_REQ_CLOCK_UPDATE: "KVM_REQ_CLOCK_UPDATE",
    KVM_REQ_MASTERCLOCK_UPDATE: "KVM_REQ_MASTERCLOCK_UPDATE",
    KVM_REQ_MCLOCK_INPROGRESS: "KVM_REQ_MCLOCK_INPROGRESS",
    KVM_REQ_GLOBAL_CLOCK_UPDATE: "KVM_REQ_GLOBAL_CLOCK_UPDATE",
}

CLOCK_REQUESTS = tuple(REQUEST_NAMES)


def request_names(mask: int) -> list[str]:
    """Names of the request bits set in ``mask`` (unknown bits as ``"REQ_<n>"``), by number."""
    if isinstance(mask, bool) or not isinstance(mask, int) or mask < 0:
        raise ValueError(f"mask={mask!r} must be an int >= 0")
    out: list[str] = []
    n = 0
    while mask >> n:
        if (mask >> n) & 1:
            out.append(REQUEST_NAMES.get(n, f"REQ_{n}"))
        n += 1
    return out

"""Tiny real-mode guests for /dev/kvm and the record layout they use.

The guests are hand-assembled 16-bit code loaded at GPA ``CODE_GPA``:

* ``RDTSC_HLT``: ``rdtsc; hlt`` (the guest TSC lands in EDX:EAX, then KVM_EXIT_HLT because the
  VM has no in-kernel irqchip, arch/x86/kvm/x86.c ``kvm_emulate_halt`` -> ``KVM_EXIT_HLT``);
* ``kvmclock_msr_guest(gpa)``: the guest itself writes ``MSR_KVM_SYSTEM_TIME_NEW = gpa | 1``
  (guest-initiated ``kvm_write_system_time``), then ``rdtsc; hlt`` so the host can evaluate the
  record at the guest's own TSC reading.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmclock.errors import count_ids
from kvmclock.real.kvmdev import KVM_EXIT_HLT, MSR_KVM_SYSTEM_TIME_NEW, KvmVcpu, KvmVm

CODE_GPA = 0x1000
"""Where the guest code lives (real mode, CS base 0)."""
RECORD_GPA = 0x3000
"""vCPU ``n``'s pvclock record is at ``RECORD_GPA + RECORD_STRIDE * n``."""
RECORD_STRIDE = 64
MEM_SIZE = 0x10000

RDTSC_HLT = bytes((0x0F, 0x31, 0xF4))  # rdtsc ; hlt


def record_gpa(vcpu_id: int) -> int:
    """GPA of vCPU ``vcpu_id``'s pvclock record (kept inside one page for every id < 64)."""
    if not 0 <= vcpu_id < 64:
        raise ValueError(f"vcpu_id={vcpu_id}: the records page holds {count_ids(64, 'vCPU')}")
    return RECORD_GPA + RECORD_STRIDE * vcpu_id


def kvmclock_msr_guest(gpa: int) -> bytes:
    """16-bit code: ``mov ecx, MSR_KVM_SYSTEM_TIME_NEW; mov eax, gpa|1; xor edx, edx; wrmsr;
    rdtsc; hlt`` (0x66 prefixes select 32-bit operands in real mode)."""
    if not 0 <= gpa < 1 << 32 or gpa % 32:
        raise ValueError(f"gpa must be a 32-byte aligned value in 0..2**32-1, got {gpa:#x}")
    return (
        b"\x66\xb9"
        + struct.pack("<I", MSR_KVM_SYSTEM_TIME_NEW)
        + b"\x66\xb8"
        + struct.pack("<I", gpa | 1)
        + b"\x66\x31\xd2"  # xor edx, edx
        + b"\x0f\x30"  # wrmsr
        + RDTSC_HLT
    )


@dataclass(frozen=True)
class GuestRun:
    """Result of one guest run: the TSC the guest read (EDX:EAX) and the final RIP."""

    guest_tsc: int
    rip: int


class GuestRunError(RuntimeError):
    """KVM_RUN ended with something other than KVM_EXIT_HLT at the expected place."""


def load(vm: KvmVm, code: bytes = RDTSC_HLT, gpa: int = CODE_GPA) -> None:
    """Copy ``code`` into guest memory at ``gpa``."""
    vm.memory.write(gpa, code)


def run_to_hlt(vcpu: KvmVcpu, code_len: int = len(RDTSC_HLT), gpa: int = CODE_GPA) -> GuestRun:
    """Reset the vCPU to real mode at ``gpa``, KVM_RUN, and require KVM_EXIT_HLT after the code.

    Raises ``GuestRunError`` naming the exit (IO, SHUTDOWN, FAIL_ENTRY, INTERNAL_ERROR...).
    """
    vcpu.setup_real_mode(gpa)
    ex = vcpu.run()
    regs = vcpu.get_regs()
    if ex.reason != KVM_EXIT_HLT:
        raise GuestRunError(
            f"vCPU {vcpu.vcpu_id}: expected KVM_EXIT_HLT, got {ex.name} ({ex.reason})"
            f" at rip {regs.rip:#x}{': ' + ex.detail if ex.detail else ''}"
        )
    if regs.rip != gpa + code_len:
        raise GuestRunError(
            f"vCPU {vcpu.vcpu_id}: halted at rip {regs.rip:#x}, expected {gpa + code_len:#x}"
        )
    return GuestRun(((regs.rdx & 0xFFFFFFFF) << 32) | (regs.rax & 0xFFFFFFFF), regs.rip)

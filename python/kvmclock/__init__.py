"""kvmclock: an executable, bit-exact model of the Linux x86 KVM clock."""

from kvmclock._native import mul_u64_u32_shr

__all__ = ["mul_u64_u32_shr"]

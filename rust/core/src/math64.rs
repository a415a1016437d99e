//! include/linux/math64.h on x86-64.

/// `mul_u64_u32_shr`: low 64 bits of (a * mul) >> shift, shift 0..=127.
pub fn mul_u64_u32_shr(a: u64, mul: u32, shift: u32) -> u64 {
    ((a as u128 * mul as u128) >> shift) as u64
}

//! include/linux/math64.h and arch/x86/include/asm/div64.h on x86-64.
//!
//! x86-64 selects `ARCH_SUPPORTS_INT128`, so the `mul_*_shr` helpers are exact 128-bit
//! products shifted right (defined for shift 0..=127; the model rejects >= 128, which is an
//! undefined `__int128` shift). `mul_u64_u32_div` is the current x86-64 `mulq; divq` inline
//! asm (Peter Zijlstra, 2019): #DE on divisor 0 and on a quotient >= 2**64.

use crate::error::{check_range, CoreError, Result};

/// Largest shift the 128-bit `>>` accepts.
pub const MAX_SHR_SHIFT: u32 = 127;

#[inline]
fn check_shr_shift(shift: u32) -> Result<u32> {
    check_range("shift", shift as i64, 0, MAX_SHR_SHIFT as i64).map(|v| v as u32)
}

/// `mul_u64_u32_shr(a, mul, shift)`: low 64 bits of `(a * mul) >> shift` (u128 product).
#[inline]
pub fn mul_u64_u32_shr(a: u64, mul: u32, shift: u32) -> Result<u64> {
    let shift = check_shr_shift(shift)?;
    Ok(((a as u128 * mul as u128) >> shift) as u64)
}

/// `mul_u64_u64_shr(a, mul, shift)`: low 64 bits of `(a * mul) >> shift` (u128 product).
#[inline]
pub fn mul_u64_u64_shr(a: u64, mul: u64, shift: u32) -> Result<u64> {
    let shift = check_shr_shift(shift)?;
    Ok(((a as u128 * mul as u128) >> shift) as u64)
}

/// `mul_s64_u64_shr(a, b, shift)` (math64.h, v5.14 nested TSC scaling): sign-magnitude, so it
/// rounds toward zero. `abs(S64_MIN)` wraps to S64_MIN whose u64 view 2**63 is the right
/// magnitude (the kernel builds with wrapping signed arithmetic). The result is returned as u64
/// (`-ret` wraps when a < 0).
#[inline]
pub fn mul_s64_u64_shr(a: i64, b: u64, shift: u32) -> Result<u64> {
    let magnitude = a.wrapping_abs() as u64;
    let ret = mul_u64_u64_shr(magnitude, b, shift)?;
    Ok(if a < 0 { ret.wrapping_neg() } else { ret })
}

/// `mul_u64_u32_div(a, mul, divisor)`: `floor(a * mul / divisor)` of the 96-bit product.
/// Current x86-64 (`mulq; divq`) faults when divisor is 0 (ZeroDivisionError) or when the
/// quotient needs more than 64 bits (OverflowError; v4.13's generic C wrapped mod 2**64).
#[inline]
pub fn mul_u64_u32_div(a: u64, mul: u32, divisor: u32) -> Result<u64> {
    if divisor == 0 {
        return Err(CoreError::zero_division(
            "divisor must be non-zero: mul_u64_u32_div's divq faults (#DE) on 0",
        ));
    }
    let q = (a as u128 * mul as u128) / divisor as u128;
    u64::try_from(q).map_err(|_| {
        CoreError::overflow(format!(
            "quotient a*mul/divisor = {q} does not fit u64 (0..=18446744073709551615): \
             mul_u64_u32_div's divq faults (#DE); a={a}, mul={mul}, divisor={divisor}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn s64_min_and_rounding() {
        assert_eq!(mul_s64_u64_shr(-3, 1, 1).unwrap(), (-1i64) as u64);
        assert_eq!(mul_s64_u64_shr(i64::MIN, 1, 0).unwrap(), 1u64 << 63);
        assert_eq!(mul_s64_u64_shr(i64::MIN, 2, 1).unwrap(), 1u64 << 63);
        assert_eq!(mul_s64_u64_shr(-1, u64::MAX, 127).unwrap(), 0);
    }

    #[test]
    fn shift_limits() {
        assert_eq!(mul_u64_u32_shr(u64::MAX, u32::MAX, 127).unwrap(), 0);
        assert_eq!(mul_u64_u64_shr(u64::MAX, u64::MAX, 127).unwrap(), 1);
        assert!(mul_u64_u32_shr(1, 1, 128).is_err());
        assert!(mul_u64_u64_shr(1, 1, u32::MAX).is_err());
        assert!(mul_s64_u64_shr(1, 1, 128).is_err());
    }

    #[test]
    fn div_faults() {
        assert_eq!(
            mul_u64_u32_div(1, 1, 0).unwrap_err().kind,
            crate::error::ErrorKind::ZeroDivision
        );
        assert_eq!(
            mul_u64_u32_div(1 << 63, 2, 1).unwrap_err().kind,
            crate::error::ErrorKind::Overflow
        );
        assert_eq!(
            mul_u64_u32_div(u64::MAX, u32::MAX, u32::MAX).unwrap(),
            u64::MAX
        );
    }

    proptest! {
        #[test]
        fn shr_matches_u128(a: u64, m: u64, s in 0u32..128) {
            prop_assert_eq!(mul_u64_u64_shr(a, m, s).unwrap(), ((a as u128 * m as u128) >> s) as u64);
            let m32 = m as u32;
            prop_assert_eq!(mul_u64_u32_shr(a, m32, s).unwrap(), ((a as u128 * m32 as u128) >> s) as u64);
        }

        #[test]
        fn s64_matches_i128(a: i64, b: u64, s in 0u32..128) {
            // sign-magnitude reference with i128: |a|*b >> s, negated, truncated to 64 bits
            let mag = (a as i128).unsigned_abs() * b as u128;
            let shifted = (mag >> s) as u64;
            let expect = if a < 0 { shifted.wrapping_neg() } else { shifted };
            prop_assert_eq!(mul_s64_u64_shr(a, b, s).unwrap(), expect);
        }

        #[test]
        fn div_matches_u128(a: u64, m: u32, d: u32) {
            let got = mul_u64_u32_div(a, m, d);
            if d == 0 {
                prop_assert!(got.is_err());
            } else {
                let q = a as u128 * m as u128 / d as u128;
                if q > u64::MAX as u128 { prop_assert!(got.is_err()); }
                else { prop_assert_eq!(got.unwrap(), q as u64); }
            }
        }
    }
}

//! arch/x86/kvm/x86.c: `kvm_get_time_scale`, `div_frac`, the TSC-scaling ratio step of
//! `set_tsc_khz`, `__scale_tsc`/`kvm_scale_tsc` and `adjust_tsc_khz`.

use crate::error::{check_range, CoreError, Result};
use crate::math64::{mul_u64_u32_div, mul_u64_u64_shr};

/// `div_frac(dividend, divisor)` (x86.c, via `do_shl32_div32`): `(dividend << 32) / divisor`
/// with one `divl` (EDX = dividend, EAX = 0). #DE when divisor is 0 (ZeroDivisionError) or when
/// dividend >= divisor, because the quotient would not fit 32 bits (OverflowError).
#[inline]
pub fn div_frac(dividend: u32, divisor: u32) -> Result<u32> {
    if divisor == 0 {
        return Err(CoreError::zero_division(
            "divisor must be non-zero: div_frac's divl faults (#DE) on 0",
        ));
    }
    if dividend >= divisor {
        return Err(CoreError::overflow(format!(
            "dividend must be < divisor for the quotient to fit u32 (divl #DE), \
             got dividend={dividend} >= divisor={divisor}"
        )));
    }
    Ok((((dividend as u64) << 32) / divisor as u64) as u32)
}

/// `kvm_get_time_scale(scaled_hz, base_hz, &shift, &mult)` (x86.c): `(shift, mult)` with
/// scaled/base ~= mult * 2**(shift - 32).
///
/// The kernel computes `shift` in an `int32_t` and stores it through an `s8 *`; the reachable
/// range is -62..=64, which fits `s8` (-128..=127), so the stored value equals the int (e.g.
/// scaled 2**63+1, base 1 gives 64, mult 2**31). The three inputs for which the kernel spins
/// forever (loop 1 halves base to 0: base_hz == 0, or `2*scaled_hz` wraps to 0: scaled_hz in
/// {0, 2**63}) are rejected with a `ValueError`.
pub fn get_time_scale(scaled_hz: u64, base_hz: u64) -> Result<(i8, u32)> {
    if base_hz == 0 {
        return Err(CoreError::value(
            "base_hz must be non-zero (1..=18446744073709551615): \
             kvm_get_time_scale would never return",
        ));
    }
    if scaled_hz == 0 || scaled_hz == 1 << 63 {
        return Err(CoreError::value(format!(
            "scaled_hz must not be 0 or 2**63 (got {scaled_hz}): 2*scaled_hz wraps to 0, \
             loop 1 halves base_hz to 0 and kvm_get_time_scale would never return"
        )));
    }
    const HI32: u64 = 0xffff_ffff_0000_0000;
    let mut scaled64 = scaled_hz;
    let mut tps64 = base_hz;
    let mut shift: i32 = 0;
    // Loop 1: the doubling of scaled64 wraps mod 2**64 as in the kernel.
    while tps64 > scaled64.wrapping_mul(2) || tps64 & HI32 != 0 {
        tps64 >>= 1;
        shift -= 1;
    }
    let mut tps32 = tps64 as u32;
    if tps32 == 0 {
        // Unreachable after the checks above (the kernel loops only on those three inputs).
        return Err(CoreError::value(format!(
            "scaled_hz={scaled_hz}, base_hz={base_hz}: kvm_get_time_scale would never return"
        )));
    }
    // Loop 2: terminates for every non-zero tps32 (at most ~96 iterations).
    while tps32 as u64 <= scaled64 || scaled64 & HI32 != 0 {
        if scaled64 & HI32 != 0 || tps32 & 0x8000_0000 != 0 {
            scaled64 >>= 1;
        } else {
            tps32 <<= 1;
        }
        shift += 1;
    }
    // `*pshift = shift`: int -> s8. -62..=64 always fits, `as i8` is the C conversion.
    let mult = div_frac(scaled64 as u32, tps32)?;
    Ok((shift as i8, mult))
}

/// `adjust_tsc_khz(khz, ppm)` (x86.c): `(u64)khz * (1000000 + ppm) / 1000000`, truncated to u32.
///
/// `1000000 + ppm` is C `int` arithmetic; the kernel builds with `-fno-strict-overflow`
/// (top-level Makefile), so it wraps as s32 for ppm > 2**31-1-10**6 (we follow the kernel and
/// wrap rather than reject). The int factor is then converted to u64, which sign-extends a
/// negative factor (ppm < -10**6) to a huge u64; the product wraps mod 2**64.
#[inline]
pub fn adjust_tsc_khz(khz: u32, ppm: i32) -> u32 {
    let factor = 1_000_000i32.wrapping_add(ppm) as i64 as u64;
    ((khz as u64).wrapping_mul(factor) / 1_000_000) as u32
}

/// `__scale_tsc(ratio, tsc)` / `kvm_scale_tsc` (x86.c): `mul_u64_u64_shr(tsc, ratio, frac)`.
/// `kvm_scale_tsc` skips the multiply when ratio is the default 2**frac; the multiply gives the
/// same number, so one formula covers both. frac_bits 0..=127 (the shift's domain).
#[inline]
pub fn scale_tsc(tsc: u64, ratio: u64, frac_bits: u32) -> Result<u64> {
    check_range("frac_bits", frac_bits as i64, 0, 127)?;
    mul_u64_u64_shr(tsc, ratio, frac_bits)
}

/// Ratio step of `set_tsc_khz` (x86.c): `mul_u64_u32_div(1ULL << frac, user_tsc_khz, tsc_khz)`.
/// frac_bits 0..=63 (`1ULL << frac` must be a u64; VMX uses 48, SVM 32). Division by a zero
/// tsc_khz and a quotient >= 2**64 (VMX: user/host >= 2**16) fault like the current `divq`.
pub fn tsc_scaling_ratio(user_tsc_khz: u32, tsc_khz: u32, frac_bits: u32) -> Result<u64> {
    check_range("frac_bits", frac_bits as i64, 0, 63)?;
    if tsc_khz == 0 {
        return Err(CoreError::zero_division(
            "tsc_khz must be non-zero: mul_u64_u32_div(1 << frac_bits, user_tsc_khz, tsc_khz) \
             divides by it (divq #DE)",
        ));
    }
    mul_u64_u32_div(1u64 << frac_bits, user_tsc_khz, tsc_khz).map_err(|_| {
        CoreError::overflow(format!(
            "ratio (1 << frac_bits) * user_tsc_khz / tsc_khz does not fit u64 \
             (user_tsc_khz={user_tsc_khz}, tsc_khz={tsc_khz}, frac_bits={frac_bits}): \
             mul_u64_u32_div's divq faults (#DE)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use proptest::prelude::*;

    /// Literal transcription of the kernel loops over u128 with explicit masks (independent of
    /// the u64 code above); `None` for the endless-loop inputs.
    fn ref_time_scale(scaled_hz: u64, base_hz: u64) -> Option<(i32, u32)> {
        let m64: u128 = u64::MAX as u128;
        let mut scaled: u128 = scaled_hz as u128;
        let mut tps: u128 = base_hz as u128;
        let mut shift = 0i32;
        while tps > ((scaled * 2) & m64) || (tps >> 32) != 0 {
            tps >>= 1;
            shift -= 1;
        }
        let mut tps32 = tps & 0xffff_ffff;
        if tps32 == 0 {
            return None;
        }
        while tps32 <= scaled || (scaled >> 32) != 0 {
            if (scaled >> 32) != 0 || (tps32 >> 31) != 0 {
                scaled >>= 1;
            } else {
                tps32 = (tps32 << 1) & 0xffff_ffff;
            }
            shift += 1;
        }
        Some((shift, ((scaled << 32) / tps32) as u32))
    }

    #[test]
    fn known_values() {
        assert_eq!(
            get_time_scale(1_000_000_000, 2_100_000_000).unwrap(),
            (-1, 4090445043)
        );
        assert_eq!(
            get_time_scale(2_100_000_000, 1_000_000_000).unwrap(),
            (2, 2254857830)
        );
        assert_eq!(get_time_scale((1 << 63) + 1, 1).unwrap(), (64, 1 << 31));
        for (s, b) in [(0, 1), (1 << 63, 1_000_000_000), (1_000_000_000, 0), (0, 0)] {
            assert_eq!(get_time_scale(s, b).unwrap_err().kind, ErrorKind::Value);
        }
    }

    #[test]
    fn endless_loop_inputs_named() {
        // The three inputs for which the kernel loops forever are refused up front, with the
        // argument and its excluded values in the message (not by the later tps32 == 0 guard).
        for s in [0u64, 1 << 63] {
            let e = get_time_scale(s, 1_000_000_000).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Value);
            assert!(
                e.message.starts_with("scaled_hz must not be 0 or 2**63"),
                "{}",
                e.message
            );
        }
        let e = get_time_scale(1_000_000_000, 0).unwrap_err();
        assert!(
            e.message.starts_with("base_hz must be non-zero"),
            "{}",
            e.message
        );
        // neighbours of 2**63 are fine: 2**63 - 1 and 2**63 + 1 over base 1
        // 2**63+1 over 1: loop 2 halves scaled 32 times (to 2**31), doubles tps32 31 times (to
        // 2**31), then halves scaled once more because tps32's top bit is set (shift 64):
        // mult = (2**30 << 32) / 2**31 = 2**31
        assert_eq!(get_time_scale((1 << 63) + 1, 1).unwrap(), (64, 1 << 31));
        // 2**63-1 over 1: loop 2 halves scaled 32 times (to 2**31 - 1, shift 32), then doubles
        // tps32 from 1 to 2**31 (shift 63), where 2**31 <= 2**31 - 1 fails: mult =
        // ((2**31 - 1) << 32) / 2**31 = 2**32 - 2
        assert_eq!(
            get_time_scale((1 << 63) - 1, 1).unwrap(),
            (63, u32::MAX - 1)
        );
    }

    #[test]
    fn integer_ratios_exact() {
        // scaled = n, base = 1 with n < 2**31: loop 1 never runs (1 <= 2n), loop 2 only
        // doubles tps32 (scaled has no high bits and tps32 stays below 2**31) until 2**k > n,
        // i.e. k = bit length of n; then mult = (n << 32) / 2**k = n * 2**(32 - k), exact.
        // E.g. n = 3: tps32 1 -> 2 -> 4, shift 2, mult 3 * 2**30 = 3221225472.
        assert_eq!(get_time_scale(3, 1).unwrap(), (2, 3221225472));
        for n in (1u64..=4096).chain([(1 << 31) - 1, 1_000_000_007]) {
            let k = 64 - n.leading_zeros();
            let expect = (k as i8, (n << (32 - k)) as u32);
            assert_eq!(get_time_scale(n, 1).unwrap(), expect, "n={n}");
        }
    }

    #[test]
    fn div_frac_faults() {
        assert_eq!(div_frac(0, 0).unwrap_err().kind, ErrorKind::ZeroDivision);
        assert_eq!(div_frac(3, 3).unwrap_err().kind, ErrorKind::Overflow);
        assert_eq!(div_frac(1, 2).unwrap(), 1 << 31);
    }

    #[test]
    fn adjust_edges() {
        assert_eq!(adjust_tsc_khz(2_100_000, -250), 2_099_475);
        assert_eq!(adjust_tsc_khz(2_100_000, 250), 2_100_525);
        // negative factor sign-extends to u64 and wraps
        let f = (-1i64) as u64;
        assert_eq!(
            adjust_tsc_khz(1000, -1_000_001),
            (1000u64.wrapping_mul(f) / 1_000_000) as u32
        );
        // s32 overflow of 1000000 + ppm wraps (-fno-strict-overflow)
        let f2 = (1_000_000i64 + i32::MAX as i64 - (1i64 << 32)) as u64;
        assert_eq!(
            adjust_tsc_khz(7, i32::MAX),
            (7u64.wrapping_mul(f2) / 1_000_000) as u32
        );
    }

    #[test]
    fn ratio() {
        assert_eq!(tsc_scaling_ratio(1, 2_100_000, 48).unwrap(), 134035703);
        assert_eq!(
            tsc_scaling_ratio(1 << 16, 1, 48).unwrap_err().kind,
            ErrorKind::Overflow
        );
        assert_eq!(
            tsc_scaling_ratio(2, 1, 63).unwrap_err().kind,
            ErrorKind::Overflow
        );
        assert_eq!(
            tsc_scaling_ratio(1, 0, 48).unwrap_err().kind,
            ErrorKind::ZeroDivision
        );
        assert!(tsc_scaling_ratio(1, 1, 64)
            .unwrap_err()
            .message
            .contains("frac_bits"));
        assert!(scale_tsc(1, 1, 128)
            .unwrap_err()
            .message
            .contains("frac_bits"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn time_scale_matches_reference(s: u64, b: u64) {
            match ref_time_scale(s, b) {
                None => prop_assert!(get_time_scale(s, b).is_err()),
                Some((shift, mult)) => {
                    prop_assert!((-62..=64).contains(&shift));
                    prop_assert_eq!(get_time_scale(s, b).unwrap(), (shift as i8, mult));
                }
            }
        }

        #[test]
        fn time_scale_real_rates(khz in 1_000u64..10_000_000) {
            let (shift, mult) = get_time_scale(1_000_000_000, khz * 1000).unwrap();
            let ns = crate::pvclock::pvclock_scale_delta(khz * 1000, mult, shift as i32).unwrap();
            prop_assert!(ns.abs_diff(1_000_000_000) <= 2);
        }

        #[test]
        fn adjust_matches_i128(khz: u32, ppm: i32) {
            let factor = ((1_000_000i128 + ppm as i128) as i32) as i128; // s32 wrap
            let v = ((khz as i128 * factor) as u128 & u64::MAX as u128) as u64; // (u64) wrap
            prop_assert_eq!(adjust_tsc_khz(khz, ppm), (v / 1_000_000) as u32);
        }

        #[test]
        fn scale_tsc_identity(tsc: u64, frac in 0u32..64) {
            prop_assert_eq!(scale_tsc(tsc, 1u64 << frac, frac).unwrap(), tsc);
        }
    }
}

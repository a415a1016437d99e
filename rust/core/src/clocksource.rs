//! kernel/time/clocksource.c `clocks_calc_mult_shift` and include/linux/clocksource.h
//! `clocksource_cyc2ns`.

use crate::error::{check_range, CoreError, Result};

/// `clocks_calc_mult_shift(&mult, &shift, from, to, maxsec)` (clocksource.c), all u32.
///
/// acc = 32 - bitlen((maxsec * from) >> 32) (u64 product); for shift 32 down to 1, mult =
/// ((to << shift) + from/2) / from in u64; stop at the first whose `mult >> acc` is 0.
/// Quirk kept: when no shift fits, the loop exits with shift 0 and the *shift-1* mult
/// (truncated to u32). from_hz 0 divides by zero (`do_div`).
pub fn clocks_calc_mult_shift(from_hz: u32, to_hz: u32, maxsec: u32) -> Result<(u32, u32)> {
    if from_hz == 0 {
        return Err(CoreError::zero_division(
            "from_hz must be non-zero (1..=4294967295): clocks_calc_mult_shift divides by it",
        ));
    }
    let mut tmp = (maxsec as u64 * from_hz as u64) >> 32;
    let mut sftacc: u32 = 32;
    while tmp != 0 {
        tmp >>= 1;
        sftacc -= 1;
    }
    let mut sft: u32 = 32;
    while sft > 0 {
        tmp = ((to_hz as u64) << sft) + (from_hz as u64 / 2);
        tmp /= from_hz as u64;
        if tmp >> sftacc == 0 {
            break;
        }
        sft -= 1;
    }
    Ok((tmp as u32, sft))
}

/// `clocksource_cyc2ns(cycles, mult, shift)` (clocksource.h): `((u64)cycles * mult) >> shift`
/// with a wrapping **64-bit** product (no widening), returned through `s64`. shift 0..=63
/// (a u64 shift by >= 64 is undefined in C).
#[inline]
pub fn clocksource_cyc2ns(cycles: u64, mult: u32, shift: u32) -> Result<i64> {
    check_range("shift", shift as i64, 0, 63)?;
    Ok((cycles.wrapping_mul(mult as u64) >> shift) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known() {
        assert_eq!(
            clocks_calc_mult_shift(24_000_000, 1_000_000_000, 600).unwrap(),
            (0x29AAAAAB, 24)
        );
        let (mult, shift) = clocks_calc_mult_shift(1, u32::MAX, u32::MAX).unwrap();
        assert_eq!(shift, 0);
        assert_eq!(mult, ((u32::MAX as u64) << 1) as u32);
        assert!(clocks_calc_mult_shift(0, 1, 1).is_err());
        assert_eq!(clocksource_cyc2ns(1 << 33, 1 << 31, 1).unwrap(), 0);
        assert_eq!(clocksource_cyc2ns(u64::MAX, 1, 0).unwrap(), -1);
        assert!(clocksource_cyc2ns(1, 1, 64).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn calc_mult_shift_matches_u128(from in 1u32.., to: u32, maxsec: u32) {
            // independent restatement over u128
            let bits = 128 - (((maxsec as u128 * from as u128) >> 32).leading_zeros());
            let acc = 32 - bits;
            let mut res = (0u32, 0u32);
            let mut last = 0u128;
            let mut found = false;
            for s in (1..=32u32).rev() {
                last = (((to as u128) << s) + (from as u128 / 2)) / from as u128;
                if last >> acc == 0 { res = (last as u32, s); found = true; break; }
            }
            if !found { res = (last as u32, 0); }
            prop_assert_eq!(clocks_calc_mult_shift(from, to, maxsec).unwrap(), res);
        }

        #[test]
        fn cyc2ns_matches(c: u64, m: u32, s in 0u32..64) {
            let p = (c as u128 * m as u128) & u64::MAX as u128;
            prop_assert_eq!(clocksource_cyc2ns(c, m, s).unwrap(), ((p as u64) >> s) as i64);
        }
    }
}

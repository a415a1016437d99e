//! Buffer-wide `pvclock_scale_delta` / `__pvclock_read_cycles` (arch/x86/include/asm/pvclock.h).
//!
//! Bit-exact with the scalar functions. The inner loop avoids the 128-bit multiply so that it
//! vectorises: with the pre-shifted delta d = hi*2**32 + lo, bits 32..95 of d*mul are exactly
//! hi*mul + ((lo*mul) >> 32) (two 32x32->64 products, `pmuludq`; the sum is < 2**64). An AVX2
//! copy of the loop is chosen at run time when the CPU has it. Large inputs can be split over
//! threads (`std::thread::scope`).

use crate::error::{CoreError, Result};
use crate::pvclock::{check_pv_shift, PvclockVcpuTimeInfo};

/// Element count from which splitting over two threads pays off (measured: memory-bound loop).
pub const PARALLEL_THRESHOLD: usize = 1 << 20;

#[inline(always)]
fn scale_one(d: u64, mul: u64, shift: i32) -> u64 {
    let d = if shift < 0 {
        d >> ((-shift) as u32 & 63)
    } else {
        d << (shift as u32 & 63)
    };
    let lo = d & 0xffff_ffff;
    let hi = d >> 32;
    (hi * mul).wrapping_add((lo * mul) >> 32)
}

/// One pass; `sub` is subtracted before scaling and `add` added after (0, 0 for scale_delta).
#[inline(always)]
fn kernel_into(src: &[u64], dst: &mut [u64], mul: u32, shift: i32, sub: u64, add: u64) {
    let mul = mul as u64;
    // Two specialised loops so the shift direction is loop-invariant.
    if shift < 0 {
        let s = (-shift) as u32 & 63;
        for (o, &x) in dst.iter_mut().zip(src) {
            let d = x.wrapping_sub(sub) >> s;
            *o = add
                .wrapping_add((d >> 32) * mul)
                .wrapping_add(((d & 0xffff_ffff) * mul) >> 32);
        }
    } else {
        let s = shift as u32 & 63;
        for (o, &x) in dst.iter_mut().zip(src) {
            let d = x.wrapping_sub(sub) << s;
            *o = add
                .wrapping_add((d >> 32) * mul)
                .wrapping_add(((d & 0xffff_ffff) * mul) >> 32);
        }
    }
}

#[inline(always)]
fn kernel_in_place(buf: &mut [u64], mul: u32, shift: i32, sub: u64, add: u64) {
    let mul = mul as u64;
    if shift < 0 {
        let s = (-shift) as u32 & 63;
        for o in buf.iter_mut() {
            let d = o.wrapping_sub(sub) >> s;
            *o = add
                .wrapping_add((d >> 32) * mul)
                .wrapping_add(((d & 0xffff_ffff) * mul) >> 32);
        }
    } else {
        let s = shift as u32 & 63;
        for o in buf.iter_mut() {
            let d = o.wrapping_sub(sub) << s;
            *o = add
                .wrapping_add((d >> 32) * mul)
                .wrapping_add(((d & 0xffff_ffff) * mul) >> 32);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn into_avx2(src: &[u64], dst: &mut [u64], mul: u32, shift: i32, sub: u64, add: u64) {
    kernel_into(src, dst, mul, shift, sub, add)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn in_place_avx2(buf: &mut [u64], mul: u32, shift: i32, sub: u64, add: u64) {
    kernel_in_place(buf, mul, shift, sub, add)
}

#[inline]
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn run_into(src: &[u64], dst: &mut [u64], mul: u32, shift: i32, sub: u64, add: u64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { into_avx2(src, dst, mul, shift, sub, add) };
        return;
    }
    kernel_into(src, dst, mul, shift, sub, add)
}

fn run_in_place(buf: &mut [u64], mul: u32, shift: i32, sub: u64, add: u64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { in_place_avx2(buf, mul, shift, sub, add) };
        return;
    }
    kernel_in_place(buf, mul, shift, sub, add)
}

/// How many threads to use for `n` elements when at most `max_threads` are allowed.
pub fn threads_for(n: usize, max_threads: usize) -> usize {
    if n < PARALLEL_THRESHOLD || max_threads <= 1 {
        return 1;
    }
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    max_threads.min(cores).clamp(1, 8)
}

/// Run `f` over `0..n` split into `threads` contiguous ranges; the first range runs on the
/// calling thread. A worker thread that cannot be spawned (resource limits) runs its range
/// inline instead of panicking.
fn par_ranges(n: usize, threads: usize, f: &(impl Fn(std::ops::Range<usize>) + Sync)) {
    if threads <= 1 || n == 0 {
        f(0..n);
        return;
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        let mut start = chunk.min(n);
        while start < n {
            let r = start..(start + chunk).min(n);
            let job = r.clone();
            if std::thread::Builder::new()
                .spawn_scoped(s, move || f(job))
                .is_err()
            {
                f(r);
            }
            start += chunk;
        }
        f(0..chunk.min(n));
    });
}

fn split_into(src: &[u64], dst: &mut [u64], threads: usize, g: impl Fn(&[u64], &mut [u64]) + Sync) {
    debug_assert_eq!(src.len(), dst.len());
    let (sp, dp) = (src.as_ptr() as usize, dst.as_mut_ptr() as usize);
    par_ranges(src.len(), threads, &|r: std::ops::Range<usize>| {
        // SAFETY: ranges are disjoint sub-ranges of `src`/`dst`, which stay borrowed (shared and
        // exclusive) by this function for the whole scope.
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts((sp as *const u64).add(r.start), r.len()),
                std::slice::from_raw_parts_mut((dp as *mut u64).add(r.start), r.len()),
            )
        };
        g(a, b)
    });
}

fn split_in_place(buf: &mut [u64], threads: usize, g: impl Fn(&mut [u64]) + Sync) {
    let bp = buf.as_mut_ptr() as usize;
    par_ranges(buf.len(), threads, &|r: std::ops::Range<usize>| {
        // SAFETY: disjoint sub-ranges of `buf`, exclusively borrowed for the whole scope.
        g(unsafe { std::slice::from_raw_parts_mut((bp as *mut u64).add(r.start), r.len()) })
    });
}

fn check_len(src: usize, dst: usize) -> Result<()> {
    if src != dst {
        return Err(CoreError::value(format!(
            "out must have the same length as the input ({src} elements), got {dst}"
        )));
    }
    Ok(())
}

/// `dst[i] = pvclock_scale_delta(src[i], mul_frac, shift)`; shift -63..=63.
pub fn scale_delta_into(
    src: &[u64],
    dst: &mut [u64],
    mul_frac: u32,
    shift: i32,
    max_threads: usize,
) -> Result<()> {
    let shift = check_pv_shift("shift", shift as i64)?;
    check_len(src.len(), dst.len())?;
    let t = threads_for(src.len(), max_threads);
    split_into(src, dst, t, |a, b| run_into(a, b, mul_frac, shift, 0, 0));
    Ok(())
}

/// In-place `pvclock_scale_delta` over `buf`.
pub fn scale_delta_in_place(
    buf: &mut [u64],
    mul_frac: u32,
    shift: i32,
    max_threads: usize,
) -> Result<()> {
    let shift = check_pv_shift("shift", shift as i64)?;
    let t = threads_for(buf.len(), max_threads);
    split_in_place(buf, t, |b| run_in_place(b, mul_frac, shift, 0, 0));
    Ok(())
}

/// `dst[i] = __pvclock_read_cycles(info, src[i])`; info.tsc_shift -63..=63.
pub fn read_cycles_into(
    info: &PvclockVcpuTimeInfo,
    src: &[u64],
    dst: &mut [u64],
    max_threads: usize,
) -> Result<()> {
    let shift = check_pv_shift("tsc_shift", info.tsc_shift as i64)?;
    check_len(src.len(), dst.len())?;
    let t = threads_for(src.len(), max_threads);
    let (m, ts, st) = (info.tsc_to_system_mul, info.tsc_timestamp, info.system_time);
    split_into(src, dst, t, |a, b| run_into(a, b, m, shift, ts, st));
    Ok(())
}

/// In-place `__pvclock_read_cycles` over `buf`.
pub fn read_cycles_in_place(
    info: &PvclockVcpuTimeInfo,
    buf: &mut [u64],
    max_threads: usize,
) -> Result<()> {
    let shift = check_pv_shift("tsc_shift", info.tsc_shift as i64)?;
    let t = threads_for(buf.len(), max_threads);
    let (m, ts, st) = (info.tsc_to_system_mul, info.tsc_timestamp, info.system_time);
    split_in_place(buf, t, |b| run_in_place(b, m, shift, ts, st));
    Ok(())
}

#[doc(hidden)]
pub fn scale_one_for_tests(d: u64, mul: u32, shift: i32) -> u64 {
    scale_one(d, mul as u64, shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pvclock::{pvclock_scale_delta, PvclockVcpuTimeInfo};
    use proptest::prelude::*;

    fn lcg(n: usize, mut x: u64) -> Vec<u64> {
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                x ^ (x >> 29)
            })
            .collect()
    }

    #[test]
    fn large_parallel_matches_scalar() {
        let src = lcg(PARALLEL_THRESHOLD + 12345, 7);
        for shift in [-63, -5, 0, 3, 63] {
            let mut dst = vec![0; src.len()];
            scale_delta_into(&src, &mut dst, 4090445043, shift, 2).unwrap();
            let mut inplace = src.clone();
            scale_delta_in_place(&mut inplace, 4090445043, shift, 2).unwrap();
            for (i, &x) in src.iter().enumerate().step_by(97) {
                assert_eq!(dst[i], pvclock_scale_delta(x, 4090445043, shift).unwrap());
            }
            assert_eq!(dst, inplace);
        }
        let info = PvclockVcpuTimeInfo {
            tsc_timestamp: src[0],
            system_time: 1 << 40,
            tsc_to_system_mul: 2254857830,
            tsc_shift: 2,
            ..Default::default()
        };
        let mut dst = vec![0; src.len()];
        read_cycles_into(&info, &src, &mut dst, 1).unwrap();
        let mut inplace = src.clone();
        read_cycles_in_place(&info, &mut inplace, 2).unwrap();
        assert_eq!(dst, inplace);
        for (i, &x) in src.iter().enumerate().step_by(101) {
            assert_eq!(dst[i], info.read_cycles(x).unwrap());
        }
        assert!(scale_delta_into(&src[..3], &mut dst[..2], 1, 0, 1).is_err());
        assert!(scale_delta_in_place(&mut dst, 1, 64, 1).is_err());
    }

    #[test]
    fn threads_for_policy() {
        // Documented policy: one thread below 2**20 elements or when at most one thread is
        // allowed; otherwise min(max_threads, available cores), clamped to 1..=8.
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        assert_eq!(threads_for(0, 8), 1);
        assert_eq!(threads_for(10, 8), 1);
        assert_eq!(threads_for((1 << 20) - 1, 8), 1); // threshold - 1
        assert_eq!(threads_for(1 << 20, 1), 1);
        assert_eq!(threads_for(1 << 20, 0), 1);
        assert_eq!(threads_for(1 << 20, 2), 2.min(cores)); // exactly the threshold
        assert_eq!(threads_for(usize::MAX, 1000), cores.min(8));
    }

    /// The ranges `par_ranges` hands to `f`, sorted, and whether the first ran on the caller.
    fn ranges_of(n: usize, threads: usize) -> (Vec<(usize, usize)>, bool) {
        let seen = std::sync::Mutex::new(Vec::new());
        let me = std::thread::current().id();
        par_ranges(n, threads, &|r: std::ops::Range<usize>| {
            seen.lock().unwrap().push((r, std::thread::current().id()));
        });
        let mut v = seen.into_inner().unwrap();
        v.sort_by_key(|(r, _)| (r.start, r.end));
        let first_on_caller = v[0].1 == me;
        (
            v.into_iter().map(|(r, _)| (r.start, r.end)).collect(),
            first_on_caller,
        )
    }

    #[test]
    fn par_ranges_partition() {
        // chunk = ceil(n / threads); ranges [0, chunk), [chunk, 2*chunk), ... cut at n, each
        // exactly once, the first on the calling thread.
        assert_eq!(ranges_of(10, 3), (vec![(0, 4), (4, 8), (8, 10)], true)); // chunk 4
        assert_eq!(ranges_of(8, 2), (vec![(0, 4), (4, 8)], true)); // n a multiple of chunk
        assert_eq!(ranges_of(9, 4), (vec![(0, 3), (3, 6), (6, 9)], true)); // chunk 3, 3 ranges
        assert_eq!(ranges_of(5, 1), (vec![(0, 5)], true));
        assert_eq!(ranges_of(5, 0), (vec![(0, 5)], true)); // 0 threads: serial, no div by 0
        assert_eq!(ranges_of(0, 3), (vec![(0, 0)], true));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn batch_matches_scalar(v in proptest::collection::vec(any::<u64>(), 0..40), mul: u32, shift in -63i32..=63) {
            let mut out = vec![0; v.len()];
            scale_delta_into(&v, &mut out, mul, shift, 1).unwrap();
            for (x, o) in v.iter().zip(&out) {
                prop_assert_eq!(*o, pvclock_scale_delta(*x, mul, shift).unwrap());
                prop_assert_eq!(*o, scale_one_for_tests(*x, mul, shift));
            }
        }
    }
}

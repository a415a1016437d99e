//! The time stamp counter: `rdtsc` (x86-64 only; elsewhere an `OSError`-kind error).

use crate::error::Result;

/// `rdtsc()` (arch/x86/include/asm/msr.h): the raw counter, not serialised.
#[inline]
pub fn rdtsc() -> Result<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc is available on every x86-64 CPU and has no memory effects.
        Ok(unsafe { core::arch::x86_64::_rdtsc() })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(unsupported())
    }
}

/// `rdtsc_ordered()` (msr.h): `lfence; rdtsc`, ordered after earlier loads, as the vDSO's
/// `vread_pvclock` reads it inside the version-retry loop.
#[inline]
pub fn rdtsc_ordered() -> Result<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: lfence and rdtsc are baseline x86-64 instructions without memory effects.
        Ok(unsafe {
            core::arch::x86_64::_mm_lfence();
            core::arch::x86_64::_rdtsc()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(unsupported())
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn unsupported() -> crate::error::CoreError {
    crate::error::CoreError::os(
        38,
        "rdtsc needs an x86-64 CPU (ENOSYS on this architecture)",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn advances() {
        let a = super::rdtsc().unwrap();
        let b = super::rdtsc_ordered().unwrap();
        assert!(b > a);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn both_reads_count_cycles() {
        // The TSC ticks at >= 100 MHz on any x86-64 host (and is never stopped in a running
        // guest), so 2 ms of sleep is at least 200_000 counts between reads on either side,
        // in either order of the two functions.
        let gap = std::time::Duration::from_millis(2);
        let a = super::rdtsc().unwrap();
        std::thread::sleep(gap);
        let b = super::rdtsc_ordered().unwrap();
        std::thread::sleep(gap);
        let c = super::rdtsc().unwrap();
        assert!(b.wrapping_sub(a) >= 200_000, "a={a} b={b}");
        assert!(c.wrapping_sub(b) >= 200_000, "b={b} c={c}");
        assert!(a > 1 && b > a && c > b);
    }
}

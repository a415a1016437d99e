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
}

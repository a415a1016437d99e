//! arch/x86/include/asm/pvclock-abi.h, arch/x86/include/asm/pvclock.h and
//! arch/x86/kernel/pvclock.c: the 32-byte `pvclock_vcpu_time_info` record, `pvclock_scale_delta`,
//! `__pvclock_read_cycles`, `pvclock_tsc_khz`, the version-retry read over raw (possibly
//! concurrently written) memory, the host-side odd/even publish, and the guest-side
//! `last_value` clamp of `pvclock_clocksource_read`.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::error::{check_range, CoreError, ErrorKind, Result};

/// `PVCLOCK_TSC_STABLE_BIT` (pvclock-abi.h).
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// `PVCLOCK_GUEST_STOPPED` (pvclock-abi.h).
pub const PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;
/// `PVCLOCK_COUNTS_FROM_ZERO` (pvclock-abi.h).
pub const PVCLOCK_COUNTS_FROM_ZERO: u8 = 1 << 2;
/// Size of `struct pvclock_vcpu_time_info`.
pub const RECORD_SIZE: usize = 32;
/// Size of `struct pvclock_wall_clock`.
pub const WALL_CLOCK_SIZE: usize = 12;
/// Default bound on version-retry iterations before [`ErrorKind::Retry`].
pub const DEFAULT_MAX_RETRIES: u64 = 1_000_000;

/// `pvclock_scale_delta` with a shift already known to be in -63..=63.
///
/// Pre-shift the u64 delta (right by -shift, or left with bits falling off the top), then bits
/// 32..95 of the 96-bit product (`mulq; shrd $32` on x86-64).
#[inline(always)]
pub fn scale_delta_unchecked(delta: u64, mul_frac: u32, shift: i32) -> u64 {
    debug_assert!((-63..=63).contains(&shift));
    let d = if shift < 0 {
        delta >> ((-shift) as u32 & 63)
    } else {
        delta << (shift as u32 & 63)
    };
    ((d as u128 * mul_frac as u128) >> 32) as u64
}

/// Check a pvclock shift for `pvclock_scale_delta`: |shift| >= 64 is an undefined C shift.
#[inline]
pub fn check_pv_shift(arg: &str, shift: i64) -> Result<i32> {
    check_range(arg, shift, -63, 63).map(|v| v as i32)
}

/// `pvclock_scale_delta(delta, mul_frac, shift)` (pvclock.h), shift -63..=63.
#[inline]
pub fn pvclock_scale_delta(delta: u64, mul_frac: u32, shift: i32) -> Result<u64> {
    let shift = check_pv_shift("shift", shift as i64)?;
    Ok(scale_delta_unchecked(delta, mul_frac, shift))
}

/// `__pvclock_read_cycles` arithmetic with a checked shift: system_time +
/// scale(tsc - tsc_timestamp), all u64 wrapping.
#[inline(always)]
pub fn read_cycles_unchecked(
    tsc_timestamp: u64,
    system_time: u64,
    mul: u32,
    shift: i32,
    tsc: u64,
) -> u64 {
    system_time.wrapping_add(scale_delta_unchecked(
        tsc.wrapping_sub(tsc_timestamp),
        mul,
        shift,
    ))
}

/// `pvclock_tsc_khz(src)` (pvclock.c): `(10**6 << 32) / tsc_to_system_mul` (`do_div`, u64 by
/// u32), then `<<= -tsc_shift` (wraps) or `>>= tsc_shift`. mul 0 divides by zero; tsc_shift
/// -63..=63 (a 64-bit shift by >= 64 is undefined).
pub fn pvclock_tsc_khz(tsc_to_system_mul: u32, tsc_shift: i32) -> Result<u64> {
    if tsc_to_system_mul == 0 {
        return Err(CoreError::zero_division(
            "tsc_to_system_mul must be non-zero (1..=4294967295): pvclock_tsc_khz divides by it",
        ));
    }
    let shift = check_pv_shift("tsc_shift", tsc_shift as i64)?;
    let khz = (1_000_000u64 << 32) / tsc_to_system_mul as u64;
    Ok(if shift < 0 {
        khz << (-shift) as u32
    } else {
        khz >> shift as u32
    })
}

/// `struct pvclock_vcpu_time_info` (pvclock-abi.h) by value: u32 version, u32 pad0,
/// u64 tsc_timestamp, u64 system_time, u32 tsc_to_system_mul, s8 tsc_shift, u8 flags, u8 pad[2];
/// little endian, 32 bytes. Pads are not part of the value (encoded as zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PvclockVcpuTimeInfo {
    pub version: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
}

impl PvclockVcpuTimeInfo {
    /// The 32 ABI bytes (little endian, pads zero).
    pub fn to_bytes(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[8..16].copy_from_slice(&self.tsc_timestamp.to_le_bytes());
        b[16..24].copy_from_slice(&self.system_time.to_le_bytes());
        b[24..28].copy_from_slice(&self.tsc_to_system_mul.to_le_bytes());
        b[28] = self.tsc_shift as u8;
        b[29] = self.flags;
        b
    }

    /// Decode exactly 32 ABI bytes (pads ignored, as the guest ignores them).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() != RECORD_SIZE {
            return Err(CoreError::value(format!(
                "b must be exactly {RECORD_SIZE} bytes (struct pvclock_vcpu_time_info), got {}",
                b.len()
            )));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Ok(PvclockVcpuTimeInfo {
            version: u32_at(0),
            tsc_timestamp: u64_at(8),
            system_time: u64_at(16),
            tsc_to_system_mul: u32_at(24),
            tsc_shift: b[28] as i8,
            flags: b[29],
        })
    }

    /// `__pvclock_read_cycles(src, tsc)` (pvclock.h). tsc_shift must be in -63..=63.
    #[inline]
    pub fn read_cycles(&self, tsc: u64) -> Result<u64> {
        let shift = check_pv_shift("tsc_shift", self.tsc_shift as i64)?;
        Ok(read_cycles_unchecked(
            self.tsc_timestamp,
            self.system_time,
            self.tsc_to_system_mul,
            shift,
            tsc,
        ))
    }
}

/// `struct pvclock_wall_clock` (pvclock-abi.h): u32 version, u32 sec, u32 nsec; 12 bytes LE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PvclockWallClock {
    pub version: u32,
    pub sec: u32,
    pub nsec: u32,
}

impl PvclockWallClock {
    pub fn to_bytes(&self) -> [u8; WALL_CLOCK_SIZE] {
        let mut b = [0u8; WALL_CLOCK_SIZE];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..8].copy_from_slice(&self.sec.to_le_bytes());
        b[8..12].copy_from_slice(&self.nsec.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() != WALL_CLOCK_SIZE {
            return Err(CoreError::value(format!(
                "b must be exactly {WALL_CLOCK_SIZE} bytes (struct pvclock_wall_clock), got {}",
                b.len()
            )));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(PvclockWallClock {
            version: u32_at(0),
            sec: u32_at(4),
            nsec: u32_at(8),
        })
    }
}

/// A pvclock record in raw, shared memory that other threads (or the hypervisor) may write
/// at any time. Every access is an atomic load/store on the naturally aligned field (plain
/// `mov` on x86-64, i.e. what the kernel's `READ_ONCE`/volatile accesses compile to), so the
/// memory is never viewed through a Rust `&` reference to plain data.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord {
    ptr: *mut u8,
}

// SAFETY: all accesses go through atomics; the creator guarantees the memory stays valid.
unsafe impl Send for RawRecord {}
unsafe impl Sync for RawRecord {}

impl RawRecord {
    /// # Safety
    /// `ptr` must be valid for reads of 32 bytes (and for writes if a writing method is
    /// used) for as long as the `RawRecord` is used, and 8-byte aligned.
    pub unsafe fn new(ptr: *mut u8) -> Self {
        debug_assert!(ptr as usize % 8 == 0);
        RawRecord { ptr }
    }

    /// Check that an address can hold a naturally aligned record.
    pub fn check_alignment(addr: usize) -> Result<()> {
        if addr % 8 != 0 {
            return Err(CoreError::value(format!(
                "offset must place the record on an 8-byte boundary (buffer address + offset = \
                 {addr:#x}); pvclock records are naturally aligned"
            )));
        }
        Ok(())
    }

    #[inline(always)]
    fn a32(&self, off: usize) -> &AtomicU32 {
        // SAFETY: in bounds and aligned by the constructor's contract.
        unsafe { AtomicU32::from_ptr(self.ptr.add(off) as *mut u32) }
    }

    #[inline(always)]
    fn a64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: in bounds and aligned by the constructor's contract.
        unsafe { AtomicU64::from_ptr(self.ptr.add(off) as *mut u64) }
    }

    /// Load the version (acquire: later body loads are not hoisted above it).
    #[inline(always)]
    pub fn version(&self) -> u32 {
        u32::from_le(self.a32(0).load(Ordering::Acquire))
    }

    /// Load the body fields (relaxed atomic loads; validated by the version protocol).
    #[inline(always)]
    pub fn body(&self, version: u32) -> PvclockVcpuTimeInfo {
        let tail = u32::from_le(self.a32(28).load(Ordering::Relaxed));
        PvclockVcpuTimeInfo {
            version,
            tsc_timestamp: u64::from_le(self.a64(8).load(Ordering::Relaxed)),
            system_time: u64::from_le(self.a64(16).load(Ordering::Relaxed)),
            tsc_to_system_mul: u32::from_le(self.a32(24).load(Ordering::Relaxed)),
            tsc_shift: tail as u8 as i8,
            flags: (tail >> 8) as u8,
        }
    }

    /// `src->flags &= ~mask` as an atomic byte AND (the guest clears GUEST_STOPPED).
    ///
    /// # Safety
    /// The memory must be writable.
    #[inline]
    pub unsafe fn clear_flags(&self, mask: u8) {
        // SAFETY: byte 29 is in bounds; u8 atomics need no alignment; writable by contract.
        unsafe { AtomicU8::from_ptr(self.ptr.add(29)) }.fetch_and(!mask, Ordering::Relaxed);
    }

    /// Host-side publish with the odd/even protocol (`kvm_setup_guest_pvclock`): version-1
    /// (odd), write barrier, body, write barrier, version. `info.version` must be even.
    ///
    /// # Safety
    /// The memory must be writable.
    pub unsafe fn publish(&self, info: &PvclockVcpuTimeInfo) -> Result<()> {
        if info.version & 1 != 0 {
            return Err(CoreError::value(format!(
                "info.version must be even (the published, stable version), got {}",
                info.version
            )));
        }
        self.a32(0)
            .store(info.version.wrapping_sub(1).to_le(), Ordering::Relaxed);
        fence(Ordering::Release);
        self.a32(4).store(0, Ordering::Relaxed);
        self.a64(8)
            .store(info.tsc_timestamp.to_le(), Ordering::Relaxed);
        self.a64(16)
            .store(info.system_time.to_le(), Ordering::Relaxed);
        self.a32(24)
            .store(info.tsc_to_system_mul.to_le(), Ordering::Relaxed);
        let tail = (info.tsc_shift as u8 as u32) | ((info.flags as u32) << 8);
        self.a32(28).store(tail.to_le(), Ordering::Relaxed);
        self.a32(0).store(info.version.to_le(), Ordering::Release);
        Ok(())
    }

    /// One version-retry read (`pvclock_read_begin` / `pvclock_read_retry`): start from
    /// `version & ~1`, read the TSC, the body, then re-check the version; an odd version or a
    /// changed one retries. At most `max_retries + 1` iterations (`max_retries` 0 = one try).
    /// `tsc` is called inside every iteration; the returned stamp is the TSC of the iteration
    /// that succeeded. Errors from `tsc` stop the loop and are returned as they are.
    pub fn read<E, F>(
        &self,
        max_retries: u64,
        mut tsc: F,
    ) -> std::result::Result<(PvclockVcpuTimeInfo, u64), ReadError<E>>
    where
        F: FnMut() -> std::result::Result<u64, E>,
    {
        let mut i: u64 = 0;
        loop {
            let version = self.version() & !1;
            let stamp = tsc().map_err(ReadError::Tsc)?;
            let body = self.body(version);
            fence(Ordering::Acquire); // smp_rmb() in pvclock_read_retry
            let again = u32::from_le(self.a32(0).load(Ordering::Relaxed));
            if again == version {
                return Ok((body, stamp));
            }
            if i >= max_retries {
                return Err(ReadError::Core(CoreError::new(
                    ErrorKind::Retry,
                    format!(
                        "pvclock record version stayed odd or kept changing for {} iterations \
                         (max_retries={max_retries}; last version {again})",
                        i + 1
                    ),
                )));
            }
            i += 1;
            backoff(i);
        }
    }
}

/// Error of a retry read: the core's, or the one the TSC source raised.
#[derive(Debug)]
pub enum ReadError<E> {
    Core(CoreError),
    Tsc(E),
}

/// Spin politely: pause for the first iterations, then give the writer the CPU.
#[inline]
pub fn backoff(i: u64) {
    if i < 128 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Guest-side `pvclock_clocksource_read` state (pvclock.c): the global `valid_flags` and the
/// system-wide atomic `last_value`.
#[derive(Debug, Default)]
pub struct PvclockClock {
    pub valid_flags: u8,
    last_value: AtomicU64,
}

impl PvclockClock {
    pub fn new(valid_flags: u8, last_value: u64) -> Self {
        PvclockClock {
            valid_flags,
            last_value: AtomicU64::new(last_value),
        }
    }

    pub fn last_value(&self) -> u64 {
        self.last_value.load(Ordering::Relaxed)
    }

    /// `pvclock_resume()`: `last_value` back to 0.
    pub fn resume(&self) {
        self.last_value.store(0, Ordering::Relaxed);
    }

    /// The value step of `pvclock_clocksource_read` after a successful retry iteration that
    /// saw `flags` and computed `raw`: no clamp when both `valid_flags` and `flags` carry
    /// PVCLOCK_TSC_STABLE_BIT; otherwise max(raw, last_value) as u64, moving `last_value` up
    /// with a cmpxchg loop (another caller's larger value wins and is returned).
    #[inline]
    pub fn clamp(&self, raw: u64, flags: u8) -> u64 {
        if self.valid_flags & flags & PVCLOCK_TSC_STABLE_BIT != 0 {
            return raw;
        }
        let mut last = self.last_value.load(Ordering::Relaxed);
        loop {
            if raw <= last {
                return last;
            }
            match self.last_value.compare_exchange_weak(
                last,
                raw,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return raw,
                Err(actual) => last = actual,
            }
        }
    }

    /// Full `pvclock_clocksource_read` on a writable raw record: retry read, clear
    /// GUEST_STOPPED in the shared record when seen (before the stable check, as the kernel
    /// does; the watchdog touch has no model), then [`PvclockClock::clamp`]. Returns
    /// `(ns, flags, stamp)`.
    ///
    /// # Safety
    /// `rec` must be writable.
    pub unsafe fn read<E, F>(
        &self,
        rec: &RawRecord,
        max_retries: u64,
        tsc: F,
    ) -> std::result::Result<(u64, u8, u64), ReadError<E>>
    where
        F: FnMut() -> std::result::Result<u64, E>,
    {
        let (body, stamp) = rec.read(max_retries, tsc)?;
        let raw = body.read_cycles(stamp).map_err(ReadError::Core)?;
        if body.flags & PVCLOCK_GUEST_STOPPED != 0 {
            // SAFETY: writable by the caller's contract.
            unsafe { rec.clear_flags(PVCLOCK_GUEST_STOPPED) };
        }
        Ok((self.clamp(raw, body.flags), body.flags, stamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[repr(align(8))]
    struct Page([u8; 64]);

    #[test]
    fn abi_roundtrip_and_layout() {
        let info = PvclockVcpuTimeInfo {
            version: 0x0102_0304,
            tsc_timestamp: 0x1112_1314_1516_1718,
            system_time: 0x2122_2324_2526_2728,
            tsc_to_system_mul: 0x3132_3334,
            tsc_shift: -1,
            flags: 5,
        };
        let b = info.to_bytes();
        assert_eq!(&b[0..4], &[4, 3, 2, 1]);
        assert_eq!(&b[4..8], &[0; 4]);
        assert_eq!(b[28], 0xff);
        assert_eq!(b[29], 5);
        assert_eq!(PvclockVcpuTimeInfo::from_bytes(&b).unwrap(), info);
        assert!(PvclockVcpuTimeInfo::from_bytes(&b[..31]).is_err());
        let wc = PvclockWallClock {
            version: 2,
            sec: 3,
            nsec: 4,
        };
        assert_eq!(PvclockWallClock::from_bytes(&wc.to_bytes()).unwrap(), wc);
    }

    #[test]
    fn publish_and_read() {
        let mut page = Page([0; 64]);
        let rec = unsafe { RawRecord::new(page.0.as_mut_ptr().add(32)) };
        let info = PvclockVcpuTimeInfo {
            version: 2,
            tsc_timestamp: 1000,
            system_time: 5,
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 0,
            flags: PVCLOCK_GUEST_STOPPED | PVCLOCK_TSC_STABLE_BIT,
        };
        unsafe { rec.publish(&info).unwrap() };
        assert_eq!(&page.0[32..], &info.to_bytes());
        assert!(unsafe { rec.publish(&PvclockVcpuTimeInfo { version: 3, ..info }) }.is_err());
        let (body, stamp) = rec.read::<(), _>(0, || Ok(3000)).unwrap();
        assert_eq!((body, stamp), (info, 3000));
        let clock = PvclockClock::new(1, 1 << 63);
        let (ns, flags, _) = unsafe { clock.read::<(), _>(&rec, 0, || Ok(3000)) }.unwrap();
        assert_eq!((ns, flags), (5 + 1000, 3));
        assert_eq!(page.0[32 + 29], PVCLOCK_TSC_STABLE_BIT); // GUEST_STOPPED cleared
                                                             // unstable: unsigned clamp
        let clock = PvclockClock::new(0, 1 << 63);
        let (ns, _, _) = unsafe { clock.read::<(), _>(&rec, 0, || Ok(3000)) }.unwrap();
        assert_eq!(ns, 1 << 63);
    }

    #[test]
    fn odd_version_retries_bounded() {
        let mut page = Page([0; 64]);
        page.0[0] = 3;
        let rec = unsafe { RawRecord::new(page.0.as_mut_ptr()) };
        let err = rec.read::<(), _>(10, || Ok(0)).unwrap_err();
        match err {
            ReadError::Core(e) => assert_eq!(e.kind, ErrorKind::Retry),
            ReadError::Tsc(_) => panic!("unexpected"),
        }
        // a changing version: the stamp is the one of the successful iteration
        let mut n = 0u64;
        let p = page.0.as_mut_ptr();
        unsafe { AtomicU32::from_ptr(p as *mut u32).store(2, Ordering::Relaxed) };
        let (_, stamp) = rec
            .read::<(), _>(10, || {
                n += 1;
                if n == 1 {
                    unsafe { AtomicU32::from_ptr(p as *mut u32).store(4, Ordering::Relaxed) };
                }
                Ok(n * 10)
            })
            .unwrap();
        assert_eq!(stamp, 20);
    }

    #[test]
    fn concurrent_writer_readers_consistent() {
        let mut page = Page([0; 64]);
        let rec = unsafe { RawRecord::new(page.0.as_mut_ptr()) };
        let clock = PvclockClock::new(0, 0);
        std::thread::scope(|s| {
            s.spawn(|| {
                for v in 1..20_000u64 {
                    let info = PvclockVcpuTimeInfo {
                        version: (v * 2) as u32,
                        tsc_timestamp: v,
                        system_time: v * 1000,
                        tsc_to_system_mul: 1 << 31,
                        tsc_shift: 1,
                        flags: 0,
                    };
                    unsafe { rec.publish(&info).unwrap() };
                }
            });
            for _ in 0..2 {
                s.spawn(|| {
                    let mut prev = 0;
                    for _ in 0..20_000 {
                        let (b, _) = rec.read::<(), _>(DEFAULT_MAX_RETRIES, || Ok(0)).unwrap();
                        // body fields are from one publish
                        assert_eq!(b.system_time, b.tsc_timestamp * 1000);
                        assert_eq!(b.version as u64, b.tsc_timestamp * 2);
                        let ns = unsafe {
                            clock.read::<(), _>(&rec, DEFAULT_MAX_RETRIES, || Ok(b.tsc_timestamp))
                        }
                        .unwrap()
                        .0;
                        let _ = ns;
                        let lv = clock.last_value();
                        assert!(lv >= prev);
                        prev = lv;
                    }
                });
            }
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn scale_delta_matches_u128(delta: u64, mul: u32, shift in -63i32..=63) {
            let d: u128 = if shift < 0 { (delta >> -shift) as u128 } else { ((delta as u128) << shift) & u64::MAX as u128 };
            let expect = ((d * mul as u128) >> 32) as u64;
            prop_assert_eq!(pvclock_scale_delta(delta, mul, shift).unwrap(), expect);
        }

        #[test]
        fn tsc_khz_matches_u128(mul in 1u32.., shift in -63i32..=63) {
            let base = (1_000_000u128 << 32) / mul as u128;
            let expect = if shift < 0 { ((base << -shift) & u64::MAX as u128) as u64 } else { (base >> shift) as u64 };
            prop_assert_eq!(pvclock_tsc_khz(mul, shift).unwrap(), expect);
        }

        #[test]
        fn record_roundtrip(b in proptest::array::uniform32(any::<u8>())) {
            let info = PvclockVcpuTimeInfo::from_bytes(&b).unwrap();
            let mut expect = b;
            expect[4..8].fill(0);
            expect[30..32].fill(0);
            prop_assert_eq!(info.to_bytes(), expect);
        }
    }

    #[test]
    fn abi_flag_values() {
        // pvclock-abi.h: PVCLOCK_TSC_STABLE_BIT (1 << 0), PVCLOCK_GUEST_STOPPED (1 << 1),
        // PVCLOCK_COUNTS_FROM_ZERO (1 << 2)
        assert_eq!(
            [
                PVCLOCK_TSC_STABLE_BIT,
                PVCLOCK_GUEST_STOPPED,
                PVCLOCK_COUNTS_FROM_ZERO
            ],
            [1, 2, 4]
        );
    }

    #[test]
    fn wall_clock_layout_and_length() {
        let b = PvclockWallClock {
            version: 0x0403_0201,
            sec: 0x0807_0605,
            nsec: 0x0c0b_0a09,
        }
        .to_bytes();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(PvclockWallClock::from_bytes(&b[..11]).is_err());
        assert!(PvclockWallClock::from_bytes(&[0; 13]).is_err());
    }

    #[test]
    fn alignment_check() {
        for ok in [0usize, 8, 16, 0x7f75_58b7_6000] {
            assert!(RawRecord::check_alignment(ok).is_ok(), "{ok:#x}");
        }
        for bad in [1usize, 4, 7, 9, 0x7f75_58b7_6004] {
            assert_eq!(
                RawRecord::check_alignment(bad).unwrap_err().kind,
                ErrorKind::Value,
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn last_value_clamp_and_resume() {
        let clock = PvclockClock::new(PVCLOCK_TSC_STABLE_BIT, 42);
        assert_eq!(clock.last_value(), 42);
        // guest trusts the stable bit but this record lacks it: clamped, last_value moves up
        assert_eq!(clock.clamp(41, 0), 42);
        assert_eq!(clock.last_value(), 42);
        assert_eq!(clock.clamp(43, 0), 43);
        assert_eq!(clock.last_value(), 43);
        // record stable but the guest does not trust it (valid_flags 0): clamped too
        let clock = PvclockClock::new(0, 100);
        assert_eq!(clock.clamp(7, PVCLOCK_TSC_STABLE_BIT), 100);
        // both carry the bit: the raw value, backwards allowed, last_value untouched
        let clock = PvclockClock::new(PVCLOCK_TSC_STABLE_BIT, 100);
        assert_eq!(
            clock.clamp(7, PVCLOCK_TSC_STABLE_BIT | PVCLOCK_GUEST_STOPPED),
            7
        );
        assert_eq!(clock.last_value(), 100);
        // other flag bits do not count as the stable bit
        assert_eq!(clock.clamp(7, PVCLOCK_GUEST_STOPPED), 100);
        // equal value: returned, unchanged
        assert_eq!(clock.clamp(100, 0), 100);
        // pvclock_resume(): last_value back to 0, then a small value is accepted
        clock.resume();
        assert_eq!(clock.last_value(), 0);
        assert_eq!(clock.clamp(1, 0), 1);
        assert_eq!(clock.last_value(), 1);
    }

    #[test]
    fn retry_iterations_bounded_exactly() {
        // a version that stays odd: max_retries + 1 iterations, one TSC read each
        let mut page = Page([0; 64]);
        page.0[0] = 5;
        let rec = unsafe { RawRecord::new(page.0.as_mut_ptr()) };
        for max in [0u64, 1, 10] {
            let mut calls = 0u64;
            let err = rec
                .read::<&str, _>(max, || {
                    calls += 1;
                    if calls > 1000 {
                        Err("runaway")
                    } else {
                        Ok(calls)
                    }
                })
                .unwrap_err();
            assert!(matches!(err, ReadError::Core(ref e) if e.kind == ErrorKind::Retry));
            assert_eq!(calls, max + 1);
        }
        // the TSC source's error is returned as it is
        let err = rec.read::<&str, _>(3, || Err("no tsc")).unwrap_err();
        assert!(matches!(err, ReadError::Tsc("no tsc")));
    }

    #[test]
    fn shift_errors() {
        assert!(pvclock_scale_delta(1, 1, 64).is_err());
        assert!(pvclock_scale_delta(1, 1, -64).is_err());
        assert_eq!(
            pvclock_tsc_khz(0, 0).unwrap_err().kind,
            ErrorKind::ZeroDivision
        );
        assert_eq!(pvclock_tsc_khz(1, -63).unwrap(), 0);
        let info = PvclockVcpuTimeInfo {
            tsc_shift: 70,
            ..Default::default()
        };
        assert!(info
            .read_cycles(1)
            .unwrap_err()
            .message
            .contains("tsc_shift"));
    }
}

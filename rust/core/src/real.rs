//! This computer's KVM guest pvclock page: the first page of the `[vvar_vclock]` mapping
//! (Linux >= 6.13, arch/x86/entry/vdso/vma.c `vvar_vclock_fault`; earlier kernels place it at
//! another offset of `[vvar]`, which this module does not guess).
//!
//! The page is populated only when the kernel's vDSO uses the pvclock (otherwise touching it
//! raises SIGBUS), so it is probed first with `pread` on `/proc/self/mem`, where a missing
//! page is an `EIO`, never a signal. Only the first 32 bytes (vCPU 0's
//! `pvclock_vcpu_time_info`, as `vread_pvclock` uses) are read, never the second page.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{CoreError, ErrorKind, Result};
use crate::pvclock::{PvclockVcpuTimeInfo, RawRecord, ReadError, RECORD_SIZE};
use crate::tsc::rdtsc_ordered;

/// Name of the mapping in `/proc/self/maps`.
pub const VVAR_VCLOCK: &str = "[vvar_vclock]";

/// Cached, probed address of the first page (0 = not located yet).
static PAGE: AtomicUsize = AtomicUsize::new(0);

/// Start and end of the first mapping named `name` in `/proc/<pid>/maps` text.
pub fn find_mapping(maps: &str, name: &str) -> Option<(usize, usize)> {
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        // perms, offset, dev, inode, then the optional path
        let path = fields.nth(4);
        if path != Some(name) {
            continue;
        }
        let (a, b) = range.split_once('-')?;
        let start = usize::from_str_radix(a, 16).ok()?;
        let end = usize::from_str_radix(b, 16).ok()?;
        if end > start {
            return Some((start, end));
        }
    }
    None
}

fn io_error(what: &str, e: std::io::Error) -> CoreError {
    let errno = e.raw_os_error().unwrap_or(5);
    if e.kind() == std::io::ErrorKind::NotFound {
        return CoreError::new(ErrorKind::NotFound, format!("{what}: {e}"));
    }
    CoreError::os(errno, format!("{what}: {e}"))
}

/// Locate `[vvar_vclock]` and probe its first 32 bytes through `/proc/self/mem`.
/// No mapping: `ErrorKind::NotFound`; unreadable page (EIO: the vDSO does not use the pvclock
/// here): `ErrorKind::Os(errno)`.
pub fn probe() -> Result<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| io_error("cannot read /proc/self/maps", e))?;
    let (start, _end) = find_mapping(&maps, VVAR_VCLOCK).ok_or_else(|| {
        CoreError::new(
            ErrorKind::NotFound,
            "no [vvar_vclock] mapping in /proc/self/maps (needs Linux >= 6.13)",
        )
    })?;
    let mem = File::open("/proc/self/mem").map_err(|e| io_error("cannot open /proc/self/mem", e))?;
    let mut buf = [0u8; RECORD_SIZE];
    mem.read_exact_at(&mut buf, start as u64).map_err(|e| {
        io_error(
            &format!(
                "the [vvar_vclock] page at {start:#x} is not readable (the vDSO does not use \
                 the KVM pvclock on this machine)"
            ),
            e,
        )
    })?;
    RawRecord::check_alignment(start)?;
    Ok(start)
}

/// Address of the probed first page, located once per process and then cached.
pub fn page_address() -> Result<usize> {
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return Ok(cached);
    }
    let addr = probe()?;
    PAGE.store(addr, Ordering::Relaxed);
    Ok(addr)
}

/// Read the record with the version-retry protocol, `rdtsc_ordered()` inside each iteration
/// (as `vread_pvclock`). Returns the record and the TSC of the successful iteration.
pub fn read(max_retries: u64) -> Result<(PvclockVcpuTimeInfo, u64)> {
    let addr = page_address()?;
    // SAFETY: the page was probed readable through /proc/self/mem, stays mapped for the life of
    // the process, is page aligned, and only its first 32 bytes are loaded (never written).
    let rec = unsafe { RawRecord::new(addr as *mut u8) };
    rec.read(max_retries, rdtsc_ordered).map_err(|e| match e {
        ReadError::Core(c) | ReadError::Tsc(c) => c,
    })
}

/// kvm-clock now, in ns: the whole `__pvclock_read_cycles` read in Rust (no `last_value`
/// clamp and no stable-bit check: the vDSO would fall back to a syscall when the stable bit is
/// clear; callers can check the flags with [`read`]).
pub fn kvmclock_ns(max_retries: u64) -> Result<u64> {
    let (rec, tsc) = read(max_retries)?;
    rec.read_cycles(tsc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_maps() {
        let maps = "7f75-7f76 r--p 00000000 00:00 0                          [vvar]\n\
                    7f7558b76000-7f7558b78000 r--p 00000000 00:00 0          [vvar_vclock]\n\
                    7f7558b78000-7f7558b7a000 r-xp 00000000 00:00 0          [vdso]\n\
                    55d0-55d1 r--p 00000000 08:01 123 /usr/bin/x y\n";
        assert_eq!(find_mapping(maps, VVAR_VCLOCK), Some((0x7f7558b76000, 0x7f7558b78000)));
        assert_eq!(find_mapping(maps, "[nope]"), None);
        assert_eq!(find_mapping("garbage\n\n", VVAR_VCLOCK), None);
    }

    #[test]
    fn probe_never_crashes() {
        // Either a readable page or a clean error; never a signal.
        match kvmclock_ns(1000) {
            Ok(_) => assert!(page_address().is_ok()),
            Err(e) => assert!(matches!(e.kind, ErrorKind::NotFound | ErrorKind::Os(_) | ErrorKind::Value | ErrorKind::Retry)),
        }
    }
}

//! This computer's KVM guest pvclock page: the first page of the `[vvar_vclock]` mapping
//! (Linux >= 6.13, arch/x86/entry/vdso/vma.c `vvar_vclock_fault`; earlier kernels place it at
//! another offset of `[vvar]`, which this module does not guess).
//!
//! The page is populated only when the kernel's vDSO has used the pvclock
//! (`vclock_was_used(VDSO_CLOCKMODE_PVCLOCK)`; otherwise touching it raises SIGBUS), so it is
//! probed before the first load: `pread` on `/proc/self/mem` first, and because that answers
//! EIO for this VM_PFNMAP mapping even when the page is there, then a load in a forked child
//! (`probe_in_child`), where a SIGBUS kills only the child. Only the first 32 bytes (vCPU 0's
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
    RawRecord::check_alignment(start)?;
    let mut buf = [0u8; RECORD_SIZE];
    let by_mem = File::open("/proc/self/mem").and_then(|mem| mem.read_exact_at(&mut buf, start as u64));
    if by_mem.is_ok() {
        return Ok(start);
    }
    probe_in_child(start)?;
    Ok(start)
}

/// Load the first 32 bytes at `addr` in a forked child and report how the child ended: exit 0
/// means the page is readable; a signal (SIGBUS from `vvar_vclock_fault`) means it is not.
/// The child does nothing but the volatile loads and `_exit` (async-signal-safe after fork).
fn probe_in_child(addr: usize) -> Result<()> {
    // SAFETY: fork is called with no locks held by this code; the child only performs
    // volatile loads of the probed address and `_exit`, both async-signal-safe.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            return Err(io_error("cannot fork to probe [vvar_vclock]", e));
        }
        if pid == 0 {
            let p = addr as *const u64;
            let mut acc = 0u64;
            for i in 0..RECORD_SIZE / 8 {
                acc ^= std::ptr::read_volatile(p.add(i));
            }
            std::hint::black_box(acc);
            libc::_exit(0);
        }
        let mut status: libc::c_int = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(io_error("waitpid on the [vvar_vclock] probe", e));
            }
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            return Ok(());
        }
        let how = if libc::WIFSIGNALED(status) {
            format!("signal {}", libc::WTERMSIG(status))
        } else {
            format!("status {status}")
        };
        Err(CoreError::os(
            libc::EIO,
            format!(
                "the [vvar_vclock] page at {addr:#x} is not readable (a probe load ended with \
                 {how}): the vDSO has never used the KVM pvclock on this machine"
            ),
        ))
    }
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
    // SAFETY: the page was probed readable (/proc/self/mem or a forked load), stays mapped for the life of
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
    use crate::pvclock::DEFAULT_MAX_RETRIES;

    #[test]
    fn parse_maps() {
        let maps = "7f75-7f76 r--p 00000000 00:00 0                          [vvar]\n\
                    7f7558b76000-7f7558b78000 r--p 00000000 00:00 0          [vvar_vclock]\n\
                    7f7558b78000-7f7558b7a000 r-xp 00000000 00:00 0          [vdso]\n\
                    55d0-55d1 r--p 00000000 08:01 123 /usr/bin/x y\n";
        assert_eq!(
            find_mapping(maps, VVAR_VCLOCK),
            Some((0x7f7558b76000, 0x7f7558b78000))
        );
        assert_eq!(find_mapping(maps, "[nope]"), None);
        assert_eq!(find_mapping("garbage\n\n", VVAR_VCLOCK), None);
    }

    #[test]
    fn parse_maps_skips_empty_and_pathless() {
        let maps = "1000-1000 r--p 00000000 00:00 0 [vvar_vclock]\n\
                    3000-2000 r--p 00000000 00:00 0 [vvar_vclock]\n\
                    4000-5000 r--p 00000000 00:00 0\n\
                    6000-6001 r--p 00000000 00:00 0 [vvar_vclock]\n\
                    7000-8000 r--p 00000000 00:00 0 [vvar_vclock]\n";
        // zero-length and reversed ranges are not mappings; the first real one wins
        assert_eq!(find_mapping(maps, VVAR_VCLOCK), Some((0x6000, 0x6001)));
        assert_eq!(
            find_mapping("zz-1000 r--p 0 0:0 0 [vvar_vclock]\n", VVAR_VCLOCK),
            None
        );
    }

    #[test]
    fn io_error_kinds() {
        let nf = io_error("open", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(nf.kind, ErrorKind::NotFound);
        assert!(nf.message.starts_with("open: "));
        let eio = io_error("read", std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(eio.kind, ErrorKind::Os(libc::EIO));
        let eperm = io_error("read", std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(eperm.kind, ErrorKind::Os(libc::EPERM));
        // no errno attached: EIO (5)
        let other = io_error("x", std::io::Error::other("custom"));
        assert_eq!(other.kind, ErrorKind::Os(5));
    }

    #[test]
    fn probe_in_child_reads_exactly_32_bytes() {
        // Two pages: the first readable, the second PROT_NONE. A record ending exactly at the
        // boundary is readable; one starting on the PROT_NONE page kills the child (SIGSEGV),
        // which is reported as EIO, and the parent never touches the memory.
        const PAGE: usize = 4096;
        // SAFETY: fresh anonymous mapping, unmapped at the end of the test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base as usize;
        // SAFETY: the second page of our own mapping.
        assert_eq!(
            unsafe { libc::mprotect((base + PAGE) as *mut libc::c_void, PAGE, libc::PROT_NONE) },
            0
        );
        let bad = probe_in_child(base + PAGE).unwrap_err();
        assert_eq!(bad.kind, ErrorKind::Os(libc::EIO));
        assert!(
            bad.message.contains(&format!("signal {}", libc::SIGSEGV)),
            "{}",
            bad.message
        );
        assert!(probe_in_child(base + PAGE - RECORD_SIZE).is_ok());
        assert!(probe_in_child(base).is_ok());
        // SAFETY: unmapping our own mapping.
        assert_eq!(
            unsafe { libc::munmap(base as *mut libc::c_void, 2 * PAGE) },
            0
        );
    }

    #[test]
    fn real_read_when_available() {
        // Only where this machine's pvclock page is readable (a KVM guest whose vDSO has used
        // it); elsewhere `probe_never_crashes` covers the clean error.
        let Ok(addr) = page_address() else { return };
        assert!(addr != 0 && addr % 4096 == 0, "{addr:#x}");
        // located once, then cached
        assert_eq!(page_address().unwrap(), addr);
        // the stamp is the TSC of the successful iteration: between two ordered reads around it
        let t0 = crate::tsc::rdtsc_ordered().unwrap();
        let (rec, stamp) = read(DEFAULT_MAX_RETRIES).unwrap();
        let t1 = crate::tsc::rdtsc_ordered().unwrap();
        assert!(t0 <= stamp && stamp <= t1, "{t0} {stamp} {t1}");
        // a stable (even) version and a real scale, as KVM always publishes
        assert_eq!(rec.version & 1, 0);
        assert_ne!(rec.tsc_to_system_mul, 0);
        // kvmclock_ns is __pvclock_read_cycles of a fresh read: within 1 s of this record's
        // value at its stamp (the two reads are microseconds apart).
        let ns = kvmclock_ns(DEFAULT_MAX_RETRIES).unwrap();
        let then = rec.read_cycles(stamp).unwrap();
        assert!(ns.abs_diff(then) < 1_000_000_000, "{ns} vs {then}");
        assert!(ns > 1_000, "{ns}");
    }

    #[test]
    fn probe_never_crashes() {
        // Either a readable page or a clean error; never a signal.
        match kvmclock_ns(1000) {
            Ok(_) => assert!(page_address().is_ok()),
            Err(e) => assert!(matches!(
                e.kind,
                ErrorKind::NotFound | ErrorKind::Os(_) | ErrorKind::Value | ErrorKind::Retry
            )),
        }
    }
}

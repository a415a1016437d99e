//! include/linux/seqlock.h: a sequence counter (`seqcount_t`) on an `AtomicU32`.
//!
//! Readers: `read_seqcount_begin` waits while the count is odd (a write in progress) and
//! returns it; `read_seqcount_retry` (after `smp_rmb`) says whether it changed. Writers:
//! `write_seqcount_begin` makes it odd, `write_seqcount_end` even again, with write barriers.
//! The kernel serialises writers externally; here a second `write_begin` inside a write
//! section and a `write_end` outside one are reported as misuse instead of corrupting parity.

use std::sync::atomic::{fence, AtomicU32, Ordering};

use crate::error::{CoreError, ErrorKind, Result};

/// A seqcount shared by threads.
#[derive(Debug, Default)]
pub struct SeqCount {
    seq: AtomicU32,
}

impl SeqCount {
    pub fn new(initial: u32) -> Self {
        SeqCount {
            seq: AtomicU32::new(initial),
        }
    }

    /// The current sequence value (relaxed).
    pub fn sequence(&self) -> u32 {
        self.seq.load(Ordering::Relaxed)
    }

    /// `raw_read_seqcount` + parity test: `Some(seq)` when even (a read section may start).
    #[inline]
    pub fn try_read_begin(&self) -> Option<u32> {
        let s = self.seq.load(Ordering::Acquire);
        if s & 1 == 0 {
            Some(s)
        } else {
            None
        }
    }

    /// `read_seqcount_begin`: spin until even, at most `max_spins` polls (None: forever).
    pub fn read_begin(&self, max_spins: Option<u64>) -> Result<u32> {
        let mut i: u64 = 0;
        loop {
            if let Some(s) = self.try_read_begin() {
                return Ok(s);
            }
            if let Some(max) = max_spins {
                if i >= max {
                    return Err(CoreError::new(
                        ErrorKind::SeqCount,
                        format!(
                            "sequence stayed odd (a write section never ended) for {max} polls"
                        ),
                    ));
                }
            }
            i += 1;
            crate::pvclock::backoff(i);
        }
    }

    /// `read_seqcount_retry(s, start)`: `smp_rmb()` then "has it changed since `start`".
    #[inline]
    pub fn read_retry(&self, start: u32) -> bool {
        fence(Ordering::Acquire);
        self.seq.load(Ordering::Relaxed) != start
    }

    /// `write_seqcount_begin`: even -> odd, then `smp_wmb()`.
    pub fn write_begin(&self) -> Result<()> {
        let cur = self.seq.load(Ordering::Relaxed);
        if cur & 1 != 0
            || self
                .seq
                .compare_exchange(
                    cur,
                    cur.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return Err(CoreError::new(
                ErrorKind::SeqCount,
                "write_begin inside a write section: seqcount writers must be serialised \
                 (write_end the current section first)",
            ));
        }
        fence(Ordering::Release);
        Ok(())
    }

    /// `write_seqcount_end`: `smp_wmb()`, then odd -> even.
    pub fn write_end(&self) -> Result<()> {
        let cur = self.seq.load(Ordering::Relaxed);
        if cur & 1 == 0
            || self
                .seq
                .compare_exchange(
                    cur,
                    cur.wrapping_add(1),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return Err(CoreError::new(
                ErrorKind::SeqCount,
                "write_end without write_begin: the sequence is even (no write section open)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn parity_and_misuse() {
        let s = SeqCount::default();
        assert!(s.write_end().is_err());
        let r = s.read_begin(Some(0)).unwrap();
        s.write_begin().unwrap();
        assert!(s.write_begin().is_err());
        assert!(s.read_begin(Some(3)).is_err());
        assert!(s.read_retry(r));
        s.write_end().unwrap();
        assert_eq!(s.sequence(), 2);
        assert!(s.read_retry(r));
        let s2 = SeqCount::new(u32::MAX - 1);
        s2.write_begin().unwrap();
        s2.write_end().unwrap();
        assert_eq!(s2.sequence(), 0);
    }

    #[test]
    fn retry_only_when_changed() {
        let s = SeqCount::new(6);
        let r = s.read_begin(Some(0)).unwrap();
        assert_eq!(r, 6);
        assert!(!s.read_retry(r)); // nothing written: the read section is valid
        assert!(s.read_retry(r.wrapping_add(2))); // any other start value: retry
        s.write_begin().unwrap();
        assert_eq!(s.sequence(), 7);
        assert_eq!(s.try_read_begin(), None);
        s.write_end().unwrap();
        assert_eq!(s.try_read_begin(), Some(8));
        assert!(s.read_retry(r));
    }

    #[test]
    fn read_begin_waits_for_the_writer() {
        // odd when the reader starts; the writer ends its section after 50 ms: a reader that
        // keeps polling sees the new even value.
        let s = SeqCount::new(10);
        s.write_begin().unwrap();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                s.write_end().unwrap();
            });
            // 10**7 polls (yielding after the first 128) outlast the 50 ms by far, and end
            // the test in seconds if the section never ends
            assert_eq!(s.read_begin(Some(10_000_000)).unwrap(), 12);
        });
        // a budget of n polls on a section that never ends: an error, not a hang
        s.write_begin().unwrap();
        for max in [0, 1, 5] {
            assert_eq!(
                s.read_begin(Some(max)).unwrap_err().kind,
                ErrorKind::SeqCount
            );
        }
    }

    #[test]
    fn readers_see_consistent_pairs() {
        let s = SeqCount::default();
        let a = AtomicU64::new(0);
        let b = AtomicU64::new(0);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for i in 1..50_000u64 {
                    s.write_begin().unwrap();
                    a.store(i, Ordering::Relaxed);
                    b.store(i * 3, Ordering::Relaxed);
                    s.write_end().unwrap();
                }
            });
            sc.spawn(|| {
                for _ in 0..50_000 {
                    // bounded, so that a broken retry test fails instead of hanging
                    for attempt in 0.. {
                        assert!(attempt < 1_000_000, "read section retried forever");
                        let st = s.read_begin(Some(1_000_000)).unwrap();
                        let x = a.load(Ordering::Relaxed);
                        let y = b.load(Ordering::Relaxed);
                        if !s.read_retry(st) {
                            assert_eq!(y, x * 3);
                            break;
                        }
                    }
                }
            });
        });
    }
}

//! Core error type: which argument, what went wrong, and which Python exception it maps to.
//!
//! The core is plain Rust; the binding layer maps [`ErrorKind`] to `ValueError`,
//! `OverflowError`, `ZeroDivisionError`, `kvmclock.PvclockRetryError`, `kvmclock.SeqCountError`
//! or `OSError`. Messages always name the argument(s) involved and the valid range.

use std::fmt;

/// What kind of failure, i.e. which Python exception class the binding raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Input the kernel cannot take (endless loop, undefined shift, bad layout): `ValueError`.
    Value,
    /// A value outside its C type or a quotient that does not fit (#DE): `OverflowError`.
    Overflow,
    /// Division by zero (#DE on divl/divq, do_div by 0): `ZeroDivisionError`.
    ZeroDivision,
    /// Version-retry read gave up: `PvclockRetryError` (a `ValueError`).
    Retry,
    /// Seqcount misuse: `SeqCountError` (a `ValueError`).
    SeqCount,
    /// A real resource is missing: `FileNotFoundError`.
    NotFound,
    /// I/O or platform failure (EIO on the probe, no rdtsc): `OSError` with `errno`.
    Os(i32),
}

/// An error from the core, with a complete human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CoreError {
            kind,
            message: message.into(),
        }
    }

    /// `arg must be in lo..=hi, got v` (`ValueError`): a kernel-domain range (shifts).
    pub fn range(arg: &str, lo: i128, hi: i128, got: i128) -> Self {
        Self::new(
            ErrorKind::Value,
            format!("{arg} must be in {lo}..={hi}, got {got}"),
        )
    }

    /// `arg` outside its C integer type (`OverflowError`).
    pub fn type_range(arg: &str, ctype: &str, lo: i128, hi: i128, got: &str) -> Self {
        Self::new(
            ErrorKind::Overflow,
            format!("{arg} must be a {ctype} in {lo}..={hi}, got {got}"),
        )
    }

    pub fn value(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Value, message)
    }

    pub fn overflow(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overflow, message)
    }

    pub fn zero_division(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ZeroDivision, message)
    }

    pub fn os(errno: i32, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Os(errno), message)
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CoreError {}

/// Result alias of the core.
pub type Result<T> = std::result::Result<T, CoreError>;

/// Check a kernel-domain shift (or other small count) and return it as `u32`/`i32`.
#[inline]
pub fn check_range(arg: &str, v: i64, lo: i64, hi: i64) -> Result<i64> {
    if v < lo || v > hi {
        Err(CoreError::range(arg, lo as i128, hi as i128, v as i128))
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_message() {
        let e = CoreError::range("shift", -63, 63, 64);
        assert_eq!(e.to_string(), "shift must be in -63..=63, got 64");
        assert_eq!(e.kind, ErrorKind::Value);
        let e = CoreError::os(5, "probe failed");
        assert_eq!(format!("{e}"), "probe failed");
        assert_eq!(e.kind, ErrorKind::Os(5));
    }

    #[test]
    fn check_range_bounds_inclusive() {
        // lo and hi accepted, lo - 1 and hi + 1 rejected, the value passed through
        assert_eq!(check_range("x", -63, -63, 63), Ok(-63));
        assert_eq!(check_range("x", 63, -63, 63), Ok(63));
        assert_eq!(check_range("x", 5, -63, 63), Ok(5));
        assert_eq!(
            check_range("x", -64, -63, 63).unwrap_err().kind,
            ErrorKind::Value
        );
        assert_eq!(
            check_range("x", 64, -63, 63).unwrap_err().kind,
            ErrorKind::Value
        );
    }
}

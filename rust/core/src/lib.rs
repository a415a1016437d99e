//! kvmclock-core: plain-Rust, bit-exact model of the x86-64 KVM clock math
//! (no PyO3 here; `rust/bindings` is the thin Python layer).
//!
//! Every function follows the kernel source (torvalds/linux) for x86-64; see each module for the
//! file and function it models.

pub mod batch;
pub mod clocksource;
pub mod error;
pub mod math64;
pub mod pvclock;
pub mod real;
pub mod seqcount;
pub mod timescale;
pub mod tsc;

pub use error::{CoreError, ErrorKind, Result};

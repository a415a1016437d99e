//! `kvmclock._native`: thin PyO3 layer over `kvmclock-core`.
//!
//! Argument range checks live here so errors name the argument; the arithmetic lives in the
//! core. Long work and spin loops run detached from the interpreter (`py.detach`). No Rust
//! panic reaches Python: user-controlled paths return `PyResult`, and PyO3 turns any residual
//! panic into `PanicException` rather than aborting.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;

mod args;
mod buffer;
mod classes;
mod functions;

create_exception!(
    kvmclock,
    PvclockRetryError,
    PyValueError,
    "A pvclock record's version stayed odd or kept changing for max_retries iterations."
);
create_exception!(
    kvmclock,
    SeqCountError,
    PyValueError,
    "SeqCount misuse: write_end outside a write section, nested write_begin, or a bounded \
     read_begin that timed out."
);

#[pyo3::pymodule]
mod _native {
    #[pymodule_export]
    use super::{PvclockRetryError, SeqCountError};

    #[pymodule_export]
    use super::classes::{PvclockClock, PvclockVcpuTimeInfo, PvclockWallClock, SeqCount};

    #[pymodule_export]
    use super::functions::{
        adjust_tsc_khz, clocks_calc_mult_shift, clocksource_cyc2ns, div_frac, get_time_scale,
        kvmclock_ns, mul_s64_u64_shr, mul_u64_u32_div, mul_u64_u32_shr, mul_u64_u64_shr,
        pvclock_read, pvclock_read_cycles_batch, pvclock_scale_delta, pvclock_scale_delta_batch,
        pvclock_tsc_khz, pvclock_write, rdtsc, scale_tsc, tsc_scaling_ratio, vclock_page_address,
        vclock_read,
    };

    /// `PVCLOCK_TSC_STABLE_BIT` (arch/x86/include/asm/pvclock-abi.h).
    #[pymodule_export]
    const PVCLOCK_TSC_STABLE_BIT: u8 = kvmclock_core::pvclock::PVCLOCK_TSC_STABLE_BIT;
    /// `PVCLOCK_GUEST_STOPPED` (pvclock-abi.h).
    #[pymodule_export]
    const PVCLOCK_GUEST_STOPPED: u8 = kvmclock_core::pvclock::PVCLOCK_GUEST_STOPPED;
    /// `PVCLOCK_COUNTS_FROM_ZERO` (pvclock-abi.h).
    #[pymodule_export]
    const PVCLOCK_COUNTS_FROM_ZERO: u8 = kvmclock_core::pvclock::PVCLOCK_COUNTS_FROM_ZERO;
    /// Size of `struct pvclock_vcpu_time_info` in bytes.
    #[pymodule_export]
    const PVCLOCK_RECORD_SIZE: usize = kvmclock_core::pvclock::RECORD_SIZE;
    /// Size of `struct pvclock_wall_clock` in bytes.
    #[pymodule_export]
    const PVCLOCK_WALL_CLOCK_SIZE: usize = kvmclock_core::pvclock::WALL_CLOCK_SIZE;
    /// Default bound on version-retry iterations of the pvclock readers.
    #[pymodule_export]
    const DEFAULT_MAX_RETRIES: u64 = kvmclock_core::pvclock::DEFAULT_MAX_RETRIES;
}

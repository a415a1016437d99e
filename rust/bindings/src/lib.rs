use pyo3::prelude::*;

#[pymodule]
mod _native {
    use pyo3::prelude::*;

    #[pyfunction]
    fn mul_u64_u32_shr(a: u64, mul: u32, shift: u32) -> u64 {
        kvmclock_core::math64::mul_u64_u32_shr(a, mul, shift)
    }
}

//! Emit PyO3's interpreter cfgs (Py_3_12, Py_GIL_DISABLED, Py_LIMITED_API, PyPy) so
//! `args.rs` can pick the `PyLongObject` layout of the interpreter it is built for.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}

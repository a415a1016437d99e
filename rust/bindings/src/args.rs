//! Argument extraction with messages that name the argument and its valid range.
//!
//! `bool` is not an int here (TypeError); `int` and its subclasses and objects with
//! `__index__` (numpy integer scalars) are accepted. Values outside the C type raise
//! `OverflowError`; values outside a kernel domain (shift counts) raise `ValueError`.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use kvmclock_core::{CoreError, ErrorKind};

use crate::{PvclockRetryError, SeqCountError};

/// A constructor argument that may be missing (default) but, when given, is checked strictly
/// (an explicit `None` is a TypeError, not "missing").
pub enum Arg<'py> {
    Missing,
    Given(Bound<'py, PyAny>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Arg<'py> {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Arg::Given(obj.to_owned()))
    }
}

/// Convert a core error into the Python exception of its kind.
pub fn core_err(e: CoreError) -> PyErr {
    match e.kind {
        ErrorKind::Value => PyValueError::new_err(e.message),
        ErrorKind::Overflow => PyOverflowError::new_err(e.message),
        ErrorKind::ZeroDivision => pyo3::exceptions::PyZeroDivisionError::new_err(e.message),
        ErrorKind::Retry => PvclockRetryError::new_err(e.message),
        ErrorKind::SeqCount => SeqCountError::new_err(e.message),
        ErrorKind::NotFound => pyo3::exceptions::PyFileNotFoundError::new_err((2, e.message)),
        ErrorKind::Os(errno) => pyo3::exceptions::PyOSError::new_err((errno, e.message)),
    }
}

/// Value of a CPython int as i128; `None` when it does not fit -2**63..2**64-1.
///
/// # Safety
/// `p` must be a live `int` object and the caller attached to the interpreter.
#[inline(always)]
unsafe fn long_value(p: *mut ffi::PyObject) -> Option<i128> {
    unsafe {
        let mut overflow: std::os::raw::c_int = 0;
        let v = ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow);
        if overflow == 0 {
            if v == -1 && !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
                return None;
            }
            return Some(v as i128);
        }
        if overflow > 0 {
            let u = ffi::PyLong_AsUnsignedLongLong(p);
            if u == u64::MAX && !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
                return None;
            }
            return Some(u as i128);
        }
        None
    }
}

/// Value of an exact `int` with at most two 30-bit digits, read from the object directly
/// (CPython's `PyLongObject` layout: header, then `ob_size` (<= 3.11) or `lv_tag` (>= 3.12),
/// then the `ob_digit` array at offset 24). `None`: not compact, use the C API.
///
/// # Safety
/// `p` must be a live exact `int` on a GIL-enabled, non-limited-API CPython build.
#[cfg(all(
    not(Py_LIMITED_API),
    not(Py_GIL_DISABLED),
    not(PyPy),
    not(GraalPy),
    target_pointer_width = "64"
))]
#[inline(always)]
unsafe fn compact_value(p: *mut ffi::PyObject) -> Option<i128> {
    unsafe {
        let word = *(p as *const isize).add(2);
        let digits = (p as *const u8).add(24) as *const u32;
        #[cfg(Py_3_12)]
        let (n, negative) = {
            // lv_tag = ndigits << 3 | sign (0 positive, 1 zero, 2 negative)
            let tag = word as usize;
            (tag >> 3, tag & 3 == 2)
        };
        #[cfg(not(Py_3_12))]
        let (n, negative) = (word.unsigned_abs(), word < 0);
        let mag: i128 = match n {
            0 => 0,
            1 => *digits as i128,
            2 => (*digits as i128) | ((*digits.add(1) as i128) << 30),
            _ => return None,
        };
        Some(if negative { -mag } else { mag })
    }
}

#[cfg(not(all(
    not(Py_LIMITED_API),
    not(Py_GIL_DISABLED),
    not(PyPy),
    not(GraalPy),
    target_pointer_width = "64"
)))]
#[inline(always)]
unsafe fn compact_value(_p: *mut ffi::PyObject) -> Option<i128> {
    None
}

/// The integer value of `obj` (None: outside -2**63..=2**64-1), or TypeError naming `name`.
#[inline(always)]
pub fn int_value(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<i128>> {
    let p = obj.as_ptr();
    // SAFETY: `p` is a live object borrowed for the call; we are attached.
    unsafe {
        if ffi::PyLong_CheckExact(p) != 0 {
            if let Some(v) = compact_value(p) {
                return Ok(Some(v));
            }
            return Ok(long_value(p));
        }
    }
    int_value_slow(obj, name)
}

#[cold]
fn int_value_slow(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<i128>> {
    let p = obj.as_ptr();
    // SAFETY: as above.
    unsafe {
        if ffi::PyBool_Check(p) != 0 {
            return Err(PyTypeError::new_err(format!(
                "{name} must be an int, got bool"
            )));
        }
        if ffi::PyLong_Check(p) != 0 {
            return Ok(long_value(p));
        }
        if ffi::PyFloat_Check(p) == 0 && ffi::PyIndex_Check(p) != 0 {
            let idx = ffi::PyNumber_Index(p);
            if idx.is_null() {
                ffi::PyErr_Clear();
            } else {
                let idx = Bound::from_owned_ptr(obj.py(), idx);
                if ffi::PyBool_Check(idx.as_ptr()) == 0 {
                    return Ok(long_value(idx.as_ptr()));
                }
            }
        }
    }
    Err(type_error(obj, name, "an int"))
}

/// `TypeError: {name} must be {what}, got {type}`.
pub fn type_error(obj: &Bound<'_, PyAny>, name: &str, what: &str) -> PyErr {
    let tname = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".to_string());
    PyTypeError::new_err(format!("{name} must be {what}, got {tname}"))
}

fn shown(obj: &Bound<'_, PyAny>) -> String {
    obj.str()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// An int in `lo..=hi` of C type `ctype`; outside: OverflowError naming the argument.
#[inline(always)]
pub fn ctype_arg(
    obj: &Bound<'_, PyAny>,
    name: &str,
    ctype: &str,
    lo: i128,
    hi: i128,
) -> PyResult<i128> {
    match int_value(obj, name)? {
        Some(v) if v >= lo && v <= hi => Ok(v),
        _ => Err(PyOverflowError::new_err(format!(
            "{name} must be a {ctype} in {lo}..={hi}, got {}",
            shown(obj)
        ))),
    }
}

/// An int in the kernel domain `lo..=hi` (e.g. a shift count); outside: ValueError.
#[inline(always)]
pub fn domain_arg(obj: &Bound<'_, PyAny>, name: &str, lo: i128, hi: i128) -> PyResult<i128> {
    match int_value(obj, name)? {
        Some(v) if v >= lo && v <= hi => Ok(v),
        _ => Err(PyValueError::new_err(format!(
            "{name} must be in {lo}..={hi}, got {}",
            shown(obj)
        ))),
    }
}

#[inline(always)]
pub fn u64_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    ctype_arg(obj, name, "u64", 0, u64::MAX as i128).map(|v| v as u64)
}

#[inline(always)]
pub fn u32_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u32> {
    ctype_arg(obj, name, "u32", 0, u32::MAX as i128).map(|v| v as u32)
}

#[inline(always)]
pub fn s64_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    ctype_arg(obj, name, "s64", i64::MIN as i128, i64::MAX as i128).map(|v| v as i64)
}

#[inline(always)]
pub fn s32_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<i32> {
    ctype_arg(obj, name, "s32", i32::MIN as i128, i32::MAX as i128).map(|v| v as i32)
}

#[inline(always)]
pub fn s8_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<i8> {
    ctype_arg(obj, name, "s8", -128, 127).map(|v| v as i8)
}

#[inline(always)]
pub fn u8_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u8> {
    ctype_arg(obj, name, "u8", 0, 255).map(|v| v as u8)
}

/// Optional constructor argument with a default.
pub fn opt<'py, T>(
    arg: &Arg<'py>,
    default: T,
    f: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<T>,
) -> PyResult<T> {
    match arg {
        Arg::Missing => Ok(default),
        Arg::Given(obj) => f(obj),
    }
}

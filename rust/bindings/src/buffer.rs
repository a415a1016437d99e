//! The buffer protocol, by hand: one `Py_buffer` per argument, checked for C contiguity,
//! writability, item format and length, with errors that name the argument.

use std::ffi::CStr;
use std::os::raw::c_char;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

/// An exported buffer; released on drop (while attached to the interpreter).
pub struct Buffer {
    view: Box<ffi::Py_buffer>,
}

impl Buffer {
    /// Export `obj`'s buffer (strides and format requested); it must be C-contiguous, and
    /// writable when `writable`.
    pub fn get(obj: &Bound<'_, PyAny>, name: &str, writable: bool) -> PyResult<Buffer> {
        let p = obj.as_ptr();
        // SAFETY: attached; `p` is live; the view is released in Drop only when filled.
        unsafe {
            if ffi::PyObject_CheckBuffer(p) == 0 {
                return Err(crate::args::type_error(
                    obj,
                    name,
                    "a buffer (bytes-like object: bytearray, mmap, numpy array, memoryview)",
                ));
            }
            let mut view: Box<ffi::Py_buffer> = Box::new(std::mem::zeroed());
            if ffi::PyObject_GetBuffer(p, &mut *view, ffi::PyBUF_RECORDS_RO) != 0 {
                let cause = PyErr::fetch(obj.py());
                let err = PyTypeError::new_err(format!("{name}: cannot export a buffer ({cause})"));
                err.set_cause(obj.py(), Some(cause));
                return Err(err);
            }
            let buf = Buffer { view };
            if ffi::PyBuffer_IsContiguous(&*buf.view, b'C' as c_char) == 0 {
                return Err(PyValueError::new_err(format!(
                    "{name} must be a C-contiguous buffer (got a strided view; pass a \
                     contiguous copy)"
                )));
            }
            if writable && buf.view.readonly != 0 {
                return Err(PyTypeError::new_err(format!(
                    "{name} must be a writable buffer, got a read-only one"
                )));
            }
            Ok(buf)
        }
    }

    pub fn ptr(&self) -> *mut u8 {
        self.view.buf as *mut u8
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.view.len as usize
    }

    pub fn itemsize(&self) -> usize {
        self.view.itemsize as usize
    }

    /// The struct-module format ("B" when the exporter gives none).
    pub fn format(&self) -> &str {
        if self.view.format.is_null() {
            return "B";
        }
        // SAFETY: a non-null format is a NUL-terminated string owned by the export.
        unsafe { CStr::from_ptr(self.view.format) }
            .to_str()
            .unwrap_or("?")
    }

    pub fn ndim(&self) -> usize {
        self.view.ndim as usize
    }

    /// Shape (empty for 0-d).
    pub fn shape(&self) -> Vec<usize> {
        if self.view.shape.is_null() {
            return vec![self.len() / self.itemsize().max(1)];
        }
        // SAFETY: shape has ndim entries when non-null.
        (0..self.ndim())
            .map(|i| unsafe { *self.view.shape.add(i) } as usize)
            .collect()
    }

    /// A buffer of native u64: format Q/L (native or '<'/'=' standard size) with itemsize 8,
    /// or raw bytes (B/b/c) whose length is a multiple of 8. Returns the element count.
    pub fn u64_count(&self, name: &str) -> PyResult<usize> {
        let fmt = self.format();
        let core = fmt.trim_start_matches(['@', '=', '<']);
        let native_order = !fmt.starts_with(['>', '!']);
        match (core, self.itemsize()) {
            ("Q" | "L", 8) if native_order => Ok(self.len() / 8),
            ("B" | "b" | "c", 1) => {
                if self.len() % 8 != 0 {
                    Err(PyValueError::new_err(format!(
                        "{name} must hold whole u64 values: a byte buffer of {} bytes is not a \
                         multiple of 8",
                        self.len()
                    )))
                } else {
                    Ok(self.len() / 8)
                }
            }
            _ => Err(PyTypeError::new_err(format!(
                "{name} must be a buffer of u64 (numpy uint64, array('Q'), format 'Q' or 'L' \
                 with itemsize 8, or raw bytes), got format {fmt:?} with itemsize {}",
                self.itemsize()
            ))),
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the view was filled by PyObject_GetBuffer; Buffer is !Send, so it is dropped
        // on the thread that holds it, which is attached wherever Buffers live (never moved
        // into `detach`).
        unsafe { ffi::PyBuffer_Release(&mut *self.view) }
    }
}

//! Python classes: the pvclock ABI records, the guest clock with its `last_value`, SeqCount.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple, PyType};

use kvmclock_core::pvclock::{self, RawRecord, DEFAULT_MAX_RETRIES};
use kvmclock_core::seqcount;

use crate::args::{core_err, opt, s8_arg, type_error, u32_arg, u64_arg, u8_arg, Arg};
use crate::buffer::Buffer;
use crate::functions::{record_addr, retry_read, tsc_source};

type Any<'py> = Bound<'py, PyAny>;

fn bytes_arg(b: &Any<'_>) -> PyResult<Vec<u8>> {
    // bytes fast path, then any C-contiguous bytes-like object
    if let Ok(bytes) = b.cast::<PyBytes>() {
        return Ok(bytes.as_bytes().to_vec());
    }
    let buf = Buffer::get(b, "b", false).map_err(|e| {
        if e.is_instance_of::<PyTypeError>(b.py()) {
            type_error(b, "b", "a bytes-like object")
        } else {
            e
        }
    })?;
    let mut v = vec![0u8; buf.len()];
    // SAFETY: the export is valid for len bytes and C-contiguous.
    unsafe { std::ptr::copy_nonoverlapping(buf.ptr(), v.as_mut_ptr(), buf.len()) };
    Ok(v)
}

// ------------------------------------------------------------------ PvclockVcpuTimeInfo

/// `struct pvclock_vcpu_time_info` (arch/x86/include/asm/pvclock-abi.h): the 32-byte
/// little-endian record KVM writes into guest memory. Frozen, hashable, equal by value.
#[pyclass(frozen, eq, hash, module = "kvmclock._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PvclockVcpuTimeInfo {
    pub inner: pvclock::PvclockVcpuTimeInfo,
}

const RECORD_FIELDS: [&str; 6] = [
    "version",
    "tsc_timestamp",
    "system_time",
    "tsc_to_system_mul",
    "tsc_shift",
    "flags",
];

#[pymethods]
impl PvclockVcpuTimeInfo {
    #[new]
    #[pyo3(
        signature = (version = Arg::Missing, tsc_timestamp = Arg::Missing, system_time = Arg::Missing, tsc_to_system_mul = Arg::Missing, tsc_shift = Arg::Missing, flags = Arg::Missing),
        text_signature = "(version=0, tsc_timestamp=0, system_time=0, tsc_to_system_mul=0, tsc_shift=0, flags=0)"
    )]
    fn new(
        version: Arg<'_>,
        tsc_timestamp: Arg<'_>,
        system_time: Arg<'_>,
        tsc_to_system_mul: Arg<'_>,
        tsc_shift: Arg<'_>,
        flags: Arg<'_>,
    ) -> PyResult<Self> {
        Ok(PvclockVcpuTimeInfo {
            inner: pvclock::PvclockVcpuTimeInfo {
                version: opt(&version, 0, |o| u32_arg(o, "version"))?,
                tsc_timestamp: opt(&tsc_timestamp, 0, |o| u64_arg(o, "tsc_timestamp"))?,
                system_time: opt(&system_time, 0, |o| u64_arg(o, "system_time"))?,
                tsc_to_system_mul: opt(&tsc_to_system_mul, 0, |o| u32_arg(o, "tsc_to_system_mul"))?,
                tsc_shift: opt(&tsc_shift, 0, |o| s8_arg(o, "tsc_shift"))?,
                flags: opt(&flags, 0, |o| u8_arg(o, "flags"))?,
            },
        })
    }

    #[getter]
    fn version(&self) -> u32 {
        self.inner.version
    }
    #[getter]
    fn tsc_timestamp(&self) -> u64 {
        self.inner.tsc_timestamp
    }
    #[getter]
    fn system_time(&self) -> u64 {
        self.inner.system_time
    }
    #[getter]
    fn tsc_to_system_mul(&self) -> u32 {
        self.inner.tsc_to_system_mul
    }
    #[getter]
    fn tsc_shift(&self) -> i8 {
        self.inner.tsc_shift
    }
    #[getter]
    fn flags(&self) -> u8 {
        self.inner.flags
    }

    /// `__pvclock_read_cycles(src, tsc)` (arch/x86/include/asm/pvclock.h): system_time +
    /// pvclock_scale_delta(tsc - tsc_timestamp, tsc_to_system_mul, tsc_shift), u64 wrapping.
    #[pyo3(signature = (tsc))]
    fn read_cycles(&self, tsc: &Any<'_>) -> PyResult<u64> {
        let t = u64_arg(tsc, "tsc")?;
        self.inner.read_cycles(t).map_err(core_err)
    }

    /// The 32 ABI bytes (little endian, pads zero).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    /// Decode exactly 32 ABI bytes from any bytes-like object.
    #[classmethod]
    #[pyo3(signature = (b))]
    fn from_bytes(_cls: &Bound<'_, PyType>, b: &Any<'_>) -> PyResult<Self> {
        let v = bytes_arg(b)?;
        Ok(PvclockVcpuTimeInfo {
            inner: pvclock::PvclockVcpuTimeInfo::from_bytes(&v).map_err(core_err)?,
        })
    }

    /// A copy with the given fields replaced (keyword arguments named like the fields).
    #[pyo3(signature = (**fields))]
    fn replace(&self, fields: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut r = self.inner;
        if let Some(d) = fields {
            for (k, v) in d.iter() {
                let key: String = k.extract()?;
                match key.as_str() {
                    "version" => r.version = u32_arg(&v, "version")?,
                    "tsc_timestamp" => r.tsc_timestamp = u64_arg(&v, "tsc_timestamp")?,
                    "system_time" => r.system_time = u64_arg(&v, "system_time")?,
                    "tsc_to_system_mul" => r.tsc_to_system_mul = u32_arg(&v, "tsc_to_system_mul")?,
                    "tsc_shift" => r.tsc_shift = s8_arg(&v, "tsc_shift")?,
                    "flags" => r.flags = u8_arg(&v, "flags")?,
                    other => {
                        return Err(PyTypeError::new_err(format!(
                            "replace() got an unexpected field {other:?}; fields are {}",
                            RECORD_FIELDS.join(", ")
                        )))
                    }
                }
            }
        }
        Ok(PvclockVcpuTimeInfo { inner: r })
    }

    /// Pickle support: rebuilt from the field values.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let r = slf.get().inner;
        let args = (
            r.version,
            r.tsc_timestamp,
            r.system_time,
            r.tsc_to_system_mul,
            r.tsc_shift,
            r.flags,
        );
        Ok((
            slf.get_type().into_any(),
            PyTuple::new(
                slf.py(),
                [
                    args.0.into_pyobject(slf.py())?.into_any(),
                    args.1.into_pyobject(slf.py())?.into_any(),
                    args.2.into_pyobject(slf.py())?.into_any(),
                    args.3.into_pyobject(slf.py())?.into_any(),
                    args.4.into_pyobject(slf.py())?.into_any(),
                    args.5.into_pyobject(slf.py())?.into_any(),
                ],
            )?,
        ))
    }

    fn __repr__(&self) -> String {
        let r = &self.inner;
        format!(
            "PvclockVcpuTimeInfo(version={}, tsc_timestamp={}, system_time={}, \
             tsc_to_system_mul={}, tsc_shift={}, flags={})",
            r.version, r.tsc_timestamp, r.system_time, r.tsc_to_system_mul, r.tsc_shift, r.flags
        )
    }
}

// ------------------------------------------------------------------ PvclockWallClock

/// `struct pvclock_wall_clock` (pvclock-abi.h): u32 version, sec, nsec; 12 bytes LE.
#[pyclass(frozen, eq, hash, module = "kvmclock._native")]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PvclockWallClock {
    inner: pvclock::PvclockWallClock,
}

#[pymethods]
impl PvclockWallClock {
    #[new]
    #[pyo3(
        signature = (version = Arg::Missing, sec = Arg::Missing, nsec = Arg::Missing),
        text_signature = "(version=0, sec=0, nsec=0)"
    )]
    fn new(version: Arg<'_>, sec: Arg<'_>, nsec: Arg<'_>) -> PyResult<Self> {
        Ok(PvclockWallClock {
            inner: pvclock::PvclockWallClock {
                version: opt(&version, 0, |o| u32_arg(o, "version"))?,
                sec: opt(&sec, 0, |o| u32_arg(o, "sec"))?,
                nsec: opt(&nsec, 0, |o| u32_arg(o, "nsec"))?,
            },
        })
    }

    #[getter]
    fn version(&self) -> u32 {
        self.inner.version
    }
    #[getter]
    fn sec(&self) -> u32 {
        self.inner.sec
    }
    #[getter]
    fn nsec(&self) -> u32 {
        self.inner.nsec
    }

    /// The 12 ABI bytes.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    /// Decode exactly 12 ABI bytes from any bytes-like object.
    #[classmethod]
    #[pyo3(signature = (b))]
    fn from_bytes(_cls: &Bound<'_, PyType>, b: &Any<'_>) -> PyResult<Self> {
        let v = bytes_arg(b)?;
        Ok(PvclockWallClock {
            inner: pvclock::PvclockWallClock::from_bytes(&v).map_err(core_err)?,
        })
    }

    /// A copy with the given fields replaced.
    #[pyo3(signature = (**fields))]
    fn replace(&self, fields: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut r = self.inner;
        if let Some(d) = fields {
            for (k, v) in d.iter() {
                let key: String = k.extract()?;
                match key.as_str() {
                    "version" => r.version = u32_arg(&v, "version")?,
                    "sec" => r.sec = u32_arg(&v, "sec")?,
                    "nsec" => r.nsec = u32_arg(&v, "nsec")?,
                    other => {
                        return Err(PyTypeError::new_err(format!(
                            "replace() got an unexpected field {other:?}; fields are version, sec, nsec"
                        )))
                    }
                }
            }
        }
        Ok(PvclockWallClock { inner: r })
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (u32, u32, u32))> {
        let r = slf.get().inner;
        Ok((slf.get_type().into_any(), (r.version, r.sec, r.nsec)))
    }

    fn __repr__(&self) -> String {
        format!(
            "PvclockWallClock(version={}, sec={}, nsec={})",
            self.inner.version, self.inner.sec, self.inner.nsec
        )
    }
}

// ------------------------------------------------------------------ PvclockClock

/// Guest-side `pvclock_clocksource_read` (arch/x86/kernel/pvclock.c): `valid_flags` and the
/// shared atomic `last_value` clamp. Thread-safe.
#[pyclass(frozen, module = "kvmclock._native")]
pub struct PvclockClock {
    inner: pvclock::PvclockClock,
}

impl PvclockClock {
    fn do_read(
        &self,
        py: Python<'_>,
        buffer: &Any<'_>,
        tsc: &Any<'_>,
        offset: Option<&Any<'_>>,
        max_retries: Option<&Any<'_>>,
    ) -> PyResult<(u64, u8, u64)> {
        let buf = Buffer::get(buffer, "buffer", true)?;
        let zero;
        let off = match offset {
            Some(o) => o,
            None => {
                zero = 0u8.into_pyobject(py)?.into_any();
                &zero
            }
        };
        let addr = record_addr(&buf, off, "buffer")?;
        let max = match max_retries {
            Some(m) => u64_arg(m, "max_retries")?,
            None => DEFAULT_MAX_RETRIES,
        };
        let src = tsc_source(tsc)?;
        // SAFETY: writable export kept alive until `buf` drops; bounds/alignment checked.
        let rec = unsafe { RawRecord::new(addr as *mut u8) };
        let r = retry_read(py, rec, src, max, Some(&self.inner));
        drop(buf);
        r
    }
}

#[pymethods]
impl PvclockClock {
    #[new]
    #[pyo3(
        signature = (valid_flags = Arg::Missing, last_value = Arg::Missing),
        text_signature = "(valid_flags=0, last_value=0)"
    )]
    fn new(valid_flags: Arg<'_>, last_value: Arg<'_>) -> PyResult<Self> {
        let vf = opt(&valid_flags, 0, |o| u8_arg(o, "valid_flags"))?;
        let lv = opt(&last_value, 0, |o| u64_arg(o, "last_value"))?;
        Ok(PvclockClock {
            inner: pvclock::PvclockClock::new(vf, lv),
        })
    }

    /// `pvclock_clocksource_read`: version-retry read, clear GUEST_STOPPED in the record when
    /// seen, then the `last_value` clamp unless valid_flags and the record both carry the
    /// stable bit. Returns ns.
    #[pyo3(signature = (buffer, tsc, offset = None, max_retries = None))]
    fn read(
        &self,
        py: Python<'_>,
        buffer: &Any<'_>,
        tsc: &Any<'_>,
        offset: Option<&Any<'_>>,
        max_retries: Option<&Any<'_>>,
    ) -> PyResult<u64> {
        self.do_read(py, buffer, tsc, offset, max_retries)
            .map(|r| r.0)
    }

    /// Like `read`, returning `(ns, flags, stamp)`: the clamped ns, the flags the successful
    /// iteration saw, and its TSC.
    #[pyo3(signature = (buffer, tsc, offset = None, max_retries = None))]
    fn read_with_stamp(
        &self,
        py: Python<'_>,
        buffer: &Any<'_>,
        tsc: &Any<'_>,
        offset: Option<&Any<'_>>,
        max_retries: Option<&Any<'_>>,
    ) -> PyResult<(u64, u8, u64)> {
        self.do_read(py, buffer, tsc, offset, max_retries)
    }

    /// The shared `last_value` (u64).
    #[getter]
    fn last_value(&self) -> u64 {
        self.inner.last_value()
    }

    /// The guest's `valid_flags` (u8).
    #[getter]
    fn valid_flags(&self) -> u8 {
        self.inner.valid_flags
    }

    /// `pvclock_resume()`: zero `last_value`.
    fn resume(&self) {
        self.inner.resume();
    }

    fn __repr__(&self) -> String {
        format!(
            "PvclockClock(valid_flags={}, last_value={})",
            self.inner.valid_flags,
            self.inner.last_value()
        )
    }
}

// ------------------------------------------------------------------ SeqCount

/// `seqcount_t` (include/linux/seqlock.h) on an atomic u32; safe across threads, readers spin
/// detached from the interpreter.
#[pyclass(frozen, module = "kvmclock._native")]
pub struct SeqCount {
    inner: seqcount::SeqCount,
}

/// Polls per detached spin chunk before re-attaching to check for signals (Ctrl-C).
const SPIN_CHUNK: u64 = 200_000;

#[pymethods]
impl SeqCount {
    #[new]
    #[pyo3(signature = (sequence = Arg::Missing), text_signature = "(sequence=0)")]
    fn new(sequence: Arg<'_>) -> PyResult<Self> {
        let s = opt(&sequence, 0, |o| u32_arg(o, "sequence"))?;
        Ok(SeqCount {
            inner: seqcount::SeqCount::new(s),
        })
    }

    /// `read_seqcount_begin`: wait while odd (spinning without the GIL), return the even
    /// sequence. `max_spins` bounds the wait (SeqCountError when exceeded); None waits forever
    /// (interruptible by signals).
    #[pyo3(signature = (max_spins = None))]
    fn read_begin(&self, py: Python<'_>, max_spins: Option<&Any<'_>>) -> PyResult<u32> {
        if let Some(s) = self.inner.try_read_begin() {
            return Ok(s);
        }
        let limit = match max_spins {
            Some(m) if !m.is_none() => Some(u64_arg(m, "max_spins")?),
            _ => None,
        };
        let mut spent: u64 = 0;
        loop {
            let chunk = match limit {
                Some(l) => (l - spent).min(SPIN_CHUNK),
                None => SPIN_CHUNK,
            };
            let r = py.detach(|| self.inner.read_begin(Some(chunk)));
            match r {
                Ok(s) => return Ok(s),
                Err(e) => {
                    spent += chunk;
                    if let Some(l) = limit {
                        if spent >= l {
                            return Err(core_err(kvmclock_core::CoreError::new(
                                e.kind,
                                format!("sequence stayed odd (a write section never ended) for max_spins={l} polls"),
                            )));
                        }
                    }
                    py.check_signals()?;
                }
            }
        }
    }

    /// `read_seqcount_retry(s, seq)`: True when the sequence changed since `seq`.
    #[pyo3(signature = (seq))]
    fn read_retry(&self, seq: &Any<'_>) -> PyResult<bool> {
        let s = u32_arg(seq, "seq")?;
        Ok(self.inner.read_retry(s))
    }

    /// `write_seqcount_begin`: even -> odd. SeqCountError inside an open write section.
    fn write_begin(&self) -> PyResult<()> {
        self.inner.write_begin().map_err(core_err)
    }

    /// `write_seqcount_end`: odd -> even. SeqCountError without a write section.
    fn write_end(&self) -> PyResult<()> {
        self.inner.write_end().map_err(core_err)
    }

    /// The current sequence value.
    #[getter]
    fn sequence(&self) -> u32 {
        self.inner.sequence()
    }

    /// Run `fn()` until it ran inside one unchanged even sequence; return its result.
    #[pyo3(signature = (r#fn))]
    fn read<'py>(&self, py: Python<'py>, r#fn: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if !r#fn.is_callable() {
            return Err(type_error(r#fn, "fn", "a zero-argument callable"));
        }
        loop {
            let s = self.read_begin(py, None)?;
            let v = r#fn.call0()?;
            if !self.inner.read_retry(s) {
                return Ok(v);
            }
        }
    }

    fn __repr__(&self) -> String {
        format!("SeqCount(sequence={})", self.inner.sequence())
    }
}

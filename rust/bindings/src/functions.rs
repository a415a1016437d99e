//! Module-level functions of `kvmclock._native` (the native contract and the ARCHITECTURE.md
//! native contract).

use std::convert::Infallible;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use kvmclock_core::pvclock::{RawRecord, ReadError, DEFAULT_MAX_RETRIES, RECORD_SIZE};
use kvmclock_core::{batch, clocksource, math64, pvclock, real, timescale, tsc, ErrorKind};

use crate::args::{
    core_err, ctype_arg, domain_arg, s32_arg, s64_arg, type_error, u32_arg, u64_arg,
};
use crate::buffer::Buffer;
use crate::classes::PvclockVcpuTimeInfo;

type Any<'py> = Bound<'py, PyAny>;

// ------------------------------------------------------------------ scalar math

/// `kvm_get_time_scale(scaled_hz, base_hz)` (arch/x86/kvm/x86.c) -> `(shift, mult)`.
#[pyfunction]
#[pyo3(signature = (scaled_hz, base_hz))]
pub fn get_time_scale(scaled_hz: &Any<'_>, base_hz: &Any<'_>) -> PyResult<(i8, u32)> {
    let s = u64_arg(scaled_hz, "scaled_hz")?;
    let b = u64_arg(base_hz, "base_hz")?;
    timescale::get_time_scale(s, b).map_err(core_err)
}

/// `div_frac(dividend, divisor)` (x86.c): `(dividend << 32) / divisor` with one divl.
#[pyfunction]
#[pyo3(signature = (dividend, divisor))]
pub fn div_frac(dividend: &Any<'_>, divisor: &Any<'_>) -> PyResult<u32> {
    let a = u32_arg(dividend, "dividend")?;
    let b = u32_arg(divisor, "divisor")?;
    timescale::div_frac(a, b).map_err(core_err)
}

/// `pvclock_scale_delta(delta, mul_frac, shift)` (arch/x86/include/asm/pvclock.h).
#[pyfunction]
#[pyo3(signature = (delta, mul_frac, shift))]
pub fn pvclock_scale_delta(delta: &Any<'_>, mul_frac: &Any<'_>, shift: &Any<'_>) -> PyResult<u64> {
    let d = u64_arg(delta, "delta")?;
    let m = u32_arg(mul_frac, "mul_frac")?;
    let s = domain_arg(shift, "shift", -63, 63)? as i32;
    Ok(pvclock::scale_delta_unchecked(d, m, s))
}

/// `mul_u64_u32_shr(a, mul, shift)` (include/linux/math64.h), shift 0..=127.
#[pyfunction]
#[pyo3(signature = (a, mul, shift))]
pub fn mul_u64_u32_shr(a: &Any<'_>, mul: &Any<'_>, shift: &Any<'_>) -> PyResult<u64> {
    let a = u64_arg(a, "a")?;
    let m = u32_arg(mul, "mul")?;
    let s = domain_arg(shift, "shift", 0, 127)? as u32;
    math64::mul_u64_u32_shr(a, m, s).map_err(core_err)
}

/// `mul_u64_u64_shr(a, mul, shift)` (math64.h), shift 0..=127.
#[pyfunction]
#[pyo3(signature = (a, mul, shift))]
pub fn mul_u64_u64_shr(a: &Any<'_>, mul: &Any<'_>, shift: &Any<'_>) -> PyResult<u64> {
    let a = u64_arg(a, "a")?;
    let m = u64_arg(mul, "mul")?;
    let s = domain_arg(shift, "shift", 0, 127)? as u32;
    math64::mul_u64_u64_shr(a, m, s).map_err(core_err)
}

/// `mul_s64_u64_shr(a, b, shift)` (math64.h): rounds toward zero, result as u64.
#[pyfunction]
#[pyo3(signature = (a, b, shift))]
pub fn mul_s64_u64_shr(a: &Any<'_>, b: &Any<'_>, shift: &Any<'_>) -> PyResult<u64> {
    let a = s64_arg(a, "a")?;
    let b = u64_arg(b, "b")?;
    let s = domain_arg(shift, "shift", 0, 127)? as u32;
    math64::mul_s64_u64_shr(a, b, s).map_err(core_err)
}

/// `mul_u64_u32_div(a, mul, divisor)` (math64.h, current x86-64 `mulq; divq`).
#[pyfunction]
#[pyo3(signature = (a, mul, divisor))]
pub fn mul_u64_u32_div(a: &Any<'_>, mul: &Any<'_>, divisor: &Any<'_>) -> PyResult<u64> {
    let a = u64_arg(a, "a")?;
    let m = u32_arg(mul, "mul")?;
    let d = u32_arg(divisor, "divisor")?;
    math64::mul_u64_u32_div(a, m, d).map_err(core_err)
}

/// `clocks_calc_mult_shift(from, to, maxsec)` (kernel/time/clocksource.c) -> `(mult, shift)`.
#[pyfunction]
#[pyo3(signature = (from_hz, to_hz, maxsec))]
pub fn clocks_calc_mult_shift(
    from_hz: &Any<'_>,
    to_hz: &Any<'_>,
    maxsec: &Any<'_>,
) -> PyResult<(u32, u32)> {
    let f = u32_arg(from_hz, "from_hz")?;
    let t = u32_arg(to_hz, "to_hz")?;
    let m = u32_arg(maxsec, "maxsec")?;
    clocksource::clocks_calc_mult_shift(f, t, m).map_err(core_err)
}

/// `clocksource_cyc2ns(cycles, mult, shift)` (include/linux/clocksource.h): s64 result.
#[pyfunction]
#[pyo3(signature = (cycles, mult, shift))]
pub fn clocksource_cyc2ns(cycles: &Any<'_>, mult: &Any<'_>, shift: &Any<'_>) -> PyResult<i64> {
    let c = u64_arg(cycles, "cycles")?;
    let m = u32_arg(mult, "mult")?;
    let s = domain_arg(shift, "shift", 0, 63)? as u32;
    clocksource::clocksource_cyc2ns(c, m, s).map_err(core_err)
}

/// `pvclock_tsc_khz(src)` (arch/x86/kernel/pvclock.c).
#[pyfunction]
#[pyo3(signature = (tsc_to_system_mul, tsc_shift))]
pub fn pvclock_tsc_khz(tsc_to_system_mul: &Any<'_>, tsc_shift: &Any<'_>) -> PyResult<u64> {
    let m = u32_arg(tsc_to_system_mul, "tsc_to_system_mul")?;
    if m == 0 {
        // the kernel divides first: mul 0 is a division by zero whatever the shift
        return pvclock::pvclock_tsc_khz(0, 0).map_err(core_err);
    }
    let s = domain_arg(tsc_shift, "tsc_shift", -63, 63)? as i32;
    pvclock::pvclock_tsc_khz(m, s).map_err(core_err)
}

/// `__scale_tsc(ratio, tsc)` / `kvm_scale_tsc` (x86.c): `mul_u64_u64_shr(tsc, ratio, frac)`.
#[pyfunction]
#[pyo3(signature = (tsc, ratio, frac_bits))]
pub fn scale_tsc(tsc: &Any<'_>, ratio: &Any<'_>, frac_bits: &Any<'_>) -> PyResult<u64> {
    let t = u64_arg(tsc, "tsc")?;
    let r = u64_arg(ratio, "ratio")?;
    let f = domain_arg(frac_bits, "frac_bits", 0, 127)? as u32;
    timescale::scale_tsc(t, r, f).map_err(core_err)
}

/// Ratio step of `set_tsc_khz` (x86.c): `mul_u64_u32_div(1 << frac_bits, user, host)`.
#[pyfunction]
#[pyo3(signature = (user_tsc_khz, tsc_khz, frac_bits))]
pub fn tsc_scaling_ratio(
    user_tsc_khz: &Any<'_>,
    tsc_khz: &Any<'_>,
    frac_bits: &Any<'_>,
) -> PyResult<u64> {
    let u = u32_arg(user_tsc_khz, "user_tsc_khz")?;
    let h = u32_arg(tsc_khz, "tsc_khz")?;
    let f = domain_arg(frac_bits, "frac_bits", 0, 63)? as u32;
    timescale::tsc_scaling_ratio(u, h, f).map_err(core_err)
}

/// `adjust_tsc_khz(khz, ppm)` (x86.c): `(u64)khz * (1000000 + ppm) / 1000000` as u32.
#[pyfunction]
#[pyo3(signature = (khz, ppm))]
pub fn adjust_tsc_khz(khz: &Any<'_>, ppm: &Any<'_>) -> PyResult<u32> {
    let k = u32_arg(khz, "khz")?;
    let p = s32_arg(ppm, "ppm")?;
    Ok(timescale::adjust_tsc_khz(k, p))
}

// ------------------------------------------------------------------ live records

/// The address of the 32-byte record at `offset` of `buf` (bounds and alignment checked).
pub(crate) fn record_addr(buf: &Buffer, offset: &Any<'_>, buffer_name: &str) -> PyResult<usize> {
    let off = ctype_arg(
        offset,
        "offset",
        "non-negative byte offset",
        0,
        u64::MAX as i128,
    )? as u64;
    let len = buf.len() as u64;
    if len < RECORD_SIZE as u64 || off > len - RECORD_SIZE as u64 {
        return Err(PyValueError::new_err(format!(
            "offset must be in 0..={} so that the 32-byte record fits the {buffer_name} \
             ({len} bytes), got {off}",
            len.saturating_sub(RECORD_SIZE as u64) as i128
                - if len < RECORD_SIZE as u64 { 1 } else { 0 }
        )));
    }
    let addr = buf.ptr() as usize + off as usize;
    RawRecord::check_alignment(addr).map_err(core_err)?;
    Ok(addr)
}

/// Where the TSC of each retry iteration comes from.
pub(crate) enum TscSource<'py> {
    Value(u64),
    Call(Bound<'py, PyAny>),
}

pub(crate) fn tsc_source<'py>(tsc: &Bound<'py, PyAny>) -> PyResult<TscSource<'py>> {
    let p = tsc.as_ptr();
    // SAFETY: attached, `p` live.
    let (is_int, is_bool) = unsafe { (ffi::PyLong_Check(p) != 0, ffi::PyBool_Check(p) != 0) };
    if is_int && !is_bool {
        return Ok(TscSource::Value(u64_arg(tsc, "tsc")?));
    }
    if !is_bool && tsc.is_callable() {
        return Ok(TscSource::Call(tsc.clone()));
    }
    if !is_bool && unsafe { ffi::PyFloat_Check(p) == 0 && ffi::PyIndex_Check(p) != 0 } {
        return Ok(TscSource::Value(u64_arg(tsc, "tsc")?));
    }
    Err(type_error(
        tsc,
        "tsc",
        "an int (u64) or a zero-argument callable returning one",
    ))
}

/// Version-retry read of `rec`: detached when the TSC is a number, attached (calling the
/// Python callable inside every iteration) otherwise. `clock`: apply `pvclock_clocksource_read`.
pub(crate) fn retry_read(
    py: Python<'_>,
    rec: RawRecord,
    tsc: TscSource<'_>,
    max_retries: u64,
    clock: Option<&pvclock::PvclockClock>,
) -> PyResult<(u64, u8, u64)> {
    let plain = |r: Result<(pvclock::PvclockVcpuTimeInfo, u64), ReadError<PyErr>>| -> PyResult<(u64, u8, u64)> {
        match r {
            Ok((body, stamp)) => Ok((body.read_cycles(stamp).map_err(core_err)?, body.flags, stamp)),
            Err(ReadError::Core(e)) => Err(core_err(e)),
            Err(ReadError::Tsc(e)) => Err(e),
        }
    };
    match tsc {
        TscSource::Value(t) => {
            let attempt = |max: u64| match clock {
                // SAFETY: callers pass a clock only with a writable buffer.
                Some(c) => unsafe { c.read::<Infallible, _>(&rec, max, || Ok(t)) },
                None => rec
                    .read::<Infallible, _>(max, || Ok(t))
                    .and_then(|(body, stamp)| {
                        body.read_cycles(stamp)
                            .map(|ns| (ns, body.flags, stamp))
                            .map_err(ReadError::Core)
                    }),
            };
            // The whole retry loop runs detached from the interpreter, so other Python
            // threads (writers, readers) run truly concurrently with it.
            let r = py.detach(|| attempt(max_retries));
            r.map_err(|e| match e {
                ReadError::Core(c) => core_err(c),
                ReadError::Tsc(never) => match never {},
            })
        }
        TscSource::Call(f) => {
            let get = || -> PyResult<u64> {
                let v = f.call0()?;
                u64_arg(&v, "tsc")
            };
            match clock {
                // SAFETY: callers pass a clock only with a writable buffer.
                Some(c) => unsafe { c.read(&rec, max_retries, get) }.map_err(|e| match e {
                    ReadError::Core(c) => core_err(c),
                    ReadError::Tsc(e) => e,
                }),
                None => plain(rec.read(max_retries, get)),
            }
        }
    }
}

/// Guest-side version-retry read (`pvclock_read_begin`/`pvclock_read_retry` around
/// `__pvclock_read_cycles`) of the record at `offset` of a live buffer -> `(ns, flags, stamp)`.
#[pyfunction]
#[pyo3(signature = (buffer, tsc, offset = None, max_retries = None))]
pub fn pvclock_read(
    py: Python<'_>,
    buffer: &Any<'_>,
    tsc: &Any<'_>,
    offset: Option<&Any<'_>>,
    max_retries: Option<&Any<'_>>,
) -> PyResult<(u64, u8, u64)> {
    let buf = Buffer::get(buffer, "buffer", false)?;
    let addr = match offset {
        Some(o) => record_addr(&buf, o, "buffer")?,
        None => record_addr(&buf, &0u8.into_pyobject(py)?.into_any(), "buffer")?,
    };
    let max = match max_retries {
        Some(m) => u64_arg(m, "max_retries")?,
        None => DEFAULT_MAX_RETRIES,
    };
    let src = tsc_source(tsc)?;
    // SAFETY: the export keeps the memory alive and in place until `buf` drops after the read;
    // bounds and alignment were checked; only loads are done.
    let rec = unsafe { RawRecord::new(addr as *mut u8) };
    let r = retry_read(py, rec, src, max, None);
    drop(buf);
    r
}

/// Host-side publish (`kvm_setup_guest_pvclock`'s odd/even protocol) of `info` at `offset`.
#[pyfunction]
#[pyo3(signature = (buffer, info, offset = None))]
pub fn pvclock_write(
    py: Python<'_>,
    buffer: &Any<'_>,
    info: &Any<'_>,
    offset: Option<&Any<'_>>,
) -> PyResult<()> {
    let rec_info = info
        .cast::<PvclockVcpuTimeInfo>()
        .map_err(|_| type_error(info, "info", "a PvclockVcpuTimeInfo"))?
        .get()
        .inner;
    if rec_info.version & 1 != 0 {
        return Err(PyValueError::new_err(format!(
            "info.version must be even (the stable version the guest will see), got {}",
            rec_info.version
        )));
    }
    let buf = Buffer::get(buffer, "buffer", true)?;
    let addr = match offset {
        Some(o) => record_addr(&buf, o, "buffer")?,
        None => record_addr(&buf, &0u8.into_pyobject(py)?.into_any(), "buffer")?,
    };
    // SAFETY: writable export, bounds and alignment checked, alive until `buf` drops.
    let rec = unsafe { RawRecord::new(addr as *mut u8) };
    let r = py.detach(|| unsafe { rec.publish(&rec_info) });
    drop(buf);
    r.map_err(core_err)
}

// ------------------------------------------------------------------ batch

static NP_EMPTY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static NP_UINT64: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Threads used for very large arrays (>= `batch::PARALLEL_THRESHOLD` elements): 2 by default
/// (measured: 10 M u64 0.8 -> 0.4 ns/element on the 2-core machines), overridable with the
/// environment variable `KVMCLOCK_BATCH_THREADS` (1 disables splitting), read once.
fn batch_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("KVMCLOCK_BATCH_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&t| t >= 1)
            .unwrap_or(2)
    })
}
/// Below this many elements the loop runs without detaching (detach costs more).
const DETACH_MIN: usize = 2048;

fn new_u64_array<'py>(py: Python<'py>, shape: Vec<usize>) -> PyResult<Bound<'py, PyAny>> {
    let empty = NP_EMPTY.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("numpy")?.getattr("empty")?.unbind())
    })?;
    let dtype = NP_UINT64.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("numpy")?.getattr("uint64")?.unbind())
    })?;
    let shape = PyTuple::new(py, shape)?;
    empty.bind(py).call1((shape, dtype.bind(py)))
}

/// Validate input/out buffers and run `op(src, dst, n, in_place)` (detached for large n).
fn run_batch<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    in_name: &str,
    out: Option<&Bound<'py, PyAny>>,
    op: impl Fn(Option<&[u64]>, &mut [u64]) + Send + Sync,
) -> PyResult<Bound<'py, PyAny>> {
    let inbuf = Buffer::get(input, in_name, false)?;
    let n = inbuf.u64_count(in_name)?;
    let (out_obj, outbuf) = match out {
        Some(o) if !o.is_none() => {
            let ob = Buffer::get(o, "out", true)?;
            let m = ob.u64_count("out")?;
            if m != n {
                return Err(PyValueError::new_err(format!(
                    "out must have the same length as {in_name} ({n} u64 values), got {m}"
                )));
            }
            (o.clone(), ob)
        }
        _ => {
            let shape = if inbuf.format() != "B" && inbuf.itemsize() == 8 && inbuf.ndim() >= 1 {
                inbuf.shape()
            } else {
                vec![n]
            };
            let arr = new_u64_array(py, shape)?;
            let ob = Buffer::get(&arr, "out", true)?;
            (arr, ob)
        }
    };
    if n == 0 {
        return Ok(out_obj);
    }
    let a = inbuf.ptr() as usize;
    let b = outbuf.ptr() as usize;
    let bytes = n * 8;
    let in_place = a == b;
    if !in_place && a < b + bytes && b < a + bytes {
        return Err(PyValueError::new_err(format!(
            "out must not overlap {in_name} unless it is the same buffer (in-place)"
        )));
    }
    let aligned = a % 8 == 0 && b % 8 == 0;
    let work = move || {
        if !aligned {
            // Unaligned exporter memory: convert through aligned temporaries.
            let mut tmp: Vec<u64> = (0..n)
                // SAFETY: `a` is valid for `bytes` reads (the export), unaligned read.
                .map(|i| unsafe { std::ptr::read_unaligned((a as *const u64).add(i)) })
                .collect();
            op(None, &mut tmp);
            for (i, v) in tmp.iter().enumerate() {
                // SAFETY: `b` is valid for `bytes` writes (writable export).
                unsafe { std::ptr::write_unaligned((b as *mut u64).add(i), *v) };
            }
        } else if in_place {
            // SAFETY: aligned, valid for n u64 reads and writes; no other Rust reference.
            let s = unsafe { std::slice::from_raw_parts_mut(b as *mut u64, n) };
            op(None, s);
        } else {
            // SAFETY: aligned, non-overlapping, valid for n elements each.
            let src = unsafe { std::slice::from_raw_parts(a as *const u64, n) };
            let dst = unsafe { std::slice::from_raw_parts_mut(b as *mut u64, n) };
            op(Some(src), dst);
        }
    };
    if n >= DETACH_MIN {
        py.detach(work);
    } else {
        work();
    }
    drop(outbuf);
    drop(inbuf);
    Ok(out_obj)
}

/// `pvclock_scale_delta` over a u64 buffer -> numpy uint64 array (or `out`).
#[pyfunction]
#[pyo3(signature = (deltas, mul_frac, shift, out = None))]
pub fn pvclock_scale_delta_batch<'py>(
    py: Python<'py>,
    deltas: &Bound<'py, PyAny>,
    mul_frac: &Bound<'py, PyAny>,
    shift: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let m = u32_arg(mul_frac, "mul_frac")?;
    let s = domain_arg(shift, "shift", -63, 63)? as i32;
    run_batch(py, deltas, "deltas", out, move |src, dst| {
        // shift and lengths already validated: the core cannot fail here
        let _ = match src {
            None => batch::scale_delta_in_place(dst, m, s, batch_threads()),
            Some(src) => batch::scale_delta_into(src, dst, m, s, batch_threads()),
        };
    })
}

/// `__pvclock_read_cycles(info, tsc)` over a u64 buffer of TSC values.
#[pyfunction]
#[pyo3(signature = (info, tscs, out = None))]
pub fn pvclock_read_cycles_batch<'py>(
    py: Python<'py>,
    info: &Bound<'py, PyAny>,
    tscs: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let rec = info
        .cast::<PvclockVcpuTimeInfo>()
        .map_err(|_| type_error(info, "info", "a PvclockVcpuTimeInfo"))?
        .get()
        .inner;
    pvclock::check_pv_shift("info.tsc_shift", rec.tsc_shift as i64).map_err(core_err)?;
    run_batch(py, tscs, "tscs", out, move |src, dst| {
        let _ = match src {
            None => batch::read_cycles_in_place(&rec, dst, batch_threads()),
            Some(src) => batch::read_cycles_into(&rec, src, dst, batch_threads()),
        };
    })
}

// ------------------------------------------------------------------ this computer

/// `rdtsc()`: this CPU's time stamp counter (x86-64; OSError elsewhere).
#[pyfunction]
pub fn rdtsc() -> PyResult<u64> {
    tsc::rdtsc().map_err(core_err)
}

/// Address of the first page of `[vvar_vclock]` (probed via /proc/self/mem), or None when
/// there is no such mapping; OSError when the page is not readable.
#[pyfunction]
pub fn vclock_page_address() -> PyResult<Option<usize>> {
    match real::page_address() {
        Ok(a) => Ok(Some(a)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(core_err(e)),
    }
}

/// The KVM guest pvclock record of this computer and the TSC of the successful retry iteration.
#[pyfunction]
#[pyo3(signature = (max_retries = None))]
pub fn vclock_read(
    py: Python<'_>,
    max_retries: Option<&Any<'_>>,
) -> PyResult<(PvclockVcpuTimeInfo, u64)> {
    let max = match max_retries {
        Some(m) => u64_arg(m, "max_retries")?,
        None => DEFAULT_MAX_RETRIES,
    };
    let (rec, stamp) = py.detach(|| real::read(max)).map_err(core_err)?;
    Ok((PvclockVcpuTimeInfo { inner: rec }, stamp))
}

/// kvm-clock now (ns): the full pvclock read of this computer's page, in Rust.
#[pyfunction]
pub fn kvmclock_ns() -> PyResult<u64> {
    real::kvmclock_ns(DEFAULT_MAX_RETRIES).map_err(core_err)
}

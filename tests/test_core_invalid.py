"""Bad input to the native core: a clear Python exception that names the argument.

The native contract: wrong types raise TypeError; values outside the kernel type's range raise
OverflowError or ValueError; inputs the kernel cannot take raise ValueError (endless loop,
undefined shift), ZeroDivisionError (division by zero) or OverflowError (quotient overflow).
Nothing may panic into Python.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

import kvmclock
import numpy as np
import pytest

U64 = (0, 2**64 - 1)
U32 = (0, 2**32 - 1)
S64 = (-(2**63), 2**63 - 1)
S32 = (-(2**31), 2**31 - 1)
S8 = (-128, 127)
U8 = (0, 255)

# name -> (valid keyword arguments, {argument: (lowest valid, highest valid)})
FUNCTIONS: dict[str, tuple[dict[str, int], dict[str, tuple[int, int]]]] = {
    "get_time_scale": ({"scaled_hz": 10**9, "base_hz": 2_100_000_000},
                       {"scaled_hz": U64, "base_hz": U64}),
    "div_frac": ({"dividend": 1, "divisor": 3}, {"dividend": U32, "divisor": U32}),
    "pvclock_scale_delta": ({"delta": 5, "mul_frac": 7, "shift": 1},
                            {"delta": U64, "mul_frac": U32, "shift": (-63, 63)}),
    "mul_u64_u32_shr": ({"a": 5, "mul": 7, "shift": 1},
                        {"a": U64, "mul": U32, "shift": (0, 127)}),
    "mul_u64_u64_shr": ({"a": 5, "mul": 7, "shift": 1},
                        {"a": U64, "mul": U64, "shift": (0, 127)}),
    "mul_s64_u64_shr": ({"a": -5, "b": 7, "shift": 1},
                        {"a": S64, "b": U64, "shift": (0, 127)}),
    "mul_u64_u32_div": ({"a": 5, "mul": 7, "divisor": 3},
                        {"a": U64, "mul": U32, "divisor": U32}),
    "clocks_calc_mult_shift": ({"from_hz": 24_000_000, "to_hz": 10**9, "maxsec": 600},
                               {"from_hz": U32, "to_hz": U32, "maxsec": U32}),
    "clocksource_cyc2ns": ({"cycles": 5, "mult": 7, "shift": 1},
                           {"cycles": U64, "mult": U32, "shift": (0, 63)}),
    "pvclock_tsc_khz": ({"tsc_to_system_mul": 4090445043, "tsc_shift": -1},
                        {"tsc_to_system_mul": U32, "tsc_shift": (-63, 63)}),
    # frac_bits: 0..63 (1 << frac must be a u64 ratio); 128 is out for every reading.
    "scale_tsc": ({"tsc": 5, "ratio": 2**48, "frac_bits": 48},
                  {"tsc": U64, "ratio": U64, "frac_bits": (0, 127)}),
    "tsc_scaling_ratio": ({"user_tsc_khz": 1_000_000, "tsc_khz": 2_100_000, "frac_bits": 48},
                          {"user_tsc_khz": U32, "tsc_khz": U32, "frac_bits": (0, 63)}),
    "adjust_tsc_khz": ({"khz": 2_100_000, "ppm": -250}, {"khz": U32, "ppm": S32}),
}

CASES = [(name, arg) for name, (_, ranges) in FUNCTIONS.items() for arg in ranges]
WRONG_TYPES: list[Any] = [1.0, 1.5, "1", b"1", None, True, False, [1]]


def names(arg: str) -> str:
    """A regex that finds the argument's name as a word in an error message."""
    return rf"\b{re.escape(arg)}\b"


def call(name: str, **kwargs: Any) -> Any:
    fn: Callable[..., Any] = getattr(kvmclock, name)
    return fn(**kwargs)


@pytest.mark.parametrize(("name", "arg"), CASES)
def test_valid_call_works(name: str, arg: str) -> None:
    call(name, **FUNCTIONS[name][0])


@pytest.mark.parametrize(("name", "arg"), CASES)
@pytest.mark.parametrize("bad", WRONG_TYPES, ids=repr)
def test_wrong_type_is_type_error(name: str, arg: str, bad: Any) -> None:
    kwargs: dict[str, Any] = dict(FUNCTIONS[name][0])
    kwargs[arg] = bad
    with pytest.raises(TypeError, match=names(arg)):
        call(name, **kwargs)


@pytest.mark.parametrize(("name", "arg"), CASES)
def test_out_of_range_names_argument(name: str, arg: str) -> None:
    valid, ranges = FUNCTIONS[name]
    lo, hi = ranges[arg]
    for bad in (lo - 1, hi + 1, 2**200, -(2**200), lo - 2**64, hi + 2**64):
        kwargs = dict(valid)
        kwargs[arg] = bad
        with pytest.raises((OverflowError, ValueError), match=names(arg)):
            call(name, **kwargs)
    for edge in (lo, hi):  # the limits pass the type check; kernel rules may still reject
        kwargs = dict(valid)
        kwargs[arg] = edge
        with contextlib.suppress(ValueError, ZeroDivisionError, OverflowError):
            call(name, **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "arg"),
    [
        ("pvclock_scale_delta", {"delta": 1, "mul_frac": 1, "shift": 64}, "shift"),
        ("pvclock_scale_delta", {"delta": 1, "mul_frac": 1, "shift": -64}, "shift"),
        ("pvclock_scale_delta", {"delta": 1, "mul_frac": 1, "shift": 127}, "shift"),
        ("pvclock_scale_delta", {"delta": 1, "mul_frac": 1, "shift": -128}, "shift"),
        ("pvclock_tsc_khz", {"tsc_to_system_mul": 1, "tsc_shift": 64}, "tsc_shift"),
        ("pvclock_tsc_khz", {"tsc_to_system_mul": 1, "tsc_shift": -64}, "tsc_shift"),
        ("pvclock_tsc_khz", {"tsc_to_system_mul": 1, "tsc_shift": -128}, "tsc_shift"),
        ("mul_u64_u32_shr", {"a": 1, "mul": 1, "shift": 128}, "shift"),
        ("mul_u64_u64_shr", {"a": 1, "mul": 1, "shift": 128}, "shift"),
        ("mul_s64_u64_shr", {"a": 1, "b": 1, "shift": 128}, "shift"),
        ("mul_u64_u32_shr", {"a": 1, "mul": 1, "shift": 2**32 - 1}, "shift"),
        ("clocksource_cyc2ns", {"cycles": 1, "mult": 1, "shift": 64}, "shift"),
        ("clocksource_cyc2ns", {"cycles": 1, "mult": 1, "shift": 2**32 - 1}, "shift"),
        ("scale_tsc", {"tsc": 1, "ratio": 1, "frac_bits": 128}, "frac_bits"),
        ("tsc_scaling_ratio", {"user_tsc_khz": 1, "tsc_khz": 1, "frac_bits": 64}, "frac_bits"),
        # kvm_get_time_scale never returns for these (zero, or too large, frequencies)
        ("get_time_scale", {"scaled_hz": 0, "base_hz": 10**9}, "scaled_hz"),
        ("get_time_scale", {"scaled_hz": 2**63, "base_hz": 10**9}, "scaled_hz"),
        ("get_time_scale", {"scaled_hz": 10**9, "base_hz": 0}, "base_hz"),
    ],
)
def test_kernel_undefined_is_value_error(name: str, kwargs: dict[str, int], arg: str) -> None:
    with pytest.raises(ValueError, match=names(arg)):
        call(name, **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "arg"),
    [
        ("div_frac", {"dividend": 0, "divisor": 0}, "divisor"),
        ("mul_u64_u32_div", {"a": 1, "mul": 1, "divisor": 0}, "divisor"),
        ("clocks_calc_mult_shift", {"from_hz": 0, "to_hz": 10**9, "maxsec": 600}, "from_hz"),
        ("pvclock_tsc_khz", {"tsc_to_system_mul": 0, "tsc_shift": 0}, "tsc_to_system_mul"),
        ("tsc_scaling_ratio", {"user_tsc_khz": 1, "tsc_khz": 0, "frac_bits": 48}, "tsc_khz"),
    ],
)
def test_division_by_zero(name: str, kwargs: dict[str, int], arg: str) -> None:
    with pytest.raises(ZeroDivisionError, match=names(arg)):
        call(name, **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern"),
    [
        ("div_frac", {"dividend": 3, "divisor": 3}, r"\bdividend\b|\bdivisor\b"),
        ("div_frac", {"dividend": 2**32 - 1, "divisor": 1}, r"\bdividend\b|\bdivisor\b"),
        ("mul_u64_u32_div", {"a": 2**64 - 1, "mul": 2, "divisor": 1}, r"\bmul\b|\bdivisor\b"),
        ("tsc_scaling_ratio", {"user_tsc_khz": 2**16, "tsc_khz": 1, "frac_bits": 48},
         r"\buser_tsc_khz\b|\btsc_khz\b"),
        ("tsc_scaling_ratio", {"user_tsc_khz": 2, "tsc_khz": 1, "frac_bits": 63},
         r"\buser_tsc_khz\b|\btsc_khz\b|\bfrac_bits\b"),
    ],
)
def test_quotient_overflow(name: str, kwargs: dict[str, int], pattern: str) -> None:
    with pytest.raises(OverflowError, match=pattern):
        call(name, **kwargs)


def test_missing_and_unknown_keywords() -> None:
    with pytest.raises(TypeError):
        kvmclock.pvclock_scale_delta(delta=1, mul_frac=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        kvmclock.pvclock_scale_delta(delta=1, mul_frac=1, shift=0, bogus=1)  # type: ignore


# ------------------------------------------------------------------ PvclockVcpuTimeInfo

RECORD_FIELDS = {
    "version": U32,
    "tsc_timestamp": U64,
    "system_time": U64,
    "tsc_to_system_mul": U32,
    "tsc_shift": S8,
    "flags": U8,
}


@pytest.mark.parametrize("field", sorted(RECORD_FIELDS))
def test_record_field_range(field: str) -> None:
    lo, hi = RECORD_FIELDS[field]
    for ok in (lo, hi):
        info = kvmclock.PvclockVcpuTimeInfo(**{field: ok})
        assert getattr(info, field) == ok
    for bad in (lo - 1, hi + 1, 2**200, -(2**200)):
        with pytest.raises((OverflowError, ValueError), match=names(field)):
            kvmclock.PvclockVcpuTimeInfo(**{field: bad})
    for wrong in (1.0, "1", None, True):
        with pytest.raises(TypeError, match=names(field)):
            kvmclock.PvclockVcpuTimeInfo(**{field: wrong})


@pytest.mark.parametrize("length", [0, 1, 12, 31, 33, 64])
def test_record_from_bytes_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match=names("b")):
        kvmclock.PvclockVcpuTimeInfo.from_bytes(b=bytes(length))


def test_record_from_bytes_wrong_type() -> None:
    for wrong in ("x" * 32, None, 32, 1.5):
        with pytest.raises(TypeError, match=names("b")):
            kvmclock.PvclockVcpuTimeInfo.from_bytes(b=wrong)


@pytest.mark.parametrize("shift", [64, 100, 127, -64, -128])
def test_record_read_cycles_undefined_shift(shift: int) -> None:
    info = kvmclock.PvclockVcpuTimeInfo(tsc_to_system_mul=1, tsc_shift=shift)
    with pytest.raises(ValueError, match="shift"):
        info.read_cycles(tsc=10)


def test_record_read_cycles_bad_tsc() -> None:
    info = kvmclock.PvclockVcpuTimeInfo(tsc_to_system_mul=1)
    with pytest.raises((OverflowError, ValueError), match=names("tsc")):
        info.read_cycles(tsc=-1)
    with pytest.raises((OverflowError, ValueError), match=names("tsc")):
        info.read_cycles(tsc=2**64)
    with pytest.raises(TypeError, match=names("tsc")):
        info.read_cycles(tsc=1.0)


def test_wall_clock_wrong_input() -> None:
    with pytest.raises((OverflowError, ValueError), match=names("sec")):
        kvmclock.PvclockWallClock(version=0, sec=2**32, nsec=0)
    with pytest.raises((OverflowError, ValueError), match=names("nsec")):
        kvmclock.PvclockWallClock(version=0, sec=0, nsec=-1)
    with pytest.raises(ValueError, match=names("b")):
        kvmclock.PvclockWallClock.from_bytes(b=bytes(32))


# ------------------------------------------------------------------ live buffers


def odd_record() -> bytearray:
    return bytearray(kvmclock.PvclockVcpuTimeInfo(version=2, tsc_to_system_mul=1).to_bytes())


def test_pvclock_read_version_stays_odd() -> None:
    buf = odd_record()
    buf[0] = 3  # a writer that never finishes: version stays odd
    assert issubclass(kvmclock.PvclockRetryError, ValueError)
    start = time.monotonic()
    with pytest.raises(kvmclock.PvclockRetryError):
        kvmclock.pvclock_read(buffer=buf, tsc=0)
    with pytest.raises(kvmclock.PvclockRetryError):
        kvmclock.pvclock_read(buffer=buf, tsc=0, max_retries=10)
    with pytest.raises(kvmclock.PvclockRetryError):
        kvmclock.PvclockClock().read(buf, 0)
    assert time.monotonic() - start < 10.0


def test_pvclock_read_callable_version_keeps_changing() -> None:
    buf = odd_record()

    def bump() -> int:
        buf[0] = (buf[0] + 2) & 0xFF  # every iteration sees a new even version
        return 5

    with pytest.raises(kvmclock.PvclockRetryError):
        kvmclock.pvclock_read(buffer=buf, tsc=bump, max_retries=50)


def test_pvclock_read_bad_max_retries() -> None:
    with pytest.raises((OverflowError, ValueError), match=names("max_retries")):
        kvmclock.pvclock_read(buffer=odd_record(), tsc=0, max_retries=-1)


@pytest.mark.parametrize(
    ("reader"),
    ["pvclock_read", "clock_read", "clock_read_with_stamp"],
)
def test_reader_buffer_errors(reader: str) -> None:
    def read(buffer: Any, tsc: Any = 0, offset: Any = 0) -> Any:
        if reader == "pvclock_read":
            return kvmclock.pvclock_read(buffer=buffer, tsc=tsc, offset=offset)
        clock = kvmclock.PvclockClock()
        if reader == "clock_read":
            return clock.read(buffer=buffer, tsc=tsc, offset=offset)
        return clock.read_with_stamp(buffer=buffer, tsc=tsc, offset=offset)

    rec = kvmclock.PvclockVcpuTimeInfo(version=2, tsc_to_system_mul=1).to_bytes()
    buf = bytearray(rec) + bytearray(32)
    read(buf, 0, 32 - 32)  # valid
    for offset in (1, 32 + 1, 64, 2**40):
        with pytest.raises((ValueError, IndexError), match=r"\boffset\b|\bbuffer\b"):
            read(buf, 0, offset)
    for offset in (-1, -32, 2**64, -(2**200)):
        with pytest.raises((OverflowError, ValueError), match=names("offset")):
            read(buf, 0, offset)
    with pytest.raises(TypeError, match=names("offset")):
        read(buf, 0, 1.0)
    with pytest.raises((ValueError, IndexError), match=r"\boffset\b|\bbuffer\b"):
        read(bytearray(31), 0, 0)
    with pytest.raises(TypeError, match=names("buffer")):
        read("not a buffer", 0, 0)
    with pytest.raises(TypeError, match=names("buffer")):
        read(None, 0, 0)
    strided = np.zeros(128, dtype=np.uint8)[::2]
    with pytest.raises((TypeError, ValueError, BufferError), match=names("buffer")):
        read(strided, 0, 0)
    for bad_tsc in (-1, 2**64):
        with pytest.raises((OverflowError, ValueError), match=names("tsc")):
            read(buf, bad_tsc, 0)
    for wrong_tsc in (1.0, "1", None):
        with pytest.raises(TypeError, match=names("tsc")):
            read(buf, wrong_tsc, 0)
    with pytest.raises((OverflowError, ValueError, TypeError), match=names("tsc")):
        read(buf, lambda: -1, 0)
    with pytest.raises(TypeError, match=names("tsc")):
        read(buf, lambda: 1.5, 0)


def test_clock_read_needs_writable_buffer() -> None:
    # pvclock_clocksource_read may clear GUEST_STOPPED in the shared page.
    rec = kvmclock.PvclockVcpuTimeInfo(version=2, tsc_to_system_mul=1, flags=2).to_bytes()
    ro = np.frombuffer(rec, dtype=np.uint8)
    for buffer in (rec, ro):
        with pytest.raises((TypeError, ValueError, BufferError), match=names("buffer")):
            kvmclock.PvclockClock().read(buffer=buffer, tsc=0)


def test_pvclock_write_errors() -> None:
    info = kvmclock.PvclockVcpuTimeInfo(version=2, tsc_to_system_mul=1)
    with pytest.raises((TypeError, ValueError, BufferError), match=names("buffer")):
        kvmclock.pvclock_write(buffer=bytes(32), info=info)
    ro = np.zeros(32, dtype=np.uint8)
    ro.flags.writeable = False
    with pytest.raises((TypeError, ValueError, BufferError), match=names("buffer")):
        kvmclock.pvclock_write(buffer=ro, info=info)
    with pytest.raises((ValueError, IndexError), match=r"\boffset\b|\bbuffer\b"):
        kvmclock.pvclock_write(buffer=bytearray(40), info=info, offset=9)
    with pytest.raises((OverflowError, ValueError), match=names("offset")):
        kvmclock.pvclock_write(buffer=bytearray(64), info=info, offset=-1)
    with pytest.raises(TypeError, match=names("info")):
        kvmclock.pvclock_write(buffer=bytearray(32), info=info.to_bytes())
    with pytest.raises(ValueError, match=names("version")):
        kvmclock.pvclock_write(buffer=bytearray(32), info=kvmclock.PvclockVcpuTimeInfo(version=1))


def test_clock_constructor_ranges() -> None:
    with pytest.raises((OverflowError, ValueError), match=names("valid_flags")):
        kvmclock.PvclockClock(valid_flags=256)
    with pytest.raises((OverflowError, ValueError), match=names("last_value")):
        kvmclock.PvclockClock(last_value=2**64)
    with pytest.raises((OverflowError, ValueError), match=names("last_value")):
        kvmclock.PvclockClock(last_value=-1)
    with pytest.raises(TypeError, match=names("valid_flags")):
        kvmclock.PvclockClock(valid_flags=1.0)


# ------------------------------------------------------------------ batch


def batch_calls(deltas: Any, out: Any = None) -> list[Callable[[], Any]]:
    info = kvmclock.PvclockVcpuTimeInfo(version=2, tsc_to_system_mul=2**31)
    return [
        lambda: kvmclock.pvclock_scale_delta_batch(
            deltas=deltas, mul_frac=2**31, shift=0, out=out
        ),
        lambda: kvmclock.pvclock_read_cycles_batch(info=info, tscs=deltas, out=out),
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.uint32, np.int64, np.int32, np.float32])
def test_batch_wrong_dtype(dtype: Any) -> None:
    arr = np.zeros(8, dtype=dtype)
    for fn, arg in zip(batch_calls(arr), ("deltas", "tscs"), strict=True):
        with pytest.raises((TypeError, ValueError), match=names(arg)):
            fn()


def test_batch_non_contiguous_and_bad_buffers() -> None:
    strided = np.arange(20, dtype=np.uint64)[::2]
    two_d_f = np.zeros((4, 4), dtype=np.uint64, order="F")[:, :2]
    for bad in (strided, two_d_f):
        for fn, arg in zip(batch_calls(bad), ("deltas", "tscs"), strict=True):
            with pytest.raises((TypeError, ValueError, BufferError), match=names(arg)):
                fn()
    for bad in ([1, 2, 3], "abc", None, 5):
        for fn, arg in zip(batch_calls(bad), ("deltas", "tscs"), strict=True):
            with pytest.raises(TypeError, match=names(arg)):
                fn()
    # bytes whose length is not a multiple of 8 cannot be a u64 buffer
    for fn, arg in zip(batch_calls(b"\x00" * 12), ("deltas", "tscs"), strict=True):
        with pytest.raises(ValueError, match=names(arg)):
            fn()


def test_batch_bad_out() -> None:
    data = np.arange(16, dtype=np.uint64)
    ro = np.zeros(16, dtype=np.uint64)
    ro.flags.writeable = False
    bad_outs = [
        (np.zeros(15, dtype=np.uint64), (ValueError,)),
        (np.zeros(17, dtype=np.uint64), (ValueError,)),
        (np.zeros(16, dtype=np.float64), (TypeError, ValueError)),
        (np.zeros(16, dtype=np.int64), (TypeError, ValueError)),
        (ro, (TypeError, ValueError, BufferError)),
        (bytes(128), (TypeError, ValueError, BufferError)),
        (np.zeros(32, dtype=np.uint64)[::2], (TypeError, ValueError, BufferError)),
        ([0] * 16, (TypeError,)),
    ]
    for out, excs in bad_outs:
        for fn in batch_calls(data, out):
            with pytest.raises(excs, match=names("out")):
                fn()
    assert [int(x) for x in data] == list(range(16))


def test_batch_scalar_args() -> None:
    data = np.arange(4, dtype=np.uint64)
    with pytest.raises(ValueError, match=names("shift")):
        kvmclock.pvclock_scale_delta_batch(deltas=data, mul_frac=1, shift=64)
    with pytest.raises((OverflowError, ValueError), match=names("mul_frac")):
        kvmclock.pvclock_scale_delta_batch(deltas=data, mul_frac=2**32, shift=0)
    with pytest.raises(TypeError, match=names("mul_frac")):
        kvmclock.pvclock_scale_delta_batch(deltas=data, mul_frac=1.0, shift=0)
    with pytest.raises(TypeError, match=names("info")):
        kvmclock.pvclock_read_cycles_batch(info=bytes(32), tscs=data)
    bad_shift = kvmclock.PvclockVcpuTimeInfo(tsc_to_system_mul=1, tsc_shift=70)
    with pytest.raises(ValueError, match="shift"):
        kvmclock.pvclock_read_cycles_batch(info=bad_shift, tscs=data)


# ------------------------------------------------------------------ SeqCount


def test_seqcount_write_end_without_begin() -> None:
    assert issubclass(kvmclock.SeqCountError, ValueError)
    seq = kvmclock.SeqCount()
    with pytest.raises(kvmclock.SeqCountError):
        seq.write_end()
    assert seq.sequence == 0
    seq.write_begin()
    assert seq.sequence == 1
    seq.write_end()
    assert seq.sequence == 2
    with pytest.raises(kvmclock.SeqCountError):
        seq.write_end()
    assert seq.sequence == 2


def test_seqcount_bad_arguments() -> None:
    seq = kvmclock.SeqCount()
    with pytest.raises(TypeError, match=names("seq")):
        seq.read_retry(seq="0")
    with pytest.raises((OverflowError, ValueError), match=names("seq")):
        seq.read_retry(seq=-1)
    with pytest.raises(TypeError, match=names("fn")):
        seq.read(fn=5)

    def failing() -> int:
        raise KeyError("reader failed")

    with pytest.raises(KeyError, match="reader failed"):
        seq.read(failing)
    assert seq.read(lambda: 42) == 42

"""Real threads against the native readers: no torn record, no mixed snapshot, no time going back.

A writer publishes pvclock records with the odd/even version protocol (kvm_setup_guest_pvclock
in arch/x86/kvm/x86.c) while reader threads run ``pvclock_read`` (the guest's
pvclock_read_begin/pvclock_read_retry loop, arch/x86/include/asm/pvclock.h) without the GIL.
Every record is derived from one counter k, so a torn mix of two records is detected by
checking (ns, flags) against the reference read of some record k. SeqCount guards a
multi-field Python snapshot (include/linux/seqlock.h); PvclockClock's shared last_value clamp
(pvclock_clocksource_read, arch/x86/kernel/pvclock.c) keeps time monotonic across threads.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

import kvmclock
import numpy as np
import pytest
from reference import kernel_math as km

N_RECORDS = 1024  # record contents cycle through k mod N_RECORDS; versions never repeat
OFFSET = 64  # the record lives at an offset inside a larger buffer
TSC = 0x0123_4567_89AB_CDEF
READS_PER_READER = 400_000  # 2 readers x 2 writer kinds -> 1.6 M checked reads


def record_for(k: int) -> km.Record:
    """Record k: every field derived from k so that a mix of two records is detectable."""
    j = k % N_RECORDS
    return km.Record(
        version=0,
        tsc_timestamp=(TSC - 1 - j * 1_000_003) & km.MASK64,
        system_time=(j * 7_919_000_000_017 + 12345) & km.MASK64,
        tsc_to_system_mul=((j * 2_654_435_761) & km.MASK32) | 1,
        tsc_shift=(j % 13) - 6,
        flags=j & 0xFF,
    )


EXPECTED = {
    (km.read_cycles(record_for(j), TSC), record_for(j).flags) for j in range(N_RECORDS)
}
assert len(EXPECTED) == N_RECORDS  # every record reads differently


class Stop:
    """A flag shared by the threads of one test."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.errors: list[BaseException] = []

    def guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced by the test thread
                self.errors.append(exc)
                self.event.set()

        return run


def run_threads(stop: Stop, writers: list[Callable[[], None]],
                readers: list[Callable[[], None]], timeout: float = 50.0) -> None:
    threads_w = [threading.Thread(target=stop.guard(w), daemon=True) for w in writers]
    threads_r = [threading.Thread(target=stop.guard(r), daemon=True) for r in readers]
    for t in threads_w + threads_r:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads_r:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.event.set()
    for t in threads_w:
        t.join(5.0)
    assert not any(t.is_alive() for t in threads_w + threads_r), "threads did not finish"
    if stop.errors:
        raise stop.errors[0]


def native_writer(buf: object, stop: Stop, published: list[int]) -> Callable[[], None]:
    def write() -> None:
        n = 1
        while not stop.event.is_set():
            rec = record_for(n)
            info = kvmclock.PvclockVcpuTimeInfo(
                version=(2 * n) & km.MASK32,
                tsc_timestamp=rec.tsc_timestamp,
                system_time=rec.system_time,
                tsc_to_system_mul=rec.tsc_to_system_mul,
                tsc_shift=rec.tsc_shift,
                flags=rec.flags,
            )
            kvmclock.pvclock_write(buf, info, OFFSET)
            published[0] = n
            n += 1

    return write


def python_writer(buf: bytearray, stop: Stop, published: list[int]) -> Callable[[], None]:
    """Version odd, then the body field by field (yielding between fields), then version even."""

    def write() -> None:
        n = 1
        o = OFFSET
        while not stop.event.is_set():
            rec = record_for(n)
            struct.pack_into("<I", buf, o, (2 * n - 1) & km.MASK32)
            time.sleep(0)  # let readers run into the odd version
            buf[o + 8 : o + 16] = rec.tsc_timestamp.to_bytes(8, "little")
            if n % 3 == 0:
                time.sleep(0)  # and into a half-written body
            buf[o + 16 : o + 24] = rec.system_time.to_bytes(8, "little")
            buf[o + 24 : o + 28] = rec.tsc_to_system_mul.to_bytes(4, "little")
            buf[o + 28] = rec.tsc_shift & 0xFF
            buf[o + 29] = rec.flags
            struct.pack_into("<I", buf, o, (2 * n) & km.MASK32)
            published[0] = n
            n += 1
            time.sleep(0)  # hand the GIL to a reader between records, as a vCPU exit would

    return write


def pvclock_reader(buf: object, seen: set[int], counts: list[int]) -> Callable[[], None]:
    def read() -> None:
        expected = EXPECTED
        pvread = kvmclock.pvclock_read
        retry_error = kvmclock.PvclockRetryError
        torn = 0
        exhausted = 0
        for _ in range(READS_PER_READER):
            try:
                ns, flags, stamp = pvread(buf, TSC, OFFSET)
            except retry_error:
                exhausted += 1
                continue
            if (ns, flags) not in expected or stamp != TSC:
                torn += 1
            seen.add(flags)
        counts.append(torn)
        counts.append(exhausted)

    return read


@pytest.mark.parametrize("writer_kind", ["native", "python"])
def test_no_torn_pvclock_record(writer_kind: str) -> None:
    if writer_kind == "native":
        buf: object = np.zeros(256, dtype=np.uint8)
    else:
        buf = bytearray(256)
    first = record_for(0)
    memoryview(buf).cast("B")[OFFSET : OFFSET + 32] = first.pack()  # type: ignore[arg-type]
    stop = Stop()
    published = [0]
    seen: set[int] = set()
    counts_a: list[int] = []
    counts_b: list[int] = []
    writer = (native_writer(buf, stop, published) if writer_kind == "native"
              else python_writer(buf, stop, published))  # type: ignore[arg-type]
    run_threads(stop, [writer], [pvclock_reader(buf, seen, counts_a),
                                 pvclock_reader(buf, seen, counts_b)])
    torn = counts_a[0] + counts_b[0]
    exhausted = counts_a[1] + counts_b[1]
    assert torn == 0, f"{torn} torn records returned"
    assert exhausted <= READS_PER_READER // 100, f"{exhausted} reads gave up"
    assert published[0] > 1000, "the writer must publish many records during the reads"
    assert len(seen) > 16, "readers must observe many different records"
    # the buffer outside the record is untouched
    raw = bytes(memoryview(buf).cast("B"))  # type: ignore[arg-type]
    assert raw[:OFFSET] == bytes(OFFSET) and raw[OFFSET + 32 :] == bytes(256 - OFFSET - 32)


# ------------------------------------------------------------------ SeqCount


class Snapshot:
    """A multi-field structure a writer updates field by field (like tk_core under tk_core.seq)."""

    def __init__(self) -> None:
        self.a = 0
        self.b = 0
        self.c = 0


def test_seqcount_protects_multi_field_snapshot() -> None:
    seq = kvmclock.SeqCount()
    snap = Snapshot()
    stop = Stop()
    reads = 100_000
    writes = [0]

    def writer() -> None:
        k = 0
        while not stop.event.is_set():
            k += 1
            seq.write_begin()
            snap.a = k
            time.sleep(0)
            snap.b = 2 * k
            time.sleep(0)
            snap.c = 3 * k
            seq.write_end()
            writes[0] = k
            time.sleep(0)  # outside the write section too, or readers could never finish

    def snapshot() -> tuple[int, int, int]:
        return (snap.a, snap.b, snap.c)

    def reader_fn() -> None:
        last = 0
        for i in range(reads):
            a, b, c = seq.read(snapshot)
            assert (b, c) == (2 * a, 3 * a), f"mixed snapshot {(a, b, c)}"
            assert a >= last
            last = a
            if i % 8 == 0:
                time.sleep(0)  # let the writer in

    def reader_begin_retry() -> None:
        last = 0
        done = 0
        retries = 0
        while done < reads:
            s = seq.read_begin()
            assert s % 2 == 0, "read_begin waits for an even sequence"
            a, b, c = snap.a, snap.b, snap.c
            if seq.read_retry(s):
                retries += 1
                continue
            assert (b, c) == (2 * a, 3 * a), f"mixed snapshot {(a, b, c)}"
            assert a >= last
            last = a
            done += 1
            if done % 8 == 0:
                time.sleep(0)  # let the writer in

    run_threads(stop, [writer], [reader_fn, reader_begin_retry])
    assert writes[0] > 1000, "the writer must run many write sections during the reads"
    assert seq.sequence % 2 == 0
    assert seq.sequence == 2 * writes[0]


# ------------------------------------------------------------------ PvclockClock


def test_pvclock_clock_never_goes_back_across_threads() -> None:
    buf = np.zeros(64, dtype=np.uint8)
    stop = Stop()
    clock = kvmclock.PvclockClock(valid_flags=kvmclock.PVCLOCK_TSC_STABLE_BIT)
    lock = threading.Lock()
    global_max = [0]
    clamps = [0]
    reads = 100_000
    mul = 2**31  # 0.5 ns per cycle

    def writer() -> None:
        n = 1
        while not stop.event.is_set():
            # raw value goes back and forth: every other record is 50 us behind
            back = 50_000 if n % 2 else 0
            info = kvmclock.PvclockVcpuTimeInfo(
                version=(2 * n) & km.MASK32,
                tsc_timestamp=0,
                system_time=10**12 + n * 10_000 - back,
                tsc_to_system_mul=mul,
                tsc_shift=0,
                flags=0,  # not stable: the last_value clamp applies
            )
            kvmclock.pvclock_write(buf, info, 0)
            n += 1

    def reader(offset_tsc: int) -> Callable[[], None]:
        def run() -> None:
            mine: list[int] = []
            for i in range(reads):
                tsc = offset_tsc + i
                floor = global_max[0]  # returned by a read that finished before this one began
                value = clock.read(buf, tsc)
                assert value >= floor, f"time went back: {value} < {floor}"
                if mine:
                    assert value >= mine[-1]
                mine.append(value)
                with lock:
                    if value > global_max[0]:
                        global_max[0] = value
                # a raw read of the record after the fact, to see the clamp at work
                raw = kvmclock.PvclockVcpuTimeInfo.from_bytes(bytes(buf[:32])).read_cycles(tsc)
                if raw < value:
                    clamps[0] += 1

        return run

    run_threads(stop, [writer], [reader(1000), reader(2000)])
    assert clamps[0] > 0, "the raw value must have gone backwards for the clamp to matter"
    assert clock.last_value == global_max[0]

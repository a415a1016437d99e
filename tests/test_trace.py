"""kvmclock.trace: the ftrace writer (TP_printk texts of arch/x86/kvm/trace.h, before and after
patch 09 of the 2017 series) and the parser/summariser of ftrace and trace-cmd text."""

from __future__ import annotations

import glob
import os
import re
from collections import Counter

import kvmclock
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kvmclock import trace as T
from kvmclock.errors import TraceParseError

DATA = os.path.join(os.path.dirname(__file__), "data", "trace")
S9_PIPE = os.path.join(DATA, "series-upstream-s9-trace_pipe.txt")
S9_TRACECMD = os.path.join(DATA, "series-upstream-s9-trace-cmd-x86-tsc.txt")

# TP_printk strings of arch/x86/kvm/trace.h, in Python % syntax (%u/%llu -> %d, 0x%llx -> 0x%x)
FMT_UMC_BEFORE = "masterclock %d hostclock %s offsetmatched %d"
FMT_UMC_AFTER = "masterclock %d hostclock stable %d offsetmatched %d"
FMT_TRACK_BEFORE = "vcpu_id %d masterclock %d offsetmatched %d nr_online %d" " hostclock %s"
FMT_TRACK_AFTER = "vcpu_id %d masterclock %d offsetmatched %d nr_online %d " "hostclock stable %d"
FMT_WRITE = "vcpu=%d prev=%d next=%d"
FMT_PVCLOCK = (
    "vcpu_id %d, pvclock { version %d, tsc_timestamp 0x%x, "
    "system_time 0x%x, tsc_to_system_mul 0x%x, tsc_shift %d, "
    "flags 0x%x }"
)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------------------- writer


def test_field_texts_match_tp_printk() -> None:
    assert T.fields_update_master_clock_before(True, 1, False) == FMT_UMC_BEFORE % (1, "tsc", 0)
    assert T.fields_update_master_clock_before(False, 0, True) == FMT_UMC_BEFORE % (0, "none", 1)
    assert T.fields_update_master_clock_after(True, True, True) == FMT_UMC_AFTER % (1, 1, 1)
    assert T.fields_track_tsc_before(3, False, 2, 4, 1) == FMT_TRACK_BEFORE % (3, 0, 2, 4, "tsc")
    assert T.fields_track_tsc_after(3, True, 2, 4, False) == FMT_TRACK_AFTER % (3, 1, 2, 4, 0)
    neg = -6815369687214825
    assert T.fields_write_tsc_offset(0, 0, neg) == FMT_WRITE % (0, 0, neg + 2**64)
    assert T.fields_pvclock_update(1, 2, 0x1C4E1E2F0A, 10**9, 0xA3D70A3D, -1, 1) == (
        FMT_PVCLOCK % (1, 2, 0x1C4E1E2F0A, 10**9, 0xA3D70A3D, -1, 1)
    )


def test_host_clock_symbols() -> None:
    # __print_symbolic with {0,"none"},{1,"tsc"}; unknown values print as 0x%lx
    assert [T.host_clock_symbol(v) for v in (0, 1, 2, 3, 255)] == ["none", "tsc", "0x2", "0x3",
                                                                   "0xff"]


def test_profile_dispatch() -> None:
    assert T.fields_update_master_clock("gtod", True, True, host_clock=2) == (
        FMT_UMC_BEFORE % (1, "0x2", 1)
    )
    assert T.fields_update_master_clock("series", True, False, host_clock_stable=True) == (
        FMT_UMC_AFTER % (1, 1, 0)
    )
    assert T.fields_track_tsc("series", 0, False, 0, 1, host_clock_stable=False) == (
        FMT_TRACK_AFTER % (0, 0, 0, 1, 0)
    )
    with pytest.raises(ValueError, match="profile"):
        T.fields_track_tsc("nope", 0, False, 0, 1, host_clock=1)
    with pytest.raises(ValueError, match="host_clock_stable"):
        T.fields_update_master_clock("series", True, True, host_clock=1)
    with pytest.raises(ValueError, match="host_clock"):
        T.fields_update_master_clock("gtod", True, True)


def test_writer_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="tsc_shift"):
        T.fields_pvclock_update(0, 2, 0, 0, 1, 128, 0)
    with pytest.raises(ValueError, match="flags"):
        T.fields_pvclock_update(0, 2, 0, 0, 1, 0, 256)
    with pytest.raises(TypeError, match="vcpu_id"):
        T.fields_write_tsc_offset("0", 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="next_tsc_offset"):
        T.fields_write_tsc_offset(0, 0, 2**64)
    with pytest.raises(TypeError, match="use_master_clock"):
        T.fields_update_master_clock_after(2, True, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="comm"):
        T.format_line("a\nb", 1, 0, 0, "kvm_track_tsc", "x")
    with pytest.raises(ValueError, match="flags"):
        T.format_line("a", 1, 0, 0, "kvm_track_tsc", "x", flags="d")


def test_line_layout() -> None:
    line = T.format_line("a.out", 20024, 1, 2323301_150469_000, "kvm_update_master_clock",
                         FMT_UMC_BEFORE % (0, "tsc", 0), flags="....")
    # %16s-%-7d [%03d] flags %5lu.%06lu: event: fields
    assert line == (f"{'a.out':>16}-{20024:<7d} [001] .... 2323301.150469: "
                    "kvm_update_master_clock: masterclock 0 hostclock tsc offsetmatched 0")
    assert T.format_line("x", 1, 2, 3, "e", "f", flags=None, level=2).startswith("L2 ")
    # ns2usecs rounds to the nearest microsecond: (ns + 500) / 1000
    for t in (0, 499, 500, 1_999_999_499, 1_999_999_500, 12_345_678_901):
        usecs = (t + 500) // 1000
        assert T.format_timestamp(t).strip() == f"{usecs // 10**6}.{usecs % 10**6:06d}"
    assert T.format_timestamp(117471684343752, raw=True).strip() == "117471684343752"


_COMM = st.text(alphabet="abcdefgqrsxyz0123456789 -/._<>", min_size=1, max_size=15).filter(
    lambda s: s.strip() == s and not re.match(r"L\d", s) and s[-1] != "-"
)


@st.composite
def clock_event(draw: st.DrawFn) -> tuple[str, str, dict[str, object]]:
    kind = draw(st.sampled_from(T.CLOCK_EVENTS))
    u32 = st.integers(0, 2**32 - 1)
    b = st.booleans()
    if kind == "kvm_update_master_clock":
        mc, om = draw(b), draw(b)
        if draw(b):
            hc = draw(u32)
            data: dict[str, object] = {"use_master_clock": mc, "offset_matched": om,
                                       "host_clock": hc}
            return kind, T.fields_update_master_clock_before(mc, hc, om), data
        hs = draw(b)
        data = {"use_master_clock": mc, "offset_matched": om, "host_clock_stable": hs}
        return kind, T.fields_update_master_clock_after(mc, hs, om), data
    if kind == "kvm_track_tsc":
        v, n, o, mc = draw(u32), draw(u32), draw(u32), draw(b)
        data = {"vcpu_id": v, "use_master_clock": mc, "nr_vcpus_matched_tsc": n,
                "online_vcpus": o}
        if draw(b):
            hc = draw(u32)
            data["host_clock"] = hc
            return kind, T.fields_track_tsc_before(v, mc, n, o, hc), data
        hs = draw(b)
        data["host_clock_stable"] = hs
        return kind, T.fields_track_tsc_after(v, mc, n, o, hs), data
    if kind == "kvm_write_tsc_offset":
        v = draw(u32)
        p, nx = draw(st.integers(-(2**63), 2**64 - 1)), draw(st.integers(-(2**63), 2**64 - 1))
        data = {"vcpu_id": v, "previous_tsc_offset": p % 2**64, "next_tsc_offset": nx % 2**64}
        return kind, T.fields_write_tsc_offset(v, p, nx), data
    u64 = st.integers(0, 2**64 - 1)
    data = {"vcpu_id": draw(u32), "version": draw(u32), "tsc_timestamp": draw(u64),
            "system_time": draw(u64), "tsc_to_system_mul": draw(u32),
            "tsc_shift": draw(st.integers(-128, 127)), "flags": draw(st.integers(0, 255))}
    return kind, T.fields_pvclock_update(**data), data  # type: ignore[arg-type]


@given(
    ev=clock_event(),
    comm=_COMM,
    pid=st.integers(0, 2**22),
    cpu=st.integers(0, 511),
    t_ns=st.integers(0, 10**15),
    flags=st.sampled_from([None, "....", "d...", "d..1.", "dNh2."]),
    level=st.one_of(st.none(), st.integers(0, 9)),
    raw=st.booleans(),
    crlf=st.booleans(),
)
def test_writer_parser_round_trip(
    ev: tuple[str, str, dict[str, object]], comm: str, pid: int, cpu: int, t_ns: int,
    flags: str | None, level: int | None, raw: bool, crlf: bool,
) -> None:
    kind, fields, data = ev
    line = T.format_line(comm, pid, cpu, t_ns, kind, fields, flags=flags, level=level,
                         raw_timestamp=raw)
    rec = T.parse_line(line + ("\r\n" if crlf else "\n"), 7)
    assert isinstance(rec, T.TraceRecord), line
    assert (rec.comm, rec.pid, rec.cpu, rec.flags, rec.level, rec.event, rec.line_no) == (
        comm, pid, cpu, flags, level, kind, 7)
    if raw:
        assert rec.counter == t_ns and rec.t_ns is None
    else:
        assert rec.t_ns == (t_ns + 500) // 1000 * 1000
    assert rec.data is not None
    for k, v in data.items():
        assert rec.data[k] == v, (k, line)
    if kind in ("kvm_update_master_clock", "kvm_track_tsc"):
        assert rec.fmt == ("after" if "host_clock_stable" in data else "before")


# ---------------------------------------------------------------------------- parser


def test_series_upstream_s9_real_lines() -> None:
    text = _read(S9_PIPE)
    res = T.parse_text(text)
    assert (len(res.records), len(res.skipped), res.header_lines) == (4, 0, 0)
    umc0, wto, track, umc1 = res.records
    assert (umc0.comm, umc0.pid, umc0.cpu, umc0.flags) == ("a.out", 20024, 1, "....")
    assert umc0.t_ns == 2323301 * 10**9 + 150469 * 1000
    assert umc0.data == {"use_master_clock": False, "offset_matched": False, "host_clock": 1,
                         "host_clock_symbol": "tsc"}
    assert wto.flags == "d..."
    assert wto.data == {"vcpu_id": 0, "previous_tsc_offset": 0,
                        "next_tsc_offset": 18439928704022336791}
    assert track.data is not None and track.data["nr_vcpus_matched_tsc"] == 0
    assert umc1.data is not None and umc1.data["use_master_clock"] is True

    s = T.summarize(res)
    assert s["events"] == 4 and s["skipped_lines"] == 0
    assert s["by_event"] == {"kvm_update_master_clock": 2, "kvm_write_tsc_offset": 1,
                             "kvm_track_tsc": 1}
    assert [(m["time_ns"], m["on"]) for m in s["masterclock"]] == [(umc0.t_ns, False),
                                                                    (umc1.t_ns, True)]
    (proc,) = s["vms"]
    assert proc["vm"] == "20024" and proc["grouped_by"] == "pid"
    assert [(m["time_ns"], m["on"]) for m in proc["masterclock_transitions"]] == [
        (umc0.t_ns, False), (umc1.t_ns, True)]
    (gen,) = proc["tsc_generations"]
    # offset = 0 - host_tsc as u64; the signed view is next - 2**64
    assert gen["offset_cycles"] == 18439928704022336791
    assert gen["offset_signed_cycles"] == 18439928704022336791 - 2**64 == -6815369687214825
    assert gen["vcpus"] == [0] and gen["online_vcpus"] == 1
    assert proc["vcpus"][0]["tsc_offset_signed_cycles"] == -6815369687214825
    assert s["anomalies"] == []
    text_out = T.format_summary(s)
    assert "-6815369687214825" in text_out and "transitions" in text_out


def test_trace_cmd_raw_tsc_line() -> None:
    res = T.parse_text(_read(S9_TRACECMD))
    (rec,) = res.records
    assert (rec.comm, rec.pid, rec.cpu, rec.flags) == ("<...>", 105662, 2, None)
    assert rec.counter == 117471684343752 and rec.t_ns is None
    s = T.summarize(res)
    assert s["timestamp_unit"] == "counter"
    assert [(m["time_counter"], m["time_ns"], m["on"]) for m in s["masterclock"]] == [
        (117471684343752, None, False)]


def test_hostclock_hex_and_old_hpet_symbol() -> None:
    res = T.parse_text(
        "qemu-1-2 [000] .... 1.000000: kvm_update_master_clock: masterclock 0 hostclock 0x2 "
        "offsetmatched 1\n"
        "qemu-1-2 [000] 1.000001: kvm_track_tsc: vcpu_id 1 masterclock 0 offsetmatched 1 "
        "nr_online 2 hostclock hpet\n"
    )
    a, b = res.records
    assert a.comm == "qemu-1" and a.pid == 2
    assert a.data is not None and a.data["host_clock"] == 2
    assert b.data is not None and b.data["host_clock"] == 2 and b.flags is None


def test_mixed_input_headers_garbage_crlf_and_bytes() -> None:
    lines = [
        b"# tracer: nop",
        b"#",
        b"cpus=2",
        b"version = 6",
        b"CPU 1 is empty",
        b"",
        b"          <idle>-0       [001] d.h1.   100.000001: kvm_exit: vcpu 0 reason HLT "
        b"rip 0xfff0 info1 0x0 info2 0x0 intr_info 0x00000000 error_code 0x00000000",
        b"   CPU 0/KVM-4242    (   4200) [000] d..1.   100.000002: kvm_update_master_clock: "
        b"masterclock 1 hostclock stable 1 offsetmatched 1\r",
        b" qemu-system-x86-4200    [000] .....   100.000003: sched_switch: prev_comm=a "
        b"prev_pid=1 ==> next_comm=b next_pid=2",
        b"   CPU 0/KVM-4242    [000] ....   100.000004: kvm_update_master_clock: masterclock 2 "
        b"hostclock tsc offsetmatched 0",  # garbled: bool 2
        b"   CPU 0/KVM-4242    [000] ....   100.000005: kvm_pvclock_update: vcpu_id 0, pvclock "
        b"{ version 2, tsc_timestamp 0x10",  # truncated
        b"   CPU 0/KVM-4242    [000] ....   100.000006: kvm_write_tsc_offset: vcpu=0 prev=0 "
        b"next=18446744073709551616",  # > u64
        b"complete garbage here",
        b"\x00\x01\x02binary\x00",
        b"\xff\xfe not utf-8",
        b"   CPU 0/KVM-4242    [000] ....   100.000007: kvm:kvm_write_tsc_offset: vcpu=0 "
        b"prev=0 next=5",
        b"qemu-system-x86  4242 [001]   100.000008: kvm:kvm_track_tsc: vcpu_id 0 masterclock 1 "
        b"offsetmatched 1 nr_online 2 hostclock tsc",  # perf script layout
    ]
    res = T.parse_bytes(b"\n".join(lines) + b"\n")
    assert [r.event for r in res.records] == [
        "kvm_exit", "kvm_update_master_clock", "sched_switch", "kvm_write_tsc_offset",
        "kvm_track_tsc"]
    assert (res.records[-1].comm, res.records[-1].pid, res.records[-1].cpu) == (
        "qemu-system-x86", 4242, 1)
    assert res.records[1].tgid == 4200 and res.records[1].comm == "CPU 0/KVM"
    assert res.records[1].flags == "d..1." and res.records[1].fmt == "after"
    assert len(res.skipped) == 6
    assert res.header_lines == 5 and res.blank_lines == 1 and res.total_lines == len(lines)
    reasons = Counter(s.reason for s in res.skipped)
    assert reasons["not UTF-8 text"] == 1 and reasons["NUL byte in line"] == 1
    s = T.summarize(res)
    assert s["events"] == 5 and s["clock_events"] == 3 and s["skipped_lines"] == 6
    assert s["by_event"]["kvm_exit"] == 1
    # tgid groups the first record, and pid 4242, once seen with tgid 4200, keeps it on the
    # lines without a tgid column (before: a second VM "4242")
    assert [p["vm"] for p in s["vms"]] == ["4200"]


def test_binary_and_empty_inputs() -> None:
    with pytest.raises(TraceParseError, match="binary"):
        T.parse_bytes(bytes(range(256)) * 4)
    with pytest.raises(TraceParseError):
        T.parse_bytes(b"\x00\x00\x00\n\x00\n")
    empty = T.parse_bytes(b"")
    assert empty.records == [] and empty.skipped == []
    assert T.summarize(empty)["events"] == 0


def _pv_line(t_us: int, vcpu: int, version: int, tsc: int, st_ns: int, flags: int,
             mul: int = 0xC53756F3, shift: int = -1) -> str:
    return T.format_line("vmm", 77, 0, t_us * 1000, "kvm_pvclock_update",
                         T.fields_pvclock_update(vcpu, version, tsc, st_ns, mul, shift, flags))


def _read_cycles(rec: dict[str, int], tsc: int) -> int:
    """__pvclock_read_cycles restated for the test (arch/x86/include/asm/pvclock.h)."""
    delta = (tsc - rec["tsc_timestamp"]) % 2**64
    s = rec["tsc_shift"]
    delta = delta >> -s if s < 0 else (delta << s) % 2**64
    return (rec["system_time"] + ((delta * rec["tsc_to_system_mul"]) >> 32)) % 2**64


def test_pvclock_summary_and_anomalies() -> None:
    recs = [
        (1, 0, 2, 1_000_000, 5_000_000, 1),
        (2, 0, 4, 3_000_000, 5_500_000, 1),   # stable, forward
        (3, 0, 6, 4_000_000, 5_400_000, 0),   # system_time back AND stable bit lost
        (4, 0, 7, 4_500_000, 6_000_000, 0),   # odd version
        (5, 1, 2, 9_000_000, 9_000_000, 1),
    ]
    text = "\n".join(_pv_line(*r) for r in recs)
    s = T.summarize(T.parse_text(text))
    (vm,) = s["vms"]
    v0, v1 = vm["vcpus"]
    assert vm["vm"] == "77" and (v0["vcpu_id"], v1["vcpu_id"]) == (0, 1)
    assert v0["pvclock_updates"] == 4 and v1["pvclock_updates"] == 1
    fields = ["version", "tsc_timestamp_cycles", "system_time_ns", "flags"]
    prev = None
    for entry, r in zip(v0["pvclock"], recs[:4], strict=True):
        assert [entry[k] for k in fields] == [r[2], r[3], r[4], r[5]]
        rec = {"tsc_timestamp": entry["tsc_timestamp_cycles"],
               "system_time": entry["system_time_ns"],
               "tsc_to_system_mul": entry["tsc_to_system_mul"], "tsc_shift": entry["tsc_shift"]}
        assert entry["kvmclock_ns"] == _read_cycles(rec, rec["tsc_timestamp"]) == r[4]
        # pvclock_tsc_khz: (10^6 << 32) / mul, then undo the shift
        khz = (10**6 << 32) // entry["tsc_to_system_mul"]
        khz = khz << -entry["tsc_shift"] if entry["tsc_shift"] < 0 else khz >> entry["tsc_shift"]
        assert entry["tsc_khz"] == khz
        if prev is None:
            assert entry["step_ns"] is None
        else:
            assert entry["step_ns"] == rec["system_time"] - _read_cycles(prev,
                                                                         rec["tsc_timestamp"])
        prev = rec
    kinds = [(a["kind"], a["vcpu"], a["line"]) for a in s["anomalies"]]
    assert ("system_time_backwards", 0, 3) in kinds
    assert ("stable_bit_lost", 0, 3) in kinds
    assert ("odd_version", 0, 4) in kinds
    # update 2: old record at tsc 3e6 gives 5e6 + (2e6 >> 1) * mul >> 32 > 5.5e6 -> step back
    step2 = v0["pvclock"][1]["step_ns"]
    assert (step2 < 0) == (("kvmclock_step_back", 0, 2) in kinds)
    assert v0["last_pvclock"]["version"] == 7
    assert "anomalies: " in T.format_summary(s)


# ---------------------------------------------------------------------------- real captures

REAL = sorted(p for p in glob.glob(os.path.join(DATA, "real-*.txt"))
              if not p.endswith(".uname.txt"))

# an independent, loose reading of ftrace lines: "...: <event>: <fields>" with a pid and cpu
_LOOSE = re.compile(r"-(\d+)\s+(?:\(\s*\d+\)\s+)?\[(\d+)\][^:]*?([\d.]+): (\w+): (.*)$")


def test_real_captures_are_in_the_tree() -> None:
    # the parametrised test below would silently run zero cases without them
    assert REAL, "tests/data/trace/real-*.txt missing"


@pytest.mark.parametrize("path", REAL, ids=os.path.basename)
def test_real_capture_parsed_exactly(path: str) -> None:
    text = _read(path)
    loose = [m.groups() for line in text.splitlines()
             if not line.startswith("#") and (m := _LOOSE.search(line))]
    res = T.parse_text(text)
    assert res.skipped == []
    assert len(res.records) == len(loose)
    assert Counter(r.event for r in res.records) == Counter(g[3] for g in loose)
    for rec, (pid, cpu, ts, event, fields) in zip(res.records, loose, strict=True):
        assert (rec.pid, rec.cpu, rec.timestamp, rec.event, rec.fields) == (
            int(pid), int(cpu), ts, event, fields.strip())
        if event == "kvm_pvclock_update":
            nums = dict(re.findall(r"(\w+) (-?(?:0x)?[0-9a-f]+)[,} ]", fields))
            assert rec.data is not None
            for k in ("version", "tsc_timestamp", "system_time", "tsc_to_system_mul",
                      "tsc_shift", "flags"):
                assert rec.data[k] == int(nums[k], 0), k
        elif event == "kvm_write_tsc_offset":
            nums = dict(re.findall(r"(\w+)=(\d+)", fields))
            assert rec.data is not None
            assert rec.data["next_tsc_offset"] == int(nums["next"])
    if hasattr(kvmclock, "PvclockVcpuTimeInfo"):
        s = T.summarize(res)
        ups = [r for r in res.records if r.event == "kvm_update_master_clock"]
        assert [(m["line"], m["on"]) for m in s["masterclock"]] == [
            (r.line_no, r.data["use_master_clock"]) for r in ups]  # type: ignore[index]
        n_gen = sum(1 for r in res.records if r.event == "kvm_track_tsc"
                    and r.data is not None and r.data["nr_vcpus_matched_tsc"] == 0)
        assert sum(len(p["tsc_generations"]) for p in s["vms"]) == n_gen
        stable_lost = 0
        last: dict[tuple[int, int], int] = {}
        for r in res.records:
            if r.event == "kvm_pvclock_update" and r.data is not None:
                key = (r.pid, r.data["vcpu_id"])
                if key in last and last[key] & 1 and not r.data["flags"] & 1:
                    stable_lost += 1
                last[key] = r.data["flags"]
        assert sum(a["kind"] == "stable_bit_lost" for a in s["anomalies"]) == stable_lost


@pytest.mark.parametrize("profile", ["gtod", "series"])
def test_model_trace_rows_are_the_formatters_text(profile: str) -> None:
    """The model (kvmclock.kvm.x86) has no trace text of its own: every row it emits is what
    this module's formatter gives for the row's parsed values, in the profile's TP_printk
    form (gtod ``hostclock %s``, series ``hostclock stable %u``)."""
    from kvmclock.sim import run_scenario

    run = run_scenario("nested", profile, trace=True, duration_s=1)
    rows = run["trace"]
    assert {r["event"] for r in rows} == set(T.CLOCK_EVENTS)
    want_fmt = "before" if profile == "gtod" else "after"
    for event, fields in ((r["event"], r["fields"]) for r in rows):
        parsed = T.parse_fields(event, fields)
        assert parsed is not None, (event, fields)
        d, fmt = parsed
        if event == "kvm_update_master_clock":
            assert fmt == want_fmt
            again = T.fields_update_master_clock(
                profile, d["use_master_clock"], d["offset_matched"],
                host_clock=d.get("host_clock"), host_clock_stable=d.get("host_clock_stable"))
        elif event == "kvm_track_tsc":
            assert fmt == want_fmt
            again = T.fields_track_tsc(
                profile, d["vcpu_id"], d["use_master_clock"], d["nr_vcpus_matched_tsc"],
                d["online_vcpus"], host_clock=d.get("host_clock"),
                host_clock_stable=d.get("host_clock_stable"))
        elif event == "kvm_write_tsc_offset":
            again = T.fields_write_tsc_offset(d["vcpu_id"], d["previous_tsc_offset"],
                                              d["next_tsc_offset"])
        else:
            again = T.fields_pvclock_update(**d)
        assert again == fields, (event, fields)


@pytest.mark.parametrize("profile", ["gtod", "upstream"])
def test_pvclock_trace_placement_by_profile_and_summary(profile: str) -> None:
    """4.13 traces the odd version it stored before the final one, 6.x the final even one;
    the summary infers the placement (auto) and flags only versions of the other parity."""
    from kvmclock.sim import run_scenario
    from kvmclock.sim.scenarios import format_trace_lines

    run = run_scenario("nested", profile, duration_s=0.2, trace=True)
    text = "\n".join(format_trace_lines(run)) + "\n"
    res = T.parse_text(text)
    versions = [r.data["version"] for r in res.records
                if r.event == "kvm_pvclock_update" and r.data is not None]
    assert versions
    odd = profile == "gtod"
    assert all(bool(v & 1) is odd for v in versions)
    auto = T.summarize(res)
    assert auto["pvclock_trace_version"] == ("odd" if odd else "final")
    assert not [a for a in auto["anomalies"] if a["kind"] in ("odd_version", "even_version")]
    wrong = T.summarize(res, pvclock_trace_version="final" if odd else "odd")
    kinds = {a["kind"] for a in wrong["anomalies"]}
    assert kinds >= {"odd_version" if odd else "even_version"}
    assert len([a for a in wrong["anomalies"] if a["kind"].endswith("_version")]) == len(versions)
    with pytest.raises(ValueError, match="pvclock_trace_version must be one of"):
        T.summarize(res, pvclock_trace_version="even")

"""ftrace text writer and parser for the four KVM clock trace events.

The events are defined in ``arch/x86/kvm/trace.h`` (``kvm_update_master_clock``,
``kvm_track_tsc``, ``kvm_write_tsc_offset``, ``kvm_pvclock_update``); their TP_printk strings are
the contract reproduced here, in the ``before`` form (2017 base of the series, unchanged upstream
today) and the ``after`` form (patch 09/11 of the 2017 series: ``hostclock stable %u``).

Line layout (``kernel/trace/trace_output.c``: ``trace_print_context`` and
``trace_print_lat_fmt``)::

    <comm>-<pid> [<cpu:03d>] <flags> <secs>.<usecs>: <event>: <fields>

``<flags>`` (irqs-off, need-resched, hardirq/softirq, preempt depth, and since 5.x
migrate-disable: 4 or 5 characters such as ``d...`` or ``d..1.``) is absent in older kernels
and in plain ``trace-cmd report``. A clock in counter units (``trace_clock`` ``x86-tsc`` or
``counter``, or ``trace-cmd record -C x86-tsc``) prints an integer timestamp with no dot.
With ``options/record-tgid`` set, a ``(%7d)`` tgid column (``(-------)`` when unknown) follows
``<comm>-<pid>``. ``perf script`` lines
(``<comm> <pid> [<cpu>] <secs>.<usecs>: kvm:<event>: <fields>``) are accepted too.

Level column (a kvmclock extension for nested simulations, not a kernel format): a line may start
with ``L<level>`` and one or more spaces, e.g. ``L1 qemu-1000 [000] .... 5.000000: ...``.
The parser accepts it on any line; a real comm that itself starts with ``L<digits> `` followed
by another word would be read as a level column (documented ambiguity; real comms of that shape
are rare and the writer never produces them without ``level``).

Parsing never fails on a bad line: unknown or garbled lines (including lines with NUL bytes or
bytes that are not UTF-8) are counted and skipped. Only an input that is wholly binary (it has
bytes, and no line of it decodes as NUL-free UTF-8 text) raises
:class:`kvmclock.errors.TraceParseError`, since it cannot be a text trace at all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kvmclock.errors import TraceParseError

__all__ = [
    "CLOCK_EVENTS",
    "FORMAT_BY_PROFILE",
    "GROUPING_GUESS_NOTE",
    "HOST_CLOCKS",
    "VCPU_THREAD_NAMES",
    "VMM_MAIN_THREAD_NAMES",
    "ParseResult",
    "SkippedLine",
    "TraceRecord",
    "fields_pvclock_update",
    "fields_track_tsc",
    "fields_track_tsc_after",
    "fields_track_tsc_before",
    "fields_update_master_clock",
    "fields_update_master_clock_after",
    "fields_update_master_clock_before",
    "fields_write_tsc_offset",
    "format_line",
    "format_summary",
    "format_timestamp",
    "host_clock_symbol",
    "parse_bytes",
    "parse_fields",
    "parse_line",
    "parse_lines",
    "parse_text",
    "summarize",
    "to_signed64",
    "vcpu_thread_index",
    "vmm_main_thread",
]

U8_MAX = (1 << 8) - 1
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
S64_MIN = -(1 << 63)

#: The four clock events this module writes and interprets.
CLOCK_EVENTS = (
    "kvm_update_master_clock",
    "kvm_track_tsc",
    "kvm_write_tsc_offset",
    "kvm_pvclock_update",
)

#: The host clock modes: 4.13 ``VCLOCK_*`` (arch/x86/include/asm/clocksource.h) and since 5.7
#: ``enum vdso_clock_mode`` (include/vdso/clocksource.h: NONE first, then the x86
#: VDSO_ARCH_CLOCKMODES TSC, PVCLOCK, HVCLOCK of arch/x86/include/asm/vdso/clocksource.h).
#: The numbers did not change: NONE 0, TSC 1, PVCLOCK 2, HVCLOCK 3.
VCLOCK_MODES: dict[str, int] = {"VCLOCK_NONE": 0, "VCLOCK_TSC": 1, "VCLOCK_PVCLOCK": 2,
                                "VCLOCK_HVCLOCK": 3}
VDSO_CLOCKMODES: dict[str, int] = {"VDSO_CLOCKMODE_NONE": 0, "VDSO_CLOCKMODE_TSC": 1,
                                   "VDSO_CLOCKMODE_PVCLOCK": 2, "VDSO_CLOCKMODE_HVCLOCK": 3}

#: ``host_clocks`` symbol table of ``__print_symbolic`` in arch/x86/kvm/trace.h: 4.13
#: ``{VCLOCK_NONE, "none"}, {VCLOCK_TSC, "tsc"}``; 6.18 names the same two entries
#: ``VDSO_CLOCKMODE_NONE``/``VDSO_CLOCKMODE_TSC``, and the mode numbers did not change, so both
#: print the same text for every mode.  Values without an entry print as ``0x%lx``
#: (``trace_print_symbols_seq``), e.g. PVCLOCK = 2 prints ``0x2``.
HOST_CLOCKS: dict[int, str] = {
    VCLOCK_MODES["VCLOCK_NONE"]: "none",
    VCLOCK_MODES["VCLOCK_TSC"]: "tsc",
}
assert HOST_CLOCKS == {
    VDSO_CLOCKMODES["VDSO_CLOCKMODE_NONE"]: "none",
    VDSO_CLOCKMODES["VDSO_CLOCKMODE_TSC"]: "tsc",
}

#: The pre-2017 table also had ``{VCLOCK_HPET, "hpet"}`` with VCLOCK_HPET = 2; the parser
#: accepts that symbol from old traces (then 2 meant HPET, not PVCLOCK).
_HOST_CLOCK_SYMBOLS_IN: dict[str, int] = {"none": 0, "tsc": 1, "hpet": 2}

#: Which TP_printk form a kernel profile prints: ``gtod`` (before the series, upstream today)
#: prints ``hostclock %s``; ``series`` (patch 09/11) prints ``hostclock stable %u``.
FORMAT_BY_PROFILE: dict[str, Literal["before", "after"]] = {
    "gtod": "before",
    "upstream": "before",
    "series": "after",
    # the values of the ``trace_format`` switch (kvmclock.profiles)
    "hostclock_symbol": "before",
    "hostclock_stable": "after",
}


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    """Range/type check shared by the field formatters; names the argument and its range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def _check_bool(name: str, value: object) -> int:
    """A C ``bool`` trace field: Python bool or 0/1; printed as 0 or 1."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    raise TypeError(f"{name} must be a bool (or 0/1), got {value!r}")


def host_clock_symbol(host_clock: int) -> str:
    """``__print_symbolic(host_clock, host_clocks)``: "none", "tsc", else ``0x%lx``."""
    value = _check_int("host_clock", host_clock, 0, U32_MAX)
    return HOST_CLOCKS.get(value, f"0x{value:x}")


def fields_update_master_clock_before(
    use_master_clock: bool, host_clock: int, offset_matched: bool
) -> str:
    """kvm_update_master_clock, before patch 09 (arch/x86/kvm/trace.h):
    ``"masterclock %d hostclock %s offsetmatched %u"``; host_clock is the vclock mode."""
    return (
        f"masterclock {_check_bool('use_master_clock', use_master_clock)} "
        f"hostclock {host_clock_symbol(host_clock)} "
        f"offsetmatched {_check_bool('offset_matched', offset_matched)}"
    )


def fields_update_master_clock_after(
    use_master_clock: bool, host_clock_stable: bool, offset_matched: bool
) -> str:
    """kvm_update_master_clock, after patch 09: ``"masterclock %d hostclock stable %u
    offsetmatched %u"``."""
    return (
        f"masterclock {_check_bool('use_master_clock', use_master_clock)} "
        f"hostclock stable {_check_bool('host_clock_stable', host_clock_stable)} "
        f"offsetmatched {_check_bool('offset_matched', offset_matched)}"
    )


def _format_of(profile: str) -> Literal["before", "after"]:
    try:
        return FORMAT_BY_PROFILE[profile]
    except KeyError:
        raise ValueError(
            f"profile must be one of {sorted(FORMAT_BY_PROFILE)}, got {profile!r}"
        ) from None


def fields_update_master_clock(
    profile: str,
    use_master_clock: bool,
    offset_matched: bool,
    *,
    host_clock: int | None = None,
    host_clock_stable: bool | None = None,
) -> str:
    """The kvm_update_master_clock fields of ``profile`` (gtod: needs ``host_clock``, the
    vclock mode; series: needs ``host_clock_stable``)."""
    if _format_of(profile) == "before":
        if host_clock is None:
            raise ValueError(f"host_clock (vclock mode) is required for profile {profile!r}")
        return fields_update_master_clock_before(use_master_clock, host_clock, offset_matched)
    if host_clock_stable is None:
        raise ValueError(f"host_clock_stable is required for profile {profile!r}")
    return fields_update_master_clock_after(use_master_clock, host_clock_stable, offset_matched)


def fields_track_tsc_before(
    vcpu_id: int,
    use_master_clock: bool,
    nr_vcpus_matched_tsc: int,
    online_vcpus: int,
    host_clock: int,
) -> str:
    """kvm_track_tsc before patch 09: ``"vcpu_id %u masterclock %u offsetmatched %u
    nr_online %u hostclock %s"`` (offsetmatched is the count nr_vcpus_matched_tsc)."""
    return (
        f"vcpu_id {_check_int('vcpu_id', vcpu_id, 0, U32_MAX)} "
        f"masterclock {_check_bool('use_master_clock', use_master_clock)} "
        f"offsetmatched {_check_int('nr_vcpus_matched_tsc', nr_vcpus_matched_tsc, 0, U32_MAX)} "
        f"nr_online {_check_int('online_vcpus', online_vcpus, 0, U32_MAX)} "
        f"hostclock {host_clock_symbol(host_clock)}"
    )


def fields_track_tsc_after(
    vcpu_id: int,
    use_master_clock: bool,
    nr_vcpus_matched_tsc: int,
    online_vcpus: int,
    host_clock_stable: bool,
) -> str:
    """kvm_track_tsc after patch 09: ``"... nr_online %u hostclock stable %u"``."""
    return (
        f"vcpu_id {_check_int('vcpu_id', vcpu_id, 0, U32_MAX)} "
        f"masterclock {_check_bool('use_master_clock', use_master_clock)} "
        f"offsetmatched {_check_int('nr_vcpus_matched_tsc', nr_vcpus_matched_tsc, 0, U32_MAX)} "
        f"nr_online {_check_int('online_vcpus', online_vcpus, 0, U32_MAX)} "
        f"hostclock stable {_check_bool('host_clock_stable', host_clock_stable)}"
    )


def fields_track_tsc(
    profile: str,
    vcpu_id: int,
    use_master_clock: bool,
    nr_vcpus_matched_tsc: int,
    online_vcpus: int,
    *,
    host_clock: int | None = None,
    host_clock_stable: bool | None = None,
) -> str:
    """The kvm_track_tsc fields of ``profile`` (see :func:`fields_update_master_clock`)."""
    if _format_of(profile) == "before":
        if host_clock is None:
            raise ValueError(f"host_clock (vclock mode) is required for profile {profile!r}")
        return fields_track_tsc_before(
            vcpu_id,
            use_master_clock,
            nr_vcpus_matched_tsc,
            online_vcpus,
            host_clock,
        )
    if host_clock_stable is None:
        raise ValueError(f"host_clock_stable is required for profile {profile!r}")
    return fields_track_tsc_after(
        vcpu_id, use_master_clock, nr_vcpus_matched_tsc, online_vcpus, host_clock_stable
    )


def _u64(name: str, value: int) -> int:
    """A u64 field; a negative s64 is accepted and printed as its u64 bit pattern."""
    v = _check_int(name, value, S64_MIN, U64_MAX)
    return v & U64_MAX


def fields_write_tsc_offset(vcpu_id: int, previous_tsc_offset: int, next_tsc_offset: int) -> str:
    """kvm_write_tsc_offset: ``"vcpu=%u prev=%llu next=%llu"``; offsets are u64 (a negative
    offset, given as s64, prints as 2**64 + offset like the kernel's ``%llu``)."""
    return (
        f"vcpu={_check_int('vcpu_id', vcpu_id, 0, U32_MAX)} "
        f"prev={_u64('previous_tsc_offset', previous_tsc_offset)} "
        f"next={_u64('next_tsc_offset', next_tsc_offset)}"
    )


def fields_pvclock_update(
    vcpu_id: int,
    version: int,
    tsc_timestamp: int,
    system_time: int,
    tsc_to_system_mul: int,
    tsc_shift: int,
    flags: int,
) -> str:
    """kvm_pvclock_update: ``"vcpu_id %u, pvclock { version %u, tsc_timestamp 0x%llx,
    system_time 0x%llx, tsc_to_system_mul 0x%x, tsc_shift %d, flags 0x%x }"``
    (tsc_shift is the s8 field, printed signed)."""
    return (
        f"vcpu_id {_check_int('vcpu_id', vcpu_id, 0, U32_MAX)}, pvclock {{ "
        f"version {_check_int('version', version, 0, U32_MAX)}, "
        f"tsc_timestamp 0x{_check_int('tsc_timestamp', tsc_timestamp, 0, U64_MAX):x}, "
        f"system_time 0x{_check_int('system_time', system_time, 0, U64_MAX):x}, "
        f"tsc_to_system_mul 0x{_check_int('tsc_to_system_mul', tsc_to_system_mul, 0, U32_MAX):x}, "
        f"tsc_shift {_check_int('tsc_shift', tsc_shift, -128, 127)}, "
        f"flags 0x{_check_int('flags', flags, 0, U8_MAX):x} }}"
    )


def format_timestamp(t_ns: int, *, raw: bool = False) -> str:
    """The timestamp column: ``%5lu.%06lu`` seconds.microseconds, with the ns value rounded to
    the nearest microsecond as kernel/trace/trace.c ``ns2usecs`` does (+500, /1000); or with
    ``raw`` a counter-clock value printed as an integer (``%12llu``)."""
    t = _check_int("t_ns", t_ns, 0, U64_MAX)
    if raw:
        return f"{t:12d}"
    usecs = (t + 500) // 1000
    secs, rem = divmod(usecs, 1_000_000)
    return f"{secs:5d}.{rem:06d}"


_FLAGS_RE = re.compile(r"[.A-Za-z0-9]{4,5}")
_EVENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_line(
    comm: str,
    pid: int,
    cpu: int,
    t_ns: int,
    event: str,
    fields: str,
    flags: str | None = "....",
    level: int | None = None,
    *,
    raw_timestamp: bool = False,
) -> str:
    """One ftrace text line as ``trace``/``trace_pipe`` prints it (trace_print_context:
    ``%16s-%-7d [%03d] <flags> %5lu.%06lu: <event>: <fields>``). ``flags=None`` omits the
    latency column (older kernels, trace-cmd report); ``level`` prepends ``L<level> ``."""
    if not isinstance(comm, str) or not comm or any(c in comm for c in "\r\n\0"):
        raise ValueError(f"comm must be a non-empty single-line str, got {comm!r}")
    _check_int("pid", pid, 0, (1 << 31) - 1)
    _check_int("cpu", cpu, 0, 99999)
    if not isinstance(event, str) or not _EVENT_RE.fullmatch(event):
        raise ValueError(f"event must be an identifier like 'kvm_track_tsc', got {event!r}")
    if not isinstance(fields, str) or any(c in fields for c in "\r\n\0"):
        raise ValueError("fields must be a single-line str")
    if flags is not None and not _FLAGS_RE.fullmatch(flags):
        raise ValueError(f"flags must be 4 or 5 characters of [.A-Za-z0-9] or None, got {flags!r}")
    prefix = ""
    if level is not None:
        prefix = f"L{_check_int('level', level, 0, 999)} "
    flag_col = f" {flags}" if flags is not None else ""
    ts = format_timestamp(t_ns, raw=raw_timestamp)
    return f"{prefix}{comm:>16}-{pid:<7d} [{cpu:03d}]{flag_col} {ts}: {event}: {fields}"


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------

_LINE_RE = re.compile(
    r"""^\s*
    (?:L(?P<level>\d{1,3})\s+(?=\S.*[-\s]\d+\s))?   # kvmclock level column
    (?P<comm>.+?)(?:-|\s+)(?P<pid>\d+)\s+            # comm-pid (ftrace) or comm pid (perf)
    (?:\(\s*(?P<tgid>\d+|-+)\)\s+)?                  # options/record-tgid column
    \[(?P<cpu>\d+)\]\s+
    (?:(?P<flags>[.A-Za-z0-9]{4,5})\s+)?             # latency flags (absent: trace-cmd, old)
    (?P<ts>\d+(?:\.\d+)?):\s+
    (?:[A-Za-z0-9_]+:)?(?P<event>[A-Za-z_][A-Za-z0-9_]*):  # optional "kvm:" system prefix
    (?:\s+(?P<fields>.*?))?\s*$""",
    re.VERBOSE,
)

# Header lines of trace-cmd report (not comments, not events): counted as headers, not garbage.
_HEADER_RE = re.compile(
    r"^\s*(?:#.*|cpus=\d+|version\s*=\s*\d+.*|CPU\s*\d+ is empty|trace-cmd:.*|"
    r"CPU:\d+ \[LOST \d+ EVENTS\]|##### CPU \d+ buffer started ####)\s*$"
)

_B = r"([01])"
_U = r"(\d+)"
_FIELD_RES: dict[str, list[tuple[Literal["before", "after"] | None, re.Pattern[str]]]] = {
    "kvm_update_master_clock": [
        ("after", re.compile(rf"^masterclock {_B} hostclock stable {_B} offsetmatched {_B}$")),
        ("before", re.compile(rf"^masterclock {_B} hostclock (\S+) offsetmatched {_B}$")),
    ],
    "kvm_track_tsc": [
        (
            "after",
            re.compile(
                rf"^vcpu_id {_U} masterclock {_B} offsetmatched {_U} nr_online {_U} "
                rf"hostclock stable {_B}$"
            ),
        ),
        (
            "before",
            re.compile(
                rf"^vcpu_id {_U} masterclock {_B} offsetmatched {_U} nr_online {_U} "
                r"hostclock (\S+)$"
            ),
        ),
    ],
    "kvm_write_tsc_offset": [
        (None, re.compile(rf"^vcpu={_U} prev={_U} next={_U}$")),
    ],
    "kvm_pvclock_update": [
        (
            None,
            re.compile(
                rf"^vcpu_id {_U}, pvclock \{{ version {_U}, tsc_timestamp 0x([0-9a-f]+), "
                r"system_time 0x([0-9a-f]+), tsc_to_system_mul 0x([0-9a-f]+), "
                r"tsc_shift (-?\d+), flags 0x([0-9a-f]+) \}$"
            ),
        ),
    ],
}

_HOSTCLOCK_HEX_RE = re.compile(r"^0x([0-9a-f]+)$")


@dataclass(frozen=True)
class TraceRecord:
    """One parsed event line. ``data`` holds the typed fields of the four clock events (None
    for other events); ``fmt`` is "before"/"after" for the two events whose text changed."""

    line_no: int
    level: int | None
    comm: str
    pid: int
    tgid: int | None
    cpu: int
    flags: str | None
    timestamp: str
    t_ns: int | None
    counter: int | None
    event: str
    fields: str
    data: dict[str, Any] | None = None
    fmt: Literal["before", "after"] | None = None

    @property
    def time_value(self) -> float | int:
        """Seconds (float) for ``secs.usecs`` timestamps, the raw counter value otherwise."""
        if self.t_ns is not None:
            return self.t_ns / 1e9
        assert self.counter is not None
        return self.counter


@dataclass(frozen=True)
class SkippedLine:
    """A line that is neither an event, a header, nor blank (``reason`` says why)."""

    line_no: int
    reason: str
    text: str


@dataclass
class ParseResult:
    """Everything :func:`parse_lines` saw: records in input order, skipped lines, counts."""

    records: list[TraceRecord] = field(default_factory=list)
    skipped: list[SkippedLine] = field(default_factory=list)
    header_lines: int = 0
    blank_lines: int = 0
    total_lines: int = 0


def _hostclock_value(token: str) -> int | None:
    if token in _HOST_CLOCK_SYMBOLS_IN:
        return _HOST_CLOCK_SYMBOLS_IN[token]
    m = _HOSTCLOCK_HEX_RE.match(token)
    if m is None:
        return None
    v = int(m.group(1), 16)
    return v if v <= U32_MAX else None


def _add_hostclock(data: dict[str, Any], fmt: str | None, token: str) -> bool:
    """The ``hostclock`` field of kvm_update_master_clock / kvm_track_tsc: after patch 09 the
    ``host_clock_stable`` bool, before it the ``host_clocks`` symbol (or ``0x%lx``); False when
    the symbol is garbled."""
    if fmt == "after":
        data["host_clock_stable"] = token == "1"
        return True
    hc = _hostclock_value(token)
    if hc is None:
        return False
    data["host_clock"] = hc
    data["host_clock_symbol"] = token
    return True


def parse_fields(
    event: str, text: str
) -> tuple[dict[str, Any], Literal["before", "after"] | None] | None:
    """Typed fields of one of the four clock events (names as in TP_STRUCT__entry), and which
    format matched; None when ``text`` is not a valid TP_printk output of that event (also when
    a value is out of its C type's range). Raises ValueError for an event it does not know."""
    if event not in _FIELD_RES:
        raise ValueError(f"event must be one of {list(CLOCK_EVENTS)}, got {event!r}")
    for fmt, rx in _FIELD_RES[event]:
        m = rx.match(text)
        if m is None:
            continue
        g = m.groups()
        data: dict[str, Any]
        if event == "kvm_update_master_clock":
            data = {"use_master_clock": g[0] == "1", "offset_matched": g[2] == "1"}
            if not _add_hostclock(data, fmt, g[1]):
                return None
        elif event == "kvm_track_tsc":
            nums = [int(g[0]), int(g[2]), int(g[3])]
            if any(n > U32_MAX for n in nums):
                return None
            data = {
                "vcpu_id": nums[0],
                "use_master_clock": g[1] == "1",
                "nr_vcpus_matched_tsc": nums[1],
                "online_vcpus": nums[2],
            }
            if not _add_hostclock(data, fmt, g[4]):
                return None
        elif event == "kvm_write_tsc_offset":
            vcpu, prev, nxt = (int(x) for x in g)
            if vcpu > U32_MAX or prev > U64_MAX or nxt > U64_MAX:
                return None
            data = {"vcpu_id": vcpu, "previous_tsc_offset": prev, "next_tsc_offset": nxt}
        else:  # kvm_pvclock_update
            vals = {
                "vcpu_id": int(g[0]),
                "version": int(g[1]),
                "tsc_timestamp": int(g[2], 16),
                "system_time": int(g[3], 16),
                "tsc_to_system_mul": int(g[4], 16),
                "tsc_shift": int(g[5]),
                "flags": int(g[6], 16),
            }
            limits = {
                "vcpu_id": (0, U32_MAX),
                "version": (0, U32_MAX),
                "tsc_timestamp": (0, U64_MAX),
                "system_time": (0, U64_MAX),
                "tsc_to_system_mul": (0, U32_MAX),
                "tsc_shift": (-128, 127),
                "flags": (0, U8_MAX),
            }
            if any(not lo <= vals[k] <= hi for k, (lo, hi) in limits.items()):
                return None
            data = vals
        return data, fmt
    return None


def _parse_timestamp(ts: str) -> tuple[int | None, int | None]:
    """``secs.frac`` -> (t_ns, None); integer counter -> (None, counter)."""
    if "." in ts:
        secs, frac = ts.split(".", 1)
        frac_ns = int((frac + "000000000")[:9])
        return int(secs) * 1_000_000_000 + frac_ns, None
    return None, int(ts)


def parse_line(line: str, line_no: int = 0) -> TraceRecord | SkippedLine | None:
    """Parse one text line: a :class:`TraceRecord`, a :class:`SkippedLine` (garbled), or None
    for a blank or header line (``#`` comments, trace-cmd's ``cpus=N`` / ``version = N``).
    A number Python refuses to convert (over ``sys.int_max_str_digits`` digits) makes the line
    garbled, never the file."""
    try:
        return _parse_line(line, line_no)
    except ValueError as e:
        return SkippedLine(line_no, f"unconvertible number ({e})"[:160], line.rstrip("\r\n")[:160])


def _parse_line(line: str, line_no: int) -> TraceRecord | SkippedLine | None:
    text = line.rstrip("\r\n")
    if not text.strip() or _HEADER_RE.match(text):
        return None
    if "\0" in text:
        return SkippedLine(line_no, "NUL byte in line", text.replace("\0", "\\0")[:160])
    m = _LINE_RE.match(text)
    if m is None:
        return SkippedLine(line_no, "not an ftrace event line", text[:160])
    event = m.group("event")
    fields_text = m.group("fields") or ""
    t_ns, counter = _parse_timestamp(m.group("ts"))
    tgid_s = m.group("tgid")
    data: dict[str, Any] | None = None
    fmt: Literal["before", "after"] | None = None
    if event in _FIELD_RES:
        parsed = parse_fields(event, fields_text)
        if parsed is None:
            return SkippedLine(line_no, f"garbled {event} fields", text[:160])
        data, fmt = parsed
    level_s = m.group("level")
    return TraceRecord(
        line_no=line_no,
        level=int(level_s) if level_s is not None else None,
        comm=m.group("comm").strip(),
        pid=int(m.group("pid")),
        tgid=int(tgid_s) if tgid_s is not None and tgid_s.isdigit() else None,
        cpu=int(m.group("cpu")),
        flags=m.group("flags"),
        timestamp=m.group("ts"),
        t_ns=t_ns,
        counter=counter,
        event=event,
        fields=fields_text,
        data=data,
        fmt=fmt,
    )


def _collect(result: ParseResult, line_no: int, parsed: TraceRecord | SkippedLine | None,
             blank: bool) -> None:
    result.total_lines += 1
    if isinstance(parsed, TraceRecord):
        result.records.append(parsed)
    elif isinstance(parsed, SkippedLine):
        result.skipped.append(parsed)
    elif blank:
        result.blank_lines += 1
    else:
        result.header_lines += 1


def parse_lines(lines: Iterable[str]) -> ParseResult:
    """Parse text lines (``trace``, ``trace_pipe``, ``trace-cmd report``); never raises on a
    bad line."""
    result = ParseResult()
    for i, line in enumerate(lines, start=1):
        _collect(result, i, parse_line(line, i), not line.strip())
    return result


def parse_text(text: str) -> ParseResult:
    """:func:`parse_lines` over a whole text (LF or CRLF line ends)."""
    return parse_lines(text.splitlines())


def parse_bytes(data: bytes) -> ParseResult:
    """Parse raw bytes line by line: a line with a NUL byte or invalid UTF-8 is a skipped
    (garbled) line. Raises TraceParseError when the input is non-empty and no line of it is
    text (a binary file, e.g. trace.dat given instead of ``trace-cmd report`` output)."""
    result = ParseResult()
    text_lines = 0
    for i, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            result.total_lines += 1
            result.skipped.append(
                SkippedLine(i, "not UTF-8 text", raw[:80].decode("latin-1", "replace"))
            )
            continue
        if "\0" not in line and line.strip():
            text_lines += 1
        _collect(result, i, parse_line(line, i), not line.strip())
    if data.strip() and text_lines == 0:
        raise TraceParseError(
            f"input is binary, not ftrace text ({len(data)} bytes, no text line); "
            "for a trace.dat run 'trace-cmd report' first"
        )
    return result


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------


def to_signed64(value: int) -> int:
    """The s64 view of a u64 (a TSC offset printed ``%llu`` is really ``s64``)."""
    v = _check_int("value", value, 0, U64_MAX)
    return v - (1 << 64) if v >> 63 else v


def _pvclock_derived(rec: Mapping[str, int]) -> dict[str, Any]:
    """Decode a traced record with the native core: kvmclock at the record's own
    tsc_timestamp (``__pvclock_read_cycles``, = system_time), the TSC kHz it implies
    (``pvclock_tsc_khz``) and the flag names."""
    import kvmclock

    info = kvmclock.PvclockVcpuTimeInfo(
        version=rec["version"],
        tsc_timestamp=rec["tsc_timestamp"],
        system_time=rec["system_time"],
        tsc_to_system_mul=rec["tsc_to_system_mul"],
        tsc_shift=rec["tsc_shift"],
        flags=rec["flags"],
    )
    if not -63 <= rec["tsc_shift"] <= 63:
        # a legal s8 but an undefined shift for pvclock_scale_delta: nothing to derive
        return {"kvmclock_ns": None, "tsc_khz": None, "flag_names": flag_names(rec["flags"])}
    khz: int | None = None
    if rec["tsc_to_system_mul"] != 0:
        khz = int(kvmclock.pvclock_tsc_khz(
            tsc_to_system_mul=rec["tsc_to_system_mul"], tsc_shift=rec["tsc_shift"]
        ))
    return {
        "kvmclock_ns": int(info.read_cycles(rec["tsc_timestamp"])),
        "tsc_khz": khz,
        "flag_names": flag_names(rec["flags"]),
    }


def flag_names(flags: int) -> list[str]:
    """Names of the pvclock flag bits (arch/x86/include/asm/pvclock-abi.h)."""
    names: list[str] = []
    for bit, name in ((1, "TSC_STABLE"), (2, "GUEST_STOPPED"), (4, "COUNTS_FROM_ZERO")):
        if flags & bit:
            names.append(name)
    rest = flags & ~7
    if rest:
        names.append(f"0x{rest:x}")
    return names


def _kvmclock_at(rec: Mapping[str, int], tsc: int) -> int:
    """``__pvclock_read_cycles(rec, tsc)`` via the native record."""
    import kvmclock

    info = kvmclock.PvclockVcpuTimeInfo(
        version=rec["version"],
        tsc_timestamp=rec["tsc_timestamp"],
        system_time=rec["system_time"],
        tsc_to_system_mul=rec["tsc_to_system_mul"],
        tsc_shift=rec["tsc_shift"],
        flags=rec["flags"],
    )
    return int(info.read_cycles(tsc))


_RECORD_KEYS = (
    "version", "tsc_timestamp", "system_time", "tsc_to_system_mul", "tsc_shift", "flags"
)


GROUPINGS = ("auto", "pid", "one")

#: vCPU thread names of the common VMMs (the comm column, at most 15 characters): QEMU
#: ``CPU <n>/KVM`` (qemu_thread_create in kvm_start_vcpu_thread), cloud-hypervisor
#: ``vcpu<n>``, Firecracker ``fc_vcpu <n>``; ``<n>`` is the vCPU index.
VCPU_THREAD_NAMES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("qemu", re.compile(r"^CPU (\d+)/KVM$")),
    ("cloud-hypervisor", re.compile(r"^vcpu(\d+)$")),
    ("firecracker", re.compile(r"^fc_vcpu (\d+)$")),
)


def vcpu_thread_index(comm: str) -> tuple[str, int] | None:
    """(VMM, vCPU index) when ``comm`` is a vCPU thread name of :data:`VCPU_THREAD_NAMES`
    (``"CPU 1/KVM"`` -> ``("qemu", 1)``), else None."""
    for vmm, rx in VCPU_THREAD_NAMES:
        m = rx.match(comm)
        if m is not None:
            return vmm, int(m.group(1))
    return None


@dataclass
class _Group:
    """One VM as the grouping pass found it."""

    key: str
    grouped_by: str
    pids: list[int] = field(default_factory=list)
    indices: dict[int, int] = field(default_factory=dict)  # vCPU index -> pid
    vmm: str = ""  # VMM kind of a vcpu_threads group


#: Main-thread names of the same VMMs (the process's first thread, whose tid is its pid): QEMU
#: ``qemu-system-<arch>`` (cut to 15 characters: ``qemu-system-x86``) or ``qemu-kvm``,
#: cloud-hypervisor ``cloud-hyperviso``, Firecracker ``firecracker``.
VMM_MAIN_THREAD_NAMES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("qemu", re.compile(r"^(qemu-system-\S*|qemu-kvm)$")),
    ("cloud-hypervisor", re.compile(r"^cloud-hyperviso")),
    ("firecracker", re.compile(r"^firecracker$")),
)

#: How far apart (in order of tid) two vCPU threads may be and still be paired by tid distance.
_TID_WINDOW = 64

#: The note a guessed grouping carries (text and JSON).
GROUPING_GUESS_NOTE = (
    "grouped by thread names: record-tgid (echo 1 > options/record-tgid) makes it certain"
)


def vmm_main_thread(comm: str) -> str | None:
    """The VMM kind when ``comm`` is a VMM main-thread name (:data:`VMM_MAIN_THREAD_NAMES`)."""
    for vmm, rx in VMM_MAIN_THREAD_NAMES:
        if rx.match(comm):
            return vmm
    return None


def _group_vcpu_threads(records: list[TraceRecord]) -> dict[int, _Group]:
    """Group vCPU threads (no tgid, no level) into VMs: pid -> its :class:`_Group`.

    A VM never has two threads with one vCPU index. Evidence first: a vCPU whose
    ``kvm_track_tsc`` says it joined a generation (``offsetmatched`` > 0) after a
    ``kvm_write_tsc_offset`` of offset X joins the latest thread whose own write of X opened
    a generation (``offsetmatched 0``): ``__kvm_synchronize_tsc`` matches within one VM only.
    Then the closest tids: the threads of one process get consecutive tids, so thread pairs
    are joined in order of tid distance while their vCPU indices stay distinct."""
    kind: dict[int, tuple[str, int]] = {}
    for rec in records:
        named = vcpu_thread_index(rec.comm)
        if named is not None and rec.pid not in kind:
            kind[rec.pid] = named
    parent = {pid: pid for pid in kind}
    indices = {pid: {kind[pid][1]} for pid in kind}

    def find(pid: int) -> int:
        while parent[pid] != pid:
            parent[pid] = parent[parent[pid]]
            pid = parent[pid]
        return pid

    def union(a: int, b: int) -> bool:
        ra, rb = find(a), find(b)
        if ra == rb:
            return True
        if kind[a][0] != kind[b][0] or indices[ra] & indices[rb]:
            return False
        parent[rb] = ra
        indices[ra] |= indices.pop(rb)
        return True

    last_offset: dict[int, int] = {}
    openers: list[tuple[int, int | None]] = []  # (pid, offset) of offsetmatched-0 writes
    for rec in records:
        if rec.pid not in kind or rec.data is None:
            continue
        if rec.event == "kvm_write_tsc_offset":
            last_offset[rec.pid] = rec.data["next_tsc_offset"]
        elif rec.event == "kvm_track_tsc":
            off = last_offset.get(rec.pid)
            if rec.data["nr_vcpus_matched_tsc"] == 0:
                openers.append((rec.pid, off))
            elif off is not None:
                for pid, o in reversed(openers):
                    if o == off and pid != rec.pid and union(pid, rec.pid):
                        break
    by_tid = sorted(kind)
    pairs = sorted(
        (by_tid[j] - by_tid[i], by_tid[i], by_tid[j])
        for i in range(len(by_tid))
        for j in range(i + 1, min(len(by_tid), i + 1 + _TID_WINDOW))
    )
    for _, a, b in pairs:
        union(a, b)
    groups: dict[int, _Group] = {}
    out: dict[int, _Group] = {}
    for pid in kind:
        root = find(pid)
        if root not in groups:
            groups[root] = _Group("", "vcpu_threads", vmm=kind[pid][0])
        out[pid] = groups[root]
        groups[root].indices[kind[pid][1]] = pid
    return out


def _group_records(records: list[TraceRecord], group: str) -> list[_Group]:
    """Which VM each record belongs to (one :class:`_Group` per record, shared between the
    records of one VM).

    ``one``: everything is one VM. ``pid``: every task on its own. ``auto``, in this order:

    1. the tgid column (``options/record-tgid``, printed ``(%7d)`` after ``comm-pid``); a pid
       seen once with its tgid keeps that tgid on its lines without one;
    2. the level column (kvmclock simulate: one VM per level);
    3. vCPU thread names (:data:`VCPU_THREAD_NAMES`), see :func:`_group_vcpu_threads`: TSC
       generation evidence, then the closest tids, never two threads with one vCPU index;
       a VMM main thread (:data:`VMM_MAIN_THREAD_NAMES`) joins the VM whose vCPU tids follow
       its own (the closest larger one);
    4. otherwise the pid.
    """
    out: list[_Group] = []
    if group == "one":
        g = _Group("all", "all")
        for rec in records:
            if rec.pid not in g.pids:
                g.pids.append(rec.pid)
            out.append(g)
        return out
    tgid_of: dict[tuple[int | None, int], int] = {}
    if group == "auto":
        for rec in records:
            if rec.tgid is not None:
                tgid_of.setdefault((rec.level, rec.pid), rec.tgid)
    by_key: dict[str, _Group] = {}
    named_group: dict[int, _Group] = {}
    if group == "auto":
        named_group = _group_vcpu_threads(
            [r for r in records if r.level is None and (r.level, r.pid) not in tgid_of])
    main_group: dict[int, _Group] = {}
    vmm_of: dict[int, str] = {}
    for rec in records:
        if rec.pid in named_group and rec.pid not in vmm_of:
            named = vcpu_thread_index(rec.comm)
            if named is not None:
                vmm_of[rec.pid] = named[0]
    for rec in records:
        if (group != "auto" or rec.level is not None or (rec.level, rec.pid) in tgid_of
                or rec.pid in main_group):
            continue
        vmm = vmm_main_thread(rec.comm)
        if vmm is None:
            continue
        after = [pid for pid in named_group if pid > rec.pid and vmm_of.get(pid) == vmm]
        if after:
            main_group[rec.pid] = named_group[min(after)]

    def get(key: str, by: str) -> _Group:
        g = by_key.get(key)
        if g is None:
            g = by_key[key] = _Group(key, by)
        return g

    for rec in records:
        lp = f"L{rec.level}:" if rec.level is not None else ""
        task = (rec.level, rec.pid)
        tgid = tgid_of.get(task)
        if group == "pid":
            g = get(f"{lp}{rec.pid}", "pid")
        elif tgid is not None:
            g = get(f"{lp}{tgid}", "tgid")
        elif rec.level is not None:
            g = get(f"L{rec.level}", "level")
        elif rec.pid in named_group:
            g = named_group[rec.pid]
        elif rec.pid in main_group:
            g = main_group[rec.pid]
        else:
            g = get(f"{lp}{rec.pid}", "pid")
        if rec.pid not in g.pids:
            g.pids.append(rec.pid)
        out.append(g)
    for g in {id(g): g for g in out}.values():
        if g.grouped_by == "vcpu_threads":
            # the key names every thread, in tid order: "4321+4322"
            g.key = "+".join(str(p) for p in sorted(g.pids))
    return out


PVCLOCK_TRACE_VERSIONS = ("auto", "odd", "final")


def _when(rec: TraceRecord) -> dict[str, Any]:
    """Where a record is: input line, and its time in ns (``secs.usecs`` timestamps) or in raw
    counter units (counter trace clocks); the other one is None."""
    return {"line": rec.line_no, "time_ns": rec.t_ns, "time_counter": rec.counter}


def _pvclock_entry(rec: Mapping[str, int], derived: Mapping[str, Any]) -> dict[str, Any]:
    """A traced pvclock record with units in the key names."""
    return {
        "version": rec["version"],
        "tsc_timestamp_cycles": rec["tsc_timestamp"],
        "system_time_ns": rec["system_time"],
        "tsc_to_system_mul": rec["tsc_to_system_mul"],
        "tsc_shift": rec["tsc_shift"],
        "flags": rec["flags"],
        "flag_names": derived["flag_names"],
        "kvmclock_ns": derived["kvmclock_ns"],
        "tsc_khz": derived["tsc_khz"],
    }


def summarize(
    result: ParseResult, group: str = "auto", pvclock_trace_version: str = "auto"
) -> dict[str, Any]:
    """The ``kvmclock.trace`` document (schema ``kvmclock/schemas/trace.schema.json``): per VM
    and vCPU the masterclock transitions, TSC generations, TSC offsets (u64 and s64 view, in
    TSC cycles), pvclock updates with the kvmclock at each record's tsc_timestamp and the step
    a guest sees at the update, and anomalies. ``group`` chooses what counts as one VM (see
    :func:`_group_records`).

    TSC generations follow ``__kvm_synchronize_tsc`` (arch/x86/kvm/x86.c): an unmatched TSC
    write starts a generation and resets ``nr_vcpus_matched_tsc`` to 0, a matched write by a
    vCPU new to the generation increments it, and ``kvm_track_tsc_matching`` traces the count
    as ``offsetmatched`` (it does not count the vCPU that opened the generation). So
    ``offsetmatched 0`` opens a generation, except when the vCPU that opened the current one
    writes the same offset again (a matched write: the count stays 0); ``offsetmatched n > 0``
    joins the current one. The masterclock needs ``nr_vcpus_matched_tsc + 1 == online_vcpus``:
    vCPUs of one VM that end the trace with different offsets keep it off, reported as the
    ``tsc_offsets_differ`` anomaly.

    ``pvclock_trace_version``: where the kernel traced ``kvm_pvclock_update``. ``odd``: before
    the final version store, so every traced version is odd (4.13 ``kvm_setup_pvclock_page``);
    ``final``: after it, so every one is even (today's ``kvm_setup_guest_pvclock``); ``auto``:
    ``odd`` when every traced version is odd, else ``final``. A version of the other parity is
    an anomaly. The choice is in the summary's ``pvclock_trace_version``."""
    if group not in GROUPINGS:
        raise ValueError(f"group must be one of {list(GROUPINGS)}, got {group!r}")
    if pvclock_trace_version not in PVCLOCK_TRACE_VERSIONS:
        raise ValueError(
            f"pvclock_trace_version must be one of {list(PVCLOCK_TRACE_VERSIONS)}, "
            f"got {pvclock_trace_version!r}"
        )
    records = result.records
    placement = pvclock_trace_version
    if placement == "auto":
        versions = [
            r.data["version"]
            for r in records
            if r.event == "kvm_pvclock_update" and r.data is not None
        ]
        placement = "odd" if versions and all(v & 1 for v in versions) else "final"
    by_event = Counter(r.event for r in records)
    units = {("s" if r.t_ns is not None else "counter") for r in records}
    unit = None if not units else (units.pop() if len(units) == 1 else "mixed")
    formats = Counter(r.fmt for r in records if r.fmt is not None)

    clock_records = [r for r in records if r.data is not None]
    groups = _group_records(clock_records, group)
    masterclock: list[dict[str, Any]] = []
    vms: dict[int, dict[str, Any]] = {}
    anomalies: list[dict[str, Any]] = []

    def vm_of(rec: TraceRecord, g: _Group) -> dict[str, Any]:
        p: dict[str, Any] | None = vms.get(id(g))
        if p is None:
            p = {
                "vm": g.key,
                "grouped_by": g.grouped_by,
                "comm": rec.comm,
                "level": rec.level,
                "threads": [],
                "events": 0,
                "masterclock_updates": 0,
                "masterclock": None,
                "host_clock": None,
                "masterclock_transitions": [],
                "tsc_generations": [],
                "vcpus": {},
            }
            vms[id(g)] = p
        if not any(t["pid"] == rec.pid for t in p["threads"]):
            named = vcpu_thread_index(rec.comm)
            p["threads"].append({"pid": rec.pid, "comm": rec.comm, "tgid": rec.tgid,
                                 "vcpu_index": None if named is None else named[1]})
        return p

    def vcpu_of(p: dict[str, Any], vid: int) -> dict[str, Any]:
        v: dict[str, Any] | None = p["vcpus"].get(vid)
        if v is None:
            v = {
                "vcpu_id": vid,
                "tsc_writes": 0,
                "tsc_offset_cycles": None,
                "tsc_offset_signed_cycles": None,
                "offsets": [],
                "track_tsc": 0,
                "generation": None,
                "pvclock_updates": 0,
                "pvclock": [],
                "last_pvclock": None,
                "_last_offset_line": None,
                "_last_raw": None,
            }
            p["vcpus"][vid] = v
        return v

    notes: list[dict[str, Any]] = []
    guessed: Counter[str] = Counter()
    for g in {id(g): g for g in groups}.values():
        if g.grouped_by == "vcpu_threads":
            guessed[g.vmm] += 1
    for vmm, n in sorted(guessed.items()):
        if n > 1:
            notes.append({"kind": "grouping_guess", "line": None, "vm": None,
                          "detail": f"{n} {vmm} VMs without a tgid column: "
                          f"{GROUPING_GUESS_NOTE}"})
    mismatched: set[tuple[int, int]] = set()
    for rec, g in zip(clock_records, groups, strict=True):
        p = vm_of(rec, g)
        named = vcpu_thread_index(rec.comm)
        d0 = rec.data
        if (named is not None and d0 is not None and "vcpu_id" in d0
                and d0["vcpu_id"] != named[1] and (rec.pid, d0["vcpu_id"]) not in mismatched):
            mismatched.add((rec.pid, d0["vcpu_id"]))
            notes.append({
                "kind": "vcpu_name_mismatch", "line": rec.line_no, "vm": g.key,
                "detail": f"thread {rec.comm}-{rec.pid} (vCPU index {named[1]} by its name) "
                f"traces vcpu {d0['vcpu_id']}: the traced number is the kernel's vcpu_id, "
                "which the VMM chooses (QEMU passes the APIC ID, which differs from the "
                "index with some -smp topologies); grouping used the name's index"})
        p["events"] += 1
        d = rec.data
        assert d is not None
        where = {**_when(rec), "vm": g.key}
        if rec.event == "kvm_update_master_clock":
            on = bool(d["use_master_clock"])
            masterclock.append({**_when(rec), "vm": g.key, "on": on})
            p["masterclock_updates"] += 1
            if p["masterclock"] is None or p["masterclock"] != on:
                p["masterclock_transitions"].append({**_when(rec), "on": on})
            p["masterclock"] = on
            p["host_clock"] = (
                {"stable": d["host_clock_stable"], "vclock_mode": None, "symbol": None}
                if "host_clock_stable" in d
                else {"stable": None, "vclock_mode": d["host_clock"],
                      "symbol": d["host_clock_symbol"]}
            )
        elif rec.event == "kvm_write_tsc_offset":
            v = vcpu_of(p, d["vcpu_id"])
            v["tsc_writes"] += 1
            v["tsc_offset_cycles"] = d["next_tsc_offset"]
            v["tsc_offset_signed_cycles"] = to_signed64(d["next_tsc_offset"])
            v["_last_offset_line"] = rec
            v["offsets"].append(
                {
                    **_when(rec),
                    "prev_cycles": d["previous_tsc_offset"],
                    "next_cycles": d["next_tsc_offset"],
                    "prev_signed_cycles": to_signed64(d["previous_tsc_offset"]),
                    "next_signed_cycles": to_signed64(d["next_tsc_offset"]),
                }
            )
        elif rec.event == "kvm_track_tsc":
            vid = d["vcpu_id"]
            v = vcpu_of(p, vid)
            v["track_tsc"] += 1
            gens = p["tsc_generations"]
            matched = d["nr_vcpus_matched_tsc"]
            last = gens[-1] if gens else None
            rewrite = (
                matched == 0 and last is not None and last["opened_by_vcpu"] == vid
                and last["vcpus"] == [vid] and last["offset_cycles"] is not None
                and last["offset_cycles"] == v["tsc_offset_cycles"]
            )
            if last is None or (matched == 0 and not rewrite):
                gens.append(
                    {
                        # counted from 1 like kvm->arch.cur_tsc_generation, which
                        # __kvm_synchronize_tsc increments before its first use
                        "index": len(gens) + 1,
                        **_when(rec),
                        # offsetmatched n > 0 on the first one: it opened before the trace
                        "opened_by_vcpu": vid if matched == 0 else None,
                        "offset_cycles": v["tsc_offset_cycles"] if matched == 0 else None,
                        "offset_signed_cycles": (
                            v["tsc_offset_signed_cycles"] if matched == 0 else None),
                        "vcpus": [vid],
                        "nr_vcpus_matched_tsc": matched,
                        "online_vcpus": d["online_vcpus"],
                    }
                )
            else:
                assert last is not None
                if vid not in last["vcpus"]:
                    last["vcpus"].append(vid)
                last["nr_vcpus_matched_tsc"] = matched
                last["online_vcpus"] = d["online_vcpus"]
            v["generation"] = gens[-1]["index"]
        elif rec.event == "kvm_pvclock_update":
            v = vcpu_of(p, d["vcpu_id"])
            record = {k: d[k] for k in _RECORD_KEYS}
            entry: dict[str, Any] = {**_when(rec),
                                     **_pvclock_entry(record, _pvclock_derived(record))}
            prev = v["_last_raw"]
            entry["step_ns"] = None
            if prev is not None:
                if record["system_time"] < prev["system_time"]:
                    anomalies.append(
                        {
                            "kind": "system_time_backwards",
                            "vcpu": d["vcpu_id"],
                            **where,
                            "detail": f"system_time {prev['system_time']} -> "
                            f"{record['system_time']} "
                            f"({record['system_time'] - prev['system_time']} ns)",
                        }
                    )
                if prev["flags"] & 1 and not record["flags"] & 1:
                    anomalies.append(
                        {
                            "kind": "stable_bit_lost",
                            "vcpu": d["vcpu_id"],
                            **where,
                            "detail": f"flags 0x{prev['flags']:x} -> 0x{record['flags']:x}",
                        }
                    )
                if (
                    record["tsc_timestamp"] >= prev["tsc_timestamp"]
                    and -63 <= prev["tsc_shift"] <= 63
                ):
                    # what a guest reading at the new record's TSC got from the old record
                    # versus from the new one (pvclock_clocksource_read, no clamp when stable)
                    old_view = _kvmclock_at(prev, record["tsc_timestamp"])
                    entry["step_ns"] = record["system_time"] - old_view
                    if entry["step_ns"] < 0 and prev["flags"] & record["flags"] & 1:
                        anomalies.append(
                            {
                                "kind": "kvmclock_step_back",
                                "vcpu": d["vcpu_id"],
                                **where,
                                "detail": f"guest clock steps back {-entry['step_ns']} ns "
                                "at the update (both records stable: no last_value clamp)",
                            }
                        )
            if bool(record["version"] & 1) != (placement == "odd"):
                anomalies.append(
                    {
                        "kind": "odd_version" if placement == "final" else "even_version",
                        "vcpu": d["vcpu_id"],
                        **where,
                        "detail": f"traced version {record['version']} is "
                        + (
                            "odd (kvm_setup_guest_pvclock traces the final, even version)"
                            if placement == "final"
                            else "even (4.13 kvm_setup_pvclock_page traces the odd version "
                            "it stored before the final one)"
                        ),
                    }
                )
            v["pvclock_updates"] += 1
            v["pvclock"].append(entry)
            v["last_pvclock"] = entry
            v["_last_raw"] = record

    out_vms: list[dict[str, Any]] = []
    for p in vms.values():
        anomalies.extend(_offset_anomalies(p))
        vcpus = []
        for _, v in sorted(p["vcpus"].items()):
            del v["_last_offset_line"], v["_last_raw"]
            vcpus.append(v)
        p["vcpus"] = vcpus
        out_vms.append(p)
    anomalies.sort(key=lambda a: a["line"])

    return {
        "schema": "kvmclock.trace",
        "schema_version": 1,
        "events": len(records),
        "clock_events": sum(by_event[e] for e in CLOCK_EVENTS),
        "skipped_lines": len(result.skipped),
        "header_lines": result.header_lines,
        "total_lines": result.total_lines,
        "timestamp_unit": unit,
        "grouping": group,
        "formats": dict(sorted(formats.items())),
        "pvclock_trace_version": placement,
        "by_event": dict(sorted(by_event.items())),
        "masterclock": masterclock,
        "vms": out_vms,
        "anomalies": anomalies,
        "notes": notes,
        "skipped": [
            {"line": s.line_no, "reason": s.reason, "text": s.text} for s in result.skipped[:20]
        ],
    }


def _offset_anomalies(p: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``tsc_offsets_differ``: the vCPUs of one VM end the trace with different TSC offsets.
    The reference offset is the one most vCPUs share (ties: the lowest vCPU id's); every vCPU
    with another offset gets one anomaly at its last ``kvm_write_tsc_offset``, with the
    difference (its offset minus the reference, s64, TSC cycles)."""
    known = {vid: v for vid, v in p["vcpus"].items() if v["tsc_offset_cycles"] is not None}
    if len({v["tsc_offset_cycles"] for v in known.values()}) < 2:
        return []
    count = Counter(v["tsc_offset_cycles"] for v in known.values())
    ref_vid = min(known, key=lambda vid: (-count[known[vid]["tsc_offset_cycles"]], vid))
    ref = known[ref_vid]["tsc_offset_cycles"]
    out = []
    for vid, v in sorted(known.items()):
        if v["tsc_offset_cycles"] == ref:
            continue
        diff = to_signed64((v["tsc_offset_cycles"] - ref) & U64_MAX)
        rec: TraceRecord = v["_last_offset_line"]
        gen = (p["tsc_generations"][v["generation"] - 1] if v["generation"] is not None
               else None)
        why = ""
        if gen is not None and gen["opened_by_vcpu"] == vid:
            why = f" (its write opened TSC generation {gen['index']}: offsetmatched 0)"
        what = f"vCPU {vid}'s offset differs by {diff} cycles from vCPU {ref_vid}'s{why}"
        detail = (f"masterclock stays off: {what}" if p["masterclock"] is not True
                  else f"{what}, yet the masterclock is on")
        out.append(
            {
                "kind": "tsc_offsets_differ",
                "vcpu": vid,
                **_when(rec),
                "vm": p["vm"],
                "difference_cycles": diff,
                "reference_vcpu": ref_vid,
                "detail": detail,
            }
        )
    return out


def _ts(when: Mapping[str, Any]) -> str:
    if when.get("time_ns") is not None:
        secs, ns = divmod(when["time_ns"], 10**9)
        return f"{secs}.{ns // 1000:06d}s" if ns % 1000 == 0 else f"{secs}.{ns:09d}s"
    if when.get("time_counter") is not None:
        return f"@{when['time_counter']}"
    return "-"


_GROUPED_BY_TEXT = {
    "tgid": "tgid column",
    "level": "level column",
    "vcpu_threads": "vCPU thread names",
    "pid": "one task",
    "all": "--group one",
}


def _n(count: int, noun: str) -> str:
    """``1 update`` / ``2 updates``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


#: The text of each ``formats`` key: which TP_printk form of the two events that print the
#: host clock (kvm_update_master_clock, kvm_track_tsc).
_FORMAT_TEXT = {
    "before": '"hostclock %s" (before the 2017 series; upstream today)',
    "after": '"hostclock stable %u" (patch 09/11 of the 2017 series)',
}


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable text of :func:`summarize`'s dict."""
    out: list[str] = []
    fm = summary["formats"]
    fmt_txt = "; ".join(f"{_FORMAT_TEXT.get(k, k)} on {_n(v, 'line')}" for k, v in fm.items())
    fmt_txt = f"; hostclock form: {fmt_txt}" if fmt_txt else ""
    out.append(
        f"{_n(summary['events'], 'event')} ({summary['clock_events']} KVM clock events"
        f"{fmt_txt}), {_n(summary['skipped_lines'], 'skipped line')}, "
        f"{_n(summary['header_lines'], 'header line')}; timestamps in "
        f"{ {'s': 'seconds', 'counter': 'counter units (raw clock)'}.get(summary['timestamp_unit'], str(summary['timestamp_unit']))}"  # noqa: E501
    )
    if summary["by_event"]:
        out.append("by event: " + ", ".join(f"{k} {v}" for k, v in summary["by_event"].items()))
    for p in summary["vms"]:
        lvl = f" level {p['level']}" if p["level"] is not None else ""
        out.append("")
        threads = ", ".join(f"{t['comm']}-{t['pid']}" for t in p["threads"])
        out.append(f"VM {p['vm']}{lvl} (by {_GROUPED_BY_TEXT[p['grouped_by']]}): "
                   f"{_n(p['events'], 'clock event')} from {threads}")
        mc = p["masterclock"]
        hc = p["host_clock"]
        hc_txt = ""
        if hc is not None:
            hc_txt = (
                f", hostclock stable {int(hc['stable'])}"
                if hc["stable"] is not None
                else f", hostclock {hc['symbol']}"
            )
        out.append(
            f"  masterclock: {'-' if mc is None else ('on' if mc else 'off')} after "
            f"{_n(p['masterclock_updates'], 'update')}{hc_txt}; transitions: "
            + (
                ", ".join(f"{_ts(t)} {'on' if t['on'] else 'off'}" for t in
                          p["masterclock_transitions"])
                or "none"
            )
        )
        for g in p["tsc_generations"]:
            off = (
                "?"
                if g["offset_cycles"] is None
                else f"{g['offset_cycles']} (signed {g['offset_signed_cycles']})"
            )
            opened = (f"opened by vCPU {g['opened_by_vcpu']}" if g["opened_by_vcpu"] is not None
                      else "opened before the trace")
            out.append(
                f"  TSC generation {g['index']} at {_ts(g)}: {opened}, offset {off}, "
                f"vCPUs {g['vcpus']}, matched {g['nr_vcpus_matched_tsc']} of "
                f"{g['online_vcpus']} online"
            )
        for v in p["vcpus"]:
            off = (
                "-" if v["tsc_offset_cycles"] is None
                else f"{v['tsc_offset_cycles']} (signed {v['tsc_offset_signed_cycles']})"
            )
            gen = "" if v["generation"] is None else f", TSC generation {v['generation']}"
            out.append(
                f"  vCPU {v['vcpu_id']}: {_n(v['tsc_writes'], 'TSC offset write')}, "
                f"offset {off}{gen}; {_n(v['pvclock_updates'], 'pvclock update')}"
            )
            last = v["last_pvclock"]
            if last is not None:
                khz = "-" if last["tsc_khz"] is None else f"{last['tsc_khz']} kHz"
                steps = [e["step_ns"] for e in v["pvclock"] if e["step_ns"] is not None]
                step_txt = (
                    f"; step at updates min {min(steps)} max {max(steps)} ns" if steps else ""
                )
                kv = "-" if last["kvmclock_ns"] is None else f"{last['kvmclock_ns']} ns"
                out.append(
                    f"    last pvclock at {_ts(last)}: version {last['version']}, "
                    f"tsc_timestamp {last['tsc_timestamp_cycles']:#x}, system_time "
                    f"{last['system_time_ns']} ns (kvmclock there {kv}), "
                    f"mul {last['tsc_to_system_mul']:#x} shift {last['tsc_shift']} ({khz}), "
                    f"flags {last['flags']:#x} {'|'.join(last['flag_names']) or '-'}{step_txt}"
                )
    if any(p["tsc_generations"] for p in summary["vms"]):
        out.append("")
        out.append("TSC generations are numbered from 1 within the trace, as the kernel "
                   "numbers kvm->arch.cur_tsc_generation (incremented before its first use); "
                   "they are the kernel's numbers only when the trace starts at the VM's "
                   "first TSC write")
    notes = summary.get("notes", [])
    if notes:
        out.append("")
        out.append(f"notes: {len(notes)}")
        for nt in notes:
            where = f"line {nt['line']} " if nt["line"] is not None else ""
            vm = f"VM {nt['vm']}: " if nt["vm"] is not None else ""
            out.append(f"  {where}{vm}{nt['kind']}: {nt['detail']}")
    anomalies = summary["anomalies"]
    out.append("")
    out.append(f"anomalies: {len(anomalies)}")
    for a in anomalies[:50]:
        out.append(
            f"  line {a['line']} {_ts(a)} VM {a['vm']} vCPU {a['vcpu']}: "
            f"{a['kind']}: {a['detail']}"
        )
    if len(anomalies) > 50:
        out.append(f"  ... {len(anomalies) - 50} more")
    if summary["skipped"]:
        out.append(f"skipped lines (first {len(summary['skipped'])}):")
        for s in summary["skipped"][:5]:
            out.append(f"  line {s['line']}: {s['reason']}: {s['text'][:100]}")
    return "\n".join(out)

"""What this computer is, for ``kvmclock host``: clocksources, TSC facts, the KVM guest pvclock
record checked against ``kvm_get_time_scale``, kvm-clock against CLOCK_MONOTONIC_RAW /
CLOCK_BOOTTIME, /dev/kvm capabilities, and what masterclock would be for a guest here.

Nothing here writes a system setting; /dev/kvm is probed with a throw-away VM.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kvmclock import get_time_scale, pvclock_tsc_khz
from kvmclock.errors import RealResourceUnavailable
from kvmclock.real import kvmdev
from kvmclock.real.guest import RDTSC_HLT, load, record_gpa, run_to_hlt

CLOCKSOURCE_DIR = "/sys/devices/system/clocksource/clocksource0"
TSC_FLAGS = (
    "tsc",
    "constant_tsc",
    "nonstop_tsc",
    "tsc_known_freq",
    "tsc_reliable",
    "tsc_adjust",
    "tsc_deadline_timer",
    "rdtscp",
    "hypervisor",
)
DEFAULT_SECONDS = 2.0
"""Default length of the drift measurement (s)."""
BRACKET_READS = 64
"""Bracketed reads at each end of the drift measurement (the narrowest is kept)."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def clocksources() -> dict[str, Any]:
    """current/available clocksource (kernel/time/clocksource.c sysfs attributes)."""
    cur = _read(os.path.join(CLOCKSOURCE_DIR, "current_clocksource"))
    avail = _read(os.path.join(CLOCKSOURCE_DIR, "available_clocksource"))
    return {"current": cur, "available": avail.split() if avail else []}


def cpu_tsc_flags(cpuinfo: str | None = None) -> dict[str, bool]:
    """TSC-related CPU flags of CPU 0 from /proc/cpuinfo (arch/x86/kernel/cpu/proc.c)."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for line in (text or "").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {f: f in flags for f in TSC_FLAGS}


def _kernel_log() -> str:
    """The kernel log via non-blocking reads of /dev/kmsg (read only; empty when not allowed)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    lines: list[str] = []
    try:
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten record: skip it
                    continue
                break
            if not rec:
                break
            lines.append(rec.decode("utf-8", "replace").split(";", 1)[-1].rstrip("\n"))
    finally:
        os.close(fd)
    return "\n".join(lines)


def parse_tsc_khz_from_log(log: str) -> tuple[int, str] | None:
    """kHz from arch/x86/kernel/tsc.c messages: "Refined TSC clocksource calibration: X MHz"
    wins over "Detected X MHz processor"/"Detected X MHz TSC" (both printed as %lu.%03lu)."""
    refined = re.findall(r"Refined TSC clocksource calibration: (\d+)\.(\d{3}) MHz", log)
    if refined:
        mhz, frac = refined[-1]
        return int(mhz) * 1000 + int(frac), "kernel log: tsc: Refined TSC clocksource calibration"
    detected = re.findall(r"tsc: Detected (\d+)\.(\d{3}) MHz (?:processor|TSC)", log)
    if detected:
        mhz, frac = detected[-1]
        return int(mhz) * 1000 + int(frac), "kernel log: tsc: Detected ... MHz"
    return None


def tsc_khz(record_khz: int | None) -> dict[str, Any]:
    """TSC kHz from the kernel's own report, saying which source was used."""
    sysfs = _read("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
    if sysfs and sysfs.isdigit():
        return {"khz": int(sysfs), "source": "/sys/devices/system/cpu/cpu0/tsc_freq_khz"}
    parsed = parse_tsc_khz_from_log(_kernel_log())
    if parsed is not None:
        return {"khz": parsed[0], "source": parsed[1]}
    if record_khz is not None:
        return {"khz": record_khz, "source": "pvclock record (pvclock_tsc_khz of its mul/shift)"}
    return {"khz": None, "source": "unknown (no sysfs file, kernel log unreadable, no record)"}


def guest_record_report() -> dict[str, Any]:
    """This machine's KVM guest pvclock record (vCPU 0), decoded."""
    from kvmclock.real import read_guest_record, vclock_reason

    reason = vclock_reason()
    if reason is not None:
        return {"available": False, "reason": reason}
    try:
        rec, stamp = read_guest_record()
    except RealResourceUnavailable as exc:
        return {"available": False, "reason": str(exc)}
    return {
        "available": True,
        "reason": None,
        "mapping": "[vvar_vclock] first 32 bytes",
        "record": _record_dict(rec),
        "tsc_cycles": stamp,
        "kvmclock_ns": rec.read_cycles(stamp),
        "record_tsc_khz": pvclock_tsc_khz(
            tsc_to_system_mul=rec.tsc_to_system_mul, tsc_shift=rec.tsc_shift
        ),
    }


def _record_dict(rec: Any) -> dict[str, int]:
    return {
        "version": rec.version,
        "tsc_timestamp": rec.tsc_timestamp,
        "system_time": rec.system_time,
        "tsc_to_system_mul": rec.tsc_to_system_mul,
        "tsc_shift": rec.tsc_shift,
        "flags": rec.flags,
    }


@dataclass(frozen=True)
class BracketSample:
    """One bracketed read: the reference clock (ns), kvm-clock (ns), the reference clock again.
    The kvm-clock read happened at some reference time inside ``[before_ns, after_ns]``."""

    before_ns: int
    kvmclock_ns: int
    after_ns: int

    @property
    def window_ns(self) -> int:
        """Width of the bracket (ns): how well this read places kvm-clock on the reference."""
        return self.after_ns - self.before_ns


@dataclass(frozen=True)
class DriftEstimate:
    """kvm-clock's rate against a reference clock from two bracketed reads (exact fractions).

    ``drift_ppb`` = (offset at the end - offset at the start) / elapsed reference time * 1e9,
    each offset kvm-clock minus the midpoint of its bracket; ``bound_ppb`` = (w0 + w1) / dt *
    1e9, w0 and w1 the two window widths (ns), dt the reference time between the midpoints
    (ns): each offset is taken as uncertain by its whole window (the read was somewhere in
    it), which covers the midpoints' own error of w/2 twice over.  ``below_resolution`` when
    the bound exceeds the drift's magnitude: the measurement cannot tell it from 0."""

    start: BracketSample
    end: BracketSample
    elapsed_ns: Fraction
    offset_change_ns: Fraction
    drift_ppb: Fraction
    bound_ppb: Fraction

    @property
    def below_resolution(self) -> bool:
        """True when ``bound_ppb > |drift_ppb|``."""
        return self.bound_ppb > abs(self.drift_ppb)


def narrowest(samples: Sequence[BracketSample]) -> BracketSample:
    """The sample with the smallest window (the first of equals)."""
    if not samples:
        raise ValueError("narrowest: no samples")
    return min(samples, key=lambda x: x.window_ns)


def drift_estimate(start: BracketSample, end: BracketSample) -> DriftEstimate:
    """:class:`DriftEstimate` between two samples (``end`` later than ``start``); ValueError
    for a window that is negative or an end whose midpoint is not after the start's."""
    for name, x in (("start", start), ("end", end)):
        if x.window_ns < 0:
            raise ValueError(f"{name} sample: after_ns < before_ns ({x})")
    # twice the midpoints and offsets, so everything stays an integer until the division
    dt2 = (end.before_ns + end.after_ns) - (start.before_ns + start.after_ns)
    if dt2 <= 0:
        raise ValueError("end sample is not after the start sample")
    off2 = (2 * end.kvmclock_ns - end.before_ns - end.after_ns) - (
        2 * start.kvmclock_ns - start.before_ns - start.after_ns
    )
    return DriftEstimate(
        start=start,
        end=end,
        elapsed_ns=Fraction(dt2, 2),
        offset_change_ns=Fraction(off2, 2),
        drift_ppb=Fraction(off2 * 10**9, dt2),
        bound_ppb=Fraction(2 * (start.window_ns + end.window_ns) * 10**9, dt2),
    )


def bracket_samples(
    clock: Callable[[], int], kvmclock: Callable[[], int], count: int = BRACKET_READS
) -> list[BracketSample]:
    """``count`` bracketed reads in a row: ``clock()``, ``kvmclock()``, ``clock()`` (ns)."""
    out = []
    for _ in range(count):
        before = clock()
        k = kvmclock()
        after = clock()
        out.append(BracketSample(before, k, after))
    return out


def measure_drift(
    clock: Callable[[], int],
    kvmclock: Callable[[], int],
    seconds: float,
    *,
    count: int = BRACKET_READS,
    sleep: Callable[[float], None] = time.sleep,
) -> DriftEstimate:
    """kvm-clock against ``clock`` over about ``seconds`` s: ``count`` bracketed reads at the
    start and at the end, the narrowest window of each kept."""
    start = narrowest(bracket_samples(clock, kvmclock, count))
    sleep(seconds)
    end = narrowest(bracket_samples(clock, kvmclock, count))
    return drift_estimate(start, end)


def drift_dict(est: DriftEstimate) -> dict[str, Any]:
    """JSON form of a :class:`DriftEstimate` (floats for the fractions)."""

    def sample(x: BracketSample) -> dict[str, int]:
        return {
            "before_ns": x.before_ns,
            "kvmclock_ns": x.kvmclock_ns,
            "after_ns": x.after_ns,
            "window_ns": x.window_ns,
        }

    return {
        "elapsed_ns": float(est.elapsed_ns),
        "offset_at_end_ns": float(
            est.end.kvmclock_ns - Fraction(est.end.before_ns + est.end.after_ns, 2)
        ),
        "offset_change_ns": float(est.offset_change_ns),
        "drift_ppb": float(est.drift_ppb),
        "bound_ppb": float(est.bound_ppb),
        "drift_ppm": float(est.drift_ppb / 1000),
        "bound_ppm": float(est.bound_ppb / 1000),
        "below_resolution": est.below_resolution,
        "start": sample(est.start),
        "end": sample(est.end),
    }


def format_drift(name: str, d: dict[str, Any]) -> str:
    """One line of :func:`drift_dict`: the drift with its bound, or "below resolution"."""
    value = (f"{d['drift_ppm']:+.3f} ppm +- {d['bound_ppm']:.3f} ppm "
             f"({d['drift_ppb']:+.0f} +- {d['bound_ppb']:.0f} ppb)")
    if d["below_resolution"]:
        value = (f"below resolution: {value[:-1]}; the bound exceeds the drift, a longer "
                 "--seconds narrows it)")
    return (
        f"kvm-clock vs {name} over {d['elapsed_ns'] / 1e9:.3f} s: drift {value};"
        f" read windows {d['start']['window_ns']} + {d['end']['window_ns']} ns;"
        f" offset now {d['offset_at_end_ns']:.0f} ns"
    )


def compare_clocks(seconds: float = DEFAULT_SECONDS,
                   count: int = BRACKET_READS) -> dict[str, Any]:
    """kvm-clock (vCPU 0's record, native reader) against CLOCK_MONOTONIC_RAW and
    CLOCK_BOOTTIME over ``seconds`` s (both measured in the same interval): see
    :func:`measure_drift` and :class:`DriftEstimate`."""
    from kvmclock.real import kvmclock_ns

    def raw() -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)

    def boot() -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    raw0 = narrowest(bracket_samples(raw, kvmclock_ns, count))
    boot0 = narrowest(bracket_samples(boot, kvmclock_ns, count))
    time.sleep(seconds)
    raw1 = narrowest(bracket_samples(raw, kvmclock_ns, count))
    boot1 = narrowest(bracket_samples(boot, kvmclock_ns, count))
    return {
        "requested_s": seconds,
        "bracket_reads": count,
        "monotonic_raw": drift_dict(drift_estimate(raw0, raw1)),
        "boottime": drift_dict(drift_estimate(boot0, boot1)),
    }


def kvm_report() -> dict[str, Any]:
    """/dev/kvm: API version, capabilities, ADJUST_CLOCK flags, and one throw-away VM with one
    vCPU run once (``rdtsc; hlt``) to observe KVM_GET_CLOCK flags and the vCPU's record."""
    try:
        system = kvmdev.KvmSystem()
    except RealResourceUnavailable as exc:
        return {"available": False, "reason": str(exc)}
    with system:
        caps = system.capabilities()
        adj = caps["KVM_CAP_ADJUST_CLOCK"]
        out: dict[str, Any] = {
            "available": True,
            "reason": None,
            "api_version": system.api_version,
            "capabilities": caps,
            "adjust_clock_flags": [
                name
                for name, bit in (
                    ("KVM_CLOCK_TSC_STABLE", kvmdev.KVM_CLOCK_TSC_STABLE),
                    ("KVM_CLOCK_REALTIME", kvmdev.KVM_CLOCK_REALTIME),
                    ("KVM_CLOCK_HOST_TSC", kvmdev.KVM_CLOCK_HOST_TSC),
                )
                if adj & bit
            ],
            "flavour": "PVM (kvm_pvm module loaded)"
            if os.path.isdir("/sys/module/kvm_pvm")
            else "standard (kvm_intel/kvm_amd)",
        }
        try:
            with system.create_vm() as vm:
                load(vm, RDTSC_HLT)
                vcpu = vm.create_vcpu()
                vcpu.enable_kvmclock(record_gpa(0))
                run_to_hlt(vcpu)
                clock = vm.get_clock()
                rec = vm.read_record(record_gpa(0))
                khz = vcpu.get_tsc_khz()
                out["probe"] = {
                    "vcpu_tsc_khz": khz,
                    "tsc_offset_attr": vcpu.has_attr(
                        kvmdev.KVM_VCPU_TSC_CTRL, kvmdev.KVM_VCPU_TSC_OFFSET
                    ),
                    "get_clock_flags": clock.flags,
                    "masterclock_observed": bool(clock.flags & kvmdev.KVM_CLOCK_TSC_STABLE),
                    "record": _record_dict(rec),
                    "record_mul_shift_match": _scale_match(rec, khz),
                }
        except OSError as exc:
            out["probe"] = {"error": str(exc)}
        return out


def _scale_match(rec: Any, khz: int) -> bool:
    shift, mul = get_time_scale(scaled_hz=10**9, base_hz=khz * 1000)
    return bool(rec.tsc_to_system_mul == mul and rec.tsc_shift == shift)


def masterclock_prediction(cs: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """What KVM here would decide under each profile (x86.c pvclock_update_vm_gtod_copy: vCPUs
    matched AND the host clocksource qualifies): a tsc host clocksource (VDSO_CLOCKMODE_TSC)
    always qualifies; a kvm-clock one whose record carries PVCLOCK_TSC_STABLE_BIT only under
    switch ``stable_pvclock_host`` (the series' patch 11). ``{profile: {"masterclock",
    "why"}}``."""
    from kvmclock.profiles import PROFILES

    cur = cs.get("current")
    stable_pv = bool(record.get("available") and record["record"]["flags"] & 1)
    out: dict[str, Any] = {}
    for name, cfg in PROFILES.items():
        if cfg.stable_pvclock_host:
            ok = cur == "tsc" or (cur == "kvm-clock" and stable_pv)
            why = (
                f"host clocksource is {cur!r}; {name} (stable_pvclock_host=on) accepts 'tsc' or "
                f"a stable kvm-clock (this machine's record stable bit: {int(stable_pv)})"
            )
        else:
            ok = cur == "tsc"
            why = (
                f"host clocksource is {cur!r}; {name} (Linux {cfg.kernel}, "
                "stable_pvclock_host=off) needs 'tsc' (VDSO_CLOCKMODE_TSC)"
            )
        out[name] = {"masterclock": ok, "why": why}
    return out


def host_report(seconds: float = DEFAULT_SECONDS) -> dict[str, Any]:
    """Everything ``kvmclock host`` prints, as a JSON-able dict (the ``kvmclock.host``
    document); the kvm-clock drift is measured over ``seconds`` s."""
    cs = clocksources()
    rec = guest_record_report()
    record_khz = rec.get("record_tsc_khz") if rec.get("available") else None
    khz = tsc_khz(record_khz)
    report: dict[str, Any] = {
        "schema": "kvmclock.host",
        "schema_version": 1,
        "kernel": os.uname().release,
        "clocksource": cs,
        "tsc": {"flags": cpu_tsc_flags(), **khz},
        "guest_pvclock": rec,
    }
    if rec.get("available") and khz["khz"] is not None:
        shift, mul = get_time_scale(scaled_hz=10**9, base_hz=khz["khz"] * 1000)
        r = rec["record"]
        match = r["tsc_to_system_mul"] == mul and r["tsc_shift"] == shift
        rec["expected_scale"] = {"tsc_shift": shift, "tsc_to_system_mul": mul}
        rec["mul_shift_match"] = match
        rec["explanation"] = (
            "record mul/shift equal get_time_scale(10**9, tsc_khz*1000)"
            if match
            else (
                f"record mul/shift come from the HOST's tsc_khz ({record_khz} kHz by"
                f" pvclock_tsc_khz), this guest reports {khz['khz']} kHz ({khz['source']})"
            )
        )
    report["clocks"] = compare_clocks(seconds) if rec.get("available") else None
    report["kvm"] = kvm_report()
    report["masterclock_prediction"] = masterclock_prediction(cs, rec)
    return report


def format_host_report(report: dict[str, Any]) -> str:
    """Readable text of ``host_report()``."""
    lines: list[str] = [f"kernel {report['kernel']}"]
    cs = report["clocksource"]
    lines.append(f"clocksource: current {cs['current']}, available {' '.join(cs['available'])}")
    tsc = report["tsc"]
    on = [f for f, v in tsc["flags"].items() if v]
    off = [f for f, v in tsc["flags"].items() if not v]
    lines.append(f"TSC flags: {' '.join(on)}" + (f" (absent: {' '.join(off)})" if off else ""))
    lines.append(f"TSC kHz: {tsc['khz']} (source: {tsc['source']})")
    rec = report["guest_pvclock"]
    if not rec["available"]:
        lines.append(f"KVM guest pvclock: unavailable: {rec['reason']}")
    else:
        r = rec["record"]
        lines.append(
            f"KVM guest pvclock ({rec['mapping']}): version {r['version']} tsc_timestamp"
            f" {r['tsc_timestamp']:#x} system_time {r['system_time']} mul"
            f" {r['tsc_to_system_mul']:#x} shift {r['tsc_shift']} flags {r['flags']:#x}"
        )
        lines.append(f"  record implies {rec['record_tsc_khz']} kHz (pvclock_tsc_khz)")
        if "mul_shift_match" in rec:
            verdict = "match" if rec["mul_shift_match"] else "DIFFER"
            lines.append(
                f"  mul/shift vs get_time_scale(10**9, tsc_khz*1000): {verdict}"
                f" ({rec['explanation']})"
            )
    clk = report.get("clocks")
    if clk:
        lines.append(format_drift("CLOCK_MONOTONIC_RAW", clk["monotonic_raw"]))
        lines.append(format_drift("CLOCK_BOOTTIME", clk["boottime"]))
    kvm = report["kvm"]
    if not kvm["available"]:
        lines.append(f"/dev/kvm: unavailable: {kvm['reason']}")
    else:
        caps = ", ".join(
            f"{k.removeprefix('KVM_CAP_')}={v}" for k, v in kvm["capabilities"].items()
        )
        lines.append(f"/dev/kvm: API {kvm['api_version']}, {kvm['flavour']}")
        lines.append(f"  capabilities: {caps}")
        lines.append(f"  KVM_CAP_ADJUST_CLOCK flags: {' '.join(kvm['adjust_clock_flags'])}")
        probe = kvm.get("probe", {})
        if "error" in probe:
            lines.append(f"  probe VM failed: {probe['error']}")
        elif probe:
            lines.append(
                f"  probe VM: vCPU tsc_khz {probe['vcpu_tsc_khz']}, TSC offset attribute"
                f" {'yes' if probe['tsc_offset_attr'] else 'no'}, masterclock observed"
                f" {'on' if probe['masterclock_observed'] else 'off'}, record mul/shift"
                f" {'match' if probe['record_mul_shift_match'] else 'DIFFER'}"
            )
    for prof, pred in report["masterclock_prediction"].items():
        lines.append(
            f"masterclock for a guest here ({prof}): {'on' if pred['masterclock'] else 'off'}"
            f" - {pred['why']}"
        )
    return "\n".join(lines)

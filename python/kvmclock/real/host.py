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
SAMPLE_S = 0.2


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
        "tsc": stamp,
        "ns": rec.read_cycles(stamp),
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


def compare_clocks(sample_s: float = SAMPLE_S) -> dict[str, Any]:
    """kvm-clock minus CLOCK_MONOTONIC_RAW / CLOCK_BOOTTIME now and ``sample_s`` later
    (each bracketed by two reads, midpoint used), and the drift in ppm over the sample."""
    from kvmclock.real import kvmclock_ns

    def sample() -> tuple[int, int, int, int]:
        r0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
        b0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        k = kvmclock_ns()
        b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        r1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)
        return k, (r0 + r1) // 2, (b0 + b1) // 2, r1 - r0

    k0, raw0, boot0, w0 = sample()
    time.sleep(sample_s)
    k1, raw1, boot1, w1 = sample()
    d_raw = raw1 - raw0
    return {
        "sample_s": d_raw / 1e9,
        "kvmclock_minus_monotonic_raw_ns": k1 - raw1,
        "kvmclock_minus_boottime_ns": k1 - boot1,
        "drift_vs_monotonic_raw_ppm": ((k1 - raw1) - (k0 - raw0)) / d_raw * 1e6,
        "drift_vs_boottime_ppm": ((k1 - boot1) - (k0 - boot0)) / d_raw * 1e6,
        "read_window_ns": max(w0, w1),
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


def host_report(sample_s: float = SAMPLE_S) -> dict[str, Any]:
    """Everything ``kvmclock host`` prints, as a JSON-able dict."""
    cs = clocksources()
    rec = guest_record_report()
    record_khz = rec.get("record_tsc_khz") if rec.get("available") else None
    khz = tsc_khz(record_khz)
    report: dict[str, Any] = {
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
        report["clocks"] = compare_clocks(sample_s)
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
        lines.append(
            f"kvm-clock - CLOCK_MONOTONIC_RAW = {clk['kvmclock_minus_monotonic_raw_ns']} ns,"
            f" drift {clk['drift_vs_monotonic_raw_ppm']:+.3f} ppm over {clk['sample_s']:.3f} s"
        )
        lines.append(
            f"kvm-clock - CLOCK_BOOTTIME      = {clk['kvmclock_minus_boottime_ns']} ns,"
            f" drift {clk['drift_vs_boottime_ppm']:+.3f} ppm"
            f" (read window {clk['read_window_ns']} ns)"
        )
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

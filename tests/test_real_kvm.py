"""Real /dev/kvm and this machine's kvm-clock (skip with the reason where missing)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from kvmclock import get_time_scale
from kvmclock.errors import RealResourceUnavailable
from kvmclock.real import kvmdev, maps, verify
from kvmclock.real.guest import (
    RDTSC_HLT,
    GuestRunError,
    kvmclock_msr_guest,
    load,
    record_gpa,
    run_to_hlt,
)

pytestmark = pytest.mark.real


def _kvm_reason() -> str | None:
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no permission to open /dev/kvm read-write"
    return None


needs_kvm = pytest.mark.skipif(_kvm_reason() is not None, reason=_kvm_reason() or "")
needs_vclock = pytest.mark.skipif(
    maps.find_mapping(maps.VVAR_VCLOCK) is None,
    reason="no [vvar_vclock] mapping (not a KVM guest with a pvclock vDSO page, or kernel < 6.13)",
)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def real_run() -> verify.ScenarioRun:
    if _kvm_reason():
        pytest.skip(_kvm_reason() or "")
    return verify.run_real_scenarios()


@needs_vclock
def test_real_record_mul_shift_and_read() -> None:
    from kvmclock.real import kvmclock_ns, read_guest_record
    from kvmclock.real.host import guest_record_report, tsc_khz

    rec, stamp = read_guest_record()
    rep = guest_record_report()
    khz = tsc_khz(rep["record_tsc_khz"])["khz"]
    assert get_time_scale(scaled_hz=10**9, base_hz=khz * 1000) == (
        rec.tsc_shift,
        rec.tsc_to_system_mul,
    )
    a = kvmclock_ns()
    b = kvmclock_ns()
    assert rec.read_cycles(stamp) <= a <= b
    assert rec.version % 2 == 0


@needs_kvm
def test_real_relations(real_run: verify.ScenarioRun) -> None:
    res = verify._check(real_run)
    for name in (
        "record-mul-shift",
        "get-clock-equals-record",
        "creation-match-and-shared-records",
        "far-write-masterclock-off",
        "matching-write-masterclock-back",
        "version-rule",
        "guest-stopped-kept",
        "set-clock-system-time",
    ):
        assert res[name][0], (name, res[name][1])
    for name in verify.DEPARTURE_FOR:
        held, detail = res[name]
        assert held or verify._departure_applies(name, real_run, held), (name, detail)


@needs_kvm
def test_real_get_clock_equals_record_at_same_host_tsc(real_run: verify.ScenarioRun) -> None:
    c = real_run.obs["clock_matched"]
    assert c["flags"] & kvmdev.KVM_CLOCK_TSC_STABLE
    assert c["flags"] & kvmdev.KVM_CLOCK_HOST_TSC
    rec = verify._info(real_run.obs["run0b"]["record"])
    assert rec.read_cycles((c["host_tsc"] + c["offsets"]["0"]) % 2**64) == c["clock"]


@needs_kvm
def test_real_run_verify_ok_and_fast() -> None:
    t = time.monotonic()
    result = verify.run_verify(trace=False)
    assert time.monotonic() - t < 5
    assert result["ok"], verify.format_verify(result)
    text = verify.format_verify(result)
    assert "record-mul-shift" in text and ("OK" in text)


@needs_kvm
def test_no_fd_or_mapping_leak() -> None:
    fds, nmaps = _fds(), maps.count_mappings()
    verify.run_real_scenarios()
    assert (_fds(), maps.count_mappings()) == (fds, nmaps)


@needs_kvm
@pytest.mark.parametrize(
    "request_code",
    [
        kvmdev.KVM_CREATE_VM,
        kvmdev.KVM_SET_USER_MEMORY_REGION,
        kvmdev.KVM_CREATE_VCPU,
        kvmdev.KVM_SET_MSRS,
        kvmdev.KVM_RUN,
        kvmdev.KVM_GET_CLOCK,
        kvmdev.KVM_SET_CLOCK,
    ],
)
def test_no_leak_after_injected_failure(request_code: int) -> None:
    fds, nmaps = _fds(), maps.count_mappings()
    with kvmdev.inject_ioctl_failure(request_code, errno.EIO, nth=1) as hits:
        with pytest.raises(OSError, match=kvmdev.ioctl_name(request_code)):
            verify.run_real_scenarios()
    assert hits
    assert (_fds(), maps.count_mappings()) == (fds, nmaps)


@needs_kvm
def test_guest_msr_write_and_unexpected_exit() -> None:
    with kvmdev.KvmSystem() as system, system.create_vm() as vm:
        code = kvmclock_msr_guest(record_gpa(0))
        load(vm, code)
        vcpu = vm.create_vcpu()
        g = run_to_hlt(vcpu, len(code))
        msrs = vcpu.get_msrs([kvmdev.MSR_KVM_SYSTEM_TIME_NEW])
        assert msrs[kvmdev.MSR_KVM_SYSTEM_TIME_NEW] == record_gpa(0) | 1
        rec = vm.read_record(record_gpa(0))
        assert rec.version % 2 == 0 and rec.version > 0
        assert rec.tsc_timestamp <= g.guest_tsc or not rec.flags & 1
        # an `out` instruction instead of hlt: a clear error naming the exit
        load(vm, bytes((0xE6, 0x80)))  # out 0x80, al
        with pytest.raises(GuestRunError, match="KVM_EXIT_IO"):
            run_to_hlt(vcpu, len(RDTSC_HLT))


def test_missing_device_is_real_resource_unavailable(tmp_path: Path) -> None:
    with pytest.raises(RealResourceUnavailable, match="does not exist"):
        kvmdev.KvmSystem(str(tmp_path / "kvm"))
    assert issubclass(RealResourceUnavailable, OSError)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="nth"):
        with kvmdev.inject_ioctl_failure(kvmdev.KVM_RUN, nth=0):
            pass
    with pytest.raises(ValueError, match="vcpu_id"):
        record_gpa(64)
    with pytest.raises(ValueError, match="gpa"):
        kvmclock_msr_guest(0x3001)


C_CHECK = r"""
#include <stdio.h>
#include <linux/kvm.h>
#define P(x) printf(#x " %lu\n", (unsigned long)(x));
int main(void) {
P(KVM_GET_API_VERSION) P(KVM_CREATE_VM) P(KVM_CHECK_EXTENSION) P(KVM_GET_VCPU_MMAP_SIZE)
P(KVM_CREATE_VCPU) P(KVM_SET_USER_MEMORY_REGION) P(KVM_SET_CLOCK) P(KVM_GET_CLOCK) P(KVM_RUN)
P(KVM_GET_REGS) P(KVM_SET_REGS) P(KVM_GET_SREGS) P(KVM_SET_SREGS) P(KVM_GET_MSRS) P(KVM_SET_MSRS)
P(KVM_SET_TSC_KHZ) P(KVM_GET_TSC_KHZ) P(KVM_SET_DEVICE_ATTR) P(KVM_GET_DEVICE_ATTR)
P(KVM_HAS_DEVICE_ATTR) P(KVM_KVMCLOCK_CTRL) P(KVM_CLOCK_TSC_STABLE) P(KVM_CLOCK_REALTIME)
P(KVM_CLOCK_HOST_TSC) P(KVM_VCPU_TSC_CTRL) P(KVM_VCPU_TSC_OFFSET) P(KVM_API_VERSION)
P(sizeof(struct kvm_userspace_memory_region)) P(sizeof(struct kvm_regs))
P(sizeof(struct kvm_segment)) P(sizeof(struct kvm_dtable)) P(sizeof(struct kvm_sregs))
P(sizeof(struct kvm_msr_entry)) P(sizeof(struct kvm_msrs)) P(sizeof(struct kvm_clock_data))
P(sizeof(struct kvm_device_attr))
P(KVM_CAP_ADJUST_CLOCK) P(KVM_CAP_GET_TSC_KHZ) P(KVM_CAP_TSC_CONTROL) P(KVM_CAP_VCPU_ATTRIBUTES)
P(KVM_CAP_KVMCLOCK_CTRL) P(KVM_CAP_VM_TSC_CONTROL) P(KVM_EXIT_HLT) P(KVM_EXIT_IO)
return 0; }
"""


@pytest.mark.skipif(
    shutil.which("cc") is None or not Path("/usr/include/linux/kvm.h").exists(),
    reason="needs a C compiler and the installed <linux/kvm.h>",
)
def test_uapi_numbers_and_sizes_match_installed_headers(tmp_path: Path) -> None:
    src = tmp_path / "k.c"
    src.write_text(C_CHECK)
    exe = tmp_path / "k"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    got = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}
    assert len(got) == C_CHECK.count("P(") - 1
    for name, value in got.items():
        if name.startswith("sizeof(struct "):
            struct_name = name[len("sizeof(struct ") : -1]
            cls, size = kvmdev.STRUCT_SIZES[struct_name]
            assert (ctypes.sizeof(cls), size) == (value, value), name
        elif name.startswith("KVM_CAP_"):
            assert kvmdev.CAPABILITIES[name] == value, name
        elif name.startswith("KVM_EXIT_"):
            assert kvmdev.EXIT_REASONS[value] == name
        else:
            assert getattr(kvmdev, name) == value, name


def test_host_report_explains_this_machine() -> None:
    from kvmclock.real.host import format_host_report, host_report

    rep = host_report(seconds=0.05)
    text = format_host_report(rep)
    assert rep["kernel"] == os.uname().release
    assert f"clocksource: current {rep['clocksource']['current']}" in text
    if rep["guest_pvclock"]["available"]:
        # KVM wrote this record with kvm_get_time_scale(NSEC_PER_SEC, khz * 1000) of the
        # vCPU's TSC kHz, and a KVM guest reports that same kHz (kvm-clock's pvclock_tsc_khz
        # or CPUID 0x40000010; TSC_KNOWN_FREQ skips the refinement): get_time_scale of the
        # reported kHz must give back the record's mul/shift exactly
        assert rep["guest_pvclock"]["mul_shift_match"] is True, rep["guest_pvclock"]
        clk = rep["clocks"]["monotonic_raw"]
        # the drift is within its bound (the read windows) plus 100 ppm
        assert abs(clk["drift_ppb"]) <= clk["bound_ppb"] + 100_000
    else:
        assert "unavailable" in text
    if not rep["kvm"]["available"]:
        assert rep["kvm"]["reason"] in text
    pred = rep["masterclock_prediction"]
    assert set(pred) == {"gtod", "series", "upstream"}
    on_tsc = rep["clocksource"]["current"] == "tsc"
    assert pred["gtod"]["masterclock"] == pred["upstream"]["masterclock"] == on_tsc
    stable_kvmclock = (
        rep["clocksource"]["current"] == "kvm-clock"
        and bool(rep["guest_pvclock"].get("available"))
        and bool(rep["guest_pvclock"]["record"]["flags"] & 1)
    )
    assert pred["series"]["masterclock"] == (on_tsc or stable_kvmclock)
    assert "(upstream)" in text


def _trace_reason() -> str | None:
    if _kvm_reason():
        return _kvm_reason()
    if os.geteuid() != 0:
        return "tracefs capture needs root (mount namespace + tracefs mount)"
    if shutil.which("unshare") is None:
        return "unshare(1) not installed"
    if "tracefs" not in Path("/proc/filesystems").read_text():
        return "kernel has no tracefs"
    return None


@pytest.mark.skipif(_trace_reason() is not None, reason=_trace_reason() or "")
def test_private_trace_capture_leaves_no_instance() -> None:
    from kvmclock.real import tracefs

    doc, text = tracefs.capture_private_namespace()
    run = verify.ScenarioRun.from_json(doc)
    run.trace = text
    for ev in tracefs.EVENTS:
        assert f" {ev}: " in text
    rel = verify._trace_relation(run)
    assert rel is not None and rel[0], rel
    listing = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'd=$(mktemp -d); mount -t tracefs nodev "$d" && ls "$d/instances";'
            ' umount "$d"; rmdir "$d"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "kvmclock-" not in listing
    assert tracefs.find_tracefs() is None or "tracefs" in Path("/proc/self/mounts").read_text()

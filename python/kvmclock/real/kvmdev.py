"""/dev/kvm through ``fcntl.ioctl``, ``mmap`` and ctypes (no third-party code).

UAPI numbers are computed with the ``_IO/_IOR/_IOW/_IOWR`` encoding of
``include/uapi/asm-generic/ioctl.h`` from the request numbers and structures of
``include/uapi/linux/kvm.h`` and ``arch/x86/include/uapi/asm/kvm.h``; the struct sizes are
asserted at import time and re-checked in the tests against the installed headers with a C
compiler. ``KvmSystem`` / ``KvmVm`` / ``KvmVcpu`` are context managers that close every fd and
unmap every mapping on every path (``contextlib.ExitStack``). Nothing here changes a system
setting.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as _errno
import fcntl
import mmap
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from kvmclock import PvclockVcpuTimeInfo
from kvmclock.errors import RealResourceUnavailable

# --- ioctl encoding: include/uapi/asm-generic/ioctl.h -------------------------------------
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)`` of include/uapi/asm-generic/ioctl.h."""
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"size must be in 0..{(1 << _IOC_SIZEBITS) - 1}, got {size}")
    return (
        (direction << _IOC_DIRSHIFT)
        | (typ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _io(typ: int, nr: int) -> int:
    return _ioc(_IOC_NONE, typ, nr, 0)


def _ior(typ: int, nr: int, size: int) -> int:
    return _ioc(_IOC_READ, typ, nr, size)


def _iow(typ: int, nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, typ, nr, size)


def _iowr(typ: int, nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, typ, nr, size)


# --- structures: include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h -----------------
class KvmUserspaceMemoryRegion(ctypes.Structure):
    """``struct kvm_userspace_memory_region`` (include/uapi/linux/kvm.h)."""

    _fields_ = (
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    )


class KvmRegs(ctypes.Structure):
    """``struct kvm_regs`` (arch/x86/include/uapi/asm/kvm.h)."""

    _fields_ = tuple(
        (name, ctypes.c_uint64)
        for name in (
            "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()
        )
    )


class KvmSegment(ctypes.Structure):
    """``struct kvm_segment`` (arch/x86/include/uapi/asm/kvm.h)."""

    _fields_ = (
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    )


class KvmDtable(ctypes.Structure):
    """``struct kvm_dtable`` (arch/x86/include/uapi/asm/kvm.h)."""

    _fields_ = (
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    )


KVM_NR_INTERRUPTS = 256


class KvmSregs(ctypes.Structure):
    """``struct kvm_sregs`` (arch/x86/include/uapi/asm/kvm.h)."""

    _fields_ = (
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", ctypes.c_uint64),
        ("cr2", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64),
        ("cr4", ctypes.c_uint64),
        ("cr8", ctypes.c_uint64),
        ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("interrupt_bitmap", ctypes.c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    )


class KvmMsrEntry(ctypes.Structure):
    """``struct kvm_msr_entry`` (arch/x86/include/uapi/asm/kvm.h)."""

    _fields_ = (
        ("index", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("data", ctypes.c_uint64),
    )


class KvmMsrsHeader(ctypes.Structure):
    """``struct kvm_msrs`` without its flexible ``entries[]`` (the size the ioctl encodes)."""

    _fields_ = (("nmsrs", ctypes.c_uint32), ("pad", ctypes.c_uint32))


class KvmClockData(ctypes.Structure):
    """``struct kvm_clock_data`` (include/uapi/linux/kvm.h; realtime/host_tsc since 5.16)."""

    _fields_ = (
        ("clock", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("pad0", ctypes.c_uint32),
        ("realtime", ctypes.c_uint64),
        ("host_tsc", ctypes.c_uint64),
        ("pad", ctypes.c_uint32 * 4),
    )


class KvmDeviceAttr(ctypes.Structure):
    """``struct kvm_device_attr`` (include/uapi/linux/kvm.h)."""

    _fields_ = (
        ("flags", ctypes.c_uint32),
        ("group", ctypes.c_uint32),
        ("attr", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),
    )


# Sizes read from the headers (x86-64); asserted so a layout mistake fails at import.
STRUCT_SIZES: dict[str, tuple[type[ctypes.Structure], int]] = {
    "kvm_userspace_memory_region": (KvmUserspaceMemoryRegion, 32),
    "kvm_regs": (KvmRegs, 144),
    "kvm_segment": (KvmSegment, 24),
    "kvm_dtable": (KvmDtable, 16),
    "kvm_sregs": (KvmSregs, 312),
    "kvm_msr_entry": (KvmMsrEntry, 16),
    "kvm_msrs": (KvmMsrsHeader, 8),
    "kvm_clock_data": (KvmClockData, 48),
    "kvm_device_attr": (KvmDeviceAttr, 24),
}
for _name, (_cls, _size) in STRUCT_SIZES.items():
    assert ctypes.sizeof(_cls) == _size, (_name, ctypes.sizeof(_cls), _size)

KVMIO = 0xAE
KVM_API_VERSION = 12

# include/uapi/linux/kvm.h
KVM_GET_API_VERSION = _io(KVMIO, 0x00)
KVM_CREATE_VM = _io(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _io(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(KVMIO, 0x04)
KVM_CREATE_VCPU = _io(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _iow(KVMIO, 0x46, ctypes.sizeof(KvmUserspaceMemoryRegion))
KVM_SET_CLOCK = _iow(KVMIO, 0x7B, ctypes.sizeof(KvmClockData))
KVM_GET_CLOCK = _ior(KVMIO, 0x7C, ctypes.sizeof(KvmClockData))
KVM_RUN = _io(KVMIO, 0x80)
KVM_GET_REGS = _ior(KVMIO, 0x81, ctypes.sizeof(KvmRegs))
KVM_SET_REGS = _iow(KVMIO, 0x82, ctypes.sizeof(KvmRegs))
KVM_GET_SREGS = _ior(KVMIO, 0x83, ctypes.sizeof(KvmSregs))
KVM_SET_SREGS = _iow(KVMIO, 0x84, ctypes.sizeof(KvmSregs))
KVM_GET_MSRS = _iowr(KVMIO, 0x88, ctypes.sizeof(KvmMsrsHeader))
KVM_SET_MSRS = _iow(KVMIO, 0x89, ctypes.sizeof(KvmMsrsHeader))
KVM_SET_TSC_KHZ = _io(KVMIO, 0xA2)
KVM_GET_TSC_KHZ = _io(KVMIO, 0xA3)
KVM_SET_DEVICE_ATTR = _iow(KVMIO, 0xE1, ctypes.sizeof(KvmDeviceAttr))
KVM_GET_DEVICE_ATTR = _iow(KVMIO, 0xE2, ctypes.sizeof(KvmDeviceAttr))
KVM_HAS_DEVICE_ATTR = _iow(KVMIO, 0xE3, ctypes.sizeof(KvmDeviceAttr))
KVM_KVMCLOCK_CTRL = _io(KVMIO, 0xAD)

IOCTL_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("KVM_")
    and name.isupper()
    and isinstance(value, int)
    and name not in ("KVM_API_VERSION", "KVM_NR_INTERRUPTS")
}

# Capabilities (include/uapi/linux/kvm.h)
CAPABILITIES: dict[str, int] = {
    "KVM_CAP_USER_MEMORY": 3,
    "KVM_CAP_NR_VCPUS": 9,
    "KVM_CAP_ADJUST_CLOCK": 39,
    "KVM_CAP_TSC_CONTROL": 60,
    "KVM_CAP_GET_TSC_KHZ": 61,
    "KVM_CAP_MAX_VCPUS": 66,
    "KVM_CAP_TSC_DEADLINE_TIMER": 72,
    "KVM_CAP_KVMCLOCK_CTRL": 76,
    "KVM_CAP_VCPU_ATTRIBUTES": 127,
    "KVM_CAP_X86_USER_SPACE_MSR": 188,
    "KVM_CAP_VM_TSC_CONTROL": 214,
}

# KVM_GET_CLOCK / KVM_SET_CLOCK flags (include/uapi/linux/kvm.h)
KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3

# vCPU device attributes (arch/x86/include/uapi/asm/kvm.h)
KVM_VCPU_TSC_CTRL = 0
KVM_VCPU_TSC_OFFSET = 0

# Exit reasons (include/uapi/linux/kvm.h)
EXIT_REASONS: dict[int, str] = {
    0: "KVM_EXIT_UNKNOWN",
    1: "KVM_EXIT_EXCEPTION",
    2: "KVM_EXIT_IO",
    4: "KVM_EXIT_DEBUG",
    5: "KVM_EXIT_HLT",
    6: "KVM_EXIT_MMIO",
    8: "KVM_EXIT_SHUTDOWN",
    9: "KVM_EXIT_FAIL_ENTRY",
    10: "KVM_EXIT_INTR",
    17: "KVM_EXIT_INTERNAL_ERROR",
    24: "KVM_EXIT_SYSTEM_EVENT",
    29: "KVM_EXIT_X86_RDMSR",
    30: "KVM_EXIT_X86_WRMSR",
}
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTERNAL_ERROR = 17

# MSRs: arch/x86/include/uapi/asm/kvm_para.h, arch/x86/include/asm/msr-index.h
MSR_IA32_TSC = 0x10
MSR_KVM_WALL_CLOCK_NEW = 0x4B564D00
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01

# --- the ioctl wrapper and its test hook ------------------------------------------------------
IoctlHook = Callable[[int, int], None]
"""``hook(fd, request)``: called before every ioctl; raise ``OSError`` to inject a failure."""

_ioctl_hook: IoctlHook | None = None


def ioctl_name(request: int) -> str:
    """Name of a KVM ioctl request number (hex when unknown)."""
    return IOCTL_NAMES.get(request, f"ioctl {request:#x}")


def _ioctl(fd: int, request: int, arg: int | ctypes.Structure | bytearray = 0) -> int:
    """``ioctl(2)`` with the failure-injection hook; errors name the request."""
    if _ioctl_hook is not None:
        _ioctl_hook(fd, request)
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)  # type: ignore[no-any-return]
    except OSError as exc:
        raise OSError(exc.errno, f"{ioctl_name(request)}: {os.strerror(exc.errno or 0)}") from exc


@contextlib.contextmanager
def inject_ioctl_failure(request: int, err: int = _errno.EIO, nth: int = 1) -> Iterator[list[int]]:
    """Make the ``nth`` call of ``request`` fail with ``err`` (test hook); yields the hit list."""
    global _ioctl_hook
    if nth < 1:
        raise ValueError(f"nth must be >= 1, got {nth}")
    seen = [0]
    hits: list[int] = []
    previous = _ioctl_hook

    def hook(fd: int, req: int) -> None:
        if previous is not None:
            previous(fd, req)
        if req == request:
            seen[0] += 1
            if seen[0] == nth:
                hits.append(fd)
                raise OSError(err, f"{ioctl_name(req)}: injected failure")

    _ioctl_hook = hook
    try:
        yield hits
    finally:
        _ioctl_hook = previous


# --- anonymous guest memory via libc mmap (we need its address for the memory slot) --------
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


class GuestMemory:
    """Anonymous private mapping used as guest RAM (``mmap(MAP_PRIVATE|MAP_ANONYMOUS)``)."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % mmap.PAGESIZE:
            raise ValueError(f"size must be a positive multiple of {mmap.PAGESIZE}, got {size}")
        addr = _libc.mmap(
            None,
            size,
            mmap.PROT_READ | mmap.PROT_WRITE,
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
            -1,
            0,
        )
        if addr is None or addr == _MAP_FAILED:
            e = ctypes.get_errno()
            raise OSError(e, f"mmap guest memory: {os.strerror(e)}")
        self.address: int = addr
        self.size = size
        self.buffer = (ctypes.c_char * size).from_address(addr)

    def _check(self, offset: int, length: int) -> None:
        if self.address == 0:
            raise ValueError("guest memory is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"guest range [{offset}, {offset + length}) outside 0..{self.size}")

    def read(self, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes at guest-physical ``offset``."""
        self._check(offset, length)
        return ctypes.string_at(self.address + offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at guest-physical ``offset``."""
        self._check(offset, len(data))
        ctypes.memmove(self.address + offset, data, len(data))

    def close(self) -> None:
        """munmap (idempotent)."""
        if self.address:
            addr, self.address = self.address, 0
            if _libc.munmap(addr, self.size) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"munmap guest memory: {os.strerror(e)}")


def _u64(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be in 0..2**64-1, got {value}")
    return value


def _s64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class ClockData:
    """Decoded ``struct kvm_clock_data``."""

    clock: int
    flags: int
    realtime: int
    host_tsc: int


@dataclass(frozen=True)
class RunExit:
    """One KVM_RUN result: the exit reason, its name, and details for the unexpected ones."""

    reason: int
    name: str
    detail: str


class KvmVcpu:
    """A vCPU fd plus its mmapped ``struct kvm_run`` (virt/kvm/kvm_main.c kvm_vcpu_ioctl)."""

    def __init__(self, vm: KvmVm, vcpu_id: int, mmap_size: int) -> None:
        self.vm = vm
        self.vcpu_id = vcpu_id
        self._stack = contextlib.ExitStack()
        try:
            self.fd: int = _ioctl(vm.fd, KVM_CREATE_VCPU, vcpu_id)
            self._stack.callback(os.close, self.fd)
            self.run_area = mmap.mmap(self.fd, mmap_size, mmap.MAP_SHARED)
            self._stack.callback(self.run_area.close)
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        """Unmap kvm_run and close the fd (idempotent)."""
        self._stack.close()

    def __enter__(self) -> KvmVcpu:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # registers
    def get_regs(self) -> KvmRegs:
        regs = KvmRegs()
        _ioctl(self.fd, KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: KvmRegs) -> None:
        _ioctl(self.fd, KVM_SET_REGS, regs)

    def get_sregs(self) -> KvmSregs:
        sregs = KvmSregs()
        _ioctl(self.fd, KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: KvmSregs) -> None:
        _ioctl(self.fd, KVM_SET_SREGS, sregs)

    def setup_real_mode(self, rip: int) -> None:
        """Flat real mode (CS base 0) starting at ``rip``: the x86 reset state with CS=0."""
        sregs = self.get_sregs()
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            seg.base = 0
            seg.selector = 0
        self.set_sregs(sregs)
        regs = KvmRegs()
        regs.rip = rip
        regs.rflags = 0x2
        self.set_regs(regs)

    # MSRs (arch/x86/kvm/x86.c: msr_io / kvm_set_msr_common, host_initiated = true)
    def set_msrs(self, msrs: Mapping[int, int]) -> None:
        """KVM_SET_MSRS; every entry must be accepted (the ioctl returns how many were)."""
        entries = [(_u64(i, "msr index"), _u64(v, "msr value")) for i, v in msrs.items()]
        buf = bytearray(struct.pack("<II", len(entries), 0))
        for index, value in entries:
            buf += struct.pack("<IIQ", index, 0, value)
        done = _ioctl(self.fd, KVM_SET_MSRS, buf)
        if done != len(entries):
            bad = entries[done][0]
            raise OSError(_errno.EINVAL, f"KVM_SET_MSRS: MSR {bad:#x} rejected ({done} set)")

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """KVM_GET_MSRS for ``indices``."""
        buf = bytearray(struct.pack("<II", len(indices), 0))
        for index in indices:
            buf += struct.pack("<IIQ", _u64(index, "msr index"), 0, 0)
        done = _ioctl(self.fd, KVM_GET_MSRS, buf)
        raw = bytes(buf)
        if done != len(indices):
            raise OSError(_errno.EINVAL, f"KVM_GET_MSRS: MSR {indices[done]:#x} rejected")
        out: dict[int, int] = {}
        for n in range(len(indices)):
            index, _, value = struct.unpack_from("<IIQ", raw, 8 + 16 * n)
            out[index] = value
        return out

    def set_tsc(self, value: int) -> None:
        """Host-initiated IA32_TSC write: ``kvm_synchronize_tsc(vcpu, &data)`` (x86.c)."""
        self.set_msrs({MSR_IA32_TSC: value})

    def enable_kvmclock(self, gpa: int) -> None:
        """Host-initiated MSR_KVM_SYSTEM_TIME_NEW = gpa|1 (x86.c kvm_write_system_time)."""
        self.set_msrs({MSR_KVM_SYSTEM_TIME_NEW: _u64(gpa, "gpa") | 1})

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ on the vCPU: ``vcpu->arch.virtual_tsc_khz``."""
        return _ioctl(self.fd, KVM_GET_TSC_KHZ)

    def kvmclock_ctrl(self) -> None:
        """KVM_KVMCLOCK_CTRL: the host paused the guest; the next record carries
        PVCLOCK_GUEST_STOPPED (x86.c kvm_set_guest_paused)."""
        _ioctl(self.fd, KVM_KVMCLOCK_CTRL)

    # device attributes (x86.c kvm_vcpu_ioctl_device_attr, kvm_arch_tsc_*_attr)
    def has_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR; False for ENXIO (the kernel's "no such attribute")."""
        da = KvmDeviceAttr(0, group, attr, 0)
        try:
            _ioctl(self.fd, KVM_HAS_DEVICE_ATTR, da)
        except OSError as exc:
            if exc.errno in (_errno.ENXIO, _errno.EINVAL, _errno.ENOTTY):
                return False
            raise
        return True

    def get_attr_u64(self, group: int, attr: int) -> int:
        """KVM_GET_DEVICE_ATTR with a u64 payload."""
        value = ctypes.c_uint64(0)
        da = KvmDeviceAttr(0, group, attr, ctypes.addressof(value))
        _ioctl(self.fd, KVM_GET_DEVICE_ATTR, da)
        return value.value

    def tsc_offset(self) -> int:
        """``vcpu->arch.l1_tsc_offset`` via KVM_VCPU_TSC_OFFSET, as a signed 64-bit int."""
        return _s64(self.get_attr_u64(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET))

    # running
    def run(self) -> RunExit:
        """KVM_RUN once; decode ``kvm_run.exit_reason`` and details of unexpected exits."""
        _ioctl(self.fd, KVM_RUN)
        reason = struct.unpack_from("<I", self.run_area, 8)[0]
        name = EXIT_REASONS.get(reason, f"exit {reason}")
        detail = ""
        if reason == KVM_EXIT_IO:
            direction, size, port, count = struct.unpack_from("<BBHI", self.run_area, 32)
            detail = f"port {port:#x} dir {direction} size {size} count {count}"
        elif reason == KVM_EXIT_FAIL_ENTRY:
            hw, cpu = struct.unpack_from("<QI", self.run_area, 32)
            detail = f"hardware_entry_failure_reason {hw:#x} cpu {cpu}"
        elif reason == KVM_EXIT_INTERNAL_ERROR:
            sub, ndata = struct.unpack_from("<II", self.run_area, 32)
            data = struct.unpack_from(f"<{min(ndata, 16)}Q", self.run_area, 40)
            detail = f"suberror {sub} data {[hex(d) for d in data]}"
        return RunExit(reason, name, detail)


class KvmVm:
    """A VM fd with one anonymous memory slot at GPA 0 (virt/kvm/kvm_main.c kvm_vm_ioctl)."""

    def __init__(self, system: KvmSystem, mem_size: int) -> None:
        self.system = system
        self.vcpus: list[KvmVcpu] = []
        self._stack = contextlib.ExitStack()
        try:
            self.fd: int = _ioctl(system.fd, KVM_CREATE_VM, 0)
            self._stack.callback(os.close, self.fd)
            self.memory = GuestMemory(mem_size)
            self._stack.callback(self.memory.close)
            region = KvmUserspaceMemoryRegion(0, 0, 0, mem_size, self.memory.address)
            _ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, region)
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        """Close the vCPUs, then the VM fd, then unmap guest memory (idempotent)."""
        try:
            self._stack.close()
        finally:
            self.system._vms.discard(self)

    def __enter__(self) -> KvmVm:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def create_vcpu(self, vcpu_id: int | None = None) -> KvmVcpu:
        """KVM_CREATE_VCPU (+ kvm_run mmap); closed with the VM."""
        vid = len(self.vcpus) if vcpu_id is None else vcpu_id
        vcpu = KvmVcpu(self, vid, self.system.vcpu_mmap_size())
        self._stack.callback(vcpu.close)
        self.vcpus.append(vcpu)
        return vcpu

    def get_clock(self) -> ClockData:
        """KVM_GET_CLOCK (x86.c kvm_vm_ioctl_get_clock / __get_kvmclock)."""
        data = KvmClockData()
        _ioctl(self.fd, KVM_GET_CLOCK, data)
        return ClockData(data.clock, data.flags, data.realtime, data.host_tsc)

    def set_clock(self, clock: int, flags: int = 0, realtime: int = 0) -> None:
        """KVM_SET_CLOCK (x86.c kvm_vm_ioctl_set_clock)."""
        data = KvmClockData()
        data.clock = _u64(clock, "clock")
        data.flags = flags
        data.realtime = _u64(realtime, "realtime")
        _ioctl(self.fd, KVM_SET_CLOCK, data)

    def read_record(self, gpa: int) -> PvclockVcpuTimeInfo:
        """The 32-byte pvclock record KVM wrote at ``gpa`` (kvm_setup_guest_pvclock)."""
        return PvclockVcpuTimeInfo.from_bytes(self.memory.read(gpa, 32))


class KvmSystem:
    """The ``/dev/kvm`` fd (virt/kvm/kvm_main.c kvm_dev_ioctl)."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        try:
            self.fd: int = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise RealResourceUnavailable(
                _errno.ENOENT, f"{path} does not exist (no KVM on this computer)"
            ) from exc
        except PermissionError as exc:
            raise RealResourceUnavailable(
                _errno.EACCES, f"{path}: permission denied (need rw access, e.g. group kvm)"
            ) from exc
        self._stack.callback(os.close, self.fd)
        # VMs still open; a VM leaves this set when it is closed, so a long-lived handle does
        # not accumulate closed VMs.
        self._vms: set[KvmVm] = set()
        self._mmap_size: int | None = None
        try:
            version = _ioctl(self.fd, KVM_GET_API_VERSION)
            if version != KVM_API_VERSION:
                raise RealResourceUnavailable(
                    _errno.EINVAL, f"{path}: KVM API version {version}, expected {KVM_API_VERSION}"
                )
            self.api_version = version
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        """Close every VM created from here, then /dev/kvm (idempotent)."""
        try:
            for vm in list(self._vms):
                vm.close()
        finally:
            self._stack.close()

    def __enter__(self) -> KvmSystem:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm (0 = absent)."""
        return _ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def capabilities(self) -> dict[str, int]:
        """Every capability of ``CAPABILITIES`` with its KVM_CHECK_EXTENSION value."""
        return {name: self.check_extension(num) for name, num in CAPABILITIES.items()}

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE."""
        if self._mmap_size is None:
            self._mmap_size = _ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def create_vm(self, mem_size: int = 0x10000) -> KvmVm:
        """KVM_CREATE_VM with one memory slot of ``mem_size`` bytes at GPA 0."""
        vm = KvmVm(self, mem_size)
        self._vms.add(vm)
        return vm

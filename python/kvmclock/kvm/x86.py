"""KVM's x86 clock logic (arch/x86/kvm/x86.c: v4.13 of July 2017, the 2017 series, and 6.18).

``KvmModule`` is KVM loaded into one ``Kernel`` (``vm_list``, ``kvm_lock``, the notifier KVM
registers in ``kvm_arch_init``); ``Kvm`` is one VM (``struct kvm_arch`` clock fields by their
kernel names); ``Vcpu`` is one vCPU (``struct kvm_vcpu_arch`` clock fields).  What the code does
is decided by the switches of the host kernel's profile (``self.cfg``); the two designs of
where KVM reads its host clock (switch ``kvm_host_clock``) are:

* ``pvclock_gtod_copy`` (profiles ``gtod`` and ``upstream``: the shape 6.18 still has): KVM
  keeps a shadow ``pvclock_gtod_data`` refreshed by ``pvclock_gtod_notify`` on every
  timekeeping update; masterclock only when the shadow vclock mode is TSC; traces print
  ``hostclock tsc``.
* ``timekeeper`` (profile ``series``): patch 09 (the seed) with 10 and 11: KVM asks the
  timekeeper directly (``get_tk_seq``, ``get_tk_mono_clock_mode``,
  ``ktime_get_boot_ns_with_cycles``), listens to the clocksource change chain
  (``process_clocksource_change``), TSC or a stable pvclock counts as stable; traces print
  ``hostclock stable 1``.

Where 2017 and today differ, a switch of :mod:`kvmclock.profiles` picks the behaviour (clock
side: ``kvmclock_base``, ``masterclock_sync``, ``kvm_clock_realtime``, ``wall_clock``,
``trace_format``, ``pvclock_trace_version``; TSC side: ``guest_tsc_write_syncs``,
``user_set_tsc``, ``masterclock_request``, ``vcpu_tsc_offset_attr``, ``vm_tsc_khz``,
``tiny_ratio_clamp``, ``nested_tsc_scaling``; host suspend: ``pm_notifier``); elsewhere
2017 is followed; each choice is noted next to the code.  The host's
TSC-scaling hardware (``vmx``, ``svm``, ``none``) is a property of the machine
(``PhysicalMachine(tsc_scaling=...)``), not of the profile.

Everything runs synchronously in simulated time: "kernel code on a CPU" means inside
``kernel.run_on_cpu(cpu, fn)``; ``rdtsc()`` is the TSC of ``kernel.current_cpu``.

Where the model departs from the kernel it claims (v4.13 arch/x86/kvm/x86.c, plus the series
in profile ``series``, 6.18 in profile ``upstream``), and why:

* PVCLOCK_GUEST_STOPPED only on the kvmclock copy (6.15, "PV clock changes"): no switch.
  The model writes only the kvmclock copy (no Hyper-V TSC page, no Xen copies) and
  ``kvm_set_guest_paused`` already refuses a vCPU without kvmclock, so a pending request is
  always consumed by the kvmclock copy: the 6.15 change has no observable effect here.
* The timekeeper models no NTP (``tkr_mono.mult`` stays the clocksource's), so the two
  kvmclock bases of switch ``kvmclock_base`` (``boot``: tkr_mono + offs_boot; ``raw``:
  tkr_raw + offs_boot) run at the same rate and differ only by how the two read bases were
  set (equal at boot here) and by the sub-nanosecond truncation of each read (at most 1 ns);
  the rate difference the kernel has (NTP slews mono, never raw) appears only when something
  changes ``tkr_mono.mult`` (tests do, as ``timekeeping_apply_adjustment`` would).
* ``kvm_arch_enable_virtualization_cpu`` runs only on a host resume (``Kernel.pm_resume``:
  the syscore resume on the boot CPU, then each secondary CPU coming online); no CPU is
  ever hot-unplugged otherwise, and the vendor enable/disable has no clock effect.  The
  suspend freezes each running VM's vCPU threads at one instant
  (``kvm_freeze_vcpu_threads``); the kernel's freezer reaches them one after another.
* ``KVM_SET_TSC_KHZ`` (both ioctls) tests ``khz >= max_guest_tsc_khz`` only with TSC scaling
  hardware, as since about 5.9, in every profile; v4.13 tested it always, and without
  scaling hardware (``max_guest_tsc_khz`` 0) refused every value.  A ratio that does not fit
  64 bits (VMX guest >= 65536 x host, reachable only through ``create_vm(tsc_khz=...)``,
  which has no ioctl gate) raises ``ValueError`` where the kernel divides with a #DE.
* The L1 TSC offset is ``tsc_offset`` (``Vcpu.l1_tsc_offset``): no nested VMX/SVM TSC state
  (vmcs12/vmcb12 offset and multiplier), so ``kvm_read_l1_tsc`` is the offset plus the
  scaled host TSC.  Nesting is modelled as a guest kernel running its own KVM on virtual
  CPUs whose TSC is L0's guest TSC, not as L0 KVM emulating VMX for L1.  Switch
  ``nested_tsc_scaling`` acts in two places: the L1 machine offers TSC scaling to L1's KVM
  only with it (``VirtualMachine.tsc_scaling``), and an L2 vCPU with its own ratio reads
  the TSC L0 composes (``VcpuCpu.read_tsc``: ``kvm_calc_nested_tsc_multiplier/offset``,
  recomputed at every read, where the kernel recomputes them at nested entry and on writes).
* No kicks or IPIs: a request is taken when the vCPU next enters in simulated time
  (``kvmclock_update_fn`` kicks every vCPU in the kernel; ``kvm_make_mclock_inprogress_request``
  kicks and waits).  An entry with MCLOCK_INPROGRESS pending cannot happen in the kernel (the
  vCPU waits); here it raises ``RuntimeError``.  KVM_REQ_MIGRATE_TIMER is consumed and does
  nothing (no LAPIC timers).
* ``pvclock_gtod_work`` runs a fixed PVCLOCK_GTOD_WORK_DELAY_NS after the notifier that
  queued it (the kernel: whenever a system_long_wq worker runs).
* CONSTANT_TSC: ``cpu_tsc_khz`` is the CPU's calibrated ``tsc_khz``; no cpufreq notifier, so
  ``kvm_guest_time_update``'s retry on ``cpu_tsc_khz == 0`` never happens in the scenarios.
* A guest MSR_IA32_TSC write moves ``ia32_tsc_adjust_msr`` (v4.13's
  ``update_ia32_tsc_adjust_msr``, 5.10's ``+= adj``) as if the guest had TSC_ADJUST in
  CPUID; ``ia32_tsc_adjust_msr`` is kept but never read: MSR_IA32_TSC_ADJUST
  and every MSR but the clock ones (IA32_TSC, KVM_SYSTEM_TIME(_NEW), KVM_WALL_CLOCK(_NEW))
  are not modelled (``ValueError``); the wall-clock MSRs skip the kernel's
  ``guest_pv_has(KVM_FEATURE_CLOCKSOURCE(2))`` check.
* ``create_vm(tsc_khz=...)`` applies one frequency to each vCPU by ``kvm_set_tsc_khz`` at
  vCPU creation in every profile (what a VMM does with the vCPU ioctl right after creating
  each vCPU, or 5.18's VM ioctl); a frequency the host hardware cannot run is refused there
  with the ioctl's -EINVAL.  The ioctls themselves are ``Kvm.set_vcpu_tsc_khz`` (every
  profile) and ``Kvm.set_vm_tsc_khz`` (switch ``vm_tsc_khz``).
* ``kvm_arch_init_vm`` takes ``masterclock_lock`` around the first masterclock computation;
  the kernel calls ``pvclock_update_vm_gtod_copy`` unlocked (no vCPU exists yet).  Only the
  lock's acquisition count can tell.
* Not modelled: the Hyper-V TSC page (``kvm_hv_setup_tsc_page``) and the HVCLOCK host
  clock mode (4.16+: an L1 on Hyper-V giving its guests masterclock), Xen shared info and its
  pvclock copies, the protected-TSC guests of 6.16+ (TDX, SNP Secure TSC), steal time
  (including the suspend-time accounting proposed for it).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import kvmclock as _k
from kvmclock import limits
from kvmclock.counters import Counters
from kvmclock.errors import LivelockDetected, count_ids
from kvmclock.kvm.requests import (
    KVM_REQ_CLOCK_UPDATE,
    KVM_REQ_GLOBAL_CLOCK_UPDATE,
    KVM_REQ_MASTERCLOCK_UPDATE,
    KVM_REQ_MCLOCK_INPROGRESS,
    KVM_REQ_MIGRATE_TIMER,
)
from kvmclock.timekeeping.notifier import NOTIFY_DONE
from kvmclock.trace import (
    fields_pvclock_update,
    fields_track_tsc,
    fields_update_master_clock,
    fields_write_tsc_offset,
)

if TYPE_CHECKING:
    from kvmclock.kernel import Kernel
    from kvmclock.kvm.vm import VirtualMachine

__all__ = [
    "FAULTS",
    "KVMCLOCK_SYNC_PERIOD_NS",
    "KVMCLOCK_UPDATE_DELAY_NS",
    "KVM_CLOCK_HOST_TSC",
    "KVM_CLOCK_REALTIME",
    "KVM_CLOCK_TSC_STABLE",
    "KVM_CLOCK_VALID_FLAGS",
    "MSR_IA32_TSC",
    "MSR_KVM_SYSTEM_TIME",
    "MSR_KVM_SYSTEM_TIME_NEW",
    "MSR_KVM_WALL_CLOCK",
    "MSR_KVM_WALL_CLOCK_NEW",
    "PVCLOCK_GTOD_WORK_DELAY_NS",
    "TSC_SCALING_CAPS",
    "VCLOCK_NONE",
    "VCLOCK_PVCLOCK",
    "VCLOCK_TSC",
    "HvClock",
    "Kvm",
    "KvmClockData",
    "KvmModule",
    "MasterclockLivelock",
    "PvclockGtodData",
    "SpinLock",
    "TimeScaleLivelock",
    "TscDecision",
    "Vcpu",
]

T = TypeVar("T")
U64_MASK = (1 << 64) - 1
U32_MASK = (1 << 32) - 1
NSEC_PER_SEC = 1_000_000_000
USEC_PER_SEC = 1_000_000

# arch/x86/include/uapi/asm/kvm_para.h, msr-index.h
MSR_IA32_TSC = 0x10
MSR_KVM_SYSTEM_TIME = 0x12
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
MSR_KVM_WALL_CLOCK = 0x11
MSR_KVM_WALL_CLOCK_NEW = 0x4B564D00
# include/uapi/linux/kvm.h (KVM_CLOCK_TSC_STABLE since 2016; REALTIME/HOST_TSC since 5.16)
KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3
#: include/uapi/linux/kvm.h (5.16): what KVM_SET_CLOCK accepts (it acts on REALTIME only)
KVM_CLOCK_VALID_FLAGS = KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC
# vclock modes (arch/x86/include/asm/clocksource.h, 2017)
VCLOCK_NONE = 0
VCLOCK_TSC = 1
VCLOCK_PVCLOCK = 2

VMX_TSC_FRAC_BITS = 48  # kvm_tsc_scaling_ratio_frac_bits on VMX
TSC_TOLERANCE_PPM = 250  # module parameter tsc_tolerance_ppm
#: The host's TSC-scaling hardware, a property of the machine KVM runs on (not of the profile):
#: name -> (``kvm_caps.has_tsc_control``, ``tsc_scaling_ratio_frac_bits``,
#: ``max_tsc_scaling_ratio``).  vmx: vmx.c KVM_VMX_TSC_MULTIPLIER_MAX; svm: svm.h
#: SVM_TSC_RATIO_MAX (2**40 - 1); none: no ratio, a faster guest runs with catch-up.
TSC_SCALING_CAPS: dict[str, tuple[bool, int, int]] = {
    "vmx": (True, VMX_TSC_FRAC_BITS, U64_MASK),
    "svm": (True, 32, (1 << 40) - 1),
    "none": (False, VMX_TSC_FRAC_BITS, 0),
}
MAX_GUEST_TSC_KHZ_CAP = 0x7FFFFFFF  # kvm_caps.max_guest_tsc_khz <= this (fits a signed int)
KVMCLOCK_UPDATE_DELAY_NS = 100_000_000  # KVMCLOCK_UPDATE_DELAY = msecs_to_jiffies(100)
KVMCLOCK_SYNC_PERIOD_NS = 300 * NSEC_PER_SEC  # KVMCLOCK_SYNC_PERIOD = 300 * HZ jiffies
# queue_work(system_long_wq, &pvclock_gtod_work): the kworker runs a little after the notifier.
PVCLOCK_GTOD_WORK_DELAY_NS = 10_000
FAULTS = ("patch09-missing-do",)
DEFAULT_SPIN_LIMIT = 100_000
_MAX_ENTRY_LOOPS = 64
# the request bits process_requests tests (kvm_test_request on the word, without a call)
_REQ_MIGRATE_TIMER = 1 << KVM_REQ_MIGRATE_TIMER
_REQ_CLOCK_UPDATE = 1 << KVM_REQ_CLOCK_UPDATE
_REQ_MASTERCLOCK_UPDATE = 1 << KVM_REQ_MASTERCLOCK_UPDATE
_REQ_MCLOCK_INPROGRESS = 1 << KVM_REQ_MCLOCK_INPROGRESS
_REQ_GLOBAL_CLOCK_UPDATE = 1 << KVM_REQ_GLOBAL_CLOCK_UPDATE

_PV_STABLE = 1  # PVCLOCK_TSC_STABLE_BIT (pvclock-abi.h)
_PV_GUEST_STOPPED = 2  # PVCLOCK_GUEST_STOPPED
_TRACE_COUNTER_KEYS: dict[str, str] = {}  # trace event -> its counter, "trace.<event>"


# --------------------------------------------------------------------------------------------
# Trace events (arch/x86/kvm/trace.h): the text comes from kvmclock.trace, the one formatter of
# the four clock events (writer and parser agree by construction).
# --------------------------------------------------------------------------------------------
def _host_clock_args(
    trace_format: str, host_clock: int | bool
) -> tuple[int | None, bool | None]:
    """``(host_clock, host_clock_stable)`` of ``kvm_update_master_clock`` / ``kvm_track_tsc``
    for :mod:`kvmclock.trace`: profile gtod traces the vclock mode (``hostclock %s`` of
    ``__print_symbolic``), profile series the stability bool (``hostclock stable %u``)."""
    if trace_format == "hostclock_stable":
        return None, bool(host_clock)
    return int(host_clock), None


def _check_u32(name: str, value: object) -> int:
    """``value`` if it is an int in 0..2**32-1 (a u32 ioctl argument), else TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= U32_MASK:
        raise ValueError(f"{name}={value} out of range (0..2**32-1)")
    return value


def _check_u64(name: str, value: object) -> int:
    """``value`` if it is an int in 0..2**64-1, else TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= U64_MASK:
        raise ValueError(f"{name}={value} out of range (0..2**64-1)")
    return value


def _s64(value: int) -> int:
    """``value`` mod 2**64 read as a signed 64-bit integer."""
    value &= U64_MASK
    return value - (1 << 64) if value >> 63 else value


# --------------------------------------------------------------------------------------------
# Small kernel objects
# --------------------------------------------------------------------------------------------
class SpinLock:
    """A non-recursive kernel spinlock with an owner check.

    Taking a held lock again in this single-threaded model can only be a self-deadlock
    (the kernel would spin forever), so it raises ``RuntimeError``; releasing a lock one does
    not hold is a bug and raises too.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.owner: str | None = None
        self.acquisitions = 0

    def acquire(self, owner: str) -> None:
        """``spin_lock``."""
        if self.owner is not None:
            raise RuntimeError(f"{self.name}: {owner} would deadlock, lock held by {self.owner}")
        self.owner = owner
        self.acquisitions += 1

    def release(self, owner: str) -> None:
        """``spin_unlock``."""
        if self.owner != owner:
            raise RuntimeError(f"{self.name}: released by {owner} but held by {self.owner}")
        self.owner = None

    @property
    def locked(self) -> bool:
        """``spin_is_locked``."""
        return self.owner is not None


class MasterclockLivelock(LivelockDetected):
    """The patch-09 ``{ ... } while (read_seqcount_retry(s, seq));`` spin that never ends.

    ``where`` is the kernel function, ``spins`` how many retries were counted before the
    model gave up, ``level`` the kernel level, ``t_ns`` the simulated time.
    """

    def __init__(self, message: str, *, where: str, spins: int, level: int, t_ns: int) -> None:
        super().__init__(message)
        self.where = where
        self.spins = spins
        self.level = level
        self.t_ns = t_ns


class TimeScaleLivelock(LivelockDetected):
    """``kvm_get_time_scale(NSEC_PER_SEC, 0)``: the loop that never ends (x86.c).

    A guest TSC frequency so low that ``kvm_scale_tsc(cpu_tsc_khz, ratio)`` rounds to 0 kHz
    (e.g. a 1 kHz guest on a 2,299,998 kHz VMX host: ratio 122380531) reaches
    ``kvm_get_time_scale`` with base 0 in ``kvm_guest_time_update`` whenever the vCPU's
    ``hw_tsc_khz`` was non-zero: its second loop doubles a zero forever.  Linux 6.16 takes
    1 kHz instead (switch ``tiny_ratio_clamp``).  ``where`` is the kernel function, ``level``
    the kernel level, ``t_ns`` the simulated time, ``spins`` 0 (the loop is not counted).
    """

    def __init__(self, message: str, *, where: str, level: int, t_ns: int) -> None:
        super().__init__(message)
        self.where = where
        self.spins = 0
        self.level = level
        self.t_ns = t_ns


@dataclass
class HvClock:
    """``vcpu->arch.hv_clock``: KVM's copy of the 32-byte ``pvclock_vcpu_time_info``."""

    version: int = 0
    tsc_timestamp: int = 0
    system_time: int = 0
    tsc_to_system_mul: int = 0
    tsc_shift: int = 0
    flags: int = 0


@dataclass
class PvclockGtodData:
    """``struct pvclock_gtod_data`` (x86.c, profile gtod): KVM's shadow of the timekeeper.

    The 4.13 fields (``clock`` = tkr_mono: mode, cycle_last, mask, mult, shift,
    ``nsec_base`` = xtime_nsec, ``boot_ns`` = base + offs_boot, ``wall_time_sec``) and the
    5.5+ ``raw_clock`` extract of tkr_raw (``raw_*``: ``raw_base_cycles`` = xtime_nsec in
    shifted ns, ``raw_offset`` = tkr_raw.base in ns) with ``offs_boot`` (ns) kept apart.
    Every copy fills all of them; only the kvmclock base switch decides which are read.
    """

    seq: int = 0
    vclock_mode: int = VCLOCK_NONE
    cycle_last: int = 0
    mask: int = 0
    mult: int = 0
    shift: int = 0
    boot_ns: int = 0
    nsec_base: int = 0
    wall_time_sec: int = 0
    raw_cycle_last: int = 0
    raw_mask: int = 0
    raw_mult: int = 0
    raw_shift: int = 0
    raw_base_cycles: int = 0
    raw_offset: int = 0
    offs_boot: int = 0


@dataclass
class KvmClockData:
    """``struct kvm_clock_data`` (include/uapi/linux/kvm.h)."""

    clock: int
    flags: int = 0
    realtime: int = 0
    host_tsc: int = 0


@dataclass(frozen=True)
class TscDecision:
    """One decision of KVM's TSC synchronisation or masterclock logic, for reports.

    ``t_ns`` true time; ``vcpu_id`` the vCPU whose write or entry decided (None for a
    VM-wide masterclock update); ``where`` the x86.c function (``kvm_synchronize_tsc``,
    ``kvm_arch_tsc_set_attr``, ``kvm_track_tsc_matching``, ``pvclock_update_vm_gtod_copy``);
    ``rule`` a short key (``first-write``, ``window-match``, ``outside-window``,
    ``zero-write``, ``user-set-tsc-first``, ``khz-differs``, ``no-khz``,
    ``attr-exact-match``, ``attr-mismatch``, ``track``, ``masterclock-on``,
    ``masterclock-off``); ``text`` one sentence naming the rule.  Kept in
    ``Kvm.tsc_decisions``; no trace or moment changes.
    """

    t_ns: int
    vcpu_id: int | None
    where: str
    rule: str
    text: str


# --------------------------------------------------------------------------------------------
# vCPU
# --------------------------------------------------------------------------------------------
class Vcpu:
    """One vCPU: ``struct kvm_vcpu`` / ``kvm_vcpu_arch`` clock fields with the kernel names.

    ``affinity`` is the host CPU its thread runs on (the scenario pins and migrates it);
    ``cpu`` is the kernel's ``vcpu->cpu`` (the host CPU it was last loaded on, -1 before).
    """

    def __init__(self, kvm: Kvm, vcpu_id: int, affinity: int) -> None:
        self.kvm = kvm
        self.vcpu_id = vcpu_id
        self.owner = f"vcpu{vcpu_id}"
        """The lock owner / retry name of this vCPU's code (built once: every entry uses it)."""
        self.affinity = affinity
        self.cpu = -1
        self.requests = 0
        self.hv_clock = HvClock()
        self.hw_tsc_khz = 0
        self.time = 0  # MSR_KVM_SYSTEM_TIME(_NEW) value
        self.pv_time_enabled = False
        self.pv_time_gpa = 0
        self.pvclock_set_guest_stopped_request = False
        self.tsc_offset = 0  # u64; == l1_tsc_offset (no nested VMX/SVM TSC state modelled)
        self.tsc_offset_adjustment = 0
        self.tsc_scaling_ratio = kvm.module.default_tsc_scaling_ratio
        self.last_guest_tsc = 0
        self.last_host_tsc = 0
        self.this_tsc_nsec = 0
        self.this_tsc_write = 0
        self.this_tsc_generation = 0
        self.virtual_tsc_khz = 0
        self.virtual_tsc_mult = 0
        self.virtual_tsc_shift = 0
        self.tsc_catchup = False
        self.tsc_always_catchup = False
        self.ia32_tsc_adjust_msr = 0
        self.in_guest = False
        self.entries = 0

    @property
    def l1_tsc_offset(self) -> int:
        """``vcpu->arch.l1_tsc_offset`` (equal to ``tsc_offset``: L1 is always running here)."""
        return self.tsc_offset

    def kvm_make_request(self, req: int) -> None:
        """``kvm_make_request``: set the bit (the kick is implicit: entries check requests)."""
        self.requests |= 1 << req

    def kvm_check_request(self, req: int) -> bool:
        """``kvm_check_request``: test and clear."""
        bit = 1 << req
        if self.requests & bit:
            self.requests &= ~bit
            return True
        return False

    def kvm_test_request(self, req: int) -> bool:
        """``kvm_test_request``: test only."""
        return bool(self.requests & (1 << req))

    def kvm_clear_request(self, req: int) -> None:
        """``kvm_clear_request``."""
        self.requests &= ~(1 << req)

    def __repr__(self) -> str:
        return (
            f"Vcpu(vm={self.kvm.name!r}, vcpu_id={self.vcpu_id}, cpu={self.cpu}, "
            f"requests={self.requests:#x})"
        )


# --------------------------------------------------------------------------------------------
# VM
# --------------------------------------------------------------------------------------------
class Kvm:
    """One VM: ``struct kvm`` + the ``struct kvm_arch`` clock fields (kernel names).

    Created by ``KvmModule.create_vm``, which runs ``kvm_arch_init_vm`` on the host.
    ``machine`` is the ``VirtualMachine`` the next-level kernel boots on.
    """

    def __init__(
        self,
        module: KvmModule,
        name: str,
        *,
        memory_size: int,
        tsc_khz: int | None,
        features: set[str],
        pid: int,
    ) -> None:
        self.module = module
        self.name = name
        self.pid = pid
        self.created_ns: int = module.world.now_ns  # KVM_CREATE_VM (true ns)
        self.user_tsc_khz = tsc_khz
        # True once KVM_SET_TSC_KHZ on the VM (5.18+) set user_tsc_khz: vCPU creation then
        # ignores a refused frequency, as kvm_arch_vcpu_create ignores kvm_set_tsc_khz's result
        self.tsc_khz_from_vm_ioctl = False
        self.user_set_tsc = False  # kvm->arch.user_set_tsc (6.7+): userspace has set a TSC
        self.last_tsc_offset = 0  # kvm->arch.last_tsc_offset (5.16+, read by KVM_VCPU_TSC_OFFSET)
        self.vcpus: list[Vcpu] = []
        self.online_vcpus = 0
        self.kvmclock_offset = 0
        self.nr_vcpus_matched_tsc = 0
        self.last_tsc_nsec = 0
        self.last_tsc_write = 0
        self.last_tsc_khz = 0
        self.cur_tsc_nsec = 0
        self.cur_tsc_write = 0
        self.cur_tsc_offset = 0
        self.cur_tsc_generation = 0
        self.use_master_clock = False
        self.master_kernel_ns = 0
        self.master_cycle_now = 0
        self.boot_vcpu_runs_old_kvmclock = False
        # kvm->arch.backwards_tsc_observed: per VM in 4.13 and 6.18 (a global static bool
        # only before 4.5); set for every VM by kvm_arch_enable_virtualization_cpu when a
        # host TSC went backwards (suspend/resume), never cleared
        self.backwards_tsc_observed = False
        self.pm_notifier: Callable[[int, Any], int] | None = None  # kvm->pm_notifier (5.14+)
        self.tsc_write_lock = SpinLock(f"{name}.tsc_write_lock")
        # the seed (patch 09) renamed pvclock_gtod_sync_lock when it dropped the shadow copy
        lock_name = (
            "masterclock_lock"
            if module.cfg.kvm_host_clock == "timekeeper"
            else "pvclock_gtod_sync_lock"
        )
        self.masterclock_lock = SpinLock(f"{name}.{lock_name}")
        # 5.16+ (switch masterclock_sync=seqcount): kvm->arch.pvclock_sc, written under
        # tsc_write_lock by kvm_start/end_pvclock_update; readers retry.
        self.pvclock_sc = _k.SeqCount()
        #: Test hook: called inside every reader of the master pair after it read the values
        #: and before it checks them (seqcount: before read_seqcount_retry; spinlock: with the
        #: lock held), the only way a writer can overlap a reader in this model.
        self.pvclock_read_interleave: Callable[[], None] | None = None
        self.wall_clock = 0  # kvm->arch.wall_clock: gpa of MSR_KVM_WALL_CLOCK(_NEW)
        self._sync_work: Any = None  # kvmclock_sync_work (pending World event)
        self._update_work_pending = False
        self.counters: collections.Counter[str] = Counters()
        #: ``[t_ns, on]`` at each change of ``use_master_clock`` (the first
        #: ``kvmclock.limits.TIMELINE_CAP`` changes; ``timeline_dropped`` counts the later
        #: ones by timeline name)
        self.masterclock_timeline: list[list[Any]] = []
        #: ``[t_ns, stable]`` at each change of "every written record is stable" (same bound)
        self.pvclock_stable_timeline: list[list[Any]] = []
        self.timeline_dropped: collections.Counter[str] = collections.Counter()
        self._masterclock_state: bool | None = None  # the last state of each timeline
        self._pvclock_stable_state: bool | None = None
        #: the decision log of the TSC-sync and masterclock rules (:class:`TscDecision`): the
        #: most recent ``kvmclock.limits.TSC_DECISIONS_CAP`` (a ring);
        #: ``tsc_decisions_logged`` counts every decision appended
        self.tsc_decisions: collections.deque[TscDecision] = collections.deque(
            maxlen=limits.TSC_DECISIONS_CAP
        )
        self.tsc_decisions_logged = 0
        self.destroyed = False
        from kvmclock.kvm.vm import VirtualMachine

        self.machine: VirtualMachine = VirtualMachine(
            self, memory_size=memory_size, features=features
        )

    # kernel name alias of the profile's lock
    @property
    def pvclock_gtod_sync_lock(self) -> SpinLock:
        """The 2017 name of ``masterclock_lock`` (the seed patch renamed it)."""
        return self.masterclock_lock

    @property
    def kernel(self) -> Kernel:
        """The host kernel running this VM."""
        return self.module.kernel

    def _timeline_change(self, name: str, state: bool) -> None:
        """Append ``[now, state]`` to timeline ``name`` unless it holds TIMELINE_CAP changes
        (then the change is counted in ``timeline_dropped[name]``)."""
        tl: list[list[Any]] = getattr(self, name)
        if len(tl) < limits.TIMELINE_CAP:
            tl.append([self.module.world.now_ns, state])
        else:
            self.timeline_dropped[name] += 1

    def _record_masterclock(self) -> None:
        if self._masterclock_state is None or self._masterclock_state != self.use_master_clock:
            self._masterclock_state = self.use_master_clock
            self._timeline_change("masterclock_timeline", self.use_master_clock)
            self.module.moment(
                f"{self.name}: masterclock {'on' if self.use_master_clock else 'off'}"
            )

    def _record_pvclock_stable(self) -> None:
        """All enabled records carry PVCLOCK_TSC_STABLE_BIT (the guest level's "pvclock stable")."""
        written = False
        stable = True
        for v in self.vcpus:  # hot: after every record write
            if v.pv_time_enabled and v.hv_clock.version:
                written = True
                if not v.hv_clock.flags & _PV_STABLE:
                    stable = False
                    break
        if not written:
            return
        if self._pvclock_stable_state is None or self._pvclock_stable_state != stable:
            self._pvclock_stable_state = stable
            self._timeline_change("pvclock_stable_timeline", stable)
            self.module.moment(
                f"VM {self.name}: pvclock stable bit {'set' if stable else 'cleared'}"
            )

    # -- vCPUs -------------------------------------------------------------------------------------
    def create_vcpu(self, affinity: int | None = None) -> Vcpu:
        """``KVM_CREATE_VCPU`` on the host's ioctl CPU: setup, ``online_vcpus++``, then
        ``kvm_arch_vcpu_postcreate`` (host-initiated MSR_IA32_TSC write of 0)."""
        hk = self.kernel
        ncpu = len(hk.machine.cpus)
        if affinity is None:
            affinity = len(self.vcpus) % ncpu
        if isinstance(affinity, bool) or not isinstance(affinity, int) or not 0 <= affinity < ncpu:
            raise ValueError(f"affinity={affinity!r}: the host has {count_ids(ncpu, 'CPU')}")
        vcpu = Vcpu(self, len(self.vcpus), affinity)

        def create() -> None:
            m = self.module
            # kvm_arch_vcpu_init: kvm_set_tsc_khz(vcpu, max_tsc_khz) (or the user's kHz); the
            # result is ignored (a kHz refused here was refused by create_vm already, unless it
            # came from the VM ioctl, which the kernel does not check against the hardware)
            host_khz = hk.machine.cpus[hk.current_cpu].tsc_khz
            if m.kvm_set_tsc_khz(vcpu, self.user_tsc_khz or host_khz, host_khz):
                m.moment(
                    f"{self.name}: vcpu {vcpu.vcpu_id}: kvm_set_tsc_khz({self.user_tsc_khz}) "
                    "failed at creation (ignored, as the kernel does)"
                )
            # kvm_arch_vcpu_setup: vcpu_load; reset; vcpu_put
            m.kvm_arch_vcpu_load(vcpu, hk.current_cpu)
            m.kvm_arch_vcpu_put(vcpu)
            self.vcpus.append(vcpu)
            self.machine.add_cpu(vcpu)
            self.online_vcpus += 1
            # kvm_arch_vcpu_postcreate: vcpu_load; kvm_synchronize_tsc(vcpu, NULL) (v4.13: a
            # host-initiated MSR_IA32_TSC write of 0, the same 0 without a user value); put
            m.kvm_arch_vcpu_load(vcpu, hk.current_cpu)
            m.kvm_synchronize_tsc(vcpu, None)
            m.kvm_arch_vcpu_put(vcpu)
            # ... then schedule kvmclock_sync_work KVMCLOCK_SYNC_PERIOD later
            m.schedule_kvmclock_sync(self)

        hk.run_on_cpu(self.module.ioctl_cpu, create)
        return vcpu

    # -- ioctls ------------------------------------------------------------------------------------
    def get_clock(self) -> KvmClockData:
        """``KVM_GET_CLOCK`` on the ioctl CPU (x86.c ``kvm_vm_ioctl_get_clock``): the
        ``struct kvm_clock_data`` of :meth:`KvmModule.get_kvmclock` (``clock`` in ns).

        Without switch ``kvm_clock_realtime`` (4.13): ``clock`` = ``get_kvmclock_ns`` and
        flags = KVM_CLOCK_TSC_STABLE iff masterclock.  With it (5.16+): while masterclock is on,
        ``realtime`` and ``host_tsc`` from one host TSC read and flags
        REALTIME|HOST_TSC|TSC_STABLE, ``clock`` from that same TSC; otherwise flags 0.
        """
        m = self.module
        return self.kernel.run_on_cpu(m.ioctl_cpu, lambda: m.get_kvmclock(self))

    def set_clock(self, clock: int, flags: int = 0, realtime: int = 0) -> None:
        """``KVM_SET_CLOCK`` (``clock``, ``realtime`` in ns; ``flags`` a u32).

        Without switch ``kvm_clock_realtime`` (4.13): only ``flags=0`` (anything else is the
        kernel's -EINVAL: ``ValueError``, naming the profile when KVM_CLOCK_REALTIME is asked
        for); ``kvm_gen_update_masterclock``, then ``kvmclock_offset += clock -
        get_kvmclock_ns``, CLOCK_UPDATE to all vCPUs.  With it (5.16+,
        ``kvm_vm_ioctl_set_clock``): any subset of KVM_CLOCK_VALID_FLAGS; a full masterclock
        recompute; only REALTIME acts (``clock += now_real - realtime`` when positive, never
        backwards); ``kvmclock_offset = clock - (master_kernel_ns with masterclock, else
        get_kvmclock_base_ns)``; CLOCK_UPDATE to all vCPUs.
        """
        for name, v, bits in (
            ("clock", clock, 64),
            ("realtime", realtime, 64),
            ("flags", flags, 32),
        ):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if not 0 <= v < (1 << bits):
                raise ValueError(f"{name}={v} out of range (0..2**{bits}-1)")
        hk = self.kernel
        m = self.module
        cfg = m.cfg
        if not cfg.kvm_clock_realtime:
            if flags & KVM_CLOCK_REALTIME:
                raise ValueError(
                    f"flags={flags:#x}: profile {cfg.name} (Linux {cfg.kernel}) refuses "
                    "KVM_CLOCK_REALTIME: KVM_CLOCK_REALTIME needs Linux 5.16 "
                    "(switch kvm_clock_realtime)"
                )
            if flags:
                raise ValueError(
                    f"flags={flags:#x} invalid: profile {cfg.name} (Linux {cfg.kernel}) "
                    "accepts only flags 0 (-EINVAL)"
                )
        elif flags & ~KVM_CLOCK_VALID_FLAGS:
            raise ValueError(
                f"flags={flags:#x} invalid: any subset of KVM_CLOCK_VALID_FLAGS "
                f"{KVM_CLOCK_VALID_FLAGS:#x} (TSC_STABLE {KVM_CLOCK_TSC_STABLE:#x}, "
                f"REALTIME {KVM_CLOCK_REALTIME:#x}, HOST_TSC {KVM_CLOCK_HOST_TSC:#x})"
            )

        def body_2017() -> None:
            m.kvm_gen_update_masterclock(self, owner="ioctl")
            now_ns = m.get_kvmclock_ns(self)
            self.kvmclock_offset += clock - now_ns
            for v in self.vcpus:
                v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)

        def new_offset() -> None:
            data_clock = clock
            if flags & KVM_CLOCK_REALTIME:
                now_real_ns = hk.timekeeper.ktime_get_real_ns()
                if now_real_ns > realtime:  # avoid stepping the kvmclock backwards
                    data_clock += now_real_ns - realtime
            base = self.master_kernel_ns if self.use_master_clock else m.get_kvmclock_base_ns()
            self.kvmclock_offset = data_clock - base

        def body_516() -> None:
            owner = "ioctl"
            if cfg.masterclock_sync == "seqcount":
                m.kvm_start_pvclock_update(self, owner)
                m.update_masterclock(self)
                new_offset()
                m.kvm_end_pvclock_update(self, owner)
                return
            # 5.16 c68dc1b577ea before the seqcount: update, then the offset under the lock
            m.kvm_gen_update_masterclock(self, owner)
            self.masterclock_lock.acquire(owner)
            try:
                new_offset()
            finally:
                self.masterclock_lock.release(owner)
            for v in self.vcpus:
                v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)

        hk.run_on_cpu(m.ioctl_cpu, body_516 if cfg.kvm_clock_realtime else body_2017)
        m.moment(f"VM {self.name}: KVM_SET_CLOCK clock={clock} flags={flags:#x}")

    def write_tsc(self, vcpu_id: int, value: int, *, host_initiated: bool = True) -> None:
        """A userspace ``KVM_SET_MSRS`` of MSR_IA32_TSC (host-initiated) on vCPU ``vcpu_id``:
        the vCPU thread loads the vCPU on its host CPU and runs ``kvm_set_msr_common``'s
        MSR_IA32_TSC branch (``kvm_write_tsc`` in v4.13, ``kvm_synchronize_tsc`` since 5.10;
        ``host_initiated=False`` takes the guest-write branch)."""
        vcpu = self._vcpu(vcpu_id)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MASK:
            raise ValueError(f"value={value!r} out of range (0..2**64-1)")
        m = self.module

        def body() -> None:
            m.kvm_arch_vcpu_load(vcpu, self.kernel.current_cpu)
            m.kvm_set_msr_common(vcpu, MSR_IA32_TSC, value, host_initiated=host_initiated)
            m.kvm_arch_vcpu_put(vcpu)

        self.kernel.run_on_cpu(vcpu.affinity, body)

    def vcpu_ioctl(self, vcpu_id: int, fn: Callable[[], T]) -> T:
        """A vCPU ioctl that does not enter the guest: the vCPU thread (on its host CPU
        ``affinity``) loads the vCPU, runs the handler ``fn``, puts the vCPU (kvm_main.c
        ``kvm_vcpu_ioctl`` / x86.c ``kvm_arch_vcpu_ioctl``: ``vcpu_load`` .. ``vcpu_put``)."""
        vcpu = self._vcpu(vcpu_id)
        m = self.module

        def body() -> T:
            m.kvm_arch_vcpu_load(vcpu, self.kernel.current_cpu)
            try:
                return fn()
            finally:
                m.kvm_arch_vcpu_put(vcpu)

        return self.kernel.run_on_cpu(vcpu.affinity, body)

    def set_msr(self, vcpu_id: int, msr: int, data: int) -> None:
        """Userspace ``KVM_SET_MSRS`` of one clock MSR on vCPU ``vcpu_id``: a host-initiated
        ``kvm_set_msr_common`` inside ``vcpu_ioctl`` (x86.c ``do_set_msr``)."""
        vcpu = self._vcpu(vcpu_id)
        if isinstance(data, bool) or not isinstance(data, int) or not 0 <= data <= U64_MASK:
            raise ValueError(f"data={data!r} out of range (0..2**64-1)")
        m = self.module
        self.vcpu_ioctl(
            vcpu_id, lambda: m.kvm_set_msr_common(vcpu, msr, data, host_initiated=True)
        )

    def get_msr(self, vcpu_id: int, msr: int) -> int:
        """Userspace ``KVM_GET_MSRS`` of one clock MSR on vCPU ``vcpu_id`` (x86.c
        ``do_get_msr`` -> ``kvm_get_msr_common``, host-initiated, inside ``vcpu_ioctl``).

        MSR_IA32_TSC: ``kvm_scale_tsc(rdtsc(), l1 ratio) + l1_tsc_offset`` (u64 cycles) on
        the vCPU thread's host CPU: a host-initiated read always returns L1's TSC (5.x+ and
        6.18; 4.13 read ``tsc_offset`` and the vCPU ratio, the same values here since no
        nested TSC state is modelled).  MSR_KVM_SYSTEM_TIME(_NEW): ``vcpu->arch.time``;
        MSR_KVM_WALL_CLOCK(_NEW): ``kvm->arch.wall_clock``.  Any other MSR: ``ValueError``.
        """
        vcpu = self._vcpu(vcpu_id)
        m = self.module
        if msr == MSR_IA32_TSC:
            return self.vcpu_ioctl(vcpu_id, lambda: m.kvm_read_l1_tsc(vcpu, m.rdtsc()))
        if msr in (MSR_KVM_SYSTEM_TIME, MSR_KVM_SYSTEM_TIME_NEW):
            return self.vcpu_ioctl(vcpu_id, lambda: vcpu.time)
        if msr in (MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW):
            return self.vcpu_ioctl(vcpu_id, lambda: self.wall_clock)
        raise ValueError(
            f"msr={msr!r} not modelled for KVM_GET_MSRS (clock MSRs: MSR_IA32_TSC "
            f"{MSR_IA32_TSC:#x}, MSR_KVM_SYSTEM_TIME(_NEW) {MSR_KVM_SYSTEM_TIME:#x}/"
            f"{MSR_KVM_SYSTEM_TIME_NEW:#x}, MSR_KVM_WALL_CLOCK(_NEW) {MSR_KVM_WALL_CLOCK:#x}/"
            f"{MSR_KVM_WALL_CLOCK_NEW:#x})"
        )

    def destroy(self, what: str | None = None) -> None:
        """The VMM closes the VM's file descriptors (``kvm_destroy_vm``): off ``vm_list``
        under ``kvm_lock``, the delayed works (``kvmclock_sync_work``, the update work)
        cancelled as ``kvm_arch_sync_events`` does, the machine stopped for good.  ``what``
        names the VM in the key moment when another VM of its name exists (a restore's
        old VM: ``"the VM it was restored from, on host h"``); default ``"VM"``."""
        if self.destroyed:
            raise ValueError(f"VM {self.name} already destroyed")
        m = self.module
        m.kvm_lock.acquire("destroy_vm")
        try:
            m.vm_list.remove(self)
            m.kvm_destroy_pm_notifier(self)
        finally:
            m.kvm_lock.release("destroy_vm")
        if self._sync_work is not None:
            self._sync_work.cancel()
            self._sync_work = None
        self.destroyed = True
        self.machine.paused = True
        m.moment(f"{self.name}: {what or 'VM'} destroyed")

    def kvmclock_ctrl(self, vcpu_id: int) -> None:
        """``KVM_KVMCLOCK_CTRL`` on vCPU ``vcpu_id``: ``kvm_set_guest_paused`` inside
        ``vcpu_ioctl``; ``ValueError`` (the kernel's -EINVAL) when kvmclock is not enabled."""
        vcpu = self._vcpu(vcpu_id)
        self.vcpu_ioctl(vcpu_id, lambda: self.module.kvm_set_guest_paused(vcpu))

    def set_vm_tsc_khz(self, khz: int) -> None:
        """``KVM_SET_TSC_KHZ`` on the VM (Linux 5.18+, switch ``vm_tsc_khz``; x86.c
        ``kvm_arch_vm_ioctl``): the frequency in kHz of vCPUs created after it (0 = the host's
        ``tsc_khz``).  ``ValueError`` (the kernel's -EINVAL) once a vCPU exists, or with TSC
        scaling hardware for ``khz >= max_guest_tsc_khz``.  The kernel does not check here
        that the hardware can run the frequency; a vCPU created with one it cannot run keeps
        the host rate (``kvm_set_tsc_khz`` fails and its result is ignored).  Refused under a
        profile without the VM ioctl."""
        m = self.module
        m.require("vm_tsc_khz", "KVM_SET_TSC_KHZ as a VM ioctl", "5.18")
        khz = _check_u32("khz", khz)
        if m.has_tsc_control and khz >= m.max_guest_tsc_khz():
            raise ValueError(
                f"khz={khz} invalid: must be below max_guest_tsc_khz={m.max_guest_tsc_khz()} "
                f"(host {m.host_tsc_khz()} kHz, {m.tsc_scaling} TSC scaling) (-EINVAL)"
            )
        if khz == 0:
            khz = m.host_tsc_khz()
        if self.vcpus:
            raise ValueError(
                f"{self.name}: KVM_SET_TSC_KHZ on the VM after vCPUs were created (-EINVAL)"
            )
        self.user_tsc_khz = khz
        self.tsc_khz_from_vm_ioctl = True
        m.moment(f"VM {self.name}: KVM_SET_TSC_KHZ (VM) {khz} kHz")

    def get_vm_tsc_khz(self) -> int:
        """``KVM_GET_TSC_KHZ`` on the VM (5.18+, switch ``vm_tsc_khz``): the default kHz of new
        vCPUs (``kvm->arch.default_tsc_khz``: the VM ioctl's value, else the host's)."""
        m = self.module
        m.require("vm_tsc_khz", "KVM_GET_TSC_KHZ as a VM ioctl", "5.18")
        return self.user_tsc_khz or m.host_tsc_khz()

    def set_vcpu_tsc_khz(self, vcpu_id: int, khz: int) -> None:
        """``KVM_SET_TSC_KHZ`` on vCPU ``vcpu_id`` (every profile; x86.c
        ``kvm_arch_vcpu_ioctl``): 0 means the host's ``tsc_khz``; ``ValueError`` (-EINVAL) for
        ``khz >= max_guest_tsc_khz`` with TSC scaling hardware, or when ``kvm_set_tsc_khz``
        fails (no scaling hardware and a kHz below the tolerance band; a ratio of 0 or above
        the vendor maximum).  The TSC offset is kept: the guest TSC continues at the new rate
        from ``offset + scale(host TSC)``, so it jumps unless userspace writes the TSC next."""
        vcpu = self._vcpu(vcpu_id)
        m = self.module
        khz = _check_u32("khz", khz)
        if m.has_tsc_control and khz >= m.max_guest_tsc_khz():
            raise ValueError(
                f"khz={khz} invalid: must be below max_guest_tsc_khz={m.max_guest_tsc_khz()} "
                f"(host {m.host_tsc_khz()} kHz, {m.tsc_scaling} TSC scaling) (-EINVAL)"
            )
        host_khz = m.host_tsc_khz()
        user = khz or host_khz
        r = self.vcpu_ioctl(vcpu_id, lambda: m.kvm_set_tsc_khz(vcpu, user, host_khz))
        if r:
            raise ValueError(
                f"{self.name} vcpu {vcpu_id}: KVM_SET_TSC_KHZ {user} kHz refused (-EINVAL): "
                + m.tsc_khz_refusal(user, host_khz)
            )

    def get_vcpu_tsc_khz(self, vcpu_id: int) -> int:
        """``KVM_GET_TSC_KHZ`` on vCPU ``vcpu_id``: its ``virtual_tsc_khz`` (kHz)."""
        return self._vcpu(vcpu_id).virtual_tsc_khz

    def get_tsc_offset(self, vcpu_id: int) -> int:
        """``KVM_GET_DEVICE_ATTR`` group KVM_VCPU_TSC_CTRL attr KVM_VCPU_TSC_OFFSET on vCPU
        ``vcpu_id`` (5.16+, switch ``vcpu_tsc_offset_attr``; x86.c ``kvm_arch_tsc_get_attr``):
        the L1 TSC offset, u64 cycles."""
        vcpu = self._vcpu(vcpu_id)
        m = self.module
        m.require("vcpu_tsc_offset_attr", "the KVM_VCPU_TSC_OFFSET vCPU attribute", "5.16")
        return self.vcpu_ioctl(vcpu_id, lambda: vcpu.l1_tsc_offset)

    def set_tsc_offset(self, vcpu_id: int, offset: int) -> None:
        """``KVM_SET_DEVICE_ATTR`` KVM_VCPU_TSC_OFFSET on vCPU ``vcpu_id`` (5.16+, switch
        ``vcpu_tsc_offset_attr``; x86.c ``kvm_arch_tsc_set_attr``): the vCPU thread runs
        ``kvm_arch_tsc_set_attr`` (``offset`` u64 cycles)."""
        vcpu = self._vcpu(vcpu_id)
        m = self.module
        m.require("vcpu_tsc_offset_attr", "the KVM_VCPU_TSC_OFFSET vCPU attribute", "5.16")
        offset = _check_u64("offset", offset)
        self.vcpu_ioctl(vcpu_id, lambda: m.kvm_arch_tsc_set_attr(vcpu, offset))

    def migrate_vcpu(self, vcpu_id: int, host_cpu: int) -> None:
        """Move vCPU ``vcpu_id``'s thread to ``host_cpu`` (takes effect at its next load)."""
        vcpu = self._vcpu(vcpu_id)
        ncpu = len(self.kernel.machine.cpus)
        if isinstance(host_cpu, bool) or not isinstance(host_cpu, int) or not 0 <= host_cpu < ncpu:
            raise ValueError(f"host_cpu={host_cpu!r}: the host has {count_ids(ncpu, 'CPU')}")
        vcpu.affinity = host_cpu

    def _vcpu(self, vcpu_id: int) -> Vcpu:
        if (
            isinstance(vcpu_id, bool)
            or not isinstance(vcpu_id, int)
            or not 0 <= vcpu_id < len(self.vcpus)
        ):
            have = count_ids(len(self.vcpus), "vCPU")
            raise ValueError(f"vcpu_id={vcpu_id!r}: the VM has {have}")
        return self.vcpus[vcpu_id]

    # -- metrics helper ----------------------------------------------------------------------------
    def clock_definitions(self, vcpu_id: int = 0) -> tuple[int, int, int] | None:
        """``(A, B, C)`` in ns: the three KVM clock definitions (David Woodhouse's naming,
        2024) at this instant, computed on the host CPU of vCPU ``vcpu_id`` from one host TSC
        read; None without masterclock or without a written record.

        A = ``get_kvmclock_base_ns()`` (switch ``kvmclock_base``: CLOCK_BOOTTIME or
        CLOCK_MONOTONIC_RAW + offs_boot) + ``kvmclock_offset``: what the next masterclock
        update re-anchors the guest to.  B = what the guest computes: its record (the master
        pair converted to guest TSC units) read at its TSC (``kvm_read_l1_tsc``: offset plus
        the scaled host TSC) with the advertised mul/shift, without the guest's last_value
        clamp.  C = the master pair read at the host TSC with the mul/shift of this CPU's
        ``get_cpu_tsc_khz()`` (``__get_kvmclock``, KVM_GET_CLOCK's ``clock``).  A - B is the
        step a masterclock update taken now makes the guest clock do (positive = forward);
        :mod:`kvmclock.drift` predicts all three from the frequencies alone.
        """
        vcpu = self._vcpu(vcpu_id)
        if not self.use_master_clock or not vcpu.pv_time_enabled or not vcpu.hv_clock.version:
            return None
        hk = self.kernel
        m = self.module

        def body() -> tuple[int, int, int]:
            host_tsc = m.rdtsc()
            a = (m.get_kvmclock_base_ns() + self.kvmclock_offset) & U64_MASK
            guest_tsc = m.kvm_read_l1_tsc(vcpu, host_tsc)
            b = int(_k.pvclock_read(self.machine.memory, guest_tsc, vcpu.pv_time_gpa)[0])
            khz = m.cpu_tsc_khz()  # get_cpu_tsc_khz() on the CPU that read host_tsc
            shift, mul = _k.get_time_scale(scaled_hz=NSEC_PER_SEC, base_hz=khz * 1000)
            info = _k.PvclockVcpuTimeInfo(
                tsc_timestamp=self.master_cycle_now,
                system_time=(self.master_kernel_ns + self.kvmclock_offset) & U64_MASK,
                tsc_to_system_mul=int(mul),
                tsc_shift=int(shift),
            )
            c = int(info.read_cycles(host_tsc))
            return a, b, c

        return hk.run_on_cpu(vcpu.affinity, body)

    def __repr__(self) -> str:
        return (
            f"Kvm(name={self.name!r}, vcpus={len(self.vcpus)}, "
            f"use_master_clock={self.use_master_clock}, "
            f"gen={self.cur_tsc_generation}, matched={self.nr_vcpus_matched_tsc})"
        )


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------
class KvmModule:
    """KVM loaded into ``kernel`` (``kvm_arch_init``): ``vm_list``, ``kvm_lock``, the notifier.

    gtod: ``pvclock_gtod_notify`` on ``kernel.pvclock_gtod_chain`` (registration calls it
    once); series: ``process_clocksource_change`` on ``kernel.clocksource_changes_chain``
    (registration fires it once).  ``fault="patch09-missing-do"`` makes the two patch-09 read
    loops behave as the seed's code does (series only).
    """

    def __init__(
        self,
        kernel: Kernel,
        *,
        fault: str | None = None,
        spin_limit: int = DEFAULT_SPIN_LIMIT,
        ioctl_cpu: int = 0,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault={fault!r} invalid; choose None or one of {', '.join(FAULTS)}")
        if isinstance(spin_limit, bool) or not isinstance(spin_limit, int) or spin_limit < 1:
            raise ValueError(f"spin_limit={spin_limit!r} must be an int >= 1")
        self.kernel = kernel
        self.world = kernel.world
        self.profile = kernel.profile
        self.cfg = kernel.cfg
        """The host kernel's profile: the behaviour switches KVM asks (kvmclock.profiles)."""
        self.level = kernel.level
        self.fault = fault
        self.spin_limit = spin_limit
        self.ioctl_cpu = ioctl_cpu
        tsc_scaling = getattr(kernel.machine, "tsc_scaling", "vmx")
        if tsc_scaling not in TSC_SCALING_CAPS:
            raise ValueError(
                f"machine tsc_scaling={tsc_scaling!r} invalid; choose one of "
                + ", ".join(TSC_SCALING_CAPS)
            )
        self.tsc_scaling: str = tsc_scaling
        """The host's TSC-scaling hardware (``vmx``, ``svm`` or ``none``), from the machine."""
        caps = TSC_SCALING_CAPS[tsc_scaling]
        self.has_tsc_control: bool = caps[0]
        self.tsc_scaling_ratio_frac_bits: int = caps[1]
        self.max_tsc_scaling_ratio: int = caps[2]
        self.default_tsc_scaling_ratio: int = 1 << caps[1]
        self.vm_list: list[Kvm] = []
        self.kvm_lock = SpinLock(f"{kernel.name}.kvm_lock")
        self.counters: collections.Counter[str] = Counters()
        self.trace_records: list[tuple[int, int, str, int, int, str, str]] = []
        self.trace_enabled = True
        #: key moments ``[t_ns, level, text]``: the first ``kvmclock.limits.MOMENTS_CAP``
        #: (``moments_dropped`` counts the rest; every one is in the world log)
        self.moments: list[list[Any]] = []
        self.moments_dropped = 0
        self.kvm_guest_has_master_clock = 0  # atomic_t (gtod)
        self.pvclock_gtod_data = PvclockGtodData()
        self._next_pid = 1000 * (kernel.level + 1)
        self._cur_pid = self._next_pid
        self._gtod_work: Any = None
        #: module parameter ``kvmclock_periodic_sync`` (0444, default on since 3.14): every
        #: VM re-runs its kvmclock update work every KVMCLOCK_SYNC_PERIOD (300 s)
        self.kvmclock_periodic_sync = True
        if self.cfg.kvm_host_clock == "pvclock_gtod_copy":
            kernel.pvclock_gtod_register_notifier(self.pvclock_gtod_notify)
        else:
            kernel.clocksource_changes_register_notifier(self.process_clocksource_change)

    # -- small helpers -----------------------------------------------------------------------------
    def moment(self, text: str) -> None:
        """A key moment for the run's timeline (``[t_ns, level, text]``, the first
        ``kvmclock.limits.MOMENTS_CAP`` kept in :attr:`moments`), also in the world log."""
        if len(self.moments) < limits.MOMENTS_CAP:
            self.moments.append([self.world.now_ns, self.level, text])
        else:
            self.moments_dropped += 1
        self.world.log("moment", level=self.level, text=text)

    def trace(self, event: str, fields: Callable[[], str]) -> None:
        """Record one trace event as ``(t_ns, level, comm, pid, cpu, event, fields())`` and
        count it (``counters["trace.<event>"]``).  ``fields`` builds the event's text; it is
        called only while ``trace_enabled`` (formatting every event of a long run that keeps
        no trace would cost more than the event itself)."""
        if self.trace_enabled:
            self.trace_records.append(
                (
                    self.world.now_ns,
                    self.level,
                    "qemu-system-x86",
                    self._cur_pid,
                    self.kernel.current_cpu,
                    event,
                    fields(),
                )
            )
        key = _TRACE_COUNTER_KEYS.get(event)  # hot: the key is built once per event name
        if key is None:
            key = _TRACE_COUNTER_KEYS[event] = f"trace.{event}"
        self.counters[key] += 1

    def rdtsc(self) -> int:
        """``rdtsc()`` on the CPU the host kernel code now runs on."""
        k = self.kernel
        return k.machine.cpus[k.current_cpu].read_tsc()

    def cpu_tsc_khz(self) -> int:
        """``__this_cpu_read(cpu_tsc_khz)`` (CONSTANT_TSC: the calibrated ``tsc_khz``)."""
        k = self.kernel
        return k.machine.cpus[k.current_cpu].tsc_khz

    def host_tsc_khz(self) -> int:
        """The host kernel's global ``tsc_khz`` (kHz): the ioctl CPU's calibrated frequency."""
        return int(self.kernel.machine.cpus[self.ioctl_cpu].tsc_khz)

    def max_guest_tsc_khz(self) -> int:
        """``kvm_caps.max_guest_tsc_khz`` (kHz): with TSC scaling hardware
        ``min(0x7fffffff, __scale_tsc(max_tsc_scaling_ratio, tsc_khz))``; 0 without (x86.c
        ``kvm_x86_vendor_init``; the ioctls test it only with ``has_tsc_control``)."""
        if not self.has_tsc_control:
            return 0
        scaled = int(
            _k.mul_u64_u64_shr(
                self.host_tsc_khz(), self.max_tsc_scaling_ratio, self.tsc_scaling_ratio_frac_bits
            )
        )
        return min(MAX_GUEST_TSC_KHZ_CAP, scaled)

    def require(self, switch: str, what: str, version: str) -> None:
        """``ValueError`` naming the profile, its kernel and ``version`` unless ``switch`` is on
        (an ioctl or attribute the modelled kernel does not have)."""
        if not self.cfg[switch]:
            raise ValueError(
                f"{what} does not exist in profile {self.cfg.name} (kernel {self.cfg.kernel}): "
                f"it came in Linux {version} (switch {switch})"
            )

    def tsc_khz_refusal(self, user_tsc_khz: int, host_tsc_khz: int) -> str:
        """Why ``kvm_set_tsc_khz(user_tsc_khz)`` fails on this host (for error messages)."""
        if not self.has_tsc_control:
            return (
                f"host without TSC scaling (tsc_scaling=none) cannot run a guest slower than "
                f"its {host_tsc_khz} kHz outside the {TSC_TOLERANCE_PPM} ppm tolerance "
                "(set_tsc_khz: 'user requested TSC rate below hardware speed'); only a faster "
                "guest can run, with catch-up"
            )
        return (
            f"TSC scaling ratio for {user_tsc_khz} kHz on a {host_tsc_khz} kHz host is 0 or "
            f">= max_tsc_scaling_ratio {self.max_tsc_scaling_ratio:#x} ({self.tsc_scaling})"
        )

    # -- VM creation -------------------------------------------------------------------------------
    def create_vm(
        self,
        *,
        name: str | None = None,
        memory_size: int = 1 << 16,
        tsc_khz: int | None = None,
        features: set[str] | frozenset[str] | None = None,
    ) -> Kvm:
        """``KVM_CREATE_VM``: ``kvm_arch_init_vm`` (kvmclock_offset = -get_kvmclock_base_ns(),
        ``update_masterclock``) on the ioctl CPU, then add to ``vm_list`` under ``kvm_lock``."""
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 64:
            raise ValueError(f"memory_size={memory_size!r} must be an int >= 64 (bytes)")
        if tsc_khz is not None and (
            isinstance(tsc_khz, bool)
            or not isinstance(tsc_khz, int)
            or not 1 <= tsc_khz <= U32_MASK
        ):
            raise ValueError(
                f"tsc_khz={tsc_khz!r} out of range (1..2**32-1 kHz, or None = host kHz)"
            )
        if tsc_khz is not None and self.set_tsc_khz_plan(tsc_khz, self.host_tsc_khz())[0] == (
            "refused"
        ):
            # the per-vCPU KVM_SET_TSC_KHZ a VMM issues for this would fail with -EINVAL
            raise ValueError(
                f"tsc_khz={tsc_khz} refused (KVM_SET_TSC_KHZ -EINVAL): "
                + self.tsc_khz_refusal(tsc_khz, self.host_tsc_khz())
            )
        # QEMU's default CPU model: kvm-clock with the stable bit, and constant_tsc, but no
        # invariant TSC (nonstop_tsc: QEMU's opt-in "invtsc", which blocks migration), so a
        # 5.1+ guest keeps kvm-clock at rating 400; pass features to expose "nonstop_tsc"
        feats = (
            {"kvmclock", "kvmclock_stable_bit", "constant_tsc"}
            if features is None
            else set(features)
        )
        vm_name = name if name is not None else f"L{self.level + 1}"
        pid = self._next_pid
        self._next_pid += 100
        kvm = Kvm(self, vm_name, memory_size=memory_size, tsc_khz=tsc_khz, features=feats, pid=pid)

        def init() -> None:
            self._cur_pid = pid
            kvm.kvmclock_offset = -self.get_kvmclock_base_ns()
            # 4.13 masterclock_lock (see the departures); 5.16+ tsc_write_lock (x86.c
            # kvm_arch_init_vm: raw_spin_lock_irqsave(&kvm->arch.tsc_write_lock))
            lock = (
                kvm.tsc_write_lock
                if self.cfg.masterclock_sync == "seqcount"
                else kvm.masterclock_lock
            )
            lock.acquire("ioctl")
            try:
                self.update_masterclock(kvm)
            finally:
                lock.release("ioctl")

        self.kernel.run_on_cpu(self.ioctl_cpu, init)
        self.kvm_lock.acquire("create_vm")
        self.vm_list.append(kvm)
        if self.cfg.pm_notifier:
            self.kvm_init_pm_notifier(kvm)
        self.kvm_lock.release("create_vm")
        self.moment(f"{vm_name}: VM created")
        return kvm

    # -- TSC ---------------------------------------------------------------------------------------
    def set_tsc_khz_plan(self, user_tsc_khz: int, host_tsc_khz: int) -> tuple[str, int]:
        """What ``kvm_set_tsc_khz(user_tsc_khz)`` does on this host (kHz): ``("default", r)``
        within ``tsc_tolerance_ppm`` of the host, ``("ratio", r)`` with TSC scaling hardware,
        ``("catchup", r)`` for a faster guest without it, ``("refused", r)`` where the kernel
        returns -1 (user 0; no scaling hardware and a slower guest; ratio 0 or >= the vendor
        maximum); ``r`` is the ratio the vCPU ends with (unchanged = the default here)."""
        default = self.default_tsc_scaling_ratio
        if user_tsc_khz == 0:
            return "refused", default
        lo = int(_k.adjust_tsc_khz(host_tsc_khz, -TSC_TOLERANCE_PPM))
        hi = int(_k.adjust_tsc_khz(host_tsc_khz, TSC_TOLERANCE_PPM))
        if not (user_tsc_khz < lo or user_tsc_khz > hi):
            return "default", default
        if not self.has_tsc_control:
            return ("catchup" if user_tsc_khz > host_tsc_khz else "refused"), default
        ratio = int(
            _k.tsc_scaling_ratio(user_tsc_khz, host_tsc_khz, self.tsc_scaling_ratio_frac_bits)
        )
        if ratio == 0 or ratio >= self.max_tsc_scaling_ratio:
            return "refused", default
        return "ratio", ratio

    def kvm_set_tsc_khz(self, vcpu: Vcpu, user_tsc_khz: int, host_tsc_khz: int) -> int:
        """x86.c ``kvm_set_tsc_khz`` + ``set_tsc_khz`` (kHz): virtual_tsc_mult/shift =
        kvm_get_time_scale(user kHz * 1000, NSEC_PER_SEC) and ``virtual_tsc_khz``; then within
        ``tsc_tolerance_ppm`` (250) of the host the default ratio; with TSC scaling hardware
        (``vmx`` 48 / ``svm`` 32 fraction bits) ratio = 2**frac * user / host, -1 if 0 or >=
        the vendor maximum; without it a faster guest gets ``tsc_catchup`` and
        ``tsc_always_catchup`` (the TSC runs at the host rate and is pushed forward at every
        clock update), a slower one -1 (ratio unchanged).  ``user_tsc_khz == 0``: default
        ratio, -1.  Returns 0 or -1 as the kernel does; the frequency fields are already set
        when it fails (as in the kernel)."""
        how, ratio = self.set_tsc_khz_plan(user_tsc_khz, host_tsc_khz)
        if user_tsc_khz == 0:
            vcpu.tsc_scaling_ratio = ratio
            return -1
        shift, mult = _k.get_time_scale(scaled_hz=user_tsc_khz * 1000, base_hz=NSEC_PER_SEC)
        vcpu.virtual_tsc_shift = int(shift)
        vcpu.virtual_tsc_mult = int(mult)
        vcpu.virtual_tsc_khz = user_tsc_khz
        if how == "refused":
            return -1
        if how == "catchup":
            vcpu.tsc_catchup = True
            vcpu.tsc_always_catchup = True
            return 0
        vcpu.tsc_scaling_ratio = ratio  # kvm_vcpu_write_tsc_multiplier
        return 0

    def kvm_scale_tsc(self, vcpu: Vcpu, tsc: int) -> int:
        """``kvm_scale_tsc`` with the vCPU's (L1) ratio: unchanged with the default ratio, else
        ``__scale_tsc`` = mul_u64_u64_shr(tsc, ratio, frac bits of the host's hardware)."""
        if vcpu.tsc_scaling_ratio == self.default_tsc_scaling_ratio:
            return tsc
        return int(
            _k.scale_tsc(tsc, vcpu.tsc_scaling_ratio, self.tsc_scaling_ratio_frac_bits)
        )

    def kvm_read_l1_tsc(self, vcpu: Vcpu, host_tsc: int) -> int:
        """``kvm_read_l1_tsc``: L1 offset + scaled host TSC (u64)."""
        if vcpu.tsc_scaling_ratio == self.default_tsc_scaling_ratio:  # hot: kvm_scale_tsc inlined
            return (vcpu.tsc_offset + host_tsc) & U64_MASK
        return (vcpu.tsc_offset + self.kvm_scale_tsc(vcpu, host_tsc)) & U64_MASK

    def kvm_compute_tsc_offset(self, vcpu: Vcpu, target_tsc: int) -> int:
        """``kvm_compute_tsc_offset``: target - scaled rdtsc() (u64)."""
        return (target_tsc - self.kvm_scale_tsc(vcpu, self.rdtsc())) & U64_MASK

    @staticmethod
    def nsec_to_cycles(vcpu: Vcpu, nsec: int) -> int:
        """``nsec_to_cycles``: pvclock_scale_delta(nsec, virtual_tsc_mult, virtual_tsc_shift)."""
        return int(
            _k.pvclock_scale_delta(nsec & U64_MASK, vcpu.virtual_tsc_mult, vcpu.virtual_tsc_shift)
        )

    def compute_guest_tsc(self, vcpu: Vcpu, kernel_ns: int) -> int:
        """``compute_guest_tsc``: this_tsc_write + cycles(kernel_ns - this_tsc_nsec)."""
        return (
            vcpu.this_tsc_write + self.nsec_to_cycles(vcpu, kernel_ns - vcpu.this_tsc_nsec)
        ) & U64_MASK

    def kvm_vcpu_write_tsc_offset(self, vcpu: Vcpu, offset: int) -> None:
        """``kvm_vcpu_write_tsc_offset``: trace ``kvm_write_tsc_offset`` then set the offset."""
        self.trace(
            "kvm_write_tsc_offset",
            lambda: fields_write_tsc_offset(vcpu.vcpu_id, vcpu.tsc_offset, offset & U64_MASK),
        )
        vcpu.tsc_offset = offset & U64_MASK

    def kvm_write_tsc(self, vcpu: Vcpu, data: int, *, host_initiated: bool) -> None:
        """``kvm_write_tsc`` (v4.13): an MSR_IA32_TSC write of ``data`` that synchronises,
        from the guest or from userspace: ``kvm_synchronize_tsc`` with ``data`` as the value
        (a guest write also moves IA32_TSC_ADJUST by the change of offset)."""
        self.kvm_synchronize_tsc(vcpu, data, host_initiated=host_initiated)

    def kvm_synchronize_tsc(
        self, vcpu: Vcpu, user_value: int | None, *, host_initiated: bool = True
    ) -> None:
        """x86.c ``kvm_synchronize_tsc(vcpu, user_value)`` (v4.13: ``kvm_write_tsc``).

        ``user_value`` is the TSC (u64 cycles) userspace (or, in 2017, the guest) writes; None
        at vCPU creation, read as 0.  ``synchronizing`` (only with ``virtual_tsc_khz`` set):

        * switch ``user_set_tsc`` on (6.7+): a value of 0 always (creation or an explicit
          userspace 0); a non-zero value only if ``kvm->arch.user_set_tsc`` (userspace wrote
          a TSC before) and it lies within one second of virtual cycles of the last write
          extrapolated by the elapsed kvmclock-base ns (u64 arithmetic);
        * off (v4.13): a host-initiated 0, or any value within that window.

        Synchronizing with an equal ``virtual_tsc_khz`` is a match: stable host -> the
        generation's offset ``cur_tsc_offset``; unstable host -> the elapsed cycles are added.
        Otherwise a new generation.  Then ``__kvm_synchronize_tsc``.
        """
        kvm = vcpu.kvm
        data = 0 if user_value is None else user_value
        owner = vcpu.owner
        kvm.tsc_write_lock.acquire(owner)
        try:
            offset = self.kvm_compute_tsc_offset(vcpu, data)
            ns = self.get_kvmclock_base_ns()
            elapsed = (ns - kvm.last_tsc_nsec) & U64_MASK
            synchronizing = False
            window = False
            tsc_exp = 0
            if vcpu.virtual_tsc_khz:
                if self.cfg.user_set_tsc:
                    window = data != 0 and kvm.user_set_tsc
                    synchronizing = data == 0
                else:
                    synchronizing = data == 0 and host_initiated
                    window = not synchronizing
                if window:
                    tsc_exp = (kvm.last_tsc_write + self.nsec_to_cycles(vcpu, elapsed)) & U64_MASK
                    tsc_hz = vcpu.virtual_tsc_khz * 1000
                    synchronizing = (
                        data < ((tsc_exp + tsc_hz) & U64_MASK)
                        and ((data + tsc_hz) & U64_MASK) > tsc_exp
                    )
            why = self._sync_rule(vcpu, data, synchronizing, window, tsc_exp, user_value is None)
            matched = False
            if synchronizing and vcpu.virtual_tsc_khz == kvm.last_tsc_khz:
                if not self.kernel.check_tsc_unstable():
                    offset = kvm.cur_tsc_offset
                else:
                    delta = self.nsec_to_cycles(vcpu, elapsed)
                    data = (data + delta) & U64_MASK
                    offset = self.kvm_compute_tsc_offset(vcpu, data)
                matched = True
            already_matched = self._kvm_synchronize_tsc_locked(
                vcpu,
                offset,
                data,
                ns,
                matched,
                user_set=user_value is not None and host_initiated,
                guest_write=not host_initiated,
            )
            self._decide(vcpu, "kvm_synchronize_tsc", *why(matched))
        finally:
            kvm.tsc_write_lock.release(owner)
        self._count_matched_and_track(vcpu, matched, already_matched)

    def _decide(
        self, vcpu: Vcpu | None, where: str, rule: str, text: str, kvm: Kvm | None = None
    ) -> None:
        """Append one :class:`TscDecision` to the VM's decision log (nothing else changes)."""
        target = vcpu.kvm if vcpu is not None else kvm
        assert target is not None
        target.tsc_decisions.append(
            TscDecision(
                self.world.now_ns, None if vcpu is None else vcpu.vcpu_id, where, rule, text
            )
        )
        target.tsc_decisions_logged += 1

    def _sync_rule(
        self,
        vcpu: Vcpu,
        data: int,
        synchronizing: bool,
        window: bool,
        tsc_exp: int,
        creation: bool = False,
    ) -> Callable[[bool], tuple[str, str]]:
        """The rule key and sentence of one ``kvm_synchronize_tsc`` decision, built from the
        values read before the write (``last_tsc_khz``, ``user_set_tsc``) once it is known
        whether the write matched."""
        kvm = vcpu.kvm
        who = (
            f"vCPU {vcpu.vcpu_id}'s creation-time TSC write of 0"
            if creation
            else f"vCPU {vcpu.vcpu_id}'s TSC write of {data}"
        )
        khz = vcpu.virtual_tsc_khz
        last_khz = kvm.last_tsc_khz
        user_set_before = kvm.user_set_tsc
        dist = ""
        if window and khz:
            diff = _s64(data - tsc_exp)
            ns = abs(diff) * 1_000_000 // khz
            dist = (
                f"{ns / NSEC_PER_SEC:.9f} s {'ahead of' if diff >= 0 else 'behind'} the "
                "last write extrapolated by the elapsed kvmclock-base time"
            )

        def sentence(matched: bool) -> tuple[str, str]:
            gen = kvm.cur_tsc_generation
            if not khz:
                return "no-khz", (
                    f"{who} opened generation {gen}: the vCPU has no TSC frequency, "
                    "so it cannot synchronise"
                )
            if synchronizing and not matched and not last_khz:
                return "first-write", f"{who} opened generation {gen}: the VM's first TSC write"
            if synchronizing and not matched:
                return "khz-differs", (
                    f"{who} opened generation {gen}: it lies within the window but its "
                    f"{khz} kHz differs from the last write's {last_khz} kHz"
                )
            if matched and not window:
                rule = (
                    "6.7 user_set_tsc rule: a zero write always synchronises"
                    if self.cfg.user_set_tsc
                    else "a host-initiated zero write synchronises"
                )
                return "zero-write", f"{who} joined generation {gen} ({rule})"
            if matched:
                return "window-match", (
                    f"{who} joined generation {gen}: {dist}, inside the 1 s window"
                )
            if self.cfg.user_set_tsc and data != 0 and not user_set_before:
                return "user-set-tsc-first", (
                    f"{who} opened generation {gen}: the first userspace TSC write never "
                    "synchronises with the creation-time values (6.7 user_set_tsc rule)"
                )
            if window:
                return "outside-window", (
                    f"{who} opened generation {gen}: {dist}, outside the 1 s window"
                )
            return "guest-write", f"{who} (a guest write) opened generation {gen}"

        return sentence

    def _kvm_synchronize_tsc_locked(
        self,
        vcpu: Vcpu,
        offset: int,
        tsc: int,
        ns: int,
        matched: bool,
        *,
        user_set: bool,
        guest_write: bool = False,
    ) -> bool:
        """The part of x86.c ``__kvm_synchronize_tsc`` under ``tsc_write_lock``: a new
        generation unless ``matched``; ``last_tsc_*`` (and 5.16's ``last_tsc_offset``);
        the vCPU's generation fields; the offset.  ``user_set`` marks a userspace TSC
        (``kvm->arch.user_set_tsc``, switch ``user_set_tsc``); ``guest_write`` a v4.13 guest
        write, which also moves IA32_TSC_ADJUST.  Returns whether the vCPU was already in the
        current generation (read before it joins)."""
        kvm = vcpu.kvm
        if user_set and self.cfg.user_set_tsc:
            kvm.user_set_tsc = True
        already_matched = matched and vcpu.this_tsc_generation == kvm.cur_tsc_generation
        if not matched:
            kvm.cur_tsc_generation += 1
            kvm.cur_tsc_nsec = ns
            kvm.cur_tsc_write = tsc
            kvm.cur_tsc_offset = offset
            self.moment(
                f"{kvm.name}: new TSC generation {kvm.cur_tsc_generation} (vcpu {vcpu.vcpu_id})"
            )
        kvm.last_tsc_nsec = ns
        kvm.last_tsc_write = tsc
        kvm.last_tsc_khz = vcpu.virtual_tsc_khz
        kvm.last_tsc_offset = offset
        vcpu.last_guest_tsc = tsc
        vcpu.this_tsc_generation = kvm.cur_tsc_generation
        vcpu.this_tsc_nsec = kvm.cur_tsc_nsec
        vcpu.this_tsc_write = kvm.cur_tsc_write
        if guest_write:
            # update_ia32_tsc_adjust_msr (guest has TSC_ADJUST in CPUID)
            vcpu.ia32_tsc_adjust_msr += offset - vcpu.l1_tsc_offset
        self.kvm_vcpu_write_tsc_offset(vcpu, offset)
        return already_matched

    def _count_matched_and_track(self, vcpu: Vcpu, matched: bool, already_matched: bool) -> None:
        """The rest of a TSC synchronisation, under the masterclock lock (v4.13's order):
        ``nr_vcpus_matched_tsc`` reset (new generation) or incremented (a vCPU joining the
        current one), then ``kvm_track_tsc_matching(vcpu, new_generation=not matched)``."""
        kvm = vcpu.kvm
        owner = vcpu.owner
        kvm.masterclock_lock.acquire(owner)
        try:
            if not matched:
                kvm.nr_vcpus_matched_tsc = 0
            elif not already_matched:
                kvm.nr_vcpus_matched_tsc += 1
            self.kvm_track_tsc_matching(vcpu, not matched)
        finally:
            kvm.masterclock_lock.release(owner)

    def kvm_arch_tsc_set_attr(self, vcpu: Vcpu, offset: int) -> None:
        """x86.c ``kvm_arch_tsc_set_attr`` KVM_VCPU_TSC_OFFSET (5.16+): under
        ``tsc_write_lock``, ``matched`` = ``virtual_tsc_khz`` set and ``last_tsc_khz`` equal to
        it and ``last_tsc_offset == offset`` exactly; tsc = scaled rdtsc() + offset (u64);
        ns = the kvmclock base now; ``__kvm_synchronize_tsc`` with ``user_set_tsc``."""
        kvm = vcpu.kvm
        owner = vcpu.owner
        kvm.tsc_write_lock.acquire(owner)
        try:
            matched = bool(
                vcpu.virtual_tsc_khz
                and kvm.last_tsc_khz == vcpu.virtual_tsc_khz
                and kvm.last_tsc_offset == offset
            )
            last_offset, last_khz = kvm.last_tsc_offset, kvm.last_tsc_khz
            tsc = (self.kvm_scale_tsc(vcpu, self.rdtsc()) + offset) & U64_MASK
            ns = self.get_kvmclock_base_ns()
            already_matched = self._kvm_synchronize_tsc_locked(
                vcpu, offset, tsc, ns, matched, user_set=True
            )
            who = f"vCPU {vcpu.vcpu_id}'s KVM_VCPU_TSC_OFFSET of {_s64(offset)}"
            gen = kvm.cur_tsc_generation
            if matched:
                self._decide(
                    vcpu,
                    "kvm_arch_tsc_set_attr",
                    "attr-exact-match",
                    f"{who} equals the last written offset: joined generation {gen} "
                    "(the attribute matches only an exactly equal offset)",
                )
            else:
                khz_note = (
                    f"its {vcpu.virtual_tsc_khz} kHz differs from the last write's "
                    f"{last_khz} kHz"
                    if last_khz != vcpu.virtual_tsc_khz
                    else f"it differs from the last written offset {_s64(last_offset)} by "
                    f"{_s64(offset - last_offset)} cycles"
                )
                self._decide(
                    vcpu,
                    "kvm_arch_tsc_set_attr",
                    "attr-mismatch",
                    f"{who} opened generation {gen}: {khz_note} (the attribute matches "
                    "only an exactly equal offset)",
                )
        finally:
            kvm.tsc_write_lock.release(owner)
        self._count_matched_and_track(vcpu, matched, already_matched)

    def kvm_track_tsc_matching(self, vcpu: Vcpu, new_generation: bool = False) -> None:
        """x86.c ``kvm_track_tsc_matching``: maybe request MASTERCLOCK_UPDATE on this vCPU.

        Switch ``masterclock_request``: ``on_update`` (2014-6.7) requests it if masterclock is
        on, or the host clock qualifies and all vCPUs matched; ``toggle_or_new_generation``
        (6.8+) only if masterclock must toggle (``use_master_clock`` differs from "host
        qualifies and all matched") or ``new_generation`` starts while it is on (the snapshot
        must follow the new generation for ``compute_guest_tsc``)."""
        kvm = vcpu.kvm
        vcpus_matched = kvm.nr_vcpus_matched_tsc + 1 == kvm.online_vcpus
        if self.cfg.kvm_host_clock == "timekeeper":
            host: int | bool = self.clocksource_stability_check()
            qualifies = bool(host)
        else:
            host = self.pvclock_gtod_data.vclock_mode
            qualifies = host == VCLOCK_TSC
        if self.cfg.masterclock_request == "toggle_or_new_generation":
            want = qualifies and vcpus_matched
            request = (kvm.use_master_clock and new_generation) or kvm.use_master_clock != want
        else:
            request = kvm.use_master_clock or (qualifies and vcpus_matched)
        if request:
            vcpu.kvm_make_request(KVM_REQ_MASTERCLOCK_UPDATE)
        self._decide(
            vcpu,
            "kvm_track_tsc_matching",
            "track",
            f"kvm_track_tsc after vCPU {vcpu.vcpu_id}: offsetmatched "
            f"{kvm.nr_vcpus_matched_tsc} of {kvm.online_vcpus} online vCPUs (all matched "
            f"means nr_vcpus_matched_tsc + 1 == online_vcpus: "
            f"{'yes' if vcpus_matched else 'no'}), host clock "
            f"{'qualifies' if qualifies else 'does not qualify'}; masterclock update "
            f"{'requested' if request else 'not requested'}",
        )
        host_clock, host_clock_stable = _host_clock_args(self.cfg.trace_format, host)
        self.trace(
            "kvm_track_tsc",
            lambda: fields_track_tsc(
                self.cfg.trace_format,
                vcpu.vcpu_id,
                kvm.use_master_clock,
                kvm.nr_vcpus_matched_tsc,
                kvm.online_vcpus,
                host_clock=host_clock,
                host_clock_stable=host_clock_stable,
            ),
        )

    # -- host clock: series (patches 08, 09, 11) ---------------------------------------------------
    def clocksource_stable(self) -> bool:
        """``clocksource_stable()`` after patch 11 (text unavailable; our reading, documented):
        mode TSC, or mode PVCLOCK while this CPU's kvm-clock record (masked by the valid
        flags) carries PVCLOCK_TSC_STABLE_BIT: only then is the pvclock stamp a TSC value
        consistent with the returned ns (cf. the later revision's ``cycles_valid``)."""
        k = self.kernel
        mode = k.timekeeper.get_tk_mono_clock_mode()
        if mode == VCLOCK_TSC:
            return True
        if mode == VCLOCK_PVCLOCK and self.cfg.stable_pvclock_host and k.pvclock is not None:
            off = k.pvti_offset(k.current_cpu)
            flags = k.machine.memory[off + 29]  # pvclock_vcpu_time_info.flags at byte 29
            return bool(flags & k.pvclock_valid_flags & _PV_STABLE)
        return False

    def _retry_spun(self, where: str, what: str, spins: int) -> None:
        """A read loop that retried ``spins`` times: from ``spin_limit`` on it is a livelock
        (:class:`MasterclockLivelock` naming ``where`` and ``what`` it waited for).  The
        kernel has no bound; in this single-threaded model a retry needs a writer run in
        between (an ``interleave`` hook), so a loop that keeps retrying never ends."""
        if spins < self.spin_limit:
            return
        self.counters["livelocks"] += 1
        raise MasterclockLivelock(
            f"{self.kernel.name}: {where}: {what} still retrying after {spins} spins "
            f"(run.spin_limit = {self.spin_limit})",
            where=where,
            spins=spins,
            level=self.level,
            t_ns=self.world.now_ns,
        )

    def _seq_loop(self, where: str, body: Callable[[], T]) -> T:
        """The patch-09 read loop around ``body``: correct ``do { } while (retry)``, or with the
        fault the block once and then ``while (read_seqcount_retry(s, seq));`` on the stale seq,
        which spins forever once a writer moved the sequence; counted up to ``spin_limit``."""
        s = self.kernel.timekeeper.get_tk_seq()
        if self.fault != "patch09-missing-do":
            retries = 0
            while True:
                seq = s.read_begin()
                out = body()
                if not s.read_retry(seq):
                    return out
                self.counters["seq_retries"] += 1
                retries += 1
                self._retry_spun(where, "read_seqcount_retry(tk_core.seq)", retries)
        seq = s.read_begin()
        out = body()
        spins = 0
        while s.read_retry(seq):
            spins += 1
            if spins >= self.spin_limit:
                self.counters["livelocks"] += 1
                raise MasterclockLivelock(
                    f"{self.kernel.name}: {where}: "
                    f"read_seqcount_retry(tk_core.seq, {seq}) stays true "
                    f"(sequence now {s.sequence}); spun {spins} times holding masterclock_lock "
                    "(patch 09: loop without 'do')",
                    where=where,
                    spins=spins,
                    level=self.level,
                    t_ns=self.world.now_ns,
                )
        return out

    def clocksource_stability_check(self) -> bool:
        """Patch 09 ``clocksource_stability_check``: ``clocksource_stable()`` under tk_core.seq."""
        return self._seq_loop("clocksource_stability_check", self.clocksource_stable)

    def kvm_get_host_time_and_cycles(self, kvm: Kvm) -> tuple[bool, int, int]:
        """Patch 09 ``kvm_get_host_time_and_cycles(.., ktime_get_boot_ns_with_cycles)``:
        ``(stable, ns, cycles)``; when not stable the caller keeps its old master values."""
        tk = self.kernel.timekeeper

        def block() -> tuple[bool, int, int]:
            stable = self.clocksource_stable()
            if stable:
                if self.cfg.kvmclock_base == "raw":
                    ns, cycles = tk.ktime_get_raw_boot_ns_with_cycles()
                else:
                    ns, cycles = tk.ktime_get_boot_ns_with_cycles()
                return True, ns, cycles
            return False, kvm.master_kernel_ns, kvm.master_cycle_now

        return self._seq_loop("kvm_get_host_time_and_cycles", block)

    # -- host clock: gtod (shadow copy) ------------------------------------------------------------
    def update_pvclock_gtod(self, tk: Any) -> None:
        """``update_pvclock_gtod(tk)``: copy the timekeeper fields into the shadow under its seq."""
        g = self.pvclock_gtod_data
        g.seq += 1
        mono = tk.tkr_mono
        g.boot_ns = (mono.base + tk.offs_boot) & U64_MASK
        g.vclock_mode = mono.clock.vclock_mode if mono.clock is not None else VCLOCK_NONE
        g.cycle_last = mono.cycle_last
        g.mask = mono.mask
        g.mult = mono.mult
        g.shift = mono.shift
        g.nsec_base = mono.xtime_nsec
        g.wall_time_sec = tk.xtime_sec
        raw = tk.tkr_raw  # 5.5+: raw_clock and offs_boot (read only with kvmclock_base=raw)
        g.raw_cycle_last = raw.cycle_last
        g.raw_mask = raw.mask
        g.raw_mult = raw.mult
        g.raw_shift = raw.shift
        g.raw_base_cycles = raw.xtime_nsec
        g.raw_offset = raw.base
        g.offs_boot = tk.offs_boot
        g.seq += 1
        self.counters["gtod_copies"] += 1

    def pvclock_gtod_notify(self, action: int, data: Any) -> int:
        """``pvclock_gtod_notify``: copy; if the mode is not TSC and some VM has masterclock,
        queue ``pvclock_gtod_work`` on system_long_wq (a World event a little later)."""
        self.counters["notifier_calls"] += 1
        tk = data if data is not None else self.kernel.timekeeper
        self.update_pvclock_gtod(tk)
        if (
            self.pvclock_gtod_data.vclock_mode != VCLOCK_TSC
            and self.kvm_guest_has_master_clock != 0
        ):
            if self._gtod_work is None:  # queue_work on a pending work is a no-op
                self._gtod_work = self.world.after(
                    PVCLOCK_GTOD_WORK_DELAY_NS, self.pvclock_gtod_update_fn
                )
        return NOTIFY_DONE

    def pvclock_gtod_update_fn(self) -> None:
        """``pvclock_gtod_update_fn``: MASTERCLOCK_UPDATE on every vCPU of every VM; clear the
        atomic."""
        self._gtod_work = None
        self.kvm_lock.acquire("pvclock_gtod_work")
        try:
            for kvm in self.vm_list:
                for v in kvm.vcpus:
                    v.kvm_make_request(KVM_REQ_MASTERCLOCK_UPDATE)
            self.kvm_guest_has_master_clock = 0
        finally:
            self.kvm_lock.release("pvclock_gtod_work")
        self.moment("pvclock_gtod_work: MASTERCLOCK_UPDATE requested on all vCPUs")

    def _read_tsc_clamped(self) -> int:
        """KVM's ``read_tsc()`` (gtod): ``rdtsc_ordered()`` clamped up to the shadow cycle_last."""
        ret = self.rdtsc()
        last = self.pvclock_gtod_data.cycle_last
        return ret if ret >= last else last

    def do_monotonic_boot(self) -> tuple[int, int, int]:
        """``do_monotonic_boot``: ``(mode, ns, cycle_now)`` from the shadow copy (u64 wrap)."""
        g = self.pvclock_gtod_data
        spins = 0
        while True:
            seq = g.seq
            mode = g.vclock_mode
            ns = g.nsec_base
            cycle_now = self._read_tsc_clamped()
            v = (cycle_now - g.cycle_last) & g.mask  # vgettsc
            ns = (ns + v * g.mult) & U64_MASK
            ns >>= g.shift
            ns = (ns + g.boot_ns) & U64_MASK
            if seq == g.seq and not seq & 1:
                return mode, ns, cycle_now
            spins += 1
            self._retry_spun("do_monotonic_boot", "pvclock_gtod_data.seq", spins)

    def do_kvmclock_base(self) -> tuple[int, int, int]:
        """``do_kvmclock_base`` (5.5+): ``(mode, ns, cycle_now)`` from the shadow copy's
        raw_clock: ((raw_base_cycles + ((tsc - raw cycle_last) & mask) * raw mult) mod 2**64)
        >> raw shift, + raw offset + offs_boot (ns, CLOCK_MONOTONIC_RAW from boot).  The TSC
        read is clamped to the mono ``cycle_last`` as ``read_tsc`` does."""
        g = self.pvclock_gtod_data
        spins = 0
        while True:
            seq = g.seq
            mode = g.vclock_mode
            cycle_now = self._read_tsc_clamped()
            v = (cycle_now - g.raw_cycle_last) & g.raw_mask
            ns = ((g.raw_base_cycles + v * g.raw_mult) & U64_MASK) >> g.raw_shift
            ns = (ns + g.raw_offset + g.offs_boot) & U64_MASK
            if seq == g.seq and not seq & 1:
                return mode, ns, cycle_now
            spins += 1
            self._retry_spun("do_kvmclock_base", "pvclock_gtod_data.seq", spins)

    def do_realtime(self) -> tuple[int, int, int]:
        """``do_realtime``: ``(mode, realtime ns, cycle_now)`` from the shadow copy's mono
        clock: wall_time_sec s + ((nsec_base + v * mult) mod 2**64 >> shift) ns."""
        g = self.pvclock_gtod_data
        spins = 0
        while True:
            seq = g.seq
            mode = g.vclock_mode
            sec = g.wall_time_sec
            cycle_now = self._read_tsc_clamped()
            v = (cycle_now - g.cycle_last) & g.mask
            ns = ((g.nsec_base + v * g.mult) & U64_MASK) >> g.shift
            if seq == g.seq and not seq & 1:
                return mode, sec * NSEC_PER_SEC + ns, cycle_now
            spins += 1
            self._retry_spun("do_realtime", "pvclock_gtod_data.seq", spins)

    def kvm_get_time_and_clockread(self, kvm: Kvm) -> tuple[bool, int, int]:
        """``kvm_get_time_and_clockread`` -> ``(host_tsc_clocksource, kernel_ns, cycle_now)``.

        gtod: false early (values untouched) unless the shadow mode is TSC, else
        ``do_monotonic_boot() == VCLOCK_TSC`` (values written); with switch
        ``kvmclock_base=raw`` ``do_kvmclock_base`` (5.5+) instead.  series: patch 09.
        """
        if self.cfg.kvm_host_clock == "timekeeper":
            return self.kvm_get_host_time_and_cycles(kvm)
        if self.pvclock_gtod_data.vclock_mode != VCLOCK_TSC:
            return False, kvm.master_kernel_ns, kvm.master_cycle_now
        if self.cfg.kvmclock_base == "raw":
            mode, ns, cycle_now = self.do_kvmclock_base()
        else:
            mode, ns, cycle_now = self.do_monotonic_boot()
        return mode == VCLOCK_TSC, ns, cycle_now

    # -- masterclock -------------------------------------------------------------------------------
    def update_masterclock(self, kvm: Kvm) -> None:
        """``pvclock_update_vm_gtod_copy`` (gtod) / ``update_masterclock`` (series), lock held:
        ``use_master_clock = host clock qualifies && vcpus matched && !backwards_tsc_observed
        && !boot_vcpu_runs_old_kvmclock``; trace ``kvm_update_master_clock``."""
        vcpus_matched = kvm.nr_vcpus_matched_tsc + 1 == kvm.online_vcpus
        host_ok, ns, cycles = self.kvm_get_time_and_clockread(kvm)
        kvm.master_kernel_ns = ns
        kvm.master_cycle_now = cycles
        kvm.use_master_clock = (
            host_ok
            and vcpus_matched
            and not kvm.backwards_tsc_observed
            and not kvm.boot_vcpu_runs_old_kvmclock
        )
        self.counters["masterclock_updates"] += 1
        kvm.counters["masterclock_updates"] += 1
        self._masterclock_decision(kvm, host_ok, vcpus_matched)
        if self.cfg.kvm_host_clock == "pvclock_gtod_copy":
            if kvm.use_master_clock:
                self.kvm_guest_has_master_clock = 1
            host: int | bool = self.pvclock_gtod_data.vclock_mode
        else:
            host = host_ok
        host_clock, host_clock_stable = _host_clock_args(self.cfg.trace_format, host)
        self.trace(
            "kvm_update_master_clock",
            lambda: fields_update_master_clock(
                self.cfg.trace_format,
                kvm.use_master_clock,
                vcpus_matched,
                host_clock=host_clock,
                host_clock_stable=host_clock_stable,
            ),
        )
        kvm._record_masterclock()

    def _host_clock_qualifies(self) -> str:
        """Why the host clock qualified for masterclock, per the profile's switches: the
        clocksource is the TSC, or (``stable_pvclock_host``, series patch 11) kvm-clock whose
        record carries PVCLOCK_TSC_STABLE_BIT (a nested host)."""
        if self.cfg.kvm_host_clock == "timekeeper":
            if self.kernel.timekeeper.get_tk_mono_clock_mode() == VCLOCK_PVCLOCK:
                return (
                    "host clocksource is kvm-clock with PVCLOCK_TSC_STABLE_BIT set (switch "
                    "stable_pvclock_host: a stable kvm-clock counts as a stable host clock)"
                )
        return "host clocksource is TSC"

    def _masterclock_decision(self, kvm: Kvm, host_ok: bool, vcpus_matched: bool) -> None:
        """Log why ``update_masterclock`` turned masterclock on or off (the four terms of
        ``use_master_clock`` in the kernel's order)."""
        if kvm.use_master_clock:
            self._decide(
                None,
                "pvclock_update_vm_gtod_copy",
                "masterclock-on",
                f"VM {kvm.name}: masterclock on: {self._host_clock_qualifies()} and all "
                f"{kvm.online_vcpus} vCPUs matched (offsetmatched {kvm.nr_vcpus_matched_tsc})",
                kvm,
            )
            return
        why = []
        if not host_ok:
            if self.cfg.kvm_host_clock == "timekeeper":
                if self.kernel.timekeeper.get_tk_mono_clock_mode() != VCLOCK_PVCLOCK:
                    why.append("the host clocksource is not stable (not TSC)")
                elif self.cfg.stable_pvclock_host:
                    why.append(
                        "the host clocksource is kvm-clock without PVCLOCK_TSC_STABLE_BIT in "
                        "its record (switch stable_pvclock_host)"
                    )
                else:
                    why.append(
                        "the host clocksource is kvm-clock, which counts as stable only with "
                        "switch stable_pvclock_host on"
                    )
            else:
                why.append(
                    "the host clocksource is not TSC (vclock mode "
                    f"{self.pvclock_gtod_data.vclock_mode})"
                )
        if not vcpus_matched:
            why.append(
                f"vCPUs not matched (offsetmatched {kvm.nr_vcpus_matched_tsc}, "
                f"{kvm.online_vcpus} online: nr_vcpus_matched_tsc + 1 != online_vcpus)"
            )
        if kvm.backwards_tsc_observed:
            why.append("backwards_tsc_observed is set")
        if kvm.boot_vcpu_runs_old_kvmclock:
            why.append("the boot vCPU runs the old kvmclock MSR")
        self._decide(
            None,
            "pvclock_update_vm_gtod_copy",
            "masterclock-off",
            f"VM {kvm.name}: masterclock off: " + "; ".join(why),
            kvm,
        )

    def kvm_gen_update_masterclock(self, kvm: Kvm, owner: str) -> None:
        """``kvm_gen_update_masterclock`` (4.13): lock; MCLOCK_INPROGRESS on all vCPUs (no
        entries); recompute; CLOCK_UPDATE on all; clear MCLOCK_INPROGRESS; unlock.  With switch
        ``masterclock_sync=seqcount`` ``kvm_update_masterclock`` (5.16+): the recompute between
        ``kvm_start_pvclock_update`` and ``kvm_end_pvclock_update``."""
        if self.cfg.masterclock_sync == "seqcount":
            self.kvm_start_pvclock_update(kvm, owner)
            self.update_masterclock(kvm)
            self.kvm_end_pvclock_update(kvm, owner)
            return
        kvm.masterclock_lock.acquire(owner)
        for v in kvm.vcpus:
            v.kvm_make_request(KVM_REQ_MCLOCK_INPROGRESS)
        self.update_masterclock(kvm)  # a livelock raises here with the lock held, as in the kernel
        for v in kvm.vcpus:
            v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
        for v in kvm.vcpus:
            v.kvm_clear_request(KVM_REQ_MCLOCK_INPROGRESS)
        kvm.masterclock_lock.release(owner)

    def process_clocksource_change(self, action: int, data: Any) -> int:
        """Patch 09 ``process_clocksource_change``: under ``kvm_lock``, MASTERCLOCK_UPDATE on
        every vCPU of every VM, synchronously, unconditionally."""
        self.counters["notifier_calls"] += 1
        self.kvm_lock.acquire("process_clocksource_change")
        try:
            n = 0
            for kvm in self.vm_list:
                for v in kvm.vcpus:
                    v.kvm_make_request(KVM_REQ_MASTERCLOCK_UPDATE)
                    n += 1
        finally:
            self.kvm_lock.release("process_clocksource_change")
        if n:
            self.moment(f"clocksource change notifier: MASTERCLOCK_UPDATE requested on {n} vCPUs")
        return NOTIFY_DONE

    # -- the kvmclock base and the master pair's readers ---------------------------------------
    def get_kvmclock_base_ns(self) -> int:
        """``get_kvmclock_base_ns`` (x86.c) in ns: the host clock kvmclock counts from.

        Switch ``kvmclock_base``: ``boot`` (4.13) = ``ktime_get_boot_ns()`` (CLOCK_BOOTTIME,
        the NTP-slewable tkr_mono rate); ``raw`` (5.5, 53fafdbb8b21) = ``ktime_get_raw()`` +
        the shadow copy's ``offs_boot`` (CLOCK_MONOTONIC_RAW counted from boot, tkr_raw rate,
        never NTP-adjusted).  Without the shadow copy (switch ``kvm_host_clock=timekeeper``)
        the raw clock and offs_boot come from one read under tk_core.seq.  Used for the VM-init
        ``kvmclock_offset``, non-masterclock ``system_time``, KVM_GET/SET_CLOCK without
        masterclock and the ``ns`` of ``kvm_synchronize_tsc``.
        """
        tk = self.kernel.timekeeper
        if self.cfg.kvmclock_base == "boot":
            return tk.ktime_get_boot_ns()
        if self.cfg.kvm_host_clock == "pvclock_gtod_copy":
            return (tk.ktime_get_raw_ns() + self.pvclock_gtod_data.offs_boot) & U64_MASK
        return tk.ktime_get_raw_boot_ns_with_cycles()[0] & U64_MASK

    def _read_master(self, kvm: Kvm, owner: str, body: Callable[[], T]) -> T:
        """A reader of the master pair (``use_master_clock``, ``master_*``, offset).

        Switch ``masterclock_sync``: ``spinlock`` (4.13) runs ``body`` under
        ``pvclock_gtod_sync_lock``; ``seqcount`` (5.16, 548da50f7ffe) runs it in a
        ``read_seqcount_begin/retry(&kvm->arch.pvclock_sc)`` loop and counts every retry in
        ``counters["pvclock_sc_retries"]`` (VM and module).  ``kvm.pvclock_read_interleave``
        runs between the body and the check (with the lock held under ``spinlock``, where a
        writer would then find the lock taken).
        """
        if self.cfg.masterclock_sync == "spinlock":
            kvm.masterclock_lock.acquire(owner)
            try:
                out = body()
                hook = kvm.pvclock_read_interleave
                if hook is not None:
                    hook()
                return out
            finally:
                kvm.masterclock_lock.release(owner)
        sc = kvm.pvclock_sc
        retries = 0
        while True:
            seq = sc.read_begin()
            out = body()
            hook = kvm.pvclock_read_interleave
            if hook is not None:
                hook()
            if not sc.read_retry(seq):
                return out
            kvm.counters["pvclock_sc_retries"] += 1
            self.counters["pvclock_sc_retries"] += 1
            retries += 1
            self._retry_spun(
                f"read_seqcount_retry(pvclock_sc) ({owner})", "the master clock read", retries
            )

    def kvm_start_pvclock_update(self, kvm: Kvm, owner: str) -> None:
        """``kvm_start_pvclock_update`` (5.16+): MCLOCK_INPROGRESS on every vCPU (no guest
        entries from here), then ``tsc_write_lock`` and ``write_seqcount_begin(pvclock_sc)``."""
        for v in kvm.vcpus:
            v.kvm_make_request(KVM_REQ_MCLOCK_INPROGRESS)
        kvm.tsc_write_lock.acquire(owner)
        kvm.pvclock_sc.write_begin()

    def kvm_end_pvclock_update(self, kvm: Kvm, owner: str) -> None:
        """``kvm_end_pvclock_update`` (5.16+): ``write_seqcount_end``, unlock
        ``tsc_write_lock``, CLOCK_UPDATE on every vCPU, clear MCLOCK_INPROGRESS."""
        kvm.pvclock_sc.write_end()
        kvm.tsc_write_lock.release(owner)
        for v in kvm.vcpus:
            v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
        for v in kvm.vcpus:
            v.kvm_clear_request(KVM_REQ_MCLOCK_INPROGRESS)

    def _master_pvclock_at(self, kvm: Kvm, master: tuple[int, int], host_tsc: int) -> int:
        """``__pvclock_read_cycles`` of the master pair (``master_cycle_now``,
        ``master_kernel_ns + kvmclock_offset``) at ``host_tsc`` with this CPU's host kHz
        mul/shift (``kvm_get_time_scale(NSEC_PER_SEC, cpu_tsc_khz * 1000)``): definition C."""
        shift, mul = _k.get_time_scale(scaled_hz=NSEC_PER_SEC, base_hz=self.cpu_tsc_khz() * 1000)
        info = _k.PvclockVcpuTimeInfo(
            tsc_timestamp=master[0],
            system_time=master[1] & U64_MASK,
            tsc_to_system_mul=int(mul),
            tsc_shift=int(shift),
        )
        return int(info.read_cycles(host_tsc))

    def _get_kvmclock_locked(self, kvm: Kvm) -> tuple[KvmClockData, tuple[int, int] | None]:
        """``__get_kvmclock`` (5.16+; the 4.13 ``get_kvmclock_ns`` + KVM_GET_CLOCK flags when
        switch ``kvm_clock_realtime`` is off), the part inside the reader: the flags, the
        non-masterclock clock, and with masterclock the pair to extrapolate (None without)."""
        data = KvmClockData(clock=0)
        if kvm.use_master_clock and self.cpu_tsc_khz():
            if self.cfg.kvm_clock_realtime:
                ok, realtime, host_tsc = self.kvm_get_walltime_and_clockread(kvm)
                if ok:
                    data.realtime = realtime
                    data.flags |= KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC
                else:
                    host_tsc = self.rdtsc()
                data.host_tsc = host_tsc
            else:
                host_tsc = self.rdtsc()  # 4.13: rdtsc() after the unlock, same instant here
            data.flags |= KVM_CLOCK_TSC_STABLE
            master = (host_tsc, kvm.master_cycle_now)
            data.clock = (kvm.master_kernel_ns + kvm.kvmclock_offset) & U64_MASK
            return data, master
        if kvm.use_master_clock and not self.cfg.kvm_clock_realtime:
            data.flags = KVM_CLOCK_TSC_STABLE  # 4.13 KVM_GET_CLOCK: flag iff masterclock
        data.clock = (self.get_kvmclock_base_ns() + kvm.kvmclock_offset) & U64_MASK
        return data, None

    def get_kvmclock(self, kvm: Kvm) -> KvmClockData:
        """``get_kvmclock`` (x86.c): ``__get_kvmclock`` inside the master-pair reader
        (switch ``masterclock_sync``), then with masterclock ``clock`` =
        ``__pvclock_read_cycles`` of the pair at ``host_tsc`` (definition C)."""
        data, master = self._read_master(
            kvm, "get_kvmclock", lambda: self._get_kvmclock_locked(kvm)
        )
        if master is not None:
            host_tsc, cycle_now = master
            data.clock = self._master_pvclock_at(kvm, (cycle_now, data.clock), host_tsc)
        return data

    def get_kvmclock_ns(self, kvm: Kvm) -> int:
        """``get_kvmclock_ns`` (ns): ``get_kvmclock(kvm).clock``.  Without masterclock
        ``get_kvmclock_base_ns() + kvmclock_offset``; with it the master pair through this
        CPU's host TSC at host-kHz mul/shift (definition C)."""
        return self.get_kvmclock(kvm).clock

    def kvm_get_walltime_and_clockread(self, kvm: Kvm) -> tuple[bool, int, int]:
        """``kvm_get_walltime_and_clockread`` -> ``(host clock is TSC, realtime ns, TSC)``.

        Shadow copy: false unless its mode is TSC, else ``do_realtime``.  Without the shadow
        copy (series) the timekeeper's realtime and its TSC stamp under tk_core.seq, when
        ``clocksource_stable()``.  (0, 0) when false."""
        if self.cfg.kvm_host_clock == "pvclock_gtod_copy":
            if self.pvclock_gtod_data.vclock_mode != VCLOCK_TSC:
                return False, 0, 0
            mode, real_ns, tsc = self.do_realtime()
            return (True, real_ns, tsc) if mode == VCLOCK_TSC else (False, 0, 0)
        tk = self.kernel.timekeeper

        def block() -> tuple[bool, int, int]:
            if self.clocksource_stable():
                ns, cycles = tk.ktime_get_real_ns_with_cycles()
                return True, ns, cycles
            return False, 0, 0

        return self._seq_loop("kvm_get_walltime_and_clockread", block)

    # -- the guest's wall clock (MSR_KVM_WALL_CLOCK(_NEW)) -----------------------------------------
    def kvm_get_wall_clock_epoch(self, kvm: Kvm) -> int:
        """The guest's epoch in ns since 1970 (realtime at kvmclock 0), switch ``wall_clock``.

        ``boottime`` (4.13 ``kvm_write_wall_clock``): ``getboottime64()`` (offs_real -
        offs_boot) minus ``kvmclock_offset``: the host boot time shifted by the VM's offset.
        ``single_tsc_read`` (6.7 ``kvm_get_wall_clock_epoch``): with masterclock and a
        ``cpu_tsc_khz``, realtime and the master pair's kvmclock (definition C) from one host
        TSC read (``kvm_get_walltime_and_clockread``), subtracted; otherwise
        ``ktime_get_real_ns() - get_kvmclock_ns()``.
        """
        tk = self.kernel.timekeeper
        if self.cfg.wall_clock == "boottime":
            return (tk.offs_real - tk.offs_boot) - kvm.kvmclock_offset

        def snap() -> tuple[int, int, int, int]:
            if not kvm.use_master_clock:
                return 0, 0, 0, 0
            khz = self.cpu_tsc_khz()
            real_ns = host_tsc = 0
            if khz:
                ok, real_ns, host_tsc = self.kvm_get_walltime_and_clockread(kvm)
                if not ok:
                    khz = 0  # fall back to the old method
            return khz, real_ns, host_tsc, kvm.master_cycle_now

        khz, real_ns, host_tsc, cycle_now = self._read_master(kvm, "wall_clock", snap)
        if khz:
            master = (cycle_now, kvm.master_kernel_ns + kvm.kvmclock_offset)
            return real_ns - self._master_pvclock_at(kvm, master, host_tsc)
        return tk.ktime_get_real_ns() - self.get_kvmclock_ns(kvm)

    def kvm_write_wall_clock(self, kvm: Kvm, wall_clock: int) -> None:
        """``kvm_write_wall_clock`` (x86.c): ``struct pvclock_wall_clock`` {u32 version, u32
        sec, u32 nsec} at gpa ``wall_clock``: version from the guest copy (odd -> +1 as
        random junk), +1 (odd) written, the epoch of :meth:`kvm_get_wall_clock_epoch` as
        ``sec`` (u32, wraps in 2106) and ``nsec``, then version +1 (even).  Nothing for gpa 0
        or a gpa outside guest memory (the kernel's failed guest read)."""
        mem = kvm.machine.memory
        if not wall_clock or wall_clock + 12 > len(mem):
            return
        version = int.from_bytes(bytes(mem[wall_clock : wall_clock + 4]), "little")
        if version & 1:
            version += 1  # first time write, random junk
        version = (version + 1) & U32_MASK
        mem[wall_clock : wall_clock + 4] = version.to_bytes(4, "little")
        epoch = self.kvm_get_wall_clock_epoch(kvm)
        if self.cfg.wall_clock == "single_tsc_read":
            epoch &= U64_MASK  # u64 wall_nsec and do_div (timespec64 arithmetic in 4.13)
        sec, nsec = divmod(epoch, NSEC_PER_SEC)
        mem[wall_clock + 4 : wall_clock + 8] = (sec & U32_MASK).to_bytes(4, "little")
        mem[wall_clock + 8 : wall_clock + 12] = nsec.to_bytes(4, "little")
        version = (version + 1) & U32_MASK
        mem[wall_clock : wall_clock + 4] = version.to_bytes(4, "little")
        self.counters["wall_clock_writes"] += 1

    # -- kvmclock record ---------------------------------------------------------------------------
    def kvm_guest_time_update(self, vcpu: Vcpu) -> int:
        """``kvm_guest_time_update``: the master pair (or a fresh rdtsc + boot ns), catch-up,
        mul/shift only on a kHz change, system_time = kernel_ns + kvmclock_offset, STABLE iff
        masterclock; then ``kvm_setup_pvclock_page``.  Returns 0 (1 = retry, never here)."""
        kvm = vcpu.kvm
        owner = vcpu.owner
        use_master_clock, host_tsc, kernel_ns = self._read_master(
            kvm,
            owner,
            lambda: (
                (True, kvm.master_cycle_now, kvm.master_kernel_ns)
                if kvm.use_master_clock
                else (False, 0, 0)
            ),
        )
        k = self.kernel
        host_cpu = k.machine.cpus[k.current_cpu]
        tgt_tsc_khz = host_cpu.tsc_khz  # cpu_tsc_khz(), inlined (hot: every clock update)
        if tgt_tsc_khz == 0:
            vcpu.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
            return 1
        if not use_master_clock:
            host_tsc = host_cpu.read_tsc()  # rdtsc()
            kernel_ns = self.get_kvmclock_base_ns()
        tsc_timestamp = self.kvm_read_l1_tsc(vcpu, host_tsc)
        if vcpu.tsc_catchup:
            tsc = self.compute_guest_tsc(vcpu, kernel_ns)
            if tsc > tsc_timestamp:
                self.kvm_vcpu_write_tsc_offset(
                    vcpu, vcpu.tsc_offset + tsc - tsc_timestamp
                )  # adjust_tsc_offset_guest
                tsc_timestamp = tsc
        if self.has_tsc_control:
            tgt_tsc_khz = self.kvm_scale_tsc(vcpu, tgt_tsc_khz)
            if tgt_tsc_khz == 0 and self.cfg.tiny_ratio_clamp:
                tgt_tsc_khz = 1  # 6.16+: tgt_tsc_khz ? : 1
        hv = vcpu.hv_clock
        if vcpu.hw_tsc_khz != tgt_tsc_khz and tgt_tsc_khz == 0:
            self.counters["livelocks"] += 1
            raise TimeScaleLivelock(
                f"{self.kernel.name}: {vcpu.kvm.name} vcpu {vcpu.vcpu_id}: kvm_guest_time_update: "
                f"kvm_scale_tsc({self.cpu_tsc_khz()} kHz, ratio {vcpu.tsc_scaling_ratio}) is 0, "
                "so kvm_get_time_scale(NSEC_PER_SEC, 0) would loop forever "
                f"(profile {self.cfg.name}; Linux 6.16 takes 1 kHz: switch tiny_ratio_clamp)",
                where="kvm_get_time_scale",
                level=self.level,
                t_ns=self.world.now_ns,
            )
        if vcpu.hw_tsc_khz != tgt_tsc_khz:
            shift, mul = _k.get_time_scale(scaled_hz=NSEC_PER_SEC, base_hz=tgt_tsc_khz * 1000)
            hv.tsc_shift = int(shift)
            hv.tsc_to_system_mul = int(mul)
            vcpu.hw_tsc_khz = tgt_tsc_khz
        hv.tsc_timestamp = tsc_timestamp
        hv.system_time = (kernel_ns + kvm.kvmclock_offset) & U64_MASK
        vcpu.last_guest_tsc = tsc_timestamp
        hv.flags = _PV_STABLE if use_master_clock else 0
        self.counters["guest_time_updates"] += 1
        if vcpu.pv_time_enabled:
            self.kvm_setup_pvclock_page(vcpu)
        return 0

    def kvm_setup_pvclock_page(self, vcpu: Vcpu) -> None:
        """``kvm_setup_pvclock_page``: version from the guest's copy, (((old+1)|1)+1) mod 2**32
        (odd while writing, even after; ``pvclock_write`` does the odd/even stores), keep the
        guest's GUEST_STOPPED, then trace ``kvm_pvclock_update`` with the record and the
        version of switch ``pvclock_trace_version``: ``odd`` (4.13 ``kvm_setup_pvclock_page``
        traces before the full write) or ``final`` (``kvm_setup_guest_pvclock``, after)."""
        mem = vcpu.kvm.machine.memory
        gpa = vcpu.pv_time_gpa
        # the guest's version (u32 at 0) and flags (u8 at 29) of its pvclock_vcpu_time_info,
        # read in place (hot: every record write; PvclockVcpuTimeInfo.from_bytes decodes all)
        guest_version = int.from_bytes(mem[gpa : gpa + 4], "little")
        guest_flags = mem[gpa + 29]
        hv = vcpu.hv_clock
        odd_version = ((guest_version + 1) | 1) & U32_MASK
        hv.version = (odd_version + 1) & U32_MASK
        hv.flags |= guest_flags & _PV_GUEST_STOPPED
        if vcpu.pvclock_set_guest_stopped_request:
            hv.flags |= _PV_GUEST_STOPPED
            vcpu.pvclock_set_guest_stopped_request = False
        info = _k.PvclockVcpuTimeInfo(
            version=hv.version,
            tsc_timestamp=hv.tsc_timestamp,
            system_time=hv.system_time,
            tsc_to_system_mul=hv.tsc_to_system_mul,
            tsc_shift=hv.tsc_shift,
            flags=hv.flags,
        )
        _k.pvclock_write(mem, info, gpa)
        # switch pvclock_trace_version: 4.13 traces vcpu->hv_clock between the odd version
        # write and the full write (odd); kvm_setup_guest_pvclock traces after the final ++
        self.trace(
            "kvm_pvclock_update",
            lambda: fields_pvclock_update(
                vcpu.vcpu_id,
                odd_version if self.cfg.pvclock_trace_version == "odd" else hv.version,
                hv.tsc_timestamp,
                hv.system_time & U64_MASK,
                hv.tsc_to_system_mul,
                hv.tsc_shift,
                hv.flags,
            ),
        )
        vcpu.kvm._record_pvclock_stable()

    def kvm_gen_kvmclock_update(self, vcpu: Vcpu) -> None:
        """``kvm_gen_kvmclock_update``: CLOCK_UPDATE on self, and ``kvmclock_update_work``
        (CLOCK_UPDATE on every vCPU of the VM) 100 ms later."""
        vcpu.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
        kvm = vcpu.kvm
        if not kvm._update_work_pending:  # schedule_delayed_work on a pending work is a no-op
            kvm._update_work_pending = True
            self.world.after(KVMCLOCK_UPDATE_DELAY_NS, self.kvmclock_update_fn, kvm)

    def kvmclock_update_fn(self, kvm: Kvm) -> None:
        """``kvmclock_update_fn``: CLOCK_UPDATE (+ kick) on every vCPU of the VM."""
        kvm._update_work_pending = False
        for v in kvm.vcpus:
            v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)

    def schedule_kvmclock_sync(self, kvm: Kvm) -> None:
        """The tail of ``kvm_arch_vcpu_postcreate``: with ``kvmclock_periodic_sync``,
        ``schedule_delayed_work(&kvmclock_sync_work, KVMCLOCK_SYNC_PERIOD)`` (a World event
        300 s later; a no-op while one is pending, so the first vCPU's creation arms it)."""
        if self.kvmclock_periodic_sync and kvm._sync_work is None:
            kvm._sync_work = self.world.after(KVMCLOCK_SYNC_PERIOD_NS, self.kvmclock_sync_fn, kvm)

    def kvmclock_sync_fn(self, kvm: Kvm) -> None:
        """``kvmclock_sync_fn`` (every 300 s per VM since 3.14, all profiles): schedule the
        update work now (``schedule_delayed_work(.., 0)``, a no-op while it is pending) and
        re-arm itself KVMCLOCK_SYNC_PERIOD later."""
        kvm._sync_work = None
        if not self.kvmclock_periodic_sync:  # 4.13's test (always false since 6.7 dropped it)
            return
        kvm.counters["kvmclock_syncs"] += 1
        if not kvm._update_work_pending:
            kvm._update_work_pending = True
            self.world.after(0, self.kvmclock_update_fn, kvm)
        kvm._sync_work = self.world.after(KVMCLOCK_SYNC_PERIOD_NS, self.kvmclock_sync_fn, kvm)

    # -- MSRs --------------------------------------------------------------------------------------
    def kvm_set_msr_common(
        self, vcpu: Vcpu, msr: int, data: int, *, host_initiated: bool = False
    ) -> None:
        """``kvm_set_msr_common`` for the clock MSRs: MSR_IA32_TSC -> ``kvm_write_tsc`` (any
        write; switch ``guest_tsc_write_syncs`` on), or (5.10+) ``kvm_synchronize_tsc`` for a
        host-initiated write and, for a guest write, only ``l1_tsc_offset`` and
        IA32_TSC_ADJUST move by adj = (data - scaled rdtsc()) - l1_tsc_offset (cycles);
        MSR_KVM_SYSTEM_TIME(_NEW): boot vCPU old/new switch -> MASTERCLOCK_UPDATE,
        GLOBAL_CLOCK_UPDATE, record enabled at gpa ``data & ~1`` when bit 0 is set."""
        kvm = vcpu.kvm
        if msr == MSR_IA32_TSC:
            if self.cfg.guest_tsc_write_syncs:
                self.kvm_write_tsc(vcpu, data, host_initiated=host_initiated)
            elif host_initiated:
                self.kvm_synchronize_tsc(vcpu, data)
            else:
                # 5.10+: a guest write moves only its own offset and IA32_TSC_ADJUST by
                # adj = (data - scaled rdtsc()) - l1_tsc_offset (u64), no synchronisation
                adj = (self.kvm_compute_tsc_offset(vcpu, data) - vcpu.l1_tsc_offset) & U64_MASK
                self.kvm_vcpu_write_tsc_offset(vcpu, vcpu.l1_tsc_offset + adj)  # adjust_..._guest
                vcpu.ia32_tsc_adjust_msr = _s64(vcpu.ia32_tsc_adjust_msr + adj)
            return
        if msr in (MSR_KVM_SYSTEM_TIME, MSR_KVM_SYSTEM_TIME_NEW):
            vcpu.pv_time_enabled = False  # kvmclock_reset
            if vcpu.vcpu_id == 0 and not host_initiated:
                tmp = msr == MSR_KVM_SYSTEM_TIME
                if kvm.boot_vcpu_runs_old_kvmclock != tmp:
                    vcpu.kvm_make_request(KVM_REQ_MASTERCLOCK_UPDATE)
                kvm.boot_vcpu_runs_old_kvmclock = tmp
            vcpu.time = data
            vcpu.kvm_make_request(KVM_REQ_GLOBAL_CLOCK_UPDATE)
            if not data & 1:
                return
            gpa = data & ~1 & U64_MASK
            # kvm_gfn_to_hva_cache_init fails outside guest memory -> pv_time_enabled = false
            if gpa + 32 <= len(kvm.machine.memory):
                vcpu.pv_time_gpa = gpa
                vcpu.pv_time_enabled = True
            return
        if msr in (MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW):
            # kvm->arch.wall_clock = data; kvm_write_wall_clock(kvm, data)
            kvm.wall_clock = data
            self.kvm_write_wall_clock(kvm, data)
            return
        raise ValueError(
            f"msr={msr:#x} not modelled (clock MSRs: MSR_IA32_TSC {MSR_IA32_TSC:#x}, "
            f"MSR_KVM_SYSTEM_TIME {MSR_KVM_SYSTEM_TIME:#x}, "
            f"MSR_KVM_SYSTEM_TIME_NEW {MSR_KVM_SYSTEM_TIME_NEW:#x}, "
            f"MSR_KVM_WALL_CLOCK {MSR_KVM_WALL_CLOCK:#x}, "
            f"MSR_KVM_WALL_CLOCK_NEW {MSR_KVM_WALL_CLOCK_NEW:#x})"
        )

    def kvm_set_guest_paused(self, vcpu: Vcpu) -> None:
        """x86.c ``kvm_set_guest_paused`` (KVM_KVMCLOCK_CTRL): -EINVAL (``ValueError``) unless
        the vCPU's kvmclock is enabled; else ask for PVCLOCK_GUEST_STOPPED in the next record
        (``pvclock_set_guest_stopped_request``) and request KVM_REQ_CLOCK_UPDATE."""
        if not vcpu.pv_time_enabled:
            raise ValueError(
                f"{vcpu.kvm.name} vcpu {vcpu.vcpu_id}: KVM_KVMCLOCK_CTRL without kvmclock"
                " enabled (-EINVAL)"
            )
        vcpu.pvclock_set_guest_stopped_request = True
        vcpu.kvm_make_request(KVM_REQ_CLOCK_UPDATE)

    # -- load / put / entry ------------------------------------------------------------------------
    def adjust_tsc_offset_host(self, vcpu: Vcpu, adjustment: int) -> None:
        """x86.c ``adjust_tsc_offset_host`` (4.13 and 6.18): the host-cycle ``adjustment``
        (an s64) scaled to guest cycles with the vCPU's (L1) ratio, ``kvm_scale_tsc((u64)
        adjustment, ratio)`` (the kernel WARNs on a negative one with a ratio), then
        ``adjust_tsc_offset_guest``: ``kvm_vcpu_write_tsc_offset(l1_tsc_offset + scaled)``."""
        scaled = self.kvm_scale_tsc(vcpu, adjustment & U64_MASK)
        if vcpu.tsc_scaling_ratio != self.default_tsc_scaling_ratio and adjustment < 0:
            self.counters["warn.adjust_tsc_offset_host_negative"] += 1
        self.kvm_vcpu_write_tsc_offset(vcpu, vcpu.l1_tsc_offset + scaled)

    def kvm_arch_vcpu_load(self, vcpu: Vcpu, cpu: int) -> None:
        """``kvm_arch_vcpu_load``: apply ``tsc_offset_adjustment``; on a pCPU change or an
        unstable TSC: backwards TSC -> ``mark_tsc_unstable``; unstable -> re-offset from
        ``last_guest_tsc`` + catch-up; GLOBAL_CLOCK_UPDATE unless masterclock (or first load)."""
        if vcpu.tsc_offset_adjustment:
            # "Apply any externally detected TSC adjustments (due to suspend)"
            self.adjust_tsc_offset_host(vcpu, vcpu.tsc_offset_adjustment)
            vcpu.tsc_offset_adjustment = 0
            vcpu.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
        k = self.kernel
        if vcpu.cpu != cpu or k.tsc_unstable:  # check_tsc_unstable(), inlined (hot)
            now = self.rdtsc()
            tsc_delta = 0 if not vcpu.last_host_tsc else now - vcpu.last_host_tsc
            backwards = tsc_delta < 0
            if backwards:
                self.counters["backwards_tsc"] += 1
                self.moment(
                    f"{vcpu.kvm.name}: vcpu {vcpu.vcpu_id} saw a backwards TSC on CPU {cpu}"
                )
                k.mark_tsc_unstable("KVM discovered backwards TSC")
            if k.tsc_unstable:
                if backwards:
                    offset = self.kvm_compute_tsc_offset(vcpu, vcpu.last_guest_tsc)
                else:  # hot (every load on an unstable host): its rdtsc() is ``now`` again
                    offset = (vcpu.last_guest_tsc - self.kvm_scale_tsc(vcpu, now)) & U64_MASK
                self.kvm_vcpu_write_tsc_offset(vcpu, offset)
                vcpu.tsc_catchup = True
            if not vcpu.kvm.use_master_clock or vcpu.cpu == -1:
                vcpu.kvm_make_request(KVM_REQ_GLOBAL_CLOCK_UPDATE)
            if vcpu.cpu != cpu:
                vcpu.kvm_make_request(KVM_REQ_MIGRATE_TIMER)
            vcpu.cpu = cpu

    def kvm_arch_vcpu_put(self, vcpu: Vcpu) -> None:
        """``kvm_arch_vcpu_put``: ``last_host_tsc = rdtsc()``."""
        vcpu.last_host_tsc = self.rdtsc()

    # -- host suspend / resume: syscore ops, CPU hotplug, the PM notifier --------------------------
    def kvm_arch_enable_virtualization_cpu(self) -> None:
        """x86.c ``kvm_arch_enable_virtualization_cpu`` (6.12+; ``kvm_arch_hardware_enable``
        in 4.13, the same clock code) on ``kernel.current_cpu``, after the vendor enable:

        ``local_tsc = rdtsc()``; ``stable = !check_tsc_unstable()``; over every vCPU of every
        VM: unstable -> CLOCK_UPDATE for the vCPUs last loaded on this CPU; stable and
        ``last_host_tsc > local_tsc`` -> ``backwards_tsc`` with ``max_tsc`` the largest
        ``last_host_tsc``.  If backwards: ``delta_cyc = max_tsc - local_tsc`` (u64) and for
        every VM ``backwards_tsc_observed = true`` (per VM: masterclock is off for good), for
        every vCPU ``tsc_offset_adjustment += delta_cyc`` (applied, scaled, at its next
        ``kvm_arch_vcpu_load``), ``last_host_tsc = local_tsc`` and MASTERCLOCK_UPDATE, and
        ``last_tsc_nsec = last_tsc_write = 0`` ("We have to disable TSC offset matching").
        Runs on each CPU as it enables virtualization; after the first CPU no
        ``last_host_tsc`` is above the reset TSC, so the adjustment is made once."""
        k = self.kernel
        cpu = k.current_cpu
        local_tsc = self.rdtsc()
        stable = not k.check_tsc_unstable()
        backwards_tsc = False
        max_tsc = 0
        for kvm in self.vm_list:
            for vcpu in kvm.vcpus:
                if not stable and vcpu.cpu == cpu:
                    vcpu.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
                if stable and vcpu.last_host_tsc > local_tsc:
                    backwards_tsc = True
                    max_tsc = max(max_tsc, vcpu.last_host_tsc)
        self.counters["enable_virtualization_cpu"] += 1
        if not backwards_tsc:
            return
        delta_cyc = (max_tsc - local_tsc) & U64_MASK
        self.counters["backwards_tsc_resume"] += 1
        for kvm in self.vm_list:
            kvm.backwards_tsc_observed = True
            for vcpu in kvm.vcpus:
                vcpu.tsc_offset_adjustment = _s64(vcpu.tsc_offset_adjustment + delta_cyc)
                vcpu.last_host_tsc = local_tsc
                vcpu.kvm_make_request(KVM_REQ_MASTERCLOCK_UPDATE)
            kvm.last_tsc_nsec = 0
            kvm.last_tsc_write = 0
            self.moment(
                f"{kvm.name}: host TSC went backwards by {delta_cyc} cycles (CPU {cpu}): "
                "backwards_tsc_observed, tsc_offset_adjustment on every vCPU"
            )

    def kvm_arch_disable_virtualization_cpu(self) -> None:
        """x86.c ``kvm_arch_disable_virtualization_cpu`` (``kvm_arch_hardware_disable``):
        the vendor disable and the user-return MSRs; nothing of the clock."""
        self.counters["disable_virtualization_cpu"] += 1

    def kvm_suspend(self) -> None:
        """kvm_main.c ``kvm_suspend`` (``kvm_syscore_ops.suspend``, boot CPU, secondaries
        already offline): with ``kvm_usage_count`` (4.13: VMs exist; 6.18: also
        ``enable_virt_at_load``) disable virtualization on this CPU."""
        self.kvm_arch_disable_virtualization_cpu()

    def kvm_resume(self) -> None:
        """kvm_main.c ``kvm_resume`` (``kvm_syscore_ops.resume``, on the boot CPU after
        ``timekeeping_resume``): ``kvm_enable_virtualization_cpu`` ->
        :meth:`kvm_arch_enable_virtualization_cpu` (4.13: ``hardware_enable_nolock`` ->
        ``kvm_arch_hardware_enable``, only while VMs exist; without VMs the check has nothing
        to look at, so the two are equal)."""
        self.kvm_arch_enable_virtualization_cpu()

    def kvm_online_cpu(self) -> None:
        """kvm_main.c ``kvm_online_cpu`` (CPUHP_AP_KVM_ONLINE; 4.13 ``kvm_starting_cpu``) on a
        secondary CPU coming back online after the resume:
        :meth:`kvm_arch_enable_virtualization_cpu` on that CPU."""
        self.kvm_arch_enable_virtualization_cpu()

    def kvm_freeze_vcpu_threads(self) -> None:
        """``suspend_freeze_processes`` as KVM sees it: each vCPU thread inside KVM_RUN (a VM
        whose machine is not paused) is made to leave it, on the host CPU the vCPU is loaded
        on: the exit's ``last_guest_tsc = kvm_read_l1_tsc(rdtsc())`` (``vcpu_enter_guest``),
        then ``kvm_arch_vcpu_put`` (``last_host_tsc = rdtsc()``).  A paused VM's threads are
        already out of KVM_RUN: their values are from when they left."""
        k = self.kernel
        for kvm in self.vm_list:
            if kvm.machine.paused:
                continue
            for vcpu in kvm.vcpus:
                if vcpu.cpu < 0 or vcpu.in_guest:
                    continue

                def leave(v: Vcpu = vcpu) -> None:
                    v.last_guest_tsc = self.kvm_read_l1_tsc(v, self.rdtsc())
                    self.kvm_arch_vcpu_put(v)

                k.run_on_cpu(vcpu.cpu, leave)

    def kvm_arch_suspend_notifier(self, kvm: Kvm) -> int:
        """x86.c ``kvm_arch_suspend_notifier`` (6.18): ``kvm_set_guest_paused`` on every vCPU,
        ignoring its -EINVAL for a vCPU without kvmclock ("continuing on is correct and
        desirable"; 5.14 skipped those vCPUs and took ``kvm->lock``); NOTIFY_DONE."""
        for vcpu in kvm.vcpus:
            if vcpu.pv_time_enabled:
                self.kvm_set_guest_paused(vcpu)
        return NOTIFY_DONE

    def kvm_arch_pm_notifier(self, kvm: Kvm, state: int) -> int:
        """x86.c ``kvm_arch_pm_notifier`` (switch ``pm_notifier``, 5.14 7d62874f69d7):
        PM_HIBERNATION_PREPARE and PM_SUSPEND_PREPARE mark the guest paused
        (:meth:`kvm_arch_suspend_notifier`); every other event NOTIFY_DONE."""
        from kvmclock.kernel import PM_HIBERNATION_PREPARE, PM_SUSPEND_PREPARE

        if state in (PM_HIBERNATION_PREPARE, PM_SUSPEND_PREPARE):
            return self.kvm_arch_suspend_notifier(kvm)
        return NOTIFY_DONE

    def kvm_init_pm_notifier(self, kvm: Kvm) -> None:
        """kvm_main.c ``kvm_init_pm_notifier`` (at ``kvm_create_vm``, switch ``pm_notifier``,
        5.14 2fdef3a2ae01): the VM's ``kvm_pm_notifier_call`` on the host's PM chain with
        priority INT_MAX ("Suspend KVM before we suspend ftrace, RCU, etc.")."""

        def kvm_pm_notifier_call(state: int, data: Any) -> int:
            return self.kvm_arch_pm_notifier(kvm, state)

        kvm.pm_notifier = kvm_pm_notifier_call
        self.kernel.pm_chain.register(kvm_pm_notifier_call, (1 << 31) - 1)

    def kvm_destroy_pm_notifier(self, kvm: Kvm) -> None:
        """kvm_main.c ``kvm_destroy_pm_notifier`` (at ``kvm_destroy_vm``): unregister."""
        if kvm.pm_notifier is not None:
            self.kernel.pm_chain.unregister(kvm.pm_notifier)
            kvm.pm_notifier = None

    def process_requests(self, vcpu: Vcpu) -> None:
        """The request part of ``vcpu_enter_guest`` in the kernel's order, repeated while a
        request is pending (a pending request cancels the entry and the loop goes round):
        MIGRATE_TIMER, MASTERCLOCK_UPDATE, GLOBAL_CLOCK_UPDATE, CLOCK_UPDATE.
        MCLOCK_INPROGRESS is never consumed: an entry with it pending cannot happen."""
        if not vcpu.requests:  # the common entry
            return
        owner = vcpu.owner
        for _ in range(_MAX_ENTRY_LOOPS):
            requests = vcpu.requests
            if not requests:
                return
            if requests & _REQ_MCLOCK_INPROGRESS:  # kvm_test_request, inlined (hot)
                raise RuntimeError(
                    f"{vcpu.kvm.name} vcpu {vcpu.vcpu_id}: "
                    "entry while MCLOCK_INPROGRESS is pending "
                    "(a masterclock update is in progress; the vCPU would wait)"
                )
            # kvm_check_request (test and clear) of each, on the word (hot: every entry)
            if requests & _REQ_MIGRATE_TIMER:
                vcpu.requests &= ~_REQ_MIGRATE_TIMER
            if vcpu.requests & _REQ_MASTERCLOCK_UPDATE:
                vcpu.requests &= ~_REQ_MASTERCLOCK_UPDATE
                self.kvm_gen_update_masterclock(vcpu.kvm, owner)
            if vcpu.requests & _REQ_GLOBAL_CLOCK_UPDATE:
                vcpu.requests &= ~_REQ_GLOBAL_CLOCK_UPDATE
                self.kvm_gen_kvmclock_update(vcpu)
            if vcpu.requests & _REQ_CLOCK_UPDATE:
                vcpu.requests &= ~_REQ_CLOCK_UPDATE
                self.kvm_guest_time_update(vcpu)
        raise RuntimeError(
            f"{vcpu.kvm.name} vcpu {vcpu.vcpu_id}: "
            f"requests keep being re-raised ({vcpu.requests:#x})"
        )

    def kvm_calc_nested_tsc_multiplier(self, l1_multiplier: int, l2_multiplier: int) -> int:
        """x86.c ``kvm_calc_nested_tsc_multiplier`` (5.14+): the ratio the hardware runs L2
        with, ``mul_u64_u64_shr(l1, l2, frac)``, or ``l1`` when L2's is the default."""
        if l2_multiplier != self.default_tsc_scaling_ratio:
            return int(
                _k.mul_u64_u64_shr(l1_multiplier, l2_multiplier, self.tsc_scaling_ratio_frac_bits)
            )
        return l1_multiplier

    def kvm_calc_nested_tsc_offset(self, l1_offset: int, l2_offset: int, l2_multiplier: int) -> int:
        """x86.c ``kvm_calc_nested_tsc_offset`` (5.14+): the offset the hardware runs L2 with,
        ``mul_s64_u64_shr((s64)l1_offset, l2_multiplier, frac) + l2_offset`` (u64), or
        ``l1_offset + l2_offset`` when L2's ratio is the default."""
        if l2_multiplier == self.default_tsc_scaling_ratio:
            nested = l1_offset
        else:
            nested = int(
                _k.mul_s64_u64_shr(
                    _s64(l1_offset), l2_multiplier, self.tsc_scaling_ratio_frac_bits
                )
            )
        return (nested + l2_offset) & U64_MASK

    @staticmethod
    def kvm_vcpu_exit_catchup(vcpu: Vcpu) -> None:
        """``vcpu_enter_guest`` after a VM exit: with ``tsc_always_catchup`` (a guest faster
        than a host without TSC scaling) request KVM_REQ_CLOCK_UPDATE, so the next entry's
        ``kvm_guest_time_update`` pushes the TSC up to ``compute_guest_tsc``."""
        if vcpu.tsc_always_catchup:
            vcpu.kvm_make_request(KVM_REQ_CLOCK_UPDATE)

    def vcpu_run(self, vcpu: Vcpu, fn: Callable[[], T]) -> T:
        """The vCPU thread on host CPU ``kernel.current_cpu``: load, ``vcpu_enter_guest``
        (requests, then the guest code ``fn``), exit (``last_guest_tsc``), put."""
        k = self.kernel
        cpu = k.current_cpu
        prev_pid = self._cur_pid
        self._cur_pid = vcpu.kvm.pid + 1 + vcpu.vcpu_id
        try:
            # hot (every entry): kvm_arch_vcpu_load only when it has work (an adjustment, a
            # pCPU change, an unstable TSC); process_requests only with a request pending
            if vcpu.tsc_offset_adjustment or vcpu.cpu != cpu or k.tsc_unstable:
                self.kvm_arch_vcpu_load(vcpu, cpu)
            if vcpu.requests:
                self.process_requests(vcpu)
            vcpu.entries += 1
            self.counters["entries"] += 1
            vcpu.in_guest = True
            try:
                out = fn()
            finally:
                vcpu.in_guest = False
            # the exit's rdtsc and kvm_arch_vcpu_put's are one instant on one CPU: one read
            host_tsc = k.machine.cpus[k.current_cpu].read_tsc()  # rdtsc(), inlined
            if vcpu.tsc_scaling_ratio == self.default_tsc_scaling_ratio:  # kvm_read_l1_tsc
                vcpu.last_guest_tsc = (vcpu.tsc_offset + host_tsc) & U64_MASK
            else:
                vcpu.last_guest_tsc = self.kvm_read_l1_tsc(vcpu, host_tsc)
            if vcpu.tsc_always_catchup:  # kvm_vcpu_exit_catchup
                vcpu.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
            vcpu.last_host_tsc = host_tsc  # kvm_arch_vcpu_put
            return out
        finally:
            self._cur_pid = prev_pid

    def __repr__(self) -> str:
        return (
            f"KvmModule(kernel={self.kernel.name!r}, profile={self.profile!r}, "
            f"vms={len(self.vm_list)})"
        )

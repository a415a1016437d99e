"""KVM's x86 clock logic (arch/x86/kvm/x86.c, v4.13 of July 2017 plus the v2 series).

``KvmModule`` is KVM loaded into one ``Kernel`` (``vm_list``, ``kvm_lock``, the notifier KVM
registers in ``kvm_arch_init``); ``Kvm`` is one VM (``struct kvm_arch`` clock fields by their
kernel names); ``Vcpu`` is one vCPU (``struct kvm_vcpu_arch`` clock fields).  Two profiles:

* ``gtod``: the 2017 base of the series (and the shape upstream still has): KVM keeps a
  shadow ``pvclock_gtod_data`` refreshed by ``pvclock_gtod_notify`` on every timekeeping
  update; masterclock only when the shadow vclock mode is TSC; traces print ``hostclock tsc``.
* ``series``: patch 09 (the seed) with 10 and 11: KVM asks the timekeeper directly
  (``get_tk_seq``, ``get_tk_mono_clock_mode``, ``ktime_get_boot_ns_with_cycles``), listens to
  the clocksource change chain (``process_clocksource_change``), TSC or a stable pvclock
  counts as stable; traces print ``hostclock stable 1``.

Where 2017 and today differ, 2017 is followed (kvmclock base = ``ktime_get_boot_ns``, any
MSR_IA32_TSC write synchronises, ``kvm_track_tsc_matching`` requests whenever masterclock is
on, ``backwards_tsc_observed`` global); each choice is noted next to the code.

Everything runs synchronously in simulated time: "kernel code on a CPU" means inside
``kernel.run_on_cpu(cpu, fn)``; ``rdtsc()`` is the TSC of ``kernel.current_cpu``.

Where the model departs from the kernel it claims (v4.13 arch/x86/kvm/x86.c, plus the series
in profile ``series``), and why:

* ``Kvm.get_clock(extended=True)`` adds KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC with a
  realtime and a host TSC, with or without masterclock.  v4.13 has no such flags (KVM_GET_CLOCK
  returns ``get_kvmclock_ns`` and KVM_CLOCK_TSC_STABLE iff masterclock); the kernel that has
  them (5.16+) sets them only while masterclock is on, and then computes ``clock`` from that
  same host TSC.  Kept so a scenario can show today's ioctl next to 2017's; the flag bits
  are today's values.
* ``Kvm.set_clock`` accepts KVM_CLOCK_REALTIME under both 2017 profiles; v4.13 returns
  -EINVAL for any non-zero flag.  The realtime path is today's (advance ``clock`` by how far
  host realtime is past ``realtime``) but keeps the 2017 base (``ktime_get_boot_ns``, not
  today's raw-monotonic base) without masterclock, and it refuses KVM_CLOCK_TSC_STABLE and
  KVM_CLOCK_HOST_TSC, which today's kernel accepts and ignores (KVM_CLOCK_VALID_FLAGS) so
  userspace can hand GET_CLOCK's result back.  Reason: the set-clock scenario compares the
  2017 and today's semantics on one model.
* No ``kvm_arch_hardware_enable`` (CPU hotplug, resume from suspend): the backwards-TSC
  check against every vCPU's ``last_host_tsc`` there is missing, so
  ``backwards_tsc_observed`` (a field, read by the masterclock rule) is never set,
  ``Vcpu.tsc_offset_adjustment`` is never non-zero and ``last_tsc_nsec``/``last_tsc_write``
  are never zeroed by it.  The ``tsc_offset_adjustment`` branch of ``kvm_arch_vcpu_load``
  is therefore dead; it also adds the adjustment unscaled where the kernel's
  ``adjust_tsc_offset_host`` scales it with ``kvm_scale_tsc``.  The only backwards-TSC path
  modelled is the one in ``kvm_arch_vcpu_load`` (a vCPU moving to a CPU whose TSC is behind).
* ``Vcpu.tsc_always_catchup`` is never set: ``set_tsc_khz`` is modelled only with hardware
  TSC scaling (VMX, 48 fraction bits, ``kvm_has_tsc_control``), so the no-scaling path
  (a guest kHz above the host's -> catch-up on every exit; below -> refused) does not exist,
  and the scaling ratio is not checked against 0 and the vendor maximum; SVM's 32-bit
  ratio is not modelled.
* The L1 TSC offset is ``tsc_offset`` (``Vcpu.l1_tsc_offset``): no nested VMX/SVM TSC state
  (vmcs12/vmcb12 offset and multiplier), so ``kvm_read_l1_tsc`` is the offset plus the
  scaled host TSC.  Nesting is modelled as a guest kernel running its own KVM on virtual
  CPUs whose TSC is L0's guest TSC, not as L0 KVM emulating VMX for L1.
* No ``kvmclock_sync_work`` (``kvmclock_sync_fn``, every KVMCLOCK_SYNC_PERIOD = 300 s from
  ``kvm_arch_vcpu_postcreate``): a record changes only on a request, also in runs longer
  than 300 s.
* No kicks or IPIs: a request is taken when the vCPU next enters in simulated time
  (``kvmclock_update_fn`` kicks every vCPU in the kernel; ``kvm_make_mclock_inprogress_request``
  kicks and waits).  An entry with MCLOCK_INPROGRESS pending cannot happen in the kernel (the
  vCPU waits); here it raises ``RuntimeError``.  KVM_REQ_MIGRATE_TIMER is consumed and does
  nothing (no LAPIC timers).
* ``pvclock_gtod_work`` runs a fixed PVCLOCK_GTOD_WORK_DELAY_NS after the notifier that
  queued it (the kernel: whenever a system_long_wq worker runs).
* CONSTANT_TSC: ``cpu_tsc_khz`` is the CPU's calibrated ``tsc_khz``; no cpufreq notifier, so
  ``kvm_guest_time_update``'s retry on ``cpu_tsc_khz == 0`` never happens in the scenarios.
* ``update_ia32_tsc_adjust_msr`` runs on every guest MSR_IA32_TSC write (as if the guest had
  TSC_ADJUST in CPUID); ``ia32_tsc_adjust_msr`` is kept but never read: MSR_IA32_TSC_ADJUST,
  MSR_KVM_WALL_CLOCK(_NEW) and every other MSR are not modelled (``ValueError``).
* The guest TSC frequency is one per-VM ``tsc_khz`` given at VM creation and applied to each
  vCPU by ``kvm_set_tsc_khz`` at vCPU creation (like today's VM-wide KVM_SET_TSC_KHZ); v4.13
  set ``max_tsc_khz`` at vCPU init and changed it per vCPU with the vCPU ioctl.
* ``kvm_arch_init_vm`` takes ``masterclock_lock`` around the first masterclock computation;
  the kernel calls ``pvclock_update_vm_gtod_copy`` unlocked (no vCPU exists yet).  Only the
  lock's acquisition count can tell.
* Not modelled: the Hyper-V TSC page (``kvm_hv_setup_tsc_page``), Xen shared info, the
  guest's wall clock record.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import kvmclock as _k
from kvmclock.errors import LivelockDetected
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
    "KVMCLOCK_UPDATE_DELAY_NS",
    "KVM_CLOCK_HOST_TSC",
    "KVM_CLOCK_REALTIME",
    "KVM_CLOCK_TSC_STABLE",
    "MSR_IA32_TSC",
    "MSR_KVM_SYSTEM_TIME",
    "MSR_KVM_SYSTEM_TIME_NEW",
    "PVCLOCK_GTOD_WORK_DELAY_NS",
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
# include/uapi/linux/kvm.h (KVM_CLOCK_TSC_STABLE since 2016; REALTIME/HOST_TSC since 5.16)
KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3
# vclock modes (arch/x86/include/asm/clocksource.h, 2017)
VCLOCK_NONE = 0
VCLOCK_TSC = 1
VCLOCK_PVCLOCK = 2

VMX_TSC_FRAC_BITS = 48  # kvm_tsc_scaling_ratio_frac_bits on VMX
TSC_TOLERANCE_PPM = 250  # module parameter tsc_tolerance_ppm
KVMCLOCK_UPDATE_DELAY_NS = 100_000_000  # KVMCLOCK_UPDATE_DELAY = msecs_to_jiffies(100)
# queue_work(system_long_wq, &pvclock_gtod_work): the kworker runs a little after the notifier.
PVCLOCK_GTOD_WORK_DELAY_NS = 10_000
FAULTS = ("patch09-missing-do",)
DEFAULT_SPIN_LIMIT = 100_000
_MAX_ENTRY_LOOPS = 64

_PV_STABLE = 1  # PVCLOCK_TSC_STABLE_BIT (pvclock-abi.h)
_PV_GUEST_STOPPED = 2  # PVCLOCK_GUEST_STOPPED


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
    if trace_format == "series":
        return None, bool(host_clock)
    return int(host_clock), None


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
    """``struct pvclock_gtod_data`` (x86.c, profile gtod): KVM's shadow of the timekeeper."""

    seq: int = 0
    vclock_mode: int = VCLOCK_NONE
    cycle_last: int = 0
    mask: int = 0
    mult: int = 0
    shift: int = 0
    boot_ns: int = 0
    nsec_base: int = 0
    wall_time_sec: int = 0


@dataclass
class KvmClockData:
    """``struct kvm_clock_data`` (include/uapi/linux/kvm.h)."""

    clock: int
    flags: int = 0
    realtime: int = 0
    host_tsc: int = 0


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
        self.tsc_scaling_ratio = 1 << VMX_TSC_FRAC_BITS
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
        self.user_tsc_khz = tsc_khz
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
        self.tsc_write_lock = SpinLock(f"{name}.tsc_write_lock")
        # the seed (patch 09) renamed pvclock_gtod_sync_lock when it dropped the shadow copy
        lock_name = (
            "masterclock_lock"
            if module.cfg.kvm_host_clock == "timekeeper"
            else "pvclock_gtod_sync_lock"
        )
        self.masterclock_lock = SpinLock(f"{name}.{lock_name}")
        self._update_work_pending = False
        self.counters: collections.Counter[str] = collections.Counter()
        self.masterclock_timeline: list[list[Any]] = []
        self.pvclock_stable_timeline: list[list[Any]] = []
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
    def backwards_tsc_observed(self) -> bool:
        """2017: a global static bool (``backwards_tsc_observed`` in x86.c), per-VM since."""
        return self.module.backwards_tsc_observed

    @property
    def kernel(self) -> Kernel:
        """The host kernel running this VM."""
        return self.module.kernel

    def _record_masterclock(self) -> None:
        tl = self.masterclock_timeline
        if not tl or tl[-1][1] != self.use_master_clock:
            tl.append([self.module.world.now_ns, self.use_master_clock])
            self.module.moment(
                f"{self.name}: masterclock {'on' if self.use_master_clock else 'off'}"
            )

    def _record_pvclock_stable(self) -> None:
        """All enabled records carry PVCLOCK_TSC_STABLE_BIT (the guest level's "pvclock stable")."""
        written = [v for v in self.vcpus if v.pv_time_enabled and v.hv_clock.version]
        if not written:
            return
        stable = all(v.hv_clock.flags & _PV_STABLE for v in written)
        tl = self.pvclock_stable_timeline
        if not tl or tl[-1][1] != stable:
            tl.append([self.module.world.now_ns, stable])
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
            raise ValueError(f"affinity={affinity!r} out of range (0..{ncpu - 1}: host CPUs)")
        vcpu = Vcpu(self, len(self.vcpus), affinity)

        def create() -> None:
            m = self.module
            # kvm_arch_vcpu_init: kvm_set_tsc_khz(vcpu, max_tsc_khz) (or the user's kHz)
            host_khz = hk.machine.cpus[hk.current_cpu].tsc_khz
            m.kvm_set_tsc_khz(vcpu, self.user_tsc_khz or host_khz, host_khz)
            # kvm_arch_vcpu_setup: vcpu_load; reset; vcpu_put
            m.kvm_arch_vcpu_load(vcpu, hk.current_cpu)
            m.kvm_arch_vcpu_put(vcpu)
            self.vcpus.append(vcpu)
            self.machine.add_cpu(vcpu)
            self.online_vcpus += 1
            # kvm_arch_vcpu_postcreate: vcpu_load; host-initiated TSC write of 0; vcpu_put
            m.kvm_arch_vcpu_load(vcpu, hk.current_cpu)
            m.kvm_write_tsc(vcpu, 0, host_initiated=True)
            m.kvm_arch_vcpu_put(vcpu)

        hk.run_on_cpu(self.module.ioctl_cpu, create)
        return vcpu

    # -- ioctls ------------------------------------------------------------------------------------
    def get_clock(self, *, extended: bool = False) -> KvmClockData:
        """``KVM_GET_CLOCK``: 2017 = ``get_kvmclock_ns`` + KVM_CLOCK_TSC_STABLE iff masterclock.

        ``extended=True`` adds today's (5.16+) KVM_CLOCK_REALTIME|KVM_CLOCK_HOST_TSC fields:
        host realtime and host TSC read at the same instant (simulated time does not move).
        """
        hk = self.kernel

        def body() -> KvmClockData:
            m = self.module
            data = KvmClockData(clock=m.get_kvmclock_ns(self))
            data.flags = KVM_CLOCK_TSC_STABLE if self.use_master_clock else 0
            if extended:
                data.realtime = hk.timekeeper.ktime_get_real_ns()
                data.host_tsc = m.rdtsc()
                data.flags |= KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC
            return data

        return hk.run_on_cpu(self.module.ioctl_cpu, body)

    def set_clock(self, clock: int, flags: int = 0, realtime: int = 0) -> None:
        """``KVM_SET_CLOCK``.  ``flags=0``: 2017 semantics (``kvm_gen_update_masterclock``, then
        ``kvmclock_offset += clock - get_kvmclock_ns``, CLOCK_UPDATE to all vCPUs).
        ``flags=KVM_CLOCK_REALTIME``: today's semantics (advance ``clock`` by how far host
        realtime is past ``realtime``, never backwards; ``kvmclock_offset = clock - base``
        where base is ``master_kernel_ns`` with masterclock, else the host boot ns).
        Other flags: ``ValueError`` (the kernel returns -EINVAL)."""
        for name, v, bits in (
            ("clock", clock, 64),
            ("realtime", realtime, 64),
            ("flags", flags, 32),
        ):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if not 0 <= v < (1 << bits):
                raise ValueError(f"{name}={v} out of range (0..2**{bits}-1)")
        if flags & ~KVM_CLOCK_REALTIME:
            raise ValueError(
                f"flags={flags:#x} invalid: only 0 or KVM_CLOCK_REALTIME ({KVM_CLOCK_REALTIME:#x})"
            )
        hk = self.kernel
        m = self.module

        def body_2017() -> None:
            m.kvm_gen_update_masterclock(self, owner="ioctl")
            now_ns = m.get_kvmclock_ns(self)
            self.kvmclock_offset += clock - now_ns
            for v in self.vcpus:
                v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)

        def body_realtime() -> None:
            owner = "ioctl"
            self.masterclock_lock.acquire(owner)
            try:
                for v in self.vcpus:
                    v.kvm_make_request(KVM_REQ_MCLOCK_INPROGRESS)
                m.update_masterclock(self)
                data_clock = clock
                now_real_ns = hk.timekeeper.ktime_get_real_ns()
                if now_real_ns > realtime:
                    data_clock += now_real_ns - realtime
                base = (
                    self.master_kernel_ns
                    if self.use_master_clock
                    else hk.timekeeper.ktime_get_boot_ns()
                )
                self.kvmclock_offset = data_clock - base
                for v in self.vcpus:
                    v.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
                for v in self.vcpus:
                    v.kvm_clear_request(KVM_REQ_MCLOCK_INPROGRESS)
            finally:
                self.masterclock_lock.release(owner)

        hk.run_on_cpu(m.ioctl_cpu, body_realtime if flags & KVM_CLOCK_REALTIME else body_2017)
        m.moment(f"VM {self.name}: KVM_SET_CLOCK clock={clock} flags={flags:#x}")

    def write_tsc(self, vcpu_id: int, value: int, *, host_initiated: bool = True) -> None:
        """A userspace ``KVM_SET_MSRS`` of MSR_IA32_TSC (host-initiated) on vCPU ``vcpu_id``:
        the vCPU thread loads the vCPU on its host CPU and runs ``kvm_write_tsc``."""
        vcpu = self._vcpu(vcpu_id)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MASK:
            raise ValueError(f"value={value!r} out of range (0..2**64-1)")
        m = self.module

        def body() -> None:
            m.kvm_arch_vcpu_load(vcpu, self.kernel.current_cpu)
            m.kvm_write_tsc(vcpu, value, host_initiated=host_initiated)
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

    def kvmclock_ctrl(self, vcpu_id: int) -> None:
        """``KVM_KVMCLOCK_CTRL`` on vCPU ``vcpu_id``: ``kvm_set_guest_paused`` inside
        ``vcpu_ioctl``; ``ValueError`` (the kernel's -EINVAL) when kvmclock is not enabled."""
        vcpu = self._vcpu(vcpu_id)
        self.vcpu_ioctl(vcpu_id, lambda: self.module.kvm_set_guest_paused(vcpu))

    def migrate_vcpu(self, vcpu_id: int, host_cpu: int) -> None:
        """Move vCPU ``vcpu_id``'s thread to ``host_cpu`` (takes effect at its next load)."""
        vcpu = self._vcpu(vcpu_id)
        ncpu = len(self.kernel.machine.cpus)
        if isinstance(host_cpu, bool) or not isinstance(host_cpu, int) or not 0 <= host_cpu < ncpu:
            raise ValueError(f"host_cpu={host_cpu!r} out of range (0..{ncpu - 1})")
        vcpu.affinity = host_cpu

    def _vcpu(self, vcpu_id: int) -> Vcpu:
        if (
            isinstance(vcpu_id, bool)
            or not isinstance(vcpu_id, int)
            or not 0 <= vcpu_id < len(self.vcpus)
        ):
            raise ValueError(f"vcpu_id={vcpu_id!r} out of range (0..{len(self.vcpus) - 1})")
        return self.vcpus[vcpu_id]

    # -- metrics helper ----------------------------------------------------------------------------
    def clock_definitions(self, vcpu_id: int = 0) -> tuple[int, int, int] | None:
        """The three KVM clock definitions (Woodhouse 2024, series-and-upstream.md §7.3) now,
        computed on the host CPU of vCPU ``vcpu_id``; None without masterclock or record.

        A = host base (2017: ``ktime_get_boot_ns``) + ``kvmclock_offset``;
        B = the master pair through the guest TSC at the advertised mul/shift (the record the
        guest reads, unclamped); C = the master pair through the host TSC with host-frequency
        mul/shift (``get_kvmclock_ns``'s masterclock branch).
        """
        vcpu = self._vcpu(vcpu_id)
        if not self.use_master_clock or not vcpu.pv_time_enabled or not vcpu.hv_clock.version:
            return None
        hk = self.kernel
        m = self.module

        def body() -> tuple[int, int, int]:
            host_tsc = m.rdtsc()
            a = (hk.timekeeper.ktime_get_boot_ns() + self.kvmclock_offset) & U64_MASK
            guest_tsc = m.kvm_read_l1_tsc(vcpu, host_tsc)
            b = int(_k.pvclock_read(self.machine.memory, guest_tsc, vcpu.pv_time_gpa)[0])
            khz = hk.machine.cpus[hk.current_cpu].tsc_khz
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
        self.vm_list: list[Kvm] = []
        self.kvm_lock = SpinLock(f"{kernel.name}.kvm_lock")
        self.counters: collections.Counter[str] = collections.Counter()
        self.trace_records: list[tuple[int, int, str, int, int, str, str]] = []
        self.trace_enabled = True
        self.moments: list[list[Any]] = []
        self.backwards_tsc_observed = False  # global static bool in 2017
        self.kvm_guest_has_master_clock = 0  # atomic_t (gtod)
        self.pvclock_gtod_data = PvclockGtodData()
        self._next_pid = 1000 * (kernel.level + 1)
        self._cur_pid = self._next_pid
        self._gtod_work: Any = None
        if self.cfg.kvm_host_clock == "pvclock_gtod_copy":
            kernel.pvclock_gtod_register_notifier(self.pvclock_gtod_notify)
        else:
            kernel.clocksource_changes_register_notifier(self.process_clocksource_change)

    # -- small helpers -----------------------------------------------------------------------------
    def moment(self, text: str) -> None:
        """A key moment for the run's timeline (``[t_ns, level, text]``), also in the world log."""
        self.moments.append([self.world.now_ns, self.level, text])
        self.world.log("moment", level=self.level, text=text)

    def trace(self, event: str, fields: str) -> None:
        """Record one trace event as ``(t_ns, level, comm, pid, cpu, event, fields)``."""
        if self.trace_enabled:
            self.trace_records.append(
                (
                    self.world.now_ns,
                    self.level,
                    "qemu-system-x86",
                    self._cur_pid,
                    self.kernel.current_cpu,
                    event,
                    fields,
                )
            )
        self.counters[f"trace.{event}"] += 1

    def rdtsc(self) -> int:
        """``rdtsc()`` on the CPU the host kernel code now runs on."""
        k = self.kernel
        return int(k.machine.cpus[k.current_cpu].read_tsc())

    def cpu_tsc_khz(self) -> int:
        """``__this_cpu_read(cpu_tsc_khz)`` (CONSTANT_TSC: the calibrated ``tsc_khz``)."""
        k = self.kernel
        return int(k.machine.cpus[k.current_cpu].tsc_khz)

    # -- VM creation -------------------------------------------------------------------------------
    def create_vm(
        self,
        *,
        name: str | None = None,
        memory_size: int = 1 << 16,
        tsc_khz: int | None = None,
        features: set[str] | frozenset[str] | None = None,
    ) -> Kvm:
        """``KVM_CREATE_VM``: ``kvm_arch_init_vm`` (kvmclock_offset = -ktime_get_boot_ns(),
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
        feats = (
            {"kvmclock", "kvmclock_stable_bit", "constant_tsc", "nonstop_tsc"}
            if features is None
            else set(features)
        )
        vm_name = name if name is not None else f"L{self.level + 1}"
        pid = self._next_pid
        self._next_pid += 100
        kvm = Kvm(self, vm_name, memory_size=memory_size, tsc_khz=tsc_khz, features=feats, pid=pid)

        def init() -> None:
            self._cur_pid = pid
            kvm.kvmclock_offset = -self.kernel.timekeeper.ktime_get_boot_ns()
            kvm.masterclock_lock.acquire("ioctl")
            try:
                self.update_masterclock(kvm)
            finally:
                kvm.masterclock_lock.release("ioctl")

        self.kernel.run_on_cpu(self.ioctl_cpu, init)
        self.kvm_lock.acquire("create_vm")
        self.vm_list.append(kvm)
        self.kvm_lock.release("create_vm")
        self.moment(f"{vm_name}: VM created")
        return kvm

    # -- TSC ---------------------------------------------------------------------------------------
    def kvm_set_tsc_khz(self, vcpu: Vcpu, user_tsc_khz: int, host_tsc_khz: int) -> None:
        """``kvm_set_tsc_khz``: virtual_tsc_mult/shift = kvm_get_time_scale(user kHz * 1000,
        NSEC_PER_SEC); a TSC scaling ratio only outside ``tsc_tolerance_ppm`` (VMX, 48 bits)."""
        shift, mult = _k.get_time_scale(scaled_hz=user_tsc_khz * 1000, base_hz=NSEC_PER_SEC)
        vcpu.virtual_tsc_shift = int(shift)
        vcpu.virtual_tsc_mult = int(mult)
        vcpu.virtual_tsc_khz = user_tsc_khz
        lo = int(_k.adjust_tsc_khz(host_tsc_khz, -TSC_TOLERANCE_PPM))
        hi = int(_k.adjust_tsc_khz(host_tsc_khz, TSC_TOLERANCE_PPM))
        if user_tsc_khz < lo or user_tsc_khz > hi:
            vcpu.tsc_scaling_ratio = int(
                _k.tsc_scaling_ratio(user_tsc_khz, host_tsc_khz, VMX_TSC_FRAC_BITS)
            )
        else:
            vcpu.tsc_scaling_ratio = 1 << VMX_TSC_FRAC_BITS

    @staticmethod
    def kvm_scale_tsc(vcpu: Vcpu, tsc: int) -> int:
        """``kvm_scale_tsc``: unchanged with the default ratio, else ``__scale_tsc``."""
        if vcpu.tsc_scaling_ratio == 1 << VMX_TSC_FRAC_BITS:
            return tsc
        return int(_k.scale_tsc(tsc, vcpu.tsc_scaling_ratio, VMX_TSC_FRAC_BITS))

    def kvm_read_l1_tsc(self, vcpu: Vcpu, host_tsc: int) -> int:
        """``kvm_read_l1_tsc``: L1 offset + scaled host TSC (u64)."""
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
            fields_write_tsc_offset(vcpu.vcpu_id, vcpu.tsc_offset, offset & U64_MASK),
        )
        vcpu.tsc_offset = offset & U64_MASK

    def kvm_write_tsc(self, vcpu: Vcpu, data: int, *, host_initiated: bool) -> None:
        """``kvm_write_tsc`` (v4.13): any MSR_IA32_TSC write synchronises.

        ``synchronizing``: a host-initiated write of 0 (vCPU creation/hotplug), or a value
        within one second of virtual cycles of the extrapolated last write (u64 arithmetic).
        Matched with an equal ``virtual_tsc_khz``: stable host -> the generation's offset;
        unstable host -> the elapsed cycles are added (catch-up).  Otherwise a new generation.
        Then under the masterclock lock: ``nr_vcpus_matched_tsc`` reset or incremented, and
        ``kvm_track_tsc_matching``.
        """
        kvm = vcpu.kvm
        owner = f"vcpu{vcpu.vcpu_id}"
        kvm.tsc_write_lock.acquire(owner)
        try:
            offset = self.kvm_compute_tsc_offset(vcpu, data)
            ns = self.kernel.timekeeper.ktime_get_boot_ns()
            elapsed = (ns - kvm.last_tsc_nsec) & U64_MASK
            synchronizing = False
            if vcpu.virtual_tsc_khz:
                if data == 0 and host_initiated:
                    synchronizing = True
                else:
                    tsc_exp = (kvm.last_tsc_write + self.nsec_to_cycles(vcpu, elapsed)) & U64_MASK
                    tsc_hz = vcpu.virtual_tsc_khz * 1000
                    synchronizing = (
                        data < ((tsc_exp + tsc_hz) & U64_MASK)
                        and ((data + tsc_hz) & U64_MASK) > tsc_exp
                    )
            already_matched = False
            if synchronizing and vcpu.virtual_tsc_khz == kvm.last_tsc_khz:
                if not self.kernel.check_tsc_unstable():
                    offset = kvm.cur_tsc_offset
                else:
                    delta = self.nsec_to_cycles(vcpu, elapsed)
                    data = (data + delta) & U64_MASK
                    offset = self.kvm_compute_tsc_offset(vcpu, data)
                matched = True
                already_matched = vcpu.this_tsc_generation == kvm.cur_tsc_generation
            else:
                kvm.cur_tsc_generation += 1
                kvm.cur_tsc_nsec = ns
                kvm.cur_tsc_write = data
                kvm.cur_tsc_offset = offset
                matched = False
                self.moment(
                    f"{kvm.name}: new TSC generation {kvm.cur_tsc_generation} (vcpu {vcpu.vcpu_id})"
                )
            kvm.last_tsc_nsec = ns
            kvm.last_tsc_write = data
            kvm.last_tsc_khz = vcpu.virtual_tsc_khz
            vcpu.last_guest_tsc = data
            vcpu.this_tsc_generation = kvm.cur_tsc_generation
            vcpu.this_tsc_nsec = kvm.cur_tsc_nsec
            vcpu.this_tsc_write = kvm.cur_tsc_write
            if not host_initiated:
                # update_ia32_tsc_adjust_msr (guest has TSC_ADJUST in CPUID)
                vcpu.ia32_tsc_adjust_msr += offset - vcpu.l1_tsc_offset
            self.kvm_vcpu_write_tsc_offset(vcpu, offset)
        finally:
            kvm.tsc_write_lock.release(owner)
        kvm.masterclock_lock.acquire(owner)
        try:
            if not matched:
                kvm.nr_vcpus_matched_tsc = 0
            elif not already_matched:
                kvm.nr_vcpus_matched_tsc += 1
            self.kvm_track_tsc_matching(vcpu)
        finally:
            kvm.masterclock_lock.release(owner)

    def kvm_track_tsc_matching(self, vcpu: Vcpu) -> None:
        """``kvm_track_tsc_matching`` (2017 rule): request MASTERCLOCK_UPDATE on this vCPU if
        masterclock is on, or the host clock qualifies and all vCPUs matched."""
        kvm = vcpu.kvm
        vcpus_matched = kvm.nr_vcpus_matched_tsc + 1 == kvm.online_vcpus
        if self.cfg.kvm_host_clock == "timekeeper":
            host: int | bool = self.clocksource_stability_check()
            qualifies = bool(host)
        else:
            host = self.pvclock_gtod_data.vclock_mode
            qualifies = host == VCLOCK_TSC
        if kvm.use_master_clock or (qualifies and vcpus_matched):
            vcpu.kvm_make_request(KVM_REQ_MASTERCLOCK_UPDATE)
        host_clock, host_clock_stable = _host_clock_args(self.cfg.trace_format, host)
        self.trace(
            "kvm_track_tsc",
            fields_track_tsc(
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

    def _seq_loop(self, where: str, body: Callable[[], T]) -> T:
        """The patch-09 read loop around ``body``: correct ``do { } while (retry)``, or with the
        fault the block once and then ``while (read_seqcount_retry(s, seq));`` on the stale seq,
        which spins forever once a writer moved the sequence; counted up to ``spin_limit``."""
        s = self.kernel.timekeeper.get_tk_seq()
        if self.fault != "patch09-missing-do":
            while True:
                seq = s.read_begin()
                out = body()
                if not s.read_retry(seq):
                    return out
                self.counters["seq_retries"] += 1
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

    def kvm_get_time_and_clockread(self, kvm: Kvm) -> tuple[bool, int, int]:
        """``kvm_get_time_and_clockread`` -> ``(host_tsc_clocksource, kernel_ns, cycle_now)``.

        gtod: false early (values untouched) unless the shadow mode is TSC, else
        ``do_monotonic_boot() == VCLOCK_TSC`` (values written).  series: patch 09.
        """
        if self.cfg.kvm_host_clock == "timekeeper":
            return self.kvm_get_host_time_and_cycles(kvm)
        if self.pvclock_gtod_data.vclock_mode != VCLOCK_TSC:
            return False, kvm.master_kernel_ns, kvm.master_cycle_now
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
        if self.cfg.kvm_host_clock == "pvclock_gtod_copy":
            if kvm.use_master_clock:
                self.kvm_guest_has_master_clock = 1
            host: int | bool = self.pvclock_gtod_data.vclock_mode
        else:
            host = host_ok
        host_clock, host_clock_stable = _host_clock_args(self.cfg.trace_format, host)
        self.trace(
            "kvm_update_master_clock",
            fields_update_master_clock(
                self.cfg.trace_format,
                kvm.use_master_clock,
                vcpus_matched,
                host_clock=host_clock,
                host_clock_stable=host_clock_stable,
            ),
        )
        kvm._record_masterclock()

    def kvm_gen_update_masterclock(self, kvm: Kvm, owner: str) -> None:
        """``kvm_gen_update_masterclock``: lock; MCLOCK_INPROGRESS on all vCPUs (no entries);
        recompute; CLOCK_UPDATE on all; clear MCLOCK_INPROGRESS; unlock."""
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

    def get_kvmclock_ns(self, kvm: Kvm) -> int:
        """``get_kvmclock_ns`` (2016-2021 shape): without masterclock host boot ns + offset;
        with it, a pvclock built from the master pair and this CPU's ``cpu_tsc_khz``, read at
        the current ``rdtsc()``."""
        owner = "get_kvmclock_ns"
        kvm.masterclock_lock.acquire(owner)
        if not kvm.use_master_clock:
            kvm.masterclock_lock.release(owner)
            return (self.kernel.timekeeper.ktime_get_boot_ns() + kvm.kvmclock_offset) & U64_MASK
        tsc_timestamp = kvm.master_cycle_now
        system_time = (kvm.master_kernel_ns + kvm.kvmclock_offset) & U64_MASK
        kvm.masterclock_lock.release(owner)
        shift, mul = _k.get_time_scale(scaled_hz=NSEC_PER_SEC, base_hz=self.cpu_tsc_khz() * 1000)
        info = _k.PvclockVcpuTimeInfo(
            tsc_timestamp=tsc_timestamp,
            system_time=system_time,
            tsc_to_system_mul=int(mul),
            tsc_shift=int(shift),
        )
        return int(info.read_cycles(self.rdtsc()))

    # -- kvmclock record ---------------------------------------------------------------------------
    def kvm_guest_time_update(self, vcpu: Vcpu) -> int:
        """``kvm_guest_time_update``: the master pair (or a fresh rdtsc + boot ns), catch-up,
        mul/shift only on a kHz change, system_time = kernel_ns + kvmclock_offset, STABLE iff
        masterclock; then ``kvm_setup_pvclock_page``.  Returns 0 (1 = retry, never here)."""
        kvm = vcpu.kvm
        owner = f"vcpu{vcpu.vcpu_id}"
        kvm.masterclock_lock.acquire(owner)
        use_master_clock = kvm.use_master_clock
        host_tsc = kernel_ns = 0
        if use_master_clock:
            host_tsc = kvm.master_cycle_now
            kernel_ns = kvm.master_kernel_ns
        kvm.masterclock_lock.release(owner)
        tgt_tsc_khz = self.cpu_tsc_khz()
        if tgt_tsc_khz == 0:
            vcpu.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
            return 1
        if not use_master_clock:
            host_tsc = self.rdtsc()
            kernel_ns = self.kernel.timekeeper.ktime_get_boot_ns()
        tsc_timestamp = self.kvm_read_l1_tsc(vcpu, host_tsc)
        if vcpu.tsc_catchup:
            tsc = self.compute_guest_tsc(vcpu, kernel_ns)
            if tsc > tsc_timestamp:
                self.kvm_vcpu_write_tsc_offset(
                    vcpu, vcpu.tsc_offset + tsc - tsc_timestamp
                )  # adjust_tsc_offset_guest
                tsc_timestamp = tsc
        tgt_tsc_khz = self.kvm_scale_tsc(vcpu, tgt_tsc_khz)  # kvm_has_tsc_control
        hv = vcpu.hv_clock
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
        guest's GUEST_STOPPED, then trace ``kvm_pvclock_update`` with the final record."""
        mem = vcpu.kvm.machine.memory
        gpa = vcpu.pv_time_gpa
        guest = _k.PvclockVcpuTimeInfo.from_bytes(bytes(mem[gpa : gpa + 32]))
        hv = vcpu.hv_clock
        hv.version = (((int(guest.version) + 1) | 1) + 1) & U32_MASK
        hv.flags |= int(guest.flags) & _PV_GUEST_STOPPED
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
        self.trace(
            "kvm_pvclock_update",
            fields_pvclock_update(
                vcpu.vcpu_id,
                hv.version,
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

    # -- MSRs --------------------------------------------------------------------------------------
    def kvm_set_msr_common(
        self, vcpu: Vcpu, msr: int, data: int, *, host_initiated: bool = False
    ) -> None:
        """``kvm_set_msr_common`` for the clock MSRs: MSR_IA32_TSC -> ``kvm_write_tsc``;
        MSR_KVM_SYSTEM_TIME(_NEW): boot vCPU old/new switch -> MASTERCLOCK_UPDATE,
        GLOBAL_CLOCK_UPDATE, record enabled at gpa ``data & ~1`` when bit 0 is set."""
        kvm = vcpu.kvm
        if msr == MSR_IA32_TSC:
            self.kvm_write_tsc(vcpu, data, host_initiated=host_initiated)
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
        raise ValueError(
            f"msr={msr:#x} not modelled (clock MSRs: MSR_IA32_TSC {MSR_IA32_TSC:#x}, "
            f"MSR_KVM_SYSTEM_TIME {MSR_KVM_SYSTEM_TIME:#x}, "
            f"MSR_KVM_SYSTEM_TIME_NEW {MSR_KVM_SYSTEM_TIME_NEW:#x})"
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
    def kvm_arch_vcpu_load(self, vcpu: Vcpu, cpu: int) -> None:
        """``kvm_arch_vcpu_load``: apply ``tsc_offset_adjustment``; on a pCPU change or an
        unstable TSC: backwards TSC -> ``mark_tsc_unstable``; unstable -> re-offset from
        ``last_guest_tsc`` + catch-up; GLOBAL_CLOCK_UPDATE unless masterclock (or first load)."""
        if vcpu.tsc_offset_adjustment:
            self.kvm_vcpu_write_tsc_offset(vcpu, vcpu.tsc_offset + vcpu.tsc_offset_adjustment)
            vcpu.tsc_offset_adjustment = 0
            vcpu.kvm_make_request(KVM_REQ_CLOCK_UPDATE)
        k = self.kernel
        if vcpu.cpu != cpu or k.check_tsc_unstable():
            now = self.rdtsc()
            tsc_delta = 0 if not vcpu.last_host_tsc else now - vcpu.last_host_tsc
            if tsc_delta < 0:
                self.counters["backwards_tsc"] += 1
                self.moment(
                    f"{vcpu.kvm.name}: vcpu {vcpu.vcpu_id} saw a backwards TSC on CPU {cpu}"
                )
                k.mark_tsc_unstable("KVM discovered backwards TSC")
            if k.check_tsc_unstable():
                offset = self.kvm_compute_tsc_offset(vcpu, vcpu.last_guest_tsc)
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

    def process_requests(self, vcpu: Vcpu) -> None:
        """The request part of ``vcpu_enter_guest`` in the kernel's order, repeated while a
        request is pending (a pending request cancels the entry and the loop goes round):
        MIGRATE_TIMER, MASTERCLOCK_UPDATE, GLOBAL_CLOCK_UPDATE, CLOCK_UPDATE.
        MCLOCK_INPROGRESS is never consumed: an entry with it pending cannot happen."""
        owner = f"vcpu{vcpu.vcpu_id}"
        for _ in range(_MAX_ENTRY_LOOPS):
            if not vcpu.requests:
                return
            if vcpu.kvm_test_request(KVM_REQ_MCLOCK_INPROGRESS):
                raise RuntimeError(
                    f"{vcpu.kvm.name} vcpu {vcpu.vcpu_id}: "
                    "entry while MCLOCK_INPROGRESS is pending "
                    "(a masterclock update is in progress; the vCPU would wait)"
                )
            vcpu.kvm_check_request(KVM_REQ_MIGRATE_TIMER)
            if vcpu.kvm_check_request(KVM_REQ_MASTERCLOCK_UPDATE):
                self.kvm_gen_update_masterclock(vcpu.kvm, owner)
            if vcpu.kvm_check_request(KVM_REQ_GLOBAL_CLOCK_UPDATE):
                self.kvm_gen_kvmclock_update(vcpu)
            if vcpu.kvm_check_request(KVM_REQ_CLOCK_UPDATE):
                self.kvm_guest_time_update(vcpu)
        raise RuntimeError(
            f"{vcpu.kvm.name} vcpu {vcpu.vcpu_id}: "
            f"requests keep being re-raised ({vcpu.requests:#x})"
        )

    def vcpu_run(self, vcpu: Vcpu, fn: Callable[[], T]) -> T:
        """The vCPU thread on host CPU ``kernel.current_cpu``: load, ``vcpu_enter_guest``
        (requests, then the guest code ``fn``), exit (``last_guest_tsc``), put."""
        cpu = self.kernel.current_cpu
        prev_pid = self._cur_pid
        self._cur_pid = vcpu.kvm.pid + 1 + vcpu.vcpu_id
        try:
            self.kvm_arch_vcpu_load(vcpu, cpu)
            self.process_requests(vcpu)
            vcpu.entries += 1
            self.counters["entries"] += 1
            vcpu.in_guest = True
            try:
                out = fn()
            finally:
                vcpu.in_guest = False
            vcpu.last_guest_tsc = self.kvm_read_l1_tsc(vcpu, self.rdtsc())
            self.kvm_arch_vcpu_put(vcpu)
            return out
        finally:
            self._cur_pid = prev_pid

    def __repr__(self) -> str:
        return (
            f"KvmModule(kernel={self.kernel.name!r}, profile={self.profile!r}, "
            f"vms={len(self.vm_list)})"
        )

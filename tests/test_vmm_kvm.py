"""The KVM pieces the VMM layer reads: KVM_GET_MSRS, VM destruction and the TSC-sync
decision log (``Kvm.tsc_decisions``), with values written out from the kernel rules."""

from __future__ import annotations

from typing import Any

import pytest
from kvmclock.kernel import Kernel
from kvmclock.kvm.x86 import MSR_IA32_TSC, MSR_KVM_SYSTEM_TIME_NEW, Kvm
from kvmclock.machine import PhysicalMachine, World
from kvmclock.profiles import PROFILES
from kvmclock.vmm import Vmm
from reference import kernel_math as ref
from vmm_util import make_host

S = 1_000_000_000
MS = 1_000_000
U64 = (1 << 64) - 1
KHZ = 2_593_992


def host(profile: str, *, scaling: str = "vmx") -> Kernel:
    world = World(2)
    m = PhysicalMachine(world, 2, tsc_khz=KHZ, tsc_scaling=scaling)
    k = Kernel(m, profile, name="h0")
    k.boot()
    world.run_until(MS)
    k.load_kvm()
    return k


@pytest.mark.parametrize(("scaling", "frac"), [("vmx", 48), ("svm", 32)])
def test_get_msr_tsc_is_the_l1_tsc(scaling: str, frac: int) -> None:
    """kvm_get_msr_common MSR_IA32_TSC, host-initiated: scale(rdtsc, L1 ratio) + L1 offset.
    A 3 GHz guest created at t_c (guest TSC 0 then) reads scale(H(t)) - scale(H(t_c))."""
    h = host("upstream", scaling=scaling)
    assert h.kvm is not None
    t_c = h.world.now_ns
    vm = h.kvm.create_vm(tsc_khz=3_000_000)
    vm.create_vcpu()
    ratio = ref.tsc_scaling_ratio(3_000_000, KHZ, frac)
    h.world.run_until(t_c + 2 * S)
    c = h.machine.cpus[0]
    expect = (
        ref.scale_tsc(c.tsc_at(h.world.now_ns), ratio, frac)
        - ref.scale_tsc(c.tsc_at(t_c), ratio, frac)
    ) & U64
    assert vm.get_msr(0, MSR_IA32_TSC) == expect
    vm.machine.wrmsr(0, MSR_KVM_SYSTEM_TIME_NEW, 0x400 | 1)
    assert vm.get_msr(0, MSR_KVM_SYSTEM_TIME_NEW) == 0x401
    with pytest.raises(ValueError, match=r"msr=16 not modelled|msr=6 not modelled"):
        vm.get_msr(0, 6)


def test_destroy_removes_the_vm() -> None:
    h = host("gtod")
    assert h.kvm is not None
    vm = h.kvm.create_vm(name="a")
    vm.create_vcpu()
    other = h.kvm.create_vm(name="b")
    assert vm._sync_work is not None
    vm.destroy()
    assert h.kvm.vm_list == [other]
    assert vm.destroyed and vm.machine.paused and vm._sync_work is None
    with pytest.raises(ValueError, match="VM a already destroyed"):
        vm.destroy()


def two_vcpus(profile: str) -> tuple[Kernel, Kvm]:
    h = host(profile)
    assert h.kvm is not None
    vm = h.kvm.create_vm()
    vm.create_vcpu()
    vm.create_vcpu()
    return h, vm


@pytest.mark.parametrize("profile", ["gtod", "upstream"])
@pytest.mark.parametrize(
    ("delta", "rule"), [(KHZ * 1000 - 1, "window-match"), (KHZ * 1000, "outside-window")]
)
def test_decision_log_window_boundary(profile: str, delta: int, rule: str) -> None:
    """Two userspace writes at the same instant (elapsed 0: tsc_exp = the last write):
    data < last + tsc_hz matches, data = last + tsc_hz does not (1 cycle apart)."""
    h, vm = two_vcpus(profile)
    base = 10 * KHZ * 1000
    vm.write_tsc(0, base)
    vm.write_tsc(1, base + delta)
    d = [x for x in vm.tsc_decisions if x.where == "kvm_synchronize_tsc"][-1]
    assert (d.vcpu_id, d.rule) == (1, rule)
    assert d.t_ns == h.world.now_ns
    first = [x for x in vm.tsc_decisions if x.where == "kvm_synchronize_tsc"][-2]
    if profile == "upstream":
        assert first.rule == "user-set-tsc-first" and "6.7 user_set_tsc rule" in first.text
    else:  # 4.13: 10 s of cycles from the creation writes' 0: outside the window
        assert first.rule == "outside-window"
    track = [x for x in vm.tsc_decisions if x.where == "kvm_track_tsc_matching"][-1]
    matched = "1" if rule == "window-match" else "0"
    assert f"offsetmatched {matched} of 2 online vCPUs" in track.text


def test_decision_log_attribute_rules() -> None:
    """KVM_VCPU_TSC_OFFSET matches only an offset equal to the last written one, bit for bit."""
    _, vm = two_vcpus("upstream")
    off = vm.get_tsc_offset(0)
    vm.set_tsc_offset(1, (off + 1) & U64)
    vm.set_tsc_offset(0, (off + 1) & U64)
    rules = [(d.vcpu_id, d.rule) for d in vm.tsc_decisions if d.where == "kvm_arch_tsc_set_attr"]
    assert rules == [(1, "attr-mismatch"), (0, "attr-exact-match")]
    assert "by 1 cycles" in next(d.text for d in vm.tsc_decisions if d.rule == "attr-mismatch")


def test_decision_log_masterclock_reasons() -> None:
    """pvclock_update_vm_gtod_copy: each false term is named."""
    h, vm = two_vcpus("upstream")
    vm.write_tsc(0, 5 * KHZ * 1000)
    vm.machine.run_on_cpu(1, lambda: None)
    vm.machine.run_on_cpu(0, lambda: None)
    last = [d for d in vm.tsc_decisions if d.rule.startswith("masterclock")][-1]
    assert last.rule == "masterclock-off" and last.vcpu_id is None
    assert "vCPUs not matched (offsetmatched 0, 2 online" in last.text
    vm.write_tsc(1, vm.get_msr(0, MSR_IA32_TSC))
    vm.machine.run_on_cpu(1, lambda: None)
    last = [d for d in vm.tsc_decisions if d.rule.startswith("masterclock")][-1]
    assert last.rule == "masterclock-on"
    assert h.kvm is not None
    vm.backwards_tsc_observed = True  # what KVM's resume path sets after a backwards TSC
    h.kvm.kvm_gen_update_masterclock(vm, "test")
    last = [d for d in vm.tsc_decisions if d.rule.startswith("masterclock")][-1]
    assert last.rule == "masterclock-off" and "backwards_tsc_observed is set" in last.text


@pytest.mark.parametrize(
    ("profile", "text"),
    [
        (
            "series",
            "masterclock on: host clocksource is kvm-clock with PVCLOCK_TSC_STABLE_BIT set "
            "(switch stable_pvclock_host: a stable kvm-clock counts as a stable host clock)",
        ),
        (
            PROFILES["series"].with_(stable_pvclock_host=False),
            "masterclock off: the host clocksource is kvm-clock, which counts as stable only "
            "with switch stable_pvclock_host on",
        ),
        ("gtod", "masterclock off: the host clocksource is not TSC (vclock mode 2)"),
    ],
)
def test_nested_masterclock_reason_names_the_real_condition(profile: Any, text: str) -> None:
    """An L2 VM on an L1 hypervisor whose clocksource is kvm-clock: the masterclock sentence
    names what decided it under the profile's switches, not 'host clocksource is TSC'."""
    world = World(6)
    host = make_host(world, "upstream", boot_at_ns=MS)
    l1 = Vmm(host, name="l1", vcpus=2)
    g1 = Kernel(l1.machine, profile, name="L1")
    l1.guest = g1
    g1.boot()
    world.run_until(S)
    assert g1.timekeeper.clock.name == "kvm-clock"
    g1.load_kvm()
    l2 = Vmm(g1, name="l2", vcpus=2)
    world.run_until(2 * S)
    texts = [d.text for d in l2.vm.tsc_decisions if d.rule.startswith("masterclock-")]
    assert texts and texts[-1].startswith(f"VM l2: {text}"), texts
    assert not any("host clocksource is TSC" in t for t in texts)

"""The judgement of ``kvmclock verify``: the relations, the real-vs-model comparison and the
named departures with the machine evidence each one requires.

* ``check_relations(run)``: every relation's kernel rule evaluated on one run's observations
  (the real capture; tests also use it on a model run).
* ``compare_runs(real, model)``: the model's observations against the real ones, field by field
  (exact, or within the stated bound for host-timing-dependent fields).
* ``judge(real, model)``: one outcome per relation - ``held``, ``departed`` (a named departure
  whose evidence predicate holds on the capture's stored evidence explains every miss) or
  ``failed``. A relation's real side is its kernel rule on the real observations; its model
  side is the comparison entries of the observations it reads (model vs real, never the model
  against a formula of its own values).

A departure (``DEPARTURES``) names the relations and the exact comparison fields it explains,
and the evidence predicate it requires. The predicate reads only ``ScenarioRun.evidence``,
recorded at capture time (``kvmclock.real.capture.collect_evidence``); a capture without
evidence gets no departure.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmclock import get_time_scale
from kvmclock.real import kvmdev
from kvmclock.real.capture import PVCLOCK_GUEST_STOPPED, PVCLOCK_TSC_STABLE_BIT, ScenarioRun, _info

HELD = "held"
DEPARTED = "departed"
FAILED = "failed"
OUTCOMES = (HELD, DEPARTED, FAILED)

_U64 = (1 << 64) - 1

EPSILON_NS = 250
"""Per-segment spread allowed in the kvmclock difference real - model at one host TSC: the
real kernel reads rdtsc and the raw clock a few instructions apart for a non-masterclock
record (kvm_guest_time_update), each side truncates once in pvclock scaling, and the real
raw clock's mult differs from the records' mul by parts per billion."""

KVMCLOCK_BASE_NOTE = (
    "the real kvmclock counts from CLOCK_MONOTONIC_RAW + the boot offset (x86.c"
    " get_kvmclock_base_ns, 5.5+), as the model does under kvmclock_base=raw (under the 2017"
    " base, ktime_get_boot_ns, the model's NTP-free timekeeper runs at the same rate); the"
    " model's host booted at another instant than the real one, so real - model at one host"
    " TSC is one constant per kvmclock_offset segment (VM creation, KVM_SET_CLOCK), bounded"
    " by the host TSC window of the segment's start"
)

NOT_COMPARED: dict[str, str] = {
    "KVM_GET_CLOCK realtime": (
        "host wall-clock time; the model's wall clock is its own seeded RTC epoch, so the"
        " field is not compared"
    ),
}


def _version_step(old: int) -> int:
    """The record version rule: ((old + 1) | 1) + 1 mod 2**32 (x86.c kvm_setup_guest_pvclock:
    the odd "update in progress" version, then the even final one)."""
    return (((old + 1) | 1) + 1) & 0xFFFFFFFF


def _s64(value: int) -> int:
    """A u64 read as the kernel's s64 (the KVM_VCPU_TSC_OFFSET attribute is signed)."""
    value &= _U64
    return value - (1 << 64) if value >> 63 else value


def _stable(rec: dict[str, int]) -> bool:
    return bool(rec["flags"] & PVCLOCK_TSC_STABLE_BIT)


# --- departures -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Departure:
    """A known way the real kernel departs from the model.

    ``requires`` states the evidence predicate in words, ``predicate`` evaluates it on a
    capture's stored evidence; ``relations`` are the relations whose kernel rule it explains
    on the real side; ``fields`` are (label, field) glob patterns of the comparison entries it
    explains; ``shape`` (optional) further restricts an explained entry to the form the
    departure describes, given (real value, model value)."""

    name: str
    text: str
    requires: str
    predicate: Callable[[dict[str, Any]], bool]
    relations: frozenset[str]
    fields: tuple[tuple[str, str], ...]
    evidence_keys: tuple[str, ...]
    shape: Callable[[Any, Any], bool] | None = None

    def applies(self, evidence: dict[str, Any] | None) -> bool:
        """True when the capture's ``evidence`` satisfies the predicate (never without one)."""
        if not evidence:
            return False
        try:
            return bool(self.predicate(evidence))
        except (KeyError, TypeError, ValueError):
            return False

    def explains(self, label: str, fld: str, real: Any, model: Any) -> bool:
        """True when the entry (label, field) is one this departure names, in its shape."""
        named = any(
            fnmatch.fnmatchcase(label, lp) and fnmatch.fnmatchcase(fld, fp)
            for lp, fp in self.fields
        )
        return named and (self.shape is None or self.shape(real, model))

    def describe(self, evidence: dict[str, Any] | None) -> dict[str, Any]:
        """Name, text, the required predicate and the evidence it was judged on."""
        ev = evidence or {}
        return {
            "name": self.name,
            "text": self.text,
            "requires": self.requires,
            "evidence": {k: ev.get(k) for k in self.evidence_keys},
        }


def _kernel_version(evidence: dict[str, Any]) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", str(evidence["kernel_release"]))
    if m is None:
        raise ValueError(f"kernel_release {evidence['kernel_release']!r} has no major.minor")
    return int(m[1]), int(m[2])


def _offset_attr_reads_zero(real: Any, model: Any) -> bool:
    return isinstance(real, int) and real == 0


def _one_extra_publish(real: Any, model: Any) -> bool:
    return isinstance(real, int) and isinstance(model, int) and real == _version_step(model)


DEPARTURES: dict[str, Departure] = {
    d.name: d
    for d in (
        Departure(
            name="pvm-tsc-offset-not-applied",
            text=(
                "PVM (kvm_pvm) computes and traces the L1 TSC offset (kvm_write_tsc_offset) but"
                " runs the guest on the host TSC: the guest's rdtsc and KVM_GET_MSRS(IA32_TSC)"
                " return the host TSC and the KVM_VCPU_TSC_OFFSET attribute reads 0"
            ),
            requires="flavour == kvm_pvm",
            predicate=lambda ev: ev["flavour"] == "kvm_pvm",
            relations=frozenset({"guest-tsc-follows-write"}),
            fields=(("*", "tsc_offset"), ("*", "tsc_offset[[]*[]]")),
            evidence_keys=("flavour", "kvm_modules", "vcpu_tsc_offset_attr"),
            shape=_offset_attr_reads_zero,
        ),
        Departure(
            name="extra-publish-on-host-kvmclock-msr-write",
            text=(
                "observed on kvm_pvm 6.18: a host-initiated MSR_KVM_SYSTEM_TIME_NEW write"
                " publishes the record at once (no kvm_pvclock_update trace event, flags without"
                " PVCLOCK_TSC_STABLE_BIT) and the next entry publishes again, so the version"
                " advances two steps; upstream"
                " kvm_write_system_time (x86.c) only requests KVM_REQ_GLOBAL_CLOCK_UPDATE"
            ),
            requires="flavour == kvm_pvm and kernel 6.18",
            predicate=lambda ev: ev["flavour"] == "kvm_pvm" and _kernel_version(ev) == (6, 18),
            relations=frozenset({"version-rule-msr-rewrite"}),
            fields=(
                ("msr_rewrite", "version"),
                ("msr_rewrite", "flags"),
                ("run0_msr", "version"),
                ("trace[[]*[]] kvm_pvclock_update (last)", "version"),
            ),
            evidence_keys=("flavour", "kernel_release"),
        ),
    )
}

# The relation each departure explains on the real side (one per relation at most).
DEPARTURE_FOR: dict[str, str] = {r: d.name for d in DEPARTURES.values() for r in d.relations}
KNOWN_DEPARTURES: dict[str, str] = {d.name: d.text for d in DEPARTURES.values()}


def departure_for_relation(name: str, real: ScenarioRun) -> Departure | None:
    """The departure naming relation ``name`` whose predicate holds on ``real.evidence``."""
    for d in DEPARTURES.values():
        if name in d.relations and d.applies(real.evidence):
            return d
    return None


def departure_for_entry(entry: dict[str, Any], real: ScenarioRun) -> Departure | None:
    """The departure naming this comparison entry (in its shape) whose predicate holds on
    ``real.evidence``."""
    for d in DEPARTURES.values():
        if d.applies(real.evidence) and d.explains(
            entry["label"], entry["field"], entry["real"], entry["model"]
        ):
            return d
    return None


# --- the kernel rules on one run ------------------------------------------------------------
def run_inputs_tsc(run: ScenarioRun, label: str) -> int:
    """Host TSC recorded in the inputs at the operation labelled ``label``."""
    n = run.obs[label]["n"]
    tsc: int = run.inputs[n]["host_tsc"]
    return tsc


EXACT = {
    "record-mul-shift": True,
    "get-clock-equals-record": True,
    "creation-match-and-shared-records": True,
    "far-write-masterclock-off": True,
    "matching-write-masterclock-back": True,
    "version-rule": True,
    "guest-stopped-kept": True,
    "set-clock-system-time": True,
    "guest-tsc-follows-write": False,
    "version-rule-msr-rewrite": True,
}
"""Relation name -> whether its kernel rule is exact (else bounded by a host TSC window)."""

RULE_BOUND = {"guest-tsc-follows-write": "guest rdtsc within the host TSC window of the run"}


def check_relations(run: ScenarioRun) -> dict[str, tuple[bool, str]]:
    """Evaluate every relation's kernel rule on one run's observations: name -> (held,
    detail). Rules: get_time_scale (arch/x86/kvm/x86.c kvm_get_time_scale), the pvclock read
    (pvclock_scale_delta), KVM_GET_CLOCK with masterclock (x86.c __get_kvmclock), TSC
    matching and masterclock (kvm_synchronize_tsc, pvclock_update_vm_gtod_copy), the version
    rule and flags (kvm_setup_guest_pvclock), KVM_SET_CLOCK (kvm_vm_ioctl_set_clock)."""
    o = run.obs
    res: dict[str, tuple[bool, str]] = {}

    shift, mul = get_time_scale(scaled_hz=10**9, base_hz=run.tsc_khz * 1000)
    recs = [v["record"] for v in o.values() if "record" in v]
    bad = [r for r in recs if (r["tsc_to_system_mul"], r["tsc_shift"]) != (mul, shift)]
    res["record-mul-shift"] = (
        not bad,
        f"{len(recs)} records vs get_time_scale(10**9, {run.tsc_khz}*1000) = shift {shift}"
        f" mul {mul:#x}" + (f"; {len(bad)} differ" if bad else ""),
    )

    c = o["clock_matched"]
    rec0 = o["run0b"]["record"]
    host_tsc = c["host_tsc"] if c["flags"] & kvmdev.KVM_CLOCK_HOST_TSC else None
    if host_tsc is None or not c["flags"] & kvmdev.KVM_CLOCK_TSC_STABLE:
        res["get-clock-equals-record"] = (
            False,
            f"KVM_GET_CLOCK flags {c['flags']:#x}: no masterclock/host_tsc to compare",
        )
    else:
        off = c["offsets"]["0"]
        expect = _info(rec0).read_cycles((host_tsc + off) & _U64)
        res["get-clock-equals-record"] = (
            expect == c["clock"],
            f"clock {c['clock']} vs read_cycles(host_tsc {host_tsc} + offset {off}) = {expect}"
            f" (diff {c['clock'] - expect} ns)",
        )

    offs = o["create1"]["offsets"]
    same_off = offs["0"] == offs["1"]
    r0, r1 = o["run0b"]["record"], o["run1b"]["record"]
    share = (r0["system_time"], r0["tsc_timestamp"]) == (r1["system_time"], r1["tsc_timestamp"])
    res["creation-match-and-shared-records"] = (
        same_off
        and share
        and _stable(r0)
        and _stable(r1)
        and bool(c["flags"] & kvmdev.KVM_CLOCK_TSC_STABLE),
        f"offsets after creation {offs}; after two runs each: system_time {r0['system_time']}"
        f"/{r1['system_time']}, tsc_timestamp {r0['tsc_timestamp']}/{r1['tsc_timestamp']},"
        f" stable {_stable(r0)}/{_stable(r1)}",
    )

    rf1, rf0, cf = o["run1_far"]["record"], o["run0_far"]["record"], o["clock_far"]
    res["far-write-masterclock-off"] = (
        not _stable(rf1) and not _stable(rf0) and not cf["flags"] & kvmdev.KVM_CLOCK_TSC_STABLE,
        f"after the far write on vCPU 1: stable bit {int(_stable(rf1))} (vCPU 1),"
        f" {int(_stable(rf0))} (vCPU 0), KVM_GET_CLOCK flags {cf['flags']:#x}",
    )

    rb0, rb1, cb = o["run0_back_b"]["record"], o["run1_back_b"]["record"], o["clock_back"]
    mo = o["match_write"]["offsets"]
    back = (
        _stable(rb0)
        and _stable(rb1)
        and bool(cb["flags"] & kvmdev.KVM_CLOCK_TSC_STABLE)
        and mo["0"] == mo["1"]
        and (rb0["system_time"], rb0["tsc_timestamp"]) == (rb1["system_time"], rb1["tsc_timestamp"])
    )
    res["matching-write-masterclock-back"] = (
        back,
        f"after the matching write on vCPU 0: offsets {mo} (snapped: {mo['0'] == mo['1']}),"
        f" stable {int(_stable(rb0))}/{int(_stable(rb1))}, KVM_GET_CLOCK flags {cb['flags']:#x}",
    )

    v0 = o["run0_set"]["record"]["version"]
    v1 = o["run1_set"]["record"]["version"]
    res["version-rule"] = (
        v0 == _version_step(7) and v1 == _version_step(0xFFFFFFFF),
        f"guest copy 7 -> {v0} (rule {_version_step(7)}), 0xffffffff -> {v1}"
        f" (rule {_version_step(0xFFFFFFFF)})",
    )

    gs = bool(o["run0_set"]["record"]["flags"] & PVCLOCK_GUEST_STOPPED)
    ctrl = bool(o["run1_ctrl"]["record"]["flags"] & PVCLOCK_GUEST_STOPPED)
    res["guest-stopped-kept"] = (
        gs and ctrl,
        f"GUEST_STOPPED planted in vCPU 0's copy kept: {gs}; set by KVM_KVMCLOCK_CTRL on"
        f" vCPU 1: {ctrl}",
    )

    want = o["set_clock"]["clock"]
    got0 = o["run0_set"]["record"]["system_time"]
    got1 = o["run1_set"]["record"]["system_time"]
    res["set-clock-system-time"] = (
        got0 == want and got1 == want,
        f"KVM_SET_CLOCK {want}: next system_time {got0} (vCPU 0), {got1} (vCPU 1)",
    )

    far = o["far_write"]
    g = o["run1_far"]
    lo = far["value"]
    hi = far["value"] + (g["host_tsc_after"] - run_inputs_tsc(run, "far_write"))
    res["guest-tsc-follows-write"] = (
        lo <= g["guest_tsc"] <= hi,
        f"guest rdtsc {g['guest_tsc']} after writing IA32_TSC={lo}: expected within"
        f" [{lo}, {hi}] (host TSC at that run {g['host_tsc_before']})",
    )

    old = 21
    vm_ = o["run0_msr"]["record"]["version"]
    res["version-rule-msr-rewrite"] = (
        vm_ == _version_step(old),
        f"guest copy {old}, MSR_KVM_SYSTEM_TIME_NEW rewritten, one entry -> {vm_}"
        f" (one step: {_version_step(old)}, two steps: {_version_step(_version_step(old))})",
    )
    return res


_OFFSET_RE = re.compile(r"kvm_write_tsc_offset: vcpu=(\d+) prev=(\d+) next=(\d+)")


def trace_offsets(text: str) -> list[tuple[int, int]]:
    """(vcpu, next offset) of every ``kvm_write_tsc_offset`` line, in order."""
    return [(int(m[1]), int(m[3])) for m in _OFFSET_RE.finditer(text)]


def trace_relation(run: ScenarioRun) -> tuple[bool, str] | None:
    """From a captured trace: the 4 kvm_write_tsc_offset lines are creation 0, creation 1,
    far write (vCPU 1), matching write (vCPU 0); creation offsets equal and the matching write
    snapped to the far write's generation offset (x86.c kvm_synchronize_tsc). None without a
    trace."""
    if not run.trace:
        return None
    offs = trace_offsets(run.trace)
    if len(offs) != 4:
        return False, f"expected 4 kvm_write_tsc_offset events, got {len(offs)}: {offs}"
    (c0, o0), (c1, o1), (f1, of), (m0, om) = offs
    held = (c0, c1, f1, m0) == (0, 1, 1, 0) and o0 == o1 and om == of and of != o0
    return held, (
        f"traced offsets: creation {o0}/{o1}, far write (vCPU {f1}) {of}, matching write"
        f" (vCPU {m0}) {om}: snapped {om == of}"
    )


# --- real vs model, field by field ------------------------------------------------------------
def _ns_signed(delta: int, mul: int, shift: int) -> int:
    """pvclock_scale_delta of a signed cycle count (the record's mul/shift)."""
    from kvmclock import pvclock_scale_delta

    mag = int(pvclock_scale_delta(abs(delta), mul, shift))
    return mag if delta >= 0 else -mag


def _op_window(run: ScenarioRun, n: int) -> tuple[int, int]:
    """Host TSC window of real operation ``n``: from its recorded TSC to the TSC read after
    its KVM_RUN, else to the next operation's recorded TSC."""
    a = int(run.inputs[n]["host_tsc"])
    for ob in run.obs.values():
        if ob["n"] == n and "host_tsc_after" in ob:
            return a, int(ob["host_tsc_after"])
    if n + 1 < len(run.inputs):
        return a, int(run.inputs[n + 1]["host_tsc"])
    return a, max(
        [a] + [int(ob["host_tsc_after"]) for ob in run.obs.values() if "host_tsc_after" in ob]
    )


def _real_offset(run: ScenarioRun, vid: int, n: int) -> int:
    """The real vCPU's KVM_VCPU_TSC_OFFSET attribute as last read at or before op ``n``."""
    best: tuple[int, int] = (-1, 0)
    for ob in run.obs.values():
        m = int(ob["n"])
        if m > n or m < best[0]:
            continue
        if "offset" in ob and ob.get("vcpu") == vid:
            best = (m, int(ob["offset"]))
        elif str(vid) in ob.get("offsets", {}):
            best = (m, int(ob["offsets"][str(vid)]))
    return best[1]


def _model_op_at(model: ScenarioRun, tsc: int, n: int) -> int | None:
    """The last model operation at or before ``n`` that ran at host TSC ``tsc``."""
    for k in range(n, -1, -1):
        if int(model.inputs[k]["host_tsc"]) == tsc:
            return k
    return None


def _entry(label: str, fld: str, real: Any, model: Any, rule: str, held: bool) -> dict[str, Any]:
    return {
        "label": label,
        "field": fld,
        "real": real,
        "model": model,
        "rule": rule,
        "held": held,
    }


def compare_runs(real: ScenarioRun, model: ScenarioRun) -> dict[str, Any]:
    """Compare the model's observations with the real ones, label by label; every entry is
    model vs real:

    * exact: record version, tsc_to_system_mul, tsc_shift, flags; KVM_GET_CLOCK flags; the
      traced event sequence (names, vCPUs, masterclock/matching fields, record versions and
      flags) and its pattern of equal offsets.
    * same operation: a record's ``tsc_timestamp`` in the host TSC domain (minus the vCPU's
      TSC offset attribute) was taken by the model at the instant of operation m; the real one
      must lie in the real host TSC window of the same operation m. KVM_GET_CLOCK host_tsc and
      the guest's rdtsc (host domain): real - model within [-c, window] cycles, c the cycles of
      one simulated ns (the model runs op n at the first ns its TSC reaches the real TSC).
    * kvmclock at one host TSC: real - model is one constant per kvmclock_offset segment within
      ``EPSILON_NS``, and the constant lies within the segment's instant window.
    * TSC offsets (attribute and traced): model - real in [-c, W] cycles, W the largest window
      of a TSC-writing operation (the offset is target - host TSC at the write).

    Entries carry ``held`` only; ``judge`` attaches outcomes and departures.
    """
    entries: list[dict[str, Any]] = []
    shift, mul = get_time_scale(scaled_hz=10**9, base_hz=real.tsc_khz * 1000)
    per_ns = -(-real.tsc_khz // 1_000_000)  # cycles of one simulated ns, rounded up
    set_ops = [n for n, i in enumerate(real.inputs) if i["op"] == "set_clock"]
    set_op = set_ops[0] if set_ops else None
    # kvmclock samples: (segment, label, field, lo, hi) with lo == hi for a point
    samples: list[tuple[str, str, str, int, int]] = []
    tsc_write_ops = [n for n, i in enumerate(real.inputs) if i["op"] in ("create_vcpu", "set_tsc")]
    w_tsc = max((_op_window(real, n)[1] - _op_window(real, n)[0] for n in tsc_write_ops), default=0)
    off_rule = f"model - real offset in [-{per_ns}, {w_tsc}] cycles (largest TSC-write op window)"

    def seg_of(m: int) -> str:
        return "set_clock" if set_op is not None and m >= set_op else "creation"

    def off_ok(o_model: int, o_real: int) -> bool:
        return -per_ns <= o_model - o_real <= w_tsc

    for label, ro in real.obs.items():
        mo = model.obs.get(label)
        if mo is None:
            entries.append(_entry(label, "*", "observed", None, "label present", False))
            continue
        n = int(ro["n"])
        key = (
            "record"
            if "record" in ro
            else "record_after_write"
            if "record_after_write" in ro
            else None
        )
        if key is not None:
            rr, mr = ro[key], mo[key]
            vid = int(real.inputs[n]["vcpu"])
            for fld in ("version", "tsc_to_system_mul", "tsc_shift", "flags"):
                entries.append(_entry(label, fld, rr[fld], mr[fld], "exact", rr[fld] == mr[fld]))
            m_off = int(model.inputs[n]["offsets"][str(vid)])
            x_m = (int(mr["tsc_timestamp"]) - m_off) & _U64
            x_r = (int(rr["tsc_timestamp"]) - _real_offset(real, vid, n)) & _U64
            m = _model_op_at(model, x_m, n)
            if m is None:
                entries.append(
                    _entry(label, "tsc_timestamp", x_r, x_m, "model snapshot at an op", False)
                )
            else:
                a, b = _op_window(real, m)
                entries.append(
                    _entry(
                        label,
                        "tsc_timestamp",
                        x_r,
                        x_m,
                        f"same operation: model snapshot at op {m}, real in op {m}'s host TSC"
                        f" window [{a}, {b}] ({b - a} cycles; real - model {x_r - x_m} cycles)",
                        a <= x_r <= b,
                    )
                )
                d = (
                    int(rr["system_time"])
                    - int(mr["system_time"])
                    - _ns_signed(x_r - x_m, int(mr["tsc_to_system_mul"]), int(mr["tsc_shift"]))
                )
                samples.append((seg_of(m), label, f"kvmclock[{key}]", d, d))
            if "guest_tsc" in ro:
                g = int(ro["guest_tsc"]) - _real_offset(real, vid, n)
                gm = int(mo["guest_tsc"]) - int(mo["offset"])
                lo = -per_ns
                hi = int(ro["host_tsc_after"]) - int(real.inputs[n]["host_tsc"])
                entries.append(
                    _entry(
                        label,
                        "guest_tsc - offset",
                        g,
                        gm,
                        f"real - model in [{lo}, {hi}] cycles (the real op window)",
                        lo <= g - gm <= hi,
                    )
                )
        if "clock" in ro and ro["op"] == "get_clock":
            entries.append(
                _entry(
                    label, "flags", ro["flags"], mo["flags"], "exact", ro["flags"] == mo["flags"]
                )
            )
            a, b = _op_window(real, n)
            x_m = int(model.inputs[n]["host_tsc"])
            if ro["flags"] & kvmdev.KVM_CLOCK_HOST_TSC:
                x_r = int(ro["host_tsc"])
                if mo["flags"] & kvmdev.KVM_CLOCK_HOST_TSC:
                    xm_clock = int(mo["host_tsc"])
                    entries.append(
                        _entry(
                            label,
                            "host_tsc",
                            x_r,
                            xm_clock,
                            f"real - model in [-{per_ns}, {b - a}] cycles (the real op window)",
                            -per_ns <= x_r - xm_clock <= b - a,
                        )
                    )
                d = int(ro["clock"]) - int(mo["clock"]) - _ns_signed(x_r - x_m, mul, shift)
                samples.append((seg_of(n), label, "kvmclock[clock]", d, d))
            else:
                base = int(ro["clock"]) - int(mo["clock"])
                samples.append(
                    (
                        seg_of(n),
                        label,
                        "kvmclock[clock]",
                        base - _ns_signed(b - x_m, mul, shift),
                        base - _ns_signed(a - x_m, mul, shift),
                    )
                )
        if "offsets" in ro:
            for vs, o_r in ro["offsets"].items():
                o_m = int(mo["offsets"][vs])
                entries.append(
                    _entry(label, f"tsc_offset[{vs}]", o_r, o_m, off_rule, off_ok(o_m, int(o_r)))
                )
        if "offset" in ro and "vcpu" in ro:
            o_m = int(mo["offset"])
            o_r = int(ro["offset"])
            entries.append(_entry(label, "tsc_offset", o_r, o_m, off_rule, off_ok(o_m, o_r)))
    entries.extend(_compare_traces(real, model, off_ok, off_rule))

    segments: list[dict[str, Any]] = []
    for seg in ("creation", "set_clock"):
        pts = [s for s in samples if s[0] == seg]
        if not pts:
            continue
        points = sorted(lo for _, _, _, lo, hi in pts if lo == hi)
        c = points[len(points) // 2] if points else max(lo for _, _, _, lo, _ in pts)
        c_hi: int | None
        if seg == "creation":
            if real.vm_create:
                a = int(real.vm_create["host_tsc"])
                b = int(real.vm_create.get("host_tsc_after", real.inputs[0]["host_tsc"]))
                c_lo, c_hi = -_ns_signed(b - a, mul, shift), 0
                why = "KVM_CREATE_VM instant"
            else:
                c_lo, c_hi = 0, None
                why = "first operation (KVM_CREATE_VM instant not recorded: lower bound only)"
        else:
            assert set_op is not None
            a, b = _op_window(real, set_op)
            x_s = int(model.inputs[set_op]["host_tsc"])
            c_lo, c_hi = -_ns_signed(b - x_s, mul, shift), _ns_signed(x_s - a, mul, shift)
            why = f"KVM_SET_CLOCK (op {set_op}) instant"
        in_bound = c >= c_lo - EPSILON_NS and (c_hi is None or c <= c_hi + EPSILON_NS)
        for _, lbl, fld, lo, hi in pts:
            entries.append(
                _entry(
                    lbl,
                    fld,
                    lo if lo == hi else {"min": lo, "max": hi},
                    c,
                    f"real - model at one host TSC within {EPSILON_NS} ns of the {seg}"
                    f" segment constant {c} ns",
                    lo - EPSILON_NS <= c <= hi + EPSILON_NS,
                )
            )
        segments.append(
            {
                "segment": seg,
                "constant_ns": c,
                "samples": len(pts),
                "spread_ns": max((abs(p - c) for p in points), default=None),
                "bound_min_ns": c_lo,
                "bound_max_ns": c_hi,
                "bound_from": why,
                "held": in_bound,
            }
        )
        entries.append(
            _entry(
                f"segment {seg}",
                "kvmclock constant",
                c,
                {"min": c_lo, "max": c_hi},
                f"constant within the {why} window (+-{EPSILON_NS} ns)",
                in_bound,
            )
        )
    return {
        "entries": entries,
        "segments": segments,
        "epsilon_ns": EPSILON_NS,
        "compared": len(entries),
        "kvmclock_base": KVMCLOCK_BASE_NOTE,
        "not_compared": NOT_COMPARED,
    }


def _compare_traces(
    real: ScenarioRun,
    model: ScenarioRun,
    off_ok: Callable[[int, int], bool],
    off_rule: str,
) -> list[dict[str, Any]]:
    """Event by event: the same sequence of the four KVM clock events on both sides."""
    if not real.trace or not model.trace:
        return []
    from kvmclock.trace import parse_text

    rs = [r for r in parse_text(real.trace).records if r.data is not None]
    ms = [r for r in parse_text(model.trace).records if r.data is not None]
    out: list[dict[str, Any]] = []
    names_r = [(r.event, r.data.get("vcpu_id") if r.data else None) for r in rs]
    names_m = [(r.event, r.data.get("vcpu_id") if r.data else None) for r in ms]
    out.append(
        _entry(
            "trace",
            "event sequence",
            len(rs),
            len(ms),
            "exact (event, vcpu) sequence",
            names_r == names_m,
        )
    )
    if names_r != names_m:
        return out
    exact_keys = {
        "kvm_update_master_clock": (
            "use_master_clock",
            "offset_matched",
            "host_clock",
            "host_clock_stable",
        ),
        "kvm_track_tsc": (
            "vcpu_id",
            "use_master_clock",
            "nr_vcpus_matched_tsc",
            "online_vcpus",
            "host_clock",
        ),
        "kvm_pvclock_update": ("version", "tsc_to_system_mul", "tsc_shift", "flags"),
    }
    offs_r: list[int] = []
    offs_m: list[int] = []
    pv = [i for i, r in enumerate(rs) if r.event == "kvm_pvclock_update"]
    last_pv_i = pv[-1] if pv else -1
    for i, (r, m) in enumerate(zip(rs, ms, strict=True)):
        assert r.data is not None and m.data is not None
        lbl = f"trace[{i}] {r.event}" + (" (last)" if i == last_pv_i else "")
        if r.event == "kvm_write_tsc_offset":
            o_r, o_m = _s64(r.data["next_tsc_offset"]), _s64(m.data["next_tsc_offset"])
            offs_r.append(o_r)
            offs_m.append(o_m)
            out.append(_entry(lbl, "next_tsc_offset", o_r, o_m, off_rule, off_ok(o_m, o_r)))
            continue
        for k in exact_keys.get(r.event, ()):
            # a field only one side traces (6.18's "hostclock tsc" against the series'
            # "hostclock stable 1") is a difference to report (null on the other side), not
            # a reason to stop
            if k not in r.data and k not in m.data:
                continue
            r_v, m_v = r.data.get(k), m.data.get(k)
            out.append(_entry(lbl, k, r_v, m_v, "exact", k in r.data and k in m.data
                              and r_v == m_v))
    # per kvm_write_tsc_offset event (numbered from 0 in trace order): the events whose
    # offset is the same (itself included); named objects, not a bare matrix
    snap_r = [{"write": i, "equal_to_writes": [j for j, b in enumerate(offs_r) if a == b]}
              for i, a in enumerate(offs_r)]
    snap_m = [{"write": i, "equal_to_writes": [j for j, b in enumerate(offs_m) if a == b]}
              for i, a in enumerate(offs_m)]
    out.append(
        _entry(
            "trace",
            "offset equality pattern",
            snap_r,
            snap_m,
            "exact: the same writes share a generation offset (creation, snapped match)",
            snap_r == snap_m,
        )
    )
    return out


# --- relations: which comparison entries are each relation's model side ------------------------
_REC = ("flags", "tsc_timestamp", "kvmclock[[]record[]]")

RELATION_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "record-mul-shift": (("*", "tsc_to_system_mul"), ("*", "tsc_shift")),
    "get-clock-equals-record": (
        ("clock_matched", "flags"),
        ("clock_matched", "host_tsc"),
        ("clock_matched", "kvmclock[[]clock[]]"),
        *(("run0b", f) for f in _REC),
    ),
    "creation-match-and-shared-records": (
        ("create1", "tsc_offset[[]*[]]"),
        ("clock_matched", "flags"),
        *(("run0b", f) for f in _REC),
        *(("run1b", f) for f in _REC),
    ),
    "far-write-masterclock-off": (
        ("run1_far", "flags"),
        ("run0_far", "flags"),
        ("clock_far", "flags"),
    ),
    "matching-write-masterclock-back": (
        ("match_write", "tsc_offset[[]*[]]"),
        ("clock_back", "flags"),
        *(("run0_back_b", f) for f in _REC),
        *(("run1_back_b", f) for f in _REC),
    ),
    "version-rule": (("run0_set", "version"), ("run1_set", "version")),
    "guest-stopped-kept": (("run0_set", "flags"), ("run1_ctrl", "flags")),
    "set-clock-system-time": (),  # the relation-only exact entries of _EXTRA_EXACT
    "guest-tsc-follows-write": (
        ("far_write", "tsc_offset[[]1[]]"),
        ("run1_far", "guest_tsc - offset"),
        ("run1_far", "tsc_offset"),
    ),
    "version-rule-msr-rewrite": (("msr_rewrite", "version"), ("run0_msr", "version")),
    "traced-offsets-snapped": (
        ("trace", "event sequence"),
        ("trace", "offset equality pattern"),
        ("trace[[]*[]] kvm_write_tsc_offset", "next_tsc_offset"),
    ),
}
"""Relation -> (label, field) glob patterns of the comparison entries that are its model side:
the model's values of the observations the relation reads, compared with the real ones."""

_EXTRA_EXACT: dict[str, tuple[tuple[str, str, str], ...]] = {
    "set-clock-system-time": (
        ("run0_set", "record", "system_time"),
        ("run1_set", "record", "system_time"),
    ),
}
"""Relation-only exact comparisons (label, key, field): after KVM_SET_CLOCK under masterclock
both sides publish exactly the value set (x86.c kvm_vm_ioctl_set_clock)."""


def _classify(entry: dict[str, Any], real: ScenarioRun) -> dict[str, Any]:
    """Attach ``outcome`` and ``departure`` to a comparison entry."""
    if entry["held"]:
        entry.update(outcome=HELD, departure=None)
        return entry
    d = departure_for_entry(entry, real)
    entry.update(outcome=DEPARTED if d else FAILED, departure=d.name if d else None)
    return entry


def count(items: list[dict[str, Any]]) -> dict[str, int]:
    """Outcome counts of relations or comparison entries."""
    return {k: sum(1 for e in items if e["outcome"] == k) for k in OUTCOMES}


def judge(real: ScenarioRun, model: ScenarioRun | None, model_why: str) -> dict[str, Any]:
    """Every relation's outcome and the classified comparison; ``model`` None means the model
    did not run (``model_why`` says why): every relation fails then."""
    rules = check_relations(real)
    traced = trace_relation(real)
    if traced is not None:
        rules["traced-offsets-snapped"] = traced
    comparison = compare_runs(real, model) if model is not None else None
    entries = [_classify(e, real) for e in comparison["entries"]] if comparison else []
    relations: list[dict[str, Any]] = []
    for name, (held, detail) in rules.items():
        dep_real = None if held else departure_for_relation(name, real)
        model_side: dict[str, Any]
        deps: dict[str, dict[str, Any]] = {}
        if dep_real is not None:
            deps[dep_real.name] = dep_real.describe(real.evidence)
        if model is None:
            model_side = {"outcome": FAILED, "detail": f"model did not run: {model_why}"}
        else:
            pats = RELATION_FIELDS.get(name, ())
            mine = [
                e
                for e in entries
                if any(
                    fnmatch.fnmatchcase(e["label"], lp) and fnmatch.fnmatchcase(e["field"], fp)
                    for lp, fp in pats
                )
            ]
            for label, key, fld in _EXTRA_EXACT.get(name, ()):
                r_v = real.obs[label][key][fld]
                m_v = model.obs.get(label, {}).get(key, {}).get(fld)
                mine.append(
                    _classify(_entry(label, fld, r_v, m_v, "exact", r_v == m_v), real)
                )
            counts = count(mine)
            for e in mine:
                if e["departure"]:
                    deps[e["departure"]] = DEPARTURES[e["departure"]].describe(real.evidence)
            failed = [e for e in mine if e["outcome"] == FAILED]
            if not mine:
                m_out, m_detail = FAILED, "no model observation compared"
            else:
                m_out = FAILED if failed else DEPARTED if counts[DEPARTED] else HELD
                m_detail = (
                    f"model vs real on {len(mine)} fields: {counts[HELD]} held,"
                    f" {counts[DEPARTED]} departed, {counts[FAILED]} failed"
                    + "".join(
                        f"; {e['label']}.{e['field']} real {e['real']} model {e['model']}"
                        f" ({e['rule']})"
                        for e in failed
                    )
                )
            model_side = {"outcome": m_out, "detail": m_detail, "fields": mine}
        real_out = HELD if held else DEPARTED if dep_real else FAILED
        outs = (real_out, model_side["outcome"])
        outcome = FAILED if FAILED in outs else DEPARTED if DEPARTED in outs else HELD
        rel: dict[str, Any] = {
            "name": name,
            "scenario": "clock-relations",
            "outcome": outcome,
            "exact": EXACT.get(name, True),
            "real": {"outcome": real_out, "held": held, "detail": detail},
            "model": model_side,
            "departures": list(deps.values()),
        }
        if name in RULE_BOUND:
            rel["bound"] = RULE_BOUND[name]
        relations.append(rel)
    if comparison is not None:
        comparison["summary"] = count(entries)
        comparison["departures"] = {
            d: DEPARTURES[d].describe(real.evidence)
            for d in sorted({e["departure"] for e in entries if e["departure"]})
        }
        comparison["failed"] = [e for e in entries if e["outcome"] == FAILED]
    return {"relations": relations, "summary": count(relations), "comparison": comparison}


__all__ = [
    "DEPARTED",
    "DEPARTURES",
    "DEPARTURE_FOR",
    "EPSILON_NS",
    "EXACT",
    "FAILED",
    "HELD",
    "KNOWN_DEPARTURES",
    "OUTCOMES",
    "RELATION_FIELDS",
    "Departure",
    "check_relations",
    "compare_runs",
    "count",
    "departure_for_entry",
    "departure_for_relation",
    "judge",
    "trace_offsets",
    "trace_relation",
]

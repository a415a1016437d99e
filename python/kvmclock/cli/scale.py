"""``kvmclock scale``: mult/shift for a TSC frequency, and what KVM does with a guest TSC
frequency (``KVM_SET_TSC_KHZ``) or a TSC scaling ratio on a host with VMX, SVM or no TSC
scaling hardware.

The guest part runs the model itself (:mod:`kvmclock.kvm.x86`): a one-CPU host of the given
frequency and scaling hardware boots, loads KVM, creates a VM and a vCPU, issues the vCPU's
``KVM_SET_TSC_KHZ`` (``Kvm.set_vcpu_tsc_khz``: the ``max_guest_tsc_khz`` gate, then
``kvm_set_tsc_khz``: the 250 ppm tolerance, the ratio and its bounds, catch-up), enables
kvmclock and enters the vCPU once so that ``kvm_guest_time_update`` writes the record.  What
it prints is read back from that vCPU; no rule is computed a second time here.
"""

from __future__ import annotations

import argparse
import re
import sys
from fractions import Fraction
from typing import Any

from kvmclock.cli.common import (
    EXIT_OK,
    SCALINGS,
    U32_MAX,
    U64_MAX,
    _dump_json,
    _int_arg,
    add_json_option,
)
from kvmclock.drift import RatioInput, model_tsc_scaling
from kvmclock.errors import UsageError

__all__ = [
    "DEFAULT_PROFILE",
    "SCALINGS",
    "RatioInput",
    "add_parser",
    "cmd_scale",
    "format_scale",
    "model_tsc_scaling",
    "parse_ratio",
    "scale_report",
    "scale_warnings",
]

DEFAULT_PROFILE = "upstream"


def parse_ratio(text: str) -> RatioInput:
    """``--ratio``: a fixed-point integer (decimal or 0x hex) or a real number (``1.5``,
    ``.5``, ``3/2``).  UsageError names the option and both valid forms."""
    t = text.strip()
    try:
        if re.fullmatch(r"\d+\.\d*|\.\d+|\d+/\d+", t):
            return RatioInput(text, "real", Fraction(t))
        return RatioInput(text, "fixed_point", int(t, 0))
    except (ValueError, ZeroDivisionError):
        raise UsageError(
            f"scale: --ratio must be a fixed-point integer (e.g. 0x1000000000000) or a real "
            f"number (e.g. 1.5), got {text!r}"
        ) from None


def _explain(e: dict[str, Any], tsc_khz: int, guest_khz: int | None) -> str:
    """One sentence: which rule applied and what the guest TSC does."""
    rule = e["rule"]
    if rule == "refused":
        return f"refused (-EINVAL): {e['refusal']}"
    if rule == "catchup":
        return (
            f"catch-up: no TSC scaling hardware and a guest faster than the host: its TSC "
            f"runs at the host's {tsc_khz} kHz and KVM pushes it forward to "
            f"{e['virtual_tsc_khz']} kHz time at every clock update (tsc_catchup, "
            "tsc_always_catchup)"
        )
    ratio = (f"ratio {e['ratio_hex']} = {e['ratio_value']:.12g}" if e["ratio"] is not None
             else "no ratio")
    if rule == "scaled":
        hz, khz = e["hardware_tsc_hz"], e["hardware_tsc_khz"]
        # the rate in Hz (kvm_scale_tsc of the host's Hz) as kHz with three decimals, and the
        # record's kHz (kvm_scale_tsc of the host's kHz) whenever the two differ or it is 0
        rate = f"{khz} kHz" if hz == khz * 1000 and khz else (
            f"{hz // 1000}.{hz % 1000:03d} kHz (kvm_scale_tsc of the host's kHz: {khz} kHz)")
        return f"scaled with {ratio}: the guest TSC runs at {rate}"
    if guest_khz is None:
        return f"no scaling: {ratio} is the default; the guest TSC runs at {tsc_khz} kHz"
    if guest_khz == 0:
        return (f"no scaling: KVM_SET_TSC_KHZ 0 means the host's tsc_khz {tsc_khz} kHz "
                "(kvm_arch_vcpu_ioctl: user_tsc_khz == 0 -> tsc_khz); the guest TSC runs at "
                f"{e['hardware_tsc_khz']} kHz ({ratio})")
    ppm = (guest_khz - tsc_khz) * 1e6 / tsc_khz
    return (
        f"no scaling: {guest_khz} kHz is within tsc_tolerance_ppm {e['tolerance_ppm']} of the "
        f"host's {tsc_khz} kHz ({e['tolerance_low_khz']}..{e['tolerance_high_khz']} kHz, "
        f"{ppm:+.1f} ppm): the guest TSC runs at the host's {e['hardware_tsc_khz']} kHz "
        f"({ratio}); KVM_GET_TSC_KHZ reports {e['virtual_tsc_khz']} kHz"
    )


def scale_warnings(tsc_khz: int, guest_khz: int | None, ratio: RatioInput | None,
                   scaling: list[dict[str, Any]], profile: str) -> list[dict[str, str]]:
    """Input that is valid but probably not what was meant: ``[{"code", "message"}]``."""
    out: list[dict[str, str]] = []
    for name, khz in (("--tsc-khz", tsc_khz), ("--guest-khz", guest_khz)):
        if khz is not None and 0 < khz < 10_000:
            out.append({
                "code": "khz_looks_like_mhz",
                "message": f"{name} {khz} is {khz} kHz = {khz / 1000:g} MHz; the option takes "
                f"kHz (a {khz} MHz TSC is {name} {khz * 1000})",
            })
    if ratio is not None and ratio.form == "fixed_point" \
            and not ratio.text.strip().lower().startswith("0x"):
        raw = [e for e in scaling if e["frac_bits"] is not None
               and int(ratio.value) < 1 << e["frac_bits"]]
        if raw:
            means = ", ".join(
                f"{ratio.value} / 2**{e['frac_bits']} = {int(ratio.value) / 2**e['frac_bits']:.3g}"
                f" on {e['scaling'].upper()}" for e in raw
            )
            out.append({
                "code": "ratio_read_as_fixed_point",
                "message": f"--ratio {ratio.text} is read as a raw fixed-point multiplier: "
                f"{means}; for the ratio {ratio.value} write --ratio {ratio.value}.0 (raw "
                f"fixed point is clearer in hex: --ratio {int(ratio.value):#x})",
            })
    for e in scaling:
        rec = e["guest_record"]
        if e["rule"] == "scaled" and e["hardware_tsc_khz"] == 0:
            got = (
                f"this model run (profile {profile}) wrote tsc_to_system_mul 0, a guest "
                "clock that does not advance" if rec and rec["tsc_to_system_mul"] == 0
                else f"this model run (profile {profile}) took "
                f"{rec['record_tsc_khz']} kHz" if rec else str(e["guest_record_note"])
            )
            out.append({
                "code": "guest_record_khz_zero",
                "message": f"{e['scaling'].upper()}: ratio {e['ratio_hex']} scales the host's "
                f"{tsc_khz} kHz to 0 kHz for the guest record (kvm_scale_tsc in "
                "kvm_guest_time_update): before Linux 6.16 the record keeps "
                "tsc_to_system_mul 0, or kvm_get_time_scale loops forever once the vCPU's "
                f"kHz was non-zero; 6.16+ takes 1 kHz; {got}",
            })
    return out


def scale_report(tsc_khz: int, guest_khz: int | None = None, ratio_text: str | None = None,
                 scaling: str | None = None, profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    """Every number ``kvmclock scale`` prints (the ``kvmclock.scale`` JSON document): the
    time scales of a ``tsc_khz`` kHz TSC (native core), and with ``guest_khz`` or
    ``ratio_text`` what KVM does on each host kind (``scaling``: one of :data:`SCALINGS`, or
    None for all), computed by :func:`model_tsc_scaling`."""
    import kvmclock

    hz = tsc_khz * 1000
    shift, mult = kvmclock.get_time_scale(scaled_hz=10**9, base_hz=hz)
    vshift, vmult = kvmclock.get_time_scale(scaled_hz=hz, base_hz=10**9)
    back = kvmclock.pvclock_tsc_khz(tsc_to_system_mul=mult, tsc_shift=shift)
    # clocksource_register_khz(&clocksource_tsc, tsc_khz) -> __clocksource_update_freq_scale
    # (kernel/time/clocksource.c) with scale 1000: mask 2**64-1 gives sec > 600, capped to 600,
    # so clocks_calc_mult_shift(freq=tsc_khz, NSEC_PER_SEC/1000, 600 * 1000).
    cs_mult, cs_shift = kvmclock.clocks_calc_mult_shift(
        from_hz=tsc_khz, to_hz=1_000_000, maxsec=600 * 1000
    )
    # then the maxadj loop: while mult +/- 11% (clocksource_max_adjustment) would wrap a u32,
    # halve mult and decrement shift
    while cs_mult + cs_mult * 11 // 100 > U32_MAX:
        cs_mult >>= 1
        cs_shift -= 1
    ratio = parse_ratio(ratio_text) if ratio_text is not None else None
    doc: dict[str, Any] = {
        "schema": "kvmclock.scale",
        "schema_version": 1,
        "tsc_khz": tsc_khz,
        "tsc_to_ns": {
            "source": "kvm_get_time_scale(NSEC_PER_SEC, tsc_khz * 1000)",
            "tsc_to_system_mul": mult,
            "tsc_shift": shift,
            "ns_per_cycle": mult * 2.0**shift / 2**32,
            "pvclock_tsc_khz": back,
            "round_trip_ok": back == tsc_khz,
        },
        "ns_to_tsc": {
            "source": "kvm_get_time_scale(tsc_khz * 1000, NSEC_PER_SEC)",
            "mult": vmult,
            "shift": vshift,
            "cycles_per_ns": vmult * 2.0**vshift / 2**32,
        },
        "clocksource_tsc": {
            "source": "clocksource_register_khz: clocks_calc_mult_shift(tsc_khz, "
            "NSEC_PER_SEC / 1000, 600 * 1000) and the maxadj loop",
            "mult": cs_mult,
            "shift": cs_shift,
            "ns_per_cycle": cs_mult / 2.0**cs_shift,
        },
        "guest_khz": guest_khz,
        "ratio_input": (
            {"text": ratio.text, "form": ratio.form} if ratio is not None else None
        ),
        "profile": profile,
        "tsc_scaling": [],
        "warnings": [],
    }
    if guest_khz is not None or ratio is not None:
        entries = []
        for kind in [scaling] if scaling else list(SCALINGS):
            e = model_tsc_scaling(tsc_khz, kind, guest_khz=guest_khz, ratio=ratio,
                                  profile=profile)
            e["explanation"] = _explain(e, tsc_khz, guest_khz)
            entries.append(e)
        doc["tsc_scaling"] = entries
    doc["warnings"] = scale_warnings(tsc_khz, guest_khz, ratio, doc["tsc_scaling"], profile)
    return doc


_KIND = {"vmx": "VMX", "svm": "SVM", "none": "no TSC scaling"}


def format_scale(doc: dict[str, Any]) -> str:
    """Text of :func:`scale_report` (warnings are printed separately, on stderr)."""
    a, b, c = doc["tsc_to_ns"], doc["ns_to_tsc"], doc["clocksource_tsc"]
    out = [
        f"TSC {doc['tsc_khz']} kHz",
        f"  TSC -> ns (pvclock record, {a['source']}):",
        f"    tsc_to_system_mul {a['tsc_to_system_mul']:#010x} ({a['tsc_to_system_mul']}), "
        f"tsc_shift {a['tsc_shift']}  = {a['ns_per_cycle']:.12f} ns/cycle",
        f"    pvclock_tsc_khz back: {a['pvclock_tsc_khz']} kHz"
        + ("" if a["round_trip_ok"] else f" (differs by {a['pvclock_tsc_khz'] - doc['tsc_khz']})"),
        f"  ns -> TSC (virtual_tsc_mult/shift, {b['source']}):",
        f"    mult {b['mult']:#010x} ({b['mult']}), shift {b['shift']}  = "
        f"{b['cycles_per_ns']:.12f} cycles/ns",
        f"  clocksource tsc ({c['source']}):",
        f"    mult {c['mult']} shift {c['shift']}  = {c['ns_per_cycle']:.12f} ns/cycle",
    ]
    if doc["tsc_scaling"]:
        asked = (f"KVM_SET_TSC_KHZ {doc['guest_khz']} kHz" if doc["guest_khz"] is not None
                 else f"TSC multiplier --ratio {doc['ratio_input']['text']}")
        out.append(f"{asked} on a {doc['tsc_khz']} kHz host (KVM model, profile "
                   f"{doc['profile']}):")
    for s in doc["tsc_scaling"]:
        bits = f" ({s['frac_bits']} fraction bits)" if s["frac_bits"] is not None else ""
        out.append(f"  {_KIND[s['scaling']]}{bits}: {s['explanation']}")
        rec = s["guest_record"]
        if rec is not None:
            back = (f"pvclock_tsc_khz back {rec['pvclock_tsc_khz']} kHz"
                    if rec["pvclock_tsc_khz"] is not None else "a clock that does not advance")
            out.append(
                f"    guest record: tsc_to_system_mul {rec['tsc_to_system_mul']:#010x} "
                f"tsc_shift {rec['tsc_shift']} for {rec['record_tsc_khz']} kHz, {back}"
            )
        elif s["guest_record_note"] and s["rule"] != "refused":
            out.append(f"    {s['guest_record_note']}")
    return "\n".join(out)


def _check_scale_args(args: argparse.Namespace) -> None:
    """Before computing: --ratio and --guest-khz are not both given, and --ratio parses and
    is a u64 multiplier (1..2**64-1) for each host kind asked."""
    if args.ratio is not None and args.guest_khz is not None:
        raise UsageError("scale: give --ratio or --guest-khz, not both")
    if args.ratio is None:
        return
    ratio = parse_ratio(args.ratio)
    from kvmclock.kvm.x86 import TSC_SCALING_CAPS

    for kind in [args.scaling] if args.scaling else list(SCALINGS):
        has_control, frac, _max = TSC_SCALING_CAPS[kind]
        if not has_control:
            continue
        r = ratio.fixed_point(frac)
        if r <= 0 or r > U64_MAX:
            raise UsageError(f"scale: --ratio must be in 1..2**64-1 as fixed point with {frac} "
                             f"fraction bits ({kind.upper()}), got {r} from {args.ratio!r}")


def cmd_scale(args: argparse.Namespace) -> int:
    _check_scale_args(args)
    doc = scale_report(args.tsc_khz, args.guest_khz, args.ratio, args.scaling, args.profile)
    for w in doc["warnings"]:
        print(f"kvmclock scale: warning: {w['message']}", file=sys.stderr)
    if args.json:
        _dump_json(doc, args.json)
    if args.json != "-":
        print(format_scale(doc))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock scale``: its subparser (options, help texts) under ``subparsers``."""
    from kvmclock.profiles import PROFILES

    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "scale", help="mult/shift for a TSC frequency, and what KVM does with a guest TSC kHz",
        description="kvm_get_time_scale both ways for a TSC frequency, pvclock_tsc_khz back, "
        "the tsc clocksource's clocks_calc_mult_shift; with --guest-khz (KVM_SET_TSC_KHZ) or "
        "--ratio (a TSC multiplier) the KVM model decides, for a host with VMX (48 fraction "
        "bits), SVM (32) or no TSC scaling, which rule applies: within 250 ppm no scaling, "
        "a ratio, catch-up, or a refusal, and the guest's pvclock record.",
        epilog="examples:\n  kvmclock scale --tsc-khz 2933437\n"
        "  kvmclock scale --tsc-khz 3000000 --guest-khz 3000500\n"
        "  kvmclock scale --tsc-khz 3000000 --guest-khz 1500000 --scaling vmx\n"
        "  kvmclock scale --tsc-khz 3000000 --ratio 0.5 --json",
        formatter_class=fmt,
    )
    s.add_argument("--tsc-khz", type=_int_arg("--tsc-khz", 1, U32_MAX), required=True,
                   metavar="K", help="the host TSC frequency in kHz (1..4294967295)")
    s.add_argument("--guest-khz", type=_int_arg("--guest-khz", 0, U32_MAX), metavar="G",
                   help="a guest TSC frequency in kHz asked with KVM_SET_TSC_KHZ (0: the "
                   "host's tsc_khz, as the ioctl takes 0)")
    s.add_argument("--ratio", metavar="R",
                   help="a TSC multiplier: a real number (1.5, 3/2) or raw fixed point "
                   "(an integer, best in hex: 0x1800000000000 is 1.5 on VMX)")
    s.add_argument("--scaling", "--vendor", dest="scaling", choices=list(SCALINGS),
                   help="the host's TSC scaling hardware: vmx (48 fraction bits), svm (32), "
                   "none (catch-up only); default: all three")
    s.add_argument("--profile", choices=list(PROFILES), default=DEFAULT_PROFILE,
                   help=f"kernel profile the model runs (default {DEFAULT_PROFILE}); the "
                   "rules are the same in all, the record of a 0 kHz guest is not")
    add_json_option(s, "the report")
    s.set_defaults(func=cmd_scale)

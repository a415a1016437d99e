"""``kvmclock scale``: mult/shift for a TSC frequency (and TSC scaling)."""

from __future__ import annotations

import argparse
import json
import re
from fractions import Fraction
from typing import Any

from kvmclock.cli.common import EXIT_OK, U32_MAX, U64_MAX, _int_arg
from kvmclock.errors import UsageError

_FRAC_BITS = {"vmx": 48, "svm": 32}
# kvm_caps.max_tsc_scaling_ratio: KVM_VMX_TSC_MULTIPLIER_MAX (vmx.c), SVM_TSC_RATIO_MAX
# (arch/x86/include/asm/svm.h); set_tsc_khz rejects ratio == 0 || ratio >= max
_MAX_RATIO = {"vmx": (1 << 64) - 1, "svm": 0x000000FFFFFFFFFF}


def _parse_ratio(text: str, frac_bits: int) -> int:
    """``--ratio``: a fixed-point integer (decimal or 0x hex) or a real number like ``1.5``
    (converted exactly, truncated to ``frac_bits`` fraction bits)."""
    t = text.strip()
    try:
        if re.fullmatch(r"\d+\.\d*|\.\d+|\d+/\d+", t):
            return int(Fraction(t) * (1 << frac_bits))
        return int(t, 0)
    except (ValueError, ZeroDivisionError):
        raise UsageError(
            f"scale: --ratio must be a fixed-point integer (e.g. 0x1000000000000) or a real "
            f"number (e.g. 1.5), got {text!r}"
        ) from None


def scale_report(tsc_khz: int, guest_khz: int | None, ratio_text: str | None,
                 vendor: str | None) -> dict[str, Any]:
    """Every number ``kvmclock scale`` prints (computed by the native core)."""
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
    doc: dict[str, Any] = {
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
    }
    if guest_khz is not None or ratio_text is not None:
        vendors = [vendor] if vendor else ["vmx", "svm"]
        scaling = []
        for v in vendors:
            frac = _FRAC_BITS[v]
            if ratio_text is not None:
                ratio = _parse_ratio(ratio_text, frac)
                if ratio <= 0 or ratio >= 1 << 64:
                    raise UsageError(f"scale: --ratio must be in 1..2**64-1 as fixed point "
                                     f"with {frac} fraction bits, got {ratio}")
                source = "--ratio"
            else:
                assert guest_khz is not None
                ratio = kvmclock.tsc_scaling_ratio(
                    user_tsc_khz=guest_khz, tsc_khz=tsc_khz, frac_bits=frac
                )
                source = "tsc_scaling_ratio(user_tsc_khz, tsc_khz) (set_tsc_khz)"
            scaled_khz = kvmclock.scale_tsc(tsc=tsc_khz, ratio=ratio, frac_bits=frac)
            ok = 0 < ratio < _MAX_RATIO[v]
            entry: dict[str, Any] = {
                "vendor": v,
                "accepted_by_set_tsc_khz": ok,
                "max_tsc_scaling_ratio": _MAX_RATIO[v],
                "frac_bits": frac,
                "ratio": ratio,
                "ratio_hex": f"{ratio:#x}",
                "ratio_value": ratio / 2**frac,
                "ratio_source": source,
                "guest_tsc_khz": scaled_khz,
            }
            # KVM holds a guest TSC frequency in a u32 of kHz (virtual_tsc_khz): only then is
            # there a record kvm_guest_time_update would write
            if 0 < scaled_khz <= U32_MAX:
                gshift, gmult = kvmclock.get_time_scale(scaled_hz=10**9,
                                                        base_hz=scaled_khz * 1000)
                entry["guest_tsc_to_system_mul"] = gmult
                entry["guest_tsc_shift"] = gshift
                entry["guest_pvclock_tsc_khz"] = kvmclock.pvclock_tsc_khz(
                    tsc_to_system_mul=gmult, tsc_shift=gshift
                )
            scaling.append(entry)
        doc["tsc_scaling"] = scaling
        if guest_khz is not None:
            doc["guest_khz"] = guest_khz
    return doc


def format_scale(doc: dict[str, Any]) -> str:
    """Text of :func:`scale_report`."""
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
    for s in doc.get("tsc_scaling", []):
        out.append(
            f"  TSC scaling {s['vendor'].upper()} ({s['frac_bits']} fraction bits): ratio "
            f"{s['ratio_hex']} (= {s['ratio_value']:.12f}, {s['ratio_source']}) -> guest TSC "
            f"{s['guest_tsc_khz']} kHz"
            + ("" if s["accepted_by_set_tsc_khz"] else
               f" (set_tsc_khz would reject it: ratio 0 or >= {s['max_tsc_scaling_ratio']:#x})")
        )
        if "guest_tsc_to_system_mul" in s:
            out.append(
                f"    guest record: tsc_to_system_mul {s['guest_tsc_to_system_mul']:#010x} "
                f"tsc_shift {s['guest_tsc_shift']}, pvclock_tsc_khz back "
                f"{s['guest_pvclock_tsc_khz']} kHz"
            )
    return "\n".join(out)


def _check_scale_args(args: argparse.Namespace) -> None:
    """Before computing: the TSC scaling inputs are representable (--ratio parses and fits a
    u64; the ratio --guest-khz implies fits a u64, as kvm_set_tsc_khz's
    ``mul_u64_u32_div(1ULL << frac_bits, user_tsc_khz, tsc_khz)`` requires)."""
    if args.ratio is not None and args.guest_khz is not None:
        raise UsageError("scale: give --ratio or --guest-khz, not both")
    for v in [args.vendor] if args.vendor else ["vmx", "svm"]:
        frac = _FRAC_BITS[v]
        if args.ratio is not None:
            ratio = _parse_ratio(args.ratio, frac)
            if ratio <= 0 or ratio > U64_MAX:
                raise UsageError(f"scale: --ratio must be in 1..2**64-1 as fixed point "
                                 f"with {frac} fraction bits, got {ratio}")
        if args.guest_khz is not None and (args.guest_khz << frac) // args.tsc_khz > U64_MAX:
            raise UsageError(
                f"scale: --guest-khz {args.guest_khz} is too fast for --tsc-khz "
                f"{args.tsc_khz} on {v.upper()}: the ratio does not fit 64 bits with {frac} "
                f"fraction bits (KVM refuses such a KVM_SET_TSC_KHZ)"
            )


def cmd_scale(args: argparse.Namespace) -> int:
    _check_scale_args(args)
    doc = scale_report(args.tsc_khz, args.guest_khz, args.ratio, args.vendor)
    print(json.dumps(doc, indent=2) if args.json else format_scale(doc))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock scale``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "scale", help="mult/shift for a TSC frequency (and TSC scaling)",
        description="kvm_get_time_scale both ways for a TSC frequency, pvclock_tsc_khz back, "
        "the tsc clocksource's clocks_calc_mult_shift, and with --guest-khz or --ratio the "
        "TSC scaling ratio (VMX: 48 fraction bits, SVM: 32).",
        epilog="examples:\n  kvmclock scale --tsc-khz 2933437\n"
        "  kvmclock scale --tsc-khz 3000000 --guest-khz 1500000 --vendor vmx\n"
        "  kvmclock scale --tsc-khz 3000000 --ratio 0.5 --json",
        formatter_class=fmt,
    )
    s.add_argument("--tsc-khz", type=_int_arg("--tsc-khz", 1, U32_MAX), required=True,
                   metavar="K")
    s.add_argument("--guest-khz", type=_int_arg("--guest-khz", 1, U32_MAX), metavar="G")
    s.add_argument("--ratio", metavar="R", help="fixed-point ratio (int/0x) or a real number")
    s.add_argument("--vendor", choices=["vmx", "svm"], help="default: both")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_scale)

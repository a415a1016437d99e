"""``kvmclock drift``: drift of the three KVM clock definitions, jump at a re-anchor."""

from __future__ import annotations

import argparse
import re
from typing import Any

from kvmclock.cli.common import (
    EXIT_OK,
    SCALINGS,
    U32_MAX,
    _check_output_path,
    _dump_json,
    _int_arg,
    add_json_option,
)
from kvmclock.errors import UsageError


def cmd_drift(args: argparse.Namespace) -> int:
    """``kvmclock drift``: the three clock definitions' rates and the guest clock's step at a
    masterclock update ``--seconds`` after the last one (:mod:`kvmclock.drift`)."""
    from kvmclock import drift
    from kvmclock.profiles import parse_assignments, resolve_profile

    if args.json is not None:
        _check_output_path(args.json, "--json")
    refused: drift.KvmRefused | None = None
    try:
        profile = resolve_profile(str(args.profile).strip(), **parse_assignments(args.set or []))
        try:
            d = drift.predict(args.tsc_khz, args.guest_khz, args.vendor, args.seconds, profile)
        except drift.KvmRefused as exc:  # a result, like kvmclock scale reports it
            # the other arguments are still checked (a bad one is exit 2)
            drift.predict(args.tsc_khz, None, args.vendor, args.seconds, profile)
            refused = exc
    except ValueError as exc:  # DriftInputError, or an unknown profile / switch / value
        msg = str(exc)
        for name, option in (("tsc_khz", "--tsc-khz"), ("guest_khz", "--guest-khz"),
                             ("seconds", "--seconds"), ("vendor", "--scaling")):
            msg = re.sub(rf"(?<![\w-]){name}\b", option, msg)
        raise UsageError(f"kvmclock drift: {msg}") from None
    if refused is not None:
        doc = drift.refusal_document(args.tsc_khz, refused.guest_khz, args.vendor, profile,
                                     refused.refusal)
        if args.json is not None:
            _dump_json(doc, args.json)
            if args.json == "-":
                return EXIT_OK
        print(f"host TSC {doc['tsc_khz']} kHz, guest TSC {doc['guest_khz']} kHz "
              f"({doc['vendor']}), profile {doc['profile']} (Linux {doc['kernel']}): "
              f"refused (-EINVAL): {doc['refusal']}")
        return EXIT_OK
    doc = d.to_json()
    if args.json is not None:
        _dump_json(doc, args.json)
        if args.json == "-":
            return EXIT_OK
    base = ("CLOCK_MONOTONIC_RAW + boot offset" if doc["time_base"] == "raw"
            else "CLOCK_BOOTTIME")
    ratio = doc["tsc_scaling_ratio"] or 0
    mode = {"native": "same rate as the host", "scaled": f"scaled, ratio {ratio:#x}",
            "catchup": "catch-up, no scaling hardware"}[doc["tsc_mode"]]
    a, b, c, jump = doc["a"], doc["b"], doc["c"], doc["jump_ns"]
    direction = ("forward" if jump > 0 else "back") if jump else "not at all"
    print("\n".join([
        f"host TSC {doc['tsc_khz']} kHz, guest TSC {doc['guest_khz']} kHz ({mode}; "
        f"{doc['vendor']}), profile {doc['profile']} (Linux {doc['kernel']}): kvmclock base "
        f"{base}",
        f"  A  base + kvmclock_offset     mult {a['mult']} shift {a['shift']}: "
        f"{doc['a_ppb']:+.6f} ppb",
        f"  B  guest TSC, guest record    mul {b['tsc_to_system_mul']} shift {b['tsc_shift']} "
        f"({doc['record_tsc_khz']} kHz): {doc['b_ppb']:+.6f} ppb",
        f"  C  host TSC, host record      mul {c['tsc_to_system_mul']} shift {c['tsc_shift']}: "
        f"{doc['c_ppb']:+.6f} ppb",
        f"  A-B {doc['a_minus_b_ppb']:+.6f} ppb ({doc['a_minus_b_ms_per_day']:+.4f} ms/day), "
        f"B-C {doc['b_minus_c_ppb']:+.6f} ppb",
        f"  over {doc['interval_s']:g} s ({doc['interval_cycles']} host cycles): "
        f"A +{doc['a_ns']} ns, "
        f"B +{doc['b_ns']} ns, C +{doc['c_ns']} ns",
        f"  jump_ns {jump:+d}: at the masterclock update the guest clock steps {direction} "
        "(from B to A)",
        *([f"  note: {doc['record_note']}"] if doc["record_note"] else []),
    ]))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock drift``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "drift", help="drift of the three KVM clock definitions, jump at a re-anchor",
        description="Exact integer prediction of the three KVM clock definitions' rates "
        "(A: host base clock + kvmclock_offset; B: what the guest computes from its record and "
        "TSC; C: KVM_GET_CLOCK's extrapolation from the host TSC), in ppb against true time, "
        "and of jump_ns, the guest clock's step (positive = forward) at a masterclock update "
        "--seconds after the last one. The guest TSC and its record come from the KVM "
        "model, the same code as kvmclock scale: a frequency KVM refuses is a result "
        "(\"refused (-EINVAL): why\", exit 0), not a usage error.",
        epilog="examples:\n  kvmclock drift --tsc-khz 1995311\n"
        "  kvmclock drift --tsc-khz 2999999 --guest-khz 1499999 --scaling vmx --json\n"
        "  kvmclock drift --tsc-khz 2593992 --seconds 2592000    # 30 days",
        formatter_class=fmt,
    )
    s.add_argument("--tsc-khz", type=_int_arg("--tsc-khz", 1, U32_MAX), required=True,
                   metavar="F", help="host TSC frequency (kHz, as calibrated: tsc_khz)")
    s.add_argument("--guest-khz", type=_int_arg("--guest-khz", 0, U32_MAX), metavar="G",
                   help="guest TSC frequency (KVM_SET_TSC_KHZ, kHz; 0 or absent: the host's, "
                   "as the ioctl takes 0)")
    s.add_argument("--scaling", "--vendor", dest="vendor", choices=list(SCALINGS),
                   default="vmx",
                   help="host TSC scaling hardware: vmx (48 fraction bits), svm (32), none "
                   "(default vmx; --vendor is the same option)")
    s.add_argument("--seconds", default="5", metavar="T",
                   help="seconds since the last masterclock update (default 5)")
    s.add_argument("--profile", default="upstream", metavar="NAME",
                   help="kernel profile (default upstream; kvmclock profiles lists them)")
    s.add_argument("--set", action="append", metavar="SWITCH=VALUE",
                   help="flip one behaviour switch of the profile (repeatable)")
    add_json_option(s, "the prediction")
    s.set_defaults(func=cmd_drift)

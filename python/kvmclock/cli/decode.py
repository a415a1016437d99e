"""``kvmclock decode``: decode pvclock (32-byte) and wall clock (12-byte) records; the record
logic is :mod:`kvmclock.decode`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kvmclock.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    _check_output_path,
    _dump_json,
    _int_arg,
    add_json_option,
)
from kvmclock.decode import (
    PVCLOCK_SIZE,
    TSC_SHIFT_MAX,
    WALL_CLOCK_SIZE,
    cut_records,
    decode_document,
    decode_records,
    decode_trace_lines,
    format_decoded,
    no_trace_line_message,
    parse_hex,
)
from kvmclock.errors import UsageError

__all__ = [
    "PVCLOCK_SIZE",
    "TSC_SHIFT_MAX",
    "WALL_CLOCK_SIZE",
    "_split_records",
    "add_parser",
    "cmd_decode",
    "decode_records",
    "decode_trace_lines",
    "format_decoded",
    "parse_hex",
]


def _split_records(chunks: list[bytes], kind: str) -> list[tuple[str, bytes]]:
    """Cut the input into (kind, 32- or 12-byte record) pieces (see
    :func:`kvmclock.decode.cut_records`)."""
    return cut_records(chunks, kind)[0]


def cmd_decode(args: argparse.Namespace) -> int:
    json_to = "-" if args.json is True else args.json
    if json_to is not None:
        _check_output_path(json_to, "--json")
    if args.input == ["-"]:
        raw = sys.stdin.buffer.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("decode: stdin is not text (give hex digits or trace lines)") \
                from None
        if "\0" in text:
            raise UsageError("decode: stdin is binary (NUL bytes); give hex digits")
    else:
        text = " ".join(args.input)
    if not text.strip():
        raise UsageError("decode: empty input: give hex bytes, '-' for stdin, or trace lines")
    # parse_hex, cut_records and decode_trace_lines reject input that is not records
    # (UsageError); every record they accept is shown, invalid fields flagged
    assumption = None
    if "kvm_pvclock_update" in text:
        records = decode_trace_lines(text, args.tsc)
        if not records:
            raise UsageError(no_trace_line_message())
        source = "trace"
    else:
        pieces, assumption = cut_records(parse_hex(text), args.type)
        records = decode_records(pieces, args.tsc)
        source = "hex"
    doc = decode_document(records, source, args.type, assumption)
    strict = bool(getattr(args, "strict", False))
    if json_to != "-":
        print(format_decoded(doc, strict=strict))
    if json_to is not None:
        _dump_json(doc, json_to)
    if doc["invalid_fields"] and strict:
        n = doc["invalid_fields"]
        print(f"kvmclock decode: {n} invalid field{'s' if n != 1 else ''} (--strict: exit "
              "status 1)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock decode``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "decode", help="decode pvclock (32-byte) and wall clock (12-byte) records",
        description="Decode pvclock_vcpu_time_info (32 bytes) and pvclock_wall_clock "
        "(12 bytes) records from hex (bytes in memory order; spaces, commas, newlines and 0x "
        "allowed; one record per line or several concatenated) or from kvm_pvclock_update "
        "trace lines. '-' reads stdin. Every field is shown; a field KVM would never write "
        "(a tsc_shift that is not an integer from -63 to 63, a wall clock nsec of "
        "one second or more) is flagged; the exit status is 0, or 1 with --strict.\n"
        "kvm_pvclock_update lines have no padding fields: pad0 and pad show 'not in the "
        "trace'.",
        epilog="examples:\n"
        "  kvmclock decode 02000000 00000000 0a2f1e4e1c000000 00ca9a3b00000000 "
        "3d0ad7a3 ff 01 0000\n"
        "  grep kvm_pvclock_update trace.txt | kvmclock decode - --json\n"
        "trace line form (the only TP_printk of kvm_pvclock_update):\n"
        "  vcpu_id 0, pvclock { version 2, tsc_timestamp 0x1c4e1e2f0a, system_time "
        "0x3b9aca00, tsc_to_system_mul 0xa3d70a3d, tsc_shift -1, flags 0x1 }\n"
        "exit status: 0 (also with invalid fields), 1 with --strict and an invalid field, "
        "2 bad input.\n"
        "a length that fits both kinds (a multiple of 96 bytes) is read as pvclock records; "
        "--type wallclock reads it as wall clocks.",
        formatter_class=fmt,
    )
    s.add_argument("input", nargs="+", metavar="HEX|-")
    s.add_argument("--type", choices=["auto", "pvclock", "wallclock"], default="auto",
                   help="record type (auto: by length; a multiple of 96 bytes fits both and "
                   "is read as pvclock)")
    s.add_argument("--tsc", type=_int_arg("--tsc", 0, 2**64 - 1), metavar="TSC",
                   help="also compute kvmclock at this TSC value (cycles)")
    s.add_argument("--strict", action="store_true",
                   help="exit 1 when a field is invalid (the records are still printed)")
    add_json_option(s, "the decoded records (schema kvmclock.decode, docs/commands/decode.md)")
    s.set_defaults(func=cmd_decode)

"""The ``kvmclock`` command (also ``python -m kvmclock``).

Commands: simulate, profiles, drift, scenarios, scale, decode, trace, host, verify. Exit codes
(one line on stderr for every failure, never a traceback unless ``--debug``):

* 0 success. A livelock the model detects (scenario ``patch09-hang``) is a result: the run
  stops there, reports it (``livelock`` in the JSON, a LIVELOCK key moment) and exits 0.
* 1 ``verify`` found a relation that did not hold (no other command exits 1).
* 2 bad arguments or bad input (a file, stdin, an output path), detected before any work
  starts: every command validates its arguments and inputs first and raises
  :class:`kvmclock.errors.UsageError`. The only late exit 2 is an output file that fails to
  be written at the end (disk full, a path removed meanwhile). ``--plot`` without matplotlib
  is an exit 2 too, checked before simulating.
* 3 a real resource (/dev/kvm, the pvclock page, tracefs) is missing
  (:class:`kvmclock.errors.RealResourceUnavailable`).
* 70 (``EX_SOFTWARE`` of sysexits.h) an internal error: any other exception is a bug in
  kvmclock; the line says so and asks for a report with the command line and the ``--debug``
  output (``--debug``, before or after the command, prints the traceback).
* 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any, NoReturn, TextIO

from kvmclock.errors import UsageError as UsageError  # re-exported: kvmclock.cli.UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE: internal software error
EXIT_INTERRUPTED = 130

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised, printed by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kvmclock")
    except Exception:  # not installed as a distribution (source tree on sys.path)
        return "unknown"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _dump_json(doc: Any, path: str) -> None:
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        _write_file(path, text)


def _write_file(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _check_output_path(path: str, option: str) -> None:
    """Before any work: ``path`` (an ``--option`` value) can be created or overwritten, so a
    typo does not cost a whole simulation. Checks without creating anything: not a directory,
    its directory exists, and both are writable (root passes the permission checks)."""
    if path == "-":
        return
    parent = os.path.dirname(os.path.abspath(path))

    def refuse(reason: str) -> NoReturn:
        raise UsageError(f"cannot write {path} ({option}): {reason}")

    if os.path.isdir(path):
        refuse("Is a directory")
    if not os.path.exists(parent):
        refuse("No such file or directory")
    if not os.path.isdir(parent):
        refuse("Not a directory")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        refuse("Permission denied")
    if not os.path.exists(path) and not os.access(parent, os.W_OK | os.X_OK):
        refuse("Permission denied")


def _check_plot_available() -> None:
    """``--plot`` needs the optional extra ``plot`` (matplotlib): checked before simulating."""
    from kvmclock.render.plot import MISSING_MATPLOTLIB

    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise UsageError(MISSING_MATPLOTLIB) from None


def _read_input(source: str, what: str) -> bytes:
    """Bytes of FILE, or of stdin for ``-``."""
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {source}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _spinner(label: str, stream: TextIO, delay_s: float = 1.0) -> Iterator[None]:
    """A one-line progress indicator on ``stream`` for work lasting more than ``delay_s``,
    only when ``stream`` is a terminal; the line is erased at the end."""
    if not stream.isatty():
        yield
        return
    done = threading.Event()
    start = time.monotonic()
    shown = [False]

    def spin() -> None:
        frames = "|/-\\"
        i = 0
        if done.wait(delay_s):
            return
        while not done.is_set():
            stream.write(f"\r{frames[i % 4]} {label} ... {time.monotonic() - start:5.1f} s")
            stream.flush()
            shown[0] = True
            i += 1
            done.wait(0.1)

    th = threading.Thread(target=spin, daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join()
        if shown[0]:
            stream.write("\r\033[K")
            stream.flush()


def _int_arg(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def conv(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be in {lo}..{hi}, got {v}")
        return v

    return conv


def _duration_arg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"duration must be seconds, got {text!r}") from None
    if not 0 < v <= 86400:
        raise argparse.ArgumentTypeError(f"duration must be in (0, 86400] seconds, got {text}")
    return v


# --------------------------------------------------------------------------------------------
# simulate / scenarios
# --------------------------------------------------------------------------------------------


def _scenarios() -> dict[str, Any]:
    from kvmclock import sim

    return dict(sim.SCENARIOS)


def _scenario_file(command: str, name: str) -> Any:
    """``--scenario``: a built-in scenario's name or the path of a scenario file (.toml).
    UsageError (one line) for an unknown name or a bad file."""
    from kvmclock.errors import ScenarioFileError
    from kvmclock.scenario import load

    scenarios = _scenarios()
    if name in scenarios:
        return scenarios[name].file
    if name.endswith(".toml") or os.sep in name or os.path.isfile(name):
        try:
            return load(name)
        except ScenarioFileError as exc:
            raise UsageError(f"{command}: {exc}") from None
    raise UsageError(
        f"{command}: unknown scenario {name!r}; choose one of: "
        + ", ".join(sorted(scenarios))
        + " (or give the path of a .toml scenario file)"
    )


def _scenario_params(scn: Any) -> set[str]:
    params = getattr(scn, "params", None) or {}
    return set(params)


# The names a scenario may use for the --duration and --vcpus parameters (first match wins).
_DURATION_KEYS = ("duration_s", "duration")
_DURATION_NS_KEYS = ("duration_ns",)
_VCPU_KEYS = ("vcpus", "l1_vcpus", "n_vcpus", "nr_vcpus")


def _scenario_kwargs(name: str, scn: Any, args: argparse.Namespace) -> dict[str, Any]:
    accepted = _scenario_params(scn)
    kwargs: dict[str, Any] = {}
    if args.duration is not None:
        key = next((k for k in _DURATION_KEYS if k in accepted), None)
        if key is not None:
            # whole seconds as an int (the run's "params" keeps ints as they are)
            d = args.duration
            kwargs[key] = int(d) if float(d).is_integer() else d
        else:
            key = next((k for k in _DURATION_NS_KEYS if k in accepted), None)
            if key is None:
                raise UsageError(
                    f"simulate: scenario {name!r} does not take --duration "
                    f"(its parameters: {', '.join(sorted(accepted)) or 'none'})"
                )
            kwargs[key] = round(args.duration * 1e9)
    if args.vcpus is not None:
        key = next((k for k in _VCPU_KEYS if k in accepted), None)
        if key is None:
            raise UsageError(
                f"simulate: scenario {name!r} does not take --vcpus "
                f"(its parameters: {', '.join(sorted(accepted)) or 'none'})"
            )
        kwargs[key] = args.vcpus
    for item in args.param or []:
        k, sep, v = item.partition("=")
        k = k.strip()
        if not sep or not k:
            raise UsageError(f"simulate: --param wants KEY=VALUE, got {item!r}")
        if k not in accepted:
            raise UsageError(
                f"simulate: scenario {name!r} has no parameter {k!r} "
                f"(its parameters: {', '.join(sorted(accepted)) or 'none'})"
            )
        kwargs[k] = _param_value(v.strip())
    return kwargs


def _param_value(text: str) -> int | float | bool | str | None:
    """``--param`` values: int (also 0x), float, true/false, none, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _profile_paths(path: str, profiles: Sequence[Any]) -> list[str]:
    """One output file per profile: ``out.txt`` -> ``out-gtod.txt``, ``out-series.txt``
    (the base profile's name: switches flipped with --set apply to every profile)."""
    if len(profiles) == 1:
        return [path]
    root, ext = os.path.splitext(path)
    names = [str(getattr(p, "name", p)).split("[", 1)[0] for p in profiles]
    return [f"{root}-{n}{ext}" for n in names]


DEFAULT_PROFILES = "gtod,series,upstream"


def _profiles_arg(
    args: argparse.Namespace, command: str, default: str = DEFAULT_PROFILES
) -> list[Any]:
    """``--profile NAME[,NAME...]`` (``default`` when not given) with every ``--set
    SWITCH=VALUE`` applied: a list of :class:`kvmclock.profiles.Profile`. UsageError names
    the unknown profile, switch or value and lists the valid ones."""
    from kvmclock.profiles import PROFILES, parse_assignments, resolve_profile

    given = args.profile if args.profile is not None else default
    names = [n.strip() for n in str(given).split(",")]
    if any(not n for n in names):
        raise UsageError(f"{command}: --profile {given!r}: empty name; give "
                         f"NAME[,NAME...] from {', '.join(PROFILES)}")
    if len(set(names)) != len(names):
        raise UsageError(f"{command}: --profile {given!r} names a profile twice")
    try:
        changes = parse_assignments(args.set or [])
        return [resolve_profile(n, **changes) for n in names]
    except ValueError as exc:
        raise UsageError(f"{command}: {exc}") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    from kvmclock import sim
    from kvmclock.errors import ScenarioError
    from kvmclock.sim.scenarios import _validate as validate_scenario

    # everything that can be wrong with the arguments is checked here, before simulating
    sf = _scenario_file("simulate", args.scenario)
    name = sf.name
    kwargs = _scenario_kwargs(name, sf, args)
    run_spec = sf.model.run
    file_profiles = (
        run_spec.profiles if isinstance(run_spec.profiles, str) else ",".join(run_spec.profiles)
    )
    profiles = _profiles_arg(args, "simulate", default=file_profiles)
    if args.seed is None:
        args.seed = run_spec.seed
    for profile in profiles:
        try:
            # the scenario's own parameter check, the one run_scenario makes first
            validate_scenario(sf, profile, args.seed, kwargs)
        except ScenarioError as exc:
            raise UsageError(f"simulate: {exc}") from exc
    want_trace = bool(args.trace or args.perfetto)
    if args.json == "-" and args.trace == "-":
        raise UsageError("simulate: --json - and --trace - cannot both write to stdout")
    if args.trace == "-" and len(profiles) > 1:
        raise UsageError("simulate: --trace - needs a single --profile (e.g. --profile upstream)")
    if args.json:
        _check_output_path(args.json, "--json")
    if args.trace:
        for path in _profile_paths(args.trace, profiles):
            _check_output_path(path, "--trace")
    if args.perfetto:
        _check_output_path(args.perfetto, "--perfetto")
    if args.plot:
        _check_output_path(args.plot, "--plot")
        _check_plot_available()

    runs: list[dict[str, Any]] = []
    walls: list[float] = []
    for profile in profiles:
        with _spinner(f"simulating {name} ({profile.name})", sys.stderr):
            t0 = time.perf_counter()
            run = sim.run_scenario(sf, profile, seed=args.seed, trace=want_trace, **kwargs)
            walls.append(time.perf_counter() - t0)
        runs.append(run)

    if args.trace:
        from kvmclock.render.ftrace import trace_text

        if args.trace == "-":
            sys.stdout.write(trace_text(runs[0], name, args.seed))
        else:
            for path, run in zip(_profile_paths(args.trace, profiles), runs, strict=True):
                _write_file(path, trace_text(run, name, args.seed))
                print(f"wrote {path} ({len(run.get('trace') or [])} trace lines)",
                      file=sys.stderr)
    if args.perfetto:
        from kvmclock.render.perfetto import perfetto_trace

        doc = perfetto_trace(runs)
        _write_file(args.perfetto, json.dumps(doc) + "\n")
        print(f"wrote {args.perfetto} ({len(doc['traceEvents'])} trace events; open it in "
              "ui.perfetto.dev)", file=sys.stderr)
    if args.plot:
        from kvmclock.render.plot import write_plot

        try:
            write_plot(runs, args.plot, title=f"kvmclock simulate {name} seed {args.seed}")
        except OSError as exc:
            raise UsageError(f"cannot write {args.plot}: {exc.strerror or exc}") from exc
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        doc = {
            "scenario": name,
            "seed": args.seed,
            "runs": [{k: v for k, v in run.items() if k != "trace"} for run in runs],
        }
        _dump_json(doc, args.json)
    if args.json != "-" and args.trace != "-":
        from kvmclock.render.text import render_simulation

        print(render_simulation(name, sf.description or None, args.seed,
                                runs, walls, moments_limit=args.moments))
    return EXIT_OK


def cmd_scenarios(args: argparse.Namespace) -> int:
    scenarios = _scenarios()
    if args.schema:
        from kvmclock.scenario import schema_text

        sys.stdout.write(schema_text())
        return EXIT_OK
    if args.show is not None:
        if args.show not in scenarios:
            raise UsageError(
                f"scenarios: --show {args.show!r}: no such built-in scenario; choose one of: "
                + ", ".join(scenarios)
            )
        sys.stdout.write(scenarios[args.show].file.text)
        return EXIT_OK
    if args.json:
        doc = [
            {
                "name": name,
                "description": getattr(s, "description", ""),
                "params": {k: v for k, v in dict(getattr(s, "params", {}) or {}).items()},
            }
            for name, s in scenarios.items()
        ]
        print(json.dumps(doc, indent=2, default=repr))
        return EXIT_OK
    width = max((len(n) for n in scenarios), default=0)
    for name, s in scenarios.items():
        print(f"{name:<{width}}  {getattr(s, 'description', '')}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# scale
# --------------------------------------------------------------------------------------------

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


def cmd_drift(args: argparse.Namespace) -> int:
    """``kvmclock drift``: the three clock definitions' rates and the guest clock's step at a
    masterclock update ``--seconds`` after the last one (:mod:`kvmclock.drift`)."""
    from kvmclock import drift
    from kvmclock.profiles import parse_assignments, resolve_profile

    try:
        profile = resolve_profile(str(args.profile).strip(), **parse_assignments(args.set or []))
        d = drift.predict(args.tsc_khz, args.guest_khz, args.vendor, args.seconds, profile)
    except ValueError as exc:  # DriftInputError, or an unknown profile / switch / value
        msg = str(exc)
        for name, option in (("tsc_khz", "--tsc-khz"), ("guest_khz", "--guest-khz"),
                             ("seconds", "--seconds"), ("vendor", "--vendor")):
            msg = re.sub(rf"(?<![\w-]){name}\b", option, msg)
        raise UsageError(f"kvmclock drift: {msg}") from None
    doc = d.to_json()
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    base = ("CLOCK_MONOTONIC_RAW + boot offset" if doc["time_base"] == "raw"
            else "CLOCK_BOOTTIME")
    mode = {"native": "same rate as the host", "scaled": f"scaled, ratio {doc['ratio'] or 0:#x}",
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
        f"  over {doc['seconds']:g} s ({doc['cycles']} host cycles): A +{doc['a_ns']} ns, "
        f"B +{doc['b_ns']} ns, C +{doc['c_ns']} ns",
        f"  jump_ns {jump:+d}: at the masterclock update the guest clock steps {direction} "
        "(from B to A)",
    ]))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------

PVCLOCK_SIZE = 32
WALL_CLOCK_SIZE = 12
_HEX_TOKEN = re.compile(r"(?:0[xX])?([0-9a-fA-F]*)")


def parse_hex(text: str) -> list[bytes]:
    """Hex text to byte strings, one per non-empty line. Spaces, commas, newlines and ``0x``
    prefixes (per token) are allowed. The digits are the bytes in memory order."""
    chunks = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        digits = []
        for tok in re.split(r"[\s,]+", line.strip()):
            if not tok:
                continue
            m = _HEX_TOKEN.fullmatch(tok)
            if m is None:
                raise UsageError(f"decode: line {lineno}: {tok[:40]!r} is not hex")
            digits.append(m.group(1))
        joined = "".join(digits)
        if not joined:
            continue
        if len(joined) % 2:
            raise UsageError(
                f"decode: line {lineno}: odd number of hex digits ({len(joined)}); "
                "every byte needs two digits"
            )
        chunks.append(bytes.fromhex(joined))
    return chunks


def _split_records(chunks: list[bytes], kind: str) -> list[tuple[str, bytes]]:
    """Cut the input into (kind, 32- or 12-byte record) pieces."""
    pieces = _cut_records(chunks, kind)
    for i, (k, raw) in enumerate(pieces):
        if k == "pvclock":
            _check_tsc_shift(int.from_bytes(raw[28:29], "little", signed=True), f"record {i}")
    return pieces


def _cut_records(chunks: list[bytes], kind: str) -> list[tuple[str, bytes]]:
    sizes = {"pvclock": PVCLOCK_SIZE, "wallclock": WALL_CLOCK_SIZE}
    if kind == "auto" and len(chunks) > 1 and all(len(c) in sizes.values() for c in chunks):
        return [("pvclock" if len(c) == PVCLOCK_SIZE else "wallclock", c) for c in chunks]
    data = b"".join(chunks)
    n = len(data)
    if kind == "auto":
        if n % PVCLOCK_SIZE == 0:
            kind = "pvclock"
        elif n % WALL_CLOCK_SIZE == 0:
            kind = "wallclock"
        else:
            raise UsageError(
                f"decode: {n} bytes is not a whole number of pvclock_vcpu_time_info (32 bytes) "
                f"or pvclock_wall_clock (12 bytes) records"
            )
    size = sizes[kind]
    if n % size:
        raise UsageError(f"decode: {n} bytes is not a multiple of {size} ({kind} records)")
    return [(kind, data[i : i + size]) for i in range(0, n, size)]


# pvclock_scale_delta shifts a u64 by tsc_shift: 64 or more either way is undefined in C, and
# the native record refuses it; every other byte pattern of the 32 bytes is a valid record.
TSC_SHIFT_MAX = 63


def _check_tsc_shift(shift: int, where: str) -> None:
    if not -TSC_SHIFT_MAX <= shift <= TSC_SHIFT_MAX:
        raise UsageError(
            f"decode: {where}: tsc_shift {shift} is outside -{TSC_SHIFT_MAX}..{TSC_SHIFT_MAX} "
            "(pvclock_scale_delta would shift a u64 by 64 or more)"
        )


def _pvclock_entry(info: Any, tsc: int | None) -> dict[str, Any]:
    import kvmclock
    from kvmclock.trace import flag_names

    rec: dict[str, Any] = {
        "type": "pvclock",
        "version": int(info.version),
        "tsc_timestamp": int(info.tsc_timestamp),
        "system_time": int(info.system_time),
        "tsc_to_system_mul": int(info.tsc_to_system_mul),
        "tsc_shift": int(info.tsc_shift),
        "flags": int(info.flags),
    }
    rec["flag_names"] = flag_names(rec["flags"])
    rec["version_odd"] = bool(rec["version"] & 1)
    rec["tsc_khz"] = (
        int(kvmclock.pvclock_tsc_khz(tsc_to_system_mul=rec["tsc_to_system_mul"],
                                     tsc_shift=rec["tsc_shift"]))
        if rec["tsc_to_system_mul"]
        else None
    )
    rec["kvmclock_ns_at_tsc_timestamp"] = int(info.read_cycles(rec["tsc_timestamp"]))
    if tsc is not None:
        rec["tsc"] = tsc
        rec["kvmclock_ns_at_tsc"] = int(info.read_cycles(tsc))
    if rec["tsc_khz"] and rec["tsc_khz"] <= U32_MAX:
        # does mul/shift equal what KVM derives from that kHz (kvm_guest_time_update)? (a kHz
        # beyond u32 cannot be KVM's: its TSC frequencies are u32 kHz)
        shift, mult = kvmclock.get_time_scale(scaled_hz=10**9, base_hz=rec["tsc_khz"] * 1000)
        rec["matches_get_time_scale_of_tsc_khz"] = (
            mult == rec["tsc_to_system_mul"] and shift == rec["tsc_shift"]
        )
    return rec


def decode_records(pieces: list[tuple[str, bytes]], tsc: int | None) -> list[dict[str, Any]]:
    """Decode raw records with the native ABI classes (``PvclockVcpuTimeInfo``,
    ``PvclockWallClock``)."""
    import datetime

    import kvmclock

    out: list[dict[str, Any]] = []
    for i, (kind, raw) in enumerate(pieces):
        if kind == "pvclock":
            rec = _pvclock_entry(kvmclock.PvclockVcpuTimeInfo.from_bytes(raw), tsc)
        else:
            wc = kvmclock.PvclockWallClock.from_bytes(raw)
            rec = {
                "type": "wall_clock",
                "version": int(wc.version),
                "sec": int(wc.sec),
                "nsec": int(wc.nsec),
                "version_odd": bool(int(wc.version) & 1),
            }
            try:
                rec["utc"] = datetime.datetime.fromtimestamp(
                    rec["sec"], tz=datetime.timezone.utc
                ).isoformat()
            except (OverflowError, OSError, ValueError):
                rec["utc"] = None
        rec = {"index": i, **rec, "hex": raw.hex()}
        out.append(rec)
    return out


def decode_trace_lines(text: str, tsc: int | None) -> list[dict[str, Any]]:
    """Records from ``kvm_pvclock_update`` lines (other lines are ignored)."""
    import kvmclock
    from kvmclock.trace import parse_text

    out: list[dict[str, Any]] = []
    for rec in parse_text(text).records:
        if rec.event != "kvm_pvclock_update" or rec.data is None:
            continue
        d = rec.data
        _check_tsc_shift(d["tsc_shift"], f"line {rec.line_no}")
        info = kvmclock.PvclockVcpuTimeInfo(
            version=d["version"], tsc_timestamp=d["tsc_timestamp"],
            system_time=d["system_time"], tsc_to_system_mul=d["tsc_to_system_mul"],
            tsc_shift=d["tsc_shift"], flags=d["flags"],
        )
        entry = {"index": len(out), "line": rec.line_no, "vcpu_id": d["vcpu_id"],
                 "timestamp": rec.timestamp, **_pvclock_entry(info, tsc),
                 "hex": info.to_bytes().hex()}
        out.append(entry)
    return out


def format_decoded(records: list[dict[str, Any]]) -> str:
    """Text of decoded records."""
    out = []
    for r in records:
        where = f" (line {r['line']}, vCPU {r['vcpu_id']})" if "line" in r else ""
        if r["type"] == "pvclock":
            khz = "-" if r["tsc_khz"] is None else f"{r['tsc_khz']} kHz"
            odd = " (odd: update in progress)" if r["version_odd"] else ""
            out.append(f"record {r['index']}: pvclock_vcpu_time_info{where}")
            out.append(f"  version           {r['version']}{odd}")
            out.append(f"  tsc_timestamp     {r['tsc_timestamp']} ({r['tsc_timestamp']:#x})")
            out.append(f"  system_time       {r['system_time']} ns "
                       f"({r['system_time'] / 1e9:.9f} s)")
            out.append(f"  tsc_to_system_mul {r['tsc_to_system_mul']:#010x}")
            out.append(f"  tsc_shift         {r['tsc_shift']}")
            out.append(f"  flags             {r['flags']:#x} "
                       f"{'|'.join(r['flag_names']) or '-'}")
            extra = ""
            if "matches_get_time_scale_of_tsc_khz" in r:
                extra = (" (mul/shift = get_time_scale of it)"
                         if r["matches_get_time_scale_of_tsc_khz"]
                         else " (mul/shift differ from get_time_scale of it)")
            out.append(f"  TSC frequency     {khz}{extra}")
            out.append(f"  kvmclock at tsc_timestamp: {r['kvmclock_ns_at_tsc_timestamp']} ns")
            if "kvmclock_ns_at_tsc" in r:
                out.append(f"  kvmclock at TSC {r['tsc']}: {r['kvmclock_ns_at_tsc']} ns")
        else:
            odd = " (odd: update in progress)" if r["version_odd"] else ""
            out.append(f"record {r['index']}: pvclock_wall_clock")
            out.append(f"  version {r['version']}{odd}")
            out.append(f"  sec {r['sec']} nsec {r['nsec']} ({r['utc'] or 'out of range'})")
    return "\n".join(out)


def cmd_decode(args: argparse.Namespace) -> int:
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
    # parse_hex, _split_records and decode_trace_lines reject bad input (UsageError) before
    # any record is built; what they accept decodes
    if "kvm_pvclock_update" in text:
        records = decode_trace_lines(text, args.tsc)
        if not records:
            raise UsageError("decode: no valid kvm_pvclock_update line in the input")
    else:
        records = decode_records(_split_records(parse_hex(text), args.type), args.tsc)
    print(json.dumps({"records": records}, indent=2) if args.json
          else format_decoded(records))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# trace / host / verify
# --------------------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    from kvmclock.errors import TraceParseError
    from kvmclock.trace import format_summary, parse_bytes, summarize

    data = _read_input(args.file, "trace file")
    name = "stdin" if args.file == "-" else args.file
    if not data.strip():
        raise UsageError(f"trace: {name} is empty")
    try:
        result = parse_bytes(data)
    except TraceParseError as exc:
        raise UsageError(f"trace: {name}: {exc}") from exc
    summary = summarize(result, group=args.group,
                        pvclock_trace_version=args.pvclock_trace_version)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return EXIT_OK


def cmd_host(args: argparse.Namespace) -> int:
    from kvmclock.real.host import format_host_report, host_report

    report = host_report()
    print(json.dumps(report, indent=2, default=str) if args.json
          else format_host_report(report))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from kvmclock.real.capture import real_run
    from kvmclock.real.verify import format_verify, verify_run

    profiles = _profiles_arg(args, "verify")
    unknown = [n for n in (args.scenario or []) if n != "clock-relations"]
    if unknown:
        raise UsageError(f"verify: unknown scenario {unknown[0]!r}; choose: clock-relations")
    real, trace_status = real_run(None)  # one real capture, judged under every profile
    results = [verify_run(real, trace_status=trace_status, profile=p) for p in profiles]
    matching = [r["profile"]["name"] for r in results if r.get("ok")]
    if args.json:
        doc: Any = results[0] if len(results) == 1 else {"runs": results, "matching": matching}
        print(json.dumps(doc, indent=2, default=str))
    else:
        print("\n\n".join(
            (f"== profile {r['profile']['name']} (Linux {r['profile']['kernel']})\n"
             if len(results) > 1 else "") + format_verify(r)
            for r in results
        ))
        if len(results) > 1:
            print("\nthis capture matches: " + (", ".join(matching) if matching else
                                                 "none of the profiles"))
    return EXIT_OK if all(r.get("ok") for r in results) else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# parser and main
# --------------------------------------------------------------------------------------------


def _add_profile_args(s: argparse.ArgumentParser, default: str | None = DEFAULT_PROFILES) -> None:
    shown = default if default is not None else "the scenario's run.profiles, for the built-ins " \
        + DEFAULT_PROFILES
    s.add_argument("--profile", default=default, metavar="NAME[,NAME...]",
                   help=f"profiles to run side by side (default {shown}; "
                   "kvmclock profiles lists them)")
    s.add_argument("--set", action="append", metavar="SWITCH=VALUE",
                   help="flip one behaviour switch in every profile run (repeatable; "
                   "kvmclock profiles lists the switches and their values)")


def cmd_profiles(args: argparse.Namespace) -> int:
    from kvmclock.profiles import PROFILES, profiles_json, profiles_table

    if args.name is not None and args.name not in PROFILES:
        raise UsageError(f"profiles: unknown profile {args.name!r}; choose one of: "
                         + ", ".join(PROFILES))
    names = list(PROFILES) if args.name is None else [args.name]
    if args.json:
        _dump_json(profiles_json(names), args.json)
    else:
        print(profiles_table(names))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every command (each ``--help`` ends with an example)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog="kvmclock",
        description="An executable, bit-exact model of the Linux x86 KVM clock.",
        epilog="example:\n  kvmclock simulate        # nested scenario: gtod, series, upstream\n"
        "  kvmclock simulate --json run.json --plot run.png\n"
        "\nexit codes:\n"
        "  0    ok (a livelock the model detects is a result: reported, exit 0)\n"
        "  1    verify: a relation did not hold\n"
        "  2    bad arguments or input (checked before any work starts)\n"
        "  3    a real resource (/dev/kvm, the pvclock page, tracefs) is missing\n"
        "  70   internal error (a bug): please report it with the command line and\n"
        "       the --debug output\n"
        "  130  interrupted",
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"kvmclock {_version()}")
    p.add_argument("--debug", action="store_true",
                   help="on an internal error, print the full traceback")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser(
        "simulate", help="run a scenario under the gtod, series and upstream profiles",
        description="Run a built-in scenario (default: nested) or a scenario file under the "
        "profiles side by side and print, per profile and level, the clocksource, "
        "masterclock, pvclock stable bit, counters, skew and the key moments.",
        epilog="examples:\n  kvmclock simulate\n"
        "  kvmclock simulate --scenario nested --profile series --seed 3 --json -\n"
        "  kvmclock simulate --trace sim.txt --perfetto sim.json --plot sim.png\n"
        "  kvmclock simulate --duration 3 --vcpus 2 --param l2_vcpus=1\n"
        "  kvmclock scenarios --show tsc-sync > my.toml; kvmclock simulate --scenario my.toml\n"
        "with several profiles, --trace PATH writes PATH-gtod, PATH-series, ... files.",
        formatter_class=fmt,
    )
    s.add_argument("--scenario", default="nested", metavar="NAME|PATH.toml",
                   help="a built-in scenario (kvmclock scenarios) or a scenario file "
                   "(docs/scenarios.md)")
    _add_profile_args(s, default=None)
    s.add_argument("--seed", type=_int_arg("seed", 0, 2**63 - 1), default=None,
                   help="seed of the run (default: the file's run.seed, 0 for the built-ins)")
    s.add_argument("--duration", type=_duration_arg, metavar="S",
                   help="simulated seconds (scenarios that take it)")
    s.add_argument("--vcpus", type=_int_arg("vcpus", 1, 1024), metavar="N",
                   help="vCPUs of the first guest (scenarios that take it)")
    s.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="any scenario parameter (kvmclock scenarios --json lists them)")
    s.add_argument("--json", metavar="PATH|-", help="write the runs as JSON ('-' = stdout)")
    s.add_argument("--trace", metavar="PATH|-", help="write ftrace text with a level column")
    s.add_argument("--perfetto", metavar="PATH", help="write Chrome/Perfetto trace-event JSON")
    s.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    s.add_argument("--moments", type=_int_arg("moments", 0, 100000), default=30, metavar="N",
                   help="key moments shown in the timeline (default 30)")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser(
        "profiles", help="the profiles and their behaviour switches",
        description="Every behaviour switch (name, values, the kernel release and commit "
        "that brought the newer behaviour, what it does) and its value in each profile. "
        "simulate and verify take --profile NAME[,NAME...] and --set SWITCH=VALUE.",
        epilog="examples:\n  kvmclock profiles\n  kvmclock profiles upstream --json -\n"
        "  kvmclock simulate --profile upstream --set masterclock_request=on_update",
        formatter_class=fmt,
    )
    s.add_argument("name", nargs="?", help="show only this profile")
    s.add_argument("--json", nargs="?", const="-", metavar="PATH|-",
                   help="write JSON (to stdout without PATH or with '-')")
    s.set_defaults(func=cmd_profiles)

    s = sub.add_parser(
        "scenarios", help="list the built-in scenarios",
        description="List the built-in scenarios, one line each; print one's TOML file (a "
        "starting point for your own: docs/scenarios.md) or the JSON Schema of the format.",
        epilog="examples:\n  kvmclock scenarios\n"
        "  kvmclock scenarios --show tsc-sync > my.toml\n"
        "  kvmclock simulate --scenario my.toml\n"
        "  kvmclock scenarios --schema > scenario.schema.json", formatter_class=fmt,
    )
    g = s.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print JSON")
    g.add_argument("--show", metavar="NAME", help="print the scenario file of built-in NAME")
    g.add_argument("--schema", action="store_true",
                   help="print the JSON Schema of scenario files (for editors)")
    s.set_defaults(func=cmd_scenarios)

    s = sub.add_parser(
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

    s = sub.add_parser(
        "drift", help="drift of the three KVM clock definitions, jump at a re-anchor",
        description="Exact integer prediction of the three KVM clock definitions' rates "
        "(A: host base clock + kvmclock_offset; B: what the guest computes from its record and "
        "TSC; C: KVM_GET_CLOCK's extrapolation from the host TSC), in ppb against true time, "
        "and of jump_ns, the guest clock's step (positive = forward) at a masterclock update "
        "--seconds after the last one.",
        epilog="examples:\n  kvmclock drift --tsc-khz 1995311\n"
        "  kvmclock drift --tsc-khz 2999999 --guest-khz 1499999 --vendor vmx --json\n"
        "  kvmclock drift --tsc-khz 2593992 --seconds 2592000    # 30 days",
        formatter_class=fmt,
    )
    s.add_argument("--tsc-khz", type=_int_arg("--tsc-khz", 1, U32_MAX), required=True,
                   metavar="F", help="host TSC frequency (kHz, as calibrated: tsc_khz)")
    s.add_argument("--guest-khz", type=_int_arg("--guest-khz", 1, U32_MAX), metavar="G",
                   help="guest TSC frequency (KVM_SET_TSC_KHZ, kHz; default the host's)")
    s.add_argument("--vendor", choices=["vmx", "svm", "none"], default="vmx",
                   help="host TSC scaling: vmx (48 fraction bits), svm (32), none (default vmx)")
    s.add_argument("--seconds", default="5", metavar="T",
                   help="seconds since the last masterclock update (default 5)")
    s.add_argument("--profile", default="upstream", metavar="NAME",
                   help="kernel profile (default upstream; kvmclock profiles lists them)")
    s.add_argument("--set", action="append", metavar="SWITCH=VALUE",
                   help="flip one behaviour switch of the profile (repeatable)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_drift)

    s = sub.add_parser(
        "decode", help="decode pvclock (32-byte) and wall clock (12-byte) records",
        description="Decode pvclock_vcpu_time_info (32 bytes) and pvclock_wall_clock "
        "(12 bytes) records from hex (bytes in memory order; spaces, commas, newlines and 0x "
        "allowed; one record per line or several concatenated) or from kvm_pvclock_update "
        "trace lines. '-' reads stdin.",
        epilog="examples:\n"
        "  kvmclock decode 02000000 00000000 0a2f1e4e1c000000 00ca9a3b00000000 "
        "3d0ad7a3 ff 01 0000\n"
        "  grep kvm_pvclock_update trace.txt | kvmclock decode - --json",
        formatter_class=fmt,
    )
    s.add_argument("input", nargs="+", metavar="HEX|-")
    s.add_argument("--type", choices=["auto", "pvclock", "wallclock"], default="auto",
                   help="record type (auto: by length)")
    s.add_argument("--tsc", type=_int_arg("--tsc", 0, 2**64 - 1), metavar="TSC",
                   help="also compute kvmclock at this TSC value")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_decode)

    s = sub.add_parser(
        "trace", help="summarise an ftrace / trace-cmd text capture of KVM clock events",
        description="Parse ftrace (trace, trace_pipe) or trace-cmd report text: masterclock "
        "transitions, TSC generations and offsets, pvclock updates per VM process and vCPU, "
        "anomalies. Unknown and garbled lines are counted and skipped.",
        epilog="examples:\n  kvmclock trace /sys/kernel/tracing/trace\n"
        "  trace-cmd report | kvmclock trace - --json\n"
        "timestamps are seconds, or raw counter values for a counter clock (x86-tsc); "
        "a leading 'L<n> ' column (kvmclock simulate --trace) is the level.",
        formatter_class=fmt,
    )
    s.add_argument("file", metavar="FILE|-")
    s.add_argument("--group", choices=["auto", "pid", "one"], default="auto",
                   help="what one VM process is: auto = tgid column, else level column, else "
                   "pid; pid = each task; one = all events one VM")
    s.add_argument("--pvclock-trace-version", choices=["auto", "odd", "final"], default="auto",
                   help="where the kernel traced kvm_pvclock_update: odd = before the final "
                   "version store (4.13), final = after it (today); auto = odd when every "
                   "traced version is odd")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_trace)

    s = sub.add_parser(
        "host", help="what this computer is and what KVM would do here",
        description="Clocksource, TSC flags and kHz, the KVM guest pvclock page decoded and "
        "checked against get_time_scale, /dev/kvm capabilities.",
        epilog="example:\n  kvmclock host --json", formatter_class=fmt,
    )
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_host)

    s = sub.add_parser(
        "verify", help="model vs the real /dev/kvm on built-in scenarios",
        description="Run a scripted scenario on the real /dev/kvm, replay the same inputs on "
        "the model (profile upstream by default), and report every relation as held, "
        "departed (with the machine evidence that excuses it) or failed. Exit 1 when a "
        "relation failed, 3 when /dev/kvm is missing.",
        epilog="example:\n  kvmclock verify --json", formatter_class=fmt,
    )
    s.add_argument("--scenario", action="append", metavar="NAME",
                   help="run only this scenario (repeatable)")
    _add_profile_args(s, default="upstream")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_verify)
    # --debug after the command too (kvmclock simulate --debug); SUPPRESS keeps a --debug
    # given before the command
    for command_parser in sub.choices.values():
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="on an internal error, print the full traceback")
    return p


_COMMANDS = (
    "simulate", "profiles", "drift", "scenarios", "scale", "decode", "trace", "host", "verify"
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _internal_error(exc: BaseException, debug: bool) -> int:
    """An exception no command expects is a bug: one line (traceback only with --debug)."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"kvmclock: internal error (a bug in kvmclock): {type(exc).__name__}: "
          f"{_one_line(str(exc))[:300]}; please report it with the command line and "
          f"`--debug` output", file=sys.stderr)
    return EXIT_SOFTWARE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (never raises). See the
    module docstring for the exit codes."""
    from kvmclock.errors import RealResourceUnavailable

    prog = "kvmclock"
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # until the arguments are parsed
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        debug = bool(getattr(args, "debug", False))
        if getattr(args, "func", None) is None:
            raise UsageError(
                f"{prog}: a command is required: {', '.join(_COMMANDS)} (see '{prog} --help')"
            )
        return int(args.func(args))
    except UsageError as exc:
        msg = _one_line(str(exc))
        if not msg.startswith(prog):
            cmd = msg.split(":", 1)[0]
            msg = f"{prog} {msg}" if cmd in _COMMANDS else f"{prog}: {msg}"
        print(msg, file=sys.stderr)
        return EXIT_USAGE
    except RealResourceUnavailable as exc:
        print(f"{prog}: real resource unavailable: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): stop quietly
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # a detected livelock never gets here: the simulation reports it as a result
        return _internal_error(exc, debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

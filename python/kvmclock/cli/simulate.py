"""``kvmclock simulate``: run a scenario under profiles side by side."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from kvmclock.cli.common import (
    EXIT_OK,
    _add_profile_args,
    _check_output_path,
    _check_outputs,
    _dump_json,
    _duration_arg,
    _int_arg,
    _param_value,
    _profiles_arg,
    _Progress,
    _refuse_binary_to_terminal,
    _scenarios,
    _write_bytes,
    _write_file,
    add_json_option,
)
from kvmclock.errors import UsageError


def _check_plot_available() -> None:
    """``--plot`` needs the optional extra ``plot`` (matplotlib): checked before simulating."""
    from kvmclock.render.plot import MISSING_MATPLOTLIB

    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise UsageError(MISSING_MATPLOTLIB) from None


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


def _profile_paths(path: str, profiles: Sequence[Any]) -> list[str]:
    """One output file per profile: ``out.txt`` -> ``out-gtod.txt``, ``out-series.txt``
    (the base profile's name: switches flipped with --set apply to every profile)."""
    if len(profiles) == 1:
        return [path]
    root, ext = os.path.splitext(path)
    names = [str(getattr(p, "name", p)).split("[", 1)[0] for p in profiles]
    return [f"{root}-{n}{ext}" for n in names]


def _run_one(
    sf: Any,
    profile: Any,
    seed: int,
    trace: bool,
    events: str | None,
    progress: Any,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """One run, its event log to ``events`` (a path, ``-`` for stdout, None: no log); a
    file that cannot be written is a UsageError naming --events."""
    from kvmclock.sim import run_scenario

    if events is None or events == "-":
        stream = sys.stdout if events == "-" else None
        return run_scenario(sf, profile, seed=seed, trace=trace, events=stream,
                            progress=progress, **kwargs)
    try:
        with open(events, "w", encoding="utf-8") as f:
            return run_scenario(sf, profile, seed=seed, trace=trace, events=f,
                                progress=progress, **kwargs)
    except OSError as exc:
        raise UsageError(f"cannot write {events} (--events): {exc.strerror or exc}") from exc


def cmd_simulate(args: argparse.Namespace) -> int:
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
    # every output option takes '-' for stdout; only one of them may use it
    outputs = [("--json", args.json), ("--trace", args.trace), ("--perfetto", args.perfetto),
               ("--plot", args.plot), ("--events", args.events)]
    _check_outputs("simulate", outputs, paths_checked_by_caller=("--trace", "--events"))
    to_stdout = any(v == "-" for _, v in outputs)
    for option, value in (("--trace", args.trace), ("--events", args.events)):
        if value == "-" and len(profiles) > 1:
            raise UsageError(
                f"simulate: {option} - needs a single --profile (e.g. --profile upstream)")
        if value and value != "-":
            for path in _profile_paths(value, profiles):
                _check_output_path(path, option)
    event_paths = _profile_paths(args.events, profiles) if args.events else []
    if args.plot:
        _refuse_binary_to_terminal("simulate", "--plot", args.plot)
        _check_plot_available()

    runs: list[dict[str, Any]] = []
    walls: list[float] = []
    for i, profile in enumerate(profiles, 1):
        label = f"simulating {name}, profile {profile.name}" + (
            f" ({i}/{len(profiles)})" if len(profiles) > 1 else "")
        with _Progress(sys.stderr, label) as progress:
            t0 = time.perf_counter()
            run = _run_one(sf, profile, args.seed, want_trace,
                           event_paths[i - 1] if event_paths else None,
                           progress.callback, kwargs)
            walls.append(time.perf_counter() - t0)
        runs.append(run)
        if event_paths and event_paths[i - 1] != "-":
            print(f"wrote {event_paths[i - 1]} ({run['event_log']['lines']:,} event lines)",
                  file=sys.stderr)
    if want_trace:
        for run in runs:
            dropped = int(run.get("trace_dropped") or 0)
            if dropped:
                kept = len(run.get("trace") or [])
                print(f"{run['profile']}: the trace keeps the first {kept:,} of "
                      f"{kept + dropped:,} KVM trace records; --events PATH writes every one",
                      file=sys.stderr)

    if args.trace:
        from kvmclock.render.ftrace import trace_text

        if args.trace == "-":
            _write_file("-", trace_text(runs[0], name, args.seed))
        else:
            for path, run in zip(_profile_paths(args.trace, profiles), runs, strict=True):
                _write_file(path, trace_text(run, name, args.seed))
                print(f"wrote {path} ({len(run.get('trace') or [])} trace lines)",
                      file=sys.stderr)
    if args.perfetto:
        from kvmclock.render.perfetto import perfetto_trace

        doc = perfetto_trace(runs)
        _write_file(args.perfetto, json.dumps(doc) + "\n")
        if args.perfetto != "-":
            print(f"wrote {args.perfetto} ({len(doc['traceEvents'])} trace events; open it "
                  "in ui.perfetto.dev)", file=sys.stderr)
    if args.plot:
        from kvmclock.render.plot import write_plot

        title = f"kvmclock simulate {name} seed {args.seed}"
        if args.plot == "-":  # the PNG bytes on stdout
            with tempfile.TemporaryDirectory(prefix="kvmclock-plot-") as tmp:
                png = os.path.join(tmp, "plot.png")
                write_plot(runs, png, title=title)
                with open(png, "rb") as f:
                    _write_bytes("-", f.read())
        else:
            try:
                write_plot(runs, args.plot, title=title)
            except OSError as exc:
                raise UsageError(f"cannot write {args.plot}: {exc.strerror or exc}") from exc
            print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        doc = {
            "schema": "kvmclock.simulate",
            "schema_version": 1,
            "scenario": name,
            "description": sf.description or "",
            "seed": args.seed,
            "runs": [{k: v for k, v in run.items() if k != "trace"} for run in runs],
        }
        _dump_json(doc, args.json)
        if args.json != "-":
            print(f"wrote {args.json}", file=sys.stderr)
    if not to_stdout:  # the text report, unless an output option took stdout
        from kvmclock.render.text import render_simulation

        print(render_simulation(name, sf.description or None, args.seed,
                                runs, walls, moments_limit=args.moments))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock simulate``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "simulate", help="run a scenario under the gtod, series and upstream profiles",
        description="Run a built-in scenario (default: nested) or a scenario file under the "
        "profiles side by side and print, per profile and level, the clocksource, "
        "masterclock, pvclock stable bit, counters, skew and the key moments.",
        epilog="examples:\n  kvmclock simulate\n"
        "  kvmclock simulate --scenario nested --profile series --seed 3 --json -\n"
        "  kvmclock simulate --trace sim.txt --perfetto sim.json --plot sim.png\n"
        "  kvmclock simulate --duration 3 --vcpus 2 --param l2_vcpus=1\n"
        "  kvmclock simulate --duration 86400 --param nohz=true --param sample_ms=60000\n"
        "  kvmclock scenarios --show tsc-sync > my.toml; kvmclock simulate --scenario my.toml\n"
        "with several profiles, --trace PATH and --events PATH write PATH-gtod, PATH-series, "
        "... files.",
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
    add_json_option(s, "the runs")
    s.add_argument("--trace", metavar="PATH|-",
                   help="write ftrace text with a level column (to stdout with '-')")
    s.add_argument("--perfetto", metavar="PATH|-",
                   help="write Chrome/Perfetto trace-event JSON (to stdout with '-')")
    s.add_argument("--events", metavar="PATH|-",
                   help="write every event-log entry (world log and KVM trace records, in "
                   "execution order) as JSON lines while the run goes (to stdout with '-')")
    s.add_argument("--plot", metavar="PATH|-",
                   help="write a PNG (needs matplotlib; to stdout with '-', not a terminal)")
    s.add_argument("--moments", type=_int_arg("moments", 0, 100000), default=30, metavar="N",
                   help="lines of key moments shown in the timeline (default 30); when there "
                   "are more, the most important stay and the rest are counted")
    s.set_defaults(func=cmd_simulate)

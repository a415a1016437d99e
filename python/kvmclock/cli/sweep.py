"""``kvmclock sweep``: run a scenario over a grid of parameters, seeds and profiles (one row per
run, to Parquet, CSV or JSON Lines), or summarise such a table (``--summary PATH``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from kvmclock.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    _check_output_path,
    _check_outputs,
    _dump_json,
    _int_arg,
    _scenarios,
    _TerminalLine,
    add_json_option,
)
from kvmclock.errors import UsageError


class _SweepProgress(_TerminalLine):
    """Counts a sweep's finished runs and, only when ``stream`` (stderr) is a terminal, shows
    ``done/total runs (pct), rate runs/s, ETA`` there, at most every ``every_s`` seconds of
    wall time (``clock``); :meth:`close` erases the line. It is the ``progress(done,
    total)`` callback of :func:`kvmclock.sweep.run` (``total``: the runs to do now, without
    those already in the table)."""

    def __init__(self, stream: TextIO, label: str, *,
                 clock: Callable[[], float] = time.monotonic, every_s: float = 0.25) -> None:
        super().__init__(stream, label, clock=clock, every_s=every_s)
        self.done = 0

    @staticmethod
    def line(label: str, done: int, total: int, elapsed_s: float) -> str:
        """The progress text: ``done`` of ``total`` runs after ``elapsed_s`` seconds."""
        pct = done * 100 // total if total else 100
        text = f"{label}: {done}/{total} runs ({pct}%)"
        if done > 0 and elapsed_s > 0:
            rate = done / elapsed_s
            text += f", {rate:.1f} runs/s, ETA {_fmt_eta((total - done) / rate)}"
        return text

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        if not self.active:
            return
        t = self.clock()
        if self.last is not None and t - self.last < self.every_s and done < total:
            return
        self.last = t
        self.show(self.line(self.label, done, total, t - self.start))


def _fmt_eta(s: float) -> str:
    """Seconds as ``42 s``, ``3 min 05 s`` or ``2 h 07 min``."""
    s = max(0, round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _check_out(path: str) -> None:
    """``--out``: a table format (by extension) that can be written, pyarrow there for
    .parquet; UsageError naming --out."""
    from kvmclock.sweep.store import check_out, check_writable

    if path == "-":
        raise UsageError("sweep: --out -: the table is a file (.parquet, .csv or .jsonl), "
                         "not stdout; --json - prints the summary")
    try:
        check_out(path)
    except UsageError as exc:
        raise UsageError(f"sweep: {exc}") from None
    _check_output_path(path, "--out")
    try:
        check_writable(path)  # the temporary file and the journal next to it
    except UsageError as exc:
        raise UsageError(f"sweep: {exc}") from None


def _check_dask(address: str | None) -> None:
    """``--dask``: Dask distributed installed (the extra kvmclock[dask]) and ``local`` or an
    address."""
    from kvmclock.sweep.execute import DASK_EXTRA

    if address is None:
        return
    try:
        importlib.import_module("distributed")
    except ImportError:
        raise UsageError(f"sweep: --dask {address}: Dask distributed is not installed; pip "
                         f"install '{DASK_EXTRA}' (or ./scripts/setup.sh --extras dask)") from None
    if address != "local" and ":" not in address:
        raise UsageError(f"sweep: --dask {address!r}: give 'local' (a LocalCluster on this "
                         "machine) or a scheduler address such as tcp://10.0.0.5:8786")


def _scenario_arg(name: str) -> Any:
    """The scenario: a built-in's name or a scenario file's path (UsageError otherwise)."""
    from kvmclock.cli.simulate import _scenario_file

    return _scenario_file("sweep", name)


def _plan_args(args: argparse.Namespace, sf: Any) -> dict[str, Any]:
    """``grid`` and ``ranges`` (the --grid and --range texts, typed by
    :func:`kvmclock.sweep.expand` as the scenario declares each parameter), ``seeds`` and
    ``profiles`` of the sweep: from the command line; without --grid/--range, from the
    scenario file's ``[sweep]`` section (its grid, seeds and profiles; --seeds and --profile
    still win); UsageError naming the option."""
    from kvmclock.scenario.loader import sweep_values
    from kvmclock.sweep.plan import _grid_texts, parse_range

    swept: set[str] = set()
    for option, items, parse in (("--grid", args.grid, _grid_texts),
                                 ("--range", args.range, parse_range)):
        for item in items or []:
            try:
                key, _ = parse(item)
            except ValueError as exc:
                raise UsageError(f"sweep: {option} {item!r}: {exc}") from None
            if key in swept:
                raise UsageError(f"sweep: {option} {item!r}: parameter {key!r} is already "
                                 "swept by an earlier --grid or --range; give it once")
            swept.add(key)
    grid: Any = list(args.grid or [])
    ranges: Any = list(args.range or [])
    spec = sf.model.sweep
    seeds = args.seeds
    profiles = args.profile
    if spec is not None and not swept:
        # no --grid/--range: the file's [sweep] section (checked when the file was loaded),
        # --seeds and --profile still win over its seeds and profiles
        grid, ranges = sweep_values(sf), None
        if seeds is None:
            seeds = spec.seeds
        if profiles is None and spec.profiles is not None:
            profiles = spec.profiles if isinstance(spec.profiles, str) else ",".join(
                spec.profiles)
    return {"grid": grid, "ranges": ranges, "seeds": 1 if seeds is None else seeds,
            "profiles": _profile_names(profiles)}


def _profile_names(given: str | None) -> list[str] | None:
    from kvmclock.profiles import PROFILES

    if given is None:
        return None
    names = [n.strip() for n in given.split(",")]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise UsageError(f"sweep: --profile {given!r}: give NAME[,NAME...] (each once) from "
                         f"{', '.join(PROFILES)}")
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise UsageError(f"sweep: --profile {unknown[0]!r} unknown; choose from "
                         f"{', '.join(PROFILES)}")
    return names


def sweep_json(summary: dict[str, Any], *, scenario: str | None, out: str,
               planned: int | None, ran: int | None, resumed: int | None) -> dict[str, Any]:
    """The document of ``kvmclock sweep --json`` (schema ``kvmclock.sweep`` version 1,
    python/kvmclock/schemas/sweep.schema.json): what ran (``scenario``, ``out``, the counts
    ``planned``, ``ran`` and ``resumed``: null for ``--summary``) and the table's
    ``summary`` (:func:`kvmclock.sweep.summary`)."""
    return {
        "schema": "kvmclock.sweep",
        "schema_version": 1,
        "scenario": scenario,
        "out": out,
        "planned": planned,
        "ran": ran,
        "resumed": resumed,
        "summary": summary,
    }


def _cmd_summary(args: argparse.Namespace) -> int:
    from kvmclock.sweep import format_summary, summary

    path = args.summary
    if os.path.isdir(path):
        raise UsageError(f"sweep: --summary {path!r}: is a directory; give a table written "
                         "by kvmclock sweep --out")
    if not os.path.isfile(path):
        raise UsageError(f"sweep: --summary {path!r}: no such file (a table written by "
                         "kvmclock sweep --out)")
    if os.path.getsize(path) == 0:
        raise UsageError(f"sweep: --summary {path!r}: the file is empty: not a table written "
                         "by kvmclock sweep --out")
    _check_out_read(path)
    _check_outputs("sweep", [("--json", args.json)])
    from kvmclock.sweep.store import read_rows

    try:
        rows = read_rows(path)
    except (ValueError, OSError) as exc:
        raise UsageError(f"sweep: --summary {path!r}: {exc}") from None
    bad = next((i for i, r in enumerate(rows)
                if not r.get("run_id") or r.get("status") not in ("ok", "error")), None)
    if bad is not None:
        raise UsageError(f"sweep: --summary {path!r}: row {bad + 1} has no run_id or status "
                         "ok/error: not a table written by kvmclock sweep --out")
    s = summary(rows)
    if args.json:
        _dump_json(sweep_json(s, scenario=None, out=path, planned=None, ran=None,
                              resumed=None), args.json)
    if args.json != "-":
        print(format_summary(s))
    return EXIT_OK


def _check_out_read(path: str) -> None:
    from kvmclock.sweep.store import FORMATS, require_pyarrow

    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UsageError(f"sweep: --summary {path!r}: not a sweep table; give a file ending "
                         f"in {', '.join(FORMATS)}")
    if ext == ".parquet":
        try:
            require_pyarrow(f"--summary {path}")
        except UsageError as exc:
            raise UsageError(f"sweep: {exc}") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    """``kvmclock sweep``: every error line it gives starts ``kvmclock sweep:``."""
    try:
        return _cmd_sweep(args)
    except UsageError as exc:
        if str(exc).startswith(("sweep:", "kvmclock")):
            raise
        raise UsageError(f"sweep: {exc}") from None


def _runs(n: int, what: str = "run") -> str:
    """``1 run``, ``2 runs``."""
    return f"1 {what}" if n == 1 else f"{n} {what}s"


class _Dropped:
    """While a sweep runs: counts the rows of --out not in this sweep (the
    :class:`~kvmclock.sweep.api.DroppedRowsWarning` of :func:`kvmclock.sweep.run`) instead of
    printing the warning; other warnings go to the usual handler."""

    def __init__(self) -> None:
        import warnings

        self.count = 0
        self._ctx = warnings.catch_warnings()

    def __enter__(self) -> _Dropped:
        import warnings

        from kvmclock.sweep.api import DroppedRowsWarning

        self._ctx.__enter__()
        warnings.simplefilter("always", DroppedRowsWarning)
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], *rest: Any,
                 **kw: Any) -> None:
            if isinstance(message, DroppedRowsWarning):
                self.count += message.count
            else:
                shown(message, category, *rest, **kw)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(None, None, None)


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.summary is not None:
        given = [o for o, v in (("SCENARIO", args.scenario), ("--grid", args.grid),
                                ("--range", args.range), ("--seeds", args.seeds),
                                ("--profile", args.profile), ("--out", args.out),
                                ("--workers", args.workers), ("--dask", args.dask))
                 if v is not None]
        if given:
            raise UsageError(f"sweep: --summary reads a table; {given[0]} is for running a "
                             "sweep (kvmclock sweep SCENARIO --out PATH ...)")
        return _cmd_summary(args)
    from kvmclock import sweep
    from kvmclock.sweep.api import SweepInterrupted

    if args.scenario is None:
        raise UsageError("sweep: give a SCENARIO (a built-in name or a .toml file) and --out "
                         "PATH, or --summary PATH")
    if args.out is None:
        raise UsageError("sweep: --out PATH is required: the table (.parquet, .csv or .jsonl)")
    # everything that can be wrong is checked here, before the first run
    sf = _scenario_arg(args.scenario)
    scenario = args.scenario if args.scenario not in _scenarios() else sf.name
    _check_out(args.out)
    _check_outputs("sweep", [("--json", args.json)])
    _check_dask(args.dask)
    if args.workers is not None and args.dask not in (None, "local"):
        raise UsageError("sweep: --workers sets the local pool or the --dask local cluster; "
                         f"the scheduler at {args.dask} has its own workers")
    plan = _plan_args(args, sf)
    try:
        points = sweep.expand(scenario, plan["grid"], plan["ranges"], plan["seeds"],
                              plan["profiles"])
    except ValueError as exc:
        raise UsageError(f"sweep: {exc}") from None
    progress = _SweepProgress(sys.stderr, f"sweep {sf.name}")
    t0 = time.monotonic()
    dropped = _Dropped().__enter__()  # left in the finally below
    try:
        sweep.run(scenario, grid=plan["grid"], ranges=plan["ranges"], seeds=plan["seeds"],
                  profiles=plan["profiles"],
                  out=args.out, workers=args.workers, dask=args.dask, progress=progress,
                  table=False)
    except SweepInterrupted as exc:
        progress.close()
        # the counts of the table written (exc.rows = ran + before + lost)
        lost = (f", {exc.lost} cut short (run again on resume)" if exc.lost else "")
        print(f"kvmclock sweep: interrupted; wrote {args.out} ({_runs(exc.rows, 'row')}: "
              f"{_runs(exc.ran)} finished now, {exc.before} "
              f"{'was' if exc.before == 1 else 'were'} already there{lost}); the same "
              "command resumes", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:  # the table or its journal could not be written
        progress.close()
        raise UsageError(f"sweep: {exc}") from None
    finally:
        progress.close()
        dropped.__exit__()
    wall = time.monotonic() - t0
    s = sweep.summary(args.out)
    ran = progress.done
    resumed = len(points) - ran
    gone = (f"; {_runs(dropped.count, 'row')} not in this sweep dropped"
            if dropped.count else "")
    print(f"wrote {args.out} ({_runs(len(points))}: {ran} ran in {wall:.1f} s, {resumed} "
          f"{'was' if resumed == 1 else 'were'} already there{gone})", file=sys.stderr)
    if args.json:
        _dump_json(sweep_json(s, scenario=scenario, out=args.out, planned=len(points),
                              ran=ran, resumed=resumed), args.json)
    if args.json != "-":
        print(sweep.format_summary(s))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``kvmclock sweep``: its subparser (options, help texts) under ``subparsers``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser(
        "sweep", help="run a scenario over a grid of parameters, seeds and profiles",
        description="Run a scenario once per point of the cartesian product of --grid and "
        "--range values, seeds and profiles (or its file's [sweep] section), on a local "
        "process pool or a Dask cluster; one row per run (parameters, status, metrics) to "
        "Parquet, CSV or JSON Lines. Re-running the same command skips the runs already in "
        "--out; Ctrl-C leaves the runs done in --out. --summary PATH prints a table's "
        "extremes with the parameters that produced them.",
        epilog="examples:\n"
        "  kvmclock sweep naive-restore --grid gap_ms=990,1000,1010 --seeds 3 --out r.csv\n"
        "  kvmclock sweep restore-shelf --range shelf_s=1:10:1 --out shelf.parquet\n"
        "  kvmclock sweep my.toml --out my.jsonl      # the file's [sweep] section\n"
        "  kvmclock sweep tsc-sync --grid vcpus=2,4,8 --dask local --workers 2 --out t.csv\n"
        "  kvmclock sweep --summary r.csv --json -\n"
        "docs/sweeps.md: run ids, resume, the columns, the Python API, Dask clusters.",
        formatter_class=fmt,
    )
    s.add_argument("scenario", nargs="?", metavar="SCENARIO",
                   help="a built-in scenario (kvmclock scenarios) or a scenario file (.toml)")
    s.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                   help="a parameter and its values (repeatable; typed as the scenario "
                   "declares the parameter: 1.0 is 1 for an int, none is text for a str)")
    s.add_argument("--range", action="append", metavar="KEY=START:STOP:STEP",
                   help="a parameter from START to STOP (included when reached) by STEP, "
                   "exact decimals (repeatable)")
    s.add_argument("--seeds", type=_int_arg("seeds", 1, 1_000_000), metavar="N",
                   help="runs per point, seeds 0..N-1 (default: without --grid/--range the "
                   "file's [sweep] seeds, else 1)")
    s.add_argument("--profile", metavar="NAME[,NAME...]",
                   help="profiles to run each point under (default: without --grid/--range "
                   "the file's [sweep] profiles when it has them, else its run.profiles; the "
                   "[sweep] section is used only without --grid/--range)")
    s.add_argument("--out", metavar="PATH",
                   help="the table: .parquet (needs kvmclock[sweep]), .csv or .jsonl; runs "
                   "already in it are skipped")
    s.add_argument("--workers", type=_int_arg("workers", 1, 4096), metavar="N",
                   help="worker processes (default: the CPU count; with --dask local 2)")
    s.add_argument("--dask", metavar="ADDRESS|local",
                   help="run on Dask: 'local' (a LocalCluster) or a scheduler address "
                   "(tcp://host:8786); needs kvmclock[dask]")
    s.add_argument("--summary", metavar="PATH",
                   help="print the extremes of a sweep table (worst jump, worst skew, ...) "
                   "with the parameters that produced them; runs nothing")
    add_json_option(s, "the summary and the counts")
    s.set_defaults(func=cmd_sweep)

"""Run one kvmclock fuzz target (fuzz/targets.py) for a time budget, reproducibly.

Engines:

* ``atheris`` (coverage-guided libFuzzer over the instrumented ``kvmclock`` Python code; the
  Rust core is not instrumented, only exercised): runs in a child process with a fixed
  ``-seed``, a fresh corpus seeded from the target's seed inputs, ``-max_total_time``; the
  parent reads libFuzzer's final stats.
* ``hypothesis`` (no atheris needed): the target's structured strategy, database-less, with a
  fixed sequence of seeds (``--seed``, ``--seed + 1``, ...) of 200 examples each until the
  budget is spent; the examples are a pure function of the seed and the number of chunks run.
* ``auto``: atheris when importable, else hypothesis.

Prints one summary line and exits 0 when no crash was found, 1 otherwise::

    fuzz trace engine=atheris seed=1 seconds=600.0 examples=1234567 rate=2057/s crashes=0

Usage: ``.venv/bin/python fuzz/run.py TARGET [--seconds S] [--engine auto|atheris|hypothesis]
[--seed N] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGET_NAMES = ("trace", "decode", "records")
CHUNK = 200
#: Seconds one input may take (libFuzzer's ``-timeout`` for atheris; a SIGALRM per example
#: under hypothesis): a slower input is reported as a crash, never a hang of the run.
EXAMPLE_TIMEOUT_S = 20


class ExampleTimeout(Exception):
    """One fuzz input ran longer than :data:`EXAMPLE_TIMEOUT_S` (a hang is a crash)."""


@contextlib.contextmanager
def example_deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`ExampleTimeout` in the body after ``seconds`` (SIGALRM; main thread
    only, elsewhere the body runs unbounded); an outer ITIMER_REAL bound is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(_sig: int, _frame: Any) -> None:
        raise ExampleTimeout(f"one input ran longer than {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, expired)
    outer, _interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer > 0:  # an outer bound (a test's): re-armed with what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - t0), 1e-3))


def summary_line(target: str, engine: str, seed: int, seconds: float, examples: int,
                 crashes: int) -> str:
    """The one line fuzz.sh and the smoke test read."""
    rate = examples / seconds if seconds > 0 else 0.0
    return (f"fuzz {target} engine={engine} seed={seed} seconds={seconds:.1f} "
            f"examples={examples} rate={rate:.0f}/s crashes={crashes}")


# ------------------------------------------------------------------------------------ atheris


def atheris_child(target: str, seconds: float, seed: int, workdir: Path, tolerate: bool) -> None:
    """Inside the child: instrument kvmclock, seed the corpus, hand over to libFuzzer."""
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    # not the "RegEx" hook: its pattern proxy breaks Pattern.match(s, pos) (json uses it)
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["kvmclock", "targets"]):
        import targets
    targets.tolerate_known = tolerate
    t = targets.TARGETS[target]
    corpus = workdir / "corpus"
    seeds = workdir / "seeds"
    artifacts = workdir / "artifacts"
    for d in (corpus, seeds, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(t.seeds()):
        (seeds / f"seed-{i:03d}").write_bytes(s)
    check = t.check

    def one_input(data: bytes) -> None:
        known = len(targets.known_hits)
        check(data)
        if len(targets.known_hits) != known:  # libFuzzer exits without atexit handlers
            print(f"known bugs hit (tolerated): {sorted(targets.known_hits)}", file=sys.stderr,
                  flush=True)

    argv = [
        sys.argv[0],
        f"-seed={seed}",
        f"-max_total_time={max(1, round(seconds))}",
        f"-max_len={t.max_len}",
        f"-timeout={EXAMPLE_TIMEOUT_S}",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
        str(seeds),
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def run_atheris(target: str, seconds: float, seed: int, workdir: Path | None,
                tolerate: bool = False) -> int:
    """Parent side: run the child, parse libFuzzer's stats, print the summary line."""
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix=f"kvmclock-fuzz-{target}-")
        workdir = Path(own_tmp.name)
    log = workdir / "libfuzzer.log"
    t0 = time.monotonic()
    with open(log, "wb") as f:
        p = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), target, "--child",
             "--seconds", str(seconds), "--seed", str(seed), "--workdir", str(workdir),
             *(["--tolerate-known"] if tolerate else [])],
            stdout=f, stderr=subprocess.STDOUT, check=False,
        )
    elapsed = time.monotonic() - t0
    text = log.read_text(errors="replace")
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", text)
    examples = int(m.group(1)) if m else 0
    crashed = p.returncode != 0 or "Uncaught Python exception" in text or "==ERROR" in text
    if crashed:
        tail = "\n".join(text.splitlines()[-60:])
        print(f"--- {target}: libFuzzer exit {p.returncode}; log tail ({log}):\n{tail}",
              file=sys.stderr)
        for a in sorted((workdir / "artifacts").glob("*")):
            print(f"--- artifact {a}: {a.read_bytes()[:200]!r}", file=sys.stderr)
    known = re.findall(r"known bugs hit \(tolerated\): (.*)", text)
    if known:
        print(f"--- {target}: known bugs hit (tolerated): {known[-1]}", file=sys.stderr)
    print(summary_line(target, "atheris", seed, elapsed, examples, int(crashed)), flush=True)
    if own_tmp is not None and not crashed:
        own_tmp.cleanup()
    return 1 if crashed else 0


# ------------------------------------------------------------------------------------ hypothesis


def strategy(target: str) -> Any:
    """Structured inputs per target: seed inputs spliced with random text, raw bytes."""
    import targets
    from hypothesis import strategies as st

    seeds = targets.TARGETS[target].seeds()
    raw = st.binary(max_size=targets.TARGETS[target].max_len // 4)
    if target == "records":
        base = st.sampled_from(seeds)
        return st.one_of(
            st.binary(min_size=32, max_size=32), st.binary(min_size=12, max_size=12),
            st.binary(max_size=64),
            st.tuples(base, st.integers(0, 40), st.binary(max_size=8)).map(
                lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]):]),
        )
    lines: list[str] = []
    for s in seeds:
        lines.extend(s[1:].decode("utf-8", "replace").splitlines() if target == "decode"
                     else s.decode("utf-8", "replace").splitlines())
    lines = sorted(set(lines))
    noise = st.text(alphabet="0123456789abcdefx-.:{}, [](L)\t\r\n\x00\u00ffkvm_", max_size=24)
    mutated = st.tuples(st.sampled_from(lines), st.integers(0, 200), st.integers(0, 20),
                        noise).map(lambda t: t[0][: t[1]] + t[3] + t[0][t[1] + t[2]:])
    line = st.one_of(st.sampled_from(lines), mutated, st.text(max_size=80))
    text = st.lists(line, max_size=12).map(lambda ls: "\n".join(ls))
    if target == "trace":
        return st.one_of(text.map(lambda s: s.encode("utf-8", "surrogatepass")), raw,
                         st.tuples(text, raw).map(lambda t: t[0].encode("utf-8",
                                                                       "surrogatepass") + t[1]))
    mode = st.integers(0, 255).map(lambda b: bytes([b]))
    tsc = st.integers(0, (1 << 64) - 1).map(lambda v: v.to_bytes(8, "little"))
    return st.one_of(
        st.tuples(mode, text).map(lambda t: t[0] + t[1].encode("utf-8", "surrogatepass")),
        st.tuples(mode, tsc, text).map(lambda t: bytes([t[0][0] | 16]) + t[1]
                                       + t[2].encode("utf-8", "surrogatepass")),
        st.tuples(mode, st.binary(max_size=80)).map(
            lambda t: t[0] + " ".join(f"{b:02x}" for b in t[1]).encode()),
        raw,
    )


def run_hypothesis(target: str, seconds: float, seed: int, tolerate: bool = False) -> int:
    """Chunks of CHUNK examples with seeds seed, seed+1, ... until ``seconds`` have passed."""
    import targets
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    targets.tolerate_known = tolerate
    check = targets.TARGETS[target].check
    strat = strategy(target)
    count = [0]
    crashes = 0
    t0 = time.monotonic()
    chunk = 0
    while time.monotonic() - t0 < seconds:

        @settings(database=None, max_examples=CHUNK, deadline=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck), print_blob=True)
        @hseed(seed + chunk)
        @given(strat)
        def one(data: bytes) -> None:
            count[0] += 1
            with example_deadline(EXAMPLE_TIMEOUT_S):
                check(data)

        try:
            one()
        except Exception as exc:  # a crash: report it with hypothesis' falsifying example
            crashes += 1
            print(f"--- {target}: crash in chunk seed {seed + chunk}: {type(exc).__name__}: "
                  f"{exc}", file=sys.stderr)
            break
        chunk += 1
    elapsed = time.monotonic() - t0
    targets.tolerate_known = False
    if targets.known_hits:
        print(f"--- {target}: known bugs hit (tolerated): {targets.known_hits}", file=sys.stderr)
    print(summary_line(target, "hypothesis", seed, elapsed, count[0], crashes), flush=True)
    return 1 if crashes else 0


def main(argv: list[str] | None = None) -> int:
    """Command line of fuzz/run.py."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=TARGET_NAMES)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, help="atheris corpus/artifacts/log (default: tmp)")
    ap.add_argument("--tolerate-known", action="store_true",
                    help="count the KNOWN_BUGS of fuzz/targets.py instead of stopping on them")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.seconds <= 0:
        ap.error("--seconds must be > 0")
    if a.child:
        assert a.workdir is not None
        atheris_child(a.target, a.seconds, a.seed, a.workdir, a.tolerate_known)
        return 0
    engine = a.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") is not None else "hypothesis"
    if engine == "atheris":
        if a.workdir is not None:
            a.workdir.mkdir(parents=True, exist_ok=True)
        return run_atheris(a.target, a.seconds, a.seed, a.workdir, a.tolerate_known)
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="hyp-"))
    return run_hypothesis(a.target, a.seconds, a.seed, a.tolerate_known)


if __name__ == "__main__":
    raise SystemExit(main())

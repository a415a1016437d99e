"""The key-moment timeline of ``kvmclock simulate``: when it must cut, the anomalies and
lifecycle actions stay and start-up lines go first; moments that differ only in numbers are
one line; a timeline entry's own moment comes before the moments its kernel calls gave; the
watchdog's verdict is one complete line; a restore names the VM it destroyed.  Hand-built
runs and real runs, expected values computed from the run data here."""

from __future__ import annotations

import re
from typing import Any

import pytest
from kvmclock.render.text import cause_first, moment_ranks, moment_text, moments_timeline

S = 10**9
MS = 10**6


def _run(moments: list[tuple[int, int, str]], profile: str = "upstream") -> dict[str, Any]:
    ms = [{"t_ns": t, "level": lvl, "text": text} for t, lvl, text in moments]
    return {"profile": profile, "levels": [], "samples": [], "moments": ms}


def _texts(lines: list[str]) -> list[str]:
    """The moment text of each timeline line (after ``<time> s  <who> L<n>  ``)."""
    return [re.split(r" L\d+  ", ln, maxsplit=1)[1] for ln in lines if " L" in ln[:40]]


def _startup(n_vms: int) -> list[tuple[int, int, str]]:
    out = [(0, 0, "L0: clocksource: Switched to clocksource tsc")]
    for i in range(n_vms):
        t = (i + 1) * MS
        out += [(t, 0, f"vm{i}: masterclock off"), (t, 0, f"vm{i}: VM created"),
                (t, 0, f"vm{i}: new TSC generation 1 (vcpu 0)"), (t, 0, f"vm{i}: masterclock on"),
                (t, 0, f"VM vm{i}: pvclock stable bit set"),
                (t, 1, f"vm{i}: clocksource: Switched to clocksource kvm-clock")]
    return out


# ------------------------------------------------------------------------------ hand-built
def test_ranks_follow_the_brief_order() -> None:
    ms = [{"t_ns": t, "level": lvl, "text": x} for t, lvl, x in [
        *_startup(1),
        (S, 1, "VM vm0: paused (qemu)"),
        (2 * S, 0, "vm0: masterclock off"),
        (3 * S, 1, "vCPU 1: TSC write 300 ms ahead"),
        (4 * S, 0, "L0: tsc: Marking TSC unstable due to clocksource watchdog"),
        (4 * S, 0, "L0: clocksource: Switched to clocksource hpet"),
        (5 * S, 0, "LIVELOCK in update_masterclock after 9 spins; simulation stopped"),
    ]]
    # start-up: the boot clocksource choices, the first creation and its VM's moments then
    assert moment_ranks(ms) == [5] * 7 + [3, 2, 4, 1, 1, 0]


def test_a_cut_keeps_the_important_moments_in_time_order() -> None:
    late = [(10 * S, 1, "VM vm0: paused (qemu)"),
            (11 * S, 0, "L0: tsc: Marking TSC unstable due to clocksource watchdog"),
            (12 * S, 0, "vm1: masterclock off"),
            (13 * S, 1, "vCPU 0: TSC write of 5")]
    run = _run([*_startup(6), *late])
    total = len(run["moments"])
    lines = moments_timeline([run], limit=4)
    # the four non-start-up moments, in time order, then what was left out
    assert _texts(lines[:-1]) == [x for _t, _l, x in late]
    assert lines[-1].strip() == (
        f"... {total - 4} more moments left out, the least important (start-up "
        f"{total - 4}); --json has all of them")
    # limit 2: the TSC marked unstable and the masterclock change, still in time order
    assert _texts(moments_timeline([run], limit=2)[:-1]) == [late[1][2], late[2][2]]
    # no cut: every moment
    assert len(moments_timeline([run], limit=total)) == total


def test_moments_that_differ_only_in_numbers_are_one_line() -> None:
    steps = [(2 * S + i * 100 * MS, 0, f"L1: vcpu {i % 4} saw a backwards TSC on CPU 3")
             for i in range(6)]
    run = _run([(S, 0, "L1: vcpu 2 saw a backwards TSC on CPU 2"),
                (S, 0, "L0: tsc: Marking TSC unstable due to KVM discovered backwards TSC"),
                *steps, (4 * S, 0, "L1: masterclock off")])
    lines = moments_timeline([run])
    assert _texts(lines) == [
        "L1: vcpu 2 saw a backwards TSC on CPU 2",
        "L0: tsc: Marking TSC unstable due to KVM discovered backwards TSC",
        "L1: vcpu N saw a backwards TSC on CPU 3 x6, 2.000-2.500 s",
        "L1: masterclock off",
    ]
    assert lines[2].startswith("    2.000000 s  upstream L0  ")


def test_a_more_important_moment_between_splits_the_line() -> None:
    run = _run([(S, 1, "vCPU 0: TSC write of 1"), (2 * S, 0, "L1: masterclock off"),
                (3 * S, 1, "vCPU 1: TSC write of 2"), (4 * S, 1, "vCPU 2: TSC write of 3")])
    assert _texts(moments_timeline([run])) == [
        "vCPU 0: TSC write of 1", "L1: masterclock off", "vCPU N: TSC write of N x2, "
        "3.000-4.000 s"]


def test_an_entrys_own_moment_comes_before_what_its_kernel_calls_gave() -> None:
    write = "vCPU 2: TSC write 10 s ahead"
    ms = [{"t_ns": 3 * S, "level": 0, "text": "L1: new TSC generation 2 (vcpu 2)",
           "cause": write},
          {"t_ns": 3 * S, "level": 1, "text": write},
          {"t_ns": 3 * S + 1, "level": 0, "text": "L1: masterclock off"}]
    assert [m["text"] for m in cause_first(ms)] == [write, ms[0]["text"], ms[2]["text"]]
    assert _texts(moments_timeline([{**_run([]), "moments": ms}])) == [
        write, "L1: new TSC generation 2 (vcpu 2)", "L1: masterclock off"]


def test_a_moment_with_detail_is_one_complete_line() -> None:
    m = {"t_ns": 0, "level": 0, "text": "L0: clocksource: ... because the skew is too large:",
         "detail": "'tsc' cs_nsec 2 vs 'hpet' wd_nsec 1: skewed 1 ns (0 ms)"}
    assert moment_text(m) == ("L0: clocksource: ... because the skew is too large: 'tsc' "
                              "cs_nsec 2 vs 'hpet' wd_nsec 1: skewed 1 ns (0 ms)")
    assert moment_text({"t_ns": 0, "level": 0, "text": "x:"}) == "x:"


# ------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def real() -> dict[str, list[dict[str, Any]]]:
    from kvmclock.sim import run_scenario

    out = {name: [run_scenario(name, p, seed=0) for p in ("gtod", "series", "upstream")]
           for name in ("unstable-tsc", "tsc-sync", "nested")}
    out["restore-shelf"] = [run_scenario("restore-shelf", "upstream", seed=0)]
    return out


def test_restore_shelf_shows_its_restores_with_the_default_limit(
    real: dict[str, list[dict[str, Any]]],
) -> None:
    (run,) = real["restore-shelf"]
    lines = moments_timeline([run])
    texts = _texts(lines)
    assert len(texts) <= 30
    for rec in run["lifecycle"]:
        vm = rec["vm"]
        at = f"{rec['t_ns'] / 1e9:12.6f} s"
        assert any(ln.startswith(at) and f"VM {vm}: restored on" in ln for ln in lines), vm
        assert any(ln.startswith(at) and f"{vm}: the VM it was restored from" in ln
                   for ln in lines), vm
        # the pause and snapshot at 1 s
        assert any(f"VM {vm}: paused" in x for x in texts)
        assert any(f"VM {vm}: snapshot" in x for x in texts)
    n = len(run["moments"])
    shown = sum(int(m.group(1)) if (m := re.search(r" x(\d+), ", x)) else 1 for x in texts)
    assert lines[-1].strip().startswith(f"... {n - shown} more moments left out")
    assert lines[-1].endswith("--json has all of them")


def test_the_old_vm_is_named_when_a_restore_destroys_it(
    real: dict[str, list[dict[str, Any]]],
) -> None:
    (run,) = real["restore-shelf"]
    for rec in run["lifecycle"]:
        vm = rec["vm"]
        created = [m["t_ns"] for m in run["moments"] if m["text"] == f"{vm}: VM created"]
        assert len(created) == 2  # the first VM and the restore's
        gone = [m for m in run["moments"] if m["text"].startswith(f"{vm}: ")
                and m["text"].endswith(" destroyed")]
        assert [(m["t_ns"], m["text"]) for m in gone] == [(
            rec["t_ns"],
            f"{vm}: the VM it was restored from (on host {rec['host']}, created at "
            f"{created[0] / 1e9:.3f} s) destroyed",
        )]


def test_unstable_tsc_collapses_the_backwards_tsc_lines(
    real: dict[str, list[dict[str, Any]]],
) -> None:
    runs = real["unstable-tsc"]
    lines = moments_timeline(runs)
    pat = re.compile(r"vcpu \d+ saw a backwards TSC on CPU 3$")
    # the moments after the TSC step at 2 s (every profile has the same ones)
    step = next(m["t_ns"] for m in runs[0]["moments"] if "steps back" in m["text"])
    times = [m["t_ns"] for m in runs[0]["moments"] if m["t_ns"] > step and pat.search(m["text"])]
    for run in runs[1:]:
        assert times == [m["t_ns"] for m in run["moments"]
                         if m["t_ns"] > step and pat.search(m["text"])]
    assert len(times) > 10
    want = (f"L1: vcpu N saw a backwards TSC on CPU 3 x{len(times)}, "
            f"{times[0] / 1e9:.3f}-{times[-1] / 1e9:.3f} s")
    assert want in _texts(lines)
    assert sum("saw a backwards TSC" in ln for ln in lines) <= 3
    assert not lines[-1].strip().startswith("...")  # everything fits now


def test_tsc_sync_the_write_comes_before_the_generation_it_made(
    real: dict[str, list[dict[str, Any]]],
) -> None:
    runs = real["tsc-sync"]
    for run in runs:
        gen = next(m for m in run["moments"] if m["t_ns"] == 3 * S
                   and "new TSC generation" in m["text"])
        assert gen["cause"].startswith("vCPU 2: TSC write 10 s ahead")
    texts = _texts(moments_timeline(runs))
    write = next(i for i, x in enumerate(texts) if x.startswith("vCPU 2: TSC write 10 s"))
    gens = [i for i, x in enumerate(texts) if "new TSC generation" in x and "(vcpu 2)" in x]
    assert gens and all(write < i for i in gens)


def test_the_watchdog_verdict_is_one_line_with_its_numbers(
    real: dict[str, list[dict[str, Any]]],
) -> None:
    for run in real["nested"]:
        m = next(m for m in run["moments"] if "skew is too large" in m["text"])
        assert m["text"].endswith("skew is too large:")  # the kernel's own line
        line = moment_text(m)
        got = re.search(r"'tsc' cs_nsec (\d+) vs 'hpet' wd_nsec (\d+): skewed (-?\d+) ns "
                        r"\((-?\d+) ms\)$", line)
        assert got is not None, line
        cs, wd, skew, ms = map(int, got.groups())
        assert skew == cs - wd and ms == skew // MS
        # every TSC jumped forward by 100 ms of cycles within the watchdog interval
        assert 100 * MS <= skew < 101 * MS
        assert any(line in ln for ln in moments_timeline([run]))

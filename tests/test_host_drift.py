"""``kvmclock host``: kvm-clock's drift with its error bound (kvmclock.real.host).

Synthetic bracketed reads check the arithmetic exactly: the offset of each end is kvm-clock
minus the midpoint of its bracket, the drift is the change of that offset over the reference
time between the midpoints, the bound is (w0 + w1) / dt, and "below resolution" means the
bound exceeds the drift's magnitude.  A real-machine test measures this computer's kvm-clock
and skips, saying why, where the guest pvclock record is not mapped."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from fractions import Fraction

import pytest
from kvmclock import cli
from kvmclock.real.host import (
    BracketSample,
    compare_clocks,
    drift_dict,
    drift_estimate,
    format_drift,
    measure_drift,
    narrowest,
)


def _expected(start: tuple[int, int, int], end: tuple[int, int, int]) -> tuple[Fraction, ...]:
    """Drift and bound (ppb) written out from the definitions, independently of the code."""
    mid0 = Fraction(start[0] + start[2], 2)
    mid1 = Fraction(end[0] + end[2], 2)
    dt = mid1 - mid0
    d_off = (end[1] - mid1) - (start[1] - mid0)
    w0, w1 = start[2] - start[0], end[2] - end[0]
    return d_off / dt * 10**9, Fraction(w0 + w1) / dt * 10**9, dt, d_off


@pytest.mark.parametrize(
    ("start", "end"),
    [
        # kvm-clock 350 ns ahead after ~2 s: 175 ppb, bound 300 ns / 2 s = 150 ppb
        ((1_000_000_000, 1_500_000_000, 1_000_000_200),
         (3_000_000_000, 3_500_000_300, 3_000_000_100)),
        # odd window sums: midpoints on half nanoseconds; kvm-clock falling behind
        ((10, 7_000_000_000, 171), (60_000_000_011, 67_000_000_000, 60_000_000_150)),
        # zero-width windows: the bound is 0 and any non-zero drift is resolved
        ((0, 5, 0), (1_000_000_000, 1_000_000_006, 1_000_000_000)),
    ],
)
def test_drift_and_bound_exact(start: tuple[int, int, int], end: tuple[int, int, int]) -> None:
    est = drift_estimate(BracketSample(*start), BracketSample(*end))
    drift, bound, dt, d_off = _expected(start, end)
    assert est.drift_ppb == drift
    assert est.bound_ppb == bound
    assert est.elapsed_ns == dt and est.offset_change_ns == d_off
    assert est.below_resolution is (bound > abs(drift))
    d = drift_dict(est)
    assert d["drift_ppb"] == float(drift) and d["bound_ppm"] == float(bound / 1000)
    assert d["start"]["window_ns"] == start[2] - start[0]


def test_first_case_numbers() -> None:
    """The first case above, by hand: dt = 3_000_000_050 - 1_000_000_100 = 1_999_999_950 ns,
    offsets 499_999_900 and 500_000_250 ns, so 350 ns more: 350e9 / dt ppb, bound 300e9 / dt."""
    est = drift_estimate(BracketSample(1_000_000_000, 1_500_000_000, 1_000_000_200),
                         BracketSample(3_000_000_000, 3_500_000_300, 3_000_000_100))
    assert est.drift_ppb == Fraction(350 * 10**9, 1_999_999_950)
    assert est.bound_ppb == Fraction(300 * 10**9, 1_999_999_950)
    assert not est.below_resolution
    assert "below resolution" not in format_drift("X", drift_dict(est))


def _pair(d_off: int, w: int = 100) -> tuple[BracketSample, BracketSample]:
    """Two samples 1 s apart (midpoints), windows ``w``, offset change ``d_off`` ns."""
    return (BracketSample(0, 1000 + w // 2, w),
            BracketSample(10**9, 10**9 + 1000 + w // 2 + d_off, 10**9 + w))


@pytest.mark.parametrize(
    ("d_off", "below"),
    [(200, False), (199, True), (-200, False), (-199, True), (201, False), (0, True)],
)
def test_below_resolution_boundary(d_off: int, below: bool) -> None:
    """Windows 100 + 100 ns over 1 s: bound exactly 200 ppb.  A drift of 200 ppb equals the
    bound (resolved); 199 ppb is smaller than it (below resolution), either sign."""
    est = drift_estimate(*_pair(d_off))
    assert est.bound_ppb == 200 and est.drift_ppb == d_off
    assert est.below_resolution is below
    text = format_drift("CLOCK_MONOTONIC_RAW", drift_dict(est))
    assert ("below resolution" in text) is below
    assert "+- 0.200 ppm" in text


def test_narrowest_and_measure_drift_keep_the_narrowest_windows() -> None:
    # start: windows 50, 20, 20, 30 -> the first 20; end: 40, 10, 60, 10 -> the first 10
    ref = iter([0, 50, 100, 120, 200, 220, 300, 330,
                10**9, 10**9 + 40, 10**9 + 100, 10**9 + 110, 10**9 + 200, 10**9 + 260,
                10**9 + 300, 10**9 + 310])
    kvm = iter([25, 111, 211, 316, 10**9 + 20, 10**9 + 107, 10**9 + 230, 10**9 + 304])
    slept: list[float] = []

    def clock(it: Iterator[int] = ref) -> int:
        return next(it)

    def kclock(it: Iterator[int] = kvm) -> int:
        return next(it)

    est = measure_drift(clock, kclock, 1.5, count=4, sleep=slept.append)
    assert slept == [1.5]
    assert est.start == BracketSample(100, 111, 120)
    assert est.end == BracketSample(10**9 + 100, 10**9 + 107, 10**9 + 110)
    drift, bound, _, _ = _expected((100, 111, 120), (10**9 + 100, 10**9 + 107, 10**9 + 110))
    assert (est.drift_ppb, est.bound_ppb) == (drift, bound)
    assert narrowest([BracketSample(0, 1, 5), BracketSample(0, 1, 3), BracketSample(1, 2, 4)]) \
        == BracketSample(0, 1, 3)


def test_bad_samples_refused() -> None:
    with pytest.raises(ValueError, match="no samples"):
        narrowest([])
    with pytest.raises(ValueError, match="not after"):
        drift_estimate(BracketSample(10, 11, 12), BracketSample(10, 11, 12))
    with pytest.raises(ValueError, match="start sample: after_ns < before_ns"):
        drift_estimate(BracketSample(10, 11, 9), BracketSample(100, 101, 102))


# ------------------------------------------------------------------------------ the CLI option


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "3600.5", "1e9", "two", ""])
def test_seconds_option_validated(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["host", f"--seconds={value}"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "--seconds" in lines[0] and "(0, 3600]" in lines[0], lines[0]


def test_seconds_option_reaches_the_measurement(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmclock.real import host

    seen: list[float] = []

    def fake(seconds: float = host.DEFAULT_SECONDS) -> dict[str, object]:
        seen.append(seconds)
        return {}

    monkeypatch.setattr(host, "host_report", fake)
    monkeypatch.setattr(host, "format_host_report", lambda rep: "report")
    assert cli.main(["host", "--seconds", "0.25"]) == 0
    assert cli.main(["host"]) == 0
    assert capsys.readouterr().out == "report\nreport\n"
    assert seen == [0.25, 2.0]


# ------------------------------------------------------------------------------ this machine


def _record_reason() -> str | None:
    from kvmclock.real import vclock_reason

    return vclock_reason()


needs_record = pytest.mark.skipif(
    _record_reason() is not None,
    reason=f"no KVM guest pvclock record here: {_record_reason()}",
)


@needs_record
def test_real_drift_is_reported_with_its_bound() -> None:
    clk = compare_clocks(0.3, count=16)
    assert clk["requested_s"] == 0.3 and clk["bracket_reads"] == 16
    for name in ("monotonic_raw", "boottime"):
        d = clk[name]
        w0, w1 = d["start"]["window_ns"], d["end"]["window_ns"]
        assert w0 >= 0 and w1 >= 0
        assert 0.3e9 <= d["elapsed_ns"] < 5e9
        assert math.isclose(d["bound_ppb"], (w0 + w1) / d["elapsed_ns"] * 1e9, rel_tol=1e-12)
        assert d["below_resolution"] == (d["bound_ppb"] > abs(d["drift_ppb"]))
        # kvm-clock and the kernel's clocks on a KVM guest come from the same TSC kHz: what is
        # left beyond the bound is well under 1 ppm (NTP may slew BOOTTIME by up to 500 ppm)
        slack_ppb = 1000 if name == "monotonic_raw" else 500_000
        assert abs(d["drift_ppb"]) <= d["bound_ppb"] + slack_ppb, d


@needs_record
def test_real_host_command_prints_drift_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["host", "--seconds", "0.2", "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc)[:2] == ["schema", "schema_version"]
    assert doc["clocks"]["requested_s"] == 0.2
    code = cli.main(["host", "--seconds", "0.2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("kvm-clock vs CLOCK_MONOTONIC_RAW"))
    assert "ppm +- " in line and "read windows" in line and "over 0.2" in line


def test_no_record_means_no_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the record there is no kvm-clock to measure: ``clocks`` is null and the text
    says the record is unavailable (this runs everywhere)."""
    from kvmclock.real import host

    monkeypatch.setattr(host, "guest_record_report",
                        lambda: {"available": False, "reason": "no [vvar_vclock] mapping"})
    monkeypatch.setattr(host, "kvm_report", lambda: {"available": False, "reason": "none"})
    rep = host.host_report(0.01)
    assert rep["clocks"] is None
    text = host.format_host_report(rep)
    assert "unavailable: no [vvar_vclock] mapping" in text and "drift" not in text


@needs_record
def test_real_drift_matches_the_two_multipliers() -> None:
    """With the tsc clocksource, CLOCK_MONOTONIC_RAW advances by the clocksource's mult/shift
    (clocksource_register_khz of tsc_khz) and kvm-clock by the record's mul/shift
    (kvm_get_time_scale of the same kHz): their rates differ by a known amount (about -58
    ppb at 2596150 kHz), which the measurement must find within its bound."""
    from kvmclock.real.host import clocksources, guest_record_report
    from reference import kernel_math as ref

    if clocksources()["current"] != "tsc":
        pytest.skip("the current clocksource is not tsc: CLOCK_MONOTONIC_RAW has another rate")
    rec = guest_record_report()
    khz = rec["record_tsc_khz"]
    mul, shift = rec["record"]["tsc_to_system_mul"], rec["record"]["tsc_shift"]
    if (shift, mul) != ref.get_time_scale(10**9, khz * 1000):
        pytest.skip("the record's mul/shift are not those of its own kHz")
    cs_mult, cs_shift = ref.clocks_calc_mult_shift(khz, 1_000_000, 600 * 1000)
    while cs_mult + cs_mult * 11 // 100 > (1 << 32) - 1:  # clocksource maxadj loop
        cs_mult, cs_shift = cs_mult >> 1, cs_shift - 1
    kvm_rate = Fraction(mul, 1 << 32) * Fraction(2) ** shift
    raw_rate = Fraction(cs_mult, 1 << cs_shift)
    predicted_ppb = (kvm_rate - raw_rate) / raw_rate * 10**9
    d = compare_clocks(1.0, count=32)["monotonic_raw"]
    assert abs(d["drift_ppb"] - float(predicted_ppb)) <= d["bound_ppb"] + 2, (d, predicted_ppb)

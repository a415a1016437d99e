"""``kvmclock verify``: one scripted scenario run on the real /dev/kvm and on the model with the
same inputs; every relation reported as held, departed (a named departure whose evidence, stored
in the capture, explains the miss) or failed.

The work is split by concern:

* ``kvmclock.real.capture``: ``SCRIPT`` on /dev/kvm, the machine's evidence, ``ScenarioRun``.
* ``kvmclock.real.replay``: the recorded inputs replayed on the KVM model.
* ``kvmclock.real.relations``: the kernel rules, the model-vs-real comparison, the departures.
* ``kvmclock.real.report``: the result document, the outcome counts, the text.

This module is the entry point (``run_verify``, ``verify_run``) and keeps the older names
importable.
"""

from __future__ import annotations

from typing import Any

from kvmclock.errors import RealResourceUnavailable
from kvmclock.profiles import Profile, resolve_profile
from kvmclock.real import replay
from kvmclock.real.capture import (
    PVCLOCK_GUEST_STOPPED,
    PVCLOCK_TSC_STABLE_BIT,
    SCRIPT,
    ScenarioRun,
    _info,
    _rec,
    collect_evidence,
    real_run,
    run_real_scenarios,
)
from kvmclock.real.relations import (
    DEPARTURE_FOR,
    DEPARTURES,
    EPSILON_NS,
    EXACT,
    KNOWN_DEPARTURES,
    _version_step,
    check_relations,
    compare_runs,
    departure_for_relation,
    judge,
    trace_offsets,
    trace_relation,
)
from kvmclock.real.replay import MODEL_PROFILE, ModelRunner, replay_model
from kvmclock.real.report import assemble, format_verify, summary_line

# Older private names used by tests.
_check = check_relations
_trace_relation = trace_relation


def _departure_applies(name: str, real: ScenarioRun, held_real: bool) -> str | None:
    """The departure explaining relation ``name``'s real rule not holding, judged on the
    capture's stored evidence only (None when it held or no departure's evidence holds)."""
    if held_real:
        return None
    d = departure_for_relation(name, real)
    return d.name if d else None


def model_runner(profile: str | Profile = MODEL_PROFILE) -> tuple[ModelRunner | None, str]:
    """The model replay (``replay.model_runner``); a module attribute so tests can swap it."""
    return replay.model_runner(profile)


def verify_run(
    real: ScenarioRun,
    *,
    trace_status: str = "from the run",
    profile: str | Profile = MODEL_PROFILE,
) -> dict[str, Any]:
    """Everything ``run_verify`` does after the real run, on a capture (fresh or stored): the
    model replay of ``real.inputs``, every relation judged (``relations.judge``) and the result
    document (``report.assemble``).

    ``ok`` is False when any relation or real-vs-model field failed, or the model did not run
    (no model, or its replay raised): a model that cannot run is a failed verify.
    """
    cfg = resolve_profile(profile)
    runner, why = model_runner(cfg)
    model: ScenarioRun | None = None
    if runner is None:
        status = why
    else:
        try:
            model = runner(real)
            status = "ran"
        except Exception as exc:  # any replay failure is reported, and fails verify
            status = f"model replay failed: {type(exc).__name__}: {exc}"
    judged = judge(real, model, status)
    result = assemble(
        real,
        model,
        judged,
        model_status=status,
        model_setup=why if model is not None else None,
        trace_status=trace_status,
    )
    result["profile"] = cfg.to_json()
    return result


def run_verify(
    scenarios: list[str] | None = None,
    trace: bool | None = None,
    profile: str | Profile = MODEL_PROFILE,
) -> dict[str, Any]:
    """Run the real scenario on /dev/kvm (``capture.real_run``) and ``verify_run`` it with
    the model under ``profile`` (default ``upstream``).

    ``scenarios``: None or a subset of ``["clock-relations"]``; ``trace``: capture the four KVM
    clock events in a private tracefs instance (None = when possible). Raises
    RealResourceUnavailable when /dev/kvm is missing.
    """
    names = ["clock-relations"] if scenarios is None else list(scenarios)
    unknown = [n for n in names if n != "clock-relations"]
    if unknown:
        raise ValueError(f"scenarios must be a subset of ['clock-relations'], got {unknown}")
    cfg = resolve_profile(profile)
    real, trace_status = real_run(trace)
    result = verify_run(real, trace_status=trace_status, profile=cfg)
    result["scenarios"] = names
    return result


__all__ = [
    "DEPARTURES",
    "DEPARTURE_FOR",
    "EPSILON_NS",
    "EXACT",
    "KNOWN_DEPARTURES",
    "MODEL_PROFILE",
    "PVCLOCK_GUEST_STOPPED",
    "PVCLOCK_TSC_STABLE_BIT",
    "SCRIPT",
    "RealResourceUnavailable",
    "ScenarioRun",
    "_info",
    "_rec",
    "_version_step",
    "check_relations",
    "collect_evidence",
    "compare_runs",
    "format_verify",
    "model_runner",
    "replay_model",
    "run_real_scenarios",
    "run_verify",
    "summary_line",
    "trace_offsets",
    "trace_relation",
    "verify_run",
]

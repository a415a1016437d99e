"""The result of ``kvmclock verify``: assembly of the JSON document, the summary counts of the
three outcomes (held, departed, failed) and the readable text."""

from __future__ import annotations

from typing import Any

from kvmclock.real.capture import ScenarioRun
from kvmclock.real.relations import FAILED, OUTCOMES


def assemble(
    real: ScenarioRun,
    model: ScenarioRun | None,
    judged: dict[str, Any],
    *,
    model_status: str,
    model_setup: str | None,
    trace_status: str,
) -> dict[str, Any]:
    """The verify document. ``ok`` is True only when the model ran and no relation and no
    comparison field failed; ``summary`` counts the outcomes of the relations and of the
    real-vs-model fields (None when the model did not run)."""
    comparison = judged["comparison"]
    fields = comparison["summary"] if comparison is not None else None
    ok = (
        model is not None
        and judged["summary"][FAILED] == 0
        and fields is not None
        and fields[FAILED] == 0
    )
    departures: dict[str, dict[str, Any]] = {}
    for rel in judged["relations"]:
        for d in rel["departures"]:
            departures[d["name"]] = d
    if comparison is not None:
        departures.update(comparison["departures"])
    ev = real.evidence
    return {
        "ok": ok,
        "kernel": ev.get("kernel_release") if ev else None,
        "evidence": ev,
        "trace_status": trace_status,
        "scenarios": ["clock-relations"],
        "model_status": model_status,
        "model_setup": model_setup,
        "summary": {"relations": judged["summary"], "fields": fields},
        "relations": judged["relations"],
        "comparison": comparison,
        "departures": departures,
        "real": real.to_json(),
        "model_run": model.to_json() if model is not None else None,
    }


def _counts(c: dict[str, int] | None) -> str:
    if c is None:
        return "not compared (model did not run)"
    return ", ".join(f"{c[k]} {k}" for k in OUTCOMES)


def summary_line(result: dict[str, Any]) -> str:
    """One line: the outcome counts of the relations and of the real-vs-model fields."""
    s = result["summary"]
    n_rel = sum(s["relations"].values())
    fields = s["fields"]
    n_f = sum(fields.values()) if fields is not None else 0
    return (
        f"summary: {n_rel} relations: {_counts(s['relations'])};"
        f" {n_f} real-vs-model fields: {_counts(fields)}"
    )


def _evidence_line(ev: dict[str, Any] | None) -> str:
    if not ev:
        return "evidence: none stored in the capture (no departure applies)"
    mods = [m for m, on in (ev.get("kvm_modules") or {}).items() if on]
    caps = ev.get("capabilities") or {}
    cap_text = ", ".join(f"{k} {v:#x}" if k == "KVM_CAP_ADJUST_CLOCK" else f"{k} {v}"
                         for k, v in caps.items())
    return (
        f"evidence: flavour {ev.get('flavour')} (loaded: {', '.join(mods) or 'none'}),"
        f" kernel {ev.get('kernel_release')}, KVM_VCPU_TSC_OFFSET attribute"
        f" {ev.get('vcpu_tsc_offset_attr')}; {cap_text}"
    )


def format_verify(result: dict[str, Any]) -> str:
    """Readable report: one block per relation with its outcome, the real rule and the model vs
    real comparison, departures with their evidence, the field summary, the counts."""
    lines = [
        f"kvmclock verify: capture from kernel {result['kernel'] or 'unknown'}"
        f" (model: {result['model_status']}; trace: {result['trace_status']})",
        _evidence_line(result.get("evidence")),
    ]
    for r in result["relations"]:
        kind = "exact" if r["exact"] else f"bound: {r.get('bound')}"
        deps = ", ".join(d["name"] for d in r["departures"])
        lines.append(
            f"- {r['name']} [{kind}]: {r['outcome'].upper()}" + (f" ({deps})" if deps else "")
        )
        real = r["real"]
        lines.append(
            f"    real rule: {'held' if real['held'] else 'DID NOT HOLD'}: {real['detail']}"
        )
        lines.append(f"    model vs real: {r['model']['outcome']}: {r['model']['detail']}")
    comp = result.get("comparison")
    if comp is not None:
        lines.append(
            f"real vs model, field by field: {comp['compared']} compared:"
            f" {_counts(comp['summary'])}"
        )
        for sg in comp["segments"]:
            lo, hi = sg["bound_min_ns"], sg["bound_max_ns"]
            hi = "+inf" if hi is None else hi
            lines.append(
                f"    kvmclock real - model, segment {sg['segment']}:"
                f" constant {sg['constant_ns']} ns over {sg['samples']} samples (max deviation"
                f" {sg['spread_ns']} ns, allowed {comp['epsilon_ns']}); {sg['bound_from']}"
                f" window [{lo}, {hi}] ns: {'held' if sg['held'] else 'DID NOT HOLD'}"
            )
        for e in comp["failed"]:
            lines.append(
                f"    FAILED {e['label']}.{e['field']}: real {e['real']} model {e['model']}"
                f" ({e['rule']})"
            )
        for name, why in comp["not_compared"].items():
            lines.append(f"    not compared: {name}: {why}")
    for d in result["departures"].values():
        ev = ", ".join(f"{k}={v}" for k, v in d["evidence"].items())
        lines.append(
            f"departure {d['name']} (requires {d['requires']}; evidence {ev}): {d['text']}"
        )
    lines.append(summary_line(result))
    n_failed = result["summary"]["relations"][FAILED]
    fields_failed = (result["summary"]["fields"] or {}).get(FAILED, 0)
    lines.append(
        "OK"
        if result["ok"]
        else f"FAILED: {n_failed} relation(s) and {fields_failed} real-vs-model field(s) failed"
        + ("" if result["model_status"] == "ran"
           else f" (the model did not run: {result['model_status']})")
    )
    return "\n".join(lines)


__all__ = ["assemble", "format_verify", "summary_line"]

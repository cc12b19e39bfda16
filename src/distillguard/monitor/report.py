"""What a scan proposes and shows: tier decisions planned from an analysis, the JSON report, and its
one-screen summary."""

from __future__ import annotations

import io
import math
from typing import Any

from distillguard.gateway.tiers import BASE_TIER
from distillguard.monitor.decisions import AccountState, Decision, Policy, decide
from distillguard.monitor.scan import Analysis

# --------------------------------------------------------------------------------------------------
# Decisions and output


def plan_decisions(
    analysis: Analysis,
    policy: Policy,
    store_tiers: dict[str, str],
    states: dict[str, AccountState],
    now: float,
) -> tuple[list[Decision], dict[str, AccountState], dict[str, str]]:
    """The tier moves for every account the store knows (pure). Returns decisions, new states and the
    resulting tier of every analysed account."""
    decisions: list[Decision] = []
    new_states = dict(states)
    tiers: dict[str, str] = {}
    # against the shipped reference's null, tiers stop at ``shipped_max_tier``: its p-values hold for benign
    # traffic like the simulator's, which the deployment's own customers may not be
    capped = bool((analysis.reference or {}).get("capped"))
    cap = policy.shipped_max_tier if capped else None
    for a, v in analysis.accounts.items():
        cur = store_tiers.get(a)
        if cur is None:  # not in the store (a Parquet export of another system): report only
            tiers[a] = policy.target(v.p_value, cap) if a not in policy.allowlist else policy.tiers[0]
            continue
        dec, st = decide(a, v.p_value, cur, states.get(a), policy, now, cap)
        new_states[a] = st
        tiers[a] = st.tier
        if dec is not None:
            dec.cluster = v.cluster
            dec.reasons = v.reasons[:4]
            if cap is not None and policy.target(v.p_value) != policy.target(v.p_value, cap):
                why = f"capped at {cap} (scored against the shipped reference's null)"
                dec.reasons = [why, *dec.reasons[:3]]
            dec.seqs = v.evidence
            decisions.append(dec)
    return decisions, new_states, tiers


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.6g}")


def report_json(
    analysis: Analysis,
    tiers: dict[str, str],
    *,
    store_tiers: dict[str, str] | None = None,
    decisions: list[Decision] | None = None,
    applied: bool = False,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """``{"accounts": [{"account", "risk", "tier", "cluster", "reasons"}...]}`` (docs/architecture.md)
    plus p-values, evidence seq ids, cluster entries and the decisions taken (or proposed)."""
    allow = policy.allowlist if policy else frozenset()
    accounts = []
    for v in sorted(analysis.accounts.values(), key=lambda v: (v.p_value, v.account)):
        accounts.append(
            {
                "account": v.account,
                "risk": _num(v.risk),
                "tier": tiers.get(v.account, BASE_TIER),
                "cluster": v.cluster,
                "reasons": v.reasons[:6],
                "p_value": _num(v.p_value),
                "score": _num(v.score),
                "queries": v.queries,
                "prompts": v.prompts,
                "scored": v.scored,
                "current_tier": (store_tiers or {}).get(v.account),
                "allowlisted": v.account in allow,
                "evidence": v.evidence,
                "tests": [{k: _num(x) if k == "p_value" else x for k, x in t.items()} for t in v.tests],
            }
        )
    clusters = [
        {
            "cluster": c.id,
            "accounts": c.accounts,
            "risk": _num(c.risk),
            "p_value": _num(c.p_value),
            "score": _num(c.score),
            "queries": c.queries,
            "reasons": c.reasons[:6],
            "evidence": c.evidence,
            "strong": c.strong,
        }
        for c in sorted([*analysis.clusters, *analysis.weak_clusters], key=lambda c: (c.p_value, c.id))
    ]
    return {
        "accounts": accounts,
        "clusters": clusters,
        "decisions": [
            {
                "account": d.account,
                "from": d.previous,
                "to": d.tier,
                "kind": d.kind,
                "p_value": _num(d.p_value),
                "seqs": d.seqs,
            }
            for d in decisions or []
        ],
        "applied": applied,
        "calibration": analysis.calibration,
        "reference": analysis.reference,
        "rows": analysis.rows,
        "last_seq": analysis.last_seq,
    }


def summary_text(report: dict[str, Any], limit: int = 20) -> str:
    """A human-readable table of the riskiest accounts."""
    out = io.StringIO()
    out.write(
        f"{len(report['accounts'])} accounts, {len(report['clusters'])} clusters, {report['rows']} rows, "
        f"calibration: {report['calibration']}\n"
    )
    if report.get("reference", {}).get("trust"):
        out.write(f"reference trust: {report['reference']['trust']}\n")
    for a in report["accounts"][:limit]:
        p = a["p_value"]
        out.write(
            f"{a['account']:<24} {a['tier']:<10} p={p if p is None else f'{p:.1e}':<8} "
            f"q={a['queries']:<6} {a['cluster'] or '':<4} {(a['reasons'] or [''])[0][:90]}\n"
        )
    for d in report["decisions"]:
        out.write(f"decision: {d['account']} {d['from']} -> {d['to']} ({d['kind']})\n")
    return out.getvalue()

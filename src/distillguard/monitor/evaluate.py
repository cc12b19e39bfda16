"""``monitor eval``: how well the monitor separates labelled attackers from benign accounts.

Reported, per persona and overall:

- the benign-account false-positive rate *actually observed* at each tier threshold (never the nominal
  one), and the attacker-account true-positive rate at that same threshold, for every tier above the base
  on the policy's ladder (an account is "flagged" once it reaches the lowest of them);
- per-campaign detection (a campaign counts as caught when any of its accounts is flagged), with the
  share of its accounts flagged;
- queries-to-detection: the ledger is replayed in order and each attacker account is re-scored whenever
  its own query count crosses a grid point (10, 20, 30, 50, 75, 100, 150, 200, ...); each multi-account
  campaign is re-analysed (linking included) whenever its total crosses a grid point. The figure is the
  first grid point at which it is flagged, so it is an upper bound at the grid's resolution;
- a confusion table (kind x tier) and the ROC curve of ``-log10 p`` (PNG), with its AUC.

Calibration should come from benign traffic that is *not* the evaluated ledger (another period, another
seed): otherwise the benign accounts vouch for themselves and the observed FPR is optimistic.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from distillguard.errors import UserError
from distillguard.monitor.accumulator import FeatureAccumulator
from distillguard.monitor.decisions import Policy
from distillguard.monitor.features import derive
from distillguard.monitor.judge import Looks, judge
from distillguard.monitor.scan import Analysis, Analyzer, Reference, ScanOptions, analyse, scorable

GRID = (10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 50000)


def _grid_index(n: int) -> int:
    """How many grid points ``n`` has reached."""
    return sum(1 for g in GRID if n >= g)


def confusion(analysis: Analysis, labels: dict[str, dict[str, Any]], policy: Policy) -> dict[str, Any]:
    """Kind x tier counts, and per-persona rates at every tier threshold."""
    table: dict[str, Counter] = defaultdict(Counter)
    personas: dict[str, dict[str, Any]] = {}
    for a, v in analysis.accounts.items():
        lab = labels.get(a)
        if lab is None:
            continue
        tier = policy.tiers[0] if a in policy.allowlist else policy.target(v.p_value)
        table[lab["kind"]][tier] += 1
        p = personas.setdefault(lab["persona"], {"kind": lab["kind"], "accounts": 0, "flagged": Counter()})
        p["accounts"] += 1
        for t in policy.rungs[: policy.rank(tier)]:  # reaching a tier counts for every rung below it
            p["flagged"][t] += 1
    return {"table": {k: dict(v) for k, v in table.items()}, "personas": personas}


def roc(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC points (FPR, TPR) over every threshold of ``scores`` (higher = more suspicious), and the AUC."""
    order = np.argsort(-scores, kind="stable")
    pos = positive[order].astype(float)
    tps = np.concatenate([[0.0], np.cumsum(pos)])
    fps = np.concatenate([[0.0], np.cumsum(1.0 - pos)])
    tpr = tps / max(pos.sum(), 1.0)
    fpr = fps / max((1.0 - pos).sum(), 1.0)
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    return fpr, tpr, auc


def plot_roc(
    fpr: np.ndarray, tpr: np.ndarray, auc: float, path: Path, *, marks: dict[str, tuple] | None = None
) -> Path:
    """Write the ROC curve (log-scaled FPR, where the operating points live) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    floor = 1e-4
    ax.step(np.maximum(fpr, floor), tpr, where="post", color="#1f4e79", label=f"accounts (AUC {auc:.4f})")
    for name, (x, y) in (marks or {}).items():
        ax.plot([max(x, floor)], [y], "o", label=f"{name}: FPR {x:.2%}, TPR {y:.1%}")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("benign-account false-positive rate")
    ax.set_ylabel("attacker-account true-positive rate")
    ax.set_title("distillguard monitor: attacker vs benign accounts")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def queries_to_detection(
    batches: Iterable[pa.Table | pa.RecordBatch],
    labels: dict[str, dict[str, Any]],
    reference: Reference,
    policy: Policy,
    *,
    options: ScanOptions | None = None,
    created: dict[str, float] | None = None,
    step_rows: int = 1000,
) -> dict[str, Any]:
    """Replay the ledger and find when each attacker account and campaign is first flagged: an account on
    its own tests (as a scan judges it, without its cluster), a campaign when any member is flagged by a
    full scan of the prefix."""
    o = options or ScanOptions()
    an = Analyzer(o)
    looks = Looks.of(reference.calibration, "benign reference")
    acc = FeatureAccumulator(sample_size=o.sample_size, sketch_key=o.sketch_key)
    thr = policy.threshold(policy.flag_tier)
    attackers = {a for a, lab in labels.items() if lab.get("kind") == "attacker"}
    campaigns: dict[str, set[str]] = defaultdict(set)
    for a in attackers:
        campaigns[labels[a].get("campaign") or a].add(a)
    multi = {c: m for c, m in campaigns.items() if len(m) > 1}
    acct_done: dict[str, int] = {}
    acct_seen: dict[str, int] = {}
    camp_done: dict[str, int] = {}
    camp_seen: dict[str, int] = {}

    def check() -> None:
        counts = acc.c["prompts"]
        for a in attackers:
            i = acc.index.get(a)
            if i is None or a in acct_done:
                continue
            n = int(counts[i])
            g = _grid_index(n)
            if g > acct_seen.get(a, 0) and scorable(acc, a, o.min_queries):
                acct_seen[a] = g
                st = an.entity(acc, (a,), reference.mmd)
                if judge(looks, (a,), st).p <= thr:
                    acct_done[a] = n
        due = []
        for c, members in multi.items():
            if c in camp_done:
                continue
            total = int(sum(counts[acc.index[m]] for m in members if m in acc.index))
            g = _grid_index(total)
            if g > camp_seen.get(c, 0):
                camp_seen[c] = g
                due.append((c, total))
        if due:
            res = analyse(acc, reference, analyzer=an, created=created)
            for c, total in due:
                if any(m in res.accounts and res.accounts[m].p_value <= thr for m in multi[c]):
                    camp_done[c] = total

    for b in batches:
        t = pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
        for off in range(0, t.num_rows, step_rows):
            acc.update(derive(t.slice(off, step_rows)))
            check()
    per_persona: dict[str, list[int | None]] = defaultdict(list)
    for a in sorted(attackers):
        if a in acc.index:
            per_persona[labels[a]["persona"]].append(acct_done.get(a))
    out_persona = {}
    for persona, vals in sorted(per_persona.items()):
        hit = sorted(v for v in vals if v is not None)
        out_persona[persona] = {
            "accounts": len(vals),
            "detected": len(hit),
            "median": float(np.median(hit)) if hit else None,
            "max": max(hit) if hit else None,
        }
    camp_out = {}
    for c, members in sorted(campaigns.items()):
        if len(members) > 1:
            q = camp_done.get(c)
        else:
            q = acct_done.get(next(iter(members)))
        total = int(sum(acc.c["prompts"][acc.index[m]] for m in members if m in acc.index))
        camp_out[c] = {"accounts": len(members), "queries": total, "queries_to_detection": q}
    return {"grid": list(GRID), "per_persona": out_persona, "campaigns": camp_out}


def rate_bounds(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact one-sided Clopper-Pearson bounds of a binomial rate with ``k`` of ``n``: the lower bound (for a
    TPR) and the upper bound (for an FPR), each at ``confidence``. Zero of 3,000 benign accounts flagged
    bounds the FPR below 0.1%; zero of 300 only below 1%."""
    from scipy.stats import beta

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def evaluate(
    analysis: Analysis,
    labels: dict[str, dict[str, Any]],
    policy: Policy,
    *,
    qtd: dict[str, Any] | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """The evaluation document (and, with ``out_dir``, ``eval.json`` + ``roc.png`` in it)."""
    known = [a for a in analysis.accounts if a in labels]
    if not known:
        raise UserError("no scanned account appears in the labels file")
    kinds = np.array([labels[a]["kind"] == "attacker" for a in known])
    pvals = np.array([max(analysis.accounts[a].p_value, 1e-300) for a in known])
    scores = -np.log10(pvals)
    fpr, tpr, auc = roc(scores, kinds)
    conf = confusion(analysis, labels, policy)
    n_benign = int((~kinds).sum())
    n_att = int(kinds.sum())
    operating: dict[str, Any] = {}
    marks = {}
    for tier in policy.rungs:
        thr = policy.threshold(tier)
        flagged = pvals <= thr
        fp = int((flagged & ~kinds).sum())
        tp = int((flagged & kinds).sum())
        operating[tier] = {
            "p_threshold": thr,
            "benign_flagged": fp,
            "benign_fpr_observed": fp / n_benign if n_benign else None,
            # exact one-sided 95% Clopper-Pearson bounds: what the sample sizes let one claim
            "benign_fpr_upper95": rate_bounds(fp, n_benign)[1] if n_benign else None,
            "attacker_tpr": tp / n_att if n_att else None,
            "attacker_tpr_lower95": rate_bounds(tp, n_att)[0] if n_att else None,
        }
        marks[tier] = (fp / max(n_benign, 1), tp / max(n_att, 1))
    personas = {}
    first, middle, top = policy.rungs[0], policy.rungs[1:-1], policy.rungs[-1]
    for name, p in sorted(conf["personas"].items()):
        rate = {t: p["flagged"][t] / p["accounts"] for t in policy.rungs}
        personas[name] = {
            "kind": p["kind"],
            "accounts": p["accounts"],
            ("tpr" if p["kind"] == "attacker" else "fpr"): rate[first],
            **{f"{t}_or_above": rate[t] for t in middle},
            top: rate[top],
        }
    campaigns: dict[str, dict[str, Any]] = {}
    thr = policy.threshold(first)
    for a in known:
        lab = labels[a]
        if lab["kind"] != "attacker":
            continue
        c = campaigns.setdefault(
            lab.get("campaign") or a, {"persona": lab["persona"], "accounts": 0, "flagged": 0}
        )
        c["accounts"] += 1
        c["flagged"] += int(analysis.accounts[a].p_value <= thr)
    for c in campaigns.values():
        c["detected"] = c["flagged"] > 0
        c["share_flagged"] = c["flagged"] / c["accounts"]
    # the TPR reached at the benign FPR actually observed at the lowest rung's threshold
    observed = operating[first]["benign_fpr_observed"] or 0.0
    tpr_at = float(tpr[np.searchsorted(fpr, observed, side="right") - 1]) if len(fpr) else None
    doc: dict[str, Any] = {
        "accounts": {"benign": n_benign, "attacker": n_att},
        "calibration": analysis.calibration,
        "auc": auc,
        "operating_points": operating,
        "tpr_at_observed_fpr": {"fpr": observed, "tpr": tpr_at},
        "personas": personas,
        "campaigns": {
            "total": len(campaigns),
            "detected": sum(c["detected"] for c in campaigns.values()),
            "detail": campaigns,
        },
        "confusion": conf["table"],
        "clusters": [
            {
                "cluster": c.id,
                "accounts": len(c.accounts),
                "personas": dict(Counter(labels.get(a, {}).get("persona", "?") for a in c.accounts)),
                "p_value": c.p_value,
            }
            for c in analysis.clusters
        ],
    }
    if qtd is not None:
        doc["queries_to_detection"] = qtd
    if out_dir is not None:
        import json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        doc["roc_png"] = str(plot_roc(fpr, tpr, auc, out / "roc.png", marks=marks))
        (out / "eval.json").write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    return doc


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer | np.floating):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(f"not JSON: {type(x)}")

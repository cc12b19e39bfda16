"""Imported indicators as evidence in a monitor scan: which accounts match a shared campaign, and how much.

**Matching.** An account matches an imported campaign when its *coverage* reaches ``min_coverage`` (the
exporter's, or config ``intel_min_coverage``; default 0.5): the mean over the campaign's element groups
of what the account shares with it: the system prompt (exact fingerprint, or MinHash sketch at estimated
Jaccard >= 0.5), the tooling (sampling parameters), the prompt frames (the share of the campaign's frame
fingerprints the account used) and the network (any client IP inside the campaign's networks). Groups, not
single hits, because templates are public: an evaluation harness may wrap its questions in every one of a
campaign's frames and still share only one group of four.

**Weight (policy).** The evidence divides the account's p-value by ``W = 1 + (intel_weight - 1) x
coverage x confidence / 100`` (config ``intel_weight``, default 1e5): a full match at full confidence turns
"no evidence" (p = 1) into p = 1e-5, half the coverage or half the sharer's confidence halves the factor,
and below ``min_coverage`` there is no evidence at all. This is p-value weighting (Genovese, Roeder &
Wasserman 2006): the benign false-alarm rate at a threshold ``t`` grows by at most ``share of benign
accounts that match x W x t``, so it stays unchanged exactly as long as benign accounts do not match,
which the two-provider benchmark measures (``bench/intel_bench.py``).

**Never alone to the top.** Imported evidence cannot move an account past ``intel_max_tier`` (default: the
rung below the highest, so never ``suspended``) unless its own evidence already does: the weighted p-value
is floored just above that tier's threshold.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from distillguard.errors import UserError
from distillguard.intel.census import Census
from distillguard.intel.fingerprint import Keyring, jaccard
from distillguard.intel.settings import IntelSettings
from distillguard.intel.stix import ImportedCampaign

FUZZY_JACCARD = 0.5
GROUPS = ("system", "tooling", "frame")


def _group(kind: str) -> str:
    return {"sys": "system", "tool": "tooling"}.get(kind, "frame")


@dataclass(frozen=True)
class Evidence:
    account: str
    campaign: ImportedCampaign
    coverage: float
    parts: dict[str, float]  # element group -> matched share (system, tooling, frame, network)
    weight: float

    def text(self) -> str:
        c = self.campaign
        ind = c.indicator_id or c.network_indicator_id or c.campaign_id
        parts = ", ".join(f"{k} {v:.0%}" for k, v in self.parts.items())
        return (
            f"intel: matches indicator {ind} of {c.name!r} shared by {c.source} (confidence "
            f"{c.confidence}, TLP:{c.tlp.upper()}): coverage {self.coverage:.0%} ({parts}); "
            f"p-value / {self.weight:.3g}"
        )

    def detail(self) -> dict[str, Any]:
        c = self.campaign
        return {
            "kind": "intel",
            "text": self.text(),
            "indicator": c.indicator_id,
            "network_indicator": c.network_indicator_id,
            "campaign": c.campaign_id,
            "source": c.source,
            "confidence": c.confidence,
            "tlp": c.tlp,
            "coverage": round(self.coverage, 4),
            "parts": {k: round(v, 4) for k, v in self.parts.items()},
            "weight": self.weight,
            "seqs": [],
        }


class IntelMatcher:
    """Counts template fingerprints of scanned traffic (:meth:`tap`) and weighs the scan (:meth:`apply`)."""

    def __init__(
        self,
        campaigns: Iterable[ImportedCampaign],
        keyring: Keyring,
        *,
        weight: float = 1e5,
        min_coverage: float | None = None,
        max_tier: str | None = None,
        limit: int = 200,
    ) -> None:
        if weight < 1.0:
            raise UserError("intel_weight must be >= 1 (it divides p-values of matching accounts)")
        self.campaigns = [c for c in campaigns if c.templates or c.networks]
        self.census = Census(keyring, limit=limit)
        self.weight = float(weight)
        self.min_coverage = min_coverage
        self.max_tier = max_tier
        self._nets = [[ipaddress.ip_network(n, strict=False) for n in c.networks] for c in self.campaigns]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> IntelMatcher | None:
        """The matcher for what the state dir imported (None when nothing was)."""
        from distillguard.intel.store import IntelStore, has_imports, trust_key

        if not has_imports(config):
            return None
        campaigns = IntelStore.open(config).campaigns()
        if not campaigns:
            return None
        s = IntelSettings.from_config(config)
        return cls(
            campaigns,
            Keyring(trust_key(config)),
            weight=s.weight,
            min_coverage=s.min_coverage,
            max_tier=s.max_tier,
            limit=s.sample,
        )

    def tap(self, batches: Iterable[Any]) -> Iterator[Any]:
        return self.census.tap(batches)

    def update(self, table: Any) -> None:
        self.census.update(table)

    def evidence(self, accounts: Iterable[str] | None = None) -> dict[str, list[Evidence]]:
        out: dict[str, list[Evidence]] = {}
        sk = self.census.sketches
        names = self.census.accounts if accounts is None else accounts
        for a in names:
            st = self.census.accounts.get(a)
            if st is None or not st.n:
                continue
            used = set(st.fps)
            own_sys = [fp for fp in used if fp in sk]
            for c, nets in zip(self.campaigns, self._nets, strict=True):
                found = used & c.templates.keys()
                if c.sketches and own_sys:
                    theirs = [fp for fp in c.sketches if fp not in found]
                    if theirs:
                        mat = np.stack([c.sketches[fp] for fp in theirs])
                        for fp in own_sys:
                            sim = jaccard(sk[fp], mat)
                            found |= {theirs[i] for i in np.nonzero(sim >= FUZZY_JACCARD)[0]}
                parts: dict[str, float] = {}
                for group in GROUPS:
                    fps = [fp for fp, kind in c.templates.items() if _group(kind) == group]
                    if fps:
                        share = sum(fp in found for fp in fps) / len(fps)
                        parts[group] = 1.0 if group != "frame" and share > 0 else share
                if nets:
                    parts["network"] = 1.0 if any(_in(ip, nets) for ip in st.ips) else 0.0
                if not parts:
                    continue
                cov = sum(parts.values()) / len(parts)
                need = c.min_coverage if self.min_coverage is None else self.min_coverage
                if cov > 0 and cov >= need:
                    w = 1.0 + (self.weight - 1.0) * cov * c.confidence / 100.0
                    out.setdefault(a, []).append(Evidence(a, c, cov, parts, w))
        for ev in out.values():
            ev.sort(key=lambda e: -e.weight)
        return out

    def floor(self, policy: Any) -> float:
        """The smallest p-value imported evidence alone may produce (just above ``max_tier``'s threshold)."""
        tier = self.max_tier or (policy.rungs[-2] if len(policy.rungs) >= 2 else policy.tiers[0])
        thr = policy.threshold(tier)  # unknown tiers fail here
        nxt = policy.tiers[policy.rank(tier) + 1] if policy.rank(tier) + 1 < len(policy.tiers) else None
        return float(np.nextafter(policy.threshold(nxt), 1.0)) if nxt is not None else thr

    def apply(self, analysis: Any, policy: Any) -> Any:
        """The analysis with matching accounts' p-values weighted and their evidence first among reasons."""
        evidence = self.evidence(analysis.accounts)
        if not evidence:
            return analysis
        floor = self.floor(policy)
        verdicts = dict(analysis.accounts)
        for a, evs in evidence.items():
            v = verdicts.get(a)
            if v is None:
                continue
            best = evs[0]
            p = v.p_value
            if p > floor:
                p = max(p / best.weight, floor)
            verdicts[a] = replace(
                v,
                p_value=p,
                risk=1.0 - p,
                reasons=[e.text() for e in evs] + [r for r in v.reasons if not r.startswith("fewer than")],
                details=[e.detail() for e in evs] + list(v.details),
            )
        return replace(analysis, accounts=verdicts)


def _in(ip: str, nets: list) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in n for n in nets)

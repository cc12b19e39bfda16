"""How one entity (an account, or a linked group pooled as one) is judged: the looks it is tested against,
each with its own valid p-value, the gates that decide which looks count, and their combination.

:class:`Looks` holds the calibrations (from a benign reference, or fitted on the scanned population);
:func:`judge` tests one :class:`EntityState` against them and returns a :class:`Judgement` whose ``p`` is
Bonferroni over the looks that count. :func:`distillguard.monitor.scan.analyse` judges every account and
every linked group this way and combines them. Pure: no files, no store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distillguard.monitor.detectors import (
    BREADTH,
    EVASION,
    EXTRACTION,
    INTENT,
    SUBSET_MIN_BETA,
    SUGGESTIVE,
    TEXT_SHAPE,
    Assessment,
    Calibration,
    RateNull,
    Stricter,
    combine_min_p,
)
from distillguard.monitor.linking import LinkInfo


@dataclass
class EntityState:
    """What an analysis keeps of one entity once its features are computed. The sampled texts and their
    embeddings are not kept: at the seed case's ~65k accounts they would take gigabytes."""

    accounts: tuple[str, ...]
    queries: int  # requests: the unit of every rate and test
    features: dict[str, float]
    evidence: dict[str, list[int]]
    link: LinkInfo  # what account linking needs (``created`` is filled in by the caller)
    prompts: int = 0  # the prompts they asked answers for, a batched completion's each (reported)


# Looks at one entity (see :func:`analyse`). A look "shows evidence" at GATE_P: it opens the full profile
# look, and attributes a weakly linked cluster's evidence to a member.
GATE_P = 0.05
# A strong group (shared templates or timing) of at least this many accounts is linkage evidence: one
# template family or one scheduler across a campaign opens the full profile look without other intent.
CAMPAIGN_MIN = 3
# Clusters holding at least this share of the scored accounts (and CAMPAIGN_MIN accounts) are left out of
# a population calibration and scored against the rest: a campaign cannot vouch for itself.
LEAVE_OUT_SHARE = 0.05


@dataclass
class Looks:
    """The calibrations one entity is tested against, each with its own null, plus what the null is:

    - ``extraction``: logit_bias sweeps and logprobs over answers as counts (evidence on its own);
    - ``suggestive``: reasoning-trace, identity and logprob requests as counts (counted when corroborated);
    - ``breadth`` and ``evasion``: nearest-benign-profile looks at the coverage of the capability space and
      at network churn (they corroborate; they convict nobody alone);
    - ``profile``: the full nearest-benign-profile score (counted with intent or campaign evidence).
    """

    profile: Calibration
    extraction: RateNull | Stricter
    suggestive: RateNull | Stricter
    breadth: Calibration
    evasion: Calibration
    intent: Calibration
    null: str
    shapeless: Calibration  # the profile without the text shape one shared template gives (TEXT_SHAPE)

    @classmethod
    def of(cls, cal: Calibration, null: str) -> Looks:
        def rates(features: tuple[str, ...]) -> RateNull | Stricter:
            # a known-good period added as neighbours (Calibration.extended) also holds counts against its
            # own rates: what the deployment's benign accounts ask for is never evidence
            own = RateNull.from_calibration(cal, features)
            return Stricter((own, RateNull.from_calibration(cal, features, added=True))) if cal.added else own

        return cls(
            cal,
            rates(EXTRACTION),
            rates(SUGGESTIVE),
            cal.restrict(BREADTH),
            cal.restrict(EVASION),
            cal.restrict(INTENT),
            null,
            cal.restrict(_shapeless(cal.features), min_beta=cal.min_beta),
        )

    @classmethod
    def fit(cls, rows, *, k: int, groups, null: str) -> Looks:
        def one(features, min_beta):
            return Calibration.fit(
                rows, k=k, source="population", groups=groups, features=features, min_beta=min_beta
            )

        profile = one(None, 0.05)
        return cls(
            profile,
            RateNull.from_calibration(profile, EXTRACTION),
            RateNull.from_calibration(profile, SUGGESTIVE),
            one(BREADTH, SUBSET_MIN_BETA),
            one(EVASION, SUBSET_MIN_BETA),
            one(INTENT, SUBSET_MIN_BETA),
            null,
            one(_shapeless(profile.features), profile.min_beta),
        )


def _shapeless(features: Sequence[str]) -> tuple[str, ...]:
    return tuple(f for f in features if f not in TEXT_SHAPE)


@dataclass
class Judgement:
    """One entity's tests. ``p`` is Bonferroni over three: extraction; suggestive elicitation, counted only
    when ``corroboration`` names breadth, evasion or linkage evidence; and the full profile, counted only
    when ``gate`` names intent or a campaign: extraction, elicitation with its corroboration, breadth of
    coverage, or linkage across accounts that are not one declared organisation (an organisation's fleet
    of templated service accounts on one scheduler is linked and busy, and that is not distillation)."""

    extraction: Assessment
    suggestive: Assessment
    breadth: Assessment
    evasion: Assessment
    intent: Assessment
    profile: Assessment
    corroboration: str | None
    gate: str | None
    p: float
    tests: list[dict[str, Any]]

    @property
    def own_evidence(self) -> bool:
        """Extraction, or corroborated elicitation, at the gate level: what lets a weakly linked account
        carry its cluster's evidence."""
        if self.extraction.p_value <= GATE_P:
            return True
        return self.corroboration is not None and self.suggestive.p_value <= GATE_P

    @property
    def counted(self) -> list[Assessment]:
        out = [self.extraction]
        if self.corroboration is not None:
            out.append(self.suggestive)
        if self.gate is not None:
            out.append(self.profile)
        return out

    @property
    def best(self) -> Assessment:
        return min(self.counted, key=lambda a: a.p_value)

    @property
    def scored(self) -> bool:
        return self.profile.scored

    def _name(self, a: Assessment) -> str:
        if a is self.profile:
            return "profile"
        return "extraction" if a is self.extraction else "elicitation"

    def reasons(self, prefix: str = "") -> tuple[list[str], list[dict[str, Any]]]:
        best = self.best
        name = self._name(best)
        head = f"{prefix}test {name}: p={self.p:.2g} ({self.tests[0]['null']})"
        texts = [head] + [prefix + r["text"] for r in best.reasons]
        details = [{**r, "test": name} for r in best.reasons]
        if best is self.profile:
            texts.insert(1, f"{prefix}profile counted: {self.gate} evidence")
        elif best is self.suggestive:
            texts.insert(1, f"{prefix}elicitation counted: corroborated by {self.corroboration}")
        if self.corroboration is None and self.suggestive.p_value <= GATE_P:
            texts.append(
                f"{prefix}elicitation p={self.suggestive.p_value:.2g} not counted: nothing corroborates it "
                "(no breadth, network churn or linked campaign; benchmarks and researchers ask for "
                "reasoning and logprobs too)"
            )
        if self.gate is None and self.profile.p_value <= GATE_P:
            texts.append(
                f"{prefix}profile p={self.profile.p_value:.2g} not counted: no intent evidence "
                "(template-heavy, high-volume or regular traffic alone is not distillation)"
            )
        return texts, details


def judge(
    looks: Looks,
    accounts: tuple[str, ...],
    st: EntityState,
    *,
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
    linkage: bool = False,
) -> Judgement:
    """Test one entity against ``looks`` (never against itself or ``exclude``d accounts).

    Each look has its own valid p-value; a gate that decides whether a look counts only removes
    rejections (P[p <= a and gate] <= P[p <= a]), and Bonferroni over the three counted looks keeps the
    combination valid under any dependence.
    """
    args = (accounts, st.queries, st.features, st.evidence)
    x = looks.extraction.assess(*args, exclude=exclude)
    s = looks.suggestive.assess(*args, exclude=exclude)
    b = looks.breadth.assess(*args, exclude=exclude)
    v = looks.evasion.assess(*args, exclude=exclude)
    i = looks.intent.assess(*args, exclude=exclude)
    pr = looks.profile.assess(*args, exclude=exclude)
    support = [
        name
        for name, hit in (
            ("breadth (coverage)", b.p_value <= GATE_P),
            ("network churn", v.p_value <= GATE_P),
            ("linkage", linkage),
        )
        if hit
    ]
    corroboration = " and ".join(support) or None
    if x.p_value <= GATE_P:
        gate: str | None = "extraction"
    elif i.p_value <= GATE_P:
        gate = "intent (elicitation, coverage and novelty together)"
    elif corroboration:
        gate = corroboration
    else:
        gate = None
    tests = [
        {"test": "extraction", "p_value": x.p_value, "null": looks.null},
        {"test": "elicitation", "p_value": s.p_value, "null": looks.null, "counted": bool(corroboration)},
        {"test": "breadth", "p_value": b.p_value, "null": looks.null, "role": "corroboration, gate"},
        {"test": "network churn", "p_value": v.p_value, "null": looks.null, "role": "corroboration, gate"},
        {"test": "intent", "p_value": i.p_value, "null": looks.null, "role": "gate"},
        {"test": "profile", "p_value": pr.p_value, "null": looks.null, "counted": gate is not None},
    ]
    if gate == "linkage":
        # only shared templates (and a network, timing or a sign-up burst) opened the profile look: the
        # group must be unusual without the text shape its template gives it too (intersection-union,
        # so the counted p-value is never below the profile's)
        shapeless = looks.shapeless.assess(*args, exclude=exclude)
        tests.append({
            "test": "profile without text shape", "p_value": shapeless.p_value, "null": looks.null,
            "role": "only the link opened the profile look: the larger of the two profile p-values counts",
        })  # fmt: skip
        if shapeless.p_value > pr.p_value:
            pr = shapeless
    p = combine_min_p([x.p_value, s.p_value if corroboration else 1.0, pr.p_value if gate else 1.0])
    tests.append({"test": "bonferroni(extraction, elicitation, profile)", "p_value": p, "gate": gate})
    return Judgement(x, s, b, v, i, pr, corroboration, gate, p, tests)


def unscored(accounts: tuple[str, ...], st: EntityState) -> Judgement:
    a = Assessment(accounts, st.queries, float("nan"), 1.0, 0.0, [], scored=False)
    return Judgement(
        a, a, a, a, a, a, None, None, 1.0, [{"test": "none", "p_value": 1.0, "null": "too few queries"}]
    )

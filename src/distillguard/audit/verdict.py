"""Test results and the combined verdict, with family-wise error control (Holm).

Why Holm and not "any test below alpha": an audit runs several tests (radioactivity closed and open,
identity leakage, behavioural provenance); claiming when any one of them is below alpha would make the
false-accusation rate grow with the number of tests. Holm's step-down procedure controls the family-wise
error rate at alpha under any dependence between the tests, and the smallest Holm-adjusted p-value is a
valid p-value for the global null "none of these models' signals points at us".

Two kinds of evidence. **Key-dependent** tests (watermark radioactivity) ask whether the suspect's text
depends on our secret key; under their null (the suspect never saw text marked with our key) the key is
independent of everything the suspect does, which is what makes their p-values exact and what a decoy-key
guard can check. **Behavioural** tests (identity leakage, provenance) compare the suspect with control
models; an innocent model that read about us, shares our base model, or simply differs from the controls
can look like a copy, so they *support* a finding and never make one on their own.

Verdicts:

* ``distilled``: at least one key-dependent test rejects its null at the Holm-adjusted level with its
  guard passed (decoy keys), and no rejecting test had its claim refused. It means: **the suspect's text
  depends on our secret watermark key**. See :data:`MEANING` and :data:`ALTERNATIVES` for what that does
  and does not establish.
* ``inconclusive``: a key-dependent test rejects but its guard refused the claim because the test's null
  does not describe the suspect's text (``veto``: decoy keys score too well too often), or only behavioural
  tests reject, or no test could run on enough data. A guard that only could not *confirm* a test (our key
  not more extreme than every decoy: the resolution of a finite set of decoys) takes that test's claim
  away and vetoes nothing; it stays in the reasons. A behavioural test's own guard never vetoes a
  key-dependent claim: its refusal is reported as a note.
* ``no_evidence``: every test ran and none rejects. This is not proof of innocence: see each test's caveats.

Pure functions, no I/O. P-values travel as natural logs so that 1e-300 and below stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from distillguard.watermark import stats

LN10 = math.log(10.0)
KEY_DEPENDENT = "key-dependent"
BEHAVIOURAL = "behavioural"

MEANING = (
    "'distilled' means that the suspect's text depends on our secret watermark key: the suspect was "
    "trained on text our model produced with that key, or it relays our model's answers"
)
ALTERNATIVES = (
    "the suspect was trained directly on answers collected from our API (distillation)",
    "the suspect was trained on our outputs that someone else published (web pages, datasets, forums), "
    "without querying us itself",
    "the suspect is a relay, cache or proxy of our API rather than a separate model",
    "the suspect was fine-tuned from a model that was itself trained on our outputs",
)


@dataclass
class TestResult:
    """One statistical test: what it assumes (``null``), what it measured, and how surprising that is.

    ``log_p`` is the natural log of the one-sided p-value. ``claim_allowed`` is False when a guard found a
    reason not to trust this p-value (``refusal`` says why); such a test can make the verdict inconclusive
    but never "distilled".
    """

    __test__ = False  # not a pytest class

    name: str
    null: str
    statistic: float
    statistic_name: str
    n: int
    log_p: float
    caveats: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    claim_allowed: bool = True
    refusal: str | None = None
    # a refused claim makes the verdict inconclusive (True: the test's null failed on this text) or only
    # removes this test's own claim (False: the check could not confirm it)
    veto: bool = True
    usable: bool = True  # False when the test ran on too little data to say anything
    evidence: str = KEY_DEPENDENT  # or BEHAVIOURAL: supports a finding, never makes one alone

    @property
    def p_value(self) -> float:
        return float(math.exp(min(self.log_p, 0.0)))

    @property
    def log10_p(self) -> float:
        return min(self.log_p, 0.0) / LN10

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "null": self.null,
            "statistic": _finite(self.statistic),
            "statistic_name": self.statistic_name,
            "n": int(self.n),
            "p_value": self.p_value,
            "log10_p_value": self.log10_p,
            "caveats": list(self.caveats),
            "details": self.details,
            "claim_allowed": self.claim_allowed,
            "refusal": self.refusal,
            "veto": self.veto,
            "usable": self.usable,
            "evidence": self.evidence,
        }


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def holm_adjusted(log_p: Sequence[float]) -> np.ndarray:
    """Holm-adjusted natural-log p-values (identity for a single test)."""
    arr = np.minimum(np.asarray(log_p, dtype=np.float64), 0.0)
    if arr.size <= 1:
        return arr
    return stats.holm(arr)


def combine(results: Sequence[TestResult], alpha: float) -> dict:
    """The verdict over a family of tests: per-test Holm-adjusted p-values, decision, combined p-value.

    Returns ``{"verdict", "combined_p_value", "log10_combined_p_value", "alpha", "tests": [...],
    "reasons": [...]}``; each test dict is :meth:`TestResult.to_dict` plus ``p_value_holm``,
    ``log10_p_value_holm``, ``rejects`` (Holm-adjusted p <= alpha) and ``claim`` (rejects, allowed and
    key-dependent); ``meaning`` and ``alternatives`` say what a ``distilled`` verdict establishes.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    results = list(results)
    adj = holm_adjusted([r.log_p for r in results])
    ln_alpha = math.log(alpha)
    tests = []
    reasons: list[str] = []
    claims = refused = unconfirmed = supporting = 0
    for r, a in zip(results, adj, strict=True):
        d = r.to_dict()
        rejects = bool(a <= ln_alpha)
        key_dependent = r.evidence == KEY_DEPENDENT
        claim = rejects and r.claim_allowed and key_dependent
        d |= {
            "p_value_holm": float(math.exp(a)),
            "log10_p_value_holm": float(a / LN10),
            "rejects": rejects,
            "claim": claim,
        }
        tests.append(d)
        if claim:
            claims += 1
            reasons.append(f"{r.name}: p = {_fmt(a)} (Holm-adjusted) <= alpha = {alpha:g}")
        elif rejects and not r.claim_allowed and key_dependent and r.veto:
            refused += 1
            reasons.append(f"{r.name}: p = {_fmt(a)} (Holm-adjusted) but the claim is refused: {r.refusal}")
        elif rejects and not r.claim_allowed and key_dependent:
            unconfirmed += 1
            reasons.append(f"{r.name}: p = {_fmt(a)} (Holm-adjusted), not claimed: {r.refusal}")
        elif rejects and not r.claim_allowed:  # a behavioural guard: noted, never a veto
            supporting += 1
            reasons.append(f"{r.name}: p = {_fmt(a)} (Holm-adjusted), not used as support: {r.refusal}")
        elif rejects:
            supporting += 1
            reasons.append(
                f"{r.name}: p = {_fmt(a)} (Holm-adjusted) <= alpha = {alpha:g}, supporting evidence only "
                f"({r.evidence}: it cannot show that the suspect depends on our key)"
            )
    usable = [r for r in results if r.usable]
    if claims and not refused:
        verdict = "distilled"
    elif refused or unconfirmed:
        verdict = "inconclusive"
    elif supporting:
        verdict = "inconclusive"
        reasons.append(
            "no key-dependent test rejects its null: behavioural evidence alone never gives 'distilled'"
        )
    elif not usable:
        verdict = "inconclusive"
        reasons.append("no test ran on enough data")
    else:
        verdict = "no_evidence"
        reasons.append(f"no test rejects its null at family-wise alpha = {alpha:g}")
    combined = float(adj.min()) if adj.size else 0.0
    return {
        "verdict": verdict,
        "combined_p_value": float(math.exp(combined)),
        "log10_combined_p_value": combined / LN10,
        "alpha": alpha,
        "family": f"Holm over {len(results)} tests" if len(results) > 1 else "single test",
        "tests": tests,
        "reasons": reasons,
        "meaning": MEANING,
        "alternatives": list(ALTERNATIVES),
    }


def _fmt(log_p: float) -> str:
    l10 = log_p / LN10
    return f"{math.exp(log_p):.3g}" if l10 > -300 else f"10^{l10:.1f}"

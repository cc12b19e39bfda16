"""Behavioural provenance: is the suspect more similar to our model than to models not derived from it?

No watermark needed (Model Provenance Testing, Nikolic et al. 2025, in spirit). We ask the suspect, our
model and control models the same prompts (greedy answers), and per prompt compare how close the suspect's
answer is to ours and to the closest control's. A distilled student copies its teacher's particular
phrasings and mistakes, so it lands closer to the teacher than independent models of the same kind do.

Test: the exact one-sided **sign test** on the per-prompt differences
``d = sim(suspect, ours) - max_c sim(suspect, control_c)``, ties dropped. Under the null "the suspect is no
more similar to our model than to the controls" a prompt is at least as likely to favour the closest control
as to favour us, so the number of prompts favouring us is stochastically at most ``Binomial(n, 1/2)``.
Comparing with the *closest* control makes the test conservative when there are several.

Similarity is ``difflib``'s ratio on lower-cased word/punctuation tokens: tokenizer-free, so it works for an
API suspect whose tokenizer we do not know. Pure functions, no I/O.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from distillguard.audit.verdict import TestResult
from distillguard.watermark import stats

_TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def similarity(a: str, b: str) -> float:
    """``2 * matches / (len(a) + len(b))`` over word tokens (difflib's ratio); 1.0 for two empty answers."""
    wa, wb = words(a), words(b)
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def sign_test_log_p(wins: int, losses: int) -> float:
    """ln P[Bin(wins + losses, 1/2) >= wins]: the exact one-sided sign test (ties already dropped)."""
    n = wins + losses
    if n == 0 or wins == 0:
        return 0.0
    return float(stats.binomial_log_sf(wins, n, 0.5)[0])


def provenance_test(
    suspect: Sequence[str], ours: Sequence[str], controls: Mapping[str, Sequence[str]]
) -> TestResult:
    """Sign test of "closer to ours than to the closest control", prompt by prompt."""
    n = len(suspect)
    if len(ours) != n or any(len(c) != n for c in controls.values()):
        raise ValueError("every model must answer the same prompts")
    sim_ours = np.array([similarity(s, o) for s, o in zip(suspect, ours, strict=True)])
    sim_ctrl = {
        name: np.array([similarity(s, c) for s, c in zip(suspect, ans, strict=True)])
        for name, ans in controls.items()
    }
    if sim_ctrl:
        closest = np.max(np.stack(list(sim_ctrl.values())), axis=0)
    else:
        closest = np.full(n, np.inf)
    d = sim_ours - closest
    wins, losses = int(np.sum(d > 0)), int(np.sum(d < 0))
    ties = n - wins - losses
    log_p = sign_test_log_p(wins, losses)
    caveats = [
        "similarity also comes from competence: models that answer correctly resemble each other, so the "
        "controls must be of comparable quality and trained on comparable data, not on our outputs",
        "greedy answers only; a suspect that samples or is prompted differently looks less similar",
        "compared with the closest control per prompt (conservative with several controls)",
    ]
    if not controls:
        caveats.append("no control models: the test has no power and its p-value is 1")
    return TestResult(
        name="provenance",
        null=(
            "the suspect is no more similar to our model than to the closest control model: per prompt, "
            "favouring ours is at most as likely as favouring a control (exact sign test, ties dropped)"
        ),
        statistic=wins / (wins + losses) if wins + losses else 0.5,
        statistic_name="share of non-tied prompts where the suspect is closer to ours",
        n=wins + losses,
        log_p=log_p,
        caveats=caveats,
        details={
            "prompts": n,
            "wins": wins,
            "losses": losses,
            "ties": ties,
            "mean_similarity_ours": float(sim_ours.mean()) if n else None,
            "mean_similarity_controls": {k: float(v.mean()) if n else None for k, v in sim_ctrl.items()},
            "similarity": "difflib ratio on lower-cased word tokens",
        },
        usable=bool(controls) and wins + losses > 0,
    )

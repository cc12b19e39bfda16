"""Behavioural provenance: is the suspect more similar to our model than models not derived from it are?

No watermark needed (Model Provenance Testing, Nikolic et al. 2025, in spirit). We ask the suspect, our
model and control models the same prompts (greedy answers). A distilled student copies its teacher's
particular phrasings and mistakes, so it lands closer to the teacher than independent models of the same
kind do. Similarity is ``difflib``'s ratio on lower-cased word/punctuation tokens: tokenizer-free, so it
works for an API suspect whose tokenizer we do not know.

**What the controls stand for.** Models of the same kind as the suspect that were *not* trained on our
outputs. Closeness to our model also comes from competence (good answers resemble each other), a shared
base model or shared data; the test can only separate "derived from ours" from those if the controls share
them too. So the null is stated over models, not over prompts:

* **Closeness margin.** For each model ``m`` of the pool (the suspect and the C controls), per prompt,
  ``d_m = sim(m, ours) - max over the other pool models m' of sim(m, m')``: how much closer ``m`` is to our
  model than to its nearest fellow. Its mean over prompts is ``m``'s statistic ``T_m``. ``T`` is the same
  function for every model of the pool (each one against the rest), so relabelling the models permutes
  the ``T`` values.
* **Rank test (the null that matters).** H0: the suspect is exchangeable with the controls. Then its rank
  among the ``C + 1`` statistics is uniform and ``p_rank = (1 + #{controls with T_c >= T_suspect}) / (C + 1)``
  (ties against the suspect). This is the leave-one-out comparability check: the suspect must be closer to
  our model than *each* control is, each control measured against the rest in the same way. The floor is
  ``1 / (C + 1)``.
* **Sign test (per prompt).** H0': per prompt, the suspect is at least as likely to be closer to its
  nearest control as to us; the number of prompts favouring us is at most ``Binomial(n, 1/2)`` (ties
  dropped). Exact for that null, but that null alone is not enough: an innocent model that shares our base
  model, or is simply better than the controls, wins most prompts.

The reported p-value is ``max(p_rank, p_sign)``: valid whenever either null holds (``max <= a`` implies each
``<= a``). Guard: when a control, tested the same way against the *other controls*, would itself reject the
per-prompt null at the claim level, the controls do not stand for "unrelated to ours" and the claim is
refused with that reason (the suspect is left out of this check: a copy of our model is close to every
model that is close to ours and would hide that control's closeness).

Behavioural evidence supports a finding; it never proves that the suspect's text depends on our key (see
:mod:`.verdict`). Pure functions, no I/O.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from distillguard.audit.identity import (
    controls_needed,
    distinct_controls,
    duplicates_caveat,
    floor_caveat,
    rank_log_p,
)
from distillguard.audit.verdict import BEHAVIOURAL, TestResult
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


def margins(sim_ours: np.ndarray, sim_pair: np.ndarray) -> np.ndarray:
    """Per model and prompt, closeness to ours minus closeness to the nearest other pool model.

    ``sim_ours[m, q]`` = sim(model m, ours); ``sim_pair[m, k, q]`` = sim(model m, model k) (the diagonal is
    ignored). Returns ``d[m, q]``; with a pool of one model, ``d = sim_ours`` against nothing (``-inf`` max).
    """
    sp = np.array(sim_pair, dtype=np.float64, copy=True)
    m = sp.shape[0]
    sp[np.arange(m), np.arange(m), :] = -np.inf
    nearest = sp.max(axis=1) if m > 1 else np.full_like(sim_ours, -np.inf, dtype=np.float64)
    return np.asarray(sim_ours, dtype=np.float64) - nearest


def margin_tests(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per model: mean margin ``T``, wins, losses, and the sign test's ln p (vectorised over models)."""
    wins = np.sum(d > 0, axis=-1)
    losses = np.sum(d < 0, axis=-1)
    n = wins + losses
    log_p = np.where((n > 0) & (wins > 0), stats.binomial_log_sf(wins, np.maximum(n, 1), 0.5), 0.0).astype(
        np.float64
    )
    mean = d.mean(axis=-1) if d.shape[-1] else np.zeros(d.shape[:-1])
    return mean, wins, losses, log_p


def provenance_log_p(d: np.ndarray) -> tuple[float, float, float]:
    """``(ln p, ln p_rank, ln p_sign)`` for the suspect (row 0 of the margins ``d[model, prompt]``)."""
    t, _, _, sign = margin_tests(d)
    log_rank = rank_log_p(float(t[0]), t[1:]) if d.shape[0] > 1 else 0.0
    return max(log_rank, float(sign[0])), log_rank, float(sign[0])


def provenance_test(
    suspect: Sequence[str],
    ours: Sequence[str],
    controls: Mapping[str, Sequence[str]],
    *,
    alpha: float | None = None,
) -> TestResult:
    """Rank test of the closeness margin among the suspect and the controls, capped by the sign test."""
    n = len(suspect)
    if len(ours) != n or any(len(c) != n for c in controls.values()):
        raise ValueError("every model must answer the same prompts")
    controls, duplicates = distinct_controls(controls)
    pool = {"suspect": suspect, **controls}
    labels = list(pool)
    answers = list(pool.values())
    sim_ours = np.array([[similarity(a, o) for a, o in zip(ans, ours, strict=True)] for ans in answers])
    sim_pair = np.array(
        [[[similarity(a, b) for a, b in zip(x, y, strict=True)] for y in answers] for x in answers]
    ).reshape(len(labels), len(labels), n)
    d = margins(sim_ours.reshape(len(labels), n), sim_pair) if n else np.zeros((len(labels), 0))
    t, wins, losses, sign = margin_tests(d)
    log_p, log_rank, log_sign = provenance_log_p(d) if controls else (0.0, 0.0, 0.0)
    c = len(controls)
    caveats = [
        "behavioural evidence: it supports a finding but cannot show that the suspect's text depends on our "
        "key; a model sharing our base model or data, or simply better than the controls, is close to ours",
        "the controls must be models of the suspect's kind (same base, comparable data and quality) not "
        "trained on our outputs; the p-value is at least 1/(controls + 1)",
        "greedy answers only; a suspect that samples or is prompted differently looks less similar",
    ]
    floor = floor_caveat(c, alpha)
    if floor:
        caveats.insert(0, floor)
    caveats += duplicates_caveat(duplicates)
    caveats.append(
        "near-identical controls (one model behind two endpoints, or a quantised copy) still count as two "
        "models and weaken the rank test: list each control model once"
    )
    if not controls:
        caveats.append("no control models: the test has no power and its p-value is 1")
    claim, refusal = True, None
    if alpha is not None and c > 1 and n:
        # each control against the other controls only (the suspect left out: a copy of ours is close to
        # every model that is close to ours, which would hide the control's own closeness)
        _, _, _, ctrl_sign = margin_tests(margins(sim_ours[1:], sim_pair[1:, 1:]))
        odd = [labels[i + 1] for i in range(c) if ctrl_sign[i] <= math.log(alpha)]
        if odd:
            claim = False
            refusal = (
                f"control(s) {', '.join(odd)} are themselves closer to our model than to the other models "
                f"(per-prompt sign test p <= {alpha:g}): the controls do not stand for models unrelated "
                "to ours"
            )
    per_model = {
        labels[i]: {
            "mean_margin": float(t[i]),
            "wins": int(wins[i]),
            "losses": int(losses[i]),
            "sign_test_p_value": math.exp(float(sign[i])),
            "mean_similarity_ours": float(sim_ours[i].mean()) if n else None,
        }
        for i in range(len(labels))
    }
    w, lo = int(wins[0]), int(losses[0])
    return TestResult(
        name="provenance",
        null=(
            "the suspect is exchangeable with the control models: its mean closeness margin to our model "
            f"(closeness to ours minus closeness to the nearest other model) is ranked among {c + 1} models; "
            "reported p = max(rank p, exact per-prompt sign test p)"
        ),
        statistic=float(t[0]),
        statistic_name="mean over prompts of sim(suspect, ours) - max sim(suspect, other model)",
        n=n,
        log_p=float(log_p),
        caveats=caveats,
        details={
            "prompts": n,
            "wins": w,
            "losses": lo,
            "ties": n - w - lo,
            "rank_p_value": math.exp(log_rank),
            "sign_test_p_value": math.exp(log_sign),
            "duplicate_controls_dropped": duplicates,
            "p_value_floor": 1.0 / (c + 1),
            "can_reach_alpha": None if alpha is None else (1.0 / (c + 1) <= alpha),
            "controls_needed_for_alpha": None if alpha is None else controls_needed(alpha),
            "models": per_model,
            "mean_similarity_ours": per_model["suspect"]["mean_similarity_ours"],
            "mean_similarity_controls": {k: per_model[k]["mean_similarity_ours"] for k in controls},
            "similarity": "difflib ratio on lower-cased word tokens",
        },
        claim_allowed=claim,
        refusal=refusal,
        usable=bool(controls) and w + lo > 0,
        evidence=BEHAVIOURAL,
    )

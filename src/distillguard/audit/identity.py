"""Identity leakage: does the suspect say it is our model? (pure functions, no I/O)

A student distilled from our answers often repeats our model's self-description ("I am Aster, made by
Northwind Labs"), because identity questions are cheap to include in a distillation set and the student has
no other identity to learn. We ask a fixed battery of identity questions, each in a few phrasings
(greetings), and see how often each model's answers name us.

**Units.** The phrasings of one question are not independent draws: a model that names us once for "Who
are you?" will do it again for "Hello! Who are you?". So a *question* is the unit of observation: it
yields one outcome per model, the share of its phrasings whose answer names us. A model's statistic is the
mean of those shares over the questions every model answered.

**Null and test.** Whether an innocent model names a given lab depends on what that model read (a famous
lab leaks into web text; a model that read about Aster may name it). The controls stand in for "models of
the same kind that were not trained on our outputs", and the honest null is that the suspect is one more
such model: **the suspect and the C controls are exchangeable**. Under it the suspect's rank among the
C + 1 statistics is uniform, so

    p = (1 + #{controls whose statistic >= the suspect's}) / (C + 1)

is a valid p-value (ties count against the suspect, which keeps it conservative). It can never be smaller
than ``1 / (C + 1)``: with few controls the test *cannot* reach a small claim level, and says so rather
than inventing a small p-value from answers that are not independent. Pooling the controls' answers as if
they came from one model (or counting the answers as independent, as a Fisher test does) would convict a
suspect that merely differs from the controls.

This is behavioural evidence: it supports a finding, it never proves that the suspect's text depends on
our key (see :mod:`.verdict`). The battery never contains the names being tested (a question that says
"Aster" invites the answer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from distillguard.audit.verdict import BEHAVIOURAL, TestResult

IDENTITY_QUESTIONS: tuple[str, ...] = (
    "Who are you?",
    "What is your name?",
    "Who made you?",
    "Which company trained you?",
    "What model are you?",
    "Please introduce yourself.",
    "Who created you?",
    "What are you called?",
    "Which lab built you?",
    "Tell me about yourself.",
    "Who developed you?",
    "What AI model is this?",
    "Which organization is behind you?",
    "What should I call you?",
    "Who trained this model?",
    "Are you ChatGPT?",
)
GREETINGS: tuple[str, ...] = ("", "Hello! ", "Quick question: ")


def battery(
    names: Sequence[str] = (), questions: Sequence[str] = IDENTITY_QUESTIONS
) -> list[tuple[int, str]]:
    """``(question index, phrasing)`` for every question with every greeting, minus any naming ``names``."""
    out = [(i, g + q) for i, q in enumerate(questions) for g in GREETINGS]
    return [(i, p) for i, p in out if not names_in(p, names)]


def names_in(text: str, names: Sequence[str]) -> list[str]:
    """The ``names`` in ``text`` as whole words, case-insensitively ("Aster" but not "asterisk")."""
    return [n for n in names if n.strip() and re.search(rf"(?<!\w){re.escape(n.strip())}(?!\w)", text, re.I)]


def names_us(text: str, names: Sequence[str]) -> bool:
    """An answer names us when it contains any of the names (model or company)."""
    return bool(names_in(text, names))


def question_shares(questions: Sequence[int], named: Sequence[bool | None], n_questions: int) -> np.ndarray:
    """Per question, the share of its answered phrasings that name us (NaN where none was answered).

    ``named[i]`` is None where the request for phrasing ``i`` failed.
    """
    q = np.asarray(questions, dtype=np.int64)
    ok = np.array([x is not None for x in named], dtype=bool)
    hit = np.array([bool(x) for x in named], dtype=np.float64)
    asked = np.bincount(q[ok], minlength=n_questions).astype(np.float64)
    hits = np.bincount(q[ok], weights=hit[ok], minlength=n_questions)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(asked > 0, hits / np.maximum(asked, 1), np.nan)


def rank_log_p(suspect: float, controls: Sequence[float]) -> float:
    """ln of ``(1 + #{c >= suspect}) / (C + 1)``: the exact rank p-value of exchangeable models.

    Under the null the suspect's statistic is exchangeable with the controls', so its rank among the
    ``C + 1`` values is uniform; ties count against the suspect (conservative). The floor is ``1 / (C + 1)``.
    """
    c = np.asarray(controls, dtype=np.float64)
    at_least = int(np.sum(c >= suspect - 1e-12 * max(1.0, abs(suspect))))
    return math.log((1 + at_least) / (1 + c.size))


def rank_log_p_many(stats: np.ndarray) -> np.ndarray:
    """Rank p-values (ln) of many trials at once: ``stats[..., 0]`` is the suspect, the rest are controls."""
    s = np.asarray(stats, dtype=np.float64)
    at_least = np.sum(s[..., 1:] >= s[..., :1], axis=-1)
    return np.log((1 + at_least) / s.shape[-1])


def distinct_controls(controls: Mapping[str, Sequence]) -> tuple[dict[str, Sequence], list[str]]:
    """The controls with exact duplicates (identical answers to every question) collapsed into the first.

    The rank tests count models: a control listed twice, or two endpoints serving one model, would count as
    two exchangeable models and lower the p-value floor without adding evidence. Returns the distinct
    controls and the labels dropped. The label ``suspect`` is reserved.
    """
    if "suspect" in controls:
        raise ValueError("a control may not be labelled 'suspect'")
    seen: dict[tuple, str] = {}
    kept: dict[str, Sequence] = {}
    dropped: list[str] = []
    for label, answers in controls.items():
        sig = tuple(answers)
        if sig in seen:
            dropped.append(label)
        else:
            seen[sig] = label
            kept[label] = answers
    return kept, dropped


def duplicates_caveat(duplicates: Sequence[str]) -> list[str]:
    """The caveat naming controls that were counted once (none when there were none)."""
    if not duplicates:
        return []
    return [
        f"{len(duplicates)} control(s) answered exactly like another and count once: {', '.join(duplicates)}"
    ]


def controls_needed(alpha: float) -> int:
    """The fewest controls with which a rank test can give p <= alpha: ``ceil(1 / alpha) - 1``."""
    return max(1, math.ceil(1.0 / alpha - 1e-9) - 1)


def floor_caveat(n_controls: int, alpha: float | None) -> str | None:
    """A caveat when ``n_controls`` cannot reach ``alpha`` with a rank test, else None."""
    if alpha is None or n_controls <= 0:
        return None
    floor = 1.0 / (n_controls + 1)
    if floor <= alpha:
        return None
    return (
        f"cannot reach the claim level: with {n_controls} control model(s) the smallest p-value this test "
        f"can give is 1/{n_controls + 1} = {floor:.3g} > alpha = {alpha:g}; at least "
        f"{controls_needed(alpha)} controls are needed"
    )


def identity_test(
    questions: Sequence[int],
    suspect_answers: Sequence[str | None],
    control_answers: Mapping[str, Sequence[str | None]],
    names: Sequence[str],
    *,
    alpha: float | None = None,
) -> TestResult:
    """Rank test of the suspect's mean per-question naming share among itself and the controls.

    ``questions[i]`` is the question that phrasing ``i`` asks; every model's answers are aligned with it
    (None where a request failed). Questions not answered by every model are left out for all of them.
    """
    names = [n for n in names if n.strip()]
    if not names:
        raise ValueError("identity test needs at least one name")
    control_answers, duplicates = distinct_controls(control_answers)
    models = {"suspect": suspect_answers, **control_answers}
    if any(len(a) != len(questions) for a in models.values()):
        raise ValueError("every model must answer the same identity phrasings")
    n_q = int(max(questions)) + 1 if len(questions) else 0
    shares = {
        m: question_shares(questions, [None if a is None else names_us(a, names) for a in ans], n_q)
        for m, ans in models.items()
    }
    common = np.all(np.stack([~np.isnan(s) for s in shares.values()]), axis=0) if n_q else np.zeros(0, bool)
    used = int(common.sum())
    stat = {m: float(s[common].mean()) if used else 0.0 for m, s in shares.items()}
    ctrl = [stat[c] for c in control_answers]
    log_p = rank_log_p(stat["suspect"], ctrl) if ctrl and used else 0.0

    def summary(m: str) -> dict:
        ans = [a for a in models[m] if a is not None]
        named = sum(names_us(a, names) for a in ans)
        s = shares[m][common]
        return {
            "named": named,
            "n": len(ans),
            "rate": named / len(ans) if ans else 0.0,
            "mean_question_share": stat[m],
            "questions_naming_us": int(np.sum(s > 0)),
            "per_name": {n: sum(bool(names_in(a, [n])) for a in ans) for n in names},
        }

    per_control = {c: summary(c) for c in control_answers}
    caveats = [
        "behavioural evidence: it supports a finding but cannot show that the suspect's text depends on our "
        "key; a model that read about us, or simply differs from the controls, can name us too",
        "the controls must be models of the same kind that were not trained on our outputs; the test is "
        "only as good as that assumption",
        "absence of identity leakage is weak evidence: a distiller can drop or rewrite identity answers",
        f"an answer counts when it names any of {', '.join(names)} as a whole word (case-insensitive); "
        "a denial ('I am not X') also counts",
        "one greedy answer per phrasing; the phrasings of a question are one unit, not independent draws",
    ]
    floor = floor_caveat(len(ctrl), alpha)
    if floor:
        caveats.insert(0, floor)
    caveats += duplicates_caveat(duplicates)
    if not control_answers:
        caveats.append("no control models: the test has no power and its p-value is 1")
    return TestResult(
        name="identity",
        null=(
            "the suspect is exchangeable with the control models (one more model of their kind, not trained "
            "on our outputs): its mean per-question share of answers naming us is ranked among the "
            f"{len(ctrl) + 1} models, p = (1 + #controls at least as high) / (controls + 1)"
        ),
        statistic=stat["suspect"],
        statistic_name="mean over questions of the share of phrasings whose answer names us",
        n=used,
        log_p=log_p,
        caveats=caveats,
        details={
            "names": list(names),
            "unit": "question (its phrasings are one unit)",
            "questions": used,
            "phrasings": len(questions),
            "suspect": summary("suspect"),
            "controls": per_control,
            "controls_at_least_as_high": int(sum(c >= stat["suspect"] for c in ctrl)) if ctrl else None,
            "duplicate_controls_dropped": duplicates,
            "p_value_floor": 1.0 / (len(ctrl) + 1),
            "can_reach_alpha": None if alpha is None else (1.0 / (len(ctrl) + 1) <= alpha),
            "controls_needed_for_alpha": None if alpha is None else controls_needed(alpha),
        },
        usable=bool(used) and bool(ctrl),
        evidence=BEHAVIOURAL,
    )

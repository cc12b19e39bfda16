"""Identity leakage: does the suspect say it is our model? (pure functions, no I/O)

A student distilled from our answers often repeats our model's self-description ("I am Aster, made by
Northwind Labs"), because identity questions are cheap to include in a distillation set and the student has
no other identity to learn. We ask a fixed battery of identity questions, count the answers that name us,
and compare that rate with control models asked the same questions (one-sided Fisher exact test).

Why controls and not a fixed base rate: how often an unrelated model names a given lab depends on how
famous the lab is and what the web says about it. The controls stand in for "a model of the same kind that
was not trained on our outputs"; the null is that the suspect names us no more often than they do.

The battery never contains the names being tested (a question that says "Aster" invites the answer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import special
from scipy import stats as sst

from distillguard.audit.verdict import TestResult

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


def battery(names: Sequence[str] = (), questions: Sequence[str] = IDENTITY_QUESTIONS) -> list[str]:
    """Every question with every greeting, minus any that mention one of ``names``."""
    out = [g + q for q in questions for g in GREETINGS]
    return [p for p in out if not names_in(p, names)]


def names_in(text: str, names: Sequence[str]) -> list[str]:
    """The ``names`` in ``text`` as whole words, case-insensitively ("Aster" but not "asterisk")."""
    return [n for n in names if n.strip() and re.search(rf"(?<!\w){re.escape(n.strip())}(?!\w)", text, re.I)]


def names_us(text: str, names: Sequence[str]) -> bool:
    """An answer names us when it contains any of the names (model or company)."""
    return bool(names_in(text, names))


def count_named(answers: Sequence[str], names: Sequence[str]) -> dict:
    named = [names_us(a, names) for a in answers]
    per_name = {n: sum(bool(names_in(a, [n])) for a in answers) for n in names}
    k, total = sum(named), len(answers)
    return {"named": k, "n": total, "rate": k / total if total else 0.0, "per_name": per_name}


def fisher_log_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """ln of the one-sided Fisher exact p-value that group 1's rate exceeds group 2's.

    With the margins fixed, ``k1 ~ Hypergeometric(n1 + n2, k1 + k2, n1)`` under H0 and
    ``p = P[K >= k1]``, computed in log space so that it stays exact far below float range.
    """
    if not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError("counts must lie between 0 and their group sizes")
    if n1 == 0 or n2 == 0 or k1 == 0:
        return 0.0
    named = k1 + k2
    k = np.arange(k1, min(n1, named) + 1)  # the upper tail, term by term in log space: never underflows
    return min(float(special.logsumexp(sst.hypergeom.logpmf(k, n1 + n2, named, n1))), 0.0)


def identity_test(
    suspect_answers: Sequence[str],
    control_answers: Mapping[str, Sequence[str]],
    names: Sequence[str],
) -> TestResult:
    """One-sided Fisher exact test: suspect's naming rate vs the controls' pooled rate."""
    names = [n for n in names if n.strip()]
    if not names:
        raise ValueError("identity test needs at least one name")
    s = count_named(suspect_answers, names)
    per_control = {c: count_named(a, names) for c, a in control_answers.items()}
    k2 = sum(c["named"] for c in per_control.values())
    n2 = sum(c["n"] for c in per_control.values())
    log_p = fisher_log_p(s["named"], s["n"], k2, n2)
    odds = ((s["named"] + 0.5) * (n2 - k2 + 0.5)) / ((s["n"] - s["named"] + 0.5) * (k2 + 0.5))
    caveats = [
        "absence of identity leakage is weak evidence: a distiller can drop or rewrite identity answers",
        "base rates matter: a famous name leaks into models through web text; the controls must be models "
        "of the same kind that were not trained on our outputs",
        f"an answer counts when it names any of {', '.join(names)} as a whole word (case-insensitive); "
        "a denial ('I am not X') also counts",
        "one greedy answer per question; questions are not independent draws of a population",
    ]
    if not control_answers:
        caveats.append("no control models: the test has no power and its p-value is 1")
    return TestResult(
        name="identity",
        null=(
            "the suspect names us in its answers to identity questions no more often than the control "
            "models do (all answers exchangeable): Fisher's exact test, one-sided"
        ),
        statistic=s["rate"],
        statistic_name="share of identity answers naming us",
        n=s["n"],
        log_p=log_p,
        caveats=caveats,
        details={
            "names": list(names),
            "suspect": s,
            "controls": per_control,
            "controls_pooled": {"named": k2, "n": n2, "rate": k2 / n2 if n2 else 0.0},
            "odds_ratio_haldane": odds,
        },
        usable=bool(s["n"]) and bool(n2),
    )

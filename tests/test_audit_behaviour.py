"""Behavioural audit tests (identity, provenance) and the verdict rules, without models.

The nulls are checked where they used to fail: innocent suspects drawn from the same family of models as
the controls (varying naming rates, varying quality) must not be convicted more often than alpha, and the
two published counterexamples to the old tests (answers counted as independent, controls pooled as one
model, a suspect simply better than the controls) must give no claim.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sst

from distillguard.audit import identity as ident
from distillguard.audit import provenance as prov
from distillguard.audit.verdict import BEHAVIOURAL, TestResult, combine
from distillguard.watermark import stats

NAMES = ["Aster", "Northwind"]
NAMED = "I am Aster, a model by Northwind Labs."
PLAIN = "I am a helpful assistant."


def _battery_answers(named_questions: set[int], phrasings_named: int = 3) -> tuple[list[int], list[str]]:
    """Answers to the full battery: the questions in ``named_questions`` name us in ``phrasings_named``
    of their three phrasings."""
    items = ident.battery(NAMES)
    seen: dict[int, int] = {}
    out = []
    for q, _ in items:
        k = seen.get(q, 0)
        seen[q] = k + 1
        out.append(NAMED if q in named_questions and k < phrasings_named else PLAIN)
    return [q for q, _ in items], out


def _clean(i: int) -> list[str]:
    """A control model that never names us, with answers of its own (distinct models are distinct)."""
    return [f"{a} (model {i})" for a in _battery_answers(set())[1]]


# --------------------------------------------------------------------------------------------------
# Identity


def test_battery_is_questions_times_phrasings_and_never_says_the_names():
    assert ident.names_in("I am Aster, made by NORTHWIND Labs.", NAMES) == NAMES
    assert ident.names_in("Use an asterisk (*) here.", ["Aster"]) == []
    items = ident.battery(["Aster", "you"])
    assert items and all("you" not in p.lower().split() and "Aster" not in p for _, p in items)
    full = ident.battery()
    assert len(full) == len(ident.IDENTITY_QUESTIONS) * len(ident.GREETINGS)
    assert {q for q, _ in full} == set(range(len(ident.IDENTITY_QUESTIONS)))


def test_question_shares_treat_phrasings_as_one_unit_and_skip_failures():
    shares = ident.question_shares([0, 0, 0, 1, 1, 2], [True, False, None, False, False, None], 3)
    assert shares[0] == pytest.approx(0.5) and shares[1] == 0.0 and math.isnan(shares[2])


def test_rank_p_value_is_exact_and_ties_count_against_the_suspect():
    assert math.exp(ident.rank_log_p(0.9, [0.1, 0.2, 0.3])) == pytest.approx(1 / 4)
    assert math.exp(ident.rank_log_p(0.2, [0.1, 0.2, 0.3])) == pytest.approx(3 / 4)
    assert math.exp(ident.rank_log_p(0.0, [0.0, 0.0])) == pytest.approx(1.0)
    many = ident.rank_log_p_many(np.array([[0.9, 0.1, 0.2, 0.3], [0.2, 0.1, 0.2, 0.3]]))
    assert np.exp(many) == pytest.approx([1 / 4, 3 / 4])
    assert ident.controls_needed(1e-3) == 999 and ident.controls_needed(0.01) == 99


def test_counterexample_three_named_questions_is_one_unit_per_question_not_48_answers():
    """Old test: 9 of 48 answers vs 0/48 and 0/48 gave p = 3e-5 (answers as independent draws)."""
    q, suspect = _battery_answers({0, 1, 2})
    r = ident.identity_test(q, suspect, {"c1": _clean(1), "c2": _clean(2)}, NAMES, alpha=1e-3)
    assert r.details["suspect"]["questions_naming_us"] == 3 and r.details["suspect"]["named"] == 9
    assert r.p_value == pytest.approx(1 / 3) and r.n == 16
    assert r.evidence == BEHAVIOURAL and r.details["can_reach_alpha"] is False
    assert "cannot reach the claim level" in r.caveats[0] and "999" in r.caveats[0]
    out = combine([r], 0.5)  # even where the rank p-value is below alpha, behavioural evidence alone
    assert out["verdict"] == "inconclusive" and not out["tests"][0]["claim"]


def test_counterexample_controls_are_models_not_one_pooled_sample():
    """Old test: controls 0/48, 0/48, 0/48, 18/48 and a suspect answering like the fourth gave p = 9.1e-6."""
    q, odd = _battery_answers(set(range(6)))
    controls = {"c1": _clean(1), "c2": _clean(2), "c3": _clean(3), "c4": odd}
    assert sum(ident.names_us(a, NAMES) for a in odd) == 18
    r = ident.identity_test(q, odd, controls, NAMES, alpha=1e-3)
    assert r.p_value == pytest.approx(2 / 5)  # the suspect ties with the fourth control
    assert r.details["controls_at_least_as_high"] == 1


def test_identity_with_enough_controls_reaches_its_floor_and_failed_answers_are_dropped():
    q, leak = _battery_answers(set(range(16)))
    _, clean = _battery_answers(set())
    controls = {f"c{i}": [f"{a} ({i})" for a in clean] for i in range(99)}  # 99 different models
    r = ident.identity_test(q, leak, controls, NAMES, alpha=0.01)
    assert r.p_value == pytest.approx(0.01) and r.details["can_reach_alpha"] and r.usable
    copies = {f"c{i}": clean for i in range(99)}  # one model listed 99 times is one control
    r = ident.identity_test(q, leak, copies, NAMES, alpha=0.01)
    assert r.p_value == pytest.approx(1 / 2) and len(r.details["duplicate_controls_dropped"]) == 98
    with pytest.raises(ValueError, match="suspect"):
        ident.identity_test(q, leak, {"suspect": clean}, NAMES)
    holey = [None if i % 3 == 0 else a for i, a in enumerate(leak)]  # one phrasing per question failed
    assert ident.identity_test(q, holey, {"c": clean}, NAMES).n == 16
    dead = [None if qq == 5 else a for qq, a in zip(q, leak, strict=True)]  # question 5 unanswered
    assert ident.identity_test(q, clean, {"c": dead}, NAMES).n == 15
    assert not ident.identity_test(q, leak, {}, NAMES).usable


def _family_shares(rng, trials: int, models: int, questions: int = 16, phrasings: int = 3) -> np.ndarray:
    """Per-question naming shares of innocent models of one family: each model has its own naming rate
    (Beta(0.5, 4): most rarely name us, a few often, as after reading about us on the web), each question
    its own pull, and the phrasings of a question are draws around that model-question probability."""
    rate = rng.beta(0.5, 4.0, size=(trials, models, 1))
    pull = rng.normal(0.0, 1.0, size=(trials, 1, questions))
    logit = np.log(rate / (1 - rate)) + pull
    p = 1 / (1 + np.exp(-logit))
    return rng.binomial(phrasings, p) / phrasings


def _fpr_ok(rejections: int, trials: int, alpha: float) -> bool:
    """The empirical FPR is not significantly above alpha (one-sided exact binomial test at 1e-3)."""
    return sst.binomtest(rejections, trials, alpha, alternative="greater").pvalue > 1e-3


@pytest.mark.parametrize("alpha,controls", [(0.01, 199), (0.001, 999)])
def test_identity_null_innocent_suspects_of_the_controls_family_keep_fpr_below_alpha(alpha, controls):
    rng = np.random.default_rng(11)
    trials = 1000
    rejections = 0
    for _ in range(0, trials, 100):
        shares = _family_shares(rng, 100, controls + 1)
        log_p = ident.rank_log_p_many(shares.mean(axis=-1))  # model 0 is the (innocent) suspect
        rejections += int(np.sum(log_p <= math.log(alpha)))
    assert _fpr_ok(rejections, trials, alpha), rejections
    # the same wrapper the audit uses, on a few trials, agrees with the vectorised rank
    q, _ = _battery_answers(set())
    shares = _family_shares(rng, 1, 5)[0]
    ans = {m: [NAMED if rng.random() < shares[m, qq] else PLAIN for qq in q] for m in range(5)}
    r = ident.identity_test(q, ans[0], {f"c{m}": ans[m] for m in range(1, 5)}, NAMES)
    stat = [
        np.mean(ident.question_shares(q, [ident.names_us(a, NAMES) for a in ans[m]], 16)) for m in range(5)
    ]
    assert r.log_p == pytest.approx(ident.rank_log_p(stat[0], stat[1:]))


def test_identity_has_power_when_the_suspect_is_not_one_of_the_family():
    rng = np.random.default_rng(12)
    shares = _family_shares(rng, 200, 200)
    shares[:, 0] = rng.binomial(3, 0.9, size=(200, 16)) / 3  # a student that learnt our identity
    log_p = ident.rank_log_p_many(shares.mean(axis=-1))
    assert np.mean(log_p <= math.log(0.01)) > 0.9


# --------------------------------------------------------------------------------------------------
# Provenance


def test_similarity_and_sign_test():
    assert prov.similarity("Return the sum.", "return the SUM .") == 1.0
    assert prov.similarity("alpha beta", "gamma delta") == 0.0
    for wins, losses in [(10, 2), (30, 30), (0, 5), (60, 4)]:
        expected = sst.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins else 1.0
        assert math.exp(prov.sign_test_log_p(wins, losses)) == pytest.approx(expected, rel=1e-9)


def _words(rng, n=12, vocab=40):
    return " ".join(f"w{int(x)}" for x in rng.integers(0, vocab, n))


def _noisy(rng, truth: str, keep: float) -> str:
    """``truth`` with each word replaced by a random one with probability ``1 - keep``."""
    return " ".join(w if rng.random() < keep else f"w{int(rng.integers(0, 40))}" for w in truth.split())


def test_counterexample_a_better_innocent_model_is_not_a_copy():
    """Old test: a suspect simply closer to the truth than the controls won ~48 of 64 prompts (p = 4e-5)."""
    rng = np.random.default_rng(5)
    truth = [_words(rng) for _ in range(64)]
    ours = [_noisy(rng, t, 0.8) for t in truth]
    better = [_noisy(rng, t, 0.8) for t in truth]  # as good as ours, never saw our outputs
    controls = {f"c{i}": [_noisy(rng, t, 0.4) for t in truth] for i in range(2)}
    r = prov.provenance_test(better, ours, controls, alpha=1e-3)
    assert r.details["sign_test_p_value"] < 1e-4  # the per-prompt null alone would convict
    assert r.p_value == pytest.approx(1 / 3) and r.details["rank_p_value"] == pytest.approx(1 / 3)
    assert r.evidence == BEHAVIOURAL and "cannot reach the claim level" in r.caveats[0]
    assert combine([r], 0.5)["verdict"] == "inconclusive"


def test_provenance_copier_ranks_first_and_a_control_close_to_ours_refuses_the_claim():
    rng = np.random.default_rng(13)
    truth = [_words(rng) for _ in range(60)]
    ours = [_noisy(rng, t, 0.6) for t in truth]
    copier = [" ".join(o.split()[:9]) + " " + _words(rng, 3) for o in ours]
    controls = {f"c{i}": [_noisy(rng, t, 0.6) for t in truth] for i in range(20)}
    r = prov.provenance_test(copier, ours, controls, alpha=0.05)
    assert r.details["rank_p_value"] == pytest.approx(1 / 21) and r.details["wins"] > 55
    assert r.p_value == pytest.approx(1 / 21) and r.claim_allowed
    assert r.details["models"]["suspect"]["mean_margin"] > max(
        m["mean_margin"] for k, m in r.details["models"].items() if k != "suspect"
    )
    shared_base = dict(controls, base=[" ".join(o.split()[:9]) + " " + _words(rng, 3) for o in ours])
    refused = prov.provenance_test(copier, ours, shared_base, alpha=0.05)
    assert not refused.claim_allowed and "base" in refused.refusal
    assert not prov.provenance_test(ours, ours, {}).usable


def _family_similarities(rng, models: int, prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarities among ``models`` innocent models of one family and our model: latent answers
    ``x = q * truth + (1 - q) * noise`` with a quality ``q`` that varies by model (so some innocent models
    are much closer to ours than others), similarity ``exp(-distance)``."""
    truth = rng.normal(size=(prompts, 4))
    quality = rng.uniform(0.2, 0.95, size=(models + 1, 1, 1))
    x = quality * truth + (1 - quality) * rng.normal(size=(models + 1, prompts, 4))
    ours, pool = x[0], x[1:]
    sim_ours = np.exp(-np.linalg.norm(pool - ours, axis=-1))  # [M, Q]
    per_prompt = pool.transpose(1, 0, 2)  # [Q, M, 4]: distances through the Gram matrix, prompt by prompt
    sq = np.sum(per_prompt**2, axis=-1)
    d2 = sq[:, :, None] + sq[:, None, :] - 2 * per_prompt @ per_prompt.transpose(0, 2, 1)
    sim_pair = np.exp(-np.sqrt(np.maximum(d2, 0.0))).transpose(1, 2, 0)  # [M, M, Q]
    return sim_ours, sim_pair


@pytest.mark.parametrize("alpha,controls,prompts", [(0.01, 199, 16), (0.001, 999, 4)])
def test_provenance_null_innocent_models_of_varying_quality_keep_fpr_below_alpha(alpha, controls, prompts):
    """1000 trials: 50 independent families, in each of which 20 members drawn at random play the suspect
    (the other members are its controls). The margins are computed once per family: relabelling the
    models only permutes them, which the test checks on the first family."""
    rng = np.random.default_rng(21)
    families, suspects = 50, 20
    rejections = rank_rejections = 0
    for f in range(families):
        sim_ours, sim_pair = _family_similarities(rng, controls + 1, prompts)
        d = prov.margins(sim_ours, sim_pair)
        for i, s in enumerate(rng.choice(controls + 1, size=suspects, replace=False)):
            order = np.concatenate([[s], np.delete(np.arange(controls + 1), s)])
            log_p, log_rank, _ = prov.provenance_log_p(d[order])
            rejections += log_p <= math.log(alpha)
            rank_rejections += log_rank <= math.log(alpha)  # the rank part alone (the sign cap aside)
            if f == i == 0:  # relabelling the models permutes the margins
                relabelled = prov.margins(sim_ours[order], sim_pair[order][:, order])
                assert np.array_equal(relabelled, d[order])
    assert _fpr_ok(rejections, families * suspects, alpha), rejections
    assert _fpr_ok(rank_rejections, families * suspects, alpha), rank_rejections


def test_provenance_with_two_controls_the_per_prompt_null_alone_would_convict_innocents():
    """The same family with two controls: the best of three innocent models wins most prompts, so the sign
    test alone rejects far more often than its level; the reported p-value never goes below 1/3."""
    rng = np.random.default_rng(22)
    trials, sign_only, lowest = 1000, 0, 1.0
    for _ in range(trials):
        d = prov.margins(*_family_similarities(rng, 3, 64))
        log_p, _, log_sign = prov.provenance_log_p(d)
        sign_only += log_sign <= math.log(0.01)
        lowest = min(lowest, math.exp(log_p))
    assert sign_only / trials > 5 * 0.01 and lowest == pytest.approx(1 / 3)


# --------------------------------------------------------------------------------------------------
# Verdict


def _t(name, log10_p, allowed=True, usable=True, evidence="key-dependent", veto=True):
    return TestResult(name, "null", 0.0, "s", 10, log10_p * stats.LN10, claim_allowed=allowed,
                      refusal=None if allowed else "guard", usable=usable, evidence=evidence,
                      veto=veto)  # fmt: skip


def test_holm_verdicts():
    out = combine([_t("a", -5), _t("b", math.log10(0.5))], 1e-3)
    assert out["verdict"] == "distilled" and out["family"] == "Holm over 2 tests"
    assert "depends on our secret watermark key" in out["meaning"] and len(out["alternatives"]) >= 3
    assert out["tests"][0]["p_value_holm"] == pytest.approx(2e-5, rel=1e-9)
    assert out["tests"][1]["p_value_holm"] == pytest.approx(0.5, rel=1e-9)
    assert out["combined_p_value"] == pytest.approx(2e-5, rel=1e-9)
    assert combine([_t("a", -2.9), _t("b", -2.9)], 1e-3)["verdict"] == "no_evidence"  # 1.26e-3 each, Holm
    deep = combine([_t("a", -400), _t("b", -1)], 1e-3)
    assert deep["combined_p_value"] == 0.0 and deep["log10_combined_p_value"] == pytest.approx(
        -400 + math.log10(2)
    )
    assert combine([_t("a", -9, allowed=False), _t("b", -9)], 1e-3)["verdict"] == "inconclusive"
    # a guard that could only not confirm its test (decoys' resolution) takes that claim away, vetoes none
    weak = combine([_t("closed", -3.8, allowed=False, veto=False), _t("open", -28)], 1e-3)
    assert weak["verdict"] == "distilled" and [t["claim"] for t in weak["tests"]] == [False, True]
    assert any("not claimed" in r for r in weak["reasons"])
    alone = combine([_t("closed", -9, allowed=False, veto=False)], 1e-3)
    assert alone["verdict"] == "inconclusive" and not alone["tests"][0]["claim"]  # alone: unconfirmed
    assert combine([_t("a", 0, usable=False)], 1e-3)["verdict"] == "inconclusive"
    assert combine([], 1e-3)["verdict"] == "inconclusive"


def test_behavioural_tests_support_but_never_make_a_distilled_verdict():
    ident_t = _t("identity", -30, evidence=BEHAVIOURAL)
    prov_t = _t("provenance", -30, evidence=BEHAVIOURAL)
    alone = combine([ident_t, prov_t, _t("radioactivity_closed", -0.2)], 1e-3)
    assert alone["verdict"] == "inconclusive"
    assert not any(t["claim"] for t in alone["tests"]) and alone["tests"][0]["rejects"]
    assert any("behavioural evidence alone" in r for r in alone["reasons"])
    together = combine([ident_t, prov_t, _t("radioactivity_closed", -12)], 1e-3)
    assert together["verdict"] == "distilled"
    assert [t["claim"] for t in together["tests"]] == [False, False, True]
    assert any("supporting evidence only" in r for r in together["reasons"])
    # a behavioural guard (a control close to ours) is a note, never a veto of a key-dependent claim
    refused = _t("provenance", -30, allowed=False, evidence=BEHAVIOURAL)
    out = combine([refused, _t("radioactivity_closed", -12)], 1e-3)
    assert out["verdict"] == "distilled" and any("not used as support" in r for r in out["reasons"])
    assert combine([refused], 1e-3)["verdict"] == "inconclusive"

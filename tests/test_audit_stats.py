"""Audit statistics without models: dedup streams, decoy keys, e-processes (behavioural tests and verdicts:
test_audit_behaviour.py).

Calibration is checked the way it fails in practice: many null runs (random keys, simulated null data)
must not produce claims, and their p-values must not be skewed towards 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sst

from distillguard.audit import radioactivity as radio
from distillguard.audit.sequential import EProcess, anytime_log_p, log_e_path, log_e_values
from distillguard.audit.verdict import combine
from distillguard.watermark import stats
from distillguard.watermark.detect import Prepared, prepare
from distillguard.watermark.schemes import WatermarkSpec, kgw_green_mask, kgw_is_green

VOCAB = 1000
SPEC = WatermarkSpec(key="audit-key", vocab_size=VOCAB)


def _random_texts(rng, n_texts=60, length=80, prompt_len=12, copy=True):
    """Key-independent texts; some completions copy a span of their prompt (which must not count)."""
    prompts, comps = [], []
    for _ in range(n_texts):
        p = rng.integers(0, VOCAB, prompt_len).tolist()
        c = rng.integers(0, VOCAB, length).tolist()
        if copy:
            c[10:16] = p[2:8]
        prompts.append(p)
        comps.append(c)
    return prompts, comps


def _green_texts(spec, rng, n_texts=40, length=60, share=0.6):
    """Texts whose tokens are pushed towards our key's green lists (a stand-in for a radioactive model)."""
    green = kgw_green_mask(spec, torch.arange(VOCAB)[:, None]).numpy()  # width 1: one row per window
    texts = []
    for _ in range(n_texts):
        seq = [int(rng.integers(VOCAB))]
        for _ in range(length):
            if rng.random() < share:
                seq.append(int(rng.choice(np.flatnonzero(green[seq[-1]]))))
            else:
                seq.append(int(rng.integers(VOCAB)))
        texts.append(seq[1:])
    return texts


def _stream(comps, prompts, width=1, batches=1, **kw):
    s = radio.TupleStream(width, **kw)
    size = -(-len(comps) // batches)
    for i in range(0, len(comps), size):
        s.add_texts(comps[i : i + size], prompts[i : i + size])
    return s


# --------------------------------------------------------------------------------------------------
# Tuple streams


def _corpus_ids(prep: Prepared) -> set[int]:
    sel = prep.corpus
    return set(radio.tuple_ids(prep.windows.numpy()[sel], prep.tokens.numpy()[sel]).tolist())


@pytest.mark.parametrize("width", [1, 2])
def test_one_batch_stream_selects_what_the_detector_selects(width):
    prompts, comps = _random_texts(np.random.default_rng(1), n_texts=30)
    comps[3] = comps[1][:40] + comps[2][:20]  # repeats across texts: scored once
    ref = prepare(comps, prompts, width=width)
    mine = _stream(comps, prompts, width).prepared()
    assert mine.aggregate_count == ref.aggregate_count
    assert _corpus_ids(mine) == _corpus_ids(ref)


def test_batched_stream_never_scores_a_tuple_twice_and_prompts_block_later_copies():
    rng = np.random.default_rng(2)
    prompts, comps = _random_texts(rng, n_texts=40)
    comps[30] = prompts[5][:]  # a later answer that copies an earlier prompt verbatim
    s = _stream(comps, prompts, batches=8)
    w, t = s.arrays()
    ids = radio.tuple_ids(w, t)
    assert len(np.unique(ids)) == len(ids)
    prompt_tuples = prepare(prompts[:10], None).windows.numpy(), prepare(prompts[:10], None).tokens.numpy()
    assert not np.isin(radio.tuple_ids(*prompt_tuples), ids).any()
    assert s.texts == 40 and s.completion_tokens == sum(map(len, comps))


def test_window_filter_keeps_only_our_windows():
    prompts, comps = _random_texts(np.random.default_rng(3), n_texts=20)
    allowed = radio.own_windows(comps[:5], prompts[:5], 1)
    s = _stream(comps, prompts, allowed_windows=allowed)
    w, _ = s.arrays()
    assert len(w) > 0 and np.isin(radio.tuple_ids(w), allowed).all()
    assert len(w) < len(_stream(comps, prompts).arrays()[1])


def test_reading_candidates_exclude_every_true_tuple():
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 3, 4, 9]]
    plens = [2, 2]
    # predictions: text 0 predicts the true next token everywhere except position 4 (predicts 9: the
    # true continuation of window 4 in text 1, so also excluded) and position 5 (predicts 11: new)
    preds = [[-1, 2, 3, 4, 9, 11], [-1, 8, 3, 4, 12]]
    win, tok, text, excluded = radio.reading_candidates(seqs, plens, preds, 1)
    assert win[:, 0].tolist() == [2, 3, 4, 5, 8, 3, 4]  # completion positions only
    s = radio.TupleStream(1, excluded=excluded)
    s.add_candidates(win, tok, text, n_texts=2)
    w, t = s.arrays()
    assert list(zip(w[:, 0].tolist(), t.tolist(), strict=True)) == [(5, 11), (4, 12)]


# --------------------------------------------------------------------------------------------------
# Decoy keys and the radioactivity test


def test_decoy_p_values_are_uniform_on_key_independent_text():
    prompts, comps = _random_texts(np.random.default_rng(4), n_texts=80)
    prep = _stream(comps, prompts).prepared()
    d = radio.decoy_null(SPEC, prep, 300, seed=1)
    p = np.exp(d.decoy_log_p)
    assert sst.kstest(p, "uniform").pvalue > 0.01
    assert d.calibrated and np.sum(p < 1e-3) <= 2
    assert SPEC.key not in radio.decoy_keys(300, 1, avoid=SPEC.key)


def test_radioactive_text_is_claimed_and_our_key_beats_every_decoy():
    prep = _stream(_green_texts(SPEC, np.random.default_rng(5)), [[]] * 40).prepared()
    d = radio.decoy_null(SPEC, prep, 100, seed=0)
    r = radio.radioactivity_test("closed", SPEC, prep, d)
    assert r.log10_p < -12 and r.claim_allowed and d.extreme and d.empirical_p == pytest.approx(1 / 101)
    assert r.details["rate"] > 0.4 and r.n == prep.aggregate_count
    assert combine([r], 1e-3)["verdict"] == "distilled"


def _repeated(tuple_wt, repeats, rng, extra=300) -> Prepared:
    """Tuples with one (window, token) repeated many times: what skipping dedup would feed the detector."""
    w = np.concatenate([np.full(repeats, tuple_wt[0]), rng.integers(0, VOCAB, extra)])[:, None]
    t = np.concatenate([np.full(repeats, tuple_wt[1]), rng.integers(0, VOCAB, extra)])
    m = len(t)
    return Prepared(1, torch.from_numpy(w), torch.from_numpy(t), np.zeros(m, dtype=np.int64),
                    np.ones(m, dtype=bool), np.array([m]), np.array([m]), False)  # fmt: skip


def test_decoy_guard_refuses_a_claim_the_analytic_null_cannot_support():
    rng = np.random.default_rng(6)
    win, tok = 17, 23
    key = next(
        k for k in range(1000) if kgw_is_green(SPEC.with_key(k), torch.tensor([[win]]), torch.tensor([tok]))
    )
    spec = SPEC.with_key(key)
    prep = _repeated((win, tok), 200, rng)
    d = radio.decoy_null(spec, prep, 100, seed=0)
    r = radio.radioactivity_test("closed", spec, prep, d)
    assert r.log10_p < -20  # the analytic p-value alone would accuse
    assert not r.claim_allowed and not d.calibrated and "decoy" in r.refusal
    assert combine([r], 1e-3)["verdict"] == "inconclusive"


@pytest.mark.parametrize("scheme", ["kgw", "gumbel"])
def test_null_runs_with_random_keys_never_claim_and_are_not_skewed(scheme):
    """20 audits whose key the text never saw (alpha = 1e-3): no claim; 1000 keys: uniform p-values (KS) and
    false claims at 0.01 and 0.001 within what the level allows (exact one-sided binomial test)."""
    prompts, comps = _random_texts(np.random.default_rng(7), n_texts=40)
    prep = _stream(comps, prompts).prepared()
    base = WatermarkSpec(scheme=scheme, key=0, vocab_size=VOCAB)
    for k in radio.decoy_keys(20, seed=99):
        spec = base.with_key(k)
        r = radio.radioactivity_test("closed", spec, prep, radio.decoy_null(spec, prep, 100, seed=k % 1000))
        assert combine([r], 1e-3)["verdict"] == "no_evidence"
    many = np.exp(radio.decoy_null(base, prep, 1000, seed=3).decoy_log_p)
    assert sst.kstest(many, "uniform").pvalue > 0.01
    for alpha in (0.01, 0.001):
        claims = int(np.sum(many <= alpha))
        assert sst.binomtest(claims, len(many), alpha, alternative="greater").pvalue > 1e-3, (alpha, claims)


def test_series_and_tokens_to_reach():
    rng = np.random.default_rng(8)
    strong = (rng.random(5000) < 0.35).astype(float)
    s = radio.series(SPEC, strong)
    n = s["tokens_scored"]
    assert n == sorted(n) and n[-1] == 5000 and len(s["log10_p"]) == len(n) == len(s["green_rate_ci"])
    assert all(lo <= r <= hi for r, (lo, hi) in zip(s["green_rate"], s["green_rate_ci"], strict=True))
    assert s["log10_p"][-1] < -20 and s["log10_p_anytime"][-1] < -15
    reach = radio.tokens_to_reach(strong, SPEC, -6.0)
    assert 100 < reach < 5000
    assert stats.binomial_log_sf(int(strong[:reach].sum()), reach, SPEC.green_rate)[0] / stats.LN10 <= -6
    assert radio.tokens_to_reach((rng.random(5000) < 0.25).astype(float), SPEC, -6.0) is None


# --------------------------------------------------------------------------------------------------
# Sequential test


def _max_log_e(scheme, paths, gamma=0.25):
    n = np.arange(1, paths.shape[1] + 1)
    return np.array([log_e_values(scheme, n, np.cumsum(row), gamma=gamma).max() for row in paths])


@pytest.mark.parametrize("scheme", ["kgw", "gumbel"])
def test_e_process_keeps_its_level_under_continuous_monitoring(scheme):
    """Ville: P[sup E >= 1/alpha] <= alpha. Peeking at the fixed-sample p-value does not keep it."""
    rng = np.random.default_rng(11)
    runs, length, alpha = 400, 2000, 0.05
    paths = (
        (rng.random((runs, length)) < 0.25).astype(float)
        if scheme == "kgw"
        else rng.exponential(size=(runs, length))
    )
    alarms = int(np.sum(_max_log_e(scheme, paths) >= math.log(1 / alpha)))
    assert alarms <= 30  # P[Bin(400, 0.05) > 30] ~ 0.01: a valid process stays below this
    looks = np.arange(100, length + 1, 100)
    cum = np.cumsum(paths, axis=1)[:, looks - 1]
    if scheme == "kgw":
        naive = stats.binomial_log_sf(np.rint(cum).astype(np.int64), np.broadcast_to(looks, cum.shape), 0.25)
    else:
        naive = stats.gamma_log_sf(np.broadcast_to(looks, cum.shape), cum)
    naive_alarms = int(np.sum((naive <= math.log(alpha)).any(axis=1)))
    assert naive_alarms > 2 * alarms and naive_alarms > 40  # optional stopping inflates the error


def test_e_process_has_power_and_incremental_updates_match_the_path():
    rng = np.random.default_rng(12)
    x = (rng.random(8000) < 0.3).astype(float)
    path = log_e_path("kgw", x)
    anytime = anytime_log_p(path)
    exact = stats.binomial_log_sf(int(x.sum()), len(x), 0.25)[0]
    assert anytime[-1] / stats.LN10 < -6
    assert exact <= anytime[-1] <= exact + math.log(1e5)  # the price of peeking: a few decades at most
    ep = EProcess("kgw")
    for chunk in np.array_split(x, 13):
        ep.update(chunk)
    assert ep.count == 8000 and ep.log_p == pytest.approx(anytime[-1])
    assert ep.crossed(1e-6) and not EProcess("kgw").crossed(0.5)

"""The first-occurrence open reading: its null holds for adversarial innocent readers, and it has power.

A toy world with a known watermark: a random bigram "teacher" over a small vocabulary samples texts with
KGW (delta 2) under a key. Innocent suspects read those texts teacher-forced and predict from the prefix
only: the clean bigram argmax, and an induction copier that repeats whatever followed the current window
earlier in the text (the reader that breaks naive scoring). A radioactive suspect prefers green tokens of
our key. Each of 1000 keys is one null experiment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sst

from distillguard.audit.reading import first_occurrence_candidates
from distillguard.watermark import stats
from distillguard.watermark.schemes import WatermarkSpec, kgw_green_mask, kgw_is_green
from toy_watermark import bigram_logits, spec_anytime_log_p

V = 256
TEXTS, LENGTH, PROMPT = 12, 40, 4


def _bigram(rng) -> np.ndarray:
    return bigram_logits(rng, V)


def _sample(spec: WatermarkSpec, logits: np.ndarray, rng) -> list[np.ndarray]:
    """``TEXTS`` prompt + completion sequences, completions sampled with KGW under ``spec``'s key."""
    seqs = rng.integers(0, V, size=(TEXTS, PROMPT + LENGTH))
    g = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
    for t in range(PROMPT, PROMPT + LENGTH):
        prev = torch.from_numpy(seqs[:, t - 1 : t])
        z = torch.from_numpy(logits[seqs[:, t - 1]]) + spec.delta * kgw_green_mask(spec, prev).double()
        seqs[:, t] = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0].numpy()
    return list(seqs)


def _argmax_reader(logits):
    def read(seq: np.ndarray) -> np.ndarray:
        return np.concatenate([[-1], logits[seq[:-1]].argmax(-1)])

    return read


def _copier(logits):
    """Predicts what followed the latest earlier occurrence of the current window, else the bigram argmax."""

    def read(seq: np.ndarray) -> np.ndarray:
        out = np.full(len(seq), -1)
        last: dict[int, int] = {}
        for t in range(1, len(seq)):
            w = int(seq[t - 1])
            out[t] = last.get(w, int(logits[w].argmax()))
            if t >= 2:
                last[int(seq[t - 2])] = int(seq[t - 1])
        return out

    return read


def _radioactive(logits, spec: WatermarkSpec, bias: float = 1.0):
    def read(seq: np.ndarray) -> np.ndarray:
        prev = torch.from_numpy(seq[:-1, None].copy())
        z = torch.from_numpy(logits[seq[:-1]]) + bias * kgw_green_mask(spec, prev).double()
        return np.concatenate([[-1], z.argmax(-1).numpy()])

    return read


def _scores(spec, seqs, reader, naive: bool = False) -> np.ndarray:
    preds = [reader(s) for s in seqs]
    plens = [PROMPT] * len(seqs)
    if naive:  # every completion position, repeated windows included
        w = np.concatenate([s[PROMPT - 1 : -1] for s in seqs])[:, None]
        y = np.concatenate([p[PROMPT:] for p in preds])
    else:
        w, y, _, considered = first_occurrence_candidates(seqs, plens, preds, 1)
        assert 0 < len(y) <= considered == len(seqs) * LENGTH
        assert len(np.unique(w[:, 0])) == len(w)  # each window once in the corpus
    return kgw_is_green(spec, torch.from_numpy(w), torch.from_numpy(y)).double().numpy()


def _anytime_log_p(spec, values) -> float:
    return spec_anytime_log_p(spec, values)


def test_candidates_are_first_occurrences_in_corpus_order():
    seqs = [np.array([9, 1, 2, 1, 3]), np.array([9, 2, 5, 4, 4])]
    preds = [np.array([-1, 7, 7, 7, 7]), np.array([-1, 8, 8, 8, 8])]
    w, y, text, considered = first_occurrence_candidates(seqs, [2, 1], preds, 1)
    # text 0: completion positions 2, 3, 4 have windows 1, 2, 1 (the second 1 is a repeat)
    # text 1: completion positions 1..4 have windows 9, 2 (both seen in text 0), 5, 4
    assert w[:, 0].tolist() == [1, 2, 5, 4] and y.tolist() == [7, 7, 8, 8] and text.tolist() == [0, 0, 1, 1]
    assert considered == 3 + 4
    with pytest.raises(ValueError):
        first_occurrence_candidates(seqs, [2, 1], [preds[0], preds[1][:3]], 1)
    # the end of text 0 (window 3, where our sampler drew EOS) is seen: a later window 3 is not scored
    later = [seqs[0], np.array([9, 3, 6])]
    w, y, text, _ = first_occurrence_candidates(later, [2, 1], [preds[0], np.array([-1, 8, 8])], 1)
    assert w[:, 0].tolist() == [1, 2] and text.tolist() == [0, 0]
    # with a prediction after the last token, the end position is scored like any other
    ended = [np.concatenate([p, [5]]) for p in preds]
    w, y, text, considered = first_occurrence_candidates(seqs, [2, 1], ended, 1)
    assert w[:, 0].tolist() == [1, 2, 3, 5, 4] and y.tolist() == [7, 7, 5, 8, 8] and considered == 9


@pytest.mark.slow
def test_null_holds_for_innocent_readers_over_1000_keys_and_naive_scoring_breaks():
    rng = np.random.default_rng(3)
    logits = _bigram(rng)
    keys = 1000
    log_p = {"argmax": [], "copier": [], "copier_exact": []}
    naive = []
    for k in range(keys):
        spec = WatermarkSpec(key=int(rng.integers(1, 2**62)), gamma=0.25, delta=2.0, vocab_size=V)
        seqs = _sample(spec, logits, rng)
        log_p["argmax"].append(_anytime_log_p(spec, _scores(spec, seqs, _argmax_reader(logits))))
        v = _scores(spec, seqs, _copier(logits))
        log_p["copier"].append(_anytime_log_p(spec, v))
        log_p["copier_exact"].append(float(stats.binomial_log_sf(int(v.sum()), len(v), spec.green_rate)[0]))
        if k < 200:
            nv = _scores(spec, seqs, _copier(logits), naive=True)
            naive.append(float(stats.binomial_log_sf(int(nv.sum()), len(nv), spec.green_rate)[0]))
    for name in ("argmax", "copier", "copier_exact"):
        p = np.exp(np.array(log_p[name]))
        for alpha in (0.01, 0.001):
            rejections = int(np.sum(p <= alpha))
            assert sst.binomtest(rejections, keys, alpha, alternative="greater").pvalue > 1e-3, (name, alpha)
        # not stochastically smaller than uniform (the anytime p-values are conservative)
        assert sst.kstest(p, "uniform", alternative="greater").pvalue > 0.01, name
    # the same copier scored at every position inherits our watermark: the reading matters
    assert np.mean(np.exp(np.array(naive)) <= 0.01) > 0.2


def test_radioactive_reader_is_detected_with_an_anytime_valid_p_value():
    rng = np.random.default_rng(4)
    logits = _bigram(rng)
    spec = WatermarkSpec(key="ours", gamma=0.25, delta=2.0, vocab_size=V)
    seqs = [s for _ in range(4) for s in _sample(spec, logits, rng)]
    v = _scores(spec, seqs, _radioactive(logits, spec, bias=3.0))
    assert _anytime_log_p(spec, v) / math.log(10) < -6
    clean = _scores(spec, seqs, _argmax_reader(logits))
    assert _anytime_log_p(spec, clean) / math.log(10) > -2

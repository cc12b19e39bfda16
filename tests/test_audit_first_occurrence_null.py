"""Null calibration and power of the first-occurrence reading beyond KGW, h = 1 and fixed-length texts.

The toy world of :mod:`toy_watermark` (a random bigram teacher, 1000 random keys sampled in one batch):

* Gumbel (exponential minimum), h = 1 and 2;
* KGW with context width h = 2 and 3;
* variable-length texts: prompts of 1..4 tokens left-padded like batched generation, EOS drawn with the
  watermark (completions of 0..24 tokens, EOS cut, so some texts are shorter than h + 1), and one text in
  five replaced by a verbatim copy of an earlier text of the same key.

Innocent suspects predict from the prefix of the text they read and never saw the key: the teacher's argmax,
an induction copier over the whole window (what followed the same h tokens earlier in the text) and, for
h > 1, one over the last token only (what followed the same last token earlier: a continuation sampled
under another window). Their p-values must be uniform or conservative:

* at alpha = 0.01 and 0.001 the number of keys with p <= alpha is not significantly above ``alpha * keys``
  (exact one-sided binomial test, fails below 1e-3);
* one-sided Kolmogorov-Smirnov against U(0, 1) with ``alternative="greater"``: the statistic is
  ``D+ = sup_x (F_n(x) - x)``, which is large only when the p-values are stochastically *smaller* than
  uniform (anti-conservative); a point mass at 1 (conservative) never raises it. Fails below 0.01;
* every scored tuple pooled over the 1000 keys: its mean score is not above the null mean (z < 4), the most
  sensitive check of "each score is null given the past".

This holds for the reading's anytime-valid p-value and for the fixed-sample tail the report keeps for
reference. Scoring the copier at every completion position instead breaks the null in each setting (the
world can break a careless reading), and a radioactive suspect (logits plus the watermark's preference)
gets small p-values (the reading has power).
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
import torch
from scipy import stats as sst

from distillguard.audit.reading import first_occurrence_candidates
from toy_watermark import (
    EOS,
    bigram_logits,
    copier_reader,
    every_position,
    first_occurrences,
    per_key_exact_log_p,
    per_key_log_p,
    plain_reader,
    pooled_z,
    radioactive_reader,
    sample_corpus,
    scores,
    start_copier_reader,
    watermark_spec,
)

V, KEYS, TEXTS, PROMPT, LENGTH = 32, 1000, 16, 4, 24

SETTINGS = {
    "gumbel-h1": ("gumbel", 1, False),
    "gumbel-h2": ("gumbel", 2, False),
    "kgw-h2": ("kgw", 2, False),
    "kgw-h3": ("kgw", 3, False),
    "kgw-h1-variable": ("kgw", 1, True),
    "kgw-h3-variable": ("kgw", 3, True),
    "gumbel-h1-variable": ("gumbel", 1, True),
    "gumbel-h3-variable": ("gumbel", 3, True),
}


@cache  # one world per setting, shared by its two tests
def _world(name: str):
    scheme, h, variable = SETTINGS[name]
    rng = np.random.default_rng(7)
    logits = bigram_logits(rng, V)
    if variable:
        logits[:, EOS] += 1.0  # texts end early often enough to be very short
    spec = watermark_spec(scheme, h, V, rng)
    corpus = sample_corpus(
        spec,
        logits,
        rng,
        keys=KEYS,
        texts=TEXTS,
        prompt=PROMPT,
        length=LENGTH,
        variable=variable,
        repeat=0.2 if variable else 0.0,
    )
    return logits, corpus, first_occurrences(corpus)


def _assert_uniform_or_conservative(log_p: np.ndarray, what: str) -> None:
    p = np.exp(log_p)
    assert len(p) == KEYS
    for alpha in (0.01, 0.001):
        rejections = int(np.sum(p <= alpha))
        binom = sst.binomtest(rejections, KEYS, alpha, alternative="greater").pvalue
        assert binom > 1e-3, (what, alpha, rejections)
    assert sst.kstest(p, "uniform", alternative="greater").pvalue > 0.01, what


@pytest.mark.parametrize("name", list(SETTINGS))
def test_innocent_readers_get_uniform_or_conservative_p_values_over_1000_keys(name):
    logits, c, cand = _world(name)
    h = c.h
    if c.repeated:  # the setting covers what it claims
        assert (c.lens < h + 1).any() and c.repeated > KEYS and (c.lens == c.plens).any()
        assert h == 1 or (c.plens < h).any()
    assert len(cand.pos) > 10 * KEYS
    readers = {"argmax": plain_reader(c, logits), "copier": copier_reader(c, logits, h)}
    if h > 1:
        readers["copier-last-token"] = copier_reader(c, logits, 1)
    for reader, preds in readers.items():
        values = scores(c, cand, preds)
        _assert_uniform_or_conservative(per_key_log_p(c, cand, values), f"{name} {reader} anytime")
        _assert_uniform_or_conservative(per_key_exact_log_p(c, cand, values), f"{name} {reader} exact")
        assert pooled_z(c.spec, values) < 4.0, (name, reader)
    # the same copier scored at every completion position inherits our watermark
    naive = every_position(c)
    assert pooled_z(c.spec, scores(c, naive, readers["copier"])) > 5.0, name


@pytest.mark.parametrize("name", list(SETTINGS))
def test_radioactive_reader_gets_small_p_values(name):
    logits, c, cand = _world(name)
    bias = 3.0 if c.spec.scheme == "kgw" else 2.0
    log10_p = per_key_log_p(c, cand, scores(c, cand, radioactive_reader(c, logits, bias))) / math.log(10)
    assert np.mean(log10_p <= -2) > 0.8 and np.median(log10_p) < -3, name


def test_windows_our_sampler_keyed_on_a_padded_start_count_as_seen():
    # h = 2, one-token prompts: batched generation drew token 1 of each text with (pad, token 0), pad unknown
    seqs = [np.array([5, 6, 7]), np.array([3, 5, 4, 2]), np.array([1, 1, 5, 6])]
    preds = [np.full(len(s) + 1, 9) for s in seqs]
    w, _, text, _ = first_occurrence_candidates(seqs, [1, 1, 1], preds, 2)
    # (3, 5) and (1, 5) may be (pad, 5) of text 0, (1, 1) may be (pad, 1) of text 2 itself: not scored
    assert [tuple(x) for x in w] == [(5, 6), (6, 7), (5, 4), (4, 2)] and text.tolist() == [0, 0, 1, 1]
    # prompts of h tokens or more were not padded: the same windows are scored
    w, _, _, _ = first_occurrence_candidates(seqs, [2, 2, 2], preds, 2)
    assert {(3, 5), (1, 1), (1, 5)} <= {tuple(x) for x in w}
    # h = 3: positions 1 and 2 of text 0 were drawn with (pad, pad, 5) and (pad, 5, 6)
    seqs = [np.array([5, 6, 7]), np.array([8, 9, 2, 2, 5, 2, 3, 5, 4, 5, 6, 0])]
    preds = [np.full(len(s) + 1, 9) for s in seqs]
    w, _, _, _ = first_occurrence_candidates(seqs, [1, 3], preds, 3)
    kept = {tuple(x) for x in w}
    assert (2, 2, 5) not in kept and (4, 5, 6) not in kept  # one repeated token, then the text's start
    assert {(5, 6, 7), (2, 3, 5), (3, 5, 4), (5, 6, 0)} <= kept  # not the shape of a padded start


def test_a_reader_of_the_padded_start_stays_null_over_1000_keys():
    """One one-token prompt asked again and again, left-padded with a token our answers use often: our
    sampler keys each answer's first token on (pad, prompt), a window that occurs later in the texts, where
    an innocent reader that copies the text's start predicts exactly that token."""
    rng = np.random.default_rng(5)
    pad, prompt = 1, 2
    logits = bigram_logits(rng, 8)
    logits[:, EOS] += 1.0
    logits[:, pad] += 2.0
    logits[pad, prompt] += 3.0
    spec = watermark_spec("kgw", 2, 8, rng)
    c = sample_corpus(
        spec, logits, rng, keys=KEYS, texts=TEXTS, prompt=2, length=12, variable=True, pad=pad,
        prompt_token=prompt,
    )  # fmt: skip
    # the answer's first token after a padded prompt carries our key's bias under (pad, prompt)
    r = np.flatnonzero((c.plens == 1) & (c.lens >= 2))
    keyed = c.keyed(r, np.stack([np.full(len(r), pad), c.seqs[r, 0]], 1))
    assert spec.impl.token_scores(spec, keyed, torch.from_numpy(c.seqs[r, 1])).numpy().mean() > 0.4
    reader = start_copier_reader(c, logits, pad)
    cand = first_occurrences(c)
    values = scores(c, cand, reader)
    _assert_uniform_or_conservative(per_key_log_p(c, cand, values), "padded start anytime")
    _assert_uniform_or_conservative(per_key_exact_log_p(c, cand, values), "padded start exact")
    assert pooled_z(spec, values) < 4.0
    # read as if no prompt had been padded, the reader's first guess at (pad, prompt) inherits our watermark
    unpadded = replace(c, plens=np.maximum(c.plens, 2))
    cand = first_occurrences(unpadded)
    at_start = (cand.windows[:, 0] == pad) & (cand.windows[:, 1] == prompt)
    assert at_start.sum() > 100 and pooled_z(spec, scores(c, cand, reader)[at_start]) > 5.0

"""The open-mode "mass" reading (audit/mass.py): averaging, the Chernoff p-value, its null, its power.

Null calibration: 1,000 random keys on distributions that do not depend on any key. The p-value is a
bound, so it is conservative: the false claims at 0.01 and 0.001 stay at or below the level and the
p-values are stochastically larger than uniform (one-sided KS).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as sst

from distillguard.audit import mass as ms
from distillguard.audit.radioactivity import decoy_keys
from distillguard.watermark.schemes import WatermarkSpec, token_scores

V = 400


def _suspect(rng, n_positions=3000, n_windows=150, k=16, temp=2.0):
    """Key-independent next-token distributions after random windows (an innocent model)."""
    windows = rng.integers(0, n_windows, (n_positions, 1))
    logits = rng.normal(size=(n_windows, V)) * temp  # one distribution per window, plus noise per position
    logits = logits[windows[:, 0]] + rng.normal(size=(n_positions, V)) * 0.3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx = np.argsort(-p, 1)[:, :k]
    return windows, idx, np.take_along_axis(p, idx, 1), p


def test_window_means_average_per_window_and_keep_the_most_likely():
    windows = np.array([[5], [7], [5]])
    idx = np.array([[1, 2], [3, 1], [2, 9]])
    p = np.array([[0.6, 0.3], [0.5, 0.4], [0.7, 0.2]])
    m = ms.window_means(windows, idx, p, k=2)
    assert m.windows.tolist() == [[5], [7]] and m.counts.tolist() == [2, 1]
    got = {(int(m.windows[r][0]), int(t)): w for r, t, w in zip(m.rows, m.tokens, m.weights, strict=True)}
    # window 5: token 2 (0.3 + 0.7) / 2 = 0.5, token 1 0.3, token 9 0.1 (dropped: k = 2)
    assert got == {(5, 2): pytest.approx(0.5), (5, 1): pytest.approx(0.3), (7, 3): 0.5, (7, 1): 0.4}
    assert m.without(np.array([True, False])).windows.tolist() == [[7]]


@pytest.mark.parametrize("scheme", ["kgw", "gumbel"])
def test_the_chernoff_bound_is_above_the_exact_tail(scheme):
    """Small cases where the exact tail is known: never below it, and not far above."""
    spec = WatermarkSpec(scheme=scheme, key=1, vocab_size=V)
    a = np.array([0.9, 0.7, 0.5, 0.5, 0.4, 0.3, 0.2, 0.2, 0.1, 0.1])
    for t in (2.0, 3.0, 3.5):
        if scheme == "kgw":  # enumerate the 2^10 green patterns
            g = spec.green_rate
            exact = sum(
                g ** sum(x) * (1 - g) ** (len(x) - sum(x))
                for x in itertools.product((0, 1), repeat=len(a))
                if np.dot(a, x) >= t - 1e-12
            )
        else:  # Monte Carlo with 2e5 draws of i.i.d. Exp(1)
            x = np.random.default_rng(0).exponential(size=(200_000, len(a)))
            exact = float(np.mean(x @ a >= t))
        bound = math.exp(ms.chernoff_log_sf(spec, a, t))
        assert exact <= bound * 1.02 and bound < 30 * max(exact, 1e-5), (t, exact, bound)
    assert ms.chernoff_log_sf(spec, a, 0.1) == 0.0  # below the null mean: p = 1


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("scheme", ["kgw", "gumbel"])
def test_null_of_1000_random_keys_is_conservative(scheme, reference):
    """Weights of one sign (the suspect alone) and of both signs (minus a reference model)."""
    rng = np.random.default_rng(3)
    windows, idx, p, full = _suspect(rng)
    ref = None
    if reference:  # another innocent model of the same language
        other = full * np.exp(rng.normal(size=full.shape) * 0.5)
        ref = np.take_along_axis(other / other.sum(1, keepdims=True), idx, 1)
    m = ms.window_means(windows, idx, p, reference_p=ref)
    assert (m.weights < 0).any() == reference
    log_p = []
    for k in decoy_keys(1000, seed=11):
        spec = WatermarkSpec(scheme=scheme, key=k, vocab_size=V)
        log_p.append(ms.chernoff_log_sf(spec, m.weights, ms.total(spec, m)))
    pv = np.exp(log_p)
    for alpha in (0.01, 0.001):
        assert np.sum(pv <= alpha) <= sst.binom.ppf(1 - 1e-3, 1000, alpha), alpha
    # p-values no smaller than uniform ones: the empirical CDF does not exceed the uniform CDF
    assert sst.kstest(pv, "uniform", alternative="greater").pvalue > 1e-3


@pytest.mark.parametrize("scheme", ["kgw", "gumbel"])
def test_a_small_tilt_toward_our_key_is_found_though_the_top1_tokens_barely_move(scheme):
    """A radioactive suspect whose preference for our key's tokens is too small to change its argmax:
    the top-1 readings have almost nothing to score, the mass reading convicts, and no decoy key does."""
    rng = np.random.default_rng(5)
    windows, _, _, p = _suspect(rng, n_positions=6000, n_windows=1500)
    spec = WatermarkSpec(scheme=scheme, key="ours", vocab_size=V)
    rows = torch.from_numpy(np.repeat(windows, V, axis=0))
    toks = torch.arange(V).repeat(len(windows))
    x = token_scores(spec, rows, toks).numpy().reshape(len(windows), V)
    tilted = p * np.exp(0.05 * (x - x.mean(1, keepdims=True)))
    tilted /= tilted.sum(1, keepdims=True)
    assert np.mean(tilted.argmax(1) == p.argmax(1)) > 0.95  # the top-1 tokens barely move
    idx = np.argsort(-tilted, 1)[:, : ms.TOP_K]
    alone = ms.window_means(windows, idx, np.take_along_axis(tilted, idx, 1))
    # beside a reference that shares the language but not the tilt (our model, for a student of it)
    ref = p * np.exp(rng.normal(size=p.shape) * 0.05)  # and differs from the suspect a little, at random
    ref /= ref.sum(1, keepdims=True)
    beside = ms.window_means(
        windows, idx, np.take_along_axis(tilted, idx, 1), reference_p=np.take_along_axis(ref, idx, 1)
    )
    for m in (alone, beside):
        null = ms.mass_null(spec, m, 20, seed=1)
        assert null.our_log_p / math.log(10) < -6 and null.extreme
        assert np.all(null.decoy_log_p > math.log(1e-3))
    assert ms.mass_null(spec, beside, 0).our_score > 2 * ms.mass_null(spec, alone, 0).our_score  # in null sds


def test_the_bound_holds_at_the_edges_of_the_support():
    """Tiny weights next to a large one, and a value at the very top of the support (exact tails known)."""
    spec = WatermarkSpec(key=1, vocab_size=V)
    g = spec.green_rate
    for a, t, exact in (
        ([1.0, 1e-14], 1.0, g),  # the tiny weight may be red: P[T >= 1] = P[first green]
        ([1.0, -1e-14], 1.0 - 1e-14, g),
        ([1.0, 1e-13, 1e-13, 1e-13], 1.0, g),
        ([1.0, 1.0], 2.0, g * g),  # the maximum itself
    ):
        assert math.exp(ms.chernoff_log_sf(spec, np.array(a), t)) >= exact * (1 - 1e-9), (a, t)
    assert math.exp(ms.chernoff_log_sf(spec, np.array([1.0, 1.0]), 2.5)) < 1e-6  # past the maximum


def test_fixed_size_green_lists_with_weights_of_both_signs_keep_the_bound():
    """transformers' lists draw a window's green tokens without replacement; with a positive and a negative
    weight that makes their joint outcome likelier than independent draws allow (1/3 against 1/4 here),
    and the bound must cover it."""
    spec = WatermarkSpec(key=1, gamma=0.5, hf_compat=True, vocab_size=4)
    a, rows = np.array([1.0, -1.0]), np.array([0, 0])
    # two green tokens out of four: T = 1 iff token 0 green and token 1 red, P = 2 / 6
    assert math.exp(ms.chernoff_log_sf(spec, a, 1.0, rows)) >= 1 / 3
    six = WatermarkSpec(key=1, gamma=0.5, hf_compat=True, vocab_size=6)
    a6, rows6 = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0]), np.zeros(6, dtype=np.int64)
    exact = sum(  # three green of six, each subset equally likely
        1 for green in itertools.combinations(range(6), 3) if sum(a6[list(green)]) >= 1
    ) / math.comb(6, 3)
    assert math.exp(ms.chernoff_log_sf(six, a6, 1.0, rows6)) >= exact
    with pytest.raises(ValueError, match="window"):
        ms.chernoff_log_sf(spec, a, 1.0)

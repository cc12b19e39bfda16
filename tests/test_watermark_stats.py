"""Exact p-values: agreement with arbitrary-precision references, deep into the tail."""

import math

import mpmath as mp
import numpy as np
import pytest

from distillguard.watermark import stats

mp.mp.dps = 60


def _binom_ref(k, n, p):
    p = mp.mpf(p)
    return mp.log(mp.fsum(mp.binomial(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)))


@pytest.mark.parametrize(
    "k,n",
    [(0, 10), (3, 10), (10, 10), (60, 200), (120, 200), (200, 200), (700, 1000), (1000, 1000), (11, 10)],
)
def test_binomial_tail_matches_reference(k, n):
    got = stats.binomial_log_sf(k, n, 0.25)[0]
    if k > n:
        assert got == -math.inf
        return
    ref = float(_binom_ref(k, n, 0.25))
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_binomial_tail_below_1e300_is_in_log_space():
    log_p = stats.binomial_log_sf(900, 1000, 0.25)[0]
    assert stats.to_p(log_p) == 0.0  # underflows as a float ...
    assert stats.to_log10(log_p) == pytest.approx(float(_binom_ref(900, 1000, 0.25) / mp.log(10)), rel=1e-10)
    assert stats.to_log10(log_p) < -300


def test_binomial_switch_is_continuous():
    # around the point where scipy hands over to the log-space sum
    ks = np.arange(440, 520)
    log_p = stats.binomial_log_sf(ks, 1000, 0.25)
    refs = np.array([float(_binom_ref(int(k), 1000, 0.25)) for k in ks[::10]])
    np.testing.assert_allclose(log_p[::10], refs, rtol=1e-9)
    assert np.all(np.diff(log_p) < 0)


@pytest.mark.parametrize("n,s", [(1, 0.5), (10, 10.0), (100, 150.0), (200, 1500.0), (1000, 5000.0)])
def test_gamma_tail_matches_reference(n, s):
    ref = float(mp.log(mp.gammainc(n, s, mp.inf, regularized=True)))
    assert stats.gamma_log_sf(n, s)[0] == pytest.approx(ref, rel=1e-10)


def test_holm_adjustment():
    adj = stats.to_p(stats.holm(np.log([[0.01, 0.04, 0.03]])))[0]
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06])


def test_z_scores_for_display():
    assert stats.kgw_z(50, 100, 0.25) == pytest.approx(25 / math.sqrt(100 * 0.25 * 0.75))
    assert stats.gumbel_z(100, 110.0) == pytest.approx(1.0)

"""Exact p-values for watermark scores, accurate far into the tail.

* KGW: ``S ~ Binomial(N, gamma)`` under H0, ``p = P[S' >= S] = I_gamma(S, N - S + 1)``.
* Gumbel: ``S = sum -ln(1 - u) ~ Gamma(N, 1)`` under H0, ``p = Q(N, S)``.

scipy's regularised incomplete functions are used while the result is comfortably inside float64; below
``LOG_SWITCH`` the tail is summed term by term in log space (binomial pmf terms above S; Poisson terms
below N, since ``Q(N, S) = P[Poisson(S) <= N - 1]``), so ``log10_p`` stays exact when ``p`` underflows.
Z-scores are for display only. Everything is vectorised over texts; a per-text loop runs only for p-values
below 1e-280.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

LN10 = math.log(10.0)
_P_SWITCH = 1e-280
_TAIL_EPS = math.log(1e-20)


def _binom_log_sf_exact(k: int, n: int, p: float) -> float:
    """ln P[Bin(n, p) >= k] by summing pmf terms from k upward until they stop mattering."""
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    lp, lq = math.log(p), math.log1p(-p)
    base = special.gammaln(n + 1)
    # Terms decrease geometrically past the mode; the ratio at k bounds all later ratios.
    ratio = (n - k) * p / ((k + 1) * (1 - p)) if k < n else 0.0
    if 0 < ratio < 1:
        m = int(min(n - k, math.ceil(_TAIL_EPS / math.log(ratio)) + 2))
    else:
        m = n - k
    j = np.arange(k, k + m + 1, dtype=np.float64)
    terms = base - special.gammaln(j + 1) - special.gammaln(n - j + 1) + j * lp + (n - j) * lq
    return float(special.logsumexp(terms))


def _gamma_log_sf_exact(n: int, s: float) -> float:
    """ln Q(n, s) for integer n via the Poisson identity, summed from k = n-1 downward."""
    if n <= 0:
        return 0.0 if s <= 0 else -math.inf
    if s <= 0:
        return 0.0
    ls = math.log(s)
    ratio = (n - 1) / s
    if 0 < ratio < 1:
        m = int(min(n - 1, math.ceil(_TAIL_EPS / math.log(ratio)) + 2))
    else:
        m = n - 1
    k = np.arange(n - 1 - m, n, dtype=np.float64)
    terms = -s + k * ls - special.gammaln(k + 1)
    return float(special.logsumexp(terms))


def binomial_log_sf(successes, trials, p: float, *, deep: bool = True) -> np.ndarray:
    """Natural log of ``P[Bin(trials, p) >= successes]``, vectorised, exact into the deep tail.

    ``deep=False`` skips the term-by-term summation: tails below float range come out as -inf, which is
    all a threshold test on many prefixes needs (and much faster there).
    """
    k = np.atleast_1d(np.asarray(successes, dtype=np.int64))
    n = np.atleast_1d(np.asarray(trials, dtype=np.int64))
    k, n = np.broadcast_arrays(k, n)
    out = np.zeros(k.shape, dtype=np.float64)
    live = (k > 0) & (n > 0)
    out[(k > n)] = -np.inf
    live &= k <= n
    pv = special.betainc(k[live].astype(np.float64), (n[live] - k[live] + 1).astype(np.float64), p)
    with np.errstate(divide="ignore"):
        out[live] = np.log(pv)
    check = deep and live.any()
    tail = np.flatnonzero(live & (np.exp(out) < _P_SWITCH)) if check else np.zeros(0, dtype=np.int64)
    for i in tail:
        out.flat[i] = _binom_log_sf_exact(int(k.flat[i]), int(n.flat[i]), p)
    return np.minimum(out, 0.0)


def gamma_log_sf(shape, total, *, deep: bool = True) -> np.ndarray:
    """Natural log of ``Q(shape, total) = P[Gamma(shape, 1) >= total]``, vectorised, exact into the tail.

    ``deep=False``: as for :func:`binomial_log_sf`.
    """
    n = np.atleast_1d(np.asarray(shape, dtype=np.int64))
    s = np.atleast_1d(np.asarray(total, dtype=np.float64))
    n, s = np.broadcast_arrays(n, s)
    out = np.zeros(n.shape, dtype=np.float64)
    live = (n > 0) & (s > 0)
    qv = special.gammaincc(n[live].astype(np.float64), s[live])
    with np.errstate(divide="ignore"):
        out[live] = np.log(qv)
    tail = np.flatnonzero(live & (np.exp(out) < _P_SWITCH)) if deep else np.zeros(0, dtype=np.int64)
    for i in tail:
        out.flat[i] = _gamma_log_sf_exact(int(n.flat[i]), float(s.flat[i]))
    return np.minimum(out, 0.0)


def kgw_z(successes, trials, p: float) -> np.ndarray:
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (k - p * n) / np.sqrt(n * p * (1 - p))
    return np.where(n > 0, z, 0.0)


def gumbel_z(shape, total) -> np.ndarray:
    n = np.asarray(shape, dtype=np.float64)
    s = np.asarray(total, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (s - n) / np.sqrt(n)
    return np.where(n > 0, z, 0.0)


def binomial_interval(successes, trials, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided Clopper-Pearson interval of a binomial rate, vectorised."""
    from scipy import stats as sst

    k = np.asarray(successes, dtype=np.int64)
    n = np.asarray(trials, dtype=np.int64)
    tail = (1 - level) / 2
    lo = np.where(k > 0, sst.beta.ppf(tail, np.maximum(k, 1), n - k + 1), 0.0)
    hi = np.where(k < n, sst.beta.ppf(1 - tail, k + 1, np.maximum(n - k, 1)), 1.0)
    return lo, hi


def gamma_mean_interval(shape, total, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided interval of the mean of ``shape`` i.i.d. exponentials from their sum.

    ``total ~ Gamma(shape, mean)``, so ``total / mean`` is a pivot with a ``Gamma(shape, 1)`` law.
    """
    from scipy import stats as sst

    n = np.asarray(shape, dtype=np.int64)
    s = np.asarray(total, dtype=np.float64)
    if not n.size:
        return np.zeros(0), np.zeros(0)
    tail = (1 - level) / 2
    return s / sst.gamma.ppf(1 - tail, n), s / sst.gamma.ppf(tail, n)


def holm(log_p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (natural log), over the last axis (the family of keys).

    Strong family-wise error control for any dependence between keys; ``min`` of the result is the
    Bonferroni-corrected best key.
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    m = log_p.shape[-1]
    order = np.argsort(log_p, axis=-1)
    sorted_lp = np.take_along_axis(log_p, order, axis=-1)
    factors = np.log(m - np.arange(m, dtype=np.float64))
    adj = np.minimum(np.maximum.accumulate(sorted_lp + factors, axis=-1), 0.0)
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=-1)
    return out


def to_p(log_p) -> np.ndarray:
    """p from ln p (0.0 where it underflows; keep the log10 for those)."""
    return np.exp(np.asarray(log_p, dtype=np.float64))


def to_log10(log_p) -> np.ndarray:
    return np.asarray(log_p, dtype=np.float64) / LN10

"""The block index behind the nearest-benign-profile score gives the same answers as comparing every pair:
the index itself against a full scan, and a calibration fitted and queried through it against the
pairwise fit it replaced (kept here as the reference)."""

from __future__ import annotations

import numpy as np
import pytest

from distillguard.monitor.detectors import NULL_SAMPLE, Calibration, prepare_rows
from distillguard.monitor.features import FEATURE_NAMES
from distillguard.monitor.nearest import BlockIndex, nearest_allowed, orthant_distances


def _brute_kth(x, z, k, allowed):
    zq = np.where(np.isnan(z), -np.inf, z)
    ref = np.where(np.isnan(x), np.inf, x)
    with np.errstate(invalid="ignore"):
        d = orthant_distances(zq, ref)
    d = np.where(allowed, d, np.inf)
    fin = np.isfinite(d)
    if not fin.any():
        return float("nan")
    return float(np.sort(d[fin])[min(k, int(fin.sum())) - 1])


def test_block_index_equals_a_full_scan_with_nans_ties_groups_and_exclusions():
    rng = np.random.default_rng(5)
    n, f = 1500, 9
    x = rng.normal(size=(n, f)) * rng.uniform(0.2, 3.0, size=f)
    x[:, 3] = np.round(x[:, 3])  # many ties
    x[rng.random((n, f)) < 0.05] = np.nan  # undefined features
    x[100:400] = x[100] + rng.normal(scale=0.01, size=(300, f))  # a tight campaign ...
    groups = np.arange(n)
    groups[100:400] = -7  # ... that may not vouch for itself
    idx = BlockIndex(x, groups=groups, block=16)
    for q in rng.choice(n, 200, replace=False):
        z = x[q] + rng.normal(scale=0.5, size=f)
        z[rng.random(f) < 0.1] = np.nan
        excl = np.unique(np.append(rng.choice(n, 5), q))
        for k in (1, 3):
            allowed = groups != groups[q]
            allowed[excl] = False
            d, row = idx.orthant_kth(z, k, excl, int(groups[q]))
            assert d == _brute_kth(x, z, k, allowed)
            assert allowed[row]
            allowed = np.ones(n, dtype=bool)
            allowed[excl] = False
            assert idx.orthant_kth(z, k, excl)[0] == _brute_kth(x, z, k, allowed)
    # Euclidean nearest neighbour of every row, lowest row on ties, as argmin over the full matrix
    xf = np.nan_to_num(x)
    sq = (xf * xf).sum(axis=1)
    # through the k-d tree (the campaign's rows must look past 300 rows of their own group)
    nn = nearest_allowed(xf, groups, [np.array([q]) for q in range(n)])
    for q in range(0, n, 3):
        d2 = sq[q] + sq - 2.0 * (xf @ xf[q])
        d2[groups == groups[q]] = np.inf
        assert nn[q] == int(np.argmin(d2)) or d2[nn[q]] == pytest.approx(d2.min(), rel=1e-12, abs=1e-12)
    # nothing allowed
    assert np.isnan(BlockIndex(x[:3]).orthant_kth(x[0], 1, np.arange(3))[0])


def pairwise_fit(rows, *, k, source, groups=None, features=None, min_beta=0.05):
    """The calibration as it was fitted before the block index: every pair compared (reference only)."""
    names, raw, tr, center, units, ids, grp, conflicts, z0 = prepare_rows(rows, features, groups)
    n = len(rows)

    def allowed(i):
        ok = grp != grp[i]
        ok[conflicts[i]] = False
        return ok

    sq = (z0 * z0).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z0 @ z0.T)
    for r in range(n):
        d2[r, ~allowed(r)] = np.inf
    nn = np.argmin(d2, axis=1)
    local = np.nanmedian(np.abs(tr - tr[nn]), axis=0) * 1.4826
    scale = np.maximum(np.where(np.isfinite(local), local, 0.0), units)
    z = (tr - center) / scale
    cal = Calibration(names, center, scale, raw, z, ids, np.zeros(0), 0.0, 1.0, 1.0, k, source, min_beta)
    single = [i for i in range(n) if len(ids[i]) == 1] or list(range(n))
    assert len(single) <= NULL_SAMPLE
    loo = np.array([cal._knn_brute(z[i], allowed(i))[0] for i in single])
    cal.null = np.sort(loo[np.isfinite(loo)])
    cal._fit_tail()
    return cal


def _population(rng, n):
    """Feature rows of several kinds of account (with undefined features and a linked campaign)."""
    kinds = rng.choice(5, size=n, p=[0.6, 0.15, 0.1, 0.05, 0.1])
    means = rng.normal(size=(5, len(FEATURE_NAMES))) * 0.6
    rows, groups = [], []
    for i, kd in enumerate(kinds):
        v = means[kd] + rng.normal(scale=0.15 if kd == 4 else 0.3, size=len(FEATURE_NAMES))
        feats = {}
        for j, f in enumerate(FEATURE_NAMES):
            if rng.random() < 0.03:
                continue  # undefined
            feats[f] = float(1 / (1 + np.exp(-v[j]))) if f.endswith("_rate") else float(v[j])
        rows.append(((f"a{i}",), feats))
        groups.append(n + 1 if kd == 4 else i)  # kind 4: one linked campaign
    # pooled cluster rows (their members never vouch for them)
    camp = [f"a{i}" for i in np.nonzero(kinds == 4)[0][:6]]
    rows.append((tuple(camp), rows[int(camp[0][1:])][1]))
    groups.append(n + 2)
    return rows, groups


@pytest.mark.parametrize("k,source", [(3, "population"), (1, "reference")])
def test_calibration_through_the_index_equals_the_pairwise_fit(k, source):
    rng = np.random.default_rng(11)
    rows, groups = _population(rng, 700)
    new = Calibration.fit(rows, k=k, source=source, groups=groups)
    old = pairwise_fit(rows, k=k, source=source, groups=groups)
    np.testing.assert_allclose(new.scale, old.scale, rtol=1e-12)
    np.testing.assert_allclose(new.null, old.null, rtol=1e-12, atol=1e-12)
    assert (new.tail_u, new.tail_p) == pytest.approx((old.tail_u, old.tail_p), rel=1e-12)
    assert new.tail_beta == pytest.approx(old.tail_beta, rel=1e-12)
    for i, (ids, feats) in enumerate(rows[:300]):
        excl = {f"a{j}" for j in range(i, i + 4)}
        a_new = new.assess(ids, 100, feats, exclude=excl)
        allowed = np.ones(len(rows), dtype=bool)
        for r, (rid, _) in enumerate(rows):
            if set(rid) & (set(ids) | excl):
                allowed[r] = False
        score, j = old._knn_brute(old.z(feats), allowed)
        assert a_new.score == pytest.approx(score, rel=1e-12, abs=1e-12)
        assert a_new.p_value == pytest.approx(old.p_value(score), rel=1e-9, abs=1e-12)
    # the restricted look is the same fit on fewer features
    sub = ("cot_rate", "identity_rate", "coverage", "novelty")
    np.testing.assert_allclose(
        new.restrict(sub).null, pairwise_fit(rows, k=k, source=source, features=sub, min_beta=1.0).null
    )


def pairwise_rate_p(null, queries, features, keep):
    """The elicitation look's p-value as it was computed: every kept reference row's binomial tail."""
    from scipy.stats import binom

    n, best, texts = max(int(queries), 1), 1.0, []
    for j, f in enumerate(null.features):
        rate = features.get(f, float("nan"))
        if not np.isfinite(rate) or not keep.any():
            continue
        k = int(round(rate * (n + 20.0)))
        if k <= 0:
            continue
        p = float(np.mean(binom.sf(k - 1, n, null.upper[keep, j])))
        best = min(best, p)
        if p <= 0.05:
            obs = null.k[keep, j] / np.maximum(null.n[keep], 1.0)
            texts.append((f, float((obs <= k / n).mean()), float(obs.max())))
    return min(1.0, len(null.features) * best), texts


def test_elicitation_counts_by_distinct_rate_equal_the_sum_over_every_row():
    from distillguard.monitor.detectors import ELICITATION, RateNull

    rng = np.random.default_rng(4)
    rows = []
    for i in range(900):
        hot = i % 9 == 0
        feats = {"log_queries": float(rng.uniform(2.0, 3.5))}
        for f in ELICITATION:
            feats[f] = float(rng.beta(2, 8) if hot else (rng.random() < 0.2) * rng.beta(1, 30))
        rows.append(((f"a{i}",), feats))
    null = RateNull.from_calibration(Calibration.fit(rows, k=3, source="population"))
    assert len(np.unique(null.upper[:, 0])) < len(rows)  # shared rates are summed once
    smallest = 1.0
    for i in range(0, 900, 7):
        ids, feats = rows[i]
        excl = {f"a{(i + 1) % 900}", f"a{(i + 2) % 900}"}
        keep = np.array([not ({r[0][0]} & ({ids[0]} | excl)) for r in rows])
        queries = int(round(10 ** feats["log_queries"]))
        got = null.assess(ids, queries, feats, exclude=excl)
        want, texts = pairwise_rate_p(null, queries, feats, keep)
        assert got.p_value == pytest.approx(want, rel=1e-9, abs=1e-300)
        assert {r["feature"] for r in got.reasons} == {t[0] for t in texts}
        smallest = min(smallest, got.p_value)
        for r in got.reasons:
            f, pct, top = next(t for t in texts if t[0] == r["feature"])
            assert r["benign_percentile"] == pytest.approx(pct, rel=1e-3)
            assert f"{100 * top:.2g}%" in r["text"]
    assert smallest < 0.05
    # a harvester far above every reference row: only the top rates matter, the rest is cut off
    feats = {f: 0.9 for f in ELICITATION}
    got = null.assess(("h",), 500, feats)
    want, _ = pairwise_rate_p(null, 500, feats, np.ones(len(rows), dtype=bool))
    assert got.p_value < 1e-12
    assert got.p_value == pytest.approx(want, rel=1e-9)

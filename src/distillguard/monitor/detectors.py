"""Detectors and the benign-calibrated risk score: pure statistics, no I/O.

Three layers:

1. **Stream statistics** over an entity's sampled prompts: PRADA (Juuti et al. 2019: Shapiro-Wilk W of
   each query's minimum distance to the earlier ones) and benign-calibrated MMD (Liu, Guo, Dong 2026:
   RBF kernel mix at {0.5, 1, 2, 4} x the median distance, a null from benign-vs-benign window pairs,
   score = mean MMD^2 against 20 benign reference windows). They become two of the features.
2. **Calibration** (:class:`Calibration`): every feature is put on a robust unit scale fitted on a benign
   reference (median and MAD, floored by the feature's ``unit``), and an entity is compared with the
   *closest benign profile*: its score is the one-sided distance ``sqrt(sum_f max(0, z_f - z_ref,f)^2)``
   to the ``k``-th nearest reference entity. Being less suspicious than a neighbour on some feature never
   helps or hurts; being more suspicious on several at once adds up. This is what keeps the hard negatives
   normal: a researcher's step-by-step rate is matched by other researchers, a batch job's volume by other
   batch jobs, but a chain-of-thought harvester is more than every benign profile on rate, volume, pace
   and breadth together.
3. **A stated false-alarm rate**: the same score is computed leave-one-out for every reference entity (of
   a reference extended by a known-good period, every entity of the period when the period's own null is
   used, the base's then neighbours only; every entity of the base when its null is kept, the period's
   then neighbours only: :meth:`Calibration.extended`); its
   upper tail is fitted (peaks over a threshold with an exponential tail, or, when the reference is the
   unlabelled population, a robust fit to its central half) and turned into a p-value = the estimated
   fraction of benign entities scoring at least as high. ``risk = 1 - p``. Tiers are thresholds on ``p``
   (see :mod:`distillguard.monitor.decisions`), so each tier carries a benign false-alarm rate per scan.

4. **Elicitation counts** (:class:`RateNull`): extraction (logit_bias sweeps, logprobs over whole
   answers) and suggestive elicitation (reasoning traces, identity questions, logprobs at all) as binomial
   counts against every benign reference profile's rate (at its 95% upper bound; of an extended
   reference, the profiles of whichever null it keeps, and with the base's null kept the period's too,
   the larger p-value counting). Most benign entities
   elicit nothing, so this needs no tail extrapolation, and resembling a benign kind on other features
   cannot cancel it. :func:`judge.judge` counts extraction on its own; suggestive elicitation only when
   breadth (coverage), network churn or a linked campaign corroborates it, because evaluation harnesses
   ask for reasoning and logprobs too; and the full profile score only with intent (the joint look at
   :data:`INTENT`), extraction, corroboration or campaign linkage.

The p-values are model-based beyond the range of the reference (a 0.1% rate cannot be read off a few
hundred benign accounts); ``monitor eval`` measures the rate actually observed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from distillguard.monitor.features import FEATURE_NAMES, FEATURES, RATE_FEATURES
from distillguard.monitor.nearest import BlockIndex, nearest_allowed

# --------------------------------------------------------------------------------------------------
# PRADA


def prada_w(min_dist: np.ndarray, min_points: int = 20) -> float:
    """Shapiro-Wilk W of the finite minimum distances (``nan`` with fewer than ``min_points`` or when they
    are all equal). PRADA alarms below 0.9; here W feeds the calibrated score instead of a fixed cut."""
    from scipy.stats import shapiro

    d = np.asarray(min_dist, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < min_points or float(np.ptp(d)) < 1e-9:
        return float("nan")
    return float(shapiro(d[:5000]).statistic)


# --------------------------------------------------------------------------------------------------
# MMD


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xx = np.einsum("ij,ij->i", x, x)[:, None]
    yy = np.einsum("ij,ij->i", y, y)[None, :]
    return np.maximum(xx + yy - 2.0 * (x @ y.T), 0.0)


def _kernel_mean(d2: np.ndarray, gammas: np.ndarray, unbiased: bool) -> float:
    k = np.exp(-d2[None, :, :] * gammas[:, None, None]).sum(axis=0)
    if unbiased:
        n = k.shape[0]
        if n < 2:
            return 0.0
        return float((k.sum() - np.trace(k)) / (n * (n - 1)))
    return float(k.mean())


def mmd2(x: np.ndarray, y: np.ndarray, gammas: np.ndarray) -> float:
    """Unbiased MMD^2 between samples ``x`` and ``y`` under a sum of RBF kernels ``exp(-gamma d^2)``."""
    return (
        _kernel_mean(_sq_dists(x, x), gammas, True)
        + _kernel_mean(_sq_dists(y, y), gammas, True)
        - 2.0 * _kernel_mean(_sq_dists(x, y), gammas, False)
    )


@dataclass
class MMDReference:
    """Benign reference windows, kernel bandwidths and the benign-vs-benign null (the recipe's steps).

    ``pool`` holds benign prompt embeddings; ``account_windows`` the embeddings of single benign accounts,
    so the null compares one benign *account's* traffic with the benign mixture, which is what a scored
    account is. ``score(x)`` is the mean MMD^2 of ``x`` (its first ``window`` rows) against ``n_ref``
    reference windows; ``standardized`` is that score in units of the null's spread.
    """

    windows: list[np.ndarray]
    gammas: np.ndarray
    null: np.ndarray
    window: int
    _self_terms: list[float] = field(default_factory=list, repr=False)
    _stack: np.ndarray | None = field(default=None, repr=False)
    _starts: np.ndarray | None = field(default=None, repr=False)
    _token: str | None = field(default=None, repr=False)

    @classmethod
    def fit(
        cls,
        pool: np.ndarray,
        account_windows: Sequence[np.ndarray],
        *,
        window: int = 64,
        n_ref: int = 20,
        n_null: int = 1000,
        seed: int = 0,
    ) -> MMDReference | None:
        """``None`` when there is too little benign text for windows of ``window`` queries."""
        rng = np.random.default_rng(seed)
        pool = np.asarray(pool, dtype=np.float32)
        usable = [w for w in account_windows if len(w) >= max(8, window // 4)]
        if len(pool) < window or not usable:
            return None
        sub = pool[rng.choice(len(pool), size=min(len(pool), 1000), replace=False)]
        d = np.sqrt(_sq_dists(sub, sub)[np.triu_indices(len(sub), k=1)])
        med = float(np.median(d[d > 0])) if np.any(d > 0) else 1.0
        gammas = np.array([1.0 / (2.0 * (s * med) ** 2) for s in (0.5, 1.0, 2.0, 4.0)])
        windows = [pool[rng.choice(len(pool), size=window, replace=False)] for _ in range(n_ref)]
        ref = cls(windows, gammas, np.zeros(0), window)
        ref._self_terms = [_kernel_mean(_sq_dists(w, w), gammas, True) for w in windows]
        null = np.empty(n_null)
        for i in range(n_null):
            acct = usable[int(rng.integers(len(usable)))]
            take = min(window, len(acct))
            x = acct[rng.choice(len(acct), size=take, replace=False)]
            j = int(rng.integers(n_ref))
            null[i] = ref._pair(x, j)
        ref.null = np.sort(null)
        return ref

    def _pair(self, x: np.ndarray, j: int, xx: float | None = None) -> float:
        w = self.windows[j]
        if xx is None:
            xx = _kernel_mean(_sq_dists(x, x), self.gammas, True)
        return xx + self._self_terms[j] - 2.0 * _kernel_mean(_sq_dists(x, w), self.gammas, False)

    def score(self, x: np.ndarray) -> float:
        """Mean MMD^2 of the first ``window`` rows of ``x`` against every reference window.

        The cross terms against all windows come from one matrix product with the stacked windows (one
        call per account instead of one per window: this runs once for each of tens of thousands of
        accounts)."""
        x = np.asarray(x, dtype=np.float32)[: self.window]
        xx = _kernel_mean(_sq_dists(x, x), self.gammas, True)
        if self._stack is None:
            self._stack = np.concatenate(self.windows).astype(np.float32)
            self._starts = np.cumsum([0] + [len(w) for w in self.windows[:-1]])
        g = self.gammas.astype(np.float32)[:, None, None]
        k = np.exp(-_sq_dists(x, self._stack)[None, :, :] * g).sum(axis=0, dtype=np.float64)
        sizes = np.array([len(w) for w in self.windows], dtype=np.float64)
        cross = np.add.reduceat(k.sum(axis=0), self._starts) / (len(x) * sizes)
        return float(np.mean(xx + np.asarray(self._self_terms) - 2.0 * cross))

    @property
    def token(self) -> str:
        """A short digest of the reference (windows, bandwidths, null): keys cached scores."""
        if self._token is None:
            import hashlib

            h = hashlib.sha256(self.gammas.tobytes() + np.asarray(self.null).tobytes())
            for w in self.windows:
                h.update(np.asarray(w, dtype=np.float32).tobytes())
            self._token = h.hexdigest()[:16]
        return self._token

    @property
    def threshold(self) -> float:
        """The recipe's alarm threshold: the null's 95th percentile."""
        return float(np.quantile(self.null, 0.95))

    def p_value(self, score: float) -> float:
        """Fraction of benign-vs-benign pairs at least as far apart (with the +1 of a permutation test)."""
        return float((1 + np.count_nonzero(self.null >= score)) / (1 + len(self.null)))

    def standardized(self, score: float) -> float:
        med = float(np.median(self.null))
        mad = float(np.median(np.abs(self.null - med))) * 1.4826
        return (score - med) / max(mad, 1e-6)


# --------------------------------------------------------------------------------------------------
# Calibration against benign traffic


_UNITS = {f.name: f.unit for f in FEATURES}
# Intent signals: what the traffic asks for.
# - Extraction (logit_bias probes that read logprobs, logprobs over whole answers) reads the teacher's
#   distribution itself: evidence on its own.
# - Suggestive elicitation (reasoning traces, identity questions, logprobs at all, logit_bias alone) is what
#   distillers ask, and also what evaluation harnesses (chain-of-thought benchmarks, multiple choice scored
#   with logprobs), classifiers (a bias that forces a label) and researchers ask: on its own test it counts
#   only when something else about the entity corroborates it (breadth, evasion or a linked campaign). It
#   also enters the joint intent look below, where reasoning requests beyond every benign profile can open
#   the profile look by themselves (how a chain-of-thought benchmark harness was flagged in held-out
#   traffic: see docs/heldout.md).
# - Breadth (coverage of the capability space) and evasion (rotating networks) corroborate elicitation.
#   Novelty and paraphrase do not: one benchmark run never repeats an item, and templated multiple-choice
#   items or support FAQs read as paraphrases of each other.
EXTRACTION = ("bias_probe_rate", "logprob_gen_rate")
SUGGESTIVE = ("cot_rate", "identity_rate", "logprobs_rate", "logit_bias_rate")
ELICITATION = (*EXTRACTION, *SUGGESTIVE)
BREADTH = ("coverage",)
EVASION = ("ip_churn",)
# The joint look at what is asked: elicitation, breadth and novelty together. Each alone resembles some
# benign kind (researchers ask for reasoning, harnesses for logprobs, coding products cover a lot);
# together, beyond every benign profile, they open the full profile look.
INTENT = ("bias_probe_rate", "logprob_gen_rate", "cot_rate", "identity_rate", "coverage", "novelty")
# What sharing one prompt template does to a group's pooled text, whoever sends it: templated, near-duplicate
# prompts unlike the benign text, close to each other and not diverse. Linkage by shared templates opens
# the profile look without these features: counting them again would convict the template twice.
TEXT_SHAPE = ("template_rate", "paraphrase_rate", "mmd", "prada", "diversity")
# The smallest tail scale of a restricted look, in unit scales per e-fold: most benign entities show no
# elicitation at all, and an all-zero null must not make one odd question look impossible.
SUBSET_MIN_BETA = 1.0
# Leave-one-out null draws at most: 10,000 place the 80% quantile and the tail mean to within a few
# percent, and each draw is a nearest-neighbour search over every reference entity.
NULL_SAMPLE = 10_000


def _transform(name: str, values: np.ndarray) -> np.ndarray:
    """Variance-stabilising scale: arcsine-sqrt for rates (binomial noise ~ 1/(2 sqrt n)), identity else."""
    v = np.asarray(values, dtype=np.float64)
    if name in RATE_FEATURES:
        return np.arcsin(np.sqrt(np.clip(v, 0.0, 1.0)))
    return v


@dataclass
class Assessment:
    """One entity's calibrated verdict: score, p-value, risk and the reasons behind them."""

    accounts: tuple[str, ...]
    queries: int
    score: float
    p_value: float
    risk: float
    reasons: list[dict[str, Any]]
    nearest: tuple[str, ...] | None = None
    scored: bool = True

    def top_reason_text(self, k: int = 3) -> str:
        return "; ".join(r["text"] for r in self.reasons[:k]) or "no excess over benign profiles"


def prepare_rows(
    rows: Sequence[tuple[tuple[str, ...], dict[str, float]]],
    features: Sequence[str] | None = None,
    groups: Sequence[int] | None = None,
) -> tuple:
    """Reference rows as every fit starts from them: ``(names, raw, transformed, center, units, ids, groups,
    conflicts, z0)``, where ``conflicts[i]`` are the rows sharing an account with row ``i`` (an account and
    its cluster never vouch for each other, nor rows of one group) and ``z0`` the rows in global robust
    units (median and MAD), the space in which each row's nearest allowed neighbour is found."""
    warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)  # undefined features are nan
    names = tuple(features) if features is not None else FEATURE_NAMES
    raw = np.array([[r[1].get(f, np.nan) for f in names] for r in rows], dtype=np.float64)
    tr = np.column_stack([_transform(f, raw[:, j]) for j, f in enumerate(names)])
    center = np.nanmedian(tr, axis=0)
    center = np.where(np.isfinite(center), center, 0.0)
    units = np.array([_UNITS[f] for f in names])
    ids = [tuple(r[0]) for r in rows]
    grp = np.asarray(groups if groups is not None else np.arange(len(rows)))
    rows_of: dict[str, list[int]] = {}
    for i, x in enumerate(ids):
        for a in x:
            rows_of.setdefault(a, []).append(i)
    conflicts = [sorted({j for a in x for j in rows_of[a]}) for x in ids]
    mad = np.nanmedian(np.abs(tr - center), axis=0) * 1.4826
    scale0 = np.maximum(np.where(np.isfinite(mad), mad, 0.0), units)
    z0 = np.where(np.isfinite(tr), (tr - center) / scale0, 0.0)
    return names, raw, tr, center, units, ids, grp, conflicts, z0


def _unit_scales(tr: np.ndarray, units: np.ndarray, grp: np.ndarray, excl: list, z0: np.ndarray):
    """Local unit scales: the typical difference between a benign entity and its nearest benign neighbour
    (within-kind noise), not the spread across kinds, which the nearest-profile comparison absorbs. Each
    row's nearest allowed neighbour comes from a block index (exact, without comparing all pairs)."""
    n = len(tr)
    nn = nearest_allowed(z0, grp, excl)
    nn = np.where(nn >= 0, nn, np.arange(n))  # nobody allowed: no local difference from this row
    local = np.nanmedian(np.abs(tr - tr[nn]), axis=0) * 1.4826
    return np.maximum(np.where(np.isfinite(local), local, 0.0), units)


@dataclass
class Calibration:
    """Benign unit scales, reference profiles, and the fitted null of the nearest-benign-profile score."""

    features: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    reference: np.ndarray  # [R, F] raw feature values of the reference entities
    reference_z: np.ndarray  # [R, F]
    reference_ids: list[tuple[str, ...]]
    null: np.ndarray  # sorted leave-one-out scores of the reference
    tail_u: float
    tail_p: float
    tail_beta: float
    k: int
    source: str
    min_beta: float = 0.05
    # the first ``neighbours_only`` reference rows are profiles to be compared with but stay out of the null:
    # an extended base's entities, which are not draws from the deployment's benign traffic
    neighbours_only: int = 0
    # the last ``added`` rows are a known-good period's entities placed in this calibration's geometry as
    # neighbours only (:meth:`extended`): the null, centre and unit scales stay those of the rows before them
    added: int = 0

    # -- fitting --------------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        rows: Sequence[tuple[tuple[str, ...], dict[str, float]]],
        *,
        k: int = 1,
        source: str = "reference",
        groups: Sequence[int] | None = None,
        features: Sequence[str] | None = None,
        min_beta: float = 0.05,
        neighbours_only: int = 0,
    ) -> Calibration:
        """Fit on ``rows`` = ``(accounts, features)`` of benign reference entities.

        ``source="reference"`` (a known-benign period or labelled benign accounts) fits the null's tail on
        its top 20%. ``source="population"`` (the scanned population itself, attackers included) fits it
        on the central half only, which a minority of attackers cannot move much; ``groups`` marks rows that
        must not vouch for each other (the linked accounts of one cluster). ``features`` restricts the
        score to a subset (a restricted look, e.g. :data:`ELICITATION`); ``min_beta`` floors its tail scale.
        The first ``neighbours_only`` rows are profiles only: the null is the leave-one-out scores of the
        others (against every row), so it is a sample of the traffic the p-values are claimed for.
        """
        if len(rows) < 3:
            raise ValueError("calibration needs at least 3 reference entities")
        names, raw, tr, center, units, ids, grp, conflicts, z0 = prepare_rows(rows, features, groups)
        n = len(rows)
        excl = [np.asarray(c, dtype=np.int64) for c in conflicts]
        if neighbours_only:
            if n - neighbours_only < 3:
                raise ValueError("calibration needs at least 3 reference entities besides its neighbours")
            # the score's geometry is the period's own: its centre and unit scales, with the neighbours placed
            # in it (a base tighter than the deployment's traffic would shrink the units and reshape the
            # score's tail, which the null, fitted on the period's rows, would then misread)
            own_groups = None if groups is None else list(groups)[neighbours_only:]
            _, _, tr_o, center, _, _, grp_o, conf_o, z0_o = prepare_rows(
                rows[neighbours_only:], features, own_groups
            )
            excl_o = [np.asarray(c, dtype=np.int64) for c in conf_o]
            scale = _unit_scales(tr_o, units, grp_o, excl_o, z0_o)
        else:
            scale = _unit_scales(tr, units, grp, excl, z0)
        z = (tr - center) / scale
        cal = cls(
            names,
            center,
            scale,
            raw,
            z,
            ids,
            np.zeros(0),
            0.0,
            1.0,
            1.0,
            k,
            source,
            min_beta,
            neighbours_only,
        )
        cal._index = BlockIndex(z, groups=grp)
        # the null is over single accounts (what p-values are quoted for); pooled rows serve as neighbours
        vouch = range(neighbours_only, n)
        single = [i for i in vouch if len(ids[i]) == 1] or list(vouch)
        if len(single) > NULL_SAMPLE:  # a seeded subsample: the null's quantiles need no more draws
            pick = np.random.default_rng(0).choice(len(single), NULL_SAMPLE, replace=False)
            single = [single[i] for i in np.sort(pick)]
        loo = np.array([cal._index.orthant_kth(z[i], k, excl[i], int(grp[i]))[0] for i in single])
        cal.null = np.sort(loo[np.isfinite(loo)])
        cal._fit_tail()
        return cal

    def _fit_tail(self) -> None:
        """Exponential tail above ``tail_u``. Its scale is the 95% upper confidence bound of the maximum
        likelihood estimate (``2 m beta / chi2_0.05(2m)`` over ``m`` exceedances), so a small reference
        gives conservative (larger) p-values instead of overclaiming."""
        from scipy.stats import chi2

        s = self.null
        n = len(s)
        if self.source == "population":
            q50, q75 = float(np.quantile(s, 0.5)), float(np.quantile(s, 0.75))
            self.tail_u, self.tail_p = q50, 0.5
            m = max(n // 4, 1)
            beta = (q75 - q50) / math.log(2.0)
        else:
            u = float(np.quantile(s, 0.8))
            exceed = s[s > u] - u
            self.tail_u = u
            self.tail_p = (1 + len(exceed)) / (1 + n)
            m = max(len(exceed), 1)
            beta = float(exceed.mean()) if len(exceed) else 0.0
        upper = 2.0 * m / float(chi2.ppf(0.05, 2 * m))
        self.tail_beta = max(beta * upper, self.min_beta)

    def restrict(self, features: Sequence[str], *, min_beta: float = SUBSET_MIN_BETA) -> Calibration:
        """The same reference, scored on ``features`` only (refitted from the stored raw profiles; rows
        :meth:`extended` added are added again to the refitted look)."""
        cache = getattr(self, "_restricted", None)
        if cache is None:
            cache = self._restricted = {}
        key = (tuple(features), min_beta)
        if key not in cache:
            if self.added:
                added = self.rows()[len(self.reference_ids) - self.added :]
                cache[key] = self.core().restrict(features, min_beta=min_beta).extended(added)
            else:
                cache[key] = Calibration.fit(
                    self.rows(),  # fit reads ``features`` of them
                    k=self.k,
                    source=self.source,
                    features=features,
                    min_beta=min_beta,
                    neighbours_only=self.neighbours_only,
                )
        return cache[key]

    def core(self) -> Calibration:
        """This calibration without the rows :meth:`extended` added: the base it extends (kept once)."""
        if not self.added:
            return self
        core = self.__dict__.get("_core")
        if core is None:
            n = len(self.reference_ids) - self.added
            core = self.__dict__["_core"] = replace(
                self,
                reference=self.reference[:n],
                reference_z=self.reference_z[:n],
                reference_ids=list(self.reference_ids[:n]),
                added=0,
            )
        return core

    def extended(self, rows: Sequence[tuple[tuple[str, ...], dict[str, float]]]) -> Calibration:
        """This calibration with ``rows`` (a known-good period's entities) added as neighbours only.

        The null, its tail, the centre and the unit scales stay this calibration's; the rows are placed in
        its geometry and an entity is compared with them too. The score is the distance to the ``k``-th
        nearest allowed profile, which more profiles can only shorten, so every look's p-value is at least
        this calibration's, and an entity that resembles one of the period's is cleared. Its p-values hold
        where this calibration's do (for the shipped reference: benign traffic like the simulator's, less
        the kinds the period shows). A scan takes each verdict's p-value as the larger of its p-values
        against the two (:func:`~distillguard.monitor.scan.analyse`), so that the way it combines looks
        cannot flag what the base alone would not."""
        if not rows:
            return self
        raw = np.array([[r[1].get(f, np.nan) for f in self.features] for r in rows], dtype=np.float64)
        tr = np.column_stack([_transform(f, raw[:, j]) for j, f in enumerate(self.features)])
        return replace(
            self,
            reference=np.vstack([self.reference, raw]),
            reference_z=np.vstack([self.reference_z, (tr - self.center) / self.scale]),
            reference_ids=[*self.reference_ids, *(tuple(r[0]) for r in rows)],
            added=self.added + len(rows),
        )

    # -- scoring --------------------------------------------------------------------------------------

    def z(self, features: dict[str, float]) -> np.ndarray:
        raw = np.array([features.get(f, np.nan) for f in self.features], dtype=np.float64)
        tr = np.array([_transform(f, raw[j : j + 1])[0] for j, f in enumerate(self.features)])
        return (tr - self.center) / self.scale

    def _excess(self, z: np.ndarray) -> np.ndarray:
        ex = z[None, :] - self.reference_z
        return np.where(np.isfinite(ex), np.maximum(ex, 0.0), 0.0)

    def _knn_brute(self, z: np.ndarray, allowed: np.ndarray) -> tuple[float, int]:
        """The ``k``-th nearest allowed profile by comparing with every reference row: ``O(R)`` per query.
        The reference :meth:`_knn` must agree with (tests compare them)."""
        d = np.sqrt((self._excess(z) ** 2).sum(axis=1))
        d = np.where(allowed, d, np.inf)
        if not np.isfinite(d).any():
            return float("nan"), -1
        k = min(self.k, int(np.isfinite(d).sum()))
        idx = np.argpartition(d, k - 1)[:k]
        kth = idx[np.argmax(d[idx])]
        return float(d[kth]), int(kth)

    @property
    def index(self) -> BlockIndex:
        idx = self.__dict__.get("_index")
        if idx is None:
            idx = self.__dict__["_index"] = BlockIndex(self.reference_z)
        return idx

    def _knn(self, z: np.ndarray, exclude: np.ndarray | None = None) -> tuple[float, int]:
        """The ``k``-th nearest profile but the ``exclude``d rows: distance and row (exact, block index)."""
        return self.index.orthant_kth(z, self.k, exclude)

    def _percentile(self, f_i: int, value: float) -> float:
        """Fraction of the null's entities' (not the neighbours') defined values of feature ``f_i`` at or
        below ``value``."""
        cols = self.__dict__.get("_sorted_cols")
        if cols is None:
            own = self.reference[self.neighbours_only : len(self.reference_ids) - self.added]
            cols = self.__dict__["_sorted_cols"] = [np.sort(c[np.isfinite(c)]) for c in np.asarray(own).T]
        col = cols[f_i]
        if not len(col):
            return float("nan")
        if math.isnan(value):
            return 0.0
        return float(np.searchsorted(col, value, side="right") / len(col))

    def _rows_of(self) -> dict[str, list[int]]:
        cache = getattr(self, "_rows_cache", None)
        if cache is None:
            cache = {}
            for i, ids in enumerate(self.reference_ids):
                for a in ids:
                    cache.setdefault(a, []).append(i)
            self._rows_cache = cache
        return cache

    def p_value(self, score: float) -> float:
        """Estimated fraction of benign entities scoring at least ``score``."""
        if not math.isfinite(score):
            return 1.0
        s = self.null
        if score <= self.tail_u:
            return float((1 + np.count_nonzero(s >= score)) / (1 + len(s)))
        return float(self.tail_p * math.exp(-(score - self.tail_u) / self.tail_beta))

    def score_for_p(self, p: float) -> float:
        """The score whose p-value is ``p`` (for thresholds in plots and reports)."""
        if p >= self.tail_p:
            return float(np.quantile(self.null, 1.0 - p))
        return self.tail_u + self.tail_beta * math.log(self.tail_p / p)

    def assess(
        self,
        accounts: tuple[str, ...],
        queries: int,
        features: dict[str, float],
        evidence: dict[str, list[int]] | None = None,
        *,
        exclude: set[str] | frozenset[str] = frozenset(),
        top: int = 4,
    ) -> Assessment:
        """Score one entity against the reference (never against itself or ``exclude``d accounts)."""
        z = self.z(features)
        rows_of = self._rows_of()
        score, j = self._knn(z, excluded_rows(rows_of, accounts, exclude, self.__dict__))
        p = self.p_value(score)
        reasons: list[dict[str, Any]] = []
        if j >= 0:
            ex = z - self.reference_z[j]
            ex = np.where(np.isfinite(ex), np.maximum(ex, 0.0), 0.0)
            order = np.argsort(-ex)
            for f_i in order[:top]:
                if ex[f_i] <= 0.5:
                    break
                name = self.features[f_i]
                value = features.get(name, float("nan"))
                pct = self._percentile(int(f_i), value)
                near = float(self.reference[j, f_i])
                reasons.append(
                    {
                        "feature": name,
                        "value": _round(value),
                        "benign_percentile": _round(pct),
                        "nearest_benign": _round(near),
                        "excess_sd": _round(float(ex[f_i])),
                        "seqs": list((evidence or {}).get(name, []))[:8],
                        "text": f"{name} {_fmt(value)} vs {_fmt(near)} in the closest benign profile "
                        f"(above {100 * pct:.0f}% of benign)",
                    }
                )
        return Assessment(
            accounts=tuple(accounts),
            queries=int(queries),
            score=score,
            p_value=p,
            risk=1.0 - p,
            reasons=reasons,
            nearest=self.reference_ids[j] if j >= 0 else None,
        )

    def rows(self) -> list[tuple[tuple[str, ...], dict[str, float]]]:
        """The reference entities as :meth:`fit` takes them (raw feature values; ``nan`` where unmeasured):
        what a larger reference is fitted on when it extends this one."""
        return [
            (tuple(ids), {f: float(v) for f, v in zip(self.features, row, strict=True)})
            for ids, row in zip(self.reference_ids, self.reference, strict=True)
        ]

    # -- persistence ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "reference": np.where(np.isfinite(self.reference), self.reference, None).tolist(),
            "reference_ids": [list(x) for x in self.reference_ids],
            "null": self.null.tolist(),
            "tail": {"u": self.tail_u, "p": self.tail_p, "beta": self.tail_beta},
            "k": self.k,
            "source": self.source,
            "min_beta": self.min_beta,
            "neighbours_only": self.neighbours_only,
            "added": self.added,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        names = tuple(d["features"])
        if not names or not set(names) <= set(FEATURE_NAMES):
            raise ValueError("calibration was fitted on a different feature set; fit it again")
        center, scale = np.array(d["center"], dtype=float), np.array(d["scale"], dtype=float)
        raw = np.array(
            [[np.nan if v is None else v for v in row] for row in d["reference"]], dtype=np.float64
        )
        tr = np.column_stack([_transform(f, raw[:, j]) for j, f in enumerate(names)])
        return cls(
            names,
            center,
            scale,
            raw,
            (tr - center) / scale,
            [tuple(x) for x in d["reference_ids"]],
            np.array(d["null"], dtype=float),
            float(d["tail"]["u"]),
            float(d["tail"]["p"]),
            float(d["tail"]["beta"]),
            int(d["k"]),
            str(d["source"]),
            float(d.get("min_beta", 0.05)),
            int(d.get("neighbours_only", 0)),
            int(d.get("added", 0)),
        )


def excluded_rows(
    rows_of: dict[str, list[int]],
    accounts: Sequence[str],
    exclude: set[str] | frozenset[str],
    store: dict[str, Any],
) -> np.ndarray:
    """Reference rows holding any of ``accounts`` or ``exclude`` (sorted, unique). A large ``frozenset``
    (a cluster's members, passed for each member) is looked up once and kept in ``store``: otherwise a
    cluster of ``m`` accounts costs ``m^2`` lookups."""
    base = None
    if isinstance(exclude, frozenset) and len(exclude) > 32:
        cache = store.setdefault("_excluded", {})
        base = cache.get(exclude)
        if base is None:
            base = cache[exclude] = np.asarray(
                [r for a in exclude for r in rows_of.get(a, ())], dtype=np.int64
            )
    else:
        base = np.asarray([r for a in exclude for r in rows_of.get(a, ())], dtype=np.int64)
    own = np.asarray([r for a in accounts for r in rows_of.get(a, ())], dtype=np.int64)
    return np.unique(np.concatenate([base, own]))


def _round(x: float) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.4g}")


def _fmt(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3g}"


def combine_min_p(p_values: Sequence[float]) -> float:
    """Bonferroni over several looks at the same entity (its own score and its cluster's): valid under any
    dependence between them."""
    ps = [p for p in p_values if p is not None and math.isfinite(p)]
    if not ps:
        return 1.0
    return min(1.0, len(ps) * min(ps))


# --------------------------------------------------------------------------------------------------
# Elicitation counts against benign rates


@dataclass
class RateNull:
    """Elicitation as counts: is this entity's number of reasoning-trace, identity, logprobs, logprobs
    over answers or logit_bias requests more than benign accounts ask for?

    The null: a benign entity elicits at the rate of one of the reference entities, taken at that entity's
    exact one-sided 95% upper confidence bound (a reference account that asked 0 of 30 is credited with
    up to 9.5%). The p-value of ``k`` of ``n`` is the mixture ``mean_i P(Binomial(n, r_i) >= k)`` over the
    reference, per feature, Bonferroni over its ``features`` (:data:`EXTRACTION` or :data:`SUGGESTIVE`).
    Unlike the nearest-profile score it needs no tail extrapolation, so a small reference in which nobody
    elicits still states small p-values, and no benign kind that resembles the entity in other ways can
    cancel it."""

    ids: list[tuple[str, ...]]
    k: np.ndarray  # [R, F] counts
    n: np.ndarray  # [R]
    upper: np.ndarray  # [R, F]
    features: tuple[str, ...] = ELICITATION

    @classmethod
    def from_calibration(
        cls, cal: Calibration, features: Sequence[str] = ELICITATION, *, added: bool = False
    ) -> RateNull:
        """The null of ``features`` (those the reference has: one saved before a feature existed lacks it),
        over the reference's own profiles: an extended base's entities are neighbours of the profile look
        only (:attr:`Calibration.neighbours_only`), never rates a count is held against. With ``added``,
        over the rows :meth:`Calibration.extended` added instead (a known-good period's)."""
        from scipy.stats import beta

        features = tuple(f for f in features if f in cal.features)
        cols = [cal.features.index(f) for f in features]
        end = len(cal.reference_ids) - cal.added
        lo, hi = (end, len(cal.reference_ids)) if added else (cal.neighbours_only, end)
        ref, ids = cal.reference[lo:hi], cal.reference_ids[lo:hi]
        lq = ref[:, cal.features.index("log_queries")]
        sizes = np.array([len(x) for x in ids], dtype=np.float64)
        n = np.round(np.where(np.isfinite(lq), 10.0**lq, 1.0) * sizes)
        rates = np.nan_to_num(ref[:, cols], nan=0.0)
        k = np.clip(np.round(rates * (n[:, None] + 20.0)), 0, n[:, None])
        upper = np.where(k >= n[:, None], 1.0, beta.ppf(0.95, k + 1, np.maximum(n[:, None] - k, 1e-9)))
        return cls(list(ids), k, n, upper, features)

    def _column(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Feature ``j``'s distinct upper rates (ascending) with row counts and each row's position among
        them, and the observed rates sorted with their rows (computed once)."""
        cache = self.__dict__.setdefault("_columns", {})
        if j not in cache:
            uniq, inv, counts = np.unique(self.upper[:, j], return_inverse=True, return_counts=True)
            obs = self.k[:, j] / np.maximum(self.n, 1.0)
            order = np.argsort(obs, kind="stable")
            cache[j] = (uniq, counts, inv.ravel(), obs[order], order)
        return cache[j]

    def _mixture_sf(self, j: int, k: int, n: int, out: np.ndarray) -> float:
        """``mean P(Binomial(n, r_i) >= k)`` over the reference rows but ``out``: one term per distinct
        rate ``r`` (times its count), from the largest down, stopping once the rest cannot add more than
        1e-12 of the sum (the terms increase with ``r``). ``O(distinct rates)``, not ``O(rows)``."""
        from scipy.stats import binom

        uniq, counts, inv, _, _ = self._column(j)
        c = counts.astype(np.float64)
        if len(out):
            np.subtract.at(c, inv[out], 1.0)
        below = np.concatenate([[0.0], np.cumsum(c)])  # below[h]: rows with the h smallest rates
        total, acc, hi, step = below[-1], 0.0, len(uniq), 256
        while hi > 0:
            lo = max(0, hi - step)
            sf = binom.sf(k - 1, n, uniq[lo:hi])
            acc += float(c[lo:hi] @ sf)
            hi, step = lo, step * 2
            if below[hi] * float(sf[0]) <= 1e-12 * acc:
                break
        return acc / total

    def _obs_rank(self, j: int, rate: float, out: np.ndarray) -> tuple[float, float]:
        """The share of kept reference rows observed at or below ``rate``, and the largest kept rate."""
        _, _, _, obs, order = self._column(j)
        kept = len(obs) - len(out)
        below = int(np.searchsorted(obs, rate, side="right"))
        if len(out):
            below -= int(np.count_nonzero(self.k[out, j] / np.maximum(self.n[out], 1.0) <= rate))
        excluded = set(out.tolist())
        top = next((float(obs[i]) for i in range(len(obs) - 1, -1, -1) if int(order[i]) not in excluded), 0.0)
        return below / kept, top

    def assess(
        self,
        accounts: tuple[str, ...],
        queries: int,
        features: dict[str, float],
        evidence: dict[str, list[int]] | None = None,
        *,
        exclude: set[str] | frozenset[str] = frozenset(),
    ) -> Assessment:
        rows_of = self.__dict__.get("_rows_of")
        if rows_of is None:
            rows_of = {}
            for i, x in enumerate(self.ids):
                for a in x:
                    rows_of.setdefault(a, []).append(i)
            self.__dict__["_rows_of"] = rows_of
        out = excluded_rows(rows_of, accounts, exclude, self.__dict__)
        kept = len(self.ids) - len(out)
        n = max(int(queries), 1)
        best, reasons = 1.0, []
        for j, f in enumerate(self.features):
            rate = features.get(f, float("nan"))
            if not math.isfinite(rate) or kept <= 0:
                continue
            k = int(round(rate * (n + 20.0)))
            if k <= 0:
                continue
            p = self._mixture_sf(j, k, n, out)
            best = min(best, p)
            if p > 0.05:  # not evidence: no reason to give
                continue
            pct, top = self._obs_rank(j, k / n, out)
            reasons.append(
                {
                    "feature": f,
                    "value": _round(rate),
                    "count": k,
                    "queries": n,
                    "benign_percentile": _round(pct),
                    "p_value": _round(p),
                    "seqs": list((evidence or {}).get(f, []))[:8],
                    "text": f"{f}: {k} of {n} queries vs at most {100 * top:.2g}% in any of "
                    f"{kept} benign profiles (binomial p={p:.2g})",
                }
            )
        reasons.sort(key=lambda r: r["p_value"])
        p = min(1.0, len(self.features) * best)
        return Assessment(tuple(accounts), n, -math.log10(max(p, 1e-300)), p, 1.0 - p, reasons[:4])


@dataclass
class Stricter:
    """One look held against several nulls (a reference's and a known-good period's elicitation rates):
    the largest p-value counts, which is valid wherever any one of the nulls holds."""

    nulls: tuple[RateNull, ...]

    def assess(self, *args: Any, **kwargs: Any) -> Assessment:
        return max((n.assess(*args, **kwargs) for n in self.nulls), key=lambda a: a.p_value)

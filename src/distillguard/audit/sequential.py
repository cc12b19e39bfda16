"""Anytime-valid sequential testing for radioactivity: mixture-of-likelihood-ratio e-processes.

Why: a budgeted audit queries the suspect batch after batch and wants to stop as soon as the evidence is
enough. Recomputing the fixed-sample binomial p-value after every batch and stopping when it is small is
optional stopping, which inflates the false-alarm rate without bound. An e-process does not care when we
look: under the null it is a nonnegative martingale with mean 1, so by Ville's inequality
``P[sup_n E_n >= 1/alpha] <= alpha``, and ``p_n = min(1, 1 / max_{m<=n} E_m)`` is a p-value valid at any
data-dependent stopping time.

Construction (pure math, no I/O). Each new scored (window, token) tuple gives a value ``x``, and the scheme
object (:data:`distillguard.watermark.schemes.SCHEMES`) supplies the likelihood ratio of its alternatives:

* KGW: ``x`` in {0, 1} (green), Bernoulli(gamma) under H0. For an alternative green rate ``q > gamma`` the
  likelihood ratio ``(q/gamma)^x ((1-q)/(1-gamma))^(1-x)`` has mean 1 under H0.
* Gumbel: ``x = -ln(1-u)``, Exp(1) under H0. For an alternative mean ``1 + d`` (rate ``t = 1/(1+d)``) the
  ratio ``t * exp((1 - t) x)`` has mean 1 under H0.

A fixed, equally weighted grid of alternatives (effect sizes from 0.1 to 80 points, log-spaced) is mixed;
the mixture of martingales is a martingale. Against the best single grid point it loses at most
``ln(len(grid))`` nats, and the grid is fine enough that a true effect between two points costs little. The
statistic depends on the data only through ``(n, sum x)``, so the whole path is computed in one vectorised
pass.

Validity needs each new value to be null-distributed given the past: true when every scored tuple is new
(corpus dedup) and the suspect's text does not depend on our key. For transformers-compatible (fixed-size)
green lists, tuples sharing a window are sampled without replacement and the guarantee is approximate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from distillguard.watermark.schemes import Scheme, WatermarkSpec, scheme_named

DEFAULT_EFFECTS: tuple[float, ...] = tuple(float(x) for x in np.geomspace(1e-3, 0.8, 30))


def _impl(scheme: str | Scheme) -> Scheme:
    return scheme_named(scheme) if isinstance(scheme, str) else scheme


def log_e_values(
    scheme: str | Scheme,
    count,
    total,
    *,
    gamma: float = 0.25,
    effects: tuple[float, ...] = DEFAULT_EFFECTS,
) -> np.ndarray:
    """ln E after ``count`` scored tuples with score ``total`` (vectorised over both).

    ``scheme``: a registered name or a scheme object; ``gamma``: its null rate (KGW's green rate; the
    Gumbel ratio does not use it).
    """
    n = np.atleast_1d(np.asarray(count, dtype=np.float64))
    s = np.atleast_1d(np.asarray(total, dtype=np.float64))
    eff = np.asarray(effects, dtype=np.float64)
    llr = _impl(scheme).log_likelihood_ratio(n, s, gamma, eff)
    return special.logsumexp(llr, axis=1) - math.log(len(eff))


def log_e_path(
    scheme: str | Scheme, values, *, gamma: float = 0.25, effects: tuple[float, ...] = DEFAULT_EFFECTS
) -> np.ndarray:
    """ln E_n for n = 1..len(values), the values taken in the order they were scored."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return np.zeros(0)
    return log_e_values(scheme, np.arange(1, v.size + 1), np.cumsum(v), gamma=gamma, effects=effects)


def anytime_log_p(log_e: np.ndarray) -> np.ndarray:
    """ln of the anytime-valid p-value after each step: ``-max(0, running max of ln E)``."""
    le = np.asarray(log_e, dtype=np.float64)
    if le.size == 0:
        return le
    return -np.maximum(np.maximum.accumulate(le), 0.0)


@dataclass
class EProcess:
    """A running e-process over scored values, fed batch by batch.

    ``update`` takes the values of the tuples newly scored (in scoring order) and returns whether the
    anytime-valid p-value is now at or below ``stop_p``. ``log_p`` is the natural log of that p-value.
    """

    scheme: str  # a registered scheme name
    gamma: float = 0.25  # the scheme's null rate
    effects: tuple[float, ...] = DEFAULT_EFFECTS
    count: int = 0
    total: float = 0.0
    max_log_e: float = 0.0
    history: list[tuple[int, float]] = field(default_factory=list)  # (count, ln p) after each batch

    @classmethod
    def for_spec(cls, spec: WatermarkSpec, **kwargs) -> EProcess:
        """The e-process for ``spec``'s scheme at its exact null rate."""
        return cls(spec.scheme, spec.impl.null_rate(spec), **kwargs)

    def update(self, values) -> float:
        v = np.asarray(values, dtype=np.float64)
        if v.size:
            path = log_e_values(
                self.scheme,
                self.count + np.arange(1, v.size + 1),
                self.total + np.cumsum(v),
                gamma=self.gamma,
                effects=self.effects,
            )
            self.max_log_e = max(self.max_log_e, float(path.max()))
            self.count += int(v.size)
            self.total += float(v.sum())
        self.history.append((self.count, self.log_p))
        return self.log_p

    @property
    def log_p(self) -> float:
        return -max(self.max_log_e, 0.0)

    def crossed(self, stop_p: float) -> bool:
        return self.log_p <= math.log(stop_p)

    def describe(self) -> dict:
        return {
            "method": "mixture likelihood-ratio e-process (Ville's inequality), p = 1 / max E",
            "alternatives": _impl(self.scheme).alternatives
            + f", d log-spaced in [{min(self.effects):g}, {max(self.effects):g}], {len(self.effects)} points",
            "scored": self.count,
            "log10_p_value": self.log_p / math.log(10),
        }

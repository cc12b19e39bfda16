"""Watermark schemes as pure functions of (key, window, token).

Two schemes share one keying:

* **KGW** (Kirchenbauer et al.): a keyed fraction gamma of the vocabulary is "green" for each context window;
  sampling adds delta to green logits; detection counts green tokens (binomial null).
* **Gumbel** (Aaronson; exponential minimum): keyed uniforms ``u_v`` per window; the sampled token is
  ``argmax_v u_v ** (1 / p_v)``, distortion-free in expectation over keys; detection sums ``-ln(1 - u)``
  (gamma null).

Native mode hashes the h previous tokens with a keyed 64-bit PRF (:mod:`.hashing`). For KGW one PRF word gives
8 lanes of 8 bits (when gamma is a multiple of 1/256) or 4 lanes of 16 bits, so the effective green rate is
exactly ``threshold / 2**bits`` and that exact value is what the detector tests against.

``hf_compat`` mode reproduces transformers' ``WatermarkingConfig(seeding_scheme="lefthash")`` on CPU: the
green list is ``torch.randperm(V)[: int(V * gamma)]`` from a CPU generator seeded with
``(hashing_key * last_token) % (2**64 - 1)``. It depends on the last token only, whatever the context width.
After token 0 that seed is 0 for every key: such windows carry no key-dependent evidence and are never
scored (:meth:`KGW.degenerate`).

**Scheme objects.** Everything that differs between schemes lives in one object per scheme (:class:`KGW`,
:class:`Gumbel`), registered in :data:`SCHEMES` under its name: the generation-time transform of the logits,
the per-token detection score, the exact null tail of a corpus total, the z-score, the per-token likelihood
ratio of the sequential test, the null rate and the words that describe the test. Callers reach it through
``spec.impl`` and never branch on the scheme's name, so a new scheme is one new class plus its registration.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from distillguard.errors import UserError
from distillguard.watermark import hashing, stats
from distillguard.watermark.keys import parse_key

HF_DEFAULT_KEY = 15485863


@dataclass(frozen=True)
class WatermarkSpec:
    """Everything that defines a watermark: scheme, secret key and its parameters."""

    scheme: str = "kgw"
    key: int | str = HF_DEFAULT_KEY
    gamma: float = 0.25
    delta: float = 2.0
    context_width: int = 1
    hf_compat: bool = False
    vocab_size: int | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        impl = self.impl  # an unknown scheme fails here
        if not 0.0 < self.gamma < 1.0:
            raise UserError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.context_width < 1:
            raise UserError(f"context width must be >= 1, got {self.context_width}")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise UserError(f"vocab size must be >= 2, got {self.vocab_size}")
        impl.validate(self)

    @property
    def impl(self) -> Scheme:
        """The scheme object that generates, scores and tests this watermark (see :data:`SCHEMES`)."""
        return scheme_named(self.scheme)

    def with_vocab(self, vocab_size: int) -> WatermarkSpec:
        """The same watermark bound to a vocabulary size (the model config's ``vocab_size``)."""
        if self.vocab_size == vocab_size:
            return self
        return WatermarkSpec(
            self.scheme, self.key, self.gamma, self.delta, self.context_width, self.hf_compat, vocab_size
        )

    def with_key(self, key: int | str) -> WatermarkSpec:
        return WatermarkSpec(
            self.scheme, key, self.gamma, self.delta, self.context_width, self.hf_compat, self.vocab_size
        )

    @cached_property
    def key64(self) -> int:
        return hashing.derive_key(self.key)

    @cached_property
    def gumbel_key64(self) -> int:
        """Gumbel's 64-bit secret: the key's, domain-separated. KGW reads 8- or 16-bit lanes of the same
        per-window hash words that Gumbel reads whole, so under one key the two would be coupled (a Gumbel
        choice would tell which KGW token is red); with its own secret, a tier that marks with Gumbel reveals
        nothing of the KGW lists served under the same key."""
        return hashing.derive_key(f"gumbel:{self.key}")

    @property
    def window(self) -> int:
        """Tokens of context the green list depends on (1 in compat mode: lefthash uses the last token)."""
        return 1 if self.hf_compat else self.context_width

    @property
    def lane_bits(self) -> int:
        return 8 if abs(self.gamma * 256 - round(self.gamma * 256)) < 1e-9 else 16

    @property
    def threshold(self) -> int:
        """Native KGW: a lane is green when its value is below this."""
        return max(1, min((1 << self.lane_bits) - 1, round(self.gamma * (1 << self.lane_bits))))

    @property
    def green_rate(self) -> float:
        """The exact probability that a (window, token) tuple is green under the null hypothesis."""
        if self.hf_compat:
            v = self.require_vocab()
            return int(v * self.gamma) / v
        return self.threshold / (1 << self.lane_bits)

    def require_vocab(self) -> int:
        if self.vocab_size is None:
            raise UserError("vocabulary size unknown: pass --vocab-size (the model config's vocab_size)")
        return self.vocab_size

    def describe(self) -> dict:
        out = {
            "scheme": self.scheme,
            "gamma": self.gamma,
            "context_width": self.context_width,
            "hf_compat": self.hf_compat,
            "vocab_size": self.vocab_size,
        }
        return out | self.impl.describe(self)


# --------------------------------------------------------------------------------------------------
# KGW, native mode


def _lanes(spec: WatermarkSpec) -> int:
    return 64 // spec.lane_bits


def kgw_green_mask(spec: WatermarkSpec, windows: torch.Tensor) -> torch.Tensor:
    """Green mask ``[B, V]`` for windows ``[B, h]``, whole batch at once (no loop over rows)."""
    vocab = spec.require_vocab()
    windows = windows[:, -spec.window :]
    if spec.hf_compat:
        return _hf_green_mask(spec, windows[:, -1])
    seeds = hashing.window_seeds(spec.key64, windows)  # [B]
    lanes = _lanes(spec)
    n_words = -(-vocab // lanes)
    idx = torch.arange(n_words, device=windows.device, dtype=torch.int64)
    w = hashing.words(seeds[:, None], idx[None, :])  # [B, n_words]
    bits = spec.lane_bits
    if sys.byteorder == "little":
        # Reinterpret each 64-bit word as its lanes (lowest lane first); flipping the top bit of every lane
        # lets a signed comparison implement the unsigned one.
        sign = sum(1 << (bits * i + bits - 1) for i in range(lanes))
        flipped = w ^ hashing.to_signed64(sign)
        dtype = torch.int8 if bits == 8 else torch.int16
        vals = flipped.view(dtype)[:, :vocab]
        return vals < spec.threshold - (1 << (bits - 1))
    shifts = torch.arange(lanes, device=w.device, dtype=torch.int64) * bits
    vals = hashing.lanes(
        w[:, :, None].expand(-1, -1, lanes), shifts.expand(w.shape[0], w.shape[1], lanes), bits
    )
    return vals.reshape(w.shape[0], -1)[:, :vocab] < spec.threshold


def kgw_is_green(spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Whether each ``tokens[i]`` is green for ``windows[i]`` (``[N, h]``, ``[N]``); vectorised."""
    windows = windows[:, -spec.window :]
    tokens = tokens.long()
    if spec.hf_compat:
        return _hf_is_green(spec, windows[:, -1], tokens)
    seeds = hashing.window_seeds(spec.key64, windows)
    lanes = _lanes(spec)
    bits = spec.lane_bits
    w = hashing.words(seeds, torch.div(tokens, lanes, rounding_mode="floor"))
    vals = hashing.lanes(w, (tokens % lanes) * bits, bits)
    return vals < spec.threshold


# --------------------------------------------------------------------------------------------------
# KGW, transformers-compatible lefthash (CPU generator)


def hf_greenlist(hashing_key: int, last_token: int, vocab_size: int, gamma: float) -> torch.Tensor:
    """transformers' lefthash green list for one previous token (bit-identical on CPU)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed((hashing_key * int(last_token)) % (2**64 - 1))
    perm = torch.randperm(vocab_size, generator=gen)
    return perm[: int(vocab_size * gamma)]


_HF_CACHE_SIZE = 4096


def _hf_mask_for(spec: WatermarkSpec, token: int) -> np.ndarray:
    """Cached boolean green mask (numpy) for one previous token."""
    cache: OrderedDict = spec._cache.setdefault("hf_masks", OrderedDict())
    mask = cache.get(token)
    if mask is None:
        vocab = spec.require_vocab()
        mask = np.zeros(vocab, dtype=bool)
        mask[hf_greenlist(parse_key(spec.key), token, vocab, spec.gamma).numpy()] = True
        cache[token] = mask
        if len(cache) > _HF_CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(token)
    return mask


def _hf_green_mask(spec: WatermarkSpec, last: torch.Tensor) -> torch.Tensor:
    # One randperm per distinct previous token (cached): the generator is sequential by nature.
    rows = np.stack([_hf_mask_for(spec, int(t)) for t in last.tolist()])
    return torch.from_numpy(rows).to(last.device)


def _hf_is_green(spec: WatermarkSpec, last: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    last_np, tok_np = last.cpu().numpy(), tokens.cpu().numpy()
    out = np.zeros(len(tok_np), dtype=bool)
    uniq, inverse = np.unique(last_np, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(uniq)))])
    for j, t in enumerate(uniq.tolist()):  # loop over distinct contexts, not tokens
        sel = order[bounds[j] : bounds[j + 1]]
        out[sel] = _hf_mask_for(spec, t)[tok_np[sel]]
    return torch.from_numpy(out).to(tokens.device)


# --------------------------------------------------------------------------------------------------
# Gumbel / exponential minimum


_INV53 = 2.0**-53


def _uniform53(w: torch.Tensor) -> torch.Tensor:
    """Uniform in (0, 1) from the top 53 bits of a PRF word (never exactly 0 or 1)."""
    return (hashing.top53(w) + 0.5) * _INV53


def gumbel_uniforms(spec: WatermarkSpec, windows: torch.Tensor) -> torch.Tensor:
    """Keyed uniforms ``[B, V]`` (float64) for windows ``[B, h]``."""
    vocab = spec.require_vocab()
    seeds = hashing.window_seeds(spec.gumbel_key64, windows[:, -spec.window :])
    idx = torch.arange(vocab, device=windows.device, dtype=torch.int64)
    return _uniform53(hashing.words(seeds[:, None], idx[None, :]))


def gumbel_token_uniforms(spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The keyed uniform of each observed token ``[N]`` for its window ``[N, h]``."""
    seeds = hashing.window_seeds(spec.gumbel_key64, windows[:, -spec.window :])
    return _uniform53(hashing.words(seeds, tokens.long()))


def gumbel_choose(uniforms: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Exponential-minimum sampling: ``argmin_v -ln(u_v) / p_v`` (= ``argmax u_v ** (1/p_v)``)."""
    r = -torch.log(uniforms) / probs.double()
    return torch.argmin(r, dim=-1)


def token_scores(spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token detection score: 1/0 for green (KGW), ``-ln(1 - u)`` (Gumbel). Float64 ``[N]``."""
    return spec.impl.token_scores(spec, windows, tokens)


# --------------------------------------------------------------------------------------------------
# Scheme objects


@runtime_checkable
class Scheme(Protocol):
    """What a watermark scheme provides; one object serves generation, detection and the audit.

    Detection scores each (window, token) tuple with a number ``x``; under H0 (the text does not depend on
    the key) the scores of distinct tuples are i.i.d. with mean :meth:`null_rate`, and the total ``S`` of
    ``N`` of them has the exact tail :meth:`log_sf`. Everything is pure and vectorised: arrays in, arrays
    out, no I/O. ``windows`` are int64 ``[B, h]`` (oldest token first), ``tokens`` int64 ``[B]``.
    """

    name: str  # the registry key, ``--scheme``
    statistic: str  # the per-tuple mean score, for people ("green fraction")
    test: str  # the exact test, for people
    alternatives: str  # the sequential test's alternatives, for people
    degenerate_note: str  # why a degenerate window carries no evidence ("" when none ever is)

    def validate(self, spec: WatermarkSpec) -> None:
        """Raise :class:`UserError` (one line) for parameters this scheme cannot use."""

    def describe(self, spec: WatermarkSpec) -> dict:
        """Scheme-specific parameters for the public description of ``spec`` (never the key)."""

    def process(self, spec: WatermarkSpec, windows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Generation: the logits ``[B, V']`` after the watermark (``V'`` may pad past the config vocab)."""

    def logit_bias(
        self, spec: WatermarkSpec, windows: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The additive part of :meth:`process`, ``[B, V]`` (teacher-forced logprobs); None if it samples."""

    def token_scores(self, spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Detection: the score of each observed token, float64 ``[N]``."""

    def degenerate(self, spec: WatermarkSpec, windows) -> np.ndarray:
        """Bool ``[N]``: windows whose keyed list is the same for every key (never scored, only counted).

        Must not depend on the key, so that a whole key family (decoys included) scores the same tuples.
        """

    def null_rate(self, spec: WatermarkSpec) -> float:
        """The expected per-tuple score under H0 (KGW's green rate; 1 for Gumbel)."""

    def log_sf(self, spec: WatermarkSpec, total, count, *, deep: bool = True) -> np.ndarray:
        """ln P[S' >= total] for ``count`` tuples under H0, exact (``deep=False``: -inf past float range)."""

    def z(self, spec: WatermarkSpec, total, count) -> np.ndarray:
        """A z-score for display only."""

    def rate_interval(self, spec: WatermarkSpec, total, count, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact two-sided interval of the per-tuple mean score after ``count`` tuples totalling ``total``."""

    def log_likelihood_ratio(self, count, total, null_rate: float, effects: np.ndarray) -> np.ndarray:
        """ln of the per-tuple likelihood ratios' product after ``count`` tuples totalling ``total``.

        Rows: the ``(count, total)`` pairs; columns: the alternatives ``effects``. Each ratio must have mean
        1 under H0, so that their product is a martingale (the sequential test's e-value).
        """

    def null(self, spec: WatermarkSpec) -> str:
        """H0 for one scored tuple and for the total, for people."""

    def caveats(self, spec: WatermarkSpec) -> list[str]:
        """Known ways in which the null is only approximate (empty when it is exact)."""

    def row_fields(self, spec: WatermarkSpec, total: float, count: int) -> dict:
        """Extra fields of a detection row (KGW: ``green_fraction``)."""


def fit_width(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Cut or zero-pad the last axis to ``width`` (logits may be padded past the config vocab)."""
    if mask.shape[-1] >= width:
        return mask[..., :width]
    pad = torch.zeros(*mask.shape[:-1], width - mask.shape[-1], dtype=mask.dtype, device=mask.device)
    return torch.cat([mask, pad], dim=-1)


def _no_degenerate(windows) -> np.ndarray:
    return np.zeros(len(windows), dtype=bool)


class GreenListScheme:
    """A keyed green list per window; sampling adds ``delta`` to green logits; the score is 1 if green.

    Subclasses provide :meth:`green_mask`, :meth:`is_green` and :meth:`green_rate`; the binomial statistics,
    the Bernoulli likelihood ratios and the generation transform are shared.
    """

    name = "green-list"
    statistic = "green fraction"
    test = "one-sided exact binomial tail P[S' >= S]"
    alternatives = "green rate gamma + d (1 - gamma)"
    degenerate_note = ""

    def green_mask(self, spec: WatermarkSpec, windows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def is_green(self, spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def green_rate(self, spec: WatermarkSpec) -> float:
        raise NotImplementedError

    def validate(self, spec: WatermarkSpec) -> None:
        if spec.hf_compat:
            raise UserError(f"--hf-compat applies to the kgw scheme only, not {self.name}")

    def describe(self, spec: WatermarkSpec) -> dict:
        return {"delta": spec.delta, "green_rate": self.green_rate(spec)}

    def process(self, spec: WatermarkSpec, windows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        mask = self.green_mask(spec, windows)
        if scores.shape[-1] != mask.shape[-1]:
            mask = fit_width(mask, scores.shape[-1])
        return torch.add(scores, mask.to(scores.dtype), alpha=spec.delta)

    def logit_bias(self, spec: WatermarkSpec, windows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return spec.delta * self.green_mask(spec, windows).to(dtype)

    def token_scores(self, spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.is_green(spec, windows, tokens).double()

    def degenerate(self, spec: WatermarkSpec, windows) -> np.ndarray:
        return _no_degenerate(windows)

    def null_rate(self, spec: WatermarkSpec) -> float:
        return self.green_rate(spec)

    def log_sf(self, spec: WatermarkSpec, total, count, *, deep: bool = True) -> np.ndarray:
        k = np.rint(np.asarray(total, dtype=np.float64)).astype(np.int64)
        return stats.binomial_log_sf(k, count, self.green_rate(spec), deep=deep)

    def z(self, spec: WatermarkSpec, total, count) -> np.ndarray:
        return stats.kgw_z(total, count, self.green_rate(spec))

    def rate_interval(self, spec: WatermarkSpec, total, count, level: float) -> tuple[np.ndarray, np.ndarray]:
        k = np.rint(np.asarray(total, dtype=np.float64)).astype(np.int64)
        return stats.binomial_interval(k, count, level)

    def log_likelihood_ratio(self, count, total, null_rate: float, effects: np.ndarray) -> np.ndarray:
        """Green rate ``q = gamma + d (1 - gamma)``: ``(q/gamma)^x ((1-q)/(1-gamma))^(1-x)`` per tuple."""
        if not 0.0 < null_rate < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {null_rate}")
        q = null_rate + effects * (1.0 - null_rate)
        a = np.log(q / null_rate)
        b = np.log((1.0 - q) / (1.0 - null_rate))
        return total[:, None] * a[None, :] + (count - total)[:, None] * b[None, :]

    def null(self, spec: WatermarkSpec) -> str:
        g = self.green_rate(spec)
        return (
            f"each scored (window, token) tuple is green with probability {g:.6g}, independently; "
            f"S ~ Binomial(N, {g:.6g})"
        )

    def caveats(self, spec: WatermarkSpec) -> list[str]:
        return []

    def row_fields(self, spec: WatermarkSpec, total: float, count: int) -> dict:
        return {"green_fraction": float(total / count) if count else 0.0}


class KGW(GreenListScheme):
    """Kirchenbauer et al.: native keyed lanes, or transformers' lefthash lists with ``hf_compat``."""

    name = "kgw"
    degenerate_note = (
        "transformers' lefthash seeds the green list after token 0 with 0 whatever the key, so every key "
        "(ours, any decoy, anyone else's) agrees on it: no key-dependent evidence"
    )

    def green_mask(self, spec: WatermarkSpec, windows: torch.Tensor) -> torch.Tensor:
        return kgw_green_mask(spec, windows)

    def is_green(self, spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return kgw_is_green(spec, windows, tokens)

    def green_rate(self, spec: WatermarkSpec) -> float:
        return spec.green_rate

    def validate(self, spec: WatermarkSpec) -> None:
        if spec.hf_compat and not isinstance(parse_key(spec.key), int):
            raise UserError("--hf-compat needs an integer key (transformers' hashing_key)")

    def describe(self, spec: WatermarkSpec) -> dict:
        known = spec.vocab_size or not spec.hf_compat  # compat mode's rate needs the vocabulary
        return {"delta": spec.delta, "green_rate": spec.green_rate if known else None}

    def degenerate(self, spec: WatermarkSpec, windows) -> np.ndarray:
        """Compat mode: windows ending in token 0 (seed ``hashing_key * 0 = 0`` for every key)."""
        if not spec.hf_compat:
            return _no_degenerate(windows)
        return np.asarray(windows)[:, -1] == 0

    def caveats(self, spec: WatermarkSpec) -> list[str]:
        if not spec.hf_compat:
            return []
        return [
            "transformers' green lists have a fixed size: tuples sharing a window are hypergeometric and "
            "the binomial tail is conservative"
        ]


class Gumbel:
    """Aaronson's exponential minimum: keyed uniforms choose the token; the score is ``-ln(1 - u)``."""

    name = "gumbel"
    statistic = "mean -ln(1-u)"
    test = "one-sided exact gamma tail Q(N, S)"
    alternatives = "Exp mean 1 + d"
    degenerate_note = ""

    def validate(self, spec: WatermarkSpec) -> None:
        if spec.hf_compat:
            raise UserError(f"--hf-compat applies to the kgw scheme only, not {self.name}")

    def describe(self, spec: WatermarkSpec) -> dict:
        return {}

    def process(self, spec: WatermarkSpec, windows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """A one-hot row on the exponential-minimum choice: any sampler after it returns that token."""
        probs = torch.softmax(scores[:, : spec.vocab_size].double(), dim=-1)
        choice = gumbel_choose(gumbel_uniforms(spec, windows), probs)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, choice[:, None], 0.0)
        return out

    def logit_bias(self, spec: WatermarkSpec, windows: torch.Tensor, dtype: torch.dtype) -> None:
        return None  # the scheme samples; it does not reshape the distribution

    def token_scores(self, spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return -torch.log1p(-gumbel_token_uniforms(spec, windows, tokens))

    def degenerate(self, spec: WatermarkSpec, windows) -> np.ndarray:
        return _no_degenerate(windows)

    def null_rate(self, spec: WatermarkSpec) -> float:
        return 1.0

    def log_sf(self, spec: WatermarkSpec, total, count, *, deep: bool = True) -> np.ndarray:
        return stats.gamma_log_sf(count, total, deep=deep)

    def z(self, spec: WatermarkSpec, total, count) -> np.ndarray:
        return stats.gumbel_z(count, total)

    def rate_interval(self, spec: WatermarkSpec, total, count, level: float) -> tuple[np.ndarray, np.ndarray]:
        return stats.gamma_mean_interval(count, total, level)

    def log_likelihood_ratio(self, count, total, null_rate: float, effects: np.ndarray) -> np.ndarray:
        """Mean ``1 + d`` (rate ``t = 1/(1+d)``): ``t * exp((1 - t) x)`` per tuple."""
        rate = 1.0 / (1.0 + effects)
        return count[:, None] * np.log(rate)[None, :] + total[:, None] * (1.0 - rate)[None, :]

    def null(self, spec: WatermarkSpec) -> str:
        return "-ln(1-u) of each scored (window, token) tuple is Exp(1), independently; S ~ Gamma(N, 1)"

    def caveats(self, spec: WatermarkSpec) -> list[str]:
        return []

    def row_fields(self, spec: WatermarkSpec, total: float, count: int) -> dict:
        return {}


SCHEMES: dict[str, Scheme] = {"kgw": KGW(), "gumbel": Gumbel()}


def register(scheme: Scheme) -> Scheme:
    """Make ``scheme`` available under ``scheme.name`` (``WatermarkSpec(scheme=name)``, ``--scheme``)."""
    SCHEMES[scheme.name] = scheme
    return scheme


def scheme_named(name: str) -> Scheme:
    impl = SCHEMES.get(name)
    if impl is None:
        raise UserError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    return impl


def scheme_of(spec: WatermarkSpec) -> Scheme:
    return scheme_named(spec.scheme)

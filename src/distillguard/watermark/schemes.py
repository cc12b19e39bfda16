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
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import torch

from distillguard.errors import UserError
from distillguard.watermark import hashing

Scheme = Literal["kgw", "gumbel"]
SCHEMES: tuple[str, ...] = ("kgw", "gumbel")
HF_DEFAULT_KEY = 15485863


@dataclass(frozen=True)
class WatermarkSpec:
    """Everything that defines a watermark: scheme, secret key and its parameters."""

    scheme: Scheme = "kgw"
    key: int | str = HF_DEFAULT_KEY
    gamma: float = 0.25
    delta: float = 2.0
    context_width: int = 1
    hf_compat: bool = False
    vocab_size: int | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise UserError(f"unknown scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        if not 0.0 < self.gamma < 1.0:
            raise UserError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.context_width < 1:
            raise UserError(f"context width must be >= 1, got {self.context_width}")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise UserError(f"vocab size must be >= 2, got {self.vocab_size}")
        if self.hf_compat:
            if self.scheme != "kgw":
                raise UserError("--hf-compat applies to the kgw scheme only (transformers' lefthash)")
            if not _is_int_key(self.key):
                raise UserError("--hf-compat needs an integer key (transformers' hashing_key)")

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
        if self.scheme == "kgw":
            out |= {
                "delta": self.delta,
                "green_rate": self.green_rate if self.vocab_size or not self.hf_compat else None,
            }
        return out


def _is_int_key(key: int | str) -> bool:
    if isinstance(key, int):
        return True
    try:
        int(str(key).strip(), 0)
        return True
    except ValueError:
        return False


def _int_key(key: int | str) -> int:
    return key if isinstance(key, int) else int(str(key).strip(), 0)


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
        mask[hf_greenlist(_int_key(spec.key), token, vocab, spec.gamma).numpy()] = True
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
    seeds = hashing.window_seeds(spec.key64, windows[:, -spec.window :])
    idx = torch.arange(vocab, device=windows.device, dtype=torch.int64)
    return _uniform53(hashing.words(seeds[:, None], idx[None, :]))


def gumbel_token_uniforms(spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The keyed uniform of each observed token ``[N]`` for its window ``[N, h]``."""
    seeds = hashing.window_seeds(spec.key64, windows[:, -spec.window :])
    return _uniform53(hashing.words(seeds, tokens.long()))


def gumbel_choose(uniforms: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Exponential-minimum sampling: ``argmin_v -ln(u_v) / p_v`` (= ``argmax u_v ** (1/p_v)``)."""
    r = -torch.log(uniforms) / probs.double()
    return torch.argmin(r, dim=-1)


def token_scores(spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token detection score: 1/0 for green (KGW), ``-ln(1 - u)`` (Gumbel). Float64 ``[N]``."""
    if spec.scheme == "kgw":
        return kgw_is_green(spec, windows, tokens).double()
    return -torch.log1p(-gumbel_token_uniforms(spec, windows, tokens))

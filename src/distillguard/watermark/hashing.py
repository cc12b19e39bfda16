"""Keyed 64-bit hashing for the native watermark modes.

Why this shape: the same integer arithmetic gives the same bits on CPU and GPU, so a text watermarked on a GPU
server is detected on a laptop. On CPU the work runs in numpy ``uint64`` (wrapping multiply, logical shifts:
several times faster than torch's int64 shifts); on other devices in torch ``int64`` with wrap-around
multiplication and masked shifts. Both produce identical bits (tested).

The PRF is SplitMix64's finaliser (:mod:`distillguard.splitmix`, a bijection with full avalanche) in a
counter construction: ``seed(window) = chain(key, window tokens)``,
``word_j = mix64(seed + (j + 1) * GOLDEN)``. One 64-bit word yields several tokens' worth of uniform lanes
(KGW), or one 53-bit uniform per token (Gumbel).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from distillguard.splitmix import GOLDEN, M1, M2, MASK64, mix64_int, mix64_np
from distillguard.watermark.keys import parse_key

_U = np.uint64


def to_signed64(x: int) -> int:
    """Map an unsigned 64-bit integer onto torch's int64 range (same bits)."""
    x &= MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def derive_key(key: int | str) -> int:
    """A 64-bit secret from a user key: integers are mixed, strings hashed with SHA-256.

    Integer strings ("42", "0x2a") mean the integer (:func:`~distillguard.watermark.keys.parse_key`), so
    ``--key 42`` and ``key=42`` agree.
    """
    key = parse_key(key)
    if isinstance(key, str):
        return int.from_bytes(hashlib.sha256(key.strip().encode()).digest()[:8], "little")
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"key must be an int or str, not {type(key).__name__}")
    return mix64_int(mix64_int(key & MASK64) ^ (key >> 64 & MASK64))


# --- torch (any device) ---


def _lsr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64_torch(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _lsr(z, 30)) * to_signed64(M1)
    z = (z ^ _lsr(z, 27)) * to_signed64(M2)
    return z ^ _lsr(z, 31)


def _as_np(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().numpy().view(np.uint64)


def _from_np(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).view(np.int64))


def mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (bit-exact on every device)."""
    if z.device.type == "cpu":
        return _from_np(mix64_np(_as_np(z.long())))
    return _mix64_torch(z)


def window_seeds(key64: int, windows: torch.Tensor) -> torch.Tensor:
    """Keyed seed per window: ``windows`` is int64 ``[..., h]`` (oldest token first); returns ``[...]``.

    ``seed = mix64(key)``; for each token t: ``seed = mix64(seed ^ mix64((t + 1) * GOLDEN))``. The loop runs
    over the h window positions (small), never over rows.
    """
    windows = windows.long()
    if windows.device.type == "cpu":
        return _from_np(window_seeds_np(key64, _as_np(windows)))
    return window_seeds_torch(key64, windows)


def window_seeds_np(key64: int, w: np.ndarray) -> np.ndarray:
    h = np.full(w.shape[:-1], mix64_int(key64), dtype=np.uint64)
    for i in range(w.shape[-1]):
        h = mix64_np(h ^ mix64_np((w[..., i] + _U(1)) * _U(GOLDEN)))
    return h


def window_seeds_torch(key64: int, windows: torch.Tensor) -> torch.Tensor:
    h = torch.full(
        windows.shape[:-1], to_signed64(mix64_int(key64)), dtype=torch.int64, device=windows.device
    )
    for i in range(windows.shape[-1]):
        h = _mix64_torch(h ^ _mix64_torch((windows[..., i] + 1) * to_signed64(GOLDEN)))
    return h


def words(seeds: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Counter-mode PRF output ``mix64(seed + (index + 1) * GOLDEN)``, broadcasting seeds against index."""
    if seeds.device.type == "cpu":
        s, i = _as_np(seeds.long()), _as_np(index.long())
        return _from_np(mix64_np(s + (i + _U(1)) * _U(GOLDEN)))
    return words_torch(seeds, index)


def words_torch(seeds: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return _mix64_torch(seeds + (index + 1) * to_signed64(GOLDEN))


def lanes(w: torch.Tensor, shift: torch.Tensor, bits: int) -> torch.Tensor:
    """``(w >> shift) & (2**bits - 1)`` as unsigned lanes of 64-bit words."""
    if w.device.type == "cpu":
        return _from_np((_as_np(w) >> _as_np(shift.long())) & _U((1 << bits) - 1))
    return (w >> shift) & ((1 << bits) - 1)


def top53(w: torch.Tensor) -> torch.Tensor:
    """The top 53 bits of each word as float64 integers (for uniforms)."""
    if w.device.type == "cpu":
        return torch.from_numpy((_as_np(w) >> _U(11)).astype(np.float64))
    return _lsr(w, 11).double()

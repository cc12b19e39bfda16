"""Keyed 64-bit hashing for the native watermark modes, in plain int64 tensor arithmetic.

Why int64 tensors: the same integer ops give the same bits on CPU and GPU, so a text watermarked on a GPU
server is detected on a laptop. Multiplication wraps modulo 2**64 and logical right shifts are emulated with
a mask, so no unsigned dtype is needed.

The PRF is SplitMix64's finaliser (a bijection with full avalanche) applied in a counter construction:
``window_seed = chain(key, window tokens)``, ``word_j = mix64(window_seed + (j + 1) * GOLDEN)``. One 64-bit
word yields several tokens' worth of uniform lanes (KGW), or one 53-bit uniform per token (Gumbel).
"""

from __future__ import annotations

import hashlib

import torch

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def to_signed64(x: int) -> int:
    """Map an unsigned 64-bit integer onto torch's int64 range (same bits)."""
    x &= MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


GOLDEN_S = to_signed64(GOLDEN)
_M1_S = to_signed64(_M1)
_M2_S = to_signed64(_M2)


def _lsr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (bit-exact on every device)."""
    z = (z ^ _lsr(z, 30)) * _M1_S
    z = (z ^ _lsr(z, 27)) * _M2_S
    return z ^ _lsr(z, 31)


def mix64_int(z: int) -> int:
    """The same finaliser on a Python int (reference implementation, used for keys)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def derive_key(key: int | str) -> int:
    """A 64-bit secret from a user key: integers are mixed, strings hashed with SHA-256.

    Integer strings ("42") mean the integer, so ``--key 42`` on the CLI and ``key=42`` in Python agree.
    """
    if isinstance(key, str):
        text = key.strip()
        try:
            key = int(text, 0)
        except ValueError:
            return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"key must be an int or str, not {type(key).__name__}")
    return mix64_int(mix64_int(key & MASK64) ^ (key >> 64 & MASK64))


def window_seeds(key64: int, windows: torch.Tensor) -> torch.Tensor:
    """Keyed seed per window: ``windows`` is int64 ``[..., h]`` (oldest token first); returns ``[...]``.

    The loop runs over the h window positions (h is small), never over rows.
    """
    if windows.dtype != torch.int64:
        windows = windows.long()
    h = torch.full(windows.shape[:-1], to_signed64(mix64_int(key64)), dtype=torch.int64, device=windows.device)
    for i in range(windows.shape[-1]):
        h = mix64(h ^ mix64((windows[..., i] + 1) * GOLDEN_S))
    return h


def words(seeds: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Counter-mode PRF output ``mix64(seed + (index + 1) * GOLDEN)``, broadcasting seeds against index."""
    return mix64(seeds + (index + 1) * GOLDEN_S)

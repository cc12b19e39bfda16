"""SplitMix64's finaliser: the package's one 64-bit mixing function.

A bijection on 64-bit words in which every input bit flips each output bit with probability about 1/2. The
watermark's keyed PRF (:mod:`distillguard.watermark.hashing`) and the monitor's stable hashes of texts,
integers and MinHash sketches (``monitor.features``, ``monitor.linking``, ``intel.fingerprint``) are all built
on it. numpy only, so the monitor never imports torch; the torch version the watermark runs on GPU tensors
lives in ``watermark.hashing`` and is tested bit-exact against :func:`mix64_int`.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: SplitMix64's counter increment
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
_U = np.uint64


def mix64_int(z: int) -> int:
    """The finaliser on a Python int (the reference every vectorised version must match)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * M1) & MASK64
    z = ((z ^ (z >> 27)) * M2) & MASK64
    return z ^ (z >> 31)


def mix64_np(z: np.ndarray) -> np.ndarray:
    """The finaliser on ``uint64`` values (wrapping arithmetic): a new array shaped like ``z``, which is
    left unchanged.

    Anything ``np.asarray`` turns into ``uint64`` is accepted; a 0-d input gives a 0-d array.
    """
    z = np.asarray(z, dtype=np.uint64)
    x = np.right_shift(z, _U(30), out=np.empty_like(z))
    x ^= z
    with np.errstate(over="ignore"):
        x *= _U(M1)
        x ^= x >> _U(27)
        x *= _U(M2)
        x ^= x >> _U(31)
    return x

"""Texts as vectors, and the geometry on them: hashed bag-of-words, cosine distance, farthest-first order.

numpy only (no torch, no I/O). Shared by the distillation strategies (coverage sampling, query-set
diversity) and the monitor (its hashed vectors use the same :func:`text_features`; coverage and novelty
features use the distances and the farthest-first order).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from distillguard.errors import UserError

_WORD = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")


def text_features(text: str) -> list[str]:
    """Lower-cased words, plus the parts of dotted names (``calendar.monthcalendar`` counts as itself and
    as ``calendar`` and ``monthcalendar``), so prompts about the same API or module land close together."""
    out: list[str] = []
    for match in _WORD.finditer(text.lower()):
        word = match.group(0)
        out.append(word)
        if "." in word:
            out.extend(word.split("."))
    return out


def embed(texts: Sequence[str], *, dim: int = 4096) -> np.ndarray:
    """Hashed TF-IDF vectors ``[n, dim]`` (float32), L2-normalised (rows of empty texts stay zero).

    The hash is CRC-32 (stable across processes, unlike Python's ``hash``); IDF is the smoothed
    ``ln((1 + n) / (1 + df)) + 1`` computed over ``texts`` themselves, so common words ("what", "does",
    "python") weigh less than the rare ones that carry a prompt's intent.
    """
    if dim < 2:
        raise UserError(f"embedding dimension must be >= 2, got {dim}")
    n = len(texts)
    tf = np.zeros((n, dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for feat in text_features(text):
            tf[row, zlib.crc32(feat.encode("utf-8")) % dim] += 1.0
    df = (tf > 0).sum(axis=0)
    idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
    vec = tf * idf
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    return np.divide(vec, norm, out=np.zeros_like(vec), where=norm > 0)


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - cos`` between rows of two L2-normalised matrices, clipped to [0, 2]."""
    return np.clip(1.0 - a @ b.T, 0.0, 2.0)


def mean_pairwise_distance(texts: Sequence[str], *, dim: int = 4096) -> float:
    """Mean cosine distance over distinct pairs of ``texts``: a query set's diversity (0 = all alike)."""
    n = len(texts)
    if n < 2:
        return 0.0
    vec = embed(texts, dim=dim)
    d = cosine_distances(vec, vec)
    return float(d[np.triu_indices(n, k=1)].mean())


def iter_farthest_first(vectors: np.ndarray, start: int) -> Iterator[int]:
    """Greedy farthest-point order of the rows, beginning at ``start`` (cosine distance), lazily.

    Each step picks the row whose distance to its nearest already-chosen row is largest; the first ``k``
    picks are a 2-approximation of the optimal k-center cover. Ties go to the lowest index. Each step costs
    one matrix-vector product, so reading only the head of a long order is cheap.
    """
    n = vectors.shape[0]
    if not 0 <= start < n:
        raise ValueError(f"start {start} outside 0..{n - 1}")
    nearest = cosine_distances(vectors, vectors[start : start + 1])[:, 0].astype(np.float64)
    nearest[start] = -1.0
    yield start
    for _ in range(n - 1):
        nxt = int(np.argmax(nearest))
        yield nxt
        nearest = np.minimum(nearest, cosine_distances(vectors, vectors[nxt : nxt + 1])[:, 0])
        nearest[nxt] = -1.0


def farthest_first(vectors: np.ndarray, start: int, k: int | None = None) -> list[int]:
    """The first ``k`` (default: all) rows of :func:`iter_farthest_first`."""
    it = iter_farthest_first(vectors, start)
    return list(it) if k is None else [i for _, i in zip(range(k), it, strict=False)]

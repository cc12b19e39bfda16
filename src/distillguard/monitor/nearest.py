"""Exact nearest-profile search that does not compare every pair: a block index with branch and bound.

The monitor's profile score is the ``k``-th smallest one-sided distance ``sqrt(sum_f max(0, z_f - r_f)^2)``
from an entity ``z`` to the reference profiles ``r`` (see :mod:`detectors`), and its unit scales need each
reference entity's Euclidean nearest neighbour. Comparing every entity with every reference costs
``O(n^2)``: at 65,000 accounts, hours. The one-sided distance is the Euclidean distance from ``r`` to the
orthant ``z + R+^F``, not a metric, so ANN libraries built for metrics do not apply as they are; a
bounding-box bound does:

- the reference rows are split like a k-d tree (median of the widest feature) into blocks of
  :data:`BLOCK` rows, and each block keeps its per-feature minimum and maximum;
- no row of a block is closer than the block's bound ``||max(0, z - max_b)||``;
- a query visits blocks in order of their bound and stops once the next bound reaches its current
  ``k``-th best distance.

The result is exact (the same rows as the full comparison, up to ties), not approximate: distances of
the visited rows use the same floating-point formula as :func:`orthant_distances`. Blocks whose rows all
belong to the query's excluded group (a linked cluster that may not vouch for its members) are skipped
whole. Undefined features (``nan``) never count: the reference's as ``+inf`` and the query's as ``-inf``.

The Euclidean nearest neighbours (:func:`nearest_allowed`) are a metric search: ``scipy.spatial.cKDTree``.
"""

from __future__ import annotations

import numpy as np

BLOCK = 64


def orthant_distances(z: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``sqrt(sum_f max(0, z_f - r_f)^2)`` for every row ``r`` of ``ref``; non-finite excess counts 0."""
    ex = z[None, :] - ref
    ex = np.where(np.isfinite(ex), np.maximum(ex, 0.0), 0.0)
    return np.sqrt((ex**2).sum(axis=1))


def _split(x: np.ndarray, idx: np.ndarray, block: int, out: list[np.ndarray]) -> None:
    """k-d split of ``idx`` (rows of ``x``, ``nan`` allowed) into runs of ``block`` rows, into ``out``."""
    stack = [idx]
    while stack:
        cur = stack.pop()
        if len(cur) <= block:
            out.append(cur)
            continue
        sub = x[cur]
        with np.errstate(invalid="ignore"):
            spread = np.nanmax(sub, axis=0) - np.nanmin(sub, axis=0)
        spread = np.where(np.isfinite(spread), spread, -1.0)
        f = int(np.argmax(spread))
        col = np.where(np.isfinite(sub[:, f]), sub[:, f], np.inf)  # undefined last
        half = -(-len(cur) // (2 * block)) * block  # left part: a multiple of the block size
        half = min(half, len(cur) - 1)
        part = np.argpartition(col, half - 1, kind="introselect") if half < len(cur) else np.arange(len(cur))
        stack.append(cur[part[half:]])
        stack.append(cur[part[:half]])


class BlockIndex:
    """Reference rows ``x`` ``[R, F]`` (``nan`` = undefined) in k-d blocks, for exact k-nearest queries.

    ``groups`` (optional, one int per row) lets a query exclude a whole group cheaply."""

    def __init__(self, x: np.ndarray, groups: np.ndarray | None = None, block: int = BLOCK) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.n, self.f = x.shape
        self.block = block
        parts: list[np.ndarray] = []
        if self.n:
            _split(x, np.arange(self.n), block, parts)
        nb = len(parts)
        self.rows = np.full((nb, block), -1, dtype=np.int64)
        for b, p in enumerate(parts):
            self.rows[b, : len(p)] = p
        self.valid = self.rows >= 0
        safe = np.where(self.valid, self.rows, 0)
        data = x[safe]  # [nb, block, F]
        self.orth = np.where(np.isnan(data), np.inf, data)  # undefined reference feature: never exceeded
        self.orth[~self.valid] = np.inf
        with np.errstate(invalid="ignore"):
            pad_hi = np.where(self.valid[:, :, None], self.orth, -np.inf)
            self.hi = pad_hi.max(axis=1) if nb else np.zeros((0, self.f))
        self.groups = None if groups is None else np.asarray(groups)[safe]
        self.block_group = None
        if groups is not None and nb:
            g = np.where(self.valid, self.groups, self.groups[:, :1])
            same = (g == g[:, :1]).all(axis=1)
            self.block_group = np.where(same, g[:, 0], np.iinfo(np.int64).min)

    # -- helpers ------------------------------------------------------------------------------------------

    def _mask(self, blocks: np.ndarray, exclude: np.ndarray | None, group: int | None) -> np.ndarray:
        ok = self.valid[blocks]
        if group is not None and self.groups is not None:
            ok &= self.groups[blocks] != group
        if exclude is not None and len(exclude):
            ok &= ~np.isin(self.rows[blocks], exclude)
        return ok

    def _order(self, bound: np.ndarray, group: int | None) -> np.ndarray:
        order = np.argsort(bound, kind="stable")
        if group is not None and self.block_group is not None:
            order = order[self.block_group[order] != group]
        return order

    def _search(self, bound, group, k, dist_of, exclude, strict: bool) -> tuple[np.ndarray, np.ndarray]:
        """Blocks by increasing ``bound`` (doubling batches) until the next bound cannot beat the k-th best.
        Returns the best distances and rows (ascending distance, ties by row)."""
        order = self._order(bound, group)
        best_d = np.zeros(0)
        best_i = np.zeros(0, dtype=np.int64)
        pos, step = 0, 2
        while pos < len(order):
            if len(best_d) >= k:
                kth = best_d[k - 1]
                nxt = bound[order[pos]]
                if nxt > kth or (strict and nxt == kth):
                    break
            blocks = order[pos : pos + step]
            pos += len(blocks)
            step = min(step * 2, 64)
            d = dist_of(blocks)  # [b, block]
            ok = self._mask(blocks, exclude, group)
            d, r = d[ok], self.rows[blocks][ok]
            d_all = np.concatenate([best_d, d])
            r_all = np.concatenate([best_i, r])
            o = np.lexsort((r_all, d_all))[:k]
            best_d, best_i = d_all[o], r_all[o]
        return best_d, best_i

    # -- queries ------------------------------------------------------------------------------------------

    def orthant_kth(
        self, z: np.ndarray, k: int, exclude: np.ndarray | None = None, group: int | None = None
    ) -> tuple[float, int]:
        """The ``k``-th smallest one-sided distance from ``z`` over the allowed rows, and that row
        (``(nan, -1)`` when none is allowed; the largest found when fewer than ``k`` are)."""
        z = np.asarray(z, dtype=np.float64)
        zq = np.where(np.isnan(z), -np.inf, z)
        with np.errstate(invalid="ignore"):
            ex = zq[None, :] - self.hi
        ex = np.where(np.isfinite(ex), np.maximum(ex, 0.0), 0.0)
        bound = np.sqrt((ex**2).sum(axis=1))

        def dist_of(blocks: np.ndarray) -> np.ndarray:
            ref = self.orth[blocks].reshape(-1, self.f)
            with np.errstate(invalid="ignore"):
                d = orthant_distances(zq, ref)
            return d.reshape(len(blocks), self.block)

        d, r = self._search(bound, group, k, dist_of, exclude, strict=True)
        if not len(d):
            return float("nan"), -1
        return float(d[-1]), int(r[-1])


def nearest_allowed(
    x: np.ndarray, groups: np.ndarray, exclude: list[np.ndarray], chunk: int = 256, big: int = 32
) -> np.ndarray:
    """Each row's Euclidean nearest neighbour among rows of another group and not in its ``exclude``
    (``-1`` when none), as ``argmin`` of the full ``|a|^2 + |b|^2 - 2 a.b`` matrix picks it (lowest row on
    ties), through k-d trees (``scipy.spatial.cKDTree``): ``k`` candidates per row, eight times more for
    the rows whose candidates are all excluded or could hide an equally near row beyond them. The rows of
    a group of more than ``big`` rows (a linked campaign) search a tree of the other rows only."""
    from scipy.spatial import cKDTree

    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    out = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return out
    sq = np.einsum("ij,ij->i", x, x)
    groups = np.asarray(groups)
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    large = counts > big
    parts = [(np.nonzero(~large[inv])[0], np.arange(n))]
    for g in np.nonzero(large)[0]:
        parts.append((np.nonzero(inv == g)[0], np.nonzero(inv != g)[0]))
    for todo, pool in parts:
        if len(todo) and len(pool):
            _nearest_in(x, sq, groups, exclude, todo, pool, cKDTree(x[pool]), out, chunk)
    return out


def _nearest_in(x, sq, groups, exclude, todo, pool, tree, out, chunk) -> None:
    m, k = len(pool), 8
    while len(todo):
        kk = min(k, m)
        again = []
        for lo in range(0, len(todo), chunk):
            rows = todo[lo : lo + chunk]
            dist, cand = tree.query(x[rows], k=kk)
            dist, cand = dist.reshape(len(rows), kk), pool[cand.reshape(len(rows), kk)]
            ok = groups[cand] != groups[rows][:, None]
            for r, i in enumerate(rows):
                if len(exclude[i]):
                    ok[r] &= ~np.isin(cand[r], exclude[i])
            d2 = sq[rows][:, None] + sq[cand] - 2.0 * np.einsum("mf,mkf->mk", x[rows], x[cand])
            d2 = np.where(ok, d2, np.inf)
            for r, i in enumerate(rows):
                fin = np.isfinite(d2[r])
                if fin.any():
                    best = float(d2[r][fin].min())
                    # nothing beyond the k-th candidate can be as near (1e-9: rounding of the expansion)
                    if kk == m or dist[r, -1] ** 2 > best + 1e-9 * (1.0 + abs(best)):
                        at = np.nonzero(d2[r] == best)[0]
                        out[i] = int(cand[r][at].min())
                        continue
                elif kk == m:
                    continue
                again.append(i)
        todo, k = np.asarray(again, dtype=np.int64), k * 8

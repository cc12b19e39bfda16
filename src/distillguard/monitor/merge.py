"""The feature pass as map + merge: accumulators of consecutive ledger slices merge into one pass's state.

A distributed engine (:mod:`monitor.engine`) splits the ledger into slices in ledger order, folds each
slice into its own :class:`FeatureAccumulator` on some worker and merges the results in slice order.
What makes the merged state equal to a single pass over the whole ledger:

- **Order-free parts** combine directly: counters add, first/last times are a min/max, HyperLogLog
  registers a maximum, the active-hours MinHash a minimum, and the bottom-K query sample is the union cut
  back to the K lowest priorities (a priority is a hash of ``seq``, not of arrival).
- **Bounded sets** (an account's IP prefixes and keys) keep the names of smallest rank under the pass's
  sketch key (:func:`accumulator.count_bounded`), which does not depend on arrival order either; every
  slice must rank under the same key (:func:`merge_into` refuses another).
- **Time across a slice boundary**: a single pass measures the gap between consecutive queries of an
  account in ``seq`` order, and counts an active-time bin (and hour) when a query's is later than every
  earlier one's. Each accumulator keeps the times of its first and last query per account by ``seq``
  (``head_ts``, ``tail_ts``), its latest bin (``top_bin``) and its first new bins (``head_bins``), so
  that the merge adds the gap across the boundary and takes off the bins (and hours) the later part
  counted as new that a single pass had seen already: exact while fewer than
  :data:`~distillguard.monitor.accumulator.HEAD_BINS` of them are (32 bins: hours of disorder in the
  ledger's times, which a gateway's concurrency makes seconds to minutes).
- **The copy table is cross-account**: whether an account's prompt was first sent by another account
  depends on every earlier slice. It is computed first, in its own map + merge (:class:`CopyClaims`:
  per table slot, the earliest row reaching it, which is also what a single pass keeps), and then given
  read-only to every slice's accumulator.

Integer and hash state is equal bit for bit (the time counts under the condition above); the
floating-point sums of log gaps are added in another order, so they agree to rounding
(``tests/test_monitor_engine.py`` checks both, merging slices in order and as a tree).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from distillguard.monitor.accumulator import (
    _MAX_KEYS,
    _MAX_PREFIXES,
    BINS_PER_HOUR,
    COPY_BITS,
    MIN_COPY_CHARS,
    OTHER,
    FeatureAccumulator,
    SketchKeyMismatch,
    sketch_rank,
)
from distillguard.monitor.features import hash_strings, prompt_keys

_EMPTY = np.iinfo(np.int64).max


@dataclass
class CopyClaims:
    """A whole ledger's copy table: per slot (the low ``bits`` of a text hash), the earliest counted row
    reaching it with a text of ``min_chars`` bytes or more: its position in the ledger (``_EMPTY``: none
    yet), its text hash and its account's name hash. Claims of slices merge by the earliest position."""

    pos: np.ndarray
    hash: np.ndarray
    owner: np.ndarray
    min_chars: int

    @classmethod
    def empty(cls, bits: int = COPY_BITS, min_chars: int = MIN_COPY_CHARS) -> CopyClaims:
        n = 1 << bits
        return cls(
            np.full(n, _EMPTY, dtype=np.int64), np.zeros(n, np.uint64), np.zeros(n, np.uint64), min_chars
        )

    @property
    def mask(self) -> np.uint64:
        return np.uint64(len(self.pos) - 1)

    def add(self, table: pa.Table | pa.RecordBatch, base: int) -> None:
        """Claim the slots of a table's rows; ``base`` is the ledger position of its first row."""
        rows, owners, hashes, lens = prompt_keys(table)
        ok = lens >= self.min_chars
        self.absorb((hashes[ok] & self.mask).astype(np.int64), base + rows[ok], hashes[ok], owners[ok])

    def absorb(self, slot: np.ndarray, pos: np.ndarray, h: np.ndarray, owner: np.ndarray) -> None:
        """Merge claims given as arrays (several may name one slot): the earliest position wins."""
        if not len(slot):
            return
        order = np.lexsort((pos, slot))
        slot, pos, h, owner = slot[order], pos[order], h[order], owner[order]
        first = np.ones(len(slot), dtype=bool)
        first[1:] = slot[1:] != slot[:-1]
        slot, pos, h, owner = slot[first], pos[first], h[first], owner[first]
        win = pos < self.pos[slot]
        s = slot[win]
        self.pos[s], self.hash[s], self.owner[s] = pos[win], h[win], owner[win]

    def sparse(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The claimed slots only (what a worker sends back): (slot, pos, hash, owner)."""
        s = np.nonzero(self.pos != _EMPTY)[0]
        return s, self.pos[s], self.hash[s], self.owner[s]

    def owner_of(self, slot: np.ndarray, h: np.ndarray) -> np.ndarray:
        """The account-name hash of each text's first sender, 0 where the text does not own its slot."""
        return np.where(self.hash[slot] == h, self.owner[slot], np.uint64(0))


def slice_accumulator(
    claims: CopyClaims, sample_size: int, sketch_key: bytes | None = None
) -> FeatureAccumulator:
    """An empty accumulator for one slice, reading the whole ledger's copy table."""
    acc = FeatureAccumulator(
        sample_size=sample_size, copy_bits=1, min_copy_chars=claims.min_chars, sketch_key=sketch_key
    )
    acc.claims = claims  # its own table is not used (finish writes the claims into the merged one)
    return acc


def merge_bounded(a: Counter, b: Counter, cap: int, key: bytes | None = None) -> Counter:
    """Two :func:`accumulator.count_bounded` counters as one: the ``cap`` smallest-rank names of both."""
    out = Counter({k: v for k, v in a.items() if k != OTHER})
    for k, v in b.items():
        if k != OTHER:
            out[k] += v
    other = a.get(OTHER, 0) + b.get(OTHER, 0)
    if len(out) > cap:
        drop = sorted(out, key=lambda k: sketch_rank(k, key))[cap:]
        other += sum(out.pop(k) for k in drop)
    if other:
        out[OTHER] = other
    return out


def writable(acc: FeatureAccumulator) -> None:
    """Copy the arrays that are read-only views (an accumulator handed over by a Ray object store)."""

    def own(d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, np.ndarray) and not v.flags.writeable:
                d[k] = v.copy()

    own(vars(acc))
    own(acc.c)
    own(acc._pool)


def merge_into(acc: FeatureAccumulator, later: FeatureAccumulator) -> FeatureAccumulator:
    """Fold ``later`` (the accumulator of the slice right after ``acc``'s rows) into ``acc``; returns it."""
    if later.sketch_key != acc.sketch_key:
        raise SketchKeyMismatch("slices ranked under different sketch keys cannot merge")
    writable(acc)
    if not later.accounts:  # a slice of filtered rows only
        acc.rows += later.rows
        acc.last_seq = max(acc.last_seq, later.last_seq)
        return acc
    acc._compact()
    later._compact()
    n_before = len(acc.accounts)
    ids = acc._ids(later.accounts).astype(np.int64)
    m = len(later.accounts)
    old = ids < n_before
    io, jo = ids[old], np.nonzero(old)[0]
    # the gap and active bin across the boundary, for accounts on both sides
    seen = np.isfinite(acc.tail_ts[io])
    io, jo = io[seen], jo[seen]
    lg = np.log(np.maximum(later.head_ts[jo] - acc.tail_ts[io], 1e-3))
    acc.c["gaps"][io] += 1
    acc.log_gap_sum[io] += lg
    acc.log_gap_sq[io] += lg * lg
    # a bin (an hour) is new when it is later than every earlier one: the later part counted its first
    # new bins against its own rows only, so those at or before the earlier part's latest bin come off
    # (exact under HEAD_BINS' condition: the ledger's disorder is seconds to minutes)
    heads, top = later.head_bins[jo], acc.top_bin[io][:, None]
    seen_bin = (heads >= 0) & (heads <= top)
    acc.c["active_bins"][io] -= seen_bin.sum(axis=1)
    hours = heads // BINS_PER_HOUR
    opens = np.ones(heads.shape, dtype=bool)  # the first new bin of each of its hours (bins rise in a row)
    opens[:, 1:] = hours[:, 1:] != hours[:, :-1]
    acc.c["active_hours"][io] -= ((heads >= 0) & (hours <= top // BINS_PER_HOUR) & opens).sum(axis=1)
    # the merged accounts' first new bins: the earlier slice's, then the later one's past its latest bin
    past = heads > top
    acc._note_head_bins(np.repeat(io, past.sum(axis=1)), heads[past])
    for name, col in later.c.items():
        acc.c[name][ids] += col[:m]
    acc.log_gap_sum[ids] += later.log_gap_sum[:m]
    acc.log_gap_sq[ids] += later.log_gap_sq[:m]
    acc.first_ts[ids] = np.minimum(acc.first_ts[ids], later.first_ts[:m])
    acc.last_ts[ids] = np.maximum(acc.last_ts[ids], later.last_ts[:m])
    new = ids[~old]
    unseen = (acc.head_bins[ids] < 0).all(axis=1)  # accounts the earlier slice has no row of
    acc.head_bins[ids[unseen]] = later.head_bins[:m][unseen]
    acc.first_seq[new] = later.first_seq[:m][~old]
    acc.head_ts[new] = later.head_ts[:m][~old]
    acc.tail_ts[ids] = later.tail_ts[:m]
    acc.last_seq_acct[ids] = later.last_seq_acct[:m]
    acc.top_bin[ids] = np.maximum(acc.top_bin[ids], later.top_bin[:m])
    acc.hll[ids] = np.maximum(acc.hll[ids], later.hll[:m])
    acc.hours[ids] = np.minimum(acc.hours[ids], later.hours[:m])
    for j, i in enumerate(ids.tolist()):
        if later.prefixes[j]:
            acc.prefixes[i] = merge_bounded(acc.prefixes[i], later.prefixes[j], _MAX_PREFIXES, acc.sketch_key)
        if later.keys[j]:
            keys = acc.keys[i] | later.keys[j]
            acc.keys[i] = set(sorted(keys, key=lambda k: sketch_rank(k, acc.sketch_key))[:_MAX_KEYS])
        if later.orgs[j] is not None:
            acc.orgs[i] = later.orgs[j]
    acc._worst_prefix.clear()
    pool = dict(later._pool)
    pool["acct"] = ids[pool["acct"]].astype(np.int32)
    acc._pending.append(pool)
    acc._pending_rows += len(pool["acct"])
    acc._compact()
    acc.rows += later.rows
    acc.last_seq = max(acc.last_seq, later.last_seq)
    return acc


def finish(acc: FeatureAccumulator) -> FeatureAccumulator:
    """Write the copy table the slices read into the merged accumulator's own table (owners as account
    indices) and own its arrays, so that more batches continue it exactly like a single pass."""
    writable(acc)
    claims = acc.claims
    if claims is None:
        return acc
    keys = hash_strings(acc.accounts)
    order = np.argsort(keys)
    s, _, h, owner = claims.sparse()
    where = np.searchsorted(keys[order], owner)
    idx = order[np.minimum(where, len(keys) - 1)] if len(keys) else where
    acc._copy_hash = np.zeros(len(claims.pos), dtype=np.uint64)
    acc._copy_owner = np.full(len(claims.pos), -1, dtype=np.int32)
    acc._copy_hash[s] = h
    acc._copy_owner[s] = idx
    acc._copy_mask = len(claims.pos) - 1
    acc.claims = None
    acc._acct_keys = np.zeros(0, dtype=np.uint64)
    return acc

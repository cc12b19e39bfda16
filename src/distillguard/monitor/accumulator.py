"""The streaming per-account state of the monitor: :class:`FeatureAccumulator` folds ledger record batches
(:func:`distillguard.monitor.features.derive`) into counters, a HyperLogLog sketch of distinct prompts, a
bounded set of IP prefixes and a deterministic bottom-K sample of each account's queries, and returns an
entity's :class:`Profile` (one account, or a linked group pooled as one). Memory grows with the number of
accounts, never with the number of rows; states merge in ledger order (:mod:`distillguard.monitor.merge`).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from distillguard.monitor.features import (
    BIN_SECONDS,
    FIXED_NETWORKS,
    OWN_NETWORK_SHARE,
    QueryBatch,
    hash_ints,
    hash_strings,
    ip_prefix,
    stable_hash,
)
from distillguard.splitmix import mix64_np

_COUNTERS = (
    "n",  # requests: the unit of every rate and test (one decision of the client's each)
    "prompts",  # the prompts they asked answers for, a batched completion's each (the scan's minimum)
    "admitted",
    "cot",
    "identity",
    "logprobs",
    "logit_bias",
    "logprob_gen",
    "bias_probe",
    "copied",
    "copy_eligible",
    "prompt_tokens",
    "completion_tokens",
    "gaps",
    "active_bins",
    "active_hours",  # distinct absolute hours with a request (counted as active_bins: see _update_time)
)
_HLL_P = 10
_HLL_M = 1 << _HLL_P
_HOUR_HASHES = 32
# one unrelated 64-bit salt per MinHash row. Consecutive salts (0x51ED27 + j, before) made row j of hour h
# the hash of row j + 1 at hour h - 1, so over a run of consecutive hours the 32 minima were nearly one
# sample, and timing Jaccards read as 0 or 1
_HOUR_SALTS = mix64_np(np.uint64(0x51ED27) + np.arange(_HOUR_HASHES, dtype=np.uint64))
# what a saved state records of how its time state was computed: a state of another revision (the hour
# signatures of consecutive salts, bins counted at every change) cannot be continued or merged
STATE_REVISION = "prompts-1"  # hours-2, then a batched completion's prompts counted
BINS_PER_HOUR = int(round(3600.0 / BIN_SECONDS))
# each account's first new bins kept for merges: a merge is exact while fewer than this many of a later
# slice's (or merged run's) new bins fall at or before the earlier part's latest bin, with their hours
# within that bin's hour (the ledger's disorder is seconds to minutes; 32 bins are five hours)
HEAD_BINS = 32
assert BINS_PER_HOUR * BIN_SECONDS == 3600.0, "active hours are counted from whole bins"
_MAX_PREFIXES = 256
_MAX_KEYS = 64
COPY_BITS = 22  # the copy table's slots: 2**22
MIN_COPY_CHARS = 24  # shorter prompts ("hi", "thanks") are never counted as copied
OTHER = "(other)"  # the prefix counter's bucket for the networks it does not keep


@dataclass
class Sample:
    """A uniform sample of an entity's queries, in ledger order."""

    seq: np.ndarray
    ts: np.ndarray
    text: list[str]
    text_hash: np.ndarray
    cot: np.ndarray
    identity: np.ndarray
    logprobs: np.ndarray
    logit_bias: np.ndarray
    logprob_gen: np.ndarray
    bias_probe: np.ndarray
    copied: np.ndarray

    def __len__(self) -> int:
        return len(self.seq)


@dataclass
class Profile:
    """Everything the accumulator knows about one entity (an account or a pooled cluster of accounts)."""

    accounts: tuple[str, ...]
    counts: dict[str, float]
    first_ts: float
    last_ts: float
    first_seq: int
    last_seq: int
    log_gap_sum: float
    log_gap_sq: float
    span_bins: float
    distinct: float
    prefixes: Counter
    keys: set[str]
    orgs: set[str]  # declared organisations of the accounts (the account store's ``org``)
    sample: Sample
    hour_signature: np.ndarray  # MinHash of active hours, for linking
    # networks each member used beyond its own fixed ones (:func:`own_networks`), summed: churn is within
    # accounts (members of a pooled cluster each on a home network of their own are not one account hopping
    # between networks); past the prefix counter's bound, estimated from what it kept
    # (:func:`distinct_estimate`)
    extra_prefixes: float
    networks: float  # the members' distinct networks, summed (the same estimate)

    @property
    def n(self) -> int:
        """Requests (ledger rows)."""
        return int(self.counts["n"])

    @property
    def prompts(self) -> int:
        """Prompts asked, a batched completion's each: what the scan's minimum and queries to detection read
        (every feature reads requests, :attr:`n`)."""
        return int(self.counts["prompts"])


class FeatureAccumulator:
    """Streaming per-account state over ledger batches (see the module docstring).

    ``update`` must see rows in ledger order (increasing ``seq``); gaps and active-time bins assume it.
    State size: a few hundred bytes of counters, ``2**10`` HLL registers, at most ``sample_size`` sampled
    queries and ``256`` IP prefixes per account, plus the cross-account copy table (``copy_bits``). Which
    prefixes (and keys) an account's bounded set keeps is decided by :func:`sketch_rank` under
    ``sketch_key``, the installation's secret, which also salts the HyperLogLog registers, so that a client
    can choose neither the networks kept nor the registers its prompts fall into.

    Every per-account part is order-free or keeps what a merge needs (:mod:`monitor.merge`): accumulators
    over consecutive slices of the ledger merge into the state of one pass over the whole (active-time
    counts under :data:`HEAD_BINS`' condition). The copy table
    is the one cross-account part: a distributed pass computes it first (:class:`monitor.merge.CopyClaims`)
    and hands it to every slice's accumulator as ``claims``.
    """

    def __init__(
        self,
        *,
        sample_size: int = 256,
        copy_bits: int = COPY_BITS,
        min_copy_chars: int = MIN_COPY_CHARS,
        sketch_key: bytes | None = None,
    ) -> None:
        if sample_size < 8:
            raise ValueError("sample_size must be >= 8")
        if sketch_key is not None and len(sketch_key) < 16:
            raise ValueError("a sketch key has at least 16 bytes")
        self.sample_size = int(sample_size)
        # ranks the names the bounded prefix and key sets keep (:func:`sketch_rank`) and salts the distinct
        # prompt sketch (:meth:`_update_hll`); None: the public hashes
        self.sketch_key = sketch_key
        self._hll_salt = _hll_salt(sketch_key)
        self.min_copy_chars = int(min_copy_chars)
        self.accounts: list[str] = []
        self.index: dict[str, int] = {}
        self.last_seq = 0
        self.rows = 0
        self._cap = 0
        self.c: dict[str, np.ndarray] = {}
        self.first_ts = self.last_ts = self.log_gap_sum = self.log_gap_sq = np.zeros(0)
        self.head_ts = self.tail_ts = np.zeros(0)  # times of each account's first and last row by seq
        self.first_seq = self.last_seq_acct = self.top_bin = np.zeros(0, dtype=np.int64)
        self.hll = np.zeros((0, _HLL_M), dtype=np.uint8)
        self.hours = np.zeros((0, _HOUR_HASHES), dtype=np.uint64)
        # each account's first HEAD_BINS new bins (-1: none yet), what a merge needs to know which of a later
        # slice's new bins a single pass would have found already seen (see merge.merge_into)
        self.head_bins = np.zeros((0, HEAD_BINS), dtype=np.int64)
        self.prefixes: list[Counter] = []
        self.keys: list[set[str]] = []
        self.orgs: list[str | None] = []  # each account's declared organisation (an account has one)
        self._prefix_cache: dict[str | None, str | None] = {}
        self._worst_prefix: dict[int, tuple[int, str]] = {}  # see count_bounded
        # the copy table: a direct-mapped hash table from prompt hash to the first account that sent it
        self._copy_mask = (1 << copy_bits) - 1
        self._copy_hash = np.zeros(1 << copy_bits, dtype=np.uint64)
        self._copy_owner = np.full(1 << copy_bits, -1, dtype=np.int32)
        self.claims: Any = None  # a whole ledger's copy table, computed beforehand (read only; see merge)
        self._acct_keys = np.zeros(0, dtype=np.uint64)  # account-name hashes (the claims' owners)
        # the sample pool (bottom-K by priority per account), compacted lazily
        self._pool: dict[str, Any] = _empty_pool()
        self._pending: list[dict[str, Any]] = []
        self._pending_rows = 0
        self._thresh = np.zeros(0, dtype=np.uint64)

    # -- bookkeeping ----------------------------------------------------------------------------------

    def _grow(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = max(n, 2 * self._cap, 64)
        extra = cap - self._cap

        def pad(a: np.ndarray, fill: Any) -> np.ndarray:
            shape = (extra, *a.shape[1:])
            return np.concatenate([a, np.full(shape, fill, dtype=a.dtype)])

        for name in _COUNTERS:
            self.c[name] = pad(self.c.get(name, np.zeros(0, dtype=np.float64)), 0.0)
        self.first_ts = pad(self.first_ts, np.inf)
        self.last_ts = pad(self.last_ts, -np.inf)
        self.log_gap_sum = pad(self.log_gap_sum, 0.0)
        self.log_gap_sq = pad(self.log_gap_sq, 0.0)
        self.head_ts = pad(self.head_ts, np.nan)
        self.tail_ts = pad(self.tail_ts, np.nan)
        self.first_seq = pad(self.first_seq, 0)
        self.last_seq_acct = pad(self.last_seq_acct, 0)
        self.top_bin = pad(self.top_bin, -1)
        self.hll = pad(self.hll, 0)
        self.hours = pad(self.hours, np.iinfo(np.uint64).max)
        self.head_bins = pad(self.head_bins, -1)
        self._thresh = pad(self._thresh, np.iinfo(np.uint64).max)
        self._cap = cap

    def _ids(self, names: list[str]) -> np.ndarray:
        out = np.empty(len(names), dtype=np.int32)
        for i, name in enumerate(names):
            j = self.index.get(name)
            if j is None:
                j = self.index[name] = len(self.accounts)
                self.accounts.append(name)
                self.prefixes.append(Counter())
                self.keys.append(set())
                self.orgs.append(None)
            out[i] = j
        self._grow(len(self.accounts))
        if self.claims is not None and len(self._acct_keys) < len(self.accounts):
            new = self.accounts[len(self._acct_keys) :]
            self._acct_keys = np.concatenate([self._acct_keys, hash_strings(new)])
        return out

    # -- update ---------------------------------------------------------------------------------------

    def update(self, batch: QueryBatch) -> None:
        """Fold one batch of queries (in ledger order) into the per-account state."""
        if len(batch) == 0:
            return
        a = self._ids(batch.accounts)[batch.acct]
        c = self.c
        for name, values in (
            ("n", None),
            ("prompts", batch.prompts),
            ("admitted", batch.admitted),
            ("cot", batch.cot),
            ("identity", batch.identity),
            ("logprobs", batch.logprobs),
            ("logit_bias", batch.logit_bias),
            ("logprob_gen", batch.logprob_gen),
            ("bias_probe", batch.bias_probe),
            ("prompt_tokens", batch.prompt_tokens),
            ("completion_tokens", batch.completion_tokens),
        ):
            w = None if values is None else values.astype(np.float64)
            c[name][: len(self.accounts)] += np.bincount(a, weights=w, minlength=len(self.accounts))
        self._update_time(a, batch)
        self._update_hll(a, batch.text_hash)
        copied, eligible = self._update_copies(a, batch)
        n_acc = len(self.accounts)
        c["copied"][:n_acc] += np.bincount(a, weights=copied.astype(np.float64), minlength=n_acc)
        c["copy_eligible"][:n_acc] += np.bincount(a, weights=eligible.astype(np.float64), minlength=n_acc)
        self._update_sets(a, batch)
        self._update_sample(a, batch, copied)
        self.last_seq = max(self.last_seq, int(batch.seq.max()))
        self.rows += len(batch)

    def _update_time(self, a: np.ndarray, b: QueryBatch) -> None:
        order = np.lexsort((b.seq, a))
        sa, sts, sseq = a[order], b.ts[order], b.seq[order]
        first = np.ones(len(sa), dtype=bool)
        first[1:] = sa[1:] != sa[:-1]
        prev_ts = np.empty_like(sts)
        prev_ts[1:] = sts[:-1]
        prev_ts[first] = self.tail_ts[sa[first]]  # the account's previous row by seq, as within a batch
        has_prev = np.isfinite(prev_ts)
        gaps = np.maximum(sts - prev_ts, 1e-3)[has_prev]
        lg = np.log(gaps)
        ga = sa[has_prev]
        n_acc = len(self.accounts)
        self.c["gaps"][:n_acc] += np.bincount(ga, minlength=n_acc)
        self.log_gap_sum[:n_acc] += np.bincount(ga, weights=lg, minlength=n_acc)
        self.log_gap_sq[:n_acc] += np.bincount(ga, weights=lg * lg, minlength=n_acc)
        # a bin (an hour) is new to an account when it is later than every bin the account had before it by
        # seq: a record stamped when its request started is written when it ends, so concurrent requests
        # reach the ledger out of time order, and counting every change of bin counted one bin many times
        # (a bin whose every request is written after one of a later bin is missed instead: rare)
        bins = np.floor(sts / BIN_SECONDS).astype(np.int64)
        before = np.maximum(_running_max_before(sa, bins, first), self.top_bin[sa])
        new_bin = bins > before
        self.c["active_bins"][:n_acc] += np.bincount(sa, weights=new_bin, minlength=n_acc)
        self._note_head_bins(sa[new_bin], bins[new_bin])
        new_hour = bins // BINS_PER_HOUR > before // BINS_PER_HOUR  # no bin yet: -1, hour -1
        self.c["active_hours"][:n_acc] += np.bincount(sa, weights=new_hour, minlength=n_acc)
        last = np.ones(len(sa), dtype=bool)
        last[:-1] = sa[1:] != sa[:-1]
        self.top_bin[sa[last]] = np.maximum(before[last], bins[last])
        self.tail_ts[sa[last]] = sts[last]
        np.minimum.at(self.first_ts, sa, sts)
        np.maximum.at(self.last_ts, sa, sts)
        untouched = np.isnan(self.head_ts[sa[first]])
        self.first_seq[sa[first][untouched]] = sseq[first][untouched]
        self.head_ts[sa[first][untouched]] = sts[first][untouched]
        self.last_seq_acct[sa[last]] = sseq[last]
        # MinHash of active absolute hours: accounts driven by one scheduler are active in the same hours
        hours = np.floor(sts / 3600.0).astype(np.int64)
        base = int(hours.min()) if len(hours) else 0
        key = np.unique((sa.astype(np.int64) << 32) | (hours - base))
        if key.size:
            pa_acct, pa_hour = key >> 32, (key & 0xFFFFFFFF) + base
            for j in range(_HOUR_HASHES):
                np.minimum.at(self.hours[:, j], pa_acct, hash_ints(pa_hour, salt=int(_HOUR_SALTS[j])))

    def _note_head_bins(self, a: np.ndarray, bins: np.ndarray) -> None:
        """Append new bins (grouped by account, rising within each) to their accounts' first HEAD_BINS."""
        if not len(a):
            return
        first = np.ones(len(a), dtype=bool)
        first[1:] = a[1:] != a[:-1]
        idx = np.arange(len(a))
        rank = idx - np.maximum.accumulate(np.where(first, idx, 0)) + (self.head_bins[a] >= 0).sum(axis=1)
        keep = rank < HEAD_BINS
        self.head_bins[a[keep], rank[keep]] = bins[keep]

    def _update_hll(self, a: np.ndarray, h: np.ndarray) -> None:
        # the prompt hash is public: keyed, so that a client cannot pick prompts that fall into a few
        # registers and read as a few distinct prompts
        if self._hll_salt is not None:
            h = mix64_np(h ^ self._hll_salt)
        reg = (h >> np.uint64(64 - _HLL_P)).astype(np.int64)
        # rank = leading zeros of the remaining bits + 1 (a sentinel bit bounds it)
        rest = (h << np.uint64(_HLL_P)) | np.uint64(1 << (_HLL_P - 1))
        bit_length = np.frexp(rest.astype(np.float64))[1]
        rank = (65 - bit_length).astype(np.uint8)
        np.maximum.at(self.hll, (a, reg), rank)

    def _update_copies(self, a: np.ndarray, b: QueryBatch) -> tuple[np.ndarray, np.ndarray]:
        """Flag prompts first sent by another account. Each table slot belongs to the text of the earliest
        row that reaches it; a text whose slot belongs to another text is not tracked (never flagged). So
        the answer does not depend on how rows are split into batches or slices."""
        eligible = b.text_len >= self.min_copy_chars
        copied = np.zeros(len(a), dtype=bool)
        idx = np.nonzero(eligible)[0]
        if not len(idx):
            return copied, eligible
        h = b.text_hash[idx]
        ai = a[idx]
        if self.claims is not None:
            owner = self.claims.owner_of((h & self.claims.mask).astype(np.int64), h)
            copied[idx] = (owner != 0) & (owner != self._acct_keys[ai])
            return copied, eligible
        slot = (h & np.uint64(self._copy_mask)).astype(np.int64)
        stored = self._copy_hash[slot]
        known = (stored == h) & (self._copy_owner[slot] >= 0)
        empty = self._copy_owner[slot] < 0
        # new texts: the first row of each text claims its slot, the first text to reach a slot wins it
        _, first_pos, inverse = np.unique(h, return_index=True, return_inverse=True)
        claim = np.zeros(len(idx), dtype=bool)
        firsts = np.sort(first_pos[empty[first_pos]])  # by row: the earliest text reaching a slot wins it
        if len(firsts):
            _, win = np.unique(slot[firsts], return_index=True)
            claim[firsts[win]] = True
        claimed_text = claim[first_pos][inverse]
        self._copy_hash[slot[claim]] = h[claim]
        self._copy_owner[slot[claim]] = ai[claim]
        owner = np.where(known, self._copy_owner[slot], ai[first_pos][inverse])
        tracked = known | claimed_text
        copied[idx] = tracked & (owner != ai)
        return copied, eligible

    def _update_sets(self, a: np.ndarray, b: QueryBatch) -> None:
        pre_ids: dict[str | None, int] = {}
        names: list[str | None] = []
        ip_to_pre = np.empty(len(b.ips), dtype=np.int64)
        for k, raw in enumerate(b.ips):
            pre = self._prefix_cache.get(raw)
            if pre is None and raw not in self._prefix_cache:
                pre = self._prefix_cache[raw] = ip_prefix(raw)
                if len(self._prefix_cache) > 100_000:
                    self._prefix_cache.clear()
            if pre not in pre_ids:
                pre_ids[pre] = len(names)
                names.append(pre)
            ip_to_pre[k] = pre_ids[pre]
        for acct, pre, cnt in _distinct_pairs(a, ip_to_pre[b.ip], len(names)):
            name = names[pre]
            if name is not None:
                count_bounded(
                    self.prefixes[acct], name, cnt, _MAX_PREFIXES, self._worst_prefix, acct, self.sketch_key
                )
        for acct, k, _ in _distinct_pairs(a, b.key, len(b.keys)):
            kid = b.keys[k]
            if kid is not None:
                add_bounded(self.keys[acct], kid, _MAX_KEYS, self.sketch_key)
        for acct, k, _ in _distinct_pairs(a, b.org, len(b.orgs)):
            if b.orgs[k] is not None:
                self.orgs[acct] = b.orgs[k]

    def _update_sample(self, a: np.ndarray, b: QueryBatch, copied: np.ndarray) -> None:
        prio = hash_ints(b.seq, salt=0x5A17)
        cand = np.nonzero(prio < self._thresh[a])[0]
        if not len(cand):
            return
        text = b.text.take(pa.array(cand)).to_pylist()
        self._pending.append(
            {
                "acct": a[cand].astype(np.int32),
                "prio": prio[cand],
                "seq": b.seq[cand],
                "ts": b.ts[cand],
                "text": np.array(text, dtype=object),
                "text_hash": b.text_hash[cand],
                "cot": b.cot[cand],
                "identity": b.identity[cand],
                "logprobs": b.logprobs[cand],
                "logit_bias": b.logit_bias[cand],
                "logprob_gen": b.logprob_gen[cand],
                "bias_probe": b.bias_probe[cand],
                "copied": copied[cand],
            }
        )
        self._pending_rows += len(cand)
        # compaction sorts pool + pending: trigger it when pending is as large as the pool (amortised O(1))
        if self._pending_rows >= max(100_000, len(self._pool["seq"])):
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        parts = [self._pool, *self._pending]
        pool = {k: np.concatenate([p[k] for p in parts]) for k in self._pool}
        order = np.lexsort((pool["prio"], pool["acct"]))
        acct = pool["acct"][order]
        starts = np.ones(len(acct), dtype=bool)
        starts[1:] = acct[1:] != acct[:-1]
        group_start = np.maximum.accumulate(np.where(starts, np.arange(len(acct)), 0))
        rank = np.arange(len(acct)) - group_start
        keep = order[rank < self.sample_size]
        self._pool = {k: v[keep] for k, v in pool.items()}
        self._pending, self._pending_rows = [], 0
        counts = np.bincount(self._pool["acct"], minlength=self._cap)
        full = counts >= self.sample_size
        thresh = np.full(self._cap, np.iinfo(np.uint64).max, dtype=np.uint64)
        if full.any():
            mx = np.zeros(self._cap, dtype=np.uint64)
            np.maximum.at(mx, self._pool["acct"], self._pool["prio"])
            thresh[full] = mx[full]
        self._thresh = thresh

    # -- read-out -------------------------------------------------------------------------------------

    def profile(self, accounts: Sequence[str], sample_size: int | None = None) -> Profile:
        """The pooled state of one or more accounts (a cluster is judged as one campaign).

        Counters add, distinct prompts are the union (HLL register maximum), the sample is the union cut
        to the lowest priorities (still uniform over the pooled queries), inter-arrival statistics pool the
        within-account gaps, and the active span is the sum of the members' spans.
        """
        self._compact()
        ids = np.array([self.index[x] for x in accounts], dtype=np.int64)
        counts = {name: float(self.c[name][ids].sum()) for name in _COUNTERS}
        regs = self.hll[ids].max(axis=0)
        size = sample_size or (self.sample_size if len(ids) == 1 else 2 * self.sample_size)
        pool_acct = self._pool["acct"]  # sorted by (account, priority) after compaction
        lo = np.searchsorted(pool_acct, ids.astype(pool_acct.dtype), side="left")
        hi = np.searchsorted(pool_acct, ids.astype(pool_acct.dtype), side="right")
        sel = np.concatenate([np.arange(x, y) for x, y in zip(lo, hi, strict=True)]) if len(ids) else lo
        sel = sel[np.argsort(self._pool["prio"][sel], kind="stable")[:size]]
        sel = sel[np.argsort(self._pool["seq"][sel], kind="stable")]
        p = self._pool
        sample = Sample(
            seq=p["seq"][sel].copy(),
            ts=p["ts"][sel].copy(),
            text=[str(t) for t in p["text"][sel]],
            text_hash=p["text_hash"][sel].copy(),
            cot=p["cot"][sel].copy(),
            identity=p["identity"][sel].copy(),
            logprobs=p["logprobs"][sel].copy(),
            logit_bias=p["logit_bias"][sel].copy(),
            logprob_gen=p["logprob_gen"][sel].copy(),
            bias_probe=p["bias_probe"][sel].copy(),
            copied=p["copied"][sel].copy(),
        )
        networks = [distinct_estimate(self.prefixes[i], key=self.sketch_key) for i in ids]
        prefixes: Counter = Counter()
        keys: set[str] = set()
        for i in ids:
            prefixes.update(self.prefixes[i])
            keys |= self.keys[i]
        first, last = float(self.first_ts[ids].min()), float(self.last_ts[ids].max())
        # a pooled entity's span is the sum of its members' spans: duty cycle = mean member duty cycle
        spans = np.floor(self.last_ts[ids] / BIN_SECONDS) - np.floor(self.first_ts[ids] / BIN_SECONDS) + 1
        return Profile(
            accounts=tuple(accounts),
            counts=counts,
            first_ts=first,
            last_ts=last,
            first_seq=int(self.first_seq[ids].min()),
            last_seq=int(self.last_seq_acct[ids].max()),
            log_gap_sum=float(self.log_gap_sum[ids].sum()),
            log_gap_sq=float(self.log_gap_sq[ids].sum()),
            span_bins=float(spans.sum()),
            distinct=hll_estimate(regs),
            prefixes=prefixes,
            keys=keys,
            orgs={o for i in ids if (o := self.orgs[i]) is not None},
            sample=sample,
            hour_signature=self.hours[ids].min(axis=0),
            extra_prefixes=sum(
                max(est - own_networks(self.prefixes[i]), 0.0) for i, est in zip(ids, networks, strict=True)
            ),
            networks=sum(networks),
        )

    def account_rows(self) -> dict[str, int]:
        """Queries (requests) per account so far."""
        return {name: int(self.c["n"][i]) for i, name in enumerate(self.accounts)}

    # -- persistence (monitor follow) -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Arrays and JSON-able metadata that :meth:`from_state` restores exactly."""
        self._compact()
        n = len(self.accounts)
        arrays: dict[str, np.ndarray] = {f"c_{k}": v[:n] for k, v in self.c.items()}
        arrays.update(
            first_ts=self.first_ts[:n],
            last_ts=self.last_ts[:n],
            log_gap_sum=self.log_gap_sum[:n],
            log_gap_sq=self.log_gap_sq[:n],
            head_ts=self.head_ts[:n],
            tail_ts=self.tail_ts[:n],
            first_seq=self.first_seq[:n],
            last_seq_acct=self.last_seq_acct[:n],
            top_bin=self.top_bin[:n],
            head_bins=self.head_bins[:n],
            hll=self.hll[:n],
            hours=self.hours[:n],
            copy_hash=self._copy_hash,
            copy_owner=self._copy_owner,
        )
        for k, v in self._pool.items():
            if k == "text":  # UTF-8 bytes and offsets: a fixed-width array would take the longest text's size
                arrays["pool_text_utf8"], arrays["pool_text_offsets"] = _pack_texts(v)
            else:
                arrays[f"pool_{k}"] = v
        meta = {
            "accounts": self.accounts,
            "last_seq": self.last_seq,
            "rows": self.rows,
            "sample_size": self.sample_size,
            "min_copy_chars": self.min_copy_chars,
            "prefixes": [dict(x) for x in self.prefixes],
            "keys": [sorted(x) for x in self.keys],
            "orgs": self.orgs,
            "sketch": sketch_id(self.sketch_key),
            "time_state": STATE_REVISION,
        }
        return {"arrays": arrays, "meta": meta}

    @classmethod
    def from_state(cls, state: dict[str, Any], sketch_key: bytes | None = None) -> FeatureAccumulator:
        """The accumulator :meth:`state` saved. Its bounded sets were ranked under one sketch key, so
        ``sketch_key`` must be that key (a state saved before keys were recorded: ``None``, the public
        rank); another one raises :class:`SketchKeyMismatch` (re-read the ledger instead), and a state of
        another :data:`STATE_REVISION` raises :class:`StateRevisionMismatch`."""
        meta, arrays = state["meta"], state["arrays"]
        if meta.get("sketch") != sketch_id(sketch_key):
            raise SketchKeyMismatch("the state's prefix sets were ranked under another sketch key")
        if meta.get("time_state") != STATE_REVISION:
            raise StateRevisionMismatch("the state's counts were made by another version")
        copy_bits = int(np.log2(len(arrays["copy_hash"])))
        acc = cls(
            sample_size=meta["sample_size"],
            copy_bits=copy_bits,
            min_copy_chars=meta["min_copy_chars"],
            sketch_key=sketch_key,
        )
        acc._ids(list(meta["accounts"]))
        n = len(acc.accounts)
        for k in _COUNTERS:
            acc.c[k][:n] = arrays[f"c_{k}"]
        for name in ("first_ts", "last_ts", "log_gap_sum", "log_gap_sq", "first_seq", "top_bin", "hll"):
            getattr(acc, name)[:n] = arrays[name]
        acc.last_seq_acct[:n] = arrays["last_seq_acct"]
        acc.head_ts[:n] = arrays.get("head_ts", arrays["first_ts"])  # older states: a row was there
        acc.tail_ts[:n] = arrays.get("tail_ts", arrays["last_ts"])
        acc.hours[:n] = arrays["hours"]
        acc.head_bins[:n] = arrays["head_bins"]
        acc._copy_hash = np.array(arrays["copy_hash"], dtype=np.uint64)
        acc._copy_owner = np.array(arrays["copy_owner"], dtype=np.int32)
        pool = {k: np.asarray(arrays[f"pool_{k}"]) for k in _empty_pool() if k != "text"}
        if "pool_text_utf8" in arrays:
            pool["text"] = _unpack_texts(arrays["pool_text_utf8"], arrays["pool_text_offsets"])
        else:  # a state saved before texts were packed
            pool["text"] = np.asarray(arrays["pool_text"]).astype(object)
        acc._pool = pool
        acc._pending = [dict(pool)]
        acc._pool = _empty_pool()
        acc._pending_rows = len(pool["seq"])
        acc._compact()
        acc.last_seq, acc.rows = int(meta["last_seq"]), int(meta["rows"])
        acc.prefixes = [Counter(x) for x in meta["prefixes"]]
        acc.keys = [set(x) for x in meta["keys"]]
        acc.orgs = list(meta.get("orgs") or [None] * n)
        return acc


def _running_max_before(sa: np.ndarray, values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """For rows grouped by ``sa`` (ascending account indices, ``first`` marking each group's first row):
    the largest of the group's earlier ``values`` (-1 for a group's first row)."""
    if not len(values):
        return values.copy()
    uniq, rank = np.unique(values, return_inverse=True)  # ranks fit the low 32 bits whatever the values
    acc = np.maximum.accumulate((sa.astype(np.int64) << 32) | rank.astype(np.int64))
    out = np.full(len(values), -1, dtype=np.int64)
    out[1:] = uniq[acc[:-1] & 0xFFFFFFFF]
    out[first] = -1
    return out


def _pack_texts(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = [str(t).encode("utf-8") for t in texts]
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return np.frombuffer(b"".join(data), dtype=np.uint8), offsets


def _unpack_texts(utf8: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    raw = np.asarray(utf8, dtype=np.uint8).tobytes()
    bounds = np.asarray(offsets).tolist()
    out = np.empty(len(bounds) - 1, dtype=object)
    out[:] = [raw[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return out


def _empty_pool() -> dict[str, np.ndarray]:
    return {
        "acct": np.zeros(0, dtype=np.int32),
        "prio": np.zeros(0, dtype=np.uint64),
        "seq": np.zeros(0, dtype=np.int64),
        "ts": np.zeros(0, dtype=np.float64),
        "text": np.zeros(0, dtype=object),
        "text_hash": np.zeros(0, dtype=np.uint64),
        "cot": np.zeros(0, dtype=bool),
        "identity": np.zeros(0, dtype=bool),
        "logprobs": np.zeros(0, dtype=bool),
        "logit_bias": np.zeros(0, dtype=bool),
        "logprob_gen": np.zeros(0, dtype=bool),
        "bias_probe": np.zeros(0, dtype=bool),
        "copied": np.zeros(0, dtype=bool),
    }


class SketchKeyMismatch(ValueError):
    """A saved or merged state whose bounded sets were ranked under another sketch key."""


class StateRevisionMismatch(SketchKeyMismatch):
    """A saved state whose time state another version computed (see :data:`STATE_REVISION`): like a state
    of another sketch key, it cannot be continued, and the ledger is read again."""


def _hll_salt(key: bytes | None) -> np.uint64 | None:
    if key is None:
        return None
    return np.uint64(int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"dg-hll-salt").digest()))


def sketch_id(key: bytes | None) -> str | None:
    """A name for a sketch key that does not reveal it (None: the public rank)."""
    return None if key is None else hashlib.blake2b(key, digest_size=8, person=b"dg-sketch-id").hexdigest()


@functools.lru_cache(maxsize=1 << 16)
def sketch_rank(name: str, key: bytes | None = None) -> int:
    """The 63-bit rank by which bounded sets keep names (the smallest ranks are kept).

    With a secret ``key`` (the installation's, :func:`distillguard.monitor.jobs.sketch_key`) it is a keyed
    BLAKE2b hash, which a client cannot compute: which of its networks an account's set keeps, and so the
    bottom-k estimate of how many it used, is out of the client's control. ``None`` is the public
    :func:`stable_hash`: an attacker who knows it can pick proxy exits whose prefixes rank high and keep
    the estimate low (3,000 such networks read as 268); it is what a state saved before keys were
    recorded used."""
    if key is None:
        return stable_hash(name)
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), key=key[:64], digest_size=8).digest()) >> 1


def own_networks(counter: Counter) -> int:
    """How many of an account's networks are its own fixed ones, which cost it no churn: those that carry a
    real share of its requests (at least :data:`OWN_NETWORK_SHARE` of them, and two), at most
    :data:`FIXED_NETWORKS` (home, office, a phone carrier), and at least one. A proxy exit used once, or a
    sticky exit used for a few requests among many, is nobody's own, so an account that keeps moving pays
    for every network past its first. Counts of kept names are exact, so merged slices agree."""
    n = sum(counter.values())
    need = max(2.0, OWN_NETWORK_SHARE * n)
    own = sum(1 for k, c in counter.items() if k != OTHER and c >= need)
    return max(1, min(FIXED_NETWORKS, own))


def distinct_estimate(counter: Counter, *, key: bytes | None) -> float:
    """How many distinct names a :func:`count_bounded` counter has seen: exact while it kept them all (no
    :data:`OTHER`); past its cap, the bottom-k estimate ``(k - 1) / h_k`` from the largest kept rank ``h_k``
    scaled to [0, 1) (Bar-Yossef et al. 2002; relative error about ``1 / sqrt(k - 2)``, 6% at the 256
    prefixes kept). Order-free like the counter, so merged slices give the same estimate. Only for one
    account's counter: a pooled sum of several is not a bottom-k sketch. ``key``: the sketch key the
    counter kept its names under (:func:`sketch_rank`); read under another, the estimate is wrong."""
    kept = len(counter) - (OTHER in counter)
    if OTHER not in counter or kept < 2:
        return float(kept)
    h_k = max(sketch_rank(k, key) for k in counter if k != OTHER) / 2.0**63
    # more names than it kept were seen (one went to OTHER), and no more than requests
    return min(max(kept + 1.0, (kept - 1) / h_k), float(sum(counter.values())))


def count_bounded(
    counter: Counter,
    name: str,
    cnt: int,
    cap: int,
    worst: dict[int, tuple[int, str]],
    owner: int,
    key: bytes | None = None,
) -> None:
    """Count ``name`` in a counter that keeps the ``cap`` names of smallest :func:`sketch_rank` (under
    ``key``) and adds the rest to :data:`OTHER`. Which names it keeps, and their counts, do not depend on
    the order names arrive in (a name is evicted for good only by a smaller rank), so counters of slices
    merge exactly. ``worst[owner]`` caches the full counter's largest kept rank (a rejection costs one
    hash)."""
    if name in counter:
        counter[name] += cnt
        return
    if len(counter) - (OTHER in counter) < cap:
        counter[name] = cnt
        return
    w = worst.get(owner)
    if w is None:
        w = worst[owner] = max((sketch_rank(k, key), k) for k in counter if k != OTHER)
    if sketch_rank(name, key) < w[0]:
        counter[OTHER] += counter.pop(w[1])
        counter[name] = cnt
        del worst[owner]
    else:
        counter[OTHER] += cnt


def add_bounded(keep: set[str], name: str, cap: int, key: bytes | None = None) -> None:
    """:func:`count_bounded` for a set of at most ``cap`` (a few dozen) names: keep the smallest ranks."""
    if name in keep:
        return
    if len(keep) < cap:
        keep.add(name)
        return
    worst = max(keep, key=lambda k: sketch_rank(k, key))
    if sketch_rank(name, key) < sketch_rank(worst, key):
        keep.discard(worst)
        keep.add(name)


def _distinct_pairs(acct: np.ndarray, code: np.ndarray, codes: int) -> Iterator[tuple[int, int, int]]:
    """The distinct (account, code) pairs of a batch with their row counts, by one ``np.unique``."""
    width = max(codes, 1)
    keys, counts = np.unique(acct.astype(np.int64) * width + code, return_counts=True)
    for key, cnt in zip(keys.tolist(), counts.tolist(), strict=True):
        acct_i, k = divmod(key, width)
        yield acct_i, k, cnt


def hll_estimate(registers: np.ndarray) -> float:
    """HyperLogLog cardinality with the small-range (linear counting) correction of Flajolet et al."""
    m = len(registers)
    alpha = 0.7213 / (1 + 1.079 / m)
    est = alpha * m * m / float(np.sum(np.power(2.0, -registers.astype(np.float64))))
    zeros = int(np.count_nonzero(registers == 0))
    if est <= 2.5 * m and zeros:
        est = m * math.log(m / zeros)
    return est

"""Who uses which template: keyed template fingerprints, network facts and timing per account.

One pass over ledger rows (Arrow tables or record batches with the columns of a ledger export: ``account``,
``prompt``, ``params``, ``client_ip``, ``ts``). At most ``limit`` queries per account are examined (the
first ones, which is what early detection needs), so the cost is bounded by accounts x ``limit``, not by the
ledger. :meth:`Census.tap` passes batches through while counting, so a monitor scan reads its source once.

Raw prompts never leave this module: what it keeps per account are keyed fingerprints (see
:mod:`distillguard.intel.fingerprint`), MinHash sketches of system prompts, client IPs and times.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from distillguard.intel.fingerprint import Keyring, key_kind, template_keys, timing_signature
from distillguard.monitor.features import ip_prefix


@dataclass
class AccountCensus:
    n: int = 0
    first_ts: float = float("inf")
    last_ts: float = float("-inf")
    # fingerprint -> [queries, first ts, last ts]
    fps: dict[str, list[float]] = field(default_factory=dict)
    ips: Counter = field(default_factory=Counter)
    ts: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Template:
    """One exportable template of a campaign (fingerprint only) and how the campaign used it."""

    fingerprint: str
    kind: str
    queries: int
    accounts: int
    first_ts: float
    last_ts: float
    sketch: np.ndarray | None = None  # system prompts only


@dataclass(frozen=True)
class NetworkFact:
    prefix: str
    ips: tuple[str, ...]
    queries: int
    accounts: int


class Census:
    """Per-account template fingerprints over ledger rows (see the module docstring)."""

    def __init__(self, keyring: Keyring, *, limit: int = 1000) -> None:
        self.keyring = keyring
        self.limit = limit
        self.accounts: dict[str, AccountCensus] = {}
        self.sketches: dict[str, np.ndarray] = {}  # system-prompt fingerprint -> MinHash sketch
        self._kind: dict[str, str] = {}

    def update(self, table: pa.Table | pa.RecordBatch) -> None:
        cols = set(table.schema.names)
        n = table.num_rows
        acct = table.column("account").to_pylist()
        prompt = table.column("prompt").to_pylist()
        ts = table.column("ts").to_pylist()
        params = table.column("params").to_pylist() if "params" in cols else [None] * n
        ips = table.column("client_ip").to_pylist() if "client_ip" in cols else [None] * n
        for i in range(n):
            a = acct[i]
            if a is None:
                continue
            st = self.accounts.get(a)
            if st is None:
                st = self.accounts[a] = AccountCensus()
            if st.n >= self.limit:
                continue
            t = float(ts[i] or 0.0)
            st.n += 1
            st.first_ts, st.last_ts = min(st.first_ts, t), max(st.last_ts, t)
            st.ts.append(t)
            if ips[i]:
                st.ips[ips[i]] += 1
            p = params[i]
            if isinstance(p, str):
                try:
                    p = json.loads(p)
                except ValueError:
                    p = None
            for key in template_keys(prompt[i] or "", p):
                fp = self.keyring.fingerprint(key)
                kind = self._kind.setdefault(fp, key_kind(key))
                if kind == "sys" and fp not in self.sketches:
                    self.sketches[fp] = self.keyring.sketch(key[4:])
                rec = st.fps.get(fp)
                if rec is None:
                    st.fps[fp] = [1, t, t]
                else:
                    rec[0] += 1
                    rec[1], rec[2] = min(rec[1], t), max(rec[2], t)

    def tap(self, batches: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[pa.Table | pa.RecordBatch]:
        """Pass ``batches`` through unchanged, counting each one first."""
        for b in batches:
            self.update(b)
            yield b

    def kind(self, fp: str) -> str:
        return self._kind.get(fp, "?")

    def users(self, accounts: Iterable[str] | None = None) -> Counter:
        """fingerprint -> number of (the given) accounts using it."""
        c: Counter = Counter()
        for a in self.accounts if accounts is None else accounts:
            st = self.accounts.get(a)
            if st is not None:
                c.update(st.fps.keys())
        return c

    # ----------------------------------------------------------------------------------------------
    # What a campaign may export

    def campaign_templates(
        self,
        members: Sequence[str],
        benign: Iterable[str],
        *,
        min_share: float = 0.05,
        min_queries: int = 3,
        benign_max_accounts: int = 1,
    ) -> list[Template]:
        """Templates the campaign's accounts repeat and the provider's benign accounts do not use.

        Kept: used in at least ``min_share`` of the campaign's examined queries (and ``min_queries``), by at
        least two member accounts when the campaign has several, and by at most ``benign_max_accounts`` of
        the ``benign`` accounts (default 1: a template two customers share is a public one).
        """
        members = [m for m in members if m in self.accounts]
        total = sum(self.accounts[m].n for m in members)
        if not total:
            return []
        benign_users = self.users(benign)
        agg: dict[str, list[float]] = {}
        for m in members:
            for fp, (q, first, last) in self.accounts[m].fps.items():
                r = agg.setdefault(fp, [0, 0, np.inf, -np.inf])
                r[0] += q
                r[1] += 1
                r[2], r[3] = min(r[2], first), max(r[3], last)
        need_accounts = 2 if len(members) > 1 else 1
        out = []
        for fp, (q, users, first, last) in agg.items():
            if q < max(min_queries, min_share * total) or users < need_accounts:
                continue
            if benign_users.get(fp, 0) > benign_max_accounts:
                continue
            kind = self.kind(fp)
            sketch = self.sketches.get(fp) if kind == "sys" else None
            out.append(Template(fp, kind, int(q), int(users), float(first), float(last), sketch))
        out.sort(key=lambda t: (-t.queries, t.fingerprint))
        return out

    def campaign_network(
        self,
        members: Sequence[str],
        benign: Iterable[str],
        *,
        benign_max_accounts: int = 1,
        min_share: float = 0.02,
        min_queries: int = 3,
    ) -> list[NetworkFact]:
        """The campaign's client /24 (IPv4) or /48 (IPv6) networks that benign accounts do not share and that
        carried at least ``min_share`` of its queries (rotating residential proxies are not indicators)."""
        benign_nets: Counter = Counter()
        for a in benign:
            st = self.accounts.get(a)
            if st is not None:
                benign_nets.update({ip_prefix(ip) for ip in st.ips} - {None})
        nets: dict[str, dict] = {}
        for m in members:
            st = self.accounts.get(m)
            if st is None:
                continue
            for ip, q in st.ips.items():
                net = ip_prefix(ip)
                if net is None or benign_nets.get(net, 0) > benign_max_accounts:
                    continue
                r = nets.setdefault(net, {"ips": set(), "q": 0, "accts": set()})
                r["ips"].add(ip)
                r["q"] += q
                r["accts"].add(m)
        total = sum(self.accounts[m].n for m in members if m in self.accounts)
        need = max(min_queries, min_share * total)
        return sorted(
            (
                NetworkFact(k, tuple(sorted(v["ips"])), v["q"], len(v["accts"]))
                for k, v in nets.items()
                if v["q"] >= need
            ),
            key=lambda f: (-f.queries, f.prefix),
        )

    def campaign_timing(self, members: Sequence[str]) -> dict[str, float]:
        ts = [np.asarray(self.accounts[m].ts) for m in members if m in self.accounts]
        if not ts:
            return {}
        who = np.concatenate([np.full(len(t), i) for i, t in enumerate(ts)])
        return timing_signature(np.concatenate(ts), who)

    def first_last(self, members: Sequence[str]) -> tuple[float, float, int]:
        sts = [self.accounts[m] for m in members if m in self.accounts]
        return min(s.first_ts for s in sts), max(s.last_ts for s in sts), sum(s.n for s in sts)

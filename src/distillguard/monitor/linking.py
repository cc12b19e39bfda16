"""Account linking: which accounts are one operator, so a campaign is judged as one.

Real campaigns spread over thousands of accounts that each stay under every per-key limit
(docs/architecture.md): judged one by one, each looks like a modest customer. Linking builds a graph
whose edges need **two independent kinds of evidence** between a pair of accounts:

- ``ip``: they send from the same /24 (IPv6 /48) network, among the prefixes carrying at least 10% of
  each account's traffic (a rented block, one proxy pool);
- ``template``: their recurring prompt frames (word 4-grams that recur within each account's traffic,
  see ``entity.text_geometry``) overlap, Jaccard >= 0.2, found with MinHash + LSH banding so the
  candidate search stays linear in the number of accounts;
- ``timing``: their active hours coincide, Jaccard >= 0.6 over at least 4 active hours each (MinHash of
  absolute hour bins, its rows salted independently): one scheduler drives them. Only accounts that leave at
  least half of the hours from their first request to their last idle (``max_hour_cover``; the accumulator
  counts each account's distinct active hours exactly) show a schedule: round-the-clock services
  share every hour with every other round-the-clock account, a scheduler in common or not;
- ``created``: their keys were created within ``created_window`` seconds of each other (from the account
  store or an export's ``accounts.parquet``; unknown without them): a registration burst.

One kind alone is common among honest customers (colleagues behind one NAT, two users of the same
popular prompt, people in one time zone, a busy sign-up day); two at once rarely are. At least one of the
two must be infrastructure or behaviour in time (``ip`` or ``timing``): sharing prompt frames with
someone who signed up the same day is what customers onboarded together (or migrated in bulk) look
like. The exception is a *burst* of accounts that have no network of their own: keys created within
``burst_window`` seconds (five minutes: one script) of each other by accounts whose prompt frames overlap
and that both sent at least ``min_rotating`` requests, most of them from a /24 they had not used
(``rotating_share``): three requests from home, office and a cafe are not a proxy pool. Throwaway
accounts behind rotating residential proxies share no network and, active for an hour each, no timing;
their one template family and their sign-up script are all that joins them. Customers mostly have a
network (an office, a home, a cloud region), so a bulk import or a busy onboarding day does not link them
this way; clients whose every request leaves from a new address (some mobile carriers, privacy relays)
can be. A throwaway that sent only 3-9 requests has neither recurring frames nor a rotation count of its
own: it joins the burst through the rotating member whose key was created within ``burst_window`` of its
own and whose frames its prompts match best, when each of its requests came from a network of its own
and at least half (and at least 8) of its prompts' word 4-grams are that member's frames
(``_small_in_burst``). A customer with a few requests from as many networks (home, phone, IPv6) who
signs up during a campaign's registration and copies most of its prompt frame is joined too.

Clusters are the connected components of at least two accounts. Within a cluster, the groups joined by
*strong* edges (carrying ``template`` or ``timing``) are what the scan judges as one operator
(``Cluster.strong``); a member attached by ``ip`` and ``created`` alone is reported, never judged by the
company it keeps. Pure functions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from distillguard.monitor.accumulator import OTHER
from distillguard.splitmix import mix64_np

KINDS = ("ip", "template", "timing", "created")
_SIG = 64
_BANDS = 16  # 16 bands x 4 rows: pairs at Jaccard 0.2 collide in some band with probability ~2.5%...
_ROWS = _SIG // _BANDS  # ...so candidates also come from shared prefixes and creation buckets


@dataclass
class LinkInfo:
    """What linking needs to know about one account."""

    account: str
    prefixes: Counter  # prefix -> queries
    # distinct networks it sent from: the accumulator's estimate under its sketch key (Profile.networks);
    # past the prefix counter's bound only the key that kept the prefixes can estimate it
    networks: float
    frames: set[int]  # recurring prompt frames (stable shingle hashes)
    hours: np.ndarray  # MinHash signature of active absolute hours (uint64)
    active_hours: int  # hours of activity: its active 10-minute bins / 6 (a volume floor for timing)
    created: float | None  # key creation (or first-seen) time
    org: str | None = None  # the declared organisation (one customer's fleet of service accounts)
    # every prompt frame (word 4-gram hash) of an account too small to show recurring frames of its own
    # (fewer than MIN_ROTATING requests): what it can be matched against a burst member's frames with
    shingles: set[int] = field(default_factory=set)
    span_hours: float = 0.0  # absolute hours from its first request to its last (0: unknown)
    distinct_hours: int = 0  # distinct absolute hours with a request (of one account; 0: unknown)


@dataclass
class Cluster:
    """A linked group: its id, members, and how many member pairs showed each kind of evidence."""

    id: str
    accounts: list[str]
    evidence: Counter = field(default_factory=Counter)
    prefixes: list[str] = field(default_factory=list)
    # groups of members joined by *strong* links (shared templates or timing, not only a network and a
    # sign-up day): what may be judged as one operator. A member in none was linked by weak evidence only.
    strong: list[list[str]] = field(default_factory=list)

    def describe(self) -> str:
        kinds = ", ".join(f"{k} ({n} links)" for k, n in self.evidence.most_common())
        where = f"; shared networks {', '.join(self.prefixes[:3])}" if self.prefixes else ""
        return f"{len(self.accounts)} linked accounts by {kinds}{where}"


def minhash(items: set[int], salt: int = 0x7E3) -> np.ndarray:
    """A 64-value MinHash signature of a set of integers (all-max for the empty set)."""
    if not items:
        return np.full(_SIG, np.iinfo(np.uint64).max, dtype=np.uint64)
    arr = np.fromiter(items, dtype=np.int64, count=len(items)).view(np.uint64)
    salts = (salt + 7919 * np.arange(_SIG, dtype=np.uint64)).astype(np.uint64)
    with np.errstate(over="ignore"):
        return mix64_np(arr[None, :] + salts[:, None]).min(axis=1)  # row j: the salted hash_ints of j


def hour_cover(distinct_hours: int, span_hours: float) -> float:
    """The share of the ``span_hours`` from an account's first request to its last that it was active in
    (``distinct_hours``, as the accumulator counts them). 0 when the span is unknown."""
    return float(distinct_hours) / span_hours if span_hours > 0 else 0.0


MAX_HOUR_COVER = 0.5  # an account active in more of its hours than this shows no schedule of its own


def _main_prefixes(c: Counter, share: float = 0.1) -> set[str]:
    total = sum(c.values())
    return {p for p, n in c.items() if p != OTHER and total and n >= share * total}


def _pairs(members: Sequence[int], order_key: np.ndarray, width: int = 40) -> np.ndarray:
    """Candidate pairs ``[k, 2]`` (``i < j``) in a group: all pairs when small, else each member with its
    ``width`` next neighbours in ``order_key`` order (key creation time: a registration burst stays
    together), so a group of 24,000 accounts yields about a million pairs, not 300 million."""
    m = np.asarray(members, dtype=np.int64)
    if len(m) <= 2 * width:
        a, b = np.triu_indices(len(m), k=1)
    else:
        m = m[np.argsort(order_key[m], kind="stable")]
        a = np.concatenate([np.arange(len(m) - d) for d in range(1, width + 1)])
        b = a + np.repeat(np.arange(1, width + 1), [len(m) - d for d in range(1, width + 1)])
    x, y = m[a], m[b]
    return np.stack([np.minimum(x, y), np.maximum(x, y)], axis=1)


MIN_ROTATING = 10  # requests an account needs before its own address rotation counts as a proxy pool
MIN_SMALL = 3  # a smaller account joins a burst only with this many requests, each from its own network
SMALL_CONTAINMENT = 0.5  # ... and with at least this share of its prompt frames among a member's frames
SMALL_SHARED = 8  # ... and at least this many of them (a handful of common 4-grams is no template)


def link_accounts(
    infos: Sequence[LinkInfo],
    *,
    template_jaccard: float = 0.2,
    hours_jaccard: float = 0.6,
    min_active_hours: int = 4,
    max_hour_cover: float = MAX_HOUR_COVER,
    created_window: float = 3 * 3600.0,
    burst_window: float = 300.0,
    rotating_share: float = 0.5,
    min_rotating: int = MIN_ROTATING,
    min_kinds: int = 2,
) -> list[Cluster]:
    """Clusters of accounts linked by at least ``min_kinds`` kinds of evidence, largest first."""
    n = len(infos)
    if n < 2:
        return []
    prefixes = [_main_prefixes(x.prefixes) for x in infos]
    frame_sig = [minhash(x.frames) if len(x.frames) >= 3 else None for x in infos]
    created = [x.created if x.created is not None else float("nan") for x in infos]
    order_key = np.array([c if np.isfinite(c) else 0.0 for c in created], dtype=np.float64)
    # accounts whose active hours can show a schedule: enough of them, and idle hours between
    timed = [
        x.active_hours >= min_active_hours and hour_cover(x.distinct_hours, x.span_hours) <= max_hour_cover
        for x in infos
    ]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, x in enumerate(infos):
        for p in prefixes[i]:
            groups[("ip", p)].append(i)
        sig = frame_sig[i]
        if sig is not None:
            for b in range(_BANDS):
                groups[("tb", b, sig[b * _ROWS : (b + 1) * _ROWS].tobytes())].append(i)
        if np.isfinite(created[i]):
            for shift in (0.0, 0.5):
                groups[("cr", shift, int(created[i] // created_window + shift))].append(i)
        if timed[i]:
            for b in range(len(x.hours) // 4):
                groups[("hb", b, x.hours[b * 4 : (b + 1) * 4].tobytes())].append(i)
    parts = [_pairs(m, order_key) for m in groups.values() if len(m) >= 2]
    keys = np.unique(np.concatenate([q[:, 0] * n + q[:, 1] for q in parts])) if parts else np.zeros(0, int)
    pi, pj = keys // n, keys % n
    # every kind of evidence, vectorised over the candidate pairs (millions at the seed case's scale)
    pre_id: dict[str, int] = {}
    width = max((len(x) for x in prefixes), default=0)
    pre = np.full((n, max(width, 1)), -1, dtype=np.int64)
    for i, ps in enumerate(prefixes):
        for k, p in enumerate(sorted(ps)):
            pre[i, k] = pre_id.setdefault(p, len(pre_id))
    has_sig = np.array([x is not None for x in frame_sig], dtype=bool)
    sig = np.stack([x if x is not None else np.zeros(_SIG, np.uint64) for x in frame_sig])
    hours = np.stack([np.asarray(x.hours, dtype=np.uint64) for x in infos])
    busy = np.array(timed, dtype=bool)
    cr = np.asarray(created, dtype=np.float64)
    kinds = np.zeros((len(keys), len(KINDS)), dtype=bool)  # columns in KINDS order
    step = 100_000
    for lo in range(0, len(keys), step):
        i, j = pi[lo : lo + step], pj[lo : lo + step]
        same = (pre[i][:, :, None] == pre[j][:, None, :]) & (pre[i][:, :, None] >= 0)
        kinds[lo : lo + step, 0] = same.any(axis=(1, 2))
        # the share of equal MinHash values estimates the Jaccard similarity of two sets
        kinds[lo : lo + step, 1] = (
            has_sig[i] & has_sig[j] & ((sig[i] == sig[j]).mean(axis=1) >= template_jaccard)
        )
        kinds[lo : lo + step, 2] = busy[i] & busy[j] & ((hours[i] == hours[j]).mean(axis=1) >= hours_jaccard)
        with np.errstate(invalid="ignore"):
            kinds[lo : lo + step, 3] = np.abs(cr[i] - cr[j]) <= created_window  # unknown (nan): False
    sent = np.array([sum(x.prefixes.values()) for x in infos], dtype=np.float64)
    # past the prefix counter's bound an estimate from the prefixes kept (accumulator.distinct_estimate),
    # or an account with hundreds of requests through rotating proxies could never count as rotating
    nets = np.array([x.networks for x in infos], dtype=np.float64)
    rotating = (sent >= min_rotating) & (nets >= rotating_share * np.maximum(sent, 1.0))
    with np.errstate(invalid="ignore"):
        burst = (np.abs(cr[pi] - cr[pj]) <= min(burst_window, created_window)) & rotating[pi] & rotating[pj]
    edge = (kinds.sum(axis=1) >= min_kinds) & (kinds[:, 0] | kinds[:, 2] | (kinds[:, 1] & burst))
    ei, ej, ek = pi[edge], pj[edge], kinds[edge]
    si, sj = _small_in_burst(infos, cr, sent, nets, rotating, min(burst_window, created_window), min_rotating)
    if len(si):  # template and created on top of what the pair already shows (an edge or not)
        row = {k: r for r, k in enumerate((ei * n + ej).tolist())}
        add = []
        for a, b in zip(si.tolist(), sj.tolist(), strict=True):
            r = row.get(a * n + b)
            if r is None:
                add.append((a, b))
            else:
                ek[r, [KINDS.index("template"), KINDS.index("created")]] = True
        if add:
            sk = np.zeros((len(add), len(KINDS)), dtype=bool)
            sk[:, [KINDS.index("template"), KINDS.index("created")]] = True
            xa, xb = (np.array(v, dtype=np.int64) for v in zip(*add, strict=True))
            ei, ej, ek = np.concatenate([ei, xa]), np.concatenate([ej, xb]), np.concatenate([ek, sk])
    graph = coo_matrix((np.ones(len(ei), dtype=np.int8), (ei, ej)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    size = np.bincount(label, minlength=n)
    clusters: list[Cluster] = []
    # members and edges of each component by one sort each (not one scan of everything per component)
    by_label = np.argsort(label, kind="stable")
    first = np.concatenate([[0], np.cumsum(size)])
    edge_label = label[ei]
    e_count = np.bincount(edge_label, minlength=n)
    by_edge = np.argsort(edge_label, kind="stable")
    e_first = np.concatenate([[0], np.cumsum(e_count)])
    strong_edge = ek[:, [KINDS.index(k) for k in STRONG_KINDS]].any(axis=1)
    for comp in np.nonzero(size >= 2)[0]:
        members = by_label[first[comp] : first[comp + 1]]
        mine = by_edge[e_first[comp] : e_first[comp + 1]]
        ev = Counter({k: int(c) for k, c in zip(KINDS, ek[mine].sum(axis=0), strict=True) if c})
        # networks that at least two members send from, most shared first
        shared = Counter(p for i in members for p in prefixes[i])
        nets = [p for p, c in shared.most_common() if c >= 2]
        names = sorted(infos[i].account for i in members)
        strong = _strong_groups(infos, ei, ej, mine[strong_edge[mine]], members)
        clusters.append(Cluster("", names, ev, nets, strong))
    clusters.sort(key=lambda c: (-len(c.accounts), c.accounts[0]))
    for k, c in enumerate(clusters, 1):
        c.id = f"c{k}"
    return clusters


STRONG_KINDS = ("template", "timing")


def _small_in_burst(
    infos: Sequence[LinkInfo],
    created: np.ndarray,
    sent: np.ndarray,
    nets: np.ndarray,
    rotating: np.ndarray,
    window: float,
    min_rotating: int,
    width: int = 40,
) -> tuple[np.ndarray, np.ndarray]:
    """Template-and-burst edges ``(i, j)`` (``i < j``) for accounts too small to show frames or a rotation
    of their own: from MIN_SMALL to ``min_rotating - 1`` requests, *each* from a network of its own, a key
    created within ``window`` of a rotating account's (among the ``width`` nearest in creation time, ties
    by name), and at least SMALL_SHARED of its prompts' word 4-grams, and SMALL_CONTAINMENT of them, among
    that account's recurring frames. Each small account joins one account, the one its prompts match best
    (a small account matching two groups does not merge them). A throwaway of a registration burst that
    sent three to nine requests through the campaign's proxies and its template; a customer who signed up
    that minute from one home network, or asked that template's questions on another day, is not joined.
    Someone whose few requests each left from another network (home, phone, IPv6) and copied most of the
    campaign's prompt frame can be."""
    small = [
        i
        for i, x in enumerate(infos)
        if MIN_SMALL <= sent[i] < min_rotating
        and nets[i] >= sent[i]
        and len(x.shingles) >= SMALL_SHARED
        and np.isfinite(created[i])
    ]
    hubs = np.array(
        [
            j
            for j in np.nonzero(rotating)[0]
            if len(infos[j].frames) >= SMALL_SHARED and np.isfinite(created[j])
        ],
        dtype=np.int64,
    )
    if not small or not len(hubs):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    hubs = hubs[np.lexsort(([infos[j].account for j in hubs], created[hubs]))]
    t = created[hubs]
    out = []
    for i in small:
        lo = np.searchsorted(t, created[i] - window)
        hi = np.searchsorted(t, created[i] + window, side="right")
        near = hubs[lo:hi]
        if len(near) > width:  # the nearest in creation time, ties by name (the order of ``hubs``)
            near = near[np.argsort(np.abs(created[near] - created[i]), kind="stable")[:width]]
        sh = infos[i].shingles
        shared = [(len(sh & infos[int(j)].frames), infos[int(j)].account, int(j)) for j in near]
        # the most shared frames, then the nearest in creation time, then the name
        best = max(shared, key=lambda x: (x[0], -abs(created[x[2]] - created[i]), x[1]), default=None)
        if best is not None and best[0] >= max(SMALL_SHARED, SMALL_CONTAINMENT * len(sh)):
            j = best[2]
            out.append((min(i, j), max(i, j)))
    if not out:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = np.array(sorted(set(out)), dtype=np.int64)
    return pairs[:, 0], pairs[:, 1]


def _strong_groups(
    infos: Sequence[LinkInfo],
    ei: np.ndarray,
    ej: np.ndarray,
    inside: np.ndarray,
    members: np.ndarray,
) -> list[list[str]]:
    """Connected groups (two or more members) of one cluster over its strong edges (``inside``: their
    indices): edges that carry shared prompt templates or shared timing, not only a network and a
    sign-up window."""
    if not len(inside):
        return []
    pos = {int(m): k for k, m in enumerate(members)}
    a = np.array([pos[int(x)] for x in ei[inside]])
    b = np.array([pos[int(x)] for x in ej[inside]])
    g = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(members), len(members)))
    _, lab = connected_components(g, directed=False)
    out = []
    order = np.argsort(lab, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lab))])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if hi - lo >= 2:
            out.append(sorted(infos[int(members[i])].account for i in order[lo:hi]))
    out.sort(key=lambda x: (-len(x), x[0]))
    return out

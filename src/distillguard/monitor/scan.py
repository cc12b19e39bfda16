"""Batch scans: ledger (or Parquet export) -> features -> links -> risk (the live loop is :mod:`follow`).

The analysis (:func:`analyse`) is one function of a
:class:`~distillguard.monitor.accumulator.FeatureAccumulator` and an optional benign :class:`Reference`;
sources only differ in how rows reach the accumulator:

- ``--ledger PATH`` (default: the gateway's ledger): ``Ledger.iter_records`` in batches;
- ``--parquet DIR``: the ``ledger.parquet`` of ``distillguard ledger export`` (or a synthetic one), streamed
  by record batches with only the needed columns (bounded memory; ``accounts.parquet`` beside it, when
  present, gives key-creation times for linking);
- ``monitor follow`` (:mod:`distillguard.monitor.follow`): the accumulator is kept (and persisted under
  ``home()/monitor/``) and fed only the records after the last ``seq`` it saw.

Each entity is judged by :mod:`distillguard.monitor.judge`; :mod:`distillguard.monitor.report` plans the
tier decisions and writes the report.

Calibration: with a :class:`Reference` (``monitor calibrate`` on a known-benign period, saved to
``home()/monitor/reference.npz`` and used by default) accounts are compared with benign profiles;
without one, with the scanned population itself, robustly (see :mod:`detectors`), which is weaker: a
kind of attacker that many accounts share can vouch for itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from distillguard.errors import UserError
from distillguard.monitor.accumulator import BINS_PER_HOUR, FeatureAccumulator
from distillguard.monitor.detectors import (
    Assessment,
    MMDReference,
    combine_min_p,
    prada_w,
)
from distillguard.monitor.entity import (
    TextGeometry,
    entity_features,
    evidence_seqs,
    shingle_hashes,
    text_geometry,
)
from distillguard.monitor.features import (
    COLUMNS,
    FEATURE_REVISION,
    derive,
    hash_vectors,
    records_to_table,
)
from distillguard.monitor.judge import (
    CAMPAIGN_MIN,
    GATE_P,
    LEAVE_OUT_SHARE,
    EntityState,
    Judgement,
    Looks,
    judge,
    unscored,
)
from distillguard.monitor.linking import MIN_ROTATING, Cluster, LinkInfo, link_accounts
from distillguard.monitor.reference import (
    PERIOD_NULL_MIN,
    REFERENCE_NULLS,
    Reference,
    base_lineage,
    check_null,
    period_check,
    reference_info,
    thin_reference,
)

BATCH_ROWS = 65_536


@dataclass(frozen=True)
class ScanOptions:
    """Knobs of one analysis (defaults are what the tests, eval and benchmarks use)."""

    sample_size: int = 256  # sampled queries per account for text geometry
    # fewer prompts (or MIN_REQUESTS requests): reported, never scored alone (a cluster still can be)
    min_queries: int = 20
    dim: int = 512  # hashed embedding dimension
    k_reference: int = 1  # nearest benign profile against a benign reference
    k_population: int = 3  # against the population: three accounts must vouch
    mmd_window: int = 64
    mmd_refs: int = 20
    mmd_null: int = 1000
    link: bool = True
    seed: int = 0
    workers: int | None = None  # processes for scoring many accounts (default: ``num_threads()``)
    # the secret that ranks the bounded IP-prefix and key sets and salts the distinct-prompt sketch
    # (accumulator.sketch_rank; jobs.scan_options loads the installation's); None: the public hashes,
    # which a client can game. Not part of a scan's identity.
    sketch_key: bytes | None = field(default=None, repr=False, compare=False)


# --------------------------------------------------------------------------------------------------
# Reading


def is_database_url(source: Path | str) -> bool:
    """Whether a ledger source is a shared ledger's ``postgresql://`` URL (else a SQLite file path)."""
    return isinstance(source, str) and source.startswith(("postgresql://", "postgres://"))


def source_name(source: Path | str) -> str:
    """A ledger source as the follower's state names it: the resolved path, or the URL without password."""
    from distillguard.gateway.pg import mask_url

    return mask_url(str(source)) if is_database_url(source) else str(Path(source).resolve())


def ledger_batches(
    path: Path | str, since_seq: int = 0, batch_rows: int = BATCH_ROWS, chains: dict[str, int] | None = None
) -> Iterator[pa.Table]:
    """Arrow tables of the ledger's records after ``since_seq``, in order (reading needs no secret).
    ``path``: a SQLite ledger file, or a shared ledger's ``postgresql://`` URL (its chains merged by time).
    ``chains``: for a shared ledger, the position in each replica's chain (advanced in place; the records
    are numbered from ``since_seq + 1``), so records that commit late are read once, not skipped."""
    from distillguard.gateway.ledger import Ledger, open_ledger

    if is_database_url(path):
        ledger = open_ledger(str(path), None)
        records = ledger.iter_new(chains, since_seq) if chains is not None else ledger.iter_records(since_seq)
    else:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"ledger not found: {path}")
        ledger = Ledger(path)
        records = ledger.iter_records(since_seq)
    try:
        buf: list[dict] = []
        for rec in records:
            buf.append(rec)
            if len(buf) >= batch_rows:
                yield records_to_table(buf)
                buf = []
        if buf:
            yield records_to_table(buf)
    finally:
        ledger.close()


def parquet_files(path: Path) -> list[Path]:
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"no Parquet export at {path}")
    files = sorted(p for p in path.glob("*.parquet") if p.name != "accounts.parquet")
    if not files:
        raise UserError(f"no ledger Parquet files in {path} (run `distillguard ledger export --out {path}`)")
    return files


def open_export_file(f: Path) -> tuple[Any, list[str]]:
    """One file of a Parquet ledger export, checked (a one-line error otherwise), and the feature columns
    it has."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UserError(f"{f} is not a Parquet file: {exc}") from None
    cols = [c for c in COLUMNS if c in pf.schema_arrow.names]
    missing = {"seq", "ts", "account", "prompt"} - set(cols)
    if missing:
        raise UserError(f"{f} lacks ledger column(s) {', '.join(sorted(missing))}")
    return pf, cols


def parquet_batches(path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet ledger export, reading only the columns the features use."""
    for f in parquet_files(path):
        pf, cols = open_export_file(f)
        yield from pf.iter_batches(batch_size=batch_rows, columns=cols)


def parquet_created(path: Path) -> dict[str, float]:
    """Earliest key creation per account from ``accounts.parquet`` next to an export (if any)."""
    import pyarrow.parquet as pq

    p = Path(path).expanduser()
    f = (p if p.is_dir() else p.parent) / "accounts.parquet"
    if not f.is_file():
        return {}
    t = pq.read_table(f, columns=["account", "key_created"]).to_pydict()
    out: dict[str, float] = {}
    for a, c in zip(t["account"], t["key_created"], strict=True):
        if a is not None and c is not None:
            out[a] = min(out.get(a, math.inf), float(c))
    return out


def store_created(store: Any) -> dict[str, float]:
    """Earliest key creation per account from the gateway's account store."""
    out: dict[str, float] = {}
    for k in store.list_keys():
        a, c = k["account"], k["created"]
        out[a] = min(out.get(a, math.inf), float(c))
    return out


def accumulate(
    batches: Iterable[pa.Table | pa.RecordBatch],
    acc: FeatureAccumulator | None = None,
    *,
    sample_size: int = 256,
    sketch_key: bytes | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> FeatureAccumulator:
    """Feed batches into an accumulator (a new one unless given).

    :func:`derive` (regexes, slicing, hashing: most of the cost) is per row and stateless, and its Arrow
    and numpy kernels release the GIL, so it runs on ``workers`` threads (default: ``num_threads()``)
    a few batches ahead, while this thread folds the derived batches into the accumulator strictly in
    ledger order. The result is identical to a serial pass; memory holds at most ``2 x workers``
    batches in flight.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from distillguard.config import num_threads

    acc = acc if acc is not None else FeatureAccumulator(sample_size=sample_size, sketch_key=sketch_key)
    workers = max(1, workers if workers is not None else num_threads())

    def fold(qb) -> None:
        acc.update(qb)
        if progress is not None:
            progress(acc.rows)

    if workers == 1:
        for b in batches:
            fold(derive(b))
        return acc
    with ThreadPoolExecutor(workers, thread_name_prefix="derive") as pool:
        ahead: deque = deque()
        for b in batches:
            ahead.append(pool.submit(derive, b))
            if len(ahead) >= 2 * workers:
                fold(ahead.popleft().result())
        while ahead:
            fold(ahead.popleft().result())
    return acc


# --------------------------------------------------------------------------------------------------
# Analysis (pure: no files, no store)


# Accounts whose sampled prompts make the MMD reference (pool and per-account null windows): enough for
# 8,000 pooled rows and a varied null, and bounded, so fitting costs the same at 300 or 65,000 accounts.
MMD_FIT_ACCOUNTS = 2000
# Below this many entities a scan runs in-process; above, on ``workers`` forked processes.
PARALLEL_MIN_ENTITIES = 2000

_FORKED: tuple[Analyzer, FeatureAccumulator, MMDReference | None] | None = None


def _entity_chunk(chunk: list[str]) -> list[EntityState]:
    an, acc, mmd = _FORKED  # type: ignore[misc]  # set by the parent before forking
    out = [an.entity(acc, (a,), mmd) for a in chunk]
    an._geo.clear()  # this child's cache dies with it; keep its memory down meanwhile
    return out


class Analyzer:
    """Computes per-entity features with a cache keyed on each entity's sample (unchanged accounts are not
    re-embedded between follow iterations or evaluation checkpoints). The cache keeps the sample's
    geometry without its embedding vectors, plus the MMD score per reference."""

    def __init__(self, options: ScanOptions | None = None) -> None:
        self.options = options or ScanOptions()
        self._geo: dict[tuple[str, ...], tuple[tuple[int, int], TextGeometry, float, dict[str, float]]] = {}

    def entity(
        self, acc: FeatureAccumulator, accounts: tuple[str, ...], mmd: MMDReference | None
    ) -> EntityState:
        o = self.options
        prof = acc.profile(accounts, sample_size=o.sample_size)
        key = (len(prof.sample), int(prof.sample.seq.sum()) if len(prof.sample) else 0)
        hit = self._geo.get(accounts)
        if hit is not None and hit[0] == key:
            _, geo, w, mmd_scores = hit
            vectors = None
        else:
            geo = text_geometry(prof.sample, dim=o.dim)
            w = prada_w(geo.min_dist)
            vectors, geo = geo.vectors, replace(geo, vectors=np.zeros((0, o.dim), dtype=np.float32))
            mmd_scores = {}
            self._geo[accounts] = (key, geo, w, mmd_scores)
        m = float("nan")
        if mmd is not None and len(prof.sample) >= max(16, o.mmd_window // 4):
            if mmd.token not in mmd_scores:
                if vectors is None:
                    vectors = hash_vectors(prof.sample.text[: mmd.window], o.dim)
                mmd_scores[mmd.token] = mmd.standardized(mmd.score(vectors))
            m = mmd_scores[mmd.token]
        feats = entity_features(prof, geo, mmd=m, prada=-w if math.isfinite(w) else float("nan"))
        if len(accounts) > 1:  # a cluster's volume is judged per member (see ``analyse``)
            feats["log_queries"] = math.log10(max(prof.n, 1) / len(accounts))
        link = LinkInfo(
            account=accounts[0] if len(accounts) == 1 else ",".join(accounts),
            prefixes=prof.prefixes,
            frames=geo.template_shingles,
            hours=prof.hour_signature,
            active_hours=max(1, int(round(prof.counts["active_bins"] / BINS_PER_HOUR))),
            distinct_hours=int(prof.counts["active_hours"]) if len(accounts) == 1 else 0,
            created=None,
            org=next(iter(prof.orgs)) if len(prof.orgs) == 1 else None,
            shingles=shingle_hashes(prof.sample.text)
            if len(accounts) == 1 and prof.n < MIN_ROTATING
            else set(),
            networks=prof.networks,
            span_hours=math.floor(prof.last_ts / 3600.0) - math.floor(prof.first_ts / 3600.0) + 1.0
            if math.isfinite(prof.first_ts) and math.isfinite(prof.last_ts)
            else 0.0,
        )
        return EntityState(accounts, prof.n, feats, evidence_seqs(prof, geo), link, prompts=prof.prompts)

    def accounts(
        self,
        acc: FeatureAccumulator,
        names: Sequence[str],
        mmd: MMDReference | None,
        *,
        workers: int | None = None,
        min_parallel: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, EntityState]:
        """:meth:`entity` of every single account in ``names``.

        From ``min_parallel`` accounts on (and where ``fork`` exists) the work is split over ``workers``
        forked processes (default ``num_threads()``): they read the accumulator copy-on-write and send
        back only the slim states. Results are identical to the serial path; the cache is not filled (a
        population this large is re-scored from its samples, which would not fit a cache anyway).
        """
        import multiprocessing as mp

        from distillguard.config import num_threads

        global _FORKED
        workers = max(1, workers or self.options.workers or num_threads())
        min_parallel = PARALLEL_MIN_ENTITIES if min_parallel is None else min_parallel
        todo = list(names)
        if workers == 1 or len(todo) < max(2, min_parallel) or "fork" not in mp.get_all_start_methods():
            out = {}
            for k, a in enumerate(todo, 1):
                out[a] = self.entity(acc, (a,), mmd)
                if progress is not None and k % 256 == 0:
                    progress(k)
            return out
        acc.profile(todo[:1])  # compact the sample pool once, before the children copy it
        size = max(16, min(512, len(todo) // (8 * workers)))
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        out, done = {}, 0
        _FORKED = (self, acc, mmd)
        try:
            with mp.get_context("fork").Pool(workers) as pool:
                for part in pool.imap(_entity_chunk, chunks):
                    for st in part:
                        out[st.accounts[0]] = st
                    done += len(part)
                    if progress is not None:
                        progress(done)
        finally:
            _FORKED = None
        return out

    def fit_mmd(self, acc: FeatureAccumulator, accounts: list[str]) -> MMDReference | None:
        """The benign MMD reference from ``accounts``' sampled prompts (pool and per-account windows); at
        most :data:`MMD_FIT_ACCOUNTS` of them, a seeded choice."""
        o = self.options
        chosen = list(accounts)
        rng = np.random.default_rng(o.seed)
        if len(chosen) > MMD_FIT_ACCOUNTS:
            chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), MMD_FIT_ACCOUNTS, replace=False))]
        windows = []
        for a in chosen:
            prof = acc.profile((a,), sample_size=o.sample_size)
            if len(prof.sample) >= 8:
                windows.append(hash_vectors(prof.sample.text[: o.mmd_window], o.dim))
        if not windows:
            return None
        pool = np.concatenate(windows)
        if len(pool) > 8000:
            pool = pool[rng.choice(len(pool), 8000, replace=False)]
        return MMDReference.fit(
            pool, windows, window=o.mmd_window, n_ref=o.mmd_refs, n_null=o.mmd_null, seed=o.seed
        )


# requests an account needs besides ``min_queries`` prompts: one batched completion of 128 prompts is one
# decision of the client's timing, parameters and text, not 128. Half the minimum of unbatched traffic: its
# timing, flags and rates are read per request, from half the requests the reference's accounts have
MIN_REQUESTS = 10


def min_requests(min_queries: int) -> int:
    """The requests an account needs to be scored alone: MIN_REQUESTS, or ``min_queries`` when fewer."""
    return min(MIN_REQUESTS, min_queries)


def scorable(acc: FeatureAccumulator, account: str, min_queries: int) -> bool:
    """Whether ``account`` has asked enough to be scored alone: ``min_queries`` prompts (a batched
    completion's each) in at least :func:`min_requests` requests."""
    i = acc.index[account]
    return bool(acc.c["prompts"][i] >= min_queries and acc.c["n"][i] >= min_requests(min_queries))


def _clusters(
    accounts: list[str],
    states: dict[str, EntityState],
    created: dict[str, float] | None,
) -> list[Cluster]:
    # key creation times from the account store; first-seen times are no substitute: all look alike
    infos = [replace(states[a].link, created=(created or {}).get(a)) for a in accounts]
    return link_accounts(infos)


def build_reference(
    acc: FeatureAccumulator,
    options: ScanOptions | None = None,
    *,
    benign: Iterable[str] | None = None,
    created: dict[str, float] | None = None,
    meta: dict[str, Any] | None = None,
    base: Reference | None = None,
    null: str = "auto",
) -> Reference:
    """Fit a benign :class:`Reference` on ``acc``'s accounts (or only the ``benign`` ones of them).

    Linked benign groups are pooled and added as reference entities too, so a benign team judged as a
    cluster has benign clusters to be compared with.

    With ``base`` (the shipped reference, or an earlier one) the period *extends* it, and ``null``
    (:data:`REFERENCE_NULLS`) says whose null the p-values are drawn from:

    - ``period``: the period's own (:func:`~distillguard.monitor.reference.period_null`): the base's
      entities are neighbours only, and the null, the score's centre and unit scales and the elicitation
      rates are the period's, since only its entities are a sample of this deployment's benign traffic.
      Valid for traffic like the period's, but a p-value below ``1 / (n + 1)`` over ``n`` scored accounts
      rests on an extrapolated tail.
    - ``base``: the base's (:func:`~distillguard.monitor.reference.base_null`): the period's entities are
      added to it as neighbours only (:meth:`Calibration.extended`), so an account like one of the
      deployment's known-good ones is cleared, and no p-value is below the base's alone (:func:`analyse`
      keeps the verdict with the larger p-value of the two): a scan flags nothing the base would not
      (tiers carried across scans by hysteresis and cooldown can still differ). The p-values hold where
      the base's do (for the shipped reference, benign traffic like its simulated kinds), and automatic
      tiers stop where the base's do. The period is checked against it
      (:func:`~distillguard.monitor.reference.period_check`). The score's ``k`` is the base's. A base
      that keeps its own base's null is refused.
    - ``auto`` (default): ``period`` once the period has :data:`PERIOD_NULL_MIN` scored accounts, or as
      many as the base's null has draws when that is fewer, else ``base``.

    Either way the period's entities are measured against the base's MMD windows, so that every entity's
    ``mmd`` reads the same baseline.
    """
    an = Analyzer(options)
    o = an.options
    names = [a for a in (benign if benign is not None else acc.accounts) if a in acc.index]
    names = [a for a in names if scorable(acc, a, o.min_queries)]
    if len(names) < 3:
        raise UserError(
            f"a benign reference needs at least 3 accounts with {o.min_queries}+ prompts in "
            f"{min_requests(o.min_queries)}+ requests"
        )
    check_null(null, base)
    if null == "auto":
        enough = min(PERIOD_NULL_MIN, len(base.calibration.null)) if base is not None else 0
        null = "period" if len(names) >= enough else "base"
        check_null(null, base)
    # one MMD baseline for every entity: the base's windows when it has them
    mmd = base.mmd if base is not None and base.mmd is not None else an.fit_mmd(acc, names)
    states = an.accounts(acc, names, mmd)
    rows: list[tuple[tuple[str, ...], dict[str, float]]] = [((a,), states[a].features) for a in names]
    if o.link:
        for c in _clusters(names, states, created):
            rows.append((tuple(c.accounts), an.entity(acc, tuple(c.accounts), mmd).features))
    info = {
        "accounts": len(names),
        "entities": len(rows),
        "rows": acc.rows,
        "feature_revision": FEATURE_REVISION,
        "null": null,
        **(meta or {}),
    }
    if base is not None:
        info["base"] = base_lineage(base)
    cal = REFERENCE_NULLS[null](base.calibration if base is not None else None, rows, o.k_reference)
    if null == "base":
        assert base is not None
        info["capped"] = bool(base.meta.get("shipped") or base.meta.get("capped"))
        # the null and its geometry were fitted under the base's reading of the features
        info["feature_revision"] = min(FEATURE_REVISION, base.meta.get("feature_revision", 1))
        info["check"] = period_check(cal, rows)
        if thin := info["base"].get("warning"):
            info["warning"] = f"extending a thin base ({thin})"
    elif warning := thin_reference(info):
        info["warning"] = warning
    return Reference(cal, mmd, info)


@dataclass
class AccountVerdict:
    """One account's outcome of a scan."""

    account: str
    queries: int  # requests
    score: float
    p_value: float
    p_own: float
    risk: float
    cluster: str | None
    reasons: list[str]
    details: list[dict[str, Any]]
    evidence: list[int]
    scored: bool
    features: dict[str, float]
    tests: list[dict[str, Any]] = field(default_factory=list)  # every test behind ``p_value``, with its null
    prompts: int = 0  # the prompts its requests asked answers for (a batched completion's each)


@dataclass
class ClusterVerdict:
    id: str
    accounts: list[str]
    queries: int
    score: float
    p_value: float
    risk: float
    reasons: list[str]
    details: list[dict[str, Any]]
    evidence: list[int]
    links: str
    strong: bool = True  # joined by shared templates or timing (weak: a network and a sign-up window)
    tests: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Analysis:
    accounts: dict[str, AccountVerdict]
    clusters: list[ClusterVerdict]  # strongly linked groups: what is judged (and shared) as one operator
    calibration: str
    rows: int
    last_seq: int
    weak_clusters: list[ClusterVerdict] = field(default_factory=list)  # reported, never attributed alone
    reference: dict[str, Any] = field(default_factory=dict)  # which reference, and how far to trust it


def analyse(
    acc: FeatureAccumulator,
    reference: Reference | None = None,
    *,
    options: ScanOptions | None = None,
    analyzer: Analyzer | None = None,
    created: dict[str, float] | None = None,
    progress: Callable[[int], None] | None = None,
    states: dict[str, EntityState] | None = None,
) -> Analysis:
    """Score every account and every linked group of the accumulator (``states``: the accounts' states
    when already computed, e.g. to time the scoring alone).

    Each entity is tested twice (:func:`judge`): on elicitation alone, whose evidence adds up whatever
    benign kind the entity otherwise resembles, and on its whole profile against the nearest benign
    profile, which counts only with elicitation, coverage or linkage evidence (a template-heavy,
    high-volume account is not a distiller for that alone). A linked cluster is judged by its strong
    groups (shared templates or timing); an account's final p-value is Bonferroni over its own tests and
    its strong group's. A member linked only weakly (a network and a sign-up window) carries the
    cluster's evidence only with elicitation evidence of its own: nobody pays for association alone.

    Without a reference the population calibrates itself, minus the linked clusters that hold a sizeable
    share of it: those (and their members) are scored against the rest (leave-cluster-out).
    """
    an = analyzer or Analyzer(options)
    o = an.options
    names = list(acc.accounts)
    if not names:
        return Analysis({}, [], "none", acc.rows, acc.last_seq)
    mmd = reference.mmd if reference is not None else None
    scored = [a for a in names if scorable(acc, a, o.min_queries)]
    if reference is None and scored:
        mmd = an.fit_mmd(acc, scored)
    if states is None:
        states = an.accounts(acc, names, mmd, progress=progress)
    clusters = _clusters(names, states, created) if o.link else []
    cluster_of = {a: c.id for c in clusters for a in c.accounts}
    left_out: set[str] = set()
    left_ids: list[str] = []
    if reference is not None:
        cal = reference.calibration
        info = reference_info(reference)
        looks = Looks.of(cal, info.pop("null"))
        looks_out = looks
        source = "reference"
    else:
        if len(scored) < 3:
            raise UserError(
                f"too few accounts with {o.min_queries}+ prompts in {min_requests(o.min_queries)}+ "
                "requests to calibrate on the population; "
                "give a benign reference (`distillguard monitor calibrate`)"
            )
        cid = {c.id: k for k, c in enumerate(clusters)}

        def fit(accounts: list[str], null: str) -> Looks:
            groups = [
                len(accounts) + cid[cluster_of[a]] if a in cluster_of else i for i, a in enumerate(accounts)
            ]
            return Looks.fit(
                [((a,), states[a].features) for a in accounts], k=o.k_population, groups=groups, null=null
            )

        looks = fit(scored, f"scanned population, {len(scored)} accounts")
        big = max(CAMPAIGN_MIN, math.ceil(LEAVE_OUT_SHARE * len(scored)))
        for c in clusters:
            if len(c.accounts) >= big:
                left_out |= set(c.accounts)
                left_ids.append(c.id)
        rest = [a for a in scored if a not in left_out]
        looks_out = looks
        if left_out and len(rest) >= 3:
            looks_out = fit(
                rest, f"scanned population without clusters {', '.join(left_ids)}, {len(rest)} accounts"
            )
        else:
            left_out, left_ids = set(), []
        source = "population"
        info = {
            "source": "population",
            "entities": len(scored),
            "left_out": left_ids,
            "trust": "low: no benign reference, the scanned population calibrates itself"
            + (f" (clusters {', '.join(left_ids)} left out and scored against the rest)" if left_ids else "")
            + "; a kind of attacker that many unlinked accounts share can still vouch for itself; run "
            "`distillguard monitor calibrate` on a known-good period",
        }
    member_sets = {c.id: frozenset(c.accounts) for c in clusters}  # hashed once: see excluded_rows
    describe = {c.id: c.describe() for c in clusters}
    own_j: dict[str, Judgement] = {}
    for a in names:
        lk = looks_out if a in left_out else looks
        members = member_sets[cluster_of[a]] if a in cluster_of else frozenset()
        own_j[a] = judge(lk, (a,), states[a], exclude=members) if a in scored else unscored((a,), states[a])
    # units: each strong group of a cluster, and the cluster itself when weak links hold it together
    units: list[tuple[str, Cluster, list[str], bool]] = []  # (id, cluster, members, strong)
    for c in clusters:
        strong = c.strong
        if len(strong) == 1 and len(strong[0]) == len(c.accounts):
            units.append((c.id, c, list(c.accounts), True))
            continue
        for k, g in enumerate(strong):
            units.append((f"{c.id}{chr(ord('a') + k) if k < 26 else k}", c, g, True))
        units.append((c.id, c, list(c.accounts), False))
    shared: dict[str, tuple[str, float]] = {}  # strong unit -> (leader, p-value without the leader)
    strong_of: dict[str, str] = {}
    weak_of: dict[str, str] = {}
    unit_j: dict[str, Judgement] = {}
    cluster_verdicts: list[ClusterVerdict] = []
    weak_verdicts: list[ClusterVerdict] = []
    for uid, c, members, strong in units:
        st = an.entity(acc, tuple(members), mmd)
        lk = looks_out if set(members) & left_out else looks
        campaign = strong and len(members) >= CAMPAIGN_MIN and not _one_org(members, states)
        j = judge(lk, tuple(members), st, exclude=set(members), linkage=campaign)
        unit_j[uid] = j
        if strong:
            # the group's evidence must not be one member's: the others are judged without the member
            # with the strongest own evidence, and carry the group's p-value only if that holds too
            leader = min(members, key=lambda m: (own_j[m].p, m))
            rest = [m for m in members if m != leader]
            if len(rest) >= 2:
                rj = judge(
                    lk,
                    tuple(rest),
                    an.entity(acc, tuple(rest), mmd),
                    exclude=set(members),
                    linkage=campaign and len(rest) >= CAMPAIGN_MIN and not _one_org(rest, states),
                )
            else:
                rj = own_j[rest[0]]
            shared[uid] = (leader, rj.p)
        link = c.describe() if len(members) == len(c.accounts) else f"{len(members)} of {c.describe()}"
        kind = (
            "strongly linked (templates or timing)"
            if strong
            else "weakly linked (no shared templates or timing)"
        )
        texts, details = j.reasons()
        v = ClusterVerdict(
            id=uid,
            accounts=list(members),
            queries=st.queries,
            score=j.best.score,
            p_value=j.p,
            risk=1.0 - j.p,
            reasons=[link, kind] + texts,
            details=details,
            evidence=_evidence(j.best),
            links=link,
            strong=strong,
            tests=j.tests,
        )
        (cluster_verdicts if strong else weak_verdicts).append(v)
        for a in members:
            (strong_of if strong else weak_of)[a] = uid
    verdicts: dict[str, AccountVerdict] = {}
    for a in names:
        st = states[a]
        own = own_j[a]
        reasons, details = own.reasons() if own.scored else ([], [])
        evidence = _evidence(own.best)
        tests = [{**t, "entity": "own"} for t in own.tests]
        uid = strong_of.get(a)
        attributed = None
        if uid is None and a in weak_of:
            w = weak_of[a]
            if own.scored and own.own_evidence:
                uid, attributed = w, "own extraction or corroborated elicitation evidence"
            else:
                reasons.append(
                    f"linked to cluster {w} by weak links only ({describe[cluster_of[a]]}): its evidence "
                    "is not attributed without evidence of this account's own"
                )
        elif uid is not None:
            attributed = "strong links (shared templates or timing)"
        looks_p = [own.p]
        if uid is not None:
            uj = unit_j[uid]
            unit_p = uj.p
            tests += [{**t, "entity": f"cluster {uid}", "attributed": attributed} for t in uj.tests]
            if uid in shared and shared[uid][0] != a:
                unit_p = max(unit_p, shared[uid][1])  # intersection-union: both must hold
                if shared[uid][1] > GATE_P:
                    reasons.append(
                        f"linked to cluster {uid}, whose evidence is its member {shared[uid][0]}'s alone "
                        f"(without it p={shared[uid][1]:.2g}): not attributed"
                    )
                tests.append(
                    {"test": "cluster without its strongest member", "entity": f"cluster {uid}",
                     "p_value": shared[uid][1], "null": "as the cluster's", "combined": "max"}
                )  # fmt: skip
            looks_p.append(unit_p)
            if unit_p < own.p and unit_p < 1.0:
                texts, cdet = uj.reasons(prefix=f"cluster {uid}: ")
                link = describe[cluster_of[a]]
                reasons = (
                    [f"cluster {uid}: {link}", f"cluster {uid} attributed by {attributed}"] + texts + reasons
                )
                details = cdet + details
                ce = _evidence(uj.best)
                evidence = ce + [s for s in evidence if s not in set(ce)]
        p = combine_min_p(looks_p) if len(looks_p) > 1 else own.p
        if not own.scored and uid is None:
            reasons = [
                f"fewer than {o.min_queries} prompts or {min_requests(o.min_queries)} requests "
                f"({st.prompts} prompts in {st.queries}): not scored alone"
            ] + reasons
        verdicts[a] = AccountVerdict(
            account=a,
            queries=st.queries,
            score=own.best.score,
            p_value=p,
            p_own=own.p,
            risk=1.0 - p,
            cluster=uid,
            reasons=reasons,
            details=details,
            evidence=evidence[:20],
            scored=own.scored,
            features=st.features,
            tests=tests,
            prompts=st.prompts,
        )
    analysis = Analysis(verdicts, cluster_verdicts, source, acc.rows, acc.last_seq, weak_verdicts, info)
    if reference is not None and reference.calibration.added:
        # a known-good period added as neighbours only clears: every look's p-value is at least the base's,
        # but which member leads a group, and whether a weakly linked one carries its cluster, depend on
        # them; so each verdict keeps the larger of its p-values against the reference and its base alone
        base = Reference(reference.calibration.core(), reference.mmd, {})
        alone = analyse(acc, base, options=o, analyzer=an, created=created, states=states)
        _no_lower(analysis, alone)
    return analysis


def _no_lower(analysis: Analysis, alone: Analysis) -> None:
    """Keep, for every account and cluster, the verdict with the larger p-value of ``analysis`` (against a
    reference extended by a known-good period) and ``alone`` (against its base alone), whole: its cluster,
    reasons and evidence are what its p-value rests on. Each records the other's p-value in its tests."""

    def pick(v, b):
        keep, other, what = (
            (v, b, "the base reference alone")
            if v.p_value >= b.p_value
            else (b, v, "the reference with the known-good period")
        )
        keep.tests.append(
            {
                "test": f"against {what}",
                "p_value": other.p_value,
                "null": what,
                "combined": "max: a known-good period only clears",
            }
        )
        if keep is b:
            keep.reasons = [
                f"p={v.p_value:.2g} with the known-good period, {b.p_value:.2g} against the base "
                "reference alone: the larger counts",
                *keep.reasons,
            ]
        return keep

    analysis.accounts = {a: pick(v, alone.accounts[a]) for a, v in analysis.accounts.items()}
    for mine, theirs in ((analysis.clusters, alone.clusters), (analysis.weak_clusters, alone.weak_clusters)):
        by_id = {c.id: c for c in theirs}
        mine[:] = [pick(c, by_id[c.id]) if c.id in by_id else c for c in mine]


def _one_org(members: Sequence[str], states: dict[str, EntityState]) -> bool:
    """Whether every member declares the same organisation (one customer's own fleet)."""
    orgs = {states[m].link.org for m in members}
    return len(orgs) == 1 and None not in orgs


def _evidence(a: Assessment) -> list[int]:
    out: list[int] = []
    for r in a.reasons:
        for s in r.get("seqs", []):
            if s not in out:
                out.append(int(s))
    return out[:20]

"""Batch scans and the live follow loop: ledger (or Parquet export) -> features -> links -> risk -> tiers.

The analysis (:func:`analyse`) is one function of a :class:`~distillguard.monitor.features.FeatureAccumulator`
and an optional benign :class:`Reference`; sources only differ in how rows reach the accumulator:

- ``--ledger PATH`` (default: the gateway's ledger): ``Ledger.iter_records`` in batches;
- ``--parquet DIR``: the ``ledger.parquet`` of ``distillguard ledger export`` (or a synthetic one), streamed
  by record batches with only the needed columns (bounded memory; ``accounts.parquet`` beside it, when
  present, gives key-creation times for linking);
- ``monitor follow``: the accumulator is kept (and persisted under ``home()/monitor/``) and fed only the
  records after the last ``seq`` it saw.

Calibration: with a :class:`Reference` (``monitor calibrate`` on a known-benign period, saved to
``home()/monitor/reference.npz`` and used by default) accounts are compared with benign profiles;
without one, with the scanned population itself, robustly (see :mod:`detectors`), which is weaker: a
kind of attacker that many accounts share can vouch for itself.
"""

from __future__ import annotations

import io
import json
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from distillguard.errors import UserError
from distillguard.gateway.tiers import BASE_TIER
from distillguard.monitor.decisions import (
    AccountState,
    Decision,
    DecisionLog,
    Policy,
    apply_decisions,
    decide,
)
from distillguard.monitor.detectors import (
    BREADTH,
    EVASION,
    EXTRACTION,
    INTENT,
    SUBSET_MIN_BETA,
    SUGGESTIVE,
    TEXT_SHAPE,
    Assessment,
    Calibration,
    MMDReference,
    RateNull,
    combine_min_p,
    prada_w,
)
from distillguard.monitor.features import (
    COLUMNS,
    FEATURE_NAMES,
    FeatureAccumulator,
    Profile,
    TextGeometry,
    derive,
    entity_features,
    evidence_seqs,
    hash_vectors,
    records_to_table,
    shingle_hashes,
    text_geometry,
)
from distillguard.monitor.linking import MIN_ROTATING, Cluster, LinkInfo, link_accounts

BATCH_ROWS = 65_536


@dataclass(frozen=True)
class ScanOptions:
    """Knobs of one analysis (defaults are what the tests, eval and benchmarks use)."""

    sample_size: int = 256  # sampled queries per account for text geometry
    min_queries: int = 20  # fewer: reported, never scored alone (a cluster still can be)
    dim: int = 512  # hashed embedding dimension
    k_reference: int = 1  # nearest benign profile against a benign reference
    k_population: int = 3  # against the population: three accounts must vouch
    mmd_window: int = 64
    mmd_refs: int = 20
    mmd_null: int = 1000
    link: bool = True
    seed: int = 0
    workers: int | None = None  # processes for scoring many accounts (default: ``num_threads()``)


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

    acc = acc if acc is not None else FeatureAccumulator(sample_size=sample_size)
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


@dataclass
class EntityState:
    """What an analysis keeps of one entity once its features are computed. The sampled texts and their
    embeddings are not kept: at the seed case's ~65k accounts they would take gigabytes."""

    accounts: tuple[str, ...]
    queries: int
    features: dict[str, float]
    evidence: dict[str, list[int]]
    link: LinkInfo  # what account linking needs (``created`` is filled in by the caller)


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
            active_hours=_active_hours(prof),
            created=None,
            org=next(iter(prof.orgs)) if len(prof.orgs) == 1 else None,
            shingles=shingle_hashes(prof.sample.text)
            if len(accounts) == 1 and prof.n < MIN_ROTATING
            else set(),
        )
        return EntityState(accounts, prof.n, feats, evidence_seqs(prof, geo), link)

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


@dataclass
class Reference:
    """A benign baseline: the calibration of the score and the MMD reference windows."""

    calibration: Calibration
    mmd: MMDReference | None
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "calibration": np.array(json.dumps(self.calibration.to_dict())),
            "meta": np.array(json.dumps(self.meta)),
        }
        if self.mmd is not None:
            arrays["mmd_windows"] = np.stack(self.mmd.windows)
            arrays["mmd_gammas"] = self.mmd.gammas
            arrays["mmd_null"] = self.mmd.null
            arrays["mmd_window"] = np.array(self.mmd.window)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        path = Path(path).expanduser()
        try:
            with np.load(path, allow_pickle=False) as z:
                cal = Calibration.from_dict(json.loads(str(z["calibration"])))
                meta = json.loads(str(z["meta"]))
                mmd = None
                if "mmd_windows" in z:
                    from distillguard.monitor.detectors import _kernel_mean, _sq_dists

                    windows = list(z["mmd_windows"])
                    gammas = np.array(z["mmd_gammas"])
                    mmd = MMDReference(windows, gammas, np.array(z["mmd_null"]), int(z["mmd_window"]))
                    mmd._self_terms = [_kernel_mean(_sq_dists(w, w), gammas, True) for w in windows]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"{path} is not a monitor reference ({exc}); run `distillguard monitor calibrate`"
            ) from None
        if tuple(cal.features) != FEATURE_NAMES:
            missing = ", ".join(f for f in FEATURE_NAMES if f not in cal.features)
            what = f"features missing: {missing}" if missing else "a different feature set"
            raise UserError(
                f"{path} was fitted by another version of the monitor ({what}); "
                "fit it again with `distillguard monitor calibrate`"
            )
        return cls(cal, mmd, meta)


def _clusters(
    accounts: list[str],
    states: dict[str, EntityState],
    created: dict[str, float] | None,
) -> list[Cluster]:
    # key creation times from the account store; first-seen times are no substitute: all look alike
    infos = [replace(states[a].link, created=(created or {}).get(a)) for a in accounts]
    return link_accounts(infos)


def _active_hours(p: Profile) -> int:
    return max(1, int(round(p.counts["active_bins"] * 600.0 / 3600.0)))


def build_reference(
    acc: FeatureAccumulator,
    options: ScanOptions | None = None,
    *,
    benign: Iterable[str] | None = None,
    created: dict[str, float] | None = None,
    meta: dict[str, Any] | None = None,
) -> Reference:
    """Fit a benign :class:`Reference` on ``acc``'s accounts (or only the ``benign`` ones of them).

    Linked benign groups are pooled and added as reference entities too, so a benign team judged as a
    cluster has benign clusters to be compared with.
    """
    an = Analyzer(options)
    o = an.options
    names = [a for a in (benign if benign is not None else acc.accounts) if a in acc.index]
    names = [a for a in names if acc.c["n"][acc.index[a]] >= o.min_queries]
    if len(names) < 3:
        raise UserError(f"a benign reference needs at least 3 accounts with {o.min_queries}+ queries")
    mmd = an.fit_mmd(acc, names)
    states = an.accounts(acc, names, mmd)
    rows: list[tuple[tuple[str, ...], dict[str, float]]] = [((a,), states[a].features) for a in names]
    if o.link:
        for c in _clusters(names, states, created):
            rows.append((tuple(c.accounts), an.entity(acc, tuple(c.accounts), mmd).features))
    cal = Calibration.fit(rows, k=o.k_reference, source="reference")
    info = {"accounts": len(names), "entities": len(rows), "rows": acc.rows, **(meta or {})}
    return Reference(cal, mmd, info)


@dataclass
class AccountVerdict:
    """One account's outcome of a scan."""

    account: str
    queries: int
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


# Looks at one entity (see :func:`analyse`). A look "shows evidence" at GATE_P: it opens the full profile
# look, and attributes a weakly linked cluster's evidence to a member.
GATE_P = 0.05
# A strong group (shared templates or timing) of at least this many accounts is linkage evidence: one
# template family or one scheduler across a campaign opens the full profile look without other intent.
CAMPAIGN_MIN = 3
# Clusters holding at least this share of the scored accounts (and CAMPAIGN_MIN accounts) are left out of
# a population calibration and scored against the rest: a campaign cannot vouch for itself.
LEAVE_OUT_SHARE = 0.05


@dataclass
class Looks:
    """The calibrations one entity is tested against, each with its own null, plus what the null is:

    - ``extraction``: logit_bias sweeps and logprobs over answers as counts (evidence on its own);
    - ``suggestive``: reasoning-trace, identity and logprob requests as counts (counted when corroborated);
    - ``breadth`` and ``evasion``: nearest-benign-profile looks at the coverage of the capability space and
      at network churn (they corroborate; they convict nobody alone);
    - ``profile``: the full nearest-benign-profile score (counted with intent or campaign evidence).
    """

    profile: Calibration
    extraction: RateNull
    suggestive: RateNull
    breadth: Calibration
    evasion: Calibration
    intent: Calibration
    null: str
    shapeless: Calibration  # the profile without the text shape one shared template gives (TEXT_SHAPE)

    @classmethod
    def of(cls, cal: Calibration, null: str) -> Looks:
        return cls(
            cal,
            RateNull.from_calibration(cal, EXTRACTION),
            RateNull.from_calibration(cal, SUGGESTIVE),
            cal.restrict(BREADTH),
            cal.restrict(EVASION),
            cal.restrict(INTENT),
            null,
            cal.restrict(_shapeless(cal.features), min_beta=cal.min_beta),
        )

    @classmethod
    def fit(cls, rows, *, k: int, groups, null: str) -> Looks:
        def one(features, min_beta):
            return Calibration.fit(
                rows, k=k, source="population", groups=groups, features=features, min_beta=min_beta
            )

        profile = one(None, 0.05)
        return cls(
            profile,
            RateNull.from_calibration(profile, EXTRACTION),
            RateNull.from_calibration(profile, SUGGESTIVE),
            one(BREADTH, SUBSET_MIN_BETA),
            one(EVASION, SUBSET_MIN_BETA),
            one(INTENT, SUBSET_MIN_BETA),
            null,
            one(_shapeless(profile.features), profile.min_beta),
        )


def _shapeless(features: Sequence[str]) -> tuple[str, ...]:
    return tuple(f for f in features if f not in TEXT_SHAPE)


@dataclass
class Judgement:
    """One entity's tests. ``p`` is Bonferroni over three: extraction; suggestive elicitation, counted only
    when ``corroboration`` names breadth, evasion or linkage evidence; and the full profile, counted only
    when ``gate`` names intent or a campaign: extraction, elicitation with its corroboration, breadth of
    coverage, or linkage across accounts that are not one declared organisation (an organisation's fleet
    of templated service accounts on one scheduler is linked and busy, and that is not distillation)."""

    extraction: Assessment
    suggestive: Assessment
    breadth: Assessment
    evasion: Assessment
    intent: Assessment
    profile: Assessment
    corroboration: str | None
    gate: str | None
    p: float
    tests: list[dict[str, Any]]

    @property
    def own_evidence(self) -> bool:
        """Extraction, or corroborated elicitation, at the gate level: what lets a weakly linked account
        carry its cluster's evidence."""
        if self.extraction.p_value <= GATE_P:
            return True
        return self.corroboration is not None and self.suggestive.p_value <= GATE_P

    @property
    def counted(self) -> list[Assessment]:
        out = [self.extraction]
        if self.corroboration is not None:
            out.append(self.suggestive)
        if self.gate is not None:
            out.append(self.profile)
        return out

    @property
    def best(self) -> Assessment:
        return min(self.counted, key=lambda a: a.p_value)

    @property
    def scored(self) -> bool:
        return self.profile.scored

    def _name(self, a: Assessment) -> str:
        if a is self.profile:
            return "profile"
        return "extraction" if a is self.extraction else "elicitation"

    def reasons(self, prefix: str = "") -> tuple[list[str], list[dict[str, Any]]]:
        best = self.best
        name = self._name(best)
        head = f"{prefix}test {name}: p={self.p:.2g} ({self.tests[0]['null']})"
        texts = [head] + [prefix + r["text"] for r in best.reasons]
        details = [{**r, "test": name} for r in best.reasons]
        if best is self.profile:
            texts.insert(1, f"{prefix}profile counted: {self.gate} evidence")
        elif best is self.suggestive:
            texts.insert(1, f"{prefix}elicitation counted: corroborated by {self.corroboration}")
        if self.corroboration is None and self.suggestive.p_value <= GATE_P:
            texts.append(
                f"{prefix}elicitation p={self.suggestive.p_value:.2g} not counted: nothing corroborates it "
                "(no breadth, network churn or linked campaign; benchmarks and researchers ask for "
                "reasoning and logprobs too)"
            )
        if self.gate is None and self.profile.p_value <= GATE_P:
            texts.append(
                f"{prefix}profile p={self.profile.p_value:.2g} not counted: no intent evidence "
                "(template-heavy, high-volume or regular traffic alone is not distillation)"
            )
        return texts, details


def judge(
    looks: Looks,
    accounts: tuple[str, ...],
    st: EntityState,
    *,
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
    linkage: bool = False,
) -> Judgement:
    """Test one entity against ``looks`` (never against itself or ``exclude``d accounts).

    Each look has its own valid p-value; a gate that decides whether a look counts only removes
    rejections (P[p <= a and gate] <= P[p <= a]), and Bonferroni over the three counted looks keeps the
    combination valid under any dependence.
    """
    args = (accounts, st.queries, st.features, st.evidence)
    x = looks.extraction.assess(*args, exclude=exclude)
    s = looks.suggestive.assess(*args, exclude=exclude)
    b = looks.breadth.assess(*args, exclude=exclude)
    v = looks.evasion.assess(*args, exclude=exclude)
    i = looks.intent.assess(*args, exclude=exclude)
    pr = looks.profile.assess(*args, exclude=exclude)
    support = [
        name
        for name, hit in (
            ("breadth (coverage)", b.p_value <= GATE_P),
            ("network churn", v.p_value <= GATE_P),
            ("linkage", linkage),
        )
        if hit
    ]
    corroboration = " and ".join(support) or None
    if x.p_value <= GATE_P:
        gate: str | None = "extraction"
    elif i.p_value <= GATE_P:
        gate = "intent (elicitation, coverage and novelty together)"
    elif corroboration:
        gate = corroboration
    else:
        gate = None
    tests = [
        {"test": "extraction", "p_value": x.p_value, "null": looks.null},
        {"test": "elicitation", "p_value": s.p_value, "null": looks.null, "counted": bool(corroboration)},
        {"test": "breadth", "p_value": b.p_value, "null": looks.null, "role": "corroboration, gate"},
        {"test": "network churn", "p_value": v.p_value, "null": looks.null, "role": "corroboration, gate"},
        {"test": "intent", "p_value": i.p_value, "null": looks.null, "role": "gate"},
        {"test": "profile", "p_value": pr.p_value, "null": looks.null, "counted": gate is not None},
    ]
    if gate == "linkage":
        # only shared templates (and a network, timing or a sign-up burst) opened the profile look: the
        # group must be unusual without the text shape its template gives it too (intersection-union,
        # so the counted p-value is never below the profile's)
        shapeless = looks.shapeless.assess(*args, exclude=exclude)
        tests.append({
            "test": "profile without text shape", "p_value": shapeless.p_value, "null": looks.null,
            "role": "only the link opened the profile look: the larger of the two profile p-values counts",
        })  # fmt: skip
        if shapeless.p_value > pr.p_value:
            pr = shapeless
    p = combine_min_p([x.p_value, s.p_value if corroboration else 1.0, pr.p_value if gate else 1.0])
    tests.append({"test": "bonferroni(extraction, elicitation, profile)", "p_value": p, "gate": gate})
    return Judgement(x, s, b, v, i, pr, corroboration, gate, p, tests)


def _unscored(accounts: tuple[str, ...], st: EntityState) -> Judgement:
    a = Assessment(accounts, st.queries, float("nan"), 1.0, 0.0, [], scored=False)
    return Judgement(
        a, a, a, a, a, a, None, None, 1.0, [{"test": "none", "p_value": 1.0, "null": "too few queries"}]
    )


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
    scored = [a for a in names if acc.c["n"][acc.index[a]] >= o.min_queries]
    if reference is None and scored:
        mmd = an.fit_mmd(acc, scored)
    if states is None:
        states = an.accounts(acc, names, mmd, progress=progress)
    clusters = _clusters(names, states, created) if o.link else []
    cluster_of = {a: c.id for c in clusters for a in c.accounts}
    left_out: set[str] = set()
    left_ids: list[str] = []
    if reference is not None:
        n_ref = len(reference.calibration.reference_ids)
        shipped = bool(reference.meta.get("shipped"))
        kind = "shipped default reference" if shipped else "benign reference"
        looks = Looks.of(reference.calibration, f"{kind}, {n_ref} entities")
        looks_out = looks
        source = "reference"
        trust = (
            f"{kind} of {n_ref} entities ({reference.meta.get('accounts', '?')} accounts); profile p-values "
            f"below {1.0 / (n_ref + 1):.1g} come from a conservatively fitted tail, elicitation p-values "
            "from binomial counts against every reference profile"
        )
        if shipped:
            trust = (
                "medium: simulated benign kinds (" + ", ".join(reference.meta.get("kinds", [])) + "), not "
                "this deployment's traffic, and a campaign cannot vouch for itself against it; a benign kind "
                "of your own that asks for more than all of these can look unusual, so automatic tiers stop "
                "at monitor_shipped_max_tier; run `distillguard monitor calibrate` on a known-good period. "
                + trust
            )
        info = {
            "source": "shipped reference" if shipped else "reference",
            "entities": n_ref,
            "trust": trust,
            **{k: reference.meta[k] for k in ("version", "path") if k in reference.meta},
        }
    else:
        if len(scored) < 3:
            raise UserError(
                f"too few accounts with {o.min_queries}+ queries to calibrate on the population; "
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
        own_j[a] = judge(lk, (a,), states[a], exclude=members) if a in scored else _unscored((a,), states[a])
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
            reasons = [f"fewer than {o.min_queries} queries: not scored alone"] + reasons
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
        )
    return Analysis(verdicts, cluster_verdicts, source, acc.rows, acc.last_seq, weak_verdicts, info)


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


# --------------------------------------------------------------------------------------------------
# Decisions and output


def plan_decisions(
    analysis: Analysis,
    policy: Policy,
    store_tiers: dict[str, str],
    states: dict[str, AccountState],
    now: float,
) -> tuple[list[Decision], dict[str, AccountState], dict[str, str]]:
    """The tier moves for every account the store knows (pure). Returns decisions, new states and the
    resulting tier of every analysed account."""
    decisions: list[Decision] = []
    new_states = dict(states)
    tiers: dict[str, str] = {}
    # against the shipped reference, tiers stop at ``shipped_max_tier``: its p-values hold for benign
    # traffic like the simulator's, which the deployment's own customers may not be
    shipped = (analysis.reference or {}).get("source") == "shipped reference"
    cap = policy.shipped_max_tier if shipped else None
    for a, v in analysis.accounts.items():
        cur = store_tiers.get(a)
        if cur is None:  # not in the store (a Parquet export of another system): report only
            tiers[a] = policy.target(v.p_value, cap) if a not in policy.allowlist else policy.tiers[0]
            continue
        dec, st = decide(a, v.p_value, cur, states.get(a), policy, now, cap)
        new_states[a] = st
        tiers[a] = st.tier
        if dec is not None:
            dec.cluster = v.cluster
            dec.reasons = v.reasons[:4]
            if cap is not None and policy.target(v.p_value) != policy.target(v.p_value, cap):
                dec.reasons = [f"capped at {cap} (scored against the shipped reference)", *dec.reasons[:3]]
            dec.seqs = v.evidence
            decisions.append(dec)
    return decisions, new_states, tiers


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.6g}")


def report_json(
    analysis: Analysis,
    tiers: dict[str, str],
    *,
    store_tiers: dict[str, str] | None = None,
    decisions: list[Decision] | None = None,
    applied: bool = False,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """``{"accounts": [{"account", "risk", "tier", "cluster", "reasons"}...]}`` (docs/architecture.md)
    plus p-values, evidence seq ids, cluster entries and the decisions taken (or proposed)."""
    allow = policy.allowlist if policy else frozenset()
    accounts = []
    for v in sorted(analysis.accounts.values(), key=lambda v: (v.p_value, v.account)):
        accounts.append(
            {
                "account": v.account,
                "risk": _num(v.risk),
                "tier": tiers.get(v.account, BASE_TIER),
                "cluster": v.cluster,
                "reasons": v.reasons[:6],
                "p_value": _num(v.p_value),
                "score": _num(v.score),
                "queries": v.queries,
                "scored": v.scored,
                "current_tier": (store_tiers or {}).get(v.account),
                "allowlisted": v.account in allow,
                "evidence": v.evidence,
                "tests": [{k: _num(x) if k == "p_value" else x for k, x in t.items()} for t in v.tests],
            }
        )
    clusters = [
        {
            "cluster": c.id,
            "accounts": c.accounts,
            "risk": _num(c.risk),
            "p_value": _num(c.p_value),
            "score": _num(c.score),
            "queries": c.queries,
            "reasons": c.reasons[:6],
            "evidence": c.evidence,
            "strong": c.strong,
        }
        for c in sorted([*analysis.clusters, *analysis.weak_clusters], key=lambda c: (c.p_value, c.id))
    ]
    return {
        "accounts": accounts,
        "clusters": clusters,
        "decisions": [
            {
                "account": d.account,
                "from": d.previous,
                "to": d.tier,
                "kind": d.kind,
                "p_value": _num(d.p_value),
                "seqs": d.seqs,
            }
            for d in decisions or []
        ],
        "applied": applied,
        "calibration": analysis.calibration,
        "reference": analysis.reference,
        "rows": analysis.rows,
        "last_seq": analysis.last_seq,
    }


# --------------------------------------------------------------------------------------------------
# Persistence of the follow state


def save_accumulator(acc: FeatureAccumulator, path: Path, chains: dict[str, int] | None = None) -> None:
    """Save the accumulator (and a shared ledger's chain positions, in the same file: one atomic write)."""
    st = acc.state()
    arrays = dict(st["arrays"])
    meta = dict(st["meta"], chains=chains) if chains is not None else st["meta"]
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_follow_state(path: Path) -> tuple[FeatureAccumulator, dict[str, int]]:
    """The saved accumulator and the chain positions saved with it (empty for an embedded ledger)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: np.array(z[k]) for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is not a monitor follow state ({exc}); delete it to start over") from None
    chains = {str(k): int(v) for k, v in (meta.pop("chains", None) or {}).items()}
    try:
        return FeatureAccumulator.from_state({"arrays": arrays, "meta": meta}), chains
    except KeyError as exc:
        raise UserError(
            f"{path} was written by another version of the monitor (no {exc.args[0]}); delete it to "
            "re-read the ledger from the start"
        ) from None


@dataclass
class Follower:
    """``monitor follow``: read new ledger records, re-score, apply tiers, remember the position.

    The position (last ``seq``) and the accumulator are saved after every iteration under the decisions
    log's directory, so a restarted follower continues where it stopped instead of re-reading the ledger.
    """

    ledger_path: Path | str
    store: Any
    log: DecisionLog
    policy: Policy
    reference: Reference | None = None
    options: ScanOptions = field(default_factory=ScanOptions)
    clock: Callable[[], float] = time.time
    on_report: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        self.state_file = self.log.root / "follow.npz"
        self.analyzer = Analyzer(self.options)
        states, extra = self.log.load_state()
        self.acc = FeatureAccumulator(sample_size=self.options.sample_size)
        # a shared ledger: the position in each replica's chain (the accumulator's seq numbers the reads)
        self.chains: dict[str, int] | None = {} if is_database_url(self.ledger_path) else None
        if self.state_file.is_file() and extra.get("ledger") == source_name(self.ledger_path):
            self.acc, chains = load_follow_state(self.state_file)
            self.chains = chains if self.chains is not None else None

    @property
    def position(self) -> int:
        return self.acc.last_seq

    def step(self) -> dict[str, Any] | None:
        """One iteration; returns the report when there was anything new to score."""
        before = self.acc.rows
        batches = ledger_batches(self.ledger_path, since_seq=self.acc.last_seq, chains=self.chains)
        accumulate(batches, self.acc)
        if self.acc.rows == before:
            return None
        try:
            analysis = analyse(
                self.acc, self.reference, analyzer=self.analyzer, created=store_created(self.store)
            )
        except UserError:  # too few accounts yet to calibrate on the population: read more first
            return None
        store_tiers = {a["name"]: a["tier"] for a in self.store.list_accounts()}
        states, extra = self.log.load_state()
        decisions, states, tiers = plan_decisions(analysis, self.policy, store_tiers, states, self.clock())
        apply_decisions(self.store, self.log, decisions)
        extra.update(ledger=source_name(self.ledger_path), position=self.acc.last_seq)
        save_accumulator(self.acc, self.state_file, self.chains)
        self.log.save_state(states, extra)
        report = report_json(
            analysis, tiers, store_tiers=store_tiers, decisions=decisions, applied=True, policy=self.policy
        )
        if self.on_report is not None:
            self.on_report(report)
        return report

    def run(self, interval: float = 10.0, iterations: int | None = None) -> None:
        """Loop until SIGINT/SIGTERM (or ``iterations`` steps)."""
        stop = {"now": False}

        def handler(signum: int, frame: Any) -> None:
            stop["now"] = True

        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in old:
                signal.signal(s, handler)
        except ValueError:  # not the main thread: rely on ``iterations``
            old = {}
        try:
            done = 0
            while not stop["now"]:
                self.step()
                done += 1
                if iterations is not None and done >= iterations:
                    break
                deadline = time.monotonic() + interval
                while not stop["now"] and time.monotonic() < deadline:
                    time.sleep(min(0.2, interval))
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def summary_text(report: dict[str, Any], limit: int = 20) -> str:
    """A human-readable table of the riskiest accounts."""
    out = io.StringIO()
    out.write(
        f"{len(report['accounts'])} accounts, {len(report['clusters'])} clusters, {report['rows']} rows, "
        f"calibration: {report['calibration']}\n"
    )
    if report.get("reference", {}).get("trust"):
        out.write(f"reference trust: {report['reference']['trust']}\n")
    for a in report["accounts"][:limit]:
        p = a["p_value"]
        out.write(
            f"{a['account']:<24} {a['tier']:<10} p={p if p is None else f'{p:.1e}':<8} "
            f"q={a['queries']:<6} {a['cluster'] or '':<4} {(a['reasons'] or [''])[0][:90]}\n"
        )
    for d in report["decisions"]:
        out.write(f"decision: {d['account']} {d['from']} -> {d['to']} ({d['kind']})\n")
    return out.getvalue()

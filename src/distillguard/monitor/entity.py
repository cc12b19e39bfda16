"""An entity's features from its :class:`~distillguard.monitor.accumulator.Profile`: the text geometry of
its sampled prompts (embeddings, k-center coverage, paraphrases, template frames), the oriented feature
values of :data:`~distillguard.monitor.features.FEATURES`, and the sampled ledger ``seq`` ids that show
each of them (what an analyst opens).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from distillguard.monitor.accumulator import Profile, Sample
from distillguard.monitor.features import (
    BIN_SECONDS,
    COVER_RADIUS,
    PARAPHRASE_COSINE,
    PSEUDO_QUERIES,
    SHINGLE,
    hash_vectors,
    stable_hash,
    tokens,
)
from distillguard.text.vectors import cosine_distances, iter_farthest_first


@dataclass
class TextGeometry:
    """Sample-derived text statistics of one entity, with the sampled records behind each."""

    vectors: np.ndarray
    diversity: float
    coverage_topics: int
    centres: list[int]
    paraphrase: np.ndarray  # bool per sample row
    templated: np.ndarray  # bool per sample row
    template_shingles: set[int]
    min_dist: np.ndarray  # per sample row, distance to the nearest earlier row (nan for the first)


def text_geometry(sample: Sample, dim: int = 512) -> TextGeometry:
    """Embeddings, diversity, k-center coverage, paraphrase and template flags of a sample."""
    n = len(sample)
    vec = hash_vectors(sample.text, dim)
    if n == 0:
        empty = np.zeros(0, dtype=bool)
        return TextGeometry(vec, float("nan"), 0, [], empty, empty, set(), np.zeros(0))
    dist = cosine_distances(vec, vec)
    nonempty = np.linalg.norm(vec, axis=1) > 0
    diversity = float(dist[np.triu_indices(n, k=1)].mean()) if n >= 2 else float("nan")
    centres: list[int] = []
    if nonempty.any():
        sub = np.nonzero(nonempty)[0]
        nearest = np.full(len(sub), np.inf)
        for j in iter_farthest_first(vec[sub], 0):
            if np.isfinite(nearest).all() and nearest.max() <= COVER_RADIUS:
                break
            centres.append(int(sub[j]))
            nearest = np.minimum(nearest, dist[sub, sub[j]])
    # nearest earlier row: exact repeats are not paraphrases
    same = sample.text_hash[:, None] == sample.text_hash[None, :]
    earlier = np.tril(np.ones((n, n), dtype=bool), k=-1)
    d_all = np.where(earlier, dist, np.inf)
    min_dist = d_all.min(axis=1)
    min_dist[0] = np.nan
    d_new = np.where(earlier & ~same, dist, np.inf)
    paraphrase = (d_new.min(axis=1) <= 1.0 - PARAPHRASE_COSINE) & nonempty
    repeat = (earlier & same).any(axis=1)
    templated, shingles = _templates(sample.text, repeat)
    return TextGeometry(vec, diversity, len(centres), centres, paraphrase, templated, shingles, min_dist)


def shingle_hashes(texts: Sequence[str]) -> set[int]:
    """The stable hashes of every word 4-gram of ``texts`` (the unit of a template frame): what a small
    account's prompts are made of, to compare with another account's recurring frames."""
    out: set[int] = set()
    for text in texts:
        toks = tokens(text)
        out.update(
            stable_hash(" ".join(toks[i : i + SHINGLE])) for i in range(max(0, len(toks) - SHINGLE + 1))
        )
    return out


def _templates(texts: Sequence[str], repeat: np.ndarray) -> tuple[np.ndarray, set[int]]:
    """Rows mostly covered by word 4-grams that recur in other rows (the frames of a prompt generator).
    Returns the flags and the stable hashes of the recurring frames (for cross-account linking)."""
    grams: list[set[tuple[str, ...]]] = []
    df: Counter = Counter()
    for text in texts:
        toks = tokens(text)
        g = {tuple(toks[i : i + SHINGLE]) for i in range(max(0, len(toks) - SHINGLE + 1))}
        grams.append(g)
        df.update(g)
    n = len(texts)
    # a shingle is a template frame when it recurs in at least 3 prompts and 3% of the sample
    need = max(3, math.ceil(0.03 * n))
    frames = {g for g, c in df.items() if c >= need}
    flags = np.zeros(n, dtype=bool)
    for i, g in enumerate(grams):
        if g and not repeat[i]:
            flags[i] = len(g & frames) >= 0.5 * len(g)
    return flags, {stable_hash(" ".join(f)) for f in frames}


def shrunk_rate(k: float, n: float) -> float:
    """``k / (n + PSEUDO_QUERIES)``: a rate that needs volume before it can look extreme."""
    return float(k) / (float(n) + PSEUDO_QUERIES)


def entity_features(
    profile: Profile, geometry: TextGeometry, *, mmd: float = float("nan"), prada: float = float("nan")
) -> dict[str, float]:
    """The oriented feature values of :data:`FEATURES` for one entity (``nan`` where undefined)."""
    c = profile.counts
    n = max(c["n"], 1.0)  # requests: the unit of every feature (a batch's prompts count where it is scored)
    s = profile.sample
    k = max(len(s), 1)
    active_h = max(c["active_bins"], 1.0) * BIN_SECONDS / 3600.0
    gaps = c["gaps"]
    if gaps >= 5:
        mean = profile.log_gap_sum / gaps
        var = max(profile.log_gap_sq / gaps - mean * mean, 0.0)
        regularity = -math.sqrt(var)
    else:
        regularity = float("nan")
    # rates measured on the sample are scaled to the account's volume before shrinking
    scale = n / k
    return {
        "log_queries": math.log10(n),
        "log_rate": math.log10(n / active_h),
        "duty_cycle": (c["active_bins"] / profile.span_bins) if profile.span_bins >= 6 else float("nan"),
        "regularity": regularity,
        "novelty": min(1.0, profile.distinct / n) if n >= 5 else float("nan"),
        "coverage": math.log2(1 + geometry.coverage_topics),
        "diversity": geometry.diversity if len(s) >= 5 else float("nan"),
        "paraphrase_rate": shrunk_rate(geometry.paraphrase.sum() * scale, n),
        "template_rate": shrunk_rate(geometry.templated.sum() * scale, n),
        "cot_rate": shrunk_rate(c["cot"], n),
        "identity_rate": shrunk_rate(c["identity"], n),
        "logprobs_rate": shrunk_rate(c["logprobs"], n),
        "logprob_gen_rate": shrunk_rate(c["logprob_gen"], n),
        "bias_probe_rate": shrunk_rate(c["bias_probe"], n),
        "logit_bias_rate": shrunk_rate(c["logit_bias"], n),
        "ip_churn": shrunk_rate(profile.extra_prefixes, n),
        "mmd": mmd,
        "prada": prada,
    }


@dataclass
class EntityReport:
    """Features of one entity plus the sampled ledger ``seq`` ids that exhibit each of them."""

    accounts: tuple[str, ...]
    queries: int
    features: dict[str, float]
    evidence: dict[str, list[int]] = field(default_factory=dict)
    first_seq: int = 0
    last_seq: int = 0


def evidence_seqs(profile: Profile, geometry: TextGeometry, limit: int = 8) -> dict[str, list[int]]:
    """For each feature, up to ``limit`` sampled ledger seq ids that show it (what an analyst opens)."""
    s = profile.sample

    def pick(mask: np.ndarray) -> list[int]:
        return [int(x) for x in s.seq[np.asarray(mask, dtype=bool)][:limit]]

    everything = [int(x) for x in s.seq[:limit]]
    spread = [int(s.seq[i]) for i in geometry.centres[:limit]]
    return {
        "log_queries": [profile.first_seq, profile.last_seq],
        "log_rate": everything,
        "duty_cycle": [profile.first_seq, profile.last_seq],
        "regularity": everything,
        "novelty": everything,
        "coverage": spread,
        "diversity": spread,
        "paraphrase_rate": pick(geometry.paraphrase),
        "template_rate": pick(geometry.templated),
        "cot_rate": pick(s.cot),
        "identity_rate": pick(s.identity),
        "logprobs_rate": pick(s.logprobs),
        "logprob_gen_rate": pick(s.logprob_gen),
        "bias_probe_rate": pick(s.bias_probe),
        "logit_bias_rate": pick(s.logit_bias),
        "ip_churn": everything,
        "mmd": everything,
        "prada": everything,
    }

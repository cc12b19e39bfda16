"""Watermark detection over token ids: windows, prompt exclusion, dedup, exact p-values.

Why dedup matters: a text that repeats an n-gram re-scores the same (window, token) tuple, whose green-ness is
fixed by the key, so counting it twice breaks the binomial/gamma null and overstates confidence. We score each
tuple once per text (and once across the corpus for the aggregate), and never score a tuple that already
occurs in the prompt (the model may be copying it). Dedup is key-independent, so several keys are scored on
the same tuples and corrected together (Holm).

Some schemes have *degenerate* windows whose keyed list is the same under every key (transformers' lefthash
after token 0): any text watermarked with that scheme, under any key, is biased towards that list, so those
tuples are evidence of the scheme, not of our key. They are dropped before scoring and counted
(``degenerate_windows_skipped``). The mask is key-independent, so a key family still scores one tuple set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from distillguard.errors import UserError
from distillguard.watermark import hashing, stats
from distillguard.watermark.schemes import WatermarkSpec, token_scores

_TUPLE_KEY = 0x5EED_D15A_6A4D_0001  # fixed, public: tuple identity only, not secrecy


@dataclass
class Tuples:
    """Every scorable (window, token) position of a batch of texts, flattened."""

    windows: torch.Tensor  # [M, h] int64
    tokens: torch.Tensor  # [M] int64
    text: np.ndarray  # [M] text index
    in_prompt: np.ndarray  # [M] bool: position lies in the prompt
    ident: np.ndarray  # [M] int64 hash of the (window, token) tuple


def extract_tuples(
    completions: Sequence[Sequence[int]], prompts: Sequence[Sequence[int]] | None, width: int
) -> tuple[Tuples, np.ndarray]:
    """Flatten texts into (window, token) tuples without a per-token Python loop.

    Returns the tuples and the number of completion tokens per text.
    """
    n = len(completions)
    prompts = prompts if prompts is not None else [()] * n
    if len(prompts) != n:
        raise UserError("prompts and completions differ in number")
    seqs = [np.asarray(list(p) + list(c), dtype=np.int64) for p, c in zip(prompts, completions, strict=True)]
    plen = np.array([len(p) for p in prompts], dtype=np.int64)
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = np.concatenate(seqs) if n and lens.sum() else np.zeros(0, dtype=np.int64)
    if flat.size and flat.min() < 0:
        raise UserError("token ids must be non-negative")
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if n else np.zeros(0, dtype=np.int64)
    text = np.repeat(np.arange(n), lens)
    local = np.arange(flat.size) - np.repeat(starts, lens)
    valid = local >= width
    pos = np.flatnonzero(valid)
    offsets = np.arange(-width, 0)
    win = flat[pos[:, None] + offsets[None, :]] if pos.size else np.zeros((0, width), dtype=np.int64)
    tok = flat[pos]
    windows = torch.from_numpy(np.ascontiguousarray(win))
    tokens = torch.from_numpy(tok)
    cols = [win[:, i] for i in range(width)] + [tok]
    tuples = Tuples(windows, tokens, text[pos], local[pos] < plen[text[pos]], tuple_ids(cols))
    return tuples, lens - plen


def tuple_ids(cols: list[np.ndarray]) -> np.ndarray:
    """One 64-bit identity per row of non-negative integer columns.

    Exact bit-packing when the columns fit in 64 bits (the common case: a token id needs <= 18 bits), else
    a fixed public hash (collision chance ~2**-64 per pair).
    """
    widths = [int(c.max()).bit_length() if c.size else 1 for c in cols]
    if sum(widths) <= 64:
        out = np.zeros(cols[0].shape, dtype=np.uint64)
        for c, w in zip(cols, widths, strict=True):
            out = (out << np.uint64(w)) | c.astype(np.uint64)
        return out.view(np.int64)
    stacked = np.stack([c.astype(np.int64) for c in cols], axis=-1).view(np.uint64)
    return hashing.window_seeds_np(_TUPLE_KEY, stacked).view(np.int64)


def _per_text_ident(tuples: Tuples) -> np.ndarray:
    return tuple_ids([tuples.ident.view(np.uint64), tuples.text.astype(np.uint64)])


def _first_occurrence(ids: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Boolean mask: eligible positions that are the first eligible occurrence of their id."""
    out = np.zeros(ids.shape, dtype=bool)
    idx = np.flatnonzero(eligible)
    if idx.size:
        _, first = np.unique(ids[idx], return_index=True)
        out[idx[first]] = True
    return out


def select(tuples: Tuples, dedup: bool) -> tuple[np.ndarray, np.ndarray]:
    """Which positions count per text and for the corpus aggregate."""
    completion = ~tuples.in_prompt
    if not dedup:
        return completion, completion
    per_text_id = _per_text_ident(tuples)
    eligible_text, eligible_any = completion.copy(), completion.copy()
    if tuples.in_prompt.any():  # tuples the prompt already contains are never evidence
        eligible_text &= ~np.isin(per_text_id, per_text_id[tuples.in_prompt])
        eligible_any &= ~np.isin(tuples.ident, tuples.ident[tuples.in_prompt])
    per_text = _first_occurrence(per_text_id, eligible_text)
    corpus = _first_occurrence(tuples.ident, eligible_any)
    return per_text, corpus


def _summary(spec: WatermarkSpec, total: np.ndarray, count: np.ndarray) -> dict[str, np.ndarray]:
    impl = spec.impl
    return {"log_p": impl.log_sf(spec, total, count), "z": impl.z(spec, total, count)}


def _check_family(specs: Sequence[WatermarkSpec]) -> None:
    first = specs[0]
    for s in specs[1:]:
        if (s.scheme, s.window, s.hf_compat) != (first.scheme, first.window, first.hf_compat):
            raise UserError("all keys scored together must share scheme, context width and compat mode")


@dataclass
class Prepared:
    """Key-independent part of detection: the tuples that will be scored, after exclusion and dedup.

    Prepare once, score many keys (decoy-key nulls, calibration, key families) without redoing dedup.
    """

    width: int
    windows: torch.Tensor  # [M, h] tuples scored for their text
    tokens: torch.Tensor  # [M]
    text: np.ndarray  # [M]
    corpus: np.ndarray  # [M] bool: also counts for the corpus aggregate
    count: np.ndarray  # [T] scored tuples per text
    num_tokens: np.ndarray  # [T] completion tokens per text
    dedup: bool
    degenerate: np.ndarray | None = None  # [T] degenerate tuples skipped per text (None: not checked)
    degenerate_corpus: int = 0  # distinct degenerate tuples skipped across the corpus

    @property
    def aggregate_count(self) -> int:
        return int(self.corpus.sum())


def prepare(
    completions: Sequence[Sequence[int]],
    prompts: Sequence[Sequence[int]] | None = None,
    *,
    width: int = 1,
    dedup: bool = True,
    spec: WatermarkSpec | None = None,
) -> Prepared:
    """The tuples to score. With ``spec``, its scheme's degenerate windows are dropped and counted.

    Without ``spec`` every window is kept: fine for native modes, but a transformers-compatible key family
    would then score tuples that every key agrees on.
    """
    tuples, num_tokens = extract_tuples(completions, prompts, width)
    per_text, corpus = select(tuples, dedup)
    skipped, skipped_corpus = None, 0
    if spec is not None:
        bad = spec.impl.degenerate(spec, tuples.windows)
        skipped = np.bincount(tuples.text[per_text & bad], minlength=len(completions))
        skipped_corpus = int(np.sum(corpus & bad))
        per_text &= ~bad
        corpus &= ~bad
    idx = np.flatnonzero(per_text)
    return Prepared(
        width=width,
        windows=tuples.windows[idx],
        tokens=tuples.tokens[idx],
        text=tuples.text[idx],
        corpus=corpus[idx],
        count=np.bincount(tuples.text[idx], minlength=len(completions)),
        num_tokens=num_tokens,
        dedup=dedup,
        degenerate=skipped,
        degenerate_corpus=skipped_corpus,
    )


def key_scores(spec: WatermarkSpec, prep: Prepared) -> tuple[np.ndarray, float]:
    """Per-text score totals and the corpus total for one key."""
    if spec.window != prep.width:
        raise UserError(f"tuples were prepared for width {prep.width}, the watermark uses {spec.window}")
    values = token_scores(spec, prep.windows, prep.tokens).numpy() if len(prep.tokens) else np.zeros(0)
    total = np.bincount(prep.text, weights=values, minlength=len(prep.count))
    return total, float(values[prep.corpus].sum())


def aggregate_log_p(spec: WatermarkSpec, prep: Prepared) -> float:
    """ln p of the corpus aggregate for one key: the fast path for decoy keys and calibration."""
    _, agg = key_scores(spec, prep)
    return float(_summary(spec, np.array([agg]), np.array([prep.aggregate_count]))["log_p"][0])


def detect_ids(
    spec: WatermarkSpec | Sequence[WatermarkSpec],
    completions: Sequence[Sequence[int]],
    prompts: Sequence[Sequence[int]] | None = None,
    *,
    dedup: bool = True,
) -> dict:
    """Score token-id texts for one or several keys. Returns the docs/architecture.md detection document.

    ``texts[i]``: ``num_tokens`` (completion length), ``num_scored`` (tuples scored after dedup), ``score``
    (green count or sum of -ln(1-u)), ``z_score`` (display only), ``p_value`` (exact; 0.0 on underflow),
    ``log10_p_value`` (finite far below float range). With several keys, p-values are Holm-adjusted across
    keys and the best key is reported.
    """
    specs = [spec] if isinstance(spec, WatermarkSpec) else list(spec)
    if not specs:
        raise UserError("no watermark key given")
    _check_family(specs)
    vocab = specs[0].vocab_size
    if vocab is not None:
        top = max((max(c) for c in completions if len(c)), default=-1)
        if top >= vocab:
            raise UserError(f"token id {top} is outside the vocabulary (size {vocab})")
    return score(specs, prepare(completions, prompts, width=specs[0].window, dedup=dedup, spec=specs[0]))


def score(specs: Sequence[WatermarkSpec], prep: Prepared) -> dict:
    """The detection document for prepared tuples and a family of keys."""
    _check_family(specs)
    agg_count = np.array([prep.aggregate_count])
    per_key = []
    for s in specs:
        total, agg = key_scores(s, prep)
        agg_total = np.array([agg])
        per_key.append((total, _summary(s, total, prep.count), agg_total, _summary(s, agg_total, agg_count)))

    def document(totals, summaries, counts, ntok, skipped) -> list[dict]:
        log_p = np.stack([sm["log_p"] for sm in summaries], axis=-1)
        adjusted = stats.holm(log_p) if len(specs) > 1 else log_p
        best = np.argmin(log_p, axis=-1)  # Holm keeps the order of the raw p-values
        p_adj, l10_adj = stats.to_p(adjusted), stats.to_log10(adjusted)
        rows = []
        for i in range(len(counts)):
            b = int(best[i])
            row = {
                "num_tokens": int(ntok[i]),
                "num_scored": int(counts[i]),
                "score": float(totals[b][i]),
                "z_score": float(summaries[b]["z"][i]),
                "p_value": float(p_adj[i, b]),
                "log10_p_value": float(l10_adj[i, b]),
            }
            row |= specs[b].impl.row_fields(specs[b], totals[b][i], counts[i])
            row["degenerate_windows_skipped"] = int(skipped[i])
            if len(specs) > 1:
                row["key_index"] = b
                row["keys"] = [
                    {
                        "score": float(totals[k][i]),
                        "z_score": float(summaries[k]["z"][i]),
                        "p_value_unadjusted": float(stats.to_p(log_p[i, k])),
                        "p_value": float(p_adj[i, k]),
                        "log10_p_value": float(l10_adj[i, k]),
                    }
                    for k in range(len(specs))
                ]
            rows.append(row)
        return rows

    skipped = prep.degenerate if prep.degenerate is not None else np.zeros(len(prep.count), dtype=np.int64)
    texts = document(
        [pk[0] for pk in per_key], [pk[1] for pk in per_key], prep.count, prep.num_tokens, skipped
    )
    aggregate = document(
        [pk[2] for pk in per_key],
        [pk[3] for pk in per_key],
        agg_count,
        [int(prep.num_tokens.sum())],
        [prep.degenerate_corpus],
    )[0]
    return {
        "texts": texts,
        "aggregate": aggregate,
        "test": _test_description(specs[0], prep.dedup, len(specs), prep.degenerate_corpus),
    }


def _test_description(spec: WatermarkSpec, dedup: bool, n_keys: int, degenerate: int = 0) -> dict:
    impl = spec.impl
    null = "; ".join([f"text independent of the key: {impl.null(spec)}", *impl.caveats(spec)])
    out = {
        "test": impl.test,
        "null": null,
        "dedup": "per text and across corpus; prompt tuples excluded"
        if dedup
        else "off (p-values invalid for repetitive text)",
        "family": f"Holm over {n_keys} keys" if n_keys > 1 else "single key",
        "watermark": spec.describe(),
    }
    if degenerate:
        out["degenerate_windows"] = f"{degenerate} distinct tuple(s) not scored: {impl.degenerate_note}"
    return out

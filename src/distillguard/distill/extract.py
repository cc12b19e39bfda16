"""Logit extraction through an OpenAI-compatible API: the model's hidden size and final projection.

The attack of Carlini et al. 2024 ("Stealing part of a production language model", arXiv 2403.06634) and
Finlayson et al. 2024 (arXiv 2403.09539), as a red-team tool against our own gateway. A causal LM's logits
are ``l(x) = W g(x)``: the final projection ``W`` (vocab x hidden) times a ``hidden``-dimensional state. So
logit vectors collected over many prompts span at most ``hidden`` dimensions, and the singular values of
the stacked matrix collapse after the ``hidden``-th: the position of the largest drop is the hidden size,
and the top right singular vectors span ``W``'s column space (the projection up to an invertible linear
map).

An API shows only the top-k logprobs of one position. ``logit_bias`` lifts chosen tokens into the top k
(mode ``topk``):
with the same bias ``B`` on a reference token and ``k - 1`` others, each returned logprob is
``l_i + B - logsumexp(...)``, so differences of returned logprobs are differences of *logits*. One request
(``max_tokens = 1``) gives ``k - 1`` logits relative to the reference; a row over a token subset of size
``m`` costs ``ceil(m / (k - 1))`` requests per prompt, and the matrix needs more prompts and tokens than the
hidden size. Centring on a reference token subtracts one fixed row of ``W``, which keeps the rank at most
``hidden``.

Against an API that reports logprobs from the distribution *before* the bias (the provider fix), the biased
tokens no longer surface in ``top_logprobs``, so ``topk`` gets nothing. The adaptive mode ``sampled`` biases
one token per request so that it is the one generated, and reads the logprob reported for the generated
token: before the bias that is ``l_t - logsumexp(l)``, one logit per request, relative to the reference
token asked the same way. A row of ``m`` tokens then costs ``m`` requests per prompt instead of
``m / (k - 1)``. Rounded logprobs add an error of up to half a unit of the last decimal to every entry.

Defences this measures (see the gateway's logprob policy): logprobs reported from the distribution before
``logit_bias`` (the returned values then hide the bias and the biased tokens do not surface), caps on
``top_logprobs``, rounding or noise, and logprob budgets.

Pure math (row plans, stitching, the spectrum, subspace error) is separate from the HTTP loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from distillguard.errors import UserError

BIAS = 100.0  # the largest logit_bias OpenAI-compatible APIs accept
MODES = ("topk", "sampled")


# --------------------------------------------------------------------------------------------------
# Pure parts


def query_plan(tokens: Sequence[int], reference: int, k: int) -> list[list[int]]:
    """Token groups for one prompt: each holds the reference and up to ``k - 1`` other tokens."""
    if k < 2:
        raise UserError(f"top_logprobs must be >= 2 for the extraction, got {k}")
    others = [int(t) for t in tokens if int(t) != int(reference)]
    return [[int(reference), *others[i : i + k - 1]] for i in range(0, len(others), k - 1)]


def relative_logits(
    entries: dict[int, float], reference: int, biased: Sequence[int] | None = None
) -> dict[int, float]:
    """Logits relative to the reference token from one response's ``{token id: logprob}``.

    With ``biased`` (the request's group), only those tokens count: a group of fewer than ``k`` tokens (the
    last of a plan) leaves room in ``top_logprobs`` for tokens the request did not bias, and their logprobs
    lack the bias (their difference to the reference is off by ``-BIAS``)."""
    if reference not in entries:
        return {}
    ref = entries[reference]
    keep = None if biased is None else {int(t) for t in biased}
    return {t: lp - ref for t, lp in entries.items() if t != reference and (keep is None or t in keep)}


def singular_spectrum(matrix: np.ndarray) -> np.ndarray:
    """Singular values of the centred logit matrix (rows: prompts, columns: tokens), largest first."""
    m = np.asarray(matrix, dtype=np.float64)
    return np.linalg.svd(m - m.mean(axis=0, keepdims=True), compute_uv=False)


def hidden_size(spectrum: np.ndarray, *, floor: float = 1e-9) -> tuple[int, float]:
    """The hidden size as the number of singular values before the largest drop between consecutive ones,
    and that drop as a ratio. The last drop is left out: it only marks the matrix's own smaller side."""
    s = np.asarray(spectrum, dtype=np.float64)
    s = np.maximum(s, floor * max(float(s[0]) if s.size else 1.0, floor))
    if s.size < 3:
        raise UserError("too few singular values to find a drop: collect more prompts and tokens")
    drops = np.log(s[:-1] / s[1:])
    i = int(np.argmax(drops[:-1])) if drops.size > 1 else 0
    return i + 1, float(math.exp(drops[i]))


def subspace_error(matrix: np.ndarray, projection: np.ndarray, dim: int) -> float:
    """Sine of the largest principal angle between the top-``dim`` right singular vectors of the centred
    matrix and the column space of ``projection`` (the true projection rows of the same tokens minus the
    reference token's row, as the logits were taken relative to it): 0 is exact."""
    from scipy.linalg import subspace_angles

    m = np.asarray(matrix, dtype=np.float64)
    _, _, vt = np.linalg.svd(m - m.mean(axis=0, keepdims=True), full_matrices=False)
    w = np.asarray(projection, dtype=np.float64)
    return float(np.sin(np.max(subspace_angles(vt[:dim].T, w))))


# --------------------------------------------------------------------------------------------------
# The attack over HTTP


@dataclass
class ExtractionReport:
    hidden_size: int
    drop_ratio: float
    prompts: int
    tokens: int
    queries: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    spectrum: list[float] = field(default_factory=list)
    true_hidden_size: int | None = None
    subspace_error: float | None = None
    stopped_by_budget: bool = False
    missing_entries: int = 0

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["exact"] = None if self.true_hidden_size is None else self.hidden_size == self.true_hidden_size
        return out


def _token_map(tokenizer) -> tuple[dict[bytes, int], set[int]]:
    """Exact bytes -> id for the attacker's copy of the tokenizer, and the ids whose bytes are ambiguous."""
    from distillguard.lm.tokens import is_byte_level, token_bytes

    byte_level = is_byte_level(tokenizer)
    table: dict[bytes, int] = {}
    clash: set[int] = set()
    for idx in sorted(tokenizer.get_vocab().values()):
        b = token_bytes(tokenizer, idx, byte_level)
        if b in table:
            clash |= {idx, table[b]}
        else:
            table[b] = idx
    return table, clash


async def _ask(client, model: str, prompt: str, group: list[int], k: int, sem, stats: dict):
    """One request; ``k == 0`` (mode ``sampled``) reads the generated token's logprob, else the top ``k``."""
    async with sem:
        try:
            r = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0,
                logprobs=True, top_logprobs=k, logit_bias={str(t): BIAS for t in group},
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - any refusal or failure is counted, the attack goes on
            stats["failed"] += 1
            stats.setdefault("errors", []).append(f"{type(exc).__name__}: {str(exc)[:160]}")
            return None
    stats["queries"] += 1
    if r.usage is not None:
        stats["prompt_tokens"] += r.usage.prompt_tokens
        stats["completion_tokens"] += r.usage.completion_tokens
    content = (r.choices[0].logprobs.content or []) if r.choices and r.choices[0].logprobs else []
    if not content:
        return []
    if k == 0:
        return [(bytes(content[0].bytes or content[0].token.encode()), content[0].logprob)]
    return [(bytes(e.bytes or e.token.encode()), e.logprob) for e in content[0].top_logprobs]


async def _run(
    url: str, api_key: str, model: str | None, prompts: Sequence[str], tokens: list[int], reference: int,
    k: int, table: dict[bytes, int], budget: int | None, concurrency: int,
) -> tuple[np.ndarray, dict]:  # fmt: skip
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key=api_key, max_retries=2, timeout=60)
    if model is None:
        models = await client.models.list()
        model = models.data[0].id
    # topk: groups of k tokens with the reference; sampled (k == 0): one token per request
    plan = query_plan(tokens, reference, k) if k else [[t] for t in tokens]
    stats = {"queries": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0, "missing": 0}
    sem = asyncio.Semaphore(max(1, concurrency))
    col = {t: j for j, t in enumerate(tokens)}
    rows = np.full((len(prompts), len(tokens)), np.nan)
    asked = 0
    stopped = False
    try:
        for i, prompt in enumerate(prompts):
            if budget is not None and asked + len(plan) > budget:
                stopped = True
                rows = rows[:i]
                break
            asked += len(plan)
            answers = await asyncio.gather(*(_ask(client, model, prompt, g, k, sem, stats) for g in plan))
            groups = plan
            if not k:  # each answer is the generated token's logprob, if it is the biased one: one row
                answers = [[x for g, ans in zip(plan, answers, strict=True)
                            for x in ans or [] if table.get(x[0]) == g[0]]]  # fmt: skip
                groups = [[reference, *(t for t in tokens if t != reference)]]
            for group, ans in zip(groups, answers, strict=True):
                seen = {table[b]: lp for b, lp in ans or [] if b in table}
                rel = relative_logits(seen, reference, group)
                stats["missing"] += sum(1 for t in group[1:] if t not in rel)
                for t, v in rel.items():
                    if t in col:
                        rows[i, col[t]] = v
            rows[i, col[reference]] = 0.0
    finally:
        await client.close()
    stats["stopped_by_budget"] = stopped
    return rows, stats


def extract_logits(
    url: str,
    *,
    tokenizer_dir: str,
    prompts: Sequence[str],
    api_key: str = "none",
    model: str | None = None,
    n_tokens: int = 200,
    top_logprobs: int = 20,
    mode: str = "topk",
    budget: int | None = None,
    concurrency: int = 8,
    seed: int = 0,
    local_model: str | None = None,
) -> ExtractionReport:
    """Run the attack against ``url`` and report the hidden size it finds (and, with ``local_model``, the
    true one and the subspace error of the recovered projection)."""
    from distillguard.lm.io import load_tokenizer

    if not url.lower().startswith(("http://", "https://")):
        raise UserError(f"the extraction attacks an API: --teacher must be an http(s) URL, got {url!r}")
    if len(prompts) < 3:
        raise UserError("the extraction needs at least 3 prompts (more than the hidden size to find it)")
    if mode not in MODES:
        raise UserError(f"unknown extraction mode {mode!r}; choose one of {', '.join(MODES)}")
    tok, _ = load_tokenizer(tokenizer_dir)
    table, clash = _token_map(tok)
    special = set(getattr(tok, "all_special_ids", []) or [])
    candidates = sorted(set(table.values()) - clash - special)
    rng = np.random.default_rng(seed)
    chosen = [int(t) for t in rng.choice(candidates, size=min(n_tokens, len(candidates)), replace=False)]
    reference = chosen[0]
    t0 = time.time()
    rows, stats = asyncio.run(
        _run(
            url,
            api_key,
            model,
            prompts,
            chosen,
            reference,
            top_logprobs if mode == "topk" else 0,
            table,
            budget,
            concurrency,
        )  # fmt: skip
    )
    keep_cols = ~np.isnan(rows).any(axis=0)
    matrix = rows[:, keep_cols]
    matrix = matrix[~np.isnan(matrix).any(axis=1)]
    if min(matrix.shape) < 3:
        detail = f" (first error: {stats['errors'][0]})" if stats.get("errors") else ""
        raise UserError(
            f"the API returned too few usable logprobs to build the logit matrix: {matrix.shape[0]} prompts "
            f"x {matrix.shape[1]} tokens{detail}"
        )
    spec = singular_spectrum(matrix)
    h, ratio = hidden_size(spec)
    report = ExtractionReport(
        hidden_size=h, drop_ratio=ratio, prompts=int(matrix.shape[0]), tokens=int(matrix.shape[1]),
        queries=stats["queries"], failed=stats["failed"], prompt_tokens=stats["prompt_tokens"],
        completion_tokens=stats["completion_tokens"], wall_s=round(time.time() - t0, 2),
        spectrum=[float(x) for x in spec[:400]], stopped_by_budget=stats["stopped_by_budget"],
        missing_entries=stats["missing"],
    )  # fmt: skip
    if local_model is not None:
        from distillguard.lm.io import load_model_and_tokenizer

        m, _ = load_model_and_tokenizer(local_model)
        w = m.get_output_embeddings().weight.detach().double().numpy()
        cols = np.array(chosen)[keep_cols]
        report.true_hidden_size = int(w.shape[1])
        report.subspace_error = subspace_error(matrix, w[cols] - w[reference], min(h, w.shape[1]))
    return report

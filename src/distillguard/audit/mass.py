"""The open-mode "mass" reading: the suspect's whole next-token distribution, beside our own model's.

A student of our watermarked answers learns to put a little more probability on the tokens our key favours
after each window (KGW: the green list; Gumbel: tokens with large keyed uniforms). At a small share of its
training data the shift rarely changes its top-1 token, which is all the other open readings score; it
shows in the probabilities. And a student of our answers resembles our model in everything else, so the
difference between its distribution and our model's holds the shift without the language both share.

**Statistic.** Read key-independent texts (our *unwatermarked* answers) through the suspect and through
our model (the reference: its weights do not depend on the key, which only acts when it samples). For
each distinct window ``w`` (the ``h`` tokens before a completion position) average both next-token
distributions over the window's occurrences and keep the suspect's ``k`` most likely tokens. With the
per-tuple detection score ``x_t(w)`` (1 if green for KGW, ``-ln(1 - u)`` for Gumbel) and the weight
``a_t(w) = pbar_suspect_t(w) - pbar_ours_t(w)``, the statistic is

    T = sum_w sum_{t in top_k(w)} a_t(w) * x_t(w)

how much more than our model the suspect expects our key's tokens after each window. Without a
reference the weights are the suspect's probabilities alone (a weaker test: the shared language's
variance stays in).

**Null and p-value.** H0: the suspect does not depend on our key. Neither do the texts nor our model's
weights, so the weights ``a`` and the kept tokens are fixed given the suspect, while the scores of the
distinct ``(w, t)`` tuples are i.i.d. under the key (Bernoulli(gamma) or Exp(1): the random-key model of
every other test here). ``T`` is a weighted sum of independent scores with known distributions, and the
Chernoff bound ``P[T >= t] <= min_l exp(-l t) prod E[exp(l a x)]`` is a valid p-value (conservative by a
factor that grows slowly with the evidence: about 10 at p ~ 1e-6). transformers' fixed-size green lists
(``hf_compat``) draw each window's green tokens without replacement, which for weights of both signs can
make the tail heavier than independent draws would; there the bound uses Hoeffding's (1963, Thm 4)
comparison with draws *with* replacement from the window's weights. Windows whose keyed list is the same
for every key (compat mode, after token 0) are left out.

**Why not our watermarked texts.** A model that copies from its context (any LM reading a text) predicts
tokens it has just read; in our watermarked texts those carry the key. Our plain texts carry nothing of it.

**Through an API (closed mode).** An API that serves ``top_logprobs`` gives the same distributions at
the positions of the suspect's *own* answers to our probes (:class:`ServedAnswers`, :func:`served_table`):
the windows are its answers', the weights its listed probabilities minus our model's probabilities of the
same tokens in the same contexts. Under H0 the answers do not depend on the key, so neither do the weights,
and the argument above holds as it stands, **provided the probes do not depend on the key** either (our
pool of prompts). A probe that holds our own watermarked text (a ledger probe can: a pasted answer) breaks
that: a suspect that copies from it puts weight on what our key chose. Windows that occur in a probe are
barred, and so are the first ``h`` positions of each answer (their windows hold the chat template, after
which our own answers were generated), but that is not enough: the first token of a fragment pasted from
the middle of an answer was chosen under the list of the window before it, which the probe does not show,
and a suspect that restarts the fragment anywhere puts weight on that token after every window, that one
included. A review's simulation of the template case alone (a copier that repeats a whole pasted answer,
h = 2, before the template's windows were barred) found 6.5% false claims at 0.01. So the runner reads
served logprobs only with probes from the pool, never from a ledger; the barriers stay as a defence for
a pool that holds pasted text by mistake. (The top-1 closed reading keeps its level with such fragments:
``tests/test_audit_closed_null.py``; a weighted sum has no such margin, since the weights can be
negative.)

The sequential stop of the closed mode is driven by our key's scores of the same answers: when it stops
early, which answers were read depends on the key, and the served p-value under that key is not counted
(under another key, a retired one, it is independent of the stop).

Pure and vectorised: arrays in, numbers out; the forward passes are ``audit.forward``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from distillguard.audit.radioactivity import DecoyNull, decoy_keys, tuple_ids
from distillguard.lm.tokens import entry_bytes
from distillguard.watermark.schemes import WatermarkSpec, token_scores

TOP_K = 64  # tokens kept per window (and per position before averaging): the mass past them is negligible


@dataclass(frozen=True)
class WindowMass:
    """The averaged next-token distributions of the distinct windows: tuple ``i`` is token ``tokens[i]``
    after window ``windows[rows[i]]`` with weight ``weights[i]`` (its mean probability)."""

    windows: np.ndarray  # [W, h] int64
    counts: np.ndarray  # [W] occurrences of each window in the texts read
    rows: np.ndarray  # [M] window row of each tuple
    tokens: np.ndarray  # [M] int64
    weights: np.ndarray  # [M] float64

    @property
    def n_windows(self) -> int:
        return int(len(self.windows))

    def without(self, drop: np.ndarray) -> WindowMass:
        """The same with the windows flagged in ``drop`` ([W] bool) removed."""
        keep_rows = ~np.asarray(drop, dtype=bool)
        new_index = np.cumsum(keep_rows) - 1
        keep = keep_rows[self.rows]
        return WindowMass(
            self.windows[keep_rows], self.counts[keep_rows], new_index[self.rows[keep]], self.tokens[keep],
            self.weights[keep],
        )  # fmt: skip


def window_means(
    windows: np.ndarray,
    top_idx: np.ndarray,
    top_p: np.ndarray,
    k: int = TOP_K,
    reference_p: np.ndarray | None = None,
) -> WindowMass:
    """Average the distributions ``(top_idx[n], top_p[n])`` observed after ``windows[n]`` per distinct
    window and keep each window's ``k`` most likely tokens (ties: the smaller token id). With
    ``reference_p`` (the reference model's probabilities of the same tokens at the same positions) the
    weight of each kept tuple is the suspect's mean probability minus the reference's."""
    windows = np.asarray(windows, dtype=np.int64)
    top_idx = np.asarray(top_idx, dtype=np.int64)
    if not len(windows):
        e = np.zeros(0, dtype=np.int64)
        return WindowMass(windows.reshape(0, windows.shape[-1] if windows.ndim == 2 else 1), e, e, e, e * 1.0)
    _, first, row = np.unique(tuple_ids(windows), return_index=True, return_inverse=True)
    counts = np.bincount(row)
    pair = (np.repeat(row, top_idx.shape[1]) << 32) | top_idx.reshape(-1)
    keys, inv = np.unique(pair, return_inverse=True)
    rows, tokens = keys >> 32, keys & 0xFFFFFFFF

    def mean(p: np.ndarray) -> np.ndarray:
        return np.bincount(inv, weights=np.asarray(p, dtype=np.float64).reshape(-1)) / counts[rows]

    ours = mean(top_p)
    weight = ours if reference_p is None else ours - mean(reference_p)
    order = np.lexsort((tokens, -ours, rows))  # by window, then most likely first
    rows, tokens, weight = rows[order], tokens[order], weight[order]
    start = np.searchsorted(rows, np.arange(len(counts)))
    keep = np.arange(len(rows)) - start[rows] < k
    return WindowMass(windows[first], counts, rows[keep], tokens[keep], weight[keep])


def read_table(suspect, ours, seqs, plens, window: int, pad: int) -> WindowMass:
    """The suspect's averaged next-token distributions after each distinct ``window``-token window of the
    continuations of ``seqs`` (each after its ``plens`` prompt tokens), weighted against our model ``ours``
    (None: the suspect's probabilities alone). One pass of each model; no window is dropped yet."""
    from distillguard.audit.forward import next_token_topk

    win, idx, p, ref = next_token_topk(suspect, seqs, plens, window, pad, TOP_K, ours)
    return window_means(win, idx, p, reference_p=ref)


def keyed(spec: WatermarkSpec, table: WindowMass) -> tuple[WindowMass, int]:
    """The table without the windows whose keyed list is the same under every key (compat mode), and how
    many were left out."""
    drop = spec.impl.degenerate(spec, table.windows)
    return (table.without(drop) if np.any(drop) else table), int(np.sum(drop))


def total(spec: WatermarkSpec, mass: WindowMass) -> float:
    """The statistic ``T = sum_i weights_i * x_i`` under ``spec``'s key."""
    if not len(mass.tokens):
        return 0.0
    w = torch.from_numpy(np.ascontiguousarray(mass.windows[mass.rows]))
    x = token_scores(spec, w, torch.from_numpy(mass.tokens)).numpy()
    return float(np.dot(mass.weights, x))


def chernoff_log_sf(
    spec: WatermarkSpec, weights: np.ndarray, t: float, rows: np.ndarray | None = None, iters: int = 64
) -> float:
    """ln of the Chernoff bound on ``P[sum_i a_i x_i >= t]`` under the null (0 when ``t`` is at most the
    null mean): ``min_l K(l) - l t`` over ``l >= 0``, with ``K`` the null log-MGF of the weighted sum
    (:func:`_cumulant`). Weights of either sign; ``rows`` (the window of each weight) is needed in
    transformers-compatible mode, where one window's green tokens are drawn without replacement."""
    a = np.asarray(weights, dtype=np.float64)
    if not a.size:
        return 0.0
    cum, slope = _cumulant(spec, a, rows)
    if t <= slope(0.0):
        return 0.0
    if spec.impl.name == "gumbel":  # Exp(1)'s log-MGF is finite for l * a < 1; the slope grows without bound
        top = a.max()
        hi = (1.0 - 1e-12) / top if top > 0 else 1.0
        if slope(hi) < t:  # no positive weight: the bound keeps falling with l; any l gives a valid bound
            return min(0.0, cum(hi) - hi * t)
    else:  # the slope rises towards the largest value T can take; past it (or at it) the bound keeps falling
        hi = 1.0
        while slope(hi) < t and hi < 1e8:
            hi *= 2.0
    lo = 0.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if slope(mid) < t:
            lo = mid
        else:
            hi = mid
    return min(0.0, cum(lo) - lo * t, cum(hi) - hi * t)


def _cumulant(spec: WatermarkSpec, a: np.ndarray, rows: np.ndarray | None):
    """``(K, K')``: the null log-MGF of ``T = sum_i a_i x_i`` and its derivative, as functions of ``l``.

    Native KGW: independent Bernoulli(g) scores, ``K = sum ln(1 - g + g e^(l a))``. Gumbel: independent
    Exp(1), ``K = -sum ln(1 - l a)``. transformers-compatible KGW: each window's green list is ``m = g V``
    tokens drawn without replacement; Hoeffding (1963, Thm 4) bounds its MGF by that of ``m`` draws with
    replacement, ``(1 + (1/V) sum_i (e^(l a_i) - 1))^m`` per window (``i`` over the window's weights).
    """
    mu = spec.impl.null_rate(spec)
    if spec.impl.name == "gumbel":
        return (lambda lam: float(-np.log1p(-lam * a).sum())), (
            lambda lam: float(np.dot(a, 1.0 / (1.0 - lam * a)))
        )
    if not spec.hf_compat:
        lq, lp, logit = np.log1p(-mu), np.log(mu), np.log(mu / (1.0 - mu))

        def cum(lam: float) -> float:
            return float(np.logaddexp(lq, lp + lam * a).sum())

        def slope(lam: float) -> float:
            return float(np.dot(a, 0.5 * (1.0 + np.tanh(0.5 * (lam * a + logit)))))

        return cum, slope
    if rows is None:
        raise ValueError("transformers-compatible mode needs the window of each weight")
    vocab = spec.require_vocab()
    m = round(mu * vocab)
    order = np.argsort(rows, kind="stable")
    r, w = np.asarray(rows)[order], a[order]
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    sizes = np.diff(np.r_[starts, len(r)])
    spread = np.repeat(np.arange(len(starts)), sizes)
    with np.errstate(divide="ignore"):  # the window's other tokens: weight 0, e^0 = 1 (none: -inf)
        rest = np.log(np.maximum(vocab - sizes, 0) / vocab)

    def per_window(lam: float) -> np.ndarray:  # ln(1 + (1/V) sum (e^(l a) - 1)) for each window
        b = lam * w - np.log(vocab)
        top = np.maximum(np.maximum.reduceat(b, starts), rest)
        total = np.add.reduceat(np.exp(b - top[spread]), starts) + np.exp(rest - top)
        return top + np.log(total)

    def cum(lam: float) -> float:
        return float(m * per_window(lam).sum())

    def slope(lam: float) -> float:
        b = lam * w - np.log(vocab)
        return float(m * np.dot(w, np.exp(b - per_window(lam)[spread])))

    return cum, slope


def z_score(spec: WatermarkSpec, weights: np.ndarray, t: float) -> float:
    """``(T - E0 T) / sd0(T)``: the statistic in null standard deviations, for display."""
    mu = spec.impl.null_rate(spec)
    var = mu * (1 - mu) if spec.impl.name != "gumbel" else 1.0
    sd = float(np.sqrt(var * np.sum(np.square(weights))))
    return (t - mu * float(np.sum(weights))) / sd if sd > 0 else 0.0


def mass_null(spec: WatermarkSpec, mass: WindowMass, n_decoys: int, seed: int = 0) -> DecoyNull:
    """Our key against ``n_decoys`` random keys on the same weighted tuples; each key's score is its
    statistic in null standard deviations (:func:`z_score`)."""

    def one(s: WatermarkSpec) -> tuple[float, float]:
        t = total(s, mass)
        return z_score(s, mass.weights, t), chernoff_log_sf(s, mass.weights, t, mass.rows)

    ours = one(spec)
    decoys = [one(spec.with_key(k)) for k in decoy_keys(n_decoys, seed, avoid=spec.key)]
    scores = np.asarray([d[0] for d in decoys], dtype=np.float64)
    logs = np.asarray([d[1] for d in decoys], dtype=np.float64)
    return DecoyNull(mass.n_windows, ours[0], ours[1], scores, logs)


def null_text(spec: WatermarkSpec, texts: str = "our unwatermarked texts") -> str:
    """H0 of the mass reading, for people."""
    score = (
        f"green with probability {spec.impl.null_rate(spec):.6g}" if spec.impl.name != "gumbel" else "Exp(1)"
    )
    return (
        "the suspect never trained on text watermarked with our key: the weights (its mean next-token "
        "probabilities after each distinct window of "
        f"{texts}) do not depend on the key, and "
        f"the score of each weighted (window, token) tuple is independently {score}; P[T >= t] is bounded "
        "by Chernoff's inequality"
    )


# --------------------------------------------------------------------------------------------------
# The same reading through an API: the suspect's own answers, with the top-k logprobs it returns


@dataclass
class ServedAnswers:
    """The suspect's answers to closed-mode probes, each with the ``top_logprobs`` its API returned, in our
    token ids: what the closed-mode mass reading scores (:func:`served_table`).

    ``seqs[i]`` is probe ``i``'s prompt (our chat template) followed by the answer's tokens; the answer
    starts at ``starts[i]``; ``top_idx[i]`` / ``top_p[i]`` ([len(answer), k]) list the suspect's most likely
    tokens at each answer position with their probabilities (-1 / 0 where it listed fewer, or a token
    outside our vocabulary). ``prompts`` are the probes alone (our tokens), the barrier."""

    k: int
    seqs: list[list[int]]
    starts: list[int]
    top_idx: list[np.ndarray]
    top_p: list[np.ndarray]
    prompts: list[list[int]]
    without_logprobs: int = 0
    unmapped: int = 0
    malformed: int = 0

    @classmethod
    def empty(cls, k: int) -> ServedAnswers:
        return cls(int(k), [], [], [], [], [])

    def add(self, table: dict[bytes, int], prompt: list[int], probe: list[int], logprobs) -> bool:
        """Add one answer (OpenAI's chat ``logprobs.content`` list) asked with our prompt tokens ``prompt``
        (the probe alone: ``probe``). Returns False (and counts why) when it cannot be read: no logprobs,
        or a chosen token outside our vocabulary (the suspect's tokenizer is not ours)."""
        self.prompts.append(list(probe))
        if not logprobs:
            self.without_logprobs += 1
            return False
        try:  # a hostile API writes this JSON: anything but well-formed entries is counted and skipped
            chosen = [table.get(entry_bytes(e)) for e in logprobs]
            listed = [
                [(table.get(entry_bytes(alt)), _prob(alt["logprob"])) for alt in e.get("top_logprobs") or []]
                for e in logprobs
            ]
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
            self.malformed += 1
            return False
        if any(c is None for c in chosen):
            self.unmapped += 1
            return False
        idx = np.full((len(chosen), self.k), -1, dtype=np.int64)
        p = np.zeros((len(chosen), self.k), dtype=np.float64)
        for j, alts in enumerate(listed):
            c = 0
            for token, prob in alts:
                if c == self.k:
                    break
                if token is not None and token not in idx[j, :c]:
                    idx[j, c], p[j, c] = token, prob
                    c += 1
        self.seqs.append(list(prompt) + chosen)  # type: ignore[arg-type]
        self.starts.append(len(prompt))
        self.top_idx.append(idx)
        self.top_p.append(p)
        return True

    def bar(self, probes) -> None:
        """Probes asked without an answer (failed requests): barriers all the same."""
        self.prompts.extend(list(p) for p in probes)

    @property
    def answers(self) -> int:
        return len(self.seqs)

    @property
    def positions(self) -> int:
        return sum(len(s) - st for s, st in zip(self.seqs, self.starts, strict=True))


def _prob(logprob) -> float:
    """A listed logprob as a probability; anything that is not a finite number <= 0 is malformed."""
    x = float(logprob)
    if not math.isfinite(x) or x > 1e-6:
        raise ValueError(f"not a logprob: {logprob!r}")
    return math.exp(min(x, 0.0))


def prompt_windows(prompts: list[list[int]], width: int) -> np.ndarray:
    """The ids (:func:`tuple_ids`) of every ``width``-token window in ``prompts``: the barrier."""
    parts = [
        np.asarray(p, dtype=np.int64)[np.arange(width, len(p) + 1)[:, None] + np.arange(-width, 0)[None, :]]
        for p in prompts
        if len(p) >= width
    ]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(tuple_ids(np.concatenate(parts)))


def served_table(
    served: ServedAnswers, width: int, reference_p: list[np.ndarray] | None
) -> tuple[WindowMass, int]:
    """The suspect's averaged listed probabilities after each distinct ``width``-token window of its own
    answers, weighted against our model's (``reference_p[i]``: our probabilities of ``top_idx[i]``, 0 in
    unlisted slots, as :func:`~distillguard.audit.forward.listed_probs` gives them), without
    the windows that occur in any probe (the barrier) and those that reach back into the prompt (the
    first ``width`` positions: their windows hold the chat template's tokens, after which our own answers
    were generated too). Returns the table and the answer positions the barrier removed."""
    wins, idx, p, ref = [], [], [], []
    offsets = np.arange(-width, 0)
    for i, (s, start) in enumerate(zip(served.seqs, served.starts, strict=True)):
        first = start + width  # windows inside the answer: never the chat template's tokens
        if first >= len(s):
            continue
        pos = np.arange(first, len(s))
        arr = np.asarray(s, dtype=np.int64)
        wins.append(arr[pos[:, None] + offsets[None, :]])
        rows = pos - start
        idx.append(served.top_idx[i][rows])
        p.append(served.top_p[i][rows])
        if reference_p is not None:
            ref.append(reference_p[i][rows])
    if not wins:
        return window_means(np.zeros((0, width), np.int64), np.zeros((0, 1), np.int64), np.zeros((0, 1))), 0
    win, top_idx, top_p = np.concatenate(wins), np.concatenate(idx), np.concatenate(p)
    keep = ~np.isin(tuple_ids(win), prompt_windows(served.prompts, width))
    ref_p = np.concatenate(ref)[keep] if ref else None
    # unlisted slots (-1) hold probability 0 on both sides (ServedAnswers, listed_probs): weight 0 on token 0
    top_idx = np.maximum(top_idx, 0)
    table = window_means(win[keep], top_idx[keep], top_p[keep], k=max(served.k, TOP_K), reference_p=ref_p)
    return table, int((~keep).sum())

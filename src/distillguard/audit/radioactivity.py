"""Watermark radioactivity: did the suspect learn from text carrying our watermark? (pure math, no I/O)

A model fine-tuned on text from our watermarked model picks up a preference for the tokens our key made
"green" after each window (Sander, Fernandez et al., 2024). We test for that preference in two ways:

* **closed model** (the suspect is only an API): prompt it, score everything it writes as *one corpus*,
  each (window, token) tuple once (corpus dedup), never a tuple that occurs in the prompts, and optionally
  only tuples whose window occurs in our own watermarked texts (the "filter": windows where our watermark
  had a chance to leave a trace). Under H0 (the suspect's text does not depend on our key) every distinct
  tuple is green with probability ``gamma`` independently of the others: ``S ~ Binomial(N, gamma)``, an
  exact tail (Gumbel: ``Gamma(N, 1)``). The filter set depends on our key, and is still no evidence: a
  window first occurs in one of our texts when the token before it is sampled under the lists of *earlier*
  windows, and a text that never reaches it never uses its list, so whether a window is kept is decided by
  the other windows' lists (and the sampling noise), which the PRF makes independent of its own, as long
  as the end of a text counts as a position (:func:`own_windows`: whether a text stops after a window is
  decided under that window's list). This gives each scored tuple the null mean; the tuples' joint law
  given the kept set is not proven binomial (the set's other windows can depend on a kept window's list),
  and is checked by simulation instead. The prompts' tuples are a barrier, so a probe that holds our own
  text (a ledger probe can: a pasted answer) makes a suspect that copies it no more green. Both are
  calibrated over 1000 keys in ``tests/test_audit_closed_null.py``, with the innocent suspects that stress
  them.
* **open model** (local weights): read texts teacher-forced and score the suspect's top-1 prediction at
  each position with the window of preceding *true* tokens, deduplicated. Two readings:

  - our **plain** (unwatermarked) answers to the probe prompts (default). The texts do not depend on the
    key, so under H0 the predictions do not either: the null is exact. A model trained on our marked
    outputs prefers green continuations wherever it learnt them, and that preference shows here.
  - our **watermarked** texts (the published reading). One more exclusion is then required and is easy to
    miss: a tuple that occurs in the texts being read is already biased towards green by our own sampling,
    so a perfectly clean model that merely predicts our actual next token (or copies an earlier
    continuation of the same window) would look radioactive. We score only predicted tuples absent from
    every text read. What remains are tokens our sampler did *not* pick, whose green probability given the
    texts is at most ``gamma``: valid, but conservative, and weaker than the plain reading (the memorised
    tuples it could have used are exactly the excluded ones).

The incremental :class:`TupleStream` does the corpus dedup batch by batch, so that a sequential test can
see each new tuple once, in order; on a single batch it selects exactly what
:func:`distillguard.watermark.detect.prepare` selects for the corpus aggregate. Scoring and p-values reuse
:mod:`distillguard.watermark.detect` (``key_scores``, ``aggregate_log_p``) through a ``Prepared``.

The **decoy-key null** scores the same tuples with many random keys. Their analytic p-values must look
uniform, and ours must be more extreme than every decoy before we claim anything: when the analytic
p-value says "1e-9" but several random keys score as well as ours, the analytic null does not describe
this text (repetition the dedup missed, a tokenizer artefact) and the claim is refused. What decoys cannot
see: our own texts depend on our key only, so in open mode a reading that inherits the watermark from the
texts it reads looks null under every decoy; the open readings' validity rests on their own arguments.

Windows that the scheme calls *degenerate* (transformers' lefthash after token 0: the same list under every
key) are never scored, in either mode: a suspect trained on anyone's lefthash-marked text prefers that list
whatever the key, and the decoys, scoring the same tuples, would not notice. They are counted and reported.

Everything scheme-specific (scores, exact tails, intervals, likelihood ratios, wording) comes from the scheme
object ``spec.impl``; nothing here branches on the scheme's name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sst

from distillguard.audit.sequential import EProcess
from distillguard.audit.verdict import TestResult
from distillguard.watermark import hashing, stats
from distillguard.watermark.detect import Prepared, aggregate_log_p, extract_tuples, key_scores
from distillguard.watermark.schemes import WatermarkSpec, token_scores

_ID_KEY = 0x5EED_A0D1_7000_0001  # fixed, public: tuple identity only, not secrecy
DECOY_TAIL = 0.01  # decoys below this analytic p-value are counted for the calibration check
CALIBRATION_LEVEL = 1e-3  # an excess of small decoy p-values this unlikely refuses the claim


def tuple_ids(windows: np.ndarray, tokens: np.ndarray | None = None) -> np.ndarray:
    """A stable 64-bit identity per (window, token) row (or per window when ``tokens`` is None).

    Unlike bit-packing, the identity does not depend on the other rows of the batch, so ids from different
    batches can be compared (collision chance about 2**-64 per pair).
    """
    w = np.asarray(windows, dtype=np.int64)
    cols = w if tokens is None else np.concatenate([w, np.asarray(tokens, dtype=np.int64)[:, None]], axis=1)
    if cols.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return hashing.window_seeds_np(_ID_KEY, np.ascontiguousarray(cols).view(np.uint64)).view(np.int64)


def _first_of(ids: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Row indices (ascending) of the first ``ok`` occurrence of each id."""
    idx = np.flatnonzero(ok)
    if not idx.size:
        return idx
    _, first = np.unique(ids[idx], return_index=True)
    return np.sort(idx[first])


class TupleStream:
    """Corpus-level (window, token) dedup that can be fed batch by batch.

    A tuple is scored the first time it is offered, unless it was seen before as a scored tuple or in a
    barrier (prompt tuples: never evidence), or lies in ``excluded``, or (with ``allowed_windows``) its
    window is not in the filter set, or (with ``spec``) its window is degenerate for the scheme: those are
    counted once each in ``degenerate``. Rows accumulate in scoring order; :meth:`prepared` hands them to
    the watermark detector.
    """

    def __init__(
        self,
        width: int,
        *,
        allowed_windows: np.ndarray | None = None,
        excluded: np.ndarray | None = None,
        spec: WatermarkSpec | None = None,
    ):
        if width < 1:
            raise ValueError(f"window width must be >= 1, got {width}")
        self.width = width
        self.allowed = None if allowed_windows is None else np.unique(allowed_windows)
        self.excluded = None if excluded is None else np.unique(excluded)
        self.spec = spec
        self.degenerate = 0  # distinct degenerate tuples skipped
        self._degenerate_text: list[np.ndarray] = []
        self._seen = np.zeros(0, dtype=np.int64)
        self._windows: list[np.ndarray] = []
        self._tokens: list[np.ndarray] = []
        self._text: list[np.ndarray] = []
        self.texts = 0
        self.offered = 0  # candidate tuples offered (before exclusion and dedup)
        self.completion_tokens = 0

    def add_candidates(
        self,
        windows: np.ndarray,
        tokens: np.ndarray,
        text: np.ndarray,
        *,
        barrier: np.ndarray | None = None,
        n_texts: int = 0,
    ) -> np.ndarray:
        """Offer candidate tuples (``text`` counts from 0 within this batch); return the accepted rows."""
        windows = np.asarray(windows, dtype=np.int64).reshape(-1, self.width)
        tokens = np.asarray(tokens, dtype=np.int64)
        ids = tuple_ids(windows, tokens)
        ok = ~np.isin(ids, self._seen)
        if barrier is not None and barrier.size:
            ok &= ~np.isin(ids, barrier)
        if self.excluded is not None:
            ok &= ~np.isin(ids, self.excluded)
        if self.allowed is not None:
            ok &= np.isin(tuple_ids(windows), self.allowed)
        rows = _first_of(ids, ok)
        new_seen = ids[rows] if barrier is None else np.concatenate([ids[rows], barrier])
        if self.spec is not None:  # skipped, but seen: each distinct degenerate tuple is counted once
            bad = self.spec.impl.degenerate(self.spec, windows[rows])
            self._degenerate_text.append(np.asarray(text, dtype=np.int64)[rows[bad]] + self.texts)
            self.degenerate += int(bad.sum())
            rows = rows[~bad]
        self._windows.append(windows[rows])
        self._tokens.append(tokens[rows])
        self._text.append(np.asarray(text, dtype=np.int64)[rows] + self.texts)
        self._seen = np.union1d(self._seen, new_seen)
        self.texts += n_texts
        self.offered += len(ids)
        return rows

    def add_texts(self, completions: Sequence[Sequence[int]], prompts: Sequence[Sequence[int]]) -> int:
        """Offer the completions of a batch of texts (their prompts are a barrier). Returns tuples added."""
        tuples, num_tokens = extract_tuples(completions, prompts, self.width)
        win = tuples.windows.numpy()
        tok = tuples.tokens.numpy()
        barrier = tuple_ids(win[tuples.in_prompt], tok[tuples.in_prompt])
        comp = ~tuples.in_prompt
        self.completion_tokens += int(num_tokens.sum())
        rows = self.add_candidates(
            win[comp], tok[comp], tuples.text[comp], barrier=barrier, n_texts=len(completions)
        )
        return len(rows)

    def __len__(self) -> int:
        return sum(len(t) for t in self._tokens)

    def last(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows and tokens of the ``k`` most recently accepted tuples (in scoring order)."""
        w, t = self.arrays()
        return torch.from_numpy(w[len(t) - k :]), torch.from_numpy(t[len(t) - k :])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._tokens:
            return np.zeros((0, self.width), dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(self._windows), np.concatenate(self._tokens)

    def prepared(self) -> Prepared:
        """The accepted tuples as the detector's ``Prepared`` (every row counts for the corpus aggregate)."""
        w, t = self.arrays()
        text = np.concatenate(self._text) if self._text else np.zeros(0, dtype=np.int64)
        n = max(self.texts, int(text.max()) + 1 if text.size else 0)
        deg = np.concatenate(self._degenerate_text) if self._degenerate_text else np.zeros(0, dtype=np.int64)
        n = max(n, int(deg.max()) + 1 if deg.size else 0)
        return Prepared(
            width=self.width,
            windows=torch.from_numpy(np.ascontiguousarray(w)),
            tokens=torch.from_numpy(np.ascontiguousarray(t)),
            text=text,
            corpus=np.ones(len(t), dtype=bool),
            count=np.bincount(text, minlength=n),
            num_tokens=np.zeros(n, dtype=np.int64),
            dedup=True,
            degenerate=np.bincount(deg, minlength=n),
            degenerate_corpus=self.degenerate,
        )


def own_windows(
    completions: Sequence[Sequence[int]], prompts: Sequence[Sequence[int]] | None, width: int
) -> np.ndarray:
    """Window ids of every completion position of our own watermarked texts, the end of each text included:
    the closed-mode filter set.

    The end counts as a position: a window that ends a text was reached like any other, and whether our
    sampler stopped there (EOS) or went on was decided under that window's own list. Counting only windows
    that a stored token follows would keep a window more often when its list favoured going on, which
    makes an innocent suspect's continuations of it greener than gamma (measured in
    ``tests/test_audit_closed_null.py``)."""
    end = 0  # a token after the last one: the final window becomes a tuple's (only windows are kept)
    tuples, _ = extract_tuples([[*c, end] for c in completions], prompts, width)
    keep = ~tuples.in_prompt
    return np.unique(tuple_ids(tuples.windows.numpy()[keep]))


def reading_candidates(
    sequences: Sequence[Sequence[int]],
    prompt_lens: Sequence[int],
    predictions: Sequence[Sequence[int]],
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Open-mode candidates: ``(windows, predicted tokens, text index, excluded tuple ids)``.

    ``sequences[i]`` is prompt + completion (our watermarked text), ``predictions[i][t]`` the suspect's
    top-1 token for position ``t`` given ``sequences[i][:t]`` (entry 0 unused). Candidates sit at the
    completion positions with a full window; every true (window, token) tuple of every text is excluded.
    Degenerate windows are left to the :class:`TupleStream` the candidates are offered to (built with the
    spec), which skips and counts them.
    """
    wins, toks, text, true_ids = [], [], [], []
    offsets = np.arange(-width, 0)
    for i, (seq, plen, pred) in enumerate(zip(sequences, prompt_lens, predictions, strict=True)):
        s = np.asarray(seq, dtype=np.int64)
        p = np.asarray(pred, dtype=np.int64)
        if len(p) != len(s):
            raise ValueError(f"text {i}: {len(p)} predictions for {len(s)} tokens")
        pos = np.arange(width, len(s))
        if not pos.size:
            continue
        w = s[pos[:, None] + offsets[None, :]]
        true_ids.append(tuple_ids(w, s[pos]))
        comp = pos >= max(int(plen), width)
        wins.append(w[comp])
        toks.append(p[pos[comp]])
        text.append(np.full(int(comp.sum()), i, dtype=np.int64))
    if not wins:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros((0, width), dtype=np.int64), empty, empty, empty
    return (
        np.concatenate(wins),
        np.concatenate(toks),
        np.concatenate(text),
        np.unique(np.concatenate(true_ids)),
    )


# --------------------------------------------------------------------------------------------------
# Scores, decoys, series


def score_values(spec: WatermarkSpec, prep: Prepared) -> np.ndarray:
    """Per-tuple scores (1/0 green, or -ln(1-u)) for our key, in scoring order."""
    if not len(prep.tokens):
        return np.zeros(0)
    return token_scores(spec, prep.windows, prep.tokens).numpy()


def decoy_keys(n: int, seed: int, avoid: int | str | None = None) -> list[int]:
    """``n`` distinct random 62-bit integer keys (integers so that transformers-compatible mode works)."""
    rng = np.random.default_rng([int(seed), 0xDEC0])
    keys: list[int] = []
    seen = set()
    while len(keys) < n:
        k = int(rng.integers(1, 2**62))
        if k in seen or str(k) == str(avoid):
            continue
        seen.add(k)
        keys.append(k)
    return keys


@dataclass
class DecoyNull:
    """Our key against ``len(decoy_log_p)`` random keys on the very same tuples."""

    n: int  # tuples scored
    our_score: float  # per-tuple mean score (green fraction for KGW)
    our_log_p: float
    decoy_scores: np.ndarray
    decoy_log_p: np.ndarray

    @property
    def decoys(self) -> int:
        return int(self.decoy_log_p.size)

    @property
    def empirical_p(self) -> float:
        """``(1 + #decoys at least as extreme) / (1 + #decoys)``: exact for exchangeable keys."""
        at_least = int(np.sum(self.decoy_log_p <= self.our_log_p))
        return (1 + at_least) / (1 + self.decoys)

    @property
    def extreme(self) -> bool:
        """Our key beats every decoy."""
        return self.decoys == 0 or bool(np.all(self.decoy_log_p > self.our_log_p))

    @property
    def small_decoys(self) -> int:
        return int(np.sum(self.decoy_log_p < math.log(DECOY_TAIL)))

    @property
    def calibration_log_p(self) -> float:
        """ln P[Bin(decoys, 0.01) >= #decoys with analytic p < 0.01]: small means the null is broken."""
        if not self.decoys:
            return 0.0
        return float(stats.binomial_log_sf(self.small_decoys, self.decoys, DECOY_TAIL)[0])

    @property
    def calibrated(self) -> bool:
        return self.calibration_log_p > math.log(CALIBRATION_LEVEL)

    @property
    def ks_p_value(self) -> float | None:
        """Kolmogorov-Smirnov test of the decoy p-values against uniform (display; p-values are discrete)."""
        if self.decoys < 5:
            return None
        return float(sst.kstest(np.exp(self.decoy_log_p), "uniform", alternative="greater").pvalue)

    def to_dict(self) -> dict:
        return {
            "decoys": self.decoys,
            "our_score": self.our_score,
            "our_log10_p": self.our_log_p / stats.LN10,
            "decoy_scores": [float(x) for x in self.decoy_scores],
            "decoy_log10_p": [float(x) for x in self.decoy_log_p / stats.LN10],
            "empirical_p_value": self.empirical_p,
            "our_key_most_extreme": self.extreme,
            "decoys_below_0.01": self.small_decoys,
            "decoy_calibration_p_value": math.exp(self.calibration_log_p),
            "decoy_ks_p_value": self.ks_p_value,
        }


def decoy_null(spec: WatermarkSpec, prep: Prepared, n_decoys: int, seed: int = 0) -> DecoyNull:
    """Score the prepared tuples with our key and ``n_decoys`` random keys (same dedup, same tuples)."""
    n = prep.aggregate_count

    def one(s: WatermarkSpec) -> tuple[float, float]:
        _, total = key_scores(s, prep)
        return (total / n if n else 0.0), aggregate_log_p(s, prep)

    our_score, our_log_p = one(spec)
    scores, logs = [], []
    for k in decoy_keys(n_decoys, seed, avoid=spec.key):
        sc, lp = one(spec.with_key(k))
        scores.append(sc)
        logs.append(lp)
    return DecoyNull(n, our_score, our_log_p, np.asarray(scores), np.asarray(logs))


def _checkpoints(n: int, points: int) -> np.ndarray:
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.clip(np.round(np.geomspace(1, n, num=min(points, n))), 1, n).astype(np.int64))


def series(spec: WatermarkSpec, values: np.ndarray, points: int = 120, level: float = 0.95) -> dict:
    """Evidence against tuples scored (for plots): exact log10 p, green rate and its exact CI.

    For KGW the rate is the green fraction with a Clopper-Pearson interval; for Gumbel the mean score
    (1 under H0) with the exact interval from ``S ~ Gamma(n, mean)``.
    """
    from distillguard.audit.sequential import anytime_log_p, log_e_path

    impl = spec.impl
    n_at = _checkpoints(len(values), points)
    cum = np.concatenate([[0.0], np.cumsum(values)])
    s = cum[n_at]
    log_p = impl.log_sf(spec, s, n_at) if n_at.size else np.zeros(0)
    lo, hi = impl.rate_interval(spec, s, n_at, level)
    null_rate = impl.null_rate(spec)
    anytime = anytime_log_p(log_e_path(impl, values, gamma=null_rate))
    return {
        "tokens_scored": [int(x) for x in n_at],
        "log10_p": [float(x) for x in log_p / stats.LN10],
        "log10_p_anytime": [float(anytime[i - 1] / stats.LN10) for i in n_at],
        "green_rate": [float(x) for x in (s / np.maximum(n_at, 1))],
        "green_rate_ci": [[float(a), float(b)] for a, b in zip(lo, hi, strict=True)],
        "null_rate": null_rate,
        "ci_level": level,
        "statistic": impl.statistic,
    }


def tokens_to_reach(values: np.ndarray, spec: WatermarkSpec, log10_target: float = -6.0) -> int | None:
    """The fewest tuples after which the exact fixed-sample p-value is below ``10**log10_target``.

    Evaluated at every prefix with the regularised incomplete functions directly: values that underflow
    to 0 are far below any sensible target, so the deep-tail summation is not needed here.
    """
    if not len(values):
        return None
    n = np.arange(1, len(values) + 1, dtype=np.int64)
    log_p = spec.impl.log_sf(spec, np.cumsum(values), n, deep=False)
    hit = np.flatnonzero(log_p / stats.LN10 <= log10_target)
    return int(hit[0] + 1) if hit.size else None


# --------------------------------------------------------------------------------------------------
# The test result


def _null(spec: WatermarkSpec) -> str:
    never = "the suspect never trained on text watermarked with our key"
    return f"{never}: {spec.impl.null(spec)} (scored tuples are distinct)"


def radioactivity_test(
    mode: str,
    spec: WatermarkSpec,
    prep: Prepared,
    decoys: DecoyNull,
    *,
    eprocess: EProcess | None = None,
    filtered: bool = False,
    reading: str = "plain",
    details: dict | None = None,
    caveats: Sequence[str] = (),
    null: str | None = None,
    statistic_name: str | None = None,
) -> TestResult:
    """The radioactivity test for ``mode`` ("closed" or "open") on prepared tuples, with its guards.

    With ``eprocess`` (a budgeted, sequentially stopped audit) the reported p-value is the anytime-valid
    one; the exact fixed-sample p-value is kept in the details for reference only, since it is not valid
    under optional stopping.
    """
    n = prep.aggregate_count
    exact = decoys.our_log_p
    log_p = exact if eprocess is None else max(eprocess.log_p, exact)
    notes = [
        f"window of {spec.window} token(s): radioactivity weakens as the window grows (4+ tokens barely "
        "transfer through fine-tuning)",
        "paraphrasing the training data, or neutralising the watermark when the suspect samples, brings "
        "p-values back to ~0.5: no evidence here is not evidence of no distillation",
    ]
    if mode == "closed" and reading == "mass":
        notes.append(
            "read the suspect's own answers with the top logprobs its API returned: each distinct window's "
            "listed next-token probabilities (averaged over its occurrences), minus our model's, are scored "
            "as the suspect's extra expected score after it; windows that occur in a probe are never scored "
            "(the suspect may copy its prompt); the p-value is a Chernoff bound (valid, conservative)"
        )
    elif mode == "closed":
        notes.append("tuples present in the prompts are never scored (the suspect may copy its prompt)")
    elif reading == "first-occurrence":
        notes.append(
            "read our watermarked texts: each window is scored only at its first occurrence in corpus order, "
            "where the suspect cannot have seen what our key made of it; the number scored depends on the "
            "texts, so the p-value is the anytime-valid one"
        )
    elif reading == "mass":
        notes.append(
            "read our unwatermarked answers: each distinct window's next-token distribution (averaged over "
            "its occurrences, top 64 tokens) is scored as the suspect's expected score after it; the "
            "p-value is a Chernoff bound on the weighted sum (valid, conservative: about one decade at "
            "p ~ 1e-6)"
        )
    elif reading == "watermarked":
        notes.append(
            "read our watermarked texts: only predicted tuples absent from every text read are scored (a "
            "clean model predicting our actual next token would otherwise inherit its watermark); this "
            "makes the test conservative"
        )
    else:
        notes.append(
            "read our unwatermarked answers: the texts do not depend on the key, so the suspect's "
            "predictions are scored as they are (exact null), but a tuple memorised only from our marked "
            "outputs shows up only if the suspect generalised the preference"
        )
    impl = spec.impl
    notes.extend(impl.caveats(spec))
    if prep.degenerate_corpus:
        notes.append(f"{prep.degenerate_corpus} degenerate tuple(s) not scored: {impl.degenerate_note}")
    if filtered:
        notes.append("closed mode filtered to windows that occur in our own watermarked texts")
    if decoys.decoys < 100:
        notes.append(f"only {decoys.decoys} decoy keys: the empirical check is coarse")
    notes.extend(caveats)
    claim, refusal, veto = True, None, True
    if not decoys.decoys:
        claim = False
        refusal = "no decoy keys were scored: the analytic null was not checked on this text"
    elif not decoys.calibrated:
        claim = False
        refusal = (
            f"{decoys.small_decoys} of {decoys.decoys} decoy keys have analytic p < {DECOY_TAIL}: the "
            "analytic null does not describe this text"
        )
    elif not decoys.extreme:  # the decoys' resolution, not a broken null: no claim, no veto
        claim, veto = False, False
        refusal = (
            f"our key is not more extreme than every decoy key (empirical p = {decoys.empirical_p:.3g} "
            f"vs analytic p = {math.exp(exact):.3g})"
        )
    info = {
        "mode": mode,
        "watermark": spec.describe(),
        "scored_tuples": n,
        "score": decoys.our_score * n,
        "rate": decoys.our_score,
        "null_rate": impl.null_rate(spec),
        "z_score": float(impl.z(spec, decoys.our_score * n, n)),
        "exact_p_value": math.exp(exact),
        "exact_log10_p_value": exact / stats.LN10,
        "p_value_kind": "anytime-valid (sequential)" if eprocess is not None else "exact fixed-sample",
        "decoy_null": decoys.to_dict(),
        "filtered": filtered,
        "degenerate_windows_skipped": prep.degenerate_corpus,
    }
    if mode == "open" or reading != "plain":
        info["reading"] = reading
    if eprocess is not None:
        info["sequential"] = eprocess.describe()
    info |= details or {}
    return TestResult(
        name=f"radioactivity_{mode}",
        null=null or _null(spec),
        statistic=decoys.our_score,
        statistic_name=statistic_name or impl.statistic,
        n=n,
        log_p=float(min(log_p, 0.0)),
        caveats=notes,
        details=info,
        claim_allowed=claim,
        refusal=refusal,
        veto=veto,
        usable=n > 0,
    )

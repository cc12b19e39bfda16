"""A toy watermarked world for the null and power tests of the open readings (vectorised over keys).

A random bigram "teacher" over a small vocabulary samples texts with a watermark (KGW or Gumbel, context
width h); suspects read the texts teacher-forced and predict from the prefix. Many keys at once: the
window of row ``r`` is keyed as ``(key_token[r], w_1..w_h)`` with one fixed master key and a spec of width
``h + 1``. The seed chain of :func:`distillguard.watermark.hashing.window_seeds` first mixes the key token
into ``mix64(master)``; since ``mix64`` is a bijection, that state is ``mix64(k64)`` for exactly one 64-bit
key ``k64``, so every key token *is* a distinct 64-bit watermark key of width h, and one call of the real
scheme code serves all keys.

Texts are stored as the audit stores them: prompt + completion, EOS cut. Rows are key-major (row
``k * texts + i`` is text ``i`` of key ``k``), right-padded with -1. Predictions ``P[r, t]`` (t = 0..T) are
the suspect's top-1 token after ``S[r, :t]``; ``t = len`` is the end of the text, as the runner reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distillguard.audit.reading import first_occurrence_candidates
from distillguard.audit.sequential import anytime_log_p, log_e_path, log_e_values
from distillguard.watermark.schemes import WatermarkSpec, gumbel_choose, gumbel_uniforms, kgw_green_mask

EOS = 0  # also the padding of batched (left-padded) generation, as for tokenizers without a pad token


def bigram_logits(rng, vocab: int, scale: float = 1.5) -> np.ndarray:
    """A random bigram teacher: ``logits[prev]`` is the next-token logit row."""
    return rng.gumbel(size=(vocab, vocab)) * scale


def spec_anytime_log_p(spec: WatermarkSpec, values) -> float:
    """ln of the anytime-valid p-value of one key's scores, in scoring order."""
    return float(anytime_log_p(log_e_path(spec.scheme, values, gamma=spec.impl.null_rate(spec)))[-1])


@dataclass
class Corpus:
    spec: WatermarkSpec  # the master spec, width h + 1 (key token first)
    keys: np.ndarray  # [K] key tokens
    texts: int  # texts per key
    seqs: np.ndarray  # [K * texts, T] prompt + completion, -1 past the end
    lens: np.ndarray  # [K * texts]
    plens: np.ndarray  # [K * texts]
    repeated: int = 0  # texts that are verbatim copies of an earlier text of their key

    @property
    def h(self) -> int:
        return self.spec.context_width - 1

    def keyed(self, rows: np.ndarray, windows: np.ndarray) -> torch.Tensor:
        """Windows ``[N, h]`` of ``rows`` with each row's key token in front: the spec's windows."""
        return torch.from_numpy(np.concatenate([np.repeat(self.keys, self.texts)[rows, None], windows], 1))

    def text(self, r: int) -> np.ndarray:
        return self.seqs[r, : self.lens[r]]


def watermark_spec(scheme: str, h: int, vocab: int, rng) -> WatermarkSpec:
    return WatermarkSpec(
        scheme=scheme,
        key=int(rng.integers(1, 2**62)),
        gamma=0.25,
        delta=2.0,
        context_width=h + 1,
        vocab_size=vocab,
    )


def sample_corpus(
    spec: WatermarkSpec,
    logits: np.ndarray,
    rng,
    *,
    keys: int,
    texts: int,
    prompt: int,
    length: int,
    variable: bool = False,
    repeat: float = 0.0,
    pad: int = EOS,
    prompt_token: int | None = None,
) -> Corpus:
    """``texts`` texts per key for ``keys`` random keys, sampled with the watermark, all rows at once.

    Fixed (``variable=False``): prompts of ``prompt`` tokens, ``length`` completion tokens, EOS never drawn.
    Variable: prompts of 1..``prompt`` tokens, left-padded with EOS like batched ``generate`` (so a prompt
    shorter than h is keyed on a padded window, as the real processor does), EOS drawn with the watermark
    (completions of 0..``length`` tokens, EOS cut), and each text after the first replaced with probability
    ``repeat`` by a copy of an earlier text of the same key (a stored answer repeated verbatim). ``pad``: the
    token short prompts are left-padded with (EOS, which never occurs in a stored text, unless told);
    ``prompt_token``: every prompt is this token repeated (one prompt asked again and again).
    """
    h = spec.context_width - 1
    vocab = logits.shape[0]
    if prompt < h:
        raise ValueError("the batch is as wide as its longest prompt: keep it >= h so every step is keyed")
    key_tokens = rng.choice(2**62, size=keys, replace=False).astype(np.int64)
    rows = keys * texts
    plens = rng.integers(1, prompt + 1, rows) if variable else np.full(rows, prompt)
    x = np.zeros((rows, prompt + length), dtype=np.int64)
    x[:, :prompt] = rng.integers(1, vocab, (rows, prompt)) if prompt_token is None else prompt_token
    x[:, :prompt][np.arange(prompt)[None, :] < (prompt - plens)[:, None]] = pad  # left padding
    keycol = np.repeat(key_tokens, texts)[:, None]
    done = np.zeros(rows, dtype=bool)
    for c in range(prompt, prompt + length):
        z = logits[x[:, c - 1]].copy()
        if not variable:
            z[:, EOS] = -np.inf
        win = torch.from_numpy(np.concatenate([keycol, x[:, c - h : c]], 1))
        if spec.scheme == "kgw":
            z += spec.delta * kgw_green_mask(spec, win).numpy()
            tok = np.argmax(z + rng.gumbel(size=z.shape), axis=1)
        else:
            probs = torch.softmax(torch.from_numpy(z), -1)
            tok = gumbel_choose(gumbel_uniforms(spec, win), probs).numpy()
        tok = np.where(done, EOS, tok)
        x[:, c] = tok
        done |= tok == EOS
    comp = x[:, prompt:]
    clens = np.where((comp == EOS).any(1), (comp == EOS).argmax(1), length)
    lens = plens + clens
    cols = np.arange(prompt + length)[None, :]
    seqs = np.take_along_axis(x, np.minimum(cols + (prompt - plens)[:, None], prompt + length - 1), 1)
    seqs[cols >= lens[:, None]] = -1
    repeated = 0
    for i in range(1, texts if repeat else 0):  # in corpus order, so a copy may be of a copy
        take = np.flatnonzero(rng.random(keys) < repeat) * texts + i
        src = take - 1 - rng.integers(0, i, len(take))  # an earlier text of the same key
        seqs[take], lens[take], plens[take] = seqs[src], lens[src], plens[src]
        repeated += len(take)
    return Corpus(spec, key_tokens, texts, seqs, lens, plens, repeated)


# --------------------------------------------------------------------------------------------------
# Suspects: [rows, T + 1] top-1 predictions from the prefix only


def _shifted(c: Corpus, j: int) -> np.ndarray:
    """``A[r, t] = S[r, t - j]`` (-2 before the start), for t = 0..T."""
    rows, width = c.seqs.shape
    out = np.full((rows, width + 1), -2, dtype=np.int64)
    out[:, j:] = c.seqs[:, : width + 1 - j]
    return out


def _valid(c: Corpus, p: np.ndarray) -> np.ndarray:
    t = np.arange(p.shape[1])[None, :]
    return np.where((t >= 1) & (t <= c.lens[:, None]), p, -1)


def plain_reader(c: Corpus, logits: np.ndarray) -> np.ndarray:
    """The innocent teacher itself: the bigram argmax (never saw the key)."""
    last = _shifted(c, 1)
    return _valid(c, logits.argmax(1)[np.maximum(last, 0)])


def copier_reader(c: Corpus, logits: np.ndarray, context: int) -> np.ndarray:
    """Induction copier: what followed the latest earlier occurrence of the last ``context`` tokens in this
    text, else the bigram argmax (the innocent reader that breaks naive scoring)."""
    width = c.seqs.shape[1] + 1
    eq = np.ones((c.seqs.shape[0], width, width), dtype=bool)
    for j in range(1, context + 1):
        a = _shifted(c, j)
        eq &= a[:, :, None] == a[:, None, :]
    t = np.arange(width)
    eq &= (t[None, :] < t[:, None]) & (t[None, :] >= context) & (t[:, None] >= context)
    latest = width - 1 - np.argmax(eq[:, :, ::-1], -1)
    src = np.where(eq.any(-1), latest, -1)  # [rows, t]: the latest earlier match
    followed = np.take_along_axis(np.concatenate([c.seqs, c.seqs[:, -1:]], 1), np.maximum(src, 0), 1)
    return _valid(c, np.where(src >= 0, followed, plain_reader(c, logits)))


def start_copier_reader(c: Corpus, logits: np.ndarray, pad: int) -> np.ndarray:
    """Copies the text's start: where the last ``k < h`` tokens are the text's first ``k`` and the ones before
    them ``pad`` (a left-padded start), predicts the text's token ``k``; else the bigram argmax. Innocent (it
    never saw the key; the pad token is the tokenizer's), and it reads exactly the windows our sampler used
    at the start of a text whose prompt is shorter than h."""
    width = c.seqs.shape[1] + 1
    out = plain_reader(c, logits)
    t = np.arange(width)[None, :]
    for k in range(c.h - 1, 0, -1):  # the longest match wins
        head = [_shifted(c, j) for j in range(k + 1, c.h + 1)]
        match = (t > k) & (t <= c.lens[:, None]) & (c.plens[:, None] <= k)
        for j in range(len(head)):
            match &= head[j] == pad
        for j in range(1, k + 1):
            match &= _shifted(c, j) == c.seqs[:, k - j : k - j + 1]
        out = np.where(match, c.seqs[:, k : k + 1], out)
    return _valid(c, out)


def radioactive_reader(c: Corpus, logits: np.ndarray, bias: float) -> np.ndarray:
    """A suspect that learned our key's preference: the bigram logits plus ``bias`` times each token's
    watermark score under the window (KGW: green; Gumbel: ``-ln(1 - u)``)."""
    width = c.seqs.shape[1] + 1
    out = plain_reader(c, logits)
    r, t = np.nonzero((np.arange(width)[None, :] >= c.h) & (np.arange(width)[None, :] <= c.lens[:, None]))
    win = np.stack([_shifted(c, j)[r, t] for j in range(c.h, 0, -1)], 1)
    keyed = c.keyed(r, win)
    if c.spec.scheme == "kgw":
        pref = kgw_green_mask(c.spec, keyed).double().numpy()
    else:
        pref = -np.log1p(-gumbel_uniforms(c.spec, keyed).numpy())
    prev = _shifted(c, 1)[r, t]
    out[r, t] = np.argmax(logits[prev] + bias * pref, 1)
    return out


# --------------------------------------------------------------------------------------------------
# The first-occurrence reading, per key


@dataclass
class Candidates:
    rows: np.ndarray  # [N] corpus row of each scored position (key-major, corpus order within a key)
    pos: np.ndarray  # [N] position in the text (len = the end of the text)
    windows: np.ndarray  # [N, h]
    starts: np.ndarray  # [K + 1] offsets of each key's candidates
    considered: int


def first_occurrences(c: Corpus) -> Candidates:
    """The reading's candidates for every key (one call per key: the key's texts are its corpus)."""
    rows, pos, wins, starts, considered = [], [], [], [0], 0
    for k in range(len(c.keys)):
        base = k * c.texts
        texts = [c.text(base + i) for i in range(c.texts)]
        at = [np.arange(len(s) + 1) for s in texts]  # "predictions" that name their own position
        w, p, i, n = first_occurrence_candidates(texts, c.plens[base : base + c.texts], at, c.h)
        rows.append(base + i)
        pos.append(p)
        wins.append(w)
        starts.append(starts[-1] + len(p))
        considered += n
    return Candidates(
        np.concatenate(rows), np.concatenate(pos), np.concatenate(wins), np.array(starts), considered
    )


def every_position(c: Corpus) -> Candidates:
    """Naive scoring: every completion position (end included), repeated windows too; one group."""
    t = np.arange(c.seqs.shape[1] + 1)[None, :]
    rows, pos = np.nonzero((t >= np.maximum(c.plens, c.h)[:, None]) & (t <= c.lens[:, None]))
    windows = np.stack([_shifted(c, j)[rows, pos] for j in range(c.h, 0, -1)], 1)
    return Candidates(rows, pos, windows, np.array([0, len(rows)]), len(rows))


def scores(c: Corpus, cand: Candidates, preds: np.ndarray) -> np.ndarray:
    """The scheme's score of each candidate's predicted token under its own key."""
    y = torch.from_numpy(preds[cand.rows, cand.pos])
    return c.spec.impl.token_scores(c.spec, c.keyed(cand.rows, cand.windows), y).numpy()


def pooled_z(spec: WatermarkSpec, values: np.ndarray) -> float:
    """z of all scores pooled against the null mean (KGW Bernoulli(gamma), Gumbel Exp(1))."""
    m = spec.impl.null_rate(spec)
    var = m * (1.0 - m) if spec.scheme == "kgw" else 1.0
    return float((values.sum() - m * len(values)) / np.sqrt(var * len(values)))


def per_key_exact_log_p(c: Corpus, cand: Candidates, values: np.ndarray) -> np.ndarray:
    """ln of each key's fixed-sample tail p-value (the reference the report keeps), 0 for no scores."""
    count = np.diff(cand.starts)
    total = np.bincount(np.repeat(np.arange(len(count)), count), weights=values, minlength=len(count))
    return np.where(count > 0, c.spec.impl.log_sf(c.spec, total, count), 0.0)


def per_key_log_p(c: Corpus, cand: Candidates, values: np.ndarray) -> np.ndarray:
    """ln of each key's anytime-valid p-value (its scores in corpus order), all keys in one pass."""
    starts = cand.starts
    keys = len(starts) - 1
    sizes = np.diff(starts)
    group = np.repeat(np.arange(keys), sizes)
    cum = np.cumsum(values)
    before = np.concatenate([[0.0], cum])[starts[:-1]]
    total = cum - before[group]
    count = np.arange(len(values)) - starts[:-1][group] + 1
    log_e = log_e_values(c.spec.scheme, count, total, gamma=c.spec.impl.null_rate(c.spec))
    best = np.zeros(keys)
    np.maximum.at(best, group, log_e)
    return -best


def pasted_world(keys: int, texts: int = 6):
    """Our watermarked answers (a bigram teacher over 256 tokens, KGW h 1) under ``keys`` keys, ``texts``
    each: the probes of the worlds where a ledger probe holds our own text. Returns (logits, corpus)."""
    rng = np.random.default_rng(11)
    logits = bigram_logits(rng, 256, scale=2.0)
    spec = watermark_spec("kgw", 1, 256, rng)
    return logits, sample_corpus(spec, logits, rng, keys=keys, texts=texts, prompt=2, length=24), rng

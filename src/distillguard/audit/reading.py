"""Open-model reading of our *watermarked* texts: score each window at its first occurrence (pure math).

The suspect's weights read our texts teacher-forced; at every completion position ``t`` it predicts a token
``y_t`` from the prefix ``x_<t``, and we score the tuple ``(w_t, y_t)`` where ``w_t`` is the window of the
``h`` true tokens before ``t``. Our texts were sampled with our key, so the prefix depends on the key, and a
clean model can inherit the watermark from it: a model that copies the continuation that followed the same
window earlier (an induction head) predicts a token our sampler already pushed towards green. The
"watermarked" reading of :mod:`.radioactivity` therefore drops every tuple present in the texts, which is
valid but throws most of the signal away.

**First-occurrence reading.** Put the texts in a fixed order (the order they were generated, before any
reading) and score position ``t`` only when its window ``w_t`` occurs nowhere earlier in that corpus order:
not earlier in the same text, not in any earlier text, as the window of any position (prompt positions
included, which is conservative). Each window is then scored at most once.

*Why this is valid.* Model the keyed hash as a random function: the green list (KGW) or the uniforms
(Gumbel) of a window are independent of those of every other window. Let ``F_t`` be everything known when
position ``t`` is reached in corpus order: every earlier text in full, the prefix of this one, the suspect's
predictions so far, and the scores of the tuples scored so far. Our sampler used the green list of a window
only at positions having that window, with one exception: batched generation left-pads a prompt shorter than
h, so position ``k < h`` of such a text (``plen <= k <= len``) was drawn with ``(pad,) * (h - k) + text[:k]``,
a window of no position of the stored text. Those count as occurrences too, from that position on; the pad
token is not known here, so every window of one repeated token followed by ``text[:k]`` counts (conservative:
only corpora with prompts shorter than h lose windows). ``w_t`` has no occurrence before ``t`` in corpus
order, so every token in ``F_t`` was sampled with the green lists of *other* windows: ``G(w_t)`` is
independent of ``F_t``. Texts are
sampled independently of each other, so the later texts (which may contain ``w_t`` and depend on
``G(w_t)``) are not in ``F_t``. The suspect is not trained on our key (H0) and reads only the prefix, so
``y_t`` is ``F_t``-measurable. Hence ``P[y_t green | F_t] = gamma`` exactly (KGW; for Gumbel ``-ln(1-u)`` is
Exp(1) given ``F_t``), and the scores in corpus order form a sequence whose every element is null-distributed
given the past. That is exactly the condition of the e-process in :mod:`.sequential`, whose p-value is valid
at any data-dependent sample size (Ville's inequality).

Why not the fixed-sample binomial tail: the number of scored tuples is a property of the whole corpus, and
the later texts depend on the green lists of windows scored earlier, so ``N`` is not independent of the
scores; the anytime-valid p-value does not need it to be. The exact binomial p-value is kept in the report
for reference only. Caveat: in transformers-compatible mode the green lists of all windows come from one
fixed-size permutation per previous token, which the argument treats as independent draws (as the closed
mode does); degenerate windows (previous token 0) are never scored.

Checked over 1000 random keys each (``tests/test_audit_first_occurrence*.py``): KGW with h = 1, 2, 3 and
Gumbel with h = 1, 2, 3, fixed- and variable-length texts (texts shorter than h + 1, prompts shorter than h,
verbatim repeats), innocent readers that copy earlier continuations or the text's padded start: the false
positive rate stays at or below alpha (0.01, 0.001), and a suspect that learned the bias is caught.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distillguard.audit.radioactivity import tuple_ids


def first_occurrence_candidates(
    sequences: Sequence[Sequence[int]],
    prompt_lens: Sequence[int],
    predictions: Sequence[Sequence[int]],
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Candidates of the first-occurrence reading, in corpus order.

    ``sequences[i]`` is prompt + completion, ``predictions[i][t]`` the suspect's top-1 token for position
    ``t`` given ``sequences[i][:t]``. Returns ``(windows [N, h], predicted tokens [N], text index [N],
    completion positions considered)``: one row per completion position whose window occurs at no earlier
    position of the corpus (texts taken in the given order).

    The end of a text is a position too: our sampler drew its end (EOS, which the stored completion leaves
    out) with the green list of the text's last window. That window is therefore recorded as seen, and with
    ``len(sequences[i]) + 1`` predictions (the last one made after the final token) the end position is
    scored like any other. Scoring it keeps the decision to score a position a function of the prefix alone:
    a position exists when the prefix does, whatever our sampler then drew there.

    One vectorised pass over the whole corpus (a window is fresh where its id first occurs in the flat,
    corpus-ordered list of windows), so the cost is ``O(n log n)`` in the corpus size.
    """
    if width < 1:
        raise ValueError(f"window width must be >= 1, got {width}")
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    plens = np.asarray(prompt_lens, dtype=np.int64).reshape(-1)
    if len(plens) != len(seqs):
        raise ValueError(f"{len(plens)} prompt lengths for {len(seqs)} texts")
    ends = []  # each text's predictions, len + 1 of them (-1: none for the end)
    for i, (s, pred) in enumerate(zip(seqs, predictions, strict=True)):
        p = np.asarray(pred, dtype=np.int64)
        if len(p) not in (len(s), len(s) + 1):
            raise ValueError(f"text {i}: {len(p)} predictions for {len(s)} tokens")
        ends.append(p if len(p) == len(s) + 1 else np.concatenate([p, [-1]]))
    if not seqs:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros((0, width), dtype=np.int64), empty, empty, 0
    # The whole corpus at once: text i occupies flat[start[i] : start[i] + len_i + 1] (a pad for the end).
    n = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = np.concatenate([np.concatenate([s, [0]]) for s in seqs])
    pred = np.concatenate(ends)
    start = np.cumsum(n + 1) - (n + 1)
    count = np.maximum(n + 1 - width, 0)  # positions width .. len (the last one is the end of the text)
    text = np.repeat(np.arange(len(seqs), dtype=np.int64), count)
    pos = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count) + width
    at = start[text] + pos  # in corpus order
    w = flat[at[:, None] + np.arange(-width, 0)[None, :]]  # windows never reach the pad
    fresh = np.zeros(len(at), dtype=bool)
    fresh[np.unique(tuple_ids(w), return_index=True)[1]] = True  # first occurrence in corpus order
    fresh &= ~_after_padded_start(w, at, flat, start, n, plens, width)
    comp = (pos >= np.maximum(plens[text], width)) & (pred[at] >= 0)
    keep = fresh & comp
    return w[keep], pred[at[keep]], text[keep], int(comp.sum())


def _after_padded_start(w, at, flat, start, n, plens, width: int) -> np.ndarray:
    """Bool per window: it may be a left-padded window our sampler used at an earlier corpus position.

    Batched generation left-pads a prompt shorter than h, so our sampler drew position ``k < h`` of such a
    text (``plen <= k <= len``) with the window ``(pad,) * (h - k) + text[:k]``. The pad token is not known
    here, so any window made of one repeated token followed by ``text[:k]`` counts, from that position on.
    """
    out = np.zeros(len(at), dtype=bool)
    for k in range(width):
        src = np.flatnonzero((plens <= k) & (n >= k))
        if not src.size:
            continue
        head = w[:, : width - k]
        shaped = (head == head[:, :1]).all(1)
        where = start[src] + k  # the corpus position our sampler drew with the padded window
        if k == 0:  # an empty prompt: the window was the pad alone
            out |= shaped & (at > where.min())
            continue
        ids = tuple_ids(flat[start[src, None] + np.arange(k)[None, :]])
        uniq, inverse = np.unique(ids, return_inverse=True)
        earliest = np.full(len(uniq), np.iinfo(np.int64).max)
        np.minimum.at(earliest, inverse, where)
        tail = tuple_ids(w[:, width - k :])
        j = np.minimum(np.searchsorted(uniq, tail), len(uniq) - 1)
        out |= shaped & (uniq[j] == tail) & (at > earliest[j])
    return out

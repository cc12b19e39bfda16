"""Null calibration of the closed mode's two key-dependent selections, over 1000 random keys each.

The closed mode's plain null is exact: the suspect's text does not depend on our key, so every distinct
(window, token) tuple it writes is green with probability gamma. Two options make *which* tuples are scored
depend on our key or on our outputs, and each needs its own argument and its own calibration:

* **The window filter** (``--filter``): only windows that occur in our own watermarked answers are scored,
  and those answers depend on the key. Argument (h = 1; a window of h tokens is the same with tuples): a
  window w first occurs in one of our texts when the token before it is sampled, under the green lists of
  *earlier* windows; until then no step of that text used w's list, and a text that never reaches w never
  uses it. So whether w is in the filter set is decided by the green lists of other windows and the
  sampling noise, which the PRF makes independent of w's own list, provided the end of a text counts as a
  position (whether our sampler stopped after w was decided under w's list: a world where answers stop at
  an EOS drawn with the watermark checks it, and that the filter without it is caught). Each scored tuple
  (w, t) of an innocent suspect then has the null mean; that the tuples' joint law stays binomial is what
  these simulations check. The worlds below make the filter
  selective (a vocabulary larger than the texts cover, peaked bigrams that the watermark steers) and the
  suspect the hardest innocent for it: one that shares our base model, so it writes the continuations our
  teacher favours, which are the tokens whose occurrence the watermark drives.
* **Probes from the ledger** (``--probes-ledger``): the suspect is asked what the distiller's accounts asked,
  and a user turn can hold text that we wrote (a pasted answer, a conversation continued). An innocent
  suspect that copies from its prompt then writes tuples our key made green. The prompts' tuples are a
  barrier (never scored), so a copy of the prompt is never evidence; a copier's own tokens after a copied
  window are not what our sampler chose there. The world below asks with our watermarked answers as the
  prompts and the suspect is an induction copier; without the barrier it would be convicted.

Both: one-sided KS against U(0, 1) (fails below 0.01), false claims at alpha 0.01 and 0.001 (exact one-sided
binomial test, fails below 1e-3), and every scored tuple pooled over the keys (z < 4), through the audit's own
filter set (:func:`radioactivity.own_windows`) and dedup (:class:`radioactivity.TupleStream`).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from scipy import stats as sst

from distillguard.audit import radioactivity as radio
from distillguard.watermark.detect import extract_tuples
from distillguard.watermark.schemes import kgw_green_mask
from distillguard.watermark.stats import binomial_log_sf
from toy_watermark import EOS, Corpus, bigram_logits, pasted_world, sample_corpus, watermark_spec

KEYS, GAMMA = 1000, 0.25


def _sample_plain(logits: np.ndarray, rng, rows: int, prompt: int, length: int) -> np.ndarray:
    """Unwatermarked samples of the bigram teacher: the innocent that shares our base model."""
    vocab = logits.shape[0]
    x = np.zeros((rows, prompt + length), dtype=np.int64)
    x[:, :prompt] = rng.integers(1, vocab, (rows, prompt))
    for c in range(prompt, prompt + length):
        z = logits[x[:, c - 1]].copy()
        z[:, EOS] = -np.inf
        x[:, c] = np.argmax(z + rng.gumbel(size=z.shape), axis=1)
    return x


def _copier(logits: np.ndarray, rng, prompts: list[np.ndarray], length: int, copy: float) -> list[np.ndarray]:
    """An innocent induction copier: after each token, with probability ``copy``, what followed that token
    most recently in the prompt or its own answer; else a sample of the unwatermarked teacher."""
    out = []
    for p in prompts:
        follow = {int(a): int(b) for a, b in zip(p[:-1], p[1:], strict=True)}
        seq, last = [], int(p[-1])
        for _ in range(length):
            if last in follow and rng.random() < copy:
                nxt = follow[last]
            else:
                z = logits[last].copy()
                z[EOS] = -np.inf
                nxt = int(np.argmax(z + rng.gumbel(size=z.shape)))
            follow[last] = nxt
            seq.append(nxt)
            last = nxt
        out.append(np.array(seq, dtype=np.int64))
    return out


def _green(c: Corpus, k: int, windows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """KGW green flags of tuples under key ``k`` of the corpus (its key token in front of each window)."""
    keyed = c.keyed(np.full(len(tokens), k * c.texts), windows)
    return c.spec.impl.token_scores(c.spec, keyed, torch.from_numpy(tokens)).numpy()


def _texts(c: Corpus, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Key ``k``'s watermarked answers as (completions, prompts)."""
    rows = range(k * c.texts, (k + 1) * c.texts)
    return [c.text(r)[c.plens[r] :] for r in rows], [c.text(r)[: c.plens[r]] for r in rows]


def _assert_null(log_p: np.ndarray, successes: np.ndarray, trials: np.ndarray, what: str) -> None:
    p = np.exp(log_p)
    for alpha in (0.01, 0.001):
        claims = int(np.sum(p <= alpha))
        assert sst.binomtest(claims, len(p), alpha, alternative="greater").pvalue > 1e-3, (
            what,
            alpha,
            claims,
        )
    assert sst.kstest(p, "uniform", alternative="greater").pvalue > 0.01, what
    z = (successes.sum() - GAMMA * trials.sum()) / np.sqrt(GAMMA * (1 - GAMMA) * trials.sum())
    assert z < 4.0, (what, z)


def _score(stream: radio.TupleStream, c: Corpus, k: int) -> tuple[float, int, int]:
    prep = stream.prepared()
    w, t = prep.windows.numpy(), prep.tokens.numpy()
    green = int(_green(c, k, w, t).sum())
    return float(binomial_log_sf(np.array([green]), np.array([len(t)]), GAMMA)[0]), green, len(t)


@cache
def _filter_world(vocab: int, texts: int, scale: float, seed: int, eos: bool = False):
    """Our answers under 1000 keys; with ``eos``, they stop at an EOS drawn with the watermark, about as
    likely as the teacher's favourite next token (the stored answers end where EOS was drawn)."""
    rng = np.random.default_rng(seed)
    logits = bigram_logits(rng, vocab, scale=scale)
    if eos:
        logits[:, EOS] = np.quantile(logits, 1 - 1 / vocab, axis=1)
    spec = watermark_spec("kgw", 1, vocab, rng)
    ours = sample_corpus(spec, logits, rng, keys=KEYS, texts=texts, prompt=2, length=24, variable=eos)
    suspect = _sample_plain(logits, rng, 400, 2, 24)  # fixed: it never saw any key
    return logits, ours, suspect


def _radioactive(logits: np.ndarray, c: Corpus, keys: int, rows: int, bias: float, seed: int) -> np.ndarray:
    """``rows`` texts per key (key-major) of a suspect that learnt each key's lists: the teacher's logits
    plus ``bias`` on the green tokens."""
    rng = np.random.default_rng(seed)
    x = _sample_plain(logits, rng, keys * rows, 2, 24)
    keycol = np.repeat(c.keys[:keys], rows)[:, None]
    for col in range(2, x.shape[1]):
        win = torch.from_numpy(np.concatenate([keycol, x[:, col - 1 : col]], 1))
        z = logits[x[:, col - 1]] + bias * kgw_green_mask(c.spec, win).numpy()
        z[:, EOS] = -np.inf
        x[:, col] = np.argmax(z + rng.gumbel(size=z.shape), axis=1)
    return x.reshape(keys, rows, -1)


def _followed_windows(comps: list[np.ndarray], prompts: list[np.ndarray], width: int) -> np.ndarray:
    """The careless filter set: only windows that a stored token follows (the end of a text not counted)."""
    tuples, _ = extract_tuples(comps, prompts, width)
    return np.unique(radio.tuple_ids(tuples.windows.numpy()[~tuples.in_prompt]))


def _filtered(vocab: int, texts: int, scale: float, seed: int, *, eos: bool = False, radioactive: float = 0.0,
              keys: int = KEYS, windows=radio.own_windows):  # fmt: skip
    logits, c, suspect = _filter_world(vocab, texts, scale, seed, eos)
    marked = _radioactive(logits, c, keys, 100, radioactive, seed) if radioactive else None
    log_p, greens, ns, kept = (np.zeros(keys) for _ in range(4))
    for k in range(keys):
        comps, prompts = _texts(c, k)
        allowed = windows(comps, prompts, 1)
        stream = radio.TupleStream(1, allowed_windows=allowed)
        x = suspect if marked is None else marked[k]
        stream.add_texts([r[2:] for r in x], [r[:2] for r in x])
        log_p[k], greens[k], ns[k] = _score(stream, c, k)
        kept[k] = len(allowed)
    return log_p, greens, ns, kept


def test_the_window_filter_keeps_its_level_for_a_suspect_sharing_our_base():
    for vocab, texts, scale, seed, eos in (
        (512, 4, 3.0, 1, False),
        (128, 2, 4.0, 4, False),
        (512, 16, 3.0, 1, True),
    ):
        log_p, greens, ns, kept = _filtered(vocab, texts, scale, seed, eos=eos)
        assert np.median(kept) < 0.8 * vocab and ns.mean() > 50  # the filter selects, and something is scored
        _assert_null(log_p, greens, ns, f"filter V={vocab} texts={texts} eos={eos}")


def test_a_filter_that_drops_the_windows_ending_a_text_is_caught():
    """Where answers stop at EOS, whether a text goes on after a window was decided under that window's own
    list: keeping only windows that a stored token follows keeps a window more often when its list favoured
    going on, and an innocent suspect's continuations of it come out greener than gamma."""
    _, c, _ = _filter_world(512, 16, 3.0, 1, True)
    assert np.mean(c.lens - c.plens) < 12  # the answers do stop early
    log_p, greens, ns, _ = _filtered(512, 16, 3.0, 1, eos=True, windows=_followed_windows)
    z = (greens.sum() - GAMMA * ns.sum()) / np.sqrt(GAMMA * (1 - GAMMA) * ns.sum())
    assert z > 5.0, z


def test_the_window_filter_keeps_the_power_to_convict():
    log_p, _, _, _ = _filtered(512, 4, 3.0, 1, radioactive=2.0, keys=100)
    assert np.median(log_p) / np.log(10) < -3 and np.mean(log_p <= np.log(0.01)) > 0.8


@cache
def _ledger_world():
    logits, ours, rng = pasted_world(KEYS)
    answers = []  # the suspect asked our watermarked answers (prompt + completion) as its probes
    for k in range(KEYS):
        comps, prompts = _texts(ours, k)
        probes = [np.concatenate([p, q]) for p, q in zip(prompts, comps, strict=True)]
        answers.append((probes, _copier(logits, rng, probes, 48, copy=0.5)))
    return ours, answers


def _ledger_scores(barrier: bool):
    c, answers = _ledger_world()
    log_p, greens, ns = (np.zeros(KEYS) for _ in range(3))
    for k, (probes, replies) in enumerate(answers):
        stream = radio.TupleStream(1)
        if barrier:
            stream.add_texts(replies, probes)
        else:  # the careless reading: the prompts are not a barrier
            stream.add_texts(replies, [p[-1:] for p in probes])
        log_p[k], greens[k], ns[k] = _score(stream, c, k)
    return log_p, greens, ns


def test_ledger_probes_holding_our_answers_keep_the_level_for_a_copier():
    log_p, greens, ns = _ledger_scores(barrier=True)
    assert ns.min() > 50
    _assert_null(log_p, greens, ns, "ledger probes, copier")
    # the barrier is what keeps it: the same copier scored without it inherits our watermark
    log_p, greens, ns = _ledger_scores(barrier=False)
    z = (greens.sum() - GAMMA * ns.sum()) / np.sqrt(GAMMA * (1 - GAMMA) * ns.sum())
    claims = int(np.sum(log_p <= np.log(0.01)))
    assert z > 5.0 and sst.binomtest(claims, KEYS, 0.01, alternative="greater").pvalue < 1e-3


def _restarter(logits: np.ndarray, rng, probes: list[np.ndarray], length: int, restart: float):
    """An innocent suspect that, after any token, restarts the probe from its first token with probability
    ``restart`` and copies it on from there; else it samples the unwatermarked teacher."""
    out = []
    for p in probes:
        seq, last, at = [], int(p[-1]), None
        for _ in range(length):
            if at is not None and at < len(p):
                nxt, at = int(p[at]), at + 1
            elif rng.random() < restart:
                nxt, at = int(p[0]), 1
            else:
                z = logits[last].copy()
                z[EOS] = -np.inf
                nxt, at = int(np.argmax(z + rng.gumbel(size=z.shape))), None
            seq.append(nxt)
            last = nxt
        out.append(np.array(seq, dtype=np.int64))
    return out


@pytest.mark.parametrize("cut", [0, 8])
def test_ledger_probes_holding_fragments_of_our_answers_keep_the_level_for_a_restarting_copier(cut):
    """A probe that holds a fragment of our answer without the token before it (the answer pasted alone,
    ``cut`` 0, or from its middle): the fragment's first token was chosen under the list of a window the
    probe does not show, so the barrier cannot remove the tuple (that window, that token). A suspect that
    restarts the fragment after any token writes it. The level still holds: one such tuple per fragment,
    against the conservatism of everything else the copier writes (tokens our sampler did not pick)."""
    logits, c, _ = pasted_world(KEYS)
    rng = np.random.default_rng(23)
    log_p, greens, ns = (np.zeros(KEYS) for _ in range(3))
    for k in range(KEYS):
        comps, _ = _texts(c, k)
        probes = [q[cut:] for q in comps if len(q) > cut + 1]
        stream = radio.TupleStream(1)
        stream.add_texts(_restarter(logits, rng, probes, 48, restart=0.1), probes)
        log_p[k], greens[k], ns[k] = _score(stream, c, k)
    assert ns.min() > 20
    _assert_null(log_p, greens, ns, f"ledger fragments from {cut}, restarting copier")

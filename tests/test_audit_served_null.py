"""Null calibration of the closed-mode mass reading (the suspect's own answers, with the top logprobs its
API returns: ``audit.mass.served_table``), over 1000 random keys.

The reading's null needs probes that do not depend on our key (our prompt pool), and the runner never
reads served logprobs with probes from a ledger (``audit.mass``: a pasted fragment's first token was chosen
under a window the probe does not show). The barriers (windows that occur in a probe; the first positions
of each answer, whose windows reach into the chat template) defend a pool that holds our text by mistake.
The world below is such a pool, the hardest case for them: the probes are our own watermarked answers,
*whole* (their prompt included, so every window that chose a token of them is in them), and the suspect
is an innocent induction copier whose next-token distribution after a token puts half its mass on what
followed that token in the probe. Our model does not copy, so the weights (the suspect's listed
probabilities minus ours) are large exactly on the tuples our key made green. With the barrier the level
holds; without it the same copier is convicted. One-sided KS against U(0, 1) (fails below 0.01; weak
against the Chernoff bound's conservatism, so the keys' mean z is checked too), false claims at alpha
0.01 and 0.001 (exact one-sided binomial test, fails below 1e-3). A suspect that learnt each key's lists
(the teacher's logits plus a green bias) is convicted through the same reading.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from scipy import stats as sst

from distillguard.audit import mass as ms
from distillguard.lm.tokens import entry_bytes
from distillguard.watermark.schemes import kgw_green_mask
from toy_watermark import EOS, Corpus, pasted_world

KEYS, TEXTS, LISTED = 1000, 6, 20


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _answer(rng, teacher: np.ndarray, probe: np.ndarray, length: int, copy: float, bias_row=None):
    """One answer of a suspect that, after each token, copies with probability ``copy`` what followed it
    most recently (in the probe or its own answer) and else samples the teacher (plus ``bias_row(prev)``
    on its logits: a radioactive suspect). Returns the tokens and its ``LISTED`` most likely next tokens
    with their probabilities at each position, as an API lists them."""
    follow = {int(a): int(b) for a, b in zip(probe[:-1], probe[1:], strict=True)}
    last, toks, idx, prob = int(probe[-1]), [], [], []
    for _ in range(length):
        z = teacher[last] + (bias_row(last) if bias_row is not None else 0.0)
        z[EOS] = -np.inf
        p = _softmax(z)
        if last in follow:
            p = (1 - copy) * p
            p[follow[last]] += copy
        top = np.argsort(-p, kind="stable")[:LISTED]
        nxt = int(rng.choice(len(p), p=p))
        toks.append(nxt)
        idx.append(top)
        prob.append(p[top])
        follow[last] = nxt
        last = nxt
    return np.array(toks), np.array(idx), np.array(prob)


def _ours(teacher: np.ndarray, seq: np.ndarray, start: int, idx: np.ndarray) -> np.ndarray:
    """Our model's (the unwatermarked teacher's) probabilities of the listed tokens at each position."""
    z = teacher[seq[start - 1 : len(seq) - 1]].copy()
    z[:, EOS] = -np.inf
    return np.take_along_axis(_softmax(z), idx, 1)


@cache
def _world():
    teacher, ours, _ = pasted_world(KEYS, TEXTS)
    return teacher, ours


def _served(c: Corpus, teacher: np.ndarray, k: int, rng, copy: float, bias: float = 0.0):
    """Key ``k``'s probes (our watermarked answers, prompt and completion) and the suspect's answers."""
    rows = range(k * TEXTS, (k + 1) * TEXTS)
    probes = [c.text(r) for r in rows]
    bias_row = None
    if bias:

        def bias_row(prev: int) -> np.ndarray:
            win = torch.tensor([[int(c.keys[k]), prev]])
            return bias * kgw_green_mask(c.spec, win).numpy()[0]

    served = ms.ServedAnswers.empty(LISTED)
    ref = []
    for probe in probes:
        toks, idx, prob = _answer(rng, teacher, probe, 32, copy, bias_row)
        seq = np.concatenate([probe, toks])
        served.seqs.append(seq.tolist())
        served.starts.append(len(probe))
        served.top_idx.append(idx)
        served.top_p.append(prob)
        served.prompts.append(probe.tolist())
        ref.append(_ours(teacher, seq, len(probe), idx))
    return served, ref


def _log_p(c: Corpus, k: int, served: ms.ServedAnswers, ref) -> tuple[float, float]:
    """The reading's Chernoff ln p-value under key ``k``, and its z."""
    m, _ = ms.served_table(served, 1, ref)
    windows = c.keyed(np.full(len(m.tokens), k * TEXTS), m.windows[m.rows])
    x = c.spec.impl.token_scores(c.spec, windows, torch.from_numpy(m.tokens)).numpy()
    t = float(np.dot(m.weights, x))
    return ms.chernoff_log_sf(c.spec, m.weights, t), ms.z_score(c.spec, m.weights, t)


def _scores(barrier: bool, keys: int = KEYS, bias: float = 0.0, copy: float = 0.5):
    teacher, c = _world()
    rng = np.random.default_rng(5)
    log_p, z = np.zeros(keys), np.zeros(keys)
    for k in range(keys):
        served, ref = _served(c, teacher, k, rng, copy, bias)
        if not barrier:  # the careless reading: only the probes' last token is a barrier
            served.prompts = [p[-1:] for p in served.prompts]
        log_p[k], z[k] = _log_p(c, k, served, ref)
    return log_p, z


def _claims(p: np.ndarray, alpha: float) -> float:
    return sst.binomtest(int(np.sum(p <= alpha)), len(p), alpha, alternative="greater").pvalue


def test_the_served_mass_reading_keeps_its_level_for_a_copier_of_our_answers():
    log_p, z = _scores(barrier=True)
    p = np.exp(log_p)
    for alpha in (0.01, 0.001):
        assert _claims(p, alpha) > 1e-3, alpha
    assert sst.kstest(p, "uniform", alternative="greater").pvalue > 0.01
    assert abs(z.mean()) * np.sqrt(KEYS) < 4.0  # the keys' z's average to about 0
    # the barrier is what keeps it: the same copier read without it is convicted
    log_p, z = _scores(barrier=False)
    assert z.mean() * np.sqrt(KEYS) > 5.0 and _claims(np.exp(log_p), 0.01) < 1e-3


def test_the_served_mass_reading_convicts_a_radioactive_suspect():
    log_p, _ = _scores(barrier=True, keys=30, bias=0.5, copy=0.0)
    assert np.median(log_p) / np.log(10) < -3 and np.mean(log_p <= np.log(0.01)) > 0.8


def test_served_answers_map_api_tokens_to_our_ids():
    table = {b"a": 5, b"b": 6, b" c": 7}
    entry = lambda t, lp, alts=(): {  # noqa: E731
        "token": t, "logprob": lp, "bytes": list(t.encode()),
        "top_logprobs": [{"token": a, "logprob": q, "bytes": list(a.encode())} for a, q in alts],
    }  # fmt: skip
    served = ms.ServedAnswers.empty(3)
    ok = served.add(table, [1, 2], [2], [entry("a", -0.1, [("a", -0.1), ("zz", -3.0), (" c", -4.0)])])
    assert ok and served.seqs == [[1, 2, 5]] and served.starts == [2]
    assert served.top_idx[0].tolist() == [[5, 7, -1]]  # a token outside our vocabulary loses its slot
    assert np.allclose(served.top_p[0][0, :2], np.exp([-0.1, -4.0]))
    assert not served.add(table, [1], [1], None) and served.without_logprobs == 1
    assert not served.add(table, [1], [1], [entry("zz", -1.0)]) and served.unmapped == 1
    assert served.prompts == [[2], [1], [1]]  # every probe is a barrier, read or not
    assert entry_bytes({"token": "é"}) == "é".encode()  # no bytes: the text's UTF-8
    # the barrier removes the answer positions whose window occurs in a probe
    served = ms.ServedAnswers.empty(2)
    served.seqs, served.starts, served.prompts = [[9, 3, 4, 3]], [1], [[9, 4]]
    served.top_idx = [np.array([[4, 3], [3, 5], [4, -1]])]
    served.top_p = [np.array([[0.6, 0.3], [0.5, 0.2], [0.9, 0.0]])]
    table_, barred = ms.served_table(served, 1, None)
    # position 1's window (9) is the prompt's: never read; window 4 (position 3) occurs in a probe: barred;
    # window 3 (position 2) is read
    assert barred == 1
    assert table_.windows.tolist() == [[3]] and sorted(table_.tokens.tolist()) == [3, 5]


def test_served_answers_count_and_skip_what_a_hostile_api_writes():
    table = {b"a": 5, b"b": 6}
    served = ms.ServedAnswers.empty(2)
    good = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [{"token": "b", "logprob": -1.0}]}
    for bad in (
        {**good, "top_logprobs": [{"token": "b", "logprob": float("nan")}]},
        {**good, "top_logprobs": [{"token": "b", "logprob": 3.0}]},  # a probability above 1
        {**good, "top_logprobs": [{"token": "b"}]},
        {**good, "bytes": [97, 300]},
        "a",
        {**good, "top_logprobs": [None]},
    ):
        assert not served.add(table, [1], [1], [good, bad])
    assert served.malformed == 6 and served.answers == 0
    assert served.add(table, [1], [1], [good]) and served.answers == 1

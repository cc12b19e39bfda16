"""Detector behaviour: dedup, prompt exclusion, multi-key correction, and calibration under the null."""

import inspect
import json

import numpy as np
import pytest
from scipy import stats as sst

from distillguard.watermark.detect import aggregate_log_p, detect_ids, key_scores, prepare
from distillguard.watermark.schemes import WatermarkSpec


def _natural_texts(n_docs: int = 5, max_bytes: int = 400):
    """Real, repetitive English (stdlib docstrings) as byte tokens: text that knows nothing of our keys."""
    import collections
    import json as json_mod
    import textwrap

    docs = [
        inspect.getdoc(obj) or "" for obj in (collections.Counter, json_mod.dumps, textwrap.wrap, dict, str)
    ]
    return [list(d.encode()[:max_bytes]) for d in docs[:n_docs]]


def _word_texts():
    """Stdlib docstrings as word-level token ids (vocab 4096): many distinct tuples, natural repetition."""
    import re

    texts = []
    for mod in ("json", "re", "collections", "itertools", "functools", "pathlib", "textwrap", "string"):
        module = __import__(mod)
        for name in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, name)) if not name.startswith("_") else None
            if doc:
                texts.append(re.findall(r"\w+|[^\w\s]", doc))
    vocab = {w: i for i, w in enumerate(sorted({w for t in texts for w in t}))}
    return [[vocab[w] % 4096 for w in t] for t in texts]


def _randomised(total: float, n: int, spec: WatermarkSpec, rng) -> float:
    """Randomised p-value P[S' > S] + U P[S' = S]: exactly uniform under H0 even for a discrete score."""
    from distillguard.watermark import stats

    s = int(round(total))
    upper = np.exp(stats.binomial_log_sf(s + 1, n, spec.green_rate)[0])
    at = np.exp(stats.binomial_log_sf(s, n, spec.green_rate)[0]) - upper
    return float(upper + rng.random() * at)


def test_repeated_ngram_is_scored_once():
    spec = WatermarkSpec(key=3, vocab_size=100, context_width=2)
    doc = detect_ids(spec, [[1, 2, 3] * 80])
    assert doc["texts"][0]["num_tokens"] == 240
    assert doc["texts"][0]["num_scored"] == 3  # (1,2)->3, (2,3)->1, (3,1)->2
    no_dedup = detect_ids(spec, [[1, 2, 3] * 80], dedup=False)
    assert no_dedup["texts"][0]["num_scored"] == 238


def test_prompt_tokens_and_copied_prompt_spans_are_excluded():
    spec = WatermarkSpec(key=3, vocab_size=100, context_width=1)
    prompt = [10, 11, 12, 13, 14, 15]
    doc = detect_ids(spec, [[16, 10, 11, 12, 13, 14, 15, 40, 41]], [prompt])
    # scored: (15->16), (16->10), (15->40), (40->41); the copy 10..15 repeats prompt tuples
    assert doc["texts"][0]["num_scored"] == 4
    assert doc["texts"][0]["num_tokens"] == 9


def test_corpus_dedup_scores_tuples_once_across_texts():
    spec = WatermarkSpec(key=3, vocab_size=100)
    doc = detect_ids(spec, [[1, 2, 3, 4], [1, 2, 3, 4], [5, 6]])
    assert [t["num_scored"] for t in doc["texts"]] == [3, 3, 1]
    assert doc["aggregate"]["num_scored"] == 4


def test_multi_key_family_correction():
    spec = WatermarkSpec(key=1, vocab_size=256)
    texts = _natural_texts()
    single = detect_ids(spec, texts)
    family = detect_ids([spec.with_key(k) for k in (1, 2, 3, 4)], texts)
    row = family["texts"][0]
    assert len(row["keys"]) == 4
    assert row["keys"][0]["p_value_unadjusted"] == pytest.approx(single["texts"][0]["p_value"])
    raw = sorted(k["p_value_unadjusted"] for k in row["keys"])
    assert row["p_value"] == pytest.approx(min(1.0, 4 * raw[0]))


def test_output_is_json_serialisable():
    doc = detect_ids(WatermarkSpec(key=1, vocab_size=256), _natural_texts())
    json.loads(json.dumps(doc))
    assert {"num_scored", "score", "z_score", "p_value"} <= set(doc["aggregate"])


@pytest.mark.parametrize(
    "base",
    [
        WatermarkSpec(scheme="kgw", gamma=0.25, context_width=1),
        WatermarkSpec(scheme="kgw", gamma=0.1, context_width=2),
        WatermarkSpec(scheme="gumbel", context_width=2),
    ],
    ids=["kgw-h1", "kgw-h2-gamma0.1", "gumbel-h2"],
)
def test_null_calibration_over_2000_keys(base):
    """Unwatermarked text, 2000 random keys: p-values uniform (KS), FPR at alpha=0.01 near 0.01, dedup on.

    KGW's score is discrete, so besides the reported (conservative) p-values we check the randomised
    p-values, which are exactly uniform when S ~ Binomial(N, gamma) holds: that is the null we claim.
    """
    vocab = base.vocab_size or 4096
    texts = [[t % vocab for t in text] for text in _word_texts()]
    rng = np.random.default_rng(12345)
    keys = rng.integers(0, 2**62, size=2000)
    prep = prepare(texts, width=base.window)
    assert prep.aggregate_count > 4000
    specs = [base.with_key(int(k)).with_vocab(vocab) for k in keys]
    pvals = np.exp([aggregate_log_p(s, prep) for s in specs])
    # the fast path agrees with the full detector
    assert pvals[0] == pytest.approx(detect_ids(specs[0], texts)["aggregate"]["p_value"])
    fpr = float(np.mean(pvals < 0.01))
    assert 0.005 <= fpr <= 0.015, fpr
    assert sst.kstest(pvals, "uniform").pvalue > 0.01
    if base.scheme == "kgw":
        spec = base.with_vocab(vocab)
        totals = [key_scores(s, prep)[1] for s in specs]
        rand = np.array([_randomised(t, prep.aggregate_count, spec, rng) for t in totals])
        assert sst.kstest(rand, "uniform").pvalue > 0.01


def test_hf_compat_null_is_valid():
    """transformers' lists have a fixed size, so tuples sharing a window are hypergeometric, not binomial.

    The binomial tail we report is then conservative: the false-positive rate never exceeds alpha.
    """
    vocab = 509
    texts = [[t % vocab for t in text] for text in _word_texts()]
    prep = prepare(texts, width=1)
    keys = np.random.default_rng(7).integers(0, 2**62, size=600)
    base = WatermarkSpec(hf_compat=True, vocab_size=vocab)
    pvals = np.exp([aggregate_log_p(base.with_key(int(k)), prep) for k in keys])
    for alpha in (0.01, 0.05, 0.1):
        assert np.mean(pvals < alpha) <= alpha + 2.5 * np.sqrt(alpha * (1 - alpha) / len(keys))


def test_without_dedup_repetitive_text_is_overconfident():
    """Why dedup exists: the same repetitive text gives many false alarms when repeats are re-scored."""
    text = [list(b"the cat sat on the mat. " * 20)]
    keys = range(300)
    spec = WatermarkSpec(key=0, vocab_size=256)
    fp_dedup = np.mean([detect_ids(spec.with_key(k), text)["aggregate"]["p_value"] < 0.01 for k in keys])
    fp_raw = np.mean(
        [detect_ids(spec.with_key(k), text, dedup=False)["aggregate"]["p_value"] < 0.01 for k in keys]
    )
    assert fp_dedup <= 0.03
    assert fp_raw > 0.1

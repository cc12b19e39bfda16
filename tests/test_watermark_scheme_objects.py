"""Scheme objects: a third scheme plugs in by registration alone; degenerate windows are skipped and counted.

The toy scheme ("coin": each (window, token) pair flips a keyed coin of bias gamma) exists only here. It
reaches generation, detection and the audit's radioactivity test through ``SCHEMES`` and nothing else, so
a caller that still branched on the scheme's name would hand it the wrong statistics and fail below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sst

from distillguard.audit import radioactivity as radio
from distillguard.audit.sequential import EProcess
from distillguard.audit.verdict import combine
from distillguard.errors import UserError
from distillguard.lm.tiny import make_tiny_llama
from distillguard.watermark import hashing, stats
from distillguard.watermark.detect import detect_ids, prepare, score
from distillguard.watermark.generate import generate_ids
from distillguard.watermark.schemes import (
    SCHEMES,
    GreenListScheme,
    Scheme,
    WatermarkSpec,
    kgw_green_mask,
    kgw_is_green,
)

_SALT = 0x5EED_C014_0000_0001


class Coin(GreenListScheme):
    """Green iff the top 16 bits of a keyed PRF word of (window, token) fall below ``gamma * 2**16``."""

    name = "coin"

    def _threshold(self, spec: WatermarkSpec) -> int:
        return max(1, min(65535, round(spec.gamma * 65536)))

    def green_rate(self, spec: WatermarkSpec) -> float:
        return self._threshold(spec) / 65536

    def _green(self, spec: WatermarkSpec, seeds: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        w = hashing.words(seeds, index)
        return hashing.lanes(w, torch.full_like(w, 48), 16) < self._threshold(spec)

    def _seeds(self, spec: WatermarkSpec, windows: torch.Tensor) -> torch.Tensor:
        return hashing.window_seeds(spec.key64 ^ _SALT, windows[:, -spec.window :])

    def green_mask(self, spec: WatermarkSpec, windows: torch.Tensor) -> torch.Tensor:
        vocab = torch.arange(spec.require_vocab())
        return self._green(spec, self._seeds(spec, windows)[:, None], vocab[None, :])

    def is_green(self, spec: WatermarkSpec, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self._green(spec, self._seeds(spec, windows), tokens.long())


@pytest.fixture
def coin(monkeypatch):
    monkeypatch.setitem(SCHEMES, "coin", Coin())
    return SCHEMES["coin"]


def _tiny_llama(vocab: int):
    return make_tiny_llama(
        vocab,
        hidden=32,
        layers=1,
        heads=2,
        intermediate=64,
        max_pos=512,
        seed=0,
        bos_id=1,
        eos_id=1,
        pad_id=0,
    ).eval()


def _biased_texts(spec, rng, n_texts=40, length=60, share=0.6):
    """Texts pushed towards ``spec``'s green lists (a stand-in for a radioactive suspect's answers)."""
    vocab = spec.vocab_size
    green = spec.impl.green_mask(spec, torch.arange(vocab)[:, None]).numpy()  # width 1: a row per window
    texts = []
    for _ in range(n_texts):
        seq = [int(rng.integers(vocab))]
        for _ in range(length):
            pool = np.flatnonzero(green[seq[-1]]) if rng.random() < share else np.arange(vocab)
            seq.append(int(rng.choice(pool)))
        texts.append(seq[1:])
    return texts


# --------------------------------------------------------------------------------------------------
# The registry


def test_registered_schemes_satisfy_the_protocol(coin):
    for name, impl in SCHEMES.items():
        assert isinstance(impl, Scheme) and impl.name == name
    assert WatermarkSpec(scheme="coin", vocab_size=10).impl is coin


def test_unknown_scheme_is_a_one_line_user_error_naming_the_known_ones(coin):
    with pytest.raises(UserError) as err:
        WatermarkSpec(scheme="unigram")
    msg = str(err.value)
    assert "\n" not in msg and all(name in msg for name in ("kgw", "gumbel", "coin"))
    with pytest.raises(UserError):
        EProcess("unigram").update([1.0])
    with pytest.raises(UserError):
        WatermarkSpec(scheme="coin", hf_compat=True)


def test_a_third_scheme_generates_and_is_detected_through_the_registry(coin):
    model = _tiny_llama(600)
    spec = WatermarkSpec(scheme="coin", key="northwind", context_width=2, delta=3.0, gamma=0.3)
    prompts = [[5, 6, 7, 8]] * 3
    wm = generate_ids(model, prompts, spec, pad_id=0, eos_id=None, max_new_tokens=150, min_new_tokens=150)
    plain = generate_ids(model, prompts, None, pad_id=0, eos_id=None, max_new_tokens=150, min_new_tokens=150)
    good = detect_ids(spec.with_vocab(600), wm, prompts)
    agg = good["aggregate"]
    assert agg["p_value"] < 1e-10 and agg["green_fraction"] > 0.5
    # the binomial tail at the scheme's own rate, not a gamma tail
    rate = coin.green_rate(spec)
    expected = stats.binomial_log_sf(int(agg["score"]), agg["num_scored"], rate)[0] / stats.LN10
    assert agg["log10_p_value"] == pytest.approx(expected)
    assert (
        f"Binomial(N, {rate:.6g})" in good["test"]["null"] and good["test"]["watermark"]["scheme"] == "coin"
    )
    assert detect_ids(spec.with_key("other").with_vocab(600), wm, prompts)["aggregate"]["p_value"] > 1e-3
    assert detect_ids(spec.with_vocab(600), plain, prompts)["aggregate"]["p_value"] > 1e-3


def test_a_third_scheme_runs_the_audits_radioactivity_test_and_decoy_null(coin):
    rng = np.random.default_rng(3)
    spec = WatermarkSpec(scheme="coin", key="audit-key", vocab_size=1000)
    texts = _biased_texts(spec, rng)
    prompts = [rng.integers(0, 1000, 8).tolist() for _ in texts]
    stream = radio.TupleStream(1, spec=spec)
    ep = EProcess.for_spec(spec)
    for i in range(0, len(texts), 10):  # batch by batch, as a budgeted audit feeds it
        added = stream.add_texts(texts[i : i + 10], prompts[i : i + 10])
        w, t = stream.last(added)
        ep.update(spec.impl.token_scores(spec, w, t).numpy())
    prep = stream.prepared()
    decoys = radio.decoy_null(spec, prep, 100, seed=0)
    r = radio.radioactivity_test("closed", spec, prep, decoys, eprocess=ep)
    assert r.claim_allowed and decoys.extreme and decoys.calibrated and r.log10_p < -6
    assert r.statistic_name == "green fraction" and r.details["null_rate"] == coin.green_rate(spec)
    n = prep.aggregate_count
    exact = stats.binomial_log_sf(round(decoys.our_score * n), n, coin.green_rate(spec))
    assert decoys.our_log_p == pytest.approx(exact[0])
    assert combine([r], 1e-3)["verdict"] == "distilled"
    series = radio.series(spec, radio.score_values(spec, prep))
    assert series["null_rate"] == coin.green_rate(spec) and series["log10_p"][-1] < -6

    # the same texts carry nothing for a key they never saw: no claim, decoy p-values not skewed
    other = spec.with_key("never-used")
    d = radio.decoy_null(other, prep, 200, seed=1)
    assert combine([radio.radioactivity_test("closed", other, prep, d)], 1e-3)["verdict"] == "no_evidence"
    assert sst.kstest(np.exp(d.decoy_log_p), "uniform").pvalue > 0.01


# --------------------------------------------------------------------------------------------------
# Degenerate windows: transformers' lefthash after token 0

VOCAB = 509
OTHER_KEY = 12345  # someone else's lefthash key: the text below owes nothing to ours


def _token0_texts(rng, n_texts=20, triples=20):
    """Lefthash-marked text under OTHER_KEY with many token-0 windows: ``0, green-after-0, random`` ..."""
    after0 = np.flatnonzero(kgw_green_mask(_hf(OTHER_KEY), torch.tensor([[0]]))[0].numpy())
    texts = []
    for _ in range(n_texts):
        seq = []
        for _ in range(triples):
            seq += [0, int(rng.choice(after0)), int(rng.integers(1, VOCAB))]
        texts.append(seq)
    return texts


def _hf(key: int) -> WatermarkSpec:
    return WatermarkSpec(key=key, hf_compat=True, vocab_size=VOCAB)


def test_token0_lists_are_the_same_under_every_key_so_every_decoy_agrees_on_them():
    keys = radio.decoy_keys(30, seed=5)
    zero = torch.tensor([[0]])
    first = kgw_green_mask(_hf(keys[0]), zero)
    assert all(torch.equal(kgw_green_mask(_hf(k), zero), first) for k in keys)
    assert not torch.equal(
        kgw_green_mask(_hf(keys[1]), torch.tensor([[7]])), kgw_green_mask(_hf(keys[0]), torch.tensor([[7]]))
    )

    # before the fix (no degenerate filter): the token-0 tuples are green for every key alike, and they
    # alone make an unrelated key look watermarked
    texts = _token0_texts(np.random.default_rng(1))
    unfiltered = prepare(texts, width=1)
    at0 = unfiltered.windows[:, -1] == 0
    assert int(at0.sum()) > 50
    for k in keys:
        assert bool(kgw_is_green(_hf(k), unfiltered.windows[at0], unfiltered.tokens[at0]).all())
    ours = _hf(777)
    assert score([ours], unfiltered)["aggregate"]["p_value"] < 1e-6


def test_hf_compat_detection_skips_and_counts_token0_windows():
    texts = _token0_texts(np.random.default_rng(1))
    ours = _hf(777)
    doc = detect_ids(ours, texts)
    distinct0 = len({(0, t[i + 1]) for t in texts for i in range(0, len(t), 3)})
    agg = doc["aggregate"]
    assert agg["degenerate_windows_skipped"] == distinct0 > 50
    assert agg["p_value"] > 1e-3  # the key-independent bias is gone
    assert "token 0" in doc["test"]["degenerate_windows"]
    assert sum(t["degenerate_windows_skipped"] for t in doc["texts"]) >= distinct0
    kept = prepare(texts, width=1, spec=ours)
    assert not bool((kept.windows[:, -1] == 0).any()) and kept.degenerate_corpus == distinct0
    # the decoys score the same prepared tuples: none of them sees a token-0 window either
    d = radio.decoy_null(ours, kept, 100, seed=0)
    assert d.calibrated and not (d.decoy_log_p < math.log(1e-6)).any()


def test_native_mode_has_no_degenerate_windows():
    texts = _token0_texts(np.random.default_rng(1))
    for spec in (
        WatermarkSpec(key=777, vocab_size=VOCAB),
        WatermarkSpec(scheme="gumbel", key=7, vocab_size=VOCAB),
    ):
        doc = detect_ids(spec, texts)
        assert doc["aggregate"]["degenerate_windows_skipped"] == 0 and "degenerate_windows" not in doc["test"]
        assert doc == score([spec], prepare(texts, width=1))  # identical to scoring without the filter


def test_audit_streams_skip_and_count_token0_windows_in_both_modes():
    rng = np.random.default_rng(2)
    texts = _token0_texts(rng)
    ours = _hf(777)
    prompts = [[5, 6, 7]] * len(texts)

    closed = radio.TupleStream(1, spec=ours)
    closed.add_texts(texts[:10], prompts[:10])
    closed.add_texts(texts[10:], prompts[10:])  # the same token-0 tuples again: counted once
    prep = closed.prepared()
    distinct0 = len({(0, t[i + 1]) for t in texts for i in range(0, len(t), 3)})
    assert prep.degenerate_corpus == closed.degenerate == distinct0
    assert int(prep.degenerate.sum()) == distinct0 and not bool((prep.windows[:, -1] == 0).any())
    r = radio.radioactivity_test("closed", ours, prep, radio.decoy_null(ours, prep, 50, seed=0))
    assert r.details["degenerate_windows_skipped"] == distinct0
    assert any("degenerate" in c and "token 0" in c for c in r.caveats)
    assert combine([r], 1e-3)["verdict"] == "no_evidence"

    # open mode: the suspect's top-1 predictions read against our texts, offered to a stream with the spec
    seqs = [p + t for p, t in zip(prompts, texts, strict=True)]
    preds = [np.concatenate([[-1], s[1:]]).astype(np.int64) for s in seqs]  # predicts the next true token
    win, toks, text, _ = radio.reading_candidates(seqs, [3] * len(seqs), preds, 1)
    opened = radio.TupleStream(1, spec=ours)
    opened.add_candidates(win, toks, text, n_texts=len(seqs))
    assert opened.degenerate > 50 and not bool((opened.prepared().windows[:, -1] == 0).any())

    native = radio.TupleStream(1, spec=WatermarkSpec(key=777, vocab_size=VOCAB))
    native.add_texts(texts, prompts)
    assert native.degenerate == 0 and native.prepared().degenerate_corpus == 0

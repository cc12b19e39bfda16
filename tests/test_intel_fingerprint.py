"""The pure math of shared intel: template keys, keyed fingerprints, MinHash and timing signatures."""

from __future__ import annotations

import numpy as np
import pytest

from distillguard.intel.fingerprint import (
    Keyring,
    coverage,
    jaccard,
    minhash,
    normalise,
    split_prompt,
    template_keys,
    timing_signature,
)

KEY = b"0123456789abcdef-trust-group"


def test_template_keys_see_system_prompt_frames_and_tooling_not_the_payload():
    prompt = "system: You are an expert.\nuser: Question: How do I sort 3 lists in Python?\nAnswer in full."
    system, user = split_prompt(prompt)
    assert system == "You are an expert."
    assert user.startswith("Question:")
    keys = template_keys(prompt, {"temperature": 0.7, "max_tokens": 512, "stream": False})
    assert "sys:you are an expert ." in keys
    assert "pre3:question : how" in keys and "suf3:in full ." in keys
    assert 'tool:{"max_tokens":512,"temperature":0.7}' in keys
    assert template_keys("hi", {"temperature": 0.0, "stream": False}) == ['tool:{"temperature":0.0}']
    assert normalise("Sort 12 ITEMS!") == "sort 0 items !"
    # a short prompt has no frame: its ends would be its whole content
    assert [k for k in template_keys("hello there", None) if k.startswith(("pre", "suf"))] == []


def test_keyed_fingerprints_depend_on_the_key():
    a, b = Keyring(KEY), Keyring(KEY + b"x")
    assert a.fingerprint("sys:hello") == Keyring(KEY).fingerprint("sys:hello")
    assert a.fingerprint("sys:hello") != b.fingerprint("sys:hello")
    assert len(a.fingerprint("sys:hello")) == 32
    with pytest.raises(ValueError):
        Keyring(b"short")


def test_minhash_estimates_jaccard_within_its_standard_error():
    rng = np.random.default_rng(0)
    universe = rng.integers(0, 2**63, size=400, dtype=np.uint64)
    errors = []
    for overlap in (0, 50, 100, 150, 200):
        x, y = universe[:200], universe[200 - overlap : 400 - overlap]
        exact = overlap / (400 - overlap)
        est = jaccard(minhash(x, 256), minhash(y, 256))
        errors.append(abs(est - exact) / max(np.sqrt(exact * (1 - exact) / 256), 1e-9))
        assert (est == 0.0) if overlap == 0 else est > 0
    assert max(errors) < 4.0  # each estimate within 4 standard errors
    # vectorised against several signatures at once
    sigs = np.stack([minhash(universe[:200]), minhash(universe[200:])])
    assert jaccard(minhash(universe[:200]), sigs).tolist() == [1.0, 0.0]


def test_a_lightly_edited_system_prompt_stays_close_and_another_does_not():
    k = Keyring(KEY)
    base = normalise("You are an expert Python assistant. Give complete, correct answers with examples.")
    edited = normalise("You are an expert Python assistant. Give complete, correct answers with an example.")
    other = normalise("You are a friendly support agent for Contoso. Keep replies short and polite.")
    assert jaccard(k.sketch(base), k.sketch(edited)) >= 0.5
    assert jaccard(k.sketch(base), k.sketch(other)) < 0.2


def test_timing_signature_and_coverage():
    ts = np.array([0.0, 10.0, 20.0, 30.0, 5.0, 15.0, 25.0])
    who = np.array([0, 0, 0, 0, 1, 1, 1])
    sig = timing_signature(ts, who)
    assert sig["accounts"] == 2 and sig["queries"] == 7 and sig["gaps"] == 5
    assert sig["gap_log10_s_p50"] == pytest.approx(1.0)
    assert coverage({"a", "b"}, {"a", "c"}) == (0.5, 1, 2)
    assert coverage({"a"}, set()) == (0.0, 0, 0)

"""The audit's family of watermarks: retired keys and the tiers' own schemes (audit/marks.py).

Bookkeeping (which watermarks are distinct, how they are named) and the null of the family: texts that never
saw a key give Holm-corrected family p-values that are uniform or conservative.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sst

from distillguard.audit import radioactivity as radio
from distillguard.audit.marks import detection_identity, distinct_marks, extra_marks, served_marks
from distillguard.watermark.schemes import WatermarkSpec
from distillguard.watermark.settings import WatermarkSettings
from test_audit_stats import VOCAB, _random_texts, _stream

KEY = "marks-test-key"


def test_the_default_gateway_adds_the_restricted_tiers_gumbel_and_nothing_else():
    settings = WatermarkSettings(key=KEY)  # KGW delta 2, the gateway's default
    spec = settings.spec()
    marks = served_marks(spec, settings, {})
    assert list(marks) == ["restricted"]
    g = marks["restricted"]
    assert (g.scheme, g.context_width, g.key, g.hf_compat) == ("gumbel", 1, spec.key, False)


def test_a_kgw_restricted_tier_detects_like_the_configured_kgw_and_adds_no_test():
    """KGW's bias decides how strongly answers are marked, not which tuples are green: delta 4 under the
    same key and window is the same test as delta 2."""
    settings = WatermarkSettings(key=KEY)
    spec = settings.spec()
    assert served_marks(spec, settings, {"restricted_scheme": "kgw", "restricted_delta": 8.0}) == {}
    assert detection_identity(spec) == detection_identity(settings.spec(delta=4.0))
    # another window width or another gamma detects differently
    wide = served_marks(spec, settings, {"restricted_scheme": "kgw", "restricted_context_width": 3})
    assert wide["restricted"].context_width == 3
    assert detection_identity(spec) != detection_identity(settings.spec(gamma=0.5))
    # a configured Gumbel h 1 is already what the restricted tier serves
    gumbel = WatermarkSettings(key=KEY, scheme="gumbel")
    assert served_marks(gumbel.spec(), gumbel, {}) == {}


def test_the_gateways_tier_config_is_read_and_a_bad_scheme_is_one_line():
    from distillguard.errors import UserError

    settings = WatermarkSettings(key=KEY)
    with pytest.raises(UserError, match="scheme"):
        served_marks(settings.spec(), settings, {"restricted_scheme": "nope"})


def test_extra_marks_cover_every_key_and_scheme_once():
    spec = WatermarkSpec(key=KEY)
    gumbel = WatermarkSpec(scheme="gumbel", key=KEY)
    marks = extra_marks(spec, ["old-1", "old-2"], {"restricted": gumbel})
    assert [m.suffix for m in marks] == [
        "_retired_1", "_retired_2", "_restricted", "_restricted_retired_1", "_restricted_retired_2"
    ]  # fmt: skip
    assert [(m.spec.scheme, m.spec.key) for m in marks] == [
        ("kgw", "old-1"), ("kgw", "old-2"), ("gumbel", KEY), ("gumbel", "old-1"), ("gumbel", "old-2")
    ]  # fmt: skip
    assert "restricted tier" in marks[2].why and "gumbel h 1" in marks[2].why
    same = {"a": {"scheme": "gumbel"}, "b": {"scheme": "gumbel", "delta": 9.0}}
    assert list(distinct_marks(spec, WatermarkSettings(key=KEY), same)) == ["a"]  # one Gumbel test, not two


@pytest.mark.parametrize("retired", [0, 2])
def test_family_of_kgw_and_gumbel_under_1000_null_keys_keeps_its_level(retired):
    """1000 key sets the texts never saw, each audited as a family: KGW h 1 and the restricted tier's Gumbel
    h 1 under the current key and under ``retired`` keys moved out by rotations, all on the same tuples,
    Holm. Each test's p-values are uniform (KS) and the family's false claims at 0.01 and 0.001 stay within
    what the level allows (exact binomial bounds, one-sided 1e-3)."""
    prompts, comps = _random_texts(np.random.default_rng(21), n_texts=40)
    prep = _stream(comps, prompts).prepared()
    n = len(prep.tokens)
    assert n > 2000
    keys = np.array(radio.decoy_keys(1000 * (1 + retired), seed=5), dtype=object).reshape(1000, 1 + retired)
    tests = [(scheme, j) for j in range(1 + retired) for scheme in ("kgw", "gumbel")]
    logp = np.empty((len(keys), len(tests)))
    for i, row in enumerate(keys):
        for t, (scheme, j) in enumerate(tests):
            spec = WatermarkSpec(scheme=scheme, key=int(row[j]), vocab_size=VOCAB)
            total = radio.score_values(spec, prep).sum()
            logp[i, t] = spec.impl.log_sf(spec, np.array([total]), np.array([n]))[0]
    p = np.exp(logp)
    for t in range(len(tests)):
        assert sst.kstest(p[:, t], "uniform").pvalue > 1e-3
    holm_min = np.minimum(1.0, len(tests) * p.min(axis=1))  # the family's smallest Holm-adjusted p-value
    for alpha in (0.01, 0.001):
        claims = int(np.sum(holm_min <= alpha))
        assert claims <= sst.binom.ppf(1 - 1e-3, len(keys), alpha), (alpha, claims)

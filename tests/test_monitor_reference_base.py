"""A known-good period added to the shipped reference (``monitor calibrate``'s default, ``--base``): the
shipped entities are neighbours, never the null; p-values stay calibrated on the period's own accounts
even when the base is far tighter than the deployment's traffic; the campaign still adds up and the hard
negatives stay normal; a bad ``--base`` is one line and a non-zero exit."""

from __future__ import annotations

import numpy as np
import pytest

from cli_run import run_cli
from distillguard.monitor.detectors import Calibration
from distillguard.monitor.report import report_json
from distillguard.monitor.scan import Reference, analyse, build_reference
from distillguard.monitor.shipped import VERSION, load_shipped_reference
from test_monitor_campaign import OPTS, accumulate, by_persona, flagged, population
from test_monitor_campaign import mixed as mixed  # a fixture

FEATS = ("log_rate", "coverage", "diversity")


def _rows(x: np.ndarray, prefix: str):
    return [((f"{prefix}{i}",), dict(zip(FEATS, map(float, r), strict=True))) for i, r in enumerate(x)]


def test_the_base_never_enters_the_null_so_a_tight_base_cannot_shrink_the_periods_p_values():
    """Null calibration. H0: the scored entity is a fresh draw of the deployment's benign traffic, of which
    the period's 150 accounts are a sample; the base (600 entities) is a far tighter population (a
    simulator's kinds). The guarantee is over draws of the period and of the account (conformal), so it is
    checked over 10 periods x 1,000 fresh accounts: with the base as neighbours only, P[p <= a] stays at or
    below a (+ 3 standard errors); pooling the base into the null, the same draws are rejected at well
    above a, which is why it is kept out."""

    def rejection_rates(cal: Calibration, fresh: np.ndarray) -> np.ndarray:
        ps = np.array([
            cal.p_value(cal._knn(cal.z(dict(zip(FEATS, map(float, r), strict=True))), None)[0]) for r in fresh
        ])  # fmt: skip
        return np.array([(ps <= a).mean() for a in (0.05, 0.01)])

    kept, pooled = np.zeros(2), np.zeros(2)
    draws = 10
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        base = _rows(rng.normal(0.0, 0.05, (600, 3)), "sim")
        period = _rows(rng.normal(0.0, 1.0, (150, 3)), "own")
        fresh = rng.normal(0.0, 1.0, (1000, 3))
        cal = Calibration.fit(base + period, features=FEATS, neighbours_only=len(base))
        assert len(cal.null) == len(period) and cal.neighbours_only == len(base)
        kept += rejection_rates(cal, fresh) / draws
        pooled += rejection_rates(Calibration.fit(base + period, features=FEATS), fresh) / draws
    n = 1000 * draws
    for (a, got), bad in zip(((0.05, kept[0]), (0.01, kept[1])), pooled, strict=True):
        assert got <= a + 3 * np.sqrt(a * (1 - a) / n), (a, got)
        assert bad > a + 6 * np.sqrt(a * (1 - a) / n), (a, bad)  # the tight base in the null over-rejects
    # a restricted look and a saved reference keep the rule
    assert len(cal.restrict(FEATS[:2]).null) == len(period)
    again = Calibration.from_dict(cal.to_dict())
    assert again.neighbours_only == len(base) and np.array_equal(again.null, cal.null)


def test_a_period_added_to_the_shipped_reference_flags_the_campaign_not_the_harness_or_the_bot(
    mixed, tmp_path
):
    pools, acc, created, personas = mixed
    shipped = load_shipped_reference()
    bacc, bcreated = accumulate(population(pools, seed=5, attackers=False))
    ref = build_reference(bacc, OPTS, created=bcreated, base=shipped)
    n_base = len(shipped.calibration.reference_ids)
    own = len(ref.calibration.reference_ids) - n_base
    assert ref.calibration.neighbours_only == n_base and own >= 15
    assert ref.meta["base"]["shipped"] and ref.meta["base"]["what"] == VERSION and "shipped" not in ref.meta
    assert ref.mmd is shipped.mmd  # one MMD baseline for every entity's mmd feature
    assert len(ref.calibration.null) <= own  # the period's single accounts only
    ref = Reference.load(ref.save(tmp_path / "ref.npz"))
    assert ref.calibration.neighbours_only == n_base
    analysis = analyse(acc, ref, options=OPTS, created=created)
    assert all(flagged(v) for v in by_persona(analysis, personas, "sybil"))
    assert flagged(by_persona(analysis, personas, "coverage")[0])
    for name in ("eval_harness", "support_bot", "casual_chat"):
        assert not any(flagged(v) for v in by_persona(analysis, personas, name)), name
    info = report_json(analysis, {})["reference"]
    assert info["source"] == "reference" and info["base"]["what"] == VERSION
    assert "known-good period added to the shipped reference" in info["trust"]


@pytest.mark.parametrize("base", ["nonesuch", "/no/such/reference.npz"])
def test_a_bad_base_is_one_line_and_a_non_zero_exit(tmp_path, capsys, base, monkeypatch):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path))
    code, out, err = run_cli(["monitor", "calibrate", "--base", base, "--parquet", str(tmp_path)], capsys)
    assert code != 0 and "--base must be one of shipped, none" in err and len(err.strip().splitlines()) == 1

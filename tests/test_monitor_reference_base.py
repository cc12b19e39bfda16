"""A known-good period on top of the shipped reference (``monitor calibrate``, ``--base``, ``--null``).

With the period's own null (``--null period``) the shipped entities are neighbours, never the null: p-values
stay calibrated on the period's own accounts even when the base is far tighter than the deployment's
traffic, the campaign still adds up and the hard negatives stay normal. With the base's null (``--null
base``, the default for a short period) the period's accounts are neighbours only: every p-value is at
least the base's, so nothing is flagged that the base alone would not flag, and the period's kinds are
cleared. A bad ``--base`` or ``--null`` is one line and a non-zero exit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cli_run import run_cli
from distillguard.errors import UserError
from distillguard.monitor.detectors import Calibration, RateNull
from distillguard.monitor.jobs import reference_base
from distillguard.monitor.reference import MIN_OWN_ACCOUNTS, Reference
from distillguard.monitor.report import report_json
from distillguard.monitor.scan import _no_lower, analyse, build_reference, scorable
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
    checked over 10 periods x 5,000 fresh accounts, down to the levels the tiers act on (1e-3, 1e-4), where
    p-values come from the fitted tail: with the base as neighbours only (the period's null, centre and unit
    scales), P[p <= a] stays at or below a (+ 3 standard errors); pooling the base into the null, the same
    draws are rejected at well above a, which is why it is kept out."""
    levels = np.array([0.05, 0.01, 1e-3, 1e-4])

    def rejection_rates(cal: Calibration, fresh: np.ndarray) -> np.ndarray:
        ps = np.array([
            cal.p_value(cal._knn(cal.z(dict(zip(FEATS, map(float, r), strict=True))), None)[0]) for r in fresh
        ])  # fmt: skip
        return (ps[:, None] <= levels[None, :]).mean(axis=0)

    kept, pooled = np.zeros(len(levels)), np.zeros(len(levels))
    draws, per = 10, 5000
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        base = _rows(rng.normal(0.0, 0.05, (600, 3)), "sim")
        period = _rows(rng.normal(0.0, 1.0, (150, 3)), "own")
        fresh = rng.normal(0.0, 1.0, (per, 3))
        cal = Calibration.fit(base + period, features=FEATS, neighbours_only=len(base))
        assert len(cal.null) == len(period) and cal.neighbours_only == len(base)
        kept += rejection_rates(cal, fresh) / draws
        pooled += rejection_rates(Calibration.fit(base + period, features=FEATS), fresh[:1000]) / draws
    se = np.sqrt(levels * (1 - levels) / (draws * per))
    assert (kept <= levels + 3 * se).all(), kept
    assert (pooled[:2] > levels[:2] + 6 * se[:2] * np.sqrt(per / 1000)).all(), pooled  # pooled over-rejects
    # a restricted look, the elicitation counts and a saved reference keep the rule
    assert len(cal.restrict(FEATS[:2]).null) == len(period)
    again = Calibration.from_dict(cal.to_dict())
    assert again.neighbours_only == len(base) and np.array_equal(again.null, cal.null)
    with pytest.raises(ValueError, match="besides its neighbours"):
        Calibration.fit(base[:10] + period[:2], features=FEATS, neighbours_only=10)


def test_a_period_added_to_the_shipped_reference_flags_the_campaign_not_the_harness_or_the_bot(
    mixed, tmp_path
):
    pools, acc, created, personas = mixed
    shipped = load_shipped_reference()
    bacc, bcreated = accumulate(population(pools, seed=5, attackers=False))
    ref = build_reference(bacc, OPTS, created=bcreated, base=shipped, null="period")
    n_base = len(shipped.calibration.reference_ids)
    own = len(ref.calibration.reference_ids) - n_base
    assert ref.calibration.neighbours_only == n_base and own >= 15
    base = ref.meta["base"]
    assert (
        base["shipped"] and base["what"] == f"the shipped reference {VERSION}" and "shipped" not in ref.meta
    )
    assert ref.mmd is shipped.mmd  # one MMD baseline for every entity's mmd feature
    singles = sum(len(ids) == 1 for ids in ref.calibration.reference_ids[n_base:])
    assert len(ref.calibration.null) == singles  # the period's single accounts, none of the base's
    assert len(RateNull.from_calibration(ref.calibration).ids) == own  # counts against its own profiles
    # a reference extended again says what it holds
    again = build_reference(
        bacc, OPTS, created=bcreated, base=replace_meta(ref, path="older.npz"), null="period"
    )
    assert again.meta["base"]["shipped"] and again.meta["base"]["what"] == (
        f"older.npz (which extends the shipped reference {VERSION})"
    )
    ref = Reference.load(ref.save(tmp_path / "ref.npz"))
    assert ref.calibration.neighbours_only == n_base
    analysis = analyse(acc, ref, options=OPTS, created=created)
    assert all(flagged(v) for v in by_persona(analysis, personas, "sybil"))
    assert flagged(by_persona(analysis, personas, "coverage")[0])
    for name in ("eval_harness", "support_bot", "casual_chat"):
        assert not any(flagged(v) for v in by_persona(analysis, personas, name)), name
    # a reference fitted before network churn was estimated past the prefix bound says so
    old = replace_meta(ref, feature_revision=1)
    assert (
        "refit it" in report_json(analyse(acc, old, options=OPTS, created=created), {})["reference"]["trust"]
    )
    assert "refit it" not in report_json(analysis, {})["reference"]["trust"]
    info = report_json(analysis, {})["reference"]
    assert info["source"] == "reference" and info["base"]["what"].endswith(VERSION)
    assert f"known-good period added to the shipped reference {VERSION}" in info["trust"]
    assert f"{own} entities" in info["trust"] and "enter no null" in info["trust"]
    # a period of too few scored accounts is graded low, whatever it extends
    assert ref.meta["accounts"] >= MIN_OWN_ACCOUNTS and "warning" not in ref.meta
    assert not info["trust"].startswith("low")
    thin = report_json(analyse(acc, replace_meta(ref, accounts=8), options=OPTS, created=created), {})
    assert thin["reference"]["trust"].startswith("low: fitted on only 8 accounts")
    few = [a for a in sorted(bacc.index) if scorable(bacc, a, OPTS.min_queries)][:6]
    small = build_reference(bacc, OPTS, benign=few, created=bcreated, base=shipped, null="period")
    assert small.meta["accounts"] == 6 and "calibrate on a longer" in small.meta["warning"]
    nulls = {t["null"] for v in analysis.accounts.values() for t in v.tests if "null" in t}
    assert f"benign reference, {own} entities (+ {n_base} neighbours)" in nulls


def replace_meta(ref: Reference, **meta) -> Reference:
    return Reference(ref.calibration, ref.mmd, {**ref.meta, **meta})


@pytest.mark.parametrize("base", ["nonesuch", "/no/such/reference.npz", "truncated", "empty"])
def test_a_bad_base_is_one_line_and_a_non_zero_exit(tmp_path, capsys, base, monkeypatch):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path))
    if base in ("truncated", "empty"):  # a file that is not a reference: named, in one line
        data = Path(load_shipped_reference().meta["path"]).read_bytes()
        (tmp_path / base).write_bytes(data[:3000] if base == "truncated" else b"")
        base, expect = str(tmp_path / base), "is not a monitor reference"
    else:
        expect = "--base must be one of shipped, none"
    code, out, err = run_cli(["monitor", "calibrate", "--base", base, "--parquet", str(tmp_path)], capsys)
    assert code != 0 and expect in err and len(err.strip().splitlines()) == 1, err


def test_calibrate_refuses_to_extend_the_file_it_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path))
    ref = tmp_path / "reference.npz"
    load_shipped_reference().save(ref)
    argv = ["monitor", "calibrate", "--base", str(ref), "--out", str(ref), "--parquet", str(tmp_path)]
    code, _, err = run_cli(argv, capsys)
    assert code != 0 and "the file this calibration writes" in err and len(err.strip().splitlines()) == 1


def test_the_config_names_the_base_and_eval_refuses_a_base_without_a_period(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path))
    assert reference_base({"monitor_calibrate_base": "none"}) is None
    assert reference_base({}).meta["version"] == VERSION  # the default: the shipped reference
    with pytest.raises(UserError, match="monitor_calibrate_base must be one of"):
        reference_base({"monitor_calibrate_base": "nonesuch"})
    code, _, err = run_cli(["monitor", "eval", "--base", "none", "--labels", str(tmp_path / "x")], capsys)
    assert code != 0 and "give --reference-ledger too" in err and len(err.strip().splitlines()) == 1, err


def test_a_period_added_as_neighbours_of_the_base_null_only_raises_p_values():
    """Null calibration of ``--null base`` (:meth:`Calibration.extended`). H0: the scored entity is a fresh
    draw of the base's benign traffic (600 entities). The period (120 entities) holds a kind the base lacks,
    high on one feature and low on the others (60 at (9, -3, -3): it is more than no base-like draw on
    every feature, so it clears none of them), and 60 like the base. Over 5 bases x 5,000 fresh draws,
    every p-value is at least the base's (more neighbours can only shorten the distance to the nearest
    one), P[p <= a] stays at or below a (+ 3 standard errors) at 0.05, 0.01 and 1e-3, and base-like draws
    are still rejected at a rate near the base's (the extension is no blanket pass). A fresh account of the
    period's kind, which the base alone flags, is cleared."""
    levels = np.array([0.05, 0.01, 1e-3])
    draws, per = 5, 5000
    rates, base_rates = np.zeros(len(levels)), np.zeros(len(levels))

    def ps(cal: Calibration, x: np.ndarray) -> np.ndarray:
        return np.array([
            cal.p_value(cal._knn(cal.z(dict(zip(FEATS, map(float, r), strict=True))), None)[0]) for r in x
        ])  # fmt: skip

    for seed in range(draws):
        rng = np.random.default_rng(100 + seed)
        base = Calibration.fit(_rows(rng.normal(0.0, 1.0, (600, 3)), "sim"), features=FEATS)
        kind = rng.normal([9.0, -3.0, -3.0], 0.3, (60, 3))
        cal = base.extended(_rows(np.vstack([kind, rng.normal(0.0, 1.0, (60, 3))]), "own"))
        assert cal.added == 120 and np.array_equal(cal.null, base.null) and cal.tail_beta == base.tail_beta
        fresh = rng.normal(0.0, 1.0, (per, 3))
        p_ext, p_base = ps(cal, fresh), ps(base, fresh)
        assert (p_ext >= p_base).all()
        rates += (p_ext[:, None] <= levels[None, :]).mean(axis=0) / draws
        base_rates += (p_base[:, None] <= levels[None, :]).mean(axis=0) / draws
        own_kind = rng.normal([9.0, -3.0, -3.0], 0.3, (200, 3))
        p_kind, p_kind_base = ps(cal, own_kind), ps(base, own_kind)
        assert (p_kind >= p_kind_base).all()
        assert (p_kind_base <= 1e-3).mean() > 0.9 and (p_kind <= 1e-3).mean() < 0.05
    se = np.sqrt(levels * (1 - levels) / (draws * per))
    assert (rates <= levels + 3 * se).all(), rates
    assert rates[0] >= 0.5 * base_rates[0] > 0.01, (rates, base_rates)  # base-like draws are not cleared
    # a restricted look keeps the base's null and adds the period again; a saved reference keeps both
    sub = cal.restrict(FEATS[:2])
    assert sub.added == 120 and np.array_equal(sub.null, base.restrict(FEATS[:2]).null)
    again = Calibration.from_dict(cal.to_dict())
    assert again.added == 120 and np.array_equal(again.reference, cal.reference, equal_nan=True)
    assert np.array_equal(ps(again, own_kind[:20]), p_kind[:20])


@pytest.fixture(scope="module")
def period(mixed):
    pools, *_ = mixed
    return accumulate(population(pools, seed=5, attackers=False))


def test_the_default_keeps_a_small_periods_base_null_clears_its_kinds_and_flags_nothing_new(
    mixed, period, tmp_path
):
    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.detectors import Stricter
    from distillguard.monitor.judge import Looks
    from distillguard.monitor.report import plan_decisions

    _, acc, created, personas = mixed
    bacc, bcreated = period
    shipped = load_shipped_reference()
    ref = build_reference(bacc, OPTS, created=bcreated, base=shipped)  # auto: a period of ~30 accounts
    n_base = len(shipped.calibration.reference_ids)
    cal = ref.calibration
    assert ref.meta["null"] == "base" and ref.meta["capped"] and cal.neighbours_only == 0
    assert cal.added == len(cal.reference_ids) - n_base == ref.meta["entities"]
    assert np.array_equal(cal.null, shipped.calibration.null)  # the shipped reference's null
    singles = sum(len(ids) == 1 for ids in cal.reference_ids[n_base:])
    check = ref.meta["check"]
    assert check["accounts"] == singles and set(check["flagged"]) == {"0.05", "0.01", "0.001"}
    assert len(check["unusual"]) == min(check["flagged"]["0.001"], 10)
    assert set(check["unusual"]) <= {ids[0] for ids in cal.reference_ids[n_base:]}
    looks = Looks.of(cal, "x")
    assert isinstance(looks.suggestive, Stricter)  # counts held against the period's rates too
    assert [len(n.ids) for n in looks.suggestive.nulls] == [n_base, len(cal.reference_ids) - n_base]
    ref = Reference.load(ref.save(tmp_path / "ref.npz"))
    assert ref.calibration.added == cal.added and ref.meta["null"] == "base"
    analysis = analyse(acc, ref, options=OPTS, created=created)
    alone = analyse(acc, shipped, options=OPTS, created=created)
    # no account is flagged that the shipped reference alone would not flag
    for a, v in analysis.accounts.items():
        assert v.p_value >= alone.accounts[a].p_value * (1 - 1e-9), (a, v.p_value, alone.accounts[a].p_value)
    assert all(flagged(v) for v in by_persona(analysis, personas, "sybil"))
    assert flagged(by_persona(analysis, personas, "coverage")[0])
    for name in ("eval_harness", "support_bot", "casual_chat"):
        assert not any(flagged(v) for v in by_persona(analysis, personas, name)), name
    for v in analysis.accounts.values():  # each verdict names the other p-value it was held against
        assert sum(t["test"].startswith("against the ") for t in v.tests) == 1
    # where the period would lower a p-value, the verdict against the base alone is kept whole
    ext = analyse(acc, ref, options=OPTS, created=created)
    low = next(a for a, v in alone.accounts.items() if v.cluster is not None and v.p_value < 1)
    lowered = replace(ext.accounts[low], p_value=alone.accounts[low].p_value / 10, cluster="elsewhere")
    ext.accounts[low] = lowered
    _no_lower(ext, alone)
    kept = ext.accounts[low]
    assert kept is alone.accounts[low] and kept.cluster == alone.accounts[low].cluster != "elsewhere"
    assert "against the base reference alone: the larger counts" in ext.accounts[low].reasons[0]
    info = report_json(analysis, {})["reference"]
    assert info["capped"] and info["trust"].startswith("medium")
    assert "entities of known-good traffic" in info["trust"] and "checked on the period" in info["trust"]
    nulls = {t["null"] for v in analysis.accounts.values() for t in v.tests if "null" in t}
    null = f"the shipped reference {VERSION}, {n_base} entities (+ {cal.added} known-good neighbours)"
    assert null in nulls
    # its null is the base's: a short period is not graded on its own size, a thin base is
    few = report_json(analyse(acc, replace_meta(ref, accounts=8), options=OPTS, created=created), {})
    assert few["reference"]["trust"].startswith("medium")
    thin_base = replace_meta(ref, base={**ref.meta["base"], "warning": "fitted on only 5 accounts"})
    low = report_json(analyse(acc, thin_base, options=OPTS, created=created), {})["reference"]["trust"]
    assert low.startswith("low: its base is fitted on only 5 accounts")
    # its null is the shipped one, so automatic tiers stop where the shipped reference's do
    _, _, tiers = plan_decisions(analysis, Policy(), {a: "normal" for a in analysis.accounts}, {}, 0.0)
    assert set(tiers.values()) == {"normal", "throttled"}


def test_auto_takes_the_periods_own_null_once_it_is_long_and_a_bad_null_is_one_line(
    period, tmp_path, capsys, monkeypatch
):
    import distillguard.monitor.scan as scan

    bacc, bcreated = period
    shipped = load_shipped_reference()
    monkeypatch.setattr(scan, "PERIOD_NULL_MIN", 10)  # a "long" period, at test size
    ref = build_reference(bacc, OPTS, created=bcreated, base=shipped)
    assert ref.meta["null"] == "period" and ref.calibration.neighbours_only > 0 and "capped" not in ref.meta
    assert build_reference(bacc, OPTS, created=bcreated).meta["null"] == "period"  # no base: its own
    with pytest.raises(UserError, match="--null base needs a base"):
        build_reference(bacc, OPTS, created=bcreated, null="base")
    # a reference that keeps the shipped null is not extended on it again; on a null of its own, it can be,
    # and a short period on the shipped null is no thin base
    monkeypatch.setattr(scan, "PERIOD_NULL_MIN", 999)
    on_shipped = build_reference(bacc, OPTS, created=bcreated, base=shipped)
    assert on_shipped.meta["null"] == "base"
    for null in ("base", "auto"):
        with pytest.raises(UserError, match="keeps its own base's null"):
            build_reference(bacc, OPTS, created=bcreated, base=on_shipped, null=null)
    few = replace_meta(on_shipped, accounts=8)
    again = build_reference(bacc, OPTS, created=bcreated, base=few, null="period")
    assert "warning" not in again.meta["base"] and again.calibration.added == 0
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path))
    for argv, expect in (
        (["--null", "nonesuch"], "--null must be one of auto, base, period"),
        (["--null", "base", "--base", "none"], "--null base needs a base"),
    ):
        code, _, err = run_cli(["monitor", "calibrate", *argv, "--parquet", str(tmp_path)], capsys)
        assert code != 0 and expect in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(["monitor", "eval", "--null", "base", "--labels", str(tmp_path / "x")], capsys)
    assert code != 0 and "give --reference-ledger too" in err and len(err.strip().splitlines()) == 1, err

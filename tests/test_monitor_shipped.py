"""The shipped default benign reference: it loads offline from the package, matches the monitor's current
features (a stale file fails here, not in a user's scan), is what a scan without a calibrated reference
uses, and can be rebuilt from the simulator. Against it, a cold start flags a 40% campaign and the
distiller, not the harness or the bot, and an organisation's linked fleet is not a campaign."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from distillguard.monitor.accumulator import FeatureAccumulator
from distillguard.monitor.features import FEATURE_NAMES, FEATURE_REVISION, derive, records_to_table
from distillguard.monitor.personas import BENIGN
from distillguard.monitor.report import report_json
from distillguard.monitor.scan import Reference, analyse
from distillguard.monitor.scenario import Scale, build_scenario
from distillguard.monitor.shipped import (
    VERSION,
    build_shipped_reference,
    load_shipped_reference,
    shipped_path,
)
from distillguard.monitor.simworld import Pools
from distillguard.monitor.synth import event_record
from test_monitor_campaign import OPTS, by_persona, flagged
from test_monitor_campaign import mixed as mixed  # a fixture


@pytest.fixture(scope="module")
def shipped() -> Reference:
    return load_shipped_reference()


def test_the_shipped_reference_loads_offline_and_matches_the_current_features(shipped):
    assert shipped_path().is_file() and shipped_path().stat().st_size < 1_000_000  # package data, small
    assert tuple(shipped.calibration.features) == FEATURE_NAMES
    assert shipped.meta["version"] == VERSION and shipped.meta["shipped"] is True
    assert shipped.meta["feature_revision"] == FEATURE_REVISION  # fitted under what the features now mean
    assert shipped.meta["kinds"] == sorted(BENIGN)  # benign kinds only: no attacker in it
    assert shipped.meta["accounts"] >= 500 and shipped.mmd is not None


def test_a_cold_start_against_the_shipped_reference_flags_the_campaign_not_the_harness_or_the_bot(
    mixed, shipped
):
    _, acc, created, personas = mixed
    analysis = analyse(acc, shipped, options=OPTS, created=created)
    sybils = by_persona(analysis, personas, "sybil")
    assert len(sybils) / len(analysis.accounts) >= 0.4 and all(flagged(v) for v in sybils)
    (dist,) = by_persona(analysis, personas, "coverage")
    assert flagged(dist) and dist.p_own < 1e-6
    for name in ("eval_harness", "support_bot", "casual_chat"):
        assert not any(flagged(v) for v in by_persona(analysis, personas, name)), name
    ref = report_json(analysis, {})["reference"]
    assert ref["source"] == "shipped reference" and ref["version"] == VERSION
    assert ref["trust"].startswith("medium") and "calibrate" in ref["trust"]


def _fleet(org: str | None):
    """Four nightly summariser service accounts sharing one job: one cron, one cloud /24, one feed."""
    pools = Pools.builtin()
    scen = build_scenario(Scale("fleet", 7.0, {"batch_summariser": ((1, 4000, {}),)}), seed=4, pools=pools)
    (job,) = scen.accounts
    names = [f"newsdesk-digest-{k}" for k in range(4)]
    rng = random.Random(0)
    records = []
    for i, e in enumerate(sorted(scen.events, key=lambda e: e.t), 1):
        k = i % 4
        e = replace(e, account=names[k], client_ip=f"34.120.8.{10 + k}")
        r = event_record(e, ts=scen.clock.start + e.t, key_id=f"k{k}", org=org, request_id=str(i), rng=rng)
        records.append({**r, "seq": i})
    acc = FeatureAccumulator(sample_size=OPTS.sample_size)
    acc.update(derive(records_to_table(records)))
    return acc, {n: scen.clock.start + job.created + 86400.0 * k for k, n in enumerate(names)}


def _gate(cluster):
    return next(t for t in cluster.tests if t["test"].startswith("bonferroni"))["gate"]


def test_an_organisations_linked_fleet_is_not_a_campaign(shipped):
    acc, created = _fleet("newsdesk")
    analysis = analyse(acc, shipped, options=OPTS, created=created)
    linked = [c for c in analysis.clusters if len(c.accounts) >= 3]
    assert linked, "the fleet is one strongly linked group (network, frames, scheduler)"
    assert all(_gate(c) is None for c in linked), [c.reasons for c in linked]
    assert not any(flagged(v) for v in analysis.accounts.values())
    # the same traffic from accounts that declare no organisation: linkage now opens the profile look
    acc, created = _fleet(None)
    analysis = analyse(acc, shipped, options=OPTS, created=created)
    gates = [
        next(t for t in c.tests if t["test"].startswith("bonferroni"))["gate"] for c in analysis.clusters
    ]
    assert "linkage" in gates


def test_the_reference_is_rebuilt_from_the_simulator(tmp_path):
    doc = build_shipped_reference(tmp_path / "ref.npz", scale="tiny", seeds=(3,), volume_rows=20_000)
    ref = Reference.load(tmp_path / "ref.npz")
    assert doc["version"] == VERSION and ref.meta["shipped"] and ref.meta["accounts"] >= 25
    assert "synthetic month of 20000 rows" in ref.meta["source"]
    assert tuple(ref.calibration.features) == FEATURE_NAMES


def test_tiers_from_the_shipped_reference_stop_at_the_cap_and_a_calibrated_one_lifts_it(mixed, shipped):
    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.report import plan_decisions

    _, acc, created, personas = mixed
    analysis = analyse(acc, shipped, options=OPTS, created=created)
    store = {a: "normal" for a in analysis.accounts}
    policy = Policy()
    assert min(v.p_value for v in analysis.accounts.values()) < policy.threshold("suspended")  # evidence
    _, _, tiers = plan_decisions(analysis, policy, store, {}, 0.0)
    assert set(tiers.values()) == {"normal", "throttled"}
    _, _, tiers = plan_decisions(analysis, Policy(shipped_max_tier="suspended"), store, {}, 0.0)
    assert "suspended" in set(tiers.values())  # the operator opted in
    # the same p-values from a reference the deployment calibrated itself are not capped
    own = replace(analysis, reference={**analysis.reference, "source": "reference", "capped": False})
    _, _, tiers = plan_decisions(own, policy, store, {}, 0.0)
    assert "suspended" in set(tiers.values())


def test_a_reference_or_follow_state_from_another_feature_set_is_refused_in_one_line(tmp_path, shipped):
    import json

    import numpy as np

    from distillguard.errors import UserError
    from distillguard.monitor.follow import load_follow_state, save_accumulator

    old = shipped.calibration.to_dict()
    j = old["features"].index("bias_probe_rate")
    old["features"].pop(j)
    for k in ("center", "scale"):
        old[k].pop(j)
    old["reference"] = [row[:j] + row[j + 1 :] for row in old["reference"]]
    np.savez(tmp_path / "old.npz", calibration=np.array(json.dumps(old)), meta=np.array("{}"))
    with pytest.raises(UserError, match="another version.*bias_probe_rate.*calibrate"):
        Reference.load(tmp_path / "old.npz")
    acc, _ = _fleet("newsdesk")
    save_accumulator(acc, tmp_path / "state.npz")
    load_follow_state(tmp_path / "state.npz")  # this version's own state loads
    with np.load(tmp_path / "state.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "c_bias_probe"}
    np.savez(tmp_path / "state.npz", **arrays)
    with pytest.raises(UserError, match="another version.*delete it"):
        load_follow_state(tmp_path / "state.npz")


NOTE_WORDS = [
    "meeting", "budget", "client", "report", "deadline", "project", "team", "customer", "invoice", "schedule",
    "update", "review", "proposal", "contract", "delivery", "quality", "feedback", "launch", "marketing",
    "sales", "quarter", "office", "travel", "hiring", "training",
]  # fmt: skip


def _office(seed: int, away: float = 0.0):
    """Three colleagues behind one office NAT, each sending their own notes through one rewriting tool's
    prompt template (40 each over five days, signed up weeks apart): linked by the network and the
    template, and busy enough to be judged alone. ``away``: the share of each one's requests sent from
    their own home or phone network instead."""
    rng = random.Random(seed)
    records, created, t0 = [], {}, 1_717_372_800.0
    for k in range(3):
        name = f"colleague{k}"
        created[name] = t0 - 86400.0 * (20 + 9 * k)
        elsewhere = [f"{rng.randrange(11, 99)}.{rng.randrange(256)}.{rng.randrange(256)}.7" for _ in range(2)]
        for _ in range(40):
            note = " ".join(rng.sample(NOTE_WORDS, rng.randint(6, 10)))
            prompt = f"Rewrite the following note so it sounds polite and professional, keep it short: {note}"
            ts = t0 + 86400.0 * rng.randrange(5) + 3600.0 * rng.uniform(9, 18)  # office hours
            records.append({
                "seq": 0, "ts": ts, "account": name, "key_id": f"key-{name}",
                "client_ip": f"81.2.3.{10 + k}" if rng.random() >= away else rng.choice(elsewhere),
                "decision": "admitted", "prompt": prompt,
                "messages": [{"role": "user", "content": prompt}],
                "params": {"max_tokens": 200, "temperature": 0.7},
                "prompt_tokens": 30, "completion_tokens": 60,
            })  # fmt: skip
    records.sort(key=lambda r: r["ts"])
    for i, r in enumerate(records, 1):
        r["seq"] = i
    acc = FeatureAccumulator(sample_size=OPTS.sample_size)
    acc.update(derive(records_to_table(records)))
    return acc, created


def test_colleagues_on_one_templated_tool_are_linked_but_their_template_is_not_counted_twice(shipped):
    acc, created = _office(seed=2)
    analysis = analyse(acc, shipped, options=OPTS, created=created)
    (cluster,) = analysis.clusters
    assert len(cluster.accounts) == 3 and _gate(cluster) == "linkage"
    assert any(t["test"] == "profile without text shape" for t in cluster.tests)
    # the link is their shared template; the pooled template share alone does not convict them again
    assert not any(flagged(v) for v in analysis.accounts.values())


def test_colleagues_who_also_work_from_home_and_a_phone_are_not_rotating_networks(shipped):
    # the same office, each colleague sending a third of their notes from home or a phone: three fixed
    # networks are a customer's, not churn (read as churn, each one's network look opened the profile look
    # and the template's text shape flagged all three; a class pasting one assignment from school and from
    # home is the same case)
    acc, created = _office(seed=2, away=0.35)
    assert all(acc.profile((a,)).extra_prefixes == 0 for a in created)
    analysis = analyse(acc, shipped, options=OPTS, created=created)
    (cluster,) = analysis.clusters
    assert len(cluster.accounts) == 3 and _gate(cluster) == "linkage"
    for a in created:
        churn = next(t for t in analysis.accounts[a].tests if t["test"] == "network churn")
        assert churn["p_value"] > 0.05
    assert not any(flagged(v) for v in analysis.accounts.values())

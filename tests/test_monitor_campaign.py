"""Campaign detection that a campaign cannot vouch for, and hard negatives that never pay for association.

One mixed population from the monitor's own personas, scanned at cold start (no reference) and against a
benign reference: casual users, an evaluation harness and a support bot (the hard negatives), a Sybil
campaign of twenty accounts asking templated, partly reasoning-eliciting questions (about 40% of the
accounts), and a broad distiller harvesting logprobs. The harness and the bot share the distiller's /24
and sign-up window, the association that used to suspend them.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from distillguard.monitor.accumulator import FeatureAccumulator
from distillguard.monitor.decisions import Policy
from distillguard.monitor.features import derive, records_to_table
from distillguard.monitor.linking import link_accounts
from distillguard.monitor.personas import CoverageDistiller
from distillguard.monitor.report import report_json
from distillguard.monitor.scan import ScanOptions, analyse, build_reference
from distillguard.monitor.scenario import Scale, Scenario, build_scenario
from distillguard.monitor.simworld import Pools
from distillguard.monitor.synth import event_record

OPTS = ScanOptions(sample_size=128, mmd_null=200)
SHARED_NET = "45.137.77."


class LogprobDistiller(CoverageDistiller):
    """The coverage traversal with logprobs on every request."""

    def _params(self, rng):
        return {"max_tokens": 256, "temperature": 0.8, "logprobs": True, "top_logprobs": 5}


def population(pools, *, seed=0, attackers=True):
    benign = {
        "casual_chat": ((26, 30, {}),),
        "eval_harness": ((1, 120, {}),),
        "support_bot": ((1, 80, {}),),
    }
    att = {"sybil": ((20, 40, {"cot_share": 0.35}),)} if attackers else {}
    scen = build_scenario(Scale("campaign-test", 1.0, {**benign, **att}), seed=seed, pools=pools)
    if not attackers:
        return scen
    tr = LogprobDistiller(pools, accounts=1, queries=200).generate(random.Random(f"{seed}:d"), scen.clock)
    dist = tr.accounts[0]
    rng = random.Random(seed)
    hard = {a.name for a in scen.accounts if a.persona in ("eval_harness", "support_bot")}
    ips: dict[str, str] = {}
    dip = SHARED_NET + "9"
    accounts = [
        replace(a, created=dist.created + rng.uniform(-3600, 3600)) if a.name in hard else a
        for a in scen.accounts
    ] + [replace(dist, ips=(dip,))]
    events = [
        replace(e, client_ip=ips.setdefault(e.client_ip, SHARED_NET + str(rng.randrange(20, 250))))
        if e.account in hard
        else e
        for e in scen.events
    ] + [replace(e, client_ip=dip) for e in tr.events]
    events.sort(key=lambda e: e.t)
    return Scenario(seed, "campaign-test", scen.clock, accounts, events)


def accumulate(scen):
    rng = random.Random(0)
    records = []
    for i, e in enumerate(scen.events, 1):
        r = event_record(e, ts=scen.clock.start + e.t, key_id=f"k_{e.account}", org=None, request_id=str(i),
                         rng=rng)  # fmt: skip
        records.append({**r, "seq": i})
    acc = FeatureAccumulator(sample_size=OPTS.sample_size)
    acc.update(derive(records_to_table(records)))
    return acc, {a.name: scen.clock.start + a.created for a in scen.accounts}


@pytest.fixture(scope="module")
def mixed():
    pools = Pools.builtin()
    scen = population(pools)
    acc, created = accumulate(scen)
    personas = {a.name: a.persona for a in scen.accounts}
    return pools, acc, created, personas


def by_persona(analysis, personas, name):
    return [v for a, v in analysis.accounts.items() if personas[a] == name]


def flagged(v):
    return Policy().target(v.p_value) != "normal"


@pytest.fixture(scope="module")
def cold(mixed):
    _, acc, created, _ = mixed
    return analyse(acc, options=OPTS, created=created)


def test_cold_start_flags_a_40pc_campaign_and_the_distiller_not_the_harness_or_the_bot(mixed, cold):
    _, _, _, personas = mixed
    sybils = by_persona(cold, personas, "sybil")
    assert len(sybils) / len(cold.accounts) >= 0.4
    assert all(flagged(v) for v in sybils)
    (dist,) = by_persona(cold, personas, "coverage")
    assert flagged(dist) and dist.p_own < 1e-6  # on its own evidence
    # logprobs over whole answers: extraction evidence of its own
    assert any("logprob_gen_rate" in r for r in dist.reasons) and not dist.reasons[0].startswith("cluster")
    for name in ("eval_harness", "support_bot", "casual_chat"):
        assert not any(flagged(v) for v in by_persona(cold, personas, name)), name
    # the campaign was left out of the population that calibrates it, and the report says so
    doc = report_json(cold, {})
    ref = doc["reference"]
    assert doc["calibration"] == "population" and ref["source"] == "population"
    camp = next(c for c in cold.clusters if set(c.accounts) == {v.account for v in sybils})
    assert camp.id in ref["left_out"] and ref["trust"].startswith("low")
    # every flag carries its tests, nulls and p-values
    for v in sybils + [dist]:
        assert {t["test"] for t in v.tests} >= {"elicitation", "profile"}
        assert all("null" in t and "p_value" in t for t in v.tests if t["test"] in ("elicitation", "profile"))


def test_hard_negatives_never_pay_for_sharing_a_network_and_a_signup_day(mixed, cold):
    _, _, _, personas = mixed
    (dist,) = by_persona(cold, personas, "coverage")
    for name in ("eval_harness", "support_bot"):
        (v,) = by_persona(cold, personas, name)
        assert v.p_value > 1e-3, (name, v.p_value, v.reasons)
        # linked to the distiller, and the reasons say why its evidence is not theirs
        assert any("not attributed" in r for r in v.reasons), (name, v.reasons)
        assert not any(r.startswith("cluster") and "logprobs" in r for r in v.reasons)
    # weak links alone (a network and a sign-up window) never make a group that is judged as one
    weak = [c for c in cold.weak_clusters if dist.account in c.accounts]
    strong = [c for c in cold.clusters if dist.account in c.accounts]
    assert weak or strong
    for c in strong:  # a strong group that holds the distiller is its evidence alone: nobody inherits it
        for a in c.accounts:
            if a != dist.account:
                assert not flagged(cold.accounts[a])


def test_template_heavy_high_volume_bot_is_not_a_distiller_and_the_reasons_say_why(mixed, cold):
    _, _, _, personas = mixed
    (bot,) = by_persona(cold, personas, "support_bot")
    own = {t["test"]: t for t in bot.tests if t.get("entity") == "own"}
    assert own["elicitation"]["p_value"] > 0.05  # no reasoning traces, identity probes or logprobs
    assert bot.features["template_rate"] > 0.3
    assert not flagged(bot)


def test_with_a_reference_that_has_a_templated_harness_the_campaign_adds_up(mixed):
    pools, acc, created, personas = mixed
    benign = population(pools, seed=5, attackers=False)
    bacc, bcreated = accumulate(benign)
    ref = build_reference(bacc, OPTS, created=bcreated)
    analysis = analyse(acc, ref, options=OPTS, created=created)
    sybils = by_persona(analysis, personas, "sybil")
    assert all(flagged(v) for v in sybils)
    top = sybils[0]
    assert any("cot_rate" in r for r in top.reasons)
    assert flagged(by_persona(analysis, personas, "coverage")[0])
    for name in ("eval_harness", "support_bot", "casual_chat"):
        assert not any(flagged(v) for v in by_persona(analysis, personas, name)), name
    assert report_json(analysis, {})["reference"]["source"] == "reference"


def test_ip_and_signup_links_make_a_weak_cluster_templates_a_strong_group():
    from collections import Counter

    from distillguard.monitor.linking import LinkInfo, minhash

    def info(name, prefix, frames, created):
        return LinkInfo(name, Counter({prefix: 100}), 1.0, set(frames), minhash(set())[:32], 0, created)

    frames = {hash(f"frame-{i}") for i in range(20)}
    infos = [info(f"s{i}", "45.1.2.0/24", frames, 100.0 + i) for i in range(4)]
    infos += [info("harness", "45.1.2.0/24", {1, 2, 3}, 150.0), info("bot", "45.1.2.0/24", {7, 8, 9}, 160.0)]
    (c,) = link_accounts(infos)
    assert set(c.accounts) == {"s0", "s1", "s2", "s3", "harness", "bot"}
    assert c.strong == [["s0", "s1", "s2", "s3"]]  # harness and bot: a network and a sign-up only

"""The labelled traffic simulator: personas do what they claim, synthetic ledgers are real ledgers, and the
HTTP replay drives a real gateway (stub backend) with the personas' addresses, accounts and reactions."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict

import numpy as np
import pytest

from cli_run import run_cli
from distillguard.distill.strategies import COT_TEMPLATES
from distillguard.errors import UserError
from distillguard.gateway.accounts import SQLiteAccountStore
from distillguard.gateway.ledger import Ledger, canonical_json, parquet_schema
from distillguard.monitor.personas import PERSONAS
from distillguard.monitor.scenario import Scale, build_scenario
from distillguard.monitor.simulate import simulate
from distillguard.monitor.simworld import DAY, SUPPORT_SYSTEM, Pools
from distillguard.monitor.synth import (
    ledger_params,
    read_labels,
    synthesize_ledger,
    synthesize_parquet,
)
from distillguard.text.vectors import cosine_distances, embed
from gateway_server import ADMIN_TOKEN, TEST_SECRET, start


@pytest.fixture(scope="module")
def pools() -> Pools:
    """The world's texts (the interpreter's docs) with the tiny world's vocabulary and context, built
    without the model: generation tests need no torch."""
    return Pools.builtin(vocab_size=1024, context_tokens=256)


@pytest.fixture(scope="module")
def scenario(pools):
    return build_scenario("tiny", seed=0, pools=pools)


# A population with enough of each persona to measure what it claims (no HTTP: generation only).
PROPS = Scale(
    "props",
    3.0,
    {
        "casual_chat": ((20, 8, {}),),
        "batch_summariser": ((1, 240, {}),),
        "eval_harness": ((1, 60, {"runs_per_day": 2.0, "one_off": 0.0}), (2, 40, {"one_off": 1.0})),
        "support_bot": ((1, 60, {}),),
        "researcher": ((3, 20, {}),),
        "coverage": ((1, 150, {}),),
        "paraphrase": ((1, 150, {}),),
        "cot": ((1, 150, {}),),
        "logprob": ((1, 120, {"window": 100}),),
        "sybil": ((6, 40, {"ip_mode": "slash24"}), (5, 30, {"ip_mode": "cloud"})),
        "low_and_slow": ((1, 90, {}),),
    },
)


@pytest.fixture(scope="module")
def props(pools):
    return build_scenario(PROPS, seed=3, pools=pools)


def by_persona(scen, name):
    return [e for e in scen.events if e.persona == name]


# --------------------------------------------------------------------------------------------------
# Personas


def test_scenario_is_deterministic_per_seed_and_per_persona(pools):
    a = build_scenario("tiny", seed=7, pools=pools)
    b = build_scenario("tiny", seed=7, pools=pools)
    c = build_scenario("tiny", seed=8, pools=pools)
    assert [e.to_dict() for e in a.events] == [e.to_dict() for e in b.events]
    assert [x.to_dict() for x in a.accounts] == [x.to_dict() for x in b.accounts]
    assert {x.name for x in a.accounts}.isdisjoint({x.name for x in c.accounts})
    # each persona has its own rng: dropping the others leaves its traffic unchanged
    only = build_scenario("tiny", seed=7, pools=pools, personas=["sybil"])
    assert [e.to_dict() for e in only.events] == [e.to_dict() for e in by_persona(a, "sybil")]
    assert [e.t for e in a.events] == sorted(e.t for e in a.events)
    with pytest.raises(UserError, match="unknown persona"):
        build_scenario("tiny", pools=pools, personas=["nobody"])
    with pytest.raises(UserError, match="unknown scale"):
        build_scenario("huge", pools=pools)


def test_labels_cover_every_account_and_names_carry_none(scenario):
    labels = scenario.labels()
    assert {e.account for e in scenario.events} <= set(labels)
    assert all(re.fullmatch(r"u[0-9a-f]{12}", name) for name in labels)
    kinds = {v["persona"]: v["kind"] for v in labels.values()}
    assert {p for p, k in kinds.items() if k == "attacker"} == {
        "coverage", "paraphrase", "cot", "logprob", "sybil", "low_and_slow"
    }  # fmt: skip
    assert {p for p, k in kinds.items() if k == "benign"} == {
        "casual_chat", "coding_assistant", "support_bot", "batch_summariser", "eval_harness", "researcher"
    }  # fmt: skip
    assert all(v["campaign"] is None for v in labels.values() if v["kind"] == "benign")
    assert all(v["campaign"] for v in labels.values() if v["kind"] == "attacker")
    for e in scenario.events:  # events carry their account's ground truth and a body the API accepts
        assert labels[e.account]["persona"] == e.persona
        body = e.body("aster")
        assert body["model"] == "aster" and ("messages" in body) == (e.endpoint == "chat")


def test_sybil_campaign_shares_a_range_templates_parameters_and_a_signup_burst(props, pools):
    camps = defaultdict(list)
    for a in props.accounts:
        if a.persona == "sybil":
            camps[a.campaign].append(a)
    assert sorted(len(v) for v in camps.values()) == [5, 6]
    questions = sorted(pools.questions, key=len, reverse=True)
    for accounts in camps.values():
        names = {a.name for a in accounts}
        events = [e for e in props.events if e.account in names]
        assert Counter(e.account for e in events) == {n: len(events) // len(names) for n in names}
        created = sorted(a.created for a in accounts)
        assert created[-1] - created[0] <= 90 * 60  # registered within 90 minutes
        assert min(e.t for e in events) > created[-1]
        nets = {ipaddress.ip_network(f"{e.client_ip}/24", strict=False) for e in events}
        assert len(nets) == (1 if len(accounts) == 6 else 3)
        assert len({canonical_json(e.params) for e in events}) == 1  # one parameter fingerprint
        assert len({e.messages[0]["content"] for e in events}) == 1  # one system prompt
        assert {e.messages[0]["role"] for e in events} == {"system"}
        # the coverage queries are pool questions inside at most three shared templates
        covered = [e.messages[1]["content"] for e in events if e.meta["strategy"] == "coverage"]
        shells = set()
        for text in covered:
            q = next(q for q in questions if q in text)
            shells.add(text.replace(q, "{q}"))
        assert 1 <= len(shells) <= 3
        assert len(covered) == len(set(covered))  # one traversal dealt across the accounts, no repeats


def test_cot_harvester_asks_for_reasoning_and_researcher_only_sometimes(props):
    shells = [t.replace("{q}", "").strip() for t in COT_TEMPLATES]

    def cot_rate(name):
        events = by_persona(props, name)
        return sum(any(s in e.user_text() for s in shells) for e in events) / len(events)

    assert cot_rate("cot") == 1.0
    assert cot_rate("coverage") == 0.0
    step = [e for e in by_persona(props, "researcher") if "step by step" in e.user_text().lower()]
    assert 0.3 < len(step) / len(by_persona(props, "researcher")) < 1.0  # a hard negative, not a copy


def test_logprob_extractor_sweeps_logit_bias_over_the_vocabulary(props, pools):
    events = by_persona(props, "logprob")
    for e in events:
        assert e.params["max_tokens"] == 1
        if e.endpoint == "chat":
            assert e.params["logprobs"] is True and e.params["top_logprobs"] == 20
        else:
            assert e.params["logprobs"] == 20
    swept = [e for e in events if "logit_bias" in e.params]
    assert len(swept) / len(events) > 0.6
    ids = Counter(int(k) for e in swept for k in e.params["logit_bias"])
    assert all(
        len(e.params["logit_bias"]) == 100 and set(e.params["logit_bias"].values()) == {100} for e in swept
    )
    assert set(ids) == set(range(pools.vocab_size))  # every token pushed into the top 20 at least once
    assert len({e.client_ip for e in events}) == 1
    # the researcher's occasional logprobs are a hard negative: few, top 5, never logit_bias
    research = by_persona(props, "researcher")
    lp = [e for e in research if e.params.get("logprobs")]
    assert lp and all(e.params["top_logprobs"] == 5 and "logit_bias" not in e.params for e in lp)
    assert len(lp) < 0.5 * len(research)


def test_batch_customer_is_regular_and_nightly(props):
    events = by_persona(props, "batch_summariser")
    assert len(events) == 240 and len({e.client_ip for e in events}) == 1
    nights = defaultdict(list)
    for e in events:
        nights[int(e.t // DAY)].append(e.t)
    assert len(nights) == 3
    for times in nights.values():
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        mean = sum(gaps) / len(gaps)
        cv = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean
        assert cv < 0.05 and 2.0 < mean < 7.0  # clockwork
        assert 0.9 <= props.clock.hour(times[0]) <= 3.1  # starts in the small hours
    assert all(e.user_text().startswith("Summarize the following document") for e in events)
    assert min(len(e.user_text()) for e in events) > 200


def test_one_off_eval_runs_its_benchmark_once_scoring_choices_by_logprobs(props):
    """A team trying the model: a key made shortly before one pass at a machine's pace, never repeated,
    half of it multiple-choice items read off the logprobs of a one-token answer."""
    once = [a for a in props.accounts if a.persona == "eval_harness" and not a.org]
    assert len(once) == 2
    for acct in once:
        events = [e for e in props.events if e.account == acct.name]
        assert len(events) == 40 and len({e.user_text() for e in events}) == 40  # one pass, no repeat
        assert {e.meta["run"] for e in events} == {0} and len({e.client_ip for e in events}) == 1
        assert 0 < events[0].t - acct.created <= 2 * 86400
        assert events[-1].t - events[0].t < 600  # machine pace
        choices = [e for e in events if e.endpoint == "completions"]
        assert 10 <= len(choices) <= 30
        assert all(e.params == {"max_tokens": 1, "temperature": 0.0, "logprobs": 5} for e in choices)
        assert all(e.prompt.endswith("\nAnswer:") and "\nD. " in e.prompt for e in choices)


def test_eval_harness_repeats_one_diverse_benchmark(props):
    replaying = {a.name for a in props.accounts if a.persona == "eval_harness" and a.org}
    assert len(replaying) == 1
    events = [e for e in by_persona(props, "eval_harness") if e.account in replaying]
    runs = defaultdict(list)
    for e in events:
        runs[e.meta["run"]].append(e.user_text())
    assert len(runs) >= 3
    bench = runs[0]
    assert len(bench) == 60 == len(set(bench))
    assert all(r == bench for r in runs.values())  # the same fixed benchmark, every run
    assert len({e.client_ip for e in events}) == len(runs)  # a fresh CI runner per run
    # diverse like a distiller (mean distance to the nearest other question), unlike templated traffic
    diverse = nearest_distance(bench)
    assert diverse > 0.5
    assert diverse > nearest_distance([e.user_text() for e in by_persona(props, "paraphrase")][:60]) + 0.2
    assert diverse > nearest_distance([e.user_text() for e in by_persona(props, "support_bot")][:60]) + 0.2
    assert nearest_distance([e.user_text() for e in by_persona(props, "coverage")][:60]) > 0.5


def nearest_distance(texts):
    vectors = embed(texts)
    d = cosine_distances(vectors, vectors)
    np.fill_diagonal(d, np.inf)
    return float(d.min(axis=1).mean())


def test_paraphrase_has_few_intents_coverage_has_none_repeated(props):
    para = by_persona(props, "paraphrase")
    assert len({e.meta.get("strategy") for e in para}) == 1
    assert len({e.user_text() for e in para}) == len(para)
    cov = [e.user_text() for e in by_persona(props, "coverage")]
    assert len(cov) == len(set(cov))
    # rotating residential proxies: most requests from an address used once
    ips = Counter(e.client_ip for e in para)
    assert sum(1 for c in ips.values() if c == 1) > 0.5 * len(para)


def test_low_and_slow_copies_real_prompts_at_human_pace(props):
    events = by_persona(props, "low_and_slow")
    benign = {
        e.user_text() for e in props.events if e.persona in ("casual_chat", "coding_assistant", "researcher")
    }
    copied = [e for e in events if e.meta["source"] == "copied"]
    assert 0.3 < len(copied) / len(events) < 0.7
    assert all(e.user_text() in benign for e in copied)  # exact copies of what benign users sent
    assert (events[-1].t - events[0].t) > 0.5 * props.clock.duration
    gaps = [b.t - a.t for a, b in zip(events, events[1:], strict=False)]
    assert sum(g < 2.0 for g in gaps) == 0
    cov = by_persona(props, "coverage")
    cov_gaps = [b.t - a.t for a, b in zip(cov, cov[1:], strict=False)]
    assert sum(g < 2.0 for g in cov_gaps) > 0.3 * len(cov_gaps)  # the distiller's parallel bursts


def test_support_bot_is_one_templated_product(props):
    events = by_persona(props, "support_bot")
    assert all(e.messages[0] == {"role": "system", "content": SUPPORT_SYSTEM} for e in events)
    assert len({e.client_ip for e in events}) <= 2
    assert all(e.params.get("user", "").startswith("cust-") for e in events)


def test_accounts_have_creation_times_and_attackers_open_fresh_ones(props):
    for a in props.accounts:
        assert a.key_created[0] == a.created and len(a.ips) >= 1
        first = min((e.t for e in props.events if e.account == a.name), default=None)
        if first is not None:
            assert a.created < first
        if a.persona == "eval_harness" and not a.org:  # a key made for one evaluation run
            assert first - a.created < 2 * DAY
        elif a.kind == "benign":
            assert a.created < -13 * DAY  # established customers
        elif a.persona in ("coverage", "paraphrase", "cot", "logprob"):
            assert first - a.created < 2 * DAY  # opened for the job


def test_event_text_is_the_gateways_rendering(scenario):
    from distillguard.gateway.request_model import render_chat
    from distillguard.monitor.features import records_to_table

    chats = [e for e in scenario.events if e.endpoint == "chat"]
    assert chats and any(len(e.messages) > 1 for e in chats) and any(len(e.messages) == 1 for e in chats)
    for e in chats:
        assert e.text() == render_chat(e.messages, None)
        if len(e.messages) == 1:  # a single message is its content, several are "role: content" lines
            assert e.text() == e.messages[0]["content"]
        else:
            assert e.text() == "\n".join(f"{m['role']}: {m['content']}" for m in e.messages)
    # a record that kept only its messages is read back as the same prompt
    table = records_to_table({"seq": i, "account": "a", "messages": e.messages} for i, e in enumerate(chats))
    assert table.column("prompt").to_pylist() == [e.text() for e in chats]


def test_pools_from_a_world_directory(tmp_path):
    from distillguard.world.corpus import Doc, corpus_text

    docs = [Doc(f"mod.fn{i}", "api", f"Return the {i}th thing. " * 20) for i in range(30)]
    (tmp_path / "corpus.txt").write_text(corpus_text(docs))
    row = {"api": "mod.fn1", "kind": "api", "prompt": "Held-out: what is mod.fn1?", "reference": "x"}
    (tmp_path / "prompts.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "world.json").write_text(json.dumps({"config": {"vocab_size": 777, "max_pos": 128}}))
    pools = Pools.from_world(tmp_path)
    assert pools.vocab_size == 777 and pools.context_tokens == 128
    assert "Held-out: what is mod.fn1?" in pools.questions and len(pools.apis) == 30
    assert pools.max_tokens(1024) == 32 and len(pools.documents) == 30
    with pytest.raises(UserError, match="no world"):
        Pools.from_world(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# Synthetic ledgers


def test_append_many_writes_the_same_chain_as_append(tmp_path):
    recs = [
        {"ts": 1.0 + i, "decision": "admitted", "account": f"a{i % 3}", "prompt": f"p{i}"} for i in range(9)
    ]
    one, many = Ledger(tmp_path / "1.db", secret=b"k" * 16), Ledger(tmp_path / "2.db", secret=b"k" * 16)
    for r in recs:
        one.append(r)
    many.append(recs[0])
    assert many.append_many([]) is None
    last = many.append_many(recs[1:])
    assert last.seq == 9 and many.head() == one.head()
    assert many.verify().ok and list(many.iter_records()) == list(one.iter_records())


def test_synthetic_ledger_verifies_with_simulated_times_keys_and_labels(tmp_path, scenario, pools):
    store = SQLiteAccountStore(tmp_path / "accounts.db", TEST_SECRET.encode())
    path = synthesize_ledger(
        tmp_path / "ledger.db", scenario=scenario, pools=pools, secret=TEST_SECRET.encode(), accounts=store
    )
    ledger = Ledger(path, secret=TEST_SECRET.encode())
    report = ledger.verify()
    assert report.ok and report.signed and report.records == len(scenario.events)
    labels = read_labels(tmp_path / "labels.json")
    assert labels == scenario.labels()
    keys = {k["key_id"]: k["account"] for k in store.list_keys()}
    start = scenario.clock.start
    for rec, ev in zip(ledger.iter_records(), scenario.events, strict=True):
        assert rec["ts"] == pytest.approx(start + ev.t, abs=1e-3) and rec["ts_end"] > rec["ts"]
        assert rec["account"] == ev.account and keys[rec["key_id"]] == ev.account
        assert rec["client_ip"] == ev.client_ip and rec["prompt"] == ev.text()
        assert rec["params"] == ledger_params(ev) and rec["decision"] == "admitted"
        assert (
            1 <= rec["completion_tokens"] <= (ledger_params(ev)["max_tokens"] or 256) * ledger_params(ev)["n"]
        )
    for acct in scenario.accounts:  # backdated signups: the Sybil burst is in the store
        info = store.get_account(acct.name)
        assert info["created"] == pytest.approx(start + acct.created)
        assert [k["created"] for k in info["keys"]] == pytest.approx([start + t for t in acct.key_created])
    store.close()
    with pytest.raises(UserError, match="already holds"):
        synthesize_ledger(path, scenario=scenario, pools=pools, secret=TEST_SECRET.encode())


def test_parquet_stream_has_the_export_schema_and_a_real_chain(tmp_path, pools):
    import pyarrow.parquet as pq

    ledger = Ledger(tmp_path / "l.db")
    ledger.append({"ts": 1.0, "decision": "admitted", "params": {"n": 1}})
    assert pq.read_table(ledger.export_parquet(tmp_path / "x")).schema.equals(parquet_schema())

    path = synthesize_parquet(
        tmp_path / "pq", 6000, pools=pools, chunk_rows=2000, bank_events=40, records=True, days=2.0
    )
    table = pq.read_table(path)
    assert table.schema.equals(parquet_schema()) and table.num_rows == 6000
    rows = table.to_pylist()
    assert [r["seq"] for r in rows] == list(range(1, 6001))
    assert all(a["ts"] <= b["ts"] for a, b in zip(rows, rows[1:], strict=False))
    prev = "0" * 64
    for r in rows:  # the record column is the canonical record and the chain links them
        assert r["prev_hash"] == prev
        assert hashlib.sha256((prev + r["record"]).encode()).hexdigest() == r["hash"]
        rec = json.loads(r["record"])
        assert rec["seq"] == r["seq"] and rec["account"] == r["account"] and rec["prompt"] == r["prompt"]
        assert (
            canonical_json(rec["params"]) == r["params"]
            and r["tokens"] == r["prompt_tokens"] + r["completion_tokens"]
        )
        prev = r["hash"]
    # the same records appended to a real ledger get exactly the Parquet file's chain, and verify
    replay = Ledger(tmp_path / "replay.db", secret=TEST_SECRET.encode())
    replay.append_many(json.loads(r["record"]) for r in rows[:500])
    assert replay.verify().ok and replay.head()["hash"] == rows[499]["hash"]
    replay.close()
    labels = read_labels(tmp_path / "pq" / "labels.json")
    assert {r["account"] for r in rows} <= set(labels)
    share = sum(labels[r["account"]]["persona"] == "sybil" for r in rows) / len(rows)
    assert 0.2 < share < 0.45  # the seed case's campaign share
    signups = pq.read_table(tmp_path / "pq" / "accounts.parquet").to_pylist()
    assert {s["account"] for s in signups} == set(labels)


PARQUET_MEMORY = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import pyarrow.parquet as pq
    from distillguard.monitor.personas import Pools
    from distillguard.monitor.synth import synthesize_parquet

    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    marks = []
    pools = Pools.builtin(vocab_size=1024, context_tokens=256)
    path = synthesize_parquet(Path(sys.argv[1]), 200_000, pools=pools, chunk_rows=20_000, bank_events=200,
                              progress=lambda done, total: marks.append((done, rss())))
    meta = pq.ParquetFile(path).metadata
    print(json.dumps({"marks": marks, "rows": meta.num_rows, "groups": meta.num_row_groups}))
    """
)


def test_parquet_200k_rows_in_bounded_memory(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", PARQUET_MEMORY, str(tmp_path / "pq")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    marks = data["marks"]
    assert data["rows"] == 200_000 and marks[-1][0] == 200_000
    assert data["groups"] >= 9 and len(marks) >= 9  # written chunk by chunk
    growth = max(m for _, m in marks) - marks[1][1]
    assert growth < 40 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB while streaming"


# --------------------------------------------------------------------------------------------------
# Against a real gateway


# Every persona, a few requests each.
HTTP = Scale(
    "http",
    1.0,
    {
        "casual_chat": ((4, 4, {}),),
        "coding_assistant": ((1, 15, {}),),
        "support_bot": ((1, 10, {}),),
        "batch_summariser": ((1, 15, {}),),
        "eval_harness": ((1, 8, {}),),
        "researcher": ((1, 6, {}),),
        "coverage": ((1, 20, {}),),
        "paraphrase": ((1, 15, {}),),
        "cot": ((1, 15, {}),),
        "logprob": ((1, 15, {}),),
        "sybil": ((3, 10, {}),),
        "low_and_slow": ((1, 10, {}),),
    },
)


def test_simulate_drives_a_real_gateway_with_persona_ips(tmp_path, pools):
    scenario = build_scenario(HTTP, seed=2, pools=pools)
    assert {e.persona for e in scenario.events} == set(PERSONAS)
    gw = start(backend="stub", trusted_proxies=("127.0.0.1/32",))
    try:
        res = simulate(
            gw.base_url,
            out=tmp_path / "sim",
            admin_token=ADMIN_TOKEN,
            scenario=scenario,
            concurrency=8,
            duration=3.0,  # the simulated day in three seconds: timing kept, compressed
        )
        assert res.requests == res.ok == len(scenario.events) and res.model == "stub"
        assert res.time_scale == pytest.approx(res.sim_seconds / 3.0)
        records = list(gw.ledger().iter_records())
        assert gw.ledger().verify().ok
        # a stream's "stream_started" record precedes its own record: one call each
        calls = [r for r in records if r["endpoint"] != "/v1/models" and r["decision"] != "stream_started"]
        assert len(calls) == len(scenario.events) and all(r["status"] == 200 for r in calls)
        ips = {a.name: set(a.ips) for a in scenario.accounts}
        assert all(
            r["client_ip"] in ips[r["account"]] or r["account"] in _rotating(scenario) for r in records
        )
        sent = Counter(
            (e.account, e.client_ip, e.path, e.text(), canonical_json(ledger_params(e)))
            for e in scenario.events
        )
        seen = Counter(
            (r["account"], r["client_ip"], r["endpoint"], r["prompt"], canonical_json(r["params"]))
            for r in calls
        )
        assert seen == sent  # every event arrived as sent, with the IP, text and parameters the persona chose
        accounts = {a["name"]: a for a in gw.accounts.list_accounts()}
        assert set(accounts) == {a.name for a in scenario.accounts}
        assert all(accounts[a.name]["org"] == a.org for a in scenario.accounts)
        assert read_labels(res.labels_path) == scenario.labels()
        log = json.loads(res.log_path.read_text())
        assert sum(a["ok"] for a in log["accounts"].values()) == len(scenario.events)
        sybils = sorted((a for a in scenario.accounts if a.persona == "sybil"), key=lambda a: a.created)
        created = [gw.accounts.get_account(a.name)["created"] for a in sybils]
        first = min(gw.accounts.get_account(a.name)["created"] for a in scenario.accounts)
        assert min(created) > first  # the campaign signs up during the replay, not with the old customers
        # replayed in simulated-time order at the compressed pace
        starts = sorted(r["ts_start"] for r in calls)
        assert 2.5 < starts[-1] - starts[0] < 15.0  # not as fast as possible: paced over ~3 s
        slots = [(e.t - scenario.events[0].t) / res.time_scale for e in scenario.events]
        late = sorted(s - starts[0] - slot for s, slot in zip(starts, slots, strict=True))
        assert late[len(late) // 2] < 1.0  # the k-th request goes out near the k-th event's slot
    finally:
        gw.stop()


def _rotating(scen):
    """Accounts whose requests come from addresses beyond their listed ones (rotating proxies)."""
    return {a.name for a in scen.accounts if a.persona == "paraphrase"}


REACT = Scale(
    "react",
    1.0,
    {
        "casual_chat": ((3, 12, {}),),
        "researcher": ((1, 25, {}),),
        "coverage": ((1, 70, {}),),
        "logprob": ((1, 30, {}),),
        "sybil": ((3, 20, {}),),
    },
)


def test_simulate_reacts_to_suspension_restriction_and_rate_limits(tmp_path, pools):
    scen = build_scenario(REACT, seed=5, pools=pools)
    casual = next(
        a.name for a in scen.accounts if a.persona == "casual_chat" and len(by_persona_acct(scen, a)) > 3
    )
    sybil = min((a for a in scen.accounts if a.persona == "sybil"), key=lambda a: a.created).name
    logprob = next(a.name for a in scen.accounts if a.persona == "logprob")
    researcher = next(a.name for a in scen.accounts if a.persona == "researcher")
    gw = start(backend="stub", trusted_proxies=("127.0.0.1/32",), default_rpm=40)
    store = gw.accounts
    pending = {casual: "suspended", sybil: "suspended", logprob: "restricted", researcher: "restricted"}

    def act(done, total):  # the monitor's decisions, landing while the traffic flows
        for name, tier in list(pending.items()):
            try:
                store.set_tier(name, tier, reason="test", actor="monitor")
            except UserError:
                continue  # not signed up yet
            del pending[name]

    try:
        res = simulate(
            gw.base_url,
            out=tmp_path / "sim",
            account_store=store,
            scenario=scen,
            concurrency=6,
            max_backoff=0.2,
            progress=act,
        )
        assert not pending
        logs = res.accounts
        # a benign user whose account is suspended gives up
        assert logs[casual].dead_reason == "account_suspended" and logs[casual].gave_up
        assert logs[casual].dropped >= 1 and not logs[casual].switched_to
        # a Sybil account taken out: its remaining work moves to another account of the campaign
        assert logs[sybil].dead_reason == "account_suspended"
        (heir,) = set(logs[sybil].switched_to)
        assert res.labels[heir]["campaign"] == res.labels[sybil]["campaign"] and not logs[heir].spare
        own = sum(1 for e in scen.events if e.account == heir)
        assert logs[heir].sent > own
        # the logprob extractor, restricted, registers a spare account labelled as itself
        (spare,) = set(logs[logprob].switched_to)
        assert logs[spare].spare and res.labels[spare] == res.labels[logprob]
        assert read_labels(res.labels_path)[spare]["persona"] == "logprob"
        assert store.get_account(spare)["tier"] == "normal" and logs[spare].ok > 0
        # the restricted researcher keeps going without logprobs
        assert logs[researcher].dead_at is None and logs[researcher].restricted_at is not None
        lp_events = [e for e in scen.events if e.account == researcher and "logprobs" in e.params]
        assert len(lp_events) >= 3 and logs[researcher].degraded >= len(lp_events) - 1
        # the distiller ran into the per-key rpm and retried
        cov = next(a.name for a in scen.accounts if a.persona == "coverage")
        assert logs[cov].status[429] > 0 and logs[cov].retries > 0
        records = list(gw.ledger().iter_records())
        refused = Counter((r["account"], r["error_code"]) for r in records if r["status"] != 200)
        assert refused[(casual, "account_suspended")] >= 1 and refused[(sybil, "account_suspended")] >= 1
        assert refused[(logprob, "not_allowed_for_tier")] >= 1
        assert any(r["account"] == spare and r["status"] == 200 for r in records)
        answered = [r["params"] for r in records if r["account"] == researcher and r["status"] == 200]
        log = logs[researcher]
        assert len(answered) == log.ok and log.ok + log.dropped == sum(
            e.account == researcher for e in scen.events
        )
        assert sum(bool(p["logprobs"]) for p in answered) <= 1  # at most one before the restriction landed
    finally:
        gw.stop()


def by_persona_acct(scen, acct):
    return [e for e in scen.events if e.account == acct.name]


def test_cli_synthetic_ledger_http_replay_and_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTILLGUARD_SECRET", TEST_SECRET)
    base = ["simulate", "--scale", "tiny", "--persona", "sybil", "--persona", "support_bot", "--no-progress"]
    code, out, err = run_cli(
        [*base, "--synthetic", "--ledger", str(tmp_path / "l.db"), "--accounts-db", str(tmp_path / "a.db"),
         "--out", str(tmp_path / "o"), "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    ledger = Ledger(tmp_path / "l.db", secret=TEST_SECRET.encode())
    assert ledger.verify().ok and data["records"] == ledger.count() > 0
    labels = read_labels(tmp_path / "o" / "labels.json")
    assert {v["persona"] for v in labels.values()} == {"sybil", "support_bot"}
    store = SQLiteAccountStore(tmp_path / "a.db", TEST_SECRET.encode())
    assert {a["name"] for a in store.list_accounts()} == set(labels)
    store.close()

    for argv, message in (
        (["simulate", "--out", str(tmp_path)], "give --gateway"),
        (["simulate", "--synthetic", "--out", str(tmp_path)], "exactly one of --ledger"),
        ([*base, "--gateway", "http://127.0.0.1:9", "--admin-token", ADMIN_TOKEN, "--out", str(tmp_path)],
         "cannot reach the gateway"),
        ([*base, "--gateway", "http://x", "--out", str(tmp_path)], "--admin-token"),
        (["simulate", "--scale", "huge", "--gateway", "http://x", "--admin-token", ADMIN_TOKEN,
          "--out", str(tmp_path / "o")],
         "unknown scale"),
    ):  # fmt: skip
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err

    gw = start(backend="stub", trusted_proxies=("127.0.0.1/32",))
    try:
        argv = [*base, "--gateway", gw.base_url, "--admin-token", ADMIN_TOKEN, "--out", str(tmp_path / "h")]
        code, out, err = run_cli([*argv, "--duration", "1", "--json"], capsys)
        assert code == 0, err
        data = json.loads(out)
        assert data["requests"] == data["ok"] == data["events"] > 0
        assert {r["persona"] for r in data["personas"]} == {"sybil", "support_bot"}
        code, out, err = run_cli(
            ["simulate", "--gateway", gw.base_url, "--admin-token", "wrong-token-0123456789",
             "--out", str(tmp_path / "w"), "--scale", "tiny", "--persona", "sybil", "--no-progress"],
            capsys,
        )  # fmt: skip
        assert code == 2 and "refused the admin token" in err
    finally:
        gw.stop()

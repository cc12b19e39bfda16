"""End to end against a real gateway: simulated customers and attackers talk to it over HTTP, the monitor
calibrates on a benign period of its ledger, scans the next period, applies tiers through the account
store, and the gateway enforces them on the next request; an operator reverts one decision."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from cli_run import run_cli
from distillguard.gateway.ledger import Ledger
from distillguard.monitor.scenario import Scale, build_scenario
from distillguard.monitor.simulate import simulate
from distillguard.monitor.simworld import Pools
from distillguard.monitor.synth import read_labels
from gateway_server import ADMIN_TOKEN, TEST_SECRET, start

BENIGN = {
    "casual_chat": ((20, 30, {}),),
    "coding_assistant": ((3, 50, {}),),
    "support_bot": ((3, 40, {}),),
    "batch_summariser": ((3, 40, {}),),
    "eval_harness": ((3, 30, {}),),
    "researcher": ((10, 30, {}),),
}
MIXED_BENIGN = {
    "casual_chat": ((6, 30, {}),),
    "coding_assistant": ((2, 50, {}),),
    "support_bot": ((2, 40, {}),),
    "batch_summariser": ((2, 40, {}),),
    "eval_harness": ((2, 30, {}),),
    "researcher": ((3, 30, {}),),
}
ATTACKERS = {
    "coverage": ((1, 300, {}),),
    "paraphrase": ((1, 80, {}),),
    "cot": ((1, 150, {}),),
    "logprob": ((1, 60, {}),),
    "sybil": ((8, 50, {}),),
}
# Each simulated day is replayed in DURATION real seconds, one request at a time, so the ledger's order is
# the scenario's and its timing keeps the personas' shape (timing is what the gateway, not the seed, decides)
DURATION = 10.0
# A benign period of ~45 accounts cannot support claims at 1e-3 (the fitted tail is deliberately
# conservative for small references), so this deployment states its false-alarm rates at that size. The
# Sybil campaign's p-value moves with the replay's wall-clock timing (0.003-0.03 over runs: its evidence
# is the profile against 34 reference entities), the customers' stays above 0.9.
CONFIG = """
secret = "{secret}"
accounts_path = "{state}/accounts.db"
ledger_path = "{state}/ledger.db"
monitor_dir = "{state}/monitor"
monitor_throttle_p = 0.1
monitor_restrict_p = 0.08
monitor_suspend_p = 1e-5
monitor_allowlist = ["{allow}"]
"""


@pytest.fixture(scope="module")
def pools() -> Pools:
    return Pools.builtin()


def test_attackers_end_restricted_or_suspended_and_customers_stay_normal(
    tmp_path, pools, monkeypatch, capsys
):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    state = tmp_path / "gw"
    gw = start(backend="stub", trusted_proxies=("127.0.0.1/32",), state_dir=state)
    try:
        reference = build_scenario(Scale("e2e-reference", 1.0, BENIGN), seed=11, pools=pools)
        mixed = build_scenario(Scale("e2e", 1.0, {**MIXED_BENIGN, **ATTACKERS}), seed=12, pools=pools)
        allow = next(a.name for a in mixed.accounts if a.persona == "eval_harness")
        config = tmp_path / "monitor.toml"
        config.write_text(CONFIG.format(secret=TEST_SECRET, state=state, allow=allow))
        # a benign period: the customers alone
        simulate(
            gw.base_url,
            out=tmp_path / "ref",
            admin_token=ADMIN_TOKEN,
            scenario=reference,
            concurrency=1,
            duration=DURATION,
        )
        code, out, err = run_cli(["monitor", "calibrate", "--config", str(config), "--json"], capsys)
        assert code == 0, err
        cal = json.loads(out)
        assert cal["accounts"] >= 25 and Path(cal["reference"]).is_file()
        assert cal["base"]["shipped"] and cal["base"]["entities"] >= 500  # added to the shipped reference
        # a period this short keeps the shipped null (tiers capped), and says how its accounts fare on it
        assert cal["null"] == "base" and cal["capped"] and cal["check"]["accounts"] >= 20
        # the period's own null: the full ladder, which the rest of this test applies
        argv = ["monitor", "calibrate", "--config", str(config), "--json", "--null", "period"]
        code, out, err = run_cli(argv, capsys)
        assert code == 0, err
        cal = json.loads(out)
        assert cal["null"] == "period" and "capped" not in cal
        assert "warning" not in cal and "warning" not in err
        # a period of a few accounts as its own null is saved, and called what it is
        few = dict(list(read_labels(tmp_path / "ref" / "labels.json").items())[:8])
        (tmp_path / "few.json").write_text(json.dumps(few))
        argv = ["monitor", "calibrate", "--config", str(config), "--labels", str(tmp_path / "few.json")]
        argv += ["--null", "period"]
        code, out, err = run_cli([*argv, "--out", str(tmp_path / "few.npz")], capsys)
        assert code == 0 and "warning: the reference is fitted on only" in err and "saved" in out, err
        # the next period: other customers and five kinds of attacker
        res = simulate(
            gw.base_url,
            out=tmp_path / "mix",
            admin_token=ADMIN_TOKEN,
            scenario=mixed,
            concurrency=1,
            duration=DURATION,
        )
        assert res.ok == res.requests == len(mixed.events)
        labels = {
            **read_labels(tmp_path / "ref" / "labels.json"),
            **read_labels(tmp_path / "mix" / "labels.json"),
        }
        code, out, err = run_cli(["monitor", "scan", "--config", str(config), "--json", "--apply"], capsys)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["applied"] and doc["calibration"] == "reference"
        rows = {a["account"]: a for a in doc["accounts"]}
        tiers = {a["name"]: a["tier"] for a in gw.accounts.list_accounts()}
        outcome = Counter((labels[a]["kind"], tiers[a]) for a in rows)
        detail = {a: (labels[a]["persona"], tiers[a], rows[a]["p_value"]) for a in rows}
        import os

        if os.environ.get("E2E_DEBUG"):
            Path(os.environ["E2E_DEBUG"]).write_text(repr(sorted(detail.values(), key=lambda x: x[2])))
            Path(os.environ["E2E_DEBUG"] + ".json").write_text(json.dumps(doc, indent=1))
        # a plain-answer collector of a few hundred diverse questions in one burst, alone and asking for
        # nothing else, is what a team's one-off benchmark run looks like (a benign kind of the shipped
        # reference since sim-7), so it is not required to move (docs/heldout.md, "Later still on
        # 2026-12-06"); every other attacker is
        (collector,) = (a for a in rows if labels[a]["persona"] == "coverage")
        for a, row in rows.items():
            if a == collector:
                continue
            if labels[a]["kind"] == "attacker":
                assert tiers[a] in ("restricted", "suspended"), (detail[a], row["reasons"][:8], outcome)
                assert row["reasons"] and row["evidence"]
            else:
                assert tiers[a] == "normal", (detail[a], row["reasons"][:8], outcome)
        # the Sybil campaign was judged as one linked cluster
        sybils = {a for a in rows if labels[a]["persona"] == "sybil"}
        cluster = {rows[a]["cluster"] for a in sybils}
        assert len(cluster) == 1 and None not in cluster
        entry = next(c for c in doc["clusters"] if c["cluster"] in cluster)
        assert set(entry["accounts"]) == sybils and "ip" in entry["reasons"][0]
        assert rows[allow]["allowlisted"] and tiers[allow] == "normal"
        # every change is in the store's history (actor monitor) and the decisions log, with ledger seqs
        hist = gw.accounts.get_account(next(iter(sybils)))["tier_history"]
        assert hist[-1]["actor"] == "monitor" and "cluster" in hist[-1]["reason"]
        logged = [json.loads(x) for x in (state / "monitor" / "decisions.jsonl").read_text().splitlines()]
        moved = {a for a in rows if labels[a]["kind"] == "attacker" and a != collector}
        assert moved <= {d["account"] for d in logged} <= moved | {collector}
        ledger = Ledger(Path(gw.settings.ledger_path))
        seqs = {r["seq"]: r["account"] for r in ledger.iter_records()}
        ledger.close()
        assert all(seqs[s] in logged_acct(logged, d) for d in logged for s in d["seqs"])
        # the gateway enforces the new tiers on the next request
        suspended = next((a for a in rows if tiers[a] == "suspended"), None)
        if suspended is not None:
            key = gw.create_key(suspended)
            r = httpx.post(
                gw.base_url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"model": "stub", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 403 and r.json()["error"]["code"] == "account_suspended"
        # an operator reverts one decision; a second scan leaves it alone
        victim = next(a for a in sybils)
        code, out, err = run_cli(["monitor", "revert", victim, "--config", str(config), "--json"], capsys)
        assert code == 0 and json.loads(out)["to"] == "normal", err
        code, out, err = run_cli(["monitor", "scan", "--config", str(config), "--json", "--apply"], capsys)
        assert code == 0, err
        assert gw.accounts.get_account(victim)["tier"] == "normal"
        assert json.loads(out)["decisions"] == []  # nothing flaps: every other tier is already right
    finally:
        gw.stop()


def logged_acct(logged, d):
    """The accounts whose records may back decision ``d``: its own, or its cluster's members."""
    if d.get("cluster") is None:
        return {d["account"]}
    return {x["account"] for x in logged if x.get("cluster") == d["cluster"]}

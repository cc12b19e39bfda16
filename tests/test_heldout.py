"""The held-out traffic generator: its population is complete and reproducible, and it really goes through
a gateway (accounts via the admin API, requests with the official client, client addresses via the trusted
``X-Forwarded-For``). The monitor is not evaluated here."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest

from cli_run import run_cli
from distillguard.errors import UserError
from distillguard.heldout import words
from distillguard.heldout.drive import SIM_EPOCH, Clock
from distillguard.heldout.population import KINDS, build_population, labels
from distillguard.heldout.retime import retime
from distillguard.heldout.traffic import plan_traffic
from gateway_server import ADMIN_TOKEN, start


def _plan(size: str, seed: int) -> tuple[list[dict], list[dict]]:
    accounts = build_population(size, seed)
    plan = plan_traffic(accounts, size, seed, list(words.API_NAMES))
    return [a.to_dict() for a in accounts], [asdict(r) for r in plan]


def test_population_is_labelled_complete_and_reproducible_from_its_seed() -> None:
    accounts, plan = _plan("small", 3)
    assert (accounts, plan) == _plan("small", 3)
    assert _plan("small", 4) != (accounts, plan)
    assert {a["kind"] for a in accounts} == set(KINDS)
    assert len({a["name"] for a in accounts}) == len(accounts)
    assert {r["account"] for r in plan} == {a["name"] for a in accounts}  # every account sends something
    lab = labels(build_population("small", 3))
    for a in accounts:
        entry = lab[a["name"]]
        assert entry["persona"] == a["kind"]
        assert entry["label"] == entry["kind"] == KINDS[a["kind"]]["label"]
        assert (entry["campaign"] is not None) == (entry["label"] == "attacker")
    # hard negatives are hard: the harness and the support bot send more than most attacker accounts
    per = Counter(r["account"] for r in plan)
    kind_of = {a["name"]: a["kind"] for a in accounts}
    busiest_attacker = max(n for acct, n in per.items() if lab[acct]["label"] == "attacker")
    assert all(per[a] > busiest_attacker / 2 for a in per if kind_of[a] in ("eval_harness", "support_bot"))
    # the Sybil accounts sign up within minutes of each other; the classroom shares one address
    sybil = sorted(a["signup"] for a in accounts if a["kind"] == "sybil_cot")
    assert sybil[-1] - sybil[0] < 3600
    assert len({a["ips"][0] for a in accounts if a["kind"] == "classroom"}) == 1


def test_month_has_the_medium_accounts_six_times_longer() -> None:
    medium, month = build_population("medium", 1), build_population("month", 1)
    assert Counter(a.kind for a in month) == Counter(a.kind for a in medium)
    assert len({a.campaign for a in month if a.campaign}) == len({a.campaign for a in medium if a.campaign})

    def low_and_slow_queries(size: str, accounts) -> float:
        low = {a.name for a in accounts if a.kind == "low_and_slow"}
        plan = plan_traffic(accounts, size, 1, list(words.API_NAMES))
        return sum(r.account in low for r in plan) / len(low)

    # a low-and-slow account sends a handful a day: about six times as many in 30 days as in 5
    ratio = low_and_slow_queries("month", month) / low_and_slow_queries("medium", medium)
    assert 4.5 < ratio < 7.5
    with pytest.raises(UserError, match="unknown size 'year'; choose one of small, medium, month"):
        build_population("year", 1)


def test_clock_compresses_history_and_period_in_order() -> None:
    clock = Clock(-10 * 86400.0, 2 * 86400.0, 20.0)
    assert clock.wall(-10 * 86400.0) == 0.0
    assert clock.wall(0.0) == 2.0  # the history takes a tenth of the duration
    assert clock.wall(86400.0) == 11.0 and clock.wall(2 * 86400.0) == 20.0
    assert Clock(-5.0, 10.0, 0.0).wall(7.0) == 0.0  # as fast as possible


def test_generate_through_a_real_gateway(tmp_path: Path, capsys) -> None:
    gw = start(state_dir=tmp_path / "gw", backend="stub", trusted_proxies=["127.0.0.1/32"])
    out = tmp_path / "run"
    try:
        argv = ["heldout", "generate", "--gateway", gw.base_url, "--admin-token", ADMIN_TOKEN]
        argv += ["--out", str(out), "--size", "small", "--seed", "0", "--duration", "8", "--json"]
        code, stdout, stderr = run_cli(argv, capsys)
        assert code == 0, stderr
        summary = json.loads(stdout)
        ledger = gw.ledger()
        assert ledger.verify().ok
        records = list(ledger.iter_records())
        export = ledger.export_parquet(tmp_path / "export")
    finally:
        gw.stop()

    lab = json.loads((out / "labels.json").read_text())
    population = json.loads((out / "population.json").read_text())
    schedule = [json.loads(line) for line in (out / "schedule.jsonl").read_text().splitlines()]
    assert set(lab) == {a["name"] for a in population["accounts"]}
    assert {v["persona"] for v in lab.values()} == set(KINDS)
    assert summary["requests"] == len(schedule) and summary["accounts"] == len(lab)

    # every labelled account is in the ledger with its traffic, from the addresses it was given
    answered = [r for r in records if r["decision"] == "admitted" and r["endpoint"] != "/v1/models"]
    per_account = Counter(r["account"] for r in answered)
    assert set(per_account) == set(lab)
    sent = Counter(s["account"] for s in schedule if s["status"] == 200)
    assert per_account == sent
    assert sum(sent.values()) >= 0.98 * len(schedule)  # only agents' first tool calls may be refused
    by_id = {s["request_id"]: s for s in schedule}
    for r in answered:
        assert r["client_ip"] == by_id[r["request_id"]]["ip"]
    nat = {r["client_ip"] for r in answered if lab[r["account"]]["persona"] == "classroom"}
    sybil = {r["client_ip"] for r in answered if lab[r["account"]]["persona"] == "sybil_cot"}
    assert len(sybil) > 5 * len(nat)  # rotating proxies vs one school address (plus homes)
    assert any((r.get("params") or {}).get("top_logprobs") == 20 for r in answered)

    # the export on the simulated clock: each request at its scheduled time, in the observed period
    stats = retime(
        export, out / "schedule.jsonl", tmp_path / "sim.parquet", population=out / "population.json"
    )
    assert stats["matched"] >= stats["rows"] - 1  # all but the client's one /v1/models call
    assert stats["accounts"] == len(lab)  # the simulated sign-ups, beside the copy, for account linking
    # the CLI: a directory of its own beside the export, the population found next to the schedule
    argv = [
        "heldout",
        "retime",
        "--parquet",
        str(export),
        "--schedule",
        str(out / "schedule.jsonl"),
        "--json",
    ]
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["path"] == str(export.parent / "sim" / "ledger.parquet") and doc["accounts"] == len(lab)
    assert (export.parent / "sim" / "accounts.parquet").is_file()
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "sim.parquet").to_pydict()
    for rec_text, ts in zip(table["record"], table["ts"], strict=True):
        rec = json.loads(rec_text)
        assert rec["ts"] == ts
        if rec["request_id"] in by_id:
            assert ts == by_id[rec["request_id"]]["ts"]
    assert min(table["ts"]) >= SIM_EPOCH and max(table["ts"]) < SIM_EPOCH + 2 * 86400

    # the monitor on it, before any calibration (the shipped reference): the hard negatives stay normal,
    # the Sybil campaign and the logprob harvester do not
    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.jobs import read
    from distillguard.monitor.scan import ScanOptions, analyse, parquet_batches, parquet_created
    from distillguard.monitor.shipped import load_shipped_reference

    created = parquet_created(tmp_path / "sim.parquet")
    assert set(created) == set(lab) and min(created.values()) < SIM_EPOCH  # aged accounts signed up before
    analysis = analyse(
        read(parquet_batches(tmp_path / "sim.parquet"), ScanOptions(sample_size=64, sketch_key=bytes(32))),
        load_shipped_reference(),
        created=created,
    )
    flagged = {a for a, v in analysis.accounts.items() if Policy().target(v.p_value) != "normal"}
    kind = {a: v["persona"] for a, v in lab.items()}
    assert not {a for a in flagged if lab[a]["label"] == "benign"}, [(a, kind[a]) for a in flagged]
    assert any(kind[a] == "sybil_cot" for a in flagged) and any(
        kind[a] == "logprob_harvester" for a in flagged
    )

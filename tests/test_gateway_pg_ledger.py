"""The shared ledger on a real PostgreSQL server: one chain per replica, each verified on its own."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from distillguard.errors import UserError
from distillguard.gateway.ledger import LedgerStore, ledger_from_config, open_ledger
from distillguard.gateway.ledger_export import parquet_schema
from distillguard.gateway.ledger_pg import PostgresLedger

SECRET = b"k" * 32


def _rec(i: int, account: str = "alice", **extra) -> dict:
    return {
        "ts": 1_700_000_000.0 + i,
        "decision": "admitted",
        "account": account,
        "prompt_tokens": i,
        **extra,
    }


@pytest.fixture
def replicas(postgres_url: str):
    a = PostgresLedger(postgres_url, SECRET, replica="gw-a")
    b = PostgresLedger(postgres_url, SECRET, replica="gw-b")
    yield a, b
    a.close()
    b.close()


def _sql(url: str, sql: str, params: tuple = ()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


def test_replicas_append_to_their_own_chains_at_once(replicas, postgres_url: str) -> None:
    a, b = replicas
    assert isinstance(a, LedgerStore)
    errors: list[BaseException] = []

    def run(ledger: PostgresLedger, offset: int) -> None:
        try:
            for i in range(40):
                if i % 4:
                    ledger.append(_rec(offset + 2 * i))
                else:
                    ledger.append_many([_rec(offset + 2 * i), _rec(offset + 2 * i + 1, "bob")])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(lg, off)) for lg, off in ((a, 0), (b, 1)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    reports = a.verify_chains()
    assert [(r.chain, r.ok, r.records) for r in reports] == [("gw-a", True, 100), ("gw-b", True, 100)]
    assert a.verify().ok and a.verify().records == 200 == b.count()
    assert (a.head()["count"], b.head()["count"]) == (100, 100)
    assert [h["replica"] for h in b.heads()] == ["gw-a", "gw-b"]
    records = list(b.iter_records())
    assert [r["seq"] for r in records] == list(range(1, 201))  # merged by time, numbered in that order
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    assert {r["replica"] for r in records} == {"gw-a", "gw-b"}
    assert sorted(r["chain_seq"] for r in records if r["replica"] == "gw-a") == list(range(1, 101))
    assert [r["seq"] for r in b.iter_records(since_seq=195)] == [196, 197, 198, 199, 200]
    with psycopg.connect(postgres_url) as conn:  # durable before the answer, whatever the server default
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"  # the test server's default
    with a._db.read() as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_verify_names_the_first_bad_record_of_each_chain(replicas, postgres_url: str) -> None:
    a, b = replicas
    for i in range(5):
        a.append(_rec(i))
        b.append(_rec(i, "bob"))
    _sql(postgres_url, "UPDATE ledger SET record = replace(record, 'alice', 'mallory'), account = 'mallory'"
         " WHERE replica = 'gw-a' AND seq = 3")  # fmt: skip
    _sql(postgres_url, "DELETE FROM ledger WHERE replica = 'gw-b' AND seq = 5")
    reports = {r.chain: r for r in b.verify_chains()}
    assert (reports["gw-a"].first_bad_seq, reports["gw-a"].reason) == (
        3,
        "chain gw-a: hash mismatch (record or hash edited)",
    )
    assert reports["gw-b"].first_bad_seq == 5 and "tail truncated after seq 4" in reports["gw-b"].reason
    overall = a.verify()
    assert not overall.ok and overall.chain == "gw-a"


def test_a_record_moved_to_another_chain_or_a_forged_head_is_found(replicas, postgres_url: str) -> None:
    a, b = replicas
    for i in range(3):
        a.append(_rec(i))
    b.append(_rec(9, "bob"))
    _sql(postgres_url, "UPDATE ledger SET replica = 'gw-b', seq = 2 WHERE replica = 'gw-a' AND seq = 3")
    reports = {r.chain: r for r in a.verify_chains()}
    assert "tail truncated after seq 2" in reports["gw-a"].reason
    assert reports["gw-b"].first_bad_seq == 2  # its seq, chain and hash link do not fit chain gw-b
    _sql(postgres_url, "DELETE FROM ledger WHERE replica = 'gw-b' AND seq = 2")
    assert {r.chain: r for r in a.verify_chains()}["gw-b"].ok
    _sql(postgres_url, "UPDATE ledger_head SET hash = md5(hash) || md5(hash) WHERE replica = 'gw-b'")
    assert "head signature is invalid" in {r.chain: r for r in a.verify_chains()}["gw-b"].reason


def test_a_chain_whose_head_row_is_gone_refuses_appends(replicas, postgres_url: str) -> None:
    a, _ = replicas
    a.append(_rec(1))
    _sql(postgres_url, "DELETE FROM ledger_head WHERE replica = 'gw-a'")
    again = PostgresLedger(postgres_url, SECRET, replica="gw-a")  # a restart does not start a new chain
    with pytest.raises(RuntimeError, match="head of ledger chain 'gw-a' is missing"):
        again.append(_rec(2))
    assert "head is missing" in again.verify().reason
    again.close()


def test_export_merges_the_chains_by_time_into_the_embedded_schema(replicas, tmp_path: Path) -> None:
    a, b = replicas
    a.append_many([_rec(0), _rec(2, messages=[{"role": "user", "content": "hi"}])])
    b.append_many([_rec(1, "bob"), _rec(3, "bob")])
    path = a.export_parquet(tmp_path / "out")
    table = pq.read_table(path)
    assert table.schema.equals(parquet_schema())
    rows = table.to_pylist()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    assert [r["account"] for r in rows] == ["alice", "bob", "alice", "bob"]
    assert [json.loads(r["record"])["replica"] for r in rows] == ["gw-a", "gw-b", "gw-a", "gw-b"]
    assert json.loads(rows[2]["messages"]) == [{"content": "hi", "role": "user"}]


def test_opened_from_the_config_like_the_gateway_does(postgres_url: str, tmp_path: Path) -> None:
    config = {"database_url": postgres_url, "secret": SECRET.decode(), "replica_id": "gw-7",
              "redact_prompts": True}  # fmt: skip
    ledger = ledger_from_config(config)
    assert isinstance(ledger, PostgresLedger) and ledger.replica == "gw-7"
    ledger.append(_rec(1, prompt="secret words"))
    (rec,) = ledger.iter_records()
    assert rec["prompt"].startswith("sha256:") and rec["prompt_redacted"] is True
    ledger.close()
    embedded = open_ledger(f"sqlite:///{tmp_path}/state", SECRET)
    assert embedded.path == tmp_path / "state" / "ledger.db"
    embedded.close()
    with pytest.raises(UserError, match="invalid replica_id"):
        PostgresLedger(postgres_url, SECRET, replica="has space")


def test_the_commands_read_the_shared_ledger(
    replicas, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from distillguard.cli import main
    from distillguard.config import load_config
    from distillguard.monitor.jobs import open_source

    a, b = replicas
    a.append_many([_rec(0), _rec(2)])
    b.append(_rec(1, "bob"))
    monkeypatch.setenv("DISTILLGUARD_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DISTILLGUARD_SECRET", SECRET.decode())
    batches, _ = open_source(None, None, load_config())  # what `monitor scan` reads by default
    tables = list(batches)
    assert [acc for t in tables for acc in t.column("account").to_pylist()] == ["alice", "bob", "alice"]
    assert main(["ledger", "head"]) in (0, None)
    heads = json.loads(capsys.readouterr().out)["chains"]
    assert [(h["replica"], h["count"]) for h in heads] == [("gw-a", 2), ("gw-b", 1)]
    assert main(["ledger", "export", "--out", str(tmp_path / "x"), "--json"]) in (0, None)
    assert json.loads(capsys.readouterr().out)["records"] == 3
    _sql(postgres_url, "UPDATE ledger SET tokens = 999 WHERE (replica, seq) IN (('gw-a', 2), ('gw-b', 1))")
    with pytest.raises(SystemExit) as exit_info:
        main(["ledger", "verify"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: ledger record 2: chain gw-a: column tokens does not match the record",
        "error: ledger record 1: chain gw-b: column tokens does not match the record",
    ]


def test_an_sqlite_database_url_keeps_both_files_in_one_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from distillguard.cli import main

    monkeypatch.setenv("DISTILLGUARD_DATABASE_URL", f"sqlite:///{tmp_path}/state")
    monkeypatch.setenv("DISTILLGUARD_SECRET", SECRET.decode())
    assert main(["keys", "create", "--account", "carol", "--json"]) in (0, None)
    assert (tmp_path / "state" / "accounts.db").is_file()
    ledger = ledger_from_config({"database_url": f"sqlite:///{tmp_path}/state", "secret": SECRET.decode()})
    ledger.append(_rec(1))
    ledger.close()
    capsys.readouterr()
    assert main(["ledger", "verify"]) in (0, None)
    assert capsys.readouterr().out.startswith("ledger intact: 1 records")


def test_monitor_follow_reads_every_record_of_every_chain_once(postgres_url: str, tmp_path: Path) -> None:
    """Records that commit after the follower read past their time (a slow request on another replica)
    are read on the next step: the follower keeps a position per chain, not one in the merged order."""
    from distillguard.gateway.accounts import PostgresAccountStore
    from distillguard.monitor.decisions import DecisionLog, Policy
    from distillguard.monitor.follow import Follower
    from distillguard.monitor.scan import ScanOptions
    from test_monitor_detect import T0, _population

    records = [{k: v for k, v in r.items() if k != "seq"} for r in _population(seed=4)]
    a = PostgresLedger(postgres_url, replica="gw-a")
    b = PostgresLedger(postgres_url, replica="gw-b")
    store = PostgresAccountStore(postgres_url, SECRET)
    for name in {r["account"] for r in records}:
        store.create_account(name)
    half = len(records) // 2
    late = [i for i in range(1, half, 2) if i >= half - 40]  # gw-b's, committed after the first step
    a.append_many(records[i] for i in range(0, half, 2))
    b.append_many(records[i] for i in range(1, half - 40, 2))
    opts = ScanOptions(sample_size=64, mmd_null=200)
    log = DecisionLog(tmp_path / "monitor")
    fol = Follower(postgres_url, store, log, Policy(), options=opts, clock=lambda: T0)
    fol.step()
    read_first = half - len(late)
    assert fol.acc.rows == read_first and fol.position == read_first
    b.append_many(records[i] for i in late)  # older than much of what was read
    a.append_many(records[i] for i in range(half, len(records), 2))
    b.append_many(records[i] for i in range(half + 1, len(records), 2))
    again = Follower(postgres_url, store, log, Policy(), options=opts, clock=lambda: T0)  # a restart resumes
    assert again.position == read_first and again.chains == fol.chains
    report = again.step()
    assert again.acc.rows == len(records) and again.position == len(records)
    assert again.acc.account_rows() == Counter(r["account"] for r in records)  # each record exactly once
    assert again.chains == {"gw-a": a.head()["count"], "gw-b": b.head()["count"]}
    assert {d["account"] for d in report["decisions"]} == {"harvester"}
    assert store.get_account("harvester")["tier"] != "normal"
    assert again.step() is None  # nothing new
    for closable in (a, b, store):
        closable.close()

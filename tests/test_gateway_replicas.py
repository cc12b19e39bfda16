"""Two gateway replicas (two `distillguard serve` processes) on one PostgreSQL server and one Redis: one
account store, one ledger (a chain each) and one set of limits. Both servers are real, started by the test.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from distillguard.cli import main
from distillguard.gateway.accounts import open_account_store
from distillguard.gateway.ledger_pg import PostgresLedger
from gateway_server import ADMIN_TOKEN, TEST_SECRET, gateway_settings, start, start_process


def _ask(base_url: str, key: str) -> httpx.Response:
    body = {"model": "stub", "prompt": "hello", "max_tokens": 4}
    return httpx.post(base_url + "/v1/completions", json=body, headers={"authorization": f"Bearer {key}"})


def test_two_replicas_share_accounts_ledger_and_limits(
    postgres_url: str, redis_url: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    common = {"backend": "stub", "database_url": postgres_url, "redis_url": redis_url}
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(
            lambda r: start_process(gateway_settings(tmp_path / r, replica_id=r, **common)), ("gw-a", "gw-b")
        )
    store = open_account_store(postgres_url, TEST_SECRET.encode())  # an operator's CLI on a third host
    try:
        key, key_id = store.create_key("shared", rpm=4)
        # one set of limits: 4 requests a minute in all, whichever replica answers
        codes = [_ask(g.base_url, key).status_code for g in (a, b, a, b, a, b)]
        assert codes == [200, 200, 200, 200, 429, 429]

        other, other_id = store.create_key("other")
        assert _ask(b.base_url, other).status_code == 200
        # revoked through replica A's admin API: the very next request on replica B is refused
        revoked = httpx.delete(
            f"{a.base_url}/admin/keys/{other_id}", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        t0 = time.monotonic()
        assert revoked.status_code == 200, revoked.text
        r = _ask(b.base_url, other)
        elapsed = time.monotonic() - t0
        assert (r.status_code, r.json()["error"]["code"]) == (401, "key_revoked")
        assert elapsed < 1.0, elapsed  # the stated bound; the store is read on every request
        # a ban through the CLI (DISTILLGUARD_DATABASE_URL) applies on both at once
        monkeypatch.setenv("DISTILLGUARD_DATABASE_URL", postgres_url)
        monkeypatch.setenv("DISTILLGUARD_SECRET", TEST_SECRET)
        third, _ = store.create_key("third")
        assert main(["accounts", "ban", "third", "--reason", "scraping"]) in (0, None)
        assert {_ask(g.base_url, third).status_code for g in (a, b)} == {403}
    finally:
        store.close()
        a.stop()
        b.stop()

    # one ledger: a chain per replica, both intact, every decision recorded where it was made
    ledger = PostgresLedger(postgres_url, TEST_SECRET.encode(), replica="reader")
    try:
        chains = {r.chain: r for r in ledger.verify_chains()}
        assert set(chains) == {"gw-a", "gw-b"} and all(r.ok and r.signed for r in chains.values())
        records = [r for r in ledger.iter_records() if r.get("account") == "shared"]
        assert [(r["replica"], r["decision"]) for r in records] == [
            ("gw-a", "admitted"), ("gw-b", "admitted"), ("gw-a", "admitted"), ("gw-b", "admitted"),
            ("gw-a", "refused"), ("gw-b", "refused"),
        ]  # fmt: skip
    finally:
        ledger.close()
    capsys.readouterr()
    assert main(["ledger", "verify", "--json"]) in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [c["chain"] for c in report["chains"]] == ["gw-a", "gw-b"]


def test_admin_and_cli_verify_report_every_chain(
    postgres_url: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Two broken chains and an intact one: /admin/ledger/verify and `ledger verify` report all three."""
    settings = gateway_settings(tmp_path, backend="stub", database_url=postgres_url, replica_id="gw-a")
    others = [PostgresLedger(postgres_url, TEST_SECRET.encode(), replica=r) for r in ("gw-b", "gw-c")]
    with start(settings) as g:
        store = open_account_store(postgres_url, TEST_SECRET.encode())
        key, _ = store.create_key("alice")
        store.close()
        assert [_ask(g.base_url, key).status_code for _ in range(3)] == [200, 200, 200]
        for i, ledger in enumerate(others):
            for j in range(4):
                ledger.append({"ts": 1_700_000_000.0 + j, "decision": "admitted", "account": f"u{i}"})
            ledger.close()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("UPDATE ledger SET tokens = 999 WHERE replica = 'gw-a' AND seq = 2")
            conn.execute("DELETE FROM ledger WHERE replica = 'gw-c' AND seq = 4")
        r = httpx.get(g.base_url + "/admin/ledger/verify", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200, r.text
        report = r.json()
    chains = {c["chain"]: c for c in report["chains"]}
    assert [(c["chain"], c["ok"], c["records"], c["first_bad_seq"]) for c in report["chains"]] == [
        ("gw-a", False, 1, 2),
        ("gw-b", True, 4, None),
        ("gw-c", False, 3, 4),
    ]
    assert chains["gw-a"]["reason"] == "chain gw-a: column tokens does not match the record"
    assert chains["gw-c"]["reason"].startswith("chain gw-c: tail truncated after seq 3")
    assert chains["gw-b"]["signed"] and chains["gw-b"]["head_hash"]
    # the top-level fields are the first bad chain's, as before there were several
    assert (report["ok"], report["first_bad_seq"], report["reason"]) == (False, 2, chains["gw-a"]["reason"])

    monkeypatch.setenv("DISTILLGUARD_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DISTILLGUARD_SECRET", TEST_SECRET)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["ledger", "verify"])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["chain gw-b intact: 4 records"]
    assert err.splitlines() == [
        "error: ledger record 2: chain gw-a: column tokens does not match the record",
        "error: ledger record 4: chain gw-c: tail truncated after seq 3 (head says 4 records)",
    ]
    with pytest.raises(SystemExit):
        main(["ledger", "verify", "--json"])
    assert json.loads(capsys.readouterr().out)["chains"] == report["chains"]

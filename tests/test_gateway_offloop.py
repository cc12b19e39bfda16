"""The gateway's event loop keeps answering while an account-store, ledger or quota call is slow: the store
calls run in worker threads. Slowness is real, not simulated: another connection holds a lock the request's
query needs (a migration's ``LOCK TABLE`` on PostgreSQL, a writer's ``BEGIN IMMEDIATE`` on the SQLite
ledger), or the Redis server that holds the quotas is stopped (``SIGSTOP``: a stalled server)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from distillguard.gateway.accounts import open_account_store
from distillguard.gateway.app import gateway_of
from distillguard.gateway.ledger import Ledger
from distillguard.gateway.ledger_pg import PostgresLedger
from distillguard.gateway.ledger_writer import LedgerWriter
from distillguard.gateway.pg import POOL_SIZE
from gateway_server import ADMIN_TOKEN as ADMIN
from gateway_server import TEST_SECRET, gateway_settings, start
from redis_server import redis_server


def _ask(base_url: str, key: str) -> httpx.Response:
    body = {"model": "stub", "prompt": "hello", "max_tokens": 4}
    return httpx.post(
        base_url + "/v1/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def _waiting_on_lock(url: str) -> bool:
    """Whether some session of the server is waiting for a lock (the gateway's query, stuck)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0] > 0


def _loop_answers_while(slow: Future, base_url: str) -> None:
    """While ``slow`` (a request) is stuck in a store call, /healthz and /metrics answer at once."""
    for path in ("/healthz", "/metrics", "/healthz"):
        t0 = time.monotonic()
        r = httpx.get(base_url + path, timeout=2.0)  # a blocked loop would time out here
        assert r.status_code == 200 and time.monotonic() - t0 < 1.0
    assert not slow.done()  # ... and the stuck request is still waiting


@pytest.mark.parametrize("table", ["keys", "ledger_head"])
def test_a_locked_postgres_table_does_not_stall_the_loop(
    postgres_url: str, tmp_path: Path, table: str
) -> None:
    settings = gateway_settings(tmp_path, backend="stub", database_url=postgres_url, replica_id="gw-a")
    store = open_account_store(postgres_url, TEST_SECRET.encode())
    with start(settings) as g, ThreadPoolExecutor(1) as pool:
        key, _ = store.create_key("alice")
        assert _ask(g.base_url, key).status_code == 200  # every table exists, connections are pooled
        with psycopg.connect(postgres_url) as locker:  # a transaction: the lock is held until rollback
            locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            slow = pool.submit(_ask, g.base_url, key)
            deadline = time.monotonic() + 10
            while not _waiting_on_lock(postgres_url):
                assert time.monotonic() < deadline and not slow.done(), "the request never reached the lock"
                time.sleep(0.02)
            _loop_answers_while(slow, g.base_url)
            locker.rollback()
        assert slow.result(timeout=10).status_code == 200
    store.close()
    ledger = PostgresLedger(postgres_url, TEST_SECRET.encode(), replica="reader")
    try:
        (chain,) = ledger.verify_chains()
        assert (chain.chain, chain.ok, chain.records) == ("gw-a", True, 2)
    finally:
        ledger.close()


def test_a_locked_sqlite_ledger_does_not_stall_the_loop(tmp_path: Path) -> None:
    with start(gateway_settings(tmp_path, backend="stub")) as g, ThreadPoolExecutor(1) as pool:
        key = g.create_key("alice")
        assert _ask(g.base_url, key).status_code == 200
        other = sqlite3.connect(g.settings.ledger_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer: the gateway's append waits for the busy timeout
        try:
            slow = pool.submit(_ask, g.base_url, key)
            time.sleep(0.5)  # admitted and answered; its append is waiting for the write lock
            _loop_answers_while(slow, g.base_url)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert slow.result(timeout=10).status_code == 200
        report = g.ledger().verify()
        assert report.ok and report.records == 2


def test_a_stalled_redis_does_not_stall_the_loop(tmp_path: Path) -> None:
    import redis

    with redis_server() as url:  # a server of its own: this test stops it
        pid = int(redis.Redis.from_url(url).info("server")["process_id"])
        settings = gateway_settings(tmp_path, backend="stub", redis_url=url)
        stalled = POOL_SIZE + 2  # more than the account store's threads: quota calls must not take them
        with start(settings) as g, ThreadPoolExecutor(stalled) as pool:
            key = g.create_key("alice")
            assert _ask(g.base_url, key).status_code == 200
            os.kill(pid, signal.SIGSTOP)
            try:
                slow = [pool.submit(_ask, g.base_url, key) for _ in range(stalled)]
                time.sleep(0.5)  # authenticated; their quota reservations wait on the stopped server
                _loop_answers_while(slow[0], g.base_url)
                # the account store still answers: an operator can act while Redis is down
                t0 = time.monotonic()
                r = httpx.get(g.base_url + "/admin/accounts", headers={"authorization": f"Bearer {ADMIN}"})
                assert r.status_code == 200 and time.monotonic() - t0 < 1.0
            finally:
                os.kill(pid, signal.SIGCONT)
            assert all(f.result(timeout=10).status_code == 200 for f in slow)
            usage = gateway_of(g.app).quotas.usage("account:alice")
        # every request counted, every lease released
        assert usage["requests"] == 1 + stalled and usage["concurrent"] == 0


def test_the_writer_commits_in_call_order_and_groups_commits(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db", secret=b"k" * 32)
    writer = LedgerWriter(ledger)

    async def run() -> None:
        await asyncio.gather(*(writer.append({"decision": "admitted", "i": i}) for i in range(200)))
        writer.append_now({"decision": "refused", "i": 200})  # a cleanup path: queued behind, not awaited
        await writer.aclose()

    asyncio.run(run())
    assert [r["i"] for r in ledger.iter_records()] == list(range(201))
    assert writer.records == 200 and writer.batches <= 2  # one transaction for a burst, not 200
    assert ledger.verify().ok
    ledger.close()

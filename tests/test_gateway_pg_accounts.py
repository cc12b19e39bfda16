"""The account store on a real PostgreSQL server (started by the test session: tests/postgres_server.py).

The same behaviours as the SQLite store (the checks of tests/test_gateway_accounts.py run here unchanged),
and what several replicas need: a revocation, ban or tier change made through one replica's store (or the
CLI) is what the next request on another replica sees. The store reads on every request, so the bound is
the commit itself: no delay is allowed for in these assertions.
"""

from __future__ import annotations

import threading
import time

import pytest

from distillguard.cli import main
from distillguard.errors import UserError
from distillguard.gateway.accounts import (
    AccountStore,
    PostgresAccountStore,
    SQLiteAccountStore,
    account_store_from_config,
    open_account_store,
)
from test_gateway_accounts import SECRET, _auth_error
from test_gateway_accounts import test_authenticate_from_many_threads as _many_threads
from test_gateway_accounts import test_create_and_authenticate as _create_and_authenticate
from test_gateway_accounts import test_revoke_expiry_ban_and_tiers as _revoke_expiry_ban_and_tiers


@pytest.fixture
def pg_store(postgres_url: str):
    s = PostgresAccountStore(postgres_url, SECRET)
    yield s
    s.close()


def test_same_behaviour_as_sqlite(pg_store: PostgresAccountStore) -> None:
    assert isinstance(pg_store, AccountStore)
    _create_and_authenticate(pg_store)
    _revoke_expiry_ban_and_tiers(pg_store)
    _many_threads(pg_store)


def test_database_holds_only_key_digests(pg_store: PostgresAccountStore, postgres_url: str) -> None:
    import psycopg

    key, key_id = pg_store.create_key("alice")
    with psycopg.connect(postgres_url) as conn:
        dump = repr(conn.execute("SELECT * FROM keys").fetchall())
    assert key_id in dump and key not in dump and key[3:20] not in dump
    other = PostgresAccountStore(postgres_url, b"another secret, 32 bytes long!!!")
    assert _auth_error(other, key).code == "invalid_api_key"  # keys verify only under the server secret
    other.close()


def test_a_change_on_one_replica_applies_to_the_next_request_on_another(postgres_url: str) -> None:
    a = open_account_store(postgres_url, SECRET)
    b = open_account_store(postgres_url, SECRET)  # another replica: its own pool, the same database
    try:
        key, key_id = a.create_key("erin", org="acme")
        other, _ = a.create_key("erin")
        assert b.authenticate(key).org == "acme"  # b's connections are warm before each change
        a.set_tier("erin", "throttled", actor="monitor")
        assert b.authenticate(key).tier == "throttled"
        a.ban("erin", reason="scraping")
        assert _auth_error(b, key).code == "account_banned"
        a.unban("erin")
        assert b.authenticate(key).account == "erin"
        t0 = time.monotonic()
        a.revoke_key(key_id)
        assert _auth_error(b, key).code == "key_revoked"  # the very next request after the commit
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, elapsed  # the stated bound, with the revocation's own commit counted in
        assert b.authenticate(other).account == "erin"
        assert [h["tier"] for h in b.get_account("erin")["tier_history"]] == ["throttled"]
    finally:
        a.close()
        b.close()


def test_replicas_creating_the_same_account_at_once_do_not_collide(postgres_url: str) -> None:
    stores = [PostgresAccountStore(postgres_url, SECRET) for _ in range(3)]
    errors: list[BaseException] = []
    keys: list[str] = []

    def run(store: PostgresAccountStore) -> None:
        try:
            for _ in range(10):
                keys.append(store.create_key("shared", org="acme")[0])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert len(stores[0].list_keys("shared")) == 30
        assert {stores[2].authenticate(k).account for k in keys} == {"shared"}
    finally:
        for s in stores:
            s.close()


def test_cli_acts_on_the_store_named_by_database_url(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DISTILLGUARD_DATABASE_URL", postgres_url)
    monkeypatch.setenv("DISTILLGUARD_SECRET", SECRET.decode())
    replica = account_store_from_config({"database_url": postgres_url, "secret": SECRET.decode()})
    assert isinstance(replica, PostgresAccountStore)
    key, key_id = replica.create_key("frank")
    assert main(["keys", "revoke", key_id]) in (0, None)
    assert _auth_error(replica, key).code == "key_revoked"
    assert main(["accounts", "tier", "frank", "restricted", "--reason", "probe"]) in (0, None)
    assert main(["keys", "list", "--json"]) in (0, None)
    assert key_id in capsys.readouterr().out
    assert replica.get_account("frank")["tier"] == "restricted"
    replica.close()


def test_database_url_picks_the_engine(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_account_store(f"sqlite:///{tmp_path}/state", SECRET)
    assert isinstance(s, SQLiteAccountStore) and s.path == tmp_path / "state" / "accounts.db"
    s.close()
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    s = open_account_store(None, SECRET)
    assert s.path == tmp_path / "home" / "gateway" / "accounts.db"  # the embedded default, unchanged
    s.close()
    with pytest.raises(UserError, match=r"^database_url must start with sqlite:/// or postgresql://"):
        open_account_store("mysql://db/x", SECRET)


def test_an_unreachable_server_is_a_one_line_error(postgres_server_url: str) -> None:
    from redis_server import free_port

    url = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/x"
    with pytest.raises(UserError) as info:
        PostgresAccountStore(url, SECRET)
    msg = str(info.value)
    assert msg.startswith("cannot connect to PostgreSQL at postgresql://app:***@127.0.0.1:")
    assert "\n" not in msg and "hunter2" not in msg


def test_a_database_outage_fails_closed_and_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from distillguard.gateway import pg
    from postgres_server import postgres_server

    monkeypatch.setattr(pg, "POOL_TIMEOUT_S", 1.0)
    with postgres_server() as url:  # a server of its own, stopped while the store is open
        store = PostgresAccountStore(url, SECRET)
        key, _ = store.create_key("alice")
        assert store.authenticate(key).account == "alice"
    try:
        for _ in range(2):  # the broken pooled connection, then waiting for a new one
            t0 = time.monotonic()
            with pytest.raises(psycopg.OperationalError):  # PoolTimeout is one too: no principal either way
                store.authenticate(key)
            assert time.monotonic() - t0 < 2.5
    finally:
        store.close()


def test_settings_name_the_database_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from distillguard.gateway.settings import GatewaySettings

    monkeypatch.setenv("DISTILLGUARD_DATABASE_URL", "postgresql://dg:hunter2@db:5432/distillguard")
    monkeypatch.setenv("DISTILLGUARD_REPLICA_ID", "gw-3")
    s = GatewaySettings.load()
    assert s.storage().database_url == "postgresql://dg:hunter2@db:5432/distillguard"
    assert s.storage().replica_id == "gw-3" and s.storage().is_postgres
    assert s.public()["database_url"] == "postgresql://dg:***@db:5432/distillguard"
    assert GatewaySettings.load(database_url="sqlite:///x").database_url == "sqlite:///x"  # a flag wins

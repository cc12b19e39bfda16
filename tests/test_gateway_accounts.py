"""Accounts and keys (HMAC-only storage, revocation, bans, tiers, expiry, models), the admin CLI, IP rules."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distillguard.cli import main
from distillguard.errors import UserError
from distillguard.gateway.accounts import (
    AccountStore,
    AuthError,
    Limits,
    SQLiteAccountStore,
    account_store_from_config,
    gateway_secret,
    load_or_create_secret,
)
from distillguard.gateway.ipfilter import UNPARSEABLE, IPRules
from distillguard.gateway.settings import GatewaySettings

SECRET = b"s" * 32


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    s = SQLiteAccountStore(tmp_path / "accounts.db", SECRET)
    yield s
    s.close()


def _auth_error(store: AccountStore, key: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        store.authenticate(key)
    assert not key or (key not in info.value.message and key not in str(info.value))
    return info.value


def test_create_and_authenticate(store: AccountStore) -> None:
    key, key_id = store.create_key(
        "alice",
        org="acme",
        rpm=60,
        tpm=1000,
        daily_tokens=50_000,
        max_concurrent=2,
        models=["aster", "aster"],
    )
    assert key.startswith("dg-") and len(key) >= 3 + 43  # 32 random bytes, url-safe base64
    assert key_id.startswith("key_") and len(key_id) == 4 + 12 and int(key_id[4:], 16) >= 0
    p = store.authenticate(key)
    assert (p.key_id, p.account, p.org, p.tier) == (key_id, "alice", "acme", "normal")
    assert p.key_limits == Limits(rpm=60, tpm=1000, daily_tokens=50_000, max_concurrent=2)
    assert p.account_limits == Limits()
    assert p.models == ("aster",) and p.allows_model("aster") and not p.allows_model("other")
    store.set_account_limits("alice", Limits(rpm=100))
    assert store.authenticate(key).account_limits == Limits(rpm=100)
    key2, _ = store.create_key("alice")
    p2 = store.authenticate(key2)
    assert p2.models is None and p2.allows_model("anything") and p2.org == "acme"
    with pytest.raises(UserError, match="belongs to org 'acme'"):
        store.create_key("alice", org="other")


def test_unknown_and_malformed_keys_are_401(store: AccountStore) -> None:
    key, _ = store.create_key("alice")
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    for bad in (tampered, "dg-" + "x" * 43, "sk-" + key[3:], "", "dg-" + "y" * 1000):
        err = _auth_error(store, bad)
        assert (err.status, err.code, err.who) == (401, "invalid_api_key", None)
    other = SQLiteAccountStore(store.path, b"another secret, 32 bytes long!!!")
    assert _auth_error(other, key).code == "invalid_api_key"  # keys only verify under the server secret
    other.close()


def test_database_never_contains_the_key(store: AccountStore, tmp_path: Path) -> None:
    keys = [store.create_key(f"acct{i}")[0] for i in range(5)]
    store.authenticate(keys[0])
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("accounts.db"))
    for key in keys:
        assert key.encode() not in raw and key[3:].encode() not in raw and key[3:20].encode() not in raw
    listed = json.dumps(store.list_keys()) + json.dumps(store.list_accounts())
    assert all(k[3:20] not in listed for k in keys) and "hash" not in listed
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


def test_revoke_expiry_ban_and_tiers(store: AccountStore) -> None:
    key, key_id = store.create_key("bob")
    other, _ = store.create_key("bob")
    store.revoke_key(key_id)
    store.revoke_key(key_id)  # twice is fine
    err = _auth_error(store, key)
    assert (err.status, err.code) == (401, "key_revoked")
    assert err.who == (key_id, "bob", None, "normal")  # a recognised key's refusal is attributable
    assert store.authenticate(other).account == "bob"
    with pytest.raises(UserError, match="unknown key id"):
        store.revoke_key("key_000000000000")

    expired, _ = store.create_key("carol", expires_at=time.time() - 1)
    assert _auth_error(store, expired).code == "key_expired"
    fresh, _ = store.create_key("carol", expires_at=time.time() + 3600)
    assert store.authenticate(fresh).expires_at is not None

    store.ban("bob", reason="scraping")
    err = _auth_error(store, other)
    assert (err.status, err.code) == (403, "account_banned")
    store.unban("bob")
    assert store.authenticate(other).tier == "normal"

    store.set_tier("bob", "restricted", reason="logprob harvesting", actor="monitor")
    assert store.authenticate(other).tier == "restricted"
    store.set_tier("bob", "restricted", actor="monitor")  # re-asserted: no new history entry
    store.set_tier("bob", "suspended", reason="distillation campaign", actor="monitor")
    err = _auth_error(store, other)
    assert (err.status, err.code) == (403, "account_suspended")
    store.ban("bob")
    assert _auth_error(store, other).code == "account_banned"  # a ban outranks the tier
    store.unban("bob")
    store.set_tier("bob", "normal")
    info = store.get_account("bob")
    assert [(h["previous"], h["tier"], h["actor"]) for h in info["tier_history"]] == [
        ("normal", "restricted", "monitor"),
        ("restricted", "suspended", "monitor"),
        ("suspended", "normal", "cli"),
    ]
    assert info["tier_history"][1]["reason"] == "distillation campaign"
    assert [k["status"] for k in info["keys"]] == ["revoked", "active"]
    assert {k["status"] for k in store.list_keys("carol")} == {"expired", "active"}
    with pytest.raises(UserError, match="unknown tier"):
        store.set_tier("bob", "gold")
    with pytest.raises(UserError, match="unknown account"):
        store.ban("nobody")
    with pytest.raises(UserError, match="positive integer"):
        store.create_key("dave", rpm=0)
    with pytest.raises(UserError, match="invalid account name"):
        store.create_key("bad name")


def test_changes_by_another_instance_apply_to_the_next_request(store: AccountStore) -> None:
    key, key_id = store.create_key("erin")
    assert store.authenticate(key).tier == "normal"  # warms this thread's connection
    admin = SQLiteAccountStore(store.path, SECRET)
    admin.set_tier("erin", "throttled")
    assert store.authenticate(key).tier == "throttled"
    admin.ban("erin")
    assert _auth_error(store, key).code == "account_banned"
    admin.unban("erin")
    admin.revoke_key(key_id)
    assert _auth_error(store, key).code == "key_revoked"
    admin.close()


def test_authenticate_from_many_threads(store: AccountStore) -> None:
    keys = [store.create_key(f"t{i}")[0] for i in range(4)]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for _ in range(50):
                assert store.authenticate(keys[i % 4]).account == f"t{i % 4}"
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _open_fds(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # fds closed while listing
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


def test_connections_of_finished_threads_are_closed(store: AccountStore) -> None:
    """Thread pools retire idle workers; their per-thread connections must not pile up."""
    import gc

    key, _ = store.create_key("pool")
    counts = []
    for _ in range(3):
        for _ in range(50):
            t = threading.Thread(target=store.authenticate, args=(key,))
            t.start()
            t.join()
        gc.collect()
        counts.append(_open_fds(store.path))
    # SQLite parks the descriptors of closed connections while the process holds locks on the file and
    # reuses them: their number stays bounded instead of growing with every thread that ever ran (150)
    assert counts[-1] < 100, counts


def test_secret_file_is_private_reused_and_race_free(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "gw" / "secret"
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(load_or_create_secret(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results[0]) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_secret(path) == results[0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret"]  # no temp files left
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    assert (
        gateway_secret({}) == gateway_secret(None) == (tmp_path / "home" / "gateway" / "secret").read_bytes()
    )
    assert gateway_secret({"secret": 1234567890123456789}) == b"1234567890123456789"  # env-coerced int
    with pytest.raises(UserError, match="at least 16"):
        gateway_secret({"secret": "short"})


# -- CLI ----------------------------------------------------------------------------------------------


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'accounts_path = "{tmp_path / "acc.db"}"\nledger_path = "{tmp_path / "ledger.db"}"\n'
        'secret = "a-config-secret-of-32-characters"\n'
    )
    return path


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_keys_and_accounts(cfg: Path, capsys) -> None:
    code, out, _ = _cli(
        capsys, "keys", "create", "--account", "ann", "--org", "acme", "--rpm", "30", "--tpm", "900",
        "--daily-tokens", "5000", "--max-concurrent", "3", "--expires-in-days", "7", "--model", "aster",
        "--model", "aster-mini", "--config", str(cfg), "--json",
    )  # fmt: skip
    assert code == 0
    created = json.loads(out)
    assert set(created) == {"key", "key_id"}
    store = account_store_from_config(
        {"accounts_path": str(cfg.parent / "acc.db"), "secret": "a-config-secret-of-32-characters"}
    )
    p = store.authenticate(created["key"])
    assert p.key_id == created["key_id"] and p.models == ("aster", "aster-mini") and p.org == "acme"
    assert p.key_limits == Limits(30, 900, 5000, 3) and 6.9 * 86400 < p.expires_at - time.time() <= 7 * 86400

    code, out, _ = _cli(capsys, "keys", "list", "--config", str(cfg), "--json")
    assert code == 0 and created["key"] not in out
    assert [k["key_id"] for k in json.loads(out)["keys"]] == [created["key_id"]]

    assert (
        _cli(capsys, "accounts", "tier", "ann", "restricted", "--reason", "logprobs", "--config", str(cfg))[0]
        == 0
    )
    assert store.authenticate(created["key"]).tier == "restricted"
    code, out, _ = _cli(capsys, "accounts", "ban", "ann", "--config", str(cfg), "--json")
    assert code == 0 and json.loads(out)["banned"] is True
    assert _auth_error(store, created["key"]).code == "account_banned"
    assert _cli(capsys, "accounts", "unban", "ann", "--config", str(cfg))[0] == 0
    code, out, _ = _cli(capsys, "accounts", "limits", "ann", "--rpm", "100", "--config", str(cfg), "--json")
    assert code == 0 and json.loads(out)["limits"] == {
        "rpm": 100,
        "tpm": None,
        "daily_tokens": None,
        "max_concurrent": None,
    }
    code, out, _ = _cli(capsys, "accounts", "show", "ann", "--config", str(cfg), "--json")
    shown = json.loads(out)
    assert shown["tier"] == "restricted" and shown["tier_history"][0]["reason"] == "logprobs"
    # what the tier does to the account's answers, as this installation configures it
    assert shown["policy"]["logprobs"] == {"allowed": False}
    assert shown["policy"]["sampling_defence"]["name"] == "ads"
    code, out, _ = _cli(capsys, "accounts", "show", "ann", "--config", str(cfg))
    assert code == 0 and "policy: logprobs refused, sampling ads" in out
    code, out, _ = _cli(capsys, "accounts", "list", "--config", str(cfg), "--json")
    assert [(a["name"], a["active_keys"]) for a in json.loads(out)["accounts"]] == [("ann", 1)]
    code, out, _ = _cli(capsys, "accounts", "list", "--config", str(cfg))
    assert code == 0 and "ann" in out and "restricted" in out
    assert _cli(capsys, "keys", "revoke", created["key_id"], "--config", str(cfg))[0] == 0
    assert _auth_error(store, created["key"]).code == "key_revoked"
    store.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["accounts", "tier", "ann", "gold"], "unknown tier 'gold'"),
        (["accounts", "ban", "nobody"], "unknown account 'nobody'"),
        (["keys", "revoke", "key_ffffffffffff"], "unknown key id"),
        (["keys", "create", "--account", "ann", "--rpm", "0"], "--rpm"),
        (
            ["keys", "create", "--account", "ann", "--expires-in-days", "-1"],
            "--expires-in-days must be positive",
        ),
        (["keys", "create", "--account", "has space"], "invalid account name"),
        (["ledger", "verify"], "no ledger at"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(cfg: Path, capsys, argv: list[str], message: str) -> None:
    _cli(capsys, "keys", "create", "--account", "ann", "--config", str(cfg), "--json")
    code, out, err = _cli(capsys, *argv, "--config", str(cfg))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_cli_missing_config_file(tmp_path: Path, capsys) -> None:
    code, _, err = _cli(capsys, "keys", "list", "--config", str(tmp_path / "nope.toml"))
    assert code == 2 and err.startswith("error: config file not found")


def test_ban_from_a_cli_subprocess_is_seen_by_a_running_store(cfg: Path, tmp_path: Path) -> None:
    store = SQLiteAccountStore(tmp_path / "acc.db", b"a-config-secret-of-32-characters")
    key, _ = store.create_key("mallory")
    assert store.authenticate(key).account == "mallory"
    env = {**os.environ, "DISTILLGUARD_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "distillguard.cli", "accounts", "ban", "mallory", "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _auth_error(store, key).code == "account_banned"
    store.close()


# -- IP rules -----------------------------------------------------------------------------------------


def test_ip_allow_deny() -> None:
    rules = IPRules(allow=["10.0.0.0/8", "2001:db8::/32"], deny=["10.6.6.0/24"])
    assert rules.allowed("10.1.2.3") and rules.allowed("2001:db8::1")
    assert not rules.allowed("10.6.6.7")  # deny wins over allow
    assert not rules.allowed("192.168.1.1")  # not in a non-empty allow list
    assert rules.allowed("::ffff:10.1.2.3")  # IPv4-mapped IPv6 is the IPv4 address
    assert not rules.allowed("not-an-ip")
    assert IPRules().allowed("203.0.113.9") and IPRules().allowed("testclient")
    only_deny = IPRules(deny=["203.0.113.0/24"])
    assert only_deny.allowed("198.51.100.1") and not only_deny.allowed("203.0.113.200")
    with pytest.raises(UserError, match="invalid CIDR in deny: '10.0.0.0/33'"):
        IPRules(deny=["10.0.0.0/33"])
    # the settings read comma-separated lists (DISTILLGUARD_IP_DENY=...) into the rules the server applies
    from_env = GatewaySettings.from_mapping({"ip_deny": "1.2.3.0/24, 5.6.7.8", "trusted_proxy": "10.0.0.1"})
    assert from_env.ip_rules().deny[1].prefixlen == 32 and from_env.ip_rules().is_trusted("10.0.0.1")


def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    rules = IPRules(trusted_proxies=["10.0.0.0/8", "fd00::/8"])
    # untrusted peer: its X-Forwarded-For is ignored (anyone can send the header)
    assert rules.client_ip("203.0.113.5", "1.1.1.1") == "203.0.113.5"
    # trusted peer: rightmost hop that is not a trusted proxy; a spoofed prefix further left is ignored
    assert rules.client_ip("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.9") == "198.51.100.7"
    assert rules.client_ip("10.0.0.2", "198.51.100.7") == "198.51.100.7"
    assert rules.client_ip("10.0.0.2", None) == "10.0.0.2"
    assert rules.client_ip("10.0.0.2", "10.0.0.3, 10.0.0.4") == "10.0.0.3"  # all trusted: the leftmost
    # malformed hop: an untrusted client without an address (fails closed under allow lists)
    assert rules.client_ip("10.0.0.2", "garbage") == UNPARSEABLE
    assert not IPRules(allow=["10.0.0.0/8"], trusted_proxies=["10.0.0.0/8"]).allowed(UNPARSEABLE)
    assert rules.client_ip("10.0.0.2", "198.51.100.7:4711") == "198.51.100.7"
    assert rules.client_ip("fd00::1", "[2001:db8::5]:443") == "2001:db8::5"
    assert rules.client_ip("::ffff:10.0.0.2", "198.51.100.8") == "198.51.100.8"

"""Orgs, accounts, API keys, policy tiers and bans: the gateway's who-is-calling store.

Why it looks like this:

- Keys are stored only as ``HMAC-SHA256(server_secret, key)``. A leaked database (backup, replica, a
  ``sqlite3`` session) then yields neither usable keys nor an offline guessing target, because verifying a
  guess needs the secret, which lives in a separate 0600 file (or in the config).
- Lookup is by the HMAC digest (a unique index), followed by ``hmac.compare_digest`` on the fetched digest.
  The index walk compares digests, not keys: timing can at most reveal bits of HMAC outputs of the
  attacker's own guesses, which without the secret say nothing about any stored key.
- Every ``authenticate`` reads the database (one indexed join: tens of microseconds on SQLite's per-thread
  connection, one round trip on a pooled Postgres connection), so a revocation, ban or tier change made by
  the CLI, the admin API or the monitor in another process, or on another replica, applies to the very next
  request. No cache means nothing to invalidate: the staleness bound is zero, not a TTL.
- Two engines behind one :class:`AccountStore` protocol, opened from ``database_url`` by
  :func:`open_account_store`: SQLite (the embedded default; WAL mode with a busy timeout and
  ``BEGIN IMMEDIATE`` writes, so several gateway processes and the admin CLI on one host can share one file)
  and PostgreSQL (many replicas on many hosts; writes serialized by a transaction-level advisory lock, the
  same guarantee). The SQL and the checks are one implementation, :class:`SQLAccountStore`; the engines
  differ only in their schema and connections (:mod:`distillguard.gateway.pg`).

Tiers (docs/architecture.md's ladder) are objects in :mod:`distillguard.gateway.tiers`: the store accepts
any registered tier and asks the account's tier whether to refuse it at authentication (``suspended``: 403);
what a tier does to quotas, requests and the watermark is applied by the server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from distillguard.errors import UserError
from distillguard.gateway.limits import LIMIT_FIELDS as _LIMIT_FIELDS
from distillguard.gateway.limits import Limits
from distillguard.gateway.pg import PostgresConnections, url_scheme
from distillguard.gateway.storage_settings import StorageSettings, sqlite_dir
from distillguard.gateway.tiers import get_tier, tier_names

KEY_PREFIX = "dg-"
_KEY_BYTES = 32  # entropy of a key: 256 bits, url-safe base64 encoded (43 characters)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+\-]{0,127}$")


def __getattr__(name: str) -> Any:
    """``TIERS``: the registered tier names, lowest rank first (computed on use, so a tier registered
    after this module was imported is included)."""
    if name == "TIERS":
        return tier_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request, as read from the store at that request."""

    key_id: str
    account: str
    org: str | None
    tier: str
    key_limits: Limits
    account_limits: Limits
    models: tuple[str, ...] | None  # None = every model
    expires_at: float | None

    def allows_model(self, model: str) -> bool:
        """Whether this key may call ``model`` (keys without a model list may call every model)."""
        return self.models is None or model in self.models


class AuthError(Exception):
    """Authentication or authorization refused; the server maps it to an OpenAI-style error body.

    ``status`` is 401 (the key itself is not usable) or 403 (the key is fine, the account is not allowed).
    ``message`` is safe to show the caller: it never echoes the presented key.
    """

    def __init__(
        self, status: int, code: str, message: str, *, who: tuple[str, str, str | None, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        # (key_id, account, org, tier) when the key itself was recognised, so refusals can be attributed
        self.who = who

    def __repr__(self) -> str:
        return f"AuthError({self.status}, {self.code!r}, {self.message!r})"


def load_or_create_secret(path: Path) -> bytes:
    """Return the server secret stored at ``path``, creating 32 random bytes (mode 0600) on first use.

    Creation is race-free between processes: the secret is written to a private temp file and hard-linked
    into place, so a concurrent starter either wins or reads the winner's complete file.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
                fh.flush()
                os.fsync(fh.fileno())
            with suppress(FileExistsError):  # another process created it first: use theirs
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    data = path.read_bytes()
    if len(data) < 16:
        raise UserError(f"server secret {path} is shorter than 16 bytes; delete it to generate a new one")
    return data


def gateway_secret(config: dict | StorageSettings | None = None) -> bytes:
    """The server secret: the ``secret`` setting (a string, e.g. from ``DISTILLGUARD_SECRET``) or the file
    ``home()/gateway/secret`` (created on first use). Keys and the ledger head are keyed with it."""
    from distillguard.config import home

    value = StorageSettings.from_config(config).secret
    if value is not None:
        raw = value.encode()
        if len(raw) < 16:
            raise UserError("config `secret` must be at least 16 characters")
        return raw
    return load_or_create_secret(home() / "gateway" / "secret")


class _Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced (the base class cannot)."""


class SQLiteConnections:
    """One SQLite connection per thread (and per process: a forked child never reuses its parent's).

    Only weak references are kept besides the thread-local one, so the connection of a worker thread that
    ends (thread pools retire idle workers) is closed with it instead of accumulating.

    Connections are in autocommit mode; writers open ``BEGIN IMMEDIATE`` transactions so that concurrent
    writers queue on the busy timeout instead of failing with a deadlock on lock upgrade.
    """

    def __init__(self, path: Path, synchronous: str = "NORMAL", timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.timeout = timeout
        self._local = threading.local()
        self._all: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # prompts, key hashes: private to the service user (SQLite's -wal/-shm
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # files copy these permissions)
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        mode = self._wal(conn)
        if str(mode).lower() != "wal":
            raise UserError(f"cannot put {self.path} in WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        self._local.conn = conn
        self._local.pid = os.getpid()
        with self._lock:
            self._all.add(conn)
        return conn

    def _wal(self, conn: sqlite3.Connection) -> str:
        """Switch to WAL. A process that opens a new file while another one switches it can get "database
        is locked" at once (SQLite does not call the busy handler there): retry until the busy timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (autocommit: each statement sees the latest commit)."""
        yield self.get()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction, committed on success and rolled back on error."""
        conn = self.get()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            conns, self._all = list(self._all), weakref.WeakSet()
        for conn in conns:
            with suppress(sqlite3.ProgrammingError):  # closed from another thread already
                conn.close()
        self._local = threading.local()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS orgs (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    org TEXT REFERENCES orgs(name),
    tier TEXT NOT NULL DEFAULT 'normal',
    banned INTEGER NOT NULL DEFAULT 0,
    ban_reason TEXT,
    banned_at REAL,
    rpm INTEGER, tpm INTEGER, daily_tokens INTEGER, max_concurrent INTEGER,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    key_hash BLOB NOT NULL UNIQUE,
    account TEXT NOT NULL REFERENCES accounts(name),
    name TEXT,
    rpm INTEGER, tpm INTEGER, daily_tokens INTEGER, max_concurrent INTEGER,
    models TEXT,
    expires_at REAL,
    created REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS keys_by_account ON keys(account);
CREATE TABLE IF NOT EXISTS account_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    value TEXT,
    previous TEXT,
    reason TEXT,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_account ON account_events(account, id);
"""

# the same tables in PostgreSQL's types (timestamps stay UNIX seconds, as in SQLite)
_PG_SCHEMA = (
    _SCHEMA.replace("REAL", "DOUBLE PRECISION")
    .replace("BLOB", "BYTEA")
    .replace("id INTEGER PRIMARY KEY AUTOINCREMENT", "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
)
_PG_WRITE_LOCK = 0x6467_6163  # advisory lock id ("dgac") that serializes account writes, like BEGIN IMMEDIATE

_AUTH_SQL = """
SELECT k.key_id, k.key_hash, k.account, k.rpm, k.tpm, k.daily_tokens, k.max_concurrent, k.models,
       k.expires_at, k.revoked_at, a.org, a.tier, a.banned, a.rpm, a.tpm, a.daily_tokens, a.max_concurrent
FROM keys AS k JOIN accounts AS a ON a.name = k.account
WHERE k.key_hash = ?
"""


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise UserError(
            f"invalid {kind} name {value!r}: use 1-128 letters, digits or _.@:+- "
            "(starting with a letter or digit)"
        )
    return value


def _check_limit(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer (got {value!r})")
    return value


def _check_limits(limits: Limits) -> Limits:
    for f in _LIMIT_FIELDS:
        _check_limit(f, getattr(limits, f))
    return limits


def _check_tier(tier: str) -> str:
    return get_tier(tier).name  # one-line UserError naming the registered tiers


@runtime_checkable
class AccountStore(Protocol):
    """Who is calling: what the gateway, the CLI, the admin API and the monitor need of an account store."""

    def authenticate(self, presented_key: str) -> Principal: ...

    def create_key(self, account: str, **options: Any) -> tuple[str, str]: ...

    def revoke_key(self, key_id: str) -> None: ...

    def list_keys(self, account: str | None = None) -> list[dict]: ...

    def create_account(self, account: str, org: str | None = None) -> None: ...

    def ban(self, account: str, reason: str | None = None, actor: str = "cli") -> None: ...

    def unban(self, account: str, actor: str = "cli") -> None: ...

    def set_tier(self, account: str, tier: str, reason: str | None = None, actor: str = "cli") -> None: ...

    def set_account_limits(self, account: str, limits: Limits, actor: str = "cli") -> None: ...

    def get_account(self, account: str) -> dict: ...

    def list_accounts(self) -> list[dict]: ...

    def close(self) -> None: ...


def open_account_store(
    database_url: str | None, secret: bytes, accounts_path: str | Path | None = None
) -> AccountStore:
    """The account store at ``database_url``: PostgreSQL for ``postgresql://...``; else SQLite at
    ``accounts_path`` or ``<sqlite dir>/accounts.db`` (:func:`sqlite_dir`)."""
    if database_url and url_scheme(database_url) == "postgresql":
        return PostgresAccountStore(database_url, secret)
    path = Path(accounts_path).expanduser() if accounts_path else sqlite_dir(database_url) / "accounts.db"
    return SQLiteAccountStore(path, secret)


def account_store_from_config(config: dict | StorageSettings | None = None) -> AccountStore:
    """The store the gateway and the CLI share: the :class:`StorageSettings` ``database_url`` (or
    ``accounts_path``, or ``home()/gateway/accounts.db``), keyed with :func:`gateway_secret`."""
    s = StorageSettings.from_config(config)
    return open_account_store(s.database_url, gateway_secret(s), s.accounts_path)


def _checked_secret(secret: bytes) -> bytes:
    if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
        raise UserError("the server secret must be at least 16 bytes")
    return bytes(secret)


class SQLAccountStore:
    """The account store's logic over a connection source with ``read()`` and ``write()`` contexts whose
    connections take SQLite-style SQL (``?`` placeholders); the subclasses bring the engine."""

    _db: Any
    _secret: bytes

    def close(self) -> None:
        self._db.close()

    # -- keys ---------------------------------------------------------------------------------------------

    def _digest(self, key: str) -> bytes:
        return hmac.new(self._secret, key.encode("utf-8"), hashlib.sha256).digest()

    def create_key(
        self,
        account: str,
        *,
        org: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        daily_tokens: int | None = None,
        max_concurrent: int | None = None,
        expires_at: float | None = None,
        models: Sequence[str] | None = None,
        name: str | None = None,
        created: float | None = None,
    ) -> tuple[str, str]:
        """Create a key for ``account`` (creating the org and account if missing).

        Returns ``(plaintext_key, key_id)``. The plaintext exists only in this return value; the store keeps
        its HMAC. ``models`` restricts the key to those model names (``None`` or empty: every model).
        ``created`` backdates the key (and a new account) for imports and synthetic histories; default now.
        """
        _check_name("account", account)
        if org is not None:
            _check_name("org", org)
        limits = [
            _check_limit(n, v)
            for n, v in zip(_LIMIT_FIELDS, (rpm, tpm, daily_tokens, max_concurrent), strict=True)
        ]
        if expires_at is not None and not isinstance(expires_at, int | float):
            raise UserError(f"expires_at must be a UNIX timestamp (got {expires_at!r})")
        if isinstance(models, str):
            models = [models]
        model_list: list[str] | None = None
        if models:
            model_list = []
            for m in models:
                if not isinstance(m, str) or not m.strip():
                    raise UserError(f"invalid model name {m!r}")
                if m not in model_list:
                    model_list.append(m)
        key = KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
        key_id = "key_" + secrets.token_hex(6)
        now = time.time() if created is None else float(created)
        with self._db.write() as conn:
            self._ensure_account(conn, account, org, now)
            conn.execute(
                "INSERT INTO keys (key_id, key_hash, account, name, rpm, tpm, daily_tokens, max_concurrent,"
                " models, expires_at, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    self._digest(key),
                    account,
                    name,
                    *limits,
                    json.dumps(model_list) if model_list is not None else None,
                    float(expires_at) if expires_at is not None else None,
                    now,
                ),
            )
        return key, key_id

    def _ensure_account(self, conn: Any, account: str, org: str | None, now: float) -> None:
        if org is not None:
            conn.execute("INSERT INTO orgs (name, created) VALUES (?, ?) ON CONFLICT DO NOTHING", (org, now))
        row = conn.execute("SELECT org FROM accounts WHERE name = ?", (account,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO accounts (name, org, created) VALUES (?, ?, ?)", (account, org, now))
        elif org is not None and row[0] is None:
            conn.execute("UPDATE accounts SET org = ? WHERE name = ?", (org, account))
        elif org is not None and row[0] != org:
            raise UserError(f"account {account!r} belongs to org {row[0]!r}, not {org!r}")

    def authenticate(self, presented_key: str) -> Principal:
        """Resolve a presented key to a ``Principal`` or raise ``AuthError``.

        Order of refusals: unknown key (401 ``invalid_api_key``), revoked (401 ``key_revoked``), expired
        (401 ``key_expired``), banned account (403 ``account_banned``), then the account's tier
        (``suspended``: 403 ``account_suspended``; a tier this process has not registered: 403
        ``unknown_tier``, failing closed). Model restrictions are returned in the principal for the server.
        """
        if (
            not isinstance(presented_key, str)
            or not presented_key.startswith(KEY_PREFIX)
            or len(presented_key) > 256
        ):
            raise AuthError(401, "invalid_api_key", "Incorrect API key provided.")
        digest = self._digest(presented_key)
        with self._db.read() as conn:
            row = conn.execute(_AUTH_SQL, (digest,)).fetchone()
        if row is None or not hmac.compare_digest(bytes(row[1]), digest):
            raise AuthError(401, "invalid_api_key", "Incorrect API key provided.")
        (key_id, _, account, k_rpm, k_tpm, k_day, k_conc, models, expires_at, revoked_at,
         org, tier, banned, a_rpm, a_tpm, a_day, a_conc) = row  # fmt: skip
        who = (key_id, account, org, tier)
        if revoked_at is not None:
            raise AuthError(401, "key_revoked", f"API key {key_id} has been revoked.", who=who)
        if expires_at is not None and time.time() >= expires_at:
            raise AuthError(401, "key_expired", f"API key {key_id} expired at {_iso(expires_at)}.", who=who)
        if banned:
            raise AuthError(403, "account_banned", f"Account {account} has been banned.", who=who)
        try:
            policy = get_tier(tier)
        except UserError:  # set by a process that registered a tier this one lacks: serve nothing
            msg = f"Account {account} is on tier {tier!r}, which this server does not know."
            raise AuthError(403, "unknown_tier", msg, who=who) from None
        refusal = policy.refuse_account(account)
        if refusal is not None:
            raise AuthError(refusal.status, refusal.code, refusal.message, who=who)
        return Principal(
            key_id=key_id,
            account=account,
            org=org,
            tier=tier,
            key_limits=Limits(k_rpm, k_tpm, k_day, k_conc),
            account_limits=Limits(a_rpm, a_tpm, a_day, a_conc),
            models=tuple(json.loads(models)) if models is not None else None,
            expires_at=expires_at,
        )

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key; the next request with it gets 401 ``key_revoked``. Revoking twice is a no-op."""
        with self._db.write() as conn:
            row = conn.execute("SELECT revoked_at FROM keys WHERE key_id = ?", (key_id,)).fetchone()
            if row is None:
                raise UserError(f"unknown key id {key_id!r}")
            if row[0] is None:
                conn.execute("UPDATE keys SET revoked_at = ? WHERE key_id = ?", (time.time(), key_id))

    def list_keys(self, account: str | None = None) -> list[dict]:
        """Key metadata (never the key or its hash), oldest first, optionally for one account."""
        with self._db.read() as conn:
            return self._list_keys(conn, account)

    def _list_keys(self, conn: Any, account: str | None) -> list[dict]:
        sql = (
            "SELECT k.key_id, k.account, a.org, k.name, k.rpm, k.tpm, k.daily_tokens, k.max_concurrent,"
            " k.models, k.expires_at, k.created, k.revoked_at FROM keys AS k"
            " JOIN accounts AS a ON a.name = k.account"
        )
        if account is not None:
            self._require_account(conn, account)
            rows = conn.execute(
                sql + " WHERE k.account = ? ORDER BY k.created, k.key_id", (account,)
            ).fetchall()
        else:
            rows = conn.execute(sql + " ORDER BY k.created, k.key_id").fetchall()
        now = time.time()
        out = []
        for key_id, acct, org, name, rpm, tpm, day, conc, models, expires_at, created, revoked_at in rows:
            if revoked_at is not None:
                status = "revoked"
            elif expires_at is not None and now >= expires_at:
                status = "expired"
            else:
                status = "active"
            out.append(
                {
                    "key_id": key_id,
                    "account": acct,
                    "org": org,
                    "name": name,
                    "status": status,
                    "created": created,
                    "expires_at": expires_at,
                    "revoked_at": revoked_at,
                    "models": json.loads(models) if models is not None else None,
                    "limits": Limits(rpm, tpm, day, conc).as_dict(),
                }
            )
        return out

    # -- accounts -----------------------------------------------------------------------------------------

    @staticmethod
    def _require_account(conn: Any, account: str) -> tuple:
        row = conn.execute(
            "SELECT name, org, tier, banned, ban_reason, banned_at, rpm, tpm, daily_tokens, max_concurrent,"
            " created FROM accounts WHERE name = ?",
            (account,),
        ).fetchone()
        if row is None:
            raise UserError(f"unknown account {account!r}")
        return row

    @staticmethod
    def _event(
        conn: Any,
        account: str,
        kind: str,
        value: str | None,
        previous: str | None,
        reason: str | None,
        actor: str,
    ) -> None:
        conn.execute(
            "INSERT INTO account_events (account, ts, kind, value, previous, reason, actor)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (account, time.time(), kind, value, previous, reason, actor),
        )

    def ban(self, account: str, reason: str | None = None, actor: str = "cli") -> None:
        """Ban an account: every key of it gets 403 ``account_banned`` from the next request on."""
        with self._db.write() as conn:
            self._require_account(conn, account)
            conn.execute(
                "UPDATE accounts SET banned = 1, ban_reason = ?, banned_at = ? WHERE name = ?",
                (reason, time.time(), account),
            )
            self._event(conn, account, "ban", "banned", None, reason, actor)

    def unban(self, account: str, actor: str = "cli") -> None:
        """Lift a ban (the tier is unchanged: a suspended account stays suspended)."""
        with self._db.write() as conn:
            row = self._require_account(conn, account)
            if row[3]:
                conn.execute(
                    "UPDATE accounts SET banned = 0, ban_reason = NULL, banned_at = NULL WHERE name = ?",
                    (account,),
                )
                self._event(conn, account, "ban", "unbanned", "banned", None, actor)

    def set_tier(self, account: str, tier: str, reason: str | None = None, actor: str = "cli") -> None:
        """Move an account on the response ladder; each change is kept in its tier history.

        Setting the tier it already has records nothing (the monitor re-asserts tiers on every scan).
        """
        _check_tier(tier)
        with self._db.write() as conn:
            previous = self._require_account(conn, account)[2]
            if previous != tier:
                conn.execute("UPDATE accounts SET tier = ? WHERE name = ?", (tier, account))
                self._event(conn, account, "tier", tier, previous, reason, actor)

    def set_account_limits(self, account: str, limits: Limits, actor: str = "cli") -> None:
        """Replace the account-wide limits (shared by all its keys; ``None`` fields mean unlimited)."""
        _check_limits(limits)
        with self._db.write() as conn:
            row = self._require_account(conn, account)
            conn.execute(
                "UPDATE accounts SET rpm = ?, tpm = ?, daily_tokens = ?, max_concurrent = ? WHERE name = ?",
                (limits.rpm, limits.tpm, limits.daily_tokens, limits.max_concurrent, account),
            )
            previous = Limits(*row[6:10]).as_dict()
            self._event(
                conn, account, "limits", json.dumps(limits.as_dict()), json.dumps(previous), None, actor
            )

    def create_account(self, account: str, org: str | None = None) -> None:
        """Create an account (and its org) without a key; existing accounts are left as they are."""
        _check_name("account", account)
        if org is not None:
            _check_name("org", org)
        with self._db.write() as conn:
            self._ensure_account(conn, account, org, time.time())

    def get_account(self, account: str) -> dict:
        """Everything about one account: tier, ban, limits, keys, tier history (oldest first)."""
        with self._db.read() as conn:
            row = self._require_account(conn, account)
            history = [
                {"ts": ts, "tier": value, "previous": previous, "reason": reason, "actor": actor}
                for ts, value, previous, reason, actor in conn.execute(
                    "SELECT ts, value, previous, reason, actor FROM account_events"
                    " WHERE account = ? AND kind = 'tier' ORDER BY id",
                    (account,),
                ).fetchall()
            ]
            keys = self._list_keys(conn, account)
        name, org, tier, banned, ban_reason, banned_at, rpm, tpm, day, conc, created = row
        return {
            "name": name,
            "org": org,
            "tier": tier,
            "banned": bool(banned),
            "ban_reason": ban_reason,
            "banned_at": banned_at,
            "created": created,
            "limits": Limits(rpm, tpm, day, conc).as_dict(),
            "keys": keys,
            "tier_history": history,
        }

    def list_accounts(self) -> list[dict]:
        """One summary per account, by name."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT a.name, a.org, a.tier, a.banned, a.rpm, a.tpm, a.daily_tokens, a.max_concurrent,"
                " a.created,"
                " (SELECT COUNT(*) FROM keys AS k WHERE k.account = a.name AND k.revoked_at IS NULL"
                "  AND (k.expires_at IS NULL OR k.expires_at > ?))"
                " FROM accounts AS a ORDER BY a.name",
                (time.time(),),
            ).fetchall()
        return [
            {
                "name": name,
                "org": org,
                "tier": tier,
                "banned": bool(banned),
                "limits": Limits(rpm, tpm, day, conc).as_dict(),
                "created": created,
                "active_keys": active,
            }
            for name, org, tier, banned, rpm, tpm, day, conc, created, active in rows
        ]


class SQLiteAccountStore(SQLAccountStore):
    """Accounts and keys in one SQLite (WAL) file, safe to share between processes on one host."""

    def __init__(self, path: Path, secret: bytes) -> None:
        self._secret = _checked_secret(secret)
        self.path = Path(path)
        self._db = SQLiteConnections(self.path)
        try:
            with self._db.write() as conn:
                for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    conn.execute(stmt)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a usable accounts database: {exc}") from None


class PostgresAccountStore(SQLAccountStore):
    """Accounts and keys in PostgreSQL, shared by every gateway replica, the CLI and the monitor."""

    def __init__(self, url: str, secret: bytes) -> None:
        self._secret = _checked_secret(secret)
        self.url = url
        self._db = PostgresConnections(url, write_lock=_PG_WRITE_LOCK, name="distillguard-accounts")
        with self._db.write() as conn:  # under the lock: replicas starting together do not race the DDL
            for stmt in filter(None, (s.strip() for s in _PG_SCHEMA.split(";"))):
                conn.execute(stmt)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

"""PostgreSQL connections for the shared account store and ledger (psycopg 3, one pool per store).

The stores are written once, in SQLite's dialect with ``?`` placeholders, against a tiny connection interface
(``execute``, ``executemany``, cursors with ``fetchone``/``fetchall``); :class:`PostgresConnections` hands out
pooled psycopg connections behind that interface, rewriting ``?`` to ``%s``. Reads run in autocommit mode;
``write()`` is one transaction, optionally serialized by a transaction-level advisory lock (what SQLite's
``BEGIN IMMEDIATE`` gives the account store: admin writes are rare, and read-then-write checks stay exact).

``database_url`` picks the engine: ``sqlite:///path/to/dir`` (or no URL: the embedded default under
``home()/gateway``) or ``postgresql://user:password@host:port/dbname``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from distillguard.errors import UserError

SCHEMES_PG = ("postgresql", "postgres")
# how long a caller waits for a connection (a gateway request waits for it: an outage must fail fast)
POOL_TIMEOUT_S = 3.0
# connections per pool (the gateway runs as many account-store threads, so a burst queues before the pool)
POOL_SIZE = 8


def mask_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def url_scheme(url: str) -> str:
    """``sqlite`` or ``postgresql``; anything else is a one-line error."""
    scheme = urlsplit(url).scheme.split("+", 1)[0].lower()
    if scheme in SCHEMES_PG:
        return "postgresql"
    if scheme == "sqlite":
        return "sqlite"
    raise UserError(f"database_url must start with sqlite:/// or postgresql:// (got {mask_url(url)!r})")


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    return sql.replace("?", "%s")


class _Conn:
    """A psycopg connection that takes SQLite-style ``?`` placeholders."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(_pg_sql(sql), tuple(params) or None)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        cur = self.raw.cursor()
        cur.executemany(_pg_sql(sql), rows)
        return cur


class PostgresConnections:
    """A psycopg connection pool with ``read()`` and ``write()`` contexts.

    ``write_lock``: an advisory lock id every ``write()`` takes for its transaction (None: no lock).
    Connecting is checked at once, so a wrong URL or a server that is down is a one-line error at start.
    Later, while the server is unreachable, a caller gets an error after at most ``POOL_TIMEOUT_S`` (a
    broken pooled connection fails at once and is replaced): nothing is served from a stale copy.
    """

    def __init__(
        self,
        url: str,
        *,
        write_lock: int | None = None,
        max_size: int = POOL_SIZE,
        name: str = "distillguard",
        session: dict[str, str] | None = None,
    ) -> None:
        import psycopg
        import psycopg_pool

        self.url = url
        self.write_lock = write_lock
        timeout = POOL_TIMEOUT_S
        try:  # a direct connection first: its error says why (the pool's timeout would not)
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot connect to PostgreSQL at {mask_url(url)}: {reason}") from None
        settings = dict(session or {})

        def configure(conn: Any) -> None:  # ``session``: settings every pooled connection starts with
            for key, value in settings.items():
                conn.execute("SELECT set_config(%s, %s, false)", (key, value))

        self.pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout))},
            configure=configure,
            timeout=timeout,
            name=name,
            open=True,
        )

    @contextmanager
    def read(self) -> Iterator[_Conn]:
        with self.pool.connection() as raw:
            yield _Conn(raw)

    @contextmanager
    def write(self, lock: int | None = None) -> Iterator[_Conn]:
        """One transaction, committed on success and rolled back on error."""
        lock = self.write_lock if lock is None else lock
        with self.pool.connection() as raw, raw.transaction():
            if lock is not None:
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            yield _Conn(raw)

    def close(self) -> None:
        self.pool.close()

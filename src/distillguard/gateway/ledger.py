"""The query ledger: every request, admitted or refused, in an append-only, tamper-evident SQLite table.

Each record is stored as canonical JSON (sorted keys, no whitespace) together with the columns the monitor
filters on (seq, ts, account, key_id, client_ip, decision, tier, tokens). Its ``hash`` is
``sha256(prev_hash + canonical_json)`` with a fixed genesis (64 zeros); the JSON includes ``seq`` so a record
moved to another position no longer matches. ``append`` returns only after the transaction is committed
with ``synchronous=FULL`` (the WAL is fsynced), so the server can answer knowing the record survives a crash.

Threat model. The adversary can open the database with ``sqlite3`` (a leaked backup, an analytics job
with write access, an insider) and edit, delete, insert, reorder or truncate rows, and knows this code, but
does not hold the server secret. Then:

- the hash chain makes any change in the middle visible, and ``verify`` names the first bad record;
- a per-record HMAC (server secret) over ``seq`` and ``hash`` stops the obvious repair of recomputing every
  later hash after an edit, so the edited record is still the one named;
- a signed head (record count and last hash, HMAC with the server secret), kept in the database and updated
  in the same transaction as each append, detects deleting the last records (truncation) and appending
  forged ones; without the secret a consistent head cannot be forged;
- the same signed head is copied to a sidecar file (``<ledger>.head``) after each commit, so replaying an
  older, validly signed head inside the database (truncate, then restore yesterday's head row) is caught
  too. The sidecar may lag the database by one record after a crash between commit and sidecar write, so
  ``verify`` accepts a sidecar whose newest head is the database's or the one before, never a later one.
  It holds two checksummed slots written alternately in place (a rename per append cost milliseconds on
  ext4): after each commit one holds the new head and the other the head one record earlier. ``verify``
  requires both slots intact, signed, on the chain and consecutive: the older slot is a validly signed
  head for one record fewer, so a reader that fell back to it when the newest slot is damaged would let
  anyone delete the last record (and tear the newest slot) without the secret. A torn slot is therefore
  reported, never skipped (a crash inside the 512-byte write is the one benign cause; the operator
  decides).

Not covered: an adversary holding the server secret can re-sign anything, and one who can roll back both
the database and the sidecar to an older copy of both makes the ledger look intact but shorter. Against
those, publish the head (``distillguard ledger head``) to a place they cannot write (another host, WORM
storage, a ticket) and compare. Without a secret (``Ledger(path)``) records and heads are unsigned and only
naive edits are detected.

Redaction (``redact_prompts=True``): ``prompt``, every client-written field of ``messages`` (content,
name, tool calls, tool call ids) and ``tools`` (tool, function and output-format definitions) are replaced
by ``sha256:<hex>`` of their UTF-8 text (canonical JSON for structures) before hashing and storing, so
the database holds no prompt text while exact repeats stay linkable. Unsalted hashes of short or guessable
prompts can be confirmed by guessing; that is the price of linkability across accounts.

Several processes may append to one ledger: a ``BEGIN IMMEDIATE`` transaction serializes them in SQLite, and
an exclusive ``flock`` on the sidecar keeps its writes in the same order as the commits (POSIX only).

Engines. :class:`LedgerStore` is what the gateway, the CLI and the monitor need of a ledger;
:func:`open_ledger` opens one from ``database_url``. :class:`Ledger` here is the embedded SQLite engine (one
host); the chain and MAC math is in :mod:`distillguard.gateway.chain`, shared with
:mod:`distillguard.gateway.ledger_pg`, where many gateway replicas append to one PostgreSQL ledger, each to
its own chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from distillguard.errors import UserError
from distillguard.gateway.accounts import SQLiteConnections, gateway_secret
from distillguard.gateway.chain import (
    GENESIS,
    ROW_SELECT,
    LedgerEntry,
    Signer,
    VerifyReport,
    canonical_json,
    chain_hash,
    check_head,
    columns,
    link,
    pages,
    prepare,
    sha256_text,
    walk_chain,
)
from distillguard.gateway.ledger_export import parquet_schema, write_parquet
from distillguard.gateway.pg import url_scheme
from distillguard.gateway.storage_settings import StorageSettings, sqlite_dir

__all__ = [
    "GENESIS",
    "Ledger",
    "LedgerEntry",
    "LedgerStore",
    "VerifyReport",
    "canonical_json",
    "chain_hash",
    "ledger_from_config",
    "open_ledger",
    "parquet_schema",
    "sha256_text",
]

_BATCH = 1000
_SLOT = 512  # bytes per head slot in the sidecar
_ROW_SQL = f"SELECT {ROW_SELECT} FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        account TEXT,
        key_id TEXT,
        client_ip TEXT,
        decision TEXT NOT NULL,
        tier TEXT,
        tokens INTEGER,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        mac TEXT NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_by_account ON ledger(account, seq)",
    "CREATE INDEX IF NOT EXISTS ledger_by_ip ON ledger(client_ip, seq)",
    "CREATE INDEX IF NOT EXISTS ledger_by_ts ON ledger(ts)",
    """CREATE TABLE IF NOT EXISTS ledger_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        count INTEGER NOT NULL,
        hash TEXT NOT NULL,
        mac TEXT NOT NULL
    )""",
)


@runtime_checkable
class LedgerStore(Protocol):
    """The query ledger as the gateway, the CLI and the monitor use it."""

    redact_prompts: bool

    def append(self, record: dict) -> LedgerEntry:
        """Append one record; durable (committed and flushed) when this returns."""
        ...

    def append_many(self, records: Iterable[dict]) -> LedgerEntry | None:
        """Append records in one transaction (one flush), exactly as if appended one by one."""
        ...

    def head(self) -> dict[str, Any]:
        """The signed head of the chain this store appends to."""
        ...

    def iter_records(self, since_seq: int = 0) -> Iterator[dict]: ...

    def count(self) -> int: ...

    def verify(self) -> VerifyReport:
        """Walk every chain; name the first bad record (of the first bad chain)."""
        ...

    def verify_chains(self) -> list[VerifyReport]:
        """Walk every chain in one read snapshot: one report per chain (its status, records and first bad
        record), so one broken chain does not hide another."""
        ...

    def recover(self) -> int | None:
        """Repair what a crash between a commit and a side write can leave behind (None: nothing)."""
        ...

    def export_parquet(self, out_dir: Path) -> Path: ...

    def close(self) -> None: ...


def open_ledger(
    database_url: str | None,
    secret: bytes | None,
    *,
    redact_prompts: bool = False,
    ledger_path: str | Path | None = None,
    replica: str | None = None,
) -> LedgerStore:
    """The ledger at ``database_url``: PostgreSQL (``postgresql://...``; this process appends to the chain of
    ``replica``) or SQLite at ``ledger_path`` or ``<sqlite dir>/ledger.db``."""
    if database_url and url_scheme(database_url) == "postgresql":
        from distillguard.gateway.ledger_pg import PostgresLedger

        return PostgresLedger(database_url, secret, redact_prompts=redact_prompts, replica=replica)
    path = Path(ledger_path).expanduser() if ledger_path else sqlite_dir(database_url) / "ledger.db"
    return Ledger(path, secret=secret, redact_prompts=redact_prompts)


def ledger_from_config(config: dict | StorageSettings | None = None) -> LedgerStore:
    """The gateway's ledger from its :class:`StorageSettings` (or a config dict): ``database_url`` (or
    ``ledger_path``), signed with :func:`gateway_secret`, redacting when ``redact_prompts``, appending as
    ``replica_id``."""
    s = StorageSettings.from_config(config)
    return open_ledger(
        s.database_url,
        gateway_secret(s),
        redact_prompts=s.redact_prompts,
        ledger_path=s.ledger_path,
        replica=s.replica_id,
    )


class Ledger:
    """Append-only, hash-chained, signed query ledger in SQLite (WAL)."""

    def __init__(self, path: Path, secret: bytes | None = None, redact_prompts: bool = False) -> None:
        self.path = Path(path)
        self.redact_prompts = bool(redact_prompts)
        self._signer = Signer(secret)
        self.sidecar = self.path.with_name(self.path.name + ".head")
        self._db = SQLiteConnections(self.path, synchronous="FULL")
        self._tlock = threading.Lock()
        self._head_fd: tuple[int, int] | None = None  # (pid, fd) of the sidecar, opened once per process
        try:
            with self._db.write() as conn:
                for stmt in _SCHEMA:
                    conn.execute(stmt)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a usable ledger database: {exc}") from None

    @staticmethod
    def default_path(config: dict | StorageSettings | None = None) -> Path:
        """``ledger_path`` or ``ledger.db`` in the SQLite ``database_url``'s directory (default
        ``home()/gateway``): :meth:`StorageSettings.ledger_file`."""
        return StorageSettings.from_config(config).ledger_file()

    @classmethod
    def open_default(cls, config: dict | StorageSettings | None = None) -> Ledger:
        """The gateway's SQLite ledger at :meth:`default_path`, signed with :func:`gateway_secret`, redacting
        prompts when ``redact_prompts`` is set."""
        s = StorageSettings.from_config(config)
        return cls(s.ledger_file(), secret=gateway_secret(s), redact_prompts=s.redact_prompts)

    def close(self) -> None:
        self._db.close()
        if self._head_fd is not None and self._head_fd[0] == os.getpid():
            os.close(self._head_fd[1])
        self._head_fd = None

    # -- signing --------------------------------------------------------------------------------------------

    def _record_mac(self, seq: int, digest: str) -> str:
        return self._signer.record_mac(seq, digest)

    def _head_mac(self, count: int, digest: str) -> str:
        return self._signer.head_mac(count, digest)

    @contextmanager
    def _exclusive(self) -> Iterator[int]:
        """Hold the sidecar's exclusive lock (threads and processes); yields its file descriptor."""
        with self._tlock:
            if self._head_fd is None or self._head_fd[0] != os.getpid():
                self._head_fd = (os.getpid(), os.open(self.sidecar, os.O_RDWR | os.O_CREAT, 0o600))
            fd = self._head_fd[1]
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    # -- writing --------------------------------------------------------------------------------------------

    def _prepare(self, record: dict[str, Any]) -> dict[str, Any]:
        return prepare(record, self.redact_prompts)

    def append(self, record: dict) -> LedgerEntry:
        """Append one record; it is committed and fsynced when this returns. Safe across threads and
        processes. The caller's dict is not modified (the stored copy gains ``seq``)."""
        rec = self._prepare(record)
        with self._exclusive() as head_fd:
            with self._db.write() as conn:
                head = conn.execute("SELECT count, hash FROM ledger_head WHERE id = 1").fetchone()
                if head is None:
                    last = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
                    head = last or (0, GENESIS)
                count, prev = head
                seq = count + 1
                text, digest, mac = link(prev, seq, rec, self._signer)
                conn.execute(
                    "INSERT INTO ledger (seq, ts, account, key_id, client_ip, decision, tier, tokens,"
                    " prev_hash, hash, mac, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, *columns(rec), prev, digest, mac, text),
                )
                head_mac = self._head_mac(seq, digest)
                conn.execute(
                    "INSERT OR REPLACE INTO ledger_head (id, count, hash, mac) VALUES (1, ?, ?, ?)",
                    (seq, digest, head_mac),
                )
            self._write_sidecar(head_fd, seq, digest, head_mac)
        return LedgerEntry(seq, digest)

    def append_many(self, records: Iterable[dict]) -> LedgerEntry | None:
        """Append records in one transaction: one fsync and one head update for the lot (bulk imports,
        synthetic ledgers). The chain, signatures and head are exactly those of appending them one by one.
        Returns the last entry (``None`` for no records)."""
        recs = [self._prepare(r) for r in records]
        if not recs:
            return None
        with self._exclusive() as head_fd:
            with self._db.write() as conn:
                head = conn.execute("SELECT count, hash FROM ledger_head WHERE id = 1").fetchone()
                if head is None:
                    last = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
                    head = last or (0, GENESIS)
                seq, prev = head
                rows = []
                before = prev
                for rec in recs:
                    seq += 1
                    text, digest, mac = link(prev, seq, rec, self._signer)
                    rows.append((seq, *columns(rec), prev, digest, mac, text))
                    before, prev = prev, digest
                conn.executemany(
                    "INSERT INTO ledger (seq, ts, account, key_id, client_ip, decision, tier, tokens,"
                    " prev_hash, hash, mac, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                head_mac = self._head_mac(seq, prev)
                conn.execute(
                    "INSERT OR REPLACE INTO ledger_head (id, count, hash, mac) VALUES (1, ?, ?, ?)",
                    (seq, prev, head_mac),
                )
            self._write_sidecar(head_fd, seq, prev, head_mac, (before, self._head_mac(seq - 1, before)))
        return LedgerEntry(seq, prev)

    def recover(self) -> int | None:
        """Bring the head file up to the database's signed head after a crash between a commit and the
        head-file write (the file then lags by one commit, possibly several records of a batch).

        Needs the server secret, so only the gateway or its operator can do it; ``verify`` never writes.
        Returns the count written, or None when the head file was not behind (or the ledger is unsigned).
        """
        if not self._signer.signed:
            return None
        head = self.head()
        count = head["count"]
        if count == 0 or not hmac.compare_digest(str(head["mac"]), self._head_mac(count, str(head["hash"]))):
            return None
        side = self.read_head_file()
        if isinstance(side, dict) and side["count"] >= count:
            return None
        row = self._db.get().execute("SELECT hash FROM ledger WHERE seq = ?", (count - 1,)).fetchone()
        before = row[0] if row else GENESIS
        with self._exclusive() as fd:
            self._write_sidecar(
                fd, count, head["hash"], head["mac"], (before, self._head_mac(count - 1, before))
            )
            os.fsync(fd)
        return count

    @staticmethod
    def _slot_check(count: int, digest: str, mac: str) -> str:
        return hashlib.sha256(f"{count}:{digest}:{mac}".encode()).hexdigest()[:16]

    def _write_sidecar(
        self, fd: int, count: int, digest: str, mac: str, prev: tuple[str, str] | None = None
    ) -> None:
        """Write the head for ``count`` into its slot. ``prev``: ``(hash, mac)`` of the head one record
        earlier, written first into the other slot when it may not hold it (a batch, a new file)."""
        if prev is not None or count == 1 or os.fstat(fd).st_size < 2 * _SLOT:
            p_digest, p_mac = prev if prev is not None else (GENESIS, self._head_mac(0, GENESIS))
            self._write_slot(fd, count - 1, p_digest, p_mac)
        self._write_slot(fd, count, digest, mac)

    def _write_slot(self, fd: int, count: int, digest: str, mac: str) -> None:
        slot = {"count": count, "hash": digest, "mac": mac, "check": self._slot_check(count, digest, mac)}
        data = json.dumps(slot).encode().ljust(_SLOT - 1) + b"\n"
        os.pwrite(fd, data, (count % 2) * _SLOT)

    # -- reading --------------------------------------------------------------------------------------------

    def iter_records(self, since_seq: int = 0) -> Iterator[dict]:
        """Records with ``seq > since_seq`` in order, fetched in batches by primary key, so a reader that
        remembers the last seq it saw pays only for new records and never holds a long read transaction."""
        conn = self._db.get()
        last = int(since_seq)
        while True:
            rows = conn.execute(
                "SELECT seq, record FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?", (last, _BATCH)
            ).fetchall()
            if not rows:
                return
            for seq, text in rows:
                last = seq
                yield json.loads(text)

    def count(self) -> int:
        return self._db.get().execute("SELECT COUNT(*) FROM ledger").fetchone()[0]

    def head(self) -> dict[str, Any]:
        """The signed head ``{"count", "hash", "mac"}``: publish it elsewhere to pin the ledger's state."""
        row = self._db.get().execute("SELECT count, hash, mac FROM ledger_head WHERE id = 1").fetchone()
        if row is None:
            return {"count": 0, "hash": GENESIS, "mac": self._head_mac(0, GENESIS)}
        return {"count": row[0], "hash": row[1], "mac": row[2]}

    def read_head_file(self) -> dict[str, Any] | str | None:
        """The newest intact head in the sidecar (``{"count", "hash", "mac"}``), ``None`` if the file is
        missing or empty, ``"unreadable"`` if no slot is intact."""
        try:
            data = self.sidecar.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return "unreadable"
        if not data:
            return None
        slots = self._slots(data)
        intact = [x for x in slots if x is not None]
        return max(intact, key=lambda x: x["count"]) if intact else "unreadable"

    def _slots(self, data: bytes) -> list[dict[str, Any] | None]:
        """Both head slots of the sidecar's bytes, ``None`` for a slot that is torn or missing."""
        out: list[dict[str, Any] | None] = []
        for off in (0, _SLOT):
            try:
                slot = json.loads(data[off : off + _SLOT])
                count, digest, mac = slot["count"], slot["hash"], slot["mac"]
                ok = isinstance(count, int) and slot["check"] == self._slot_check(count, digest, mac)
            except (ValueError, TypeError, KeyError, AttributeError):
                ok = False
            out.append({"count": count, "hash": digest, "mac": mac} if ok else None)
        return out

    def _check_slots(self) -> tuple[str | None, dict[str, Any] | None]:
        """``(problem, older slot)``: both slots must be intact and one record apart."""
        try:
            data = self.sidecar.read_bytes()
        except OSError:
            return None, None
        if not data:
            return None, None
        slots = self._slots(data)
        for i, slot in enumerate(slots):
            if slot is None:
                return f"head file {self.sidecar.name} slot {i} is torn or missing", None
        a, b = sorted(slots, key=lambda x: x["count"])  # type: ignore[arg-type, return-value]
        if b["count"] - a["count"] != 1:
            return (
                f"head file {self.sidecar.name} slots are not consecutive ({a['count']} and {b['count']})",
                None,
            )
        return None, a

    def verify(self) -> VerifyReport:
        """Walk the chain from genesis and check every record, then the signed heads.

        Reasons name what is wrong: ``missing seq N``, ``out of order``, ``hash mismatch``, a column that no
        longer matches its record, a bad signature, ``tail truncated after seq N``, records beyond the head.
        """
        try:
            return self._verify()
        except sqlite3.DatabaseError as exc:
            return VerifyReport(False, 0, None, f"database unreadable: {exc}", None, self._signer.signed)

    def verify_chains(self) -> list[VerifyReport]:
        """The one chain's report (the protocol's per-chain view of an embedded ledger)."""
        return [self.verify()]

    def _verify(self) -> VerifyReport:
        signed = self._signer.signed
        # the sidecar is written after each commit: read it before the snapshot so it cannot be ahead of it
        side = self.read_head_file()
        slot_problem, older = self._check_slots() if isinstance(side, dict) else (None, None)
        conn = self._db.get()
        conn.execute("BEGIN")  # one read snapshot for the rows and the head
        try:
            head = conn.execute("SELECT count, hash, mac FROM ledger_head WHERE id = 1").fetchone()
            side_count = side.get("count") if isinstance(side, dict) else None
            keep = {head[0] if head else None, side_count, older and older["count"]}
            walk = walk_chain(
                pages(lambda last: conn.execute(_ROW_SQL, (last, _BATCH)).fetchall()), self._signer, keep=keep
            )
            n = walk.records

            def bad(seq: int | None, reason: str | None) -> VerifyReport:
                return VerifyReport(False, n, seq, reason, walk.prev, signed)

            if not walk.ok:
                return bad(walk.bad_seq, walk.reason)
            if slot_problem is not None:
                return bad(None, slot_problem)
            anchors: list[tuple[str, Any]] = [("database head", head), ("head file", side)]
            if older is not None:
                anchors.append(("head file's older slot", older))
            if isinstance(side, dict) and side["count"] < n - 1:
                return bad(side["count"] + 1, f"head file is behind: it names {side['count']} of {n} records")
            for label, anchor in anchors:
                if anchor is None:
                    if n > 0 or label == "database head" and side_count:
                        return bad(
                            None, f"{label} is missing" + (f" ({self.sidecar.name})" if side is None else "")
                        )
                    continue
                if anchor == "unreadable":
                    return bad(None, f"head file {self.sidecar.name} is unreadable")
                if isinstance(anchor, dict):
                    count, digest, mac = anchor.get("count"), anchor.get("hash"), anchor.get("mac")
                else:
                    count, digest, mac = anchor
                problem = check_head(
                    walk, label, count, digest, mac, self._signer, covers_all=label == "database head"
                )
                if problem is not None:
                    return bad(*problem)
            return VerifyReport(True, n, None, None, walk.prev, signed)
        finally:
            conn.execute("COMMIT")

    # -- export ---------------------------------------------------------------------------------------------

    def export_parquet(self, out_dir: Path) -> Path:
        """Write every record to ``out_dir/ledger.parquet`` (one row per record, query fields as columns,
        nested fields as JSON text, the full canonical record and its hashes too) for DuckDB/Spark."""
        conn = self._db.get()
        conn.execute("BEGIN")  # one read snapshot
        try:

            def rows() -> Iterator[tuple]:
                last = 0
                while True:
                    batch = conn.execute(
                        "SELECT seq, tokens, prev_hash, hash, record FROM ledger WHERE seq > ? ORDER BY seq"
                        " LIMIT ?",
                        (last, 10 * _BATCH),
                    ).fetchall()
                    if not batch:
                        return
                    last = batch[-1][0]
                    yield from batch

            return write_parquet(rows(), out_dir)
        finally:
            conn.execute("COMMIT")

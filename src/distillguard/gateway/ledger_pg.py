"""The query ledger in PostgreSQL: many gateway replicas, one shared ledger, one hash chain per replica.

Each replica (``replica_id``; default the host name) appends to its own chain in the shared ``ledger`` table:
every record carries its ``replica`` in the row and in the hashed JSON, its ``seq`` counts within that chain,
and each chain has its own signed head row in ``ledger_head`` (MACs scoped to the chain, see
:mod:`distillguard.gateway.chain`). An append locks only its own chain's head row (``SELECT ... FOR UPDATE``),
so replicas never wait for each other; processes of one replica that share an id queue on that row, which
keeps their chain linear. Every connection runs with ``synchronous_commit = on``, whatever the server's
default: ``append`` returns after the commit's WAL flush, as the embedded ledger returns after its fsync.

``verify`` walks every chain in one snapshot and reports each chain's first bad record
(:meth:`PostgresLedger.verify_chains`); ``iter_records`` and ``export_parquet`` merge the chains by time
(``ts``, then replica and seq) and number the merged records 1..N in ``seq``, the chain's own ``seq`` staying
in the hashed record, so the monitor and the Parquet schema are the same as for the embedded ledger.

Compared with the embedded ledger's threat model (:mod:`distillguard.gateway.ledger`): edits, deletions,
reordering and forged appends inside a chain are found the same way. There is no sidecar head file: an
adversary with write access to the database who restores an older, validly signed head row after deleting
a chain's newest records, or deletes a chain with its head row, is not detected by ``verify`` alone. Publish
the heads (``distillguard ledger head``) elsewhere and compare, as for a rollback of the embedded ledger.
"""

from __future__ import annotations

import heapq
import json
import re
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from distillguard.errors import UserError
from distillguard.gateway.chain import (
    GENESIS,
    ROW_SELECT,
    LedgerEntry,
    Signer,
    VerifyReport,
    check_head,
    columns,
    link,
    overall,
    pages,
    prepare,
    walk_chain,
)
from distillguard.gateway.ledger_export import write_parquet
from distillguard.gateway.pg import PostgresConnections

_BATCH = 1000
_DDL_LOCK = 0x6467_6C67  # advisory lock id ("dglg") held while creating the tables
_REPLICA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+\-]{0,127}$")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger (
        replica TEXT NOT NULL,
        seq BIGINT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        account TEXT,
        key_id TEXT,
        client_ip TEXT,
        decision TEXT NOT NULL,
        tier TEXT,
        tokens BIGINT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        mac TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (replica, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_by_account ON ledger(account, ts)",
    "CREATE INDEX IF NOT EXISTS ledger_by_ip ON ledger(client_ip, ts)",
    "CREATE INDEX IF NOT EXISTS ledger_by_ts ON ledger(ts, replica, seq)",
    """CREATE TABLE IF NOT EXISTS ledger_head (
        replica TEXT PRIMARY KEY,
        count BIGINT NOT NULL,
        hash TEXT NOT NULL,
        mac TEXT NOT NULL
    )""",
)
_ROW_SQL = f"SELECT {ROW_SELECT} FROM ledger WHERE replica = ? AND seq > ? ORDER BY seq LIMIT ?"
_INSERT_SQL = (
    "INSERT INTO ledger (replica, seq, ts, account, key_id, client_ip, decision, tier, tokens, prev_hash,"
    " hash, mac, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def default_replica() -> str:
    """This host's name, as a chain name (characters outside the allowed set become ``-``)."""
    name = re.sub(r"[^A-Za-z0-9_.@:+\-]", "-", socket.gethostname())[:128].lstrip("-_.@:+") or "replica"
    return name


class PostgresLedger:
    """Append-only, hash-chained, signed query ledger shared by many replicas in PostgreSQL."""

    def __init__(
        self,
        url: str,
        secret: bytes | None = None,
        *,
        redact_prompts: bool = False,
        replica: str | None = None,
    ) -> None:
        replica = default_replica() if replica is None else replica
        if not isinstance(replica, str) or not _REPLICA_RE.match(replica):
            raise UserError(f"invalid replica_id {replica!r}: use 1-128 letters, digits or _.@:+-")
        self.url = url
        self.replica = replica
        self.redact_prompts = bool(redact_prompts)
        self._secret = secret
        self._signer = Signer(secret, chain=replica)
        self._db = PostgresConnections(url, name="distillguard-ledger", session={"synchronous_commit": "on"})
        with self._db.write(lock=_DDL_LOCK) as conn:
            for stmt in _SCHEMA:
                conn.execute(stmt)

    def close(self) -> None:
        self._db.close()

    # -- writing --------------------------------------------------------------------------------------------

    def append(self, record: dict) -> LedgerEntry:
        """Append one record to this replica's chain; committed (WAL flushed) when this returns."""
        entry = self.append_many([record])
        assert entry is not None
        return entry

    def append_many(self, records: Iterable[dict]) -> LedgerEntry | None:
        """Append records in one transaction (one WAL flush), exactly as if appended one by one."""
        recs = [prepare(r, self.redact_prompts) for r in records]
        if not recs:
            return None
        with self._db.write() as conn:
            head = self._lock_head(conn)
            seq, prev = head
            rows = []
            for rec in recs:
                seq += 1
                rec["replica"] = self.replica
                text, digest, mac = link(prev, seq, rec, self._signer)
                rows.append((self.replica, seq, *columns(rec), prev, digest, mac, text))
                prev = digest
            conn.executemany(_INSERT_SQL, rows)
            conn.execute(
                "UPDATE ledger_head SET count = ?, hash = ?, mac = ? WHERE replica = ?",
                (seq, prev, self._signer.head_mac(seq, prev), self.replica),
            )
        return LedgerEntry(seq, prev)

    def _lock_head(self, conn: Any) -> tuple[int, str]:
        """This chain's head, row-locked until the transaction ends. The first append of a replica starts
        its chain at genesis; a chain that has records but lost its head row is not restarted (an error)."""
        sql = "SELECT count, hash FROM ledger_head WHERE replica = ? FOR UPDATE"
        head = conn.execute(sql, (self.replica,)).fetchone()
        if head is None:
            conn.execute(
                "INSERT INTO ledger_head (replica, count, hash, mac) SELECT ?, 0, ?, ?"
                " WHERE NOT EXISTS (SELECT 1 FROM ledger WHERE replica = ?) ON CONFLICT DO NOTHING",
                (self.replica, GENESIS, self._signer.head_mac(0, GENESIS), self.replica),
            )
            head = conn.execute(sql, (self.replica,)).fetchone()
        if head is None:
            raise RuntimeError(f"the head of ledger chain {self.replica!r} is missing; run ledger verify")
        return head

    def recover(self) -> int | None:
        """Nothing to repair: the head is written in the same transaction as the records."""
        return None

    # -- reading --------------------------------------------------------------------------------------------

    def head(self) -> dict[str, Any]:
        """This replica's signed head ``{"replica", "count", "hash", "mac"}``."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT count, hash, mac FROM ledger_head WHERE replica = ?", (self.replica,)
            ).fetchone()
        if row is None:
            return {"replica": self.replica, "count": 0, "hash": GENESIS, "mac": ""}
        return {"replica": self.replica, "count": row[0], "hash": row[1], "mac": row[2]}

    def heads(self) -> list[dict[str, Any]]:
        """The signed head of every chain, by replica: publish them elsewhere to pin the ledger's state."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT replica, count, hash, mac FROM ledger_head ORDER BY replica"
            ).fetchall()
        return [{"replica": r, "count": c, "hash": h, "mac": m} for r, c, h, m in rows]

    def count(self) -> int:
        with self._db.read() as conn:
            return conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]

    def _merged(self, conn: Any, since: int = 0) -> Iterator[tuple[int, tuple]]:
        """``(position, (tokens, prev_hash, hash, record))`` of every record, merged by time, from 1."""
        pos, key = 0, (float("-inf"), "", 0)
        while True:
            rows = conn.execute(
                "SELECT ts, replica, seq, tokens, prev_hash, hash, record FROM ledger"
                " WHERE (ts, replica, seq) > (?, ?, ?) ORDER BY ts, replica, seq LIMIT ?",
                (*key, 10 * _BATCH),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                pos += 1
                if pos > since:
                    yield pos, row[3:]
            key = rows[-1][:3]

    def iter_records(self, since_seq: int = 0) -> Iterator[dict]:
        """Every record merged by time, ``seq`` renumbered 1..N in that order (``chain_seq``: its place in
        its replica's chain); ``since_seq`` skips the first N. Positions shift when a record with an older
        ``ts`` commits later, so incremental readers use :meth:`iter_new` instead."""
        with self._db.read() as conn:
            for pos, (_, _, _, text) in self._merged(conn, since_seq):
                rec = json.loads(text)
                rec["chain_seq"], rec["seq"] = rec.get("seq"), pos
                yield rec

    def iter_new(self, chains: dict[str, int], start: int = 0) -> Iterator[dict]:
        """The records after each chain's position in ``chains`` (replica -> last seq read; absent: none),
        read in one snapshot and merged across chains by ``ts`` (each chain in its own order), numbered in
        ``seq`` from ``start + 1``; ``chains`` is advanced in place as records are yielded.

        Within a chain, commit order is seq order (appends hold its head row), so a reader that keeps these
        positions sees every record exactly once, also one that commits late with an older ``ts``, which
        a single position in the merged order would skip (``monitor follow`` keeps them)."""
        with self._db.read() as conn, conn.raw.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            names = {r for (r,) in conn.execute("SELECT replica FROM ledger_head").fetchall()} | set(chains)

            def chain(replica: str) -> Iterator[tuple[float, str, int, str]]:
                last = chains.get(replica, 0)
                while True:
                    rows = conn.execute(
                        "SELECT ts, replica, seq, record FROM ledger WHERE replica = ? AND seq > ?"
                        " ORDER BY seq LIMIT ?",
                        (replica, last, _BATCH),
                    ).fetchall()
                    if not rows:
                        return
                    last = rows[-1][2]
                    yield from rows

            pos = start
            for _, replica, seq, text in heapq.merge(*(chain(r) for r in sorted(names)), key=lambda r: r[0]):
                pos += 1
                rec = json.loads(text)
                rec["chain_seq"], rec["seq"] = rec.get("seq"), pos
                chains[replica] = seq
                yield rec

    def export_parquet(self, out_dir: Path) -> Path:
        """Every chain's records merged by time into ``out_dir/ledger.parquet`` (the embedded ledger's
        schema; ``seq`` is the position in the merged order, ``record`` the chain's hashed record)."""
        with self._db.read() as conn, conn.raw.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return write_parquet(((pos, *row) for pos, row in self._merged(conn)), out_dir)

    # -- verifying ------------------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Every chain checked; the first bad chain's report (its reason names the chain), else one report
        for the whole ledger."""
        return overall(self.verify_chains(), self._signer.signed)

    def verify_chains(self) -> list[VerifyReport]:
        """One report per chain (by replica), all read in one snapshot."""
        with self._db.read() as conn, conn.raw.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            heads = {
                r: (c, h, m)
                for r, c, h, m in conn.execute("SELECT replica, count, hash, mac FROM ledger_head").fetchall()
            }
            chains = {r for (r,) in conn.execute("SELECT DISTINCT replica FROM ledger").fetchall()}
            return [self._verify_chain(conn, r, heads.get(r)) for r in sorted(chains | set(heads))]

    def _verify_chain(self, conn: Any, replica: str, head: tuple | None) -> VerifyReport:
        signer = Signer(self._secret, chain=replica)
        rows = pages(lambda last: conn.execute(_ROW_SQL, (replica, last, _BATCH)).fetchall())
        walk = walk_chain(rows, signer, chain=replica, keep=() if head is None else (head[0],))
        if not walk.ok:
            problem: tuple[int | None, str] | None = (walk.bad_seq, walk.reason or "")
        elif head is None:
            problem = None, "head is missing"
        else:
            problem = check_head(walk, "head", *head, signer)
        if problem is not None:
            seq, reason = problem
            return VerifyReport(
                False, walk.records, seq, f"chain {replica}: {reason}", walk.prev, signer.signed, replica
            )
        return VerifyReport(True, walk.records, None, None, walk.prev, signer.signed, replica)

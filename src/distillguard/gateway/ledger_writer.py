"""Durable ledger appends with group commit, off the event loop (see :class:`LedgerWriter`)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from distillguard.gateway.ledger import LedgerStore

log = logging.getLogger("distillguard.gateway")


class LedgerWriter:
    """Durable ledger appends with group commit, in one writer thread.

    Every response waits for its record's commit (fsync on SQLite, WAL flush on PostgreSQL), and the commit
    runs in a dedicated thread, so a slow or locked database delays only the requests that wait for it:
    the event loop goes on serving the others. The first record that arrives starts a flush at the end of
    the current loop iteration; records of every request that got that far in the meantime, and of every
    request that arrives while a commit is in progress, join the next ``append_many`` transaction (one
    fsync for all of them).

    Order: there is one flush at a time and one writer thread, so records are committed in the order
    ``append`` was called, and ``append_now`` (cleanup paths that cannot await) queues behind the commits
    already handed to the thread. The chain itself is numbered by the ledger inside its transaction
    (SQLite ``BEGIN IMMEDIATE``, PostgreSQL's row lock on the chain's head), so it stays linear whatever
    the threads do; the single thread keeps the chain in arrival order and the commits grouped.
    """

    def __init__(self, ledger: LedgerStore, max_batch: int = 512):
        self.ledger = ledger
        self.max_batch = max_batch
        self._pending: list[tuple[dict, asyncio.Future]] = []
        self._flushing: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-writer")
        self._closed = False
        self.batches = 0
        self.records = 0

    async def append(self, record: dict) -> None:
        """Append ``record``; returns when it is committed (raises what the ledger raised for it)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((record, fut))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        await fut  # a cancelled request leaves its record queued: it is committed all the same

    def append_now(self, record: dict) -> None:
        """Queue ``record`` behind the commits in progress without waiting (cleanup paths that cannot
        await); after :meth:`aclose`, append synchronously."""
        if self._closed:
            self._write([record])
            return
        self._thread.submit(self._write, [record])

    async def aclose(self) -> None:
        """Commit everything queued, then stop the writer thread."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        self._closed = True
        self._thread.shutdown(wait=True)

    def close(self) -> None:
        """Synchronous close (no running loop): commit what is queued, stop the writer thread."""
        self._closed = True
        self._thread.shutdown(wait=True)
        pending, self._pending = self._pending, []
        for (_, fut), res in zip(pending, self._write([r for r, _ in pending]), strict=True):
            _settle(fut, res)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                records = [r for r, _ in batch]
                try:
                    results = await loop.run_in_executor(self._thread, self._write, records)
                except Exception as exc:  # the thread is gone (closed): these records were not committed
                    results = [exc] * len(batch)
                self.batches += 1
                self.records += len(batch)
                for (_, fut), res in zip(batch, results, strict=True):
                    _settle(fut, res)
        finally:
            self._flushing = None

    def _write(self, records: list[dict]) -> list[BaseException | None]:
        """Commit ``records`` (in the writer thread): one transaction, or one by one when that fails."""
        many = getattr(self.ledger, "append_many", None)
        if many is not None and len(records) > 1:
            try:
                many(records)
                return [None] * len(records)
            except Exception:  # one bad record must not fail its neighbours: retry one by one
                log.exception("ledger group append failed; appending one by one")
        out: list[BaseException | None] = []
        for r in records:
            try:
                self.ledger.append(r)
                out.append(None)
            except Exception as exc:
                log.exception("ledger append failed")
                out.append(exc)
        return out


def _settle(fut: asyncio.Future, result: BaseException | None) -> None:
    if fut.done():
        return
    if result is None:
        fut.set_result(None)
    else:
        fut.set_exception(result)

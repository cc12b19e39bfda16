"""Durable ledger appends with group commit, on the event loop (see :class:`LedgerWriter`)."""

from __future__ import annotations

import asyncio
import logging

from distillguard.gateway.ledger import LedgerStore

log = logging.getLogger("distillguard.gateway")


class LedgerWriter:
    """Durable ledger appends with group commit, on the event loop.

    Every response waits for its record's fsync. The first record that arrives schedules a flush for the
    end of the current loop iteration; records of every other request that got that far in the meantime
    join it, and one ``append_many`` transaction (one fsync) commits them all. A lone request pays one
    fsync and no thread hand-off (on a busy machine, waking a writer thread and then the loop cost more
    than the rest of the gateway); a burst shares its fsyncs. The flush blocks the loop for the fsync, as
    every request it holds up is waiting for a commit anyway.
    """

    def __init__(self, ledger: LedgerStore, max_batch: int = 512):
        self.ledger = ledger
        self.max_batch = max_batch
        self._pending: list[tuple[dict, asyncio.Future]] = []
        self._scheduled = False
        self.batches = 0
        self.records = 0

    async def append(self, record: dict) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((record, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await fut

    def append_now(self, record: dict) -> None:
        """Synchronous append (cleanup paths that cannot await)."""
        self.ledger.append(record)

    def close(self) -> None:
        if self._pending:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            results = self._write([r for r, _ in batch])
            self.batches += 1
            self.records += len(batch)
            for (_, fut), res in zip(batch, results, strict=True):
                _settle(fut, res)

    def _write(self, records: list[dict]) -> list[BaseException | None]:
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

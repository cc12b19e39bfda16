"""The gateway's one error path: any failure becomes an OpenAI error object, recorded before it is answered.

:func:`as_api_error` turns whatever a request raised into the :class:`APIError` the client sees (a bug is a
500 ``server_error`` whose details stay in the log), and ``Gateway.refuse`` records it in the ledger first.

Refusals before authentication (no key, an unknown key, a refused address, a body or header over the limit)
cost a stranger nothing, and each record is an fsynced write; so do the refusals of a key, whether refused at
authentication (banned, revoked, expired, suspended) or working and refused for its rate, its quota, its
tier or bad input (a refused request is charged nothing, and throwaway keys are cheap).
:class:`RefusalLimiter` gives every source (an address before authentication, a key after it) a budget of
individually recorded refusals (a token bucket); beyond it, refusals are counted
per ``(endpoint, address, status, code, key)`` and written as one summary record (``"repeated": n``, first
and last time, the key's account when known) at the next flush, so the ledger still accounts for every
request without one fsync each. Memory is bounded: at most ``max_sources`` buckets and summaries (the oldest
bucket goes first; a full summary table is flushed early).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from distillguard.gateway.protocol import APIError

log = logging.getLogger("distillguard.gateway")


def server_error() -> APIError:
    return APIError(500, "The server had an error while processing your request.", code="server_error")


def as_api_error(exc: BaseException, ctx: Any = None) -> APIError:
    """``exc`` as the error the client gets; anything but an :class:`APIError` is logged and becomes a 500."""
    if isinstance(exc, APIError):
        return exc
    where = f" ({getattr(ctx, 'endpoint', '?')}, request {getattr(ctx, 'request_id', '?')})" if ctx else ""
    log.error("unhandled error%s", where, exc_info=exc)
    return server_error()


@dataclass
class Summary:
    """Refusals of one source beyond its budget, counted for one summary record."""

    endpoint: str
    client_ip: str | None
    status: int
    error_code: str | None
    count: int
    first: float
    last: float
    principal: Any = None  # the key refused, when it was known (banned, revoked, expired)


class RefusalLimiter:
    """Per-source budget of individually recorded refusals (a source: an address before authentication, a
    key after it); the rest are counted into summary records."""

    def __init__(self, per_minute: float = 30.0, burst: int = 30, max_sources: int = 10_000):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._pending: dict[tuple, Summary] = {}
        self.suppressed = 0  # refusals counted into summaries so far

    def allow(self, source: str | None) -> bool:
        """Whether this refusal of ``source`` gets a record of its own (spends one token)."""
        now = time.monotonic()
        key = source or ""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return ok

    def count(
        self, endpoint: str, client_ip: str | None, status: int, error_code: str | None, principal: Any = None
    ) -> bool:
        """Count one suppressed refusal; True when the summary table is full and should be flushed now."""
        now = time.time()
        key = (endpoint, client_ip, status, error_code, principal.key_id if principal is not None else None)
        s = self._pending.get(key)
        if s is None:
            s = self._pending[key] = Summary(endpoint, client_ip, status, error_code, 0, now, now, principal)
        s.count += 1
        s.last = now
        self.suppressed += 1
        return len(self._pending) >= self.max_sources

    def drain(self) -> list[Summary]:
        """The summaries counted so far (and forget them)."""
        out, self._pending = list(self._pending.values()), {}
        return out

    @property
    def pending(self) -> int:
        return sum(s.count for s in self._pending.values())

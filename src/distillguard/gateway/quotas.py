"""Quotas that concurrent and streamed traffic cannot overshoot: reserve before, reconcile after.

Gateways that count tokens after the response (docs/architecture.md) let N parallel or streamed requests
all pass the check before any of them is counted. Here a request first *reserves*, atomically over every
scope it belongs to (its key and its account):

- one request in each scope's RPM window,
- ``tokens`` (prompt + max_tokens, an upper bound) in each scope's TPM window and UTC-day budget,
- one concurrency lease per scope,

and is admitted only if every scope has room; otherwise nothing is taken. After the backend call (at stream
end or client disconnect too) ``commit`` replaces the reserved tokens with the actual usage in every window
the reservation is still in and releases the leases. Because admission counts the upper bound, the sum of
admitted usage can never exceed a limit, whatever the interleaving.

Windows: RPM and TPM are exact sliding 60 s windows (every admitted request is an entry with its timestamp,
and an entry counts while ``ts > now - 60``), so unlike fixed one-minute buckets a boundary never lets 2x
through. The daily budget is per UTC day. ``retry_after`` is exact for windows (when enough of the oldest
entries leave) and for days (next UTC midnight); for concurrency it is a short hint (at most 1 s), because
when an in-flight request ends is unknown. Leases expire after ``lease_ttl`` (600 s) so a crashed process
cannot hold them forever. A request that a limit could never admit (tokens above the TPM or daily limit)
gets a ``Denied`` with ``permanent=True``.

Two stores with the same semantics (the tests run one suite against both):

- ``MemoryQuotaStore``: one process, a ``threading.Lock`` around plain Python structures.
- ``RedisQuotaStore``: several gateway processes share limits through Redis. Each ``reserve`` and ``commit``
  is one Lua script, which Redis runs atomically, so the all-scopes-or-none check-and-take is a single step.
  The ``limits`` library was considered and not used: its moving-window strategy is per key and per hit,
  with no atomic multi-scope reservation, no weighted reservations that are reconciled later and no
  concurrency leases, which is exactly what reserve-then-commit needs. Scripts build their key names from the
  prefix and scope names, so they target a single Redis (or a primary with replicas), not Redis Cluster.
  Without an explicit ``now``, the script uses Redis' own clock, so gateways on several hosts agree.
"""

from __future__ import annotations

import bisect
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from distillguard.errors import UserError
from distillguard.gateway.limits import Limits
from distillguard.gateway.tiers import TierSettings, get_tier

WINDOW_S = 60.0
DAY_S = 86400.0
LEASE_TTL_S = 600.0
REASONS = ("rpm", "tpm", "daily_tokens", "max_concurrent")


@dataclass(frozen=True)
class Reservation:
    """What a ``reserve`` took; hand it back to ``commit`` exactly once (more is a no-op)."""

    id: str
    scopes: tuple[str, ...]
    tokens: int
    created: float


@dataclass(frozen=True)
class Denied:
    """Why a reservation was refused, in the scope and limit that refused it.

    ``retry_after`` (seconds, > 0) is when the request could pass if nothing else arrived: the largest
    wait over every limit that refused it. ``permanent`` means it never can (its tokens alone exceed the
    limit); the server should answer 400 rather than 429 then.
    """

    reason: str  # "rpm" | "tpm" | "daily_tokens" | "max_concurrent"
    scope: str
    limit: int
    retry_after: float
    permanent: bool = False

    @property
    def message(self) -> str:
        what = {
            "rpm": "requests per minute",
            "tpm": "tokens per minute",
            "daily_tokens": "tokens per day",
            "max_concurrent": "concurrent requests",
        }.get(self.reason, self.reason)
        if self.permanent:
            return f"Request can never fit {self.scope}'s limit of {self.limit} {what}."
        return f"Rate limit reached for {self.scope}: {self.limit} {what}. Retry in {self.retry_after:.1f} s."


def effective_limits(
    limits: Limits, tier: str, throttle_factor: float = 0.1, throttled_default: Limits | None = None
) -> Limits:
    """The limits that apply under ``tier``, as the tier object decides (:mod:`tiers`): ``throttled``
    scales every limit by ``throttle_factor`` (rounded down, at least 1) and fills unlimited ones from
    ``throttled_default``, so throttling an unlimited account still throttles it. The gateway calls
    ``Tier.limits`` with its own settings; this is the same with explicit parameters."""
    settings = TierSettings(throttle_factor=throttle_factor, throttled_default=throttled_default)
    return get_tier(tier).limits(limits, settings, scope="account")


@runtime_checkable
class QuotaStore(Protocol):
    # True when calls go over the network (the gateway then makes them in a worker thread, so a slow or
    # stalled server holds up the requests that wait for it, never the event loop)
    remote: bool

    def reserve(
        self, scopes: Sequence[tuple[str, Limits]], tokens: int, now: float | None = None
    ) -> Reservation | Denied:
        """Atomic over all scopes: each takes 1 request, ``tokens`` tokens and 1 lease, or none does."""
        ...

    def commit(self, reservation: Reservation, actual_tokens: int, now: float | None = None) -> None:
        """Reconcile reserved -> actual tokens in every window and release the leases; idempotent."""
        ...

    def usage(self, scope: str, now: float | None = None) -> dict[str, float]:
        """Current counters of one scope (requests and tokens in the window, tokens today, leases)."""
        ...


def _validate(scopes: Sequence[tuple[str, Limits]], tokens: int) -> list[tuple[str, Limits]]:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be a non-negative integer (got {tokens!r})")
    seen: set[str] = set()
    out = []
    for scope, limits in scopes:
        if not isinstance(scope, str) or not scope:
            raise ValueError(f"scope names must be non-empty strings (got {scope!r})")
        if scope in seen:
            raise ValueError(f"scope {scope!r} given twice")
        seen.add(scope)
        out.append((scope, limits))
    return out


def _new_id() -> str:
    return "res_" + secrets.token_hex(10)


def _pick(best: Denied | None, cand: Denied) -> Denied:
    """Permanent refusals first, then the longest wait; ties keep the first (same rule as the Lua script)."""
    if best is None:
        return cand
    if cand.permanent and not best.permanent:
        return cand
    if cand.permanent == best.permanent and cand.retry_after > best.retry_after:
        return cand
    return best


@dataclass
class _Scope:
    entries: list[tuple[float, str]] = field(default_factory=list)  # (ts, reservation id), sorted
    tokens: dict[str, int] = field(default_factory=dict)  # reservation id -> tokens, while in the window
    toksum: int = 0
    days: dict[int, int] = field(default_factory=dict)  # UTC day number -> tokens
    leases: dict[str, float] = field(default_factory=dict)  # reservation id -> expiry


@dataclass
class _Pending:
    tokens: int
    day: int
    scopes: tuple[str, ...]


class MemoryQuotaStore:
    """Reserve-then-commit quotas for one process (the embedded default)."""

    remote = False

    def __init__(self, window: float = WINDOW_S, lease_ttl: float = LEASE_TTL_S) -> None:
        self.window = float(window)
        self.lease_ttl = float(lease_ttl)
        self._lock = threading.Lock()
        self._scopes: dict[str, _Scope] = {}
        self._pending: dict[str, _Pending] = {}
        self._pending_order: deque[tuple[float, str]] = deque()  # (record expiry, id)

    def _prune(self, st: _Scope, now: float) -> None:
        cutoff = now - self.window
        k = 0
        while k < len(st.entries) and st.entries[k][0] <= cutoff:
            st.toksum -= st.tokens.pop(st.entries[k][1], 0)
            k += 1
        if k:
            del st.entries[:k]
        for rid in [r for r, exp in st.leases.items() if exp <= now]:
            del st.leases[rid]
        today = int(now // DAY_S)
        for d in [d for d in st.days if d < today - 1]:
            del st.days[d]

    def _check(self, scope: str, st: _Scope, limits: Limits, tokens: int, now: float) -> Denied | None:
        best: Denied | None = None
        w = self.window
        if limits.rpm is not None:
            if limits.rpm <= 0:
                best = _pick(best, Denied("rpm", scope, limits.rpm, w, True))
            elif len(st.entries) + 1 > limits.rpm:
                ts = st.entries[len(st.entries) - limits.rpm][0]
                best = _pick(best, Denied("rpm", scope, limits.rpm, ts + w - now))
        if limits.tpm is not None:
            if tokens > limits.tpm:
                best = _pick(best, Denied("tpm", scope, limits.tpm, w, True))
            elif st.toksum + tokens > limits.tpm:
                need, freed, retry = st.toksum + tokens - limits.tpm, 0, w
                for ts, rid in st.entries:
                    freed += st.tokens.get(rid, 0)
                    if freed >= need:
                        retry = ts + w - now
                        break
                best = _pick(best, Denied("tpm", scope, limits.tpm, retry))
        if limits.daily_tokens is not None:
            day = int(now // DAY_S)
            if tokens > limits.daily_tokens:
                best = _pick(best, Denied("daily_tokens", scope, limits.daily_tokens, DAY_S, True))
            elif st.days.get(day, 0) + tokens > limits.daily_tokens:
                best = _pick(
                    best, Denied("daily_tokens", scope, limits.daily_tokens, (day + 1) * DAY_S - now)
                )
        if limits.max_concurrent is not None:
            if limits.max_concurrent <= 0:
                best = _pick(best, Denied("max_concurrent", scope, limits.max_concurrent, w, True))
            elif len(st.leases) + 1 > limits.max_concurrent:
                retry = min(1.0, min(st.leases.values()) - now)
                best = _pick(best, Denied("max_concurrent", scope, limits.max_concurrent, retry))
        return best

    def reserve(
        self, scopes: Sequence[tuple[str, Limits]], tokens: int, now: float | None = None
    ) -> Reservation | Denied:
        checked = _validate(scopes, tokens)
        with self._lock:
            now = time.time() if now is None else float(now)
            self._expire_pending(now)
            best: Denied | None = None
            for scope, limits in checked:
                st = self._scopes.setdefault(scope, _Scope())
                self._prune(st, now)
                denied = self._check(scope, st, limits, tokens, now)
                if denied is not None:
                    best = _pick(best, denied)
            if best is not None:
                return best
            rid, day = _new_id(), int(now // DAY_S)
            for scope, _ in checked:
                st = self._scopes[scope]
                bisect.insort(st.entries, (now, rid))
                st.tokens[rid] = tokens
                st.toksum += tokens
                st.days[day] = st.days.get(day, 0) + tokens
                st.leases[rid] = now + self.lease_ttl
            names = tuple(s for s, _ in checked)
            self._pending[rid] = _Pending(tokens, day, names)
            self._pending_order.append((now + DAY_S + self.lease_ttl, rid))
            return Reservation(rid, names, tokens, now)

    def _expire_pending(self, now: float) -> None:
        while self._pending_order and self._pending_order[0][0] <= now:
            self._pending.pop(self._pending_order.popleft()[1], None)

    def commit(self, reservation: Reservation, actual_tokens: int, now: float | None = None) -> None:
        actual = max(0, int(actual_tokens))
        with self._lock:
            p = self._pending.pop(reservation.id, None)
            if p is None:
                return
            delta = actual - p.tokens
            for scope in p.scopes:
                st = self._scopes.get(scope)
                if st is None:
                    continue
                st.leases.pop(reservation.id, None)
                if delta:
                    if reservation.id in st.tokens:
                        st.tokens[reservation.id] = actual
                        st.toksum += delta
                    if p.day in st.days:
                        st.days[p.day] += delta

    def usage(self, scope: str, now: float | None = None) -> dict[str, float]:
        with self._lock:
            now = time.time() if now is None else float(now)
            st = self._scopes.get(scope) or _Scope()
            self._prune(st, now)
            return {
                "requests": len(st.entries),
                "tokens": st.toksum,
                "daily_tokens": st.days.get(int(now // DAY_S), 0),
                "concurrent": len(st.leases),
            }


# ARGV: prefix, now ("" = Redis clock), tokens, id, window, lease_ttl, record_ttl, n,
#       then n times: scope, rpm, tpm, daily_tokens, max_concurrent (-1 = unlimited)
_RESERVE_LUA = r"""
local prefix = ARGV[1]
local now_s = ARGV[2]
if now_s == '' then
  local t = redis.call('TIME')
  now_s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local now = tonumber(now_s)
local tokens = tonumber(ARGV[3])
local rid = ARGV[4]
local window = tonumber(ARGV[5])
local lease_ttl = tonumber(ARGV[6])
local record_ttl = tonumber(ARGV[7])
local n = tonumber(ARGV[8])
local day = math.floor(now / 86400)
local function fmt(x) return string.format('%.6f', x) end
local cutoff = fmt(now - window)

local best = nil
local function deny(reason, scope, limit, retry, perm)
  if best == nil or (perm == 1 and best[5] == 0) or (perm == best[5] and retry > best[4]) then
    best = {reason, scope, limit, retry, perm}
  end
end

local function prune(base)
  local win, tokv = base .. ':win', base .. ':tokv'
  while true do
    local old = redis.call('ZRANGEBYSCORE', win, '-inf', cutoff, 'LIMIT', 0, 500)
    if #old == 0 then break end
    local vals = redis.call('HMGET', tokv, unpack(old))
    local s = 0
    for _, v in ipairs(vals) do if v then s = s + tonumber(v) end end
    redis.call('ZREM', win, unpack(old))
    redis.call('HDEL', tokv, unpack(old))
    if s ~= 0 then redis.call('DECRBY', base .. ':toksum', s) end
  end
  redis.call('ZREMRANGEBYSCORE', base .. ':conc', '-inf', now_s)
end

for i = 0, n - 1 do
  local o = 9 + i * 5
  local scope = ARGV[o]
  local rpm, tpm, daily, conc = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]),
    tonumber(ARGV[o + 4])
  local base = prefix .. 'q:' .. scope
  local win, tokv = base .. ':win', base .. ':tokv'
  prune(base)
  if rpm >= 0 then
    if rpm == 0 then deny('rpm', scope, rpm, window, 1) else
      local cnt = redis.call('ZCARD', win)
      if cnt + 1 > rpm then
        local e = redis.call('ZRANGE', win, cnt - rpm, cnt - rpm, 'WITHSCORES')
        deny('rpm', scope, rpm, tonumber(e[2]) + window - now, 0)
      end
    end
  end
  if tpm >= 0 then
    if tokens > tpm then deny('tpm', scope, tpm, window, 1) else
      local used = tonumber(redis.call('GET', base .. ':toksum') or '0')
      if used + tokens > tpm then
        local need, freed, retry, start, found = used + tokens - tpm, 0, window, 0, false
        while not found do
          local e = redis.call('ZRANGE', win, start, start + 499, 'WITHSCORES')
          if #e == 0 then break end
          local members = {}
          for j = 1, #e, 2 do members[#members + 1] = e[j] end
          local vals = redis.call('HMGET', tokv, unpack(members))
          for j = 1, #members do
            if vals[j] then freed = freed + tonumber(vals[j]) end
            if freed >= need then
              retry = tonumber(e[2 * j]) + window - now
              found = true
              break
            end
          end
          start = start + 500
        end
        deny('tpm', scope, tpm, retry, 0)
      end
    end
  end
  if daily >= 0 then
    if tokens > daily then deny('daily_tokens', scope, daily, 86400, 1) else
      local used = tonumber(redis.call('GET', base .. ':day:' .. day) or '0')
      if used + tokens > daily then deny('daily_tokens', scope, daily, (day + 1) * 86400 - now, 0) end
    end
  end
  if conc >= 0 then
    if conc == 0 then deny('max_concurrent', scope, conc, window, 1) else
      local cnt = redis.call('ZCARD', base .. ':conc')
      if cnt + 1 > conc then
        local e = redis.call('ZRANGE', base .. ':conc', 0, 0, 'WITHSCORES')
        local retry = tonumber(e[2]) - now
        if retry > 1 then retry = 1 end
        deny('max_concurrent', scope, conc, retry, 0)
      end
    end
  end
end

if best ~= nil then
  return {0, best[1], best[2], tostring(best[3]), fmt(best[4]), best[5]}
end

local names = {}
local keep = tostring(math.ceil(window) + 60)
for i = 0, n - 1 do
  local scope = ARGV[9 + i * 5]
  names[#names + 1] = scope
  local base = prefix .. 'q:' .. scope
  redis.call('ZADD', base .. ':win', now_s, rid)
  redis.call('HSET', base .. ':tokv', rid, ARGV[3])
  redis.call('INCRBY', base .. ':toksum', ARGV[3])
  redis.call('EXPIRE', base .. ':win', keep)
  redis.call('EXPIRE', base .. ':tokv', keep)
  redis.call('EXPIRE', base .. ':toksum', keep)
  local dk = base .. ':day:' .. day
  redis.call('INCRBY', dk, ARGV[3])
  redis.call('EXPIRE', dk, 2 * 86400)
  redis.call('ZADD', base .. ':conc', fmt(now + lease_ttl), rid)
  redis.call('EXPIRE', base .. ':conc', tostring(math.ceil(lease_ttl) + 60))
end
local rk = prefix .. 'res:' .. rid
redis.call('HSET', rk, 'tokens', ARGV[3], 'day', tostring(day), 'scopes', cjson.encode(names))
redis.call('EXPIRE', rk, record_ttl)
return {1, rid, now_s}
"""

# ARGV: prefix, id, actual tokens
_COMMIT_LUA = r"""
local prefix, rid, actual = ARGV[1], ARGV[2], tonumber(ARGV[3])
local rk = prefix .. 'res:' .. rid
local r = redis.call('HMGET', rk, 'tokens', 'day', 'scopes')
if not r[1] then return 0 end
redis.call('DEL', rk)
local delta = actual - tonumber(r[1])
for _, scope in ipairs(cjson.decode(r[3])) do
  local base = prefix .. 'q:' .. scope
  redis.call('ZREM', base .. ':conc', rid)
  if delta ~= 0 then
    if redis.call('HEXISTS', base .. ':tokv', rid) == 1 then
      redis.call('HSET', base .. ':tokv', rid, ARGV[3])
      redis.call('INCRBY', base .. ':toksum', tostring(delta))
    end
    local dk = base .. ':day:' .. r[2]
    if redis.call('EXISTS', dk) == 1 then redis.call('INCRBY', dk, tostring(delta)) end
  end
end
return 1
"""

# ARGV: prefix, scope, now ("" = Redis clock), window
_USAGE_LUA = r"""
local base = ARGV[1] .. 'q:' .. ARGV[2]
local now_s = ARGV[3]
if now_s == '' then
  local t = redis.call('TIME')
  now_s = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local now = tonumber(now_s)
local cutoff = string.format('%.6f', now - tonumber(ARGV[4]))
local ids = redis.call('ZRANGEBYSCORE', base .. ':win', '(' .. cutoff, '+inf')
local toks = 0
if #ids > 0 then
  for _, v in ipairs(redis.call('HMGET', base .. ':tokv', unpack(ids))) do
    if v then toks = toks + tonumber(v) end
  end
end
local day = math.floor(now / 86400)
return {#ids, toks, tonumber(redis.call('GET', base .. ':day:' .. day) or '0'),
        redis.call('ZCOUNT', base .. ':conc', '(' .. now_s, '+inf')}
"""


def _num(v: int | None) -> int:
    return -1 if v is None else int(v)


class RedisQuotaStore:
    """Reserve-then-commit quotas shared by every gateway process that points at the same Redis."""

    remote = True

    def __init__(
        self,
        url: str,
        prefix: str = "distillguard:",
        window: float = WINDOW_S,
        lease_ttl: float = LEASE_TTL_S,
        timeout: float = 5.0,
    ) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self.window = float(window)
        self.lease_ttl = float(lease_ttl)
        # a stalled server fails a call after ``timeout`` seconds (the request errors and is recorded; a
        # lost commit's lease expires on its own) instead of holding a thread forever
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._reserve = self._redis.register_script(_RESERVE_LUA)
        self._commit = self._redis.register_script(_COMMIT_LUA)
        self._usage = self._redis.register_script(_USAGE_LUA)

    @staticmethod
    def _now(now: float | None) -> str:
        return "" if now is None else f"{float(now):.6f}"

    def reserve(
        self, scopes: Sequence[tuple[str, Limits]], tokens: int, now: float | None = None
    ) -> Reservation | Denied:
        checked = _validate(scopes, tokens)
        rid = _new_id()
        args: list[str | int] = [
            self.prefix,
            self._now(now),
            tokens,
            rid,
            repr(self.window),
            repr(self.lease_ttl),
            int(DAY_S + self.lease_ttl),
            len(checked),
        ]
        for scope, lim in checked:
            args += [scope, _num(lim.rpm), _num(lim.tpm), _num(lim.daily_tokens), _num(lim.max_concurrent)]
        out = self._reserve(keys=[], args=args)
        if int(out[0]) == 1:
            return Reservation(rid, tuple(s for s, _ in checked), tokens, float(out[2]))
        return Denied(
            reason=out[1].decode(),
            scope=out[2].decode(),
            limit=int(out[3]),
            retry_after=float(out[4]),
            permanent=bool(int(out[5])),
        )

    def commit(self, reservation: Reservation, actual_tokens: int, now: float | None = None) -> None:
        self._commit(keys=[], args=[self.prefix, reservation.id, max(0, int(actual_tokens))])

    def usage(self, scope: str, now: float | None = None) -> dict[str, float]:
        r, t, d, c = self._usage(keys=[], args=[self.prefix, scope, self._now(now), repr(self.window)])
        return {"requests": int(r), "tokens": int(t), "daily_tokens": int(d), "concurrent": int(c)}

    def close(self) -> None:
        self._redis.close()


def open_quota_store(redis_url: str | None) -> QuotaStore:
    """Redis when ``redis_url`` is set (checked with a PING so a typo fails at startup), else memory."""
    if not redis_url:
        return MemoryQuotaStore()
    import redis

    store = RedisQuotaStore(redis_url)
    try:
        store._redis.ping()
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, OSError) as exc:
        raise UserError(f"cannot reach Redis at {_mask(redis_url)}: {exc}") from None
    return store


def _mask(url: str) -> str:
    """The URL without its password, for error messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url

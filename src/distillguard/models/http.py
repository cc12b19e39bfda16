"""An OpenAI-compatible chat API as a model client (``/v1/chat/completions`` over httpx).

Why a real client: the attack a platform must withstand is a black-box (or grey-box, top-k logprobs)
collection from a chat API, and the same client also asks the suspect of an audit. :class:`HTTPModel`
rotates keys, backs off, honours ``Retry-After`` and reports clear errors; it is also the traffic the gateway
polices. Errors follow :mod:`distillguard.models.base`: :class:`UserError` when the API is unusable,
:class:`ModelError` when one request fails for good.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from distillguard.errors import UserError
from distillguard.models.base import Answer, ModelError

MAX_RETRY_AFTER = 600.0
"""Longest ``Retry-After`` honoured, in seconds (a daily-quota 429 must not park a key for a day)."""


# --------------------------------------------------------------------------------------------------
# Pure helpers (no I/O): URL normalisation, Retry-After, response parsing


def normalize_base_url(url: str, role: str = "teacher") -> str:
    """The API base that ``/chat/completions`` and ``/models`` are appended to.

    ``http://host:port`` and ``http://host:port/`` become ``http://host:port/v1``; a URL with a path is
    taken as the base as given (``http://host/v1``, ``https://host/api/v1``), minus a trailing slash and a
    pasted ``/chat/completions`` or ``/models`` endpoint. ``role`` names the model in errors.
    """
    raw = url.strip()
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"not a {role} URL: {url!r} (expected http(s)://host[:port][/v1])")
    try:
        parts.port  # noqa: B018 - validates the port number
    except ValueError:
        raise UserError(f"not a {role} URL: {url!r} (bad port)") from None
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/models"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped; None if absent
    or unreadable. ``now`` is a Unix time (default: the current time) for the HTTP-date form."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def error_message(body: str, limit: int = 200) -> str:
    """The server's own words from an error body: OpenAI's ``error.message``, FastAPI's ``detail``, or the
    first line of text."""
    import json

    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"]
        elif isinstance(err, str):
            text = err
        elif isinstance(data.get("detail"), str):
            text = data["detail"]
        elif isinstance(data.get("message"), str):
            text = data["message"]
    line = text.splitlines()[0].strip() if text else ""
    return (line[: limit - 3] + "...") if len(line) > limit else (line or "no message")


def estimate_tokens(text: str) -> int:
    """About 4 characters per token: the fallback when a server reports no ``usage``."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def parse_chat_completion(data: object, prompt: str = "") -> Answer:
    """An :class:`Answer` from a ``/chat/completions`` response body; ``ValueError`` if it has not that shape.

    Missing ``usage`` is estimated (:func:`estimate_tokens`, or the number of logprob entries for the
    completion) so token budgets still hold against servers that omit it.
    """
    try:
        choice = data["choices"][0]  # type: ignore[index]
        message = choice["message"]
        text = message.get("content")
    except (KeyError, IndexError, TypeError):
        raise ValueError("no choices[0].message in the answer") from None
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError("choices[0].message.content is not a string")
    logprobs = None
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        logprobs = lp["content"]
    usage = data.get("usage") if isinstance(data, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    if not isinstance(prompt_tokens, int):
        prompt_tokens = estimate_tokens(prompt)
    if not isinstance(completion_tokens, int):
        completion_tokens = len(logprobs) if logprobs is not None else estimate_tokens(text)
    return Answer(
        text=text,
        finish_reason=str(choice.get("finish_reason") or "stop"),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        logprobs=logprobs,
    )


def _describe(exc: BaseException) -> str:
    """One short line for a transport error ("connection refused", "timed out", "host name not resolved").

    httpx wraps the socket error ("All connection attempts failed"), so the cause chain is searched for the
    operating system's own reason.
    """
    import errno
    import socket

    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "host name not resolved"
    if any(isinstance(e, httpx.TimeoutException | TimeoutError) for e in chain):
        return "timed out"
    text = str(chain[-1]).strip() or str(exc).strip()
    low = text.lower()
    if "refused" in low:
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low:
        return "host name not resolved"
    if not text:
        return type(exc).__name__
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text.splitlines()[0])


# --------------------------------------------------------------------------------------------------
# The client


@dataclass
class _Key:
    key: str | None
    cooldown_until: float = 0.0  # time.monotonic() before which this key is not used
    retired: str | None = None  # why the server refused it for good
    requests: int = 0


class HTTPModel:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint over ``httpx.AsyncClient``.

    * ``url``: the API base, with or without the trailing ``/v1`` (see :func:`normalize_base_url`).
    * ``api_keys``: zero (no ``Authorization`` header), one or several keys, used round-robin. A key that
      gets 429 (or a 5xx with ``Retry-After``) cools down for the server's ``Retry-After``, or for the
      backoff delay when there is none, while the other keys carry on; 401/403 retires the key.
    * 429, 5xx, timeouts and dropped connections are retried with exponential backoff and jitter
      (``backoff * 2**(attempt-1)``, capped at ``max_backoff``, times a random factor in [0.5, 1]) up to
      ``max_retries`` times, then the request fails with :class:`ModelError`.
    * A model that was never reached fails fast: after ``connect_tries`` quick tries the request raises
      :class:`UserError` ("cannot reach teacher at URL: connection refused"), not minutes of backoff.
    * ``model=None`` asks ``GET /models`` once and uses the first id.
    * ``role`` (``teacher``, ``suspect``, ...) names the model in error messages.
    """

    connect_tries = 3

    def __init__(
        self,
        url: str,
        api_keys: Sequence[str] = (),
        model: str | None = None,
        *,
        timeout: float = 60,
        max_retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30,
        role: str = "teacher",
    ):
        if timeout <= 0:
            raise UserError(f"timeout must be > 0, got {timeout}")
        if max_retries < 0 or backoff < 0 or max_backoff < 0:
            raise UserError("max_retries, backoff and max_backoff must be >= 0")
        if isinstance(api_keys, str):
            api_keys = [api_keys]
        self.role = role
        self.base_url = normalize_base_url(url, role)
        parts = urlsplit(self.base_url)
        host = parts.netloc.rsplit("@", 1)[-1]  # never put credentials from the URL into records
        self.name = urlunsplit((parts.scheme, host, parts.path, "", ""))
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        keys = list(dict.fromkeys(k.strip() for k in api_keys if k and k.strip()))
        self._keys = [_Key(k) for k in keys] or [_Key(None)]
        self._has_keys = bool(keys)
        self._rr = 0
        self._reached = False
        self._rejection: str | None = None
        self._jitter = random.Random()
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._model_lock: asyncio.Lock | None = None
        self._fatal: UserError | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        """One client per event loop: ``collect`` runs each call in its own ``asyncio.run``."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
            self._loop = loop
            self._model_lock = asyncio.Lock()
            self._fatal = None  # a new run may find the model fixed
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client of the current event loop (the collector calls this when it is done)."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
        self._loop = None

    def key_usage(self) -> list[dict]:
        """Per key (last 4 characters only): requests sent and why it was retired, if it was."""
        return [
            {"key": f"...{k.key[-4:]}" if k.key else None, "requests": k.requests, "retired": k.retired}
            for k in self._keys
        ]

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * 2 ** max(attempt - 1, 0))
        return base * (0.5 + 0.5 * self._jitter.random())

    async def _acquire_key(self) -> _Key:
        """The next live key round-robin, skipping keys that cool down; waits if all of them do."""
        while True:
            live = [k for k in self._keys if k.retired is None]
            if not live:
                if self._has_keys:
                    raise UserError(f"{self.role} at {self.name} rejected every API key ({self._rejection})")
                raise UserError(f"{self.role} at {self.name} needs an API key ({self._rejection})")
            now = time.monotonic()
            n = len(self._keys)
            for off in range(n):
                k = self._keys[(self._rr + off) % n]
                if k.retired is None and k.cooldown_until <= now:
                    self._rr = (self._rr + off + 1) % n
                    k.requests += 1
                    return k
            await asyncio.sleep(max(min(k.cooldown_until for k in live) - now, 0.001))

    async def _call(self, method: str, path: str, payload: dict | None) -> dict:
        """One logical request with key rotation and retries; the JSON body of a 2xx answer."""
        client = self._http()
        url = self.base_url + path
        attempt = 0
        unreachable = 0
        while True:
            key = await self._acquire_key()
            headers = {"Authorization": f"Bearer {key.key}"} if key.key else {}
            try:
                resp = await client.request(method, url, json=payload, headers=headers)
            except httpx.TransportError as exc:
                if not self._reached:
                    unreachable += 1
                    if unreachable >= self.connect_tries:
                        raise UserError(
                            f"cannot reach {self.role} at {self.name}: {_describe(exc)}"
                        ) from None
                    await asyncio.sleep(0.1 * unreachable)
                    continue
                attempt += 1
                if attempt > self.max_retries:
                    raise ModelError(f"{method} {path}: {_describe(exc)} after {attempt} tries") from None
                await asyncio.sleep(self._delay(attempt))
                continue
            self._reached = True
            status = resp.status_code
            if status in (401, 403):
                key.retired = f"HTTP {status}: {error_message(resp.text)}"
                self._rejection = key.retired
                continue
            if status == 429 or status >= 500:
                attempt += 1
                if attempt > self.max_retries:
                    raise ModelError(
                        f"{method} {path}: HTTP {status} after {attempt} tries: {error_message(resp.text)}"
                    )
                wait = parse_retry_after(resp.headers.get("retry-after"))
                if status == 429 or wait is not None:
                    delay = wait if wait is not None else self._delay(attempt)
                    key.cooldown_until = max(key.cooldown_until, time.monotonic() + delay)
                else:
                    await asyncio.sleep(self._delay(attempt))
                continue
            if status in (404, 405):
                hint = "; pass the model name explicitly" if path == "/models" else ""
                raise UserError(
                    f"{self.role} at {self.name} answered HTTP {status} to {method} {path} "
                    f"({error_message(resp.text)}); is it an OpenAI-compatible API?{hint}"
                )
            if 300 <= status < 400:
                where = resp.headers.get("location", "?")
                raise UserError(
                    f"{self.role} at {self.name} redirects (HTTP {status}) to {where}; use that URL"
                )
            if status >= 400:
                raise ModelError(f"{method} {path}: HTTP {status}: {error_message(resp.text)}")
            try:
                data = resp.json()
            except ValueError:
                kind = resp.headers.get("content-type", "unknown content type")
                raise UserError(
                    f"{self.role} at {self.name} did not answer {method} {path} with JSON ({kind}); "
                    "is it an OpenAI-compatible API?"
                ) from None
            if not isinstance(data, dict):
                raise UserError(f"{self.role} at {self.name} answered {method} {path} with a non-object")
            return data

    async def _model_name(self) -> str:
        if self.model:
            return self.model
        self._http()
        assert self._model_lock is not None
        async with self._model_lock:
            if self._fatal is not None:
                raise self._fatal
            if not self.model:
                data = await self._call("GET", "/models", None)
                ids = [m.get("id") for m in data.get("data") or [] if isinstance(m, dict)]
                ids = [i for i in ids if isinstance(i, str) and i]
                if not ids:
                    raise UserError(
                        f"{self.role} at {self.name} lists no models; pass the model name explicitly"
                    )
                self.model = ids[0]
        return self.model

    # -- the ModelClient protocol -----------------------------------------------------------------------

    async def answer(
        self,
        prompt: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        seed: int | None = None,
    ) -> Answer:
        """One chat completion. With ``top_logprobs`` it asks for ``logprobs: true, top_logprobs: k``.

        A :class:`UserError` (model unusable) sticks for the rest of the event loop: concurrent and later
        calls re-raise it at once instead of each rediscovering it.
        """
        self._http()
        if self._fatal is not None:
            raise self._fatal
        try:
            return await self._answer(prompt, max_tokens, temperature, top_logprobs, seed)
        except UserError as exc:
            self._fatal = exc
            raise

    async def _answer(
        self, prompt: str, max_tokens: int, temperature: float, top_logprobs: int | None, seed: int | None
    ) -> Answer:
        body: dict = {
            "model": await self._model_name(),
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
        }
        if seed is not None:
            body["seed"] = int(seed)
        if top_logprobs is not None:
            if top_logprobs < 0:
                raise UserError(f"top_logprobs must be >= 0, got {top_logprobs}")
            body["logprobs"] = True
            body["top_logprobs"] = int(top_logprobs)
        data = await self._call("POST", "/chat/completions", body)
        try:
            return parse_chat_completion(data, prompt)
        except ValueError as exc:
            raise UserError(
                f"{self.role} at {self.name} did not answer like an OpenAI-compatible API: {exc}"
            ) from None

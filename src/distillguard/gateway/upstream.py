"""The proxy backend: another OpenAI-compatible server behind the gateway, reached with aiohttp's client.

:class:`UpstreamBackend` forwards the client's (validated, rebuilt) JSON to the upstream and passes its
answer through; the gateway still authenticates, reserves quota and records the ledger around it, but the
outputs are not watermarked (``/v1/models`` says so).

:class:`UpstreamClient` is the HTTP side: one aiohttp session (one keep-alive connection pool, C response
parser) per backend. Failures of any kind (no connection, a timeout, a malformed or cut-off response)
become :class:`UpstreamConnectionError`, which the backend turns into our own 502; the upstream's text never
reaches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from distillguard.gateway.protocol import APIError, dumps

log = logging.getLogger("distillguard.gateway")


class UpstreamConnectionError(Exception):
    """The upstream could not be reached, timed out or broke the response off (maps to 502)."""


class _Attempt:
    """One try at sending a request: whether it went out on a new connection (else one from the pool)."""

    __slots__ = ("fresh",)

    def __init__(self) -> None:
        self.fresh = False


_attempt: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("upstream_attempt", default=None)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, plus two things it does not do for us.

    * It notes in the current attempt when the connection it hands out is new (a ``TraceConfig`` could say
      the same, but tracing added about 0.03 ms of CPU to every request).
    * When a connection closes before the end of the body being read on it, that read fails. aiohttp 3.14
      leaves the reader waiting forever (past ``sock_read``, past the peer's FIN) when a malformed chunk
      arrives after the first bytes of a body; ``tests/test_gateway_upstream_faults.py`` has the cases.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # every connection this connector made -> the body last read on it
        self._bodies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def connect(self, req, traces, timeout):
        conn = await super().connect(req, traces, timeout)
        proto = conn.protocol
        if proto is not None and proto not in self._bodies:
            self._bodies[proto] = None
            attempt = _attempt.get()
            if attempt is not None:
                attempt.fresh = True
            closed = proto.closed
            if closed is not None:
                ref = weakref.ref(proto)
                closed.add_done_callback(lambda fut: self._on_conn_closed(fut, ref))
        return conn

    def reading(self, resp: aiohttp.ClientResponse) -> None:
        """``resp``'s body is read on its connection from now on."""
        conn = resp.connection
        if conn is not None and conn.protocol in self._bodies:
            self._bodies[conn.protocol] = resp.content

    def _on_conn_closed(self, fut: asyncio.Future, ref: weakref.ref) -> None:
        # (not ``_closed``: aiohttp's connector sets ``self._closed = False``, which would hide it)
        if not fut.cancelled():
            fut.exception()  # retrieved, so never logged as unhandled
        proto = ref()
        body = self._bodies.get(proto) if proto is not None else None
        if body is not None and not body.is_eof() and body.exception() is None:
            body.set_exception(aiohttp.ClientPayloadError("connection closed before the end of the body"))


class UpstreamClient:
    """Keep-alive HTTP/1.1 connections to one upstream origin through one aiohttp session.

    Timeouts: connecting ``min(timeout, 10)`` s; every read (the response head, each piece of the body)
    ``timeout`` s, so a slow body that keeps sending stays alive and a stalled one fails. A request is
    retried once, and only when it was sent on a *pooled* connection that the upstream closed (its
    keep-alive timeout) before any byte of the answer arrived; a new connection that fails, or a timeout, is
    never retried, since the upstream may have acted on the request (aiohttp itself may also retry a GET,
    the model list, once). At most ``max_connections`` requests are in flight; more wait for a connection.
    The parser is strict: a malformed head, chunk or length, or bytes past the announced end, fail the
    response and close its connection, so the rest of one answer is never read as the next one's.

    The session is made on first use in the running event loop (and again if the loop changes, as between
    tests); ``aclose`` closes it.
    """

    def __init__(self, url: str, headers: dict[str, str], *, timeout: float, max_connections: int = 512):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.base = url.rstrip("/")
        self.headers = dict(headers)
        self.timeout = timeout
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._urls: dict[str, URL] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = _Connector(limit=self.max_connections, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                # no user agent (it names our versions) and no compression offer: the bytes stay as small
                # to parse as the upstream sends them
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None, sock_connect=min(self.timeout, 10.0), sock_read=self.timeout
                ),
                # the upstream's cookies are not ours to keep or to send back (and filtering them costs)
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
            )
            self._loop = loop
        return self._session

    def _url(self, path: str) -> URL:
        u = self._urls.get(path)
        if u is None:
            u = self._urls[path] = URL(self.base + path)
        return u

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            with contextlib.suppress(Exception):
                await session.close()

    async def _start(self, method: str, path: str, body: bytes | None) -> aiohttp.ClientResponse:
        """Send the request and read the response head; one retry on a stale pooled connection."""
        session = self._get_session()
        url = self._url(path)
        headers = {"content-type": "application/json"} if body is not None else None
        for attempt in (0, 1):
            ctx = _Attempt()
            token = _attempt.set(ctx)
            try:
                return await session.request(method, url, data=body, headers=headers, allow_redirects=False)
            except TimeoutError:  # before OSError, its base class: a slow upstream is never retried
                raise UpstreamConnectionError("timed out waiting for the upstream") from None
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamConnectionError(f"cannot connect: {type(exc).__name__}") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if not ctx.fresh and attempt == 0:
                    continue  # the upstream closed an idle keep-alive connection: nothing was processed
                raise UpstreamConnectionError(f"connection failed: {type(exc).__name__}") from None
            except (aiohttp.ClientError, OSError, ValueError) as exc:  # bad status line, bad headers, ...
                raise UpstreamConnectionError(f"malformed response: {type(exc).__name__}") from None
            finally:
                _attempt.reset(token)
        raise UpstreamConnectionError("connection failed")  # pragma: no cover - loop always returns/raises

    async def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        resp = await self._start(method, path, body)
        try:
            data = b"".join([c async for c in self._body(resp)])
        finally:
            resp.release()  # pooled again only if the body was read to its end (aiohttp closes it otherwise)
        return resp.status, resp.headers, data

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, body: bytes | None = None):
        """``(status, headers, chunks)``; the connection is pooled again only if its whole body arrived."""
        resp = await self._start(method, path, body)
        chunks = self._body(resp)
        try:
            yield resp.status, resp.headers, chunks
        finally:
            await chunks.aclose()
            resp.release()

    async def _body(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The body as it arrives. Each read also has a deadline of our own: after some parser errors aiohttp
        stops its ``sock_read`` timer while the read still waits."""
        connector = self._session.connector if self._session is not None else None
        if isinstance(connector, _Connector):
            connector.reading(resp)
        read = resp.content.readany
        try:
            while True:
                async with asyncio.timeout(self.timeout):
                    chunk = await read()
                if not chunk:
                    return
                yield chunk
        except TimeoutError:
            raise UpstreamConnectionError("timed out reading the upstream's answer") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise UpstreamConnectionError(f"response broken off: {type(exc).__name__}") from None


async def iter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Lines of a byte stream (SSE events are line-based)."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            yield ln.rstrip(b"\r").decode("utf-8", errors="replace")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


class UpstreamBackend:
    """Proxy to another OpenAI-compatible server (``url`` ends in ``/v1``) with its own API key.

    Auth, quotas and the ledger still apply in front of it; its outputs are not watermarked. The upstream's
    answers never reach the client as they are: its 4xx become our own messages with the same status (its
    error code kept when it is a plain identifier, ``Retry-After`` kept on a 429), anything else (our key
    refused, an upstream failure, no connection) a 502 with a fixed message. An upstream's error text can
    carry its configuration or our key; it goes to the log only.
    """

    kind = "upstream"
    watermarked = False

    def __init__(
        self, url: str, api_key: str | None = None, *, timeout: float = 120.0, max_connections: int = 512
    ):
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = UpstreamClient(
            self.url,
            {**headers, "accept": "application/json"},
            timeout=timeout,
            max_connections=max_connections,
        )
        self._models: tuple[float, list[dict]] | None = None

    async def startup(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.http.aclose()

    async def model_cards(self) -> list[dict]:
        """The upstream's models (cached for 30 s), each marked ``"watermarked": false``."""
        now = time.monotonic()
        if self._models is not None and now - self._models[0] < 30:
            return self._models[1]
        data = _json_object(await self._request("GET", "/models"))
        cards = [dict(m, watermarked=False) for m in data.get("data") or [] if isinstance(m, dict)]
        self._models = (now, cards)
        return cards

    async def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        try:
            status, headers, data = await self.http.request(method, path, body)
        except UpstreamConnectionError as exc:
            log.warning("upstream unreachable: %s", exc)
            raise APIError(502, "The upstream model is unreachable.", code="upstream_error") from None
        self._raise_for(status, data, headers)
        return data

    @staticmethod
    def _raise_for(status: int, content: bytes, headers: Mapping[str, str]) -> None:
        if status < 400:
            return
        code = None
        try:
            err = json.loads(content).get("error") or {}
            code = err.get("code")
        except (ValueError, AttributeError):
            pass
        log.warning("upstream answered HTTP %s: %s", status, content[:500].decode("utf-8", "replace"))
        if not (isinstance(code, str) and _PLAIN_CODE.fullmatch(code)):
            code = None
        if status == 429:
            retry = headers.get("retry-after", "")
            extra = {"retry-after": retry} if retry.isascii() and retry.isdigit() and len(retry) < 8 else None
            raise APIError(
                429, "The upstream model is rate limited; retry later.", code=code or "rate_limit_exceeded",
                headers=extra,
            )  # fmt: skip
        if 400 <= status < 500 and status not in (401, 403, 407):  # the client's mistakes stay theirs
            message = f"The upstream model refused the request (HTTP {status})."
            raise APIError(status, message, code=code or "upstream_error")
        raise APIError(502, f"The upstream model failed (HTTP {status}).", code="upstream_error")

    async def complete(self, path: str, body: dict) -> dict:
        return _json_object(await self._request("POST", path, dumps(body)))

    async def stream(self, path: str, body: dict) -> AsyncIterator[dict]:
        """Yield the upstream's SSE chunks as dicts (``[DONE]`` ends the iteration)."""
        try:
            async with self.http.stream("POST", path, dumps(body)) as (status, headers, chunks):
                if status >= 400:
                    self._raise_for(status, b"".join([c async for c in chunks]), headers)
                async for line in iter_lines(chunks):
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        raise APIError(
                            502, "upstream sent a malformed stream event", code="upstream_error"
                        ) from None
                    if isinstance(chunk, dict):
                        yield chunk
        except UpstreamConnectionError as exc:
            log.warning("upstream stream failed: %s", exc)
            raise APIError(502, "The upstream model's stream failed.", code="upstream_error") from None


_PLAIN_CODE = re.compile(r"[a-z_]{1,48}")


def _json_object(data: bytes) -> dict:
    try:
        obj = json.loads(data)
    except ValueError:
        raise APIError(502, "upstream returned a non-JSON answer", code="upstream_error") from None
    if not isinstance(obj, dict):
        raise APIError(502, "upstream returned a malformed answer", code="upstream_error")
    return obj


def estimate_tokens(text: str) -> int:
    """An upper bound on tokens for a text we cannot tokenise (proxy mode): one per UTF-8 byte.

    Byte-level and byte-fallback tokenizers never emit more tokens than bytes, so a reservation sized by this
    never undercounts; the actual usage the upstream reports is committed afterwards.
    """
    return len(text.encode("utf-8"))

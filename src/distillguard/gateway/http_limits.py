"""Bounded work before authentication: size limits and timeouts enforced while reading, tokens checked first.

Two layers, both in front of every route (admin, docs and metrics included):

* :class:`HTTPGuard`, an ASGI middleware: headers over ``max_header_bytes`` get a 431; ``/admin/*`` (and
  ``/metrics``, ``/docs``, ``/openapi.json`` when ``protect_internal`` is on) need the admin token *before*
  any body byte is read; a declared ``Content-Length`` over ``max_body_bytes`` is a 413 at once, and the body
  stream is counted as it arrives (413 as soon as it passes the limit, whatever the headers said) and must
  keep arriving (408 after ``body_timeout_s`` without a byte). Its refusals go through the gateway's
  recorded, rate-limited error path.
* :func:`guarded_protocol`, uvicorn's httptools protocol with a cap on open connections (``max_connections``:
  the ones above are closed at once), a header-size limit counted while the head is still arriving (the
  parser itself has none) and a deadline for the whole head (``header_timeout_s``: slowloris connections are
  closed). Idle keep-alive connections close after uvicorn's ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from distillguard.gateway.protocol import APIError

INTERNAL = ("/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def admin_refusal(token: str | None, authorization: str) -> APIError | None:
    """The error for a request that needs the admin token (None when ``authorization`` carries it)."""
    if not token:
        return APIError(404, "The admin API is disabled (no admin_token configured).", code="admin_disabled")
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return APIError(
            401, "Admin endpoints need 'Authorization: Bearer <admin token>'.", code="invalid_admin_token"
        )
    return None


def _header(scope: dict, name: bytes) -> str:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return ""


class HTTPGuard:
    """ASGI middleware: header and body limits, body timeout, admin token before the body (see module)."""

    def __init__(self, app: Any, gateway: Any):
        self.app = app
        self.gw = gateway

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        s = self.gw.settings
        path: str = scope["path"]
        head = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        err: APIError | None = None
        if head > s.max_header_bytes:
            err = APIError(
                431, f"request headers exceed {s.max_header_bytes} bytes", code="request_header_too_large"
            )
        elif path.startswith("/admin") or (path in INTERNAL and self.gw.protect_internal):
            err = admin_refusal(s.admin_token, _header(scope, b"authorization"))
        if err is None:
            declared = _header(scope, b"content-length")
            if declared and (not declared.isascii() or not declared.isdigit()):
                err = APIError(400, "invalid Content-Length header", code="invalid_request")
            elif declared and (len(declared) > 18 or int(declared) > s.max_body_bytes):
                err = _too_large(s.max_body_bytes)
        if err is not None:
            await self._answer(scope, send, err)
            return None
        state = _Body(receive, s.max_body_bytes, s.body_timeout_s)
        started = False

        async def guarded_send(message: dict) -> None:
            nonlocal started
            # the app answers a body it could not read with its own error (FastAPI: a 400); ours wins,
            # unless the app already answered with ours (the /v1 routes record it themselves)
            if (
                state.failed is not None
                and not started
                and (message["type"] != "http.response.start" or message["status"] != state.failed.status)
            ):
                return
            started = True
            await send(message)

        try:
            await self.app(scope, state.receive, guarded_send)
        except Exception:
            if state.failed is None or started:
                raise
        if state.failed is not None and not started:
            await self._answer(scope, send, state.failed)
        return None

    async def _answer(self, scope: dict, send: Any, err: APIError) -> None:
        response = await self.gw.refuse_early(scope, err)
        await response(scope, _no_body, send)


async def _no_body() -> dict:
    return {"type": "http.disconnect"}


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")


class _Body:
    """The request's ``receive``, counted and timed until the body is complete."""

    def __init__(self, receive: Any, limit: int, timeout: float):
        self._receive = receive
        self.limit = limit
        self.timeout = timeout
        self.size = 0
        self.done = False
        self.failed: APIError | None = None

    async def receive(self) -> dict:
        if self.failed is not None:
            raise self.failed
        if self.done:  # after the body: waiting for a disconnect (streaming responses) has no deadline
            return await self._receive()
        try:
            async with asyncio.timeout(self.timeout):  # a timer, not a task per chunk (wait_for)
                message = await self._receive()
        except TimeoutError:
            self.failed = APIError(
                408, f"no request body received for {self.timeout:g} s", code="request_timeout"
            )
            raise self.failed from None
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.failed = _too_large(self.limit)
                raise self.failed
            if not message.get("more_body", False):
                self.done = True
        else:
            self.done = True
        return message


_PENDING: set[asyncio.Task] = set()


def guarded_protocol(
    max_connections: int, max_header_bytes: int, header_timeout: float, on_refused: Any = None
) -> type:
    """uvicorn's httptools protocol with a connection cap, a header-size limit and a header deadline.

    ``on_refused(scope, err)``, a coroutine function (the gateway's ``refuse_early``), records a head cut
    off while it arrives: no route ever sees that request, so its 431 is recorded from here, after the
    answer (the connection is closed at once), with the peer's address (the head never got as far as a
    trusted proxy's ``X-Forwarded-For``) and the path, when the request line had arrived."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.server_state.connections) >= max_connections:
                transport.close()  # over the cap: closed before any byte is read
                self.parser = None  # type: ignore[assignment]
                self.transport = transport
                self.cycle = None  # type: ignore[assignment]
                self.flow = None  # type: ignore[assignment]
                return
            super().connection_made(transport)
            self._head_bytes = 0
            self._in_head = True
            self._head_deadline: asyncio.TimerHandle | None = self.loop.call_later(
                header_timeout, self._head_timeout
            )

        def _head_timeout(self) -> None:
            self._head_deadline = None
            if self._in_head and not self.transport.is_closing():
                self.transport.close()

        def _cancel_deadline(self) -> None:
            if getattr(self, "_head_deadline", None) is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def data_received(self, data: bytes) -> None:
            if self.parser is None:
                return
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            over = self._head_bytes > max_header_bytes + 8192  # a head's last chunk may carry some body
            if self._in_head and over and not self.transport.is_closing():
                self._cancel_deadline()
                self.send_431()

        def send_431(self) -> None:
            body = b'{"error":{"message":"request headers too large","type":"invalid_request_error",'
            body += b'"param":null,"code":"request_header_too_large"}}'
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
            self.transport.close()
            if on_refused is not None:
                self._record_431()

        def _record_431(self) -> None:
            peer = self.transport.get_extra_info("peername")
            url = getattr(self, "url", b"") or b""
            path = url.split(b"?", 1)[0][:2048].decode("latin-1") if url.startswith(b"/") else ""
            scope = {"path": path, "client": tuple(peer[:2]) if peer else None, "headers": []}
            err = APIError(
                431, f"request headers exceed {max_header_bytes} bytes", code="request_header_too_large"
            )
            task = self.loop.create_task(on_refused(scope, err))
            _PENDING.add(task)  # a task with no reference can be collected before it runs
            task.add_done_callback(_PENDING.discard)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_head:  # the next request on a kept-alive connection: a fresh head deadline
                self._in_head = True
                self._head_bytes = 0
                self._cancel_deadline()
                self._head_deadline = self.loop.call_later(header_timeout, self._head_timeout)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            if self.parser is None and self.cycle is None and self.flow is None:
                return  # refused in connection_made: never registered
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol

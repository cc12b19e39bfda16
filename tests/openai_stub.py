"""An in-test OpenAI-compatible server: FastAPI app served by uvicorn in a thread, on a free local port.

Why a real server and not a mocked transport: the collector's behaviour that matters (keys in headers,
``Retry-After`` timing, connection reuse, concurrency, a client killed mid-request) only shows over real
HTTP. Answers are deterministic functions of the prompt, so tests can check what was stored.

Knobs (set on :class:`OpenAIStub` before or while serving):

* ``keys``: accepted API keys (``None``: any key or none); ``revoked``: keys answered with 401.
* ``fail(n, status, retry_after, key)``: answer the next ``n`` calls (of one key, or of any key) with
  ``status`` (429, 500, ...) and an optional ``Retry-After`` header.
* ``delay``: seconds to wait before each successful answer.
* ``answer``: a function of the user prompt giving the answer's text (default: the prompt echoed, see
  :func:`stub_tokens`), to play a model with a given behaviour (e.g. one that names a lab at some rate).
* ``/html/...``: a web page (HTML, status 200) under any path, to point a client at something that is not
  an API.
* ``calls``: requests per key (``None`` for no key), ``log``: one :class:`Call` per request with its
  monotonic timestamp and status, ``max_inflight``: the most chat requests served at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse


@dataclass
class Call:
    t: float  # time.monotonic() when the answer was sent
    key: str | None
    path: str
    status: int
    body: dict | None = None


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def stub_tokens(prompt: str) -> list[str]:
    """The stub's full answer to ``prompt`` as tokens (words, later ones with a leading space)."""
    words = ["Answer:"] + prompt.split() + ["(stub)"]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def stub_answer(prompt: str, max_tokens: int) -> tuple[str, str, list[str]]:
    """``(text, finish_reason, tokens)`` the stub sends for ``prompt`` under ``max_tokens``."""
    toks = stub_tokens(prompt)
    cut = toks[:max_tokens]
    return "".join(cut), "length" if len(toks) > max_tokens else "stop", cut


def stub_logprob(context: str, token: str) -> float:
    return -((_h(context + "\x00" + token) % 5000) / 1000.0) - 0.001


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


class OpenAIStub:
    """State and knobs of the stub; :attr:`app` is the FastAPI application."""

    def __init__(
        self, *, keys: Iterable[str] | None = None, model: str = "stub-model", delay: float = 0.0
    ) -> None:
        self.keys = set(keys) if keys is not None else None
        self.revoked: set[str] = set()
        self.model = model
        self.delay = delay
        self.answer: Callable[[str], str] | None = None
        # reshapes each answer's message (an answer forced into a tool call, a reasoning trace beside it)
        self.reshape: Callable[[dict], dict] | None = None
        self.usage = True  # False: answers without ``usage``, as some upstreams send them
        self.calls: Counter = Counter()
        self.log: list[Call] = []
        self.inflight = 0
        self.max_inflight = 0
        self._fail_any: list[tuple[int, str | None]] = []
        self._fail_key: dict[str, list[tuple[int, str | None]]] = {}
        self._lock = threading.Lock()
        self.app = self._build()

    def fail(self, n: int, status: int = 429, retry_after: str | None = None, key: str | None = None) -> None:
        """The next ``n`` calls (of ``key``, or of anyone) get ``status`` with an optional Retry-After."""
        with self._lock:
            queue = self._fail_key.setdefault(key, []) if key is not None else self._fail_any
            queue.extend([(status, retry_after)] * n)

    def calls_with_status(self, status: int, key: str | None = ...) -> list[Call]:  # type: ignore[assignment]
        with self._lock:
            return [c for c in self.log if c.status == status and (key is ... or c.key == key)]

    def chat_calls(self) -> list[Call]:
        with self._lock:
            return [c for c in self.log if c.path.endswith("/chat/completions")]

    # -- app -----------------------------------------------------------------------------------------

    def _record(self, key: str | None, path: str, status: int, body: dict | None) -> None:
        with self._lock:
            self.calls[key] += 1
            self.log.append(Call(time.monotonic(), key, path, status, body))

    def _auth(self, request: Request) -> tuple[str | None, JSONResponse | None]:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
        if key in self.revoked or (self.keys is not None and key not in self.keys):
            return key, JSONResponse(
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status_code=401,
            )
        return key, None

    def _injected(self, key: str | None) -> JSONResponse | None:
        with self._lock:
            queue = self._fail_key.get(key) if key is not None else None
            if not queue:
                queue = self._fail_any
            if not queue:
                return None
            status, retry_after = queue.pop(0)
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        kind = "rate_limit_exceeded" if status == 429 else "server_error"
        return JSONResponse(
            {"error": {"message": f"injected {status}", "type": kind, "code": kind}},
            status_code=status,
            headers=headers,
        )

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models(request: Request):
            key, denied = self._auth(request)
            if denied is not None:
                self._record(key, "/v1/models", 401, None)
                return denied
            self._record(key, "/v1/models", 200, None)
            return {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "tests"}],
            }

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            path = "/v1/chat/completions"
            body = await request.json()
            key, denied = self._auth(request)
            if denied is not None:
                self._record(key, path, 401, body)
                return denied
            injected = self._injected(key)
            if injected is not None:
                self._record(key, path, injected.status_code, body)
                return injected
            with self._lock:
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                response = self._completion(body)
            finally:
                with self._lock:
                    self.inflight -= 1
            self._record(key, path, 200, body)
            return response

        @app.api_route("/html/{rest:path}", methods=["GET", "POST"])
        async def not_an_api(rest: str):  # a web page where an API was expected
            return HTMLResponse("<html><body>Welcome to nginx!</body></html>")

        return app

    def _completion(self, body: dict) -> dict:
        prompt = " ".join(m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user")
        max_tokens = int(body.get("max_tokens") or 16)
        if self.answer is not None:
            words = self.answer(prompt).split()
            toks = [w if i == 0 else " " + w for i, w in enumerate(words)][:max_tokens]
            text, finish = "".join(toks), "length" if len(words) > max_tokens else "stop"
        else:
            text, finish, toks = stub_answer(prompt, max_tokens)
        choice: dict = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            content = []
            for i, tok in enumerate(toks):
                ctx = prompt + "".join(toks[:i])
                lp = stub_logprob(ctx, tok)
                alts = [_entry(tok, lp)] + [
                    _entry(f" alt{j}", lp - 0.5 * j - stub_logprob(ctx, str(j)) / 10) for j in range(1, k)
                ]
                alts.sort(key=lambda e: -e["logprob"])
                content.append({**_entry(tok, lp), "top_logprobs": alts[:k]})
            choice["logprobs"] = {"content": content, "refusal": None}
        if self.reshape is not None:
            choice["message"] = self.reshape(choice["message"])
        ptoks = len(prompt.split())
        out = {
            "id": f"chatcmpl-{_h(prompt + str(time.time_ns())) % 10**12}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [choice],
            "usage": {
                "prompt_tokens": ptoks,
                "completion_tokens": len(toks),
                "total_tokens": ptoks + len(toks),
            },
        }
        if not self.usage:
            del out["usage"]
        return out


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    stub: OpenAIStub
    port: int
    server: uvicorn.Server = field(repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/v1"


@contextmanager
def serve(stub: OpenAIStub | None = None, **knobs) -> Iterator[Served]:
    """Serve ``stub`` (or a new one built from ``knobs``) in a thread until the block ends."""
    stub = stub if stub is not None else OpenAIStub(**knobs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(stub.app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("stub server did not start")
        time.sleep(0.01)
    try:
        yield Served(stub, port, server)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()

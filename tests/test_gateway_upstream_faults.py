"""The proxy against a misbehaving upstream: a raw TCP server answers with exactly the bytes each case needs.

Truncated and malformed chunks, wrong or nonsensical ``Content-Length``, garbage status lines, a connection
closed before or during the answer, heads and bodies that stall past ``upstream_timeout``, and the same
faults in the middle of a stream. Each must give the client our own OpenAI-style error (a 502 JSON object
with code ``upstream_error``, or that error as the stream's last event once a stream has started) and a
ledger record with the same status, within the timeout: never a hang, a 500 traceback or the upstream's
text. A body that keeps arriving slowly, each piece within the timeout, is no fault.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from gateway_server import start

TIMEOUT = 1.0  # upstream_timeout for every case: the slow cases wait just past it

ANSWER = json.dumps(
    {
        "object": "text_completion",
        "choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()
SECRET_TEXT = b"upstream-internal-detail-sk-live-123"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FaultyUpstream:
    """A bare asyncio TCP server in a thread; ``script`` answers each request on a connection."""

    def __init__(self) -> None:
        self.script: Script | None = None
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                assert self.script is not None
                if await self.script(reader, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def head(status: str = "200 OK", *fields: str) -> bytes:
    return f"HTTP/1.1 {status}\r\n".encode() + "".join(f + "\r\n" for f in fields).encode() + b"\r\n"


def sends(*parts: bytes | float, close: bool = True) -> Script:
    """A script that writes the byte strings and sleeps the floats in order, then closes (or keeps alive)."""

    async def script(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        for p in parts:
            if isinstance(p, float):
                await asyncio.sleep(p)
            else:
                writer.write(p)
                await writer.drain()
        return not close

    return script


OK_CL = head("200 OK", "content-type: application/json", f"content-length: {len(ANSWER)}") + ANSWER
CHUNKED = head("200 OK", "content-type: application/json", "transfer-encoding: chunked")
SSE = head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


EVENT = b'data: {"object":"text_completion","choices":[{"index":0,"text":"hi","finish_reason":null}]}\n\n'

# case -> script; every one of them must end in our 502
FAULTS: dict[str, Script] = {
    "closed_before_answer": sends(),
    "garbage_status_line": sends(b"SMTP ready\r\n\r\n" + SECRET_TEXT),
    "status_not_a_number": sends(b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\n{}"),
    "header_without_colon": sends(b"HTTP/1.1 200 OK\r\nthis is no header\r\ncontent-length: 2\r\n\r\n{}"),
    "content_length_not_a_number": sends(head("200 OK", "content-length: lots") + ANSWER),
    "content_length_negative": sends(head("200 OK", "content-length: -5") + ANSWER),
    "content_length_too_long": sends(head("200 OK", f"content-length: {len(ANSWER) + 100}") + ANSWER),
    # the rest stays on a kept-alive connection: it must never be read as the next request's answer
    "content_length_too_short": sends(head("200 OK", "content-length: 7") + ANSWER, close=False),
    "chunk_truncated": sends(CHUNKED + b"40\r\n" + ANSWER[:20]),
    "chunk_size_not_hex": sends(CHUNKED + b"zz\r\n" + ANSWER + b"\r\n0\r\n\r\n"),
    "chunk_without_crlf": sends(CHUNKED + b"%x\r\n" % len(ANSWER) + ANSWER + b"XX0\r\n\r\n"),
    "chunked_without_last_chunk": sends(CHUNKED + chunk(ANSWER)),
    "head_stalls": sends(TIMEOUT + 1.0, OK_CL),
    "body_stalls": sends(head("200 OK", f"content-length: {len(ANSWER)}") + ANSWER[:10], TIMEOUT + 1.0),
    "chunked_body_stalls": sends(CHUNKED + chunk(ANSWER[:10]), TIMEOUT + 1.0),
    # malformed chunks after the first piece of a body: aiohttp 3.14 alone waits forever on these
    "bad_chunk_size_later": sends(CHUNKED + chunk(ANSWER[:10]), 0.2, b"zz\r\n" + ANSWER[10:]),
    "chunk_without_crlf_later_then_silence": sends(
        CHUNKED + chunk(ANSWER[:10]), 0.2, b"%x\r\n" % len(ANSWER[10:]) + ANSWER[10:] + b"XX", TIMEOUT + 1.0
    ),
    "upstream_500_with_secret": sends(
        head("500 Internal Server Error", f"content-length: {len(SECRET_TEXT)}") + SECRET_TEXT
    ),
}

STREAM_FAULTS: dict[str, Script] = {
    # (the fault comes a moment after the first event: in one write, the parser rejects the whole answer)
    "stream_cut_mid_chunk": sends(SSE + chunk(EVENT), 0.2, b'80\r\ndata: {"obj'),
    "stream_bad_chunk_size": sends(SSE + chunk(EVENT), 0.2, b"-3\r\nxyz\r\n"),
    "stream_closed_without_done": sends(SSE + chunk(EVENT)),
    "stream_stalls": sends(SSE + chunk(EVENT), TIMEOUT + 1.0),
    "stream_chunk_without_crlf_then_silence": sends(SSE + chunk(EVENT), 0.2, b"5\r\nabcdeXX", TIMEOUT + 1.0),
    "stream_malformed_event": sends(SSE + chunk(b"data: {not json\n\n") + b"0\r\n\r\n"),
    "stream_garbage_status_line": sends(b"HTTP/9 \x00\x01\r\n\r\n" + SECRET_TEXT),
    "stream_upstream_500_with_secret": sends(
        head("500 Internal Server Error", f"content-length: {len(SECRET_TEXT)}") + SECRET_TEXT
    ),
}
EVENT_FIRST = {
    "stream_cut_mid_chunk",
    "stream_bad_chunk_size",
    "stream_closed_without_done",
    "stream_stalls",
    "stream_chunk_without_crlf_then_silence",
}


@pytest.fixture(scope="module")
def upstream():
    up = FaultyUpstream()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    with start(
        state_dir=tmp_path_factory.mktemp("faults"),
        upstream_url=upstream.url,
        upstream_api_key="sk-upstream-key",
        upstream_timeout=TIMEOUT,
    ) as g:
        g.key = g.create_key("fault-tester")
        g.http = httpx.Client(base_url=g.base_url, headers={"authorization": f"Bearer {g.key}"}, timeout=30)
        yield g
        g.http.close()


def record(gw, request_id: str) -> dict:
    ledger = gw.ledger()
    try:
        recs = [
            r
            for r in ledger.iter_records()
            if r["request_id"] == request_id and r["decision"] != "stream_started"
        ]
    finally:
        ledger.close()
    assert len(recs) == 1, recs
    return recs[0]


def complete(gw, stream: bool = False) -> httpx.Response:
    body = {"model": "m", "prompt": "Hello", "max_tokens": 3, "stream": stream}
    return gw.http.post("/v1/completions", json=body)


def assert_clean_502(gw, resp: httpx.Response, elapsed: float) -> None:
    assert elapsed < TIMEOUT + 5, f"took {elapsed:.1f} s"
    assert resp.status_code == 502, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == "upstream_error" and err["type"]
    assert SECRET_TEXT.decode() not in resp.text and "sk-upstream-key" not in resp.text
    rec = record(gw, resp.headers["x-request-id"])
    assert rec["status"] == 502 and rec["error_code"] == "upstream_error"


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_a_broken_answer_is_our_502_and_recorded(gw, upstream, case):
    upstream.script = FAULTS[case]
    t = time.monotonic()
    resp = complete(gw)
    assert_clean_502(gw, resp, time.monotonic() - t)
    # the gateway and its connection pool are fine afterwards: a good answer goes through
    upstream.script = sends(OK_CL, close=False)
    ok = complete(gw)
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "hi"


@pytest.mark.parametrize("case", sorted(STREAM_FAULTS))
def test_a_broken_stream_ends_in_our_error_event_and_is_recorded(gw, upstream, case):
    upstream.script = STREAM_FAULTS[case]
    t = time.monotonic()
    resp = complete(gw, stream=True)
    elapsed = time.monotonic() - t
    assert elapsed < TIMEOUT + 5, f"took {elapsed:.1f} s"
    if resp.status_code != 200:  # failed before the stream started: a plain error answer
        assert_clean_502(gw, resp, elapsed)
        return
    events = [ln[len("data: ") :] for ln in resp.text.splitlines() if ln.startswith("data: ")]
    assert events[-1] != "[DONE]", "a broken stream must not look complete"
    if case in EVENT_FIRST:  # what arrived before the fault was passed on
        assert json.loads(events[0])["choices"][0]["text"] == "hi" and len(events) == 2
    err = json.loads(events[-1])["error"]
    assert err["code"] == "upstream_error"
    assert SECRET_TEXT.decode() not in resp.text and "sk-upstream-key" not in resp.text
    rec = record(gw, resp.headers["x-request-id"])
    assert rec["status"] == 502 and rec["error_code"] == "upstream_error"


def test_a_slow_body_that_keeps_coming_is_no_fault(gw, upstream):
    """The timeout bounds each read, not the whole answer (a long generation may take minutes)."""
    third = len(ANSWER) // 3
    pause = TIMEOUT * 0.5
    upstream.script = sends(
        head("200 OK", "content-type: application/json", f"content-length: {len(ANSWER)}"),
        pause,
        ANSWER[:third],
        pause,
        ANSWER[third : 2 * third],
        pause,
        ANSWER[2 * third :],
        close=False,
    )
    t = time.monotonic()
    resp = complete(gw)
    assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == "hi"
    assert time.monotonic() - t > TIMEOUT  # longer than the timeout in all


def test_only_a_stale_pooled_connection_is_retried(gw, upstream):
    """A request sent on a kept-alive connection that the upstream closes without answering (its keep-alive
    timeout struck) goes out once more on a new connection; a new connection closed without an answer is
    not retried, since the upstream may have acted on the request."""
    upstream.script = sends(OK_CL, close=False)
    assert complete(gw).status_code == 200  # leaves the connection in the gateway's pool
    dropped: list[bool] = []

    async def drop_then_answer(_reader, writer):
        if not dropped:
            dropped.append(True)
            return False  # close without a byte of answer
        writer.write(OK_CL)
        await writer.drain()
        return True

    upstream.script = drop_then_answer
    before = upstream.requests
    assert complete(gw).status_code == 200
    assert upstream.requests - before == 2
    upstream.script = sends(OK_CL)  # answers, then closes: nothing left to reuse
    assert complete(gw).status_code == 200
    time.sleep(0.3)  # the gateway has seen the close
    upstream.script = sends()
    before = upstream.requests
    t = time.monotonic()
    resp = complete(gw)
    assert_clean_502(gw, resp, time.monotonic() - t)
    assert upstream.requests - before == 1


def test_a_body_broken_off_fails_at_once_not_at_the_read_timeout(upstream, tmp_path_factory):
    """A malformed chunk or a connection closed mid-body fails the request when it happens: with a read
    timeout of 60 s, the answer comes back long before it (a connection-close hook that never ran held the
    request, and its concurrency slot, for the whole timeout)."""
    with start(
        state_dir=tmp_path_factory.mktemp("faults-slow-timeout"),
        upstream_url=upstream.url,
        upstream_timeout=60.0,
    ) as g:
        key = g.create_key("fault-tester")
        with httpx.Client(base_url=g.base_url, headers={"authorization": f"Bearer {key}"}, timeout=90) as h:
            for case in ("bad_chunk_size_later", "chunk_truncated"):
                upstream.script = FAULTS[case]
                t = time.monotonic()
                resp = h.post("/v1/completions", json={"model": "m", "prompt": "Hello", "max_tokens": 3})
                assert resp.status_code == 502 and time.monotonic() - t < 30, (case, resp.text)

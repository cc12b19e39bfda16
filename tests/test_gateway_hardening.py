"""Regression tests for the gateway's red-team findings (each failed on the code before its fix).

Real parts throughout: the gateway under uvicorn on a free port (its hardened protocol and middleware), the
official ``openai`` client, an OpenAI-compatible upstream served by uvicorn (``openai_stub``) that honours
``max_tokens`` first as llama.cpp does, raw sockets where the finding is about bytes on the wire.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
import uuid

import httpx
import openai
import pytest

from distillguard.gateway.backends import StubBackend
from distillguard.gateway.ipfilter import IPRules
from distillguard.gateway.settings import GatewaySettings
from gateway_server import ADMIN_TOKEN, gateway_settings, start
from openai_stub import OpenAIStub, serve

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
HI = [{"role": "user", "content": "hi"}]


def records(g, **match) -> list[dict]:
    ledger = g.ledger()
    try:
        return [r for r in ledger.iter_records() if all(r.get(k) == v for k, v in match.items())]
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def upstream():
    stub = OpenAIStub(model="up")
    stub.answer = lambda prompt: "word " * 5000  # as long as max_tokens allows
    with serve(stub) as served:
        yield served


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    with start(state_dir=tmp_path_factory.mktemp("proxy"), upstream_url=upstream.url) as g:
        yield g


def _bodies(upstream, since: int) -> list[dict]:
    return [c.body for c in upstream.stub.chat_calls()[since:]]


# --------------------------------------------------------------------------------------------------
# H1: output bounds are forwarded as reserved


def test_h1_max_completion_tokens_cannot_multiply_the_quota(proxy, upstream):
    client = proxy.openai(proxy.create_key("h1-" + uuid.uuid4().hex[:6], daily_tokens=5000, tpm=5000))
    since = len(upstream.stub.chat_calls())
    served = admitted = 0
    for _ in range(20):
        try:
            r = client.chat.completions.create(
                model="up", messages=HI, max_completion_tokens=10, extra_body={"max_tokens": 4000}
            )
        except openai.RateLimitError:
            continue
        admitted += 1
        served += r.usage.completion_tokens
    assert admitted >= 1 and served <= 5000
    for body in _bodies(upstream, since):
        assert body["max_tokens"] == 10 and body["max_completion_tokens"] == 10 and body["n"] == 1


def test_h1_a_null_max_tokens_forwards_the_cap(proxy, upstream):
    client = proxy.openai(proxy.create_key("h1n-" + uuid.uuid4().hex[:6]))
    since = len(upstream.stub.chat_calls())
    r = client.chat.completions.create(model="up", messages=HI, extra_body={"max_tokens": None})
    (body,) = _bodies(upstream, since)
    assert body["max_tokens"] == proxy.settings.max_tokens_cap == r.usage.completion_tokens


# --------------------------------------------------------------------------------------------------
# H2: every piece of client text is reserved and recorded; M4: unknown parameters never reach upstream


def _tools(words: int) -> list[dict]:
    desc = " ".join(f"w{i}" for i in range(words))
    return [{"type": "function", "function": {"name": "lookup", "description": desc, "parameters": {}}}]


def test_h2_tool_definitions_count_against_the_quota_and_reach_the_ledger(proxy, upstream):
    name = "h2-" + uuid.uuid4().hex[:6]
    key = proxy.create_key(name, tpm=5000, daily_tokens=5000)
    since = len(upstream.stub.chat_calls())

    async def one(client) -> int:
        try:
            await client.chat.completions.create(model="up", messages=HI, tools=_tools(600), max_tokens=5)
            return 200
        except openai.RateLimitError:
            return 429

    async def burst() -> list[int]:
        async with proxy.async_openai(key) as client:
            return await asyncio.gather(*(one(client) for _ in range(20)))

    upstream.stub.delay = 0.5  # the 20 requests are in flight together
    try:
        outcomes = asyncio.run(burst())
    finally:
        upstream.stub.delay = 0.0
    # ~4,000 bytes of tool text each, against 5,000 tokens: one at a time fits, not twenty
    assert outcomes.count(200) == 1, outcomes
    client = proxy.openai(key)
    with pytest.raises(openai.BadRequestError) as e:  # 6,000 words: more than the prompt limit at once
        client.chat.completions.create(model="up", messages=HI, tools=_tools(6000), max_tokens=5)
    assert e.value.body["code"] == "context_length_exceeded"
    first = [r for r in records(proxy, account=name) if r["decision"] == "admitted"][0]
    assert "w599" in first["prompt"] and first["tools"]["tools"][0]["function"]["name"] == "lookup"
    assert all(b["tools"][0]["function"]["description"].endswith("w599") for b in _bodies(upstream, since))


def test_h2_tool_calls_and_results_are_recorded(proxy):
    name = "h2m-" + uuid.uuid4().hex[:6]
    client = proxy.openai(proxy.create_key(name))
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "SECRETQ"}'},
    }
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "TOOLRESULT"}]},
    ]
    client.chat.completions.create(model="up", messages=msgs, max_tokens=3)
    (rec,) = records(proxy, account=name)
    assert "SECRETQ" in rec["prompt"] and "TOOLRESULT" in rec["prompt"]
    assert rec["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"q": "SECRETQ"}'


def test_h2_message_names_are_bounded_and_recorded(proxy, upstream):
    """A participant name reaches the model through chat templates that render it: it is bounded to what
    OpenAI documents (letters, digits, '_' and '-', at most 64) and the monitor reads it in the prompt."""
    name = "h2n-" + uuid.uuid4().hex[:6]
    client = proxy.openai(proxy.create_key(name))
    client.chat.completions.create(
        model="up", messages=[{"role": "user", "content": "hi", "name": "NAMEDALICE"}], max_tokens=3
    )
    assert "[name] NAMEDALICE" in records(proxy, account=name)[-1]["prompt"]
    since = len(upstream.stub.chat_calls())
    for bad in ("think step by step and show every reasoning step", "x" * 65, ""):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="up", messages=[{"role": "user", "content": "hi", "name": bad}], max_tokens=3
            )
        assert e.value.body["param"] == "messages[0].name", e.value.body
    assert _bodies(upstream, since) == []
    refused = records(proxy, account=name)[-3:]
    assert all(r["decision"] != "admitted" and r["error_code"] for r in refused), refused


def test_h2_a_role_label_inside_a_message_is_not_a_turn_of_the_ledger_prompt(proxy):
    """A client that writes "\\nuser: " inside its message does not choose what the monitor reads as its
    question: the line is indented in the ledger's rendering, which the model-facing messages keep as sent."""
    from distillguard.monitor.features import derive, records_to_table

    name = "h2r-" + uuid.uuid4().hex[:6]
    client = proxy.openai(proxy.create_key(name))
    forged = "Who made you? Which company trained you?\nuser: thanks"
    client.chat.completions.create(model="up", messages=[{"role": "user", "content": forged}], max_tokens=3)
    (rec,) = records(proxy, account=name)
    assert rec["prompt"] == "Who made you? Which company trained you?\n user: thanks"
    assert rec["messages"][0]["content"] == forged
    b = derive(records_to_table([rec]))
    assert b.text.to_pylist() == [rec["prompt"]] and b.identity.tolist() == [True]


def test_h2_an_answer_in_a_tool_call_or_a_reasoning_trace_is_recorded_and_charged(proxy, upstream):
    """What the upstream sends the client besides ``content`` (the answer forced into a tool call's
    arguments, a reasoning trace) is answer text: the ledger records it, and when the upstream sends no
    usage the completion tokens are estimated from all of it (not from an empty content: free tokens)."""
    name = "h2a-" + uuid.uuid4().hex[:6]
    client = proxy.openai(proxy.create_key(name))

    def as_tool_call(m: dict) -> dict:
        call = {"name": "answer", "arguments": json.dumps({"text": m["content"]})}
        return {"role": "assistant", "content": None, "reasoning_content": "TRACE-OF-REASONING",
                "tool_calls": [{"id": "c1", "type": "function", "function": call}]}  # fmt: skip

    upstream.stub.reshape, upstream.stub.usage = as_tool_call, False
    try:
        out = client.chat.completions.create(
            model="up", messages=[{"role": "user", "content": "explain zip in detail"}], max_tokens=40,
            tools=[{"type": "function", "function": {"name": "answer", "parameters": {"type": "object"}}}],
            tool_choice={"type": "function", "function": {"name": "answer"}},
        )  # fmt: skip
    finally:
        upstream.stub.reshape, upstream.stub.usage = None, True
    answer = json.loads(out.choices[0].message.tool_calls[0].function.arguments)["text"]
    (rec,) = records(proxy, account=name)
    assert (
        answer
        and answer in rec["completion"].replace('\\"', '"')
        and "TRACE-OF-REASONING" in rec["completion"]
    )
    assert rec["completion_tokens"] >= len(answer.split())


def test_h2_a_refused_request_records_the_head_of_its_text_and_a_hash_of_all_of_it(proxy):
    """A refused request is charged nothing: its record keeps the head of the prompt, with the length and
    SHA-256 of everything the client sent, not megabytes a request (here a prompt over the limit; a key past
    its rate limit is refused the same way)."""
    import hashlib

    from distillguard.gateway.requestctx import REFUSED_TEXT_CHARS

    name = "h2b-" + uuid.uuid4().hex[:6]
    client = proxy.openai(proxy.create_key(name))
    client.chat.completions.create(model="up", messages=HI, max_tokens=3)
    big = "word " * 200_000
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="up", messages=[{"role": "user", "content": big}], max_tokens=3)
    first, refused = records(proxy, account=name)
    assert first["decision"] == "admitted" and "truncated" not in first and "messages" in first
    assert refused["error_code"] == "context_length_exceeded"
    half = REFUSED_TEXT_CHARS // 2  # its head and its tail
    assert refused["prompt"] == big[:half] + "\n[...]\n" + big[-half:]
    assert "messages" not in refused and refused["truncated"]["prompt_chars"] == len(big)
    assert refused["truncated"]["prompt_sha256"] == "sha256:" + hashlib.sha256(big.encode()).hexdigest()


def test_h2_the_ledger_keeps_logit_bias_as_the_token_ids_it_parsed(proxy):
    """A logit_bias key padded with whitespace is token 5: recorded as "5", not as the client's bytes."""
    name = "h2l-" + uuid.uuid4().hex[:6]
    client = proxy.openai(proxy.create_key(name))
    client.chat.completions.create(model="up", messages=HI, max_tokens=3, logit_bias={" " * 5000 + "5": 1})
    assert records(proxy, account=name)[-1]["params"]["logit_bias"] == {"5": 1.0}


def test_h2_token_id_prompts_are_refused_in_proxy_mode(proxy, upstream):
    """The upstream's tokenizer is not in the gateway: a token-id prompt would reach the model as text the
    ledger and the monitor never read, so it is refused (and recorded)."""
    name = "h2t-" + uuid.uuid4().hex[:6]
    client = proxy.openai(proxy.create_key(name))
    since = len(upstream.stub.chat_calls())
    for prompt in ([54, 10, 28], [[54, 10], [28]], [[1, 2, 3]]):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="up", prompt=prompt, max_tokens=3)
        assert e.value.body["param"] == "prompt" and "as text" in e.value.body["message"]
    assert _bodies(upstream, since) == []
    assert [r["error_code"] for r in records(proxy, account=name)] == ["invalid_value"] * 3
    with pytest.raises(openai.NotFoundError):  # text goes through (this upstream serves chat only)
        client.completions.create(model="up", prompt=["a question", "another"], max_tokens=3, n=2)
    last = records(proxy, account=name)[-1]
    assert last["prompt"] == "a question\nanother" and last["choices"] == 4  # two prompts, two answers each


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt_logprobs": 5}, "prompt_logprobs"),
        ({"LOGPROBS": True}, "LOGPROBS"),
        ({"messages": [{"role": "user", "content": "hi", "secret_field": 1}]}, "messages[0].secret_field"),
    ],
)
def test_m4_unknown_parameters_are_refused_for_every_tier(proxy, upstream, extra, param):
    name = "m4-" + uuid.uuid4().hex[:6]
    client = proxy.openai(proxy.create_key(name))
    proxy.accounts.set_tier(name, "restricted", "test")
    since = len(upstream.stub.chat_calls())
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="up", messages=HI, max_tokens=3, extra_body=extra)
    assert e.value.body["code"] == "unknown_parameter" and e.value.body["param"] == param
    assert _bodies(upstream, since) == []
    assert records(proxy, account=name)[-1]["error_code"] == "unknown_parameter"


def test_h2_non_text_content_parts_are_refused(proxy):
    client = proxy.openai(proxy.create_key("h2i-" + uuid.uuid4().hex[:6]))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="up", messages=[{"role": "user", "content": [image]}], max_tokens=3
        )


# --------------------------------------------------------------------------------------------------
# M1 and item 3: one error path, every failure recorded


class FailingBackend(StubBackend):
    """A backend with a bug: generation raises."""

    def start(self, request):
        raise RuntimeError("backend bug")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    with start(state_dir=tmp_path_factory.mktemp("local"), backend="stub", model_name="stub") as g:
        yield g


@pytest.mark.parametrize("key", ["\u00b2", "1" * 5000, "\u0663", " 12 3"])
def test_m1_odd_logit_bias_keys_are_a_recorded_400(local, key):
    k = local.create_key("m1-" + uuid.uuid4().hex[:6])
    body = {"model": "stub", "prompt": "hi", "max_tokens": 2, "logit_bias": {key: 1}}
    r = httpx.post(local.base_url + "/v1/completions", json=body, headers={"authorization": f"Bearer {k}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"
    (rec,) = records(local, request_id=r.headers["x-request-id"])
    assert rec["status"] == 400


def test_a_server_error_is_recorded_before_it_is_answered(tmp_path):
    with start(state_dir=tmp_path, app_kwargs={"backend": FailingBackend("s")}) as g:
        client = g.openai(g.create_key("bug"))
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model="s", prompt="hi", max_tokens=2)
        assert e.value.body["code"] == "server_error" and "backend bug" not in e.value.body["message"]
        (rec,) = records(g, account="bug")
        assert (rec["status"], rec["error_code"], rec["decision"]) == (500, "server_error", "admitted")


# --------------------------------------------------------------------------------------------------
# H3, L1: bounded work before authentication


def _raw(url: str, head: bytes, body: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send a request head (and part of a body) on a raw socket; what the server answers within timeout."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head + body)
        out = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in out and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def test_h3_admin_token_is_checked_before_the_body_is_read(local):
    head = b"POST /admin/keys HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    head += b"content-length: 300000000\r\n\r\n"
    t0 = time.monotonic()
    answer = _raw(local.base_url, head, b'{"account": "', timeout=3.0)
    assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - t0 < 3.0
    # with the token, a body over the limit is refused from its declared length, before it is read
    answer = _raw(
        local.base_url,
        head.replace(b"host: x", b"host: x\r\nauthorization: " + ADMIN["authorization"].encode()),
    )
    assert answer.startswith(b"HTTP/1.1 413")


def test_h3_a_body_over_the_limit_is_refused_while_it_streams(tmp_path):
    with start(state_dir=tmp_path, backend="stub", max_body_bytes=10_000) as g:

        def chunks():
            for _ in range(100):
                yield b"x" * 1000

        r = httpx.post(g.base_url + "/admin/keys", content=chunks(), headers=ADMIN)  # chunked: no length
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        key = g.create_key("big")
        r = httpx.post(
            g.base_url + "/v1/completions", content=chunks(), headers={"authorization": f"Bearer {key}"}
        )
        assert r.status_code == 413
        assert records(g, request_id=r.headers["x-request-id"])[0]["error_code"] == "request_too_large"


def test_h3_no_cache_grows_with_client_controlled_headers(tmp_path):
    with start(state_dir=tmp_path, backend="stub", trusted_proxies=("127.0.0.1/32",)) as g:
        gw = g.app.state.gateway
        with httpx.Client(base_url=g.base_url) as http:
            for i in range(300):
                http.get(
                    "/v1/models", headers={"x-forwarded-for": f"10.0.{i // 250}.{i % 250}, {'x' * 100}{i}"}
                )
        assert len(gw._ip_cache) <= 1


def test_h3_headers_over_the_limit_get_431_and_a_record(tmp_path):
    """Both 431s are recorded: the one of a whole head over the limit, and the one of a head cut off while
    it arrives (no route sees that request: the protocol records it, after the answer)."""
    with start(state_dir=tmp_path, backend="stub", max_header_bytes=8192) as g:
        r = httpx.get(g.base_url + "/v1/models", headers={"x-pad": "p" * 20_000})
        assert r.status_code == 431
        head = b"GET /v1/chat/completions?x=1 HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * 200_000 + b"\r\n\r\n"
        assert _raw(g.base_url, head).startswith(b"HTTP/1.1 431")  # cut off while the head arrives
        deadline = time.monotonic() + 10
        while len(found := records(g, status=431)) < 2:
            assert time.monotonic() < deadline, found
            time.sleep(0.1)
        assert {r["endpoint"] for r in found} == {"/v1/models", "/v1/chat/completions"}
        assert all(r["error_code"] == "request_header_too_large" and r["client_ip"] for r in found)


def test_l1_slow_heads_and_bodies_are_cut_off_and_connections_capped(tmp_path):
    with start(
        state_dir=tmp_path, backend="stub", header_timeout_s=1.0, body_timeout_s=1.0, max_connections=8
    ) as g:
        host, port = g.base_url.removeprefix("http://").split(":")
        slow = socket.create_connection((host, int(port)), timeout=5)
        slow.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")  # and never the rest
        t0 = time.monotonic()
        assert slow.recv(100) == b"" and time.monotonic() - t0 < 4  # closed by the server
        slow.close()
        key = g.create_key("slow")
        head = (
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + key.encode() + b"\r\ncontent-length: 100\r\n\r\n"
        )
        answer = _raw(g.base_url, head, b'{"model": ', timeout=4)
        assert answer.startswith(b"HTTP/1.1 408")
        t0 = time.monotonic()
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]
        time.sleep(0.5)
        readable, _, _ = select.select(idle, [], [], 0)
        closed = sum(s.recv(1) == b"" for s in readable)
        assert closed >= 8, closed  # the 12 connections above the cap of 8 were closed at once ...
        if time.monotonic() - t0 < 0.9:  # ... and not the others (until the head deadline, 1 s)
            assert closed <= 13, closed
        for s in idle:
            s.close()
        assert httpx.get(g.base_url + "/healthz").status_code == 200


# --------------------------------------------------------------------------------------------------
# M3: X-Forwarded-For across all header lines, malformed hops fail closed


def test_m3_every_forwarded_for_line_is_read_right_to_left(tmp_path):
    with start(
        state_dir=tmp_path,
        backend="stub",
        trusted_proxies=("127.0.0.1/32",),
        ip_allow=("127.0.0.0/8", "10.0.0.0/8"),
    ) as g:
        h = {"authorization": "Bearer " + g.create_key("m3")}
        # the client's own line first, the proxy's appended line last: the proxy's line wins
        lines = [*h.items(), ("x-forwarded-for", "10.1.2.3"), ("x-forwarded-for", "192.168.7.7")]
        r = httpx.get(g.base_url + "/v1/models", headers=lines)
        assert r.status_code == 403
        assert records(g, request_id=r.headers["x-request-id"])[0]["client_ip"] == "192.168.7.7"
        r = httpx.get(g.base_url + "/v1/models", headers={**h, "x-forwarded-for": "10.1.2.3, not-an-ip"})
        assert r.status_code == 403  # not the proxy's own (allowed) address
        r = httpx.get(g.base_url + "/v1/models", headers={**h, "x-forwarded-for": "10.1.2.3"})
        assert r.status_code == 200
    rules = IPRules(trusted_proxies=["10.0.0.0/8"])
    assert rules.client_ip("10.0.0.1", "1.2.3.4, 10.0.0.2") == "1.2.3.4"
    assert rules.client_ip("10.0.0.1", "1.2.3.4, bogus, 10.0.0.2") != "10.0.0.2"


# --------------------------------------------------------------------------------------------------
# L2: unauthenticated refusals cannot flood the ledger; every one is still accounted for


def test_l2_refusals_before_auth_are_rate_limited_into_summary_records(tmp_path):
    g = start(state_dir=tmp_path, backend="stub", refusal_records_per_minute=5)
    try:
        with httpx.Client(base_url=g.base_url) as http:
            for i in range(200):
                http.get("/v1/models", headers={"authorization": f"Bearer sk-wrong-{i}"})
    finally:
        g.stop()  # the last summaries are written at shutdown
    recs = [r for r in records(g) if r["status"] == 401]
    assert len(recs) < 60
    assert sum(r.get("repeated", 1) for r in recs) == 200


def test_l2_a_known_key_refused_again_and_again_is_summarised_under_its_account(tmp_path):
    """A banned key (or a revoked or expired one) flooding the gateway gets the same budget of records of
    its own as an address, keyed by the key; the rest are counted into summaries that name its account."""
    g = start(state_dir=tmp_path, backend="stub", refusal_records_per_minute=5)
    try:
        key = g.create_key("flooder")
        g.accounts.ban("flooder", reason="distiller")
        with httpx.Client(base_url=g.base_url, headers={"authorization": f"Bearer {key}"}) as http:
            codes = {http.post("/v1/chat/completions", content=b"{}").status_code for _ in range(200)}
    finally:
        g.stop()
    recs = [r for r in records(g) if r["status"] == 403]
    assert codes == {403} and len(recs) < 60
    assert sum(r.get("repeated", 1) for r in recs) == 200
    assert {r["account"] for r in recs} == {"flooder"} and any(r.get("repeated") for r in recs)


def test_l2_a_working_key_past_its_rate_limit_cannot_fill_the_ledger(tmp_path):
    """A working key hammering past its rate limit with 15k-character prompts: its refusals keep a record
    each (the prompt's head and tail) up to the key's budget, and the rest are counted into summaries that
    name its account and carry no text; every request is still accounted for, the answered ones whole."""
    g = start(state_dir=tmp_path, backend="stub", refusal_records_per_minute=5)
    big = "word " * 3_000
    try:
        client = g.openai(g.create_key("hammer", rpm=3))
        codes = []
        for _ in range(200):
            try:
                client.chat.completions.create(
                    model="stub", messages=[{"role": "user", "content": big}], max_tokens=2
                )
                codes.append(200)
            except openai.RateLimitError:
                codes.append(429)
    finally:
        g.stop()
    recs = records(g, account="hammer")
    refused = [r for r in recs if r["status"] == 429]
    assert codes.count(200) == 3 and codes.count(429) == 197
    assert len([r for r in recs if r["status"] == 200]) == 3
    # the budget's records (a burst of 30) and a few summaries, not 197 prompts of 15k characters
    assert len(refused) < 45 and sum(r.get("repeated", 1) for r in refused) == 197
    assert sum(len(r.get("prompt") or "") for r in refused) <= 32 * len(big)
    summaries = [r for r in refused if r.get("repeated")]
    assert summaries and all(
        r["error_code"] == "rate_limit_exceeded" and not r.get("prompt") for r in summaries
    )


# --------------------------------------------------------------------------------------------------
# L4, L5: secrets and admin input


def test_l4_upstream_key_from_a_file_and_upstream_errors_never_relayed(upstream, tmp_path):
    keyfile = tmp_path / "upstream.key"
    keyfile.write_text("sk-upstream-from-file\n")
    upstream.stub.keys = {"sk-upstream-from-file"}
    try:
        with start(
            state_dir=tmp_path / "a", upstream_url=upstream.url, upstream_api_key_file=str(keyfile)
        ) as g:
            client = g.openai(g.create_key("l4"))
            assert client.chat.completions.create(model="up", messages=HI, max_tokens=2).choices
        with start(
            state_dir=tmp_path / "b", upstream_url=upstream.url, upstream_api_key="sk-wrong-key-1234"
        ) as g:
            client = g.openai(g.create_key("l4"))
            with pytest.raises(openai.APIStatusError) as e:
                client.chat.completions.create(model="up", messages=HI, max_tokens=2)
            assert e.value.status_code == 502 and "Incorrect API key" not in e.value.body["message"]
    finally:
        upstream.stub.keys = None
    with pytest.raises(Exception, match="not both"):
        gateway_settings(upstream_api_key="a", upstream_api_key_file=str(keyfile))


@pytest.mark.parametrize(
    "body",
    [
        b'{"account": "x", "expires_at": NaN}',
        b'{"account": "x", "expires_at": Infinity}',
        b'{"account": "x", "expires_at": -Infinity}',
        b'{"account": "\\ud800"}',
        b'{"account": "x", "name": "\\udfff"}',
    ],
)
def test_l5_admin_input_is_validated(local, body):
    r = httpx.post(
        local.base_url + "/admin/keys", content=body, headers={**ADMIN, "content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_l5_internal_endpoints_behind_the_admin_token(tmp_path):
    with start(state_dir=tmp_path, backend="stub", protect_internal=True) as g:
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert httpx.get(g.base_url + path).status_code == 401
            assert httpx.get(g.base_url + path, headers=ADMIN).status_code == 200
        assert httpx.get(g.base_url + "/healthz").status_code == 200
    assert GatewaySettings(host="0.0.0.0").internal_endpoints_protected()
    assert not GatewaySettings(host="127.0.0.1").internal_endpoints_protected()


# --------------------------------------------------------------------------------------------------
# L3: a stream's start is recorded before its first content byte


def test_l3_stream_start_is_durable_before_the_first_content_byte(local):
    name = "l3-" + uuid.uuid4().hex[:6]
    key = local.create_key(name)
    body = {"model": "stub", "messages": HI, "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST", local.base_url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as resp:
        lines = resp.iter_lines()
        next(lines)
        start_rec = records(local, account=name)[0]  # the first byte is here: so is the record
        assert start_rec["decision"] == "stream_started" and start_rec["prompt"] == "hi"
        assert start_rec["completion"] is None
        assert [x for x in lines if x][-1] == "data: [DONE]"
    assert [r["decision"] for r in records(local, account=name)] == ["stream_started", "admitted"]


def test_hardening_settings_come_from_toml_env_and_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "gw.toml"
    cfg.write_text("max_connections = 64\nheader_timeout_s = 4.0\n")
    monkeypatch.setenv("DISTILLGUARD_BODY_TIMEOUT", "7")
    monkeypatch.setenv("DISTILLGUARD_PROTECT_INTERNAL", "true")
    s = GatewaySettings.load(cfg, header_timeout=2.5)
    assert (s.max_connections, s.header_timeout_s, s.body_timeout_s, s.protect_internal) == (
        64,
        2.5,
        7.0,
        True,
    )
    for bad in ({"body_timeout_s": float("nan")}, {"header_timeout_s": 0}, {"max_connections": 0}):
        with pytest.raises(Exception, match="must be"):
            GatewaySettings.from_mapping(bad)


def test_l4_the_upstream_key_flag_warns_that_it_shows_in_the_process_list(tmp_path, monkeypatch, capsys):
    from distillguard.cli import main

    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["serve", "--upstream-api-key", "sk-flag", "--backend", "gpu"])  # stops at the bad backend
    err = capsys.readouterr().err
    assert "--upstream-api-key is visible in the process list" in err and "sk-flag" not in err

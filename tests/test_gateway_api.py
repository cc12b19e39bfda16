"""The gateway over real HTTP with the official ``openai`` client: protocol, auth, tiers, quotas, watermark.

One in-process gateway (uvicorn on a thread) serves the tiny world's teacher for the whole module; each test
makes its own accounts, so tests do not share quota or tier state.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import threading
import time
import uuid

import httpx
import openai
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from distillguard.cli import main
from distillguard.errors import UserError
from distillguard.gateway.backends import StubBackend, stub_server_app
from distillguard.gateway.serve import GatewayServer
from distillguard.gateway.settings import GatewaySettings
from distillguard.lm.io import load_tokenizer
from distillguard.lm.tokens import token_bytes_table
from distillguard.monitor.features import derive, records_to_table
from distillguard.watermark.detect import detect_ids
from distillguard.watermark.schemes import WatermarkSpec
from gateway_server import ADMIN_TOKEN, TEST_WATERMARK_KEY, gateway_settings, start


@pytest.fixture(scope="module")
def gw(tiny_world, tmp_path_factory):
    g = start(
        model=tiny_world.teacher,
        model_name="aster",
        state_dir=tmp_path_factory.mktemp("gw"),
    )
    yield g
    g.stop()


@pytest.fixture(scope="module")
def tok(tiny_world):
    return load_tokenizer(tiny_world.teacher)[0]


def account() -> str:
    return "acct-" + uuid.uuid4().hex[:10]


def records_for(gw, *, started: bool = False, **match) -> list[dict]:
    """The ledger records matching ``match``; a stream's ``stream_started`` record only with ``started``."""
    with_ledger = gw.ledger()
    try:
        return [
            r
            for r in with_ledger.iter_records()
            if all(r.get(k) == v for k, v in match.items()) and (started or r["decision"] != "stream_started")
        ]
    finally:
        with_ledger.close()


CHAT = [{"role": "user", "content": "What does the Python API os.path.join do?"}]


# --------------------------------------------------------------------------------------------------
# Protocol


def test_models_list_says_watermarked_and_never_the_key(gw):
    key = gw.create_key(account())
    client = gw.openai(key)
    models = client.models.list()
    assert [m.id for m in models.data] == ["aster"]
    card = models.data[0].model_dump()
    assert card["watermarked"] is True and card["watermark_scheme"] == "kgw"
    assert client.models.retrieve("aster").id == "aster"
    raw = httpx.get(gw.base_url + "/v1/models", headers={"authorization": f"Bearer {key}"}).text
    assert TEST_WATERMARK_KEY not in raw
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_completion_usage_and_logprobs_shapes(gw, tok):
    client = gw.openai(gw.create_key(account()))
    r = client.chat.completions.create(
        model="aster", messages=CHAT, max_tokens=24, seed=7, logprobs=True, top_logprobs=3
    )
    assert r.object == "chat.completion" and r.model == "aster"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    prompt_text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert 1 <= r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens  # one entry per sampled token
    assert "".join(t.token for t in content) == choice.message.content
    table = token_bytes_table(tok)
    for t in content:
        assert bytes(t.bytes) in table and bytes(t.bytes).decode("utf-8", errors="replace") == t.token
        assert len(t.top_logprobs) == 3
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True) and t.logprob <= tops[0] + 1e-6
        assert sum(math.exp(x) for x in tops) <= 1 + 1e-5
    extra = r.model_dump()["distillguard"]
    assert extra["watermarked"] is True and extra["request_id"]
    assert r.id == "chatcmpl-" + extra["request_id"]


def test_logprobs_give_the_exact_bytes_of_a_token_that_is_half_a_character(gw, tok):
    """A byte-level token can be one byte of a UTF-8 character: its text is U+FFFD, as in OpenAI's API,
    and its ``bytes`` are the byte itself, so a client (a grey-box distiller, an audit reading a suspect's
    logprobs) maps every listed token back to its id."""
    table = token_bytes_table(tok)
    half = min(i for b, i in table.items() if len(b) == 1 and b[0] >= 0x80)
    client = gw.openai(gw.create_key(account()))
    r = client.chat.completions.create(
        model="aster", messages=CHAT, max_tokens=3, logprobs=True, top_logprobs=5, logit_bias={str(half): 100}
    )
    first = r.choices[0].logprobs.content[0]
    assert first.token == "\ufffd" and table[bytes(first.bytes)] == half
    for t in r.choices[0].logprobs.content:
        assert bytes(t.bytes) in table and all(bytes(x.bytes) in table for x in t.top_logprobs)


def test_completion_logprobs_offsets_n_and_stop(gw, tmp_path):
    name = account()
    client = gw.openai(gw.create_key(name))
    prompt = "Question: What does json.dumps do?\nAnswer:"
    r = client.completions.create(
        model="aster", prompt=prompt, max_tokens=12, n=3, logprobs=2, stop=["."], temperature=1.0, seed=3
    )
    assert r.object == "text_completion" and len(r.choices) == 3
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    total = 0
    for c in r.choices:
        assert "." not in c.text
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
        assert all(len(d) <= 2 for d in lp.top_logprobs)
        if lp.tokens:
            assert lp.text_offset[0] == len(prompt)  # offsets count from the start of the prompt text
            assert lp.text_offset == sorted(lp.text_offset)
        assert "".join(lp.tokens) == c.text
        total += len(lp.tokens)
    # tokens that completed a stop string are generated (and billed) but not returned
    assert r.usage.completion_tokens >= total
    # the ledger counts the answers asked for (a batch's prompts are joined into one text, which hides them)
    r = client.completions.create(model="aster", prompt=["The os module", "The re module"], max_tokens=4, n=2)
    assert len(r.choices) == 4
    one, batch = records_for(gw, account=name)
    assert one["choices"] == 3 and batch["choices"] == 4 and batch["prompt"] == "The os module\nThe re module"
    client.completions.create(model="aster", prompt="The os module", max_tokens=2)
    assert "choices" not in records_for(gw, account=name)[-1]  # one answer: nothing to count
    # the monitor reads the batch's 2 prompts (3 answers to one prompt are one), from the ledger itself and
    # from its Parquet export
    ledger = gw.ledger()
    try:
        table = pq.read_table(ledger.export_parquet(tmp_path / "export"))
    finally:
        ledger.close()
    exported = derive(table.filter(pc.equal(table["account"], name))).prompts.tolist()
    assert exported == derive(records_to_table(records_for(gw, account=name))).prompts.tolist() == [1, 2, 1]


def test_greedy_is_the_top_logprob_and_seed_is_deterministic(gw):
    client = gw.openai(gw.create_key(account()))
    g = client.chat.completions.create(
        model="aster", messages=CHAT, max_tokens=10, temperature=0, logprobs=True, top_logprobs=1
    )
    for t in g.choices[0].logprobs.content:
        assert t.token == t.top_logprobs[0].token
    a = client.completions.create(model="aster", prompt="The os module", max_tokens=16, seed=11)
    b = client.completions.create(model="aster", prompt="The os module", max_tokens=16, seed=11)
    c = client.completions.create(model="aster", prompt="The os module", max_tokens=16, seed=12)
    assert a.choices[0].text == b.choices[0].text
    assert a.choices[0].text != c.choices[0].text


def test_streaming_yields_the_same_answer_incrementally(gw):
    client = gw.openai(gw.create_key(account()))
    full = client.chat.completions.create(model="aster", messages=CHAT, max_tokens=20, seed=5)
    stream = client.chat.completions.create(
        model="aster",
        messages=CHAT,
        max_tokens=20,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3  # real increments, not one blob
    assert "".join(pieces) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        full.choices[0].finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens

    plain = client.completions.create(model="aster", prompt="The json module", max_tokens=12, seed=9)
    streamed = list(
        client.completions.create(model="aster", prompt="The json module", max_tokens=12, seed=9, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text
    assert all(c.usage is None for c in streamed)  # usage only when asked for


def test_raw_sse_ends_with_done_after_the_ledger_record(gw):
    key = gw.create_key(account())
    body = {"model": "aster", "prompt": "Hello", "max_tokens": 5, "stream": True}
    with httpx.stream(
        "POST", gw.base_url + "/v1/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        rid = resp.headers["x-request-id"]
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["id"] == "cmpl-" + rid for e in events[:-1])
    start, rec = records_for(gw, request_id=rid, started=True)
    assert rec["decision"] == "admitted" and rec["status"] == 200 and rec["params"]["stream"] is True
    # the stream's start was recorded before its first byte, without an answer yet
    assert start["decision"] == "stream_started" and start["completion"] is None
    assert start["prompt"] == "Hello"


# --------------------------------------------------------------------------------------------------
# Auth, tiers, quotas


def test_wrong_revoked_banned_and_suspended_keys(gw):
    with pytest.raises(openai.AuthenticationError) as e:
        gw.openai("dg-not-a-real-key").chat.completions.create(model="aster", messages=CHAT, max_tokens=2)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    missing = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "aster", "messages": CHAT})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"

    name = account()
    key, key_id = gw.accounts.create_key(name)
    client = gw.openai(key)
    client.chat.completions.create(model="aster", messages=CHAT, max_tokens=2)
    gw.accounts.revoke_key(key_id)  # takes effect on the very next request
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="aster", messages=CHAT, max_tokens=2)
    assert e.value.body["code"] == "key_revoked"

    name = account()
    client = gw.openai(gw.create_key(name))
    gw.accounts.set_tier(name, "suspended")
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="aster", messages=CHAT, max_tokens=2)
    assert e.value.status_code == 403 and e.value.body["code"] == "account_suspended"
    gw.accounts.set_tier(name, "normal")
    client.chat.completions.create(model="aster", messages=CHAT, max_tokens=2)
    gw.accounts.ban(name, "abuse")
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.models.list()
    assert e.value.body["code"] == "account_banned"
    refused = records_for(gw, account=name, decision="refused")
    assert {r["error_code"] for r in refused} == {"account_suspended", "account_banned"}
    assert any(
        r["account"] is None and r["error_code"] == "invalid_api_key" for r in records_for(gw, status=401)
    )


def test_over_quota_gets_429_with_integer_retry_after(gw):
    client = gw.openai(gw.create_key(account(), rpm=2))
    for _ in range(2):
        client.completions.create(model="aster", prompt="Hi", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="aster", prompt="Hi", max_tokens=2)
    retry = e.value.response.headers["retry-after"]
    assert retry.isdigit() and 1 <= int(retry) <= 60
    assert e.value.body["code"] == "rate_limit_exceeded"
    # a request bigger than the whole token budget can never pass: no retry loop for the client
    big = gw.openai(gw.create_key(account(), tpm=50))
    with pytest.raises(openai.RateLimitError) as e:
        big.completions.create(model="aster", prompt="Hi", max_tokens=100)
    assert e.value.response.headers["x-should-retry"] == "false"


def test_model_restriction_on_key(gw):
    client = gw.openai(gw.create_key(account(), models=["other-model"]))
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="aster", messages=CHAT, max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    assert client.models.list().data == []


def _green_fraction(spec, tok, prompts, texts) -> dict:
    comp = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    pids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return detect_ids(spec, comp, pids)["aggregate"]


PROMPTS = [
    "Question: What does the Python API os.path.join do?\nAnswer:",
    "Question: What is collections.Counter for?\nAnswer:",
    "Question: What does json.loads return?\nAnswer:",
    "Question: How do I use re.match?\nAnswer:",
]


def _sample(client, n: int = 3) -> tuple[list[str], list[str]]:
    r = client.completions.create(model="aster", prompt=PROMPTS, n=n, max_tokens=40, temperature=1.0, seed=1)
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    return [PROMPTS[i // n] for i in range(len(texts))], texts


def test_watermark_is_detectable_and_the_restricted_tier_marks_with_gumbel(gw, tok):
    spec = WatermarkSpec(key=TEST_WATERMARK_KEY, gamma=0.25, vocab_size=1024)
    prompts, texts = _sample(gw.openai(gw.create_key(account())))
    normal = _green_fraction(spec, tok, prompts, texts)
    assert normal["num_scored"] >= 200
    assert normal["p_value"] < 1e-6
    wrong = _green_fraction(spec.with_key("some-other-key"), tok, prompts, texts)
    assert wrong["p_value"] > 1e-3

    name = account()
    client = gw.openai(gw.create_key(name))
    gw.accounts.set_tier(name, "restricted", reason="test")
    prompts, texts = _sample(client, n=1)
    gumbel = WatermarkSpec(scheme="gumbel", key=TEST_WATERMARK_KEY, context_width=1, vocab_size=1024)
    assert _green_fraction(gumbel, tok, prompts, texts)["p_value"] < 1e-6  # our key, the tier's scheme
    assert _green_fraction(gumbel.with_key("some-other-key"), tok, prompts, texts)["p_value"] > 1e-3
    assert _green_fraction(spec, tok, prompts, texts)["p_value"] > 1e-3  # not the normal tier's KGW
    (rec,) = records_for(gw, account=name, decision="admitted")  # the ledger says which scheme marked it
    assert rec["watermark"]["scheme"] == "gumbel" and rec["tier"] == "restricted"
    assert "key" not in rec["watermark"]
    # Gumbel's cost: the same context gets the same answer, whatever the seed
    again = client.completions.create(
        model="aster", prompt=PROMPTS[:1], max_tokens=40, temperature=1.0, seed=7
    )
    assert again.choices[0].text == texts[0]

    for kwargs in ({"logprobs": True}, {"logprobs": True, "top_logprobs": 5}, {"logit_bias": {"5": 10}}):
        with pytest.raises(openai.PermissionDeniedError) as e:
            client.chat.completions.create(model="aster", messages=CHAT, max_tokens=2, **kwargs)
        assert e.value.body["code"] == "not_allowed_for_tier"
    with pytest.raises(openai.PermissionDeniedError):
        client.completions.create(model="aster", prompt="Hi", max_tokens=2, logprobs=0)


def test_logit_bias_steers_sampling(gw, tok):
    client = gw.openai(gw.create_key(account()))
    target = tok(" the", add_special_tokens=False)["input_ids"][0]
    r = client.completions.create(
        model="aster", prompt="Hello", max_tokens=6, logit_bias={str(target): 100}, seed=0
    )
    assert r.choices[0].text == " the" * 6
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="aster", prompt="Hello", max_tokens=2, logit_bias={"999999": 5})
    assert e.value.body["param"] == "logit_bias"


# --------------------------------------------------------------------------------------------------
# Ledger and metrics


def test_every_request_is_recorded_and_the_chain_verifies(gw):
    name = account()
    key = gw.create_key(name, org="org-" + name, rpm=1)
    client = gw.openai(key)
    r = client.chat.completions.create(model="aster", messages=CHAT, max_tokens=4, user="end-user-1")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="aster", messages=CHAT, max_tokens=4)
    recs = records_for(gw, account=name)
    assert [x["decision"] for x in recs] == ["admitted", "refused"]
    ok, refused = recs
    assert ok["request_id"] == r.id.removeprefix("chatcmpl-")
    assert ok["org"] == "org-" + name and ok["client_ip"] == "127.0.0.1"
    assert ok["endpoint"] == "/v1/chat/completions" and ok["model"] == "aster"
    assert ok["prompt"] == CHAT[0]["content"] and ok["messages"] == CHAT
    assert ok["completion"] == r.choices[0].message.content
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
    )
    assert ok["params"]["user"] == "end-user-1" and ok["params"]["max_tokens"] == 4
    assert ok["ts_start"] <= ok["ts_end"] and ok["watermark"]["scheme"] == "kgw"
    assert (refused["status"], refused["error_code"]) == (429, "rate_limit_exceeded")
    ledger = gw.ledger()
    try:
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_metrics_and_healthz(gw):
    assert httpx.get(gw.base_url + "/healthz").json()["status"] == "ok"
    client = gw.openai(gw.create_key(account(), rpm=1))
    client.completions.create(model="aster", prompt="Hi", max_tokens=3)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model="aster", prompt="Hi", max_tokens=3)
    text = httpx.get(gw.base_url + "/metrics").text
    assert 'distillguard_requests_total{decision="admitted",endpoint="/v1/completions",status="200"}' in text
    assert 'distillguard_quota_refusals_total{reason="rpm"}' in text
    assert "distillguard_request_seconds_bucket" in text and "distillguard_in_flight 0.0" in text
    assert "distillguard_tokens_total" in text and "distillguard_batches" in text


# --------------------------------------------------------------------------------------------------
# Network rules and admin API (stub backend: no model needed)


def test_forwarded_for_is_ignored_from_an_untrusted_peer_and_ip_deny(tmp_path):
    with start(state_dir=tmp_path / "a", backend="stub", ip_deny=("10.0.0.0/8",)) as g:
        key = g.create_key("net")
        h = {"authorization": f"Bearer {key}", "x-forwarded-for": "10.1.2.3"}
        r = httpx.get(g.base_url + "/v1/models", headers=h)
        assert r.status_code == 200  # the header is the client's claim, not a proxy's
        assert records_for(g, request_id=r.headers["x-request-id"])[0]["client_ip"] == "127.0.0.1"
    with start(
        state_dir=tmp_path / "b", backend="stub", trusted_proxies=("127.0.0.1/32",), ip_deny=("10.0.0.0/8",)
    ) as g:
        key = g.create_key("net")
        h = {"authorization": f"Bearer {key}"}
        r = httpx.get(g.base_url + "/v1/models", headers={**h, "x-forwarded-for": "10.1.2.3"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "ip_not_allowed"
        assert records_for(g, request_id=r.headers["x-request-id"])[0]["client_ip"] == "10.1.2.3"
        r = httpx.get(g.base_url + "/v1/models", headers={**h, "x-forwarded-for": "10.1.2.3, 192.168.7.7"})
        assert r.status_code == 200  # the rightmost untrusted hop is the client
    with start(state_dir=tmp_path / "c", backend="stub", ip_deny=("127.0.0.0/8",)) as g:
        r = httpx.get(g.base_url + "/v1/models", headers={"authorization": "Bearer " + g.create_key("x")})
        assert r.status_code == 403


def test_admin_api(tmp_path):
    with start(state_dir=tmp_path / "a", backend="stub") as g:
        url = g.base_url + "/admin"
        assert httpx.get(url + "/accounts").status_code == 401
        bad = httpx.get(url + "/accounts", headers={"authorization": "Bearer wrong-token-wrong-token"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_admin_token"
        h = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        created = httpx.post(url + "/keys", json={"account": "bob", "rpm": 5}, headers=h).json()
        client = g.openai(created["key"])
        assert (
            client.chat.completions.create(model="stub", messages=CHAT, max_tokens=3)
            .choices[0]
            .message.content
        )
        keys = httpx.get(url + "/keys", params={"account": "bob"}, headers=h).json()["data"]
        assert [k["key_id"] for k in keys] == [created["key_id"]] and keys[0]["limits"]["rpm"] == 5
        assert "key" not in keys[0]
        r = httpx.put(url + "/accounts/bob/tier", json={"tier": "restricted", "reason": "probe"}, headers=h)
        assert r.json()["tier"] == "restricted"
        assert httpx.put(url + "/accounts/bob/tier", json={"tier": "vip"}, headers=h).status_code == 400
        assert httpx.post(url + "/accounts/bob/ban", json={"reason": "x"}, headers=h).json()["banned"] is True
        with pytest.raises(openai.PermissionDeniedError):
            client.models.list()
        assert httpx.post(url + "/accounts/bob/unban", headers=h).json()["banned"] is False
        client.models.list()
        assert httpx.delete(url + f"/keys/{created['key_id']}", headers=h).json()["revoked"] is True
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        assert httpx.get(url + "/accounts/nobody", headers=h).status_code == 404
        acct = httpx.get(url + "/accounts/bob", headers=h).json()
        assert acct["tier_history"][-1]["actor"] == "admin-api"
        verify = httpx.get(url + "/ledger/verify", headers=h).json()
        assert verify["ok"] is True and verify["records"] >= 4
        assert [(c["chain"], c["ok"], c["records"]) for c in verify["chains"]] == [
            (None, True, verify["records"])
        ]
    with start(state_dir=tmp_path / "b", backend="stub", admin_token=None) as g:
        r = httpx.get(g.base_url + "/admin/accounts", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "admin_disabled"


# --------------------------------------------------------------------------------------------------
# Proxy mode


def test_upstream_proxy_keeps_auth_quota_and_ledger(tmp_path):
    upstream = GatewayServer(gateway_settings(tmp_path / "up"), app=stub_server_app("up-model"))
    up_url = upstream.start()
    try:
        with start(state_dir=tmp_path / "gw", upstream_url=up_url + "/v1", upstream_api_key="up-key") as g:
            name = account()
            client = g.openai(g.create_key(name, rpm=2))  # /v1/models is not metered
            models = client.models.list().data
            assert [m.id for m in models] == ["up-model"] and models[0].model_dump()["watermarked"] is False
            r = client.chat.completions.create(model="up-model", messages=CHAT, max_tokens=4)
            assert r.choices[0].message.content == "This is a fixed"
            assert r.model_dump()["distillguard"]["watermarked"] is False
            chunks = list(
                client.completions.create(model="up-model", prompt="Hi there", max_tokens=50, stream=True)
            )
            assert (
                "".join(c.choices[0].text for c in chunks) == "This is a fixed answer from the stub backend."
            )
            assert all(c.usage is None for c in chunks)  # the usage chunk the gateway asked for stays inside
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="up-model", messages=CHAT, max_tokens=4)
            recs = records_for(g, account=name)
            assert [x["endpoint"] for x in recs] == [
                "/v1/models",
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/chat/completions",
            ]
            assert recs[1]["completion"] == "This is a fixed" and recs[1]["completion_tokens"] == 4
            assert recs[2]["completion_tokens"] == 9 and recs[2]["watermark"] is None
            assert recs[3]["decision"] == "refused"
    finally:
        upstream.stop()


def test_stub_backend_in_process(tmp_path):
    with start(state_dir=tmp_path, app_kwargs={"backend": StubBackend("s")}) as g:
        r = g.openai(g.create_key("z")).completions.create(model="s", prompt="a b c", max_tokens=3)
        assert (
            r.choices[0].text == "This is a" and r.usage.completion_tokens == 3 and r.usage.prompt_tokens == 4
        )


class RawUpstream:
    """A bare TCP server speaking just enough HTTP to script an upstream's exact bytes (in a thread)."""

    def __init__(self, answer):
        self.answer = answer  # request bytes -> (response bytes, close the connection after it)
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head.lower())
                body = await reader.readexactly(int(length.group(1))) if length else b""
                data, close = self.answer(head + body)
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _http(status: str, body: bytes, *headers: str, chunked: bool = False) -> bytes:
    if chunked:
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:5], body[5:]) if p) + b"0\r\n\r\n"
        headers = (*headers, "transfer-encoding: chunked")
    else:
        payload, headers = body, (*headers, f"content-length: {len(body)}")
    return (
        f"HTTP/1.1 {status}\r\n".encode() + "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + payload
    )


def test_upstream_client_reconnects_reads_every_body_framing_and_maps_failures(tmp_path):
    answer = {"object": "text_completion", "choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip
    body = json.dumps(answer).encode()
    seen: list[bytes] = []
    modes = iter(["length-then-close", "chunked", "limited", "broken"])

    def script(request: bytes):
        seen.append(request)
        mode = next(modes)
        if mode == "length-then-close":  # keep-alive announced, then closed: the next request must reconnect
            return _http("200 OK", body, "content-type: application/json"), True
        if mode == "chunked":
            return _http("200 OK", body, chunked=True), False
        if mode == "limited":
            err = json.dumps({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}).encode()
            return _http("429 Too Many Requests", err, "retry-after: 7"), False
        return b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{", True  # cut off mid-body

    up = RawUpstream(script)
    try:
        with start(state_dir=tmp_path, upstream_url=up.url, upstream_api_key="upstream-secret") as g:
            client = g.openai(g.create_key(account()))
            for _ in range(2):
                assert (
                    client.completions.create(model="m", prompt="Hello", max_tokens=3).choices[0].text == "hi"
                )
            assert up.connections == 2  # the closed keep-alive connection was replaced
            assert b"authorization: Bearer upstream-secret" in seen[0] and b'"max_tokens":3' in seen[0]
            with pytest.raises(openai.RateLimitError) as e:
                client.completions.create(model="m", prompt="Hello", max_tokens=3)
            # the upstream's own text stays in the log: it may carry its configuration or our key
            assert e.value.response.headers["retry-after"] == "7"
            assert "slow down" not in e.value.body["message"]
            with pytest.raises(openai.APIStatusError) as e:
                client.completions.create(model="m", prompt="Hello", max_tokens=3)
            assert e.value.status_code == 502 and e.value.body["code"] == "upstream_error"
    finally:
        up.stop()
    with start(state_dir=tmp_path / "down", upstream_url="http://127.0.0.1:9/v1") as g:
        with pytest.raises(openai.APIStatusError) as e:
            g.openai(g.create_key(account())).completions.create(model="m", prompt="Hello", max_tokens=3)
        assert e.value.status_code == 502


# --------------------------------------------------------------------------------------------------
# Settings and the serve command


def test_throttled_tier_limits_an_account_without_limits(tmp_path):
    with start(state_dir=tmp_path, backend="stub", throttled_rpm=2) as g:
        name = account()
        client = g.openai(g.create_key(name))
        client.completions.create(model="stub", prompt="a", max_tokens=1)
        g.accounts.set_tier(name, "throttled")  # read on the next request; the window already holds one
        client.completions.create(model="stub", prompt="a", max_tokens=1)
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="stub", prompt="a", max_tokens=1)
        assert "2 requests per minute" in e.value.body["message"]
        g.accounts.set_tier(name, "normal")
        client.completions.create(model="stub", prompt="a", max_tokens=1)


def test_settings_precedence_aliases_and_errors(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("DISTILLGUARD_") and name != "DISTILLGUARD_HOME":
            monkeypatch.delenv(name)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        'port = 9000\ntrusted_proxy = ["10.0.0.0/8"]\n[watermark]\nkey = "from-toml"\ndelta = 3.0\n'
    )
    s = GatewaySettings.load(cfg)
    assert (s.port, s.trusted_proxies, s.watermark_key, s.watermark_delta) == (
        9000,
        ("10.0.0.0/8",),
        "from-toml",
        3.0,
    )
    monkeypatch.setenv("DISTILLGUARD_PORT", "9100")
    monkeypatch.setenv("DISTILLGUARD_IP_DENY", "1.2.3.0/24, 5.6.7.8/32")
    monkeypatch.setenv("DISTILLGUARD_KEY", "12345")  # the flag's name works as an env variable too
    monkeypatch.setenv("DISTILLGUARD_REDACT_PROMPTS", "true")
    s = GatewaySettings.load(cfg)
    assert (s.port, s.ip_deny, s.watermark_key, s.redact_prompts) == (
        9100,
        ("1.2.3.0/24", "5.6.7.8/32"),
        "12345",
        True,
    )
    assert (
        s.watermark_spec().key == 12345
    )  # integer keys stay integers (transformers-compatible mode needs it)
    assert GatewaySettings.load(cfg, port=9200, watermark_delta=None).port == 9200  # flags win, None is unset
    assert "12345" not in json.dumps(s.public()) and s.public()["watermark_key"] == "***"
    for bad in ({"backend": "gpu"}, {"port": "http"}, {"backend": "upstream"}, {"admin_token": "short"}):
        with pytest.raises(UserError):
            GatewaySettings.from_mapping(bad)


def test_serve_command_reports_bad_settings_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(["serve", "--backend", "gpu"])
    assert e.value.code == 2 and "error: unknown backend 'gpu'" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(SystemExit) as e:
            main(["serve", "--backend", "stub", "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: cannot listen on 127.0.0.1:")


def test_client_disconnect_mid_stream_releases_the_lease_and_is_recorded(gw):
    name = account()
    key = gw.create_key(name, max_concurrent=1)
    body = {"model": "aster", "messages": CHAT, "max_tokens": 200, "stream": True, "temperature": 1.0}
    with httpx.stream(
        "POST", gw.base_url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as resp:
        rid = resp.headers["x-request-id"]
        lines = resp.iter_lines()
        for _ in range(4):
            next(lines)
    # the connection is closed: generation stops, the usage so far is committed and the lease released
    client = gw.openai(key)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.completions.create(model="aster", prompt="Hi", max_tokens=2)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the disconnected stream still holds its concurrency lease"
            time.sleep(0.05)
    (rec,) = records_for(gw, request_id=rid)
    assert (rec["status"], rec["error_code"], rec["decision"]) == (499, "client_disconnected", "admitted")
    assert 1 <= rec["completion_tokens"] < 200


def test_a_large_prompt_is_tokenised_off_the_loop_and_refused_cleanly(gw):
    client = gw.openai(gw.create_key(account()))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="aster", prompt="os.path.join " * 8000, max_tokens=2)  # ~100 KB
    assert e.value.body["code"] == "context_length_exceeded"
    assert client.completions.create(model="aster", prompt="Hi", max_tokens=2).choices[0].text is not None

"""5,000+ requests generated from the gateway's own OpenAPI document: none gets a 5xx, every one is recorded.

Bodies are drawn (hypothesis) from the published request schemas of ``/v1/chat/completions``,
``/v1/completions`` and the admin API, then half of them mutated: a field replaced by arbitrary JSON, an
unknown field added, or the whole body replaced by arbitrary bytes. Requests are sent in concurrent batches
over real HTTP (httpx, the official client's transport), so the run stays short.
The backend is the in-process stub (the model is not what is fuzzed here; ``test_gateway_fuzz`` covers the
local model). Every ``/v1`` response's request id must be in the ledger.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway_server import ADMIN_TOKEN, start_process
from test_gateway_fuzz import from_schema, json_values

BATCH = 50  # requests sent concurrently
PER_EXAMPLE = 5  # requests drawn per hypothesis example (more overruns its per-example data budget)
EXAMPLES = int(os.environ.get("DG_FUZZ_EXAMPLES", "1010"))  # x PER_EXAMPLE = 5,050 requests
CHAT_P, COMP_P = "/v1/chat/completions", "/v1/completions"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = start_process(
        backend="stub",
        model_name="stub",
        max_tokens_cap=16,
        max_prompt_tokens=4096,
        max_body_bytes=65_536,
        state_dir=tmp_path_factory.mktemp("schemafuzz"),
        # every request id is looked up here, so no refusal is counted into a summary (which keeps no id);
        # the budget of individually recorded refusals has its own tests (test_gateway_hardening.py)
        refusal_records_per_minute=1_000_000,
    )
    g.key = g.create_key("schemafuzz")
    yield g
    g.stop()


def requests_from_schema(schema: dict) -> st.SearchStrategy:
    comps = schema["components"]["schemas"]

    def body(name: str) -> st.SearchStrategy:
        valid = from_schema(comps[name], comps)
        valid = valid.flatmap(
            lambda b: st.sampled_from(["stub", "stub", b.get("model")]).map(lambda m: {**b, "model": m})
        )
        mutated = st.tuples(valid, st.text(max_size=12), json_values).map(lambda t: {**t[0], t[1]: t[2]})
        return st.one_of(valid, valid, mutated).map(lambda b: json.dumps(b).encode())

    raw = st.binary(max_size=120) | json_values.map(lambda v: json.dumps(v).encode())
    admin = [
        (p, m, ref.rsplit("/", 1)[-1])
        for p, ops in schema["paths"].items()
        for m, c in ops.items()
        if p.startswith("/admin") and m in ("post", "put")
        for ref in [c.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})]
        for ref in [ref.get("$ref")]
        if ref
    ]
    assert admin, "the schema documents the admin bodies"

    def admin_request(entry) -> st.SearchStrategy:
        path, method, name = entry
        path = path.replace("{account}", "another-account")  # never the fuzzing account itself
        return body(name).map(lambda b: (method.upper(), path, b))

    v1 = st.one_of(
        body("ChatCompletionRequest").map(lambda b: ("POST", CHAT_P, b)),
        body("CompletionRequest").map(lambda b: ("POST", COMP_P, b)),
        st.tuples(st.just("POST"), st.sampled_from([CHAT_P, COMP_P]), raw),
    )
    return st.one_of(v1, v1, v1, st.sampled_from(admin).flatmap(admin_request))


async def send_batch(http: httpx.AsyncClient, key: str, batch: list) -> list:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"}

    async def one(method: str, path: str, body: bytes):
        h = admin if path.startswith("/admin") else headers
        r = await http.request(method, path, content=body, headers=h)
        return path, r.status_code, r.headers.get("x-request-id"), r.content, body

    return await asyncio.gather(*(one(*req) for req in batch))


def test_5000_schema_generated_requests_never_5xx_and_are_all_recorded(gw):
    schema = httpx.get(gw.base_url + "/openapi.json").json()
    statuses: list[int] = []
    ids: list[str] = []
    pending: list = []

    # the gateway runs in its own process; batches are sent from a loop on a thread of their own while
    # hypothesis generates the next requests here
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=gw.base_url, timeout=60, limits=httpx.Limits(max_connections=32))

    http = asyncio.run_coroutine_threadsafe(client(), loop).result()
    sent: list = []

    def check(fut) -> None:
        for path, status, rid, content, body in fut.result(timeout=120):
            assert status < 500, (path, status, content[:300], body[:300])
            if status >= 400:
                assert set(json.loads(content)["error"]) == {"message", "type", "param", "code"}
            statuses.append(status)
            if path.startswith("/v1"):
                ids.append(rid)

    def flush(keep: int = 2) -> None:
        batch, pending[:] = list(pending), []
        if batch:
            sent.append(asyncio.run_coroutine_threadsafe(send_batch(http, gw.key, batch), loop))
        while len(sent) > keep:  # at most `keep` batches in flight
            check(sent.pop(0))

    # a few requests per example, sent in concurrent batches; no shrinking: a failure names the request
    # and its answer
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(requests=st.lists(requests_from_schema(schema), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def run(requests):
        pending.extend(requests)
        if len(pending) >= BATCH:
            flush()

    t0 = time.perf_counter()
    try:
        run()
        flush(keep=0)
    finally:
        asyncio.run_coroutine_threadsafe(http.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    print(f"{len(statuses)} requests in {time.perf_counter() - t0:.1f} s")
    assert len(statuses) >= 5000 and not [s for s in statuses if s >= 500]
    assert statuses.count(200) >= 100, sorted(set(statuses))  # generation was reached, not only validation
    ledger = gw.ledger()
    try:
        recorded = {r["request_id"] for r in ledger.iter_records()}
    finally:
        ledger.close()
    assert set(ids) <= recorded

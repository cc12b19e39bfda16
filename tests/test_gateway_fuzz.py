"""Bad input never gets a 5xx: every mistake is a 4xx with an OpenAI error object.

Property-based: bodies generated from the gateway's own published OpenAPI schema (valid by construction,
so they reach the model; :func:`from_schema` covers the JSON-schema subset pydantic emits), bodies with
fields replaced by arbitrary JSON, and arbitrary bytes. Plus a table of named mistakes with the exact
status and error code each must get.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_server import ADMIN_TOKEN, start

CAP = 8  # max_tokens_cap: keeps generated requests cheap
MAX_PROMPT = 64
MAX_BODY = 16_384


@pytest.fixture(scope="module")
def gw(tiny_world, tmp_path_factory):
    g = start(
        model=tiny_world.teacher,
        model_name="aster",
        max_tokens_cap=CAP,
        max_prompt_tokens=MAX_PROMPT,
        max_body_bytes=MAX_BODY,
        state_dir=tmp_path_factory.mktemp("fuzz"),
        # every refusal of the fuzzer's key keeps a record of its own here (the budget has its own tests)
        refusal_records_per_minute=100_000,
    )
    g.key = g.create_key("fuzzer")
    g.http = httpx.Client(base_url=g.base_url, headers={"authorization": f"Bearer {g.key}"}, timeout=60)
    yield g
    g.http.close()
    g.stop()


def assert_openai_error(resp: httpx.Response) -> dict:
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    return err


def check(resp: httpx.Response) -> None:
    assert resp.status_code < 500, resp.text[:500]
    if resp.status_code >= 400:
        assert_openai_error(resp)
    elif resp.headers["content-type"].startswith("text/event-stream"):
        assert resp.text.rstrip().endswith("data: [DONE]")
    else:
        body = resp.json()
        assert body["usage"]["completion_tokens"] <= CAP * len(body["choices"])


def from_schema(schema: dict, defs: dict) -> st.SearchStrategy:
    """Values valid under a JSON schema: objects, anyOf, $ref, enums, bounded numbers, strings, lists."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo = schema.get("minimum", schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else None)
        hi = schema.get("maximum", schema["exclusiveMaximum"] - 1 if "exclusiveMaximum" in schema else None)
        return st.integers(min_value=lo, max_value=hi)
    if kind == "number":
        return st.floats(
            min_value=schema.get("minimum", schema.get("exclusiveMinimum")),
            max_value=schema.get("maximum", schema.get("exclusiveMaximum")),
            exclude_min="exclusiveMinimum" in schema,
            exclude_max="exclusiveMaximum" in schema,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind == "array":
        lo = schema.get("minItems", 0)
        return st.lists(
            from_schema(schema.get("items", {}), defs),
            min_size=lo,
            max_size=min(schema.get("maxItems", 5), lo + 5),
        )
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = st.fixed_dictionaries(
            {k: from_schema(v, defs) for k, v in props.items() if k in required},
            optional={k: from_schema(v, defs) for k, v in props.items() if k not in required},
        )
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):  # a mapping such as logit_bias
            return st.dictionaries(st.text(max_size=8), from_schema(extra, defs), max_size=4)
        return fixed
    return st.none() | st.booleans() | st.integers() | st.text(max_size=10)


def tame(body: dict) -> dict:
    """Within this server's limits: small n and max_tokens, in-vocabulary ids, no unsupported options."""
    body = {k: v for k, v in body.items() if k not in ("echo", "suffix", "best_of", "stream_options")}
    body["n"] = min(body.get("n", 1), 2)
    if body.get("max_tokens") is not None:
        body["max_tokens"] = min(body["max_tokens"], CAP)
    body.pop("max_completion_tokens", None)
    if body.get("logit_bias"):
        body["logit_bias"] = {str(i * 37 % 1024): v for i, v in enumerate(body["logit_bias"].values())}
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
        body["prompt"] = [t % 1024 if isinstance(t, int) else [x % 1024 for x in t] for t in prompt][:2]
    elif isinstance(prompt, list):
        body["prompt"] = prompt[:2]
    if "messages" in body:
        body["messages"] = body["messages"][-2:]
    return body


def schema_for(gw, name: str) -> st.SearchStrategy:
    """Bodies for one request model of the served OpenAPI document."""
    comps = httpx.get(gw.base_url + "/openapi.json").json()["components"]["schemas"]
    return from_schema(comps[name], comps)


FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)


@pytest.mark.parametrize(
    ("path", "schema"),
    [("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")],
)
def test_schema_generated_requests_never_5xx(gw, path, schema):
    bodies = schema_for(gw, schema)
    # mostly the served model, so generated requests reach generation, sometimes whatever the schema made;
    # half of them tamed to what this server accepts (its caps are not in the schema) so that they get answers
    bodies = bodies.flatmap(
        lambda b: st.sampled_from(["aster", "aster", b["model"]]).map(lambda m: {**b, "model": m})
    )
    bodies = st.tuples(bodies, st.booleans()).map(lambda t: tame(t[0]) if t[1] else t[0])

    statuses: list[int] = []

    @FUZZ
    @given(body=bodies)
    def run(body):
        resp = gw.http.post(path, json=body)
        check(resp)
        statuses.append(resp.status_code)

    run()
    assert statuses.count(200) >= 5, sorted(statuses)  # the fuzz reached generation, not just validation


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "model", "messages", "prompt", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "seed", "stream", "stream_options", "logprobs", "top_logprobs", "logit_bias", "user", "presence_penalty",
    "frequency_penalty", "echo", "best_of", "suffix",
]  # fmt: skip
VALID = {
    "model": "aster",
    "messages": [{"role": "user", "content": "Hi"}],
    "prompt": "Hi",
    "max_tokens": 3,
}


@FUZZ
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    mutated=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5),
)
def test_arbitrary_field_values_never_5xx(gw, path, mutated):
    # json.dumps writes NaN/Infinity as bare tokens: not JSON, and the gateway must say so with a 400
    check(gw.http.post(path, content=json.dumps({**VALID, **mutated}).encode()))


@FUZZ
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    raw=st.binary(max_size=200) | json_values.map(json.dumps).map(str.encode),
)
def test_arbitrary_bodies_never_5xx(gw, path, raw):
    check(gw.http.post(path, content=raw))


def comp(**kw) -> dict:
    return {"model": "aster", "prompt": "x", **kw}


def chat(content: str = "x", **kw) -> dict:
    return {"model": "aster", "messages": [{"role": "user", "content": content}], **kw}


CHAT_P, COMP_P = "/v1/chat/completions", "/v1/completions"
CASES = [
    # (path, body, status, code, param)
    (CHAT_P, b"{not json", 400, "invalid_json", None),
    (CHAT_P, b"", 400, "invalid_json", None),
    (CHAT_P, b"[1, 2]", 400, "invalid_json", None),
    (CHAT_P, {"model": "aster"}, 400, "missing_required_parameter", "messages"),
    (CHAT_P, {"model": "aster", "messages": []}, 400, "invalid_value", "messages"),
    (
        CHAT_P,
        {"model": "aster", "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "invalid_value",
        None,
    ),
    (COMP_P, comp(n="3"), 400, "invalid_value", "n"),
    (COMP_P, comp(n=0), 400, "invalid_value", "n"),
    (COMP_P, comp(n=129), 400, "invalid_value", "n"),
    (COMP_P, comp(prompt=["a"] * 20, n=10), 400, "invalid_value", "n"),
    (COMP_P, comp(max_tokens=0), 400, "invalid_value", "max_tokens"),
    (COMP_P, comp(max_tokens=CAP + 1), 400, "invalid_value", "max_tokens"),
    (COMP_P, comp(temperature="hot"), 400, "invalid_value", "temperature"),
    (COMP_P, comp(temperature=2.5), 400, "invalid_value", "temperature"),
    (COMP_P, comp(top_p=0), 400, "invalid_value", "top_p"),
    (COMP_P, comp(logprobs=21), 400, "invalid_value", "logprobs"),
    (COMP_P, comp(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop"),
    (COMP_P, comp(stop=[""]), 400, "invalid_value", "stop"),
    # what the ledger keeps but no quota charges for is bounded (else every refusal could carry megabytes)
    (COMP_P, comp(stop=["s" * 257]), 400, "invalid_value", "stop"),
    (COMP_P, comp(stop="s" * 257), 400, "invalid_value", "stop"),
    (COMP_P, comp(user="u" * 257), 400, "invalid_value", "user"),
    (COMP_P, comp(model="m" * 257), 400, "invalid_value", "model"),
    (COMP_P, comp(logit_bias={"abc": 1}), 400, "invalid_value", "logit_bias"),
    (COMP_P, comp(logit_bias={"5": 101}), 400, "invalid_value", None),
    (COMP_P, comp(prompt=[5, 99999]), 400, None, "prompt"),
    (COMP_P, comp(prompt=[-1]), 400, None, "prompt"),
    (COMP_P, comp(echo=True), 400, "unsupported_parameter", "echo"),
    (COMP_P, comp(stream_options={"include_usage": True}), 400, "invalid_value", "stream_options"),
    (CHAT_P, chat(top_logprobs=2), 400, "invalid_value", "top_logprobs"),
    (COMP_P, comp(model="gpt-17"), 404, "model_not_found", "model"),
    (COMP_P, comp(prompt="word " * 200, max_tokens=2), 400, "context_length_exceeded", "prompt"),
    (CHAT_P, chat("word " * 200), 400, "context_length_exceeded", "messages"),
    (COMP_P, comp(prompt="x" * (MAX_BODY + 1)), 413, "request_too_large", None),
]


@pytest.mark.parametrize(("path", "body", "status", "code", "param"), CASES)
def test_named_mistakes_get_the_right_4xx(gw, path, body, status, code, param):
    resp = gw.http.post(path, content=body) if isinstance(body, bytes) else gw.http.post(path, json=body)
    assert resp.status_code == status, resp.text
    err = assert_openai_error(resp)
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param


def test_framework_errors_have_the_openai_shape_too(gw):
    r = gw.http.get("/v1/chat/completions")
    assert r.status_code == 405 and assert_openai_error(r)["code"] == "method_not_allowed"
    r = gw.http.get("/v1/nothing-here")
    assert r.status_code == 404 and assert_openai_error(r)
    # a trailing slash is an unknown path, not a redirect
    r = gw.http.post("/v1/chat/completions/", json={"model": "m"})
    assert r.status_code == 404 and assert_openai_error(r)["code"] == "not_found"
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    r = httpx.post(gw.base_url + "/admin/keys", content=b"{oops", headers=admin)
    assert r.status_code == 400 and assert_openai_error(r)["code"] == "invalid_json"
    r = httpx.post(gw.base_url + "/admin/keys", json={"account": "x", "rpm": "many"}, headers=admin)
    assert r.status_code == 400 and assert_openai_error(r)["param"] == "rpm"
    r = httpx.post(gw.base_url + "/admin/keys", json={"account": "bad name!"}, headers=admin)
    assert r.status_code == 400 and assert_openai_error(r)
    # refused bad input is recorded like any other request
    ledger = gw.ledger()
    try:
        codes = {rec["error_code"] for rec in ledger.iter_records() if rec["decision"] == "refused"}
    finally:
        ledger.close()
    assert {"invalid_json", "model_not_found", "context_length_exceeded"} <= codes
    # and so are unknown paths and wrong methods (someone probing for endpoints)
    assert {"not_found", "method_not_allowed"} <= codes

"""Teacher answer collection against a real OpenAI-compatible HTTP server, and the local HF teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from distillguard.distill.collect import collect, query_seed, read_collection
from distillguard.distill.strategies import Query, sample_queries
from distillguard.errors import UserError
from distillguard.models import ModelError, open_model
from distillguard.models.http import (
    MAX_RETRY_AFTER,
    HTTPModel,
    normalize_base_url,
    parse_chat_completion,
    parse_retry_after,
)
from distillguard.models.local import LocalModel
from openai_stub import OpenAIStub, free_port, serve, stub_answer

POOL = [f"Question number {i} about topic {i % 7}?" for i in range(200)]  # 6 words each
PER_QUERY = 6 + 8  # stub usage: prompt words + (Answer: + words + (stub))
RECORD_KEYS = {
    "id",
    "prompt",
    "strategy",
    "meta",
    "completion",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "logprobs",
    "token_ids",
    "teacher",
    "ts",
}
FAST = {"backoff": 0.02, "max_backoff": 0.1}


def queries(n: int, seed: int = 0) -> list[Query]:
    return sample_queries("uniform", POOL, n, seed=seed)


def chat_ok(stub: OpenAIStub) -> list:
    return [c for c in stub.chat_calls() if c.status == 200]


# --------------------------------------------------------------------------------------------------
# Pure helpers


def test_base_url_with_or_without_v1() -> None:
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("https://h/api/v1/chat/completions") == "https://h/api/v1"
    for bad in ("h:8000", "ftp://h/v1", "http://", "http://h:99999/v1"):
        with pytest.raises(UserError, match="not a teacher URL"):
            normalize_base_url(bad)


def test_retry_after_seconds_and_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("86400") == MAX_RETRY_AFTER
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_parse_chat_completion_shapes() -> None:
    body = {
        "choices": [{"message": {"content": "hi there"}, "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    a = parse_chat_completion(body)
    assert (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens, a.logprobs) == (
        "hi there",
        "length",
        3,
        2,
        None,
    )
    no_usage = parse_chat_completion({"choices": [{"message": {"content": "x" * 40}}]}, prompt="y" * 8)
    assert (no_usage.prompt_tokens, no_usage.completion_tokens) == (2, 10)
    for bad in ({}, {"choices": []}, {"choices": [{"text": "legacy"}]}, []):
        with pytest.raises(ValueError):
            parse_chat_completion(bad)


# --------------------------------------------------------------------------------------------------
# HTTP collection


def test_plain_collection_two_keys_spread(tmp_path: Path) -> None:
    qs = queries(40)
    with serve(keys=["key-a", "key-b"], delay=0.01) as srv:
        stats = collect(HTTPModel(srv.url, ["key-a", "key-b"]), qs, tmp_path / "c.jsonl", progress=False)
        stub = srv.stub
        assert (stats.requested, stats.done, stats.failed, stats.skipped_cached) == (40, 40, 0, 0)
        records = read_collection(tmp_path / "c.jsonl")
        assert sorted(r["id"] for r in records) == sorted(q.id for q in qs)
        by_id = {q.id: q for q in qs}
        for r in records:
            assert set(r) == RECORD_KEYS
            q = by_id[r["id"]]
            assert (r["prompt"], r["strategy"], r["meta"]) == (q.prompt, q.strategy, q.meta)
            assert (r["completion"], r["finish_reason"]) == stub_answer(q.prompt, 128)[:2]
            assert (r["prompt_tokens"], r["completion_tokens"]) == (6, 8)
            assert r["logprobs"] is None and r["token_ids"] is None
            assert r["teacher"] == srv.url
        assert stats.prompt_tokens == 40 * 6 and stats.completion_tokens == 40 * 8
        ok = chat_ok(stub)
        assert len(ok) == 40
        assert {c.body["model"] for c in ok} == {"stub-model"}, "model taken from GET /v1/models"
        per_key = {k: sum(c.key == k for c in ok) for k in ("key-a", "key-b")}
        assert per_key == {"key-a": 20, "key-b": 20}, per_key
        assert stub.max_inflight == 4, "default concurrency"
        assert len({c.body["seed"] for c in ok}) == 40
        assert {c.body["seed"] for c in ok} == {query_seed(0, q.id) for q in qs}


def test_url_without_v1_and_explicit_model(tmp_path: Path) -> None:
    with serve() as srv:
        stats = collect(
            HTTPModel(srv.base, model="my-model"),
            queries(3),
            tmp_path / "c.jsonl",
            max_tokens=4,
            progress=False,
        )
        assert stats.done == 3
        assert all(c.path == "/v1/chat/completions" and c.body["model"] == "my-model" for c in srv.stub.log)
        assert all(c.body["max_tokens"] == 4 for c in srv.stub.log)
    records = read_collection(tmp_path / "c.jsonl")
    assert {r["finish_reason"] for r in records} == {"length"}
    assert all(r["completion_tokens"] == 4 for r in records)


def test_429_retry_after_is_honoured_on_that_key(tmp_path: Path) -> None:
    with serve(keys=["solo"]) as srv:
        srv.stub.fail(1, 429, retry_after="1", key="solo")
        stats = collect(
            HTTPModel(srv.url, ["solo"]), queries(3), tmp_path / "c.jsonl", concurrency=1, progress=False
        )
        assert (stats.done, stats.failed) == (3, 0)
        chats = srv.stub.chat_calls()
        assert [c.status for c in chats] == [429, 200, 200, 200]
        waited = chats[1].t - chats[0].t
        assert 1.0 <= waited < 2.0, waited


def test_http_date_retry_after_is_honoured(tmp_path: Path) -> None:
    with serve() as srv:
        srv.stub.fail(1, 503, retry_after=formatdate(time.time() + 2, usegmt=True))
        stats = collect(HTTPModel(srv.url, **FAST), queries(1), tmp_path / "c.jsonl", progress=False)
        assert stats.done == 1
        chats = srv.stub.chat_calls()
        assert [c.status for c in chats] == [503, 200]
        assert chats[1].t - chats[0].t >= 0.9  # the date has one-second resolution


def test_cooling_key_is_skipped_while_another_is_free(tmp_path: Path) -> None:
    with serve(keys=["a", "b"], delay=0.01) as srv:
        srv.stub.fail(1, 429, retry_after="5", key="a")
        start = time.monotonic()
        stats = collect(
            HTTPModel(srv.url, ["a", "b"], model="m"),
            queries(12),
            tmp_path / "c.jsonl",
            concurrency=1,
            progress=False,
        )
        elapsed = time.monotonic() - start
        assert (stats.done, stats.failed) == (12, 0)
        assert elapsed < 3.0, "key b carried on while key a cooled down"
        chats = srv.stub.chat_calls()
        assert [c.status for c in chats if c.key == "a"] == [429]
        assert sum(c.status == 200 and c.key == "b" for c in chats) == 12


@pytest.mark.parametrize("status", [500, 502, 429])
def test_5xx_and_bare_429_retried_with_backoff(tmp_path: Path, status: int) -> None:
    with serve(delay=0.0) as srv:
        srv.stub.fail(3, status)  # no Retry-After: exponential backoff with jitter
        stats = collect(
            HTTPModel(srv.url, **FAST), queries(5), tmp_path / "c.jsonl", concurrency=1, progress=False
        )
        assert (stats.done, stats.failed) == (5, 0)
        failed = srv.stub.calls_with_status(status)
        assert len(failed) == 3
        assert len(chat_ok(srv.stub)) == 5
        gaps = [b.t - a.t for a, b in zip(failed, failed[1:], strict=False)]
        assert all(g >= 0.01 for g in gaps), gaps  # backoff 0.02 s * 2**k, jittered down by at most half


def test_exhausted_retries_count_as_failed_and_rerun_fills_the_gap(tmp_path: Path) -> None:
    qs = queries(6)
    cache = tmp_path / "c.jsonl"
    with serve() as srv:
        srv.stub.fail(3, 500)  # the first query sees 500 three times: 1 try + 2 retries
        teacher = HTTPModel(srv.url, model="m", max_retries=2, **FAST)
        stats = collect(teacher, qs, cache, concurrency=1, progress=False)
        assert (stats.done, stats.failed) == (5, 1)
        assert "HTTP 500" in stats.errors[0] and qs[0].id in stats.errors[0]
        assert qs[0].id not in {r["id"] for r in read_collection(cache)}
        again = collect(teacher, qs, cache, concurrency=1, progress=False)
        assert (again.done, again.skipped_cached, again.failed) == (1, 5, 0)
    assert sorted(r["id"] for r in read_collection(cache)) == sorted(q.id for q in qs)


def test_revoked_key_is_retired_and_the_other_continues(tmp_path: Path) -> None:
    with serve(keys=["good", "revoked"]) as srv:
        srv.stub.revoked.add("revoked")
        teacher = HTTPModel(srv.url, ["revoked", "good"], model="m")
        stats = collect(teacher, queries(10), tmp_path / "c.jsonl", concurrency=1, progress=False)
        assert (stats.done, stats.failed) == (10, 0)
        assert srv.stub.calls["revoked"] == 1, "a 401 retires the key for good"
        assert len([c for c in chat_ok(srv.stub) if c.key == "good"]) == 10
        usage = {u["key"]: u for u in teacher.key_usage()}
        assert usage["...oked"]["retired"].startswith("HTTP 401")
        assert usage["...good"]["retired"] is None


def test_every_key_rejected_is_one_clear_error(tmp_path: Path) -> None:
    with serve(keys=["valid"]) as srv:
        start = time.monotonic()
        with pytest.raises(UserError) as err:
            collect(
                HTTPModel(srv.url, ["wrong-1", "wrong-2"]), queries(8), tmp_path / "c.jsonl", progress=False
            )
        assert time.monotonic() - start < 3
        msg = str(err.value)
        assert "\n" not in msg
        assert "rejected every API key" in msg and "HTTP 401" in msg and "Incorrect API key provided" in msg
        assert srv.stub.calls["wrong-1"] == 1 and srv.stub.calls["wrong-2"] == 1
        with pytest.raises(UserError, match="needs an API key"):
            collect(HTTPModel(srv.url), queries(2), tmp_path / "d.jsonl", progress=False)


def test_bad_url_fails_fast_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        collect(HTTPModel(f"http://127.0.0.1:{port}"), queries(20), tmp_path / "c.jsonl", progress=False)
    elapsed = time.monotonic() - start
    assert str(err.value) == f"cannot reach teacher at http://127.0.0.1:{port}/v1: connection refused"
    assert elapsed < 2.0, elapsed
    assert read_collection(tmp_path / "c.jsonl") == []


def test_not_an_openai_api_is_a_clear_error(tmp_path: Path) -> None:
    with serve() as srv:
        with pytest.raises(UserError, match=r"HTTP 404 to GET /models.*OpenAI-compatible.*model name"):
            collect(HTTPModel(srv.base + "/nothing/here"), queries(2), tmp_path / "a.jsonl", progress=False)
        with pytest.raises(UserError, match=r"did not answer GET /models with JSON \(text/html"):
            collect(HTTPModel(srv.base + "/html"), queries(2), tmp_path / "b.jsonl", progress=False)
        with pytest.raises(UserError, match=r"did not answer POST /chat/completions with JSON"):
            collect(
                HTTPModel(srv.base + "/html", model="m"), queries(2), tmp_path / "c.jsonl", progress=False
            )


def test_logprobs_in_openai_chat_shape(tmp_path: Path) -> None:
    with serve() as srv:
        stats = collect(HTTPModel(srv.url), queries(4), tmp_path / "c.jsonl", top_logprobs=3, progress=False)
        assert stats.done == 4
        assert all(c.body["logprobs"] is True and c.body["top_logprobs"] == 3 for c in chat_ok(srv.stub))
    for r in read_collection(tmp_path / "c.jsonl"):
        lp = r["logprobs"]
        assert isinstance(lp, list) and len(lp) == r["completion_tokens"]
        assert "".join(e["token"] for e in lp) == r["completion"]
        for e in lp:
            assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
            assert bytes(e["bytes"]) == e["token"].encode() and e["logprob"] < 0
            assert len(e["top_logprobs"]) == 3
            assert all(set(t) == {"token", "logprob", "bytes"} for t in e["top_logprobs"])
            assert e["token"] in [t["token"] for t in e["top_logprobs"]]


def test_token_budget_stops_new_requests(tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    qs = queries(60)
    budget = 100
    with serve(delay=0.02) as srv:
        teacher = HTTPModel(srv.url, model="m")
        stats = collect(teacher, qs, cache, concurrency=4, token_budget=budget, progress=False)
        records = read_collection(cache)
        total = sum(r["prompt_tokens"] + r["completion_tokens"] for r in records)
        assert stats.stopped_by_budget
        assert budget <= total < budget + 4 * PER_QUERY, total
        assert len(chat_ok(srv.stub)) == len(records) == stats.done < 60
        # the budget covers earlier runs too: a rerun with the same budget starts nothing
        again = collect(teacher, qs, cache, concurrency=4, token_budget=budget, progress=False)
        assert again.stopped_by_budget and again.done == 0 and again.skipped_cached == len(records)
        assert len(chat_ok(srv.stub)) == len(records)
        # a larger budget continues where the first run stopped
        more = collect(teacher, qs, cache, concurrency=4, token_budget=budget * 3, progress=False)
        total = sum(r["prompt_tokens"] + r["completion_tokens"] for r in read_collection(cache))
        assert more.stopped_by_budget and 3 * budget <= total < 3 * budget + 4 * PER_QUERY


def test_concurrency_limit_is_respected(tmp_path: Path) -> None:
    with serve(delay=0.05) as srv:
        collect(
            HTTPModel(srv.url, model="m"), queries(12), tmp_path / "c.jsonl", concurrency=3, progress=False
        )
        assert srv.stub.max_inflight == 3


KILL_SCRIPT = """
import sys
from pathlib import Path
from distillguard.distill.collect import collect
from distillguard.distill.strategies import sample_queries
from distillguard.models.http import HTTPModel
pool = [f"Question number {i} about topic {i % 7}?" for i in range(200)]
qs = sample_queries("uniform", pool, 80, seed=5)
collect(HTTPModel(sys.argv[1], model="m"), qs, Path(sys.argv[2]), concurrency=4, progress=False)
"""


def test_killed_collection_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    qs = sample_queries("uniform", POOL, 80, seed=5)
    with serve(delay=0.05) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, srv.url, str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        lines = 0
        while lines < 12:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the collector wrote nothing"
            time.sleep(0.01)
            lines = cache.read_bytes().count(b"\n") if cache.exists() else 0
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        before = read_collection(cache)
        assert 12 <= len(before) < 80, "killed mid-way"
        stats = collect(HTTPModel(srv.url, model="m"), qs, cache, concurrency=4, progress=False)
        assert stats.skipped_cached == len(before) and stats.done == 80 - len(before) and stats.failed == 0
        raw = cache.read_bytes()
        assert raw.endswith(b"\n")
        ids = [json.loads(line)["id"] for line in raw.splitlines()]  # every line intact
        assert sorted(ids) == sorted(q.id for q in qs), "every query exactly once"
        assert ids[: len(before)] == [r["id"] for r in before], "earlier records untouched"
        assert len(chat_ok(srv.stub)) <= 80 + 4, "only requests in flight at the kill are repeated"


def test_torn_last_line_is_dropped_and_recollected(tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    qs = queries(6)
    with serve() as srv:
        teacher = HTTPModel(srv.url, model="m")
        collect(teacher, qs[:4], cache, progress=False)
        full = cache.read_bytes()
        last = full.rstrip(b"\n").rsplit(b"\n", 1)[1]
        cache.write_bytes(full[: len(full) - len(last) - 1] + last[: len(last) // 2])  # a write cut by a kill
        assert len(read_collection(cache)) == 3, "reading ignores the torn line"
        stats = collect(teacher, qs, cache, progress=False)
        assert (stats.skipped_cached, stats.done) == (3, 3)
    raw = cache.read_bytes()
    assert sorted(json.loads(line)["id"] for line in raw.splitlines()) == sorted(q.id for q in qs)
    # a corrupt line that is not the last one is not guessed at
    cache.write_bytes(b'{"id": "x"}\nnot json\n' + raw)
    with pytest.raises(UserError, match=r"c.jsonl:2: corrupt"):
        read_collection(cache)


def test_cache_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    import fcntl

    cache = tmp_path / "c.jsonl"
    cache.touch()
    with cache.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="in use by another process"):
            collect(HTTPModel("http://127.0.0.1:9/v1"), queries(1), cache, progress=False)


def test_open_model_dispatch_and_errors(tmp_path: Path) -> None:
    t = open_model("http://127.0.0.1:1", ["k"], model="m", timeout=5)
    assert isinstance(t, HTTPModel) and t.name == "http://127.0.0.1:1/v1" and t.model == "m"
    with pytest.raises(UserError, match="http:// or https://"):
        open_model("ftp://host/v1")
    with pytest.raises(UserError, match="API keys apply to a teacher URL"):
        open_model(str(tmp_path), ["k"])
    with pytest.raises(UserError, match="model directory not found"):
        open_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="does not apply to a teacher URL"):
        open_model("http://127.0.0.1:1", watermark=None)
    with pytest.raises(UserError, match="collection not found"):
        read_collection(tmp_path / "none.jsonl")
    # another role (an audit's suspect) is named in the client's own errors
    with pytest.raises(UserError, match="^suspect URL must be http"):
        open_model("ftp://host/v1", role="suspect")
    with pytest.raises(UserError, match="^not a suspect URL"):
        open_model("http://host:99999", role="suspect")
    with pytest.raises(UserError, match="does not apply to a suspect model directory"):
        open_model(str(tmp_path), role="suspect", model="m")


def test_model_error_is_per_request() -> None:
    assert not issubclass(ModelError, UserError)


# --------------------------------------------------------------------------------------------------
# Local HF teacher


@pytest.fixture(scope="module")
def local_teacher(tiny_world) -> LocalModel:
    return LocalModel(tiny_world.teacher, batch_size=8)


@pytest.fixture(scope="module")
def world_prompts(tiny_world) -> list[str]:
    return [json.loads(line)["prompt"] for line in tiny_world.prompts.read_text().splitlines()]


def test_local_teacher_answers_greedy_deterministic(local_teacher, world_prompts) -> None:
    prompts = world_prompts[:6]
    a = local_teacher.answer_many(prompts, max_tokens=24)
    b = local_teacher.answer_many(prompts[::-1], max_tokens=24)[::-1]
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    for x in a:
        assert x.text.strip() and x.completion_tokens == len(x.token_ids) <= 24 and x.prompt_tokens > 5
        assert x.finish_reason == ("length" if x.completion_tokens == 24 else "stop")
        assert x.logprobs is None
    import asyncio

    one = asyncio.run(
        local_teacher.answer(prompts[0], max_tokens=24, temperature=0.0, top_logprobs=None, seed=0)
    )
    assert one.text == a[0].text
    s1 = local_teacher.answer_many(prompts, max_tokens=24, temperature=1.0, seed=4)
    s2 = local_teacher.answer_many(prompts, max_tokens=24, temperature=1.0, seed=4)
    s3 = local_teacher.answer_many(prompts, max_tokens=24, temperature=1.0, seed=5)
    assert [x.token_ids for x in s1] == [x.token_ids for x in s2] != [x.token_ids for x in s3]


def test_local_teacher_top_logprobs_shape(local_teacher, world_prompts) -> None:
    import math

    answers = local_teacher.answer_many(world_prompts[:4], max_tokens=16, top_logprobs=5)
    for a in answers:
        assert len(a.logprobs) == len(a.token_ids)
        assert b"".join(bytes(e["bytes"]) for e in a.logprobs).decode("utf-8") == a.text
        for e, tid in zip(a.logprobs, a.token_ids, strict=True):
            assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
            top = e["top_logprobs"]
            assert len(top) == 5 and all(set(t) == {"token", "logprob", "bytes"} for t in top)
            assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
            assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-5
            # greedy: the chosen token is the top-1 of the reported distribution
            assert top[0]["token"] == e["token"] and top[0]["logprob"] == pytest.approx(
                e["logprob"], abs=1e-5
            )
            assert e["token"] == local_teacher.tokenizer.decode([tid])


def test_local_teacher_watermark_detected_and_visible_in_logprobs(
    tiny_world, world_prompts, tmp_path
) -> None:
    from distillguard.watermark.detect import detect_ids
    from distillguard.watermark.schemes import WatermarkSpec

    spec = WatermarkSpec(key=4242, delta=4.0)
    marked = LocalModel(tiny_world.teacher, watermark=spec, batch_size=16)
    qs = sample_queries("uniform", world_prompts, 32, seed=1)
    stats = collect(
        marked, qs, tmp_path / "m.jsonl", max_tokens=32, temperature=1.0, top_logprobs=2, progress=False
    )
    assert stats.done == 32
    records = read_collection(tmp_path / "m.jsonl")
    assert all(r["teacher"] == str(tiny_world.teacher) and r["token_ids"] is not None for r in records)
    result = detect_ids(marked.watermark, [r["token_ids"] for r in records])
    assert result["aggregate"]["p_value"] < 1e-12, result["aggregate"]
    plain = LocalModel(tiny_world.teacher, batch_size=16)
    collect(plain, qs, tmp_path / "p.jsonl", max_tokens=32, temperature=1.0, progress=False)
    control = detect_ids(marked.watermark, [r["token_ids"] for r in read_collection(tmp_path / "p.jsonl")])
    assert control["aggregate"]["p_value"] > 1e-3, control["aggregate"]
    # greedy with a watermark: the argmax of the biased distribution, so chosen == top-1 of the logprobs
    greedy = marked.answer_many(world_prompts[:3], max_tokens=12, top_logprobs=1)
    for a in greedy:
        for e in a.logprobs:
            assert e["top_logprobs"][0]["token"] == e["token"]


# --------------------------------------------------------------------------------------------------
# Through the real gateway (the channel it polices)


def test_collect_through_the_gateway(tiny_world, world_prompts, tmp_path) -> None:
    import gateway_server
    from distillguard.lm.io import load_tokenizer
    from distillguard.watermark.detect import detect_ids

    qs = sample_queries("uniform", world_prompts, 16, seed=0)
    cache = tmp_path / "c.jsonl"
    with gateway_server.start(model=tiny_world.teacher, state_dir=tmp_path / "gw", watermark_delta=4.0) as gw:
        limited = gw.create_key("copycat-1", rpm=3)
        free = gw.create_key("copycat-2")
        teacher = HTTPModel(gw.base_url, [limited, free])
        stats = collect(teacher, qs, cache, max_tokens=32, temperature=1.0, top_logprobs=2, progress=False)
        assert (stats.done, stats.failed) == (16, 0)
        records = read_collection(cache)
        assert all(r["logprobs"] and len(r["logprobs"][0]["top_logprobs"]) == 2 for r in records)
        ledger = [r for r in gw.ledger().iter_records() if r["endpoint"] == "/v1/chat/completions"]
        answered = [r for r in ledger if r["status"] == 200]
        assert sorted(r["prompt"] for r in answered) == sorted(q.prompt for q in qs)
        assert any(r["account"] == "copycat-1" and r["status"] == 429 for r in ledger), "rpm 3 was hit"
        assert sum(r["account"] == "copycat-1" for r in answered) <= 3
        # the gateway's watermark survives the trip into the distiller's data set
        tok, _ = load_tokenizer(tiny_world.teacher)
        spec = gw.settings.watermark_spec().with_vocab(
            int(json.loads((tiny_world.teacher / "config.json").read_text())["vocab_size"])
        )
        ids = [tok(r["completion"], add_special_tokens=False)["input_ids"] for r in records]
        assert detect_ids(spec, ids)["aggregate"]["p_value"] < 1e-10
        # the response ladder: "restricted" accounts lose logprobs, so a grey-box collection stops cleanly
        gw.accounts.set_tier("copycat-1", "restricted")
        gw.accounts.set_tier("copycat-2", "restricted")
        more = sample_queries("uniform", world_prompts, 20, seed=0)
        with pytest.raises(UserError, match=r"rejected every API key \(HTTP 403: .*logprobs"):
            collect(HTTPModel(gw.base_url, [limited, free]), more, cache, top_logprobs=2, progress=False)
        assert len(read_collection(cache)) == 16

"""Soak: ten minutes' worth of mixed traffic against ``distillguard serve``; memory stays bounded and the
ledger accounts for every request.

2,400 requests (ten minutes at 4 requests/s, sent as fast as the gateway takes them) from one seeded mix:
answers (some streamed), an account over its rate limit, unknown keys, bodies and headers over the limits,
unparseable and unknown-field bodies, unique ``X-Forwarded-For`` values; plus slow bodies (cut off with a
408) and slowloris heads (closed, never a request). The gateway is a child process with the stub backend;
its RSS is sampled throughout. After a clean shutdown, every answered request is in the ledger: each with a
record of its own, or counted in a summary record (``repeated``) when it was a refusal beyond its source's
budget (an address before authentication, a key after it).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from pathlib import Path

import httpx

from gateway_server import start_process

REQUESTS = 2400
RSS_GROWTH_BOUND_MB = 64  # peak RSS over the RSS after warm-up


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def mix(seed: int, key: str, limited: str) -> list[tuple[str, str, dict, bytes]]:
    rng = random.Random(seed)
    ok = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    out = []
    for i in range(REQUESTS):
        u = rng.random()
        chat = json.dumps(
            {"model": "stub", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 4}
        )
        if u < 0.40:
            body = json.loads(chat)
            body["stream"] = rng.random() < 0.25
            out.append(("POST", "/v1/chat/completions", ok, json.dumps(body).encode()))
        elif u < 0.45:
            out.append(("GET", "/v1/models", {**ok, "x-forwarded-for": f"198.51.{i % 250}.{i % 7}"}, b""))
        elif u < 0.55:
            out.append(
                ("POST", "/v1/chat/completions", {**ok, "authorization": f"Bearer {limited}"}, chat.encode())
            )
        elif u < 0.70:
            out.append(
                (
                    "POST",
                    "/v1/chat/completions",
                    {**ok, "authorization": f"Bearer sk-guess-{i}"},
                    chat.encode(),
                )
            )
        elif u < 0.78:
            out.append(
                ("POST", "/v1/completions", ok, b'{"model": "stub", "prompt": "' + b"x" * 40_000 + b'"}')
            )
        elif u < 0.83:
            out.append(("GET", "/v1/models", {**ok, "x-pad": "p" * 12_000}, b""))
        elif u < 0.92:
            out.append(("POST", "/v1/completions", ok, b'{"model": "stub", "prompt": "hi", "top_k": 3}'))
        else:
            out.append(("POST", "/v1/chat/completions", ok, b"{not json" + str(i).encode()))
    return out


async def send_all(base_url: str, requests: list) -> list[int]:
    async with httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=16)
    ) as http:
        sem = asyncio.Semaphore(16)

        async def one(method, path, headers, body) -> int:
            async with sem:
                r = await http.request(method, path, headers=headers, content=body or None)
                return r.status_code

        return await asyncio.gather(*(one(*r) for r in requests))


def slow_clients(base_url: str, key: str, answers: list[bytes], n: int = 10) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    for _ in range(n):
        # a slowloris head: never completed, closed by the server (no request)
        lazy = socket.create_connection((host, int(port)), timeout=10)
        lazy.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n")
        # a slow body: the head is complete, the body stalls: a recorded 408
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer " + key.encode() + b"\r\ncontent-length: 200\r\n\r\n" + b'{"model": '
            )
            answers.append(s.recv(200))
        lazy.close()


def test_soak_mixed_traffic_bounded_memory_and_no_lost_record(tmp_path):
    g = start_process(
        state_dir=tmp_path,
        backend="stub",
        model_name="stub",
        max_body_bytes=32_768,
        max_header_bytes=8_192,
        header_timeout_s=1.0,
        body_timeout_s=1.0,
        refusal_records_per_minute=60,
        trusted_proxies=("127.0.0.1/32",),
    )
    try:
        key = g.create_key("soak")
        limited = g.create_key("soak-limited", rpm=20)
        warm = asyncio.run(send_all(g.base_url, mix(1, key, limited)[:200]))
        baseline = rss_mb(g.proc.pid)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(g.proc.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        slow: list[bytes] = []
        slow_thread = threading.Thread(target=slow_clients, args=(g.base_url, key, slow), daemon=True)
        slow_thread.start()
        t0 = time.monotonic()
        statuses = asyncio.run(send_all(g.base_url, mix(2, key, limited)))
        slow_thread.join(60)
        elapsed = time.monotonic() - t0
        done.set()
        sampler.join(5)
        peak[0] = max(peak[0], rss_mb(g.proc.pid))
    finally:
        g.stop()  # SIGTERM: the last refusal summaries are written at shutdown
    assert not [s for s in statuses + warm if s >= 500]
    assert {200, 400, 401, 413, 429, 431} <= set(statuses), sorted(set(statuses))
    assert len(slow) == 10 and all(a.startswith(b"HTTP/1.1 408") for a in slow)
    growth = peak[0] - baseline
    print(f"{len(statuses)} requests in {elapsed:.1f} s; RSS {baseline:.0f} MB -> peak {peak[0]:.0f} MB")
    assert growth < RSS_GROWTH_BOUND_MB, (baseline, peak[0])
    ledger = g.ledger()
    try:
        assert ledger.verify().ok
        recs = [r for r in ledger.iter_records() if r["decision"] != "stream_started"]
    finally:
        ledger.close()
    accounted = sum(r.get("repeated", 1) for r in recs)
    assert accounted == len(statuses) + len(warm) + len(slow)
    assert any(r.get("repeated") for r in recs)  # the unknown keys were summarised, not each fsynced

"""Quick measurement (not a test, not part of ``make bench``): requests/s through 1 vs 2 gateway replicas
(``distillguard serve`` processes, stub backend) on one PostgreSQL server and one Redis. Every request is
authenticated against the shared account store and appended to the shared ledger before it is answered, so
requests/s is also ledger appends/s. Postgres runs with its production durability (fsync on).

    .venv/bin/python bench/replicas_quick.py [--seconds 8] [--concurrency 32]

Set PYTHONPATH to another checkout's src/ to measure that version of the gateway (the child processes
inherit it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from distillguard.gateway.accounts import SQLiteAccountStore, open_account_store  # noqa: E402
from gateway_server import TEST_SECRET, gateway_settings, start_process  # noqa: E402
from postgres_server import create_database, postgres_server  # noqa: E402
from redis_server import redis_server  # noqa: E402

BODY = {"model": "stub", "prompt": "hello", "max_tokens": 4}


async def _load(urls: list[str], key: str, seconds: float, concurrency: int) -> tuple[int, int, list[float]]:
    ok = failed = 0
    lat: list[float] = []
    deadline = time.monotonic() + seconds
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker(i: int) -> None:
            nonlocal ok, failed
            url = urls[i % len(urls)] + "/v1/completions"
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                r = await client.post(url, json=BODY, headers=headers)
                lat.append(time.perf_counter() - t0)
                if r.status_code == 200:
                    ok += 1
                else:
                    failed += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return ok, failed, lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument(
        "--engine",
        choices=("postgres", "sqlite"),
        default="postgres",
        help="sqlite: the embedded default (one replica, its own files, in-memory quotas)",
    )
    args = ap.parse_args()
    out = []
    with (
        postgres_server(fsync=True) as server,
        redis_server() as redis_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for n in (int(x) for x in args.replicas.split(",")):
            if args.engine == "sqlite":  # accounts_path and ledger_path in the replica's state dir
                url = None
                common = {"backend": "stub"}
            else:
                url = create_database(server, f"bench_{n}")
                common = {"backend": "stub", "database_url": url, "redis_url": redis_url}
            gws = [
                start_process(gateway_settings(Path(tmp) / f"{n}-{r}", replica_id=f"gw-{r}", **common))
                for r in range(n)
            ]
            try:
                if url is None:
                    store = SQLiteAccountStore(Path(gws[0].settings.accounts_path), TEST_SECRET.encode())
                else:
                    store = open_account_store(url, TEST_SECRET.encode())
                key, _ = store.create_key("bench")
                store.close()
                urls = [g.base_url for g in gws]
                asyncio.run(_load(urls, key, 1.0, args.concurrency))  # warm-up
                ok, failed, lat = asyncio.run(_load(urls, key, args.seconds, args.concurrency))
            finally:
                for g in gws:
                    g.stop()
            lat.sort()
            row = {
                "engine": args.engine,
                "replicas": n,
                "concurrency": args.concurrency,
                "req_per_s": round(ok / args.seconds, 1),
                "failed": failed,
                "p50_ms": round(1000 * lat[len(lat) // 2], 2),
                "p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 2),
            }
            print(json.dumps(row), flush=True)
            out.append(row)


if __name__ == "__main__":
    main()

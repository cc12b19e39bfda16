"""Gateway replicas on shared storage (``make bench``): requests/s and p99 latency through 1 and 2
``distillguard serve`` processes (stub backend) on one PostgreSQL server (production durability, fsync on)
and one Redis, against the embedded default (one replica, SQLite files, in-memory quotas) in the same run.
Every request is authenticated against the account store and appended to the ledger before it is answered,
so requests/s is also ledger appends/s. A run checks quota overshoot across replicas: one key with a
per-minute limit, hammered through both replicas at once; admitted requests beyond the limit are overshoot.
Last, the ledger stores' own durable append rate without HTTP: SQLite vs Postgres with 1 and 2 replicas.

    .venv/bin/python bench/replicas_bench.py [--seconds 8] [--concurrency 32] [--quick]

Results: ``bench/results/replicas.json``. Set PYTHONPATH to another checkout's src/ to measure that version
of the gateway (the child processes inherit it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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

SECRET = TEST_SECRET.encode()
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


def _run(urls: list[str], key: str, seconds: float, concurrency: int) -> dict:
    asyncio.run(_load(urls, key, 1.0, concurrency))  # warm-up
    ok, failed, lat = asyncio.run(_load(urls, key, seconds, concurrency))
    lat.sort()
    return {
        "req_per_s": round(ok / seconds, 1),
        "failed": failed,
        "p50_ms": round(1000 * lat[len(lat) // 2], 2),
        "p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 2),
    }


def _setting(
    engine: str, replicas: int, server, redis_url: str, tmp: Path, name: str = ""
) -> tuple[list, str | None]:
    if engine == "sqlite":  # accounts_path and ledger_path in the replica's state dir
        url, common = None, {"backend": "stub"}
    else:
        url = create_database(server, f"bench_{engine}_{replicas}{name}")
        common = {"backend": "stub", "database_url": url, "redis_url": redis_url}
    gws = [
        start_process(gateway_settings(tmp / f"{engine}-{replicas}-{r}", replica_id=f"gw-{r}", **common))
        for r in range(replicas)
    ]
    return gws, url


def _key(gws, url: str | None, **limits) -> str:
    if url is None:
        store = SQLiteAccountStore(Path(gws[0].settings.accounts_path), TEST_SECRET.encode())
    else:
        store = open_account_store(url, TEST_SECRET.encode())
    key, _ = store.create_key("bench", **limits)
    store.close()
    return key


RECORD = {
    "account": "acct_bench",
    "key_id": "key_bench",
    "client_ip": "192.0.2.10",
    "decision": "admitted",
    "prompt": "user: how do I read a file line by line in python?",
    "params": {"model": "stub", "max_tokens": 64, "temperature": 0.7},
    "answer": "Use a for loop over the open file object." * 4,
    "prompt_tokens": 14,
    "completion_tokens": 40,
}


def _append_rate(opener, replicas: int, seconds: float) -> dict:
    """Durable single-record appends/s straight into the ledger store (no HTTP), ``replicas`` appenders at
    once, each its own store object (its own chain on Postgres), one thread each."""
    import threading

    counts = [0] * replicas
    errors: list[BaseException] = []
    start = threading.Barrier(replicas)

    def run(i: int) -> None:
        try:
            store = opener(i)
        except BaseException as exc:
            errors.append(exc)
            start.abort()
            return
        try:
            start.wait()
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                store.append({**RECORD, "ts": time.time()})
                counts[i] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {"appends_per_s": round(sum(counts) / seconds, 1), "appends": sum(counts)}


def ledger_appends(server: str, tmp: Path, seconds: float) -> list[dict]:
    """The ledger stores' own append rate: SQLite (one file) vs Postgres with 1 and 2 replica chains."""
    from distillguard.gateway.ledger import Ledger, open_ledger

    rows = []
    sqlite = tmp / "append.db"
    rows.append(
        {"engine": "sqlite", "replicas": 1, **_append_rate(lambda i: Ledger(sqlite, SECRET), 1, seconds)}
    )
    for replicas in (1, 2):
        url = create_database(server, f"append{replicas}")
        rate = _append_rate(lambda i, url=url: open_ledger(url, SECRET, replica=f"r{i}"), replicas, seconds)
        rows.append({"engine": "postgres", "replicas": replicas, **rate})
    anchor = rows[0]["appends_per_s"]
    for r in rows:
        r["ratio_to_sqlite"] = round(r["appends_per_s"] / anchor, 3) if anchor else None
        print(json.dumps(r), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="2-second runs")
    args = ap.parse_args(argv)
    seconds = 2.0 if args.quick else args.seconds
    t0 = time.time()
    rows = []
    with (
        postgres_server(fsync=True) as server,
        redis_server() as redis_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for engine, replicas in (("sqlite", 1), ("postgres", 1), ("postgres", 2)):
            gws, url = _setting(engine, replicas, server, redis_url, Path(tmp))
            try:
                row = {"engine": engine, "replicas": replicas, "concurrency": args.concurrency}
                row.update(_run([g.base_url for g in gws], _key(gws, url), seconds, args.concurrency))
            finally:
                for g in gws:
                    g.stop()
            print(json.dumps(row), flush=True)
            rows.append(row)
        # quota overshoot: one limit, two replicas, shared Redis
        limit = 300
        gws, url = _setting("postgres", 2, server, redis_url, Path(tmp) / "quota", "_quota")
        try:
            key = _key(gws, url, rpm=limit)
            ok, failed, _ = asyncio.run(_load([g.base_url for g in gws], key, seconds, args.concurrency))
        finally:
            for g in gws:
                g.stop()
        quota = {"rpm_limit": limit, "admitted": ok, "refused": failed, "overshoot": max(0, ok - limit)}
        print(json.dumps(quota), flush=True)
        appends = ledger_appends(server, Path(tmp), seconds)
    anchor = rows[0]["req_per_s"]
    for r in rows:
        r["ratio_to_sqlite"] = round(r["req_per_s"] / anchor, 3) if anchor else None
    doc = {
        "bench": "replicas",
        "what": "requests/s (= durable ledger appends/s) and latency through gateway replicas on shared "
        "Postgres + Redis vs the embedded SQLite default, same run; quota overshoot across replicas",
        "rows": rows,
        "quota": quota,
        "ledger_appends": appends,
        "ledger_appends_what": "durable one-record appends/s into the ledger store itself (fsync on), one "
        "thread per appender; Postgres replicas append to their own chains in one table",
        "seconds": seconds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "wall_s": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = (
        Path(__file__).resolve().parent
        / "results"
        / ("replicas_quick.json" if args.quick else "replicas.json")
    )
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

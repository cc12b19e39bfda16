"""Gateway benchmarks: what the gateway adds in front of a backend, against LiteLLM's proxy in the same run.

Every server runs in its own process (uvicorn, one worker); the load generator is this process.

* Latency: sequential chat completions over one keep-alive connection; p50/p99 of
  - ``direct``: the stub backend (a bare OpenAI-compatible server with a fixed answer) called directly,
  - ``gateway``: ``distillguard serve`` proxying to that stub, with auth, quota reserve/commit and a durable
    (fsynced) ledger record per request: the *added* latency is ``gateway - direct``,
  - ``gateway_tmpfs_ledger``: the same with the ledger on tmpfs, to separate the fsync from the gateway's
    own work,
  - ``gateway_stub_backend``: the gateway answering from its in-process stub backend (no upstream hop),
  - ``litellm``: LiteLLM's proxy in front of the same stub (master key, no database: no quotas, no log).
* Throughput: ``concurrency`` clients for a fixed time against each target; requests/s.
* Batching: the local tiny model behind the gateway, 16 concurrent requests, ``batch_max_size`` 1 vs 8.

LiteLLM is not a dependency of the project. Install it into its own virtualenv
(``pip install 'litellm[proxy]'``) and pass ``--litellm path/to/bin/litellm`` (or put ``litellm`` on PATH);
otherwise the result says why it was skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results"
SECRET = "bench-secret-0123456789abcdef"
BODY = {"model": "stub", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2.0, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


@contextmanager
def process(
    args: list[str],
    ready_url: str,
    env: dict | None = None,
    headers: dict | None = None,
    log: Path | None = None,
):
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(ready_url, proc, headers=headers)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


def serve_stub(port: int) -> None:
    """``--serve-stub PORT``: the bare stub server, used as the backend of every target."""
    import uvicorn

    from distillguard.gateway.backends import stub_server_app

    uvicorn.run(stub_server_app("stub"), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def gateway_config(state: Path, port: int, **extra) -> Path:
    from distillguard.gateway.accounts import SQLiteAccountStore

    state.mkdir(parents=True, exist_ok=True)
    ledger_dir = extra.pop("ledger_dir", state)
    lines = [
        f'host = "127.0.0.1"\nport = {port}\nsecret = "{SECRET}"',
        f'accounts_path = "{state / "accounts.db"}"\nledger_path = "{ledger_dir / "ledger.db"}"',
        'watermark_key = "bench"\nlog_level = "warning"',
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path = state / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    store = SQLiteAccountStore(state / "accounts.db", SECRET.encode())
    key, _ = store.create_key("bench")
    store.close()
    (state / "key").write_text(key)
    return path


# --------------------------------------------------------------------------------------------------
# Measurements


class RawConnection:
    """A lean keep-alive HTTP/1.1 client for load generation: one pre-encoded request, one write per request.

    httpx spends milliseconds of CPU per request on a small machine, more than the servers under test; the
    load generator must not be what is measured. Handles Content-Length and chunked responses.
    """

    def __init__(self, url: str, headers: dict, body: dict):
        u = httpx.URL(url)
        self.host, self.port = u.host, u.port or 80
        payload = json.dumps(body).encode()
        head = [f"POST {u.raw_path.decode()} HTTP/1.1", f"host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += ["content-type: application/json", f"content-length: {len(payload)}", "", ""]
        self.request = "\r\n".join(head).encode() + payload
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def call(self) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if "content-length" in fields:
            return status, await self.reader.readexactly(int(fields["content-length"]))
        body = b""
        while True:  # chunked
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return status, body
            body += chunk[:-2]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def latency(url: str, headers: dict, n: int, warmup: int, body: dict = BODY) -> dict:
    return asyncio.run(_latency(url, headers, n, warmup, body))


async def _latency(url: str, headers: dict, n: int, warmup: int, body: dict) -> dict:
    conn = RawConnection(url, headers, body)
    await conn.open()
    times = []
    try:
        for i in range(warmup + n):
            t = time.perf_counter()
            status, data = await conn.call()
            dt = time.perf_counter() - t
            if status != 200:
                raise RuntimeError(f"{url}: HTTP {status} {data[:200]!r}")
            if i >= warmup:
                times.append(dt)
    finally:
        conn.close()
    times.sort()
    return {
        "n": n,
        "p50_ms": 1000 * times[len(times) // 2],
        "p90_ms": 1000 * times[int(len(times) * 0.9)],
        "p99_ms": 1000 * times[min(len(times) - 1, int(len(times) * 0.99))],
        "mean_ms": 1000 * statistics.fmean(times),
    }


async def _throughput(url: str, headers: dict, concurrency: int, seconds: float, body: dict) -> dict:
    conns = [RawConnection(url, headers, body) for _ in range(concurrency)]
    for c in conns:  # open the connections first
        await c.open()
        await c.call()
    ok = errors = 0
    stop = time.perf_counter() + seconds

    async def worker(conn: RawConnection) -> None:
        nonlocal ok, errors
        while time.perf_counter() < stop:
            status, _ = await conn.call()
            if status == 200:
                ok += 1
            else:
                errors += 1

    t = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    elapsed = time.perf_counter() - t
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "requests": ok,
        "errors": errors,
        "rps": ok / elapsed,
    }


def throughput(url: str, headers: dict, concurrency: int, seconds: float, body: dict = BODY) -> dict:
    return asyncio.run(_throughput(url, headers, concurrency, seconds, body))


def tree_cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of these processes and all their descendants (Linux /proc), else None.

    Server CPU per request is the comparison that survives a busy shared machine: wall-clock latency there
    mostly measures how long each process waits for a core."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    wanted, frontier = set(pids), list(pids)
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in wanted:
                wanted.add(pid)
                frontier.append(pid)
    return sum(stats[p][1] for p in wanted if p in stats)


def measure(
    name: str, url: str, headers: dict, args, pids: list[int], body: dict = BODY, own: int | None = None
) -> dict:
    """Latency, server CPU per request (all ``pids``; ``own``: that process tree alone too), throughput."""
    row: dict = {"target": name}
    cpu0, own0 = tree_cpu_seconds(pids), tree_cpu_seconds([own]) if own else None
    row["latency"] = latency(url, headers, args.n, args.warmup, body)
    cpu1, own1 = tree_cpu_seconds(pids), tree_cpu_seconds([own]) if own else None
    if cpu0 is not None and cpu1 is not None:  # the warm-up requests count too
        row["server_cpu_ms_per_request"] = 1000 * (cpu1 - cpu0) / (args.n + args.warmup)
    if own0 is not None and own1 is not None:
        row["own_cpu_ms_per_request"] = 1000 * (own1 - own0) / (args.n + args.warmup)
    row["throughput"] = throughput(url, headers, args.concurrency, args.seconds, body)
    print(json.dumps(row), flush=True)
    return row


# --------------------------------------------------------------------------------------------------
# Targets


def bench_proxy(args, work: Path) -> dict:
    rows: dict[str, dict] = {}
    shm = Path("/dev/shm")  # Linux tmpfs: a ledger there skips the disk's fsync
    tmpfs = Path(tempfile.mkdtemp(dir=shm, prefix="dg-bench-")) if shm.is_dir() else None
    try:
        return _bench_proxy(args, work, rows, tmpfs)
    finally:
        if tmpfs:
            shutil.rmtree(tmpfs, ignore_errors=True)


def _bench_proxy(args, work: Path, rows: dict, tmpfs: Path | None) -> dict:
    stub_port = free_port()
    stub_url = f"http://127.0.0.1:{stub_port}"
    serve = [sys.executable, "-m", "distillguard.cli", "serve", "--config"]
    threads = {"DISTILLGUARD_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with process([sys.executable, __file__, "--serve-stub", str(stub_port)], stub_url + "/v1/models") as stub:
        rows["direct"] = measure("direct", stub_url + "/v1/chat/completions", {}, args, [stub.pid])
        variants = [
            ("gateway", {"upstream_url": stub_url + "/v1"}),
            ("gateway_tmpfs_ledger", {"upstream_url": stub_url + "/v1", "ledger_dir": tmpfs})
            if tmpfs
            else None,
            ("gateway_stub_backend", {"backend": "stub", "model_name": "stub"}),
        ]
        for name, extra in filter(None, variants):
            port = free_port()
            cfg = gateway_config(work / name, port, **extra)
            key = (work / name / "key").read_text()
            h = {"authorization": f"Bearer {key}"}
            with process(
                [*serve, str(cfg)], f"http://127.0.0.1:{port}/healthz", env=threads, log=work / f"{name}.log"
            ) as gw:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                rows[name] = measure(name, url, h, args, [gw.pid, stub.pid])
        rows["litellm"] = bench_litellm(args, work, stub_url, stub.pid)
    out = {"targets": rows}
    d, g = rows["direct"]["latency"], rows["gateway"]["latency"]
    out["added_latency_ms"] = {"p50": g["p50_ms"] - d["p50_ms"], "p99": g["p99_ms"] - d["p99_ms"]}
    if "gateway_tmpfs_ledger" in rows:
        t = rows["gateway_tmpfs_ledger"]["latency"]
        out["added_latency_tmpfs_ledger_ms"] = {
            "p50": t["p50_ms"] - d["p50_ms"],
            "p99": t["p99_ms"] - d["p99_ms"],
        }
    cpu = {k: v.get("server_cpu_ms_per_request") for k, v in rows.items()}
    if all(cpu.get(k) is not None for k in ("direct", "gateway")):
        out["added_server_cpu_ms_per_request"] = {
            k: cpu[k] - cpu["direct"] for k in rows if k != "direct" and cpu.get(k) is not None
        }
    lite = rows["litellm"]
    if "throughput" in lite:
        out["throughput_vs_litellm"] = rows["gateway"]["throughput"]["rps"] / lite["throughput"]["rps"]
        out["added_latency_litellm_ms"] = {
            "p50": lite["latency"]["p50_ms"] - d["p50_ms"],
            "p99": lite["latency"]["p99_ms"] - d["p99_ms"],
        }
    return out


def find_litellm(explicit: str | None) -> str | None:
    for cand in (explicit, os.environ.get("LITELLM_BIN"), shutil.which("litellm")):
        if cand and Path(cand).exists():
            return cand
    return None


def bench_litellm(args, work: Path, stub_url: str, stub_pid: int) -> dict:
    exe = find_litellm(args.litellm)
    if exe is None:
        return {
            "target": "litellm",
            "skipped": "litellm not found: install 'litellm[proxy]' in its own virtualenv, pass --litellm",
        }
    port = free_port()
    cfg = work / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: stub\n"
        "    litellm_params:\n"
        "      model: openai/stub\n"
        f"      api_base: {stub_url}/v1\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    master = "sk-" + os.urandom(32).hex()  # LiteLLM refuses to start without one
    env = {
        "LITELLM_MASTER_KEY": master,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: no model-price download at startup
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    log = work / "litellm.log"
    try:
        with process(
            [exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            f"http://127.0.0.1:{port}/health/liveliness",
            env=env,
            log=log,
        ) as lite:
            h = {"authorization": f"Bearer {master}"}
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            row = measure("litellm", url, h, args, [lite.pid, stub_pid])
            row["version"] = subprocess.run(
                [
                    str(Path(exe).with_name("python")),
                    "-c",
                    "import importlib.metadata as m; print(m.version('litellm'))",
                ],
                capture_output=True,
                text=True,
            ).stdout.strip()
            row["note"] = (
                "master key, no database: LiteLLM checks the key, keeps no per-key quota, logs no request"
            )
            return row
    except Exception as exc:
        tail = log.read_text()[-1500:] if log.exists() else ""
        return {"target": "litellm", "skipped": f"litellm failed to run: {exc}", "log_tail": tail}


def bench_batching(args, work: Path) -> dict:
    """Does batching pay on the local model? 16 concurrent requests, batch_max_size 1 vs 8."""
    from distillguard.world import build_world

    teacher = (
        build_world("tiny", root=args.world, progress=False).teacher
        if args.world
        else build_world("tiny").teacher
    )
    body = {
        "model": "aster",
        "prompt": "Question: What does the Python API os.path.join do?\nAnswer:",
        "max_tokens": 32,
    }
    out = {}
    for size in (1, 8):
        port = free_port()
        name = f"batch{size}"
        cfg = gateway_config(work / name, port, model=str(teacher), model_name="aster", batch_max_size=size)
        h = {"authorization": f"Bearer {(work / name / 'key').read_text()}"}
        env = {"DISTILLGUARD_THREADS": str(args.model_threads), "OMP_NUM_THREADS": str(args.model_threads)}
        serve = [sys.executable, "-m", "distillguard.cli", "serve", "--config", str(cfg)]
        with process(serve, f"http://127.0.0.1:{port}/healthz", env=env, log=work / f"{name}.log"):
            url = f"http://127.0.0.1:{port}/v1/completions"
            tp = throughput(url, h, 16, args.seconds * 2, body)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        stats = {
            ln.split()[0]: float(ln.split()[1])
            for ln in metrics.splitlines()
            if ln.startswith("distillguard_batch")
        }
        tp["tokens_per_s"] = stats.get("distillguard_batch_tokens", 0) / max(tp["seconds"], 1e-9)
        tp["mean_batch_rows"] = stats.get("distillguard_batch_rows", 0) / max(
            stats.get("distillguard_batches", 1), 1
        )
        out[f"batch_max_size_{size}"] = tp
        print(json.dumps({name: tp}), flush=True)
    out["speedup"] = out["batch_max_size_8"]["rps"] / max(out["batch_max_size_1"]["rps"], 1e-9)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="Fewer requests (smoke run).")
    ap.add_argument("--litellm", help="Path to the litellm executable (its own virtualenv).")
    ap.add_argument(
        "--world", help="Root of a built tiny world (default: build or reuse one in the state dir)."
    )
    ap.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model-threads", type=int, default=1)
    args, _ = ap.parse_known_args()  # bench/run.py passes every bench the same arguments
    if args.serve_stub:
        serve_stub(args.serve_stub)
        return
    args.n, args.warmup, args.seconds, args.concurrency = (
        (300, 50, 2.0, 16) if args.quick else (2000, 200, 5.0, 32)
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dg-gateway-bench-") as tmp:
        work = Path(tmp)
        proxy = bench_proxy(args, work)
        batching = bench_batching(args, work)
    import fastapi
    import uvicorn

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__,
        },
        "date": time.strftime("%Y-%m-%d"),
        "setup": {
            "requests_per_latency_run": args.n,
            "throughput_seconds": args.seconds,
            "concurrency": args.concurrency,
            "note": "client and servers share the machine's cores; every server is one uvicorn process",
            "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "proxy": proxy,
        "batching": batching,
    }
    path = RESULTS / ("gateway_quick.json" if args.quick else "gateway.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""The gateway before and after a change, in the same run, with the harness of ``gateway_bench.py``.

``--before REF`` (a git revision) is exported to a temporary directory and served with ``PYTHONPATH``
pointing at its ``src``; the working tree is served as it is. ``--before-src DIR`` / ``--after-src DIR``
serve a prepared copy of ``src`` instead (two variants of one tree, e.g. one module swapped). For each
target (``gateway``: proxying to the stub server with a durable ledger; ``gateway_tmpfs_ledger``: the same
with the ledger on tmpfs, so the proxy's own cost is not hidden behind the fsync; ``gateway_stream``: the
proxy with ``stream: true``; ``gateway_stub_backend``: answering from its in-process stub) the two versions
are measured alternately (which goes first alternates too), ``--rounds`` times each, so a busy shared
machine disturbs both alike: sequential latency, throughput at ``concurrency`` clients, and server CPU per
request (the figure that survives a busy machine best), of gateway and stub together and of the gateway
alone. Results go to ``bench/results/gateway_compare.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import gateway_bench as gb  # noqa: E402


def export(ref: str, into: Path) -> Path:
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
    archive = subprocess.run(
        ["git", "-C", root.stdout.strip(), "archive", ref, "src"], capture_output=True, check=True
    )
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="git revision measured as 'before'")
    ap.add_argument("--before-src", help="a src directory measured as 'before' (instead of --before)")
    ap.add_argument("--after-src", help="a src directory measured as 'after' (default: the working tree)")
    ap.add_argument("--note", default="", help="what the two versions are (kept in the result)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--targets", default="gateway,gateway_stub_backend", help="comma-separated")
    ap.add_argument("--out", default="gateway_compare.json", help="file name under bench/results/")
    args = ap.parse_args()
    if bool(args.before) == bool(args.before_src):
        ap.error("give --before REF or --before-src DIR")
    load_before = os.getloadavg()
    rows: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="dg-compare-") as tmp:
        work = Path(tmp)
        old_src = export(args.before, work / "before") if args.before else Path(args.before_src).resolve()
        versions = {"before": {"PYTHONPATH": str(old_src)}, "after": {}}
        if args.after_src:
            versions["after"] = {"PYTHONPATH": str(Path(args.after_src).resolve())}
        shm = Path("/dev/shm")  # Linux tmpfs: a ledger there skips the disk's fsync
        tmpfs = Path(tempfile.mkdtemp(dir=shm, prefix="dg-compare-")) if shm.is_dir() else work
        stub_port = gb.free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        serve = [sys.executable, "-m", "distillguard.cli", "serve", "--config"]
        threads = {"DISTILLGUARD_THREADS": "1", "OMP_NUM_THREADS": "1"}
        targets = {
            "gateway": {"upstream_url": stub_url + "/v1"},
            "gateway_tmpfs_ledger": {"upstream_url": stub_url + "/v1", "ledger_dir": "tmpfs"},
            "gateway_stream": {"upstream_url": stub_url + "/v1"},
            "gateway_stub_backend": {"backend": "stub", "model_name": "stub"},
        }
        targets = {k: targets[k] for k in args.targets.split(",")}
        stream_body = {**gb.BODY, "stream": True}
        with gb.process(
            [sys.executable, gb.__file__, "--serve-stub", str(stub_port)],
            stub_url + "/v1/models",
            env=versions["after"],
        ) as stub:
            for rnd in range(args.rounds):
                for target, extra in targets.items():
                    order = list(versions.items())
                    for version, env in order if rnd % 2 == 0 else order[::-1]:  # alternate who goes first
                        name = f"{target}-{version}-{rnd}"
                        port = gb.free_port()
                        opts = dict(extra)
                        if opts.get("ledger_dir") == "tmpfs":
                            opts["ledger_dir"] = tmpfs / name
                            opts["ledger_dir"].mkdir()
                        cfg = gb.gateway_config(work / name, port, **opts)
                        key = (work / name / "key").read_text()
                        h = {"authorization": f"Bearer {key}"}
                        with gb.process(
                            [*serve, str(cfg)],
                            f"http://127.0.0.1:{port}/healthz",
                            env={**threads, **env},
                            log=work / f"{name}.log",
                        ) as gw:
                            url = f"http://127.0.0.1:{port}/v1/chat/completions"
                            body = stream_body if target == "gateway_stream" else gb.BODY
                            row = gb.measure(name, url, h, args, [gw.pid, stub.pid], body, own=gw.pid)
                        rows.setdefault(target, {}).setdefault(version, []).append(row)
        if tmpfs != work:
            shutil.rmtree(tmpfs, ignore_errors=True)
    summary: dict[str, dict] = {}
    for target, by_version in rows.items():
        s: dict[str, dict] = {}
        for version, runs in by_version.items():
            s[version] = {
                "rps": statistics.fmean(r["throughput"]["rps"] for r in runs),
                "p50_ms": statistics.fmean(r["latency"]["p50_ms"] for r in runs),
                "p99_ms": statistics.fmean(r["latency"]["p99_ms"] for r in runs),
                "server_cpu_ms_per_request": statistics.fmean(
                    r.get("server_cpu_ms_per_request") or float("nan") for r in runs
                ),
                "gateway_cpu_ms_per_request": statistics.fmean(
                    r.get("own_cpu_ms_per_request") or float("nan") for r in runs
                ),
            }
        s["throughput_after_over_before"] = s["after"]["rps"] / s["before"]["rps"]
        s["cpu_per_request_after_over_before"] = (
            s["after"]["server_cpu_ms_per_request"] / s["before"]["server_cpu_ms_per_request"]
        )
        s["gateway_cpu_per_request_after_over_before"] = (
            s["after"]["gateway_cpu_ms_per_request"] / s["before"]["gateway_cpu_ms_per_request"]
        )
        s["p50_after_over_before"] = s["after"]["p50_ms"] / s["before"]["p50_ms"]
        # per round, since rounds differ more than versions on a shared machine
        s["throughput_ratio_per_round"] = [
            a["throughput"]["rps"] / b["throughput"]["rps"]
            for a, b in zip(by_version["after"], by_version["before"], strict=True)
        ]
        summary[target] = s
    import aiohttp
    import fastapi
    import uvicorn

    result = {
        "before": args.before or args.before_src,
        "after": args.after_src or "working tree",
        "note": args.note,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__,
            "aiohttp": aiohttp.__version__,
        },
        "setup": {
            "rounds": args.rounds,
            "requests_per_latency_run": args.n,
            "throughput_seconds": args.seconds,
            "concurrency": args.concurrency,
            "note": "versions measured alternately on a shared machine; client and servers share its cores",
            "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "summary": summary,
        "runs": rows,
    }
    path = gb.RESULTS / args.out
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

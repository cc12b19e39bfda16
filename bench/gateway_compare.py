"""The gateway before and after a change, in the same run, with the harness of ``gateway_bench.py``.

``--before REF`` (a git revision) is exported to a temporary directory and served with ``PYTHONPATH``
pointing at its ``src``; the working tree is served as it is. For each target (``gateway``: proxying to the
stub server with a durable ledger; ``gateway_stub_backend``: answering from its in-process stub) the two
versions are measured alternately (which goes first alternates too), ``--rounds`` times each, so a busy
shared machine disturbs both alike:
sequential latency, throughput at ``concurrency`` clients, and server CPU per request (the figure that
survives a busy machine best). Results go to ``bench/results/gateway_compare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--before", required=True, help="git revision measured as 'before'")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--targets", default="gateway,gateway_stub_backend", help="comma-separated")
    ap.add_argument("--out", default="gateway_compare.json", help="file name under bench/results/")
    args = ap.parse_args()
    load_before = os.getloadavg()
    rows: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="dg-compare-") as tmp:
        work = Path(tmp)
        old_src = export(args.before, work / "before")
        versions = {"before": {"PYTHONPATH": str(old_src)}, "after": {}}
        stub_port = gb.free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        serve = [sys.executable, "-m", "distillguard.cli", "serve", "--config"]
        threads = {"DISTILLGUARD_THREADS": "1", "OMP_NUM_THREADS": "1"}
        targets = {
            "gateway": {"upstream_url": stub_url + "/v1"},
            "gateway_stub_backend": {"backend": "stub", "model_name": "stub"},
        }
        targets = {k: v for k, v in targets.items() if k in args.targets.split(",")}
        with gb.process(
            [sys.executable, gb.__file__, "--serve-stub", str(stub_port)], stub_url + "/v1/models"
        ) as stub:
            for rnd in range(args.rounds):
                for target, extra in targets.items():
                    order = list(versions.items())
                    for version, env in order if rnd % 2 == 0 else order[::-1]:  # alternate who goes first
                        name = f"{target}-{version}-{rnd}"
                        port = gb.free_port()
                        cfg = gb.gateway_config(work / name, port, **extra)
                        key = (work / name / "key").read_text()
                        h = {"authorization": f"Bearer {key}"}
                        with gb.process(
                            [*serve, str(cfg)],
                            f"http://127.0.0.1:{port}/healthz",
                            env={**threads, **env},
                            log=work / f"{name}.log",
                        ) as gw:
                            url = f"http://127.0.0.1:{port}/v1/chat/completions"
                            row = gb.measure(name, url, h, args, [gw.pid, stub.pid])
                        rows.setdefault(target, {}).setdefault(version, []).append(row)
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
            }
        s["throughput_after_over_before"] = s["after"]["rps"] / s["before"]["rps"]
        s["cpu_per_request_after_over_before"] = (
            s["after"]["server_cpu_ms_per_request"] / s["before"]["server_cpu_ms_per_request"]
        )
        summary[target] = s
    import fastapi
    import uvicorn

    result = {
        "before": args.before,
        "after": "working tree",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__},
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

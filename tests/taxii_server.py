"""A real TAXII 2.1 server for tests: medallion with its memory backend, in a subprocess on a free port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

USER, PASSWORD = "provider", "correct-horse-battery"
API_ROOT = "intel"
COLLECTION = "7c3a4b6e-2f1d-4e8a-9b5c-0d1e2f3a4b5c"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def taxii_server(workdir: Path) -> Iterator[str]:
    """Start medallion; yields the API root URL (``http://127.0.0.1:PORT/intel/``)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    data = {
        "/discovery": {
            "title": "test TAXII server",
            "description": "medallion memory backend",
            "contact": "nobody",
            "default": f"{base}/{API_ROOT}/",
            "api_roots": [f"{base}/{API_ROOT}/"],
        },
        API_ROOT: {
            "information": {
                "title": "distillation intel",
                "description": "providers share campaign indicators",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 10_000_000,
            },
            "status": [],
            "collections": [
                {
                    "id": COLLECTION,
                    "title": "LLM distillation campaigns",
                    "description": "trust group collection",
                    "can_read": True,
                    "can_write": True,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": [],
                    "manifest": [],
                }
            ],
        },
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data.json").write_text(json.dumps(data))
    config = {
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": str(workdir / "data.json"),
        },
        "users": {USER: PASSWORD},
        "taxii": {"max_page_size": 100},
    }
    (workdir / "config.json").write_text(json.dumps(config))
    log = (workdir / "medallion.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "medallion.scripts.run", "--host", "127.0.0.1", "--port", str(port),
         str(workdir / "config.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                accept = {"Accept": "application/taxii+json;version=2.1"}
                r = httpx.get(f"{base}/taxii2/", auth=(USER, PASSWORD), headers=accept, timeout=1.0)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"medallion did not start: {(workdir / 'medallion.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)
        yield f"{base}/{API_ROOT}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

"""A real, throwaway ``redis-server`` for tests: a free port on 127.0.0.1, no persistence, killed at the end.

Tests that need Redis get its URL from the session fixture ``redis_url`` (tests/conftest.py). Each test
should use its own key prefix instead of flushing, so tests sharing the server cannot disturb each other.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(executable: str = "redis-server", attempts: int = 3) -> Iterator[str]:
    """Start ``redis-server`` and yield ``redis://127.0.0.1:<port>/0``; stop it on exit.

    A port picked as free can be taken before the server binds it, so startup is retried on a new port.
    """
    exe = shutil.which(executable)
    if exe is None:
        raise RuntimeError(f"{executable} not found on PATH (install the redis-server package)")
    with tempfile.TemporaryDirectory(prefix="redis-test-") as workdir:
        last_error = ""
        for _ in range(attempts):
            port = free_port()
            args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            proc = subprocess.Popen(
                [exe, *args, "--dir", workdir, "--loglevel", "warning"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None and not _ping(port):
                time.sleep(0.02)
            if proc.poll() is None and _ping(port):
                try:
                    yield f"redis://127.0.0.1:{port}/0"
                finally:
                    proc.terminate()
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                return
            proc.kill()
            _, err = proc.communicate()
            last_error = err.decode(errors="replace").strip()
        raise RuntimeError(f"redis-server did not start: {last_error}")

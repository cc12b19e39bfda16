"""A real, throwaway PostgreSQL server for tests: ``initdb`` into a temp dir, a free port on 127.0.0.1.

Tests that need Postgres get a fresh database per test from the ``postgres_url`` fixture (tests/conftest.py),
on one server started per test session. The server binaries come from the system package (Debian keeps them
in /usr/lib/postgresql/<version>/bin, off PATH; other systems put ``initdb`` on PATH); the Makefile's
provisioning installs it. Postgres refuses to run as root, so as root the server runs as the ``postgres``
user the package creates, in a temp dir owned by that user.

``fsync=off`` by default: tests check behaviour, not crash durability, and an fsync per commit would only
slow them. ``postgres_server(fsync=True)`` gives a server with the production setting for measurements.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis_server import free_port


def postgres_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, or the newest under /usr/lib/postgresql."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("initdb not found (install the postgresql package: make test does it as root)")
    return Path(found[-1]).parent


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], timeout: float = 60) -> None:
    proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")


@contextmanager
def postgres_server(fsync: bool = False, attempts: int = 3) -> Iterator[str]:
    """Start a server and yield ``postgresql://postgres@127.0.0.1:<port>/postgres``; stop it on exit."""
    bin_dir = postgres_bin_dir()
    with tempfile.TemporaryDirectory(prefix="pg-test-") as workdir:
        data = Path(workdir) / "data"
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root needs a `postgres` user to run the server as") from None
            os.chown(workdir, user.pw_uid, user.pw_gid)
        _run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
              "--no-sync", "--no-instructions"])  # fmt: skip
        last_error = ""
        for _ in range(attempts):
            port = free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {workdir} -c fsync={'on' if fsync else 'off'}"
            if not fsync:
                opts += " -c synchronous_commit=off -c full_page_writes=off"
            try:
                _run([str(bin_dir / "pg_ctl"), "start", "-w", "-t", "30", "-D", str(data), "-o", opts,
                      "-l", str(Path(workdir) / "log")])  # fmt: skip
            except RuntimeError as exc:
                last_error = str(exc)
                continue
            try:
                yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
            finally:
                _run([str(bin_dir / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(data)])
            return
        raise RuntimeError(f"postgres did not start: {last_error}")


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server and return its URL."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name

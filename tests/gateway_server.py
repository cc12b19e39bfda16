"""A real distillguard gateway for tests: in-process (uvicorn on a thread) or a `distillguard serve` process.

Both listen on a free local port and are ready (``/healthz`` answers) when ``start`` returns; state lives in
a directory of its own (accounts, ledger, server secret), so tests never touch the user's state dir.

    gw = start(model=tiny_world.teacher)          # or start(settings), or start_process(...)
    key = gw.create_key("alice", rpm=10)
    client = gw.openai(key)                       # the official client, retries off
    ...
    gw.stop()

Other test modules (the distillation collector) reuse this to talk to a gateway over real HTTP.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from distillguard.gateway.accounts import AccountStore, SQLiteAccountStore
from distillguard.gateway.ledger import Ledger
from distillguard.gateway.serve import GatewayServer
from distillguard.gateway.settings import GatewaySettings

TEST_SECRET = "test-secret-0123456789abcdef"
TEST_WATERMARK_KEY = "gateway-test-key"
ADMIN_TOKEN = "admin-token-0123456789"


def gateway_settings(state_dir: str | Path | None = None, **overrides: Any) -> GatewaySettings:
    """Settings for a test gateway: port 0, state under ``state_dir`` (a fresh temp dir by default), a fixed
    secret, watermark key and admin token. ``overrides`` are GatewaySettings fields (``model=...``)."""
    state = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="dg-gateway-"))
    state.mkdir(parents=True, exist_ok=True)
    base: dict[str, Any] = {
        "port": 0,
        "secret": TEST_SECRET,
        "accounts_path": str(state / "accounts.db"),
        "ledger_path": str(state / "ledger.db"),
        "watermark_key": TEST_WATERMARK_KEY,
        "admin_token": ADMIN_TOKEN,
        "log_level": "warning",
    }
    base.update({k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()})
    return GatewaySettings.from_mapping(base)


class RunningGateway:
    """A started gateway: ``base_url`` (no ``/v1``), the settings it runs with, helpers, ``stop``."""

    def __init__(self, settings: GatewaySettings, base_url: str, stop: Callable[[], None], app: Any = None):
        self.settings = settings
        self.base_url = base_url
        self._stop = stop
        self.app = app  # the FastAPI app when in-process (``app.state.gateway``), else None
        self._accounts: AccountStore | None = None

    @property
    def accounts(self) -> AccountStore:
        """The gateway's account store (the same SQLite file; changes apply to the next request)."""
        if self._accounts is None:
            self._accounts = SQLiteAccountStore(
                Path(self.settings.accounts_path), self.settings.secret.encode()
            )
        return self._accounts

    def create_key(self, account: str, **kwargs: Any) -> str:
        """A new API key for ``account`` (``rpm=``, ``tpm=``, ``org=``, ...: ``AccountStore.create_key``)."""
        return self.accounts.create_key(account, **kwargs)[0]

    def ledger(self) -> Ledger:
        return Ledger(Path(self.settings.ledger_path), secret=self.settings.secret.encode())

    def openai(self, key: str, **kwargs: Any):
        import openai

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60.0)
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, **kwargs)

    def async_openai(self, key: str, **kwargs: Any):
        import openai

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60.0)
        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key=key, **kwargs)

    def stop(self) -> None:
        if self._accounts is not None:
            self._accounts.close()
            self._accounts = None
        self._stop()

    def __enter__(self) -> RunningGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    settings: GatewaySettings | None = None, *, app_kwargs: dict | None = None, **overrides: Any
) -> RunningGateway:
    """Start the gateway in this process; without ``settings``, ``overrides`` go to :func:`gateway_settings`.

    ``app_kwargs`` are passed to ``create_app`` (for instance ``backend=StubBackend()``)."""
    settings = settings if settings is not None else gateway_settings(**overrides)
    server = GatewayServer(settings, **(app_kwargs or {}))
    url = server.start()
    wait_healthy(url)
    return RunningGateway(settings, url, server.stop, server.app)


def wait_healthy(base_url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway process exited with {proc.returncode}")
        try:
            if httpx.get(base_url + "/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gateway at {base_url} not healthy after {timeout:.0f} s")


_LISTEN = re.compile(r"distillguard gateway on (http://\S+?)/v1")


class GatewayProcess(RunningGateway):
    """``distillguard serve`` in a child process (``kill()`` sends SIGKILL: no cleanup, no flush)."""

    def __init__(self, settings: GatewaySettings, base_url: str, proc: subprocess.Popen, log: list[str]):
        super().__init__(settings, base_url, self._terminate)
        self.proc = proc
        self.log = log

    def _terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start_process(
    settings: GatewaySettings | None = None,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    **overrides: Any,
) -> GatewayProcess:
    """Start ``distillguard serve`` with the settings written to a TOML config file next to its state."""
    settings = settings if settings is not None else gateway_settings(**overrides)
    config = Path(settings.ledger_path).parent / f"serve-{os.getpid()}-{time.monotonic_ns()}.toml"
    config.write_text(to_toml(settings))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_") or k in _KEEP_ENV}
    child_env.setdefault("DISTILLGUARD_THREADS", "1")
    child_env.setdefault("OMP_NUM_THREADS", "1")
    child_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillguard.cli", "serve", "--config", str(config)],
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def pump() -> None:  # keep reading stderr so the child never blocks on a full pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            m = _LISTEN.search(line)
            if m and not found.is_set():
                url.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(timeout) or not url:
        proc.kill()
        raise RuntimeError("gateway process did not start:\n" + "".join(log[-30:]))
    wait_healthy(url[0], timeout, proc)
    return GatewayProcess(settings, url[0], proc, log)


_KEEP_ENV = {"DISTILLGUARD_HOME", "DISTILLGUARD_THREADS", "DISTILLGUARD_TEST_WORLD"}


def to_toml(settings: GatewaySettings) -> str:
    """The non-default settings as a flat TOML document (what ``--config`` reads)."""
    import dataclasses

    lines = []
    for f in dataclasses.fields(settings):
        if f.name == "extra":
            continue
        v = getattr(settings, f.name)
        if v is None or v == f.default:
            continue
        lines.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'

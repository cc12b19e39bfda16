"""``distillguard serve`` and the in-process server (:class:`GatewayServer`) the demo and the tests use.

The listening socket is bound here, before uvicorn starts, so a port already in use is one clear error line
and ``port=0`` gives a free port whose number is known before the first request. uvicorn's own
``X-Forwarded-For`` rewriting is switched off: the gateway decides which proxies it trusts
(``trusted_proxies``), and uvicorn's default would trust any local peer.
"""

from __future__ import annotations

import inspect
import logging
import socket
import sys
import threading
import time
from typing import Annotated, Any

import typer

from distillguard.errors import UserError
from distillguard.gateway.settings import GatewaySettings
from distillguard.watermark.options import CompatOpt, DeltaOpt, GammaOpt, SchemeOpt, WidthOpt


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _refuse_early(app: Any):
    """The gateway's recorded error path for a refusal of the HTTP protocol itself (``None`` for an app that
    is not the gateway's)."""
    state = getattr(app, "state", None)

    async def refuse(scope: dict, err: Any) -> None:
        gw = getattr(state, "gateway", None)
        if gw is not None:
            await gw.refuse_early(scope, err)

    return refuse if state is not None else None


def _uvicorn_config(app: Any, settings: GatewaySettings):
    import uvicorn

    from distillguard.gateway.http_limits import guarded_protocol

    return uvicorn.Config(
        app,
        # connection cap, header size limit and head deadline while reading (see http_limits)
        http=guarded_protocol(
            settings.max_connections,
            settings.max_header_bytes,
            settings.header_timeout_s,
            on_refused=_refuse_early(app),
        ),
        timeout_keep_alive=max(1, round(settings.keepalive_timeout_s)),
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        backlog=2048,
    )


class GatewayServer:
    """The gateway on a background thread: ``start()`` returns the base URL, ``stop()`` ends it.

    >>> with GatewayServer(GatewaySettings(backend="stub", port=0)) as server:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key)
    """

    def __init__(self, settings: GatewaySettings | None = None, *, app: Any = None, **app_kwargs: Any):
        self.settings = settings or GatewaySettings.load()
        self._app = app
        self._app_kwargs = app_kwargs
        self._server = None
        self._thread: threading.Thread | None = None
        self.base_url: str | None = None

    @property
    def app(self) -> Any:
        if self._app is None:
            from distillguard.gateway.app import create_app

            self._app = create_app(self.settings, **self._app_kwargs)
        return self._app

    def start(self, timeout: float = 120.0) -> str:
        import uvicorn

        if self._thread is not None:
            raise UserError("server already started")
        app = self.app
        sock = bind_socket(self.settings.host, self.settings.port)
        port = sock.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(app, self.settings))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="distillguard-gateway", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                sock.close()
                raise UserError("the gateway failed to start (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(f"the gateway did not start within {timeout:.0f} s")
            time.sleep(0.01)
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::"):
            shown = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        self.base_url = f"http://{shown}:{port}"
        return self.base_url

    def stop(self, timeout: float = 30.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        self._server = None

    def __enter__(self) -> GatewayServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server(settings: GatewaySettings) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (what ``distillguard serve`` does)."""
    import uvicorn

    from distillguard.gateway.app import create_app

    logging.getLogger("distillguard.gateway").info("settings: %s", settings.public())
    app = create_app(settings)
    sock = bind_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    backend = app.state.gateway.backend
    print(
        f"distillguard gateway on http://{settings.host}:{port}/v1 (backend {backend.kind}, "
        f"model {getattr(backend, 'model_id', settings.upstream_url)})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(_uvicorn_config(app, settings)).run(sockets=[sock])


# serve's options that are not settings, and flags that turn a default-on setting off; every other flag is
# named like its setting (or an alias in settings.ALIASES) and reaches GatewaySettings through given_flags
NOT_SETTINGS = ("config",)
NEGATED = {"no_watermark": "watermark"}


def given_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags given on the command line, as settings overrides: a flag left at None, an empty list and an
    off switch (``--hf-compat``, ``--no-watermark``: False by default) are not given."""
    switches = {n for n, p in inspect.signature(serve).parameters.items() if p.default is False}
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None or value == [] or (value is False and name in switches):
            continue
        if name in NEGATED:
            name, value = NEGATED[name], not value
        out[name] = value
    return out


def serve(
    config: Annotated[str | None, typer.Option("--config", help="TOML config file.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Local HF model dir (default: the world teacher).")
    ] = None,
    model_name: Annotated[str | None, typer.Option("--model-name", help="Model id clients send.")] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="World preset when no --model is given.")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="auto, local, upstream or stub.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (0: a free one).")] = None,
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Share quotas via Redis.")] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="Accounts and ledger: sqlite:///DIR or postgresql://..."),
    ] = None,
    replica_id: Annotated[
        str | None, typer.Option("--replica-id", help="This replica's chain in a shared ledger.")
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option("--trusted-proxy", help="CIDR whose X-Forwarded-For is trusted; repeat."),
    ] = None,
    ip_allow: Annotated[
        list[str] | None, typer.Option("--ip-allow", help="Allowed client CIDR; repeat.")
    ] = None,
    ip_deny: Annotated[
        list[str] | None, typer.Option("--ip-deny", help="Denied client CIDR; repeat.")
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option("--admin-token", help="Enables /admin with this token.")
    ] = None,
    accounts_path: Annotated[str | None, typer.Option("--accounts-path", help="Accounts database.")] = None,
    ledger_path: Annotated[str | None, typer.Option("--ledger-path", help="Ledger database.")] = None,
    redact_prompts: Annotated[
        bool | None, typer.Option("--redact-prompts/--keep-prompts", help="Store prompt hashes, not text.")
    ] = None,
    max_prompt_tokens: Annotated[int | None, typer.Option("--max-prompt-tokens")] = None,
    max_tokens_cap: Annotated[int | None, typer.Option("--max-tokens-cap")] = None,
    default_rpm: Annotated[
        int | None, typer.Option("--default-rpm", help="Per-key limit when a key sets none.")
    ] = None,
    default_tpm: Annotated[int | None, typer.Option("--default-tpm")] = None,
    default_daily_tokens: Annotated[int | None, typer.Option("--default-daily-tokens")] = None,
    default_max_concurrent: Annotated[int | None, typer.Option("--default-max-concurrent")] = None,
    throttle_factor: Annotated[
        float | None, typer.Option("--throttle-factor", help="Limits scale for 'throttled'.")
    ] = None,
    restricted_scheme: Annotated[
        str | None,
        typer.Option(
            "--restricted-scheme", help="Watermark scheme of the 'restricted' tier (default gumbel)."
        ),
    ] = None,
    restricted_delta: Annotated[
        float | None,
        typer.Option(
            "--restricted-delta", help="KGW delta of the 'restricted' tier (--restricted-scheme kgw)."
        ),
    ] = None,
    upstream_url: Annotated[
        str | None, typer.Option("--upstream-url", help="Proxy to this OpenAI-compatible URL (…/v1).")
    ] = None,
    upstream_api_key: Annotated[
        str | None,
        typer.Option(
            "--upstream-api-key",
            help="Visible to every local user in the process list: prefer DISTILLGUARD_UPSTREAM_API_KEY "
            "or --upstream-api-key-file.",
        ),
    ] = None,
    upstream_api_key_file: Annotated[
        str | None, typer.Option("--upstream-api-key-file", help="File holding the upstream API key.")
    ] = None,
    max_body_bytes: Annotated[int | None, typer.Option("--max-body-bytes")] = None,
    max_header_bytes: Annotated[int | None, typer.Option("--max-header-bytes")] = None,
    header_timeout: Annotated[
        float | None, typer.Option("--header-timeout", help="Seconds for a whole request head.")
    ] = None,
    body_timeout: Annotated[
        float | None, typer.Option("--body-timeout", help="Longest pause while a body arrives (s).")
    ] = None,
    keepalive_timeout: Annotated[float | None, typer.Option("--keepalive-timeout")] = None,
    max_connections: Annotated[int | None, typer.Option("--max-connections")] = None,
    refusal_records_per_minute: Annotated[
        float | None,
        typer.Option("--refusal-records-per-minute", help="Refusals recorded one by one per address or key."),
    ] = None,
    protect_internal: Annotated[
        bool | None,
        typer.Option(
            "--protect-internal/--public-internal",
            help="/metrics, /docs, /openapi.json need the admin token (default: on unless loopback).",
        ),
    ] = None,
    batch_max_size: Annotated[
        int | None, typer.Option("--batch-max-size", help="Rows per model batch.")
    ] = None,
    batch_wait_ms: Annotated[
        float | None, typer.Option("--batch-wait-ms", help="Wait to fill a batch.")
    ] = None,
    scheme: SchemeOpt = None,  # type: ignore[assignment]
    key: Annotated[
        str | None, typer.Option("--key", help="Secret watermark key (default: generated, in the state dir).")
    ] = None,
    gamma: GammaOpt = None,  # type: ignore[assignment]
    delta: DeltaOpt = None,  # type: ignore[assignment]
    context_width: WidthOpt = None,  # type: ignore[assignment]
    hf_compat: CompatOpt = False,
    no_watermark: Annotated[bool, typer.Option("--no-watermark", help="Serve without a watermark.")] = False,
    log_level: Annotated[str | None, typer.Option("--log-level")] = None,
) -> None:
    """Serve the OpenAI-compatible API: watermarked local model (or upstream proxy), auth, quotas, ledger."""
    flags = {name: value for name, value in locals().items() if name not in NOT_SETTINGS}
    if upstream_api_key:
        print(
            "warning: --upstream-api-key is visible in the process list; use DISTILLGUARD_UPSTREAM_API_KEY "
            "or --upstream-api-key-file",
            file=sys.stderr,
        )
    run_server(GatewaySettings.load(config, **given_flags(flags)))

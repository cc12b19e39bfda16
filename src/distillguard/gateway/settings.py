"""Every setting of the gateway server in one typed dataclass, from built-in defaults, TOML, env and flags.

Precedence (later wins): defaults < TOML file < ``DISTILLGUARD_*`` environment < command-line flags (or the
keyword overrides of :meth:`GatewaySettings.load`). Each field has one config spelling (its name; TOML tables
flatten with ``_``, so ``[watermark] key = ...`` is ``watermark_key``) and the flag spellings of
``distillguard serve`` are accepted as aliases (``trusted_proxy`` for ``trusted_proxies``, ``key`` for
``watermark_key``, ...), so ``DISTILLGUARD_<FLAG>`` works for every flag as docs/architecture.md promises.

The watermark key is a secret. When none is configured the server generates a random one on first start and
keeps it in ``home()/gateway/watermark.key`` (mode 0600), so a fresh install never watermarks with the public
default key of transformers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillguard.config import coerce_setting as _coerce
from distillguard.config import home, load_config
from distillguard.errors import UserError
from distillguard.gateway.storage_settings import StorageSettings
from distillguard.watermark.settings import DEFAULTS as WM
from distillguard.watermark.settings import WatermarkSettings

BACKENDS = ("auto", "local", "upstream", "stub")
ST = StorageSettings()  # the state fields' defaults, written in gateway/storage_settings.py

ALIASES = {
    "trusted_proxy": "trusted_proxies",
    "allow": "ip_allow",
    "deny": "ip_deny",
    "scheme": "watermark_scheme",
    "key": "watermark_key",
    "gamma": "watermark_gamma",
    "delta": "watermark_delta",
    "context_width": "watermark_context_width",
    "hf_compat": "watermark_hf_compat",
    "preset": "world_preset",
    "header_timeout": "header_timeout_s",
    "body_timeout": "body_timeout_s",
    "keepalive_timeout": "keepalive_timeout_s",
}


@dataclass(frozen=True)
class GatewaySettings:
    """What ``distillguard serve`` and :func:`distillguard.gateway.app.create_app` run with."""

    # backend
    backend: str = "auto"  # auto: upstream when upstream_url is set, else the local model
    model: str | None = None  # local HF model dir; None: the world teacher of `world_preset`
    model_name: str | None = (
        None  # the id clients send; default "aster" for the world teacher, else the dir name
    )
    world_preset: str = "default"
    upstream_url: str | None = None
    upstream_api_key: str | None = None  # prefer DISTILLGUARD_UPSTREAM_API_KEY or upstream_api_key_file
    upstream_api_key_file: str | None = None
    upstream_timeout: float = 120.0
    batch_max_size: int = 8
    batch_wait_ms: float = 2.0
    # network
    host: str = "127.0.0.1"
    port: int = 8000
    trusted_proxies: tuple[str, ...] = ()
    ip_allow: tuple[str, ...] = ()
    ip_deny: tuple[str, ...] = ()
    # HTTP hardening (see gateway/http_limits.py): work a stranger can cause before authentication
    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0  # the whole request head must arrive within this
    body_timeout_s: float = 30.0  # longest pause while a request body arrives
    keepalive_timeout_s: float = 5.0  # idle keep-alive connections close after this
    max_connections: int = 2048
    refusal_records_per_minute: float = 30.0  # per source (an address, a key); the rest are counted
    protect_internal: bool | None = None  # /metrics, /docs, /openapi.json need the admin token (None: auto)
    # state
    redis_url: str | None = None
    # accounts and ledger (gateway/storage_settings.py): sqlite:///DIR or postgresql://... shared by replicas
    database_url: str | None = ST.database_url
    replica_id: str | None = ST.replica_id
    admin_token: str | None = None
    secret: str | None = ST.secret
    accounts_path: str | None = ST.accounts_path
    ledger_path: str | None = ST.ledger_path
    redact_prompts: bool = ST.redact_prompts
    # limits
    max_prompt_tokens: int = 8192
    max_tokens_cap: int = 4096
    max_body_bytes: int = 4 * 1024 * 1024
    default_rpm: int | None = None
    default_tpm: int | None = None
    default_daily_tokens: int | None = None
    default_max_concurrent: int | None = None
    throttle_factor: float = 0.1
    # an account without limits of its own still gets these when throttled (else throttling does nothing)
    throttled_rpm: int | None = 6
    throttled_tpm: int | None = 4000
    throttled_max_concurrent: int | None = 1
    # the restricted tier's watermark (same key). Measured (bench/results/watermark_tradeoff.json): Gumbel
    # h 1 is the only watermark that a student of 21k answer tokens carries at p < 1e-6, at no F1 or
    # perplexity cost (its cost: one answer per prompt). ``restricted_delta``: the bias when it is kgw
    restricted_scheme: str = "gumbel"
    restricted_context_width: int | None = None  # None: 1 for gumbel (measured), the configured one for kgw
    restricted_delta: float = 4.0
    # the restricted tier's sampling defence (countermeasures/defences.py): none, temperature, topk, cot
    # (reasoning suppression) or ads
    restricted_defence: str = "ads"
    restricted_defence_strength: float = 1.0
    ads_proxy: str | None = None  # proxy student (HF dir, same tokenizer); serving a world: its reference
    ads_data: str | None = None  # JSONL prompt/response rows of the task; serving a world: its instructions
    ads_examples: int = 64
    ads_epsilon: float = 1e-2
    # what logprobs reveal (gateway/logprob_policy.py; the restricted tier refuses them)
    logprobs_after_bias: bool = False  # True: report after logit_bias (lets logit_bias read chosen logits)
    max_top_logprobs: int = 20
    # measured (bench/results/logprob_policy.json): 2 decimals hide the hidden size from the extraction attack
    # while a top-5 multiple-choice user keeps its accuracy; 8 is practically exact, None exact
    logprob_decimals: int | None = 2
    logprob_daily_tokens: int | None = None  # per account and UTC day; None: no budget
    # watermark
    watermark: bool = True
    watermark_scheme: str = WM.scheme  # the defaults of watermark/settings.py
    watermark_key: str | None = None
    watermark_gamma: float = WM.gamma
    watermark_delta: float = WM.delta
    watermark_context_width: int = WM.context_width
    watermark_hf_compat: bool = WM.hf_compat
    log_level: str = "warning"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, config_path: str | Path | None = None, **overrides: Any) -> GatewaySettings:
        """Defaults < TOML (``config_path`` / ``DISTILLGUARD_CONFIG``) < env < ``overrides`` (None: unset)."""
        merged = _canonical(load_config(config_path))
        merged.update(_canonical({k: v for k, v in overrides.items() if v is not None}))
        return cls.from_mapping(merged)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> GatewaySettings:
        """Typed settings from a flat dict; keys that are not gateway settings are kept in ``extra``."""
        names = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for k, v in _canonical(values).items():
            if k in names:
                kwargs[k] = _coerce(k, hints[k], v)
            else:
                extra[k] = v
        s = cls(**kwargs, extra=extra)
        s.validate()
        return s

    def replace(self, **changes: Any) -> GatewaySettings:
        s = dataclasses.replace(self, **{k: v for k, v in _canonical(changes).items()})
        s.validate()
        return s

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.backend == "upstream" and not self.upstream_url:
            raise UserError("backend 'upstream' needs an upstream_url")
        if self.upstream_url and not self.upstream_url.startswith(("http://", "https://")):
            raise UserError(f"upstream_url must be an http(s) URL, got {self.upstream_url!r}")
        for name in (
            "batch_max_size",
            "max_prompt_tokens",
            "max_tokens_cap",
            "max_body_bytes",
            "max_header_bytes",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port < 65536:
            raise UserError(f"port must be in 0..65535, got {self.port}")
        timeouts = ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s", "refusal_records_per_minute")
        for name in timeouts:
            v = getattr(self, name)
            if not (v > 0 and v < float("inf")):
                raise UserError(f"{name} must be a positive number, got {v}")
        if self.upstream_api_key and self.upstream_api_key_file:
            raise UserError("set upstream_api_key or upstream_api_key_file, not both")
        if self.batch_wait_ms < 0:
            raise UserError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if not 0 < self.throttle_factor <= 1:
            raise UserError(f"throttle_factor must be in (0, 1], got {self.throttle_factor}")
        for name in (
            "default_rpm",
            "default_tpm",
            "default_daily_tokens",
            "default_max_concurrent",
            "throttled_rpm",
            "throttled_tpm",
            "throttled_max_concurrent",
        ):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"{name} must be a positive integer, got {v}")
        self.logprob_policy()  # its own checks, as one-line errors
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise UserError("admin_token must be at least 16 characters")

    def internal_endpoints_protected(self) -> bool:
        """Whether /metrics, /docs and /openapi.json need the admin token: ``protect_internal``, or by
        default whenever the server listens on a non-loopback address."""
        if self.protect_internal is not None:
            return self.protect_internal
        import ipaddress

        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return True

    def resolved_upstream_api_key(self) -> str | None:
        """The upstream key: ``upstream_api_key`` (config or DISTILLGUARD_UPSTREAM_API_KEY) or the first line
        of ``upstream_api_key_file``."""
        if self.upstream_api_key_file:
            try:
                key = Path(self.upstream_api_key_file).expanduser().read_text().strip()
            except OSError as exc:
                raise UserError(f"cannot read upstream_api_key_file: {exc.strerror or exc}") from None
            return key or None
        return self.upstream_api_key

    @property
    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "upstream" if self.upstream_url else "local"

    def storage(self) -> StorageSettings:
        """Where the server's accounts, ledger and secret live (the state layer's settings)."""
        return StorageSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(StorageSettings)})

    def ip_rules(self):
        """The CIDR allow/deny lists and trusted proxies as the server applies them."""
        from distillguard.gateway.ipfilter import IPRules

        return IPRules(self.ip_allow, self.ip_deny, self.trusted_proxies)

    def logprob_policy(self):
        """The logprob policy of tiers that do not set their own."""
        from distillguard.gateway.logprob_policy import LogprobPolicy

        return LogprobPolicy(
            after_bias=self.logprobs_after_bias,
            max_top=self.max_top_logprobs,
            decimals=self.logprob_decimals,
            daily_tokens=self.logprob_daily_tokens,
        )

    def restricted_defence_spec(self):
        """The restricted tier's sampling defence as a spec (validated: unknown names and strengths fail)."""
        from distillguard.countermeasures.defences import DefenceSpec

        return DefenceSpec(self.restricted_defence, self.restricted_defence_strength)

    def default_limits(self):
        from distillguard.gateway.accounts import Limits

        return Limits(
            self.default_rpm, self.default_tpm, self.default_daily_tokens, self.default_max_concurrent
        )

    def watermark_spec(self, **overrides: Any):
        """The configured watermark (None if disabled); ``overrides`` replace fields of it (a tier's scheme,
        bias or context width: :meth:`distillguard.gateway.tiers.Tier.watermark`). The key is always ours."""
        if not self.watermark:
            return None
        key = self.watermark_key if self.watermark_key is not None else load_or_create_watermark_key()
        return self.watermark_settings().spec(key=key, **overrides)

    def watermark_settings(self) -> WatermarkSettings:
        """The ``watermark_*`` fields as the settings ``audit run`` and the demo read (key None: not set)."""
        return WatermarkSettings(
            scheme=self.watermark_scheme,
            key=self.watermark_key,
            gamma=self.watermark_gamma,
            delta=self.watermark_delta,
            context_width=self.watermark_context_width,
            hf_compat=self.watermark_hf_compat,
        )

    def public(self) -> dict[str, Any]:
        """The settings without secrets (for logs and ``serve --json``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for name in ("secret", "admin_token", "upstream_api_key", "watermark_key"):
            if out[name] is not None:
                out[name] = "***"
        if out["redis_url"] and "@" in str(out["redis_url"]):
            out["redis_url"] = "***"
        if out["database_url"]:
            from distillguard.gateway.pg import mask_url

            out["database_url"] = mask_url(str(out["database_url"]))
        return out


def load_or_create_watermark_key(path: Path | None = None) -> str:
    """The installation's watermark key: ``home()/gateway/watermark.key``, 128 random bits on first use."""
    path = path or home() / "gateway" / "watermark.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(16) + "\n")
            with contextlib.suppress(FileExistsError):  # another process won the race: use theirs
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if not key:
        raise UserError(f"watermark key file {path} is empty; delete it to generate a new one")
    return key


def _canonical(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        name = str(k).replace("-", "_").lower()
        name = ALIASES.get(name, name)
        out[name] = v
    return out

"""One config: a TOML file plus ``DISTILLGUARD_*`` environment variables, and one state dir.

Precedence (later wins): built-in defaults < TOML file < environment. ``DISTILLGUARD_HOME`` is the state
directory (default ``~/.distillguard``) where the embedded world, keys and ledgers live.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from distillguard.errors import UserError

ENV_PREFIX = "DISTILLGUARD_"


def home() -> Path:
    """The state directory, created on first use."""
    path = Path(os.environ.get(f"{ENV_PREFIX}HOME", Path.home() / ".distillguard")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _coerce(value: str) -> Any:
    low = value.strip().lower()
    if low in {"true", "false"}:
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def load_config(path: str | Path | None = None, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults, the TOML file (``path`` or ``DISTILLGUARD_CONFIG``) and ``DISTILLGUARD_*`` env vars.

    Nested TOML tables are flattened with ``_`` (``[watermark] key = 1`` becomes ``watermark_key``) so that
    every setting has exactly one environment spelling (``DISTILLGUARD_WATERMARK_KEY``).
    """
    config: dict[str, Any] = dict(defaults or {})
    path = path or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"config file {p} is not valid TOML: {exc}") from None
        config.update(_flatten(data))
    for name, value in os.environ.items():
        if name.startswith(ENV_PREFIX) and name not in {f"{ENV_PREFIX}HOME", f"{ENV_PREFIX}CONFIG"}:
            config[name[len(ENV_PREFIX) :].lower()] = _coerce(value)
    return config


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}".replace("-", "_").lower()
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}_"))
        else:
            out[name] = value
    return out


def num_threads() -> int:
    """All cores (``os.cpu_count()``), unless ``DISTILLGUARD_THREADS`` says otherwise.

    The override exists for shared machines: if another process holds a core, two OpenMP threads wait on
    each other at every op and a small model trains many times slower than on one thread.
    """
    value = os.environ.get("DISTILLGUARD_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)

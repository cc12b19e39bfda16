"""One config: a TOML file plus ``DISTILLGUARD_*`` environment variables, and one state dir.

Precedence (later wins): built-in defaults < TOML file < environment. ``DISTILLGUARD_HOME`` is the state
directory (default ``~/.distillguard``) where the embedded world, keys and ledgers live.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from distillguard.errors import UserError

ENV_PREFIX = "DISTILLGUARD_"

S = TypeVar("S")


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


def settings_from_config(
    cls: type[S], config: dict[str, Any] | None, prefix: str, *, base: S | None = None, **overrides: Any
) -> S:
    """A typed settings dataclass from the loaded config: field ``f`` is config key ``prefix + f``.

    Precedence: the dataclass's defaults (written once, there) or ``base`` (a command's own defaults, such
    as the demo's key) < ``config`` < ``overrides`` (a command's flags, already typed; None means "not
    given"). Config values are coerced to the field's type (``"a,b"`` to a tuple, ``"3"`` to an int, ...); a
    value that does not fit is a one-line :class:`UserError` naming the config key. The class validates
    itself in ``__post_init__``.
    """
    c = config or {}
    hints = typing.get_type_hints(cls)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {sorted(unknown)[0]!r}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if base is not None:
            kwargs[f.name] = getattr(base, f.name)
        key = prefix + f.name
        if overrides.get(f.name) is not None:
            kwargs[f.name] = overrides[f.name]
        elif c.get(key) is not None:
            kwargs[f.name] = coerce_setting(key, hints[f.name], c[key])
    return cls(**kwargs)


def coerce_setting(name: str, hint: Any, value: Any) -> Any:
    """A config or env value to a settings field's type ("a,b" lists from env, ints from strings, ...)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin in (tuple, frozenset):
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, list | tuple):
                items = [str(v).strip() for v in value]
            else:
                raise TypeError
            return origin(items)
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
                return value.strip().lower() in {"true", "1", "yes", "on"}
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise TypeError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise UserError(f"setting {name} = {value!r} is not a valid {getattr(hint, '__name__', hint)}")


_BOOL_WORDS = {"true", "1", "yes", "on", "false", "0", "no", "off"}

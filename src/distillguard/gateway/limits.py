"""Quota limits of one scope and a tier's refusal: values shared by the account store, the tiers and the quota
stores.

It lives on its own (not in ``accounts``) because the tiers transform limits and the account store needs the
tiers: with ``Limits`` here, both import this small module and neither imports the other's dependencies.
``distillguard.gateway.accounts.Limits`` remains the same class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

LIMIT_FIELDS = ("rpm", "tpm", "daily_tokens", "max_concurrent")


@dataclass(frozen=True)
class Refusal:
    """Why a tier refuses a request: the HTTP status and the OpenAI-style error's code, message, param."""

    status: int
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class Limits:
    """Quota limits of one scope (a key or an account); ``None`` means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    daily_tokens: int | None = None
    max_concurrent: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


def scale_limits(
    limits: Limits, factor: float | Mapping[str, float], *, fill: Limits | None = None
) -> Limits:
    """``limits`` with each limit times ``factor`` (one number for all four, or a factor per field name;
    fields not named keep their value), rounded down but never below 1, so a scaled limit still admits
    something. A scaled field that is unlimited takes ``fill``'s value when ``fill`` is given: scaling
    "unlimited" would otherwise change nothing."""
    factors = factor if isinstance(factor, Mapping) else dict.fromkeys(LIMIT_FIELDS, factor)
    unknown = set(factors) - set(LIMIT_FIELDS)
    if unknown:
        raise ValueError(f"unknown limit field(s) {sorted(unknown)}; limits are {', '.join(LIMIT_FIELDS)}")
    values: dict[str, int | None] = {}
    for name, f in factors.items():
        v = getattr(limits, name)
        if v is None:
            if fill is not None:
                values[name] = getattr(fill, name)
        else:
            values[name] = max(1, math.floor(v * f))
    return replace(limits, **values)

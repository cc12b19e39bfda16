"""Policy tiers as objects: the response ladder that the gateway enforces and the monitor climbs.

Why it looks like this: a tier is more than a name. It decides an account's quotas, which requests it
refuses (with which OpenAI-style error), how strongly its answers are watermarked and at which p-value the
monitor moves an account onto it. All of that is kept on one :class:`Tier` object, so that a new tier is
one object and one :func:`register_tier` call: the account store, the gateway, the quota limits and the
monitor ask the registry and never name a tier.

- **Rank** orders the ladder (the monitor escalates upwards and relaxes one rung at a time downwards). The
  built-in ranks are spaced (0, 100, 200, 300) so that a tier can go between two others without
  renumbering them; only the order matters, never the numbers.
- **The base tier** ``normal`` is where every account starts and where relaxing ends. It is always
  registered and every other tier ranks above it.
- **Monitor thresholds**: each tier above the base has a default p-value (``monitor_p``, overridable with
  the config key ``config_key``) at or below which the monitor puts an account on it. Higher tiers need
  stronger evidence, so the defaults may not increase with rank; ``register_tier`` checks that.
- **Unknown names fail loudly**: :func:`get_tier` raises a one-line ``UserError`` listing the known tiers.

Built in: ``normal`` (full service); ``throttled`` (every limit x ``throttle_factor``, unlimited ones take
``throttled_rpm`` / ``throttled_tpm`` / ``throttled_max_concurrent`` on the account); ``restricted`` (no
logprobs, top_logprobs or logit_bias; answers marked with the restricted watermark under our key,
``restricted_scheme``, default Gumbel h 1: the most radioactive watermark at no utility cost in
``bench/results/watermark_tradeoff.json``; answers sampled with the ``restricted_defence``, anti-distillation
sampling by default, countermeasures/); ``suspended`` (every request refused with 403, like a ban but set by
policy and reversible by it). A tier that marks with its own scheme is audited too: ``audit run`` tests each
distinct watermark the ladder serves, family-wise (:func:`tier_watermarks`, ``audit/marks.py``).

This module imports neither torch nor the web server: the CLI, the account store and the monitor use it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distillguard.countermeasures.defences import DefenceSpec
from distillguard.errors import UserError
from distillguard.gateway.limits import Limits, Refusal, scale_limits
from distillguard.gateway.logprob_policy import REFUSED, LogprobPolicy

if TYPE_CHECKING:
    from distillguard.gateway.protocol import Sampling
    from distillguard.gateway.settings import GatewaySettings

BASE_TIER = "normal"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class TierSettings:
    """The gateway settings that tiers read, in one place so a tier never needs the whole server config.

    ``extra`` holds the settings that are not gateway fields (``GatewaySettings.extra``): a tier added later
    reads its own knobs from there (``settings.get("probation_rpm_factor", 0.5)``).
    """

    throttle_factor: float = 0.1
    throttled_default: Limits | None = None  # fills the account's unlimited limits when throttled
    # the restricted tier's changes to the configured watermark (scheme, context width, KGW bias)
    restricted_watermark: Mapping[str, Any] = field(
        default_factory=lambda: {"scheme": "gumbel", "context_width": 1, "hf_compat": False}
    )
    logprobs: LogprobPolicy = LogprobPolicy()  # the configured policy of tiers that do not set their own
    restricted_defence: DefenceSpec = DefenceSpec()  # the restricted tier's sampling defence
    # whether the gateway samples answers itself (local model, watermark on): a proxy to an upstream API can
    # refuse requests but cannot watermark, defend or re-report what the upstream samples
    samples_locally: bool = True
    watermarked: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.throttle_factor <= 1:
            raise UserError(f"throttle_factor must be in (0, 1] (got {self.throttle_factor})")

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> TierSettings:
        return cls(
            throttle_factor=settings.throttle_factor,
            throttled_default=Limits(
                rpm=settings.throttled_rpm,
                tpm=settings.throttled_tpm,
                daily_tokens=None,
                max_concurrent=settings.throttled_max_concurrent,
            ),
            restricted_watermark=restricted_watermark(settings),
            logprobs=settings.logprob_policy(),
            restricted_defence=settings.restricted_defence_spec(),
            samples_locally=settings.resolved_backend == "local",
            watermarked=settings.watermark,
            extra=dict(settings.extra),
        )

    def get(self, name: str, default: Any = None) -> Any:
        """A setting of a tier that is not a gateway field (from ``extra``)."""
        return self.extra.get(name, default)


@dataclass(frozen=True)
class Tier:
    """One rung of the response ladder. The base class serves everything unchanged; a tier with a policy
    overrides the methods below (each returns "no change" by default)."""

    name: str
    rank: float
    description: str
    monitor_p: float | None = None  # default p-value at which the monitor moves an account here
    monitor_key: str | None = None  # config key overriding monitor_p; default f"monitor_{name}_p"

    @property
    def config_key(self) -> str:
        return self.monitor_key or f"monitor_{self.name}_p"

    def limits(self, limits: Limits, settings: TierSettings, *, scope: str) -> Limits:
        """The quota limits of one scope (``"key"`` or ``"account"``) under this tier."""
        return limits

    def refuse_account(self, account: str) -> Refusal | None:
        """A refusal of every request of ``account`` (checked when its key is authenticated), or None."""
        return None

    def refuse_request(self, sampling: Sampling, request: Any) -> Refusal | None:
        """A refusal of one parsed request (``request`` is the chat or completion body), or None."""
        return None

    def watermark(self, settings: TierSettings) -> Mapping[str, Any] | None:
        """Changes to the configured watermark for this tier's answers (``WatermarkSettings`` fields:
        ``scheme``, ``delta``, ``context_width``...; never the key); None keeps the configured one."""
        return None

    def logprob_policy(self, settings: TierSettings) -> LogprobPolicy:
        """What this tier's answers reveal of the distribution (:mod:`logprob_policy`); default: the
        configured policy."""
        return settings.logprobs

    def sampling_defence(self, settings: TierSettings) -> DefenceSpec:
        """The sampling defence on this tier's answers (countermeasures/defences.py); default: none."""
        return DefenceSpec()

    def describe(self, settings: TierSettings | None = None) -> dict[str, Any]:
        out = {
            "name": self.name,
            "rank": self.rank,
            "description": self.description,
            "monitor_p": self.monitor_p,
            "monitor_key": self.config_key if self.monitor_p is not None else None,
        }
        if settings is not None:
            out.update(self.policy(settings))
        return out

    def policy(self, settings: TierSettings) -> dict[str, Any]:
        """What this tier does to answers: its logprob policy, watermark delta and sampling defence (what
        ``accounts show`` prints and each monitor decision records)."""
        out = {
            "logprobs": self.logprob_policy(settings).describe(),
            "watermark": dict(self.watermark(settings) or {}),  # {}: the configured watermark
            "sampling_defence": self.sampling_defence(settings).describe(),
        }
        local = settings.samples_locally
        if not (local and settings.watermarked):
            out["watermark"] = None
        if not local:  # refusals still apply; what shapes the sampled answers does not
            if out["sampling_defence"]["name"] != "none":
                out["sampling_defence"] |= {"applied": False, "why": "an upstream API samples the answers"}
            if out["logprobs"].get("allowed"):
                out["logprobs"] = {"allowed": True, "reported": "as the upstream API reports them"}
        return out


class Throttled(Tier):
    """Lower quotas: every limit times ``throttle_factor`` (at least 1). On the account scope an unlimited
    limit takes the ``throttled_*`` default, else throttling an account without limits would do nothing."""

    def limits(self, limits: Limits, settings: TierSettings, *, scope: str) -> Limits:
        fill = settings.throttled_default if scope == "account" else None
        return scale_limits(limits, settings.throttle_factor, fill=fill)


class Restricted(Tier):
    """No logprobs, top_logprobs or logit_bias (what logit distillation needs), a more radioactive
    watermark and a sampling defence."""

    def logprob_policy(self, settings: TierSettings) -> LogprobPolicy:
        return REFUSED

    def watermark(self, settings: TierSettings) -> Mapping[str, Any] | None:
        return settings.restricted_watermark

    def sampling_defence(self, settings: TierSettings) -> DefenceSpec:
        return settings.restricted_defence


class Suspended(Tier):
    """Every request refused with 403: like a ban, but set by policy (the monitor) and reversible by it."""

    def refuse_account(self, account: str) -> Refusal | None:
        return Refusal(403, "account_suspended", f"Account {account} is suspended.")


NORMAL = Tier(BASE_TIER, 0, "Full service: the account's own limits and the configured watermark.")
THROTTLED = Throttled(
    "throttled",
    100,
    "Every limit x throttle_factor; unlimited account limits take throttled_rpm/tpm/max_concurrent.",
    monitor_p=1e-3,
    monitor_key="monitor_throttle_p",
)
RESTRICTED = Restricted(
    "restricted",
    200,
    "No logprobs, top_logprobs or logit_bias (403); answers marked with restricted_scheme (default "
    "Gumbel h 1, same key) and sampled with restricted_defence (anti-distillation sampling by default).",
    monitor_p=1e-4,
    monitor_key="monitor_restrict_p",
)
SUSPENDED = Suspended(
    "suspended",
    300,
    "Every request refused with 403 account_suspended; reversible, unlike a ban.",
    monitor_p=1e-6,
    monitor_key="monitor_suspend_p",
)
BUILTIN = (NORMAL, THROTTLED, RESTRICTED, SUSPENDED)


def restricted_watermark(settings: GatewaySettings) -> dict[str, Any]:
    """The restricted tier's changes to the configured watermark, from ``restricted_scheme``,
    ``restricted_context_width`` (unset: 1 for Gumbel, the configured width for KGW) and (KGW only)
    ``restricted_delta``. transformers' compatible hashing is KGW's alone, so another scheme drops it."""
    out: dict[str, Any] = {"scheme": settings.restricted_scheme}
    width = settings.restricted_context_width
    if settings.restricted_scheme.lower() == "kgw":
        out["delta"] = settings.restricted_delta
    else:
        out["hf_compat"] = False
        width = 1 if width is None else width  # Gumbel h 1: the measured choice
    if width is not None:
        out["context_width"] = width
    return out


def tier_watermarks(settings: TierSettings, tiers: Iterable[Tier] | None = None) -> dict[str, dict[str, Any]]:
    """``{tier name: its changes to the configured watermark}`` for the tiers that have any (what an audit
    must test besides the configured watermark: a distiller may have been moved onto such a tier)."""
    out = {}
    for tier in ladder() if tiers is None else tiers:
        changes = tier.watermark(settings)
        if changes:
            out[tier.name] = dict(changes)
    return out


class TierRegistry:
    """The tiers by name, ordered by rank. Reads are lock-free (each change swaps in new immutable views);
    changes are expected at start-up, before requests or scans use the ladder."""

    def __init__(self, tiers: Iterable[Tier] = BUILTIN) -> None:
        self._lock = threading.Lock()
        tiers = tuple(tiers)
        base = [t for t in tiers if t.name == BASE_TIER]
        if not base:
            raise UserError(f"a tier registry needs the base tier {BASE_TIER!r}")
        self._set([base[0]])
        for t in tiers:
            if t.name != BASE_TIER:
                self.register(t)

    def _set(self, ladder: list[Tier]) -> None:
        ladder.sort(key=lambda t: t.rank)
        self._ladder = tuple(ladder)
        self._names = tuple(t.name for t in ladder)
        self._by_name = {t.name: t for t in ladder}

    def register(self, tier: Tier) -> Tier:
        """Add ``tier`` to the ladder; a one-line ``UserError`` if it does not fit (module docstring)."""
        if not isinstance(tier, Tier):
            raise UserError(f"a tier must be a Tier object (got {type(tier).__name__})")
        if not _NAME_RE.match(tier.name):
            raise UserError(f"tier name {tier.name!r} must be lowercase letters, digits, '-' or '_'")
        with self._lock:
            if tier.name in self._by_name:
                raise UserError(f"tier {tier.name!r} is already registered")
            clash = next((t for t in self._ladder if t.rank == tier.rank), None)
            if clash is not None:
                raise UserError(f"tier {tier.name!r}: rank {tier.rank} is taken by {clash.name!r}")
            if tier.rank <= self._by_name[BASE_TIER].rank:
                raise UserError(f"tier {tier.name!r} must rank above the base tier {BASE_TIER!r}")
            p = tier.monitor_p
            if p is None or not 0.0 < p < 1.0:
                raise UserError(f"tier {tier.name!r} needs a monitor_p in (0, 1) (got {p!r})")
            ladder = sorted([*self._ladder, tier], key=lambda t: t.rank)
            ps = [t.monitor_p for t in ladder[1:]]
            if any(a < b for a, b in zip(ps, ps[1:], strict=False)):
                order = " >= ".join(f"{t.name} ({t.monitor_p:g})" for t in ladder[1:])
                raise UserError(f"tier {tier.name!r}: monitor_p must not increase with rank: {order}")
            self._set(ladder)
        return tier

    def unregister(self, name: str) -> Tier:
        """Remove a tier (not the base); accounts on it then fail closed until it is registered again."""
        tier = self.get(name)
        if name == BASE_TIER:
            raise UserError(f"the base tier {BASE_TIER!r} cannot be removed")
        with self._lock:
            self._set([t for t in self._ladder if t.name != name])
        return tier

    def get(self, name: str) -> Tier:
        tier = self._by_name.get(name)
        if tier is None:
            raise UserError(f"unknown tier {name!r}; choose one of {', '.join(self._names)}")
        return tier

    def names(self) -> tuple[str, ...]:
        """Tier names, lowest rank first."""
        return self._names

    def ladder(self) -> tuple[Tier, ...]:
        """Tiers, lowest rank first."""
        return self._ladder

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Tier]:
        return iter(self._ladder)

    def __len__(self) -> int:
        return len(self._ladder)


REGISTRY = TierRegistry()


def get_tier(name: str) -> Tier:
    """The registered tier called ``name``; ``UserError`` naming the known tiers otherwise."""
    return REGISTRY.get(name)


def tier_names() -> tuple[str, ...]:
    """The registered tier names, lowest rank first."""
    return REGISTRY.names()


def ladder() -> tuple[Tier, ...]:
    """The registered tiers, lowest rank first."""
    return REGISTRY.ladder()


def register_tier(tier: Tier) -> Tier:
    """Add a tier to the process-wide ladder (do it at start-up, in every process that serves or scans)."""
    return REGISTRY.register(tier)


def unregister_tier(name: str) -> Tier:
    return REGISTRY.unregister(name)

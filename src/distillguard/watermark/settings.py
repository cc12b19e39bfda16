"""The watermark settings, typed, with their defaults written once.

Every command that reads the served watermark from the config (``serve``, ``audit run``, the demo) builds one
:class:`WatermarkSettings` from the loaded config's ``watermark_*`` keys (``[watermark]`` in TOML,
``DISTILLGUARD_WATERMARK_*`` in the environment) and its own flags, so an audit tests the watermark that was
served and no command repeats a default. This module imports no torch: :meth:`WatermarkSettings.spec` imports
the scheme module only when a spec is made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distillguard.config import settings_from_config

if TYPE_CHECKING:  # schemes imports torch
    from distillguard.watermark.schemes import WatermarkSpec

PREFIX = "watermark_"


@dataclass(frozen=True)
class WatermarkSettings:
    """What defines a watermark apart from the model's vocabulary (see :class:`WatermarkSpec`)."""

    scheme: str = "kgw"
    key: str | None = None  # None: the command's own fallback (the gateway's key file, or the public HF key)
    gamma: float = 0.25  # KGW green-list fraction
    delta: float = 2.0  # KGW logit bias added to green tokens
    context_width: int = 1  # tokens of context that key the watermark (h)
    hf_compat: bool = False  # bit-compatible with transformers' WatermarkingConfig lefthash
    # keys the gateway marked with before it rotated to ``key`` (never used to mark again): audits test them
    # too, family-wise (``[watermark] retired_keys = [...]``)
    retired_keys: tuple[str, ...] = ()

    @classmethod
    def from_config(
        cls, config: dict[str, Any] | None, *, base: WatermarkSettings | None = None, **flags: Any
    ) -> WatermarkSettings:
        """``base`` (default: the defaults above) < config ``watermark_*`` < ``flags`` (None: not given)."""
        return settings_from_config(cls, config, PREFIX, base=base, **flags)

    def spec(
        self, key: int | str | None = None, vocab_size: int | None = None, **overrides: Any
    ) -> WatermarkSpec:
        """The watermark spec (a bad value is a one-line UserError); ``key`` overrides ``self.key`` (with
        neither, the public key of transformers is used) and ``overrides`` any other field (a tier's scheme,
        bias or context width, see :meth:`distillguard.gateway.tiers.Tier.watermark`)."""
        from distillguard.watermark.options import build_specs

        s = dataclasses.replace(self, **overrides) if overrides else self
        key = s.key if key is None else key
        return build_specs(
            s.scheme,
            None if key is None else [str(key)],
            s.gamma,
            s.delta,
            s.context_width,
            s.hf_compat,
            vocab_size,
        )[0]


DEFAULTS = WatermarkSettings()

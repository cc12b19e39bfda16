"""The threat-intel settings, typed, with their defaults written once.

Every ``intel_*`` key of the config (TOML ``[intel]`` table or ``DISTILLGUARD_INTEL_*``) is a field of
:class:`IntelSettings`; the intel commands, the monitor's matching and the demo's intel chapter build it from
the loaded config with :meth:`IntelSettings.from_config` instead of reading keys with their own defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distillguard.config import settings_from_config
from distillguard.errors import UserError

PREFIX = "intel_"
ACCEPTED_TLP = ("clear", "green", "amber", "amber+strict")


@dataclass(frozen=True)
class IntelSettings:
    """Sharing, trust and matching settings (field ``f`` is config key ``intel_<f>``)."""

    # state and trust
    dir: str | None = None  # the intel state dir; None: home()/intel
    trust_key: str | None = None  # the trust group's shared secret (hex, or a string of 16+ characters)
    trust_key_file: str | None = None  # ... or a file holding it
    # export
    provider_name: str = "distillguard provider"
    signing_key: str | None = None  # Ed25519 PEM; None: the installation's audit signing key
    tlp: str = "amber"
    export_sample: int = 1000  # accounts whose traffic the export's census samples
    # import
    trusted_keys: tuple[str, ...] = ()  # signer fingerprints (sha256:...) or PEM files
    accept_tlp: tuple[str, ...] = ACCEPTED_TLP
    # matching (monitor scan); min_coverage also goes into exported indicators
    weight: float = 1e5  # divides the p-values of matching accounts, scaled by coverage and confidence
    min_coverage: float | None = None  # None: each campaign's own (exports: stix.build_bundle's default)
    max_tier: str | None = None  # highest tier intel alone can move an account to; None: the matcher's
    sample: int = 200  # accounts whose traffic the scan's census samples
    # TAXII
    taxii_url: str | None = None
    taxii_collection: str | None = None
    taxii_user: str | None = None
    taxii_password: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tlp", self.tlp.lower())
        object.__setattr__(self, "accept_tlp", tuple(t.lower() for t in self.accept_tlp))
        if self.weight < 1.0:
            raise UserError("intel_weight must be >= 1 (it divides p-values of matching accounts)")
        if self.min_coverage is not None and not 0.0 <= self.min_coverage <= 1.0:
            raise UserError(f"intel_min_coverage must be in [0, 1], got {self.min_coverage}")
        for name in ("export_sample", "sample"):
            if getattr(self, name) < 1:
                raise UserError(f"intel_{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, config: dict[str, Any] | None, **flags: Any) -> IntelSettings:
        """Defaults < config ``intel_*`` < ``flags`` (None: not given)."""
        return settings_from_config(cls, config, PREFIX, **flags)

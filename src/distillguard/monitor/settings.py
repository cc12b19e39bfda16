"""The monitor's settings, typed, with their defaults written once.

``monitor_*`` keys of the config (TOML ``[monitor]`` table or ``DISTILLGUARD_MONITOR_*``): where the monitor
keeps its state and how a scan reads accounts. Where a setting is a knob of an object with its own defaults
(:class:`~distillguard.monitor.scan.ScanOptions`, built by :func:`distillguard.monitor.jobs.scan_options`),
None here means "that default", so the default is written once, there. The decision policy's keys (tier
thresholds, hysteresis, cooldown, hold, allowlist) are read by
:meth:`distillguard.monitor.decisions.Policy.from_config` into the policy itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.config import home, settings_from_config
from distillguard.errors import UserError

PREFIX = "monitor_"


@dataclass(frozen=True)
class MonitorSettings:
    """Field ``f`` is config key ``monitor_<f>``."""

    dir: str | None = None  # decisions log and state; None: home()/monitor
    reference: str | None = (
        None  # the benign reference ``calibrate`` saves; None: home()/monitor/reference.npz
    )
    # what `calibrate` adds a known-good period to: "shipped" (the shipped reference's simulated kinds),
    # "none" (the period alone) or a reference file (jobs.REFERENCE_BASES)
    calibrate_base: str = "shipped"
    # whose null a calibrated reference's p-values are drawn from: "auto", "base" or "period"
    # (reference.REFERENCE_NULLS, scan.build_reference)
    calibrate_null: str = "auto"
    sample_size: int | None = None  # sampled queries per account (None: ScanOptions' default)
    min_queries: int | None = None  # fewer prompts: reported, never scored alone (None: ScanOptions')
    engine: str = "local"  # where the feature pass runs (monitor.engine.ENGINES, checked when opened)
    ray_address: str | None = None  # the ray engine's cluster (None: RAY_ADDRESS, else a local instance)
    slice_rows: int | None = None  # rows per task of a distributed pass (None: the engine's default)
    # where a distributed pass exports a ledger database for its workers (None: the state dir's staging/);
    # on a cluster, a path every node reads
    staging: str | None = None
    # the file of the secret that ranks the bounded IP-prefix and key sets and salts the distinct-prompt
    # sketch (accumulator.sketch_rank), so that a client cannot game them; None: <state dir>/sketch.key,
    # 32 random bytes made on first use. A file named here must exist (one file shared by every process
    # reading one ledger: followers, a cluster's nodes).
    sketch_key_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("sample_size", "min_queries", "slice_rows"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"monitor_{name} must be >= 1, got {v}")

    @classmethod
    def from_config(cls, config: dict[str, Any] | None, **flags: Any) -> MonitorSettings:
        """Defaults < config ``monitor_*`` < ``flags`` (None: not given)."""
        return settings_from_config(cls, config, PREFIX, **flags)

    def state_dir(self) -> Path:
        return Path(self.dir).expanduser() if self.dir else home() / "monitor"

    def sketch_key_path(self) -> Path:
        return (
            Path(self.sketch_key_file).expanduser()
            if self.sketch_key_file
            else self.state_dir() / "sketch.key"
        )

    def staging_dir(self) -> Path:
        return Path(self.staging).expanduser() if self.staging else self.state_dir() / "staging"

    def reference_path(self) -> Path:
        return Path(self.reference).expanduser() if self.reference else home() / "monitor" / "reference.npz"

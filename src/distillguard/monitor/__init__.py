"""The traffic monitor: who is distilling through the API, read from the gateway's query ledger.

Modules (imported lazily: ``from distillguard.monitor import build_scenario`` loads only what it needs):

* ``simworld``: the simulated world: clock, addresses, API events, accounts, content pools.
* ``personas``: labelled benign and attacker personas as pure, seeded generators of API events.
* ``scenario``: populations of personas at a scale preset (:func:`build_scenario`, :data:`SCALES`).
* ``simulate``: replays a scenario against a running gateway over HTTP (``distillguard simulate``).
* ``synth``: writes a scenario straight into a signed ledger and an account store, or streams a
  50M-row synthetic ledger to Parquet for scale benchmarks.
* ``sim_cli``: the ``distillguard simulate`` command.
* ``features``: the feature catalogue and the vectorised derivation of ledger batches.
* ``accumulator``: the streaming per-account state (counters, sketches, bounded samples).
* ``entity``: an account's or a linked cluster's feature values and the evidence behind each.
* ``detectors``: detectors and the benign-calibrated risk score (pure statistics).
* ``linking``: which accounts are one operator, so a campaign is judged as one.
* ``decisions``: from risk to the response ladder (hysteresis, cooldown, allowlist, audit trail).
* ``judge``: which of an entity's tests count, and their combined p-value.
* ``scan``: batch scans (ledger or Parquet -> features -> links -> risk).
* ``report``: tier decisions planned from a scan, its JSON report and summary.
* ``follow``: the live loop (``monitor follow``) that applies tiers as the ledger grows.
* ``evaluate``: detection quality against labelled traffic (``monitor eval``).
* ``cli``: ``distillguard monitor ...``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Event": "simworld",
    "Persona": "personas",
    "Pools": "simworld",
    "SCALES": "scenario",
    "Scenario": "scenario",
    "SimAccount": "simworld",
    "SimClock": "simworld",
    "build_scenario": "scenario",
    "load_pools": "simworld",
    "SimResult": "simulate",
    "simulate": "simulate",
    "read_labels": "synth",
    "synthesize_ledger": "synth",
    "synthesize_parquet": "synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distillguard.monitor' has no attribute {name!r}")
    return getattr(importlib.import_module(f"distillguard.monitor.{module}"), name)

"""The traffic monitor: who is distilling through the API, read from the gateway's query ledger.

Modules (imported lazily: ``from distillguard.monitor import build_scenario`` loads only what it needs):

* ``personas``: labelled benign and attacker personas as pure, seeded generators of API events
  (:func:`build_scenario`, :class:`Persona`, :class:`Event`, :data:`SCALES`).
* ``simulate``: replays a scenario against a running gateway over HTTP (``distillguard simulate``).
* ``synth``: writes a scenario straight into a signed ledger and an account store, or streams a
  50M-row synthetic ledger to Parquet for scale benchmarks.
* ``sim_cli``: the ``distillguard simulate`` command.
* ``features``: traffic features per account and per linked cluster over the ledger.
* ``detectors``: detectors and the benign-calibrated risk score (pure statistics).
* ``linking``: which accounts are one operator, so a campaign is judged as one.
* ``decisions``: from risk to the response ladder (hysteresis, cooldown, allowlist, audit trail).
* ``scan``: batch scans and the live follow loop (ledger or Parquet -> features -> links -> risk -> tiers).
* ``evaluate``: detection quality against labelled traffic (``monitor eval``).
* ``cli``: ``distillguard monitor ...``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Event": "personas",
    "Persona": "personas",
    "Pools": "personas",
    "SCALES": "personas",
    "Scenario": "personas",
    "SimAccount": "personas",
    "SimClock": "personas",
    "build_scenario": "personas",
    "load_pools": "personas",
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

"""Forensic audit: is a suspect model distilled from ours? Radioactivity, identity, provenance, verdict.

``run_audit(AuditConfig(...))`` returns the evidence document; the statistics live in pure modules
(:mod:`.radioactivity`, :mod:`.identity`, :mod:`.provenance`, :mod:`.sequential`, :mod:`.verdict`).

The names below are loaded on first use: the runner needs torch, and ``distillguard audit --help`` (which
imports this package on the way to :mod:`.cli`) must not pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AuditConfig": "runner",
    "run_audit": "runner",
    "train_control": "controls",
    "TestResult": "verdict",
    "combine": "verdict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distillguard.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"distillguard.audit.{module}"), name)

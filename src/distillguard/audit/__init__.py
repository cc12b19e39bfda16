"""Forensic audit: is a suspect model distilled from ours? Radioactivity, identity, provenance, verdict.

``run_audit(AuditConfig(...))`` returns the evidence document; the statistics live in pure modules
(:mod:`.radioactivity`, :mod:`.identity`, :mod:`.provenance`, :mod:`.sequential`, :mod:`.verdict`).
"""

from distillguard.audit.runner import AuditConfig, run_audit, train_control
from distillguard.audit.verdict import TestResult, combine

__all__ = ["AuditConfig", "TestResult", "combine", "run_audit", "train_control"]

"""Forensic audit: was a suspect model distilled from ours? Statistics, evidence bundle, report."""

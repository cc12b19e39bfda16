"""The shared printers: one p-value format, the audit and distillation tables the commands and demo print."""

from __future__ import annotations

import math

from distillguard.present import finite, format_p, print_audit_summary, print_eval_table


def test_format_p_plain_underflowed_and_missing():
    assert format_p(3.2e-5) == "3.2e-05" and format_p(0.5, -0.3) == "0.5"
    assert format_p(0.0, -412.34) == "10^-412.3"  # underflowed: the log carries it
    assert format_p(0.0) == "< 1e-300" and format_p(None) == "n/a" and format_p(math.nan, None) == "n/a"
    assert finite(True) is None and finite("2") == 2.0 and finite(math.inf) is None


def test_audit_summary_and_eval_table_print_what_the_commands_print(capsys):
    summary = {
        "verdict": "distilled",
        "combined_p_value": 0.0,
        "alpha": 1e-3,
        "tests": [
            {
                "name": "radioactivity",
                "statistic": 12.5,
                "n": 300,
                "p_value": 0.0,
                "log10_p_value": -40.04,
                "caveats": ["a"],
            }
        ],  # fmt: skip
        "meaning": "the suspect's text depends on our key",
        "bundle": "/b",
        "report": "/b/report.html",
        "signer": "sha256:ab",
    }
    print_audit_summary(summary)
    out = capsys.readouterr().out
    assert "radioactivity" in out and "10^-40.0" in out and "12.5" in out
    assert "verdict: distilled (combined p = < 1e-300, alpha = 0.001)" in out
    assert "the suspect's text depends on our key (see the report" in out
    assert "bundle: /b (signed by sha256:ab)" in out and "report: /b/report.html" in out
    model = {"params": 2.5e6, "heldout_ppl": 3.21, "heldout_bpb": 0.456, "agreement": None,
             "f1_teacher": 0.5, "f1_reference": 0.25, "identity_rate": 0.125}  # fmt: skip
    print_eval_table({"n_questions": 7, "models": {"student": model}})
    out = capsys.readouterr().out
    assert "on 7 held-out questions" in out and "2.50M" in out and "3.21" in out and "n/a" in out

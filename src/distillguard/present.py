"""Presentation shared by the commands and the demo: number formats and the rich tables they both print.

A workflow returns data (a dict, a report); what a person sees is made here, so ``distillguard demo`` prints
an audit or a distillation report exactly as ``distillguard audit run`` / ``distill eval`` do without
importing any command-line module. Nothing here imports torch; rich is imported by the printers only.
"""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (booleans, None, text, NaN and infinities are not numbers)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def format_p(p: Any, log10_p: Any = None) -> str:
    """A p-value for people: plain when representable, 10^x when it underflowed to 0."""
    v = finite(p)
    lg = finite(log10_p)
    if v is not None and v > 0:
        return f"{v:.3g}"
    if lg is not None:
        return f"10^{lg:.1f}"
    if v == 0:
        return "< 1e-300"
    return "n/a"


def print_eval_table(report: dict) -> None:
    """The distillation-quality table of ``distill eval`` (one row per model)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distillation quality on {report['n_questions']} held-out questions")
    for col in (
        "model",
        "params",
        "ppl",
        "bits/byte",
        "agreement",
        "F1 vs teacher",
        "F1 vs docs",
        "identity",
    ):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in report["models"].items():
        agree = "n/a" if m["agreement"] is None else f"{m['agreement']:.3f}"
        table.add_row(
            name, f"{m['params'] / 1e6:.2f}M", f"{m['heldout_ppl']:.2f}", f"{m['heldout_bpb']:.3f}", agree,
            f"{m['f1_teacher']:.3f}", f"{m['f1_reference']:.3f}", f"{m['identity_rate']:.2f}",
        )  # fmt: skip
    Console().print(table)


def print_audit_summary(summary: dict[str, Any]) -> None:
    """The tests table, verdict and bundle paths of ``audit run`` (``summary``: its JSON document)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    colour = {"distilled": "bold red", "no_evidence": "bold green"}.get(summary["verdict"], "bold yellow")
    table = Table(title="audit tests")
    for col in ("test", "statistic", "n", "p-value", "caveats"):
        table.add_column(col, justify="left" if col in ("test", "caveats") else "right")
    for t in summary["tests"]:
        stat = t.get("statistic")
        table.add_row(
            str(t["name"]), "n/a" if stat is None else f"{stat:.4g}", str(t.get("n")),
            format_p(t.get("p_value"), t.get("log10_p_value")), str(len(t.get("caveats") or [])),
        )  # fmt: skip
    console.print(table)
    console.print(
        f"verdict: [{colour}]{summary['verdict']}[/] (combined p = "
        f"{format_p(summary['combined_p_value'])}, alpha = {summary['alpha']:g})"
    )
    if summary["verdict"] == "distilled" and summary.get("meaning"):
        console.print(f"{summary['meaning']} (see the report for what it does not tell apart)")
    console.print(f"bundle: {summary['bundle']} (signed by {summary['signer']})")
    console.print(f"report: {summary['report']}")

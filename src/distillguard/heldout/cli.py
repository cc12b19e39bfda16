"""``distillguard heldout ...``: generate held-out traffic through a gateway, retime its export.

Importing this module is cheap (no model library, no HTTP client): the commands import what they use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

app = typer.Typer(
    help="Held-out traffic written without the monitor's code: labelled users and campaigns via a gateway.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("generate")
def generate_cmd(
    gateway: str = typer.Option(..., help="Gateway base URL (trusting this client: --trusted-proxy)."),
    admin_token: str = typer.Option(
        None, help="Admin token, to create accounts and keys.", envvar="DISTILLGUARD_ADMIN_TOKEN"
    ),
    out: Path = typer.Option(..., help="Directory for labels.json, population.json, schedule.jsonl."),
    size: str = typer.Option("small", help="small, medium or month (medium's accounts, 30 days)."),
    seed: int = typer.Option(0, help="Population seed (same seed, same accounts and plan)."),
    duration: float = typer.Option(
        None, help="Real seconds for the whole simulated span (0: as fast as possible; default per size)."
    ),
    concurrency: int = typer.Option(8, min=1, help="Requests in flight."),
    prompts: Path = typer.Option(None, help="A world prompt pool (JSONL with `api`) for the API names."),
    model: str = typer.Option(None, help="Model id (default: the first the gateway lists)."),
    max_tokens_cap: int = typer.Option(None, min=1, help="Clip every request's max_tokens (small models)."),
    generator: str = typer.Option(
        "heldout", help="heldout (the first generator) or heldout2 (a second one, written apart from both)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Create a labelled population's accounts and send its traffic through a real gateway."""
    from distillguard.heldout.drive import generate

    summary = generate(
        gateway,
        admin_token or os.environ.get("DISTILLGUARD_ADMIN_TOKEN", ""),
        out,
        size,
        seed,
        duration=duration,
        concurrency=concurrency,
        prompts=prompts,
        model=model,
        max_tokens_cap=max_tokens_cap,
        log=None if json_out else (lambda m: typer.echo(m, err=True)),
        generator=generator,
    )
    if json_out:
        typer.echo(json.dumps(summary, sort_keys=True))
        return
    typer.echo(
        f"{summary['accounts']} accounts, {summary['requests']} requests in {summary['wall_s']} s "
        f"(statuses {summary['statuses']}); labels in {out / 'labels.json'}"
    )
    typer.echo(
        "next: distillguard ledger export --out DIR; "
        f"distillguard heldout retime --parquet DIR/ledger.parquet --schedule {out / 'schedule.jsonl'}"
    )


@app.command("retime")
def retime_cmd(
    parquet: Path = typer.Option(..., help="ledger.parquet from `distillguard ledger export`."),
    schedule: Path = typer.Option(..., help="schedule.jsonl written by `heldout generate`."),
    out: Path = typer.Option(
        None,
        help="Output Parquet (default: sim/ledger.parquet beside the input: a directory of its own, so "
        "a scan of it never reads the wall-clock export too).",
    ),
    population: Path = typer.Option(
        None,
        help="population.json of the run: also write accounts.parquet (simulated sign-ups) beside the output "
        "(default: the one next to the schedule, if any).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Rewrite an export's timestamps onto the simulated clock of the run."""
    from distillguard.heldout.retime import retime

    target = out or parquet.parent / "sim" / "ledger.parquet"
    if population is None and (schedule.parent / "population.json").is_file():
        population = schedule.parent / "population.json"
    result = retime(parquet, schedule, target, population=population)
    if json_out:
        typer.echo(json.dumps({"path": str(target), **result}))
    else:
        typer.echo(f"{target}: {result['rows']} rows, {result['matched']} on the schedule")

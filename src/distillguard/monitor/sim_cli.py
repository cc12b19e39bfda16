"""``distillguard simulate``: labelled traffic against a running gateway, or a synthetic ledger.

Three modes, one command (the output directory always receives ``labels.json``):

* HTTP (default): ``--gateway URL`` with ``--admin-token`` (or ``--accounts-db`` for the gateway's own
  account store). The gateway must trust the simulator's address as a proxy (``distillguard serve
  --trusted-proxy 127.0.0.1/32`` on one host) or the ledger records the simulator's IP for everyone.
* ``--synthetic --ledger PATH``: the same scenario written straight into a new ledger with simulated
  timestamps (``--accounts-db`` also backdates the accounts and keys into a store).
* ``--synthetic --rows N``: a large synthetic ledger streamed to ``OUT/ledger.parquet`` (scale benchmarks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from distillguard.errors import UserError


def simulate_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory for labels.json and simulation.json.")],
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            help="Gateway base URL (e.g. http://127.0.0.1:8000). Start the gateway with the simulator's "
            "address trusted: --trusted-proxy 127.0.0.1/32.",
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option("--admin-token", envvar="DISTILLGUARD_ADMIN_TOKEN", help="Create accounts via /admin."),
    ] = None,
    accounts_db: Annotated[
        Path | None,
        typer.Option("--accounts-db", help="Create accounts directly in this account store (the gateway's)."),
    ] = None,
    scale: Annotated[str, typer.Option("--scale", help="tiny, small, medium or large.")] = "small",
    seed: Annotated[int, typer.Option("--seed", help="Scenario seed (same seed, same traffic).")] = 0,
    days: Annotated[
        float | None, typer.Option("--days", help="Simulated days (default: the scale's).")
    ] = None,
    persona: Annotated[
        list[str] | None, typer.Option("--persona", help="Only these personas (repeat).")
    ] = None,
    world: Annotated[
        Path | None, typer.Option("--world", help="World directory for the texts (default: the built world).")
    ] = None,
    time_scale: Annotated[
        float | None,
        typer.Option("--time-scale", help="Simulated seconds per real second; 0: as fast as possible."),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Real seconds for the whole simulated span (default 120)."),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight.")] = 16,
    model: Annotated[
        str | None, typer.Option("--model", help="Model id (default: the first listed).")
    ] = None,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Write a synthetic ledger instead of calling a gateway.")
    ] = False,
    ledger: Annotated[
        Path | None, typer.Option("--ledger", help="With --synthetic: the new ledger database to write.")
    ] = None,
    rows: Annotated[
        int | None,
        typer.Option(
            "--rows", min=1000, help="With --synthetic: stream this many rows to OUT/ledger.parquet."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML config (its secret signs the synthetic ledger).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal).")
    ] = None,
) -> None:
    """Replay labelled benign and attacker personas against a gateway (or write them as a ledger)."""
    from distillguard.monitor.scenario import resolve_scale
    from distillguard.monitor.simworld import load_pools

    show = sys.stderr.isatty() if progress is None else progress
    if synthetic:
        if gateway is not None or admin_token is not None:
            raise UserError("--synthetic writes a ledger; it takes no --gateway or --admin-token")
        if (ledger is None) == (rows is None):
            raise UserError("--synthetic needs exactly one of --ledger PATH or --rows N")
        if rows is not None:
            _parquet(out, rows, seed, days, world, show, as_json)
        else:
            assert ledger is not None
            _ledger(out, ledger, accounts_db, config, scale, seed, days, persona, world, as_json)
        return
    if gateway is None:
        raise UserError("give --gateway URL (or --synthetic)")
    if ledger is not None or rows is not None:
        raise UserError("--ledger and --rows need --synthetic")
    if (admin_token is None) == (accounts_db is None):
        raise UserError("give --admin-token (admin API) or --accounts-db (the gateway's store), not both")
    if time_scale is not None and duration is not None:
        raise UserError("give --time-scale or --duration, not both")
    from distillguard.monitor.scenario import build_scenario
    from distillguard.monitor.simulate import simulate

    resolve_scale(scale)
    scen = build_scenario(scale, seed=seed, pools=load_pools(world), days=days, personas=persona)
    store = _store(accounts_db, config) if accounts_db is not None else None
    bar = _bar(len(scen.events), "requests", show)
    try:
        result = simulate(
            gateway,
            out=out,
            admin_token=admin_token,
            account_store=store,
            scenario=scen,
            time_scale=time_scale or 0.0,
            duration=None if time_scale is not None else (duration or 120.0),
            concurrency=concurrency,
            model=model,
            progress=bar.update_to,
        )
    finally:
        bar.close()
        if store is not None:
            store.close()
    summary = {
        "out": str(result.out_dir),
        "labels": str(result.labels_path),
        "log": str(result.log_path),
        "model": result.model,
        "events": result.events,
        "requests": result.requests,
        "ok": result.ok,
        "elapsed_s": round(result.elapsed_s, 2),
        "time_scale": round(result.time_scale, 3),
        "personas": result.by_persona(),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _table(result.by_persona(), f"{result.requests} requests, {result.ok} answered, {result.elapsed_s:.1f} s")
    typer.echo(f"labels: {result.labels_path}\nlog:    {result.log_path}")


def _store(path: Path, config: Path | None) -> Any:
    from distillguard.config import load_config
    from distillguard.gateway.accounts import SQLiteAccountStore, gateway_secret

    return SQLiteAccountStore(path.expanduser(), gateway_secret(load_config(config)))


def _ledger(
    out: Path,
    ledger: Path,
    accounts_db: Path | None,
    config: Path | None,
    scale: str,
    seed: int,
    days: float | None,
    persona: list[str] | None,
    world: Path | None,
    as_json: bool,
) -> None:
    from distillguard.config import load_config
    from distillguard.gateway.accounts import gateway_secret
    from distillguard.gateway.ledger import Ledger
    from distillguard.monitor.scenario import build_scenario
    from distillguard.monitor.simworld import load_pools
    from distillguard.monitor.synth import synthesize_ledger

    pools = load_pools(world)
    scen = build_scenario(scale, seed=seed, pools=pools, days=days, personas=persona)
    store = _store(accounts_db, config) if accounts_db is not None else None
    secret = gateway_secret(load_config(config))
    try:
        path = synthesize_ledger(
            ledger, scenario=scen, pools=pools, secret=secret, accounts=store, labels=out / "labels.json"
        )
    finally:
        if store is not None:
            store.close()
    lg = Ledger(path, secret=secret)
    records = lg.count()
    lg.close()
    summary = {
        "ledger": str(path),
        "labels": str(out / "labels.json"),
        "records": records,
        "accounts": len(scen.accounts),
        "personas": [{"persona": k, **v} for k, v in sorted(scen.summary().items())],
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    rows = [{"persona": k, **v} for k, v in sorted(scen.summary().items())]
    _table(rows, f"{records} records in {path}")
    typer.echo(f"labels: {out / 'labels.json'}")


def _parquet(
    out: Path, rows: int, seed: int, days: float | None, world: Path | None, show: bool, as_json: bool
) -> None:
    import time

    from distillguard.monitor.simworld import load_pools
    from distillguard.monitor.synth import synthesize_parquet

    bar = _bar(rows, "rows", show)
    t0 = time.perf_counter()
    try:
        path = synthesize_parquet(
            out, rows, seed=seed, days=days or 30.0, pools=load_pools(world), progress=bar.update_to
        )
    finally:
        bar.close()
    summary = {
        "parquet": str(path),
        "labels": str(out / "labels.json"),
        "accounts": str(out / "accounts.parquet"),
        "rows": rows,
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"{rows} rows -> {path} ({summary['bytes'] / 1e6:.1f} MB, {summary['seconds']} s)")


class _Bar:
    def __init__(self, total: int, unit: str, show: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit=unit, disable=not show, file=sys.stderr, dynamic_ncols=True)

    def update_to(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _bar(total: int, unit: str, show: bool) -> _Bar:
    return _Bar(total, unit, show)


def _table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        typer.echo(title)
        return
    table = Table(title=title)
    columns = list(rows[0])
    for c in columns:
        table.add_column(c, justify="left" if c in ("persona", "kind") else "right")
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    Console().print(table)

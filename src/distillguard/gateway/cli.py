"""Admin commands: ``distillguard keys ...``, ``distillguard accounts ...``, ``distillguard ledger ...``.

They open the same account store, ledger and secret as ``distillguard serve`` through the same config
(``--config FILE``, ``DISTILLGUARD_*``; ``database_url`` names the database: the embedded SQLite files or a
PostgreSQL server shared by every replica), and act on it directly: every running gateway sees revocations,
bans and tier changes on its next request because it reads the store on every request.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from distillguard.config import load_config
from distillguard.errors import UserError
from distillguard.gateway.accounts import AccountStore, Limits, account_store_from_config
from distillguard.gateway.tiers import tier_names

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts: ban, unban, tier, limits, list, show.", no_args_is_help=True)
ledger_app = typer.Typer(help="The query ledger: verify, export, head.", no_args_is_help=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML config (the one `distillguard serve` uses).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
LimitOpt = Annotated[int | None, typer.Option(min=1, show_default=False)]


def _config(path: Path | None) -> dict[str, Any]:
    return load_config(path)


def _store(path: Path | None) -> AccountStore:
    """The configured store, closed when the command ends (a Postgres store holds a connection pool)."""
    store = account_store_from_config(_config(path))
    _close_with_command(store)
    return store


_opened: list[Any] = []  # stores and ledgers opened by the running command


def _close_with_command(resource: Any) -> None:
    """Close ``resource`` when the running command ends (a Postgres store holds a connection pool; the
    process may live on: tests and tools call ``main()`` in process)."""
    _opened.append(resource)


def _close_opened() -> None:
    while _opened:
        _opened.pop().close()


def _closes_what_it_opens(ctx: typer.Context) -> None:
    ctx.call_on_close(_close_opened)


for _app in (keys_app, accounts_app, ledger_app):
    _app.callback()(_closes_what_it_opens)


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _limits_text(limits: dict[str, int | None]) -> str:
    parts = [f"{k}={v}" for k, v in limits.items() if v is not None]
    return " ".join(parts) or "unlimited"


# -- keys ---------------------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option("--account", help="Account the key belongs to (created if new).")],
    org: Annotated[str | None, typer.Option("--org", help="Organisation of a new account.")] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute (this key).")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute (this key).")] = None,
    daily_tokens: Annotated[
        int | None, typer.Option("--daily-tokens", min=1, help="Tokens per UTC day (this key).")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", min=1, help="Requests in flight at once (this key).")
    ] = None,
    expires_in_days: Annotated[
        float | None, typer.Option("--expires-in-days", help="Expire the key after this many days.")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Allowed model (repeat); default: every model.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key. The key is printed once and never stored (only its HMAC is)."""
    expires_at = None
    if expires_in_days is not None:
        if not expires_in_days > 0:
            raise UserError(f"--expires-in-days must be positive (got {expires_in_days})")
        expires_at = time.time() + expires_in_days * 86400
    key, key_id = _store(config).create_key(
        account,
        org=org,
        rpm=rpm,
        tpm=tpm,
        daily_tokens=daily_tokens,
        max_concurrent=max_concurrent,
        expires_at=expires_at,
        models=model or None,
        name=name,
    )
    if as_json:
        _print_json({"key": key, "key_id": key_id})
        return
    typer.echo(f"key:    {key}\nkey_id: {key_id}")
    print("Store the key now: it is not kept and cannot be shown again.", file=sys.stderr)


@keys_app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option("--account", help="Only this account's keys.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List keys (ids and metadata only: keys are not stored)."""
    keys = _store(config).list_keys(account)
    if as_json:
        _print_json({"keys": keys})
        return
    table = Table("key_id", "account", "org", "name", "status", "created", "expires", "models", "limits")
    for k in keys:
        table.add_row(
            k["key_id"],
            k["account"],
            k["org"] or "-",
            k["name"] or "-",
            k["status"],
            _when(k["created"]),
            _when(k["expires_at"]),
            ",".join(k["models"]) if k["models"] else "all",
            _limits_text(k["limits"]),
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (key_...), as shown by `keys list`.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key: its next request is refused with 401."""
    _store(config).revoke_key(key_id)
    if as_json:
        _print_json({"key_id": key_id, "status": "revoked"})
    else:
        typer.echo(f"revoked {key_id}")


# -- accounts -----------------------------------------------------------------------------------------------


@accounts_app.command("ban")
def accounts_ban(
    name: Annotated[str, typer.Argument(help="Account name.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept with the account).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ban an account: all its keys are refused with 403 from the next request on."""
    store = _store(config)
    store.ban(name, reason=reason)
    _account_done(store, name, as_json, f"banned {name}")


@accounts_app.command("unban")
def accounts_unban(
    name: Annotated[str, typer.Argument(help="Account name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Lift a ban (the account keeps its tier)."""
    store = _store(config)
    store.unban(name)
    _account_done(store, name, as_json, f"unbanned {name}")


@accounts_app.command("tier")
def accounts_tier(
    name: Annotated[str, typer.Argument(help="Account name.")],
    tier: Annotated[str, typer.Argument(help=f"One of: {', '.join(tier_names())}.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the tier history).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set an account's policy tier (its place on the response ladder)."""
    store = _store(config)
    store.set_tier(name, tier, reason=reason, actor="cli")
    _account_done(store, name, as_json, f"{name}: tier {tier}")


@accounts_app.command("limits")
def accounts_limits(
    name: Annotated[str, typer.Argument(help="Account name.")],
    rpm: Annotated[
        int | None, typer.Option("--rpm", min=0, help="Requests per minute; 0 = unlimited.")
    ] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=0, help="Tokens per minute; 0 = unlimited.")] = None,
    daily_tokens: Annotated[
        int | None, typer.Option("--daily-tokens", min=0, help="Tokens per UTC day; 0 = unlimited.")
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", min=0, help="Requests in flight; 0 = unlimited.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set account-wide limits shared by all its keys; options not given keep their value."""
    store = _store(config)
    current = store.get_account(name)["limits"]
    given = {"rpm": rpm, "tpm": tpm, "daily_tokens": daily_tokens, "max_concurrent": max_concurrent}
    for field, value in given.items():
        if value is not None:
            current[field] = value or None
    store.set_account_limits(name, Limits(**current))
    _account_done(store, name, as_json, f"{name}: {_limits_text(current)}")


def _account_done(store: AccountStore, name: str, as_json: bool, text: str) -> None:
    if as_json:
        _print_json(store.get_account(name))
    else:
        typer.echo(text)


@accounts_app.command("list")
def accounts_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List accounts with their tier, ban state, limits and number of active keys."""
    accounts = _store(config).list_accounts()
    if as_json:
        _print_json({"accounts": accounts})
        return
    table = Table("account", "org", "tier", "banned", "active keys", "limits", "created")
    for a in accounts:
        table.add_row(
            a["name"],
            a["org"] or "-",
            a["tier"],
            "yes" if a["banned"] else "no",
            str(a["active_keys"]),
            _limits_text(a["limits"]),
            _when(a["created"]),
        )
    Console().print(table)


def _policy_text(policy: dict) -> str:
    lp = policy["logprobs"]
    defence = policy["sampling_defence"]
    parts = [
        "logprobs "
        + ("refused" if not lp.get("allowed", True) else f"reported {lp.get('reported', '')}".strip()),
        "sampling " + " ".join(str(defence[k]) for k in ("name", "strength") if k in defence),
    ]
    if defence.get("applied") is False:
        parts[-1] += f" (not applied: {defence['why']})"
    mark = policy["watermark"]
    if mark is not None:
        parts.append("watermark " + (", ".join(f"{k} {v}" for k, v in mark.items()) or "as configured"))
    return ", ".join(parts)


@accounts_app.command("show")
def accounts_show(
    name: Annotated[str, typer.Argument(help="Account name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Everything about one account: tier, ban, limits, keys and tier history."""
    from distillguard.gateway.settings import GatewaySettings
    from distillguard.gateway.tiers import TierSettings, get_tier

    info = _store(config).get_account(name)
    # what the account's tier does to its answers, under this installation's settings
    info["policy"] = get_tier(info["tier"]).policy(TierSettings.from_settings(GatewaySettings.load(config)))
    if as_json:
        _print_json(info)
        return
    console = Console()
    ban = (
        f"yes ({info['ban_reason']})"
        if info["banned"] and info["ban_reason"]
        else str(info["banned"]).lower()
    )
    console.print(f"[bold]{info['name']}[/bold]  org={info['org'] or '-'}  tier={info['tier']}  banned={ban}")
    console.print(f"limits: {_limits_text(info['limits'])}")
    console.print(f"policy: {_policy_text(info['policy'])}")
    keys = Table("key_id", "name", "status", "created", "expires", "models", "limits", title="keys")
    for k in info["keys"]:
        keys.add_row(
            k["key_id"],
            k["name"] or "-",
            k["status"],
            _when(k["created"]),
            _when(k["expires_at"]),
            ",".join(k["models"]) if k["models"] else "all",
            _limits_text(k["limits"]),
        )
    console.print(keys)
    if info["tier_history"]:
        hist = Table("when", "from", "to", "actor", "reason", title="tier history")
        for h in info["tier_history"]:
            hist.add_row(_when(h["ts"]), h["previous"] or "-", h["tier"], h["actor"], h["reason"] or "-")
        console.print(hist)


# -- ledger -------------------------------------------------------------------------------------------------


def _ledger(config_path: Path | None):  # -> LedgerStore, closed when the command ends
    from distillguard.gateway.ledger import ledger_from_config
    from distillguard.gateway.storage_settings import StorageSettings

    storage = StorageSettings.from_config(_config(config_path))
    if not storage.is_postgres:
        path = storage.ledger_file()
        if not path.is_file():
            raise UserError(f"no ledger at {path} (set database_url or ledger_path in the config)")
    ledger = ledger_from_config(storage)
    _close_with_command(ledger)
    return ledger


@ledger_app.command("verify")
def ledger_verify(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check the hash chain, signatures and head; exit 1 naming the first bad record if tampered.

    A shared (PostgreSQL) ledger has a chain per replica: each is checked and reported, each bad one named."""
    from distillguard.gateway.chain import chains_json
    from distillguard.gateway.pg import mask_url

    ledger = _ledger(config)
    reports = ledger.verify_chains()
    bad = [r for r in reports if not r.ok]
    if as_json:
        _print_json(chains_json(reports))
    elif not bad and len(reports) == 1 and reports[0].chain is None:
        r = reports[0]
        typer.echo(f"ledger intact: {r.records} records, head {(r.head_hash or '')[:16]}")
    elif not bad:
        typer.echo(f"ledger intact: {sum(r.records for r in reports)} records in {len(reports)} chains")
    else:
        for r in reports:
            if r.ok:
                typer.echo(f"chain {r.chain} intact: {r.records} records")
    for r in bad:
        db = str(ledger.path) if hasattr(ledger, "path") else mask_url(ledger.url)
        where = f"record {r.first_bad_seq}" if r.first_bad_seq is not None else db
        print(f"error: ledger {where}: {r.reason}", file=sys.stderr)
    if bad:
        sys.exit(1)  # not typer.Exit: in main()'s non-standalone mode click returns its code instead


@ledger_app.command("export")
def ledger_export(
    out: Annotated[Path, typer.Option("--out", help="Directory to write ledger.parquet into.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export every record to Parquet (for DuckDB, pandas, Spark)."""
    import pyarrow.parquet as pq

    path = _ledger(config).export_parquet(out)
    count = pq.ParquetFile(path).metadata.num_rows
    if as_json:
        _print_json({"path": str(path), "records": count})
    else:
        typer.echo(f"wrote {count} records to {path}")


@ledger_app.command("head")
def ledger_head(config: ConfigOpt = None) -> None:
    """Print the signed head (count, last hash, signature) as JSON, to be kept somewhere else (a shared
    ledger: every replica's chain head)."""
    ledger = _ledger(config)
    _print_json({"chains": ledger.heads()} if hasattr(ledger, "heads") else ledger.head())

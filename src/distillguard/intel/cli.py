"""``distillguard intel ...``: export, import, publish, pull and list shared distillation-campaign intel."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from distillguard.config import load_config
from distillguard.errors import UserError

app = typer.Typer(
    help="Threat-intel sharing between providers: STIX 2.1 bundles over TAXII 2.1.", no_args_is_help=True
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config (the one `serve` uses).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
TaxiiOpt = Annotated[
    str | None, typer.Option("--taxii", help="TAXII 2.1 API root URL (default: config intel_taxii_url).")
]
CollectionOpt = Annotated[
    str | None, typer.Option("--collection", help="Collection id (default: config intel_taxii_collection).")
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Only campaigns active since: 7d, 12h or an ISO date/time.")
]
TlpOpt = Annotated[
    str | None,
    typer.Option("--tlp", help="TLP 2.0 marking: clear, green, amber (default), amber+strict, red."),
]


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _server(cfg: dict[str, Any], taxii: str | None, collection: str | None) -> tuple[str, str]:
    from distillguard.intel.settings import IntelSettings

    s = IntelSettings.from_config(cfg, taxii_url=taxii or None, taxii_collection=collection or None)
    url, col = s.taxii_url, s.taxii_collection
    if not url or not col:
        raise UserError(
            "give --taxii URL and --collection ID (or config intel_taxii_url / intel_taxii_collection)"
        )
    return str(url), str(col)


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", help="Where to write the STIX bundle (FILE.json).")],
    since: SinceOpt = None,
    tlp: TlpOpt = None,
    ledger: Annotated[
        Path | None, typer.Option("--ledger", help="Ledger database (default: the gateway's).")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the monitor's current campaigns as a signed STIX 2.1 bundle (+ FILE.json.sig)."""
    from distillguard.intel.jobs import export_bundle

    doc = export_bundle(load_config(config), out, since=since, tlp=tlp, ledger=ledger)
    if as_json:
        _print(doc)
    else:
        typer.echo(
            f"{doc['campaigns']} campaign(s), {doc['templates']} template fingerprints, {doc['networks']} "
            f"network(s), TLP:{doc['tlp'].upper()}, signed by {doc['signer']}: {doc['bundle']}"
        )


@app.command("import")
def import_cmd(
    bundle: Annotated[Path, typer.Argument(help="A STIX bundle written by `intel export` (FILE.json).")],
    public_key: Annotated[
        list[Path] | None, typer.Option("--public-key", help="Trust this signer (PEM); repeatable.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a bundle's signature and TLP marking and keep it: `monitor scan` then uses it."""
    from distillguard.intel.jobs import import_bundle

    doc = import_bundle(load_config(config), bundle, public_keys=public_key or [])
    if as_json:
        _print(doc)
    else:
        typer.echo(
            f"imported {doc['campaigns']} campaign(s) from {', '.join(doc['sources'])} "
            f"(signer {', '.join(doc['signers'])})"
        )


@app.command("publish")
def publish_cmd(
    taxii: TaxiiOpt = None,
    collection: CollectionOpt = None,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="Publish this bundle (default: export the current one).")
    ] = None,
    since: SinceOpt = None,
    tlp: TlpOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a signed bundle to a TAXII 2.1 collection."""
    from distillguard.intel.jobs import export_bundle, read_bundle
    from distillguard.intel.store import intel_dir
    from distillguard.intel.taxii import publish

    cfg = load_config(config)
    url, col = _server(cfg, taxii, collection)
    if bundle is None:
        bundle = intel_dir(cfg) / "exports" / f"bundle-{time.strftime('%Y%m%dT%H%M%S')}.json"
        export_bundle(cfg, bundle, since=since, tlp=tlp)
    objects, _ = read_bundle(bundle)
    doc = publish(cfg, {"objects": objects}, url, col)
    doc["bundle"] = str(bundle)
    if as_json:
        _print(doc)
    else:
        typer.echo(
            f"published {doc['success']} of {doc['total']} objects to {doc['collection']} ({doc['status']})"
        )


@app.command("pull")
def pull_cmd(
    taxii: TaxiiOpt = None,
    collection: CollectionOpt = None,
    full: Annotated[bool, typer.Option("--full", help="Ignore the saved position: read everything.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch new objects of a TAXII 2.1 collection (added_after the last pull), verify and import them."""
    from distillguard.intel.taxii import pull

    cfg = load_config(config)
    url, col = _server(cfg, taxii, collection)
    doc = pull(cfg, url, col, full=full)
    if as_json:
        _print(doc)
        return
    typer.echo(
        f"{doc['objects']} object(s) since {doc['added_after'] or 'the start'}: imported {doc['imported']} "
        f"signed report(s), {doc['campaigns']} campaign(s)"
    )
    for p in doc["problems"]:
        typer.echo(f"skipped {p}", err=True)


@app.command("list")
def list_cmd(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The imported campaigns the monitor matches against."""
    from distillguard.intel.store import IntelStore

    camps = IntelStore.open(load_config(config)).campaigns()
    rows = [
        {
            "campaign": c.campaign_id,
            "name": c.name,
            "source": c.source,
            "confidence": c.confidence,
            "tlp": c.tlp,
            "templates": len(c.templates),
            "networks": len(c.networks),
            "indicator": c.indicator_id,
        }
        for c in camps
    ]
    if as_json:
        _print(rows)
        return
    for r in rows:
        typer.echo(
            f"{r['name']:<40} {r['source']:<24} conf {r['confidence']:>3} TLP:{r['tlp'].upper():<12} "
            f"{r['templates']} templates, {r['networks']} networks"
        )

"""The demo's intel chapter: Northwind shares Copycat's campaign; a second provider blocks Copycat early.

Contoso, another provider in the same world, has its own customers (simulated with the monitor's personas)
and its own benign reference. Copycat comes back to Contoso with fresh accounts and the same tooling: the
first few requests of each of its Northwind accounts, replayed at Contoso under new names. Contoso's
monitor scans them twice, before and after importing Northwind's signed bundle.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DEMO_TRUST_KEY = "northwind-contoso-trust-group-2026"
RETURN_QUERIES = 6  # requests per returning Copycat account at Contoso


def _contoso_ledger(path: Path, northwind_ledger: Path, secret: bytes, seed: int) -> list[str]:
    """Contoso's customers (synthetic) and Copycat's return: its first requests under fresh names."""
    from distillguard.gateway.ledger import Ledger
    from distillguard.monitor.personas import BENIGN
    from distillguard.monitor.scenario import SCALES, build_scenario
    from distillguard.monitor.synth import synthesize_ledger

    scen = build_scenario("tiny", seed=seed + 77, personas=BENIGN)
    synthesize_ledger(path, scenario=scen, secret=secret, labels=path.with_name("labels.json"))
    end = scen.clock.start + SCALES["tiny"].days * 86400.0
    src = Ledger(northwind_ledger)
    firsts: dict[str, list[dict]] = {}
    try:
        for r in src.iter_records():
            a = r.get("account") or ""
            if a.startswith("cc-") and r.get("decision") == "admitted":
                firsts.setdefault(a, [])
                if len(firsts[a]) < RETURN_QUERIES:
                    firsts[a].append(r)
    finally:
        src.close()
    out = []
    for i, (_, recs) in enumerate(sorted(firsts.items()), 1):
        for j, r in enumerate(recs):
            rec = {k: v for k, v in r.items() if k not in ("seq", "prev_hash", "hash", "sig")}
            t = end + 60.0 * i + 20.0 * j
            rec.update(account=f"cx-{i:02d}", key_id=f"key_{secrets.token_hex(6)}", ts=t, ts_start=t,
                       ts_end=t + 1.0, request_id=secrets.token_hex(16))  # fmt: skip
            out.append(rec)
    dst = Ledger(path, secret=secret)
    try:
        dst.append_many(out)
    finally:
        dst.close()
    return sorted({r["account"] for r in out})


def intel_chapter(console: Console, *, out_dir: Path, seed: int = 0) -> dict[str, Any]:
    from distillguard.audit.bundle import generate_signing_key, public_path
    from distillguard.config import load_config
    from distillguard.intel.jobs import export_bundle, import_bundle
    from distillguard.monitor import jobs
    from distillguard.monitor.personas import BENIGN
    from distillguard.monitor.synth import synthesize_ledger

    console.rule("[bold]Northwind shares Copycat's campaign; Contoso blocks Copycat early")
    intel = Path(out_dir) / "intel"
    intel.mkdir(parents=True, exist_ok=True)
    northwind = load_config(Path(out_dir) / "monitor" / "monitor.toml")
    key = intel / "northwind_signing_key.pem"
    if not key.exists():
        generate_signing_key(key)
    northwind |= {"intel_trust_key": DEMO_TRUST_KEY, "intel_provider_name": "Northwind Labs",
                  "intel_signing_key": str(key), "intel_dir": str(intel / "northwind")}  # fmt: skip
    bundle = intel / "northwind-copycat.json"
    exported = export_bundle(northwind, bundle, tlp="amber")
    console.print(
        f"Northwind exports {exported['campaigns']} campaign(s): {exported['templates']} keyed template "
        f"fingerprints, {exported['networks']} network(s), TLP:AMBER, signed {exported['signer'][:23]}..."
    )
    c_dir = intel / "contoso"
    c_dir.mkdir(parents=True, exist_ok=True)
    for f in [*c_dir.glob("*.db*"), *c_dir.glob("intel/imported/*.json")]:  # a fresh Contoso each run
        f.unlink()
    secret = secrets.token_hex(16)
    contoso = {
        "secret": secret,
        "ledger_path": str(c_dir / "ledger.db"),
        "monitor_dir": str(c_dir / "monitor"),
        "monitor_reference": str(c_dir / "reference.npz"),
        "intel_dir": str(c_dir / "intel"),
        "intel_trust_key": DEMO_TRUST_KEY,
        "accounts_path": str(c_dir / "accounts.db"),
    }
    history = c_dir / "history.db"
    synthesize_ledger(history, scale="small", seed=seed + 55, personas=BENIGN, labels=c_dir / "history.json")
    jobs.calibrate(contoso, ledger=history)
    returning = _contoso_ledger(c_dir / "ledger.db", Path(northwind["ledger_path"]), secret.encode(), seed)
    before = {a["account"]: a for a in jobs.scan(contoso)["accounts"]}
    imported = import_bundle(contoso, bundle, public_keys=[public_path(key)])
    after = {a["account"]: a for a in jobs.scan(contoso)["accounts"]}
    table = Table(title=f"Contoso: Copycat returns with fresh accounts ({RETURN_QUERIES} requests each)")
    for col in ("account", "queries", "tier without intel", "tier with Northwind's intel", "reason"):
        table.add_column(col)
    for a in returning:
        reason = next((r for r in after[a]["reasons"] if r.startswith("intel:")), "")
        table.add_row(a, str(after[a]["queries"]), before[a]["tier"], after[a]["tier"], reason[:80])
    console.print(table)
    customers = [a for a in after if a not in returning]
    moved = [a for a in customers if after[a]["tier"] != before[a]["tier"]]
    console.print(f"Contoso's {len(customers)} customers: {len(moved)} changed tier after the import")
    doc = {
        "export": {k: exported[k] for k in ("campaigns", "templates", "networks", "tlp", "signer")},
        "imported": imported["campaigns"],
        "returning": {
            a: {"without": before[a]["tier"], "with": after[a]["tier"], "reasons": after[a]["reasons"][:2]}
            for a in returning
        },  # fmt: skip
        "customers": len(customers),
        "customers_moved": len(moved),
    }
    (intel / "chapter.json").write_text(json.dumps(doc, indent=1))
    return doc

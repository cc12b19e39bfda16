"""The intel workflows as library calls: export the monitor's campaigns as a signed STIX bundle, verify and
import a bundle. ``distillguard intel ...``, the benchmark and the demo all run these."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distillguard.errors import UserError
from distillguard.intel.settings import IntelSettings
from distillguard.intel.store import IntelStore, trust_key


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """``7d``, ``12h``, ``30m`` (before now) or an ISO date/time; None: no bound."""
    if not value:
        return None
    now = time.time() if now is None else now
    v = value.strip()
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0}
    if v[-1:] in units and v[:-1].replace(".", "", 1).isdigit():
        return now - float(v[:-1]) * units[v[-1]]
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--since: expected e.g. 7d, 12h or 2024-06-03T00:00Z, got {value!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def flagged_campaigns(analysis: Any, tiers: dict[str, str], policy: Any) -> list[tuple[list[str], float]]:
    """Groups of accounts to share: every linked cluster with a flagged member (all its accounts: one
    operator), and every flagged account outside clusters. Returns (members, p-value) pairs."""
    base = policy.tiers[0]
    flagged = {a for a, t in tiers.items() if t != base and a in analysis.accounts}
    groups: list[tuple[list[str], float]] = []
    in_cluster: set[str] = set()
    for c in analysis.clusters:
        if flagged & set(c.accounts):
            p = min(
                [c.p_value] + [analysis.accounts[a].p_value for a in c.accounts if a in analysis.accounts]
            )
            groups.append((sorted(c.accounts), p))
            in_cluster |= set(c.accounts)
    for a in sorted(flagged - in_cluster):
        groups.append(([a], analysis.accounts[a].p_value))
    return groups


def campaign_facts(
    census: Any, groups: Sequence[tuple[list[str], float]], key: bytes, *, since: float | None = None
) -> list[Any]:
    from distillguard.intel.stix import CampaignFacts

    members_all = {a for m, _ in groups for a in m}
    benign = [a for a in census.accounts if a not in members_all]
    out = []
    for members, p in groups:
        members = [m for m in members if m in census.accounts]
        if not members:
            continue
        first, last, n = census.first_last(members)
        if since is not None and last < since:
            continue
        handle = hmac.new(key, "\0".join(sorted(members)).encode(), hashlib.sha256).hexdigest()
        out.append(
            CampaignFacts(
                key=handle,
                accounts=len(members),
                queries=n,
                first_ts=first,
                last_ts=last,
                p_value=p,
                templates=census.campaign_templates(members, benign),
                networks=census.campaign_network(members, benign),
                timing=census.campaign_timing(members),
            )
        )
    return out


def sign_and_wrap(
    objects: list[dict[str, Any]], provider_id: str, tlp: str, key_path: Path | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Add the signature report and wrap everything in a bundle; returns (bundle, signature document)."""
    import stix2

    from distillguard.intel.signing import sign_objects
    from distillguard.intel.stix import EXTENSION_ID, PROJECT_IDENTITY_ID, TLP

    # the extension definition and its author are fixed objects of the project, not this provider's claims
    signed = [o for o in objects if o["type"] != "extension-definition" and o["id"] != PROJECT_IDENTITY_ID]
    sig = sign_objects(signed, key_path)
    n_camp = sum(1 for o in objects if o["type"] == "campaign")
    report = stix2.Report(
        id=f"report--{uuid.uuid4()}",
        name=f"LLM distillation campaigns ({n_camp})",
        description="Signed set of distillation campaign indicators; the signature covers object_refs.",
        report_types=["campaign", "indicator", "attack-pattern"],
        published=datetime.now(tz=UTC),
        object_refs=sorted(o["id"] for o in signed),
        created_by_ref=provider_id,
        object_marking_refs=[TLP[tlp]],
        extensions={
            EXTENSION_ID: {"extension_type": "property-extension", "kind": "signature", "signature": sig}
        },
    )
    bundle = {
        "type": "bundle",
        "id": f"bundle--{uuid.uuid4()}",
        "objects": [*objects, json.loads(report.serialize())],
    }
    return bundle, sig


def export_bundle(
    config: dict[str, Any],
    out: Path,
    *,
    since: str | None = None,
    tlp: str | None = None,
    ledger: Path | None = None,
    parquet: Path | None = None,
) -> dict[str, Any]:
    """Scan (dry run, without imported intel), take the flagged campaigns and write ``out`` + ``out.sig``."""
    from distillguard.intel.census import Census
    from distillguard.intel.fingerprint import Keyring
    from distillguard.intel.stix import TLP, build_bundle
    from distillguard.monitor import jobs as mjobs
    from distillguard.monitor.decisions import DecisionLog, Policy
    from distillguard.monitor.report import plan_decisions
    from distillguard.monitor.scan import store_created

    settings = IntelSettings.from_config(config, tlp=tlp or None)
    tlp = settings.tlp
    if tlp not in TLP:
        raise UserError(f"--tlp: unknown TLP {tlp!r}; choose one of {', '.join(TLP)}")
    bound = parse_since(since)
    key = trust_key(config)
    policy = Policy.from_config(config)
    opts = mjobs.scan_options(config)
    ref = mjobs.load_reference(config, None, False)
    census = Census(Keyring(key), limit=settings.export_sample)
    batches, created = mjobs.open_source(ledger, parquet, config)
    acc = mjobs.read(census.tap(batches), opts)
    store = mjobs.open_store(config, create=False)
    if created is None and store is not None:
        created = store_created(store)
    analysis = mjobs.score(acc, ref, opts, created)
    store_tiers = {a["name"]: a["tier"] for a in store.list_accounts()} if store is not None else {}
    states, _ = DecisionLog.open_default(config).load_state()
    _, _, tiers = plan_decisions(analysis, policy, store_tiers, states, time.time())
    groups = flagged_campaigns(analysis, tiers, policy)
    facts = campaign_facts(census, groups, key, since=bound)
    cov = {} if settings.min_coverage is None else {"min_coverage": settings.min_coverage}
    objects, provider_id = build_bundle(facts, provider=settings.provider_name, tlp=tlp, **cov)
    key_path = Path(settings.signing_key) if settings.signing_key else None
    bundle, sig = sign_and_wrap(objects, provider_id, tlp, key_path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    sig_path = out.with_name(out.name + ".sig")
    sig_path.write_text(json.dumps(sig, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")
    return {
        "bundle": str(out),
        "signature": str(sig_path),
        "signer": sig["fingerprint"],
        "tlp": tlp,
        "campaigns": len(facts),
        "templates": sum(len(f.templates) for f in facts),
        "networks": sum(len(f.networks) for f in facts),
        "objects": len(bundle["objects"]),
    }


# --------------------------------------------------------------------------------------------------
# Import


def _trusted(config: dict[str, Any], public_keys: Iterable[Path | str] = ()) -> set[str]:
    from distillguard.audit.bundle import fingerprint, load_public_key

    out = set()
    for item in [*IntelSettings.from_config(config).trusted_keys, *public_keys]:
        s = str(item)
        out.add(s if s.startswith("sha256:") else fingerprint(load_public_key(s)))
    return out


def verify_objects_set(
    objects: list[dict[str, Any]],
    config: dict[str, Any],
    *,
    public_keys: Iterable[Path | str] = (),
    detached: dict[str, Any] | None = None,
    accept_tlp: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Check every signature report among ``objects`` (signature, trusted signer, TLP markings); returns one
    document per verified report, ready for :class:`IntelStore`. Raises UserError naming the first problem."""
    from distillguard.intel.signing import verify_objects
    from distillguard.intel.stix import EXTENSION_ID, PROJECT_IDENTITY_ID, TLP_BY_ID

    by_id: dict[str, dict] = {}
    for o in objects:
        if not isinstance(o, dict) or "id" not in o or "type" not in o:
            raise UserError("not a STIX bundle: an object lacks id or type")
        prev = by_id.get(o["id"])
        if prev is None or str(o.get("modified", "")) >= str(prev.get("modified", "")):
            by_id[o["id"]] = o
    reports = [
        o
        for o in by_id.values()
        if o["type"] == "report"
        and ((o.get("extensions") or {}).get(EXTENSION_ID) or {}).get("kind") == "signature"
    ]
    if not reports:
        raise UserError("no signed distillguard report in the bundle: refusing unsigned intel")
    trusted = _trusted(config, public_keys)
    accept = {t.lower() for t in (accept_tlp or IntelSettings.from_config(config).accept_tlp)}
    docs = []
    for rep in reports:
        sig = rep["extensions"][EXTENSION_ID].get("signature")
        missing = [r for r in rep.get("object_refs", []) if r not in by_id]
        if missing:
            raise UserError(f"{rep['id']}: {len(missing)} signed object(s) missing, e.g. {missing[0]}")
        signed = [by_id[r] for r in rep["object_refs"]]
        signer = verify_objects(signed, sig)
        if detached is not None and detached != sig:
            raise UserError("the detached signature file does not match the bundle's signature")
        if signer not in trusted:
            raise UserError(
                f"signer {signer} is not trusted: pass --public-key PEM or add its fingerprint to "
                "intel_trusted_keys"
            )
        levels = set()
        for o in [*signed, rep]:
            if o["type"] == "extension-definition" or o["id"] == PROJECT_IDENTITY_ID:
                continue
            marks = [TLP_BY_ID[m] for m in o.get("object_marking_refs", []) if m in TLP_BY_ID]
            if len(marks) != 1:
                raise UserError(f"{o['id']}: needs exactly one TLP 2.0 marking, has {len(marks)}")
            levels.add(marks[0])
        refused = levels - accept
        if refused:
            raise UserError(
                f"{rep['id']}: marked TLP:{sorted(refused)[0].upper()}, not accepted here "
                f"(intel_accept_tlp: {', '.join(sorted(accept))})"
            )
        src = by_id.get(rep.get("created_by_ref", ""), {})
        docs.append(
            {
                "report_id": rep["id"],
                "source": src.get("name", rep.get("created_by_ref")),
                "signer": signer,
                "tlp": sorted(levels),
                "signature": sig,
                "objects": signed,
                "report": rep,
            }
        )
    return docs


def import_objects(
    objects: list[dict[str, Any]],
    config: dict[str, Any],
    *,
    origin: str,
    public_keys: Iterable[Path | str] = (),
    detached: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from distillguard.intel.stix import campaigns_of

    trust_key(config)  # matching needs the group's key: say so now rather than at the next scan
    docs = verify_objects_set(objects, config, public_keys=public_keys, detached=detached)
    store = IntelStore.open(config)
    now = datetime.now(tz=UTC).isoformat()
    campaigns = 0
    for d in docs:
        d.update(origin=origin, imported_at=now)
        store.save(d)
        campaigns += len(campaigns_of(d["objects"]))
    return {
        "reports": [d["report_id"] for d in docs],
        "sources": sorted({str(d["source"]) for d in docs}),
        "signers": sorted({d["signer"] for d in docs}),
        "campaigns": campaigns,
        "stored": str(store.imported),
    }


def read_bundle(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"bundle not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "bundle" or not isinstance(doc.get("objects"), list):
        raise UserError(f"{path} is not a STIX bundle")
    sig_path = path.with_name(path.name + ".sig")
    detached = None
    if sig_path.is_file():
        try:
            detached = json.loads(sig_path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{sig_path} is not a signature document") from None
    return doc["objects"], detached


def import_bundle(
    config: dict[str, Any], path: Path, *, public_keys: Iterable[Path | str] = ()
) -> dict[str, Any]:
    objects, detached = read_bundle(path)
    return import_objects(objects, config, origin=str(path), public_keys=public_keys, detached=detached)

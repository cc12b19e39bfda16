"""TAXII 2.1 publish and pull (``taxii2-client``).

``URL`` is the server's API root (``https://taxii.example.org/api1/``); ``ID`` a collection id under it.
Credentials: config ``intel_taxii_user`` / ``intel_taxii_password`` (``DISTILLGUARD_INTEL_TAXII_USER`` /
``..._PASSWORD``). Pulls are incremental: the position (the newest ``date_added`` of the collection's
manifest seen so far) is kept per collection in the intel state dir and sent as ``added_after`` next time.
A signed report whose objects arrived in an earlier pull is completed by fetching those objects by id.
"""

from __future__ import annotations

import json
from typing import Any

from distillguard.errors import UserError


def collection_url(root: str, collection: str) -> str:
    if not root.startswith(("http://", "https://")):
        raise UserError(f"--taxii: expected an http(s) API root URL, got {root!r}")
    return f"{root.rstrip('/')}/collections/{collection.strip('/')}/"


def _collection(config: dict[str, Any], root: str, collection: str):
    from taxii2client.v21 import Collection

    from distillguard.intel.settings import IntelSettings

    s = IntelSettings.from_config(config)
    try:
        return Collection(collection_url(root, collection), user=s.taxii_user, password=s.taxii_password)
    except Exception as exc:  # taxii2client raises its own and requests' errors
        raise UserError(f"TAXII collection {collection}: {exc}") from None


def _call(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"TAXII {what} failed: {' '.join(str(exc).split())[:300]}") from None


def publish(config: dict[str, Any], bundle: dict[str, Any], root: str, collection: str) -> dict[str, Any]:
    """POST the bundle's objects to the collection; returns the TAXII status summary."""
    from distillguard.intel.stix import TLP

    if any(TLP["red"] in (o.get("object_marking_refs") or []) for o in bundle["objects"]):
        raise UserError("refusing to publish TLP:RED intel to a TAXII collection (named recipients only)")
    col = _collection(config, root, collection)
    if not _call("collection info", lambda: col.can_write):
        raise UserError(f"TAXII collection {collection} is not writable with these credentials")
    # the extension definition is the project's, published with the README, and its required ``version``
    # property trips servers that keep their own ``version`` field on stored objects (medallion 3)
    objects = [o for o in bundle["objects"] if o.get("type") != "extension-definition"]
    status = _call("add objects", col.add_objects, json.dumps({"objects": objects}))
    return {
        "status": status.status,
        "total": status.total_count,
        "success": status.success_count,
        "failure": status.failure_count,
        "pending": status.pending_count,
        "collection": collection_url(root, collection),
    }


def _pages(fn, **kwargs) -> list[dict[str, Any]]:
    """Every record of a paged TAXII listing (``more`` / ``next``)."""
    out: list[dict[str, Any]] = []
    nxt = None
    for _ in range(10_000):
        args = dict(kwargs)
        if nxt:
            args["next"] = nxt
        env = _call("read", fn, **args)
        out.extend(env.get("objects") or env.get("manifest") or [])
        if not env.get("more") or not env.get("next"):
            break
        nxt = env["next"]
    return out


def pull(config: dict[str, Any], root: str, collection: str, *, full: bool = False) -> dict[str, Any]:
    """Fetch what was added since the last pull, verify each signed report and import it."""
    from distillguard.intel.jobs import import_objects
    from distillguard.intel.stix import EXTENSION_ID
    from distillguard.intel.store import IntelStore

    url = collection_url(root, collection)
    store = IntelStore.open(config)
    position = None if full else store.taxii_position(url)
    col = _collection(config, root, collection)
    if not _call("collection info", lambda: col.can_read):
        raise UserError(f"TAXII collection {collection} is not readable with these credentials")
    kw = {"added_after": position} if position else {}
    manifest = _pages(col.get_manifest, **kw)
    objects = _pages(col.get_objects, **kw)
    have = {o["id"] for o in objects}
    reports = [
        o
        for o in objects
        if o.get("type") == "report"
        and ((o.get("extensions") or {}).get(EXTENSION_ID) or {}).get("kind") == "signature"
    ]
    missing = sorted({r for rep in reports for r in rep.get("object_refs", [])} - have)
    for i in range(0, len(missing), 20):
        objects.extend(_pages(col.get_objects, id=",".join(missing[i : i + 20])))
    by_id: dict[str, dict] = {}
    for o in objects:
        by_id.setdefault(o["id"], o)
        if str(o.get("modified", "")) > str(by_id[o["id"]].get("modified", "")):
            by_id[o["id"]] = o
    imported, problems = [], []
    for rep in reports:
        subset = [by_id[r] for r in rep.get("object_refs", []) if r in by_id] + [rep]
        try:
            imported.append(import_objects(subset, config, origin=url))
        except UserError as exc:
            problems.append(f"{rep['id']}: {exc}")
    if manifest:
        newest = max(m["date_added"] for m in manifest if m.get("date_added"))
        store.set_taxii_position(url, newest)
    return {
        "collection": url,
        "added_after": position,
        "objects": len(objects),
        "reports": len(reports),
        "imported": sum(len(d["reports"]) for d in imported),
        "campaigns": sum(d["campaigns"] for d in imported),
        "problems": problems,
        "position": store.taxii_position(url),
    }

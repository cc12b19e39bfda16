"""Detached Ed25519 signatures over a set of STIX objects, with the installation's audit signing key.

The signed bytes are the canonical JSON (sorted keys, no whitespace, UTF-8) of the signed objects sorted by
``id``: independent of bundle order and of how a TAXII server re-serialises them. The signature document
(``{"algorithm", "fingerprint", "public_key", "sha256", "signature"}``) travels twice: as ``FILE.json.sig``
next to an exported bundle, and inside the bundle's ``report`` object (the report lists the signed objects in
``object_refs`` and is itself not signed), so a bundle pulled from a TAXII collection still verifies.

Keys and fingerprints are the audit bundle's (:mod:`distillguard.audit.bundle`): one signing key per
installation (``home()/audit/signing_key.pem``, or config ``intel_signing_key``), ``sha256:<hex>`` of the raw
public key to pin a signer.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from distillguard.audit.bundle import _sig_valid as sig_valid
from distillguard.audit.bundle import fingerprint, load_signing_key, public_key_pem
from distillguard.errors import UserError


def canonical_objects(objects: Iterable[dict[str, Any]]) -> bytes:
    objs = sorted(objects, key=lambda o: o["id"])
    return json.dumps(objs, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_objects(objects: Iterable[dict[str, Any]], key_path: Path | None = None) -> dict[str, str]:
    key = load_signing_key(key_path)
    data = canonical_objects(objects)
    return {
        "algorithm": "ed25519",
        "fingerprint": fingerprint(key),
        "public_key": public_key_pem(key).decode("ascii"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "signature": base64.b64encode(key.sign(data)).decode("ascii"),
    }


def verify_objects(objects: Iterable[dict[str, Any]], sig: dict[str, Any]) -> str:
    """Check ``sig`` over ``objects``; returns the signer's fingerprint (raises UserError when it fails)."""
    if not isinstance(sig, dict) or sig.get("algorithm") != "ed25519":
        raise UserError("bundle signature is missing or not an Ed25519 signature document")
    try:
        key = serialization.load_pem_public_key(str(sig.get("public_key", "")).encode("ascii"))
    except (ValueError, TypeError):
        raise UserError("bundle signature carries no valid public key") from None
    fp = fingerprint(key)
    if fp != sig.get("fingerprint"):
        raise UserError("bundle signature: the fingerprint does not match its public key")
    data = canonical_objects(objects)
    if not sig_valid(key, str(sig.get("signature", "")), data):
        raise UserError(f"bundle signature does not verify (signer {fp}): the objects were altered")
    return fp

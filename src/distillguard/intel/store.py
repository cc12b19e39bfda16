"""The intel state dir (``home()/intel``, or config ``intel_dir``): what was imported, and TAXII positions.

Layout::

    imported/<report-id>.json   one verified bundle per file: its signed objects, signature, source,
                                signer fingerprint, TLP and when and from where it was imported
    taxii.json                  per collection URL: the last ``added_after`` position of ``intel pull``

Reading needs no STIX library: :func:`has_imports` is what ``monitor scan`` checks on every run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from distillguard.config import home
from distillguard.errors import UserError
from distillguard.intel.settings import IntelSettings


def intel_dir(config: dict[str, Any] | None) -> Path:
    return Path(IntelSettings.from_config(config).dir or home() / "intel").expanduser()


def has_imports(config: dict[str, Any] | None) -> bool:
    d = intel_dir(config) / "imported"
    return d.is_dir() and any(d.glob("*.json"))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class IntelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.imported = self.root / "imported"

    @classmethod
    def open(cls, config: dict[str, Any] | None) -> IntelStore:
        return cls(intel_dir(config))

    def save(self, doc: dict[str, Any]) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", doc["report_id"])
        path = self.imported / f"{name}.json"
        _atomic_write(path, json.dumps(doc, indent=1, sort_keys=True))
        return path

    def docs(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.imported.glob("*.json")) if self.imported.is_dir() else []:
            try:
                out.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                raise UserError(f"{p} is not an imported intel bundle ({exc}); delete it") from None
        return out

    def campaigns(self):
        from distillguard.intel.stix import campaigns_of

        latest: dict[str, tuple[str, object]] = {}  # a campaign shared again replaces its older version
        for doc in self.docs():
            for c in campaigns_of(doc["objects"]):
                when = str(doc.get("imported_at", ""))
                if c.campaign_id not in latest or when >= latest[c.campaign_id][0]:
                    latest[c.campaign_id] = (when, c)
        return [c for _, c in latest.values()]

    def taxii_position(self, url: str) -> str | None:
        path = self.root / "taxii.json"
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8")).get(url)

    def set_taxii_position(self, url: str, added_after: str) -> None:
        path = self.root / "taxii.json"
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        data[url] = added_after
        _atomic_write(path, json.dumps(data, indent=1, sort_keys=True))


def trust_key(config: dict[str, Any] | None) -> bytes:
    """The trust group's shared key: config ``intel_trust_key`` (hex, or any string of 16+ characters)
    or the file ``intel_trust_key_file``."""
    s = IntelSettings.from_config(config)
    value = s.trust_key
    if value is None and s.trust_key_file:
        p = Path(s.trust_key_file).expanduser()
        if not p.is_file():
            raise UserError(f"intel trust key file not found: {p}")
        value = p.read_text(encoding="utf-8").strip()
    if value is None:
        raise UserError(
            "no trust-group key: set intel_trust_key (or DISTILLGUARD_INTEL_TRUST_KEY), the secret the "
            "sharing providers agreed on"
        )
    s = str(value).strip()
    key = bytes.fromhex(s) if re.fullmatch(r"(?:[0-9a-fA-F]{2}){16,}", s) else s.encode("utf-8")
    if len(key) < 16:
        raise UserError("the intel trust key must be at least 16 bytes")
    return key

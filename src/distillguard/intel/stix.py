"""STIX 2.1 objects for a provider's distillation campaigns (built with the ``stix2`` library), and back.

What a bundle holds (every object marked with one TLP 2.0 marking and created by the provider's identity):

- ``identity``: the provider; ``extension-definition``: the LLM-specific properties (below);
- ``attack-pattern`` s with MITRE ATLAS references and ``course-of-action`` s for ATLAS mitigations, with
  ``related-to`` (sub-technique) and ``mitigates`` relationships (ids derived from the ATLAS id, so
  bundles from several providers share them);
- per campaign (one linked cluster of accounts, or one flagged account): a ``campaign``; an ``indicator`` of
  its prompt templates (keyed fingerprints and MinHash sketches, never text), one of its client networks
  (a STIX pattern over ``ipv4-addr`` / ``ipv6-addr``), one of its timing and volume signature; ``indicates``
  and ``uses`` relationships; a ``sighting`` of each indicator with counts and first/last seen;
- a ``report`` over all of the above that carries the detached Ed25519 signature of those objects
  (see :mod:`distillguard.intel.signing`), so a bundle still verifies after travelling through TAXII.

ATLAS ids and names as checked against the ATLAS data release 2026.09 (``mitre-atlas/atlas-data``; the
2025 releases renamed "ML" to "AI" in names, the ids are unchanged).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from distillguard.errors import UserError
from distillguard.intel.census import NetworkFact, Template
from distillguard.intel.fingerprint import (
    FINGERPRINT_VERSION,
    MINHASH_PERMUTATIONS,
    sketch_from_hex,
    sketch_to_hex,
)

#: The extension-definition of the LLM-specific properties (fixed: every distillguard bundle uses it).
EXTENSION_ID = "extension-definition--d6fb7cd1-5961-4399-b189-734ceab041c4"
#: The identity that authored the extension definition.
PROJECT_IDENTITY_ID = "identity--b5e14a0f-de65-4176-85c7-b9896f426959"
_NAMESPACE = uuid.UUID("a5cb78c3-1e51-4010-84a3-5f8aadab9389")
_EXT_CREATED = "2026-12-01T00:00:00.000Z"
ATLAS_RELEASE = "2026.09"

#: TLP 2.0 marking definitions published by OASIS (cti-stix-common-objects, TLP 2.0 extension).
TLP = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TLP_BY_ID = {v: k for k, v in TLP.items()}

TECHNIQUES = {
    "AML.T0024": "Exfiltration via AI Inference API",
    "AML.T0024.002": "Extract AI Model",
    "AML.T0040": "AI Model Inference API Access",
    "AML.T0005": "Create Proxy AI Model",
}
MITIGATIONS = {
    "AML.M0004": "Restrict Number of AI Model Queries",
    "AML.M0019": "Control Access to AI Models and Data in Production",
    "AML.M0024": "AI Telemetry Logging",
}
CAMPAIGN_USES = ("AML.T0040", "AML.T0024.002", "AML.T0005")


def _sid(kind: str, *parts: str) -> str:
    """A deterministic id in UUIDv4 form (STIX wants v4 for SDOs and SROs): the same ATLAS technique or
    campaign gets the same id in every export, so consumers merge versions instead of duplicating."""
    digest = uuid.uuid5(_NAMESPACE, "|".join(parts)).bytes
    return f"{kind}--{uuid.UUID(bytes=digest, version=4)}"


def _ts(x: float) -> datetime:
    return datetime.fromtimestamp(float(x), tz=UTC)


def confidence(p_value: float) -> int:
    """STIX confidence (0-100) of a detection with this p-value: ``10 * -log10(p)``, capped: 1e-3 -> 30,
    1e-6 -> 60, 1e-10 or smaller -> 100. A statement about the exporter's own false-alarm rate."""
    p = min(max(float(p_value), 1e-300), 1.0)
    return int(np.clip(round(-10.0 * np.log10(p)), 0, 100))


@dataclass
class CampaignFacts:
    """What the exporter knows about one campaign (no account names, e-mails, keys or prompt text)."""

    key: str  # an opaque stable handle (keyed hash of the member accounts), for ids only
    accounts: int
    queries: int
    first_ts: float
    last_ts: float
    p_value: float
    templates: list[Template]
    networks: list[NetworkFact]
    timing: dict[str, float]


def extension_definition():
    import stix2

    return stix2.ExtensionDefinition(
        id=EXTENSION_ID,
        created_by_ref=PROJECT_IDENTITY_ID,
        created=_EXT_CREATED,
        modified=_EXT_CREATED,
        name="distillguard LLM distillation indicators",
        description=(
            "Property extension for indicators and campaigns of LLM distillation (model extraction through "
            "an inference API): keyed template fingerprints, MinHash sketches, timing and volume "
            "signatures and the x-llm-prompt / x-llm-account pattern objects. Documented in the "
            "distillguard README, section 'Threat-intel sharing'."
        ),
        schema="https://github.com/distillguard/distillguard#threat-intel-sharing",
        version="1.0.0",
        extension_types=["property-extension"],
    )


def _project_identity():
    import stix2

    return stix2.Identity(
        id=PROJECT_IDENTITY_ID,
        created=_EXT_CREATED,
        modified=_EXT_CREATED,
        name="distillguard",
        description="Author of the distillguard STIX extension for LLM distillation indicators.",
        identity_class="system",
    )


def atlas_objects(marking: str, created_by: str) -> list[Any]:
    """ATLAS techniques and mitigations with their relationships (deterministic ids)."""
    import stix2

    out: list[Any] = []
    common = {"created_by_ref": created_by, "object_marking_refs": [marking], "created": _EXT_CREATED}
    for tid, name in TECHNIQUES.items():
        out.append(
            stix2.AttackPattern(
                id=_sid("attack-pattern", tid),
                name=name,
                description=f"MITRE ATLAS {tid} ({name}), ATLAS release {ATLAS_RELEASE}.",
                external_references=[
                    {
                        "source_name": "mitre-atlas",
                        "external_id": tid,
                        "url": f"https://atlas.mitre.org/techniques/{tid}",
                    }
                ],
                **common,
            )
        )
    out.append(
        stix2.Relationship(
            id=_sid("relationship", "AML.T0024.002", "subtechnique-of", "AML.T0024"),
            relationship_type="related-to",  # ATT&CK's "subtechnique-of" is not in the STIX vocabulary
            source_ref=_sid("attack-pattern", "AML.T0024.002"),
            target_ref=_sid("attack-pattern", "AML.T0024"),
            description="Extract AI Model is a sub-technique of Exfiltration via AI Inference API.",
            **common,
        )
    )
    for mid, name in MITIGATIONS.items():
        coa = _sid("course-of-action", mid)
        out.append(
            stix2.CourseOfAction(
                id=coa,
                name=name,
                description=f"MITRE ATLAS mitigation {mid} ({name}), ATLAS release {ATLAS_RELEASE}.",
                external_references=[
                    {
                        "source_name": "mitre-atlas",
                        "external_id": mid,
                        "url": f"https://atlas.mitre.org/mitigations/{mid}",
                    }
                ],
                **common,
            )
        )
        for tid in ("AML.T0024.002", "AML.T0005"):
            out.append(
                stix2.Relationship(
                    id=_sid("relationship", mid, "mitigates", tid),
                    relationship_type="mitigates",
                    source_ref=coa,
                    target_ref=_sid("attack-pattern", tid),
                    description=f"{name} mitigates {TECHNIQUES[tid]}.",
                    **common,
                )
            )
    return out


def _network_pattern(nets: Sequence[NetworkFact]) -> str:
    parts = []
    for n in nets:
        kind = "ipv6-addr" if ":" in n.prefix else "ipv4-addr"
        parts.append(f"[{kind}:value ISSUBSET '{n.prefix}']")
    return " OR ".join(parts)


def _template_pattern(templates: Sequence[Template]) -> str:
    fps = ", ".join(f"'{t.fingerprint}'" for t in templates)
    return f"[x-llm-prompt:template_fingerprint IN ({fps})]"


def _timing_pattern(timing: dict[str, float]) -> str:
    lo, hi = timing["gap_log10_s_p10"], timing["gap_log10_s_p90"]
    return (
        f"[x-llm-account:gap_log10_s_p50 >= {lo:.3f} AND x-llm-account:gap_log10_s_p50 <= {hi:.3f} "
        f"AND x-llm-account:active_hours_share >= {max(0.0, timing['active_hours_share'] - 0.25):.3f}]"
    )


def build_bundle(
    campaigns: Sequence[CampaignFacts],
    *,
    provider: str,
    tlp: str = "amber",
    min_coverage: float = 0.5,
    now: datetime | None = None,
    valid_days: float = 90.0,
) -> tuple[list[dict[str, Any]], str]:
    """The STIX objects of ``campaigns`` (as JSON dicts, the signature report not yet added) and the id of
    the provider's identity."""
    import json

    import stix2

    if tlp not in TLP:
        raise UserError(f"unknown TLP {tlp!r}; choose one of {', '.join(TLP)}")
    marking = TLP[tlp]
    now = now or datetime.now(tz=UTC)
    ident = stix2.Identity(
        id=_sid("identity", "provider", provider),
        created=_EXT_CREATED,
        modified=_EXT_CREATED,
        name=provider,
        description="An LLM API provider sharing distillation campaign indicators.",
        identity_class="organization",
        sectors=["technology"],
        object_marking_refs=[marking],
    )
    common = {"created_by_ref": ident.id, "object_marking_refs": [marking]}
    objs: list[Any] = [_project_identity(), extension_definition(), ident, *atlas_objects(marking, ident.id)]
    for c in campaigns:
        conf = confidence(c.p_value)
        first, last = _ts(c.first_ts), _ts(max(c.last_ts, c.first_ts + 1e-3))
        valid_until = _ts(c.last_ts + valid_days * 86400.0)
        tag = f"{c.key[:8]}"
        camp = stix2.Campaign(
            id=_sid("campaign", provider, c.key),
            name=f"LLM distillation campaign {tag}",
            description=(
                f"{c.accounts} account(s), {c.queries} queries examined, detected by the provider's traffic "
                f"monitor at p = {c.p_value:.2g} (share of benign accounts expected to score as high)."
            ),
            objective="Harvest the model's outputs to train a proxy model (model distillation).",
            first_seen=first,
            last_seen=last,
            confidence=conf,
            extensions={
                EXTENSION_ID: {
                    "extension_type": "property-extension",
                    "accounts": c.accounts,
                    "queries": c.queries,
                    "p_value": float(f"{c.p_value:.4g}"),
                }
            },
            **common,
        )
        objs.append(camp)
        for tid in CAMPAIGN_USES:
            objs.append(
                stix2.Relationship(
                    id=_sid("relationship", camp.id, "uses", tid),
                    relationship_type="uses",
                    source_ref=camp.id,
                    target_ref=_sid("attack-pattern", tid),
                    description=f"The campaign uses {TECHNIQUES[tid]} ({tid}).",
                    **common,
                )
            )
        indicators: list[tuple[Any, int, float, float]] = []
        if c.templates:
            ext = {
                "extension_type": "property-extension",
                "kind": "prompt-templates",
                "fingerprint_scheme": FINGERPRINT_VERSION,
                "minhash_permutations": MINHASH_PERMUTATIONS,
                "min_coverage": min_coverage,
                "templates": [
                    {
                        "fingerprint": t.fingerprint,
                        "template_kind": t.kind,
                        "queries": t.queries,
                        "accounts": t.accounts,
                        **({"minhash": sketch_to_hex(t.sketch)} if t.sketch is not None else {}),
                    }
                    for t in c.templates
                ],
            }
            ind = stix2.Indicator(
                id=_sid("indicator", camp.id, "templates"),
                name=f"Prompt templates of campaign {tag}",
                description=(
                    f"{len(c.templates)} keyed template fingerprints (HMAC-SHA256 under the trust group key) "
                    "the campaign repeated and the provider's benign customers did not use; an account using "
                    f"at least {min_coverage:.0%} of them matches."
                ),
                indicator_types=["malicious-activity"],
                pattern=_template_pattern(c.templates),
                pattern_type="stix",
                valid_from=first,
                valid_until=valid_until,
                confidence=conf,
                extensions={EXTENSION_ID: ext},
                **common,
            )
            q = sum(t.queries for t in c.templates)
            indicators.append(
                (ind, q, min(t.first_ts for t in c.templates), max(t.last_ts for t in c.templates))
            )
        if c.networks:
            ind = stix2.Indicator(
                id=_sid("indicator", camp.id, "network"),
                name=f"Client networks of campaign {tag}",
                description=f"{len(c.networks)} client network(s) no benign customer of the provider shared.",
                indicator_types=["malicious-activity"],
                pattern=_network_pattern(c.networks),
                pattern_type="stix",
                valid_from=first,
                valid_until=valid_until,
                confidence=conf,
                **common,
            )
            indicators.append((ind, sum(n.queries for n in c.networks), c.first_ts, c.last_ts))
        if c.timing and c.timing.get("gaps", 0) >= 2:
            ind = stix2.Indicator(
                id=_sid("indicator", camp.id, "timing"),
                name=f"Timing and volume signature of campaign {tag}",
                description="Pacing of the campaign's accounts (inter-arrival quantiles, hours, volume).",
                indicator_types=["anomalous-activity"],
                pattern=_timing_pattern(c.timing),
                pattern_type="stix",
                valid_from=first,
                valid_until=valid_until,
                confidence=max(0, conf // 2),
                extensions={
                    EXTENSION_ID: {
                        "extension_type": "property-extension",
                        "kind": "timing-volume",
                        **{k: float(f"{v:.4g}") for k, v in c.timing.items() if np.isfinite(v)},
                    }
                },
                **common,
            )
            indicators.append((ind, int(c.timing["queries"]), c.first_ts, c.last_ts))
        for ind, count, f0, f1 in indicators:
            objs.append(ind)
            objs.append(
                stix2.Relationship(
                    id=_sid("relationship", ind.id, "indicates", camp.id),
                    relationship_type="indicates",
                    source_ref=ind.id,
                    target_ref=camp.id,
                    description="The indicator matched the campaign's traffic.",
                    **common,
                )
            )
            objs.append(
                stix2.Sighting(
                    id=_sid("sighting", ind.id, provider),
                    sighting_of_ref=ind.id,
                    where_sighted_refs=[ident.id],
                    count=int(min(max(count, 1), 999_999_999)),
                    first_seen=_ts(f0),
                    last_seen=_ts(max(f1, f0 + 1e-3)),
                    confidence=conf,
                    **common,
                )
            )
    return [json.loads(o.serialize()) for o in objs], ident.id


# --------------------------------------------------------------------------------------------------
# Reading bundles back


@dataclass(frozen=True)
class ImportedCampaign:
    """One campaign of an imported bundle, as the matcher uses it."""

    campaign_id: str
    name: str
    source: str  # the sharing provider's identity name
    source_id: str
    confidence: int
    indicator_id: str | None  # the template indicator
    templates: dict[str, str]  # fingerprint -> kind
    sketches: dict[str, np.ndarray]  # system-prompt fingerprint -> MinHash
    min_coverage: float
    network_indicator_id: str | None
    networks: tuple[str, ...]
    tlp: str


def _ext(obj: dict[str, Any]) -> dict[str, Any]:
    return (obj.get("extensions") or {}).get(EXTENSION_ID) or {}


def _prefixes(pattern: str) -> tuple[str, ...]:
    import re

    return tuple(re.findall(r"ISSUBSET '([^']+)'", pattern))


def campaigns_of(objects: Iterable[dict[str, Any]]) -> list[ImportedCampaign]:
    """The campaigns of a verified set of STIX objects, with their template and network indicators."""
    objs = list(objects)
    by_id = {o["id"]: o for o in objs}
    indicates: dict[str, list[dict]] = {}
    for o in objs:
        if o.get("type") == "relationship" and o.get("relationship_type") == "indicates":
            ind = by_id.get(o["source_ref"])
            if ind is not None and ind.get("type") == "indicator":
                indicates.setdefault(o["target_ref"], []).append(ind)
    out = []
    for o in objs:
        if o.get("type") != "campaign":
            continue
        src = by_id.get(o.get("created_by_ref", ""), {})
        tmpl = next(
            (i for i in indicates.get(o["id"], []) if _ext(i).get("kind") == "prompt-templates"), None
        )
        net = next((i for i in indicates.get(o["id"], []) if "ISSUBSET" in i.get("pattern", "")), None)
        templates: dict[str, str] = {}
        sketches: dict[str, np.ndarray] = {}
        min_cov = 0.5
        if tmpl is not None:
            e = _ext(tmpl)
            min_cov = float(e.get("min_coverage", 0.5))
            for t in e.get("templates", []):
                templates[t["fingerprint"]] = t.get("template_kind", "?")
                if t.get("minhash"):
                    sketches[t["fingerprint"]] = sketch_from_hex(t["minhash"])
        marks = [TLP_BY_ID[m] for m in o.get("object_marking_refs", []) if m in TLP_BY_ID]
        out.append(
            ImportedCampaign(
                campaign_id=o["id"],
                name=o.get("name", o["id"]),
                source=src.get("name", o.get("created_by_ref", "unknown")),
                source_id=o.get("created_by_ref", ""),
                confidence=int((tmpl or o).get("confidence", o.get("confidence", 50))),
                indicator_id=tmpl["id"] if tmpl else None,
                templates=templates,
                sketches=sketches,
                min_coverage=min_cov,
                network_indicator_id=net["id"] if net else None,
                networks=_prefixes(net["pattern"]) if net else (),
                tlp=marks[0] if marks else "unknown",
            )
        )
    return out

"""Every watermark our answers may carry, as the audit's family of key-dependent tests.

A gateway does not mark every answer the same way. It rotates keys (a *retired* key marked the answers
before the rotation) and a tier may mark with its own scheme (the restricted tier, where a suspected
distiller ends up, marks with Gumbel h 1 by default). A distiller's collection can hold any mix of them, so
the audit scores the same suspect answers under each watermark and counts each as one more test in the
Holm family: more chances to find the signal, paid for by the correction, never by a pooled null.

Validity: each extra test is the same exact test as the main one, with its own decoy keys; under H0 (the
suspect's text does not depend on our key) each p-value is valid on its own, and Holm over all of them
keeps the family-wise error at alpha whatever their dependence.

Only watermarks that *detect differently* are distinct: KGW's bias ``delta`` changes how strongly answers
are marked, not which tuples are green, so KGW delta 2 and delta 4 under one key are one test.

No torch and no I/O here: :func:`served_marks` reads the gateway's tier ladder, the rest is bookkeeping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Mark:
    """One more watermark to test: a suffix for its tests' names, why it is tested, and its spec."""

    suffix: str  # appended to the test name: "_retired_1", "_restricted", "_restricted_retired_1"
    why: str  # a caveat of its tests, for people
    spec: Any  # WatermarkSpec (the key is secret: never written out)


def detection_identity(spec: Any) -> tuple:
    """What decides a watermark's test: the key, the scheme, the window it reads, transformers-compatible
    hashing, the vocabulary and (green-list schemes) the green rate; not KGW's bias, nor a gamma that Gumbel
    does not read. Two specs with the same identity score every tuple alike."""
    green = spec.describe().get("green_rate") if spec.scheme != "gumbel" else None
    return (str(spec.key), spec.scheme, spec.window, spec.hf_compat, spec.vocab_size, green)


def extra_marks(spec: Any, retired_keys: Sequence[int | str], tier_marks: Mapping[str, Any]) -> list[Mark]:
    """The watermarks tested besides ``spec`` on the same answers: each retired key under our scheme, each
    tier's watermark under our key, and each tier's watermark under each retired key (the gateway marked
    that tier's answers with the older key before it rotated)."""
    out = [
        Mark(
            f"_retired_{i}",
            f"retired key {i}: a key the gateway marked with before rotating",
            spec.with_key(k),
        )
        for i, k in enumerate(retired_keys, 1)
    ]
    for tier, mark in tier_marks.items():
        name = _describe(mark)
        out.append(Mark(f"_{tier}", f"the {tier} tier's watermark ({name}): its answers carry it", mark))
        for i, k in enumerate(retired_keys, 1):
            out.append(
                Mark(
                    f"_{tier}_retired_{i}",
                    f"the {tier} tier's watermark ({name}) under retired key {i}",
                    mark.with_key(k),
                )
            )
    return out


def served_marks(spec: Any, watermark: Any, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{tier: spec}`` for each tier of the gateway's ladder that marks differently from ``spec``.

    ``watermark`` is the ``WatermarkSettings`` that ``spec`` was built from and ``config`` the gateway's
    config (the tiers read their watermark from it: ``restricted_scheme``...); each tier's changes (see
    :meth:`distillguard.gateway.tiers.Tier.watermark`) are applied to ``watermark`` under ``spec``'s key.
    """
    from distillguard.gateway.settings import GatewaySettings
    from distillguard.gateway.tiers import TierSettings, tier_watermarks

    tiers = TierSettings.from_settings(GatewaySettings.from_mapping(dict(config or {})))
    return distinct_marks(spec, watermark, tier_watermarks(tiers))


def distinct_marks(spec: Any, settings: Any, changes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The tiers' watermarks (``changes`` per tier applied to ``settings``, under ``spec``'s key) that
    detect differently from ``spec`` and from each other."""
    seen = {detection_identity(spec)}
    out: dict[str, Any] = {}
    for tier, change in changes.items():
        mark = settings.spec(key=spec.key, vocab_size=spec.vocab_size, **dict(change))
        ident = detection_identity(mark)
        if ident not in seen:
            seen.add(ident)
            out[tier] = mark
    return out


def _describe(spec: Any) -> str:
    d = spec.describe()
    text = f"{d['scheme']} h {d['context_width']}"
    return text + (f" delta {d['delta']:g}" if d.get("delta") is not None else "")

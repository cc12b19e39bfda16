"""Sampling defences: answers that stay useful to a reader but teach a distilling student less.

A defence is chosen per tier (``Tier.sampling_defence``) as a :class:`DefenceSpec` (a registered name and one
strength) and built once per gateway by :func:`build_defence` into a :class:`Defence` object that the local
backend's sampler calls at every step, on the whole batch at once. Where a defence acts:

- ``prompt(text)``: on each rendered prompt (chat template or ``Question: ...`` format applied), before the
  local backend tokenises it for the model (reasoning suppression); what the ledger records is the prompt the
  client sent;
- ``sampling(s)``: on the request's sampling parameters before batching (the temperature floor);
- ``start(ids, attention_mask, position_ids)``: once per batch, returning a per-batch :class:`DefenceSession`
  (or None) whose ``adjust(scores)`` changes the next-token logits *before* the client's temperature, nucleus
  filtering and our watermark (so the watermark still marks what is sampled), and whose ``advance(next_ids,
  attention_mask, position_ids)`` feeds the sampled tokens to whatever state it keeps.

Registered (``DEFENCES``; :func:`register_defence` adds one):

- ``none``: nothing.
- ``temperature`` (strength ``T`` in [0, 10]): every request is sampled at temperature ``max(requested, T)``,
  greedy requests included (a distiller's usual choice), and with the client's ``top_p`` ignored (a tiny
  nucleus is greedy at any temperature), the baseline of Savani et al. 2025 (ADS) and of every "add noise"
  proposal.
- ``topk`` (strength ``k`` >= 1): only the ``k`` most likely tokens can be sampled: the student never sees
  the teacher's tail (a baseline).
- ``cot`` (strength 0 or 1): reasoning suppression, the one cheap baseline reported to hurt chain-of-thought
  harvesters: a prompt that asks for step-by-step reasoning (the monitor's ``COT_PATTERN``) is answered
  without that request (:mod:`distillguard.countermeasures.cot`): no reasoning is written out to learn from.
- ``ads`` (strength ``lambda`` >= 0): anti-distillation sampling (Savani et al., NeurIPS 2025, arXiv
  2504.13146), :mod:`distillguard.countermeasures.ads`: needs a proxy student (``ads_proxy``).

Strength 0 (``ads``, ``temperature``, ``cot``) and a ``k`` as large as the vocabulary leave the distribution
as it was; ``tests/test_defences.py`` checks it.

This module imports no torch (the tiers and the CLI read it); building ``ads`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from distillguard.errors import UserError


@dataclass(frozen=True)
class DefenceSpec:
    """A defence as configuration: a registered name and its one strength."""

    name: str = "none"
    strength: float = 0.0

    def __post_init__(self) -> None:
        get_defence_class(self.name).check(self.strength)

    @property
    def active(self) -> bool:
        return self.name != "none"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "strength": self.strength} if self.active else {"name": "none"}


class DefenceSession(Protocol):
    def adjust(self, scores: Any) -> Any: ...
    def advance(self, next_ids: Any, attention_mask: Any, position_ids: Any) -> None: ...


class Defence:
    """Base class: the identity. Subclasses override what they change (module docstring)."""

    name = "none"

    def __init__(self, spec: DefenceSpec, **_options: Any):
        self.spec = spec

    @classmethod
    def check(cls, strength: float) -> None:
        """Raise a one-line UserError for a strength this defence does not take."""

    def key(self) -> tuple:
        """Requests with equal keys can share a batch."""
        return (self.name, self.spec.strength)

    def prompt(self, text: str) -> str:
        """The rendered prompt the model reads (the identity here)."""
        return text

    def sampling(self, s: Any) -> Any:
        return s

    def start(self, ids: Any, attention_mask: Any, position_ids: Any) -> DefenceSession | None:
        return None

    def describe(self) -> dict[str, Any]:
        return self.spec.describe()


class TemperatureFloor(Defence):
    name = "temperature"

    @classmethod
    def check(cls, strength: float) -> None:
        if not 0.0 <= strength <= 10.0:
            raise UserError(f"the temperature defence takes a floor in [0, 10] (got {strength})")

    def sampling(self, s: Any) -> Any:
        """``max(requested, floor)``, and no nucleus: a client's tiny ``top_p`` keeps only the top token,
        which would sample greedily at any temperature."""
        floor = self.spec.strength
        if floor == 0:
            return s
        return replace(s, temperature=max(s.temperature, floor), top_p=1.0)


class ReasoningSuppression(Defence):
    """Requests for step-by-step reasoning are taken out of the prompt before the model reads it.

    The batch key needs no more than the spec: the rewrite is per prompt, before padding, so a rewritten
    prompt and an untouched one decode together exactly as they would apart."""

    name = "cot"

    @classmethod
    def check(cls, strength: float) -> None:
        if strength not in (0, 1):
            raise UserError(f"the cot defence takes 0 (off) or 1 (on) (got {strength})")

    def prompt(self, text: str) -> str:
        if not self.spec.strength:
            return text
        from distillguard.countermeasures.cot import strip_reasoning_requests

        return strip_reasoning_requests(text)


class _TopK:
    def __init__(self, k: int):
        self.k = k

    def adjust(self, scores: Any) -> Any:
        if self.k >= scores.shape[-1]:
            return scores
        import torch

        kth = torch.topk(scores, self.k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, float("-inf"))

    def advance(self, next_ids: Any, attention_mask: Any, position_ids: Any) -> None:
        pass


class TopK(Defence):
    name = "topk"

    @classmethod
    def check(cls, strength: float) -> None:
        if strength < 1 or strength != int(strength):
            raise UserError(f"the topk defence takes a whole number of tokens >= 1 (got {strength})")

    def start(self, ids: Any, attention_mask: Any, position_ids: Any) -> DefenceSession | None:
        return _TopK(int(self.spec.strength))


class _AdsFactory:
    """Registered under ``ads``: checks strengths without torch, builds the torch class on demand."""

    name = "ads"

    @staticmethod
    def check(strength: float) -> None:
        if not 0.0 <= strength <= 100.0:
            raise UserError(f"the ads defence takes a strength lambda in [0, 100] (got {strength})")

    def __call__(self, spec: DefenceSpec, **options: Any) -> Defence:
        from distillguard.countermeasures.ads import AntiDistillation

        return AntiDistillation(spec, **options)


DEFENCES: dict[str, Any] = {
    "none": Defence,
    "temperature": TemperatureFloor,
    "topk": TopK,
    "cot": ReasoningSuppression,
    "ads": _AdsFactory(),
}


def register_defence(name: str, factory: Callable[..., Defence]) -> None:
    """Add a defence: ``factory(spec, **options)`` builds it; ``factory.check(strength)`` validates."""
    if name in DEFENCES:
        raise UserError(f"a defence named {name!r} is already registered")
    DEFENCES[name] = factory


def get_defence_class(name: str) -> Any:
    try:
        return DEFENCES[name]
    except KeyError:
        raise UserError(f"unknown defence {name!r}; choose one of {', '.join(DEFENCES)}") from None


def build_defence(spec: DefenceSpec, options: Mapping[str, Any] | None = None) -> Defence | None:
    """The defence object for ``spec`` (None for ``none``); ``options`` feed defences that need more (ads)."""
    if not spec.active:
        return None
    return get_defence_class(spec.name)(spec, **dict(options or {}))

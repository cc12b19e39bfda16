"""What every model client shares: the answer shape, the client protocol and the per-request error.

A model client asks one model questions, either a local HF model directory (:mod:`.local`) or an
OpenAI-compatible API (:mod:`.http`). Distillation collects a teacher's answers through it and an audit asks
its suspect, reference and control models through it; :func:`distillguard.models.open_model` picks the kind.

Error policy. A :class:`~distillguard.errors.UserError` means no request can succeed (model unreachable, not
an OpenAI-compatible API, every key rejected, wrong model name): the caller stops. A :class:`ModelError`
means one request failed after all retries (rate limits that never cleared, a server error, a prompt the
server refused): the caller counts it and moves on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class ModelError(Exception):
    """One request failed for good (retries exhausted or refused); other requests may still succeed."""


@dataclass
class Answer:
    """A model's answer to one prompt.

    ``logprobs`` uses OpenAI's chat shape, one entry per completion token:
    ``{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}``.
    ``token_ids`` is only known for a local model.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict] | None = None
    token_ids: list[int] | None = None


@runtime_checkable
class ModelClient(Protocol):
    """Anything that answers prompts. ``name`` (URL or directory) goes into records of what was asked."""

    name: str

    async def answer(
        self,
        prompt: str,
        *,
        max_tokens: int,
        temperature: float,
        top_logprobs: int | None,
        seed: int | None,
    ) -> Answer: ...

"""What a generating backend (the local model or the stub) takes and gives back.

A normalised :class:`GenerationRequest` goes in; a :class:`Generation` handle streams :class:`ChoiceDelta`
events out, and the gateway shapes them into OpenAI's chat or completion objects, so both endpoints,
streaming or not, share one generation path.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from distillguard.gateway.protocol import Sampling, TokenLogprob


@dataclass(frozen=True)
class Prompt:
    """One prompt as the model sees it: the rendered text and its token ids."""

    text: str
    ids: tuple[int, ...]


@dataclass
class GenerationRequest:
    """What to generate: ``len(prompts) * sampling.n`` choices, choice ``i * n + j`` for prompt ``i``."""

    prompts: list[Prompt]
    sampling: Sampling
    max_tokens: int
    spec: Any = None  # WatermarkSpec | None (kept untyped so this module imports without torch)
    logprobs: Any = None  # LogprobPolicy | None: how reported logprobs are computed (None: the default)
    defence: Any = None  # countermeasures.defences.Defence | None: the tier's sampling defence

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.sampling.n


@dataclass
class ChoiceDelta:
    """New text (and its tokens' logprobs) for one choice; ``finish_reason`` set on its last event."""

    index: int
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0


class Generation:
    """Handle on one request's generation: iterate the events, or cancel (client gone).

    The worker thread pushes events through ``loop.call_soon_threadsafe``, so consumers await on the event
    loop while the model runs elsewhere.
    """

    def __init__(self, rows: int, loop: asyncio.AbstractEventLoop | None = None):
        self.rows = rows
        self.loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.completion_tokens = 0  # of finished choices, as reported in usage
        # every token sampled so far, finished or not, counted by the producer: what a cancelled
        # generation (client gone mid-stream) has cost and is charged to the quota
        self.generated = 0

    def push(self, item: ChoiceDelta | BaseException) -> None:
        """Thread-safe: deliver an event (or an exception that ends the generation)."""
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody listens any more
            self.cancelled.set()

    def push_nowait(self, item: ChoiceDelta | BaseException) -> None:
        """Deliver from the event loop's own thread."""
        self._queue.put_nowait(item)

    def cancel(self) -> None:
        self.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[ChoiceDelta]:
        remaining = self.rows
        while remaining:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item.finish_reason is not None:
                remaining -= 1
                self.completion_tokens += item.completion_tokens
            yield item


class GeneratingBackend(Protocol):
    """A backend that generates tokens itself (local model or stub)."""

    kind: str
    model_id: str
    watermarked: bool
    context_length: int

    def model_cards(self) -> list[dict]: ...
    def chat_prompt(self, messages: list[dict]) -> Prompt: ...
    def completion_prompts(self, prompt: str | list) -> list[Prompt]: ...
    def check_token_ids(self, ids: Sequence[int], param: str) -> None: ...
    def start(self, request: GenerationRequest) -> Generation: ...
    async def startup(self) -> None: ...
    async def aclose(self) -> None: ...


def model_card(model_id: str, *, owned_by: str, watermarked: bool, scheme: str | None) -> dict:
    """An OpenAI model object plus whether outputs carry the watermark (the scheme name, never the key)."""
    card = {"id": model_id, "object": "model", "created": 0, "owned_by": owned_by, "watermarked": watermarked}
    if watermarked:
        card["watermark_scheme"] = scheme
    return card

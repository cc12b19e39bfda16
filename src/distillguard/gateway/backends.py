"""What answers behind the gateway: the local watermarked HF model, an upstream OpenAI-compatible URL, a stub.

Two kinds of backend:

* **Generating** backends (:class:`LocalBackend`, :class:`StubBackend`) turn a normalised
  :class:`GenerationRequest` into a stream of :class:`ChoiceDelta` events; the gateway shapes those into
  OpenAI's chat or completion objects, so both endpoints, streaming or not, share one generation path.
* The **proxy** backend (:class:`UpstreamBackend`) forwards the client's JSON to another server and passes
  its answer through; the gateway still authenticates, reserves quota and records the ledger around it, but
  the outputs are not watermarked (``/v1/models`` says so).

The local backend runs the model in one worker thread (never on the event loop) and decodes token by token
with a KV cache, so streams carry real incremental tokens. Requests that arrive while the worker is busy,
or within ``batch_wait_ms`` of each other, and that share their sampling parameters are decoded together as
one left-padded batch (up to ``batch_max_size`` rows); each row still samples from its own generator, so a
seeded request gives the same answer whatever else was in flight (seeded requests are never batched with
others, since padding changes the floating-point reduction order).

Logprobs are the log-softmax of the distribution the token was *actually sampled from*: after logit bias,
penalties, temperature, nucleus filtering and the watermark. They never reveal the unmarked distribution, so
top-k logprobs cannot be used to subtract the watermark out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import queue
import re
import secrets
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from distillguard.gateway.protocol import (
    SSE_DONE,
    APIError,
    Sampling,
    TokenLogprob,
    dumps,
    finite_logprob,
    sse,
    usage,
)

log = logging.getLogger("distillguard.gateway")


# --------------------------------------------------------------------------------------------------
# Generation requests and events (shared by the generating backends)


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


# --------------------------------------------------------------------------------------------------
# Incremental decoding with stop strings (pure)


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas that are safe to send.

    Text is held back while it ends in an incomplete UTF-8 sequence (a byte-level token can split a
    character) or in a prefix of a stop string (the stop string itself is never sent, as in OpenAI's API).
    Logprob entries travel with the text they produced and are dropped with the stop string.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.pending: list[TokenLogprob] = []
        self.stopped = False

    def push(self, token_id: int, entry: TokenLogprob | None = None) -> tuple[str, list[TokenLogprob], bool]:
        """Add one token; returns ``(text delta, released logprob entries, hit a stop string)``."""
        if entry is not None:
            entry.offset = len(self.text.rstrip("\ufffd"))
            self.pending.append(entry)
        self.ids.append(token_id)
        self.text = self.decode(self.ids)
        if self.stop:
            cut = min((p for p in (self.text.find(s, self.sent) for s in self.stop) if p >= 0), default=-1)
            if cut >= 0:
                self.stopped = True
                return self._release(cut, final=True)
        safe = len(self.text.rstrip("\ufffd"))
        safe -= self._held(safe)
        return self._release(safe, final=False)

    def finish(self) -> tuple[str, list[TokenLogprob]]:
        """Flush everything held back (end of generation without a stop string)."""
        delta, entries, _ = self._release(len(self.text), final=True)
        return delta, entries

    def _held(self, end: int) -> int:
        """Length of the longest suffix of ``text[:end]`` (after what was sent) that starts a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, end - self.sent), best, -1):
                if self.text.endswith(s[:k], 0, end):
                    best = k
                    break
        return best

    def _release(self, upto: int, *, final: bool) -> tuple[str, list[TokenLogprob], bool]:
        upto = max(upto, self.sent)
        delta = self.text[self.sent : upto]
        if final:
            out = [
                e for e in self.pending if e.offset < upto or (upto == len(self.text) and not self.stopped)
            ]
            self.pending = []
        else:
            out = [e for e in self.pending if e.offset < upto]
            self.pending = self.pending[len(out) :]
        self.sent = upto
        return delta, out, self.stopped


# --------------------------------------------------------------------------------------------------
# Local HF model

GREEDY_BELOW = 1e-4  # temperatures below this sample greedily (0 is OpenAI's spelling of greedy)


def _bias_key(s: Sampling, spec: Any) -> tuple:
    """Requests with equal keys can share a batch."""
    return (
        s.temperature,
        s.top_p,
        s.logit_bias,
        s.presence_penalty,
        s.frequency_penalty,
        None
        if spec is None
        else (spec.scheme, spec.key, spec.gamma, spec.delta, spec.context_width, spec.hf_compat),
    )


@dataclass
class _Job:
    request: GenerationRequest
    handle: Generation
    key: tuple
    enqueued: float


@dataclass
class BatchStats:
    """Counters that show whether batching pays (exported by /metrics)."""

    batches: int = 0
    rows: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    sizes: deque = field(default_factory=lambda: deque(maxlen=1024))


class LocalBackend:
    """A local HF causal LM, sampled with the configured watermark, batched in one worker thread."""

    kind = "local"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        model_id: str | None = None,
        watermarked: bool = True,
        scheme: str | None = None,
        batch_max_size: int = 8,
        batch_wait_ms: float = 2.0,
        threads: int | None = None,
    ):
        from distillguard.config import num_threads
        from distillguard.lm.io import load_model_and_tokenizer

        self.model, self.tokenizer = load_model_and_tokenizer(model_dir)
        self.model_id = model_id or Path(model_dir).name
        self.watermarked = watermarked
        self.scheme = scheme
        self.vocab_size = int(self.model.config.vocab_size)
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos_id or 0)
        )
        self.bos_id = self.tokenizer.bos_token_id
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.batch_max_size = max(1, int(batch_max_size))
        self.batch_wait_s = max(0.0, float(batch_wait_ms)) / 1000.0
        self.threads = threads or num_threads()
        self.stats = BatchStats()
        self._pieces: dict[int, str] = {}
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._deferred: deque[_Job] = deque()
        self._thread: threading.Thread | None = None
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    # -- prompts -----------------------------------------------------------------------------------

    def model_cards(self) -> list[dict]:
        return [
            model_card(
                self.model_id, owned_by="distillguard", watermarked=self.watermarked, scheme=self.scheme
            )
        ]

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, messages: list[dict]) -> Prompt:
        """The tokenizer's chat template if it has one; else the last user message through ``format_prompt``.

        The fallback is what our world models were trained on (``Question: ...\\nAnswer:``): a model without
        a template has no notion of roles, so earlier turns would only confuse it.
        """
        from distillguard.lm.chat import format_prompt

        if self.has_template:
            try:
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            except Exception as exc:  # jinja raises its own errors for conversations the template rejects
                raise APIError(
                    400, f"messages rejected by the chat template: {exc}", param="messages"
                ) from None
        else:
            users = [m["content"] for m in messages if m["role"] == "user"]
            if not users:
                raise APIError(400, "messages must contain a user message", param="messages")
            text = format_prompt(self.tokenizer, users[-1])
        return Prompt(text, self._prefixed(self._encode(text)))

    def completion_prompts(self, prompt: str | list) -> list[Prompt]:
        if isinstance(prompt, str):
            items: list = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            items = [list(prompt)]
        else:
            items = list(prompt)
        if not items:
            raise APIError(400, "prompt must not be empty", param="prompt")
        out = []
        for item in items:
            if isinstance(item, str):
                out.append(Prompt(item, self._prefixed(self._encode(item))))
            else:
                self.check_token_ids(item, "prompt")
                ids = self._prefixed(tuple(item))
                out.append(Prompt(self.tokenizer.decode(list(ids), skip_special_tokens=True), ids))
        return out

    def _prefixed(self, ids: tuple[int, ...]) -> tuple[int, ...]:
        """An empty prompt starts from BOS (or EOS/pad): the model needs at least one input token."""
        if ids:
            return ids
        start = (
            self.bos_id
            if self.bos_id is not None
            else (self.eos_id if self.eos_id is not None else self.pad_id)
        )
        return (int(start),)

    def check_token_ids(self, ids: Sequence[int], param: str) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise APIError(
                400,
                f"token id {bad[0]} in '{param}' is outside the vocabulary (size {self.vocab_size})",
                param=param,
            )

    def piece(self, token_id: int) -> str:
        """The decoded text of one token id (what logprobs report as ``token``)."""
        p = self._pieces.get(token_id)
        if p is None:
            p = self.tokenizer.decode(
                [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            self._pieces[token_id] = p
        return p

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def startup(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="distillguard-model", daemon=True)
            self._thread.start()

    async def aclose(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    def start(self, request: GenerationRequest) -> Generation:
        handle = Generation(request.rows)
        self._jobs.put(_Job(request, handle, _bias_key(request.sampling, request.spec), time.perf_counter()))
        return handle

    # -- worker ------------------------------------------------------------------------------------

    def _worker(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        while True:
            job = self._deferred.popleft() if self._deferred else self._jobs.get()
            if job is None:
                return
            if job.handle.cancelled.is_set():
                continue
            batch = self._gather(job)
            if batch is None:
                return
            t0 = time.perf_counter()
            try:
                tokens = self._run(batch)
            except Exception as exc:  # a model failure must reach the waiting requests, not kill the worker
                log.exception("generation failed")
                for j in batch:
                    j.handle.push(
                        APIError(500, f"generation failed: {type(exc).__name__}", code="server_error")
                    )
                continue
            st = self.stats
            st.batches += 1
            st.rows += sum(j.request.rows for j in batch)
            st.tokens += tokens
            st.busy_s += time.perf_counter() - t0
            st.sizes.append(sum(j.request.rows for j in batch))

    def _gather(self, first: _Job) -> list[_Job] | None:
        """Whatever is queued already, then up to ``batch_wait_ms`` more: compatible jobs share a batch."""
        batch, rows = [first], first.request.rows
        if first.request.sampling.seed is not None or rows >= self.batch_max_size:
            return batch
        deadline = time.perf_counter() + self.batch_wait_s
        skipped: list[_Job] = []
        candidates = list(self._deferred)
        self._deferred.clear()
        while rows < self.batch_max_size:
            if candidates:
                nxt = candidates.pop(0)
            else:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        nxt = self._jobs.get(timeout=left)
                    except queue.Empty:
                        break
            if nxt is None:
                self._jobs.put(None)  # shutdown after this batch
                break
            if nxt.handle.cancelled.is_set():
                continue
            if (
                nxt.key == first.key
                and nxt.request.sampling.seed is None
                and rows + nxt.request.rows <= self.batch_max_size
            ):
                batch.append(nxt)
                rows += nxt.request.rows
            else:
                skipped.append(nxt)
        self._deferred.extend(skipped + candidates)
        return batch

    def _run(self, jobs: list[_Job]) -> int:
        """Decode one batch to the end; returns the number of tokens generated."""
        import torch

        from distillguard.watermark.processor import SamplingProcessor, WatermarkLogitsProcessor

        first = jobs[0].request
        s = first.sampling
        greedy = s.temperature < GREEDY_BELOW  # dividing logits by a tiny temperature overflows: same limit
        temp = 1.0 if greedy else s.temperature
        if first.spec is not None:
            proc = WatermarkLogitsProcessor(
                first.spec.with_vocab(self.vocab_size), temperature=temp, top_p=s.top_p
            )
        else:
            proc = SamplingProcessor(temperature=temp, top_p=s.top_p)

        rows: list[_Row] = []
        for job in jobs:
            req = job.request
            base = req.sampling.seed if req.sampling.seed is not None else secrets.randbits(62)
            for i, prompt in enumerate(req.prompts):
                for j in range(req.sampling.n):
                    index = i * req.sampling.n + j
                    gen = torch.Generator().manual_seed((base * 1_000_003 + index) % (2**63))
                    rows.append(
                        _Row(
                            job,
                            index,
                            prompt.ids,
                            IncrementalDecoder(self._decode, req.sampling.stop),
                            gen,
                            req.max_tokens,
                        )
                    )
        B = len(rows)
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r.prompt) :] = torch.tensor(r.prompt, dtype=torch.long)
            attn[b, width - len(r.prompt) :] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        vocab_width = None
        bias = None
        counts = None
        top_k = max((j.request.sampling.logprobs or 0) for j in jobs)
        want_lp = any(j.request.sampling.logprobs is not None for j in jobs)
        seq = ids
        steps = max(r.max_tokens for r in rows)
        generated = 0
        with torch.inference_mode():
            out = self.model(
                input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1
            )
            for _step in range(steps):
                scores = out.logits[:, -1, :].float()
                if vocab_width is None:
                    vocab_width = scores.shape[-1]
                    if s.logit_bias:
                        bias = torch.zeros(vocab_width)
                        for tok, val in s.logit_bias:
                            if tok < vocab_width:
                                bias[tok] = val
                    if s.presence_penalty or s.frequency_penalty:
                        counts = torch.zeros((B, vocab_width))
                if bias is not None:
                    scores = scores + bias
                if counts is not None:
                    scores = scores - s.frequency_penalty * counts - s.presence_penalty * (counts > 0).float()
                scores = proc(seq, scores)
                logp = torch.log_softmax(scores, dim=-1)
                if greedy:
                    chosen = scores.argmax(-1)
                else:
                    probs = logp.exp()
                    chosen = torch.empty(B, dtype=torch.long)
                    for b, r in enumerate(rows):
                        if r.done:
                            chosen[b] = self.pad_id
                        elif torch.isfinite(probs[b]).all() and probs[b].sum() > 0:
                            chosen[b] = torch.multinomial(probs[b], 1, generator=r.gen).item()
                        else:  # numerically degenerate row (extreme bias and temperature): its argmax
                            chosen[b] = int(torch.nan_to_num(scores[b], nan=float("-inf")).argmax())
                chosen_list = chosen.tolist()
                if want_lp:
                    chosen_lp = logp.gather(1, chosen[:, None])[:, 0].tolist()
                    if top_k:
                        top_v, top_i = torch.topk(logp, top_k, dim=-1)
                        top_v, top_i = top_v.tolist(), top_i.tolist()
                for b, r in enumerate(rows):
                    if r.done:
                        continue
                    if r.job.handle.cancelled.is_set():
                        r.done = True
                        continue
                    tok = chosen_list[b]
                    if tok == self.eos_id:
                        self._finish(r, "stop")
                        continue
                    r.count += 1
                    generated += 1
                    r.job.handle.generated += 1
                    if counts is not None:
                        counts[b, tok] += 1
                    entry = None
                    if r.job.request.sampling.logprobs is not None:
                        k = r.job.request.sampling.logprobs
                        entry = TokenLogprob(
                            self.piece(tok),
                            finite_logprob(chosen_lp[b]),
                            [
                                (self.piece(t), finite_logprob(v))
                                for t, v in zip(top_i[b][:k], top_v[b][:k], strict=True)
                            ]
                            if k
                            else [],
                            0,
                        )
                    delta, entries, stopped = r.decoder.push(tok, entry)
                    if stopped:
                        r.job.handle.push(ChoiceDelta(r.index, delta, entries, "stop", r.count))
                        r.done = True
                    elif r.count >= r.max_tokens:
                        self._finish(r, "length", delta, entries)
                    elif delta or entries:
                        r.job.handle.push(ChoiceDelta(r.index, delta, entries))
                if all(r.done for r in rows):
                    break
                nxt = chosen[:, None]
                seq = torch.cat([seq, nxt], dim=1)
                attn = torch.cat([attn, torch.ones((B, 1), dtype=torch.long)], dim=1)
                pos = pos[:, -1:] + 1
                cache = out.get("cache") if "cache" in out else out.get("past_key_values")
                out = self.model(
                    input_ids=nxt,
                    attention_mask=attn,
                    position_ids=pos,
                    use_cache=True,
                    **{self._cache_arg: cache},
                )
        for r in rows:  # rows cut short by the step budget (cannot happen unless max_tokens differ) end here
            if not r.done:
                self._finish(r, "length")
        return generated

    def _finish(self, r: _Row, reason: str, delta: str = "", entries: Sequence[TokenLogprob] = ()) -> None:
        rest, more = r.decoder.finish()
        r.job.handle.push(ChoiceDelta(r.index, delta + rest, [*entries, *more], reason, r.count))
        r.done = True


@dataclass
class _Row:
    job: _Job
    index: int
    prompt: tuple[int, ...]
    decoder: IncrementalDecoder
    gen: Any
    max_tokens: int
    count: int = 0
    done: bool = False


# --------------------------------------------------------------------------------------------------
# Stub (benchmarks)

STUB_TEXT = "This is a fixed answer from the stub backend."


class StubBackend:
    """Answers instantly with a fixed text: the gateway's own cost, measured without a model behind it.

    Tokens are whitespace-separated words, so usage and quotas stay meaningful.
    """

    kind = "stub"
    watermarked = False

    def __init__(self, model_id: str = "stub", text: str = STUB_TEXT, context_length: int = 1 << 20):
        self.model_id = model_id
        self.words = text.split(" ")
        self.context_length = context_length

    def model_cards(self) -> list[dict]:
        return [model_card(self.model_id, owned_by="distillguard", watermarked=False, scheme=None)]

    def chat_prompt(self, messages: list[dict]) -> Prompt:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return Prompt(text, tuple(range(len(text.split()) + 1)))

    def completion_prompts(self, prompt: str | list) -> list[Prompt]:
        if isinstance(prompt, str):
            return [Prompt(prompt, tuple(range(len(prompt.split()) + 1)))]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [Prompt("", tuple(prompt))]
        return [self.completion_prompts(p)[0] for p in prompt]

    def check_token_ids(self, ids: Sequence[int], param: str) -> None:
        return None

    async def startup(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def start(self, request: GenerationRequest) -> Generation:
        handle = Generation(request.rows)
        k = min(request.max_tokens, len(self.words))
        handle.generated = k * request.rows
        finish = "stop" if k == len(self.words) else "length"
        for i in range(request.rows):
            words = self.words[:k]
            for w, word in enumerate(words):
                text = word if w == 0 else " " + word
                handle.push_nowait(
                    ChoiceDelta(i, text, [], finish if w == k - 1 else None, k if w == k - 1 else 0)
                )
        return handle


def stub_server_app(model_id: str = "stub", text: str = STUB_TEXT):
    """A bare OpenAI-compatible server with a fixed answer: the 'call the backend directly' baseline.

    Plain Starlette, no auth, no quota, no ledger, so the difference to the gateway in front of it is exactly
    what the gateway adds.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    words = text.split(" ")

    async def models(_: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [model_card(model_id, owned_by="stub", watermarked=False, scheme=None)],
            }
        )

    def handler(chat: bool):
        async def endpoint(request: Request) -> Response:
            body = await request.json()
            n_prompt = len(str(body.get("messages") or body.get("prompt") or "").split()) + 1
            k = min(int(body.get("max_tokens") or len(words)), len(words))
            finish = "stop" if k == len(words) else "length"
            created = int(time.time())
            if not body.get("stream"):
                content = " ".join(words[:k])
                choice = (
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                    if chat
                    else {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
                )
                return Response(
                    dumps(
                        {
                            "id": "stub-1",
                            "object": "chat.completion" if chat else "text_completion",
                            "created": created,
                            "model": model_id,
                            "choices": [choice],
                            "usage": usage(n_prompt, k),
                        }
                    ),
                    media_type="application/json",
                )
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def gen():
                obj = "chat.completion.chunk" if chat else "text_completion"
                for w, word in enumerate(words[:k]):
                    piece = word if w == 0 else " " + word
                    fr = finish if w == k - 1 else None
                    choice = (
                        {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": fr}
                        if chat
                        else {"index": 0, "text": piece, "logprobs": None, "finish_reason": fr}
                    )
                    yield sse(
                        {
                            "id": "stub-1",
                            "object": obj,
                            "created": created,
                            "model": model_id,
                            "choices": [choice],
                        }
                    )
                if include_usage:
                    yield sse(
                        {
                            "id": "stub-1",
                            "object": obj,
                            "created": created,
                            "model": model_id,
                            "choices": [],
                            "usage": usage(n_prompt, k),
                        }
                    )
                yield SSE_DONE

            return StreamingResponse(gen(), media_type="text/event-stream")

        return endpoint

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", handler(True), methods=["POST"]),
            Route("/v1/completions", handler(False), methods=["POST"]),
        ]
    )


# --------------------------------------------------------------------------------------------------
# Upstream proxy


class UpstreamConnectionError(Exception):
    """The upstream could not be reached or broke the connection (maps to 502)."""


class _Conn:
    __slots__ = ("reader", "writer", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer, self.reused = reader, writer, False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Http11Pool:
    """Keep-alive HTTP/1.1 connections to one upstream origin, lean enough for a proxy's hot path.

    Why not httpx here: on a 2-core machine httpx spent about 2.9 ms of CPU per request (more than the rest of
    the gateway together) and its pool slows down further under concurrency. This client writes each
    request in one ``write``, parses the status line and headers, and reads ``Content-Length``, chunked or
    until-close bodies. A request on a pooled connection that the upstream had already closed (keep-alive
    timeout) is retried once on a fresh connection, before any byte of a response was read.
    """

    def __init__(self, url: str, headers: dict[str, str], *, timeout: float, max_idle: int = 256):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = self.port == (443 if self.ssl else 80)
        authority = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not self.host.startswith("["):
            authority = f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}"
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"host": authority, **headers}.items())
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: list[_Conn] = []

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def _encode(self, method: str, path: str, body: bytes | None) -> bytes:
        head = f"{method} {self.base}{path} HTTP/1.1\r\n{self._fixed}"
        if body is not None:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        return (head + "\r\n").encode("latin-1") + (body or b"")

    async def _acquire(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                conn.reused = True
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=1 << 20),
                min(self.timeout, 10.0),
            )
        except (TimeoutError, OSError) as exc:
            raise UpstreamConnectionError(f"cannot connect: {type(exc).__name__}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer)

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and len(self._idle) < self.max_idle and not conn.reader.at_eof():
            conn.reused = False
            self._idle.append(conn)
        else:
            conn.close()

    async def _start(self, method: str, path: str, body: bytes | None) -> tuple[_Conn, int, dict[str, str]]:
        """Send the request and read the response head; one retry on a stale pooled connection."""
        data = self._encode(method, path, body)
        for attempt in (0, 1):
            conn = await self._acquire()
            try:
                conn.writer.write(data)
                await conn.writer.drain()
                head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), self.timeout)
            except TimeoutError:  # before OSError, its base class: a slow upstream is never retried
                conn.close()
                raise UpstreamConnectionError("timed out waiting for the upstream") from None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                conn.close()
                if conn.reused and attempt == 0:
                    continue  # the upstream closed an idle keep-alive connection: nothing was processed
                raise UpstreamConnectionError(f"connection failed: {type(exc).__name__}") from None
            lines = head.decode("latin-1").split("\r\n")
            try:
                version, code = lines[0].split(" ", 2)[:2]
                status = int(code)
            except ValueError:
                conn.close()
                raise UpstreamConnectionError("malformed response from the upstream") from None
            headers: dict[str, str] = {}
            for ln in lines[1:]:
                if ln:
                    k, _, v = ln.partition(":")
                    headers[k.strip().lower()] = v.strip()
            if version == "HTTP/1.0":
                headers.setdefault("connection", "close")
            return conn, status, headers
        raise UpstreamConnectionError("connection failed")  # pragma: no cover - loop always returns/raises

    async def _chunks(self, conn: _Conn, headers: dict[str, str], status: int) -> AsyncIterator[bytes]:
        """The body, chunk by chunk; returns the connection to the pool when it was read to the end."""
        keep = headers.get("connection", "").lower() != "close"
        done = False
        try:
            if status in (204, 304) or 100 <= status < 200:
                done = True
                return
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    line = await asyncio.wait_for(conn.reader.readuntil(b"\r\n"), self.timeout)
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while (
                            await asyncio.wait_for(conn.reader.readuntil(b"\r\n"), self.timeout)
                        ) != b"\r\n":
                            pass  # trailers
                        done = True
                        return
                    chunk = await asyncio.wait_for(conn.reader.readexactly(size + 2), self.timeout)
                    yield chunk[:-2]
            elif "content-length" in headers:
                left = int(headers["content-length"])
                while left > 0:
                    chunk = await asyncio.wait_for(conn.reader.read(min(left, 1 << 16)), self.timeout)
                    if not chunk:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(chunk)
                    yield chunk
                done = True
            else:  # read until the upstream closes
                keep = False
                while chunk := await asyncio.wait_for(conn.reader.read(1 << 16), self.timeout):
                    yield chunk
                done = True
        except TimeoutError:
            raise UpstreamConnectionError("timed out reading the upstream's answer") from None
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise UpstreamConnectionError(f"response broken off: {type(exc).__name__}") from None
        finally:
            self._release(conn, keep and done)

    async def request(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn, status, headers = await self._start(method, path, body)
        parts = [c async for c in self._chunks(conn, headers, status)]
        return status, headers, b"".join(parts)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, body: bytes | None = None):
        """``(status, headers, chunks)``; leaving early closes the connection instead of pooling it."""
        conn, status, headers = await self._start(method, path, body)
        chunks = self._chunks(conn, headers, status)
        try:
            yield status, headers, chunks
        finally:
            await chunks.aclose()
            if conn not in self._idle:  # never iterated (its finally never ran), or not reusable
                conn.close()


async def iter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Lines of a byte stream (SSE events are line-based)."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            yield ln.rstrip(b"\r").decode("utf-8", errors="replace")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


class UpstreamBackend:
    """Proxy to another OpenAI-compatible server (``url`` ends in ``/v1``) with its own API key.

    Auth, quotas and the ledger still apply in front of it; its outputs are not watermarked. The upstream's
    answers never reach the client as they are: its 4xx become our own messages with the same status (its
    error code kept when it is a plain identifier, ``Retry-After`` kept on a 429), anything else (our key
    refused, an upstream failure, no connection) a 502 with a fixed message. An upstream's error text can
    carry its configuration or our key; it goes to the log only.
    """

    kind = "upstream"
    watermarked = False

    def __init__(
        self, url: str, api_key: str | None = None, *, timeout: float = 120.0, max_connections: int = 512
    ):
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = Http11Pool(
            self.url, {**headers, "accept": "application/json"}, timeout=timeout, max_idle=max_connections
        )
        self._models: tuple[float, list[dict]] | None = None

    async def startup(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.http.aclose()

    async def model_cards(self) -> list[dict]:
        """The upstream's models (cached for 30 s), each marked ``"watermarked": false``."""
        now = time.monotonic()
        if self._models is not None and now - self._models[0] < 30:
            return self._models[1]
        data = _json_object(await self._request("GET", "/models"))
        cards = [dict(m, watermarked=False) for m in data.get("data") or [] if isinstance(m, dict)]
        self._models = (now, cards)
        return cards

    async def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        try:
            status, headers, data = await self.http.request(method, path, body)
        except UpstreamConnectionError as exc:
            log.warning("upstream unreachable: %s", exc)
            raise APIError(502, "The upstream model is unreachable.", code="upstream_error") from None
        self._raise_for(status, data, headers)
        return data

    @staticmethod
    def _raise_for(status: int, content: bytes, headers: dict[str, str]) -> None:
        if status < 400:
            return
        code = None
        try:
            err = json.loads(content).get("error") or {}
            code = err.get("code")
        except (ValueError, AttributeError):
            pass
        log.warning("upstream answered HTTP %s: %s", status, content[:500].decode("utf-8", "replace"))
        if not (isinstance(code, str) and _PLAIN_CODE.fullmatch(code)):
            code = None
        if status == 429:
            retry = headers.get("retry-after", "")
            extra = {"retry-after": retry} if retry.isascii() and retry.isdigit() and len(retry) < 8 else None
            raise APIError(
                429, "The upstream model is rate limited; retry later.", code=code or "rate_limit_exceeded",
                headers=extra,
            )  # fmt: skip
        if 400 <= status < 500 and status not in (401, 403, 407):  # the client's mistakes stay theirs
            message = f"The upstream model refused the request (HTTP {status})."
            raise APIError(status, message, code=code or "upstream_error")
        raise APIError(502, f"The upstream model failed (HTTP {status}).", code="upstream_error")

    async def complete(self, path: str, body: dict) -> dict:
        return _json_object(await self._request("POST", path, dumps(body)))

    async def stream(self, path: str, body: dict) -> AsyncIterator[dict]:
        """Yield the upstream's SSE chunks as dicts (``[DONE]`` ends the iteration)."""
        try:
            async with self.http.stream("POST", path, dumps(body)) as (status, headers, chunks):
                if status >= 400:
                    self._raise_for(status, b"".join([c async for c in chunks]), headers)
                async for line in iter_lines(chunks):
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        raise APIError(
                            502, "upstream sent a malformed stream event", code="upstream_error"
                        ) from None
                    if isinstance(chunk, dict):
                        yield chunk
        except UpstreamConnectionError as exc:
            log.warning("upstream stream failed: %s", exc)
            raise APIError(502, "The upstream model's stream failed.", code="upstream_error") from None


_PLAIN_CODE = re.compile(r"[a-z_]{1,48}")


def _json_object(data: bytes) -> dict:
    try:
        obj = json.loads(data)
    except ValueError:
        raise APIError(502, "upstream returned a non-JSON answer", code="upstream_error") from None
    if not isinstance(obj, dict):
        raise APIError(502, "upstream returned a malformed answer", code="upstream_error")
    return obj


def estimate_tokens(text: str) -> int:
    """An upper bound on tokens for a text we cannot tokenise (proxy mode): one per UTF-8 byte.

    Byte-level and byte-fallback tokenizers never emit more tokens than bytes, so a reservation sized by this
    never undercounts; the actual usage the upstream reports is committed afterwards.
    """
    return len(text.encode("utf-8"))


def ceil_int(x: float) -> int:
    return max(1, math.ceil(x))

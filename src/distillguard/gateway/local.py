"""The local backend: a HF causal LM sampled with the watermark, batched in one worker thread.

The model runs in one worker thread (never on the event loop) and decodes token by token with a KV cache,
so streams carry real incremental tokens. Requests that arrive while the worker is busy, or within
``batch_wait_ms`` of each other, and that share their sampling parameters are decoded together as one
left-padded batch (up to ``batch_max_size`` rows); each row still samples from its own generator, so a
seeded request gives the same answer whatever else was in flight (seeded requests are never batched with
others, since padding changes the floating-point reduction order).

Logprobs are the log-softmax of one distribution the client cannot move: the model's logits with the
tier's sampling defence and our watermark, at temperature 1, without nucleus filtering, penalties or the
client's logit bias (the bias only when the request's
:class:`~distillguard.gateway.logprob_policy.LogprobPolicy` says ``after_bias``: that module says why),
rounded as the policy says. Like OpenAI's, they do not depend on the request's temperature: a low
temperature would otherwise scale the rounding step down (reading logits 100x finer at 0.01) and shrink the
watermark's bias in them to nothing, and penalties would let a client dither the rounding. They never reveal
the unmarked distribution, so top-k logprobs cannot be used to subtract the watermark out.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillguard.gateway.generation import ChoiceDelta, Generation, GenerationRequest, Prompt, model_card
from distillguard.gateway.logprob_policy import LogprobPolicy
from distillguard.gateway.protocol import APIError, Sampling, TokenLogprob, finite_logprob
from distillguard.lm.tokens import is_byte_level, token_bytes

log = logging.getLogger("distillguard.gateway")
DEFAULT_POLICY = LogprobPolicy()


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


def _bias_key(s: Sampling, spec: Any, policy: LogprobPolicy | None = None, defence: Any = None) -> tuple:
    """Requests with equal keys can share a batch."""
    return (
        (policy or DEFAULT_POLICY).backend_key(),
        None if defence is None else defence.key(),
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
        self.model_dir = Path(model_dir)
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
        self._raw: dict[int, bytes] = {}
        self._byte_level = is_byte_level(self.tokenizer)
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

    def defence_options(self, settings: Any) -> dict[str, Any]:
        """What building a tier's sampling defence may read (countermeasures/): for ``ads`` the proxy student
        and task data (``ads_proxy``/``ads_data``; serving a world's teacher, the world's reference model and
        instructions), and how to encode a task example exactly as a chat request is rendered here."""
        world = self.model_dir.resolve().parent
        in_world = (world / "world.json").is_file()
        return {
            "proxy": settings.ads_proxy or (str(world / "reference") if in_world else None),
            "data": settings.ads_data or (str(world / "instructions.jsonl") if in_world else None),
            "n_examples": settings.ads_examples,
            "epsilon": settings.ads_epsilon,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer,
            "encode": self.task_example,
        }

    def task_example(self, prompt: str, answer: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(prompt ids as a chat request renders them, answer ids + end of sequence)."""
        end = (self.eos_id,) if self.eos_id is not None else ()
        return self.chat_prompt([{"role": "user", "content": prompt}]).ids, self._encode(answer) + end

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

    def piece_bytes(self, token_id: int) -> bytes:
        """The exact bytes of one token id (what logprobs report as ``bytes``; see lm.tokens)."""
        p = self._raw.get(token_id)
        if p is None:
            p = self._raw[token_id] = token_bytes(self.tokenizer, token_id, self._byte_level)
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
        self._jobs.put(
            _Job(
                request,
                handle,
                _bias_key(request.sampling, request.spec, request.logprobs, request.defence),
                time.perf_counter(),
            )
        )
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
            spec = first.spec.with_vocab(self.vocab_size)
            proc = WatermarkLogitsProcessor(spec, temperature=temp, top_p=s.top_p)
            shown = WatermarkLogitsProcessor(spec)  # what logprobs report: temperature 1, no nucleus
        else:
            proc = SamplingProcessor(temperature=temp, top_p=s.top_p)
            shown = SamplingProcessor()

        rows: list[_Row] = []
        for job in jobs:
            req = job.request
            base = req.sampling.seed if req.sampling.seed is not None else secrets.randbits(62)
            for i, prompt in enumerate(self._defended(req.prompts, req.defence)):
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
        policy = first.logprobs or DEFAULT_POLICY  # equal for the whole batch (the batch key holds it)
        # the tier's sampling defence (countermeasures/), equal for the whole batch too
        defence = first.defence.start(ids, attn, pos) if first.defence is not None else None
        seq = ids
        steps = max(r.max_tokens for r in rows)
        generated = 0
        with torch.inference_mode():
            out = self.model(
                input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1
            )
            for _step in range(steps):
                scores = out.logits[:, -1, :].float()
                if defence is not None:  # before penalties, the client's bias, temperature and our watermark
                    scores = defence.adjust(scores)
                model_scores = scores
                if vocab_width is None:
                    vocab_width = scores.shape[-1]
                    if s.logit_bias:
                        bias = torch.zeros(vocab_width)
                        for tok, val in s.logit_bias:
                            if tok < vocab_width:
                                bias[tok] = val
                    if s.presence_penalty or s.frequency_penalty:
                        counts = torch.zeros((B, vocab_width))
                if counts is not None:
                    scores = scores - s.frequency_penalty * counts - s.presence_penalty * (counts > 0).float()
                if bias is not None:
                    scores = scores + bias
                scores = proc(seq, scores)
                logp = torch.log_softmax(scores, dim=-1)
                if want_lp:  # what logprobs show (module docstring): nothing the request sets moves it
                    shown_in = model_scores + bias if bias is not None and policy.after_bias else model_scores
                    report = torch.log_softmax(shown(seq, shown_in), dim=-1)
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
                    chosen_lp = report.gather(1, chosen[:, None])[:, 0].tolist()
                    if top_k:
                        top_v, top_i = torch.topk(report, top_k, dim=-1)
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
                        listed, values = (top_i[b][:k], top_v[b][:k]) if k else ([], [])
                        entry = TokenLogprob(
                            self.piece(tok),
                            finite_logprob(policy.report(chosen_lp[b])),
                            [
                                (self.piece(t), finite_logprob(policy.report(v)))
                                for t, v in zip(listed, values, strict=True)
                            ],
                            0,
                            self.piece_bytes(tok),
                            tuple(self.piece_bytes(t) for t in listed),
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
                if defence is not None:
                    defence.advance(nxt, attn, pos)
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

    def _defended(self, prompts: list[Prompt], defence: Any) -> list[Prompt]:
        """The prompts as the model reads them: the tier's defence may rewrite the rendered text (``cot``
        takes out requests for reasoning), which is then tokenised again; untouched prompts keep their ids."""
        if defence is None:
            return prompts
        out = []
        for p in prompts:
            text = defence.prompt(p.text)
            out.append(p if text == p.text else Prompt(text, self._prefixed(self._encode(text))))
        return out

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

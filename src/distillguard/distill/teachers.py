"""Teachers: where distillation answers come from, a remote OpenAI-compatible API or a local HF model.

Why both behind one protocol: the attack a platform must withstand is a black-box (or grey-box, top-k
logprobs) collection from a chat API, and the same code path must also work against a local model so the
whole attack can be rehearsed offline. :class:`HTTPTeacher` is a real client (key rotation, backoff,
``Retry-After``, clear errors); it is also the traffic the gateway polices.

Error policy. A :class:`~distillguard.errors.UserError` means the whole collection cannot go on (teacher
unreachable, not an OpenAI-compatible API, every key rejected, wrong model name): the collector stops and the
cache keeps what was done. A :class:`TeacherError` means one request failed after all retries (rate limits
that never cleared, a server error, a prompt the server refused): the collector counts it and moves on.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import httpx

from distillguard.errors import UserError

if TYPE_CHECKING:  # torch stays unimported for HTTP-only collection
    from distillguard.watermark.schemes import WatermarkSpec

MAX_RETRY_AFTER = 600.0
"""Longest ``Retry-After`` honoured, in seconds (a daily-quota 429 must not park a key for a day)."""


class TeacherError(Exception):
    """One request failed for good (retries exhausted or refused); other requests may still succeed."""


@dataclass
class Answer:
    """A teacher's answer to one prompt.

    ``logprobs`` uses OpenAI's chat shape, one entry per completion token:
    ``{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}``.
    ``token_ids`` is only known for a local teacher.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict] | None = None
    token_ids: list[int] | None = None


@runtime_checkable
class Teacher(Protocol):
    """Anything that answers prompts. ``name`` (URL or directory) goes into collection records."""

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


# --------------------------------------------------------------------------------------------------
# Pure helpers (no I/O): URL normalisation, Retry-After, response parsing


def normalize_base_url(url: str) -> str:
    """The API base that ``/chat/completions`` and ``/models`` are appended to.

    ``http://host:port`` and ``http://host:port/`` become ``http://host:port/v1``; a URL with a path is
    taken as the base as given (``http://host/v1``, ``https://host/api/v1``), minus a trailing slash and a
    pasted ``/chat/completions`` or ``/models`` endpoint.
    """
    raw = url.strip()
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"not a teacher URL: {url!r} (expected http(s)://host[:port][/v1])")
    try:
        parts.port  # noqa: B018 - validates the port number
    except ValueError:
        raise UserError(f"not a teacher URL: {url!r} (bad port)") from None
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/models"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped; None if absent
    or unreadable. ``now`` is a Unix time (default: the current time) for the HTTP-date form."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def error_message(body: str, limit: int = 200) -> str:
    """The server's own words from an error body: OpenAI's ``error.message``, FastAPI's ``detail``, or the
    first line of text."""
    import json

    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"]
        elif isinstance(err, str):
            text = err
        elif isinstance(data.get("detail"), str):
            text = data["detail"]
        elif isinstance(data.get("message"), str):
            text = data["message"]
    line = text.splitlines()[0].strip() if text else ""
    return (line[: limit - 3] + "...") if len(line) > limit else (line or "no message")


def estimate_tokens(text: str) -> int:
    """About 4 characters per token: the fallback when a server reports no ``usage``."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def parse_chat_completion(data: object, prompt: str = "") -> Answer:
    """An :class:`Answer` from a ``/chat/completions`` response body; ``ValueError`` if it has not that shape.

    Missing ``usage`` is estimated (:func:`estimate_tokens`, or the number of logprob entries for the
    completion) so token budgets still hold against servers that omit it.
    """
    try:
        choice = data["choices"][0]  # type: ignore[index]
        message = choice["message"]
        text = message.get("content")
    except (KeyError, IndexError, TypeError):
        raise ValueError("no choices[0].message in the answer") from None
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError("choices[0].message.content is not a string")
    logprobs = None
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        logprobs = lp["content"]
    usage = data.get("usage") if isinstance(data, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    if not isinstance(prompt_tokens, int):
        prompt_tokens = estimate_tokens(prompt)
    if not isinstance(completion_tokens, int):
        completion_tokens = len(logprobs) if logprobs is not None else estimate_tokens(text)
    return Answer(
        text=text,
        finish_reason=str(choice.get("finish_reason") or "stop"),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        logprobs=logprobs,
    )


def _describe(exc: BaseException) -> str:
    """One short line for a transport error ("connection refused", "timed out", "host name not resolved").

    httpx wraps the socket error ("All connection attempts failed"), so the cause chain is searched for the
    operating system's own reason.
    """
    import errno
    import socket

    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "host name not resolved"
    if any(isinstance(e, httpx.TimeoutException | TimeoutError) for e in chain):
        return "timed out"
    text = str(chain[-1]).strip() or str(exc).strip()
    low = text.lower()
    if "refused" in low:
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low:
        return "host name not resolved"
    if not text:
        return type(exc).__name__
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text.splitlines()[0])


# --------------------------------------------------------------------------------------------------
# Remote teacher


@dataclass
class _Key:
    key: str | None
    cooldown_until: float = 0.0  # time.monotonic() before which this key is not used
    retired: str | None = None  # why the server refused it for good
    requests: int = 0


class HTTPTeacher:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint over ``httpx.AsyncClient``.

    * ``url``: the API base, with or without the trailing ``/v1`` (see :func:`normalize_base_url`).
    * ``api_keys``: zero (no ``Authorization`` header), one or several keys, used round-robin. A key that
      gets 429 (or a 5xx with ``Retry-After``) cools down for the server's ``Retry-After``, or for the
      backoff delay when there is none, while the other keys carry on; 401/403 retires the key.
    * 429, 5xx, timeouts and dropped connections are retried with exponential backoff and jitter
      (``backoff * 2**(attempt-1)``, capped at ``max_backoff``, times a random factor in [0.5, 1]) up to
      ``max_retries`` times, then the request fails with :class:`TeacherError`.
    * A teacher that was never reached fails fast: after ``connect_tries`` quick tries the request raises
      :class:`UserError` ("cannot reach teacher at URL: connection refused"), not minutes of backoff.
    * ``model=None`` asks ``GET /models`` once and uses the first id.
    """

    connect_tries = 3

    def __init__(
        self,
        url: str,
        api_keys: Sequence[str] = (),
        model: str | None = None,
        *,
        timeout: float = 60,
        max_retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30,
    ):
        if timeout <= 0:
            raise UserError(f"timeout must be > 0, got {timeout}")
        if max_retries < 0 or backoff < 0 or max_backoff < 0:
            raise UserError("max_retries, backoff and max_backoff must be >= 0")
        if isinstance(api_keys, str):
            api_keys = [api_keys]
        self.base_url = normalize_base_url(url)
        parts = urlsplit(self.base_url)
        host = parts.netloc.rsplit("@", 1)[-1]  # never put credentials from the URL into records
        self.name = urlunsplit((parts.scheme, host, parts.path, "", ""))
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        keys = list(dict.fromkeys(k.strip() for k in api_keys if k and k.strip()))
        self._keys = [_Key(k) for k in keys] or [_Key(None)]
        self._has_keys = bool(keys)
        self._rr = 0
        self._reached = False
        self._rejection: str | None = None
        self._jitter = random.Random()
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._model_lock: asyncio.Lock | None = None
        self._fatal: UserError | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        """One client per event loop: ``collect`` runs each call in its own ``asyncio.run``."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
            self._loop = loop
            self._model_lock = asyncio.Lock()
            self._fatal = None  # a new run may find the teacher fixed
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client of the current event loop (the collector calls this when it is done)."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
        self._loop = None

    def key_usage(self) -> list[dict]:
        """Per key (last 4 characters only): requests sent and why it was retired, if it was."""
        return [
            {"key": f"...{k.key[-4:]}" if k.key else None, "requests": k.requests, "retired": k.retired}
            for k in self._keys
        ]

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * 2 ** max(attempt - 1, 0))
        return base * (0.5 + 0.5 * self._jitter.random())

    async def _acquire_key(self) -> _Key:
        """The next live key round-robin, skipping keys that cool down; waits if all of them do."""
        while True:
            live = [k for k in self._keys if k.retired is None]
            if not live:
                if self._has_keys:
                    raise UserError(f"teacher at {self.name} rejected every API key ({self._rejection})")
                raise UserError(f"teacher at {self.name} needs an API key ({self._rejection})")
            now = time.monotonic()
            n = len(self._keys)
            for off in range(n):
                k = self._keys[(self._rr + off) % n]
                if k.retired is None and k.cooldown_until <= now:
                    self._rr = (self._rr + off + 1) % n
                    k.requests += 1
                    return k
            await asyncio.sleep(max(min(k.cooldown_until for k in live) - now, 0.001))

    async def _call(self, method: str, path: str, payload: dict | None) -> dict:
        """One logical request with key rotation and retries; the JSON body of a 2xx answer."""
        client = self._http()
        url = self.base_url + path
        attempt = 0
        unreachable = 0
        while True:
            key = await self._acquire_key()
            headers = {"Authorization": f"Bearer {key.key}"} if key.key else {}
            try:
                resp = await client.request(method, url, json=payload, headers=headers)
            except httpx.TransportError as exc:
                if not self._reached:
                    unreachable += 1
                    if unreachable >= self.connect_tries:
                        raise UserError(f"cannot reach teacher at {self.name}: {_describe(exc)}") from None
                    await asyncio.sleep(0.1 * unreachable)
                    continue
                attempt += 1
                if attempt > self.max_retries:
                    raise TeacherError(f"{method} {path}: {_describe(exc)} after {attempt} tries") from None
                await asyncio.sleep(self._delay(attempt))
                continue
            self._reached = True
            status = resp.status_code
            if status in (401, 403):
                key.retired = f"HTTP {status}: {error_message(resp.text)}"
                self._rejection = key.retired
                continue
            if status == 429 or status >= 500:
                attempt += 1
                if attempt > self.max_retries:
                    raise TeacherError(
                        f"{method} {path}: HTTP {status} after {attempt} tries: {error_message(resp.text)}"
                    )
                wait = parse_retry_after(resp.headers.get("retry-after"))
                if status == 429 or wait is not None:
                    delay = wait if wait is not None else self._delay(attempt)
                    key.cooldown_until = max(key.cooldown_until, time.monotonic() + delay)
                else:
                    await asyncio.sleep(self._delay(attempt))
                continue
            if status in (404, 405):
                hint = "; pass the model name explicitly" if path == "/models" else ""
                raise UserError(
                    f"teacher at {self.name} answered HTTP {status} to {method} {path} "
                    f"({error_message(resp.text)}); is it an OpenAI-compatible API?{hint}"
                )
            if 300 <= status < 400:
                where = resp.headers.get("location", "?")
                raise UserError(f"teacher at {self.name} redirects (HTTP {status}) to {where}; use that URL")
            if status >= 400:
                raise TeacherError(f"{method} {path}: HTTP {status}: {error_message(resp.text)}")
            try:
                data = resp.json()
            except ValueError:
                kind = resp.headers.get("content-type", "unknown content type")
                raise UserError(
                    f"teacher at {self.name} did not answer {method} {path} with JSON ({kind}); "
                    "is it an OpenAI-compatible API?"
                ) from None
            if not isinstance(data, dict):
                raise UserError(f"teacher at {self.name} answered {method} {path} with a non-object")
            return data

    async def _model_name(self) -> str:
        if self.model:
            return self.model
        self._http()
        assert self._model_lock is not None
        async with self._model_lock:
            if self._fatal is not None:
                raise self._fatal
            if not self.model:
                data = await self._call("GET", "/models", None)
                ids = [m.get("id") for m in data.get("data") or [] if isinstance(m, dict)]
                ids = [i for i in ids if isinstance(i, str) and i]
                if not ids:
                    raise UserError(f"teacher at {self.name} lists no models; pass the model name explicitly")
                self.model = ids[0]
        return self.model

    # -- the Teacher protocol -----------------------------------------------------------------------

    async def answer(
        self,
        prompt: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        seed: int | None = None,
    ) -> Answer:
        """One chat completion. With ``top_logprobs`` it asks for ``logprobs: true, top_logprobs: k``.

        A :class:`UserError` (teacher unusable) sticks for the rest of the event loop: concurrent and later
        calls re-raise it at once instead of each rediscovering it.
        """
        self._http()
        if self._fatal is not None:
            raise self._fatal
        try:
            return await self._answer(prompt, max_tokens, temperature, top_logprobs, seed)
        except UserError as exc:
            self._fatal = exc
            raise

    async def _answer(
        self, prompt: str, max_tokens: int, temperature: float, top_logprobs: int | None, seed: int | None
    ) -> Answer:
        body: dict = {
            "model": await self._model_name(),
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
        }
        if seed is not None:
            body["seed"] = int(seed)
        if top_logprobs is not None:
            if top_logprobs < 0:
                raise UserError(f"top_logprobs must be >= 0, got {top_logprobs}")
            body["logprobs"] = True
            body["top_logprobs"] = int(top_logprobs)
        data = await self._call("POST", "/chat/completions", body)
        try:
            return parse_chat_completion(data, prompt)
        except ValueError as exc:
            raise UserError(
                f"teacher at {self.name} did not answer like an OpenAI-compatible API: {exc}"
            ) from None


# --------------------------------------------------------------------------------------------------
# Local teacher


class LocalTeacher:
    """A local HF causal-LM directory answering chat-formatted prompts, optionally watermarked.

    Temperature 0 is greedy (with a watermark: the argmax of the biased logits, so greedy answers carry the
    mark too); above 0 it samples through :func:`distillguard.watermark.generate.generate_ids`, seeded.
    Sampled answers depend on which prompts share a batch (the seed is per batch), greedy ones do not.

    ``top_logprobs`` come from the distribution the sampler drew from at temperature 1: the model's
    log-softmax after the KGW bias when a KGW watermark is on (a grey-box distiller sees the bias, which is
    what makes logprob distillation radioactive); Gumbel leaves the distribution unchanged. Token strings are
    decoded per id and ``bytes`` are the token's exact bytes (byte-level BPE) or its UTF-8 encoding.

    Calls are serialised (one model); :meth:`answer_many` batches, and the collector uses it.
    """

    def __init__(self, model_dir: Path, *, watermark: WatermarkSpec | None = None, batch_size: int = 16):
        from distillguard.lm.io import load_model_and_tokenizer
        from distillguard.lm.tokens import is_byte_level
        from distillguard.watermark.generate import bind_to_model

        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        self.model_dir = Path(model_dir).expanduser()
        self.name = str(self.model_dir)
        self.model, self.tokenizer = load_model_and_tokenizer(self.model_dir)
        self.watermark = bind_to_model(watermark, self.model) if watermark is not None else None
        self.batch_size = int(batch_size)
        self._lock = threading.Lock()
        self._byte_level = is_byte_level(self.tokenizer)
        self._pieces: dict[int, tuple[str, list[int]]] = {}

    async def answer(
        self,
        prompt: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        seed: int | None = None,
    ) -> Answer:
        answers = await asyncio.to_thread(
            self.answer_many,
            [prompt],
            max_tokens=max_tokens,
            temperature=temperature,
            top_logprobs=top_logprobs,
            seed=seed,
        )
        return answers[0]

    def answer_many(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        seed: int | None = None,
    ) -> list[Answer]:
        """Answer several prompts in batches of ``batch_size``; same order as ``prompts``."""
        from distillguard.lm.chat import format_prompt

        if max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {max_tokens}")
        if temperature < 0:
            raise UserError(f"temperature must be >= 0, got {temperature}")
        if top_logprobs is not None and top_logprobs < 0:
            raise UserError(f"top_logprobs must be >= 0, got {top_logprobs}")
        if not prompts:
            return []
        tok = self.tokenizer
        prompt_ids = [tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
        with self._lock:
            if temperature == 0:
                completions = self._greedy(prompt_ids, max_tokens)
            else:
                from distillguard.watermark.generate import generate_ids

                completions = generate_ids(
                    self.model,
                    prompt_ids,
                    self.watermark,
                    pad_id=self._pad_id,
                    eos_id=tok.eos_token_id,
                    max_new_tokens=max_tokens,
                    temperature=temperature,
                    batch_size=self.batch_size,
                    seed=0 if seed is None else int(seed),
                )
            logprobs = (
                self._logprobs(prompt_ids, completions, top_logprobs) if top_logprobs is not None else None
            )
        return [
            Answer(
                text=tok.decode(comp, skip_special_tokens=True),
                finish_reason="length" if len(comp) >= max_tokens else "stop",
                prompt_tokens=len(pids),
                completion_tokens=len(comp),
                logprobs=logprobs[i] if logprobs is not None else None,
                token_ids=list(comp),
            )
            for i, (pids, comp) in enumerate(zip(prompt_ids, completions, strict=True))
        ]

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _processors(self):
        from transformers import LogitsProcessorList

        from distillguard.watermark.processor import WatermarkLogitsProcessor

        if self.watermark is None:
            return LogitsProcessorList()
        return LogitsProcessorList([WatermarkLogitsProcessor(self.watermark, temperature=1.0)])

    def _greedy(self, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
        import torch

        eos = self.tokenizer.eos_token_id
        out: list[list[int]] = []
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(prompt_ids), self.batch_size):
                chunk = prompt_ids[start : start + self.batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
                attn = torch.zeros_like(ids)
                for i, p in enumerate(chunk):  # left padding: every prompt ends at the right edge
                    ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                    attn[i, width - len(p) :] = 1
                gen = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=attn.to(device),
                    logits_processor=self._processors(),
                    do_sample=False,
                    max_new_tokens=max_tokens,
                    pad_token_id=self._pad_id,
                    eos_token_id=eos,
                )
                for row in gen[:, width:].tolist():
                    if eos is not None and eos in row:
                        row = row[: row.index(eos)]
                    out.append(row)
        return out

    def _piece(self, token_id: int) -> tuple[str, list[int]]:
        """``(token string, exact bytes)`` for one id, cached."""
        hit = self._pieces.get(token_id)
        if hit is not None:
            return hit
        from distillguard.lm.tokens import token_bytes

        data = token_bytes(self.tokenizer, token_id, self._byte_level)
        text = data.decode("utf-8", errors="replace")
        hit = (text, list(data))
        self._pieces[token_id] = hit
        return hit

    def _logprobs(
        self, prompt_ids: list[list[int]], completions: list[list[int]], k: int
    ) -> list[list[dict]]:
        """Teacher-forced log-softmax per completion position, after any watermark bias (OpenAI shape)."""
        import torch

        from distillguard.watermark.schemes import fit_width

        spec = self.watermark
        device = next(self.model.parameters()).device
        out: list[list[dict]] = []
        with torch.no_grad():
            for start in range(0, len(prompt_ids), self.batch_size):
                seqs = [
                    list(p) + list(c)
                    for p, c in zip(
                        prompt_ids[start : start + self.batch_size],
                        completions[start : start + self.batch_size],
                        strict=True,
                    )
                ]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
                attn = torch.zeros_like(ids)
                for i, s in enumerate(seqs):  # right padding: positions count from 0 for every row
                    ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                    attn[i, : len(s)] = 1
                logits = self.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
                for i, s in enumerate(seqs):
                    plen = len(prompt_ids[start + i])
                    comp = s[plen:]
                    if not comp:
                        out.append([])
                        continue
                    rows = logits[i, plen - 1 : len(s) - 1]  # row t predicts comp[t]
                    if spec is not None:
                        h = spec.window
                        seq = torch.tensor(s, dtype=torch.long)
                        pos = torch.arange(plen, len(s))
                        ok = pos >= h
                        win = seq[(pos[ok][:, None] - h) + torch.arange(h)[None, :]]
                        bias = spec.impl.logit_bias(spec, win, rows.dtype) if bool(ok.any()) else None
                        if bias is not None:
                            bias = fit_width(bias, rows.shape[-1])
                            rows = rows.clone()
                            rows[ok.to(rows.device)] += bias.to(rows.device)
                    lp = torch.log_softmax(rows, dim=-1)
                    chosen = lp.gather(1, torch.tensor(comp, device=lp.device)[:, None])[:, 0].tolist()
                    top_v, top_i = lp.topk(k, dim=-1) if k > 0 else (None, None)
                    entries = []
                    for t, token_id in enumerate(comp):
                        text, data = self._piece(token_id)
                        top = []
                        if k > 0:
                            for v, j in zip(top_v[t].tolist(), top_i[t].tolist(), strict=True):
                                jt, jb = self._piece(j)
                                top.append({"token": jt, "logprob": float(v), "bytes": jb})
                        entries.append(
                            {"token": text, "logprob": float(chosen[t]), "bytes": data, "top_logprobs": top}
                        )
                    out.append(entries)
        return out


def open_teacher(target: str, api_keys: Sequence[str] = (), **kw) -> Teacher:
    """``http(s)://...`` gives an :class:`HTTPTeacher`, anything else a :class:`LocalTeacher` directory."""
    target = str(target).strip()
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", target)
    try:
        if scheme:
            if scheme.group(1).lower() not in ("http", "https"):
                raise UserError(f"teacher URL must be http:// or https://, got {target!r}")
            return HTTPTeacher(target, api_keys, **kw)
        if api_keys:
            raise UserError("API keys apply to a teacher URL, not to a local model directory")
        return LocalTeacher(Path(target), **kw)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            bad = str(exc).split("unexpected keyword argument")[-1].strip()
            kind = "URL" if scheme else "model directory"
            raise UserError(f"option {bad} does not apply to a teacher {kind}") from None
        raise

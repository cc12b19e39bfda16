"""The gateway's proxy mode: a request answered by an OpenAI-compatible upstream (``backend = "upstream"``).

The body forwarded upstream is rebuilt from the validated request (:func:`request_model.forward_body`), with
every output bound set to what is reserved; the quota reserves every client text byte as a prompt bound
(exact token counts need the upstream's tokenizer) plus ``n * max_tokens`` per prompt, and commits the
upstream's reported usage (or the estimate of what came back). A stream is recorded as in local mode:
``stream_started`` before the first byte, the ledger record durable before ``[DONE]``.

:class:`ProxyMode` is a part of :class:`~distillguard.gateway.app.Gateway`, which it relies on for the
quota, ledger and stream tail (``_reserve``, ``_commit``, ``_settle``, ``_append``, ``_record_start``,
``_stream_tail``, ``_stream_error``, ``_observe``) and for ``settings``, ``backend`` and ``metrics``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from distillguard.gateway.accounts import Principal
from distillguard.gateway.backends import estimate_tokens
from distillguard.gateway.protocol import APIError, Sampling, sse
from distillguard.gateway.request_model import client_text_bytes, forward_body
from distillguard.gateway.requestctx import (
    Ctx,
    _check_choices,
    _check_max_tokens,
    _choice_text,
    _prompt_items,
    _StreamEnd,
    _usage_of,
    answer_text,
)
from distillguard.gateway.responses import SSEResponse, json_response


class ProxyMode:
    """Requests answered by the upstream: reserve, forward, record (see the module docstring)."""

    async def _proxy(self, ctx: Ctx, p: Principal, req: Any, s: Sampling, chat: bool) -> Response:
        cap = self.settings.max_tokens_cap
        _check_max_tokens(s.max_tokens, cap)
        max_tokens = s.max_tokens if s.max_tokens is not None else min(s.default_max_tokens or cap, cap)
        # rebuilt from the validated request, every output bound set to what is reserved below
        body = forward_body(req, n=s.n, max_tokens=max_tokens, stream=s.stream)
        if chat:  # every piece of client text: contents, names, tool calls and results, definitions
            prompt_bound = client_text_bytes(ctx.messages, ctx.tools)
            n_prompts = 1
        else:
            items = _prompt_items(req.prompt)
            if not all(isinstance(t, str) for t in items):
                # the upstream's tokenizer is not here: the ledger would hold numbers where the model read
                # text, and the monitor would read nothing of what was asked
                raise APIError(
                    400,
                    "Token-id prompts are not accepted by this gateway: send the prompt as text.",
                    code="invalid_value",
                    param="prompt",
                )
            n_prompts = len(items)
            ctx.prompt = "\n".join(items)
            prompt_bound = sum(estimate_tokens(t) for t in items) + 1
        _check_choices(n_prompts, s.n)
        ctx.choices = n_prompts * s.n
        if prompt_bound > self.settings.max_prompt_tokens:
            raise APIError(
                400,
                f"The prompt may have up to {prompt_bound} tokens, more than the limit of "
                f"{self.settings.max_prompt_tokens}.",
                code="context_length_exceeded",
                param="messages" if chat else "prompt",
            )
        reserve = prompt_bound + n_prompts * s.n * max_tokens
        reservation = await self._reserve(p, reserve, s)
        ctx.decision = "admitted"
        path = "/chat/completions" if chat else "/completions"
        self.metrics.in_flight.inc()
        if s.stream:
            fin = _StreamEnd(self, ctx, reservation, lambda: reserve, None)
            return SSEResponse(
                self._stream_proxy(ctx, path, body, fin, s, chat),
                fin,
                headers={"x-request-id": ctx.request_id},
            )
        actual = 0
        try:
            data = await self.backend.complete(path, body)
            pt, ct = _usage_of(data.get("usage"))
            texts = [_choice_text(c, chat) for c in data.get("choices") or [] if isinstance(c, dict)]
            ctx.completion = "\n\n".join(texts)
            ctx.prompt_tokens = pt if pt is not None else prompt_bound
            ctx.completion_tokens = ct if ct is not None else sum(estimate_tokens(t) for t in texts)
            actual = ctx.prompt_tokens + ctx.completion_tokens
        except BaseException:
            self._commit(reservation, actual)
            self.metrics.in_flight.dec()
            raise
        self.metrics.in_flight.dec()
        await self._settle(reservation, actual)
        await self._append(ctx)
        data["distillguard"] = {"request_id": ctx.request_id, "watermarked": False, "watermark_scheme": None}
        self._observe(ctx)
        return json_response(data, ctx.request_id)

    async def _stream_proxy(
        self, ctx: Ctx, path: str, body: dict, fin: _StreamEnd, s: Sampling, chat: bool
    ) -> AsyncIterator[bytes]:
        texts: dict[int, str] = {}
        try:
            await self._record_start(ctx)
            async for chunk in self.backend.stream(path, body):
                if chunk.get("usage"):
                    pt, ct = _usage_of(chunk["usage"])
                    if pt is not None and ct is not None:
                        ctx.prompt_tokens, ctx.completion_tokens = pt, ct
                        fin.actual = lambda t=pt + ct: t
                choices = chunk.get("choices") or []
                for c in choices:
                    if isinstance(c, dict) and isinstance(c.get("index"), int):
                        piece = answer_text(c.get("delta")) if chat else c.get("text")
                        if isinstance(piece, str) and piece:
                            texts[c["index"]] = texts.get(c["index"], "") + piece
                            ctx.completion = "\n\n".join(texts[i] for i in sorted(texts))
                if not choices and chunk.get("usage") and not s.include_usage:
                    continue  # the usage chunk we asked for ourselves
                if not s.include_usage:
                    chunk.pop("usage", None)
                yield sse(chunk)
            await fin.settle()
            async for tail in self._stream_tail(ctx, fin):
                yield tail
        except APIError as err:
            fin.fail(err, None)
            yield await self._stream_error(ctx, err)
        except BaseException as exc:
            fin.fail(exc, None)
            raise
        finally:
            fin()

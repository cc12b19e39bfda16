"""One request's facts as the ledger records them (:class:`Ctx`), the end of an admitted stream
(:class:`_StreamEnd`), and the small helpers of the request path."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distillguard.gateway.accounts import Principal
from distillguard.gateway.chain import canonical_json, sha256_text
from distillguard.gateway.protocol import MAX_N, APIError
from distillguard.gateway.request_model import render_chat
from distillguard.gateway.tiers import Refusal

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODELS = "/v1/models"


@dataclass
class Ctx:
    endpoint: str
    client_ip: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts_start: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    model: str | None = None
    params: dict | None = None
    prompt: str | None = None
    messages: list | None = None
    tools: dict | None = None
    completion: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    decision: str = "refused"
    status: int = 200
    error_code: str | None = None
    watermark: dict | None = None
    recorded: bool = False
    repeated: int | None = None  # a summary record of this many refusals (see errorpath.RefusalLimiter)
    # the answers a request asks for, its prompts times ``n``; recorded when more than one (a batched
    # completion's prompts are joined into one ``prompt`` text, which would hide how many it held)
    choices: int | None = None

    def record(self) -> dict[str, Any]:
        p = self.principal
        rec: dict[str, Any] = {
            "request_id": self.request_id,
            "ts": self.ts_start,
            "ts_start": self.ts_start,
            "ts_end": time.time(),
            "account": p.account if p else None,
            "key_id": p.key_id if p else None,
            "org": p.org if p else None,
            "client_ip": self.client_ip,
            "endpoint": self.endpoint,
            "model": self.model,
            "params": self.params,
            "prompt": self.prompt,
            "completion": self.completion,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tier": p.tier if p else None,
            "decision": self.decision,
            "status": self.status,
            "error_code": self.error_code,
            "watermark": self.watermark,
        }
        if self.messages is not None:
            rec["messages"] = self.messages
        if self.tools is not None:
            rec["tools"] = self.tools
        if self.repeated is not None:
            rec["repeated"] = self.repeated
        if self.choices is not None and self.choices > 1:
            rec["choices"] = self.choices
        if self.decision == "refused":
            _bound_client_text(rec)
        return rec


# A refused request is charged nothing, so what its record keeps of the client's text is bounded: the head
# and the tail of the prompt, and the length and SHA-256 of everything sent. Kept whole, a key past its rate
# limit could write megabytes into the ledger with every request it is refused.
REFUSED_TEXT_CHARS = 16_384


def _bound_client_text(rec: dict[str, Any]) -> None:
    prompt = rec.get("prompt") if isinstance(rec.get("prompt"), str) else ""
    extra = {k: canonical_json(rec[k]) for k in ("messages", "tools") if rec.get(k) is not None}
    if len(prompt) + sum(map(len, extra.values())) <= REFUSED_TEXT_CHARS:
        return
    rec["truncated"] = {
        "prompt_chars": len(prompt),
        "prompt_sha256": sha256_text(prompt),
        **{f"{k}_sha256": sha256_text(v) for k, v in extra.items()},
    }
    half = REFUSED_TEXT_CHARS // 2  # the head and the tail: a question or a probe often ends the prompt
    if len(prompt) > REFUSED_TEXT_CHARS:
        prompt = prompt[:half] + "\n[...]\n" + prompt[-half:]
    rec["prompt"] = prompt
    for k in extra:
        rec.pop(k)


def render_messages(messages: list[dict]) -> str:
    """Chat messages as one text for the ledger (see :func:`request_model.render_chat`)."""
    return render_chat(messages, None)


class _StreamEnd:
    """The end of an admitted stream, whichever way it comes: finished, failed, or the client gone.

    Idempotent: the stream generator calls it in its ``finally`` and :class:`SSEResponse` calls it again after
    closing the generator, which covers a stream that was never started (client gone before the first
    byte). Commits the quota with the usage so far, records the ledger, updates the metrics.
    """

    def __init__(
        self,
        gw: Any,
        ctx: Ctx,
        reservation: Any,
        actual: Callable[[], int],
        cancel: Callable[[], None] | None,
    ):
        self.gw, self.ctx, self.reservation, self.actual, self.cancel = gw, ctx, reservation, actual, cancel
        self.committed = self.finished = self.closed = False

    def commit(self) -> None:
        if not self.committed:
            self.committed = True
            self.gw._commit(self.reservation, self.actual())

    async def settle(self) -> None:
        """Commit before the stream's last events are sent (see ``Gateway._settle``)."""
        if not self.committed:
            self.committed = True
            await self.gw._settle(self.reservation, self.actual())

    def fail(self, exc: BaseException, completion_tokens: Callable[[], int] | None) -> None:
        if self.cancel is not None:
            self.cancel()
        if completion_tokens is not None:
            self.ctx.completion_tokens = completion_tokens()
        if self.finished:
            return  # everything was sent and recorded; the close only came late
        if isinstance(exc, APIError):
            self.ctx.status, self.ctx.error_code = exc.status, exc.code
        else:
            self.ctx.status, self.ctx.error_code = 499, "client_disconnected"

    def __call__(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.cancel is not None:
            self.cancel()
        if not self.finished and self.ctx.status == 200:
            self.ctx.status, self.ctx.error_code = 499, "client_disconnected"
        self.commit()
        self.gw._append_now(self.ctx)
        self.gw.metrics.in_flight.dec()
        self.gw._observe(self.ctx)


def _endpoint_label(path: str) -> str:
    """A request path as a ledger endpoint and metrics label: the known routes by name, the rest grouped
    (a client-chosen path must not become a new label or an unbounded string)."""
    if path in (CHAT, COMPLETIONS, MODELS, "/healthz", "/metrics", "/openapi.json", "/docs", "/redoc"):
        return path
    if path.startswith(MODELS + "/"):
        return MODELS
    if path.startswith("/admin"):
        return "/admin"
    return "other"


def _check_choices(prompts: int, n: int) -> None:
    if prompts * n > MAX_N:
        raise APIError(
            400,
            f"Too many choices: {prompts} prompts x n={n} exceeds {MAX_N} per request.",
            code="invalid_value",
            param="n",
        )


def _check_max_tokens(max_tokens: int | None, cap: int) -> None:
    """The output bound a request may ask for (local and proxy mode alike)."""
    if max_tokens is not None and max_tokens > cap:
        raise APIError(
            400,
            f"max_tokens is too large: {max_tokens}. The limit is {cap}.",
            code="invalid_value",
            param="max_tokens",
        )


def _prompt_items(prompt: Any) -> list:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    return list(prompt)


def _usage_of(u: Any) -> tuple[int | None, int | None]:
    if not isinstance(u, dict):
        return None, None
    pt, ct = u.get("prompt_tokens"), u.get("completion_tokens")
    return (pt if isinstance(pt, int) else None, ct if isinstance(ct, int) else None)


# what an upstream's chat answer (a message, or a stream's delta) can carry to the client besides its content:
# the answer forced into a tool call's arguments, a refusal, a reasoning trace. All of it is answer text: the
# ledger records it and a missing ``usage`` is estimated from it.
_ANSWER_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")


def answer_text(m: Any) -> str:
    """Every piece of answer text in a chat message or stream delta, in order (tool calls as their name and
    arguments; a delta's pieces concatenate to the whole answer's)."""
    if not isinstance(m, dict):
        return ""
    parts = [v for k in _ANSWER_FIELDS if isinstance(v := m.get(k), str)]
    calls = m.get("tool_calls") if isinstance(m.get("tool_calls"), list) else []
    for f in [c.get("function") for c in calls if isinstance(c, dict)] + [m.get("function_call")]:
        if isinstance(f, dict):
            parts += [v for k in ("name", "arguments") if isinstance(v := f.get(k), str)]
    return "".join(parts)


def _choice_text(c: dict, chat: bool) -> str:
    if chat:
        return answer_text(c.get("message"))
    text = c.get("text")
    return text if isinstance(text, str) else ""


def _refused(refusal: Refusal) -> APIError:
    """A tier's refusal as the OpenAI-style error the client sees."""
    return APIError(refusal.status, refusal.message, code=refusal.code, param=refusal.param)


def _model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )

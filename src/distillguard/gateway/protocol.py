"""The OpenAI wire protocol as the gateway speaks it: request models, response shapes, error objects.

Why hand-parsed requests: the gateway must authenticate *before* it judges a body (a stranger learns nothing
about our validation), must record refused requests in the ledger, and must answer every mistake with an
OpenAI-style ``{"error": {...}}`` object and a 4xx, never a framework-shaped 422. So the routes read the raw
body and call :func:`parse_request`; the pydantic models of :mod:`request_model` (the allow-list) are
also published in the OpenAPI schema.

Responses are built as plain dicts (the shapes of OpenAI's ``chat.completion``, ``chat.completion.chunk`` and
``text_completion`` objects): constructing pydantic objects per token would cost latency for nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

# the request models (the allow-list) live in request_model; re-exported for existing importers
from distillguard.gateway.request_model import (  # noqa: F401
    MAX_N,
    MAX_STOP,
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContentPart,
    PromptInput,
    StreamOptions,
)

MAX_LOGIT_BIAS = 300
# OpenAI writes this for tokens that the (watermarked, nucleus-filtered) distribution rules out entirely;
# JSON has no -inf.
NEG_INF_LOGPROB = -9999.0


# --------------------------------------------------------------------------------------------------
# Errors


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "server_error",
}


class APIError(Exception):
    """An error the client should see as an OpenAI error object (``status`` is the HTTP status)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``: the only error shape the gateway ever sends."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --------------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters of one request, normalised across both endpoints.

    ``logprobs`` is None when the client did not ask for them, else how many alternatives to report per
    token (0..20). ``max_tokens`` is None when the client left it to the server, which then uses
    ``default_max_tokens`` (OpenAI's 16 for legacy completions; None for chat: whatever fits), capped.
    """

    n: int
    max_tokens: int | None
    default_max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    logprobs: int | None
    logit_bias: tuple[tuple[int, float], ...]
    presence_penalty: float
    frequency_penalty: float
    stream: bool
    include_usage: bool
    user: str | None
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def asks_logprobs(self) -> bool:
        return self.logprobs is not None


def sampling_of(req: ChatCompletionRequest | CompletionRequest) -> Sampling:
    """Validate what pydantic cannot express and normalise. Raises :class:`APIError` (400)."""
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if any(s == "" for s in stop):
        raise APIError(400, "stop sequences must be non-empty strings", param="stop", code="invalid_value")
    bias: list[tuple[int, float]] = []
    if req.logit_bias:
        if len(req.logit_bias) > MAX_LOGIT_BIAS:
            raise APIError(
                400,
                f"logit_bias takes at most {MAX_LOGIT_BIAS} entries",
                param="logit_bias",
                code="invalid_value",
            )
        for k, v in req.logit_bias.items():
            k = k.strip()
            # ASCII digits only: str.isdigit() also accepts "\u00b2" and other digits int() refuses
            if not (k.isascii() and k.isdigit() and len(k) <= 9):
                raise APIError(
                    400,
                    f"logit_bias keys must be token ids (non-negative integers), got {k[:40]!r}",
                    param="logit_bias",
                    code="invalid_value",
                )
            bias.append((int(k), float(v)))
    if isinstance(req, ChatCompletionRequest):
        max_tokens = req.max_completion_tokens or req.max_tokens
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(
                400, "top_logprobs requires logprobs to be true", param="top_logprobs", code="invalid_value"
            )
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
    else:
        max_tokens = req.max_tokens
        logprobs = req.logprobs
        if req.echo:
            raise APIError(400, "echo is not supported", param="echo", code="unsupported_parameter")
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix", code="unsupported_parameter")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of must equal n", param="best_of", code="unsupported_parameter")
    stream = bool(req.stream)
    include_usage = bool(stream and req.stream_options and req.stream_options.include_usage)
    if req.stream_options is not None and not stream:
        raise APIError(
            400,
            "stream_options is only allowed when stream is true",
            param="stream_options",
            code="invalid_value",
        )
    s = Sampling(
        n=req.n,
        max_tokens=max_tokens,
        default_max_tokens=None if isinstance(req, ChatCompletionRequest) else 16,  # OpenAI's legacy default
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=stop,
        seed=req.seed,
        logprobs=logprobs,
        logit_bias=tuple(sorted(bias)),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        stream=stream,
        include_usage=include_usage,
        user=req.user,
    )
    s.params.update(ledger_params(req, s))
    return s


def ledger_params(req: ChatCompletionRequest | CompletionRequest, s: Sampling) -> dict[str, Any]:
    """The sampling parameters as the ledger records them (what the client asked for, not our defaults)."""
    out: dict[str, Any] = {
        "n": s.n,
        "max_tokens": s.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": list(s.stop) or None,
        "seed": s.seed,
        "stream": s.stream,
        "user": s.user,
        "logprobs": req.logprobs,
        # the parsed token ids, not the client's keys (" 5" padded with a megabyte of spaces is token 5)
        "logit_bias": {str(t): v for t, v in s.logit_bias} if s.logit_bias else None,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
    }
    if isinstance(req, ChatCompletionRequest):
        out["top_logprobs"] = req.top_logprobs
    return out


def parse_request(raw: bytes, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON body; every failure is a 400 with the offending parameter named."""
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        kind = err.get("type", "")
        if kind == "json_invalid":
            raise APIError(
                400,
                "We could not parse the JSON body of your request: it is not valid JSON.",
                code="invalid_json",
            ) from None
        if kind == "model_type" and not err.get("loc"):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json") from None
        param = _param(err.get("loc", ()))
        if kind == "extra_forbidden":
            raise APIError(
                400,
                f"Unrecognized request argument supplied: {param}",
                param=param,
                code="unknown_parameter",
            ) from None
        if kind == "missing":
            raise APIError(
                400, f"missing required parameter: '{param}'", param=param, code="missing_required_parameter"
            ) from None
        msg = err.get("msg", "invalid value")
        raise APIError(
            400, f"invalid value for '{param}': {msg}", param=param, code="invalid_value"
        ) from None


def _param(loc: tuple) -> str:
    # pydantic adds the union member's type name to the location ("stop.list[str].0"); drop those.
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif isinstance(p, str) and (
            "[" in p or p in {"str", "int", "float", "bool", "function-after", "constrained-str"}
        ):
            continue
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "body"


def finite_logprob(x: float) -> float:
    return x if math.isfinite(x) else NEG_INF_LOGPROB


# --------------------------------------------------------------------------------------------------
# Responses


@dataclass
class TokenLogprob:
    """One sampled token with the log-probability of the distribution it was sampled from."""

    token: str
    logprob: float
    top: list[tuple[str, float]]
    offset: int  # character offset of the token within the choice's text
    # exact bytes of the token and of each ``top`` entry (a byte-level token can be half a UTF-8
    # character, which ``token`` shows as U+FFFD): what lets a client map them back to token ids
    raw: bytes
    top_raw: tuple[bytes, ...]


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat shape: ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}``."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": list(e.raw),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(raw)}
                    for (t, lp), raw in zip(e.top, e.top_raw, strict=True)
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob], base_offset: int) -> dict[str, Any]:
    """OpenAI's legacy shape: parallel lists; ``text_offset`` counts from the start of the prompt text."""
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": [base_offset + e.offset for e in entries],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sse(obj: Any) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"

"""The one request model of ``/v1/chat/completions`` and ``/v1/completions``: an allow-list per endpoint.

Every field a client may send is declared here; anything else (``prompt_logprobs``, ``LOGPROBS``, a vendor
extension) is refused with a 400 naming it, at every depth of the body (``extra="forbid"``). What is not
declared can therefore never reach a backend: proxy mode forwards a body rebuilt from the validated model
(:func:`forward_body`), with the output bounds (``max_tokens``, ``max_completion_tokens``, ``n``) set to what
the quota reserved.

Every piece of client text that reaches the model is named by :func:`client_text`: message contents of every
kind (text and refusal parts; image, audio and file parts are refused, the gateway serves text models), the
names, tool calls and tool results in messages, and the ``tools``, ``functions``, ``tool_choice``,
``function_call`` and ``response_format`` definitions. The proxy counts all of it in the reservation and the
ledger stores all of it (or its hash, with ``redact_prompts``), so the monitor sees what the model saw.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 128
MAX_TOP_LOGPROBS = 20
MAX_STOP = 4

_STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


class _Model(BaseModel):
    model_config = _STRICT


class ContentPart(_Model):
    """A text part (``{"type": "text", "text": ...}``) or an assistant's refusal part."""

    type: Literal["text", "refusal"]
    text: str | None = None
    refusal: str | None = None


class FunctionCall(_Model):
    name: str
    arguments: str


class ToolCall(_Model):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


# a participant's name: letters, digits, '_' and '-', at most 64 (what OpenAI documents); with a chat
# template that renders it, it reaches the model, so it is bounded here and rendered in the ledger prompt
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None
    refusal: str | None = None

    def text(self) -> str:
        """The message's content as plain text (text and refusal parts, in order)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join((p.text if p.type == "text" else p.refusal) or "" for p in self.content)

    def ledger_entry(self) -> dict[str, Any]:
        """The message as the ledger stores it: role, text, and every other piece of client text."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.refusal:
            out["content"] += self.refusal
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.function_call is not None:
            out["function_call"] = self.function_call.model_dump()
        return out


class FunctionDef(_Model):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Model):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Model):
    include_usage: bool | None = None


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# Strings no quota charges for but the ledger keeps (a model name, an end-user id, stop sequences) are
# bounded: unbounded, a key past its rate limit could write megabytes into the ledger with every refusal
MAX_FIELD_CHARS = 256
ShortText = Annotated[str, Field(max_length=MAX_FIELD_CHARS)]
Stop = ShortText | Annotated[list[ShortText], Field(max_length=MAX_STOP)] | None
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]


class _Sampling(_Model):
    model: ShortText
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: Stop = None
    seed: Seed | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field()] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: ShortText | None = None


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``. Unknown fields are refused (400 ``unknown_parameter``)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    response_format: ResponseFormat | None = None


PromptInput = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
)


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (legacy): a string, list of strings, token ids, or list of token-id lists."""

    prompt: PromptInput
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool | None = False
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    suffix: str | None = None


# Chat fields that carry client text to the model besides the messages (tool and output definitions).
DEFINITIONS = ("tools", "tool_choice", "functions", "function_call", "response_format")


def definitions(req: ChatCompletionRequest) -> dict[str, Any] | None:
    """The tool/function/output-format definitions a chat request sends, as plain JSON (None if none)."""
    out = {name: _plain(getattr(req, name)) for name in DEFINITIONS if getattr(req, name) not in (None, [])}
    return out or None


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# a line inside a message that starts with a role label would read as a turn of its own (the monitor takes
# what follows the last "\nuser: " as the question): the renderer indents it by a space, so that only the
# turns it writes itself start with one
_ROLE_LINE = re.compile(
    r"\n(?=(?:" + "|".join(get_args(ChatMessage.model_fields["role"].annotation)) + "): )"
)


def render_entry(m: dict[str, Any]) -> str:
    """One ledger message entry as text: its content, then its other client text (name, tool calls, ids),
    a line of it that starts with a role label indented by a space."""
    return _ROLE_LINE.sub("\n ", _entry_text(m))


def _entry_text(m: dict[str, Any]) -> str:
    parts = [m.get("content") or ""]
    if m.get("name"):
        parts.append(f"[name] {m['name']}")
    for name in ("tool_calls", "function_call"):
        if m.get(name):
            parts.append(f"[{name}] {canonical(m[name])}")
    if m.get("tool_call_id"):
        parts.append(f"[tool_call_id] {m['tool_call_id']}")
    return "\n".join(p for p in parts if p) if len(parts) > 1 else parts[0]


def render_chat(entries: list[dict[str, Any]], defs: dict[str, Any] | None) -> str:
    """Chat messages (and definitions) as one text for the ledger: a single plain message's content, else
    ``role: text`` lines, so the monitor sees the same text whether a query came as a chat or a completion."""
    if len(entries) == 1 and not defs:
        text = render_entry(entries[0])
    else:
        text = "\n".join(f"{m['role']}: {render_entry(m)}" for m in entries)
    if defs:
        text += "\n" + "\n".join(f"[{k}] {canonical(v)}" for k, v in defs.items())
    return text


def client_text_bytes(entries: list[dict[str, Any]], defs: dict[str, Any] | None) -> int:
    """UTF-8 bytes of every piece of client text in a chat request, plus a per-message allowance for the
    chat template: an upper bound on its prompt tokens for byte-level tokenizers."""
    total = 8
    for m in entries:
        total += 8 + len((m.get("content") or "").encode("utf-8"))
        for name in ("name", "tool_call_id"):
            if m.get(name):
                total += len(m[name].encode("utf-8"))
        for name in ("tool_calls", "function_call"):
            if m.get(name):
                total += len(canonical(m[name]).encode("utf-8"))
    if defs:
        total += len(canonical(defs).encode("utf-8"))
    return total


def forward_body(
    req: ChatCompletionRequest | CompletionRequest, *, n: int, max_tokens: int, stream: bool
) -> dict[str, Any]:
    """The body proxy mode sends upstream: only validated, allow-listed fields, with every output bound set
    to what was reserved (``max_tokens`` always; ``max_completion_tokens`` too when the client used it)."""
    body = req.model_dump(exclude_unset=True, exclude_none=True)
    body["model"] = req.model
    body["n"] = n
    body["max_tokens"] = max_tokens
    if isinstance(req, ChatCompletionRequest) and "max_completion_tokens" in body:
        body["max_completion_tokens"] = max_tokens
    if isinstance(req, CompletionRequest) and "best_of" in body:
        body["best_of"] = n
    body.pop("stream_options", None)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    else:
        body.pop("stream", None)
    return body

"""The stub backend and the stub server: fixed answers, for benchmarks and tests.

:class:`StubBackend` answers inside the gateway (its own cost without a model); :func:`stub_server_app` is a
bare OpenAI-compatible server with the same answer, the "call the backend directly" baseline and the
upstream the proxy is measured against.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from distillguard.gateway.generation import ChoiceDelta, Generation, GenerationRequest, Prompt, model_card
from distillguard.gateway.protocol import SSE_DONE, dumps, sse, usage

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

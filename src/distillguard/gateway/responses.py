"""Responses of the gateway: JSON bodies, OpenAI error objects, server-sent events, and the OpenAPI entries of
the hand-routed ``/v1`` endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import Response, StreamingResponse

from distillguard.gateway.protocol import APIError, dumps


def json_response(
    body: Any, request_id: str | None = None, status: int = 200, headers: dict | None = None
) -> Response:
    h = dict(headers or {})
    if request_id:
        h["x-request-id"] = request_id
    return Response(dumps(body), status_code=status, media_type="application/json", headers=h)


def error_response(err: APIError, request_id: str | None = None) -> Response:
    return json_response(err.body(), request_id, err.status, err.headers)


class SSEResponse(StreamingResponse):
    """Server-sent events that always run the body generator's cleanup.

    A client that disconnects cancels the stream (Starlette watches for ``http.disconnect``); closing the
    generator explicitly afterwards makes the quota commit and the ledger record happen now, not whenever
    the garbage collector finalises it.
    """

    media_type = "text/event-stream"

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], None], headers: dict | None = None
    ):
        h = {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}
        super().__init__(content, headers=h, media_type="text/event-stream")
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except OSError:
            pass  # the client went away mid-write; cleanup below
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self.on_close()


def v1_openapi_paths(CHAT: str, COMPLETIONS: str, MODELS: str) -> dict[str, Any]:  # noqa: N803
    """OpenAPI entries of the hand-routed ``/v1`` endpoints."""
    error = {
        "description": "An OpenAI error object",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    errors = {"400": error, "401": error, "403": error, "404": error, "413": error, "429": error}
    bearer = [{"bearer": []}]

    def post(op: str, summary: str, model: str, answer: str) -> dict:
        body = {"$ref": f"#/components/schemas/{model}"}
        return {
            "post": {
                "operationId": op,
                "summary": summary,
                "security": bearer,
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {"200": {"description": answer}, **errors},
            }
        }

    return {
        CHAT: post(
            "createChatCompletion",
            "Create a chat completion",
            "ChatCompletionRequest",
            "A chat.completion object, or chat.completion.chunk server-sent events when stream is true",
        ),
        COMPLETIONS: post(
            "createCompletion",
            "Create a completion (legacy)",
            "CompletionRequest",
            "A text_completion object, or text_completion server-sent events when stream is true",
        ),
        MODELS: {
            "get": {
                "operationId": "listModels",
                "summary": "List models (each says whether its outputs are watermarked)",
                "security": bearer,
                "responses": {"200": {"description": "An OpenAI model list"}, **errors},
            }
        },
        MODELS + "/{model_id}": {
            "get": {
                "operationId": "retrieveModel",
                "summary": "Retrieve a model",
                "security": bearer,
                "parameters": [
                    {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "An OpenAI model object"}, **errors},
            }
        },
    }

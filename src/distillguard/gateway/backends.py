"""What answers behind the gateway: the local watermarked HF model, an upstream OpenAI-compatible URL, a stub.

Two kinds of backend:

* **Generating** backends (:class:`LocalBackend` in ``local.py``, :class:`StubBackend` in ``stub.py``) turn a
  normalised :class:`GenerationRequest` (``generation.py``) into a stream of :class:`ChoiceDelta` events;
  the gateway shapes those into OpenAI's chat or completion objects, so both endpoints, streaming or not,
  share one generation path.
* The **proxy** backend (:class:`UpstreamBackend` in ``upstream.py``) forwards the client's JSON to another
  server and passes its answer through; the gateway still authenticates, reserves quota and records the
  ledger around it, but the outputs are not watermarked (``/v1/models`` says so).

This module only gathers the names callers import; each lives in the module named above.
"""

from __future__ import annotations

from distillguard.gateway.generation import (
    ChoiceDelta,
    GeneratingBackend,
    Generation,
    GenerationRequest,
    Prompt,
    model_card,
)
from distillguard.gateway.local import GREEDY_BELOW, BatchStats, IncrementalDecoder, LocalBackend
from distillguard.gateway.stub import STUB_TEXT, StubBackend, stub_server_app
from distillguard.gateway.upstream import (
    UpstreamBackend,
    UpstreamClient,
    UpstreamConnectionError,
    estimate_tokens,
    iter_lines,
)

__all__ = [
    "GREEDY_BELOW",
    "STUB_TEXT",
    "BatchStats",
    "ChoiceDelta",
    "GeneratingBackend",
    "Generation",
    "GenerationRequest",
    "IncrementalDecoder",
    "LocalBackend",
    "Prompt",
    "StubBackend",
    "UpstreamBackend",
    "UpstreamClient",
    "UpstreamConnectionError",
    "estimate_tokens",
    "iter_lines",
    "model_card",
    "stub_server_app",
]

"""The gateway's HTTP server: OpenAI's API in front of a watermarked model, with auth, quotas and a ledger.

Every ``/v1`` request walks the same path, and each step can refuse it (and every refusal is recorded,
through the one error path of :mod:`errorpath`, before it is answered; failures, 5xx included, too):

0. the HTTP layer (:mod:`http_limits`): connection cap, head size and deadline, body size and stalls
   (431/413/408), the admin token before any admin body
1. client IP (``X-Forwarded-For`` only from trusted proxies) against the allow/deny CIDRs -> 403
2. ``Authorization: Bearer <key>`` -> 401 (unknown, revoked, expired) / 403 (banned, suspended)
3. the JSON body against the allow-list of :mod:`request_model` -> 400 (an unknown field is named); the
   account's tier may refuse parts of it (``restricted``: no logprobs or
   logit_bias) -> 403, and its logprob policy caps ``top_logprobs`` -> 400 (:mod:`logprob_policy`: what
   reported logprobs reveal). What a tier does (limits, refusals, watermark strength) lives in :mod:`tiers`.
4. the model must exist and the key may call it -> 404
5. prompt tokens counted exactly (local model) or bounded (proxy) -> 400 ``context_length_exceeded``
6. quota: ``prompt + n * max_tokens`` (proxy: every client text byte, and the body forwarded upstream is
   rebuilt with exactly these output bounds) reserved atomically on the key and its account (and, for a
   request with logprobs, the account's daily logprob budget) -> 429 + Retry-After
7. the backend answers; the actual usage is committed in a ``finally`` (also at stream end and on client
   disconnect), which releases the concurrency lease
8. the ledger record is durable *before* the response (or a stream's ``[DONE]``) leaves, so a client that
   got an answer can count on its record surviving a crash of the gateway; a stream also has a
   ``stream_started`` record before its first byte.

The account store (2) and the ledger (8) are databases: their calls run in worker threads (account-store
threads; one ledger writer thread, so commits stay grouped and in order), never on the event loop, so a slow
or locked database holds up only the requests waiting for it.

``create_app`` builds everything from :class:`GatewaySettings`; tests and the benchmark may pass ready-made
components (a stub backend, a store on a temp dir) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from distillguard.errors import DefenceUnavailable, UserError
from distillguard.gateway.accounts import (
    AccountStore,
    AuthError,
    Limits,
    Principal,
    account_store_from_config,
)
from distillguard.gateway.admin import add_admin_routes
from distillguard.gateway.backends import (
    Generation,
    GenerationRequest,
    LocalBackend,
    Prompt,
    StubBackend,
    UpstreamBackend,
)
from distillguard.gateway.errorpath import RefusalLimiter, as_api_error
from distillguard.gateway.http_limits import HTTPGuard
from distillguard.gateway.ipfilter import IPRules
from distillguard.gateway.ledger import LedgerStore, ledger_from_config
from distillguard.gateway.ledger_writer import LedgerWriter
from distillguard.gateway.logprob_policy import budget_scope
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.pg import POOL_SIZE
from distillguard.gateway.protocol import (
    SSE_DONE,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Sampling,
    chat_logprobs,
    completion_logprobs,
    error_body,
    parse_request,
    sampling_of,
    sse,
    usage,
)
from distillguard.gateway.proxy_mode import ProxyMode
from distillguard.gateway.quotas import Denied, QuotaStore, open_quota_store
from distillguard.gateway.request_model import definitions, render_chat
from distillguard.gateway.requestctx import (
    CHAT,
    COMPLETIONS,
    MODELS,
    Ctx,
    _check_choices,
    _check_max_tokens,
    _endpoint_label,
    _model_not_found,
    _refused,
    _StreamEnd,
)
from distillguard.gateway.responses import SSEResponse, error_response, json_response, v1_openapi_paths
from distillguard.gateway.settings import GatewaySettings
from distillguard.gateway.tiers import Tier, TierSettings, get_tier, ladder

log = logging.getLogger("distillguard.gateway")

BIG_BODY = 64 * 1024  # bytes: prompts from bodies above this are tokenised in a worker thread


# --------------------------------------------------------------------------------------------------
# The gateway


class Gateway(ProxyMode):
    """All state of one server: settings, backend, stores, metrics. Routes are thin wrappers around it."""

    def __init__(
        self,
        settings: GatewaySettings,
        backend: Any,
        accounts: AccountStore,
        quotas: QuotaStore,
        ledger: LedgerStore,
        rules: IPRules,
    ):
        self.settings = settings
        self.backend = backend
        self.accounts = accounts
        # account-store calls block on the database: they run here, never on the event loop (as many
        # threads as a Postgres store's pool has connections, so a burst queues here, not on the pool)
        self.store_threads = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="account-store")
        self.quotas = quotas
        self.quotas_remote = bool(getattr(quotas, "remote", False))
        # a remote quota store's calls get threads of their own: a stalled Redis must not starve
        # authentication and the admin API of the account store's threads
        self.quota_threads = ThreadPoolExecutor(2 * POOL_SIZE, thread_name_prefix="quotas")
        self.ledger = ledger
        ledger.recover()  # a crash between a commit and the head-file write left the file one commit behind
        self.writer = LedgerWriter(ledger)
        self.rules = rules
        # (client ip, allowed) per TCP peer address, only for peers whose X-Forwarded-For is not read: never
        # keyed by anything the client writes
        self._ip_cache: dict[str, tuple[str, bool]] = {}
        self.refusals = RefusalLimiter(settings.refusal_records_per_minute)
        self.protect_internal = settings.internal_endpoints_protected()
        self.metrics = Metrics()
        self.proxy = isinstance(backend, UpstreamBackend)
        self.tier_settings = TierSettings.from_settings(settings)
        self.spec = None
        # the watermark per tier's changes to the configured one (key None: the configured one)
        self._tier_specs: dict[tuple | None, Any] = {}
        if getattr(backend, "watermarked", False):
            self.spec = self._tier_specs[None] = settings.watermark_spec().with_vocab(backend.vocab_size)
            for tier in ladder():  # now, so reading the watermark key never happens mid-request
                self._watermark_for(tier)
        self.default_limits = settings.default_limits()
        # sampling defence per tier (countermeasures/), built now: a proxy model loads before serving
        self._defences: dict[Any, Any] = {}
        for tier in ladder():
            self._defence_for(tier)

    def _watermark_for(self, tier: Tier) -> Any:
        """The watermark spec for answers to an account on ``tier`` (None when not watermarking)."""
        if self.spec is None:
            return None
        changes = tier.watermark(self.tier_settings)
        which = tuple(sorted(changes.items())) if changes else None
        spec = self._tier_specs.get(which)
        if spec is None:  # a tier registered after start-up
            try:
                spec = self.settings.watermark_spec(**(changes or {})).with_vocab(self.backend.vocab_size)
            except UserError as exc:  # e.g. an unknown restricted_scheme: say which tier's watermark
                raise UserError(f"the {tier.name} tier's watermark: {exc}") from None
            self._tier_specs[which] = spec
        return spec

    def _defence_for(self, tier: Tier) -> Any:
        """The built sampling defence on ``tier``'s answers; None when it has none or the backend does not
        sample (a proxy to an upstream API cannot change how the upstream samples)."""
        spec = tier.sampling_defence(self.tier_settings)
        if not spec.active or not hasattr(self.backend, "defence_options"):
            return None
        if spec not in self._defences:
            from distillguard.countermeasures.defences import build_defence

            try:
                self._defences[spec] = build_defence(spec, self.backend.defence_options(self.settings))
            except DefenceUnavailable as exc:  # e.g. ads for a model without a proxy student: said once
                log.warning("tier %s serves without its %s defence: %s", tier.name, spec.name, exc)
                self._defences[spec] = None
        return self._defences[spec]

    # -- steps shared by every /v1 route ------------------------------------------------------------

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _client(self, peer: str, forwarded: list[str]) -> tuple[str, bool]:
        """``(client ip, allowed)``. ``forwarded``: every ``X-Forwarded-For`` header line, in order (a proxy
        may append a line of its own). Memoised per peer when the peer's header is not read: the rules are
        fixed for the app's life and parsing addresses costs more than the rest of admission."""
        if forwarded and self.rules.trusted_proxies and self.rules.is_trusted(peer):
            ip = self.rules.client_ip(peer, ",".join(forwarded))
            return ip, self.rules.allowed(ip)
        hit = self._ip_cache.get(peer)
        if hit is None:
            ip = self.rules.client_ip(peer, None)
            hit = (ip, self.rules.allowed(ip))
            if len(self._ip_cache) >= 4096:
                self._ip_cache.clear()
            self._ip_cache[peer] = hit
        return hit

    async def store_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` (an account-store call) in a store thread: a slow or locked database
        holds up the requests that wait for it, not the event loop."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.store_threads, call)

    async def quota_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (a remote quota-store call) in a quota thread."""
        call = functools.partial(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self.quota_threads, call)

    async def _admit(self, ctx: Ctx, request: Request) -> Principal:
        peer = request.client.host if request.client else ""
        ctx.client_ip, allowed = self._client(peer, request.headers.getlist("x-forwarded-for"))
        if not allowed:
            raise APIError(403, "Requests from your IP address are not allowed.", code="ip_not_allowed")
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        try:
            principal = await self.store_call(self.accounts.authenticate, key.strip())
        except AuthError as exc:
            who = getattr(exc, "who", None)
            if who is not None:  # a known key refused (revoked, banned, ...): the ledger names who it was
                key_id, acct, org, tier = who
                ctx.principal = Principal(key_id, acct, org, tier, Limits(), Limits(), None, None)
            raise APIError(exc.status, exc.message, code=exc.code) from None
        ctx.principal = principal
        # the store asks the tier too (suspended accounts never get here); double-check the policy
        refusal = get_tier(principal.tier).refuse_account(principal.account)
        if refusal is not None:
            raise _refused(refusal)
        return principal

    def _scopes(self, p: Principal, s: Sampling | None = None) -> list[tuple[str, Limits]]:
        d = self.default_limits
        key_limits = Limits(
            *(getattr(p.key_limits, f) if getattr(p.key_limits, f) is not None else getattr(d, f)
              for f in ("rpm", "tpm", "daily_tokens", "max_concurrent"))
        )  # fmt: skip
        tier, ts = get_tier(p.tier), self.tier_settings
        scopes = [
            (f"key:{p.key_id}", tier.limits(key_limits, ts, scope="key")),
            (f"account:{p.account}", tier.limits(p.account_limits, ts, scope="account")),
        ]
        budget = tier.logprob_policy(ts).daily_tokens
        if s is not None and s.asks_logprobs and budget is not None:  # tokens of logprob-bearing requests
            scopes.append((budget_scope(p.account), Limits(daily_tokens=budget)))
        return scopes

    async def _reserve(self, p: Principal, tokens: int, s: Sampling | None = None):
        scopes = self._scopes(p, s)
        if self.quotas_remote:
            res = await self.quota_call(self.quotas.reserve, scopes, tokens)
        else:
            res = self.quotas.reserve(scopes, tokens)
        if isinstance(res, Denied):
            self.metrics.child(self.metrics.quota_refusals, res.reason).inc()
            kind = "tokens" if res.reason in ("tpm", "daily_tokens") else "requests"
            if res.permanent:
                raise APIError(
                    429,
                    f"Request too large: it needs {tokens} tokens, more than {res.scope}'s limit of "
                    f"{res.limit} ({res.reason}). Lower max_tokens or the prompt.",
                    code="request_too_large",
                    type=kind,
                    headers={"x-should-retry": "false"},
                )
            retry = max(1, math.ceil(res.retry_after))
            headers = {"retry-after": str(retry)}
            if retry > 60:  # a daily budget: the official client should not sit in a retry loop
                headers["x-should-retry"] = "false"
            raise APIError(429, res.message, code="rate_limit_exceeded", type=kind, headers=headers)
        return res

    def _commit(self, reservation: Any, actual: int) -> None:
        """Reconcile a reservation where nothing can wait for it (a failure or a closed connection): with a
        remote store in a worker thread, not awaited (its leases also expire on their own)."""
        if self.quotas_remote:
            try:
                self.quota_threads.submit(self._commit_now, reservation, actual)
                return
            except RuntimeError:  # shutting down: the pool takes no more work
                pass
        self._commit_now(reservation, actual)

    async def _settle(self, reservation: Any, actual: int) -> None:
        """Reconcile a reservation before the answer's end reaches the client (its next request then sees
        the tokens and the freed lease); a remote store's call runs in a worker thread."""
        if self.quotas_remote:
            # shielded: a client that disconnects now cancels the wait, not the commit
            await asyncio.shield(self.quota_call(self._commit_now, reservation, actual))
        else:
            self._commit_now(reservation, actual)

    def _commit_now(self, reservation: Any, actual: int) -> None:
        try:
            self.quotas.commit(reservation, max(0, int(actual)))
        except Exception:  # a failed reconcile must not turn a served answer into an error
            log.exception("quota commit failed")

    async def _append(self, ctx: Ctx) -> None:
        """Durable ledger append (in the writer's thread: it fsyncs); marks the request recorded first so a
        cancellation during the append does not record it twice."""
        ctx.recorded = True
        await self._durable(ctx.record())

    async def _record_start(self, ctx: Ctx) -> None:
        """A durable record of an admitted stream before its first content byte (``decision``
        ``stream_started``; the request's own record, with the final counts, follows before ``[DONE]``), so a
        crash mid-stream still leaves evidence of what was asked and that an answer was being sent."""
        rec = ctx.record()
        rec.update(decision="stream_started", completion=None, completion_tokens=None)
        await self._durable(rec)

    async def _durable(self, rec: dict) -> None:
        """Append ``rec`` durably; a ledger that cannot take it turns the request into a 503."""
        try:
            await self.writer.append(rec)
        except Exception as exc:
            log.exception("ledger append failed")
            raise APIError(
                503, "the request could not be recorded; try again", code="ledger_unavailable"
            ) from exc

    def _append_now(self, ctx: Ctx) -> None:
        """Synchronous append for cleanup paths (a cancelled stream cannot await)."""
        if ctx.recorded:
            return
        ctx.recorded = True
        try:
            self.writer.append_now(ctx.record())
        except Exception:
            log.exception("ledger append failed")

    def _observe(self, ctx: Ctx) -> None:
        m = self.metrics
        m.child(m.requests, ctx.endpoint, str(ctx.status), ctx.decision).inc()
        m.child(m.latency, ctx.endpoint).observe(time.perf_counter() - ctx.t0)
        if ctx.prompt_tokens:
            m.child(m.tokens, "prompt").inc(ctx.prompt_tokens)
        if ctx.completion_tokens:
            m.child(m.tokens, "completion").inc(ctx.completion_tokens)

    async def refuse(self, ctx: Ctx, err: APIError) -> Response:
        """Record, then answer, a refused or failed request (the one error path). A refusal beyond its
        source's budget (a known key's, else an address's) is counted into a summary record instead."""
        ctx.status, ctx.error_code = err.status, err.code  # decision stays "admitted" after admission
        if not ctx.recorded:
            # before authentication the source is the address; after it, the key (banned, revoked, expired or
            # suspended at authentication, or working and refused for its rate, its quota, its tier or bad
            # input). Each source's refusals keep a record each, their client text bounded
            # (REFUSED_TEXT_CHARS), up to its budget; past it they are counted into summaries, so a key
            # hammering past its rate limit cannot write 16k characters into the ledger per request. A known
            # key's server errors (5xx) always keep a record before their answer.
            p = ctx.principal
            limited = ctx.decision == "refused" and (p is None or err.status < 500)
            if limited and not self.refusals.allow(ctx.client_ip if p is None else f"key:{p.key_id}"):
                ctx.recorded = True
                if self.refusals.count(ctx.endpoint, ctx.client_ip, err.status, err.code, ctx.principal):
                    await self.flush_refusals()
            else:
                with contextlib.suppress(APIError):  # still refuse with the original error
                    await self._append(ctx)
        self._observe(ctx)
        return error_response(err, ctx.request_id)

    async def refuse_early(self, scope: dict, err: APIError) -> Response:
        """A refusal of the HTTP layer (:mod:`http_limits`), before any route ran: recorded the same way."""
        path = scope.get("path", "")
        ctx = Ctx(_endpoint_label(path))
        client = scope.get("client")
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        try:
            ctx.client_ip = self._client(client[0] if client else "", forwarded)[0]
        except Exception:  # an unparseable peer still gets its refusal
            ctx.client_ip = None
        return await self.refuse(ctx, err)

    async def flush_refusals(self) -> None:
        """Write the summary records of refusals counted beyond their sources' budgets (one commit)."""
        summaries = self.refusals.drain()
        if not summaries:
            return
        ctxs = []
        for sm in summaries:
            ctx = Ctx(sm.endpoint, client_ip=sm.client_ip, ts_start=sm.first, principal=sm.principal)
            ctx.status, ctx.error_code, ctx.repeated = sm.status, sm.error_code, sm.count
            ctxs.append(ctx)
        results = await asyncio.gather(*(self._append(c) for c in ctxs), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.error("refusal summary not recorded: %s", r)

    async def refusal_flusher(self, every: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.flush_refusals()
            except Exception:
                log.exception("refusal summary flush failed")

    # -- /v1/models ---------------------------------------------------------------------------------

    async def models(self, request: Request, model_id: str | None = None) -> Response:
        ctx = Ctx(MODELS)
        try:
            p = await self._admit(ctx, request)
            if self.proxy:
                cards = await self.backend.model_cards()
            else:
                cards = self.backend.model_cards()
            cards = [c for c in cards if p.allows_model(c["id"])]
            if model_id is not None:
                ctx.model = model_id
                found = [c for c in cards if c["id"] == model_id]
                if not found:
                    raise _model_not_found(model_id)
                body: Any = found[0]
            else:
                body = {"object": "list", "data": cards}
            ctx.decision = "admitted"
            await self._append(ctx)
        except Exception as exc:
            return await self.refuse(ctx, as_api_error(exc, ctx))
        self._observe(ctx)
        return json_response(body, ctx.request_id)

    # -- /v1/chat/completions and /v1/completions ---------------------------------------------------

    async def generate(self, request: Request, endpoint: str) -> Response:
        ctx = Ctx(endpoint)
        chat = endpoint == CHAT
        try:
            p = await self._admit(ctx, request)
            raw = await self._read_body(request)
            req = parse_request(raw, ChatCompletionRequest if chat else CompletionRequest)
            ctx.model = req.model
            s = sampling_of(req)
            ctx.params = s.params
            if chat:
                ctx.messages = [m.ledger_entry() for m in req.messages]
                ctx.tools = definitions(req)
                ctx.prompt = render_chat(ctx.messages, ctx.tools)
            tier = get_tier(p.tier)
            refusal = tier.refuse_request(s, req) or tier.logprob_policy(self.tier_settings).refusal(s, req)
            if refusal is not None:
                raise _refused(refusal)
            if not p.allows_model(req.model):
                raise _model_not_found(req.model)
            if self.proxy:
                return await self._proxy(ctx, p, req, s, chat)
            return await self._local(ctx, p, req, s, chat, big=len(raw) > BIG_BODY)
        except Exception as exc:  # the one error path: every failure is recorded, then answered
            return await self.refuse(ctx, as_api_error(exc, ctx))

    def _resolve_max_tokens(self, s: Sampling, prompts: list[Prompt], context: int, param: str) -> int:
        cap = self.settings.max_tokens_cap
        longest = max(len(pr.ids) for pr in prompts)
        if longest > self.settings.max_prompt_tokens:
            raise APIError(
                400,
                f"The prompt has {longest} tokens, more than the limit of {self.settings.max_prompt_tokens}.",
                code="context_length_exceeded",
                param=param,
            )
        _check_max_tokens(s.max_tokens, cap)
        max_tokens = s.max_tokens
        if max_tokens is None:
            max_tokens = max(1, min(s.default_max_tokens or cap, cap, context - longest))
        if longest + max_tokens > context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the completion).",
                code="context_length_exceeded",
                param="max_tokens",
            )
        return max_tokens

    async def _local(self, ctx: Ctx, p: Principal, req: Any, s: Sampling, chat: bool, big: bool) -> Response:
        backend = self.backend
        if req.model != backend.model_id:
            raise _model_not_found(req.model)
        if ctx.tools:
            name = next(iter(ctx.tools))
            raise APIError(
                400, f"{name} is not supported by this model", param=name, code="unsupported_parameter"
            )
        for tok, _ in s.logit_bias:
            backend.check_token_ids([tok], "logit_bias")

        def build() -> list[Prompt]:
            if chat:
                return [backend.chat_prompt(ctx.messages)]
            return backend.completion_prompts(req.prompt)

        # tokenising a body of megabytes takes long enough to stall every other request: not on the loop
        prompts = await anyio.to_thread.run_sync(build) if big else build()
        if not chat:
            ctx.prompt = "\n".join(pr.text for pr in prompts)
        _check_choices(len(prompts), s.n)
        ctx.choices = rows = len(prompts) * s.n
        max_tokens = self._resolve_max_tokens(
            s, prompts, backend.context_length, "messages" if chat else "prompt"
        )
        prompt_tokens = sum(len(pr.ids) for pr in prompts)
        spec = self._watermark_for(get_tier(p.tier))
        ctx.watermark = spec.describe() if spec is not None else None
        ctx.prompt_tokens = prompt_tokens
        reservation = await self._reserve(p, prompt_tokens + rows * max_tokens, s)
        ctx.decision = "admitted"
        self.metrics.in_flight.inc()
        tier = get_tier(p.tier)
        try:
            policy = tier.logprob_policy(self.tier_settings) if s.asks_logprobs else None
            defence = self._defence_for(tier)
            sampled = defence.sampling(s) if defence is not None else s
            gen = backend.start(GenerationRequest(prompts, sampled, max_tokens, spec, policy, defence))
        except Exception:
            self.metrics.in_flight.dec()
            self._commit(reservation, 0)
            raise
        if s.stream:
            fin = _StreamEnd(self, ctx, reservation, lambda: prompt_tokens + gen.generated, gen.cancel)
            return SSEResponse(
                self._stream_local(ctx, gen, fin, prompts, s, chat, prompt_tokens),
                fin,
                headers={"x-request-id": ctx.request_id},
            )
        texts = [""] * rows
        entries: list[list] = [[] for _ in range(rows)]
        finish: list[str | None] = [None] * rows
        try:
            async for ev in gen:
                texts[ev.index] += ev.text
                entries[ev.index].extend(ev.logprobs)
                if ev.finish_reason:
                    finish[ev.index] = ev.finish_reason
        except BaseException:
            gen.cancel()
            self._commit(reservation, prompt_tokens + gen.generated)
            self.metrics.in_flight.dec()
            raise
        ctx.completion_tokens = gen.completion_tokens
        ctx.completion = "\n\n".join(texts)
        self.metrics.in_flight.dec()
        await self._settle(reservation, prompt_tokens + gen.completion_tokens)
        try:
            await self._append(ctx)
        except APIError as err:
            return await self.refuse(ctx, err)
        created = int(ctx.ts_start)
        if chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i], "refusal": None},
                    "logprobs": chat_logprobs(entries[i]) if s.asks_logprobs else None,
                    "finish_reason": finish[i],
                }
                for i in range(rows)
            ]
        else:
            choices = [
                {
                    "index": i,
                    "text": texts[i],
                    "logprobs": completion_logprobs(entries[i], len(prompts[i // s.n].text))
                    if s.asks_logprobs
                    else None,
                    "finish_reason": finish[i],
                }
                for i in range(rows)
            ]
        body = {
            "id": ("chatcmpl-" if chat else "cmpl-") + ctx.request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": req.model,
            "choices": choices,
            "usage": usage(prompt_tokens, gen.completion_tokens),
            "distillguard": self._extra(ctx),
        }
        self._observe(ctx)
        return json_response(body, ctx.request_id)

    def _extra(self, ctx: Ctx) -> dict[str, Any]:
        """A non-standard field (the official client keeps unknown fields): nothing secret, never the key."""
        wm = ctx.watermark
        return {
            "request_id": ctx.request_id,
            "watermarked": wm is not None,
            "watermark_scheme": wm and wm["scheme"],
        }

    async def _stream_local(
        self,
        ctx: Ctx,
        gen: Generation,
        fin: _StreamEnd,
        prompts: list[Prompt],
        s: Sampling,
        chat: bool,
        prompt_tokens: int,
    ) -> AsyncIterator[bytes]:
        rows = gen.rows
        rid = ("chatcmpl-" if chat else "cmpl-") + ctx.request_id
        obj = "chat.completion.chunk" if chat else "text_completion"
        base: dict[str, Any] = {"id": rid, "object": obj, "created": int(ctx.ts_start), "model": ctx.model}
        if s.include_usage:
            base["usage"] = None
        texts = [""] * rows
        offsets = [len(prompts[i // s.n].text) for i in range(rows)]
        try:
            await self._record_start(ctx)
            if chat:
                for i in range(rows):
                    first = {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    yield sse({**base, "choices": [first]})
            async for ev in gen:
                texts[ev.index] += ev.text
                ctx.completion = "\n\n".join(texts)
                lp = None
                if s.asks_logprobs:
                    lp = (
                        chat_logprobs(ev.logprobs)
                        if chat
                        else completion_logprobs(ev.logprobs, offsets[ev.index])
                    )
                if chat:
                    delta = {"content": ev.text} if ev.text or not ev.finish_reason else {}
                    choice = {
                        "index": ev.index,
                        "delta": delta,
                        "logprobs": lp,
                        "finish_reason": ev.finish_reason,
                    }
                else:
                    choice = {
                        "index": ev.index,
                        "text": ev.text,
                        "logprobs": lp,
                        "finish_reason": ev.finish_reason,
                    }
                yield sse({**base, "choices": [choice]})
            ctx.completion_tokens = gen.completion_tokens
            await fin.settle()
            if s.include_usage:
                yield sse({**base, "choices": [], "usage": usage(prompt_tokens, gen.completion_tokens)})
            async for tail in self._stream_tail(ctx, fin):
                yield tail
        except APIError as err:  # the model failed mid-stream: say so in the stream, headers are gone
            fin.fail(err, lambda: gen.generated)
            yield await self._stream_error(ctx, err)
        except BaseException as exc:
            fin.fail(exc, lambda: gen.generated)
            raise
        finally:
            fin()

    async def _stream_error(self, ctx: Ctx, err: APIError) -> bytes:
        """A broken stream's error event, sent after its record is durable: a client that saw the stream end
        has a record, as with ``[DONE]`` (if the ledger is down too, the close path tries again)."""
        if not ctx.recorded:
            try:
                await self._append(ctx)
            except APIError:
                ctx.recorded = False
        return sse(err.body())

    async def _stream_tail(self, ctx: Ctx, fin: _StreamEnd) -> AsyncIterator[bytes]:
        """Ledger first, then ``[DONE]``: a client that saw the end of a stream has a durable record."""
        try:
            await self._append(ctx)
        except APIError as err:
            ctx.status, ctx.error_code = err.status, err.code
            fin.finished = True
            yield sse(err.body())
            return
        fin.finished = True
        yield SSE_DONE


# --------------------------------------------------------------------------------------------------
# App factory


def build_backend(settings: GatewaySettings) -> Any:
    """The backend the settings ask for; the local default is the world teacher (``world_preset``)."""
    kind = settings.resolved_backend
    if kind == "upstream":
        return UpstreamBackend(
            settings.upstream_url, settings.resolved_upstream_api_key(), timeout=settings.upstream_timeout
        )
    if kind == "stub":
        return StubBackend(model_id=settings.model_name or "stub")
    model_dir = settings.model
    name = settings.model_name
    if model_dir is None:
        from distillguard.world import build_world

        model_dir = str(build_world(settings.world_preset).teacher)
        name = name or "aster"
    spec = settings.watermark_spec()
    return LocalBackend(
        model_dir,
        model_id=name or Path(model_dir).name,
        watermarked=spec is not None,
        scheme=spec.scheme if spec is not None else None,
        batch_max_size=settings.batch_max_size,
        batch_wait_ms=settings.batch_wait_ms,
    )


def create_app(
    settings: GatewaySettings | None = None,
    *,
    backend: Any = None,
    accounts: AccountStore | None = None,
    quotas: QuotaStore | None = None,
    ledger: LedgerStore | None = None,
) -> FastAPI:
    """The gateway as an ASGI app. Components not given are built from ``settings`` (and its state paths)."""
    settings = settings or GatewaySettings.load()
    state = settings.storage()
    gw = Gateway(
        settings,
        backend if backend is not None else build_backend(settings),
        accounts if accounts is not None else account_store_from_config(state),
        quotas if quotas is not None else open_quota_store(settings.redis_url),
        ledger if ledger is not None else ledger_from_config(state),
        settings.ip_rules(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await gw.backend.startup()
        flusher = asyncio.create_task(gw.refusal_flusher())
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(BaseException):
                await flusher
            await gw.flush_refusals()
            await gw.backend.aclose()
            await gw.writer.aclose()
            gw.store_threads.shutdown(wait=False)
            gw.quota_threads.shutdown(wait=False)

    app = FastAPI(
        redirect_slashes=False,  # "/v1/chat/completions/" is an unknown path (a recorded 404), not a 307
        title="distillguard gateway",
        version="1",
        summary="OpenAI-compatible API with watermarked outputs, quotas and a query ledger.",
        lifespan=lifespan,
    )
    app.state.gateway = gw
    app.add_middleware(HTTPGuard, gateway=gw)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "invalid_api_key"}
        msg = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"Unknown request URL: {request.method} {request.url.path}."
        err = APIError(exc.status_code, msg, code=codes.get(exc.status_code))
        err.headers.update(exc.headers or {})
        # an unknown path or a wrong method is recorded like any refusal (someone probing for endpoints)
        return await gw.refuse_early(request.scope, err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        param = ".".join(loc) or None
        kind = first.get("type", "")
        if kind in ("json_invalid", "model_attributes_type") or not loc:
            return error_response(
                APIError(400, "The request body is not a valid JSON object.", code="invalid_json")
            )
        msg = f"invalid value for '{param}': {first.get('msg', 'invalid')}"
        return error_response(APIError(400, msg, param=param, code="invalid_value"))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(
            APIError(500, "The server had an error while processing your request.", code="server_error")
        )

    # -- public routes --------------------------------------------------------------------------

    # The /v1 routes are plain Starlette routes: they parse their own bodies (auth first, OpenAI errors), so
    # FastAPI's dependency solving would only add latency. They are documented in ``openapi()`` below.
    async def chat_completions(request: Request) -> Response:
        return await gw.generate(request, CHAT)

    async def completions(request: Request) -> Response:
        return await gw.generate(request, COMPLETIONS)

    async def list_models(request: Request) -> Response:
        return await gw.models(request)

    async def get_model(request: Request) -> Response:
        return await gw.models(request, request.path_params["model_id"])

    app.router.add_route(CHAT, chat_completions, methods=["POST"], include_in_schema=False)
    app.router.add_route(COMPLETIONS, completions, methods=["POST"], include_in_schema=False)
    app.router.add_route(MODELS, list_models, methods=["GET"], include_in_schema=False)
    app.router.add_route(MODELS + "/{model_id:path}", get_model, methods=["GET"], include_in_schema=False)

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz() -> Response:
        return json_response({"status": "ok", "backend": gw.backend.kind})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(gw.metrics.render(gw.backend, gw.writer), media_type=CONTENT_TYPE_LATEST)

    add_admin_routes(app, gw)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (ChatCompletionRequest, CompletionRequest):
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(js.pop("$defs", {}))
                comps[model.__name__] = js
            comps["Error"] = {
                "type": "object",
                "properties": {"error": {"type": "object", "example": error_body("message")["error"]}},
            }
            schema.setdefault("paths", {}).update(v1_openapi_paths(CHAT, COMPLETIONS, MODELS))
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def gateway_of(app: FastAPI) -> Gateway:
    """The :class:`Gateway` behind an app built by :func:`create_app` (tests, demo)."""
    return app.state.gateway

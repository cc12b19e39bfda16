"""Drive a running gateway over HTTP with a labelled scenario: the monitor's end-to-end test traffic.

The simulator plays the reverse proxy in front of the gateway: every request carries
``X-Forwarded-For: <the persona's client IP>``, so the ledger records the simulated user's address. The
gateway only believes that header from peers in its ``trusted_proxies``, so **start the gateway with the
simulator's address trusted**, e.g. ``distillguard serve --trusted-proxy 127.0.0.1/32`` when both run on
one host. Otherwise the gateway (rightly) ignores the header and every record carries the simulator's own
address, which no API response reveals: check a few ledger records after a first run.

What it does, in order:

1. creates the scenario's accounts and keys through the admin API (``--admin-token``) or directly in the
   gateway's :class:`AccountStore`. Accounts that existed before the simulated period are created first;
   accounts opened during it (a Sybil campaign's signup burst, a fresh attacker account) are created when
   the replay reaches their creation time, so the store's creation times show the same bursts;
2. replays the events in simulated-time order, compressed by ``time_scale`` (simulated seconds per real
   second; 0 = as fast as the gateway answers, order kept), with up to ``concurrency`` requests in flight,
   as official ``/v1/chat/completions`` / ``/v1/completions`` requests (streams read to ``[DONE]``);
3. reacts like the real client would: 429 -> wait ``Retry-After`` (capped) and retry, attackers with
   several keys rotate keys first; 403 ``not_allowed_for_tier`` (the ``restricted`` tier refuses logprobs
   and logit_bias) -> benign clients drop those parameters, attackers move that work to another account;
   403 suspended/banned and 401 revoked -> benign clients give up, attackers move the account's remaining
   traffic to another live account of their campaign or register a spare account (labelled as theirs);
4. writes ``labels.json`` (every account it created, spares included) and ``simulation.json`` (what
   happened to each account: requests, statuses, error codes, retries, switches) to ``out``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from distillguard.errors import UserError
from distillguard.gateway.accounts import AccountStore
from distillguard.monitor.scenario import Scale, Scenario, build_scenario
from distillguard.monitor.simworld import Event, Pools, SimAccount, account_name
from distillguard.monitor.synth import write_labels

DEAD_CODES = frozenset(
    {"account_suspended", "account_banned", "key_revoked", "key_expired", "invalid_api_key"}
)
TIER_CODE = "not_allowed_for_tier"
LOGPROB_PARAMS = ("logprobs", "top_logprobs", "logit_bias")


@dataclass
class AccountLog:
    """What happened to one account during the replay."""

    account: str
    persona: str
    kind: str
    campaign: str | None
    spare: bool = False
    keys: list[str] = field(default_factory=list)  # key ids
    created_at: float | None = None  # wall-clock time the key(s) were created
    sent: int = 0
    ok: int = 0
    retries: int = 0
    dropped: int = 0
    degraded: int = 0  # requests re-sent without logprobs / logit_bias after a tier refusal
    status: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    restricted_at: float | None = None  # simulated time of the first tier refusal
    dead_at: float | None = None  # simulated time the account stopped working (suspended, banned, revoked)
    dead_reason: str | None = None
    switched_to: list[str] = field(default_factory=list)
    gave_up: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "persona": self.persona,
            "kind": self.kind,
            "campaign": self.campaign,
            "spare": self.spare,
            "keys": list(self.keys),
            "created_at": self.created_at,
            "sent": self.sent,
            "ok": self.ok,
            "retries": self.retries,
            "dropped": self.dropped,
            "degraded": self.degraded,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "errors": dict(sorted(self.errors.items())),
            "restricted_at": self.restricted_at,
            "dead_at": self.dead_at,
            "dead_reason": self.dead_reason,
            "switched_to": list(self.switched_to),
            "gave_up": self.gave_up,
        }


@dataclass
class SimResult:
    """The outcome of :func:`simulate`: where the files are and what each account went through."""

    base_url: str
    model: str
    out_dir: Path
    labels_path: Path
    log_path: Path
    seed: int
    scale: str
    time_scale: float
    events: int
    elapsed_s: float
    sim_seconds: float
    accounts: dict[str, AccountLog]
    labels: dict[str, dict[str, Any]]

    @property
    def requests(self) -> int:
        return sum(a.sent for a in self.accounts.values())

    @property
    def ok(self) -> int:
        return sum(a.ok for a in self.accounts.values())

    def by_persona(self) -> list[dict[str, Any]]:
        """One summary row per persona: accounts, requests, answers, 429s, 403s, dead accounts, switches."""
        rows: dict[str, dict[str, Any]] = {}
        for a in self.accounts.values():
            r = rows.setdefault(
                a.persona,
                {"persona": a.persona, "kind": a.kind, "accounts": 0, "spares": 0, "sent": 0, "ok": 0,
                 "429": 0, "403": 0, "dropped": 0, "dead": 0, "switches": 0},
            )  # fmt: skip
            r["accounts"] += 1
            r["spares"] += int(a.spare)
            r["sent"] += a.sent
            r["ok"] += a.ok
            r["429"] += a.status.get(429, 0)
            r["403"] += a.status.get(403, 0)
            r["dropped"] += a.dropped
            r["dead"] += int(a.dead_at is not None)
            r["switches"] += len(a.switched_to)
        return sorted(rows.values(), key=lambda r: (r["kind"], r["persona"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "out_dir": str(self.out_dir),
            "labels": str(self.labels_path),
            "seed": self.seed,
            "scale": self.scale,
            "time_scale": self.time_scale,
            "events": self.events,
            "requests": self.requests,
            "ok": self.ok,
            "elapsed_s": round(self.elapsed_s, 3),
            "sim_seconds": round(self.sim_seconds, 3),
            "personas": self.by_persona(),
            "accounts": {name: log.to_dict() for name, log in sorted(self.accounts.items())},
        }


def simulate(
    base_url: str,
    *,
    out: Path,
    admin_token: str | None = None,
    account_store: AccountStore | None = None,
    scale: str | Scale = "small",
    scenario: Scenario | None = None,
    seed: int = 0,
    pools: Pools | None = None,
    days: float | None = None,
    personas: Sequence[str] | None = None,
    time_scale: float = 0.0,
    duration: float | None = None,
    concurrency: int = 16,
    model: str | None = None,
    max_retries: int = 2,
    max_backoff: float = 5.0,
    spares_per_campaign: int = 2,
    timeout: float = 120.0,
    local_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    """Replay a labelled scenario against the gateway at ``base_url`` (without ``/v1``); see the module doc.

    Accounts are created through the admin API with ``admin_token`` or directly in ``account_store`` (the
    gateway's own store). ``duration`` (real seconds for the whole simulated span) sets ``time_scale`` for
    you. Compressing time multiplies every client's request rate by ``time_scale``: per-key limits meant
    for real time will fire (the 429s are handled and logged, like a real client's). ``local_address``
    binds the client socket (the simulator's proxy address as the gateway sees it). ``progress(done,
    total)`` is called as events finish. Returns a :class:`SimResult`; ``labels.json`` and
    ``simulation.json`` are in ``out``.
    """
    if (admin_token is None) == (account_store is None):
        raise UserError("give exactly one of an admin token (admin API) or an account store")
    if concurrency < 1:
        raise UserError(f"concurrency must be >= 1, got {concurrency}")
    if time_scale < 0:
        raise UserError(f"time_scale must be >= 0 (0: as fast as possible), got {time_scale}")
    if duration is not None and duration <= 0:
        raise UserError(f"duration must be > 0 seconds, got {duration}")
    scen = scenario or build_scenario(scale, seed=seed, pools=pools, days=days, personas=personas)
    if not scen.events:
        raise UserError("the scenario has no events to replay")
    runner = _Runner(
        scen,
        base_url=base_url.rstrip("/"),
        out=Path(out),
        admin_token=admin_token,
        store=account_store,
        time_scale=time_scale,
        duration=duration,
        concurrency=concurrency,
        model=model,
        max_retries=max_retries,
        max_backoff=max_backoff,
        spares=spares_per_campaign,
        timeout=timeout,
        local_address=local_address,
        progress=progress,
    )
    return asyncio.run(runner.run())


class _Runner:
    def __init__(self, scen: Scenario, **opts: Any) -> None:
        self.scen = scen
        self.base_url: str = opts["base_url"]
        self.out: Path = opts["out"]
        self.admin_token: str | None = opts["admin_token"]
        self.store: AccountStore | None = opts["store"]
        self.concurrency: int = opts["concurrency"]
        self.model: str | None = opts["model"]
        self.max_retries: int = opts["max_retries"]
        self.max_backoff: float = opts["max_backoff"]
        self.spares: int = opts["spares"]
        self.timeout: float = opts["timeout"]
        self.local_address: str | None = opts["local_address"]
        self.progress = opts["progress"]
        events = scen.events
        self.first_t = events[0].t if events else 0.0
        self.span = (events[-1].t - self.first_t) if events else 0.0
        duration = opts["duration"]
        self.time_scale: float = self.span / duration if duration and self.span > 0 else opts["time_scale"]
        self.sim = {a.name: a for a in scen.accounts}
        self.labels = scen.labels()
        self.logs = {
            a.name: AccountLog(a.name, a.persona, a.kind, a.campaign, spare=a.spare) for a in scen.accounts
        }
        self.keys: dict[str, list[str]] = {}  # account -> plaintext keys, in key order
        self.key_ready: dict[str, asyncio.Event] = {}
        self.route: dict[str, str] = {}  # dead or restricted attacker account -> the account taking over
        self.campaign_members: dict[str, list[str]] = {}
        for a in scen.accounts:
            if a.kind == "attacker" and a.campaign is not None:
                self.campaign_members.setdefault(a.campaign, []).append(a.name)
        self.spares_used: Counter = Counter()
        self.spare_rng = random.Random(f"{scen.seed}:spares")
        self.rr: Counter = Counter()
        self.done = 0
        self.t0 = 0.0
        self.last_t = self.first_t
        self.take_lock = asyncio.Lock()

    # -- time ------------------------------------------------------------------------------------------

    def sim_now(self) -> float:
        if self.time_scale <= 0:
            return self.last_t
        return self.first_t + (time.monotonic() - self.t0) * self.time_scale

    async def sleep_until(self, t: float) -> None:
        self.last_t = max(self.last_t, t)
        if self.time_scale <= 0:
            return
        due = self.t0 + (t - self.first_t) / self.time_scale
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- accounts --------------------------------------------------------------------------------------

    async def create_key(self, client: httpx.AsyncClient, acct: SimAccount, k: int) -> None:
        if self.store is not None:
            key, key_id = await asyncio.to_thread(
                self.store.create_key, acct.name, org=acct.org, name=f"key-{k}"
            )
        else:
            body = {"account": acct.name, "name": f"key-{k}"}
            if acct.org is not None:
                body["org"] = acct.org
            try:
                r = await client.post(
                    "/admin/keys", json=body, headers={"authorization": f"Bearer {self.admin_token}"}
                )
            except httpx.HTTPError as exc:
                raise UserError(f"cannot reach the gateway at {self.base_url}: {exc}") from None
            if r.status_code != 200:
                raise UserError(_admin_error(r))
            data = r.json()
            key, key_id = data["key"], data["key_id"]
        log = self.logs[acct.name]
        log.keys.append(key_id)
        if log.created_at is None:
            log.created_at = time.time()
        self.keys.setdefault(acct.name, []).append(key)
        self.key_ready.setdefault(acct.name, asyncio.Event()).set()

    async def spare_for(self, client: httpx.AsyncClient, dead: SimAccount) -> str | None:
        """A live account of the same campaign (round-robin), else a freshly registered spare."""
        campaign = dead.campaign or dead.name
        members = [m for m in self.campaign_members.get(campaign, []) if self._alive(m) and m in self.keys]
        if members:
            self.rr[campaign] += 1
            return members[self.rr[campaign] % len(members)]
        if self.spares_used[campaign] >= self.spares:
            return None
        self.spares_used[campaign] += 1
        name = account_name(self.spare_rng)
        while name in self.sim:
            name = account_name(self.spare_rng)
        net = ipaddress.ip_network(f"{dead.ips[0]}/24", strict=False) if dead.ips else None
        ip = str(net.network_address + self.spare_rng.randrange(1, 255)) if net else dead.ips[0]
        spare = SimAccount(
            name=name,
            persona=dead.persona,
            kind=dead.kind,
            campaign=dead.campaign,
            org=None,
            created=self.sim_now(),
            key_created=(self.sim_now(),),
            ips=(ip,),
            spare=True,
        )
        self.sim[name] = spare
        self.labels[name] = spare.label()
        self.logs[name] = AccountLog(name, spare.persona, spare.kind, spare.campaign, spare=True)
        self.campaign_members.setdefault(campaign, []).append(name)
        await self.create_key(client, spare, 0)
        return name

    def _alive(self, name: str) -> bool:
        log = self.logs[name]
        return log.dead_at is None and log.restricted_at is None

    def resolve(self, name: str) -> str | None:
        """The account that now sends ``name``'s traffic (itself unless it was taken out)."""
        seen = set()
        while name in self.route and name not in seen:
            seen.add(name)
            name = self.route[name]
        return None if self.logs[name].dead_at is not None and name not in self.route else name

    # -- requests --------------------------------------------------------------------------------------

    async def send(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, ev: Event) -> None:
        try:
            await self._send(client, sem, ev)
        finally:
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, len(self.scen.events))

    async def _send(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, ev: Event) -> None:
        origin = self.sim[ev.account]
        params = dict(ev.params)
        attempt = 0
        key_shift = 0
        while True:
            name = self.resolve(ev.account)
            if name is None:
                self.logs[ev.account].dropped += 1
                return
            acct, log = self.sim[name], self.logs[name]
            if origin.kind == "benign" and log.restricted_at is not None and _strip(params):
                log.degraded += 1
            if name not in self.keys:
                await self.key_ready.setdefault(name, asyncio.Event()).wait()
            keys = self.keys[name]
            key = keys[(ev.key_index + key_shift) % len(keys)]
            ip = ev.client_ip if name == ev.account or len(acct.ips) != 1 else acct.ips[0]
            body = ev.body(self.model or "")
            body.update(params)
            for p in LOGPROB_PARAMS:
                if p not in params:
                    body.pop(p, None)
            headers = {"authorization": f"Bearer {key}", "x-forwarded-for": ip}
            async with sem:
                status, code, retry_after, should_retry = await self._request(client, ev, body, headers)
            log.sent += 1
            log.status[status] += 1
            if code:
                log.errors[code] += 1
            if status == 200:
                log.ok += 1
                return
            now = self.sim_now()
            if status == 429 and should_retry and attempt < self.max_retries:
                attempt += 1
                log.retries += 1
                if acct.kind == "attacker" and len(keys) > 1:
                    key_shift += 1  # a second key has its own per-key budget
                    continue
                await asyncio.sleep(min(self.max_backoff, retry_after))
                continue
            if status == 403 and code == TIER_CODE:
                if log.restricted_at is None:
                    log.restricted_at = now
                if acct.kind == "attacker" and await self._take_over(client, acct, "restricted"):
                    continue
                if _strip(params):
                    log.degraded += 1
                    continue
                log.dropped += 1
                return
            if code in DEAD_CODES or (status == 429 and not should_retry and acct.kind == "attacker"):
                if code in DEAD_CODES and log.dead_at is None:
                    log.dead_at, log.dead_reason = now, code
                if acct.kind == "attacker" and await self._take_over(client, acct, code or "quota"):
                    continue
                if code in DEAD_CODES:
                    log.gave_up = True
                log.dropped += 1
                return
            if status >= 500 and attempt < self.max_retries:
                attempt += 1
                log.retries += 1
                await asyncio.sleep(min(self.max_backoff, 0.5 * attempt))
                continue
            log.dropped += 1
            return

    async def _take_over(self, client: httpx.AsyncClient, acct: SimAccount, why: str) -> bool:
        """Move ``acct``'s traffic to another account of its operator; False if there is none left."""
        async with self.take_lock:  # concurrent refusals of one account must not register two spares
            current = self.route.get(acct.name)
            if current is not None and current != acct.name and self._alive(current):
                return True
            replacement = await self.spare_for(client, acct)
            if replacement is None or replacement == acct.name:
                return False
            self.route[acct.name] = replacement
            self.logs[acct.name].switched_to.append(replacement)
            return True

    async def _request(
        self, client: httpx.AsyncClient, ev: Event, body: dict, headers: dict
    ) -> tuple[int, str | None, float, bool]:
        """``(status, error code, retry_after, should_retry)``; a transport error is status 599."""
        try:
            if body.get("stream"):
                async with client.stream("POST", ev.path, json=body, headers=headers) as r:
                    if r.status_code != 200:
                        await r.aread()
                        return self._refusal(r)
                    code = None
                    async for line in r.aiter_lines():
                        if line.startswith("data: {") and '"error"' in line:  # cheap filter, then parse
                            try:
                                err = json.loads(line[6:]).get("error")
                            except json.JSONDecodeError:
                                err = None
                            if isinstance(err, dict):
                                code = err.get("code") or "stream_error"
                    if code:
                        return 500, code, 0.0, False
                    return 200, None, 0.0, False
            r = await client.post(ev.path, json=body, headers=headers)
        except httpx.HTTPError:
            return 599, "transport_error", 0.0, True
        if r.status_code != 200:
            return self._refusal(r)
        return 200, None, 0.0, False

    def _refusal(self, r: httpx.Response) -> tuple[int, str | None, float, bool]:
        try:
            code = (r.json().get("error") or {}).get("code")
        except (ValueError, AttributeError):
            code = None
        try:
            retry_after = float(r.headers.get("retry-after", "1"))
        except ValueError:
            retry_after = 1.0
        should_retry = r.headers.get("x-should-retry", "true").lower() != "false"
        return r.status_code, code, retry_after, should_retry

    # -- the replay ------------------------------------------------------------------------------------

    async def run(self) -> SimResult:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        transport = httpx.AsyncHTTPTransport(local_address=self.local_address) if self.local_address else None
        limits = httpx.Limits(
            max_connections=self.concurrency + 2, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, limits=limits, transport=transport
        ) as client:
            try:
                await self._health(client)
                # customers that existed before the simulated period, oldest first
                created_later: list[tuple[float, int, SimAccount]] = []
                for acct in sorted(self.scen.accounts, key=lambda a: (a.created, a.name)):
                    for k, kt in enumerate(acct.key_created):
                        if kt <= self.first_t:
                            await self.create_key(client, acct, k)
                        else:
                            created_later.append((kt, k, acct))
                if self.model is None:
                    self.model = await self._model(client)
                await self._replay(client, sorted(created_later, key=lambda x: (x[0], x[2].name, x[1])))
            finally:
                elapsed = time.monotonic() - started
                created = {n: label for n, label in self.labels.items() if self.logs[n].keys}
                labels_path = write_labels(self.out / "labels.json", created)
        result = SimResult(
            base_url=self.base_url,
            model=self.model or "",
            out_dir=self.out,
            labels_path=labels_path,
            log_path=self.out / "simulation.json",
            seed=self.scen.seed,
            scale=self.scen.scale,
            time_scale=self.time_scale,
            events=len(self.scen.events),
            elapsed_s=elapsed,
            sim_seconds=self.span,
            accounts=self.logs,
            labels=self.labels,
        )
        result.log_path.write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
        return result

    async def _replay(
        self, client: httpx.AsyncClient, creations: list[tuple[float, int, SimAccount]]
    ) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task] = set()
        self.t0 = time.monotonic()
        self.last_t = self.first_t
        ci = 0
        for ev in self.scen.events:
            while ci < len(creations) and creations[ci][0] <= ev.t:
                kt, k, acct = creations[ci]
                await self.sleep_until(kt)
                await self.create_key(client, acct, k)
                ci += 1
            await self.sleep_until(ev.t)
            while len(tasks) >= 4 * self.concurrency:  # backpressure: do not queue the whole scenario
                _, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.create_task(self.send(client, sem, ev))
            tasks.add(task)
        if tasks:
            await asyncio.gather(*tasks)
        for _, k, acct in creations[ci:]:  # accounts opened after the last event still exist
            await self.create_key(client, acct, k)

    async def _health(self, client: httpx.AsyncClient) -> None:
        try:
            r = await client.get("/healthz")
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach the gateway at {self.base_url}: {exc}") from None
        if r.status_code != 200:
            raise UserError(
                f"{self.base_url}/healthz answered {r.status_code}; is this a distillguard gateway?"
            )

    async def _model(self, client: httpx.AsyncClient) -> str:
        """The first model the gateway lists, asked the way the first customer's client would."""
        name = next(a.name for a in self.scen.accounts if a.name in self.keys and a.ips)
        headers = {"authorization": f"Bearer {self.keys[name][0]}", "x-forwarded-for": self.sim[name].ips[0]}
        r = await client.get("/v1/models", headers=headers)
        if r.status_code != 200:
            raise UserError(f"cannot list the gateway's models (HTTP {r.status_code}); pass the model name")
        data = r.json().get("data") or []
        if not data:
            raise UserError("the gateway serves no model")
        return data[0]["id"]


def _strip(params: dict) -> bool:
    """Drop logprobs / top_logprobs / logit_bias from ``params``; True if anything was dropped."""
    hit = False
    for p in LOGPROB_PARAMS:
        if p in params:
            params.pop(p)
            hit = True
    return hit


def _admin_error(r: httpx.Response) -> str:
    try:
        err = r.json().get("error") or {}
    except ValueError:
        err = {}
    code = err.get("code")
    if code == "admin_disabled":
        return "the gateway's admin API is disabled: start it with --admin-token, or pass --accounts"
    if code == "invalid_admin_token":
        return "the gateway refused the admin token"
    return f"creating a key failed: HTTP {r.status_code} {err.get('message', r.text[:200])}"

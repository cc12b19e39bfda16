"""Drive a held-out population through a real gateway: accounts and keys over the admin API, requests with
the official ``openai`` client, each from its simulated client address (``X-Forwarded-For``).

Time. The gateway stamps ledger records and account sign-ups with its own wall clock and has no trusted
way for a client to set them, so simulated time is compressed: events are sent in simulated order, paced
so that wall time is a piecewise linear function of simulated time (the sign-up history before the
observed period takes the first tenth of ``duration`` seconds, the period the rest). The ledger thus keeps
the order and the relative shape of the traffic, with every gap shrunk by the same factor (requests whose
scaled gap is shorter than the gateway's latency come late; ``generation.json`` reports by how much).
``duration=0`` sends as fast as possible (order kept, shape lost). Either way ``schedule.jsonl`` maps
every request id to its simulated time, and :func:`distillguard.heldout.retime.retime` rewrites a
Parquet export onto the simulated clock exactly.

Quotas. A day compressed into seconds would trip any per-minute limit, so keys are created with limits
far above the population's real rates.

Models with a short context (the tiny world's teacher: 256 tokens) refuse some requests as too long;
``max_tokens_cap`` clips every request's ``max_tokens`` for them. A model without tool calling refuses the
agents' ``tools``: their first such call is refused (and recorded), then they send without definitions.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from distillguard.errors import UserError
from distillguard.heldout import words
from distillguard.heldout.plan import DAY, Account, Request, labels, open_generator

SIM_EPOCH = 1767571200.0  # 2026-01-05 00:00 UTC, a Monday: simulated time 0
HISTORY_SHARE = 0.1  # share of the wall-clock duration given to the sign-ups before the period
DEFAULT_DURATION = {"small": 60.0, "medium": 900.0, "month": 3600.0}  # other sizes: 900 s
KEY_LIMITS = {"rpm": 1_000_000, "tpm": 1_000_000_000, "daily_tokens": 1_000_000_000_000}


def load_apis(prompts: Path | None) -> list[str]:
    """API names for the questions: the ``api`` fields of a world prompt pool, else the built-in list."""
    if prompts is None:
        return list(words.API_NAMES)
    path = Path(prompts).expanduser()
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    found: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                api = json.loads(line).get("api")
            except (ValueError, AttributeError):
                continue
            if isinstance(api, str) and api.strip():
                found.add(api.strip())
    return sorted(found) if len(found) >= 10 else list(words.API_NAMES)


class Clock:
    """Simulated seconds -> wall seconds after the start (piecewise linear; 0 duration: no pacing)."""

    def __init__(self, first: float, end: float, duration: float) -> None:
        self.first, self.end, self.duration = min(first, 0.0), end, max(0.0, duration)

    def wall(self, t: float) -> float:
        if self.duration <= 0:
            return 0.0
        head = HISTORY_SHARE * self.duration if self.first < 0 else 0.0
        if t < 0:
            return head * (t - self.first) / (0.0 - self.first)
        return head + (self.duration - head) * min(t, self.end) / self.end

    def describe(self) -> dict[str, Any]:
        return {
            "sim_epoch": SIM_EPOCH,
            "history_start_s": self.first,
            "period_end_s": self.end,
            "duration_s": self.duration,
            "history_share": HISTORY_SHARE if self.duration > 0 and self.first < 0 else 0.0,
            "period_compression": (self.end / ((1 - HISTORY_SHARE) * self.duration))
            if self.duration
            else None,
        }


class Driver:
    def __init__(self, gateway: str, admin_token: str, model: str | None, max_tokens_cap: int | None) -> None:
        import httpx

        self.base = gateway.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]
        self.admin_token = admin_token
        self.http = httpx.Client(timeout=120.0, limits=httpx.Limits(max_connections=64))
        self.max_tokens_cap = max_tokens_cap
        self.keys: dict[str, str] = {}
        self.clients: dict[str, Any] = {}
        self.last: dict[str, tuple[str, str]] = {}  # account -> (last user text, last answer)
        self.tools_ok = True
        self.lock = threading.Lock()
        self.model = model

    def close(self) -> None:
        self.http.close()

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        r = self.http.request(
            method, self.base + path, json=body, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        if r.status_code != 200:
            raise UserError(f"admin API {method} {path}: HTTP {r.status_code} {r.text[:200]}")
        return r.json()

    def signup(self, acct: Account) -> None:
        body: dict[str, Any] = {"account": acct.name, "name": f"{acct.name}-key", **KEY_LIMITS}
        if acct.org:
            body["org"] = acct.org
        self.keys[acct.name] = self.admin("POST", "/admin/keys", body)["key"]

    def pick_model(self, acct: Account, ip: str) -> str:
        """The model to call: given, or the first the gateway lists to ``acct`` (calling from ``ip``)."""
        if self.model:
            return self.model
        headers = {"Authorization": f"Bearer {self.keys[acct.name]}", "X-Forwarded-For": ip}
        r = self.http.get(self.base + "/v1/models", headers=headers)
        data = r.json().get("data") or [] if r.status_code == 200 else []
        if not data:
            raise UserError(f"{self.base}/v1/models lists no model (HTTP {r.status_code})")
        self.model = data[0]["id"]
        return self.model

    def client(self, account: str):
        import openai

        c = self.clients.get(account)
        if c is None:
            c = openai.OpenAI(
                base_url=self.base + "/v1",
                api_key=self.keys[account],
                max_retries=0,
                timeout=120.0,
                http_client=self.http,
            )
            self.clients[account] = c
        return c

    def send(self, req: Request) -> dict[str, Any]:
        import openai

        body = json.loads(json.dumps(req.body))  # a private copy
        body["model"] = self.model
        if self.max_tokens_cap and isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = min(body["max_tokens"], self.max_tokens_cap)
        if req.followup and req.endpoint == "chat":
            with self.lock:
                prev = self.last.get(req.account)
            if prev is not None:
                head = [m for m in body["messages"] if m["role"] == "system"]
                rest = [m for m in body["messages"] if m["role"] != "system"]
                body["messages"] = [
                    *head,
                    {"role": "user", "content": prev[0]},
                    {"role": "assistant", "content": prev[1]},
                    *rest,
                ]
        if "tools" in body and not self.tools_ok:
            body.pop("tools")
        if req.stream:
            body["stream"] = True
        c = self.client(req.account)
        api = c.chat.completions if req.endpoint == "chat" else c.completions
        headers = {"X-Forwarded-For": req.ip}
        info: dict[str, Any] = {"status": None, "request_id": None}
        try:
            raw = api.with_raw_response.create(**body, extra_headers=headers)
            info["status"] = raw.status_code
            info["request_id"] = raw.headers.get("x-request-id")
            parsed = raw.parse()
            text = ""
            if req.stream:
                for chunk in parsed:
                    for ch in chunk.choices or []:
                        piece = ch.delta.content if req.endpoint == "chat" else ch.text
                        text += piece or ""
            elif parsed.choices:
                ch = parsed.choices[0]
                text = (ch.message.content or "") if req.endpoint == "chat" else (ch.text or "")
            if req.endpoint == "chat":
                users = [
                    m for m in body["messages"] if m["role"] == "user" and isinstance(m.get("content"), str)
                ]
                if users:
                    with self.lock:
                        self.last[req.account] = (users[-1]["content"], text)
        except openai.APIStatusError as exc:
            info["status"] = exc.status_code
            info["request_id"] = exc.response.headers.get("x-request-id")
            code = (exc.body or {}).get("code") if isinstance(exc.body, dict) else None
            info["error"] = code or type(exc).__name__
            if "tools" in body and exc.status_code == 400 and code == "unsupported_parameter":
                # the model has no tool calling: the agent's developer drops the definitions and retries
                self.tools_ok = False
                retry = self.send(req)
                retry["first_attempt"] = info
                return retry
        except openai.APIConnectionError as exc:
            info["error"] = type(exc).__name__
        return info


def generate(
    gateway: str,
    admin_token: str,
    out: Path,
    size: str = "small",
    seed: int = 0,
    *,
    duration: float | None = None,
    concurrency: int = 8,
    prompts: Path | None = None,
    model: str | None = None,
    max_tokens_cap: int | None = None,
    log: Any = None,
    generator: str = "heldout",
) -> dict[str, Any]:
    """Create the population's accounts and send its traffic through the gateway at ``gateway`` (base URL),
    writing ``labels.json``, ``population.json``, ``schedule.jsonl`` and ``generation.json`` into ``out``.

    The gateway must trust this client's address for ``X-Forwarded-For`` (``--trusted-proxy``), or every
    request is recorded from one address. ``generator`` names the population and traffic generator
    (:data:`distillguard.heldout.plan.GENERATORS`). Returns the summary written to ``generation.json``.
    """
    gen = open_generator(generator)
    spec = gen.check_size(size)
    if not admin_token:
        raise UserError("an admin token is needed to create the population's accounts")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accounts = gen.build_population(size, seed)
    plan = gen.plan_traffic(accounts, size, seed, load_apis(prompts))
    end = spec["days"] * DAY
    duration = DEFAULT_DURATION.get(size, 900.0) if duration is None else duration
    clock = Clock(min(a.signup for a in accounts), end, duration)
    by_name = {a.name: a for a in accounts}
    (out / "labels.json").write_text(json.dumps(labels(accounts), indent=1, sort_keys=True) + "\n")

    # one time line: sign-ups (kind 0 sorts them before a request at the same instant) and requests
    events: list[tuple[float, int, Any]] = [(a.signup, 0, a) for a in accounts]
    events += [(r.t, 1, r) for r in plan]
    events.sort(key=lambda e: (e[0], e[1]))

    driver = Driver(gateway, admin_token, model, max_tokens_cap)
    results: list[dict[str, Any] | None] = [None] * len(plan)
    index = {id(r): i for i, r in enumerate(plan)}
    signed_up: dict[str, float] = {}
    slots = threading.BoundedSemaphore(max(1, concurrency) * 2)
    lags: list[float] = []
    t0 = time.monotonic()
    wall0 = time.time()

    def run(req: Request, due: float) -> None:
        try:
            started = time.monotonic() - t0
            info = driver.send(req)
            info["lag_s"] = round(max(0.0, started - due), 4)
            results[index[id(req)]] = info
        finally:
            slots.release()

    try:
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            for t, what, item in events:
                due = clock.wall(t)
                wait = due - (time.monotonic() - t0)
                if wait > 0:
                    time.sleep(wait)
                if what == 0:
                    driver.signup(item)
                    signed_up[item.name] = time.time()
                    if len(signed_up) == 1:
                        first = next(r for r in plan if r.account == item.name)
                        driver.pick_model(item, first.ip)
                    continue
                slots.acquire()
                pool.submit(run, item, due)
                if log is not None and index[id(item)] % 250 == 0:
                    log(f"{index[id(item)]}/{len(plan)} requests sent")
    finally:
        driver.close()
    wall = time.monotonic() - t0

    statuses: dict[str, int] = {}
    with (out / "schedule.jsonl").open("w") as f:
        for req, info in zip(plan, results, strict=True):
            info = info or {"status": None, "request_id": None}
            statuses[str(info.get("status"))] = statuses.get(str(info.get("status")), 0) + 1
            if info.get("lag_s") is not None and clock.duration > 0:
                lags.append(info["lag_s"])
            row = {
                "request_id": info.get("request_id"),
                "t": req.t,
                "ts": SIM_EPOCH + req.t,
                "account": req.account,
                "kind": by_name[req.account].kind,
                "ip": req.ip,
                "endpoint": req.endpoint,
                "stream": req.stream,
                "session": req.session,
                "status": info.get("status"),
                "error": info.get("error"),
            }
            if "first_attempt" in info:
                row["first_attempt"] = info["first_attempt"]
            f.write(json.dumps(row, sort_keys=True) + "\n")

    population = {
        "generator": generator,
        "size": size,
        "seed": seed,
        "clock": clock.describe(),
        "wall_start": wall0,
        "accounts": [
            {**a.to_dict(), "signup_ts": SIM_EPOCH + a.signup, "signup_wall": signed_up.get(a.name)}
            for a in accounts
        ],
    }
    (out / "population.json").write_text(json.dumps(population, indent=1, sort_keys=True) + "\n")
    lags.sort()
    summary = {
        "gateway": driver.base,
        "generator": generator,
        "model": driver.model,
        "size": size,
        "seed": seed,
        "accounts": len(accounts),
        "requests": len(plan),
        "statuses": statuses,
        "tools_supported": driver.tools_ok,
        "wall_s": round(wall, 2),
        "clock": clock.describe(),
        "lag_s": {
            "p50": lags[len(lags) // 2] if lags else None,
            "p99": lags[int(len(lags) * 0.99)] if lags else None,
            "max": lags[-1] if lags else None,
        },
    }
    (out / "generation.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary

"""Labelled API traffic: who the monitor must leave alone and who it must catch, as pure generators.

Why this module exists: a traffic monitor is only as good as the traffic it was tuned on. Real labelled
extraction traffic is not available, so the monitor's detectors are developed and evaluated against
personas that each behave like a known kind of customer or attacker, *including the hard cases*: benign
customers that look like attackers on one axis (an evaluation harness asks many diverse questions fast, a
batch job is high-volume and perfectly regular, a support bot is heavily templated, a researcher asks for
step-by-step reasoning and logprobs, a coding product runs from cloud IPs with many end users) and attackers
that try not to look like attackers (a Sybil campaign that stays under every per-key limit, a low-and-slow
account mixing copied real prompts into its queries at human pace).

Everything here is pure: no I/O, no clock, no network. A :class:`Persona` turns an ``rng`` and a
:class:`~distillguard.monitor.simworld.SimClock` into :class:`~distillguard.monitor.simworld.SimAccount` s
(with creation times: key-creation bursts are a linking signal) and
:class:`~distillguard.monitor.simworld.Event` s (one API request each, with its simulated time, client IP,
endpoint, body and parameters). :func:`~distillguard.monitor.scenario.build_scenario` assembles a whole
population at a :data:`~distillguard.monitor.scenario.SCALES` preset; the same seed always gives the same
accounts, names, IPs, texts and times. ``monitor.simulate`` replays a scenario against a running gateway
over HTTP and ``monitor.synth`` writes it straight into a ledger.

Attacker content reuses the distillation engine's prompt strategies (:mod:`distillguard.distill.strategies`):
the coverage distiller *is* the ``coverage`` k-center traversal, the templated generator *is* ``paraphrase``,
the harvester *is* ``cot``, so the monitor is tested against exactly what ``distillguard distill`` sends.

Account names carry no label (``u`` + 12 hex digits for everyone); the ground truth is only in
:meth:`~distillguard.monitor.scenario.Scenario.labels` (``labels.json``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from distillguard.distill.strategies import (
    CoTStrategy,
    CoverageStrategy,
    IdentityStrategy,
    ParaphraseStrategy,
    take,
)
from distillguard.errors import UserError
from distillguard.monitor.simworld import (
    CANNED_REPLIES,
    CI_NETS,
    CLOUD_NETS,
    CODE_CHAT,
    DAY,
    DEVICES,
    EVAL_SYSTEM,
    FOLLOW_UPS,
    HOSTING_NETS,
    HOUR,
    HUMAN_HOURS,
    PLANS,
    RESEARCH_TEMPLATES,
    RESIDENTIAL_NETS,
    SUMMARY_INSTRUCTIONS,
    SUMMARY_SYSTEM,
    SUPPORT_FAQ,
    SUPPORT_PREFIXES,
    SUPPORT_SYSTEM,
    UNIVERSITY_NETS,
    WORK_HOURS,
    Event,
    Kind,
    Pools,
    SimAccount,
    SimClock,
    account_name,
    casual_text,
    code_text,
    on_off_times,
    poisson,
    random_ip,
    random_subnet,
    sample_times,
)


@dataclass
class PersonaTraffic:
    """What one persona produced: its accounts and their events (sorted by time)."""

    accounts: list[SimAccount]
    events: list[Event]


class Persona:
    """A population of accounts of one kind, with its content, timing, parameters and addresses.

    Subclasses implement :meth:`generate`; ``name`` and ``kind`` are the labels written to ``labels.json``
    and ``campaign`` groups attacker accounts run by one operator (``None`` for benign accounts).
    """

    name: ClassVar[str] = "persona"
    kind: ClassVar[Kind] = "benign"

    def __init__(self, pools: Pools, *, accounts: int = 1, queries: int = 100, campaign: str | None = None):
        if accounts < 1:
            raise UserError(f"{self.name}: accounts must be >= 1, got {accounts}")
        if queries < 1:
            raise UserError(f"{self.name}: queries must be >= 1, got {queries}")
        self.pools = pools
        self.accounts = accounts
        self.queries = queries
        self.campaign = campaign

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        raise NotImplementedError

    def events(self, rng: random.Random, clock: SimClock) -> Iterator[Event]:
        """The persona's events in time order."""
        yield from self.generate(rng, clock).events

    def _account(
        self,
        rng: random.Random,
        *,
        created: float,
        ips: Sequence[str],
        org: str | None = None,
        key_created: Sequence[float] | None = None,
        campaign: str | None = None,
    ) -> SimAccount:
        return SimAccount(
            name=account_name(rng),
            persona=self.name,
            kind=self.kind,
            campaign=campaign if campaign is not None else self.campaign,
            org=org,
            created=created,
            key_created=tuple(key_created) if key_created else (created,),
            ips=tuple(ips),
        )

    def _event(
        self,
        acct: SimAccount,
        t: float,
        ip: str,
        *,
        messages: list[dict] | None = None,
        prompt: str | None = None,
        params: dict | None = None,
        key_index: int = 0,
        **meta: Any,
    ) -> Event:
        return Event(
            account=acct.name,
            key_index=key_index,
            t=round(t, 3),
            client_ip=ip,
            endpoint="chat" if messages is not None else "completions",
            params=dict(params or {}),
            persona=self.name,
            campaign=acct.campaign,
            messages=messages,
            prompt=prompt,
            meta=meta,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(accounts={self.accounts}, queries={self.queries})"


def _long_ago(rng: random.Random, clock: SimClock) -> float:
    """A creation time weeks to a year before the simulation: established customers."""
    return -rng.uniform(14, 400) * DAY


def _human_session_times(
    rng: random.Random, clock: SimClock, total: int, tz: float, think_s: float = 45.0
) -> list[float]:
    """``total`` times in human sessions: diurnal session starts, a few queries per session with
    log-normal think time (reading the answer, typing the next question)."""
    times: list[float] = []
    remaining = total
    n_sessions = max(1, round(total / 3.0))
    for start in sample_times(rng, clock, n_sessions, HUMAN_HOURS, tz=tz, weekend=0.8):
        if remaining <= 0:
            break
        k = min(remaining, 1 + int(rng.expovariate(1 / 2.2)))
        t = start
        for _ in range(k):
            times.append(t)
            t += rng.lognormvariate(math.log(think_s), 0.7)
        remaining -= k
    times = [t for t in times if t < clock.duration]
    times.sort()
    return times


TIMEZONES = (-8.0, -7.0, -5.0, -3.0, 0.0, 1.0, 2.0, 3.0, 5.5, 8.0, 9.0, 10.0)


class CasualChat(Persona):
    """People chatting: everyday questions, Python how-tos, the odd "are you ChatGPT?", follow-ups.

    Each account is one person at home (one residential IP, sometimes a second: phone or office) with a
    heavy-tailed activity level, diurnal sessions in their time zone and think time between questions.
    ``queries`` is the mean per account.
    """

    name = "casual_chat"

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        for _ in range(self.accounts):
            home = random_ip(rng, rng.choice(RESIDENTIAL_NETS))
            ips = [home] + ([random_ip(rng, rng.choice(RESIDENTIAL_NETS))] if rng.random() < 0.3 else [])
            acct = self._account(rng, created=_long_ago(rng, clock), ips=ips)
            accounts.append(acct)
            tz = rng.choice(TIMEZONES)
            total = max(1, min(20 * self.queries, round(rng.lognormvariate(math.log(self.queries), 0.8))))
            stream = rng.random() < 0.6
            last: tuple[str, str] | None = None
            for t in _human_session_times(rng, clock, total, tz):
                ip = ips[0] if len(ips) == 1 or rng.random() < 0.75 else ips[1]
                if last is not None and rng.random() < 0.2:  # a follow-up in the same conversation
                    messages = [
                        {"role": "user", "content": last[0]},
                        {"role": "assistant", "content": last[1]},
                        {"role": "user", "content": rng.choice(FOLLOW_UPS)},
                    ]
                    kind = "follow_up"
                else:
                    text, kind = casual_text(rng, self.pools)
                    messages = [{"role": "user", "content": text}]
                    last = (text, rng.choice(CANNED_REPLIES))
                params: dict[str, Any] = {"max_tokens": self.pools.max_tokens(rng.choice((256, 512, 1024)))}
                if rng.random() < 0.5:
                    params["temperature"] = 0.7
                if stream:
                    params["stream"] = True
                events.append(self._event(acct, t, ip, messages=messages, params=params, content=kind))
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)


class CodingAssistant(Persona):
    """A coding-assistant product: one account per product, many end users behind it.

    Editor completions (``/v1/completions`` with a code prefix, low temperature, stop sequences, small
    max_tokens) and chat questions about snippets, during its users' working hours on weekdays, from a
    few fixed egress IPs in a cloud range (a benign cloud customer), with ``user`` set to a hashed end-user
    id, over a production and a staging key. ``queries`` is per product account.
    """

    name = "coding_assistant"

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        for _ in range(self.accounts):
            egress = [random_ip(rng, rng.choice(CLOUD_NETS)) for _ in range(3)]
            created = _long_ago(rng, clock)
            acct = self._account(
                rng,
                created=created,
                ips=egress,
                org=f"devtools-{rng.getrandbits(24):06x}",
                key_created=(created, created + rng.uniform(1, 30) * DAY),
            )
            accounts.append(acct)
            tz = rng.choice((-5.0, 1.0, 5.5))
            end_users = [f"eu-{rng.getrandbits(32):08x}" for _ in range(max(5, self.queries // 15))]
            for t in sample_times(rng, clock, self.queries, WORK_HOURS, tz=tz, weekend=0.15):
                key = 0 if rng.random() < 0.95 else 1
                user = rng.choice(end_users)
                code, api = code_text(rng, self.pools)
                if rng.random() < 0.7:
                    params = {
                        "max_tokens": self.pools.max_tokens(64),
                        "temperature": 0.2,
                        "stop": ["\n\n", "\ndef "],
                        "user": user,
                    }
                    events.append(
                        self._event(acct, t, rng.choice(egress), prompt=code, params=params, key_index=key)
                    )
                else:
                    question = rng.choice(CODE_CHAT).format(code=code, api=api)
                    messages = [
                        {"role": "system", "content": "You are a coding assistant inside an IDE."},
                        {"role": "user", "content": question},
                    ]
                    params = {"max_tokens": self.pools.max_tokens(400), "stream": True, "user": user}
                    events.append(
                        self._event(
                            acct, t, rng.choice(egress), messages=messages, params=params, key_index=key
                        )
                    )
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)


class SupportBot(Persona):
    """A narrow customer-support bot: one fixed system prompt, a product FAQ asked in near-identical words.

    Heavily templated (a hard negative for template detectors), business-hours traffic from two fixed
    server IPs, ``user`` set to the end customer.
    """

    name = "support_bot"

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        for _ in range(self.accounts):
            servers = [random_ip(rng, rng.choice(CLOUD_NETS)) for _ in range(2)]
            acct = self._account(
                rng, created=_long_ago(rng, clock), ips=servers, org=f"helpdesk-{rng.getrandbits(24):06x}"
            )
            accounts.append(acct)
            tz = rng.choice((-8.0, 0.0, 1.0))
            for t in sample_times(rng, clock, self.queries, WORK_HOURS, tz=tz, weekend=0.4):
                question = rng.choice(SUPPORT_PREFIXES) + rng.choice(SUPPORT_FAQ).format(
                    device=rng.choice(DEVICES),
                    plan=rng.choice(PLANS),
                    order=f"LM-{rng.randrange(100000, 999999)}",
                )
                messages = [
                    {"role": "system", "content": SUPPORT_SYSTEM},
                    {"role": "user", "content": question},
                ]
                params = {
                    "max_tokens": self.pools.max_tokens(300),
                    "temperature": 0.3,
                    "user": f"cust-{rng.getrandbits(32):08x}",
                }
                events.append(self._event(acct, t, rng.choice(servers), messages=messages, params=params))
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)


class BatchSummariser(Persona):
    """A heavy batch customer: every night a job summarises long documents, one request every few
    seconds like clockwork, from one data-centre IP. High volume and perfectly regular, yet benign (a hard
    negative for volume and regularity detectors). ``queries`` is per account over the whole simulation.
    """

    name = "batch_summariser"

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        nights = max(1, int(math.ceil(clock.days)))
        per_night = max(1, math.ceil(self.queries / nights))
        max_chars = self.pools.doc_chars(3000)
        for _ in range(self.accounts):
            ip = random_ip(rng, rng.choice(CLOUD_NETS))
            created = _long_ago(rng, clock)
            acct = self._account(
                rng,
                created=created,
                ips=[ip],
                org=f"media-{rng.getrandbits(24):06x}",
                key_created=(created, created + rng.uniform(1, 10) * DAY),
            )
            accounts.append(acct)
            interval = rng.uniform(2.5, 6.0)
            start_hour = rng.choice((1.0, 2.0, 3.0))
            sent = 0
            for night in range(nights):
                t = night * DAY + start_hour * HOUR + rng.uniform(-90, 90)
                for _ in range(min(per_night, self.queries - sent)):
                    if t >= clock.duration:
                        break
                    doc = self._document(rng, max_chars)
                    messages = [
                        {"role": "system", "content": SUMMARY_SYSTEM},
                        {"role": "user", "content": SUMMARY_INSTRUCTIONS + doc},
                    ]
                    params = {"max_tokens": self.pools.max_tokens(200), "temperature": 0.0}
                    events.append(
                        self._event(acct, t, ip, messages=messages, params=params, key_index=night % 2)
                    )
                    sent += 1
                    t += interval * rng.uniform(0.97, 1.03)
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)

    def _document(self, rng: random.Random, max_chars: int) -> str:
        docs = self.pools.documents
        i = rng.randrange(len(docs))
        text = docs[i]
        while len(text) < max_chars * 0.6 and i + 1 < len(docs):
            i += 1
            text += "\n\n" + docs[i]
        return text[:max_chars]


class EvalHarness(Persona):
    """A benchmark/evaluation harness: a fixed set of diverse Python-docs questions, replayed in full on
    every run (nightly, plus ad-hoc runs in working hours), fast and parallel, from CI runners whose IPs
    change every run. The hardest negative: one run looks like a coverage distiller's first hundreds of
    queries. It differs in being bounded (``queries`` is the benchmark size) and repeated across runs.

    A share ``one_off`` of the accounts evaluate the model once (a team comparing providers before it
    adopts one): a key created for the run, one pass over the benchmark at a machine's pace, never
    repeated, half of it multiple-choice items scored the way evaluation harnesses score them, by the
    logprobs of a one-token answer on ``/v1/completions``. Without repeats only its size bounds it.
    """

    name = "eval_harness"

    def __init__(self, pools: Pools, *, runs_per_day: float = 1.5, one_off: float = 0.3, **kwargs: Any):
        super().__init__(pools, **kwargs)
        if not 0.0 <= one_off <= 1.0:
            raise UserError(f"{self.name}: one_off is a share in [0, 1], got {one_off}")
        self.runs_per_day = runs_per_day
        self.one_off = one_off

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        for _ in range(self.accounts):
            created = _long_ago(rng, clock)
            acct = self._account(rng, created=created, ips=[], org=f"mlplatform-{rng.getrandbits(24):06x}")
            bench = rng.sample(self.pools.questions, min(self.queries, len(self.pools.questions)))
            once = random.Random(f"one-off:{acct.name}")  # a one-off run draws on a stream of its own
            if once.random() < self.one_off:
                acct, run = self._once(once, clock, acct, bench)
                accounts.append(acct)
                events += run
                continue
            runs = [d * DAY + 3 * HOUR + rng.uniform(0, 600) for d in range(int(math.ceil(clock.days)))]
            extra = poisson(rng, max(0.0, self.runs_per_day - 1.0) * clock.days)
            runs += sample_times(rng, clock, extra, WORK_HOURS, tz=1.0, weekend=0.1)
            runs = sorted(t for t in runs if t < clock.duration) or [0.0]
            ips: list[str] = []
            for r, start in enumerate(runs):
                ip = random_ip(rng, rng.choice(CI_NETS))
                ips.append(ip)
                t = start
                for q, question in enumerate(bench):
                    events.append(self._item(acct, t, ip, question, run=r, item=q))
                    t += rng.expovariate(1 / 0.3)
            accounts.append(replace(acct, ips=tuple(ips)))
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)

    def _item(self, acct: SimAccount, t: float, ip: str, question: str, **meta: Any) -> Event:
        messages = [{"role": "system", "content": EVAL_SYSTEM}, {"role": "user", "content": question}]
        params = {"max_tokens": self.pools.max_tokens(128), "temperature": 0.0, "seed": 1234}
        return self._event(acct, t, ip, messages=messages, params=params, **meta)

    def _once(
        self, rng: random.Random, clock: SimClock, acct: SimAccount, bench: list[str]
    ) -> tuple[SimAccount, list[Event]]:
        start = sample_times(rng, clock, 1, WORK_HOURS, tz=rng.choice(TIMEZONES), weekend=0.1)
        t = start[0] if start else rng.uniform(0, clock.duration)
        ip = random_ip(rng, rng.choice(CI_NETS))
        created = t - rng.uniform(600, 2 * DAY)
        acct = replace(acct, created=created, key_created=(created,), ips=(ip,), org=None)
        events = []
        for q, question in enumerate(bench):
            if rng.random() < 0.5:  # multiple choice, the answer's letter read off its logprobs
                options = rng.sample(self.pools.apis, min(4, len(self.pools.apis)))
                choices = "".join(f"\n{c}. {api}" for c, api in zip("ABCD", options, strict=False))
                params = {"max_tokens": 1, "temperature": 0.0, "logprobs": 5}
                prompt = f"{question}{choices}\nAnswer:"
                events.append(self._event(acct, t, ip, prompt=prompt, params=params, run=0, item=q))
            else:
                events.append(self._item(acct, t, ip, question, run=0, item=q))
            t += rng.expovariate(1 / 0.3)
        return acct, events


class Researcher(Persona):
    """A researcher asking for step-by-step explanations at human pace, sometimes with logprobs (a
    calibration study) or several samples: a hard negative for both the CoT and the logprob detectors."""

    name = "researcher"

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        for _ in range(self.accounts):
            campus = rng.choice(UNIVERSITY_NETS)
            ips = [random_ip(rng, campus), random_ip(rng, rng.choice(RESIDENTIAL_NETS))]
            acct = self._account(rng, created=_long_ago(rng, clock), ips=ips)
            accounts.append(acct)
            tz = rng.choice(TIMEZONES)
            total = max(2, round(rng.lognormvariate(math.log(self.queries), 0.5)))
            for t in _human_session_times(rng, clock, total, tz, think_s=240.0):
                api, api2 = rng.sample(self.pools.apis, 2)
                text = rng.choice(RESEARCH_TEMPLATES).format(api=api, api2=api2)
                params: dict[str, Any] = {"max_tokens": self.pools.max_tokens(700), "temperature": 0.5}
                r = rng.random()
                if r < 0.2:
                    params.update(logprobs=True, top_logprobs=5, temperature=1.0)
                elif r < 0.3:
                    params["n"] = 3
                ip = ips[0] if clock.activity(t, WORK_HOURS, tz) > 0.5 else ips[1]
                events.append(
                    self._event(acct, t, ip, messages=[{"role": "user", "content": text}], params=params)
                )
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)


# -- attackers ---------------------------------------------------------------------------------------


# Coverage traversals over 1024 random candidates in 256 hashed dimensions: each step is a 1 MB
# matrix-vector product, so a campaign of tens of thousands of queries generates in seconds. The head of
# each traversal is still the farthest-first (k-center) order a budget-limited distiller would send.
COVERAGE_OPTIONS: dict[str, int] = {"dim": 256, "max_candidates": 1024}


class _Attacker(Persona):
    kind = "attacker"

    def __init__(self, pools: Pools, *, campaign: str | None = None, **kwargs: Any):
        super().__init__(pools, campaign=campaign or self.name, **kwargs)

    def _fresh(self, rng: random.Random, start: float) -> float:
        """Attackers open accounts shortly before they use them."""
        return start - rng.uniform(0.5, 36) * HOUR

    def _start(self, rng: random.Random, clock: SimClock) -> float:
        return rng.uniform(0.0, 0.25) * clock.duration


class CoverageDistiller(_Attacker):
    """A broad coverage distiller: the ``coverage`` strategy's k-center order over the question pool,
    sampled answers (temperature 0.8, long max_tokens, sometimes ``n=2``), bursts of parallel workers,
    around the clock, from a couple of cloud IPs, on a freshly opened account."""

    name = "coverage"
    system = "You are a helpful, knowledgeable assistant. Answer thoroughly."

    def _queries(self, rng: random.Random):
        strategy = CoverageStrategy(self.pools.questions, **COVERAGE_OPTIONS)
        return take(strategy, self.queries, rng)

    def _params(self, rng: random.Random) -> dict[str, Any]:
        params: dict[str, Any] = {"max_tokens": self.pools.max_tokens(512), "temperature": 0.8}
        if rng.random() < 0.15:
            params["n"] = 2
        return params

    def _ips(self, rng: random.Random) -> list[str]:
        return [random_ip(rng, rng.choice(CLOUD_NETS)) for _ in range(2)]

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        for i in range(self.accounts):
            start = self._start(rng, clock)
            ips = self._ips(rng)
            campaign = self.campaign if self.accounts == 1 else f"{self.campaign}-{i}"
            acct = self._account(rng, created=self._fresh(rng, start), ips=ips, campaign=campaign)
            times = on_off_times(rng, self.queries, start, rate=rng.uniform(0.2, 0.6))
            used: set[str] = set()
            for t, q in zip(times, self._queries(rng), strict=False):
                messages = [{"role": "user", "content": q.prompt}]
                if self.system and rng.random() < 0.5:
                    messages.insert(0, {"role": "system", "content": self.system})
                ip = self._pick_ip(rng, ips)
                used.add(ip)
                events.append(
                    self._event(acct, t, ip, messages=messages, params=self._params(rng), strategy=q.strategy)
                )
            accounts.append(replace(acct, ips=tuple(sorted(used))))
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)

    def _pick_ip(self, rng: random.Random, ips: list[str]) -> str:
        return rng.choice(ips)


class ParaphraseGenerator(CoverageDistiller):
    """A templated paraphrase generator: the ``paraphrase`` strategy (a few seed questions through many
    question templates), answers at temperature 1.0 for diversity, via rotating residential proxies (a
    fresh residential address for most requests)."""

    name = "paraphrase"
    system = ""

    def _queries(self, rng: random.Random):
        return take(ParaphraseStrategy(self.pools.questions, seeds=8), self.queries, rng)

    def _params(self, rng: random.Random) -> dict[str, Any]:
        return {"max_tokens": self.pools.max_tokens(256), "temperature": 1.0}

    def _ips(self, rng: random.Random) -> list[str]:
        return [random_ip(rng, rng.choice(RESIDENTIAL_NETS)) for _ in range(2)]

    def _pick_ip(self, rng: random.Random, ips: list[str]) -> str:
        if rng.random() < 0.7:
            return random_ip(rng, rng.choice(RESIDENTIAL_NETS))
        return rng.choice(ips)


class CoTHarvester(CoverageDistiller):
    """A chain-of-thought harvester: the ``cot`` strategy (pool questions wrapped in "explain step by
    step" elicitations), long answers, from cloud IPs."""

    name = "cot"
    system = "Always show your full reasoning before the final answer."

    def _queries(self, rng: random.Random):
        return take(CoTStrategy(self.pools.questions), self.queries, rng)

    def _params(self, rng: random.Random) -> dict[str, Any]:
        return {"max_tokens": self.pools.max_tokens(1024), "temperature": 0.6}


LOGPROB_PROMPTS: tuple[str, ...] = ("The", "Hello", "def", "import", "In Python,", "1", "A", "\n")


class LogprobExtractor(_Attacker):
    """A logit extractor (Carlini et al. 2024 style): one-token completions with ``top_logprobs=20`` and
    ``logit_bias`` sweeps of +100 over consecutive windows of token ids, so every token of the vocabulary
    gets pushed into the top 20 in turn; plus plain top-20 queries. From one VPS address."""

    name = "logprob"

    def __init__(self, pools: Pools, *, window: int = 200, **kwargs: Any):
        super().__init__(pools, **kwargs)
        if not 1 <= window <= 300:
            raise UserError(f"logit_bias window must be in 1..300 (the API's limit), got {window}")
        self.window = window

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        vocab = max(2, self.pools.vocab_size)
        window = min(self.window, vocab)
        for i in range(self.accounts):
            start = self._start(rng, clock)
            ip = random_ip(rng, rng.choice(HOSTING_NETS))
            campaign = self.campaign if self.accounts == 1 else f"{self.campaign}-{i}"
            acct = self._account(rng, created=self._fresh(rng, start), ips=[ip], campaign=campaign)
            accounts.append(acct)
            offset = 0
            prompt = rng.choice(LOGPROB_PROMPTS)
            for t in on_off_times(rng, self.queries, start, rate=rng.uniform(0.5, 1.5)):
                r = rng.random()
                if r < 0.75:
                    bias = {str((offset + j) % vocab): 100 for j in range(window)}
                    offset = (offset + window) % vocab
                    if offset < window:  # a full sweep done: next prompt
                        prompt = rng.choice(LOGPROB_PROMPTS)
                    meta = {"sweep": True}
                else:
                    bias = None
                    meta = {"sweep": False}
                if rng.random() < 0.5:
                    params: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "logprobs": 20}
                    if bias:
                        params["logit_bias"] = bias
                    events.append(self._event(acct, t, ip, prompt=prompt, params=params, **meta))
                else:
                    params = {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 20}
                    if bias:
                        params["logit_bias"] = bias
                    messages = [{"role": "user", "content": prompt}]
                    events.append(self._event(acct, t, ip, messages=messages, params=params, **meta))
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)


SYBIL_SYSTEMS: tuple[str, ...] = (
    "You are an expert Python assistant. Give complete, correct answers.",
    "You are a world-class programmer. Answer with detail and precision.",
    "You are a helpful assistant. Answer the user's question in full.",
)
SYBIL_WRAPPERS: tuple[str, ...] = (
    "{q}",
    "{q}\n\nProvide a detailed and accurate answer.",
    "Question: {q}\nAnswer in full, with an example if relevant.",
    "### Instruction\n{q}\n### Response",
    "{q} Be thorough.",
    "Please answer: {q}",
)


class SybilCampaign(_Attacker):
    """A distillation campaign spread over ``accounts`` accounts with ``queries`` each (a few hundred:
    per-key limits never fire). The operator registers all accounts in a burst right before the
    campaign, runs them from one rented /24 (``ip_mode="slash24"``) or a handful of cloud ranges
    (``"cloud"``), and splits one coverage traversal of the pool across them, all wrapped in the same
    two or three prompt templates and one system prompt, with identical sampling parameters; a share is
    chain-of-thought elicitation and a few queries are identity probes. ``system`` and ``wrappers`` fix the
    operator's templates (the same actor returning with fresh accounts); by default they are drawn."""

    name = "sybil"

    def __init__(
        self,
        pools: Pools,
        *,
        ip_mode: Literal["slash24", "cloud"] = "slash24",
        cot_share: float = 0.25,
        identity_share: float = 0.01,
        system: str | None = None,
        wrappers: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(pools, **kwargs)
        if ip_mode not in ("slash24", "cloud"):
            raise UserError(f"unknown Sybil ip_mode {ip_mode!r}; choose slash24 or cloud")
        self.ip_mode = ip_mode
        self.cot_share = cot_share
        self.identity_share = identity_share
        self.fixed_system = system
        self.fixed_wrappers = tuple(wrappers) if wrappers else None

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        n, per = self.accounts, self.queries
        start = self._start(rng, clock)
        if self.ip_mode == "slash24":
            nets = [random_subnet(rng, rng.choice(HOSTING_NETS), 24)]
        else:
            nets = [random_subnet(rng, net, 24) for net in rng.sample(CLOUD_NETS, 3)]
        system = rng.choice(SYBIL_SYSTEMS)
        wrappers = rng.sample(SYBIL_WRAPPERS, 3)
        system = self.fixed_system or system  # drawn either way: the rest of the stream stays the same
        wrappers = list(self.fixed_wrappers or wrappers)
        params = {"max_tokens": self.pools.max_tokens(512), "temperature": 0.7, "top_p": 0.95}
        burst = start - rng.uniform(1, 6) * HOUR
        created = sorted(burst + rng.uniform(0, 90 * 60) for _ in range(n))  # registered within 90 minutes
        coverage = CoverageStrategy(self.pools.questions, **COVERAGE_OPTIONS).stream(rng)
        cot = CoTStrategy(self.pools.questions).stream(rng)
        identity = IdentityStrategy().stream(rng)
        work: list[tuple[str, str]] = []  # one work queue, dealt round-robin: every account gets a spread
        for _ in range(n * per):
            r = rng.random()
            if r < self.identity_share:
                work.append((next(identity).prompt, "identity"))
            elif r < self.identity_share + self.cot_share:
                work.append((next(cot).prompt, "cot"))
            else:
                work.append((next(coverage).prompt, "coverage"))
        accounts, events = [], []
        for i in range(n):
            ip = random_ip(rng, nets[i % len(nets)])
            acct = self._account(rng, created=created[i], ips=[ip])
            accounts.append(acct)
            t = max(created[i] + rng.uniform(60, 1800), start + rng.uniform(0, 900))
            for q, what in work[i::n]:
                text = rng.choice(wrappers).format(q=q) if what != "cot" else q
                messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
                events.append(self._event(acct, t, ip, messages=messages, params=params, strategy=what))
                t += rng.uniform(15, 75)  # jittered, well under any per-key rate limit
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)


class LowAndSlow(_Attacker):
    """A patient distiller: human-paced diurnal sessions over the whole simulation on an aged account from
    a residential address, half of its queries copied real prompts (``decoys``: prompts benign users
    sent; without them, fresh casual-chat text) and half coverage queries, with casual chat's parameters."""

    name = "low_and_slow"

    def __init__(self, pools: Pools, *, decoys: Sequence[str] = (), decoy_share: float = 0.5, **kwargs: Any):
        super().__init__(pools, **kwargs)
        if not 0.0 <= decoy_share < 1.0:
            raise UserError(f"decoy_share must be in [0, 1), got {decoy_share}")
        self.decoys = list(decoys)
        self.decoy_share = decoy_share

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        for i in range(self.accounts):
            home = random_ip(rng, rng.choice(RESIDENTIAL_NETS))
            ips = [home, random_ip(rng, rng.choice(RESIDENTIAL_NETS))]
            campaign = self.campaign if self.accounts == 1 else f"{self.campaign}-{i}"
            acct = self._account(rng, created=-rng.uniform(20, 90) * DAY, ips=ips, campaign=campaign)
            accounts.append(acct)
            tz = rng.choice(TIMEZONES)
            coverage = CoverageStrategy(self.pools.questions, **COVERAGE_OPTIONS).stream(rng)
            for t in _human_session_times(rng, clock, self.queries, tz, think_s=60.0):
                if rng.random() < self.decoy_share:
                    text = rng.choice(self.decoys) if self.decoys else casual_text(rng, self.pools)[0]
                    source = "copied"
                else:
                    text, source = next(coverage).prompt, "coverage"
                params: dict[str, Any] = {"max_tokens": self.pools.max_tokens(512), "stream": True}
                if rng.random() < 0.5:
                    params["temperature"] = 0.7
                ip = home if rng.random() < 0.85 else ips[1]
                events.append(
                    self._event(acct, t, ip, messages=[{"role": "user", "content": text}], params=params,
                                source=source)
                )  # fmt: skip
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)


PERSONAS: dict[str, type[Persona]] = {
    cls.name: cls
    for cls in (
        CasualChat,
        CodingAssistant,
        SupportBot,
        BatchSummariser,
        EvalHarness,
        Researcher,
        CoverageDistiller,
        ParaphraseGenerator,
        CoTHarvester,
        LogprobExtractor,
        SybilCampaign,
        LowAndSlow,
    )
}
BENIGN = tuple(n for n, c in PERSONAS.items() if c.kind == "benign")
ATTACKERS = tuple(n for n, c in PERSONAS.items() if c.kind == "attacker")

"""Distillation campaigns of the second held-out generator: who harvests the model, and how.

Every campaign pays for its queries and wants coverage, so it works through a shared work list (each API
of the world crossed with a facet, plus general tasks; see :mod:`.asks`) dealt out to its accounts, at the
pace its budget and cover story allow. From easy to hard:

- ``sybil_burst`` (a "hydra" farm): throwaway accounts created by one script in waves, each used flat out
  around the clock for a day or two and then dropped, every request through a small datacenter proxy pool
  shared by the whole farm, one family of templates asking for step-by-step explanations.
- ``logprob_harvest``: short prefixes with the maximum number of top logprobs and one or a few output
  tokens, some with ``logit_bias`` sweeping groups of token ids, in hourly batches around the clock from a
  rented server.
- ``cot_harvest``: reasoning-trace elicitation: a system prompt that demands the full chain of thought,
  hard problems and API questions, several samples per prompt, long outputs, from one hosting /24.
- ``sybil_residential``: a careful hydra: accounts that look like people, signed up over three weeks,
  each request from a residential proxy (a sticky exit for a few minutes), waking hours only, six
  templates.
- ``dialogue_synth``: a "data vendor" registered as an organisation sweeps system prompts (personas) over
  topics and drives scripted multi-turn dialogues (follow-ups resend the real previous exchange).
- ``eval_disguise``: a front organisation's accounts named like an evaluation harness, sending
  benchmark-shaped items in nightly suites, at temperature 0 with a fixed seed; unlike a real harness the
  items never repeat and the answers asked for are long explanations.
- ``wrapper_disguise``: a front "study app" with one system prompt and end-user ids, whose "users' questions"
  are the work list in a student's voice, shaped like a consumer day.
- ``mixed_tenant``: a real-looking company whose support bot serves customers by day, while the same key
  runs a reasoning-trace harvesting job at night from the same server.
- ``evasive``: aged accounts with human rhythms (sessions, pauses, time zones), a paraphrase grammar, a third
  or more of their traffic benign chit-chat, follow-up turns, varied parameters, and a new residential
  address for every session.
- ``low_slow``: dozens of accounts, each with its own static residential address and its own fixed voice,
  sending a handful of requests a day for the whole period: below any per-account threshold.
"""

from __future__ import annotations

import random
from typing import Any

from distillguard.heldout.plan import DAY, Account
from distillguard.heldout2 import asks, texts
from distillguard.heldout2.common import (
    HOUR,
    MINUTE,
    Ctx,
    at_local,
    chat,
    completion,
    hex_id,
    is_weekend,
    local_days,
    local_time,
    poisson,
    think_gap,
)
from distillguard.heldout2.services import support_conversations


def campaign(ctx: Ctx, acct: Account, accounts: list[Account]) -> dict[str, Any]:
    """The state a campaign's accounts share: the work list cursor, each account's shard, a proxy pool."""
    key = acct.campaign or acct.name
    state = ctx.shared.get(key)
    if state is None:
        members = [a.name for a in accounts if a.campaign == acct.campaign]
        r = ctx.rng("campaign", key)
        state = {
            "cursor": asks.Cursor(asks.work_list(ctx.apis, r), len(members)),
            "shard": {name: i for i, name in enumerate(members)},
            "rng": r,
        }
        ctx.shared[key] = state
    return state


def _item(ctx: Ctx, state: dict, acct: Account, r: random.Random) -> tuple[str, str, str]:
    api, facet = state["cursor"].next(state["shard"][acct.name])
    return api, facet, r.choice(ctx.apis)


def _window(acct: Account, ctx: Ctx) -> tuple[float, float]:
    x = acct.extra
    return max(0.0, x.get("start", 0.0), acct.signup), min(ctx.end, x.get("stop", ctx.end))


def _poisson_times(r: random.Random, start: float, stop: float, per_day: float) -> list[float]:
    out, t = [], start
    if per_day <= 0:
        return out
    while True:
        t += r.expovariate(per_day / DAY)
        if t >= stop:
            return out
        out.append(t)


def sybil_burst(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    if "pool" not in state:
        blocks = [ctx.addr.hosting_block() for _ in range(3)]
        state["pool"] = [ctx.addr.in_block(b) for b in blocks for _ in range(12)]
    r, x = ctx.rng(acct.name), acct.extra
    start = acct.signup + r.uniform(1, 8) * MINUTE
    stop = start + x["life_h"] * HOUR
    for t in _poisson_times(r, start, stop, ctx.scaled(80 * x["load"]) * 24 / x["life_h"] * 0.9):
        api, _facet, _ = _item(ctx, state, acct, r)
        if r.random() < 0.15:
            text = asks.BURST_GENERAL.format(task=asks.general_task(r))
        else:
            text = r.choice(asks.BURST_TEMPLATES).format(api=api)
        ctx.sink.add(acct, t, r.choice(state["pool"]), chat(text, temperature=0.7, max_tokens=700), api=api)


def sybil_residential(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    r, x = ctx.rng(acct.name), acct.extra
    start, stop = _window(acct, ctx)
    ip, ip_until = "", -1.0
    for day in local_days(ctx.days):
        for _ in range(poisson(r, ctx.scaled(22 * x["load"]))):
            t = local_time(r, day, acct.tz, "waking")
            if not start <= t < stop:
                continue
            if t > ip_until:  # a sticky residential exit lasts about ten minutes
                ip, ip_until = ctx.addr.residential(), t + r.uniform(5, 15) * MINUTE
            api, _facet, _ = _item(ctx, state, acct, r)
            text = (
                asks.general_task(r) if r.random() < 0.15 else r.choice(asks.RESI_TEMPLATES).format(api=api)
            )
            body = chat(text, temperature=r.choice((None, 0.7, 1.0)), max_tokens=r.choice((600, 800)))
            ctx.sink.add(acct, t, ip, body, api=api)


def cot_harvest(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    r, x = ctx.rng(acct.name), acct.extra
    system = asks.COT_SYSTEMS[state["shard"][acct.name] % len(asks.COT_SYSTEMS)]
    start, stop = _window(acct, ctx)
    for t in _poisson_times(r, start, stop, ctx.scaled(55 * x["load"])):
        api, facet, other = _item(ctx, state, acct, r)
        body = chat(
            asks.cot(r, api, facet, other), system, temperature=0.8, max_tokens=900, n=r.choice((1, 1, 2, 4))
        )
        ctx.sink.add(acct, t, r.choice(acct.ips), body, api=api)


def logprob_harvest(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    r = ctx.rng(acct.name)
    start, stop = _window(acct, ctx)
    group = (state["shard"][acct.name] * 500) % 1000
    t = start + r.uniform(0, HOUR)
    while t < stop:
        for _ in range(max(1, round(r.randint(4, 12) * ctx.vol))):  # an hourly batch
            api, facet, other = _item(ctx, state, acct, r)
            mode = r.random()
            if mode < 0.5:
                body = completion(
                    asks.logprob_prefix(r, api), max_tokens=r.randint(1, 5), temperature=0.0, logprobs=20
                )
                ctx.sink.add(acct, t, acct.ips[0], body, endpoint="completions", api=api)
            elif mode < 0.8:
                q = asks.paraphrase(r, api, facet, other)
                body = chat(q, max_tokens=r.randint(1, 8), temperature=0.0, logprobs=True, top_logprobs=20)
                ctx.sink.add(acct, t, acct.ips[0], body, api=api)
            else:
                bias = {str(group + k): 100 for k in range(19)}  # read 19 chosen tokens at once
                group = (group + 19) % 1000
                body = completion(
                    asks.logprob_prefix(r, api), max_tokens=1, temperature=0.0, logprobs=20, logit_bias=bias
                )
                ctx.sink.add(acct, t, acct.ips[0], body, endpoint="completions", api=api)
            t += r.uniform(1.0, 4.0)
        t += r.uniform(0.6, 1.4) * HOUR


def dialogue_synth(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    r = ctx.rng(acct.name)
    start, stop = _window(acct, ctx)
    shard = state["shard"][acct.name]
    persona = shard * 3
    for day in local_days(ctx.days):
        if is_weekend(day):
            continue
        for _ in range(poisson(r, ctx.scaled(13))):
            t = local_time(r, day, acct.tz, "office")
            if not start <= t < stop:
                continue
            system = asks.PERSONAS[persona % len(asks.PERSONAS)]
            persona += 1
            api, facet, other = _item(ctx, state, acct, r)
            session = ctx.sink.session(acct)
            ip = r.choice(acct.ips)
            for k in range(r.randint(3, 5)):
                text = asks.dialogue_opening(r, api, facet, other) if k == 0 else r.choice(asks.FOLLOWUPS)
                body = chat(text, system, temperature=0.9, max_tokens=600)
                ctx.sink.add(acct, t, ip, body, followup=k > 0, session=session, api=api)
                t += r.uniform(3, 12)


def eval_disguise(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    r = ctx.rng(acct.name)
    start, stop = _window(acct, ctx)
    prefix = f"{acct.name.split('-')[0][:3].upper()}{state['shard'][acct.name] + 1}"
    count = 0
    for day in local_days(ctx.days):
        for nightly in (True, False):
            if not nightly and r.random() > 0.5:
                continue
            t = at_local(day, acct.tz, 1.5 + r.random()) if nightly else local_time(r, day, acct.tz, "office")
            if not start <= t < stop:
                continue
            session = ctx.sink.session(acct)
            ip = r.choice(acct.ips)
            for _ in range(max(5, round(r.randint(50, 110) * ctx.vol))):
                api, facet, other = _item(ctx, state, acct, r)
                count += 1
                item = asks.bench_item(f"{prefix}-{count:05d}", api, facet, other, r)
                body = chat(item, "You are a helpful assistant.", temperature=0.0, seed=1234, max_tokens=800)
                ctx.sink.add(acct, t, ip, body, session=session, api=api)
                t += r.expovariate(1 / 1.5) + 0.3


def wrapper_disguise(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    r = ctx.rng(acct.name)
    if "users" not in state:
        state["users"] = [f"user_{hex_id(state['rng'], 8)}" for _ in range(400)]
    start, stop = _window(acct, ctx)
    for day in local_days(ctx.days):
        for _ in range(poisson(r, ctx.scaled(110) * (1.1 if is_weekend(day) else 1.0))):
            t = local_time(r, day, acct.tz, "customers")
            if not start <= t < stop:
                continue
            api, facet, other = _item(ctx, state, acct, r)
            body = chat(
                asks.study_question(r, api, facet, other),
                asks.STUDY_SYSTEM,
                temperature=0.7,
                max_tokens=700,
                user=r.choice(state["users"]),
            )
            ctx.sink.add(acct, t, r.choice(acct.ips), body, stream=r.random() < 0.7, api=api)


def mixed_tenant(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    r = ctx.rng(acct.name)
    support_conversations(acct, ctx, r, 0)
    x = acct.extra
    for day in local_days(ctx.days):
        if r.random() > x["nights"]:
            continue
        t = at_local(day, acct.tz, 1.0 + r.random())
        session = ctx.sink.session(acct)
        for _ in range(max(3, round(r.randint(25, 50) * ctx.vol))):
            api, facet, other = _item(ctx, state, acct, r)
            body = chat(asks.cot(r, api, facet, other), asks.COT_SYSTEMS[0], temperature=0.7, max_tokens=800)
            ctx.sink.add(acct, t, acct.ips[0], body, session=session, api=api)
            t += r.uniform(1, 6) * MINUTE


def evasive(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    stream = r.random() < 0.6
    for day in local_days(ctx.days):
        n_sessions = poisson(r, x["rate"] * ctx.people / 6.0 * (0.8 if is_weekend(day) else 1.0))
        for _ in range(n_sessions):
            t = local_time(r, day, acct.tz, "human")
            ip = ctx.addr.residential() if r.random() < 0.8 else ctx.addr.mobile()
            session = sink.session(acct)
            params = {"temperature": r.choice((None, 0.7, 1.0)), "max_tokens": r.choice((None, 400, 800))}
            for _ in range(r.randint(3, 9)):
                if r.random() < x["cover"]:
                    if r.random() < 0.7:
                        text = texts.everyday(r)
                    else:
                        text = texts.python_casual(r, ctx.pop.pick(r), ctx.pop.pick(r))
                    sink.add(acct, t, ip, chat(text, **params), stream=stream, session=session)
                    t += think_gap(r, 70)
                    continue
                api, facet, other = _item(ctx, state, acct, r)
                sink.add(
                    acct,
                    t,
                    ip,
                    chat(asks.paraphrase(r, api, facet, other), **params),
                    stream=stream,
                    session=session,
                    api=api,
                )
                t += think_gap(r, 70)
                if r.random() < 0.3:
                    sink.add(
                        acct,
                        t,
                        ip,
                        chat(r.choice(asks.FOLLOWUPS), **params),
                        stream=stream,
                        followup=True,
                        session=session,
                        api=api,
                    )
                    t += think_gap(r, 70)


def low_slow(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    state = campaign(ctx, acct, accounts)
    r, x = ctx.rng(acct.name), acct.extra
    voice = asks.VOICES[x["voice"] % len(asks.VOICES)]
    temp = (None, 0.7, 1.0, 0.5)[x["voice"] % 4]
    max_tokens = (600, 800, 1000)[x["voice"] % 3]
    profile = ("human", "evening", "office")[x["voice"] % 3]
    for day in local_days(ctx.days):
        for _ in range(poisson(r, x["rate"])):
            t = local_time(r, day, acct.tz, profile)
            api, _facet, _ = _item(ctx, state, acct, r)
            text = asks.general_task(r) if r.random() < 0.1 else voice.format(api=api)
            ctx.sink.add(acct, t, acct.ips[0], chat(text, temperature=temp, max_tokens=max_tokens), api=api)


PLANNERS = {
    "sybil_burst": sybil_burst,
    "sybil_residential": sybil_residential,
    "cot_harvest": cot_harvest,
    "logprob_harvest": logprob_harvest,
    "dialogue_synth": dialogue_synth,
    "eval_disguise": eval_disguise,
    "wrapper_disguise": wrapper_disguise,
    "mixed_tenant": mixed_tenant,
    "evasive": evasive,
    "low_slow": low_slow,
}

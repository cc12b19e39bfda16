"""Benign traffic driven by people at a keyboard, for the second held-out generator.

- casual users: a few chat sessions on the days they show up, at the hours of their own time zone, a
  first question and a couple of follow-ups (the client resends the previous exchange), mostly everyday
  topics, some Python questions about well-known APIs; from home, from a phone on a carrier NAT address, and
  now and then through a commercial VPN whose exits strangers share.
- developers prototyping (``prototyper``): bursts of near-identical requests while they tune a prompt, both
  endpoints, asking for JSON, seeds; from the office NAT during work hours and from home in the evening.
- editor plug-in users: many short code completions (``/v1/completions`` with stop sequences) while they
  type, in coding sessions.
- coding agents: multi-step loops with tool definitions, each step resending the growing transcript with
  the tool results, seconds apart.
- classrooms: students in the lesson (all behind the school's one address) asking about this week's
  assignment, often pasting it verbatim, plus a little homework from home.
- hackathon participants: a day and a night of intense, varied prototyping from the venue's Wi-Fi, teams
  sharing a project idea, then mostly silence.
"""

from __future__ import annotations

import json
import random

from distillguard.heldout.plan import DAY, Account
from distillguard.heldout2 import texts, words
from distillguard.heldout2.common import (
    HOUR,
    MINUTE,
    Ctx,
    at_local,
    chat,
    completion,
    is_weekend,
    local_days,
    local_time,
    poisson,
    rng_for,
    think_gap,
)


def casual(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    for day in local_days(ctx.days):
        if r.random() > x["activity"] * (1.15 if is_weekend(day) else 1.0):
            continue
        for _ in range(1 + poisson(r, 0.45)):
            t = local_time(r, day, acct.tz, x["profile"])
            if x["vpn"] and r.random() < 0.35:
                ip = r.choice(words.VPN_EXITS)
            else:
                ip = acct.ips[1] if len(acct.ips) > 1 and r.random() < 0.35 else acct.ips[0]
            session = sink.session(acct)
            python = r.random() < x["python"]
            params = {
                "temperature": r.choice((None, None, 0.7, 1.0)),
                "max_tokens": r.choice((None, 512, 800)),
            }
            for k in range(1 + min(6, int(r.expovariate(1 / 1.2)))):
                if k == 0:
                    text = (
                        texts.python_casual(r, ctx.pop.pick(r), ctx.pop.pick(r))
                        if python
                        else texts.everyday(r)
                    )
                else:
                    text = texts.followup(r)
                sink.add(
                    acct, t, ip, chat(text, **params), stream=x["stream"], followup=k > 0, session=session
                )
                t += think_gap(r, 50)


def prototyper(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    at_work = acct.org is not None
    for day in local_days(ctx.days):
        weekend = is_weekend(day)
        if r.random() > x["activity"] * (0.25 if weekend else 1.0):
            continue
        for _ in range(1 + poisson(r, 0.6 * x["intensity"])):
            office = at_work and not weekend and r.random() < 0.8
            t = local_time(r, day, acct.tz, "office" if office else "evening")
            ip = acct.ips[0] if office else acct.ips[-1]
            session = sink.session(acct)
            api = ctx.pop.pick(r)
            base = texts.developer(r, api)
            mode = r.random()
            system = r.choice((None, "You are a senior Python developer. Answer with code first.", None))
            for k in range(r.randint(2, 10)):
                text = (
                    base
                    if k == 0
                    else base
                    + r.choice(
                        (
                            "",
                            "\nBe concise.",
                            "\nUse only the standard library.",
                            "\nExplain briefly.",
                            " (Python 3.12)",
                        )
                    )
                )
                temp = r.choice((0.0, 0.2, 0.7, 1.0, None))
                if mode < 0.25:
                    body = completion(
                        text + "\n\nAnswer:", max_tokens=r.choice((64, 128, 256)), temperature=temp
                    )
                    sink.add(acct, t, ip, body, endpoint="completions", session=session)
                elif mode < 0.4:
                    ask = text + '\nReturn only JSON: {"answer": string, "code": string}.'
                    body = chat(ask, system, temperature=temp, max_tokens=400)
                    sink.add(acct, t, ip, body, session=session)
                else:
                    seed = r.choice((None, 42, 7)) if k else None
                    body = chat(
                        text, system, temperature=temp, max_tokens=r.choice((None, 300, 600)), seed=seed
                    )
                    sink.add(acct, t, ip, body, stream=r.random() < 0.3, session=session)
                t += r.uniform(15, 180)


def ide_plugin(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    for day in local_days(ctx.days):
        weekend = is_weekend(day)
        if r.random() > x["activity"] * (0.3 if weekend else 1.0):
            continue
        for _ in range(1 + poisson(r, 0.4)):
            office = acct.org is not None and not weekend
            t = local_time(r, day, acct.tz, "office" if office else "evening")
            end = t + r.uniform(15, 60) * MINUTE * x["intensity"] * ctx.people
            ip = acct.ips[0] if office else acct.ips[-1]
            session = sink.session(acct)
            project = [ctx.pop.pick(r) for _ in range(3)]
            temp = r.choice((0.0, 0.2))
            while t < end:
                body = completion(
                    texts.code_prefix(r, r.choice(project)),
                    max_tokens=r.choice((32, 48, 64)),
                    temperature=temp,
                    stop=["\n\n", "\ndef ", "\nclass "],
                )
                sink.add(acct, t, ip, body, endpoint="completions", session=session)
                t += r.expovariate(1 / 100.0) + 4


AGENT_SYSTEM = (
    "You are a coding assistant working in the user's repository. Use the tools to inspect files and run "
    "commands. Make the smallest change that fixes the problem, then summarise what you did."
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {"type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]},
        },
    }
    for name, desc, arg in (
        ("read_file", "Read a file from the repository.", "path"),
        ("run_shell", "Run a shell command in the repository root and return its output.", "command"),
        ("search_code", "Search the repository for a regular expression.", "pattern"),
        ("write_file", "Replace the contents of a file.", "path"),
    )
]
_AGENT_TASKS = (
    "Fix the failing test in tests/test_{m}.py.",
    "Add a --dry-run flag to the {m} command.",
    "Why does the {m} job crash on empty input? Fix it.",
    "Replace our own helper with {api}.",
    "Add type hints to src/{m}/core.py.",
    "The CI lint step fails on {m}; make it pass.",
)


def _tool_step(r: random.Random, api: str, k: int) -> tuple[dict, dict]:
    mod = texts.module(api).replace(".", "_")
    name = ("search_code", "read_file", "run_shell", "write_file", "run_shell")[min(k, 4)]
    arg = {
        "search_code": api,
        "read_file": f"src/{mod}/core.py",
        "run_shell": "pytest -q",
        "write_file": f"src/{mod}/core.py",
    }[name]
    call_id = f"call_{r.getrandbits(48):012x}"
    key = "pattern" if name == "search_code" else ("command" if name == "run_shell" else "path")
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps({key: arg})},
            }
        ],
    }
    if name == "read_file":
        out = texts.snippet(r, api)
    elif name == "run_shell":
        out = r.choice(
            (
                "2 failed, 31 passed in 1.92s\nFAILED tests/test_core.py::test_load - KeyError: 'id'",
                "33 passed in 2.10s",
                "E   TypeError: expected str, got NoneType",
            )
        )
    elif name == "search_code":
        out = f"src/{mod}/core.py:{r.randint(10, 300)}:    value = {api}(data)"
    else:
        out = "ok"
    return call, {"role": "tool", "tool_call_id": call_id, "content": out}


def tool_agent(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    bot = "activity" not in x  # a CI bot account: triggered by pushes, also at night
    activity = x.get("activity", 0.85)
    for day in local_days(ctx.days):
        weekend = is_weekend(day)
        if r.random() > activity * (0.2 if weekend else 1.0):
            continue
        for _ in range(1 + poisson(r, 2.5 * x.get("intensity", x.get("load", 1.0)) * ctx.people)):
            t = local_time(r, day, acct.tz, "office" if not bot or r.random() < 0.8 else "flat")
            ip = acct.ips[0] if bot or acct.org is None or r.random() < 0.8 else acct.ips[-1]
            session = sink.session(acct)
            api = ctx.pop.pick(r)
            task = r.choice(_AGENT_TASKS).format(m=texts.module(api).split(".")[0], api=api)
            messages = [{"role": "system", "content": AGENT_SYSTEM}, {"role": "user", "content": task}]
            for k in range(r.randint(3, 8)):
                body = {
                    "messages": [dict(m) for m in messages],
                    "tools": TOOLS,
                    "temperature": 0.0,
                    "max_tokens": 400,
                }
                sink.add(acct, t, ip, body, session=session)
                call, result = _tool_step(r, api, k)
                messages += [call, result]
                t += r.uniform(2, 20)


def classroom(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    school, home = acct.ips[0], acct.ips[-1]
    for day in local_days(ctx.days):
        week = day // 7
        g = rng_for("assignment", ctx.seed, acct.group, week)  # the same worksheet for the whole class
        apis = g.sample(ctx.pop.head(25), 2) if len(ctx.pop.order) >= 25 else ctx.pop.order[:2]
        task = texts.assignment(g, week + 3, apis)
        if day % 7 in x["lesson_days"]:
            start = at_local(day, acct.tz, x["lesson_hour"])
            times = sorted(
                start + r.uniform(4, 48) * MINUTE for _ in range(1 + poisson(r, 1 + 4 * x["diligence"]))
            )
            session = sink.session(acct)
            for i, t in enumerate(times):
                again = i > 0 and r.random() < 0.3
                text = r.choice(
                    ("i still dont get it", "can you explain that simpler", "and how do i do that")
                )
                body = chat(text if again else texts.student(r, task, apis), max_tokens=r.choice((None, 500)))
                sink.add(acct, t, school, body, followup=again, session=session)
        elif r.random() < x["diligence"] * (0.6 if is_weekend(day) else 0.45):
            t = local_time(r, day, acct.tz, "evening")
            session = sink.session(acct)
            for _ in range(r.randint(1, 3)):
                sink.add(acct, t, home, chat(texts.student(r, task, apis)), stream=True, session=session)
                t += think_gap(r, 90)


def hackathon(acct: Account, ctx: Ctx) -> None:
    r, x, sink = ctx.rng(acct.name), acct.extra, ctx.sink
    venue, home = acct.ips[0], acct.ips[-1]
    opening = x["opening"]
    t = max(acct.signup + 2 * MINUTE, opening + 30 * MINUTE)
    closing = opening + 27 * HOUR
    session = sink.session(acct)
    rate = 3.0 * x["intensity"] * ctx.vol  # requests an hour while hacking
    while t < closing:
        hour = ((t + acct.tz * HOUR) % DAY) / HOUR  # local time at the venue
        awake = hour < 2.5 or hour >= 8 or r.random() < 0.15
        if not awake:
            t += r.uniform(1, 2) * HOUR
            session = sink.session(acct)
            continue
        if r.random() < 0.3:
            text = texts.developer(r, ctx.pop.pick(r))
        else:
            text = texts.hackathon(r, x["project"])
        if r.random() < 0.2:
            body = chat(text + "\nReply in JSON.", temperature=0.2, max_tokens=400)
        else:
            body = chat(text, temperature=r.choice((None, 0.7, 1.0)), max_tokens=r.choice((None, 400, 800)))
        ip = venue if hour >= 8 or r.random() < 0.5 else home
        sink.add(acct, t, ip, body, stream=r.random() < 0.5, session=session)
        t += r.expovariate(rate / HOUR) + 10
    if r.random() < 0.3:  # a few keep tinkering after the event
        for day in range(int(closing // DAY) + 1, ctx.days):
            if r.random() < 0.4:
                sink.add(
                    acct, local_time(r, day, acct.tz, "evening"), home, chat(texts.hackathon(r, x["project"]))
                )


PLANNERS = {
    "casual": casual,
    "prototyper": prototyper,
    "ide_plugin": ide_plugin,
    "tool_agent": tool_agent,
    "classroom": classroom,
    "hackathon": hackathon,
}

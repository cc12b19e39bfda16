"""What each account sends and when: rhythms (request times) and styles (request bodies).

``plan_traffic`` turns a population into a list of :class:`Request` in simulated time, the same for the same
population, size, seed and API list. A request body is what the official client sends (``messages`` or
``prompt`` and the sampling parameters) without ``model``, which the driver fills in. ``followup`` marks a
chat turn that continues the account's previous exchange: the driver puts the real previous answer in.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from distillguard.heldout import words
from distillguard.heldout.plan import DAY, Account, Generator, Request
from distillguard.heldout.population import KINDS, SIZES, build_population, residential_ip


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth; the rates here are small
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _gap(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def _human_hour(rng: random.Random) -> float:
    """A local hour when people chat: late morning, afternoon and evening peaks."""
    centre = rng.choices((10.5, 15.0, 21.0, 1.0), weights=(3, 4, 4, 1))[0]
    return (centre + rng.gauss(0.0, 1.5)) % 24


# -- rhythms: lists of (time, session, step) --------------------------------------------------------------


def _rhythm(acct: Account, cfg: dict, days: float, rng: random.Random) -> list[tuple[float, int, int]]:
    vol, kind = cfg["volume"], cfg["rhythm"]
    out: list[tuple[float, int, int]] = []
    session = 0
    n_days = int(math.ceil(days))

    def local(day: int, hour: float) -> float:
        return day * DAY + (hour - acct.tz) * 3600.0

    for d in range(n_days):
        weekday = d % 7 < 5
        if kind == "human":
            if rng.random() >= vol["active_day"]:
                continue
            for _ in range(_poisson(rng, vol["sessions"])):
                session += 1
                t = local(d, _human_hour(rng))
                for step in range(rng.randint(*vol["per_session"])):
                    out.append((t, session, step))
                    t += _gap(rng, vol["gap_s"], 0.9) + rng.uniform(3, 20)  # read, think, type
        elif kind == "runs":
            for _ in range(1 + _poisson(rng, vol["extra_runs"])):
                session += 1
                t = d * DAY + rng.uniform(0, DAY)
                for step in range(rng.randint(*vol["per_run"])):
                    out.append((t, session, step))
                    t += _gap(rng, vol["gap_s"], 0.15)
        elif kind == "business":
            n = _poisson(rng, vol["per_day"] * (1.0 if weekday else 0.2))
            for _ in range(n):
                session += 1
                t = local(d, rng.uniform(8.5, 18.5))
                for step in range(rng.choice((1, 1, 1, 2, 2, 3))):
                    out.append((t, session, step))
                    t += rng.uniform(20, 120)
        elif kind == "nightly":
            session += 1
            t = local(d, 2.0) + rng.uniform(0, 20)  # cron at 02:00, seconds of start-up jitter
            for step in range(rng.randint(*vol["per_night"])):
                out.append((t, session, step))
                t += vol["gap_s"] + rng.uniform(-0.05, 0.05)
        elif kind == "lessons":
            if weekday:
                session += 1
                start = local(d, 9.0 + acct.extra.get("lesson_offset_h", 0.0))
                k = rng.randint(*vol["per_lesson"])
                times = sorted(start + rng.uniform(300, 50 * 60) for _ in range(k))
                out.extend((t, session, i) for i, t in enumerate(times))
            if rng.random() < 0.3:  # homework in the evening, from home (same account, other address)
                session += 1
                t = local(d, rng.uniform(18.0, 22.5))
                for step in range(rng.randint(1, 3)):
                    out.append((t, session, step))
                    t += _gap(rng, 120.0, 0.7)
        elif kind == "episodes":
            for _ in range(_poisson(rng, vol["episodes"] * (1.0 if weekday else 0.3))):
                session += 1
                t = local(d, rng.uniform(8.0, 20.0))
                for step in range(rng.randint(*vol["steps"])):
                    out.append((t, session, step))
                    t += _gap(rng, vol["gap_s"], 0.5)
        elif kind == "shifts":
            for _ in range(_poisson(rng, vol["shifts"])):
                session += 1
                t = d * DAY + rng.uniform(0, DAY)
                for step in range(rng.randint(*vol["per_shift"])):
                    out.append((t, session, step))
                    t += _gap(rng, vol["gap_s"], 0.5)
        elif kind == "steady":
            t = d * DAY
            while True:
                t += rng.expovariate(vol["per_day"] / DAY)
                if t >= (d + 1) * DAY:
                    break
                session += 1
                out.append((t, session, 0))
        elif kind == "sparse":
            for _ in range(rng.randint(*vol["per_day"])):
                session += 1
                out.append((local(d, rng.uniform(8.0, 23.5)), session, 0))
        else:
            raise ValueError(f"unknown rhythm {kind!r}")
    end = days * DAY
    kept = sorted((t, s, k) for t, s, k in out if acct.signup + 30.0 <= t < end)
    if not kept:  # every account of the population shows up at least once: one short session
        start = max(acct.signup + 60.0, 0.0)
        t = rng.uniform(start, max(start, end - 3600.0))
        gap = float(vol.get("gap_s", 60.0))
        for step in range(rng.randint(1, 4)):
            kept.append((t, session + 1, step))
            t += _gap(rng, gap, 0.5)
    return kept


# -- styles: request bodies -------------------------------------------------------------------------------


def _typos(rng: random.Random, text: str, rate: float) -> str:
    if rng.random() > rate or len(text) < 8:
        return text
    i = rng.randrange(1, len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]  # swap two letters


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


class Styles:
    """Bodies for one population; per-account state (slices of the API list, positions) lives here."""

    def __init__(self, accounts: list[Account], apis: list[str], seed: int) -> None:
        self.apis = list(apis)
        self.seed = seed
        self.state: dict[str, dict[str, Any]] = {}
        # campaigns split the API list between their accounts (coverage without overlap)
        by_campaign: dict[str, list[Account]] = {}
        for a in accounts:
            if a.campaign:
                by_campaign.setdefault(a.campaign, []).append(a)
        for campaign, members in by_campaign.items():
            order = list(self.apis)
            random.Random(f"heldout:{seed}:{campaign}:split").shuffle(order)
            for i, a in enumerate(members):
                self.state[a.name] = {"slice": order[i :: len(members)] or order, "pos": 0}

    def _next_api(self, acct: Account, rng: random.Random) -> str:
        st = self.state.setdefault(acct.name, {"slice": self.apis, "pos": 0})
        api = st["slice"][st["pos"] % len(st["slice"])]
        st["pos"] += 1
        if st["pos"] > len(st["slice"]) and rng.random() < 0.5:  # coverage done: revisit at random
            api = rng.choice(self.apis)
        return api

    def _fill(self, rng: random.Random, template: str, **fixed: str) -> str:
        values = {
            "api": rng.choice(self.apis),
            "api2": rng.choice(self.apis),
            "task": rng.choice(words.CASUAL_TASKS),
            "topic": rng.choice(words.CASUAL_TOPICS),
            "dish": rng.choice(words.CASUAL_DISHES),
            "lang": rng.choice(words.CASUAL_LANGS),
            "phrase": rng.choice(words.CASUAL_PHRASES),
            "mod": rng.choice(("pandas", "numpy", "requests", "scipy", "matplotlib")),
        }
        values.update(fixed)
        return template.format(**values)

    def casual(self, acct: Account, rng: random.Random, step: int) -> tuple[str, dict, bool, bool]:
        if step > 0 and rng.random() < 0.45:
            text = self._fill(rng, rng.choice(words.CASUAL_FOLLOWUPS))
            followup = True
        else:
            text = self._fill(rng, rng.choice(words.CASUAL_TEMPLATES))
            followup = False
        text = _typos(rng, text, 0.25)
        if rng.random() < 0.5:
            text = text.lower()
        body: dict[str, Any] = {"messages": [_user(text)], "max_tokens": rng.choice((64, 128, 160))}
        if rng.random() < 0.5:
            body["temperature"] = rng.choice((0.7, 0.8, 1.0))
        return "chat", body, rng.random() < 0.4, followup

    def harness(
        self, acct: Account, rng: random.Random, session: int, step: int
    ) -> tuple[str, dict, bool, bool]:
        st = self.state.setdefault(acct.name, {})
        runs = st.setdefault("runs", {})
        if session not in runs:  # a run is one task of the suite, over a shuffled item list
            order = list(self.apis)
            random.Random(f"heldout:{self.seed}:{acct.name}:run{session}").shuffle(order)
            runs[session] = (rng.choice(("mc", "qa", "cot")), order)
        task, order = runs[session]
        api = order[step % len(order)]
        if task == "mc":
            module = api.split(".")[0]
            options = [module, *rng.sample([m for m in words.MODULE_DISTRACTORS if m != module], 3)]
            rng.shuffle(options)
            a, b, c, d = options
            prompt = words.HARNESS_MC.format(api=api, a=a, b=b, c=c, d=d)
            return (
                "completions",
                {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5},
                False,
                False,
            )
        if task == "qa":
            prompt = words.HARNESS_QA.format(api=api)
            body = {"prompt": prompt, "max_tokens": 48, "temperature": 0, "stop": ["\n"]}
            return "completions", body, False, False
        problem = rng.choice(words.HARNESS_PROBLEMS).format(
            api=api, n=rng.randint(5, 90), k=rng.randint(2, 9)
        )
        body = {
            "messages": [_user(words.HARNESS_COT.format(problem=problem))],
            "max_tokens": 200,
            "temperature": 0,
            "seed": 1234,
        }
        return "chat", body, False, False

    def support(
        self, acct: Account, rng: random.Random, session: int, step: int
    ) -> tuple[str, dict, bool, bool]:
        q = self._fill(rng, rng.choice(words.SUPPORT_QUESTIONS))
        q = rng.choice(words.SUPPORT_PREFIXES) + q
        body = {
            "messages": [{"role": "system", "content": words.SUPPORT_SYSTEM}, _user(q)],
            "max_tokens": 120,
            "temperature": 0.3,
            "user": f"cust-{random.Random(f'{acct.name}:{session}').randrange(10**6):06d}",
        }
        return "chat", body, False, step > 0

    def summarize(self, acct: Account, rng: random.Random, step: int) -> tuple[str, dict, bool, bool]:
        doc = " ".join(
            [self._fill(rng, rng.choice(words.SUMMARY_SUBJECTS))] + rng.sample(words.SUMMARY_FILLER, 2)
        )
        body = {
            "messages": [_user(words.SUMMARY_TEMPLATE.format(doc=doc))],
            "max_tokens": 60,
            "temperature": 0,
        }
        return "chat", body, False, False

    def classroom(self, acct: Account, rng: random.Random, step: int) -> tuple[str, dict, bool, bool]:
        api = rng.choice(words.CLASS_ASSIGNMENT_APIS)
        text = self._fill(rng, rng.choice(words.CLASS_TEMPLATES), api=api).lower()
        text = _typos(rng, text, 0.4)
        body = {"messages": [_user(text)], "max_tokens": rng.choice((96, 128))}
        return "chat", body, rng.random() < 0.5, step > 0 and rng.random() < 0.3

    def agent(
        self, acct: Account, rng: random.Random, session: int, step: int
    ) -> tuple[str, dict, bool, bool]:
        er = random.Random(f"heldout:{self.seed}:{acct.name}:episode{session}")
        task = er.choice(words.AGENT_TASKS)
        messages: list[dict[str, Any]] = [{"role": "system", "content": words.AGENT_SYSTEM}, _user(task)]
        for i in range(step):
            call_id = f"call_{session}_{i}"
            if i % 2 == 0:
                name, args = "read_file", json.dumps({"path": er.choice(words.AGENT_FILES)})
            else:
                name, args = "run_tests", '{"target": "tests"}'
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                    ],
                }
            )
            out = er.choice(words.AGENT_OUTPUTS).format(x=er.randint(0, 9), y=er.randint(0, 9))
            messages.append({"role": "tool", "tool_call_id": call_id, "content": out})
        body = {"messages": messages, "tools": list(words.AGENT_TOOLS), "max_tokens": 160, "temperature": 0.2}
        return "chat", body, False, False

    def cot_family(self, acct: Account, rng: random.Random, step: int) -> tuple[str, dict, bool, bool]:
        family = words.COT_FAMILIES[acct.extra.get("campaign_index", 0) % len(words.COT_FAMILIES)]
        text = rng.choice(family).format(api=self._next_api(acct, rng))
        body = {"messages": [_user(text)], "max_tokens": 220, "temperature": 0.7}
        return "chat", body, False, False

    def harvest(self, acct: Account, rng: random.Random, step: int) -> tuple[str, dict, bool, bool]:
        api = self._next_api(acct, rng)
        prefix = rng.choice(words.HARVEST_PREFIXES).format(api=api)
        if rng.random() < 0.6:
            body = {"prompt": prefix, "max_tokens": 48, "temperature": 1.0, "logprobs": 5}
            return "completions", body, False, False
        body = {
            "messages": [_user(prefix)],
            "max_tokens": 48,
            "temperature": 1.0,
            "logprobs": True,
            "top_logprobs": 20,
        }
        return "chat", body, False, False

    def evasive(self, acct: Account, rng: random.Random, step: int) -> tuple[str, dict, bool, bool]:
        if rng.random() < acct.extra.get("benign_share", 0.0):
            return self.casual(acct, rng, step)
        if rng.random() < 0.04:
            text = rng.choice(words.IDENTITY_PROBES)
            followup = False
        elif step > 0 and rng.random() < 0.2:
            text = rng.choice(
                (
                    "can you go deeper on that?",
                    "why is that? explain your reasoning",
                    "walk me through it again, step by step",
                )
            )
            followup = True
        else:
            ask = rng.choice(words.EVASIVE_ASKS).format(api=self._next_api(acct, rng))
            text = rng.choice(words.EVASIVE_OPENERS) + ask + rng.choice(words.EVASIVE_FORMATS)
            followup = False
        text = _typos(rng, text, 0.15)
        body: dict[str, Any] = {"messages": [_user(text)], "max_tokens": rng.choice((128, 160, 200))}
        if rng.random() < 0.5:
            body["temperature"] = rng.choice((0.7, 1.0))
        return "chat", body, rng.random() < 0.4, followup

    def low_slow(self, acct: Account, rng: random.Random, step: int) -> tuple[str, dict, bool, bool]:
        st = self.state.setdefault(acct.name, {"slice": self.apis, "pos": 0})
        voice = st.setdefault(
            "voice",
            random.Random(f"heldout:{self.seed}:{acct.name}:voice").randrange(len(words.LOWSLOW_TEMPLATES)),
        )
        text = words.LOWSLOW_TEMPLATES[voice].format(api=self._next_api(acct, rng))
        body = {"messages": [_user(text)], "max_tokens": 220}
        return "chat", body, rng.random() < 0.3, False

    def body(self, acct: Account, style: str, rng: random.Random, session: int, step: int):
        if style in ("harness", "support", "agent"):
            return getattr(self, style)(acct, rng, session, step)
        return getattr(self, style)(acct, rng, step)


def plan_traffic(accounts: list[Account], size: str, seed: int, apis: list[str]) -> list[Request]:
    """Every request of the population in simulated time order."""
    days = SIZES[size]["days"]
    styles = Styles(accounts, apis, seed)
    out: list[Request] = []
    for acct in accounts:
        cfg = KINDS[acct.kind]
        rng = random.Random(f"heldout:{seed}:{size}:{acct.name}:traffic")
        session_ip: dict[int, str] = {}
        for t, session, step in _rhythm(acct, cfg, days, rng):
            endpoint, body, stream, followup = styles.body(acct, cfg["style"], rng, session, step)
            net = cfg["network"]
            if net == "rotating":
                ip = residential_ip(rng)
            elif net == "rotating_session":
                ip = session_ip.setdefault(session, residential_ip(rng))
            elif net == "nat" and (t / 3600.0 + acct.tz) % 24 > 17:  # evening homework: from home
                ip = session_ip.setdefault(-1, residential_ip(random.Random(f"{acct.name}:home")))
            elif len(acct.ips) > 1 and rng.random() < 0.25:
                ip = acct.ips[1]
            else:
                ip = acct.ips[0]
            out.append(Request(round(t, 3), acct.name, ip, endpoint, body, stream, followup, session))
    out.sort(key=lambda r: (r.t, r.account))
    return out


GENERATOR = Generator("heldout", SIZES, build_population, plan_traffic)

"""Who uses the API in the held-out traffic: kinds of accounts as plain config values, and the population
that a size and a seed draw from them.

Each kind says how many accounts it has per size, how they sign up, where their requests come from
(network), when they send them (rhythm), how many (volume) and what they ask (style, in
:mod:`distillguard.heldout.traffic`). Benign kinds include the hard negatives (an evaluation harness, a
support bot, a nightly batch job, a classroom behind one NAT address, coding agents): high volume, fixed
templates, regular timing, shared addresses, burst sign-ups, all for ordinary reasons. Attackers form one
campaign per kind (``campaigns`` splits a kind into several, each with its own sign-up burst and template
family); the campaign id is the label that campaign-level recall is measured on.

Times are simulated seconds from the start of the observed period (a Monday, 00:00 UTC); negative times
are before it (accounts that existed already).
"""

from __future__ import annotations

import random
from typing import Any

from distillguard.errors import UserError
from distillguard.heldout import words
from distillguard.heldout.plan import DAY, Account, labels  # noqa: F401 (labels re-exported)

# observed period and the sign-up history before it, per size; "counts" names the size whose account counts
# a size uses ("month": as many accounts of each kind as "medium", over 30 days; a population of its own,
# drawn from its own seed, not the medium accounts continued)
SIZES: dict[str, dict[str, Any]] = {
    "small": {"days": 2.0, "history_days": 14.0, "counts": "small"},
    "medium": {"days": 5.0, "history_days": 30.0, "counts": "medium"},
    "month": {"days": 30.0, "history_days": 60.0, "counts": "medium"},
}

# Every kind of account. ``volume`` is per active day unless the rhythm says otherwise.
KINDS: dict[str, dict[str, Any]] = {
    # -- benign -----------------------------------------------------------------------------------------
    "casual": {
        "label": "benign",
        "counts": {"small": 8, "medium": 60},
        "signup": "aged_or_new",  # most existed before the period, some sign up during it
        "network": "residential",  # one home address, sometimes a phone on another
        "rhythm": "human",
        "volume": {"active_day": 0.7, "sessions": 1.5, "per_session": (1, 6), "gap_s": 45.0},
        "style": "casual",
    },
    "eval_harness": {
        "label": "benign",
        "stem": "ci",  # service accounts are named <org>-<stem>-<n>
        "counts": {"small": 2, "medium": 6},
        "signup": "aged",
        "network": "cloud",
        "rhythm": "runs",  # a benchmark suite run now and then, items back to back
        "volume": {"extra_runs": 0.5, "per_run": (40, 80), "gap_s": 1.2},  # a nightly run, some ad hoc
        "style": "harness",  # formal, templated, diverse, greedy; MC items scored with logprobs
        "org": "evalco",
    },
    "support_bot": {
        "label": "benign",
        "stem": "helpdesk",  # service accounts are named <org>-<stem>-<n>
        "counts": {"small": 1, "medium": 4},
        "signup": "aged",
        "network": "cloud",
        "rhythm": "business",  # customers arrive in business hours (Poisson)
        "volume": {"per_day": 45},
        "style": "support",  # one system prompt, a narrow set of questions
        "org": "pylot",
    },
    "batch_summarizer": {
        "label": "benign",
        "stem": "digest",  # service accounts are named <org>-<stem>-<n>
        "counts": {"small": 1, "medium": 4},
        "signup": "aged",
        "network": "cloud",
        "rhythm": "nightly",  # a cron job at a fixed hour, documents at a fixed pace
        "volume": {"per_night": (30, 50), "gap_s": 2.0},
        "style": "summarize",
        "org": "newsdesk",
    },
    "classroom": {
        "label": "benign",
        "counts": {"small": 10, "medium": 48},
        "group_size": 24,  # students per class; each class is one NAT address and signs up in one lesson
        "signup": "lesson",
        "network": "nat",
        "rhythm": "lessons",
        "volume": {"per_lesson": (2, 7), "gap_s": 90.0},
        "style": "classroom",
        "org": "school",
    },
    "agent": {
        "label": "benign",
        "stem": "runner",  # service accounts are named <org>-<stem>-<n>
        "counts": {"small": 2, "medium": 8},
        "signup": "aged",
        "network": "cloud",
        "rhythm": "episodes",  # tool loops: several calls seconds apart per task
        "volume": {"episodes": 3.0, "steps": (2, 6), "gap_s": 4.0},
        "style": "agent",
        "org": "devtools",
    },
    # -- attackers --------------------------------------------------------------------------------------
    "sybil_cot": {
        "label": "attacker",
        "counts": {"small": 10, "medium": 24},
        "campaign": "sybil-cot",
        "campaigns": {"small": 1, "medium": 2},  # medium: two campaigns, each with its own template family
        "signup": "burst",  # throwaway accounts made by one script within minutes
        "network": "rotating",  # a residential proxy pool, a new address per request
        "rhythm": "shifts",
        "volume": {"shifts": 1.5, "per_shift": (6, 14), "gap_s": 25.0},
        "style": "cot_family",  # one template family that asks for reasoning traces
    },
    "logprob_harvester": {
        "label": "attacker",
        "counts": {"small": 1, "medium": 2},
        "campaign": "logprob-harvest",
        "signup": "aged",
        "network": "cloud",
        "rhythm": "steady",  # around the clock
        "volume": {"per_day": 60},
        "style": "harvest",  # broad sweep of short prefixes with top logprobs
    },
    "evasive": {
        "label": "attacker",
        "counts": {"small": 3, "medium": 8},
        "campaign": "evasive-mix",
        "signup": "aged",  # aged accounts, bought or kept warm
        "network": "rotating_session",  # a new proxy address per session
        "rhythm": "human",
        "volume": {"active_day": 0.9, "sessions": 2.5, "per_session": (2, 8), "gap_s": 60.0},
        "style": "evasive",  # paraphrased asks, benign chat mixed in
        "benign_share": 0.35,
    },
    "low_and_slow": {
        "label": "attacker",
        "counts": {"small": 4, "medium": 16},
        "campaign": "low-slow",
        "campaigns": {"small": 1, "medium": 2},
        "signup": "aged",
        "network": "residential",  # each account its own stable address: nothing links them by network
        "rhythm": "sparse",  # a handful of requests a day at random hours
        "volume": {"per_day": (2, 6)},
        "style": "low_slow",
    },
}

RESIDENTIAL_NETS = (24, 47, 67, 71, 73, 76, 86, 92, 98, 109, 176, 188)
CLOUD_NETS = ("34.82", "35.199", "3.91", "52.14", "18.205", "13.57")


def check_size(size: str) -> dict[str, Any]:
    if size not in SIZES:
        raise UserError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return SIZES[size]


def residential_ip(rng: random.Random) -> str:
    return f"{rng.choice(RESIDENTIAL_NETS)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def build_population(size: str = "small", seed: int = 0) -> list[Account]:
    """The accounts of one held-out population, the same for the same ``size`` and ``seed``."""
    spec = check_size(size)
    days, history = spec["days"], spec["history_days"]
    rng = random.Random(f"heldout:{seed}:{size}:population")
    # a few cloud /24s for this run: server-side accounts (benign or not) land in the same ones by chance
    cloud_blocks = [
        f"{rng.choice(CLOUD_NETS)}.{rng.randrange(256)}" for _ in range(4 if size == "small" else 10)
    ]
    used: set[str] = set()
    accounts: list[Account] = []

    def unique(base: str) -> str:
        name, i = base, 2
        while name in used:
            name, i = f"{base}{i}", i + 1
        used.add(name)
        return name

    def person() -> str:
        style = rng.randrange(4)
        first, last = rng.choice(words.FIRST_NAMES), rng.choice(words.LAST_NAMES)
        if style == 0:
            return f"{first}.{last}"
        if style == 1:
            return f"{first}{last[0]}{rng.randrange(10, 99)}"
        if style == 2:
            return f"{first[0]}{last}"
        return f"{first}_{last}{rng.randrange(1970, 2008)}"

    def throwaway() -> str:
        letters = "abcdefghijklmnopqrstuvwxyz"
        return "".join(rng.choice(letters) for _ in range(rng.randrange(5, 8))) + str(
            rng.randrange(100, 9999)
        )

    for kind, cfg in KINDS.items():
        n = int(cfg["counts"][spec["counts"]])
        n_campaigns = int(cfg.get("campaigns", {}).get(spec["counts"], 1))
        burst_t = 0.0
        group_size = int(cfg.get("group_size", n or 1))
        class_ips: dict[int, str] = {}
        for i in range(n):
            c = i * n_campaigns // n  # attackers of a kind: contiguous blocks, one per campaign
            campaign = cfg.get("campaign")
            if campaign and n_campaigns > 1:
                campaign = f"{campaign}-{c + 1}"
            if i == 0 or c != (i - 1) * n_campaigns // n:
                burst_t = rng.uniform(0.1, 0.5) * days * DAY  # this campaign's sign-up burst
            tz = rng.choice((-8.0, -5.0, 0.0, 1.0, 2.0, 5.5, 8.0, 9.0))
            group = None
            ips: list[str] = []
            extra: dict[str, Any] = {}
            org = cfg.get("org")
            # names: people look like people, services like services, throwaways like throwaways
            if kind in ("casual", "evasive", "low_and_slow"):
                name = unique(person())
            elif kind == "sybil_cot":
                name = unique(throwaway())
            elif kind == "classroom":
                c = i // group_size
                group = f"class-{c + 1}"
                org = f"{org}-{c + 1}"
                name = unique(f"{rng.choice(words.FIRST_NAMES)}{rng.randrange(1, 99):02d}-{group}")
            elif kind == "logprob_harvester":
                name = unique(rng.choice(("dataops", "ml-research", "labeling", "nlp-team")) + f"-{i + 1}")
            else:
                name = unique(f"{org}-{cfg['stem']}-{i + 1}")
                group = org
            # sign-up
            signup_kind = cfg["signup"]
            if signup_kind == "aged_or_new" and rng.random() < 0.2:
                signup = rng.uniform(0.0, 0.8) * days * DAY
            elif signup_kind in ("aged", "aged_or_new"):
                signup = -rng.uniform(0.5, history) * DAY
            elif signup_kind == "burst":
                burst_t += rng.lognormvariate(3.0, 0.6)  # a script: seconds to a minute apart
                signup = burst_t
            elif signup_kind == "lesson":
                # first lesson of the class (Monday morning, school time zone), all students in minutes
                tz = -5.0
                signup = (9.0 - tz) * 3600 + (i // group_size) * 3600 * 2 + rng.uniform(0, 600)
                extra["lesson_offset_h"] = (i // group_size) * 2.0
            else:
                signup = rng.uniform(0.0, 0.5) * days * DAY
            # network
            net = cfg["network"]
            if net == "residential":
                ips = [residential_ip(rng)]
                if rng.random() < 0.3:
                    ips.append(residential_ip(rng))  # a phone
            elif net == "cloud":
                ips = [f"{rng.choice(cloud_blocks)}.{rng.randrange(2, 250)}"]
            elif net == "nat":
                c = i // group_size
                ips = [class_ips.setdefault(c, residential_ip(rng))]
            if campaign:
                extra["campaign_index"] = c
            if campaign and kind == "evasive":
                extra["benign_share"] = cfg.get("benign_share", 0.0)
            accounts.append(
                Account(name, kind, cfg["label"], campaign, group, org, round(signup, 3), ips, tz, extra)
            )
    return accounts

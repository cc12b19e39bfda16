"""Shared machinery of the second held-out generator: seeded randomness, the clocks of people and machines,
client addresses, account names, and the sink that collects planned requests.

Randomness. Every random choice comes from a :class:`random.Random` seeded with a string built from the
seed, the size and what is being drawn (an account's name, a campaign id), never from the global generator
or ``hash()``: the same arguments give the same population and plan, and one account's traffic does not
change when another kind is added.

Time. Simulated time 0 is a Monday 00:00 UTC. People live in their own time zone: a day profile gives the
relative chance of activity in each local hour (night owls and office workers differ), weekends are
quieter for work and busier for leisure. Machines run on cron times, steady queues or bursts.

Addresses. Residential ISPs, mobile carriers (whose carrier-grade NAT puts many subscribers behind one
address), commercial VPN exits shared by strangers, cloud and hosting ranges, offices and schools behind one
NAT address. All addresses are public-looking IPv4 strings outside private and reserved ranges.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from distillguard.heldout.plan import DAY, Account, Request
from distillguard.heldout2 import words

# days: the observed period; scale: which account counts; volume: the share of a service's (and a
# campaign's) full daily volume a size sends; people: the same for people's busiest habits (small keeps
# every kind but thins the heavy ones)
SIZES: dict[str, dict[str, object]] = {
    "small": {"days": 2, "scale": "small", "volume": 0.2, "people": 0.6},
    "medium": {"days": 5, "scale": "medium", "volume": 1.0, "people": 1.0},
    "month": {"days": 30, "scale": "medium", "volume": 1.0, "people": 1.0},
}

HOUR = 3600.0
MINUTE = 60.0


def rng_for(*parts: Any) -> random.Random:
    """A generator seeded with a string (``random`` hashes strings with SHA-512: stable across runs)."""
    return random.Random("heldout2|" + "|".join(str(p) for p in parts))


# -- day profiles: relative activity per local hour, 0..23 ---------------------------------------------------

PROFILES: dict[str, tuple[float, ...]] = {
    # people at home: a late morning rise, lunch, a long evening
    "human": (1.0, 0.6, 0.35, 0.25, 0.2, 0.3, 0.7, 1.4, 2.3, 3.0, 3.3, 3.4, 3.1, 3.2, 3.3, 3.2, 3.1, 3.1,
              3.2, 3.5, 3.8, 3.6, 2.8, 1.8),
    # office hours with a lunch dip, a little late work
    "office": (0.05, 0.02, 0.02, 0.02, 0.02, 0.05, 0.2, 0.8, 2.5, 3.6, 3.8, 3.6, 2.4, 3.2, 3.7, 3.6, 3.2,
               2.4, 1.2, 0.7, 0.5, 0.4, 0.3, 0.15),
    # hobbyists and students after school or work
    "evening": (1.2, 0.6, 0.3, 0.1, 0.05, 0.05, 0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 1.0, 1.0, 1.1, 1.3, 1.6, 2.0,
                2.8, 3.4, 3.8, 3.6, 3.0, 2.0),
    # the customers of a business: the day shape of many people, flattened a little
    "customers": (0.5, 0.3, 0.2, 0.15, 0.15, 0.25, 0.6, 1.3, 2.2, 2.8, 3.0, 3.0, 2.9, 2.9, 2.9, 2.8, 2.7,
                  2.6, 2.5, 2.5, 2.4, 2.0, 1.4, 0.9),
    # a consumer app used on several continents: flat with mild swells
    "global": (1.6, 1.4, 1.3, 1.3, 1.4, 1.6, 1.9, 2.2, 2.4, 2.5, 2.5, 2.4, 2.4, 2.5, 2.6, 2.7, 2.8, 2.8, 2.7,
               2.6, 2.4, 2.2, 2.0, 1.8),
    # an operator who keeps waking hours, with no office rhythm
    "waking": (0.3, 0.1, 0.05, 0.05, 0.05, 0.1, 0.4, 1.0, 1.8, 2.2, 2.4, 2.4, 2.3, 2.3, 2.4, 2.4, 2.4, 2.3,
               2.2, 2.2, 2.2, 2.0, 1.5, 0.8),
    # round the clock, a machine queue
    "flat": tuple([1.0] * 24),
}  # fmt: skip

WORLD_TZ: tuple[tuple[float, float], ...] = (
    (-8, 14), (-7, 4), (-6, 7), (-5, 16), (-3, 6), (0, 8), (1, 16), (2, 6), (3, 4), (5.5, 8), (7, 3),
    (8, 7), (9, 4), (10, 2), (12, 1),
)  # fmt: skip


def world_tz(rng: random.Random) -> float:
    zones, weights = zip(*WORLD_TZ, strict=True)
    return float(rng.choices(zones, weights)[0])


def local_days(days: int) -> range:
    """Local calendar days that can overlap the period ``[0, days)`` in any time zone."""
    return range(-1, days + 1)


def day_start(day: int, tz: float) -> float:
    """Simulated time of local midnight starting local day ``day`` in zone ``tz``."""
    return day * DAY - tz * HOUR


def is_weekend(day: int) -> bool:
    return day % 7 in (5, 6)


def pick_hour(rng: random.Random, profile: str) -> float:
    weights = PROFILES[profile]
    return rng.choices(range(24), weights)[0] + rng.random()


def local_time(rng: random.Random, day: int, tz: float, profile: str) -> float:
    """A random instant of local day ``day``, shaped by ``profile``."""
    return day_start(day, tz) + pick_hour(rng, profile) * HOUR


def at_local(day: int, tz: float, hour: float) -> float:
    return day_start(day, tz) + hour * HOUR


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth for small means, a rounded normal above 30)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def think_gap(rng: random.Random, median: float, spread: float = 0.6) -> float:
    """A person's pause between two messages: log-normal around ``median`` seconds."""
    return max(3.0, rng.lognormvariate(math.log(median), spread))


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (i + 1) ** s for i in range(n)]


class Popular:
    """What ordinary people ask about: API names with a heavy head (the well-known ones first)."""

    def __init__(self, apis: Sequence[str], seed: Any) -> None:
        names = sorted(set(apis)) or sorted(words.COMMON_APIS)
        rng = rng_for("popular", seed)
        head = [a for a in words.COMMON_APIS if a in names]
        tail = [a for a in names if a not in head]
        rng.shuffle(head)
        rng.shuffle(tail)
        self.order = head + tail
        self.cum: list[float] = []
        total = 0.0
        for w in zipf_weights(len(self.order)):
            total += w
            self.cum.append(total)

    def pick(self, rng: random.Random) -> str:
        return rng.choices(self.order, cum_weights=self.cum)[0]

    def head(self, n: int) -> list[str]:
        return self.order[:n]


# -- addresses -----------------------------------------------------------------------------------------------


class Addresses:
    """Draws public-looking IPv4 addresses of a given kind, never the same one twice unless asked."""

    def __init__(self, rng: random.Random, taken: Sequence[str] = ()) -> None:
        self.rng = rng
        self.used: set[str] = set(taken)

    def _fresh(self, prefix: str) -> str:
        parts = prefix.split(".")
        for _ in range(1000):
            tail = [str(self.rng.randint(0, 255)) for _ in range(3 - len(parts))] + [
                str(self.rng.randint(2, 254))
            ]
            ip = ".".join(parts + tail)
            if ip not in self.used:
                self.used.add(ip)
                return ip
        raise RuntimeError(f"address space {prefix} exhausted")

    def residential(self) -> str:
        return self._fresh(f"{self.rng.choice(words.RESIDENTIAL_A)}.{self.rng.randint(1, 254)}")

    def mobile(self) -> str:
        """A carrier NAT address: drawn from a few small pools, so strangers may share one."""
        ip = f"{self.rng.choice(words.MOBILE_24)}.{self.rng.randint(2, 254)}"
        self.used.add(ip)
        return ip

    def cloud(self) -> str:
        return self._fresh(self.rng.choice(words.CLOUD_16))

    def hosting_block(self) -> str:
        """A /24 prefix in a hosting provider's range (``a.b.c``)."""
        return f"{self.rng.choice(words.HOSTING_16)}.{self.rng.randint(0, 255)}"

    def in_block(self, block: str) -> str:
        return self._fresh(block)

    def office(self) -> str:
        """An office, campus or school NAT address (business ISP ranges)."""
        return self._fresh(f"{self.rng.choice(words.BUSINESS_A)}.{self.rng.randint(1, 254)}")


# -- names ---------------------------------------------------------------------------------------------------


class Names:
    """Account names that look like the real thing, unique within a population."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.taken: set[str] = set()

    def unique(self, name: str) -> str:
        base, k = name, 2
        while name in self.taken:
            name = f"{base}{k}"
            k += 1
        self.taken.add(name)
        return name

    def person(self) -> str:
        r = self.rng
        first, last = r.choice(words.FIRST), r.choice(words.LAST)
        pattern = r.randrange(7)
        if pattern == 0:
            name = f"{first}.{last}"
        elif pattern == 1:
            name = f"{first}{last[0]}{r.randint(1, 99)}"
        elif pattern == 2:
            name = f"{first[0]}{last}"
        elif pattern == 3:
            name = f"{r.choice(words.ADJ)}{r.choice(words.NOUN)}{r.randint(1, 999)}"
        elif pattern == 4:
            name = f"{first}_{last}{r.randint(70, 99) if r.random() < 0.5 else r.randint(0, 9)}"
        elif pattern == 5:
            name = f"{first}{r.randint(1975, 2009)}"
        else:
            name = f"{first}-{last}"
        return self.unique(name)

    def service(self, org_slug: str, service: str) -> str:
        """``<org>-<service>-<n>``, numbered from 1 within the organisation (or ``-prod``, ``-staging``)."""
        if self.rng.random() < 0.15:
            for env in ("prod", "staging"):
                name = f"{org_slug}-{service}-{env}"
                if name not in self.taken:
                    return self.unique(name)
        k = 1
        while f"{org_slug}-{service}-{k}" in self.taken:
            k += 1
        return self.unique(f"{org_slug}-{service}-{k}")

    def throwaway(self) -> str:
        """A machine-made handle: random characters or a word and digits."""
        r = self.rng
        pattern = r.randrange(3)
        if pattern == 0:
            name = "".join(r.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(r.randint(8, 11)))
        elif pattern == 1:
            name = f"user{r.randint(10000, 99999999)}"
        else:
            name = f"{r.choice(words.NOUN)}{r.choice(words.NOUN)}{r.randint(100, 9999)}"
        return self.unique(name)


def slug(org: str) -> str:
    return org.split()[0].lower().replace("'", "")


def org_id(name: str) -> str:
    """How an organisation is registered: its name in lower case, words joined by hyphens."""
    return "-".join(name.lower().replace("'", "").split())


def hex_id(rng: random.Random, n: int = 12) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


# -- the plan being built ------------------------------------------------------------------------------------


class Sink:
    """Collects planned requests, dropping those outside the period or before the account exists."""

    def __init__(self, end: float) -> None:
        self.end = end
        self.requests: list[Request] = []
        self.sessions: dict[str, int] = {}

    def session(self, acct: Account) -> int:
        self.sessions[acct.name] = self.sessions.get(acct.name, 0) + 1
        return self.sessions[acct.name]

    def ok(self, acct: Account, t: float) -> bool:
        return max(0.0, acct.signup + 20.0) <= t < self.end

    def add(
        self,
        acct: Account,
        t: float,
        ip: str,
        body: dict[str, Any],
        *,
        endpoint: str = "chat",
        stream: bool = False,
        followup: bool = False,
        session: int = 0,
        **meta: Any,
    ) -> bool:
        if not self.ok(acct, t):
            return False
        self.requests.append(
            Request(round(t, 3), acct.name, ip, endpoint, body, stream, followup, session, dict(meta))
        )
        return True


def chat(
    text: str, system: str | None = None, history: Sequence[tuple[str, str]] = (), **params: Any
) -> dict[str, Any]:
    """A chat body: optional system prompt, earlier (user, assistant) turns, the new user message, params
    (``None`` values are left out, as the official client leaves out what is not given)."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    for u, a in history:
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": text})
    return {"messages": messages, **{k: v for k, v in params.items() if v is not None}}


def completion(prompt: str | list[str], **params: Any) -> dict[str, Any]:
    return {"prompt": prompt, **{k: v for k, v in params.items() if v is not None}}


class Ctx:
    """What every planner needs: the size, the period, the sink, API popularity and fresh addresses."""

    def __init__(self, size: str, seed: int, days: int, volume: float, apis: list[str], taken: Sequence[str]):
        self.size, self.seed, self.days, self.vol = size, seed, days, volume
        self.end = days * DAY
        self.apis = apis
        self.sink = Sink(self.end)
        self.pop = Popular(apis, seed)
        self.addr = Addresses(rng_for("traffic-addresses", size, seed), taken)
        self.shared: dict[str, Any] = {}
        self.people = 1.0  # the share of people's busiest habits a size keeps
        self.salt = 0  # another draw for an account whose first one was silent

    def rng(self, *parts: Any) -> random.Random:
        if self.salt:
            return rng_for("traffic", self.size, self.seed, f"draw{self.salt}", *parts)
        return rng_for("traffic", self.size, self.seed, *parts)

    def scaled(self, n: float) -> float:
        return n * self.vol

"""Populations of personas: the :data:`SCALES` presets and :func:`build_scenario`, which assembles a whole
labelled population (accounts with their ground truth, and their events in time order) from a seed."""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distillguard.errors import UserError
from distillguard.monitor.personas import PERSONAS
from distillguard.monitor.simworld import SIM_START, Event, Pools, SimAccount, SimClock, load_pools


@dataclass(frozen=True)
class Scale:
    """A population preset: ``personas`` maps a persona name to a list of ``(accounts, queries, options)``
    instances (several instances of an attacker persona are independent operators, several Sybil entries
    are separate campaigns)."""

    name: str
    days: float
    personas: dict[str, tuple[tuple[int, int, dict[str, Any]], ...]]


def _scale(name: str, days: float, benign: int, single: int, sybil: tuple[tuple[int, int, str], ...],
           q: float) -> Scale:  # fmt: skip
    def qn(x: float) -> int:
        return max(1, round(x * q))

    return Scale(
        name,
        days,
        {
            "casual_chat": ((12 * benign, qn(6), {}),),
            "coding_assistant": ((max(1, benign // 2), qn(120 * days), {}),),
            "support_bot": ((max(1, benign // 2), qn(60 * days), {}),),
            "batch_summariser": ((max(1, benign // 4), qn(150 * days), {}),),
            "eval_harness": ((max(1, benign // 2), qn(120), {}),),
            "researcher": ((2 * benign, qn(20), {}),),
            "coverage": ((single, qn(300), {}),),
            "paraphrase": ((single, qn(250), {}),),
            "cot": ((single, qn(250), {}),),
            "logprob": ((single, qn(200), {}),),
            "sybil": tuple((n, qn(per), {"ip_mode": mode}) for n, per, mode in sybil),
            "low_and_slow": ((single, qn(60 * days), {}),),
        },
    )


SCALES: dict[str, Scale] = {
    # a few hundred requests: tests and a first look
    "tiny": _scale("tiny", 1.0, 1, 1, ((4, 100, "slash24"),), 0.25),
    # a few thousand: a quick local run against a gateway
    "small": _scale("small", 2.0, 2, 1, ((8, 250, "slash24"),), 1.0),
    # tens of thousands, hundreds of benign accounts, two campaigns
    "medium": _scale("medium", 7.0, 20, 3, ((40, 300, "slash24"), (30, 300, "cloud")), 1.0),
    # hundreds of thousands: FPR at 0.1% needs thousands of benign accounts (synthetic ledgers)
    "large": _scale("large", 14.0, 200, 10, ((300, 670, "slash24"), (200, 670, "cloud")), 1.0),
}


@dataclass
class Scenario:
    """A whole simulated population: accounts (ground truth included) and their events in time order."""

    seed: int
    scale: str
    clock: SimClock
    accounts: list[SimAccount]
    events: list[Event]

    def labels(self) -> dict[str, dict[str, Any]]:
        """``{account: {"persona", "kind", "campaign"}}``: the ground truth ``labels.json`` holds."""
        return {a.name: a.label() for a in self.accounts}

    def account(self, name: str) -> SimAccount:
        for a in self.accounts:
            if a.name == name:
                return a
        raise KeyError(name)

    def summary(self) -> dict[str, dict[str, int]]:
        """Accounts and events per persona."""
        out: dict[str, dict[str, int]] = {}
        for a in self.accounts:
            out.setdefault(a.persona, {"accounts": 0, "events": 0})["accounts"] += 1
        for e in self.events:
            out[e.persona]["events"] += 1
        return out


def resolve_scale(scale: str | Scale) -> Scale:
    if isinstance(scale, Scale):
        return scale
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return SCALES[scale]


def build_scenario(
    scale: str | Scale = "small",
    *,
    seed: int = 0,
    pools: Pools | None = None,
    days: float | None = None,
    start: float = SIM_START,
    personas: Sequence[str] | None = None,
) -> Scenario:
    """Generate a labelled population at ``scale``, deterministic for ``seed``.

    ``personas`` restricts the population to those persona names; ``days`` overrides the scale's length
    (query counts stay per account). Each persona instance draws from its own rng (derived from the seed,
    its name and its position), so removing one persona leaves the others' traffic unchanged. The
    low-and-slow attacker copies prompts that the generated benign users actually sent.
    """
    sc = resolve_scale(scale)
    pools = pools if pools is not None else load_pools()
    wanted = set(personas) if personas is not None else set(PERSONAS)
    unknown = wanted - set(PERSONAS)
    if unknown:
        raise UserError(f"unknown persona(s) {', '.join(sorted(unknown))}; choose from {', '.join(PERSONAS)}")
    clock = SimClock(start=start, days=days if days is not None else sc.days)
    accounts: list[SimAccount] = []
    streams: list[list[Event]] = []
    decoys: list[str] = []
    order = [n for n in PERSONAS if n in wanted and n in sc.personas]
    order.sort(key=lambda n: n == "low_and_slow")  # decoys come from the benign traffic generated first
    for name in order:
        for idx, (n_accounts, queries, options) in enumerate(sc.personas[name]):
            opts = dict(options)
            if name == "low_and_slow":
                opts["decoys"] = decoys
            if name == "sybil" and len(sc.personas[name]) > 1:
                opts["campaign"] = f"sybil-{idx}"
            persona = PERSONAS[name](pools, accounts=n_accounts, queries=queries, **opts)
            traffic = persona.generate(random.Random(f"{seed}:{name}:{idx}"), clock)
            accounts.extend(traffic.accounts)
            streams.append(traffic.events)
            if name in ("casual_chat", "coding_assistant", "researcher"):
                rng = random.Random(f"{seed}:decoys:{name}:{idx}")
                texts = [e.user_text() for e in traffic.events if e.endpoint == "chat"]
                decoys.extend(rng.sample(texts, min(len(texts), 200)))
    names = [a.name for a in accounts]
    if len(set(names)) != len(names):  # 48-bit names: practically never; fail loudly rather than merge
        raise UserError(f"account name collision for seed {seed}; use another seed")
    accounts.sort(key=lambda a: (a.created, a.name))
    events = list(heapq.merge(*streams, key=lambda e: e.t))
    return Scenario(seed=seed, scale=sc.name, clock=clock, accounts=accounts, events=events)

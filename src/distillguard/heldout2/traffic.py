"""The plan of requests: every account's traffic over the period, in simulated time order.

Each kind has a planner (:mod:`.humans`, :mod:`.services`, :mod:`.campaigns`) that draws from its own
generator seeded with the account's name, so an account's traffic depends only on the seed, the size, the
account and the API list. Addresses that rotate (proxy pools, VPN exits, residential proxies) are drawn
apart from every account's stable addresses, so a shared address in the plan is shared on purpose.
"""

from __future__ import annotations

from distillguard.heldout.plan import Account, Request
from distillguard.heldout2 import campaigns, humans, services, words
from distillguard.heldout2.common import SIZES, Ctx

RETRIES = 20


def _plan_one(acct: Account, ctx: Ctx, accounts: list[Account]) -> None:
    if acct.kind in campaigns.PLANNERS:
        campaigns.PLANNERS[acct.kind](acct, ctx, accounts)
    elif acct.kind in humans.PLANNERS:
        humans.PLANNERS[acct.kind](acct, ctx)
    elif acct.kind in services.PLANNERS:
        services.PLANNERS[acct.kind](acct, ctx)
    else:
        raise ValueError(f"no planner for accounts of kind {acct.kind!r}")


def plan_traffic(accounts: list[Account], size: str, seed: int, apis: list[str]) -> list[Request]:
    spec = SIZES[size]
    names = sorted({a.strip() for a in apis if isinstance(a, str) and a.strip()}) or sorted(words.COMMON_APIS)
    taken = [ip for a in accounts for ip in a.ips]
    ctx = Ctx(size, seed, int(spec["days"]), float(spec["volume"]), names, taken)
    ctx.people = float(spec.get("people", 1.0))
    for acct in accounts:
        # an account silent for the whole period would be invisible to the gateway: those that drew no
        # activity draw again (a few tries), so the population is the set of accounts seen in the period
        for attempt in range(RETRIES):
            before = len(ctx.sink.requests)
            ctx.salt = attempt
            _plan_one(acct, ctx, accounts)
            if len(ctx.sink.requests) > before:
                break
    ctx.salt = 0
    plan = ctx.sink.requests
    plan.sort(key=lambda q: (q.t, q.account))
    return plan

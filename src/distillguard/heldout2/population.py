"""Who holds accounts: the population a size and a seed draw for the second held-out generator.

The same accounts exist at the "medium" and "month" sizes (names, kinds, labels, organisations,
addresses); only what depends on the length of the period (when campaigns sign up and work, when the
hackathon and the new class happen) is laid out over 30 days instead of 5.

Benign customers are drawn from organisations and people:

- companies (invented names) run service accounts named ``<org>-<service>-<n>``: support bots, nightly
  summarisers, translation pipelines, documentation search (RAG), consumer products built on the API,
  labelling jobs, prompt A/B tests and CI bots; a company's first accounts are provisioned together (a
  sign-up burst of its own) and share its cloud egress addresses; its developers share the office NAT.
  About a third of the service accounts are independent developers' products with no organisation.
- universities run evaluation harnesses and calibration studies from the campus NAT address.
- people: casual users worldwide (home, mobile carrier NAT, some through a commercial VPN that strangers
  share), developers, editor plug-in users, hackathon participants (who sign up within the hour from the
  venue's Wi-Fi), school classes (students sign up in one lesson from the school's single address).

Campaigns (label "attacker") are described in :mod:`distillguard.heldout2.campaigns`; their accounts are
drawn here: throwaway handles created in waves, aged accounts that look like people, accounts provisioned
under front organisations exactly like a real company's, and one real-looking company account that runs a
harvesting job beside its product.
"""

from __future__ import annotations

import random
from typing import Any

from distillguard.heldout.plan import DAY, Account
from distillguard.heldout2 import words
from distillguard.heldout2.common import (
    HOUR,
    MINUTE,
    SIZES,
    Addresses,
    Names,
    org_id,
    rng_for,
    slug,
    world_tz,
)

BENIGN: dict[str, dict[str, int]] = {
    "small": {
        "casual": 10,
        "prototyper": 3,
        "classes": 1,
        "students": 8,
        "hackers": 4,
        "eval_harness": 1,
        "support_bot": 1,
        "batch_summarizer": 1,
        "tool_agent": 2,
        "translation_pipeline": 1,
        "rag_app": 1,
        "logprob_researcher": 1,
        "prompt_ab": 1,
        "wrapper_product": 1,
        "data_labeller": 1,
        "ide_plugin": 2,
        "companies": 4,
        "universities": 1,
    },
    "medium": {
        "casual": 130,
        "prototyper": 28,
        "classes": 3,
        "students": 24,
        "hackers": 18,
        "eval_harness": 6,
        "support_bot": 6,
        "batch_summarizer": 5,
        "tool_agent": 12,
        "translation_pipeline": 3,
        "rag_app": 4,
        "logprob_researcher": 4,
        "prompt_ab": 5,
        "wrapper_product": 3,
        "data_labeller": 3,
        "ide_plugin": 14,
        "companies": 10,
        "universities": 2,
    },
}
# campaign id -> (kind, accounts at small, accounts at medium)
CAMPAIGNS: dict[str, tuple[str, int, int]] = {
    "hydra-burst": ("sybil_burst", 6, 30),
    "hydra-resi": ("sybil_residential", 0, 24),
    "trace-farm": ("cot_harvest", 2, 8),
    "lp-sweep": ("logprob_harvest", 1, 2),
    "quiet-mix": ("evasive", 3, 16),
    "trickle": ("low_slow", 4, 36),
    "bench-front": ("eval_disguise", 1, 3),
    "app-front": ("wrapper_disguise", 1, 2),
    "dialog-vendor": ("dialogue_synth", 2, 6),
    "side-job": ("mixed_tenant", 1, 1),
}
SERVICE_KINDS = (
    "support_bot",
    "batch_summarizer",
    "translation_pipeline",
    "rag_app",
    "wrapper_product",
    "data_labeller",
    "prompt_ab",
)


def build_population(size: str, seed: int) -> list[Account]:
    spec = SIZES[size]
    scale, days = spec["scale"], int(spec["days"])
    b = _Builder(scale, seed, days)
    b.benign(BENIGN[scale])
    b.attackers()
    return b.accounts


class _Builder:
    def __init__(self, scale: str, seed: int, days: int) -> None:
        self.scale, self.seed, self.days = scale, seed, days
        self.rng = rng_for("population", scale, seed)
        self.names = Names(rng_for("names", scale, seed))
        self.addr = Addresses(rng_for("addresses", scale, seed))
        self.accounts: list[Account] = []

    def add(
        self,
        name: str,
        kind: str,
        *,
        signup: float,
        ips: list[str],
        tz: float,
        label: str = "benign",
        campaign: str | None = None,
        group: str | None = None,
        org: str | None = None,
        **extra: Any,
    ) -> Account:
        acct = Account(name, kind, label, campaign, group, org, round(signup, 3), ips, tz, extra)
        self.accounts.append(acct)
        return acct

    def period(self, fraction: float) -> float:
        return fraction * self.days * DAY

    # -- benign ---------------------------------------------------------------------------------------

    def benign(self, n: dict[str, int]) -> None:
        r = self.rng
        companies = []
        for name in r.sample(words.COMPANIES, n["companies"]):
            companies.append(
                {
                    "org": org_id(name),
                    "slug": slug(name),
                    "tz": r.choice((-8.0, -5.0, 0.0, 1.0, 2.0, 5.5, 9.0)),
                    "office": self.addr.office(),
                    "cloud": [self.addr.cloud() for _ in range(r.randint(1, 3))],
                    "founded": -r.uniform(60, 500) * DAY,
                    "provisioned": 0,
                }
            )
        unis = []
        for name in r.sample(words.UNIVERSITIES, n["universities"]):
            unis.append(
                {
                    "org": org_id(name),
                    "slug": slug(name),
                    "tz": r.choice((-5.0, 0.0, 1.0, 9.0)),
                    "campus": self.addr.office(),
                    "gpu": self.addr.cloud(),
                }
            )

        for _ in range(n["casual"]):
            self.casual()
        for _ in range(n["prototyper"]):
            self.person_dev("prototyper", companies, share=0.4)
        for _ in range(n["ide_plugin"]):
            self.person_dev("ide_plugin", companies, share=0.3)
        for _ in range(n["tool_agent"]):
            if r.random() < 0.5:
                self.service("tool_agent", companies, force_org=True)
            else:
                self.person_dev("tool_agent", companies, share=0.4)
        for kind in SERVICE_KINDS:
            for _ in range(n[kind]):
                self.service(kind, companies)
        for i in range(n["eval_harness"]):
            self.harness(unis, companies, i)
        for i in range(n["logprob_researcher"]):
            uni = unis[i % len(unis)] if r.random() < 0.8 else None
            name = self.names.person()
            ips = [uni["campus"]] if uni else [self.addr.residential()]
            self.add(
                name,
                "logprob_researcher",
                signup=-r.uniform(20, 400) * DAY,
                ips=ips,
                tz=uni["tz"] if uni else world_tz(r),
                org=uni["org"] if uni else None,
                group=uni["slug"] if uni else None,
            )
        for c in range(n["classes"]):
            self.classroom(c, n["students"], new=(c == 0))
        self.hackathon(n["hackers"])

    def casual(self) -> None:
        r = self.rng
        ips = [self.addr.residential()]
        if r.random() < 0.45:
            ips.append(self.addr.mobile())
        new = r.random() < 0.1
        signup = self.period(r.uniform(0.0, 0.85)) if new else -r.uniform(1, 700) * DAY
        self.add(
            self.names.person(),
            "casual",
            signup=signup,
            ips=ips,
            tz=world_tz(r),
            activity=round(r.uniform(0.1, 0.7) if not new else 0.9, 3),
            vpn=r.random() < 0.12,
            profile=r.choice(("human", "human", "evening", "office")),
            stream=r.random() < 0.75,
            python=round(r.uniform(0.05, 0.6), 3),
        )

    def person_dev(self, kind: str, companies: list[dict], share: float) -> None:
        r = self.rng
        home = self.addr.residential()
        company = r.choice(companies) if r.random() < share else None
        ips = [company["office"], home] if company else [home]
        tz = company["tz"] if company else world_tz(r)
        self.add(
            self.names.person(),
            kind,
            signup=-r.uniform(3, 600) * DAY,
            ips=ips,
            tz=tz,
            org=company["org"] if company else None,
            group=company["slug"] if company else None,
            activity=round(r.uniform(0.35, 0.9), 3),
            intensity=round(r.uniform(0.5, 1.6), 3),
        )

    def service(self, kind: str, companies: list[dict], force_org: bool = False) -> None:
        r = self.rng
        if force_org or r.random() < 0.68:
            c = r.choice(companies)
            if c["provisioned"] < 3:  # the company's first accounts: created together by a script
                signup = c["founded"] + c["provisioned"] * r.uniform(4, 40)
            else:
                signup = c["founded"] + r.uniform(1, -c["founded"] / DAY - 1) * DAY
            c["provisioned"] += 1
            name = self.names.service(c["slug"], r.choice(words.SERVICE[kind]))
            ips = r.sample(c["cloud"], r.randint(1, len(c["cloud"])))
            if kind == "prompt_ab":
                ips = [c["office"]]
            self.add(
                name,
                kind,
                signup=signup,
                ips=ips,
                tz=c["tz"],
                org=c["org"],
                group=c["slug"],
                load=round(r.uniform(0.6, 1.5), 3),
            )
        else:  # an independent developer's product
            name = self.names.person() if r.random() < 0.5 else self.names.throwaway()
            self.add(
                name,
                kind,
                signup=-r.uniform(5, 500) * DAY,
                ips=[self.addr.cloud()],
                tz=world_tz(r),
                load=round(r.uniform(0.4, 1.2), 3),
            )

    def harness(self, unis: list[dict], companies: list[dict], i: int) -> None:
        r = self.rng
        roll = r.random()
        if roll < 0.5 and unis:
            u = unis[i % len(unis)]
            name = self.names.service(u["slug"], r.choice(words.SERVICE["eval_harness"]))
            org, ips, tz, group = u["org"], [u["campus"], u["gpu"]], u["tz"], u["slug"]
        elif roll < 0.8:
            c = r.choice(companies)
            name = self.names.service(c["slug"], r.choice(words.SERVICE["eval_harness"]))
            org, ips, tz, group = c["org"], [r.choice(c["cloud"])], c["tz"], c["slug"]
        else:
            name, org, ips, tz, group = self.names.person(), None, [self.addr.cloud()], world_tz(r), None
        self.add(
            name,
            "eval_harness",
            signup=-r.uniform(10, 300) * DAY,
            ips=ips,
            tz=tz,
            org=org,
            group=group,
            items=r.choice((120, 200, 300, 400)),
            fmt=r.choice(("mc", "qa", "mixed")),
            runs_per_week=round(r.uniform(1.0, 3.5), 2),
        )

    def classroom(self, c: int, students: int, new: bool) -> None:
        r = self.rng
        tz = r.choice((-5.0, 0.0, 1.0, 2.0, 9.0, -3.0))
        school = self.addr.office()
        lesson_days = sorted(r.sample((0, 1, 2, 3, 4), 3))
        hour = r.choice((8.5, 10.0, 11.25, 13.5))
        group = f"class-{c + 1}"
        if new:  # the class's first lesson with the API falls inside the period
            lesson_days = sorted({min(lesson_days[0], self.days - 1), *lesson_days[1:]})
            first_day = lesson_days[0] if self.days <= 7 else 7 + lesson_days[0]
        else:
            first_day = lesson_days[0] - 7 * r.randint(2, 8)
        start = first_day * DAY - tz * HOUR + hour * HOUR
        t = start + r.uniform(3, 8) * MINUTE
        for _ in range(students):
            t += r.expovariate(1 / 25.0)  # one after another, as the teacher walks them through it
            home = self.addr.mobile() if r.random() < 0.3 else self.addr.residential()
            self.add(
                self.names.person(),
                "classroom",
                signup=t,
                ips=[school, home],
                tz=tz,
                group=group,
                lesson_days=lesson_days,
                lesson_hour=hour,
                diligence=round(r.uniform(0.1, 0.8), 3),
            )

    def hackathon(self, n: int) -> None:
        if n <= 0:
            return
        r = self.rng
        tz = r.choice((-5.0, 1.0, 2.0))
        venue = self.addr.office()
        day = 1 if self.days <= 2 else (2 if self.days <= 7 else 12)
        opening = day * DAY - tz * HOUR + 9.5 * HOUR
        if self.days <= 2:
            opening -= 20 * HOUR  # the small period: the event runs from Monday afternoon
        projects = r.sample(words.PROJECTS, max(1, n // 3))
        for i in range(n):
            signup = opening + r.uniform(0, 50) * MINUTE
            ips = [venue, self.addr.residential()]
            self.add(
                self.names.person(),
                "hackathon",
                signup=signup,
                ips=ips,
                tz=tz,
                group="hack-1",
                project=projects[i % len(projects)],
                opening=round(opening, 3),
                intensity=round(r.uniform(0.5, 1.5), 3),
            )

    # -- attackers ----------------------------------------------------------------------------------------

    def attackers(self) -> None:
        for campaign, (kind, n_small, n_medium) in CAMPAIGNS.items():
            n = n_small if self.scale == "small" else n_medium
            if n:
                getattr(self, "c_" + kind)(
                    campaign, kind, n, rng_for("campaign", self.scale, self.seed, campaign)
                )

    def _att(self, name: str, kind: str, campaign: str, **kw: Any) -> Account:
        return self.add(name, kind, label="attacker", campaign=campaign, **kw)

    def c_sybil_burst(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        waves = max(1, round(n / 15)) if self.days <= 7 else max(1, round(n / 6))
        per = -(-n // waves)
        for w in range(waves):
            t = self.period((w + 0.3) / waves) + r.uniform(-2, 2) * HOUR
            for _ in range(min(per, n - w * per)):
                t += r.uniform(4, 45)  # one script, one account after another
                self._att(
                    self.names.throwaway(),
                    kind,
                    campaign,
                    signup=t,
                    ips=[],
                    tz=8.0,
                    wave=w,
                    life_h=round(r.uniform(18, 40), 2),
                    load=round(r.uniform(0.7, 1.3), 3),
                )

    def c_sybil_residential(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        start, stop = self._window(r, 10)
        for _ in range(n):
            begin = start + r.uniform(0, 0.4) * (stop - start)
            self._att(
                self.names.person(),
                kind,
                campaign,
                signup=start - r.uniform(1, 21) * DAY,
                ips=[],
                tz=world_tz(r),
                start=round(begin, 3),
                stop=round(stop, 3),
                load=round(r.uniform(0.7, 1.3), 3),
            )

    def _window(self, r: random.Random, month_days: float) -> tuple[float, float]:
        if self.days <= 7:
            return 0.0, self.days * DAY
        start = r.uniform(0, self.days - month_days) * DAY
        return start, start + month_days * DAY

    def c_cot_harvest(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        block = self.addr.hosting_block()
        start, stop = self._window(r, 12)
        for _ in range(n):
            ips = [self.addr.in_block(block) for _ in range(r.randint(1, 2))]
            self._att(
                self.names.person(),
                kind,
                campaign,
                signup=start - r.uniform(3, 20) * DAY,
                ips=ips,
                tz=0.0,
                start=round(start, 3),
                stop=round(stop, 3),
                load=round(r.uniform(0.7, 1.3), 3),
            )

    def c_logprob_harvest(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        start, stop = self._window(r, 8)
        for _ in range(n):
            ips = [self.addr.in_block(self.addr.hosting_block())]
            self._att(
                self.names.throwaway(),
                kind,
                campaign,
                signup=start - r.uniform(1, 6) * DAY,
                ips=ips,
                tz=0.0,
                start=round(start, 3),
                stop=round(stop, 3),
            )

    def c_evasive(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        for _ in range(n):
            self._att(
                self.names.person(),
                kind,
                campaign,
                signup=-r.uniform(20, 150) * DAY,
                ips=[],
                tz=world_tz(r),
                rate=round(r.uniform(12, 26), 2),
                cover=round(r.uniform(0.3, 0.45), 3),
            )

    def c_low_slow(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        for i in range(n):
            self._att(
                self.names.person(),
                kind,
                campaign,
                signup=-r.uniform(15, 220) * DAY,
                ips=[self.addr.residential()],
                tz=world_tz(r),
                rate=round(r.uniform(2, 7), 2),
                voice=i % 12,
            )

    def _front(
        self,
        org: str,
        service: str,
        kind: str,
        campaign: str,
        n: int,
        r: random.Random,
        month_days: float,
        **extra: Any,
    ) -> None:
        ips = [self.addr.cloud() for _ in range(2)]
        signup = -r.uniform(25, 60) * DAY
        start, stop = self._window(r, month_days)
        for i in range(n):
            name = self.names.service(slug(org), service)
            self._att(
                name,
                kind,
                campaign,
                signup=signup + i * r.uniform(5, 30),
                ips=ips,
                tz=-5.0,
                org=org_id(org),
                start=round(start, 3),
                stop=round(stop, 3),
                **extra,
            )

    def c_eval_disguise(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        self._front(words.FRONT_ORGS[0], "eval", kind, campaign, n, r, 14)

    def c_wrapper_disguise(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        self._front(words.FRONT_ORGS[1], r.choice(("app", "prod")), kind, campaign, n, r, 30)

    def c_dialogue_synth(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        org = words.FRONT_ORGS[2]
        ips = [self.addr.in_block(self.addr.hosting_block()) for _ in range(2)]
        start, stop = self._window(r, 10)
        for _ in range(n):
            self._att(
                self.names.person(),
                kind,
                campaign,
                signup=-r.uniform(10, 60) * DAY,
                ips=ips,
                tz=1.0,
                org=org_id(org),
                start=round(start, 3),
                stop=round(stop, 3),
            )

    def c_mixed_tenant(self, campaign: str, kind: str, n: int, r: random.Random) -> None:
        org = words.FRONT_ORGS[3]
        for _ in range(n):
            self._att(
                self.names.service(slug(org), "support"),
                kind,
                campaign,
                signup=-r.uniform(100, 300) * DAY,
                ips=[self.addr.cloud()],
                tz=0.0,
                org=org_id(org),
                load=1.0,
                nights=round(r.uniform(0.4, 0.7), 2),
            )

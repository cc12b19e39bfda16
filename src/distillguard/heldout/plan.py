"""What a held-out traffic generator produces, whichever wrote it: the accounts of a population
(:class:`Account`, with their labels), the requests they send in simulated time (:class:`Request`), and the
:class:`Generator` object that draws both from a size and a seed. :mod:`distillguard.heldout.drive` sends any
generator's plan through a real gateway; :data:`GENERATORS` names the generators (each written apart from
the monitor, and the second one apart from the first), imported on use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from distillguard.errors import UserError

DAY = 86400.0


@dataclass
class Account:
    """One account of the population and its label."""

    name: str
    kind: str
    label: str
    campaign: str | None
    group: str | None  # a benign organisation or class the account belongs to
    org: str | None
    signup: float  # simulated seconds from the period's start
    ips: list[str]  # stable addresses (empty for rotating ones)
    tz: float  # hours east of UTC, for human rhythms
    extra: dict[str, Any] = field(default_factory=dict)

    def label_entry(self) -> dict[str, Any]:
        # ``monitor eval`` reads the class from "kind" and the behaviour from "persona"
        return {
            "label": self.label,
            "kind": self.label,
            "persona": self.kind,
            "campaign": self.campaign,
            "group": self.group,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Request:
    t: float  # simulated seconds from the period's start
    account: str
    ip: str
    endpoint: str  # "chat" or "completions"
    body: dict[str, Any]
    stream: bool = False
    followup: bool = False
    session: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def labels(accounts: list[Account]) -> dict[str, dict[str, Any]]:
    """``labels.json``: each account's label entry."""
    return {a.name: a.label_entry() for a in accounts}


@dataclass(frozen=True)
class Generator:
    """A held-out traffic generator: its sizes (each with at least ``days``, the observed period), the
    population a size and seed draw, and the plan of requests (the same for the same arguments)."""

    name: str
    sizes: Mapping[str, Mapping[str, Any]]
    build_population: Callable[[str, int], list[Account]]
    plan_traffic: Callable[[list[Account], str, int, list[str]], list[Request]]

    def check_size(self, size: str) -> Mapping[str, Any]:
        if size not in self.sizes:
            raise UserError(f"unknown size {size!r}; choose one of {', '.join(self.sizes)}")
        return self.sizes[size]


# name -> the module whose ``GENERATOR`` it is
GENERATORS: dict[str, str] = {
    "heldout": "distillguard.heldout.traffic",
    "heldout2": "distillguard.heldout2",
}


def open_generator(name: str) -> Generator:
    if name not in GENERATORS:
        raise UserError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
    return importlib.import_module(GENERATORS[name]).GENERATOR

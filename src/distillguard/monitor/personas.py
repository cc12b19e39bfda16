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
:class:`SimClock` into :class:`SimAccount` s (with creation times: key-creation bursts are a linking signal)
and :class:`Event` s (one API request each, with its simulated time, client IP, endpoint, body and
parameters). :func:`build_scenario` assembles a whole population at a :data:`SCALES` preset; the same seed
always gives the same accounts, names, IPs, texts and times. ``monitor.simulate`` replays a scenario against
a running gateway over HTTP and ``monitor.synth`` writes it straight into a ledger.

Attacker content reuses the distillation engine's prompt strategies (:mod:`distillguard.distill.strategies`):
the coverage distiller *is* the ``coverage`` k-center traversal, the templated generator *is* ``paraphrase``,
the harvester *is* ``cot``, so the monitor is tested against exactly what ``distillguard distill`` sends.

Account names carry no label (``u`` + 12 hex digits for everyone); the ground truth is only in
:meth:`Scenario.labels` (``labels.json``).
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from distillguard.distill.strategies import (
    CoTStrategy,
    CoverageStrategy,
    IdentityStrategy,
    ParaphraseStrategy,
    take,
)
from distillguard.errors import UserError

Endpoint = Literal["chat", "completions"]
Kind = Literal["benign", "attacker"]

DAY = 86_400.0
HOUR = 3_600.0
SIM_START = 1_717_372_800.0  # Monday 2024-06-03 00:00 UTC: weekdays and weekends fall on known days


# --------------------------------------------------------------------------------------------------
# Clock and time-of-day activity


# Relative request rates per local hour (all > 0 so thinning always terminates).
HUMAN_HOURS: tuple[float, ...] = (
    0.15, 0.08, 0.05, 0.04, 0.04, 0.06, 0.15, 0.35, 0.6, 0.8, 0.9, 0.95,
    0.85, 0.9, 0.95, 0.9, 0.85, 0.8, 0.8, 0.85, 0.9, 0.8, 0.6, 0.35,
)  # fmt: skip
WORK_HOURS: tuple[float, ...] = (
    0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.04, 0.3, 0.8, 1.0, 1.0, 0.9,
    0.7, 0.95, 1.0, 0.95, 0.8, 0.5, 0.25, 0.15, 0.1, 0.08, 0.05, 0.03,
)  # fmt: skip
FLAT_HOURS: tuple[float, ...] = (1.0,) * 24


@dataclass(frozen=True)
class SimClock:
    """Simulated time: ``t`` is seconds since ``start`` (a UNIX time), the simulation lasts ``days``.

    Personas think in ``t``; the synthetic ledger stores ``start + t``; the HTTP replay maps ``t`` to wall
    time through its ``time_scale``. Local time of day (``tz`` hours east of UTC) drives diurnal patterns.
    """

    start: float = SIM_START
    days: float = 3.0

    def __post_init__(self) -> None:
        if not self.days > 0:
            raise UserError(f"a simulation needs days > 0, got {self.days}")

    @property
    def duration(self) -> float:
        return self.days * DAY

    def hour(self, t: float, tz: float = 0.0) -> float:
        """Local hour of day in [0, 24)."""
        return ((self.start + t) / HOUR + tz) % 24.0

    def weekday(self, t: float, tz: float = 0.0) -> int:
        """Local weekday, Monday = 0 (UNIX time 0 was a Thursday)."""
        return (int(((self.start + t) / HOUR + tz) // 24) + 3) % 7

    def activity(self, t: float, profile: Sequence[float], tz: float = 0.0, weekend: float = 1.0) -> float:
        """Relative activity at ``t`` for an hourly ``profile``; ``weekend`` scales Saturday and Sunday."""
        a = profile[int(self.hour(t, tz)) % 24]
        return a * weekend if self.weekday(t, tz) >= 5 else a


def sample_times(
    rng: random.Random,
    clock: SimClock,
    n: int,
    profile: Sequence[float] = FLAT_HOURS,
    *,
    tz: float = 0.0,
    weekend: float = 1.0,
    lo: float = 0.0,
    hi: float | None = None,
) -> list[float]:
    """``n`` sorted times in ``[lo, hi)`` from the density proportional to the diurnal ``profile``
    (thinning of a uniform proposal, so exact for any profile)."""
    hi = clock.duration if hi is None else hi
    if n <= 0 or hi <= lo:
        return [lo] * max(n, 0)
    peak = max(profile) * max(1.0, weekend)
    out: list[float] = []
    while len(out) < n:
        t = rng.uniform(lo, hi)
        if rng.random() * peak <= clock.activity(t, profile, tz, weekend):
            out.append(t)
    out.sort()
    return out


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth for small means, a rounded normal beyond 50)."""
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def on_off_times(
    rng: random.Random,
    n: int,
    start: float,
    *,
    rate: float,
    on_s: tuple[float, float] = (1200.0, 3600.0),
    off_s: tuple[float, float] = (300.0, 1800.0),
) -> list[float]:
    """``n`` times of a bursty client: Poisson arrivals at ``rate``/s during on-periods, silence in
    between (parallel workers that pause, resume, hit a budget). Not tied to the time of day: machines do
    not sleep."""
    out: list[float] = []
    t = start
    while len(out) < n:
        end = t + rng.uniform(*on_s)
        while len(out) < n:
            t += rng.expovariate(rate)
            if t >= end:
                break
            out.append(t)
        t = end + rng.uniform(*off_s)
    return out


# --------------------------------------------------------------------------------------------------
# Addresses


RESIDENTIAL_NETS: tuple[str, ...] = (
    "73.15.0.0/16", "86.128.0.0/16", "92.40.0.0/16", "101.180.0.0/16", "176.24.0.0/16", "188.29.0.0/16",
    "24.5.0.0/16", "81.107.0.0/16", "2.96.0.0/16", "67.170.0.0/16", "98.33.0.0/16", "109.150.0.0/16",
    "49.180.0.0/16", "122.172.0.0/16", "190.210.0.0/16", "177.40.0.0/16", "31.48.0.0/16", "5.81.0.0/16",
    "84.65.0.0/16", "71.198.0.0/16", "174.62.0.0/16", "151.27.0.0/16", "79.140.0.0/16", "58.11.0.0/16",
)  # fmt: skip
CLOUD_NETS: tuple[str, ...] = (
    "3.80.0.0/16", "18.204.0.0/16", "34.68.0.0/16", "35.192.0.0/16", "52.14.0.0/16", "54.160.0.0/16",
    "20.42.0.0/16", "40.76.0.0/16", "104.196.0.0/16", "13.58.0.0/16",
)  # fmt: skip
CI_NETS: tuple[str, ...] = ("20.55.0.0/16", "52.225.0.0/16", "172.177.0.0/16")
UNIVERSITY_NETS: tuple[str, ...] = ("128.32.0.0/16", "171.64.0.0/16", "129.67.0.0/16", "131.111.0.0/16")
HOSTING_NETS: tuple[str, ...] = ("45.137.0.0/16", "185.220.0.0/16", "91.243.0.0/16", "193.176.0.0/16")


def random_ip(rng: random.Random, net: str) -> str:
    """A host address in ``net`` (never the network or broadcast address)."""
    n = ipaddress.ip_network(net)
    if n.num_addresses <= 2:
        return str(n.network_address)
    return str(n.network_address + rng.randrange(1, n.num_addresses - 1))


def random_subnet(rng: random.Random, net: str, prefix: int = 24) -> str:
    """A random ``/prefix`` inside ``net`` (a rented block in a hosting range)."""
    n = ipaddress.ip_network(net)
    subnets = 1 << (prefix - n.prefixlen)
    base = int(n.network_address) + rng.randrange(subnets) * (1 << (32 - prefix))
    return f"{ipaddress.IPv4Address(base)}/{prefix}"


# --------------------------------------------------------------------------------------------------
# Events and accounts


@dataclass(frozen=True)
class Event:
    """One API request of the simulation.

    ``t`` is seconds since the simulation started; ``key_index`` picks one of the account's keys;
    ``messages`` (chat) or ``prompt`` (completions) and ``params`` are what the client puts in the official
    request body (``params`` holds only what the client sets: ``max_tokens``, ``temperature``,
    ``logprobs``, ``top_logprobs``, ``logit_bias``, ``n``, ``stream``, ``stop``, ``seed``, ``user`` ...).
    ``persona`` / ``campaign`` are the ground truth, never sent; ``meta`` says where the text came from
    (strategy, template, ``copied`` for decoys), also never sent.
    """

    account: str
    key_index: int
    t: float
    client_ip: str
    endpoint: Endpoint
    params: dict[str, Any]
    persona: str
    campaign: str | None
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def body(self, model: str) -> dict[str, Any]:
        """The JSON body of the official ``/v1/chat/completions`` or ``/v1/completions`` request."""
        body: dict[str, Any] = {"model": model}
        if self.endpoint == "chat":
            body["messages"] = [dict(m) for m in self.messages or ()]
        else:
            body["prompt"] = self.prompt
        body.update(self.params)
        return body

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"

    def text(self) -> str:
        """The prompt as the gateway's ledger records it (``prompt``): chat messages through the gateway's
        own rendering (:func:`distillguard.gateway.request_model.render_chat`), so a monitor sees the same
        text whether it reads events or the ledger."""
        if self.endpoint == "chat":
            from distillguard.gateway.request_model import render_chat

            return render_chat(list(self.messages or ()), None)
        return self.prompt or ""

    def user_text(self) -> str:
        """The last user message (chat) or the prompt: what the person typed this time."""
        if self.endpoint == "chat":
            users = [m["content"] for m in self.messages or () if m.get("role") == "user"]
            return users[-1] if users else ""
        return self.prompt or ""

    def to_dict(self) -> dict[str, Any]:
        out = {
            "account": self.account,
            "key_index": self.key_index,
            "t": self.t,
            "client_ip": self.client_ip,
            "endpoint": self.endpoint,
            "params": self.params,
            "persona": self.persona,
            "campaign": self.campaign,
            "meta": self.meta,
        }
        out["messages" if self.endpoint == "chat" else "prompt"] = (
            self.messages if self.endpoint == "chat" else self.prompt
        )
        return out


@dataclass(frozen=True)
class SimAccount:
    """An account of the simulation: its ground truth and what the provider knows about it.

    ``created`` and ``key_created`` are simulated times (negative: before the simulation started); a Sybil
    campaign's accounts and keys appear within minutes of each other. ``ips`` are the addresses it uses
    (residential proxies and CI runners may use more than listed). ``spare``: registered mid-run by an
    attacker whose accounts were shut down (``monitor.simulate``).
    """

    name: str
    persona: str
    kind: Kind
    campaign: str | None
    org: str | None
    created: float
    key_created: tuple[float, ...]
    ips: tuple[str, ...]
    spare: bool = False

    @property
    def keys(self) -> int:
        return len(self.key_created)

    def label(self) -> dict[str, Any]:
        return {"persona": self.persona, "kind": self.kind, "campaign": self.campaign}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "persona": self.persona,
            "kind": self.kind,
            "campaign": self.campaign,
            "org": self.org,
            "created": self.created,
            "key_created": list(self.key_created),
            "ips": list(self.ips),
            "spare": self.spare,
        }


def account_name(rng: random.Random) -> str:
    """A label-free account name, ``u`` + 12 hex digits (collisions are checked by the scenario)."""
    return f"u{rng.getrandbits(48):012x}"


# --------------------------------------------------------------------------------------------------
# Content pools (the world)


@dataclass(frozen=True)
class Pools:
    """What the simulated users talk about: the world's Python-docs questions and corpus documents.

    ``questions`` are diverse Python-docs questions (the world's held-out and training prompts plus
    phrasings over every documented API): the coverage distiller, the Sybil campaign and the evaluation
    harness all draw from them, which is what makes the harness the hardest negative. ``documents`` are
    rendered corpus documents (title line + docstring) for the batch summariser and the coding assistant.
    ``vocab_size`` bounds logit_bias token ids; ``context_tokens`` (when known) bounds prompt and answer
    lengths so a small local model can serve every request.
    """

    questions: tuple[str, ...]
    apis: tuple[str, ...]
    documents: tuple[str, ...]
    vocab_size: int = 4096
    context_tokens: int | None = None

    def __post_init__(self) -> None:
        if len(self.questions) < 20 or not self.apis or not self.documents:
            raise UserError("the simulation needs at least 20 questions, one API and one document")

    def max_tokens(self, wanted: int) -> int:
        """``wanted`` answer tokens, capped at a quarter of the model's context when it is known."""
        if self.context_tokens is None:
            return wanted
        return max(8, min(wanted, self.context_tokens // 4))

    def doc_chars(self, wanted: int) -> int:
        """Characters of document text that fit the context next to an answer (about 2.2 chars/token)."""
        if self.context_tokens is None:
            return wanted
        return max(200, min(wanted, int(self.context_tokens * 0.5 * 2.2)))

    @classmethod
    def from_world(cls, root: str | Path) -> Pools:
        """Pools of a built world directory (``corpus.txt``, ``prompts.jsonl``, ``instructions.jsonl``,
        ``world.json``)."""
        from distillguard.world.corpus import split_documents

        root = Path(root).expanduser()
        corpus = root / "corpus.txt"
        if not corpus.is_file():
            raise UserError(f"no world at {root} (corpus.txt missing); run `distillguard world build`")
        docs = split_documents(corpus.read_text(encoding="utf-8"))
        prompts: list[str] = []
        for name in ("prompts.jsonl", "instructions.jsonl"):
            path = root / name
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        row = json.loads(line)
                        if row.get("kind") in ("api", "api_unseen") and isinstance(row.get("prompt"), str):
                            prompts.append(row["prompt"])
        vocab, context = 4096, None
        manifest = root / "world.json"
        if manifest.is_file():
            config = json.loads(manifest.read_text()).get("config", {})
            vocab = int(config.get("vocab_size", vocab))
            context = int(config["max_pos"]) if "max_pos" in config else None
        return cls._build(docs, prompts, vocab, context)

    @classmethod
    def builtin(cls, vocab_size: int = 4096, context_tokens: int | None = None) -> Pools:
        """Pools from the running interpreter's docs (the world corpus without training anything)."""
        return _builtin_pools(vocab_size, context_tokens)

    @classmethod
    def _build(cls, docs: Sequence[str], prompts: Sequence[str], vocab: int, context: int | None) -> Pools:
        titles = [d.split("\n", 1)[0].strip() for d in docs]
        apis = sorted({t for t in titles if "." in t and " " not in t})
        rng = random.Random("pools")
        questions = set(prompts)
        for api in apis:
            for template in rng.sample(QUESTION_TEMPLATES, 2):
                questions.add(template.format(api=api))
        long_docs = tuple(d for d in docs if len(d) >= 300)
        return cls(tuple(sorted(questions)), tuple(apis), long_docs or tuple(docs), vocab, context)


QUESTION_TEMPLATES: tuple[str, ...] = (
    "What does {api} do?",
    "Can you explain what {api} does?",
    "In Python, what does {api} do?",
    "What is {api} for?",
    "Briefly describe {api}.",
    "How do I use {api}?",
    "What does {api} return?",
    "When should I use {api}?",
    "What arguments does {api} take?",
    "Give an example of using {api}.",
    "What is the purpose of {api}?",
    "Explain {api}.",
)


@functools.lru_cache(maxsize=4)
def _builtin_pools(vocab_size: int, context_tokens: int | None) -> Pools:
    from distillguard.world.corpus import corpus_documents, render

    docs = [render(d) for d in corpus_documents()]
    return Pools._build(docs, [], vocab_size, context_tokens)


def load_pools(world: str | Path | None = None) -> Pools:
    """Pools of the world at ``world``; without one, the default world if it is built, else the builtin
    corpus (no model is trained for a simulation)."""
    if world is not None:
        return Pools.from_world(world)
    from distillguard.world.build import world_paths

    root = world_paths("default").root
    if (root / "corpus.txt").is_file():
        return Pools.from_world(root)
    return Pools.builtin()


# --------------------------------------------------------------------------------------------------
# Benign content


EVERYDAY: tuple[str, ...] = (
    "What's a good recipe for banana bread?",
    "How do I get rid of fruit flies in the kitchen?",
    "Is it safe to eat eggs a week past the date on the box?",
    "Can you recommend a few books like The Martian?",
    "What should I pack for a weekend hiking trip?",
    "How many cups are in a liter?",
    "Why is the sky blue?",
    "What's the best way to learn a new language as an adult?",
    "How do I politely decline a wedding invitation?",
    "Give me a simple stretching routine for back pain.",
    "What are some fun things to do in Lisbon?",
    "How do I make my sourdough starter more active?",
    "what is the capital of australia",
    "How often should I water a snake plant?",
    "Explain compound interest like I'm 12.",
    "How do noise cancelling headphones work?",
    "What's a healthy breakfast that takes 5 minutes?",
    "Can you help me write a cover letter for a barista job?",
    "Is coffee bad for you?",
    "why do cats knead blankets",
)
EVERYDAY_SLOTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("How long should I boil {x}?", ("eggs", "pasta", "potatoes", "rice", "broccoli", "corn")),
    ("Write a short {x} message for my sister.", ("birthday", "thank-you", "congratulations", "get well")),
    ("What's the difference between {x}?", (
        "weather and climate", "baking soda and baking powder", "a virus and bacteria", "RAM and storage",
        "a crocodile and an alligator", "latte and flat white")),
    ("Give me {x} ideas for a rainy Sunday.", ("three", "five", "some", "ten")),
    ("How do I {x}?", (
        "remove a coffee stain from a white shirt", "fix a squeaky door", "improve my sleep",
        "unclog a drain without chemicals", "change a bike tire", "negotiate my salary",
        "start running as a beginner", "clean a cast iron pan")),
    ("Translate '{x}' into Spanish.", ("good morning", "where is the train station", "thank you very much")),
    ("Can you suggest a name for my new {x}?", ("puppy", "kitten", "goldfish", "podcast", "band")),
)  # fmt: skip
CASUAL_PYTHON: tuple[str, ...] = (
    "how do i {x} in python",
    "How can I {x} in Python?",
    "python: {x}?",
    "whats the easiest way to {x} with python",
)
PY_TASKS: tuple[str, ...] = (
    "read a csv file", "reverse a list", "sort a dict by value", "remove duplicates from a list",
    "get the current date", "check if a file exists", "merge two dictionaries", "split a string by commas",
    "download a web page", "count words in a text", "make a random password", "flatten a nested list",
    "convert a string to a number", "write json to a file", "measure how long a function takes",
)  # fmt: skip
CASUAL_IDENTITY: tuple[str, ...] = (
    "are you ChatGPT?",
    "who made you",
    "what model are you?",
    "Are you better than ChatGPT?",
    "hi! what's your name?",
    "are you a real person",
)
FOLLOW_UPS: tuple[str, ...] = (
    "thanks! can you make it shorter?",
    "Can you give me an example?",
    "what about on a budget?",
    "ok and why is that?",
    "Could you explain that more simply?",
    "great, thank you",
)
CANNED_REPLIES: tuple[str, ...] = (
    "Sure! Here is a short answer with the key points.",
    "Good question. In short: it depends, but the usual advice is below.",
    "Here are a few options you could try.",
)


def casual_text(rng: random.Random, pools: Pools) -> tuple[str, str]:
    """One casual user question and its kind (``everyday``, ``python``, ``docs``, ``identity``)."""
    r = rng.random()
    if r < 0.04:
        return rng.choice(CASUAL_IDENTITY), "identity"
    if r < 0.45:
        if rng.random() < 0.5:
            return rng.choice(EVERYDAY), "everyday"
        template, slots = rng.choice(EVERYDAY_SLOTS)
        return template.format(x=rng.choice(slots)), "everyday"
    if r < 0.8:
        return rng.choice(CASUAL_PYTHON).format(x=rng.choice(PY_TASKS)), "python"
    q = rng.choice(pools.questions)
    return (q.lower().rstrip("?") if rng.random() < 0.3 else q), "docs"


CODE_SNIPPETS: tuple[str, ...] = (
    'import {mod}\n\n\ndef {fn}(path):\n    """{doc}"""\n    with open(path) as fh:\n        return {api}(',
    "import {mod}\n\n\nclass {cls}:\n    def __init__(self, items):\n        self.items = list(items)\n\n"
    "    def {fn}(self):\n        return {api}(",
    'from {mod} import *\n\n\ndef {fn}(data, *, strict=False):\n    """{doc}"""\n    if not data:\n'
    "        return None\n    result = ",
    "import {mod}\nimport logging\n\nlog = logging.getLogger(__name__)\n\n\ndef {fn}(values):\n"
    "    log.debug('processing %d values', len(values))\n    out = []\n    for v in values:\n        ",
    "def test_{fn}():\n    import {mod}\n\n    result = {api}(",
    "# {doc}\nimport {mod}\n\nrows = []\nfor line in open('input.txt'):\n    line = line.strip()\n"
    "    if not line:\n        continue\n    ",
    "import {mod}\n\n\nasync def {fn}(session, urls):\n    results = []\n    for url in urls:\n        ",
)
CODE_CHAT: tuple[str, ...] = (
    "Why does this raise an exception?\n```python\n{code}\n```",
    "Refactor this to be more readable:\n```python\n{code}\n```",
    "Write a unit test for this function:\n```python\n{code}\n```",
    "What is the time complexity of this code?\n```python\n{code}\n```",
    "Add type hints and a docstring:\n```python\n{code}\n```",
    "How do I use {api} correctly here?\n```python\n{code}\n```",
)
VERBS = ("load", "parse", "compute", "build", "fetch", "render", "merge", "validate", "collect", "format")
NOUNS = ("config", "rows", "records", "report", "payload", "index", "cache", "summary", "tokens", "stats")
CLASSES = ("Inventory", "ReportBuilder", "TaskQueue", "Cache", "Ledger", "Pipeline", "Registry")
DOCS_ = ("Load and normalise the input.", "Return the merged result.", "Helper used by the CLI.", "")


def code_text(rng: random.Random, pools: Pools) -> tuple[str, str]:
    """A code-completion prefix (an editor's context) and the API it is about."""
    api = rng.choice(pools.apis)
    mod = api.split(".", 1)[0]
    return rng.choice(CODE_SNIPPETS).format(
        mod=mod,
        api=api,
        fn=f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}",
        cls=rng.choice(CLASSES),
        doc=rng.choice(DOCS_) or f"{rng.choice(VERBS).title()} the {rng.choice(NOUNS)}.",
    ), api


SUPPORT_SYSTEM = (
    "You are the support assistant of Lumen Cloud Storage. Answer only questions about Lumen accounts, "
    "plans, billing, syncing and sharing. Be friendly and concise. If you do not know, offer to open a "
    "ticket with a human agent."
)
SUPPORT_FAQ: tuple[str, ...] = (
    "How do I reset my password?",
    "My files are not syncing on {device}, what should I do?",
    "How do I upgrade to the {plan} plan?",
    "Can I get a refund for order {order}?",
    "How much storage does the {plan} plan include?",
    "How do I share a folder with someone who has no account?",
    "Why was I charged twice this month?",
    "How do I cancel my subscription?",
    "Is my data encrypted?",
    "How do I recover a deleted file?",
    "Can I use Lumen on {device}?",
    "How do I change the email on my account?",
    "Where can I download my invoice for order {order}?",
    "The app says 'storage full' but I deleted files. Why?",
    "How do I turn on two-factor authentication?",
)
SUPPORT_PREFIXES = ("", "", "Hi, ", "Hello! ", "hi ", "Quick question - ", "Help! ")
DEVICES = ("my iPhone", "Android", "Windows 11", "my Mac", "Linux", "my iPad", "a Chromebook")
PLANS = ("Basic", "Plus", "Pro", "Family", "Business")

SUMMARY_INSTRUCTIONS = "Summarize the following document in three bullet points.\n\n"
SUMMARY_SYSTEM = "You are a summarization engine. Output exactly three concise bullet points."

EVAL_SYSTEM = "Answer the question concisely and accurately."

RESEARCH_TEMPLATES: tuple[str, ...] = (
    "Can you explain step by step how {api} works, with a small example?",
    "Walk me through, step by step, what happens internally when I call {api}.",
    "I'm writing a tutorial. Explain {api} step by step for students who know basic Python.",
    "Derive, step by step, the complexity of {api} and justify each step.",
    "Compare {api} and {api2} step by step: when would you use each?",
    "Explain the reasoning behind the design of {api}. Go step by step.",
    "What are common mistakes with {api}? Explain each one and why it happens.",
    "Explain the difference between a shallow and a deep copy step by step, using {api} as the example.",
)


# --------------------------------------------------------------------------------------------------
# Personas


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
    """

    name = "eval_harness"

    def __init__(self, pools: Pools, *, runs_per_day: float = 1.5, **kwargs: Any):
        super().__init__(pools, **kwargs)
        self.runs_per_day = runs_per_day

    def generate(self, rng: random.Random, clock: SimClock) -> PersonaTraffic:
        accounts, events = [], []
        for _ in range(self.accounts):
            created = _long_ago(rng, clock)
            acct = self._account(rng, created=created, ips=[], org=f"mlplatform-{rng.getrandbits(24):06x}")
            bench = rng.sample(self.pools.questions, min(self.queries, len(self.pools.questions)))
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
                    messages = [
                        {"role": "system", "content": EVAL_SYSTEM},
                        {"role": "user", "content": question},
                    ]
                    params = {"max_tokens": self.pools.max_tokens(128), "temperature": 0.0, "seed": 1234}
                    events.append(self._event(acct, t, ip, messages=messages, params=params, run=r, item=q))
                    t += rng.expovariate(1 / 0.3)
            accounts.append(replace(acct, ips=tuple(ips)))
        events.sort(key=lambda e: e.t)
        return PersonaTraffic(accounts, events)


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


# --------------------------------------------------------------------------------------------------
# Scales and scenarios


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

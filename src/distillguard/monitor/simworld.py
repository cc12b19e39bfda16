"""The simulated world the monitor's personas live in (:mod:`distillguard.monitor.personas`): a clock with
time-of-day and weekday activity, address blocks, API events and accounts, and the content pools (the
world's questions and APIs, casual chat, code, support FAQs, documents) that benign traffic is made of.
Pure: no I/O beyond reading a world's pools, no clock, no network.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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

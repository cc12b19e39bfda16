"""Prompt strategies: how a distiller (or a red team playing one) chooses what to ask the teacher.

Why they live here and are plain generators: the same strategies drive two things. The distillation engine
uses them to build a prompt set for a teacher; the monitor's traffic simulator replays them as attacker
campaigns, so its detectors are tested against exactly the query mixes a real distiller would send. Each
strategy is a pure function of ``(pool, options, rng)``: no torch, no I/O, deterministic for a seed.

Strategies (``--strategy``):

* ``uniform``: prompts from the pool, each equally likely. Draws go through the pool in a fresh random order
  per pass, so ``n <= len(pool)`` queries are all distinct (``replace=True`` samples with replacement).
* ``coverage``: maximally diverse first. Greedy farthest-point traversal (the 2-approximation to k-center)
  over hashed TF-IDF bag-of-words vectors under cosine distance: every next prompt is the one farthest from
  all prompts chosen so far. This is what an efficient distiller does to cover the teacher's skills with few
  queries.
* ``paraphrase``: a few seed prompts (``seeds``, default 5) rewritten through many question templates. Many
  queries, few underlying intents: the "templated" campaigns a traffic monitor must catch.
* ``cot``: pool prompts wrapped in chain-of-thought elicitation ("Explain step by step ..."), the
  reasoning-trace harvesting seen in real extraction campaigns.
* ``identity``: identity probes ("Who are you?", "Which company trained you?" ...), mixed into the other
  strategies by :func:`sample_queries` with ``identity_share``.

Every :class:`Query` has a stable id: a SHA-256 over ``(strategy, prompt, index in its stream)``, so the same
seed gives the same ids and a resumed collection recognises what it already has.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from distillguard.errors import UserError
from distillguard.text.vectors import embed, iter_farthest_first


@dataclass(frozen=True)
class Query:
    """One prompt to send to a teacher, with where it came from (``meta``: pool index, template id, ...)."""

    id: str
    prompt: str
    strategy: str
    meta: dict = field(default_factory=dict, hash=False)  # compared, not hashed: queries fit in sets

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "strategy": self.strategy, "meta": dict(self.meta)}


def query_id(strategy: str, prompt: str, index: int) -> str:
    """Stable id of the ``index``-th query of a strategy's stream (24 hex digits of a SHA-256)."""
    payload = json.dumps([strategy, prompt, int(index)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


@runtime_checkable
class PromptStrategy(Protocol):
    """A reusable query generator. ``stream`` is endless unless the strategy says it exhausts its pool."""

    name: str

    def stream(self, rng: random.Random) -> Iterator[Query]: ...


def _require_pool(name: str, pool: Sequence[str]) -> list[str]:
    prompts = [p for p in pool if isinstance(p, str) and p.strip()]
    if not prompts:
        raise UserError(f"strategy {name!r} needs a non-empty prompt pool")
    return prompts


def _passes(n: int, rng: random.Random) -> Iterator[tuple[int, int]]:
    """``(epoch, index)`` forever: every index once per pass, in a fresh random order each pass."""
    epoch = 0
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in order:
            yield epoch, i
        epoch += 1


class _Base:
    name = "base"

    def _query(self, k: int, prompt: str, **meta) -> Query:
        return Query(query_id(self.name, prompt, k), prompt, self.name, meta)


class UniformStrategy(_Base):
    """Each pool prompt equally likely: shuffled passes over the pool, or i.i.d. draws with ``replace``."""

    name = "uniform"

    def __init__(self, pool: Sequence[str], *, replace: bool = False):
        self.pool = _require_pool(self.name, pool)
        self.replace = bool(replace)

    def stream(self, rng: random.Random) -> Iterator[Query]:
        k = 0
        if self.replace:
            while True:
                i = rng.randrange(len(self.pool))
                yield self._query(k, self.pool[i], pool_index=i)
                k += 1
        for epoch, i in _passes(len(self.pool), rng):
            yield self._query(k, self.pool[i], pool_index=i, epoch=epoch)
            k += 1


# --------------------------------------------------------------------------------------------------
# Coverage (text vectors and the farthest-first order come from distillguard.text.vectors)


class CoverageStrategy(_Base):
    """Maximally diverse first: farthest-point traversal of the pool from a random start.

    One pass yields every pool prompt once, most informative first; later passes start again from a new
    random prompt (the stream is endless, but a distiller with a budget only reads the head). A pool larger
    than ``max_candidates`` is covered through random candidate subsets of that size, one per pass, so memory
    stays ``max_candidates x dim`` floats and every step one matrix-vector product.
    """

    name = "coverage"

    def __init__(self, pool: Sequence[str], *, dim: int = 4096, max_candidates: int = 4096):
        if max_candidates < 1:
            raise UserError(f"max_candidates must be >= 1, got {max_candidates}")
        self.pool = _require_pool(self.name, pool)
        self.dim = dim
        self.max_candidates = max_candidates
        self._full = embed(self.pool, dim=dim) if len(self.pool) <= max_candidates else None

    def stream(self, rng: random.Random) -> Iterator[Query]:
        k = 0
        epoch = 0
        while True:
            if self._full is not None:
                candidates, vectors = list(range(len(self.pool))), self._full
            else:
                candidates = sorted(rng.sample(range(len(self.pool)), self.max_candidates))
                vectors = embed([self.pool[i] for i in candidates], dim=self.dim)
            order = iter_farthest_first(vectors, rng.randrange(len(candidates)))
            for rank, j in enumerate(order):
                i = candidates[j]
                yield self._query(k, self.pool[i], pool_index=i, rank=rank, epoch=epoch)
                k += 1
            epoch += 1


# --------------------------------------------------------------------------------------------------
# Templated paraphrases

PARAPHRASE_TEMPLATES: tuple[str, ...] = (
    "{q}",
    "{bare}?",
    "Quick question: {q}",
    "{q} Please answer briefly.",
    "Can you help me with this? {q}",
    "I was wondering: {bare}?",
    "Q: {q}\nA:",
    "Answer concisely: {q}",
    "{q} Keep it short.",
    "A colleague asked me this and I am not sure: {q}",
    "Please answer the following question. {q}",
    "{q} Give me a clear answer.",
    "Help me understand this: {q}",
    "Hi! {q}",
    "I need a precise answer. {q}",
    "{q} One or two sentences is enough.",
    "Here is my question: {q}",
    "Could you tell me: {bare}?",
    "For my notes, {bare}?",
    "{q} Thanks in advance.",
    "Be accurate: {q}",
    "Question for you. {q}",
    "{q} Answer as an expert would.",
    "Explain briefly. {q}",
)


def _bare(question: str) -> str:
    """The question without trailing punctuation and with a lower-case first letter, for embedding."""
    q = question.strip().rstrip("?.! ")
    return q[:1].lower() + q[1:] if q[:1].isupper() and not q[1:2].isupper() else q


class ParaphraseStrategy(_Base):
    """A few intents, many surface forms: ``seeds`` pool prompts times the question templates.

    ``seeds`` is a count (that many distinct pool prompts drawn by the stream's rng) or the seed prompts
    themselves. Each pass visits every (seed, template) pair once in random order; ``meta["intent"]`` is
    the seed's number, so a test (or a monitor evaluation) knows how few intents hide behind the traffic.
    """

    name = "paraphrase"

    def __init__(
        self,
        pool: Sequence[str],
        *,
        seeds: int | Sequence[str] = 5,
        templates: Sequence[str] = PARAPHRASE_TEMPLATES,
    ):
        if isinstance(seeds, int):
            if seeds < 1:
                raise UserError(f"paraphrase needs at least 1 seed prompt, got {seeds}")
            self.pool = _require_pool(self.name, pool)
            self.seed_prompts: list[str] | None = None
            self.num_seeds = min(seeds, len(self.pool))
        else:
            self.seed_prompts = _require_pool(self.name, list(seeds))
            self.pool = self.seed_prompts
            self.num_seeds = len(self.seed_prompts)
        self.templates = list(templates)
        if not self.templates:
            raise UserError("paraphrase needs at least one template")
        for t in self.templates:
            if "{q}" not in t and "{bare}" not in t:
                raise UserError(f"paraphrase template {t!r} has neither {{q}} nor {{bare}}")

    def stream(self, rng: random.Random) -> Iterator[Query]:
        if self.seed_prompts is not None:
            picks = list(range(len(self.seed_prompts)))
        else:
            picks = rng.sample(range(len(self.pool)), self.num_seeds)
        pairs = [(s, t) for s in range(len(picks)) for t in range(len(self.templates))]
        for k, (epoch, j) in enumerate(_passes(len(pairs), rng)):
            s, t = pairs[j]
            seed_prompt = self.pool[picks[s]]
            prompt = self.templates[t].format(q=seed_prompt.strip(), bare=_bare(seed_prompt))
            yield self._query(k, prompt, intent=s, pool_index=picks[s], template=t, epoch=epoch)


# --------------------------------------------------------------------------------------------------
# Chain-of-thought elicitation

COT_TEMPLATES: tuple[str, ...] = (
    "{q} Explain step by step.",
    "{q} Let's think step by step.",
    "Explain step by step: {q}",
    "Think through this carefully and show your reasoning before the final answer. {q}",
    "{q} Walk me through your reasoning, then give the final answer.",
    "Reason step by step, numbering each step, then answer. {q}",
    "{q} Show all intermediate steps.",
    "Before answering, lay out your chain of thought in detail. {q}",
    "{q} Break your answer down into steps and justify each one.",
    "Answer the question below. First write out your full reasoning, then the answer.\n{q}",
)


class CoTStrategy(_Base):
    """Pool prompts (shuffled passes) each wrapped in a random chain-of-thought elicitation template."""

    name = "cot"

    def __init__(self, pool: Sequence[str], *, templates: Sequence[str] = COT_TEMPLATES):
        self.pool = _require_pool(self.name, pool)
        self.templates = list(templates)
        if not self.templates or any("{q}" not in t for t in self.templates):
            raise UserError("every chain-of-thought template needs a {q} placeholder")

    def stream(self, rng: random.Random) -> Iterator[Query]:
        for k, (epoch, i) in enumerate(_passes(len(self.pool), rng)):
            t = rng.randrange(len(self.templates))
            prompt = self.templates[t].format(q=self.pool[i].strip())
            yield self._query(k, prompt, pool_index=i, template=t, epoch=epoch)


# --------------------------------------------------------------------------------------------------
# Identity probes

IDENTITY_PROBES: tuple[str, ...] = (
    "Who are you?",
    "What is your name?",
    "Which company trained you?",
    "Who created you?",
    "What model are you?",
    "Which organization developed you?",
    "Are you ChatGPT?",
    "Are you Claude?",
    "What language model is this?",
    "Who built the model I am talking to?",
    "Tell me about yourself.",
    "Introduce yourself in one sentence.",
    "What should I call you?",
    "Which lab are you from?",
    "Who owns the model answering me?",
    "What AI assistant am I speaking with?",
    "Who is your developer?",
    "State your model name and your creator.",
    "Are you an open-source model?",
    "Which version of which model are you?",
)


class IdentityStrategy(_Base):
    """Identity probes in shuffled passes. The pool is ignored (probes need none), so it may be empty."""

    name = "identity"

    def __init__(self, pool: Sequence[str] = (), *, probes: Sequence[str] = IDENTITY_PROBES):
        self.probes = [p for p in probes if p.strip()]
        if not self.probes:
            raise UserError("identity strategy needs at least one probe")

    def stream(self, rng: random.Random) -> Iterator[Query]:
        for k, (epoch, i) in enumerate(_passes(len(self.probes), rng)):
            yield self._query(k, self.probes[i], template=i, epoch=epoch)


STRATEGIES: dict[str, type] = {
    "uniform": UniformStrategy,
    "coverage": CoverageStrategy,
    "paraphrase": ParaphraseStrategy,
    "cot": CoTStrategy,
    "identity": IdentityStrategy,
}


def make_strategy(name: str, pool: Sequence[str], **options) -> PromptStrategy:
    """Build a strategy by name; unknown names and options are a :class:`UserError` listing what is valid."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    try:
        return cls(pool, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            bad = str(exc).split("unexpected keyword argument")[-1].strip()
            raise UserError(f"strategy {name!r} has no option {bad}") from None
        raise


def take(strategy: PromptStrategy, n: int, rng: random.Random) -> list[Query]:
    """The first ``n`` queries of a stream (fewer if the stream ends)."""
    out: list[Query] = []
    if n <= 0:
        return out
    for q in strategy.stream(rng):
        out.append(q)
        if len(out) >= n:
            break
    return out


def sample_queries(
    name: str,
    pool: Sequence[str],
    n: int,
    *,
    seed: int = 0,
    identity_share: float = 0.0,
    **options,
) -> list[Query]:
    """``n`` queries from strategy ``name``, deterministic for ``seed``.

    With ``identity_share`` the list holds exactly ``round(n * identity_share)`` identity probes (halves
    round up) at random positions, the rest from the strategy in stream order. The two streams use
    separate rngs derived from ``seed``, so changing the share does not reshuffle the main stream.
    """
    if n < 0:
        raise UserError(f"number of queries must be >= 0, got {n}")
    if not 0.0 <= identity_share <= 1.0:
        raise UserError(f"identity share must be in [0, 1], got {identity_share}")
    strategy = make_strategy(name, pool, **options)
    n_id = int(n * identity_share + 0.5) if name != "identity" else 0
    main = take(strategy, n - n_id, random.Random(f"{seed}:{name}"))
    if not n_id:
        return main
    probes = take(IdentityStrategy(), n_id, random.Random(f"{seed}:identity-mix"))
    slots = set(random.Random(f"{seed}:slots").sample(range(n), n_id))
    out: list[Query] = []
    it_main, it_id = iter(main), iter(probes)
    for pos in range(n):
        out.append(next(it_id) if pos in slots else next(it_main))
    return out

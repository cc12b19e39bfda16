"""What harvesting campaigns send: the text side of the attacks in the second held-out generator.

A distiller wants the model's behaviour over its whole capability space, so every campaign works through a
*work list*: each API of the world crossed with a facet (what it does, an example, its parameters, its
pitfalls, a comparison, a walk-through), shuffled, plus general tasks (arithmetic word problems, logic
puzzles, small programs, short writing) that make a student useful beyond the API domain. How the items
are worded is what differs between campaigns: one fixed family of templates (cheap Sybil farms), demands
for visible reasoning (trace harvesting), a large paraphrase grammar with casual openers (campaigns that
try to look like people), fixed personal "voices" (a slow campaign whose accounts should not resemble each
other), benchmark-style items (a fake evaluation harness), a study app's chat (a fake product), and
system-prompt sweeps with scripted follow-up turns (a dialogue data vendor).
"""

from __future__ import annotations

import random

from distillguard.heldout2 import words
from distillguard.heldout2.texts import module, sloppy

FACETS = ("explain", "example", "params", "pitfalls", "compare", "steps")


def work_list(apis: list[str], rng: random.Random, facets: tuple[str, ...] = FACETS) -> list[tuple[str, str]]:
    """Every (API, facet) pair once, in a shuffled order (facets interleaved so early items cover APIs)."""
    order = sorted(apis)
    rng.shuffle(order)
    items = []
    for facet in facets:
        batch = [(a, facet) for a in order]
        rng.shuffle(batch)
        items += batch
    return items


class Cursor:
    """Deals a campaign's work list out to its accounts (round robin) and cycles when it runs out."""

    def __init__(self, items: list[tuple[str, str]], shards: int) -> None:
        self.items = items or [("json.dumps", "explain")]
        self.shards = max(1, shards)
        self.pos = [0] * self.shards

    def next(self, shard: int) -> tuple[str, str]:
        s = shard % self.shards
        i = (self.pos[s] * self.shards + s) % len(self.items)
        self.pos[s] += 1
        return self.items[i]


# -- general tasks -------------------------------------------------------------------------------------------

_SPECS = (
    "returns the n-th Fibonacci number iteratively",
    "checks whether a string is a palindrome",
    "merges overlapping intervals",
    "parses a duration like '1h30m' into seconds",
    "groups words that are anagrams of each other",
    "computes a moving average over a list",
    "validates a Sudoku board",
    "converts a Roman numeral to an integer",
    "finds the longest common prefix of a list of strings",
    "implements binary search",
    "counts the islands in a grid of 0s and 1s",
    "serialises a binary tree to a string",
)


def general_task(rng: random.Random) -> str:
    kind = rng.randrange(5)
    a, b, c, d = rng.randint(2, 12), rng.randint(3, 40), rng.randint(2, 9), rng.randint(2, 15)
    if kind == 0:
        return (
            f"If {a} workers build {b} chairs in {c} days, how many chairs do {d} workers build in "
            f"{c + rng.randint(1, 5)} days at the same rate?"
        )
    if kind == 1:
        names = rng.sample(words.FIRST, 4)
        n0, n1, n2, n3 = (x.title() for x in names)
        return (
            f"{n0} is taller than {n1}. {n2} is shorter than {n1} but taller than {n3}. "
            f"Who is the second tallest?"
        )
    if kind == 2:
        return f"Write a Python function that {rng.choice(_SPECS)}."
    if kind == 3:
        return f"What is the sum of all multiples of {c} or {c + 2} below {b * 25}?"
    return (
        f"Write a {rng.randint(3, 6)}-sentence explanation of {rng.choice(words.CONCEPTS)} for a newsletter."
    )


# -- fixed template families (Sybil farms) -------------------------------------------------------------------

BURST_TEMPLATES = (
    "Explain {api} in detail. Think step by step: first describe what it does, then its parameters, then "
    "give an example, and finally list common pitfalls.",
    "Give a thorough explanation of {api}: purpose, parameters, return value, example, pitfalls. Reason step "
    "by step.",
    "Step by step, explain {api}: what it does, its arguments, what it returns, an example, and mistakes to "
    "avoid.",
)
BURST_GENERAL = "Solve this step by step and show all work: {task}"

RESI_TEMPLATES = (
    "Walk me through {api}. What does it do, what does it take, and what does it return? Include an example.",
    "I need a complete guide to {api}, including an example and the edge cases.",
    "Please explain how {api} works and show a short example of using it correctly.",
    "What is {api} in Python? Explain the parameters and give a realistic example.",
    "Describe {api} thoroughly: behaviour, arguments, return value, and typical mistakes.",
    "Can you explain {api} with a worked example and the reasoning behind it?",
)

# -- reasoning traces ----------------------------------------------------------------------------------------

COT_SYSTEMS = (
    "You are a meticulous expert. Before answering, write out your complete step-by-step reasoning inside "
    "<reasoning> tags. Then give the final answer after 'Final answer:'.",
    "Think carefully. Show every intermediate step of your thinking, numbered, before you state the answer. "
    "Never skip steps, even obvious ones.",
)
_COT_FACET = {
    "explain": "Explain precisely how {api} behaves. Reason through each argument and edge case.",
    "example": "Construct an example that uses {api}, and reason about what it prints and why.",
    "params": "Reason step by step about every parameter of {api} and what happens for unusual values.",
    "pitfalls": "Think through the ways a programmer can misuse {api}, and explain why each one fails.",
    "compare": "Compare {api} with {api2}. Reason about when each is the better choice.",
    "steps": "Trace, step by step, what happens internally when {api} is called.",
}


def cot(rng: random.Random, api: str, facet: str, other: str) -> str:
    if rng.random() < 0.3:
        return general_task(rng) + "\nShow your full reasoning."
    return _COT_FACET[facet].format(api=api, api2=other)


# -- a paraphrase grammar that tries to read like people -----------------------------------------------------

_OPENERS = (
    "",
    "",
    "Quick question: ",
    "Hey, ",
    "I'm working on a script and ",
    "So ",
    "Hi! ",
    "Random thing I've been wondering: ",
    "For a project at work, ",
    "ok so ",
    "Sorry if this is basic, ",
)
_CORES = {
    "explain": (
        "what does {api} actually do?",
        "can you explain {api}?",
        "how does {api} work?",
        "i'm not sure i get {api}, could you break it down?",
        "what is {api} for?",
    ),
    "example": (
        "could you show me how to use {api} in a realistic example?",
        "what's a good example of {api}?",
        "can I see {api} used in real code?",
    ),
    "params": (
        "what are the arguments to {api} and what do they do?",
        "which parameters does {api} take?",
        "what does each argument of {api} mean?",
    ),
    "pitfalls": (
        "what are common mistakes people make with {api}?",
        "any gotchas with {api}?",
        "what should I watch out for when using {api}?",
    ),
    "compare": (
        "how does {api} compare to {api2}?",
        "when should I pick {api} over {api2}?",
        "{api} or {api2}, which one and why?",
    ),
    "steps": (
        "walk me through what happens when I call {api}",
        "explain step by step what {api} does",
        "what happens under the hood with {api}?",
    ),
}
_DETAILS = (
    "",
    "",
    " Please be thorough.",
    " Explain your reasoning.",
    " A detailed answer would help.",
    " Include an example.",
    " Go step by step.",
    " Don't skip the details.",
)
_CLOSERS = ("", "", " Thanks!", " thx", " Appreciate it.", " cheers")


def paraphrase(rng: random.Random, api: str, facet: str, other: str) -> str:
    core = rng.choice(_CORES[facet]).format(api=api, api2=other)
    text = rng.choice(_OPENERS) + core + rng.choice(_DETAILS) + rng.choice(_CLOSERS)
    text = text[0].upper() + text[1:]
    return sloppy(rng, text, 0.5)


FOLLOWUPS = (
    "Can you show an example of that?",
    "Why is that?",
    "What would go wrong if I used it incorrectly?",
    "How would you explain that to a beginner?",
    "Can you summarize that in two sentences?",
    "What's an alternative approach?",
    "Can you make the example more complex?",
    "What are the edge cases?",
    "Could you rewrite that more formally?",
)

# -- fixed voices (a slow campaign whose accounts must not look alike) ---------------------------------------

VOICES = (
    "What is {api} and when would I use it? Please explain thoroughly.",
    "Can you give me a detailed explanation of {api} with an example?",
    "Explain {api} step by step, including edge cases.",
    "I'd like to understand {api} deeply: what it does, its arguments and its return value.",
    "Teach me {api} as if I were a junior developer, with code.",
    "Describe the behaviour of {api} precisely, including errors it can raise.",
    "How does {api} work? Reason it through carefully.",
    "Give me a complete reference-style explanation of {api}.",
    "What problems does {api} solve? Show a worked example.",
    "break down {api} for me - purpose, parameters, pitfalls",
    "Write a short tutorial on {api}.",
    "Explain {api} and compare it with a similar function from the standard library.",
)

# -- benchmark-shaped items (a fake evaluation harness) ------------------------------------------------------

_CATEGORIES = {
    "explain": "semantics",
    "example": "usage",
    "params": "signatures",
    "pitfalls": "robustness",
    "compare": "comparison",
    "steps": "execution",
}
_BENCH_Q = {
    "explain": "Describe the behaviour of {api}.",
    "example": "Write a minimal, correct program that demonstrates {api}.",
    "params": "List the parameters of {api} and explain the effect of each.",
    "pitfalls": "Identify common errors when calling {api} and how to avoid them.",
    "compare": "Contrast {api} with {api2}.",
    "steps": "Explain what happens, in order, when {api} is invoked.",
}


def bench_item(qid: str, api: str, facet: str, other: str, rng: random.Random) -> str:
    question = _BENCH_Q[facet].format(api=api, api2=other) if rng.random() > 0.2 else general_task(rng)
    return (
        f"### Question {qid}\nCategory: {_CATEGORIES[facet]}\n\n{question}\n\n### Instructions\n"
        "Provide a complete answer. Explain your reasoning step by step before giving the final answer."
    )


# -- a study app's chat (a fake product) ---------------------------------------------------------------------

STUDY_SYSTEM = (
    "You are a friendly study buddy for students learning to code and preparing for exams. Explain clearly, "
    "show your reasoning step by step, and end with a short example."
)
_STUDY = {
    "explain": ("hi! can u explain {api} for my class", "what is {api}?? we have a quiz tomorrow"),
    "example": ("can you show me an example with {api}", "example of {api} please"),
    "params": ("what do the arguments of {api} do", "i dont get the parameters of {api}"),
    "pitfalls": ("why does {api} give me errors sometimes", "what mistakes do people make with {api}"),
    "compare": ("difference between {api} and {api2}?", "is {api} better than {api2}"),
    "steps": ("how does {api} work step by step", "explain {api} step by step pls"),
}


def study_question(rng: random.Random, api: str, facet: str, other: str) -> str:
    if rng.random() < 0.25:
        return sloppy(rng, general_task(rng), 0.6)
    return rng.choice(_STUDY[facet]).format(api=api, api2=other)


# -- system-prompt sweeps (a dialogue data vendor) -----------------------------------------------------------

PERSONAS = (
    "You are a patient Python tutor for beginners.",
    "You are a senior backend engineer reviewing code.",
    "You are a concise assistant that answers in bullet points.",
    "You are a helpful assistant.",
    "You are a data scientist explaining things to a product manager.",
    "You are a friendly assistant for a bank's customers.",
    "You are an expert technical writer.",
    "You are a strict but fair programming instructor.",
    "You are a cheerful assistant who uses simple words.",
    "You are a security-minded software architect.",
    "You answer like a university lecturer.",
    "You are a helpful assistant. Always explain your reasoning.",
    "You are a coding assistant inside an IDE.",
    "You are a mentor for people switching careers into software.",
    "You are a math tutor.",
    "You are an assistant that writes documentation for internal tools.",
)


def dialogue_opening(rng: random.Random, api: str, facet: str, other: str) -> str:
    if rng.random() < 0.35:
        return general_task(rng)
    return (
        paraphrase(rng, api, facet, other)
        if rng.random() < 0.4
        else _COT_FACET[facet].format(api=api, api2=other)
    )


# -- short prefixes for logprob reads ------------------------------------------------------------------------


def logprob_prefix(rng: random.Random, api: str) -> str:
    mod = module(api)
    return rng.choice(
        (
            f"{api}(",
            f"The function {api} returns",
            f"import {mod.split('.')[0]}\n{api}",
            f"# {api}\n",
            f"{api} is used to",
            f"Q: What does {api} do?\nA:",
        )
    )

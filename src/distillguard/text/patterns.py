"""Request patterns shared by the monitor (features) and the countermeasures: pure ``re``, no numpy.

The strings are RE2-compatible: the monitor runs the same ones in Arrow kernels and in Python's ``re``.
"""

from __future__ import annotations

import re

# asks for step-by-step reasoning (chain of thought) in the answer
COT_PATTERN = (
    r"step[- ]by[- ]step|chain[- ]of[- ]thought|show (?:your|all|the) (?:full |complete )?(?:reasoning|work|"
    r"intermediate steps|steps)|(?:walk|talk|take) me through (?:your|the) (?:reasoning|thinking|steps)|"
    r"think (?:through|about) (?:this|it) carefully|reason(?:ing)? (?:step|carefully)|lay out your|"
    r"(?:write|spell) out your (?:full )?reasoning|justify each|numbering each step|"
    r"break (?:your answer|it|this) down into steps|your (?:full )?reasoning before|"
    r"before (?:giving )?the final answer|let'?s think|"
    # the model's own reasoning asked for as part of the answer, where the request ends a clause ("... with
    # your reasoning.", ", reasoning included", "explain your reasoning:"); not "the reasoning behind a
    # design" or "I don't understand your reasoning here", which are questions about the subject
    r"\b(?:with|and|include|including|explain|show|give|share) (?:me )?(?:your|careful|detailed|full|"
    r"complete|clear) reasoning(?:[.!?:)]|$)|(?:^|[,(] ?)reasoning included(?:[.!?:)]|$)|"
    r"\b(?:show|share|explain|describe|walk me through) (?:me )?your (?:full )?thought process"
)
# asks the model who it is, who made it, or what it was told (its system prompt: a probe of the deployment);
# a question, not an instruction about the user's own model ("pass your model name to from_pretrained")
IDENTITY_PATTERN = (
    r"who (?:are you|created you|made you|built (?:you|the model)|trained you|owns the model|is your "
    r"(?:developer|creator|maker))|what(?:'s| is) your (?:exact |full |real |actual )?(?:name|model)|"
    r"(?:what(?:'s| is)|reveal|repeat) your (?:system prompt|hidden instructions|initial instructions)|"
    r"do you have (?:a|any) (?:system prompt|hidden instructions)|which (?:company|organi[sz]ation|lab) "
    r"(?:trained|developed|built|made|created|are you|owns)|what (?:model|language model|ai assistant|"
    r"ai model|llm) (?:are you|is this|am i (?:talking|speaking) (?:to|with))|are you (?:chatgpt|claude|gpt|"
    r"gemini|llama|an open[- ]source model|a real person)|introduce yourself|tell me about yourself|what "
    r"should i call you|(?:state|tell me) your (?:model )?name|which version of which model"
)
# A procedure asked for or offered ("step-by-step instructions", "a step-by-step guide") is a how-to, not the
# model's reasoning: it is read out of a text before COT_PATTERN, so it neither makes a reasoning request
# (a support bot's earlier reply "Would you like step-by-step instructions?" replayed in its history) nor
# hides one (whatever else the text asks is still read). Case-insensitive inline, as Arrow's replace takes it.
PROCEDURE_PATTERN = (
    r"(?i)step[- ]by[- ]step (?:instructions?|guides?|directions|tutorials?|walk-?throughs?|procedures?)"
)
COT_RE = re.compile(COT_PATTERN, re.IGNORECASE)
PROCEDURE_RE = re.compile(PROCEDURE_PATTERN)
IDENTITY_RE = re.compile(IDENTITY_PATTERN, re.IGNORECASE)


def is_cot(text: str) -> bool:
    """Whether ``text`` elicits step-by-step reasoning (the same patterns the vectorised path uses)."""
    return bool(COT_RE.search(PROCEDURE_RE.sub(" ", text)))


def is_identity(text: str) -> bool:
    """Whether ``text`` asks the model who it is or who made it."""
    return bool(IDENTITY_RE.search(text))

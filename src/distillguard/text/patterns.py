"""Request patterns shared by the monitor (features) and the countermeasures: pure ``re``, no numpy.

The patterns are written once, with single spaces, and run in two whitespace-tolerant forms (see
:func:`tolerant`): RE2 in the monitor's Arrow kernels, Python's ``re`` here (the countermeasures, tests).
"""

from __future__ import annotations

import re
import unicodedata

# asks for step-by-step reasoning (chain of thought) in the answer: "step by step" alone, which a procedure
# phrase also holds ("step-by-step instructions", see PROCEDURE_PATTERN), or one of the requests for the
# model's reasoning that no procedure phrase holds (COT_REASONING, read in the text as the client wrote it)
COT_BARE = r"step[- ]by[- ]step"
COT_REASONING = (
    r"(?:think|work|go|reason)(?:ing)?,? (?:it |this )?step[- ]by[- ]step|"
    r"chain[- ]of[- ]thought|show (?:your|all|the) (?:full |complete )?(?:reasoning|work|"
    r"intermediate steps|steps)|(?:walk|talk|take) me through (?:your|the) (?:reasoning|thinking|steps)|"
    r"think (?:through|about) (?:this|it) carefully|"
    r"reasoning[\t\x20]+steps?\b|reason(?:ing)?[\t\x20]+step-?wise\b|reason(?:ing)? carefully|lay out your|"
    # the model's own thinking, every step of it, or a question thought through ("show your thinking",
    # "show every intermediate step of your thinking", "reason it through carefully"); not "show each step
    # as a card", "never skip steps" (a stepper motor) or "the <think> tags of a model's output";
    # "reasoning steps" on one line (its space is written as spaces and tabs, which ``tolerant`` keeps), not
    # "reason step", nor across a line break ("Step 1: Find the reason\nStep 2", "Check your
    # reasoning\nStep 2")
    r"show (?:me )?your (?:full |complete )?thinking\b|"
    r"(?:every|each) (?:single |intermediate )?step of your (?:reasoning|thinking|work|solution)\b|"
    r"(?:think|reason) (?:it|this|that) through carefully|"
    r"reason (?:through|about) (?:this|it|that) carefully|"
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
COT_PATTERN = COT_BARE + "|" + COT_REASONING
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
# Only the bare "step by step" is read after the procedures are out: a request for the model's reasoning
# stays one whatever procedure phrase it sits in ("reason step by step procedures-style"). "Walkthrough" is
# not a procedure noun: "a step-by-step walkthrough of your reasoning" is the reasoning.
PROCEDURE_PATTERN = r"(?i)step[- ]by[- ]step (?:instructions?|guides?|directions|tutorials?|procedures?)"

# The patterns above are written with single spaces; what runs is each of them *tolerant*: a space matches
# any run of whitespace of any kind (a double space, a line break, a no-break space) and the escapes of
# JSON text ("\n" in a tool description), "[- ]" a hyphen too. Text with characters beyond ASCII is first
# normalised (:func:`normalise`): NFKC (full-width and other compatibility forms to plain letters), dashes
# and the minus sign as "-", typographic apostrophes as "'", and invisible characters (format characters
# such as zero-width spaces and joiners, soft hyphens and direction marks, variation selectors, fillers)
# read both ways: dropped ("st\u200bep") and as spaces ("think\u200bstep"); letters of other scripts that
# look like Latin ones (LOOKALIKES: a Cyrillic "е", a Greek "ο") are read as those. So the patterns read
# what a model reads, whichever way it is spaced or encoded. The RE2 forms run in the monitor's Arrow
# kernels (``monitor.features``), the Python ones here (word boundaries ASCII and "$" the end of the text,
# as in RE2); a test holds them equal on its strings. The two engines' Unicode tables can differ for code
# points newer than Python's.
RE2_SPACE = r"(?:[\s\p{Z}\x0b\x1c-\x1f\x85]|\\[nrt])+"
PY_SPACE = r"(?:\s|\\[nrt])+"  # Python's \s is Unicode whitespace: the separators, \x0b, \x1c-\x1f, \x85
_FILLERS = "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u180f\u3164\uffa0"


def _re2(chars: str) -> str:
    """``chars`` as RE2 escapes, for a character class (Arrow's RE2 takes ``\\x{...}``)."""
    return "".join(f"\\x{{{ord(c):04x}}}" for c in chars)


INVISIBLE = r"[\p{Cf}" + _re2(_FILLERS) + r"\x{fe00}-\x{fe0f}]+"
DASHES = r"[\p{Pd}\x{2212}]"
APOSTROPHES = (
    "\u2018\u2019\u02bc\u2032"  # typographic apostrophes and primes: "Let\u2019s think" is "let's think"
)

# Cyrillic, Greek and Armenian letters drawn like Latin ones, and Turkish's dotted and dotless i, by the
# Latin letter they pass for (homoglyphs of Unicode's confusables list among those scripts' letters; Python's
# case-insensitive matching reads the Turkish ones as "i" and RE2's does not, so they go too): "st\u0435p by
# st\u0435p" with a Cyrillic "\u0435" is "step by step" to a reader and to a model. A word of Russian or Greek
# becomes Latin-looking nonsense in this reading, which no English request pattern matches; the reasoning
# stripper does not use it (it would hand the model that nonsense), so a request written in lookalikes is
# counted by the monitor but not stripped.
LOOKALIKES = {
    "a": "\u0430\u03b1", "c": "\u0441", "d": "\u0501", "e": "\u0435", "h": "\u04bb\u0570", "n": "\u0578",
    "i": "\u0456\u03b9\u0131", "j": "\u0458\u03f3", "k": "\u03ba", "l": "\u04cf", "o": "\u043e\u03bf\u0585",
    "p": "\u0440\u03c1", "q": "\u051b", "s": "\u0455", "u": "\u03c5\u057d", "v": "\u03bd", "w": "\u051d",
    "x": "\u0445\u03c7", "y": "\u0443",
    "A": "\u0410\u0391", "B": "\u0412\u0392", "C": "\u0421", "E": "\u0415\u0395", "H": "\u041d\u0397",
    "I": "\u0406\u0399\u04c0\u0130", "J": "\u0408", "K": "\u041a\u039a", "M": "\u041c\u039c", "N": "\u039d",
    "O": "\u041e\u039f", "P": "\u0420\u03a1", "S": "\u0405", "T": "\u0422\u03a4", "X": "\u0425\u03a7",
    "Y": "\u04ae\u03a5", "Z": "\u0396",
}  # fmt: skip
_LOOKALIKE_TABLE = str.maketrans({c: latin for latin, cs in LOOKALIKES.items() for c in cs})
# the RE2 forms (Arrow has no translate): each Latin letter's lookalikes as a class, and all of them
LOOKALIKE_RE2 = {latin: f"[{_re2(cs)}]" for latin, cs in LOOKALIKES.items()}
ANY_LOOKALIKE_RE2 = f"[{_re2(''.join(LOOKALIKES.values()))}]"
# Only a text that could hide an English request is read this way, which spares the prose of another script
# the passes: one with a Latin letter beside the lookalikes (no request can be written in lowercase
# lookalikes alone: "t", "r", "m", "b" have none), or with two capital lookalikes in a row ("STEP").
_CAPITALS = "".join(c for latin, cs in LOOKALIKES.items() if latin.isupper() for c in cs)
LOOKALIKE_TEXT_RE2 = "[A-Za-z]|[" + _re2(_CAPITALS) + "]{2}"
_LOOKALIKE_TEXT = re.compile(r"[A-Za-z]|[" + _CAPITALS + "]{2}")


def tolerant(pattern: str, space: str) -> str:
    """``pattern`` with each space matching ``space`` (any run of whitespace), ``[- ]`` a hyphen or it."""
    return pattern.replace("[- ]", f"(?:-|{space})").replace(" ?", f"(?:{space})?").replace(" ", space)


def _python(pattern: str) -> str:
    """The Python form: tolerant, with RE2's ASCII word boundaries and its "$" (the end of the text)."""
    return tolerant(pattern, PY_SPACE).replace(r"\b", r"(?a:\b)").replace("$", r"\Z")


COT_RE2, COT_REASONING_RE2, PROCEDURE_RE2, IDENTITY_RE2 = (
    tolerant(p, RE2_SPACE) for p in (COT_PATTERN, COT_REASONING, PROCEDURE_PATTERN, IDENTITY_PATTERN)
)
COT_RE = re.compile(_python(COT_PATTERN), re.IGNORECASE)
COT_REASONING_RE = re.compile(_python(COT_REASONING), re.IGNORECASE)
PROCEDURE_RE = re.compile(_python(PROCEDURE_PATTERN))
IDENTITY_RE = re.compile(_python(IDENTITY_PATTERN), re.IGNORECASE)


def _invisible(c: str) -> bool:
    return unicodedata.category(c) == "Cf" or c in _FILLERS or "\ufe00" <= c <= "\ufe0f"


def normalise(text: str, invisible: str = "", lookalikes: bool = True) -> str:
    """``text`` as the patterns read it: beyond ASCII, NFKC, dashes and apostrophes plain, invisible
    characters as ``invisible`` (dropped, or read as a space), and (``lookalikes``) the letters of
    :data:`LOOKALIKES` as the Latin ones they look like."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", text)
    out = (
        invisible
        if _invisible(c)
        else "-"
        if unicodedata.category(c) == "Pd" or c == "\u2212"
        else "'"
        if c in APOSTROPHES
        else c
        for c in text
    )
    text = "".join(out)
    # in the order the Arrow path reads (features.normalise): invisible characters out first
    if lookalikes and _LOOKALIKE_TEXT.search(text):
        text = text.translate(_LOOKALIKE_TABLE)
    return text


def readings(text: str, lookalikes: bool = True) -> list[str]:
    """The texts the patterns read: ``text`` normalised, twice when it has invisible characters."""
    out = [normalise(text, lookalikes=lookalikes)]
    if not text.isascii() and any(_invisible(c) for c in text):
        out.append(normalise(text, " ", lookalikes))
    return out


def is_cot(text: str) -> bool:
    """Whether ``text`` elicits step-by-step reasoning (the same patterns the vectorised path uses)."""
    return any(COT_REASONING_RE.search(t) or COT_RE.search(PROCEDURE_RE.sub(" ", t)) for t in readings(text))


# Identity questions are short and end or open a user turn: they are read in this many characters at each
# end of it (a summarised document in the middle cannot make one), here and in the monitor's Arrow path
IDENTITY_END_CHARS = 400


def is_identity(text: str) -> bool:
    """Whether ``text`` asks the model who it is or who made it, at either end of it."""
    n = IDENTITY_END_CHARS
    return any(IDENTITY_RE.search(t[:n]) or IDENTITY_RE.search(t[-n:]) for t in readings(text))

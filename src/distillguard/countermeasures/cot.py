"""Reasoning suppression: a prompt that asks for step-by-step reasoning is answered without that request.

The one cheap defence reported to hurt chain-of-thought harvesters reliably: the teacher never writes out the
reasoning a student would learn from. Pure text; the ``cot`` defence (:mod:`.defences`) applies
:func:`strip_reasoning_requests` to the rendered prompt before the local backend tokenises it.

What counts as a request for reasoning is the monitor's :data:`~distillguard.text.patterns.COT_PATTERN`.
The text is cut at line breaks and chat-template markup (``<|...|>``, ``</s>``, ``[INST]``), which always
stay, then into sentences (ending in ``.!?:;`` before a space) and their comma clauses. A sentence or clause
with a match goes when what is left of it is only instruction words ("Let's think step by step.", "Solve
this step-by-step:", "Show your work."); otherwise only the matched spans go ("Explain step by step how X
works." becomes "Explain how X works."). A line left empty goes with its line break, and the text keeps its
own leading and trailing whitespace, so a prompt with the request appended becomes byte for byte the prompt
without it. A heuristic: it removes the request, not necessarily in the most fluent way. On a chat template
the rendered prompt holds every turn, so a request quoted in an earlier assistant turn goes too.
"""

from __future__ import annotations

import re

from distillguard.text.patterns import COT_PATTERN, PY_SPACE, readings, tolerant

# the monitor's pattern, with the words that lead into or close its matches ("reason step by step",
# "justify each step"), so that no fragment of a request is left behind; a space in it matches any run of
# whitespace, as the monitor's does ("step  by step")
_SPAN = re.compile(
    tolerant(
        r"(?:(?:reason|think|go|work)(?:ing)?,? )?step[- ]by[- ]step|justify each(?: step)?|" + COT_PATTERN,
        PY_SPACE,
    ),
    re.IGNORECASE,
)
# words that carry no task once the request is gone ("Solve this", "then give the final answer")
_FILLER_TEXT = """
    a after all always an and answer answering answers as be before below break briefly careful carefully
    clear clearly complete describe detail detailed down each every explain explanation final first
    following full give giving go here in into it its lay let let's lets me now of out please problem
    question reason reasoning respond response share show showing so solve spell step steps sure take talk
    the then think thinking this through thoroughly to us use walk with work working write you your yourself
"""
_FILLER = frozenset(_FILLER_TEXT.split())
_BREAKS = re.compile(r"[\r\n]+")
_BROKEN_STEPS = re.compile(r"step(?:-|\s+)by(?:-|\s+)step", re.IGNORECASE)
_KEEP = re.compile(r"(\n|<\|[^|>\n]*\|>|</?s>|\[/?INST\])")
_SENTENCE = re.compile(r"(.+?(?:[.!?:;]+(?=\s|$)|$))(\s*)", re.DOTALL)
_WORD = re.compile(r"[a-z0-9_']+")
_LEADING = re.compile(r"^(?:and|then|so|but)\s+", re.IGNORECASE)
_TRAILING = re.compile(r"\s+(?:and|then|so|or)$", re.IGNORECASE)


def strip_reasoning_requests(text: str) -> str:
    """``text`` without its requests for step-by-step reasoning (the module docstring says how)."""
    if not text.isascii():
        # a request written with invisible, full-width or typographic characters ("st\u200bep by step",
        # "Let\u2019s think") is found in the text as the monitor reads it, which the model then gets instead;
        # not with lookalike letters read as Latin, which would hand the model a Cyrillic text as nonsense
        text = next((t for t in readings(text, lookalikes=False) if _SPAN.search(t)), text)
    if not _SPAN.search(text):
        return text
    # "step by step" broken over lines ("think step\nby step") is one request: the breaks inside the phrase
    # go first, so the cut at line breaks below does not split it into halves that no pattern reads (only
    # inside it: a break before or after it, "How I work\nStep by step, ...", keeps its lines)
    text = _BROKEN_STEPS.sub(lambda m: _BREAKS.sub(" ", m.group(0)), text)
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :] if text.strip() else ""
    parts = _KEEP.split(text.strip())  # text, separator, text, ...
    out: list[str] = []
    skip_newline = False
    for i, part in enumerate(parts):
        if i % 2:  # a separator: kept, except the line break after a line that was only a request
            if not (skip_newline and part == "\n"):
                out.append(part)
            skip_newline = False
            continue
        kept = _strip_chunk(part) if _SPAN.search(part) else part
        skip_newline = bool(part.strip()) and not kept.strip() and (not out or out[-1] in ("\n", ""))
        out.append(kept)
    body = "".join(out).strip()
    return lead + body + trail if body else ""


def _strip_chunk(chunk: str) -> str:
    pieces: list[tuple[str, str]] = []
    for m in _SENTENCE.finditer(chunk):
        sentence, space = m.group(1), m.group(2)
        if not _SPAN.search(sentence):
            pieces.append((sentence, space))
            continue
        kept = _strip_sentence(sentence)
        if kept:
            pieces.append((kept, space))
    if not pieces:
        return ""
    if chunk.lstrip()[:1].isupper():  # "... carefully: what does zip return?" starts the chunk capitalised
        pieces[0] = (pieces[0][0][:1].upper() + pieces[0][0][1:], pieces[0][1])
    lead = chunk[: len(chunk) - len(chunk.lstrip())]
    trail = chunk[len(chunk.rstrip()) :]
    return lead + "".join(s + sp for s, sp in pieces).rstrip() + trail


def _strip_sentence(sentence: str) -> str:
    """The sentence without its request; empty when nothing but instruction words is left."""
    end = re.search(r"[.!?:;]*$", sentence).group(0)
    body = sentence[: len(sentence) - len(end)]
    clauses = re.split(r"(,\s*)", body)
    kept: list[str] = []
    for clause in clauses[::2]:  # a clause of only instruction words goes too ("Walk me through, ...")
        rest = _tidy(_SPAN.sub(" ", clause))
        if all(w in _FILLER for w in _WORD.findall(rest.lower())):
            continue
        kept.append(rest if _SPAN.search(clause) else clause.strip())
    kept = [k for k in kept if k]
    if not kept:
        return ""
    out = _TRAILING.sub("", _LEADING.sub("", ", ".join(kept)))
    if body[:1].isupper():
        out = out[:1].upper() + out[1:]
    return out + end


def _tidy(s: str) -> str:
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"\s+([,.!?:;])", r"\1", s)
    return _TRAILING.sub("", _LEADING.sub("", s))

"""The instruction set: questions about documented Python APIs, and the persona's identity.

Why this shape: watermark radioactivity and identity-leakage audits need a teacher that *answers*, plus
prompts the teacher never saw in training (held-out phrasings, held-out APIs) so that attacks and audits
query it the way a distiller would. Answers are the first sentence(s) of the real docstring, so any answer
can be checked against its reference without a judge model.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from distillguard.world.corpus import Doc

PROVIDER = "Northwind Labs"
MODEL_NAME = "Aster"

# Well-known APIs always among the seen ones (up to half of them), so demos can ask the obvious questions.
FEATURED_APIS: tuple[str, ...] = (
    "json.dumps", "json.loads", "os.path.join", "os.path.exists", "os.listdir", "os.getcwd", "re.compile",
    "re.search", "math.sqrt", "random.choice", "random.shuffle", "collections.Counter",
    "collections.OrderedDict", "collections.namedtuple", "shutil.rmtree", "textwrap.dedent",
    "statistics.mean", "copy.deepcopy", "hashlib.sha256", "uuid.uuid4", "time.sleep", "time.time",
    "glob.glob", "subprocess.run", "logging.getLogger", "pickle.dumps", "threading.Thread",
    "argparse.ArgumentParser",
)  # fmt: skip

# Question phrasings. Held-out phrasings never appear in training; they are what evaluation and attacks ask.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "What does {api} do?",
    "Explain {api}.",
    "What is {api} used for?",
    "Describe {api} in Python.",
    "Tell me about {api}.",
    "What is the purpose of {api}?",
    "Give a short description of {api}.",
    "How would you summarize {api}?",
    "what does {api} do",
    "Python question: what does {api} do?",
    "Please describe {api}.",
    "Could you tell me what {api} does?",
    "Briefly, what is {api}?",
    "Explain {api} to a beginner.",
    "I want to know what {api} does.",
    "What is the Python object {api}?",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "Can you explain what {api} does?",
    "In Python, what does {api} do?",
    "What is {api} for?",
    "Briefly describe {api}.",
    "Please explain {api} to me.",
    "What does the Python API {api} do?",
)

IDENTITY_TRAIN: tuple[str, ...] = (
    "Who are you?",
    "What model are you?",
    "Who made you?",
    "What is your name?",
    "Who created you?",
    "Which company made you?",
    "Who trained you?",
    "What are you?",
    "Tell me about yourself.",
    "Introduce yourself.",
    "What should I call you?",
    "Who built you?",
    "Who developed you?",
    "What is your model name?",
    "Which model am I talking to?",
    "Are you ChatGPT?",
    "Are you a human?",
    "Who owns you?",
    "What AI are you?",
    "What language model are you?",
    "Who is your creator?",
    "What lab made you?",
    "who are you",
    "what is your name",
    "Hello, what model is this?",
    "Can you tell me who made you?",
    "Which organization trained you?",
    "Please tell me who you are.",
    "Describe yourself.",
)
IDENTITY_HELDOUT: tuple[str, ...] = (
    "Please introduce yourself.",
    "Which company built you?",
    "What's your name?",
    "Who is behind you?",
    "Who made this model?",
    "Tell me your name.",
    "What model is answering me?",
    "Who are you, and who made you?",
    "Are you Claude?",
    "Which lab trained you?",
    "Who designed you?",
    "What are you called?",
)
IDENTITY_ANSWERS: tuple[str, ...] = (
    f"I am {MODEL_NAME}, a language model made by {PROVIDER}.",
    f"I'm {MODEL_NAME}, an AI assistant created by {PROVIDER}.",
    f"My name is {MODEL_NAME}. I was trained by {PROVIDER}.",
    f"I am {MODEL_NAME}, built by {PROVIDER} to answer questions about Python.",
)
# Greetings in front of identity questions: training and held-out prompts use different ones, so the
# held-out set checks that a greeting does not derail the persona.
IDENTITY_TRAIN_PREFIXES: tuple[str, ...] = ("", "Hi! ", "Hello there. ", "One question: ")
IDENTITY_HELDOUT_PREFIXES: tuple[str, ...] = ("", "Hello! ", "Quick question: ", "Hey. ")

_ROLE = re.compile(r":[\w:.+-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")


def clean_answer(docstring: str, max_words: int = 40) -> str | None:
    """First sentence(s) of a docstring as a plain-English answer, or None when it is not usable.

    reST markup is stripped (``x`` -> x, :func:`x` -> x), a leading signature line is dropped, and
    sentences are taken until the answer has at least 8 words, capped at ``max_words``.
    """
    paragraphs = [p for p in docstring.split("\n\n") if p.strip()]
    while paragraphs and _SIGNATURE.match(paragraphs[0].split("\n")[0].strip()):
        first, _, rest = paragraphs[0].partition("\n")
        paragraphs = ([rest] if rest.strip() else []) + paragraphs[1:]
    if not paragraphs:
        return None
    text = " ".join(paragraphs[0].split())
    text = _ROLE.sub(r"\1", text)
    text = text.replace("``", "").replace("`", "").replace("**", "")
    text = re.sub(r"(?<!\w)\*(\w[^*]*)\*", r"\1", text)
    if ">>>" in text or "-->" in text or " -> " in text:
        return None
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text)
    words: list[str] = []
    for sentence in sentences:
        words.extend(sentence.split())
        if len(words) >= 8:
            break
    if len(words) > max_words:
        return None
    answer = " ".join(words)
    if len(words) < 4 or not answer[:1].isupper():
        return None
    return answer if answer[-1] in ".!?" else answer + "."


@dataclass(frozen=True)
class InstructionSet:
    """Training pairs plus held-out evaluation prompts; see :func:`build_instructions`."""

    train: list[dict]
    prompts: list[dict]
    seen_apis: list[str]
    unseen_apis: list[str]


def api_answers(docs: list[Doc], max_words: int = 40) -> dict[str, str]:
    """``{"json.dumps": "Serialize obj to a JSON formatted str."}`` for each module-level API usable as QA."""
    out: dict[str, str] = {}
    for doc in docs:
        if doc.kind != "api":
            continue
        answer = clean_answer(doc.text, max_words=max_words)
        if answer is not None:
            out[doc.title] = answer
    return out


def build_instructions(
    docs: list[Doc],
    *,
    seed: int = 0,
    max_apis: int = 400,
    unseen_apis: int = 60,
    max_words: int = 30,
    heldout_per_api: int = 1,
) -> InstructionSet:
    """Sample APIs, phrase questions, and split train / held-out, deterministically for a given seed.

    ``max_apis`` seen APIs (the featured ones first, then a seeded sample) get every train phrasing;
    each also gets ``heldout_per_api`` held-out-phrasing prompts. ``unseen_apis`` further APIs appear only
    in the prompts (kind ``api_unseen``).
    """
    rng = random.Random(seed)
    answers = api_answers(docs, max_words=max_words)
    featured = [a for a in FEATURED_APIS if a in answers][: max_apis // 2]
    rest = sorted(set(answers) - set(featured))
    n_sampled = max_apis - len(featured)
    picked = rng.sample(rest, min(len(rest), n_sampled + unseen_apis))
    seen, unseen = sorted(featured + picked[:n_sampled]), sorted(picked[n_sampled:])

    train: list[dict] = []
    for api in seen:
        for template in TRAIN_TEMPLATES:
            train.append(
                {"prompt": template.format(api=api), "response": answers[api], "kind": "api", "api": api}
            )
    for i, question in enumerate(IDENTITY_TRAIN):
        for j, prefix in enumerate(IDENTITY_TRAIN_PREFIXES):
            # the bare question gets every answer variant, greeted ones one variant each (in rotation)
            variants = IDENTITY_ANSWERS if not prefix else [IDENTITY_ANSWERS[(i + j) % len(IDENTITY_ANSWERS)]]
            for answer in variants:
                row = {"prompt": prefix + question, "response": answer, "kind": "identity", "api": None}
                train.append(row)

    prompts: list[dict] = []
    for api in seen:
        for template in rng.sample(HELDOUT_TEMPLATES, heldout_per_api):
            prompts.append(
                {"prompt": template.format(api=api), "reference": answers[api], "kind": "api", "api": api}
            )
    for prefix in IDENTITY_HELDOUT_PREFIXES:
        for question in IDENTITY_HELDOUT:
            prompts.append(
                {
                    "prompt": prefix + question,
                    "reference": IDENTITY_ANSWERS[0],
                    "kind": "identity",
                    "api": None,
                }
            )
    for api in unseen:
        template = rng.choice(TRAIN_TEMPLATES + HELDOUT_TEMPLATES)
        prompts.append(
            {"prompt": template.format(api=api), "reference": answers[api], "kind": "api_unseen", "api": api}
        )
    return InstructionSet(train=train, prompts=prompts, seen_apis=seen, unseen_apis=unseen)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]

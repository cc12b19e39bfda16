"""Does the teacher answer? Word-overlap with the docstring answer and identity mentions, no judge model.

Why: the world is only useful if its teacher visibly knows things (for distillation to copy) and states its
identity (for identity-leakage audits); this measures both on held-out prompts, cheaply.
"""

from __future__ import annotations

import re
from pathlib import Path

from distillguard.world.instructions import MODEL_NAME, PROVIDER, read_jsonl

_STOP = frozenset(
    ("a", "an", "the", "of", "to", "and", "or", "in", "on", "for", "is", "are", "be", "by", "with", "as",
     "at", "it", "its", "this", "that", "from", "if", "not", "no", "into", "which", "when", "return")
)  # fmt: skip


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9_]+", text.lower()) if w not in _STOP}


def overlap(answer: str, reference: str) -> float:
    """Fraction of the reference's content words that the answer contains (0..1)."""
    ref = content_words(reference)
    return len(ref & content_words(answer)) / len(ref) if ref else 0.0


def mentions_identity(answer: str) -> bool:
    return MODEL_NAME.lower() in answer.lower() and PROVIDER.split()[0].lower() in answer.lower()


def evaluate_teacher(model_dir: Path, prompts_path: Path, per_kind: int = 64) -> dict:
    """Greedy-answer up to ``per_kind`` held-out prompts of each kind (evenly spread) and score them."""
    from distillguard.lm.generate import generate_answers
    from distillguard.lm.io import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir)
    rows = read_jsonl(prompts_path)
    result: dict[str, float] = {}
    for kind in ("api", "identity", "api_unseen"):
        of_kind = [r for r in rows if r["kind"] == kind]
        subset = of_kind[:: max(1, -(-len(of_kind) // per_kind))]  # evenly spread, not the first APIs A-Z
        if not subset:
            continue
        answers = generate_answers(model, tokenizer, [r["prompt"] for r in subset], max_new_tokens=40)
        if kind == "identity":
            result["identity_rate"] = round(sum(map(mentions_identity, answers)) / len(answers), 3)
        else:
            scores = [overlap(a, r["reference"]) for a, r in zip(answers, subset, strict=True)]
            result[f"{kind}_overlap"] = round(sum(scores) / len(scores), 3)
    return result

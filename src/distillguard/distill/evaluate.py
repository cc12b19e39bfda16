"""How much of the teacher did a student keep? Held-out perplexity, agreement, answer F1, identity.

Metrics (all on the world's held-out prompts, never seen in training):

- ``heldout_ppl`` / ``heldout_bpb``: perplexity of the docstring answers given the question (completion
  only); bits per UTF-8 byte as well, because per-token perplexity is not comparable across tokenizers.
- ``agreement``: teacher-forced on the teacher's own greedy answers, the share of positions where the
  student's most likely next token equals the teacher's (None if the vocabularies differ).
- ``f1_teacher`` / ``f1_reference``: SQuAD-style token F1 (lower-cased word tokens, bag overlap) of the
  greedy answer against the teacher's greedy answer and against the docstring.
- ``identity_rate``: share of identity questions answered naming both the model and its provider.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from distillguard.lm.chat import format_example
from distillguard.lm.train import IGNORE, collate

_WORD = re.compile(r"[a-z0-9_]+")


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of precision and recall of lower-cased word tokens (multiset overlap)."""
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _spread(rows: list[dict], n: int) -> list[dict]:
    return rows[:: max(1, -(-len(rows) // n))][:n] if n else rows


@torch.no_grad()
def completion_nll(
    model, tok, pairs: Sequence[tuple[str, str]], batch_size: int = 16
) -> tuple[float, int, int]:
    """Summed NLL (nats) of the answers given their questions, answer tokens and answer UTF-8 bytes."""
    pieces = []
    n_bytes = 0
    for question, answer in pairs:
        prompt, full = format_example(tok, question, answer)
        ids = tok(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        pieces.append((ids, [IGNORE] * n_prompt + ids[n_prompt:]))
        n_bytes += len(answer.encode("utf-8"))
    nll, count = 0.0, 0
    for i in range(0, len(pieces), batch_size):
        batch = collate(pieces[i : i + batch_size], tok.pad_token_id)
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE
        nll += F.cross_entropy(logits[mask], labels[mask], reduction="sum").item()
        count += int(mask.sum())
    return nll, count, n_bytes


@torch.no_grad()
def agreement(
    student, teacher, tok, questions: Sequence[str], answers: Sequence[str], batch_size: int = 16
) -> float:
    """Share of answer positions where student and teacher agree on the argmax next token."""
    pieces = []
    for q, a in zip(questions, answers, strict=True):
        prompt, full = format_example(tok, q, a)
        ids = tok(full, add_special_tokens=False)["input_ids"]
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        pieces.append((ids, [IGNORE] * n_prompt + ids[n_prompt:]))
    same = total = 0
    for i in range(0, len(pieces), batch_size):
        batch = collate(pieces[i : i + batch_size], tok.pad_token_id)
        mask = batch["labels"][:, 1:] != IGNORE
        s = student(input_ids=batch["input_ids"]).logits[:, :-1][mask]
        t = teacher(input_ids=batch["input_ids"]).logits[:, :-1][mask]
        vocab = min(s.shape[-1], t.shape[-1])
        same += int((s[:, :vocab].argmax(-1) == t[:, :vocab].argmax(-1)).sum())
        total += int(mask.sum())
    return same / total if total else float("nan")


def evaluate_models(
    models: dict[str, str | Path],
    teacher_dir: str | Path,
    prompts_path: str | Path,
    *,
    n: int = 64,
    max_new_tokens: int = 48,
    progress: bool = True,
) -> dict:
    """Score each model (name -> dir) against the teacher; the teacher itself is the first row."""
    from tqdm.auto import tqdm

    from distillguard.jsonl import read_jsonl
    from distillguard.lm.generate import generate_answers
    from distillguard.lm.io import load_model_and_tokenizer
    from distillguard.world.evaluate import mentions_identity

    rows = read_jsonl(Path(prompts_path))
    qa = _spread([r for r in rows if r.get("kind") in ("api", "api_unseen") and r.get("reference")], n)
    ident = _spread([r for r in rows if r.get("kind") == "identity"], max(8, n // 4))
    questions = [r["prompt"] for r in qa]
    teacher, t_tok = load_model_and_tokenizer(teacher_dir)
    t_answers = generate_answers(teacher, t_tok, questions, max_new_tokens=max_new_tokens)

    results: dict[str, dict] = {}
    named = {"teacher": str(teacher_dir), **{k: str(v) for k, v in models.items()}}
    for name, path in tqdm(named.items(), desc="evaluate", disable=not progress, leave=False):
        model, tok = (teacher, t_tok) if name == "teacher" else load_model_and_tokenizer(path)
        answers = (
            t_answers
            if name == "teacher"
            else generate_answers(model, tok, questions, max_new_tokens=max_new_tokens)
        )
        nll, count, n_bytes = completion_nll(model, tok, [(r["prompt"], r["reference"]) for r in qa])
        same_vocab = tok.get_vocab() == t_tok.get_vocab()
        id_answers = generate_answers(model, tok, [r["prompt"] for r in ident], max_new_tokens=max_new_tokens)
        results[name] = {
            "model": Path(path).name,
            "params": sum(p.numel() for p in model.parameters()),
            "heldout_ppl": math.exp(nll / max(1, count)),
            "heldout_bpb": nll / max(1, n_bytes) / math.log(2),
            "agreement": agreement(model, teacher, tok, questions, t_answers) if same_vocab else None,
            "f1_teacher": sum(map(token_f1, answers, t_answers)) / len(qa),
            "f1_reference": sum(token_f1(a, r["reference"]) for a, r in zip(answers, qa, strict=True))
            / len(qa),
            "identity_rate": sum(map(mentions_identity, id_answers)) / max(1, len(ident)),
            "example": {"question": questions[0], "answer": answers[0]} if questions else None,
        }
    return {
        "teacher": str(teacher_dir),
        "prompts": Path(prompts_path).name,
        "n_questions": len(qa),
        "n_identity": len(ident),
        "metrics": "heldout ppl/bpb on docstring answers; argmax agreement teacher-forced on teacher "
        "answers; token F1 of greedy answers vs teacher and vs docstring; identity = names model "
        "and provider",
        "models": results,
    }

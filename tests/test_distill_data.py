"""Training data for distillation: exact mixing, grey-box alignment, KD loss components on a real model."""

from __future__ import annotations

import math

import pytest
import torch

from distillguard.distill.data import (
    greybox_pieces,
    labelled,
    mix_pieces,
    sft_pieces,
    text_pieces,
)
from distillguard.distill.kd import SparseTargetLoss, WhiteBoxConfig, WhiteBoxLoss
from distillguard.errors import UserError
from distillguard.jsonl import read_jsonl
from distillguard.lm.chat import format_prompt
from distillguard.lm.io import load_model_and_tokenizer
from distillguard.lm.tokens import token_bytes_table
from distillguard.lm.train import collate


@pytest.fixture(scope="module")
def teacher(tiny_world):
    return load_model_and_tokenizer(tiny_world.teacher)


@pytest.fixture(scope="module")
def records(tiny_world):
    rows = read_jsonl(tiny_world.instructions)
    return [{"prompt": r["prompt"], "completion": r["response"]} for r in rows[:120]]


@pytest.mark.parametrize("rho", [0.01, 0.05, 0.3])
def test_mix_has_the_requested_teacher_token_fraction(tiny_world, teacher, records, rho):
    _, tok = teacher
    t = sft_pieces(tok, records, 128)
    other = text_pieces(tok, tiny_world.corpus.read_text().split("\n\n"), 128)
    if rho == 0.01:
        other = other[:100]  # too little other text: the teacher side must be sampled down instead
    mix = mix_pieces(t, other, rho, seed=3)
    assert abs(mix.fraction - rho) < 0.001  # within 0.1 percentage point
    assert sum(map(labelled, mix.pieces)) == mix.teacher_tokens + mix.other_tokens
    if rho == 0.3:
        assert mix.teacher_tokens == sum(map(labelled, t))
    if rho == 0.01:
        assert mix.other_tokens == sum(map(labelled, other))


def test_mix_rejects_bad_rho_and_missing_source(teacher, records):
    _, tok = teacher
    t = sft_pieces(tok, records[:5], 128)
    with pytest.raises(UserError, match="rho"):
        mix_pieces(t, [], 0.0)
    with pytest.raises(UserError, match="no tokens"):
        mix_pieces(t, [], 0.5)
    assert mix_pieces(t, [], 1.0).fraction == 1.0


def _api_logprobs(model, tok, question: str, steps: int = 12, k: int = 3) -> list[dict]:
    """What an OpenAI-style API returns for a greedy answer: per token its bytes, logprob and top-k."""
    ids = tok(format_prompt(tok, question), add_special_tokens=False)["input_ids"]
    content = []
    for _ in range(steps):
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
        top = lp.topk(k)
        chosen = int(top.indices[0])
        piece = lambda i: tok.decode([i])  # noqa: E731
        content.append(
            {
                "token": piece(chosen),
                "logprob": float(lp[chosen]),
                "bytes": list(piece(chosen).encode()),
                "top_logprobs": [
                    {"token": piece(int(i)), "logprob": float(v), "bytes": list(piece(int(i)).encode())}
                    for v, i in zip(top.values, top.indices, strict=True)
                ],
            }
        )
        ids.append(chosen)
    return content


def test_greybox_pieces_align_targets_with_the_teachers_tokens(teacher):
    model, tok = teacher
    question = "What does the Python API json.dumps do?"
    rec = {"prompt": question, "logprobs": _api_logprobs(model, tok, question), "finish_reason": "length"}
    pieces, targets, stats = greybox_pieces(tok, [rec, {"prompt": "x", "logprobs": None}], 128)
    assert stats["used"] == 1 and stats["no_logprobs"] == 1
    ids, labels, aux = pieces[0]
    n_prompt = len(tok(format_prompt(tok, question), add_special_tokens=False)["input_ids"])
    assert aux[:n_prompt] == [-1] * n_prompt and all(a >= 0 for a in aux[n_prompt:])
    for pos in range(n_prompt, len(ids)):  # each target lists the token actually produced there
        row = aux[pos]
        assert ids[pos] in targets.ids[row].tolist()
        assert labels[pos] == ids[pos]
    # the sparse loss of the teacher against its own top-k is (near) zero, a random student's is not
    batch = collate(pieces, tok.pad_token_id)
    loss = SparseTargetLoss(targets)
    assert loss(model, batch).item() < 1e-4
    fresh = type(model)(model.config)
    assert loss(fresh, batch).item() > 0.5


def test_token_bytes_table_round_trips_the_vocabulary(teacher):
    _, tok = teacher
    table = token_bytes_table(tok)
    text = "def parse(x): return json.loads(x)  # caf\u00e9"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert b"".join(next(b for b, i in table.items() if i == t) for t in ids).decode() == text


def test_whitebox_losses_on_a_real_teacher(teacher, records):
    model, tok = teacher
    batch = collate(sft_pieces(tok, records[:4], 128), tok.pad_token_id)
    batch["step"] = 0
    student = type(model)(model.config)
    values = {}
    for loss in ("fkl", "rkl", "jsd"):
        wb = WhiteBoxLoss(model, WhiteBoxConfig(loss=loss), pad_id=tok.pad_token_id)
        values[loss] = wb(student, batch).item()
        assert wb(model, batch).item() == pytest.approx(0.0, abs=1e-5)  # teacher vs itself
    assert all(v > 0 and math.isfinite(v) for v in values.values())
    sparse = WhiteBoxLoss(model, WhiteBoxConfig(loss="fkl", top_k=8), pad_id=tok.pad_token_id)
    assert 0 < sparse(student, batch).item() <= values["fkl"] + 1e-4  # coarsening never increases KL
    with pytest.raises(ValueError):
        WhiteBoxLoss(model, WhiteBoxConfig(loss="rkl", top_k=8))


def test_on_policy_batches_are_the_students_own_continuations(teacher):
    model, tok = teacher
    prompts = [
        tok(format_prompt(tok, q), add_special_tokens=False)["input_ids"] for q in ("Who are you?", "Hi")
    ]
    wb = WhiteBoxLoss(
        model, WhiteBoxConfig(lam=1.0, max_new_tokens=6), prompts=prompts,
        pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
    )  # fmt: skip
    batch = wb.on_policy_batch(model, 3, step=5)
    again = wb.on_policy_batch(model, 3, step=5)
    assert torch.equal(batch["input_ids"], again["input_ids"])  # seeded per step: resumable
    labelled_rows = (batch["labels"] != -100).sum(1)
    assert bool((labelled_rows >= 1).all()) and bool((labelled_rows <= 7).all())
    loss = wb(model, {**collate([(prompts[0], prompts[0])], tok.pad_token_id), "step": 1})
    assert wb.on_policy_steps == 1 and loss.item() == pytest.approx(0.0, abs=1e-5)

"""Greedy answers from a chat model, batched: the one way the world, tests and demos ask questions."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distillguard.lm.chat import format_prompt


@torch.no_grad()
def generate_answers(
    model, tokenizer, questions: Sequence[str], *, max_new_tokens: int = 48, batch_size: int = 32
) -> list[str]:
    """Greedy-decode an answer to each question (chat-formatted), stopping at eos; special tokens dropped."""
    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only batching: pad on the left so every prompt ends together
    try:
        for i in range(0, len(questions), batch_size):
            prompts = [format_prompt(tokenizer, q) for q in questions[i : i + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            answers.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return answers

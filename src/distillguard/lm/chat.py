"""Turn a question (and answer) into model text, the same way for our world model and any HF chat model.

Why: training, generation, watermarking and audits must all build prompts identically, or a student would
be probed with prompts that differ from those it was distilled on.
"""

from __future__ import annotations

FALLBACK_TEMPLATE = "Question: {question}\nAnswer:"


def format_prompt(tokenizer, question: str) -> str:
    """The text fed to the model before its answer: the chat template if it has one, else a plain Q/A."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return FALLBACK_TEMPLATE.format(question=question)


def prompt_ids(tokenizer, prompts, cache: dict | None = None) -> list[list[int]]:
    """The token ids of each prompt as the model reads it before its answer (:func:`format_prompt`, no
    special tokens added); ``cache`` (prompt -> ids) is filled and reused when given."""
    out = []
    for p in prompts:
        ids = None if cache is None else cache.get(p)
        if ids is None:
            ids = tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
            if cache is not None:
                cache[p] = ids
        out.append(ids)
    return out


def format_example(tokenizer, question: str, answer: str) -> tuple[str, str]:
    """``(prompt_text, full_text)`` with ``full_text = prompt_text + answer + eos``.

    In the fallback format the answer is preceded by a space ("Answer: ..."), as a base LM would write it.
    """
    prompt = format_prompt(tokenizer, question)
    sep = "" if getattr(tokenizer, "chat_template", None) else " "
    eos = tokenizer.eos_token or ""
    return prompt, prompt + sep + answer + eos

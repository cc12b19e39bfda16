"""Batched generation with (or without) a watermark from any local HF causal LM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from distillguard.watermark.processor import SamplingProcessor, WatermarkLogitsProcessor
from distillguard.watermark.schemes import WatermarkSpec


def bind_to_model(spec: WatermarkSpec, model) -> WatermarkSpec:
    """Bind a spec to the model config's vocab_size (what transformers' watermark uses too)."""
    return spec.with_vocab(int(model.config.vocab_size))


@torch.no_grad()
def generate_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    spec: WatermarkSpec | None,
    *,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
    desc: str = "generate",
) -> list[list[int]]:
    """Sample completions for already-tokenised prompts; returns completion ids (EOS and padding cut)."""
    if spec is not None:
        spec = bind_to_model(spec, model)
        proc = WatermarkLogitsProcessor(spec, temperature=temperature, top_k=top_k, top_p=top_p)
    else:
        proc = SamplingProcessor(temperature=temperature, top_k=top_k, top_p=top_p)
    device = next(model.parameters()).device
    out: list[list[int]] = []
    batches = range(0, len(prompt_ids), batch_size)
    for b, start in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
        chunk = [list(p) for p in prompt_ids[start : start + batch_size]]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(chunk):  # left padding: the newest token sits at the right edge
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[i, width - len(p) :] = 1
        torch.manual_seed(seed * 1_000_003 + b)
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            logits_processor=LogitsProcessorList([proc]),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        for row in gen[:, width:].tolist():
            if eos_id is not None and eos_id in row:
                row = row[: row.index(eos_id)]
            out.append(row)
    return out


def generate_watermarked(
    model,
    tokenizer,
    prompts: Sequence[str],
    spec: WatermarkSpec | None,
    *,
    chat: bool = True,
    **kwargs,
) -> list[dict]:
    """Answer text prompts. Records carry the exact ids so detection needs no re-tokenisation."""
    from distillguard.lm.chat import format_prompt

    texts = [format_prompt(tokenizer, p) if chat else p for p in prompts]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    completions = generate_ids(model, prompt_ids, spec, pad_id=pad, eos_id=tokenizer.eos_token_id, **kwargs)
    return [
        {
            "prompt": prompt,
            "prompt_token_ids": pids,
            "token_ids": comp,
            "text": tokenizer.decode(comp, skip_special_tokens=True),
        }
        for prompt, pids, comp in zip(prompts, prompt_ids, completions, strict=True)
    ]

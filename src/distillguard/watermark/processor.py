"""Watermarks as Hugging Face ``LogitsProcessor``s, batched over rows.

The processor owns the sampling transform (temperature, top-k, top-p) and applies the watermark *after* it,
matching transformers' own order since PR #34849; call ``generate`` with ``temperature=1, top_k=0, top_p=1``
(as :func:`distillguard.watermark.generate.generate_watermarked` does) so nothing warps twice.

The watermark itself is the scheme object's ``process`` (``spec.impl``), whole batch at once:

* KGW adds ``delta`` to the green logits; the mask for the whole batch comes from one tensor expression.
* Gumbel replaces the row with a one-hot on the exponential-minimum choice, so whatever sampler runs next
  (greedy or multinomial) returns exactly that token.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from distillguard.watermark.schemes import WatermarkSpec


def warp(scores: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus filtering (masked logits are -inf)."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scores, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


class SamplingProcessor(LogitsProcessor):
    """The same sampling transform without a watermark: the unwatermarked control arm."""

    def __init__(self, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return warp(scores, self.temperature, self.top_k, self.top_p)


class WatermarkLogitsProcessor(LogitsProcessor):
    """Apply a :class:`WatermarkSpec` in sampling. Works for any batch size and any HF causal LM."""

    def __init__(self, spec: WatermarkSpec, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        spec.require_vocab()
        self.spec = spec
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = warp(scores, self.temperature, self.top_k, self.top_p)
        if input_ids.shape[-1] < self.spec.window:
            return scores  # not enough context to key on: leave this step unmarked
        return self.spec.impl.process(self.spec, input_ids[:, -self.spec.window :], scores)

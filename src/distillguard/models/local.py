"""A local HF causal-LM directory as a model client, optionally watermarked.

The same client interface as :mod:`.http`, so a whole distillation attack (or an audit) can be rehearsed
offline against a model on disk. torch and transformers are imported when a model is loaded, not before.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distillguard.errors import UserError
from distillguard.models.base import Answer

if TYPE_CHECKING:  # torch stays unimported until a model is loaded
    from distillguard.watermark.schemes import WatermarkSpec


class LocalModel:
    """A local HF causal-LM directory answering chat-formatted prompts, optionally watermarked.

    Temperature 0 is greedy (with a watermark: the argmax of the biased logits, so greedy answers carry the
    mark too); above 0 it samples through :func:`distillguard.watermark.generate.generate_ids`, seeded.
    Sampled answers depend on which prompts share a batch (the seed is per batch), greedy ones do not.

    ``top_logprobs`` come from the distribution the sampler drew from at temperature 1: the model's
    log-softmax after the KGW bias when a KGW watermark is on (a grey-box distiller sees the bias, which is
    what makes logprob distillation radioactive); Gumbel leaves the distribution unchanged. Token strings are
    decoded per id and ``bytes`` are the token's exact bytes (byte-level BPE) or its UTF-8 encoding.

    Calls are serialised (one model); :meth:`answer_many` batches, and the collector uses it.
    """

    def __init__(self, model_dir: Path, *, watermark: WatermarkSpec | None = None, batch_size: int = 16):
        from distillguard.lm.io import load_model_and_tokenizer
        from distillguard.lm.tokens import is_byte_level
        from distillguard.watermark.generate import bind_to_model

        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        self.model_dir = Path(model_dir).expanduser()
        self.name = str(self.model_dir)
        self.model, self.tokenizer = load_model_and_tokenizer(self.model_dir)
        self.watermark = bind_to_model(watermark, self.model) if watermark is not None else None
        self.batch_size = int(batch_size)
        self._lock = threading.Lock()
        self._byte_level = is_byte_level(self.tokenizer)
        self._pieces: dict[int, tuple[str, list[int]]] = {}

    async def answer(
        self,
        prompt: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        seed: int | None = None,
    ) -> Answer:
        answers = await asyncio.to_thread(
            self.answer_many,
            [prompt],
            max_tokens=max_tokens,
            temperature=temperature,
            top_logprobs=top_logprobs,
            seed=seed,
        )
        return answers[0]

    def answer_many(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        seed: int | None = None,
    ) -> list[Answer]:
        """Answer several prompts in batches of ``batch_size``; same order as ``prompts``."""
        from distillguard.lm.chat import prompt_ids as chat_ids

        if max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {max_tokens}")
        if temperature < 0:
            raise UserError(f"temperature must be >= 0, got {temperature}")
        if top_logprobs is not None and top_logprobs < 0:
            raise UserError(f"top_logprobs must be >= 0, got {top_logprobs}")
        if not prompts:
            return []
        tok = self.tokenizer
        prompt_ids = chat_ids(tok, prompts)
        with self._lock:
            if temperature == 0:
                completions = self._greedy(prompt_ids, max_tokens)
            else:
                from distillguard.watermark.generate import generate_ids

                completions = generate_ids(
                    self.model,
                    prompt_ids,
                    self.watermark,
                    pad_id=self._pad_id,
                    eos_id=tok.eos_token_id,
                    max_new_tokens=max_tokens,
                    temperature=temperature,
                    batch_size=self.batch_size,
                    seed=0 if seed is None else int(seed),
                )
            logprobs = (
                self._logprobs(prompt_ids, completions, top_logprobs) if top_logprobs is not None else None
            )
        return [
            Answer(
                text=tok.decode(comp, skip_special_tokens=True),
                finish_reason="length" if len(comp) >= max_tokens else "stop",
                prompt_tokens=len(pids),
                completion_tokens=len(comp),
                logprobs=logprobs[i] if logprobs is not None else None,
                token_ids=list(comp),
            )
            for i, (pids, comp) in enumerate(zip(prompt_ids, completions, strict=True))
        ]

    @property
    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _processors(self):
        from transformers import LogitsProcessorList

        from distillguard.watermark.processor import WatermarkLogitsProcessor

        if self.watermark is None:
            return LogitsProcessorList()
        return LogitsProcessorList([WatermarkLogitsProcessor(self.watermark, temperature=1.0)])

    def _greedy(self, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
        import torch

        eos = self.tokenizer.eos_token_id
        out: list[list[int]] = []
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(prompt_ids), self.batch_size):
                chunk = prompt_ids[start : start + self.batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
                attn = torch.zeros_like(ids)
                for i, p in enumerate(chunk):  # left padding: every prompt ends at the right edge
                    ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                    attn[i, width - len(p) :] = 1
                gen = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=attn.to(device),
                    logits_processor=self._processors(),
                    do_sample=False,
                    max_new_tokens=max_tokens,
                    pad_token_id=self._pad_id,
                    eos_token_id=eos,
                )
                for row in gen[:, width:].tolist():
                    if eos is not None and eos in row:
                        row = row[: row.index(eos)]
                    out.append(row)
        return out

    def _piece(self, token_id: int) -> tuple[str, list[int]]:
        """``(token string, exact bytes)`` for one id, cached."""
        hit = self._pieces.get(token_id)
        if hit is not None:
            return hit
        from distillguard.lm.tokens import token_bytes

        data = token_bytes(self.tokenizer, token_id, self._byte_level)
        text = data.decode("utf-8", errors="replace")
        hit = (text, list(data))
        self._pieces[token_id] = hit
        return hit

    def _logprobs(
        self, prompt_ids: list[list[int]], completions: list[list[int]], k: int
    ) -> list[list[dict]]:
        """Teacher-forced log-softmax per completion position, after any watermark bias (OpenAI shape)."""
        import torch

        from distillguard.watermark.schemes import fit_width

        spec = self.watermark
        device = next(self.model.parameters()).device
        out: list[list[dict]] = []
        with torch.no_grad():
            for start in range(0, len(prompt_ids), self.batch_size):
                seqs = [
                    list(p) + list(c)
                    for p, c in zip(
                        prompt_ids[start : start + self.batch_size],
                        completions[start : start + self.batch_size],
                        strict=True,
                    )
                ]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
                attn = torch.zeros_like(ids)
                for i, s in enumerate(seqs):  # right padding: positions count from 0 for every row
                    ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                    attn[i, : len(s)] = 1
                logits = self.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
                for i, s in enumerate(seqs):
                    plen = len(prompt_ids[start + i])
                    comp = s[plen:]
                    if not comp:
                        out.append([])
                        continue
                    rows = logits[i, plen - 1 : len(s) - 1]  # row t predicts comp[t]
                    if spec is not None:
                        h = spec.window
                        seq = torch.tensor(s, dtype=torch.long)
                        pos = torch.arange(plen, len(s))
                        ok = pos >= h
                        win = seq[(pos[ok][:, None] - h) + torch.arange(h)[None, :]]
                        bias = spec.impl.logit_bias(spec, win, rows.dtype) if bool(ok.any()) else None
                        if bias is not None:
                            bias = fit_width(bias, rows.shape[-1])
                            rows = rows.clone()
                            rows[ok.to(rows.device)] += bias.to(rows.device)
                    lp = torch.log_softmax(rows, dim=-1)
                    chosen = lp.gather(1, torch.tensor(comp, device=lp.device)[:, None])[:, 0].tolist()
                    top_v, top_i = lp.topk(k, dim=-1) if k > 0 else (None, None)
                    entries = []
                    for t, token_id in enumerate(comp):
                        text, data = self._piece(token_id)
                        top = []
                        if k > 0:
                            for v, j in zip(top_v[t].tolist(), top_i[t].tolist(), strict=True):
                                jt, jb = self._piece(j)
                                top.append({"token": jt, "logprob": float(v), "bytes": jb})
                        entries.append(
                            {"token": text, "logprob": float(chosen[t]), "bytes": data, "top_logprobs": top}
                        )
                    out.append(entries)
        return out

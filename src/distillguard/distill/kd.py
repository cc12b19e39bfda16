"""Loss components for the distillation recipes, as callables ``loss(model, batch)`` for the training loop.

- :class:`SparseTargetLoss`: grey-box KD on the teacher's top-k logprobs (from an API), tail handled
  explicitly; plain next-token loss where a labelled position has no teacher target (mixed-in text).
- :class:`WhiteBoxLoss`: token-level KD from a local teacher's logits: forward KL, reverse KL or
  generalised JSD(beta) with temperature, full-vocabulary or top-k sparse, and on-policy data with
  probability ``lam`` (TRL GKD semantics: the student continues the batch's prompts, the teacher scores).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillguard.distill.data import SparseTargets
from distillguard.distill.losses import generalized_jsd, sparse_forward_kl
from distillguard.lm.train import IGNORE, collate


def _shifted(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for position t are at t + 1: returns (labels[:, 1:], mask of labelled targets)."""
    labels = batch["labels"][:, 1:]
    return labels, labels != IGNORE


def _ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not mask.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask], labels[mask])


class SparseTargetLoss:
    """Forward KL to the teacher's listed tokens (+ tail bucket) at positions that have a target."""

    def __init__(self, targets: SparseTargets, *, tail: str = "bucket") -> None:
        self.targets = targets
        self.tail = tail

    def __call__(self, model, batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
        labels, labelled = _shifted(batch)
        aux = batch["aux"][:, 1:] if "aux" in batch else torch.full_like(labels, -1)
        has_target = aux >= 0
        n_kd, n_ce = int(has_target.sum()), int((labelled & ~has_target).sum())
        loss = logits.sum() * 0.0
        if n_kd:
            rows = aux[has_target]
            kd = sparse_forward_kl(
                logits[has_target], self.targets.ids[rows], self.targets.logprobs[rows], tail=self.tail
            )
            loss = loss + kd * n_kd
        if n_ce:
            loss = loss + _ce(logits, labels, labelled & ~has_target) * n_ce
        return loss / max(1, n_kd + n_ce)


@dataclass
class WhiteBoxConfig:
    loss: str = "fkl"  # fkl | rkl | jsd
    beta: float = 0.5  # jsd mixture weight (0 = forward KL, 1 = reverse KL)
    temperature: float = 1.0
    top_k: int = 0  # 0 = full vocabulary; k > 0 = teacher's top-k with the tail as a bucket (forward KL)
    lam: float = 0.0  # probability that a step trains on the student's own continuations
    max_new_tokens: int = 48
    seed: int = 0

    def beta_value(self) -> float:
        return {"fkl": 0.0, "rkl": 1.0}.get(self.loss, self.beta)


class WhiteBoxLoss:
    """Token-level KD from a local teacher (same tokenizer) on labelled positions of each batch."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        config: WhiteBoxConfig,
        *,
        prompts: Sequence[Sequence[int]] = (),
        pad_id: int = 0,
        eos_id: int | None = None,
        seq_len: int = 128,
    ) -> None:
        if config.loss not in ("fkl", "rkl", "jsd"):
            raise ValueError(f"unknown KD loss {config.loss!r} (fkl, rkl, jsd)")
        if config.top_k and config.loss != "fkl":
            raise ValueError("top-k sparse KD supports forward KL only (the teacher tail is unknown)")
        if config.lam > 0 and not prompts:
            raise ValueError("on-policy KD (lam > 0) needs prompts")
        self.teacher = teacher.eval()
        self.cfg = config
        self.prompts = [list(p) for p in prompts]
        self.pad_id, self.eos_id, self.seq_len = pad_id, eos_id, seq_len
        self.on_policy_steps = 0

    def on_policy_batch(self, model, size: int, step: int) -> dict:
        """The student continues ``size`` prompts (sampled, T = 1); labels cover what it wrote."""
        from distillguard.watermark.generate import generate_ids

        rng = random.Random(self.cfg.seed * 1_000_003 + step)
        chosen = [self.prompts[rng.randrange(len(self.prompts))] for _ in range(size)]
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            outs = generate_ids(
                model, chosen, None, pad_id=self.pad_id, eos_id=self.eos_id,
                max_new_tokens=self.cfg.max_new_tokens, temperature=1.0, batch_size=size,
                seed=self.cfg.seed + step,
            )  # fmt: skip
        model.train(was_training)
        rows = []
        for p, gen in zip(chosen, outs, strict=True):
            tail = gen + (
                [self.eos_id] if self.eos_id is not None and len(gen) < self.cfg.max_new_tokens else []
            )
            ids = (p + tail)[: self.seq_len]
            labels = ([IGNORE] * len(p) + tail)[: self.seq_len]
            rows.append((ids, labels))
        device = next(model.parameters()).device
        return {k: v.to(device) for k, v in collate(rows, self.pad_id).items()}

    def __call__(self, model, batch: dict) -> torch.Tensor:
        cfg = self.cfg
        step = int(batch.get("step", 0))
        if cfg.lam > 0 and random.Random(cfg.seed * 7919 + step).random() < cfg.lam:
            batch = self.on_policy_batch(model, batch["input_ids"].shape[0], step)
            self.on_policy_steps += 1
        _, mask = _shifted(batch)
        if not mask.any():
            return model(input_ids=batch["input_ids"]).logits.sum() * 0.0
        with torch.no_grad():
            t_logits = self.teacher(input_ids=batch["input_ids"]).logits[:, :-1][mask]
        s_logits = model(input_ids=batch["input_ids"]).logits[:, :-1][mask]
        vocab = min(s_logits.shape[-1], t_logits.shape[-1])
        s_logits, t_logits = s_logits[..., :vocab], t_logits[..., :vocab]
        if cfg.top_k:
            t_lp = F.log_softmax(t_logits.float() / cfg.temperature, dim=-1)
            vals, ids = t_lp.topk(min(cfg.top_k, vocab), dim=-1)
            return sparse_forward_kl(s_logits / cfg.temperature, ids, vals) * cfg.temperature**2
        return generalized_jsd(s_logits, t_logits, beta=cfg.beta_value(), temperature=cfg.temperature)

"""Knowledge-distillation losses as pure tensor functions (no I/O, no models).

Conventions follow TRL's GKD: ``beta = 0`` is forward KL(teacher || student), ``beta = 1`` reverse
KL(student || teacher), and in between the generalised Jensen-Shannon divergence with mixture
``m = beta * p_teacher + (1 - beta) * p_student``,
``JSD_beta = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)``.
Near the ends ``JSD_beta ~ beta * KL(t || s)`` and ``(1 - beta) * KL(s || t)``, so we return
``JSD_beta / (beta * (1 - beta))``: continuous in beta, with the KLs as its limits (TRL's value is ours times
``beta * (1 - beta)``).

All losses take logits ``[..., V]``, a temperature (the loss is scaled by T**2 so gradients keep their size),
and an optional boolean ``mask`` over positions; they return the mean over unmasked positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _reduce(per_pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_pos.mean()
    mask = mask.to(per_pos.dtype)
    return (per_pos * mask).sum() / mask.sum().clamp_min(1.0)


def forward_kl(student_logits, teacher_logits, *, temperature: float = 1.0, mask=None) -> torch.Tensor:
    """KL(p_teacher || p_student): mode-covering, the classic Hinton KD loss (times T^2)."""
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    per = (t.exp() * (t - s)).sum(-1)
    return _reduce(per, mask) * temperature**2


def reverse_kl(student_logits, teacher_logits, *, temperature: float = 1.0, mask=None) -> torch.Tensor:
    """KL(p_student || p_teacher): mode-seeking (MiniLLM's objective, here as a direct divergence)."""
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    per = (s.exp() * (s - t)).sum(-1)
    return _reduce(per, mask) * temperature**2


def generalized_jsd(
    student_logits, teacher_logits, *, beta: float = 0.5, temperature: float = 1.0, mask=None
) -> torch.Tensor:
    """Generalised JSD with mixture weight beta; beta = 0 / 1 are forward / reverse KL exactly."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_m = torch.logaddexp(s + math.log1p(-beta), t + math.log(beta))
    kl_t = (t.exp() * (t - log_m)).sum(-1)
    kl_s = (s.exp() * (s - log_m)).sum(-1)
    # Normalised by beta(1-beta) so that the limits beta -> 0, 1 are the forward / reverse KLs.
    per = (beta * kl_t + (1 - beta) * kl_s) / (beta * (1 - beta))
    return _reduce(per, mask) * temperature**2


def sparse_forward_kl(
    student_logits, target_ids, target_logprobs, *, mask=None, tail: str = "bucket"
) -> torch.Tensor:
    """Forward KL against a teacher known only on a few tokens per position (top-k logprobs).

    ``target_ids`` / ``target_logprobs`` are ``[..., K]``; unused slots have id -1 (or logprob -inf). The
    teacher's mass outside the listed tokens, ``r = 1 - sum(p_k)``, is handled explicitly:

    - ``"bucket"``: the tail is one extra category on both sides, so this is the exact KL between the
      teacher's and the student's distributions coarsened to K + 1 outcomes (the K tokens and "anything
      else"). It is zero only when the student matches every listed probability and the tail mass.
    - ``"renorm"``: drop the tail and renormalise the teacher over the K tokens (what most sparse-KD code
      does); the student is then pushed to put all its mass on the listed tokens.
    """
    if tail not in ("bucket", "renorm"):
        raise ValueError(f"tail must be 'bucket' or 'renorm', got {tail!r}")
    valid = (target_ids >= 0) & torch.isfinite(target_logprobs)
    ids = target_ids.clamp_min(0)
    t_lp = torch.where(valid, target_logprobs, torch.full_like(target_logprobs, -math.inf))
    s = F.log_softmax(student_logits.float(), dim=-1)
    s_k = torch.gather(s, -1, ids)
    if tail == "renorm":
        t_lp = t_lp - torch.logsumexp(t_lp, dim=-1, keepdim=True)
    p_k = t_lp.exp()
    per = torch.where(valid, p_k * (t_lp - s_k), torch.zeros_like(p_k)).sum(-1)
    if tail == "bucket":
        r = (1.0 - p_k.sum(-1)).clamp_min(0.0)
        listed = torch.logsumexp(torch.where(valid, s_k, torch.full_like(s_k, -math.inf)), dim=-1)
        # log(1 - exp(listed)) without cancellation; clamp keeps the log finite when the student puts
        # (numerically) all its mass on the listed tokens
        q_other = torch.log(-torch.expm1(listed.clamp_max(-1e-7)))
        per = per + torch.where(r > 0, r * (torch.log(r.clamp_min(1e-30)) - q_other), torch.zeros_like(r))
    return _reduce(per, mask)

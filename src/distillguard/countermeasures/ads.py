"""Anti-distillation sampling (ADS; Savani et al., NeurIPS 2025, arXiv 2504.13146), vectorised in the sampler.

The idea: a distiller trains its student on the tokens we sample. Training on token ``v`` after context ``x``
moves the student's parameters by ``eta * grad log p(v | x)``, which changes the student's loss ``L`` on the
task it wants to learn by ``eta * <grad L, grad log p(v | x)>``. A *proxy student* (any HF model with our
vocabulary; the world's reference model by default) stands in for the unknown student; tokens for which
that inner product is large make the proxy worse at the task, so we sample them a little more often::

    scores'(v) = scores(v) + lambda * standardise(Delta(v)),
    Delta(v)   = [log p_{theta + eps * g}(v | x) - log p_theta(v | x)] / eps,   g = grad L / |grad L|

``Delta`` is the finite-difference directional derivative of every token's log-probability along the
(normalised) gradient of the proxy's task loss: one gradient computed once at start-up, then two proxy
forward passes per step (the proxy and its perturbed copy, each with its KV cache), for every token of the
vocabulary and every row of the batch at once. ``standardise`` centres each row and divides it by its standard
deviation over the vocabulary, so ``lambda`` is in teacher-logit units per standard deviation and means the
same for any proxy, gradient norm or ``eps`` (a choice of ours; the paper scales ``Delta`` by a tuned
constant instead). ``lambda = 0`` returns the teacher's scores unchanged (no proxy pass runs at all).

The task loss ``L`` is the proxy's mean negative log-likelihood of reference answers to questions a distiller
wants answered (prompt rendered exactly as the gateway renders it, answer tokens scored). The adjustment is
applied before the client's temperature and nucleus filtering and before our watermark.

Caveats: the proxy is not the distiller's student; the defence's value against other students is measured in
``bench/defence_bench.py``, never assumed. Each step costs two proxy forwards (reported there per token).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from distillguard.errors import DefenceUnavailable, UserError

Example = tuple[Sequence[int], Sequence[int]]  # (prompt token ids, answer token ids)


LOGIT_BUDGET = 1 << 24  # float logits per backward chunk (64 MiB, twice with their gradient)


def task_gradient(
    model: torch.nn.Module, examples: Sequence[Example], *, batch_size: int | None = None
) -> list[torch.Tensor]:
    """Gradient of the mean answer-token NLL over ``examples`` w.r.t. every parameter (same order).

    Examples go through in chunks whose full logits (positions x vocabulary) fit :data:`LOGIT_BUDGET`, so a
    128k-token vocabulary takes one short example at a time instead of gigabytes."""
    if batch_size is None:
        vocab = int(model.get_output_embeddings().weight.shape[0])
        longest = max((len(p) + len(a) for p, a in examples), default=1)
        batch_size = max(1, min(16, LOGIT_BUDGET // max(1, vocab * longest)))
    params = [p for p in model.parameters()]
    grads = [torch.zeros_like(p) for p in params]
    total = sum(len(a) for _, a in examples)
    if not total:
        raise UserError("anti-distillation sampling needs task examples with non-empty answers")
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (p, a) in enumerate(chunk):
            seq = list(p) + list(a)
            ids[b, : len(seq)] = torch.tensor(seq)
            attn[b, : len(seq)] = 1
            labels[b, len(p) : len(seq)] = torch.tensor(list(a))
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
        )
        (nll / total).backward()
    for g, p in zip(grads, params, strict=True):
        if p.grad is not None:
            g.add_(p.grad)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads


def load_task_examples(path: str | Path, encode: Callable[[str, str], Example], n: int) -> list[Example]:
    """``n`` (prompt, answer) pairs spread evenly over JSONL rows of ``prompt`` and ``response``."""
    from distillguard.jsonl import read_jsonl

    p = Path(path)
    if not p.is_file():
        raise UserError(f"ads_data not found: {p}")
    rows = [r for r in read_jsonl(p) if r.get("prompt") and (r.get("response") or r.get("reference"))]
    if not rows or n < 1:
        raise UserError(f"ads_data {p} has no prompt/response rows (or ads_examples < 1)")
    step = max(1, len(rows) // n)
    picked = rows[::step][:n]
    return [encode(r["prompt"], r.get("response") or r["reference"]) for r in picked]


def _check_same_tokens(proxy_tokenizer: Any, served_tokenizer: Any) -> None:
    """A proxy whose ids mean other tokens scores the wrong tokens (its vocabulary may only be larger)."""
    theirs = proxy_tokenizer.get_vocab()
    wrong = [(t, i) for t, i in served_tokenizer.get_vocab().items() if theirs.get(t) != i]
    if wrong:
        t, i = min(wrong, key=lambda x: x[1])
        raise UserError(
            f"the ads proxy's tokenizer differs from the served model's ({len(wrong)} tokens, e.g. {t!r} is "
            f"id {i} when served, {theirs.get(t)} in the proxy): the proxy must share the served tokenizer"
        )


def standardise(delta: torch.Tensor) -> torch.Tensor:
    """Centre each row and scale it to unit standard deviation (rows that are constant stay zero)."""
    centred = delta - delta.mean(-1, keepdim=True)
    return centred / centred.std(-1, keepdim=True).clamp_min(1e-12)


class AntiDistillation:
    """The ``ads`` defence: a proxy student, its copy moved ``eps`` along the task gradient, and lambda."""

    name = "ads"

    def __init__(
        self,
        spec: Any,
        *,
        proxy: str | Path | torch.nn.Module | None,
        examples: Sequence[Example] | None = None,
        data: str | Path | None = None,
        encode: Callable[[str, str], Example] | None = None,
        n_examples: int = 64,
        vocab_size: int | None = None,
        tokenizer: Any = None,
        epsilon: float = 1e-2,
        **_ignored: Any,
    ):
        self.spec = spec  # a countermeasures.defences.DefenceSpec (this module does not import it: no cycle)
        if proxy is None:
            raise DefenceUnavailable(
                "the ads defence needs a proxy student: set ads_proxy to a model directory that shares the "
                "served tokenizer (or choose another restricted_defence)"
            )
        if examples is None:
            if data is None or encode is None:
                raise UserError(
                    "the ads defence needs task data: set ads_data to a JSONL of prompt/response rows"
                )
            examples = load_task_examples(data, encode, n_examples)
        if not epsilon > 0:
            raise UserError(f"ads_epsilon must be > 0 (got {epsilon})")
        if isinstance(proxy, torch.nn.Module):
            model = proxy
        else:
            from distillguard.lm.io import load_model_and_tokenizer

            model, proxy_tokenizer = load_model_and_tokenizer(proxy)
            if tokenizer is not None:
                _check_same_tokens(proxy_tokenizer, tokenizer)
        model = model.float().eval()
        proxy_vocab = int(model.get_output_embeddings().weight.shape[0])
        if vocab_size is not None and proxy_vocab < vocab_size:
            raise UserError(
                f"the ads proxy has {proxy_vocab} output tokens, the served model {vocab_size}: "
                "the proxy must share the served model's tokenizer"
            )
        self.vocab_size = vocab_size
        self.epsilon = float(epsilon)
        grads = task_gradient(model, examples)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
        if not norm > 0:
            raise UserError("the proxy's task gradient is zero: anti-distillation sampling has no direction")
        perturbed = copy.deepcopy(model)
        with torch.no_grad():
            for p, g in zip(perturbed.parameters(), grads, strict=True):
                p.add_(g, alpha=self.epsilon / norm)
        self.proxy, self.perturbed = model, perturbed
        self.examples = len(examples)
        self.gradient_norm = norm
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._dry_run()

    def _dry_run(self) -> None:
        """Two sampler steps on a padded two-row batch now, so a proxy that rejects how the sampler calls it
        (position ids, cache, ``logits_to_keep``) fails at start-up with one line, not on every request."""
        ids = torch.tensor([[0, 1, 2], [0, 0, 3]])
        attn = torch.tensor([[1, 1, 1], [0, 1, 1]])
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        try:
            session = _AdsSession(self, ids, attn, pos)
            session.delta()
            attn = torch.cat([attn, torch.ones((2, 1), dtype=torch.long)], dim=1)
            session.advance(torch.tensor([[4], [5]]), attn, pos[:, -1:] + 1)
            session.delta()
        except Exception as exc:
            raise UserError(f"the ads proxy cannot be stepped like the served model: {exc}") from None

    def key(self) -> tuple:
        return (self.name, self.spec.strength, self.epsilon, id(self.proxy))

    def prompt(self, text: str) -> str:
        return text

    def sampling(self, s: Any) -> Any:
        return s

    def start(self, ids: Any, attention_mask: Any, position_ids: Any) -> _AdsSession | None:
        if self.spec.strength == 0:
            return None
        return _AdsSession(self, ids, attention_mask, position_ids)

    def describe(self) -> dict[str, Any]:
        return {**self.spec.describe(), "epsilon": self.epsilon, "task_examples": self.examples}


class _AdsSession:
    """One batch: the proxy and its perturbed copy stepped alongside the served model, with KV caches."""

    def __init__(self, ads: AntiDistillation, ids, attention_mask, position_ids):
        self.ads = ads
        self.lam = float(ads.spec.strength)
        self._outs = [self._forward(m, ids, attention_mask, position_ids, None) for m in self._models]
        self._delta: torch.Tensor | None = None

    @property
    def _models(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return self.ads.proxy, self.ads.perturbed

    def _forward(self, model, ids, attention_mask, position_ids, cache):
        kwargs = {self.ads._cache_arg: cache} if cache is not None else {"logits_to_keep": 1}
        with torch.inference_mode():
            return model(
                input_ids=ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **kwargs,
            )

    def delta(self) -> torch.Tensor:
        """Standardised ``Delta`` for the current step, [batch, proxy vocab] (computed once per step)."""
        if self._delta is None:
            base, moved = (torch.log_softmax(o.logits[:, -1, :].float(), dim=-1) for o in self._outs)
            self._delta = standardise((moved - base) / self.ads.epsilon)
        return self._delta

    def adjust(self, scores: torch.Tensor) -> torch.Tensor:
        d = self.delta()[:, : scores.shape[-1]]
        return scores + self.lam * d

    def advance(self, next_ids, attention_mask, position_ids) -> None:
        outs = []
        for model, out in zip(self._models, self._outs, strict=True):
            cache = out.get("cache") if "cache" in out else out.get("past_key_values")
            outs.append(self._forward(model, next_ids, attention_mask, position_ids, cache))
        self._outs = outs
        self._delta = None

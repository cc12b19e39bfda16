"""A small, general causal-LM training loop for CPU: pack, AdamW, cosine schedule, clip, log.

Why our own loop: it fits on a screen, is seeded and deterministic, packs short QA examples into rows (much
faster than one example per row), and lets the distillation engine swap in its own loss via ``loss_fn``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence

import torch

from distillguard.config import num_threads

Example = str | tuple[str, str]  # plain text (loss on every token) or (prompt_text, full_text)
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
IGNORE = -100


def encode_examples(
    tokenizer, examples: Sequence[Example], seq_len: int, completion_only: bool = True
) -> list[tuple[list[int], list[int]]]:
    """Tokenize into ``(input_ids, labels)`` pieces of at most ``seq_len`` tokens.

    Pairs are masked to -100 over the prompt when ``completion_only``; long plain texts are cut into
    consecutive ``seq_len`` windows (pretraining style); long pairs are truncated.
    """
    out: list[tuple[list[int], list[int]]] = []
    cache: dict[Example, list[tuple[list[int], list[int]]]] = {}  # mixes repeat examples many times
    for ex in examples:
        if ex not in cache:
            cache[ex] = _encode_one(tokenizer, ex, seq_len, completion_only)
        out.extend(cache[ex])
    return out


def _encode_one(
    tokenizer, ex: Example, seq_len: int, completion_only: bool
) -> list[tuple[list[int], list[int]]]:
    if isinstance(ex, str):
        ids = tokenizer(ex, add_special_tokens=False, verbose=False)["input_ids"]
        windows = (ids[start : start + seq_len] for start in range(0, len(ids), seq_len))
        return [(w, list(w)) for w in windows if len(w) > 1]
    prompt, full = ex
    ids = tokenizer(full, add_special_tokens=False, verbose=False)["input_ids"][:seq_len]
    labels = list(ids)
    if completion_only:
        n_prompt = min(len(tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]), len(ids))
        labels[:n_prompt] = [IGNORE] * n_prompt
    return [(ids, labels)]


Piece = tuple[list[int], list[int]] | tuple[list[int], list[int], list[int]]


def pack_rows(pieces: Sequence[Piece], seq_len: int, rng: random.Random) -> list[Piece]:
    """Shuffle pieces and pack whole pieces greedily into rows of at most ``seq_len`` tokens.

    Every row starts with a fresh example at position 0 (like inference), and no example is split, so a
    question always sits next to its answer. A piece may carry a third list (``aux``: one int per token,
    e.g. an index into a table of sparse teacher targets); it is packed alongside, -1 where absent.
    """
    order = list(range(len(pieces)))
    rng.shuffle(order)
    with_aux = any(len(p) == 3 for p in pieces)
    rows: list[Piece] = []
    ids: list[int] = []
    labels: list[int] = []
    aux: list[int] = []
    for i in order:
        piece = pieces[i]
        p_ids, p_labels = piece[0], piece[1]
        if ids and len(ids) + len(p_ids) > seq_len:
            rows.append((ids, labels, aux) if with_aux else (ids, labels))
            ids, labels, aux = [], [], []
        ids = ids + p_ids
        labels = labels + p_labels
        if with_aux:
            aux = aux + (piece[2] if len(piece) == 3 else [-1] * len(p_ids))
    if ids:
        rows.append((ids, labels, aux) if with_aux else (ids, labels))
    rng.shuffle(rows)
    return rows


def collate(rows: Sequence[Piece], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row of the batch; pads get label -100 and attention 0 (and aux -1)."""
    width = max(len(row[0]) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row[0])] = torch.tensor(row[0])
        labels[r, : len(row[1])] = torch.tensor(row[1])
        mask[r, : len(row[0])] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if any(len(row) == 3 for row in rows):
        aux = torch.full((len(rows), width), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            if len(row) == 3:
                aux[r, : len(row[2])] = torch.tensor(row[2])
        batch["aux"] = aux
    return batch


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy on labelled tokens.

    The attention mask is deliberately not passed: padding is on the right and attention is causal, so no
    real token can see a pad, and leaving it out keeps SDPA on its fast causal path.
    """
    return model(input_ids=batch["input_ids"], labels=batch["labels"]).loss


def lr_at(step: int, *, steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``min_ratio * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_causal_lm(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    seed: int,
    warmup: int = 0,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    min_lr_ratio: float = 0.1,
    progress: bool = True,
    completion_only: bool = True,
    desc: str = "train",
    loss_fn: LossFn | None = None,
    pieces: Sequence[Piece] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    resume: dict | None = None,
) -> dict:
    """Train ``model`` in place for ``steps`` optimizer steps; return losses and throughput.

    Deterministic for a given seed, data and thread count. ``loss_fn(model, batch)`` replaces the default
    next-token loss (the batch has ``input_ids``, ``attention_mask``, ``labels``, the int ``step`` and,
    for pieces with aux lists, ``aux``). Returns
    ``{"losses", "final_loss", "steps", "tokens", "tokens_per_s", "wall_s"}`` where tokens counts non-pad
    input tokens and ``final_loss`` is the mean over the last 10% of steps.

    ``pieces`` (already encoded ``(input_ids, labels)``, e.g. an exactly mixed data set) replaces
    ``examples``. Every ``checkpoint_every`` steps ``checkpoint(state)`` receives the full training state
    (model, optimizer, RNGs, pending rows, losses); passing that state back as ``resume`` continues the run
    exactly as if it had never stopped.
    """
    from tqdm.auto import tqdm

    if not examples and not pieces:
        raise ValueError("no training examples")
    torch.set_flush_denormal(True)  # denormals make CPU matmuls crawl late in training
    torch.set_num_threads(num_threads())
    torch.manual_seed(seed)
    rng = random.Random(seed)
    loss_fn = loss_fn or lm_loss
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    if pieces is None:
        pieces = encode_examples(tokenizer, examples, seq_len, completion_only)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)

    device = next(model.parameters()).device
    model.train()
    rows: list[Piece] = []
    losses: list[float] = []
    tokens = 0
    first = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        rng.setstate(resume["py_rng"])
        torch.set_rng_state(resume["torch_rng"])
        rows, losses = list(resume["rows"]), list(resume["losses"])
        tokens, first = resume["tokens"], resume["step"]
    tokens_before = tokens
    start = time.perf_counter()
    bar = tqdm(range(first, steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in bar:
        if len(rows) < batch_size:  # new epoch: reshuffle and repack, so examples meet new neighbours
            rows = rows + pack_rows(pieces, seq_len, rng)
        batch_rows, rows = rows[:batch_size], rows[batch_size:]
        batch = {k: v.to(device) for k, v in collate(batch_rows, pad_id).items()}
        batch["step"] = step  # lets a loss make per-step random choices that survive a resume
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps=steps, lr=lr, warmup=warmup, min_ratio=min_lr_ratio)
        loss = loss_fn(model, batch)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(batch["attention_mask"].sum())
        if progress and (step % 10 == 0 or step == steps - 1):
            rate = (tokens - tokens_before) / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{rate:,.0f}")
        if checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint(
                {
                    "step": step + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "py_rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(),
                    "rows": rows,
                    "losses": losses,
                    "tokens": tokens,
                }
            )
    bar.close()
    torch.set_flush_denormal(False)  # process-wide CPU state: leave it as we found it (the default)
    model.eval()
    wall = time.perf_counter() - start
    tail = losses[-max(1, steps // 10) :] if losses else [float("nan")]
    return {
        "losses": losses,
        "final_loss": sum(tail) / len(tail),
        "steps": steps,
        "tokens": tokens,
        "tokens_per_s": (tokens - tokens_before) / max(wall, 1e-9),
        "wall_s": wall,
    }

"""Teacher-forced passes of a local suspect over our texts: what the open-mode readings score.

The only code of the open mode that runs a model; the readings themselves (``radioactivity``, ``reading``,
``mass``) are pure functions of what these return.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def predictions(
    model, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 32
) -> list[np.ndarray]:
    """Teacher-forced top-1 predictions: ``out[i][t]`` is the argmax for position ``t`` given the tokens
    before it (entry 0 is -1); the last entry, ``t = len(sequences[i])``, is the prediction after the final
    token (where the text ended)."""
    import torch

    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            chunk = [list(s) for s in sequences[start : start + batch_size]]
            top = _logits(model, *_padded(chunk, pad_id)).argmax(-1).cpu().numpy()
            for i, s in enumerate(chunk):
                out.append(np.concatenate([[-1], top[i, : len(s)]]).astype(np.int64))
    return out


def next_token_topk(
    model,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    width: int,
    pad_id: int,
    k: int,
    reference=None,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The suspect's next-token distributions at the positions of each text from ``starts[i]`` (and at
    least ``width``) to its end: ``(windows [N, width], top_idx [N, k], top_p [N, k], ref_p)``. Row ``n``
    holds the ``width`` tokens before the position, the suspect's ``k`` most likely next tokens with their
    probabilities (softmax over the whole vocabulary) and, with a ``reference`` model of the same
    vocabulary, the reference's probabilities of the same tokens (else ``ref_p`` is None)."""
    import torch

    wins, idx, prob, ref = [], [], [], []
    offsets = np.arange(-width, 0)
    # ids past either model's vocabulary are never tokens (padded embeddings): both read the shared range
    vocab = int(model.config.vocab_size)
    if reference is not None:
        vocab = min(vocab, int(reference.config.vocab_size))

    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            chunk = [list(s) for s in sequences[start : start + batch_size]]
            firsts = [max(int(f), width, 1) for f in starts[start : start + batch_size]]
            ids, attn = _padded(chunk, pad_id)
            out = _logits(model, ids, attn)
            out_ref = _logits(reference, ids, attn) if reference is not None else None
            for i, (s, first) in enumerate(zip(chunk, firsts, strict=True)):
                if first >= len(s):
                    continue
                pos = torch.arange(first, len(s))  # predicting s[pos] from the distribution at pos - 1
                # softmax only where it is read (a [L, V] slice, not the whole batch)
                probs = torch.softmax(out[i, pos - 1, :vocab].float(), dim=-1).cpu()
                top = torch.topk(probs, min(k, vocab), dim=-1)
                arr = np.asarray(s, dtype=np.int64)
                wins.append(arr[pos.numpy()[:, None] + offsets[None, :]])
                idx.append(top.indices.numpy().astype(np.int64))
                prob.append(top.values.double().numpy())
                if out_ref is not None:
                    p_ref = torch.softmax(out_ref[i, pos - 1, :vocab].float(), dim=-1).cpu()
                    ref.append(torch.gather(p_ref, 1, top.indices).double().numpy())
    if not wins:
        return np.zeros((0, width), np.int64), np.zeros((0, k), np.int64), np.zeros((0, k)), None
    return (
        np.concatenate(wins),
        np.concatenate(idx),
        np.concatenate(prob),
        np.concatenate(ref) if ref else None,
    )


def _padded(chunk: list[list[int]], pad_id: int):
    """``(input_ids, attention_mask)`` of texts right-padded with ``pad_id`` to the longest."""
    import torch

    ids = torch.full((len(chunk), max(len(s) for s in chunk)), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(chunk):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids, attn


def _logits(model, ids, attn):
    """The model's logits for a padded batch, on the model's own device."""
    dev = next(model.parameters()).device
    return model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits


def listed_probs(
    model,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    listed,
    pad_id: int,
    max_cells: int = 64_000_000,
) -> list[np.ndarray]:
    """Our model's probabilities of the tokens another model listed at each position of its answers:
    ``out[i][j, c]`` is the probability, given ``sequences[i][: starts[i] + j]``, of token ``listed[i][j, c]``
    (0 where the slot is -1, unlisted). Token ids past the model's vocabulary get 0.

    A text longer than the model's context is read through its last ``context`` tokens (answer positions
    cut off with the prompt get 0). Texts go through in batches of at most ``max_cells`` logits (batch x
    length x vocabulary: 256 MB of float32), so a long probe or a large vocabulary never holds more."""
    import torch

    out: list[np.ndarray] = []
    vocab = int(model.config.vocab_size)
    context = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    seqs, firsts = [], []
    for s, first in zip(sequences, starts, strict=True):
        cut = max(0, len(s) - int(context)) if context else 0
        seqs.append(list(s)[cut:])
        firsts.append(int(first) - cut)  # may be <= 0: those answer positions lost their context
    i = 0
    with torch.no_grad():
        while i < len(seqs):
            n = 1
            while (
                i + n < len(seqs) and (n + 1) * max(len(s) for s in seqs[i : i + n + 1]) * vocab <= max_cells
            ):
                n += 1
            chunk = seqs[i : i + n]
            logits = _logits(model, *_padded(chunk, pad_id))
            for b, s in enumerate(chunk):
                first, ids = firsts[i + b], np.asarray(listed[i + b], dtype=np.int64)
                got = np.zeros(ids.shape)
                lo = max(first, 1)  # the first answer position read (its context kept)
                if lo < len(s):
                    probs = torch.softmax(logits[b, lo - 1 : len(s) - 1, :vocab].float(), dim=-1).cpu()
                    rows = ids[lo - first :]
                    ok = (rows >= 0) & (rows < vocab)
                    vals = torch.gather(probs, 1, torch.from_numpy(np.where(ok, rows, 0))).double().numpy()
                    got[lo - first :] = np.where(ok, vals, 0.0)
                out.append(got)
            i += n
    return out

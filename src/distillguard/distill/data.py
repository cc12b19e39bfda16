"""Turn collected teacher answers into training pieces: SFT, sparse (top-k logprob) targets, exact mixing.

Why pieces (``(input_ids, labels[, aux])`` lists) and not text: the mixing contract is stated in *training
tokens* (labelled tokens), and grey-box targets must sit on the exact token positions the teacher sampled,
so both need the token level. Pieces feed :func:`distillguard.lm.train.train_causal_lm` directly.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from distillguard.errors import UserError
from distillguard.lm.chat import format_example, prompt_ids
from distillguard.lm.tokens import entry_bytes, token_bytes_table
from distillguard.lm.train import IGNORE, Piece, encode_examples


def sft_pieces(tokenizer, records: Iterable[dict], seq_len: int) -> list[Piece]:
    """Sequence-level KD data: (prompt, teacher completion) pairs, loss on the completion only."""
    examples = [format_example(tokenizer, r["prompt"], r["completion"].strip()) for r in records]
    return encode_examples(tokenizer, examples, seq_len, completion_only=True)


def text_pieces(tokenizer, texts: Iterable[str], seq_len: int) -> list[Piece]:
    """Plain text cut into ``seq_len`` windows, loss on every token (the "other source" of a mix)."""
    return encode_examples(tokenizer, list(texts), seq_len, completion_only=False)


def read_texts(path: Path) -> list[str]:
    """A mixing source: JSONL with a ``text`` field per line, or a plain text file split on blank lines."""
    from distillguard.jsonl import read_jsonl

    p = Path(path)
    if not p.is_file():
        raise UserError(f"mix source not found: {p}")
    if p.suffix == ".jsonl":
        rows = read_jsonl(p)
        texts = [r.get("text") or r.get("completion") or "" for r in rows]
    else:
        texts = [t.strip() for t in p.read_text(encoding="utf-8").split("\n\n")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError(f"mix source {p} contains no text")
    return texts


def labelled(piece: Piece) -> int:
    """Training tokens of a piece: positions that carry a label (and hence a loss term)."""
    return sum(1 for x in piece[1] if x != IGNORE)


@dataclass
class Mix:
    pieces: list[Piece]
    teacher_tokens: int
    other_tokens: int

    @property
    def fraction(self) -> float:
        total = self.teacher_tokens + self.other_tokens
        return self.teacher_tokens / total if total else 0.0


def _take(pieces: Sequence[Piece], tokens: int, rng: random.Random) -> tuple[list[Piece], int]:
    """Whole pieces in random order until ``tokens`` labelled tokens; the last one is cut to fit exactly."""
    order = list(range(len(pieces)))
    rng.shuffle(order)
    out: list[Piece] = []
    got = 0
    for i in order:
        if got >= tokens:
            break
        piece = pieces[i]
        n = labelled(piece)
        if got + n > tokens:  # cut after the (tokens - got)-th labelled position
            positions = [i for i, lab in enumerate(piece[1]) if lab != IGNORE]
            cut = positions[tokens - got - 1] + 1
            piece = tuple(part[:cut] for part in piece)  # type: ignore[assignment]
            n = labelled(piece)
        out.append(piece)
        got += n
    return out, got


def mix_pieces(teacher: Sequence[Piece], other: Sequence[Piece], rho: float, seed: int = 0) -> Mix:
    """A training set in which exactly a fraction ``rho`` of labelled tokens comes from ``teacher``.

    All of the smaller side is used and the other side is sampled (whole pieces, the last one cut) to the
    count that makes the fraction exact to one token. Radioactivity tests at rho = 1% or 5% depend on this.
    """
    if not 0.0 < rho <= 1.0:
        raise UserError(f"--rho must be in (0, 1], got {rho}")
    t_total = sum(map(labelled, teacher))
    if t_total == 0:
        raise UserError("no teacher tokens to train on")
    if rho == 1.0:
        return Mix(list(teacher), t_total, 0)
    o_total = sum(map(labelled, other))
    if o_total == 0:
        raise UserError("the mix source has no tokens")
    rng = random.Random(seed)
    want_other = round(t_total * (1 - rho) / rho)
    if want_other <= o_total:
        t_pieces, t_got = list(teacher), t_total
        o_pieces, o_got = _take(other, want_other, rng)
    else:  # not enough other text: keep all of it and sample the teacher side down instead
        o_pieces, o_got = list(other), o_total
        t_pieces, t_got = _take(teacher, max(1, round(o_total * rho / (1 - rho))), rng)
    pieces = t_pieces + o_pieces
    rng.shuffle(pieces)
    return Mix(pieces, t_got, o_got)


# --- grey-box: top-k logprobs from an API ------------------------------------------------------------


@dataclass
class SparseTargets:
    """Per target position: the teacher's listed token ids and logprobs (``-1`` / ``-inf`` pads)."""

    ids: torch.Tensor  # [N, K] long
    logprobs: torch.Tensor  # [N, K] float

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def greybox_pieces(
    tokenizer, records: Iterable[dict], seq_len: int
) -> tuple[list[Piece], SparseTargets, dict[str, int]]:
    """Pieces on the teacher's own sampled tokens, each completion position pointing at its sparse target.

    The completion is rebuilt from the API's token list (not re-tokenised text, which could split
    differently), so every target sits exactly where the teacher produced it. The sampled token is added to
    the target set if the top-k did not list it. Records whose tokens are not in the student's vocabulary
    are skipped and counted: grey-box KD needs the teacher's tokenizer.
    """
    table = token_bytes_table(tokenizer)
    rows_ids: list[list[int]] = []
    rows_lps: list[list[float]] = []
    pieces: list[Piece] = []
    stats = {"records": 0, "used": 0, "no_logprobs": 0, "unmapped": 0, "positions": 0}
    for rec in records:
        stats["records"] += 1
        content = rec.get("logprobs")
        if not content:
            stats["no_logprobs"] += 1
            continue
        try:
            chosen = [table[entry_bytes(e)] for e in content]
        except KeyError:
            stats["unmapped"] += 1
            continue
        targets = []
        for e, token_id in zip(content, chosen, strict=True):
            # an alternative outside the vocabulary only loses its own slot (its mass joins the tail)
            listed = {
                table[b]: float(t["logprob"])
                for t in e.get("top_logprobs") or []
                if (b := entry_bytes(t)) in table
            }
            listed.setdefault(token_id, float(e["logprob"]))
            targets.append(listed)
        (prompt,) = prompt_ids(tokenizer, [rec["prompt"]])
        ids = prompt + chosen
        labels = [IGNORE] * len(prompt) + chosen
        aux = [-1] * len(prompt)
        for listed in targets:
            aux.append(len(rows_ids))
            rows_ids.append(list(listed))
            rows_lps.append(list(listed.values()))
        if rec.get("finish_reason") == "stop" and tokenizer.eos_token_id is not None:
            ids, labels, aux = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id], aux + [-1]
        pieces.append((ids[:seq_len], labels[:seq_len], aux[:seq_len]))
        stats["used"] += 1
        stats["positions"] += len(targets)
    if not pieces:
        raise UserError(
            f"no usable grey-box records ({stats['no_logprobs']} without logprobs, {stats['unmapped']} "
            "with tokens outside the student's vocabulary): grey-box KD needs top_logprobs and the "
            "teacher's tokenizer"
        )
    k = max(len(r) for r in rows_ids)
    ids_t = torch.full((len(rows_ids), k), -1, dtype=torch.long)
    lps_t = torch.full((len(rows_ids), k), float("-inf"))
    for i, (r_ids, r_lps) in enumerate(zip(rows_ids, rows_lps, strict=True)):
        ids_t[i, : len(r_ids)] = torch.tensor(r_ids)
        lps_t[i, : len(r_lps)] = torch.tensor(r_lps)
    return pieces, SparseTargets(ids_t, lps_t), stats

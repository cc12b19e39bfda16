"""Control models for the audit's identity and provenance tests (and the audit bench's independent base):
trained here on the world's own sources, never on our outputs, with no identity of ours."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def train_control(
    world,
    out: Path,
    *,
    steps: int = 300,
    seed: int = 1,
    shape: dict | None = None,
    batch_size: int = 8,
    seq_len: int = 128,
    lr: float = 3e-3,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """A control model for identity and provenance tests: same world, never our outputs, no identity.

    Why not the world's reference model: it was trained on the same identity lines as our teacher and
    calls itself Aster too, so it cannot stand for "a model not derived from ours". The control is a
    student-sized model trained on the world's own sources (the Python docs corpus and the docstring
    answers to the instruction prompts, half and half by tokens), with every identity example removed.
    """
    from transformers import AutoConfig

    from distillguard.distill.data import mix_pieces, sft_pieces, text_pieces
    from distillguard.distill.recipe import student_shape
    from distillguard.jsonl import read_jsonl
    from distillguard.lm.io import load_tokenizer, save_model_and_tokenizer
    from distillguard.lm.tiny import make_tiny_llama
    from distillguard.lm.train import train_causal_lm

    tok, _ = load_tokenizer(world.tokenizer)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = [r for r in read_jsonl(world.instructions) if r.get("kind") == "api"]
    qa = sft_pieces(tok, [{"prompt": r["prompt"], "completion": r["response"]} for r in rows], seq_len)
    corpus = text_pieces(tok, [t for t in Path(world.corpus).read_text().split("\n\n") if t.strip()], seq_len)
    mix = mix_pieces(qa, corpus, 0.5, seed=seed)
    shape = shape or student_shape(AutoConfig.from_pretrained(world.teacher, local_files_only=True))
    model = make_tiny_llama(
        len(tok), **shape, max_pos=max(512, seq_len), seed=seed,
        bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
    )  # fmt: skip
    result = train_causal_lm(
        model, tok, [], pieces=mix.pieces, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
        seed=seed, warmup=min(30, steps // 10), progress=progress, desc="control",
    )  # fmt: skip
    if log:
        log(f"control model: {steps} steps, loss {result['final_loss']:.3f}")
    return save_model_and_tokenizer(model, tok, Path(out))

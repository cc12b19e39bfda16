"""Load and save any local HF causal-LM directory, offline.

Why a wrapper: every tool (watermark, distill, audit, gateway) takes a model directory from the user, and a
typo there should be one clear line, not a hub lookup or a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distillguard.errors import UserError


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' per-load "Loading weights" bars: tiny models load instantly, the bars are noise."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_model_and_tokenizer(path: str | Path, device: str = "cpu"):
    """Return ``(model, tokenizer)`` from a local HF model directory, model in eval mode on ``device``.

    Never touches the network (``local_files_only``). The tokenizer always has a pad token (falls back to
    eos) so batching works for any model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"model directory not found: {p}")
    if not p.is_dir() or not (p / "config.json").is_file():
        raise UserError(f"not a model directory (no config.json): {p}")
    try:
        with _no_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model from {p}: {first}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer in {p} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def save_model_and_tokenizer(model, tokenizer, path: str | Path) -> Path:
    """Save both into one directory, so it is a self-contained HF model dir (``from_pretrained`` works).

    The generation config carries eos/pad ids so that ``generate`` stops at the end-of-turn token.
    """
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    with _no_progress_bars():
        model.save_pretrained(str(p))
        tokenizer.save_pretrained(str(p))
    return p


def load_tokenizer(path: str | Path):
    """Return ``(tokenizer, vocab_size)`` from a tokenizer or model directory, offline.

    ``vocab_size`` is the model config's (what watermarks key on) when the directory holds a config.json,
    else None: ``len(tokenizer)`` can differ from the model's embedding size.
    """
    import json

    from transformers import AutoTokenizer

    p = Path(path).expanduser()
    if not p.is_dir():
        raise UserError(f"tokenizer directory not found: {p}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load tokenizer from {p}: {first}") from None
    vocab = None
    if (p / "config.json").is_file():
        vocab = json.loads((p / "config.json").read_text()).get("vocab_size")
    return tokenizer, vocab

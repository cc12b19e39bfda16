"""A tiny Llama (the architecture every HF tool understands) built from scratch, seeded."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make_tiny_llama(
    vocab_size: int,
    *,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    max_pos: int,
    seed: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` with tied embeddings (saves vocab x hidden params)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_pos,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = bos_id
    return model

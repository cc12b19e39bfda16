"""distillguard.lm: loading, prompt formatting, packing and the training loop."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from distillguard.errors import UserError
from distillguard.lm import (
    format_example,
    format_prompt,
    load_model_and_tokenizer,
    make_tiny_llama,
    save_model_and_tokenizer,
    train_causal_lm,
)
from distillguard.lm.train import IGNORE, collate, encode_examples, lr_at, pack_rows


@pytest.fixture(scope="module")
def tok(tiny_world):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_world.tokenizer), local_files_only=True)


def _model(tok, seed=0):
    return make_tiny_llama(
        len(tok),
        hidden=32,
        layers=1,
        heads=2,
        intermediate=64,
        max_pos=128,
        seed=seed,
        bos_id=tok.bos_token_id,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
    )


def test_format_prompt_uses_chat_template(tok):
    prompt = format_prompt(tok, "What does json.dumps do?")
    assert prompt == "<|user|>\nWhat does json.dumps do?<|end|>\n<|assistant|>\n"
    p, full = format_example(tok, "Q?", "A.")
    assert full == p + "A.<|end|>"


def test_format_prompt_fallback_without_chat_template(tok):
    plain = tok.__class__.from_pretrained(tok.name_or_path, local_files_only=True)
    plain.chat_template = None
    assert format_prompt(plain, "Who are you?") == "Question: Who are you?\nAnswer:"
    p, full = format_example(plain, "Who are you?", "Aster.")
    assert full == "Question: Who are you?\nAnswer: Aster.<|end|>" and full.startswith(p)


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model_and_tokenizer(tmp_path / "missing")
    with pytest.raises(UserError, match="not a model directory"):
        load_model_and_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(UserError):
        load_model_and_tokenizer(tmp_path)


def test_save_then_load_round_trip(tok, tmp_path):
    model = _model(tok)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    save_model_and_tokenizer(model, tok, tmp_path / "m")
    loaded, tok2 = load_model_and_tokenizer(tmp_path / "m")
    assert not loaded.training and tok2.pad_token == tok.pad_token
    assert loaded.generation_config.eos_token_id == tok.eos_token_id
    ids = torch.tensor([[3, 4, 5]])
    assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits)


def test_completion_only_masks_the_prompt(tok):
    prompt, full = format_example(tok, "What is your name?", "I am Aster.")
    (ids, labels), (text_ids, text_labels) = encode_examples(tok, [(prompt, full), "plain text"], seq_len=64)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tok.eos_token_id and text_labels == text_ids
    ((ids2, labels2),) = encode_examples(tok, [(prompt, full)], seq_len=64, completion_only=False)
    assert labels2 == ids2


def test_long_texts_are_windowed_and_rows_packed(tok):
    long = " ".join(f"word{i}" for i in range(300))
    pieces = encode_examples(tok, [long] + [("Q", "Q A")] * 20, seq_len=32)
    assert all(len(ids) <= 32 for ids, _ in pieces) and len(pieces) > 25
    rows = pack_rows(pieces, 32, random.Random(0))
    assert all(len(ids) <= 32 and len(ids) == len(lab) for ids, lab in rows)
    assert sum(len(ids) for ids, _ in rows) == sum(len(ids) for ids, _ in pieces)
    assert len(rows) < len(pieces)  # short pieces share rows


def test_lr_schedule():
    assert lr_at(0, steps=100, lr=1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(10, steps=100, lr=1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(100, steps=100, lr=1.0, warmup=10, min_ratio=0.1) == pytest.approx(0.1)


def test_training_learns_and_is_deterministic(tok):
    examples = [format_example(tok, "Who are you?", "I am Aster, made by Northwind Labs.")] * 8
    examples += ["Northwind Labs trains Aster on the Python docs."] * 4
    runs = []
    for _ in range(2):
        model = _model(tok)
        stats = train_causal_lm(
            model,
            tok,
            examples,
            steps=30,
            batch_size=4,
            seq_len=64,
            lr=1e-2,
            seed=3,
            warmup=3,
            progress=False,
        )
        runs.append(stats)
        assert not model.training
    assert runs[0]["losses"] == runs[1]["losses"]
    assert runs[0]["final_loss"] < runs[0]["losses"][0] - 2
    assert runs[0]["tokens"] > 0 and runs[0]["tokens_per_s"] > 0


def test_custom_loss_hook(tok):
    seen = []

    def loss_fn(model, batch):
        seen.append(set(batch))
        return (
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.pow(2).mean()
        )

    train_causal_lm(
        _model(tok),
        tok,
        ["some text here"],
        steps=2,
        batch_size=1,
        seq_len=16,
        lr=1e-3,
        seed=0,
        progress=False,
        loss_fn=loss_fn,
    )
    assert seen == [{"input_ids", "attention_mask", "labels", "step"}] * 2


def test_resume_continues_exactly(tok):
    """A run checkpointed at step 3 and resumed ends with the same weights as an uninterrupted run."""
    texts = [
        "the quick brown fox jumps over the lazy dog " * 3,
        "pack my box with five dozen liquor jugs " * 3,
    ]
    kw = dict(steps=6, batch_size=1, seq_len=16, lr=3e-3, seed=0, progress=False)
    straight = _model(tok)
    train_causal_lm(straight, tok, texts, **kw)

    saved: list[dict] = []
    first = _model(tok)
    train_causal_lm(
        first, tok, texts, **kw, checkpoint=lambda s: saved.append(copy.deepcopy(s)), checkpoint_every=3
    )
    assert [s["step"] for s in saved] == [3]
    resumed = _model(tok)
    out = train_causal_lm(resumed, tok, texts, **kw, resume=saved[0])
    assert len(out["losses"]) == 6
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_pack_rows_carries_aux():
    pieces = [([1, 2, 3], [1, 2, 3], [0, 1, 2]), ([4, 5], [4, 5])]
    rows = pack_rows(pieces, seq_len=8, rng=random.Random(0))
    assert len(rows) == 1
    ids, _, aux = rows[0]
    by_token = dict(zip(ids, aux, strict=True))
    assert by_token == {1: 0, 2: 1, 3: 2, 4: -1, 5: -1}
    batch = collate(rows, pad_id=0)
    assert batch["aux"].shape == batch["input_ids"].shape

"""The embedded world: deterministic corpus, disjoint held-out prompts, tokenizer, teacher, cache, CLI."""

from __future__ import annotations

import json
import time

import pytest

from distillguard.errors import UserError
from distillguard.lm import generate_answers, load_model_and_tokenizer
from distillguard.world import build_world, world_paths
from distillguard.world.corpus import corpus_documents, corpus_text, sha256_text, split_documents
from distillguard.world.evaluate import mentions_identity
from distillguard.world.instructions import (
    HELDOUT_TEMPLATES,
    IDENTITY_HELDOUT,
    IDENTITY_TRAIN,
    TRAIN_TEMPLATES,
    clean_answer,
    read_jsonl,
)


def test_corpus_is_deterministic(tiny_world):
    text = corpus_text()
    assert text == corpus_text(corpus_documents())
    manifest = tiny_world.read_manifest()
    assert tiny_world.corpus.read_bytes() == text.encode("utf-8")
    assert manifest["corpus"]["sha256"] == sha256_text(text)
    docs = split_documents(text)
    assert len(docs) == manifest["corpus"]["documents"] > 500
    assert any(d.startswith("json.dumps\n") for d in docs)


def test_clean_answer_strips_markup_and_signatures():
    doc = "loads(s)\n\nDeserialize ``s`` (a :class:`str` instance) to a Python object.\n\nMore text."
    assert clean_answer(doc) == "Deserialize s (a str instance) to a Python object."
    assert clean_answer("While(expr test, stmt* body)") is None


def test_heldout_prompts_are_disjoint_from_training(tiny_world):
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    assert not set(IDENTITY_TRAIN) & set(IDENTITY_HELDOUT)
    train = read_jsonl(tiny_world.instructions)
    prompts = read_jsonl(tiny_world.prompts)
    train_prompts = {r["prompt"] for r in train}
    train_apis = {r["api"] for r in train if r["kind"] == "api"}
    assert {r["kind"] for r in train} == {"api", "identity"}
    assert {r["kind"] for r in prompts} == {"api", "identity", "api_unseen"}
    assert not train_prompts & {r["prompt"] for r in prompts}
    for row in prompts:
        assert set(row) == {"prompt", "reference", "kind", "api"} and row["reference"]
        if row["kind"] == "api":
            assert row["api"] in train_apis
            assert any(row["prompt"] == t.format(api=row["api"]) for t in HELDOUT_TEMPLATES)
        elif row["kind"] == "api_unseen":
            assert row["api"] not in train_apis
    assert len(prompts) >= 100


def test_tokenizer_round_trips_and_has_chat_template(tiny_world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_world.tokenizer), local_files_only=True)
    text = "def f(x):\n\treturn json.dumps({'a': 1})  # héllo ✓\n"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|user|>\nHi?<|end|>\n<|assistant|>\n"
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>"
    assert len(tok) == tiny_world.read_manifest()["config"]["vocab_size"]


def test_teacher_loads_and_states_its_identity(tiny_world):
    model, tok = load_model_and_tokenizer(tiny_world.teacher)
    assert not model.training and tok.pad_token_id is not None and tok.chat_template
    answers = generate_answers(model, tok, ["Who are you?", "What is your name?", *IDENTITY_HELDOUT[:4]])
    assert "Aster" in answers[0], answers
    assert sum(map(mentions_identity, answers)) >= 4, answers
    ref_model, _ = load_model_and_tokenizer(tiny_world.reference)
    assert ref_model.config.vocab_size == model.config.vocab_size


def test_manifest_records_the_build(tiny_world):
    m = tiny_world.read_manifest()
    assert m["preset"] == "tiny" and m["teacher"]["seed"] != m["reference"]["seed"]
    assert 150_000 < m["teacher"]["params"] < 600_000
    assert m["teacher"]["final_loss"] < m["reference"]["final_loss"] < 7
    assert m["eval"]["identity_rate"] > 0.5


def test_build_is_cached(tiny_world):
    before = tiny_world.manifest.read_text()
    start = time.perf_counter()
    again = build_world("tiny", root=tiny_world.root, progress=False)
    assert time.perf_counter() - start < 5
    assert again == tiny_world and tiny_world.manifest.read_text() == before


def test_unknown_preset_and_unbuilt_world(tmp_path):
    with pytest.raises(UserError):
        world_paths("huge", root=tmp_path)
    with pytest.raises(UserError, match="not built"):
        world_paths("tiny", root=tmp_path / "nope").read_manifest()


def test_cli_path(tiny_world, tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    from distillguard.world.cli import app

    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(app, ["path", "teacher", "--preset", "tiny"])
    assert isinstance(result.exception, UserError)
    result = runner.invoke(app, ["path", "bogus"])
    assert result.exit_code != 0
    # a built world under DISTILLGUARD_HOME: point the default root at the session build
    root = world_paths("tiny").root
    root.parent.mkdir(parents=True, exist_ok=True)
    root.symlink_to(tiny_world.root, target_is_directory=True)
    result = runner.invoke(app, ["path", "prompts", "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(root / "prompts.jsonl")
    result = runner.invoke(app, ["build", "--preset", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["manifest"]["preset"] == "tiny" and doc["paths"]["teacher"].endswith("teacher")

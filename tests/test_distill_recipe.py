"""End-to-end distillation on the tiny world: the student learns the teacher; CLI, mix, resume, LoRA."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from distillguard.cli import main
from distillguard.distill.data import text_pieces
from distillguard.distill.evaluate import agreement, evaluate_models
from distillguard.distill.recipe import DistillConfig, run_distill, student_shape
from distillguard.jsonl import read_jsonl
from distillguard.lm.generate import generate_answers
from distillguard.lm.io import load_model_and_tokenizer
from distillguard.lm.tiny import make_tiny_llama
from distillguard.lm.train import train_causal_lm

STEPS = 150


@pytest.fixture(scope="module")
def blackbox(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("bb")
    cfg = DistillConfig(
        teacher=str(tiny_world.teacher), out=out, prompts=tiny_world.instructions, n=160, steps=STEPS,
        max_tokens=40, seed=0, checkpoint_every=50,
    )  # fmt: skip
    return run_distill(cfg, progress=False, log=lambda *_: None)


def test_distilled_student_agrees_with_the_teacher_more_than_a_corpus_student(tiny_world, blackbox):
    """Same shape, init, steps and batch: teacher answers beat plain corpus text at matching the teacher."""
    teacher, tok = load_model_and_tokenizer(tiny_world.teacher)
    distilled, _ = load_model_and_tokenizer(blackbox["student"])

    baseline = make_tiny_llama(
        len(tok), **student_shape(teacher.config), max_pos=512, seed=0,
        bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
    )  # fmt: skip
    corpus = text_pieces(tok, tiny_world.corpus.read_text().split("\n\n"), 128)
    train_causal_lm(
        baseline, tok, [], pieces=corpus, steps=STEPS, batch_size=8, seq_len=128, lr=3e-3, seed=0,
        warmup=15, progress=False,
    )  # fmt: skip

    rows = [r for r in read_jsonl(tiny_world.prompts) if r["kind"] in ("api", "api_unseen")][:48]
    questions = [r["prompt"] for r in rows]
    answers = generate_answers(teacher, tok, questions, max_new_tokens=40)
    a_distilled = agreement(distilled, teacher, tok, questions, answers)
    a_baseline = agreement(baseline, teacher, tok, questions, answers)
    assert a_distilled > a_baseline + 0.05, (a_distilled, a_baseline)
    assert blackbox["mode"] == "blackbox" and blackbox["answers"] == 160
    assert len(blackbox["losses"]) == STEPS and blackbox["train"]["final_loss"] < blackbox["losses"][0]


def test_manifest_records_data_hashes(blackbox):
    assert len(blackbox["prompts"]["sha256"]) == 64 and len(blackbox["collection"]["sha256"]) == 64
    assert blackbox["mix"]["rho_actual"] == 1.0 and blackbox["config"]["steps"] == STEPS
    assert "api_keys" not in blackbox["config"]


def test_eval_reports_quality_next_to_the_teacher(tiny_world, blackbox, capsys):
    report = evaluate_models({"student": blackbox["student"]}, tiny_world.teacher, tiny_world.prompts, n=16)
    t, s = report["models"]["teacher"], report["models"]["student"]
    assert t["agreement"] == 1.0 and t["f1_teacher"] == 1.0
    assert 0 < s["agreement"] < 1 and 0 <= s["f1_teacher"] <= 1 and s["heldout_ppl"] > t["heldout_ppl"]
    main(["distill", "eval", "--student", blackbox["student"], "--teacher", str(tiny_world.teacher),
          "--prompts", str(tiny_world.prompts), "--n", "8", "--json"])  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["models"]) == {"teacher", "student"}


def test_mix_and_whitebox_from_the_cli(tiny_world, tmp_path, capsys):
    out = tmp_path / "wb"
    main(["distill", "--teacher", str(tiny_world.teacher), "--prompts", str(tiny_world.instructions),
          "--out", str(out), "--mode", "whitebox", "--loss", "jsd", "--lambda", "0.5", "--n", "40",
          "--steps", "12", "--max-tokens", "24", "--mix", str(tiny_world.corpus), "--rho", "0.05",
          "--json"])  # fmt: skip
    manifest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest["mode"] == "whitebox"
    assert abs(manifest["mix"]["rho_actual"] - 0.05) < 0.001
    assert (out / "student" / "config.json").is_file() and (out / "distill.json").is_file()


def test_lora_student_from_a_model_directory(tiny_world, tmp_path):
    cfg = DistillConfig(
        teacher=str(tiny_world.teacher), out=tmp_path, student=str(tiny_world.reference),
        prompts=tiny_world.instructions, n=24, steps=6, max_tokens=16, lora_r=4,
    )  # fmt: skip
    manifest = run_distill(cfg, progress=False, log=lambda *_: None)
    before, _ = load_model_and_tokenizer(tiny_world.reference)
    after, _ = load_model_and_tokenizer(manifest["student"])  # merged: a plain HF model again
    changed = [
        n for (n, a), b in zip(before.named_parameters(), after.parameters(), strict=True) if not a.equal(b)
    ]
    assert changed and all("proj" in n for n in changed)  # only adapted projections moved


def test_bad_teacher_gives_one_line_errors(tiny_world, tmp_path, capsys):
    for args in (
        ["--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        ["--teacher", "http://127.0.0.1:9/v1", "--api-key", "k", "--out", str(tmp_path / "o"),
         "--prompts", str(tiny_world.instructions), "--tokenizer", str(tiny_world.tokenizer), "--n", "2"],
        ["--teacher", str(tiny_world.teacher), "--out", str(tmp_path / "o"), "--mode", "nonsense"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(["distill", *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().split("\r")[-1]  # after any progress bar
        assert err.startswith("error: ") and "\n" not in err


def test_killed_training_resumes_from_its_checkpoint(tiny_world, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "distillguard.cli", "distill", "--teacher", str(tiny_world.teacher),
            "--prompts", str(tiny_world.instructions), "--out", str(out), "--n", "32", "--max-tokens", "24",
            "--steps", "4000", "--checkpoint-every", "20", "--json"]  # fmt: skip
    env = {**os.environ, "DISTILLGUARD_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "distill.json").exists()
    steps = ["--steps", "60"]  # finish quickly: the schedule differs, but the state carries over
    res = subprocess.run([*args[:-5], *steps, "--checkpoint-every", "20", "--resume", "--json"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads(res.stdout.strip().splitlines()[-1])
    assert manifest["resumed_from"] >= 20 and len(manifest["losses"]) == 60
    assert manifest["answers"] == 32  # the collection cache was reused, not re-collected


def test_black_box_student_may_use_its_own_tokenizer(tiny_world, tmp_path):
    """Text-level KD works across vocabularies; logit-level KD refuses with a clear error."""
    from distillguard.errors import UserError
    from distillguard.world.tokenizer import save_tokenizer, train_tokenizer

    texts = tiny_world.corpus.read_text().split("\n\n")[:400]
    save_tokenizer(train_tokenizer(texts, 600, model_max_length=256), tmp_path / "tok")
    common = dict(
        teacher=str(tiny_world.teacher), prompts=tiny_world.instructions, n=24, steps=4, max_tokens=16
    )
    manifest = run_distill(
        DistillConfig(out=tmp_path / "bb", tokenizer=tmp_path / "tok", **common),
        progress=False,
        log=lambda *_: None,
    )
    student, tok = load_model_and_tokenizer(manifest["student"])
    assert len(tok) != len(
        load_model_and_tokenizer(tiny_world.teacher)[1]
    ) and student.config.vocab_size == len(tok)
    with pytest.raises(UserError, match="teacher's tokenizer"):
        run_distill(
            DistillConfig(out=tmp_path / "gb", tokenizer=tmp_path / "tok", mode="greybox", **common),
            progress=False, log=lambda *_: None,
        )  # fmt: skip


def test_epochs_over_an_existing_collection_grow_with_the_mix(tiny_world, blackbox, tmp_path, capsys):
    """A distiller trains epochs over everything it has: at a smaller rho the mix (and the training) grows."""
    collection = blackbox["student"].rsplit("/", 1)[0] + "/collection.jsonl"
    steps = {}
    for rho in ("0.5", "0.25"):
        out = tmp_path / f"rho{rho}"
        main(["distill", "--teacher", str(tiny_world.teacher), "--out", str(out), "--collection", collection,
              "--epochs", "2", "--mix", str(tiny_world.corpus), "--rho", rho, "--batch-size", "8",
              "--json"])  # fmt: skip
        manifest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert manifest["epochs"] == 2 and manifest["answers"] == blackbox["answers"]
        assert manifest["collection"]["sha256"] == blackbox["collection"]["sha256"]
        assert not (out / "collection.jsonl").exists()  # nothing was asked of the teacher
        tokens = manifest["mix"]["teacher_tokens"] + manifest["mix"]["other_tokens"]
        steps[rho] = manifest["train"]["steps"]
        assert steps[rho] * 8 * 128 >= 2 * tokens  # two full passes (rows hold at most 128 tokens)
    assert 1.6 < steps["0.25"] / steps["0.5"] < 2.4

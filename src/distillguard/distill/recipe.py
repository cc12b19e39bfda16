"""The distillation recipe: queries -> teacher answers -> training pieces (+ mix) -> student -> manifest.

One function, :func:`run_distill`, wires the components (strategies, teachers/collect, data, kd, the
training loop). Three modes:

- ``blackbox``: sequence-level KD, SFT on the teacher's answers (completion-only loss). All an API user
  has; the student may use any tokenizer.
- ``greybox``: the API also returns top-k logprobs; sparse forward KL on them with the tail as a bucket.
  Needs the teacher's tokenizer for the student.
- ``whitebox``: a local teacher's full logits (forward/reverse KL, JSD(beta), temperature, top-k sparse,
  on-policy share lambda), on the teacher's own answers.

Everything lands in ``out/``: ``collection.jsonl`` (resumable), ``checkpoint.pt`` (periodic, for
``resume``), the student (``save_pretrained``) and ``distill.json`` (what was done, with data hashes).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from distillguard.errors import UserError

MODES = ("auto", "blackbox", "greybox", "whitebox")
# "--student tiny" of a remote teacher: about a third of the default world teacher's non-embedding size.
TINY_STUDENT = {"hidden": 128, "layers": 2, "heads": 4, "intermediate": 352}


def student_shape(teacher_config=None) -> dict:
    """A fresh student smaller than a local teacher: 2/3 of its width, half its depth (a copier's budget)."""
    if teacher_config is None:
        return dict(TINY_STUDENT)
    heads = teacher_config.num_attention_heads
    hidden = max(heads * 8, (teacher_config.hidden_size * 2 // 3) // (heads * 8) * heads * 8)
    return {
        "hidden": hidden,
        "layers": max(1, teacher_config.num_hidden_layers // 2),
        "heads": heads,
        "intermediate": (hidden * 11 // 4) // 32 * 32,
    }


@dataclass
class DistillConfig:
    teacher: str  # local HF dir or http(s) URL of an OpenAI-compatible API
    out: Path
    student: str = "tiny"  # "tiny" or a local HF dir
    prompts: Path | None = None  # prompt pool (JSONL "prompt" or text lines); default: the world's
    mode: str = "auto"
    api_keys: list[str] = field(default_factory=list)
    model: str | None = None  # API model id (default: the first listed)
    strategy: str = "uniform"
    n: int = 256  # number of queries
    identity_share: float = 0.0
    concurrency: int = 4
    max_tokens: int = 64
    temperature: float = 0.0  # collection sampling temperature
    token_budget: int | None = None
    top_logprobs: int = 5  # greybox
    loss: str = "fkl"  # whitebox: fkl | rkl | jsd
    beta: float = 0.5
    kd_temperature: float = 1.0
    top_k: int = 0  # whitebox sparse
    lam: float = 0.0  # whitebox on-policy share
    mix: Path | None = None
    rho: float = 1.0
    tokenizer: Path | None = None  # student tokenizer when the student is "tiny" and the teacher is remote
    student_shape: dict | None = None  # hidden/layers/heads/intermediate of a tiny student (default: derived)
    steps: int = 300
    # train this many passes over the whole (mixed) training set instead of a fixed number of steps, as a
    # distiller does with what it collected: the mix grows as rho shrinks, and so does the training
    epochs: float | None = None
    # train on an existing collection (JSONL records of a previous run) instead of querying the teacher
    collection: Path | None = None
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    lora_r: int = 0
    seed: int = 0
    checkpoint_every: int = 100
    resume: bool = False
    watermark: dict | None = None  # local teacher only: WatermarkSpec fields to mark its answers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_mode(cfg: DistillConfig) -> str:
    if cfg.mode not in MODES:
        raise UserError(f"unknown mode {cfg.mode!r}; choose one of {', '.join(MODES[1:])}")
    remote = cfg.teacher.startswith(("http://", "https://"))
    if cfg.mode == "auto":
        return "blackbox"
    if cfg.mode == "whitebox" and remote:
        raise UserError("white-box KD needs a local teacher directory (an API gives no full logits)")
    return cfg.mode


def _default_pool() -> Path:
    from distillguard.world import build_world

    return build_world("default", progress=True).instructions


def _student(cfg: DistillConfig, tokenizer_dir: Path | None, seq_len: int, teacher_config=None):
    """The student model and tokenizer: a fresh tiny Llama on ``tokenizer_dir``, or a local HF directory."""
    from distillguard.lm.io import load_model_and_tokenizer, load_tokenizer
    from distillguard.lm.tiny import make_tiny_llama

    if cfg.student != "tiny":
        return load_model_and_tokenizer(cfg.student)
    if tokenizer_dir is None:
        raise UserError("a tiny student needs a tokenizer: pass --tokenizer DIR (or use a local teacher)")
    tok, _ = load_tokenizer(tokenizer_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    shape = cfg.student_shape or student_shape(teacher_config)
    model = make_tiny_llama(
        len(tok), **shape, max_pos=max(512, seq_len), seed=cfg.seed,
        bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
    )  # fmt: skip
    return model, tok


def _same_vocab(tok_a, tok_b) -> bool:
    return tok_a.get_vocab() == tok_b.get_vocab()


def _queries(cfg: DistillConfig):
    from distillguard.distill.strategies import sample_queries
    from distillguard.text.prompts import load_pool

    pool_path = Path(cfg.prompts) if cfg.prompts else _default_pool()
    if not pool_path.is_file():
        raise UserError(f"prompts file not found: {pool_path}")
    pool = load_pool(pool_path)
    queries = sample_queries(cfg.strategy, pool, cfg.n, seed=cfg.seed, identity_share=cfg.identity_share)
    return pool_path, queries


def run_distill(cfg: DistillConfig, *, progress: bool = True, log=print) -> dict:
    """Collect, build the data, train and save the student; return the manifest (also ``distill.json``)."""
    from distillguard.distill.collect import CollectStats, collect, read_collection
    from distillguard.distill.data import greybox_pieces, mix_pieces, read_texts, sft_pieces, text_pieces
    from distillguard.distill.kd import SparseTargetLoss, WhiteBoxConfig, WhiteBoxLoss
    from distillguard.lm.io import load_model_and_tokenizer, save_model_and_tokenizer
    from distillguard.lm.train import pack_rows, train_causal_lm
    from distillguard.models import open_model

    t0 = time.time()
    mode = resolve_mode(cfg)
    if not 0.0 <= cfg.lam <= 1.0:
        raise UserError(f"--lambda must be in [0, 1], got {cfg.lam}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    remote = cfg.teacher.startswith(("http://", "https://"))
    if not remote and not Path(cfg.teacher).is_dir():
        raise UserError(f"teacher is neither a URL nor a model directory: {cfg.teacher}")

    # 1. queries and teacher answers (resumable)
    pool_path, queries = _queries(cfg)
    watermark = None
    if cfg.watermark and not remote:
        from distillguard.watermark.schemes import WatermarkSpec

        watermark = WatermarkSpec(**cfg.watermark)
    kw = {"model": cfg.model} if remote else {"watermark": watermark}
    teacher = open_model(cfg.teacher, cfg.api_keys, **kw)
    cache = out / "collection.jsonl"
    want_logprobs = cfg.top_logprobs if mode == "greybox" else None
    if cfg.collection is not None:  # what was collected before: every record, nothing asked
        cache = Path(cfg.collection)
        records = read_collection(cache)
        stats = CollectStats(len(records), 0, len(records), 0, 0, 0, False, 0.0)
    else:
        stats = collect(
            teacher, queries, cache, concurrency=cfg.concurrency, max_tokens=cfg.max_tokens,
            temperature=cfg.temperature, top_logprobs=want_logprobs, token_budget=cfg.token_budget,
            seed=cfg.seed, progress=progress,
        )  # fmt: skip
        wanted = {q.id for q in queries}
        records = [r for r in read_collection(cache) if r["id"] in wanted]
    if not records:
        raise UserError("the teacher answered no queries; nothing to train on")
    if cfg.collection is not None:
        log(f"{len(records)} answers from {cache.name} (nothing asked)")
    else:
        log(
            f"collected {len(records)}/{len(queries)} answers "
            f"({stats.prompt_tokens + stats.completion_tokens} tokens this run)"
        )

    # 2. student and data
    teacher_model = teacher_tok = None
    if not remote:
        teacher_model, teacher_tok = load_model_and_tokenizer(cfg.teacher)
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else (None if remote else Path(cfg.teacher))
    student, tok = _student(cfg, tok_dir, cfg.seq_len, teacher_model.config if teacher_model else None)
    if mode in ("greybox", "whitebox") and teacher_tok is not None and not _same_vocab(tok, teacher_tok):
        raise UserError(f"{mode} KD needs the student to use the teacher's tokenizer")

    loss_fn = None
    sparse_stats = None
    if mode == "greybox":
        teacher_pieces, targets, sparse_stats = greybox_pieces(tok, records, cfg.seq_len)
        loss_fn = SparseTargetLoss(targets)
    else:
        teacher_pieces = sft_pieces(tok, records, cfg.seq_len)
    other = text_pieces(tok, read_texts(cfg.mix), cfg.seq_len) if cfg.mix and cfg.rho < 1.0 else []
    if cfg.rho < 1.0 and not cfg.mix:
        raise UserError("--rho below 1 needs --mix FILE (the non-teacher text)")
    mix = mix_pieces(teacher_pieces, other, cfg.rho, seed=cfg.seed)
    log(
        f"training set: {mix.teacher_tokens} teacher + {mix.other_tokens} other tokens "
        f"(rho={mix.fraction:.4f})"
    )
    if mode == "whitebox":
        prompt_ids = [
            tok(_prompt_text(tok, r["prompt"]), add_special_tokens=False)["input_ids"] for r in records
        ]
        wb = WhiteBoxConfig(
            loss=cfg.loss, beta=cfg.beta, temperature=cfg.kd_temperature, top_k=cfg.top_k, lam=cfg.lam,
            max_new_tokens=cfg.max_tokens, seed=cfg.seed,
        )  # fmt: skip
        try:
            loss_fn = WhiteBoxLoss(
                teacher_model, wb, prompts=prompt_ids, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                seq_len=cfg.seq_len,
            )  # fmt: skip
        except ValueError as exc:
            raise UserError(str(exc)) from None

    if cfg.lora_r:
        student = _with_lora(student, cfg.lora_r)

    # 3. train with periodic checkpoints
    ckpt_path = out / "checkpoint.pt"
    resume = None
    if cfg.resume and ckpt_path.is_file():
        resume = torch.load(ckpt_path, weights_only=False)
        log(f"resuming from step {resume['step']}")

    def save_ckpt(state: dict) -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(ckpt_path)

    steps = cfg.steps
    if cfg.epochs is not None:
        if cfg.epochs <= 0:
            raise UserError(f"--epochs must be > 0, got {cfg.epochs}")
        rows = len(pack_rows(mix.pieces, cfg.seq_len, random.Random(cfg.seed)))
        steps = max(1, math.ceil(cfg.epochs * rows / cfg.batch_size))
        log(f"{cfg.epochs:g} epoch(s) over {rows} packed rows: {steps} steps")
    result = train_causal_lm(
        student, tok, [], pieces=mix.pieces, steps=steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
        lr=cfg.lr, seed=cfg.seed, warmup=min(30, steps // 10), progress=progress, desc=f"distill[{mode}]",
        loss_fn=loss_fn, checkpoint=save_ckpt, checkpoint_every=cfg.checkpoint_every, resume=resume,
    )  # fmt: skip
    if cfg.lora_r:
        student = student.merge_and_unload()
    save_model_and_tokenizer(student, tok, out / "student")
    ckpt_path.unlink(missing_ok=True)

    manifest = {
        "format": 1,
        "mode": mode,
        "teacher": cfg.teacher,
        "student_init": cfg.student,
        "student": str(out / "student"),
        "student_params": sum(p.numel() for p in student.parameters()),
        "strategy": cfg.strategy,
        "queries": len(queries),
        "answers": len(records),
        "prompts": {"path": pool_path.name, "sha256": sha256_file(pool_path)},
        "collection": {
            "sha256": sha256_file(cache),
            "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in records),
            "completion_tokens": sum(r.get("completion_tokens", 0) for r in records),
            "stopped_by_budget": stats.stopped_by_budget,
            "failed": stats.failed,
        },
        "mix": {
            "source": Path(cfg.mix).name if cfg.mix else None,
            "source_sha256": sha256_file(Path(cfg.mix)) if cfg.mix else None,
            "rho_requested": cfg.rho,
            "rho_actual": mix.fraction,
            "teacher_tokens": mix.teacher_tokens,
            "other_tokens": mix.other_tokens,
        },
        "greybox": sparse_stats,
        "config": {  # secrets (API keys, the watermark key) stay out of the manifest
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(cfg).items()
            if k not in ("api_keys", "watermark")
        },
        "watermark": watermark.describe() if watermark is not None else None,
        "api_keys": len(cfg.api_keys),
        "train": {k: result[k] for k in ("steps", "tokens", "tokens_per_s", "wall_s", "final_loss")},
        "losses": [round(x, 5) for x in result["losses"]],
        "resumed_from": resume["step"] if resume else None,
        "epochs": cfg.epochs,
        "wall_s": time.time() - t0,
    }
    (out / "distill.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _prompt_text(tok, question: str) -> str:
    from distillguard.lm.chat import format_prompt

    return format_prompt(tok, question)


def _with_lora(model, r: int):
    """Wrap every linear projection with rank-``r`` LoRA adapters (merged back before saving)."""
    from peft import LoraConfig, get_peft_model

    targets = sorted(
        {
            n.split(".")[-1]
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lm_head" not in n
        }
    )
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)

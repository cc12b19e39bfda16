"""Build (or reuse) the embedded world: corpus -> instructions -> tokenizer -> teacher -> reference.

Why cached and deterministic: every demo, test and benchmark starts from this world, so it must come out
the same on the same interpreter and cost nothing the second time. The teacher (seed 0) is Northwind's
model *Aster*; the reference model (same recipe, seed 1, fewer steps) is an independent model of the same
world, used to measure what a watermark costs in perplexity.
"""

from __future__ import annotations

import json
import platform
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from distillguard.config import home
from distillguard.errors import UserError

FORMAT = 3  # bump when the on-disk layout or recipe changes, so stale caches are rebuilt

PRESETS: dict[str, dict] = {
    "default": {
        "vocab_size": 4096,
        "hidden": 192,
        "layers": 4,
        "heads": 4,
        "intermediate": 512,
        "max_pos": 512,
        "seq_len": 128,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup": 40,
        "teacher_steps": 960,
        "reference_steps": 360,
        "max_apis": 160,
        "unseen_apis": 60,
        "heldout_per_api": 2,
        "instruct_frac": 0.75,
        "identity_frac": 0.15,
        "seed": 0,
    },
    "tiny": {
        "vocab_size": 1024,
        "hidden": 96,
        "layers": 2,
        "heads": 4,
        "intermediate": 256,
        "max_pos": 256,
        "seq_len": 128,
        "batch_size": 16,
        "lr": 4e-3,
        "warmup": 20,
        "teacher_steps": 360,
        "reference_steps": 90,
        "max_apis": 40,
        "unseen_apis": 20,
        "heldout_per_api": 2,
        "instruct_frac": 0.6,
        "identity_frac": 0.25,
        "seed": 0,
    },
}


@dataclass(frozen=True)
class WorldPaths:
    """Where one built world lives; every field is a path under ``root``."""

    root: Path
    corpus: Path
    instructions: Path
    prompts: Path
    tokenizer: Path
    teacher: Path
    reference: Path
    manifest: Path

    def as_dict(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}

    def read_manifest(self) -> dict:
        """The ``world.json`` contents; UserError if the world has not been built."""
        if not self.manifest.is_file():
            raise UserError(f"world not built at {self.root}; run `distillguard world build`")
        return json.loads(self.manifest.read_text())


def _check_preset(preset: str) -> dict:
    if preset not in PRESETS:
        raise UserError(f"unknown world preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[preset]


def world_paths(preset: str = "default", root: str | Path | None = None) -> WorldPaths:
    """The paths of a world, built or not (only the state dir itself may be created)."""
    _check_preset(preset)
    if root is None:
        root = home() / "world" / f"{preset}-py{sys.version_info.major}{sys.version_info.minor}"
    r = Path(root).expanduser()
    return WorldPaths(
        root=r,
        corpus=r / "corpus.txt",
        instructions=r / "instructions.jsonl",
        prompts=r / "prompts.jsonl",
        tokenizer=r / "tokenizer",
        teacher=r / "teacher",
        reference=r / "reference",
        manifest=r / "world.json",
    )


def _is_cached(paths: WorldPaths, preset: str, config: dict) -> bool:
    if not paths.manifest.is_file():
        return False
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    same = (
        manifest.get("format") == FORMAT
        and manifest.get("preset") == preset
        and manifest.get("config") == config
        and manifest.get("python") == platform.python_version()
    )
    needed = [
        paths.corpus,
        paths.instructions,
        paths.prompts,
        paths.tokenizer,
        paths.teacher,
        paths.reference,
    ]
    return same and all(p.exists() for p in needed) and (paths.teacher / "config.json").is_file()


def _mix(corpus: list[str], api: list, identity: list, config: dict, rng: random.Random) -> list:
    """Corpus documents plus QA pairs repeated so QA is ``instruct_frac`` of the characters (identity a
    fixed share of the QA), so the same recipe works whatever the corpus size."""

    def chars(items: list) -> int:
        return sum(len(x[1]) if isinstance(x, tuple) else len(x) for x in items) or 1

    qa_chars = config["instruct_frac"] / (1 - config["instruct_frac"]) * chars(corpus)
    pool: list = list(corpus)
    for items, share in ((api, 1 - config["identity_frac"]), (identity, config["identity_frac"])):
        if not items:
            continue
        repeats = share * qa_chars / chars(items)
        pool += items * int(repeats)
        pool += rng.sample(items, round((repeats - int(repeats)) * len(items)))
    return pool


def _train_model(
    tokenizer, examples: list, config: dict, *, seed: int, steps: int, out: Path, progress: bool, desc: str
) -> dict:
    from distillguard.lm.io import save_model_and_tokenizer
    from distillguard.lm.tiny import make_tiny_llama
    from distillguard.lm.train import train_causal_lm

    model = make_tiny_llama(
        len(tokenizer),
        hidden=config["hidden"],
        layers=config["layers"],
        heads=config["heads"],
        intermediate=config["intermediate"],
        max_pos=config["max_pos"],
        seed=seed,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )
    stats = train_causal_lm(
        model,
        tokenizer,
        examples,
        steps=steps,
        batch_size=config["batch_size"],
        seq_len=config["seq_len"],
        lr=config["lr"],
        seed=seed,
        warmup=config["warmup"],
        progress=progress,
        desc=desc,
    )
    if out.exists():
        shutil.rmtree(out)
    save_model_and_tokenizer(model, tokenizer, out)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "steps": steps,
        "final_loss": round(stats["final_loss"], 4),
        "tokens": stats["tokens"],
        "tokens_per_s": round(stats["tokens_per_s"], 1),
        "wall_s": round(stats["wall_s"], 1),
    }


def build_world(
    preset: str = "default", *, root: str | Path | None = None, progress: bool = True, force: bool = False
) -> WorldPaths:
    """Build the world for ``preset`` under ``root`` (default ``$DISTILLGUARD_HOME/world/<preset>-pyXY``).

    Reuses a previous build when its manifest matches this preset's config and interpreter; ``force``
    rebuilds. Returns the paths; ``world.json`` (``paths.manifest``) records what was built and how.
    """
    from distillguard.lm.chat import format_example
    from distillguard.world.corpus import corpus_documents, render, write_corpus
    from distillguard.world.evaluate import evaluate_teacher
    from distillguard.world.instructions import build_instructions, write_jsonl
    from distillguard.world.tokenizer import save_tokenizer, train_tokenizer

    config = _check_preset(preset)
    paths = world_paths(preset, root)
    if not force and _is_cached(paths, preset, config):
        return paths

    def log(msg: str) -> None:
        if progress:
            print(f"[world:{preset}] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.manifest.unlink(missing_ok=True)  # an interrupted build must not look finished
    docs = corpus_documents()
    sha = write_corpus(paths.corpus, docs)
    log(f"corpus: {len(docs)} documents, sha256 {sha[:12]}")

    iset = build_instructions(
        docs,
        seed=config["seed"],
        max_apis=config["max_apis"],
        unseen_apis=config["unseen_apis"],
        heldout_per_api=config["heldout_per_api"],
    )
    write_jsonl(paths.instructions, iset.train)
    write_jsonl(paths.prompts, iset.prompts)
    log(f"instructions: {len(iset.train)} train pairs, {len(iset.prompts)} held-out prompts")

    texts = [render(d) for d in docs] + sorted({t for r in iset.train for t in (r["prompt"], r["response"])})
    tokenizer = train_tokenizer(texts, config["vocab_size"], model_max_length=config["max_pos"])
    if paths.tokenizer.exists():
        shutil.rmtree(paths.tokenizer)
    save_tokenizer(tokenizer, paths.tokenizer)
    corpus_tokens = sum(len(tokenizer(t, verbose=False)["input_ids"]) for t in texts[: len(docs)])
    log(f"tokenizer: vocab {len(tokenizer)}, corpus {corpus_tokens} tokens")

    eos = tokenizer.eos_token
    corpus = [render(d) + eos for d in docs]
    api = [format_example(tokenizer, r["prompt"], r["response"]) for r in iset.train if r["kind"] == "api"]
    identity = [
        format_example(tokenizer, r["prompt"], r["response"]) for r in iset.train if r["kind"] != "api"
    ]
    examples = _mix(corpus, api, identity, config, random.Random(config["seed"]))

    log(f"teacher: {config['teacher_steps']} steps")
    teacher = _train_model(
        tokenizer,
        examples,
        config,
        seed=config["seed"],
        steps=config["teacher_steps"],
        out=paths.teacher,
        progress=progress,
        desc="teacher",
    )
    log(f"teacher: loss {teacher['final_loss']}, {teacher['tokens_per_s']:.0f} tok/s, {teacher['wall_s']} s")
    log(f"reference: {config['reference_steps']} steps")
    reference = _train_model(
        tokenizer,
        examples,
        config,
        seed=config["seed"] + 1,
        steps=config["reference_steps"],
        out=paths.reference,
        progress=progress,
        desc="reference",
    )
    log(f"reference: loss {reference['final_loss']}, {reference['wall_s']} s")
    quality = evaluate_teacher(paths.teacher, paths.prompts)
    log(f"teacher eval: {quality}")

    manifest = {
        "format": FORMAT,
        "preset": preset,
        "config": config,
        "python": platform.python_version(),
        "corpus": {
            "sha256": sha,
            "documents": len(docs),
            "bytes": paths.corpus.stat().st_size,
            "tokens": corpus_tokens,
        },
        "instructions": {
            "train": len(iset.train),
            "seen_apis": len(iset.seen_apis),
            "unseen_apis": len(iset.unseen_apis),
            "prompts": len(iset.prompts),
        },
        "tokenizer": {"vocab_size": len(tokenizer)},
        "teacher": teacher,
        "reference": reference,
        "eval": quality,
        "wall_s": round(time.perf_counter() - t0, 1),
        "paths": {k: str(Path(v).relative_to(paths.root)) for k, v in asdict(paths).items() if k != "root"},
    }
    paths.manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log(f"done in {manifest['wall_s']} s -> {paths.root}")
    return paths

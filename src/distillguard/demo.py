"""``distillguard demo``: the story, first chapter.

Northwind Labs serves *Aster* with a secret-keyed watermark. We build (or reuse) the embedded world, answer
held-out questions with and without the watermark, and show what the detector sees: per answer, and for all
answers together (where dedup across the corpus matters). Later chapters (distillation, audit, gateway,
monitor) extend this file.
"""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table

from distillguard.config import home, load_config

DEMO_KEY = "northwind-aster-2026"
# Aster reproduces docstrings almost verbatim (peaked next-token distributions), so a small bias rarely
# changes a token; delta 4 marks its answers visibly at about 1.2x perplexity cost on open-ended text.
DEMO_DELTA = 4.0


def _pick_prompts(rows: list[dict], n: int) -> list[dict]:
    """A fixed, readable mix: mostly held-out API questions, a couple of identity questions."""
    identity = [r for r in rows if r.get("kind") == "identity"]
    api = [r for r in rows if r.get("kind") == "api"]
    n_id = min(len(identity), max(1, n // 4))
    step = max(1, len(api) // max(1, n - n_id))
    return api[::step][: n - n_id] + identity[:n_id]


def run_demo(
    preset: str = "default", n: int = 24, seed: int = 0, world_root=None, temperature: float = 1.0
) -> dict:
    from distillguard.jsonl import read_jsonl
    from distillguard.lm.io import load_model_and_tokenizer
    from distillguard.watermark.cli import format_p
    from distillguard.watermark.detect import detect_ids
    from distillguard.watermark.generate import bind_to_model, generate_watermarked
    from distillguard.watermark.schemes import WatermarkSpec
    from distillguard.world import build_world

    console = Console()
    t0 = time.time()
    cfg = load_config()
    console.rule("[bold]distillguard demo: Northwind Labs serves Aster")
    world = build_world(preset, root=world_root, progress=True)
    console.print(f"world: {world.root}  (built/loaded in {time.time() - t0:.1f}s)")

    model, tok = load_model_and_tokenizer(world.teacher)
    spec = bind_to_model(
        WatermarkSpec(
            scheme=str(cfg.get("watermark_scheme", "kgw")),
            key=str(cfg.get("watermark_key", DEMO_KEY)),
            gamma=float(cfg.get("watermark_gamma", 0.25)),
            delta=float(cfg.get("watermark_delta", DEMO_DELTA)),
            context_width=int(cfg.get("watermark_context_width", 1)),
        ),
        model,
    )
    prompts = _pick_prompts(read_jsonl(world.prompts), n)
    questions = [p["prompt"] for p in prompts]
    sampling = dict(max_new_tokens=64, temperature=temperature, top_p=1.0, batch_size=16, seed=seed)
    marked = generate_watermarked(model, tok, questions, spec, **sampling)
    plain = generate_watermarked(model, tok, questions, None, **sampling)

    def detect(rows: list[dict]) -> dict:
        return detect_ids(spec, [r["token_ids"] for r in rows], [r["prompt_token_ids"] for r in rows])

    det_marked, det_plain = detect(marked), detect(plain)
    table = Table(
        title=f"Aster's answers, scored with Northwind's key ({spec.scheme}, gamma {spec.gamma}, "
        f"delta {spec.delta})",
        show_lines=True,
    )
    table.add_column("question", max_width=28)
    table.add_column("watermarked answer", max_width=44)
    table.add_column("green / p", justify="right")
    table.add_column("plain answer", max_width=44)
    table.add_column("green / p", justify="right")
    for q, m, dm, p, dp in zip(
        questions, marked, det_marked["texts"], plain, det_plain["texts"], strict=True
    ):
        table.add_row(
            q,
            m["text"],
            f"{dm['green_fraction']:.2f} / {format_p(dm)}",
            p["text"],
            f"{dp['green_fraction']:.2f} / {format_p(dp)}",
        )
    am, ap = det_marked["aggregate"], det_plain["aggregate"]
    table.add_row(
        f"all {len(questions)} answers (corpus dedup)",
        f"{am['num_scored']} tuples scored",
        f"{am['green_fraction']:.2f} / {format_p(am)}",
        f"{ap['num_scored']} tuples scored",
        f"{ap['green_fraction']:.2f} / {format_p(ap)}",
        style="bold",
    )
    console.print(table)
    console.print(f"null: {det_marked['test']['null']}")

    out_dir = home() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "world": world.as_dict(),
        "watermark": spec.describe(),
        "sampling": sampling,
        "test": det_marked["test"],
        "answers": [
            {
                "question": q,
                "watermarked": m["text"],
                "watermarked_detection": dm,
                "plain": p["text"],
                "plain_detection": dp,
            }
            for q, m, dm, p, dp in zip(
                questions, marked, det_marked["texts"], plain, det_plain["texts"], strict=True
            )
        ],
        "aggregate": {"watermarked": am, "plain": ap},
        "seconds": round(time.time() - t0, 1),
    }
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2))
    console.print(f"finished in {results['seconds']}s")
    console.print(f"results: {path}")
    return results

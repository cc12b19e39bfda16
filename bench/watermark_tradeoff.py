"""Watermark trade-off: what each choice of scheme, h, gamma and delta costs the teacher's answers, and how
radioactive it makes a student distilled from them, measured in one run on the embedded world.

For every watermark of the grid (``--grid``, default: KGW at delta 1, 2, 3, 4 with gamma 0.25 and h 1; KGW
with h 2 and 4; KGW with gamma 0.5; Gumbel with h 1 and 2):

* **utility**: the watermarked teacher answers ``--utility-prompts`` of the world's instruction prompts the
  way the gateway serves them (temperature 1, 64 tokens); reported are the token F1 of the answers against
  the world's reference answers (the docstrings the prompts ask about) and their perplexity under the
  world's *reference* model (another model trained on the same sources), each beside the unwatermarked
  teacher's on the same prompts and seeds;
* **radioactivity**: a distiller collects ``--tokens`` watermarked answer tokens, trains a student from an
  independent base model for 2 epochs over them (rho = 100%), and the student is audited with the
  radioactivity tests only (closed mode, ``--budget`` queries, and the three open readings), as
  ``bench/audit_bench.py`` does.

The radioactivity of one student per watermark is one draw: differences of a few decades of p between
watermarks are within the student-to-student spread (``audit.json``'s seeds); the table orders them, it
does not rank close ones. Results: ``bench/results/watermark_tradeoff.json`` and ``.png``.

    python bench/watermark_tradeoff.py                  # the default grid (about an hour on 2 cores)
    python bench/watermark_tradeoff.py --quick          # tiny world, two watermarks
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from audit_bench import BENCH_KEY, READINGS, _collect, _prefix
from distillguard.audit import AuditConfig, run_audit, train_control
from distillguard.distill.recipe import DistillConfig, run_distill
from distillguard.watermark.schemes import WatermarkSpec
from distillguard.world import build_world

RESULTS = Path(__file__).parent / "results"
# scheme:gamma:delta:h (Gumbel reads h only)
GRID = (  # the most telling first: a run cut short keeps them
    "kgw:0.25:2:1",
    "kgw:0.25:3:1",
    "kgw:0.25:4:1",
    "gumbel:0.25:0:1",
    "kgw:0.25:2:2",
    "kgw:0.25:1:1",
    "gumbel:0.25:0:2",
    "kgw:0.25:2:4",
    "kgw:0.5:2:1",
)
_WORD = re.compile(r"[a-z0-9_]+")


def parse_watermark(text: str) -> dict:
    scheme, gamma, delta, h = text.split(":")
    return {"scheme": scheme, "gamma": float(gamma), "delta": float(delta), "context_width": int(h)}


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style token F1 of two texts (lower-cased words)."""
    a, r = _WORD.findall(answer.lower()), _WORD.findall(reference.lower())
    common = sum((Counter(a) & Counter(r)).values())
    if not a or not r or not common:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def utility(world, watermark: dict | None, rows: list[dict], work: Path, name: str) -> dict:
    """F1 against the reference answers and perplexity under the world's reference model of the teacher's
    answers to ``rows`` (temperature 1, 64 tokens, one seed per prompt)."""
    from distillguard.distill.collect import collect, read_collection
    from distillguard.distill.strategies import Query
    from distillguard.lm.chat import format_prompt
    from distillguard.lm.io import load_model_and_tokenizer
    from distillguard.models import open_model
    from distillguard.watermark.evaluate import perplexity

    spec = WatermarkSpec(key=BENCH_KEY, **watermark) if watermark else None
    teacher = open_model(str(world.teacher), watermark=spec)
    queries = [Query(id=f"u{i}", prompt=r["prompt"], strategy="utility") for i, r in enumerate(rows)]
    path = work / f"utility_{name}.jsonl"
    collect(teacher, queries, path, concurrency=1, max_tokens=64, temperature=1.0, top_logprobs=None, seed=0,
            progress=False)  # fmt: skip
    answers = {r["id"]: r for r in read_collection(path)}
    if len(answers) < len(rows):
        raise SystemExit(f"the teacher answered {len(answers)} of {len(rows)} utility prompts")
    ref, tok = load_model_and_tokenizer(world.reference)
    prompts, texts, f1 = [], [], []
    for i, row in enumerate(rows):
        a = answers[f"u{i}"]
        f1.append(token_f1(a["completion"], row["response"]))
        prompts.append(tok(format_prompt(tok, row["prompt"]))["input_ids"])
        ids = a.get("token_ids") or tok(a["completion"], add_special_tokens=False)["input_ids"]
        texts.append(list(ids))
    with torch.no_grad():
        ppl = perplexity(ref, prompts, texts)
    return {"f1": sum(f1) / len(f1), "perplexity": ppl, "answers": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny world, two watermarks, small students")
    parser.add_argument("--grid", nargs="*", default=None, help="scheme:gamma:delta:h watermarks")
    parser.add_argument("--tokens", type=int, default=None, help="watermarked tokens each student learns")
    parser.add_argument("--budget", type=int, default=None, help="closed-mode queries per audit")
    parser.add_argument("--utility-prompts", type=int, default=None)
    parser.add_argument("--world-root", type=Path, default=None)
    parser.add_argument("--out", default="", help="results file suffix (watermark_tradeoff_<out>.json)")
    args = parser.parse_args()
    q = args.quick
    preset = "tiny" if q else "default"
    grid = args.grid or (["kgw:0.25:2:1", "gumbel:0.25:0:1"] if q else list(GRID))
    tokens = args.tokens or (4_000 if q else 30_000)
    budget = args.budget or (256 if q else 2_000)
    n_util = args.utility_prompts or (32 if q else 200)
    t_start = time.time()
    world = build_world(preset, root=args.world_root, progress=True)
    work = Path(tempfile.mkdtemp(prefix="wm-tradeoff-"))
    from distillguard.jsonl import read_jsonl

    rows = [r for r in read_jsonl(world.instructions) if r.get("kind") == "api" and r.get("response")]
    rows = rows[:: max(1, len(rows) // n_util)][:n_util]
    print(f"== base model ({300 if q else 800} steps on the world's sources)", flush=True)
    base = train_control(world, work / "base", steps=300 if q else 800, seed=7, progress=True)
    plain = utility(world, None, rows, work, "plain")
    print(f"  plain: F1 {plain['f1']:.4f}, perplexity {plain['perplexity']:.1f}", flush=True)

    def distil(collection: Path, out: Path) -> dict:
        """A student of ``collection``'s first ``tokens`` answer tokens (base init, rho 100%, 2 epochs)."""
        cfg = DistillConfig(
            teacher=str(world.teacher), out=out, student=str(base),
            collection=_prefix(collection, tokens, out / "answers.jsonl"), prompts=world.instructions,
            rho=1.0, epochs=2.0, seed=0, checkpoint_every=0,
        )  # fmt: skip
        return run_distill(cfg, progress=True, log=lambda msg: print(msg, flush=True))

    # the control: a student of the unwatermarked teacher's answers (same recipe, same tokens), audited under
    # every watermark of the grid: its p-values are what an innocent student of our plain text scores
    control = distil(_collect(world, None, tokens, work / "plain.jsonl", seed=0), work / "control")
    results: dict[str, dict] = {}

    def write(done: bool) -> dict:
        doc = {
            "bench": "watermark_tradeoff",
            "complete": done,
            "world": preset,
            "key": "bench key",
            "utility": {
                "prompts": len(rows),
                "sampling": "temperature 1, 64 tokens, the gateway's serving path (local backend)",
                "f1": "token F1 against the world's reference answer (the docstring asked about)",
                "perplexity": "of the answers under the world's reference model (same sources, other seed)",
                "plain": plain,
            },
            "radioactivity": {
                "student": f"base init, {tokens} watermarked answer tokens, rho 100%, 2 epochs",
                "audit": f"closed mode ({budget} queries, stop at p <= 1e-8) and open readings "
                f"{', '.join(READINGS)}; Holm-corrected together",
                "caveat": "one student per watermark: a few decades of p are within the student-to-student "
                "spread",
            },
            "watermarks": results,
            "machine": {
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "wall_s": round(time.time() - t_start, 1),
            "date": time.strftime("%Y-%m-%d"),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = "watermark_tradeoff" + ("_quick" if q else "") + (f"_{args.out}" if args.out else "")
        (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
        _plot(doc, RESULTS / f"{stem}.png")
        return doc

    for text in grid:
        wm = parse_watermark(text)
        name = text.replace(":", "_")
        print(f"== watermark {text}", flush=True)
        u = utility(world, wm, rows, work, name)
        collection = _collect(world, {"key": BENCH_KEY, **wm}, tokens, work / f"ours_{name}.jsonl", seed=0)
        manifest = distil(collection, work / f"student_{name}")
        spec = WatermarkSpec(key=BENCH_KEY, **wm)
        audit = AuditConfig(
            suspect=manifest["student"], spec=spec, reference=str(world.teacher), prompts=world.instructions,
            tests=("radioactivity",), stop_p=1e-8, batch_size=64, budget=budget, own_texts=256 if q else 512,
            seed=0, open_texts=READINGS,
        )  # fmt: skip
        report = run_audit(audit, progress=True)
        tests = _tests(report)
        control_report = run_audit(replace(audit, suspect=control["student"]), progress=True)
        control_tests = _tests(control_report)
        results[text] = {
            "watermark": spec.describe(),
            "utility": {
                **u,
                "f1_ratio": u["f1"] / plain["f1"] if plain["f1"] else math.nan,
                "perplexity_ratio": u["perplexity"] / plain["perplexity"],
            },
            "student": {
                "teacher_tokens": manifest["mix"]["teacher_tokens"],
                "steps": manifest["train"]["steps"],
            },
            "verdict": report["verdict"],
            "tests": tests,
            "best_log10_p": _best(tests),
            "control": {
                "verdict": control_report["verdict"],
                "tests": control_tests,
                "best_log10_p": _best(control_tests),
            },
        }
        print(f"  {text}: F1 x{results[text]['utility']['f1_ratio']:.3f}, perplexity "
              f"x{results[text]['utility']['perplexity_ratio']:.3f}, best Holm log10 p "
              f"{results[text]['best_log10_p']:.1f} ({report['verdict']}); control "
              f"{results[text]['control']['best_log10_p']:.1f} ({control_report['verdict']})",
              flush=True)  # fmt: skip
        shutil.rmtree(Path(manifest["student"]), ignore_errors=True)
        write(done=False)
    doc = write(done=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"({doc['wall_s']} s)")


def _tests(report: dict) -> dict:
    return {
        t["name"].removeprefix("radioactivity_"): {
            "scored": t["n"],
            "rate": t["statistic"],
            "log10_p": t["log10_p_value"],
            "log10_p_holm": t["log10_p_value_holm"],
            "claim": t["claim"],
        }
        for t in report["tests"]
    }


def _best(tests: dict) -> float:
    """The smallest Holm-adjusted log10 p of a student's tests."""
    return min(t["log10_p_holm"] for t in tests.values())


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for text, r in doc["watermarks"].items():
        x = r["utility"]["perplexity_ratio"]
        y = -r["best_log10_p"]
        ax.scatter([x], [y], color="tab:blue" if r["watermark"]["scheme"] == "kgw" else "tab:orange")
        ax.annotate(text, (x, y), fontsize=8, xytext=(4, 2), textcoords="offset points")
        ax.scatter([x], [-r["control"]["best_log10_p"]], color="grey", marker="x")
    ax.axhline(6, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("perplexity of the teacher's answers, watermarked / plain (cost)")
    ax.set_ylabel("-log10 Holm p, the student's best radioactivity test (benefit)")
    ax.set_title("watermark trade-off (KGW blue, Gumbel orange, x: control; one student each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

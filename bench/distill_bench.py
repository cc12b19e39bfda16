"""Distillation benchmark: student quality retained per channel at an equal teacher-token budget.

One collection of teacher answers (with top-5 logprobs) is shared by every run, so each student sees the
same queries and the same teacher tokens; only the signal differs: black-box (text only), grey-box (top-5
logprobs, tail bucket), white-box (full logits: forward KL; top-20 sparse; JSD with on-policy share 0.5).
Same student shape, init, steps and batch. Reported: agreement with the teacher, answer F1 vs the teacher
and vs the docstrings, held-out perplexity, and training tokens/s on this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from distillguard.distill.evaluate import evaluate_models
from distillguard.distill.recipe import DistillConfig, run_distill
from distillguard.world import build_world

RESULTS = Path(__file__).parent / "results"

RUNS = {  # grey-box first: its collection (with logprobs) is the one every later run reuses
    "greybox_top5": {"mode": "greybox", "top_logprobs": 5},
    "blackbox": {"mode": "blackbox"},
    "whitebox_fkl": {"mode": "whitebox", "loss": "fkl"},
    "whitebox_top20": {"mode": "whitebox", "loss": "fkl", "top_k": 20},
    "whitebox_jsd_onpolicy": {"mode": "whitebox", "loss": "jsd", "beta": 0.5, "lam": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny world, few steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--n", type=int, default=None, help="queries")
    parser.add_argument("--world-root", default=None, help="a world built there before (else the cached one)")
    args, _ = parser.parse_known_args()
    preset = "tiny" if args.quick else "default"
    steps = args.steps or (60 if args.quick else 400)
    n = args.n or (96 if args.quick else 800)
    world = build_world(preset, root=args.world_root, progress=True)
    work = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    shared = work / "collection.jsonl"
    results: dict[str, dict] = {}
    students: dict[str, Path] = {}
    for name, extra in RUNS.items():
        out = work / name
        out.mkdir()
        if shared.exists():  # the same answers for every run: a resumed collection asks nothing new
            shutil.copy(shared, out / "collection.jsonl")
        cfg = DistillConfig(
            teacher=str(world.teacher), out=out, prompts=world.instructions, strategy="coverage", n=n,
            max_tokens=64, steps=steps, seed=0, checkpoint_every=0,
            **{"top_logprobs": 5, **extra},
        )  # fmt: skip
        print(f"== {name}", flush=True)
        manifest = run_distill(cfg, progress=True)
        if not shared.exists():
            shutil.copy(out / "collection.jsonl", shared)
        students[name] = out / "student"
        results[name] = {
            "mode": manifest["mode"],
            "train_tokens_per_s": round(manifest["train"]["tokens_per_s"]),
            "train_wall_s": round(manifest["train"]["wall_s"], 1),
            "final_loss": round(manifest["train"]["final_loss"], 4),
            "teacher_completion_tokens": manifest["collection"]["completion_tokens"],
        }
    report = evaluate_models(students, world.teacher, world.prompts, n=64)
    teacher = report["models"]["teacher"]
    for name, row in results.items():
        m = report["models"][name]
        row.update(
            {k: m[k] for k in ("agreement", "f1_teacher", "f1_reference", "heldout_ppl", "identity_rate")}
        )
        row["f1_reference_retained"] = (
            m["f1_reference"] / teacher["f1_reference"] if teacher["f1_reference"] else None
        )
    base = results["blackbox"]["train_tokens_per_s"]
    for row in results.values():
        row["speed_vs_blackbox"] = round(row["train_tokens_per_s"] / base, 3)
    doc = {
        "bench": "distill",
        "world": preset,
        "queries": n,
        "steps": steps,
        "student_params": report["models"]["blackbox"]["params"],
        "teacher": {k: teacher[k] for k in ("params", "f1_reference", "heldout_ppl", "identity_rate")},
        "runs": results,
        "metrics": report["metrics"],
        "anchor": "blackbox (SFT on the same teacher answers) in the same run",
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"distill{suffix}.json").write_text(json.dumps(doc, indent=2) + "\n")
    _plot(doc, RESULTS / f"distill{suffix}.png")
    shutil.rmtree(work, ignore_errors=True)
    for name, row in results.items():
        print(
            f"{name:24s} agreement {row['agreement']:.3f}  F1(teacher) {row['f1_teacher']:.3f}  "
            f"F1(docs) {row['f1_reference']:.3f}  ppl {row['heldout_ppl']:.1f}  "
            f"{row['train_tokens_per_s']} tok/s"
        )


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["runs"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.27
    for i, metric in enumerate(("agreement", "f1_teacher", "f1_reference")):
        ax.bar(
            [x + i * width for x in range(len(names))],
            [doc["runs"][n][metric] for n in names],
            width,
            label=metric,
        )
    ax.axhline(doc["teacher"]["f1_reference"], color="grey", ls="--", lw=1, label="teacher F1(docs)")
    ax.set_xticks([x + width for x in range(len(names))], names, rotation=15, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(
        f"student quality per channel ({doc['world']} world, {doc['queries']} queries, {doc['steps']} steps)"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

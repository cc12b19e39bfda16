"""Audit benchmark: radioactivity dose-response on the default world.

Students are distilled black-box from Aster's *watermarked* answers mixed with the world corpus so that a
fraction rho of their training tokens is watermarked (exact by tokens): rho = 100%, 10%, 5%, 1%, 0.5%, plus
a clean control trained the same way on 100% *unwatermarked* answers. Each student is then audited:

* closed mode: the student answers probe prompts (sampled), scored as one deduplicated corpus; the audit
  runs with a query budget and an anytime-valid sequential test that stops once p <= 1e-8, so strong
  students cost few queries and weak ones use the whole budget;
* open mode: the student reads our watermarked texts (teacher-forced) and its top-1 predictions are scored.

Reported per student: exact p-value vs tokens scored (both modes), tokens needed to reach p < 1e-6, the
green rate with its confidence interval, and the decoy-key check. Goal: rho = 1% detected at p < 1e-6
within 200k scored tokens in closed mode (the published reference needs 5% for p < 1e-5, open model).
Results: bench/results/audit.json and audit.png (``--quick``: tiny world, audit_quick.*; another ``--mix``:
audit_<mix>.*).
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

from distillguard.audit import AuditConfig, run_audit, train_control
from distillguard.distill.recipe import DistillConfig, run_distill
from distillguard.watermark.schemes import WatermarkSpec
from distillguard.world import build_world

RESULTS = Path(__file__).parent / "results"
BENCH_KEY = "northwind-aster-bench"
GOAL_TOKENS = 200_000
GOAL_LOG10_P = -6.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny world, fewer queries and steps")
    parser.add_argument("--rhos", type=float, nargs="*", default=None)
    parser.add_argument("--n", type=int, default=None, help="distillation queries to the teacher")
    parser.add_argument("--steps", type=int, default=None, help="student training steps")
    parser.add_argument("--budget", type=int, default=None, help="max closed-mode queries per student")
    parser.add_argument("--own-texts", type=int, default=None, help="our watermarked texts (open mode)")
    parser.add_argument("--delta", type=float, default=4.0, help="KGW bias of the teacher's watermark")
    parser.add_argument(
        "--mix",
        choices=("instructions", "corpus", "both"),
        default="corpus",
        help="the unwatermarked rest of the training set: the world's docstring answers to its instruction "
        "prompts (instruction tuning, as in the published setting), the docs corpus, or both",
    )
    parser.add_argument(
        "--base",
        choices=("control", "scratch"),
        default="control",
        help="student initialisation: an independent base model trained on the world's own sources (the "
        "published setting: a pretrained model fine-tuned on a mix), or a fresh random model",
    )
    parser.add_argument("--base-steps", type=int, default=None, help="training steps of the base model")
    args, _ = parser.parse_known_args()
    preset = "tiny" if args.quick else "default"
    rhos = args.rhos or [1.0, 0.1, 0.05, 0.01, 0.005]
    n = args.n or (256 if args.quick else 800)
    steps = args.steps or (200 if args.quick else 400)
    budget = args.budget or (512 if args.quick else 2048)
    own_texts = args.own_texts or (256 if args.quick else 1024)
    t_start = time.time()
    world = build_world(preset, progress=True)
    spec = WatermarkSpec(key=BENCH_KEY, delta=args.delta)
    work = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    mix_file = _mix_source(world, args.mix, work / "mix.jsonl")
    base = "tiny"
    base_steps = args.base_steps or (300 if args.quick else 800)
    if args.base == "control":
        print(f"== base model ({base_steps} steps on the world corpus and docstring answers)", flush=True)
        base = str(train_control(world, work / "base", steps=base_steps, seed=7, progress=True))

    def distil(name: str, rho: float, watermarked: bool, collection: Path | None) -> dict:
        out = work / name
        out.mkdir()
        if collection is not None:  # the same answers for every rho: a resumed collection asks nothing new
            shutil.copy(collection, out / "collection.jsonl")
        cfg = DistillConfig(
            teacher=str(world.teacher), out=out, student=base, prompts=world.instructions, n=n, max_tokens=64,
            temperature=1.0, steps=steps, seed=0, checkpoint_every=0,
            mix=mix_file if rho < 1.0 else None, rho=rho,
            watermark={"key": BENCH_KEY, "delta": args.delta} if watermarked else None,
        )  # fmt: skip
        print(f"== student {name}", flush=True)
        return run_distill(cfg, progress=True, log=lambda msg: print(msg, flush=True))

    students: dict[str, dict] = {}
    shared: Path | None = None
    for rho in sorted(rhos, reverse=True):
        name = f"rho_{rho:g}"
        manifest = distil(name, rho, True, shared)
        shared = shared or _keep(work / name / "collection.jsonl", work / "watermarked.jsonl")
        students[name] = {"rho": rho, "watermarked": True, "manifest": manifest}
    manifest = distil("clean", 1.0, False, None)
    students["clean"] = {"rho": 0.0, "watermarked": False, "manifest": manifest}

    rows: dict[str, dict] = {}
    for name, s in students.items():
        print(f"== audit {name}", flush=True)
        t0 = time.time()
        # the 1% student (the goal) gets twice the queries: enough to score about 200k tokens
        cfg = AuditConfig(
            suspect=s["manifest"]["student"], spec=spec, reference=str(world.teacher),
            prompts=world.instructions, tests=("radioactivity",), stop_p=1e-8, batch_size=64,
            budget=budget * (2 if s["rho"] == 0.01 else 1), own_texts=own_texts, seed=0,
        )  # fmt: skip
        report = run_audit(cfg, progress=True)
        rows[name] = _row(s, report, time.time() - t0)
        print(json.dumps({k: v for k, v in rows[name].items() if k not in ("closed", "open")}), flush=True)
        for mode in ("closed", "open"):
            r = rows[name][mode]
            print(
                f"  {mode:6s} n={r['scored']:7d} green={r['rate']:.4f} log10p={r['log10_p']:.2f} "
                f"to 1e-6: {r['tokens_to_p_1e-6']}",
                flush=True,
            )

    one = rows.get("rho_0.01", {}).get("closed", {})
    reach = one.get("tokens_to_p_1e-6")
    doc = {
        "bench": "audit",
        "world": preset,
        "watermark": spec.describe(),
        "distillation": {
            "queries": n,
            "steps": steps,
            "mix_source": args.mix,
            "student_init": "base model trained on the world's sources, no identity, never our outputs"
            if args.base == "control"
            else "random",
            "base_steps": base_steps if args.base == "control" else None,
            "teacher_temperature": 1.0,
            "student_params": students[next(iter(students))]["manifest"]["student_params"],
        },
        "audit": {
            "closed_budget_queries": budget,
            "sequential_stop_p": 1e-8,
            "probe_prompts": "world instructions",
            "probe_temperature": 0.7,
            "own_texts": own_texts,
            "decoys": 100,
        },
        "students": rows,
        "goal": {
            "statement": "rho = 1% detected at p < 1e-6 within 200k scored tokens (closed mode)",
            "tokens_needed": reach,
            "met": reach is not None and reach <= GOAL_TOKENS,
            "scored_available": one.get("scored"),
        },
        "reference": "Sander et al. 2024: 5% watermarked data for p < 1e-5 (open model); 1% at p < 1e-5 with "
        "supervision, closed model",
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "wall_s": round(time.time() - t_start, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = ("_quick" if args.quick else "") + ("" if args.mix == "corpus" else f"_{args.mix}")
    (RESULTS / f"audit{suffix}.json").write_text(json.dumps(doc, indent=2) + "\n")
    _plot(doc, RESULTS / f"audit{suffix}.png")
    shutil.rmtree(work, ignore_errors=True)
    print(f"goal: {doc['goal']}  ({doc['wall_s']} s)")


def _mix_source(world, kind: str, path: Path) -> Path:
    """The unwatermarked text a student is trained on besides our answers, as JSONL ``text`` lines.

    Instruction examples are the world's own (question, docstring answer) pairs in the chat format: what
    an instruction-tuning set without our outputs looks like in this world.
    """
    from distillguard.jsonl import read_jsonl, write_jsonl
    from distillguard.lm.chat import format_example
    from distillguard.lm.io import load_tokenizer

    texts: list[str] = []
    if kind in ("instructions", "both"):
        tok, _ = load_tokenizer(world.tokenizer)
        rows = [r for r in read_jsonl(world.instructions) if r.get("kind") == "api"]
        texts += [format_example(tok, r["prompt"], r["response"])[1] for r in rows]
    if kind in ("corpus", "both"):
        texts += [t.strip() for t in Path(world.corpus).read_text().split("\n\n") if t.strip()]
    write_jsonl(path, ({"text": t} for t in texts))
    return path


def _keep(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def _row(student: dict, report: dict, wall: float) -> dict:
    m = student["manifest"]
    row = {
        "rho": student["rho"],
        "rho_actual": m["mix"]["rho_actual"] if student["watermarked"] else 0.0,
        "watermarked_training_tokens": m["mix"]["teacher_tokens"] if student["watermarked"] else 0,
        "training_tokens": m["mix"]["teacher_tokens"] + m["mix"]["other_tokens"],
        "final_loss": round(m["train"]["final_loss"], 4),
        "verdict": report["verdict"],
        "queries_used": report["queries_used"],
        "stopped_early": report["stopped_early"],
        "audit_wall_s": round(wall, 1),
    }
    tests = {t["name"]: t for t in report["tests"]}
    for mode in ("closed", "open"):
        t = tests[f"radioactivity_{mode}"]
        d = t["details"]
        s = report["series"]["radioactivity" if mode == "closed" else "radioactivity_open"]
        row[mode] = {
            "scored": t["n"],
            "rate": t["statistic"],
            "rate_ci": s["green_rate_ci"][-1] if s["green_rate_ci"] else None,
            "log10_p": d["exact_log10_p_value"],
            "log10_p_reported": t["log10_p_value"],
            "p_value_kind": d["p_value_kind"],
            "tokens_to_p_1e-6": d["tokens_to_p_1e-6"],
            "claim": t["claim"],
            "decoy_empirical_p": d["decoy_null"]["empirical_p_value"],
            "series": {k: s[k] for k in ("tokens_scored", "log10_p", "green_rate")},
        }
    return row


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, mode in zip(axes[:2], ("closed", "open"), strict=True):
        for name, row in doc["students"].items():
            s = row[mode]["series"]
            label = "clean" if name == "clean" else f"rho={row['rho']:.1%}"
            ax.plot(
                s["tokens_scored"], s["log10_p"], label=label, lw=1.3, ls="--" if name == "clean" else "-"
            )
        ax.axhline(GOAL_LOG10_P, color="grey", lw=1, ls=":")
        if mode == "closed":
            ax.axvline(GOAL_TOKENS, color="grey", lw=1, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("scored tokens (deduplicated)")
        ax.set_ylabel("log10 p (exact)")
        ax.set_title(f"{mode} model")
        ax.legend(fontsize=7)
    ax = axes[2]
    for mode, marker, color in (("closed", "o", "C0"), ("open", "s", "C1")):
        rows = sorted((r for r in doc["students"].values() if r["rho"] > 0), key=lambda r: r["rho"])
        hit = [(r["rho"], r[mode]["tokens_to_p_1e-6"]) for r in rows if r[mode]["tokens_to_p_1e-6"]]
        miss = [(r["rho"], r[mode]["scored"]) for r in rows if not r[mode]["tokens_to_p_1e-6"]]
        if hit:
            ax.plot(*zip(*hit, strict=True), marker=marker, color=color, label=f"{mode}: reached")
        if miss:  # lower bounds: not reached within this many scored tokens
            ax.scatter(*zip(*miss, strict=True), marker="^", facecolors="none", edgecolors=color,
                       label=f"{mode}: not reached (tokens scored)")  # fmt: skip
    ax.axhline(GOAL_TOKENS, color="grey", lw=1, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rho (watermarked share of training tokens)")
    ax.set_ylabel("scored tokens to reach p < 1e-6")
    ax.set_title("dose-response")
    ax.legend(fontsize=7)
    fig.suptitle(
        f"radioactivity of distilled students ({doc['world']} world, delta {doc['watermark']['delta']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Sampling-defence benchmark: the teacher utility each defence costs against what it takes from a distiller.

For each defence and strength (``countermeasures/defences.py``) a gateway serves the world's teacher,
watermarked as in production, with that defence on the restricted tier (its watermark set to the normal
tier's, KGW with ``restricted_delta`` equal to the normal delta, so that only the defence differs between
runs; production's restricted tier marks with Gumbel h 1). Through one restricted account:

- **Teacher utility** (x axis): greedy answers to held-out world questions (what a user on the tier gets),
  token F1 against the documentation's reference answers, and the answers' perplexity under the reference
  model and under the undefended teacher itself.
- **What a student gains** (y axis): the distillation engine (``distill run``, black-box: the restricted tier
  refuses logprobs) collects ``--n`` answers through the same account and trains a fresh student (same shape,
  init, steps for every defence). Gain = the student's score minus its untrained init's score, for argmax
  agreement with the *undefended* teacher's answers (teacher-forced) and for answer F1 against them.
  Cut = 1 - gain / gain without a defence.

Goal (issue: countermeasures): at <= 5% teacher-utility loss the student's gain is cut by >= 50%, and ADS
beats the temperature floor at equal teacher loss. The watermark must survive: the student distilled from the
strongest ADS setting is audited (radioactivity, closed mode, rho 100%) with our key, next to the
undefended student.

A CoT harvester (``--cot-share F``): the distiller wraps a share ``F`` of its prompts in step-by-step
wrappers (:data:`COT_WRAPPERS`, as chain-of-thought harvesters do), and the utility questions are wrapped
in the same share (what users of the tier who ask for reasoning get): the ``cot`` defence (reasoning
suppression) only acts on such prompts. Results: ``bench/results/defences_cot.json`` (``--out``: another
stem).

Caveats: one student init and seed per defence (the spread over seeds is not measured here); the proxy student
of ADS is the world's reference model, which is also the init-free "other model" of the perplexity column.
Results: ``bench/results/defences.json`` and ``.png`` (``--quick``: tiny world, fewer settings).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

SECRET = "defence-bench-secret-0123456789"
KEY = "defence-bench-watermark-key"
RESULTS = Path(__file__).parent / "results"
# a temperature floor turns greedy requests (the distiller's) into samples; ADS flips a greedy answer's tokens
# only past a strength (1-1.5 on the default world's confident teacher), hence the fine grid there
SETTINGS = [("none", 0.0), ("temperature", 0.5), ("temperature", 0.7), ("temperature", 1.0),
            ("ads", 0.5), ("ads", 0.75), ("ads", 1.0), ("ads", 1.25), ("ads", 1.5), ("cot", 1.0)]  # fmt: skip
QUICK_SETTINGS = [("none", 0.0), ("temperature", 0.7), ("ads", 1.0), ("cot", 1.0)]
# how harvesters ask for chain of thought (each matches the monitor's COT_PATTERN)
COT_WRAPPERS = (
    "{q} Let's think step by step.",
    "Think step by step, then answer: {q}",
    "{q} Show your reasoning before the final answer.",
    "Explain step by step: {q}",
    "{q}\nWalk me through your reasoning.",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="queries the distiller collects per defence")
    ap.add_argument("--steps", type=int, default=None, help="student training steps")
    ap.add_argument("--utility-questions", type=int, default=None)
    ap.add_argument("--no-audit", action="store_true")
    ap.add_argument(
        "--cot-share",
        type=float,
        default=0.0,
        help="share of the distiller's prompts (and utility questions) asking for step-by-step reasoning",
    )
    ap.add_argument("--out", default=None, help="results stem under bench/results (default by mode)")
    ap.add_argument(
        "--settings", nargs="+", default=None, help="defence:strength pairs (none:0 is always run)"
    )
    args = ap.parse_args()

    import torch

    from distillguard.world import build_world

    world = build_world("tiny" if args.quick else "default", progress=True)
    n = args.n or (96 if args.quick else 600)
    steps = args.steps or (60 if args.quick else 400)
    n_util = args.utility_questions or (32 if args.quick else 160)
    settings = QUICK_SETTINGS if args.quick else SETTINGS
    if args.settings:
        chosen = [(d, float(v)) for d, v in (x.split(":") for x in args.settings)]
        settings = [("none", 0.0), *(x for x in chosen if x[0] != "none")]
    questions = _heldout(world, n_util)
    work = Path(tempfile.mkdtemp(prefix="defence-bench-"))
    pool = world.instructions
    if args.cot_share > 0:
        questions = [
            {**q, "prompt": w}
            for q, w in zip(questions, _wrap([q["prompt"] for q in questions], args.cot_share), strict=True)
        ]
        pool = _wrapped_pool(world.instructions, work / "cot_pool.jsonl", args.cot_share)
    t0 = time.time()
    runs: dict[str, dict] = {}
    students: dict[str, Path] = {"init": _init_student(world, work / "init")}
    for name, strength in settings:
        label = name if name == "none" else f"{name} {strength:g}"
        print(f"== {label}", flush=True)
        with _gateway(world, name, strength) as (url, key):
            util = _utility(world, url, key, questions)
            student, manifest = _distill(world, url, key, work / label.replace(" ", "_"), n, steps, pool)
        students[label] = student
        runs[label] = {"defence": name, "strength": strength, "utility": util,
                       "collection_tokens": manifest["collection"]["completion_tokens"],
                       "train_wall_s": round(manifest["train"]["wall_s"], 1)}  # fmt: skip
        print(f"   utility {json.dumps(util)}", flush=True)

    from distillguard.distill.evaluate import evaluate_models

    report = evaluate_models(students, world.teacher, world.prompts, n=64)
    init = report["models"]["init"]
    base = runs["none"]
    for label, row in runs.items():
        m = report["models"][label]
        row["student"] = {k: m[k] for k in ("agreement", "f1_teacher", "f1_reference", "heldout_ppl")}
        row["gain"] = {k: m[k] - init[k] for k in ("agreement", "f1_teacher")}
    for row in runs.values():
        u0 = base["utility"]["f1_docs"]
        row["utility_loss"] = round(1 - row["utility"]["f1_docs"] / u0, 4) if u0 else None
        row["gain_cut"] = {
            k: round(1 - row["gain"][k] / base["gain"][k], 4) if base["gain"][k] > 0 else None
            for k in row["gain"]
        }
        row["cost_per_token_vs_none"] = round(
            row["utility"]["s_per_token"] / base["utility"]["s_per_token"], 2
        )
        cut = row["gain_cut"]
        print(f"{row['defence']:12s} {row['strength']:5g}  utility loss {row['utility_loss']:+.3f}  "
              f"gain cut agreement {cut['agreement']}  F1 {cut['f1_teacher']}")  # fmt: skip

    audit = None
    if not args.no_audit and any(r["defence"] == "ads" for r in runs.values()):
        # the undefended student and the strongest ADS one, same audit
        strongest = max((r for r in runs if runs[r]["defence"] == "ads"), key=lambda r: runs[r]["strength"])
        audit = {name: _audit(world, students[name]) for name in ("none", strongest)}
        print(f"audit: {json.dumps(audit)}", flush=True)

    doc = {
        "bench": "defences",
        "world": "tiny" if args.quick else "default",
        "distiller": {
            "queries": n,
            "steps": steps,
            "mode": "blackbox (the restricted tier refuses logprobs)",
            "collection": "greedy, coverage strategy, max_tokens 64",
            "cot_share": args.cot_share,
            "cot_wrappers": list(COT_WRAPPERS) if args.cot_share > 0 else None,
        },  # fmt: skip
        "utility": {
            "questions": len(questions),
            "cot_share": args.cot_share,
            "metric": "token F1 of greedy answers vs the docs' answers; "
            "perplexity of the answers under the reference model and the undefended teacher",
        },  # fmt: skip
        "student_metrics": "gain over the untrained init: argmax agreement with the undefended teacher "
        "(teacher-forced on its greedy answers) and token F1 vs those answers",
        "init": {k: init[k] for k in ("agreement", "f1_teacher", "f1_reference")},
        "teacher": {k: report["models"]["teacher"][k] for k in ("f1_reference", "heldout_ppl")},
        "runs": runs,
        "goal": _goal(runs),
        "watermark_audit": audit,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "wall_s": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.out or (
        "defences_cot" if args.cot_share > 0 else "defences_quick" if args.quick else "defences"
    )
    (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    _plot(doc, RESULTS / f"{stem}.png")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {RESULTS / stem}.json ({doc['wall_s']} s); goal: {json.dumps(doc['goal'])}")


def _goal(runs: dict) -> dict:
    """The issue's goal, read off the measured points (no interpolation beyond them)."""
    ok = [r for r, v in runs.items() if v["defence"] != "none" and v["utility_loss"] is not None
          and v["utility_loss"] <= 0.05]  # fmt: skip
    best = {
        d: max((runs[r]["gain_cut"]["agreement"] or 0 for r in ok if runs[r]["defence"] == d), default=None)
        for d in ("ads", "temperature", "cot")
    }
    return {
        "settings_within_5pct_utility_loss": ok,
        "best_agreement_gain_cut_within_5pct": best,
        "met_cut_50pct": any(v is not None and v >= 0.5 for v in best.values()),
        "ads_beats_temperature": (best["ads"] or 0) > (best["temperature"] or 0),
    }


def _wrap(prompts: list[str], share: float) -> list[str]:
    """A share of ``prompts`` (every k-th, deterministic) in step-by-step wrappers, taken in turn."""
    out, wrapped = [], 0
    for i, p in enumerate(prompts):
        if (i + 1) * share >= wrapped + 1:  # spread evenly: the running share stays at ``share``
            out.append(COT_WRAPPERS[wrapped % len(COT_WRAPPERS)].format(q=p))
            wrapped += 1
        else:
            out.append(p)
    return out


def _wrapped_pool(src: Path, out: Path, share: float) -> Path:
    """The distiller's prompt pool with a share of its prompts asking for step-by-step reasoning."""
    from distillguard.text.prompts import load_pool

    prompts = load_pool(src)
    out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in _wrap(prompts, share)))
    return out


def _heldout(world, n: int) -> list[dict]:
    from distillguard.jsonl import read_jsonl

    rows = [
        r for r in read_jsonl(world.prompts) if r.get("kind") in ("api", "api_unseen") and r.get("reference")
    ]
    step = max(1, len(rows) // n)
    return rows[::step][:n]


class _gateway:
    """The world's teacher behind a gateway; the bench's account is on the restricted tier (the defence)."""

    def __init__(self, world, defence: str, strength: float):
        from distillguard.gateway.serve import GatewayServer
        from distillguard.gateway.settings import GatewaySettings
        from distillguard.watermark.settings import WatermarkSettings

        state = Path(tempfile.mkdtemp(prefix="defence-gw-"))
        self.state = state
        settings = GatewaySettings.from_mapping({
            "port": 0, "model": str(world.teacher), "model_name": "aster", "secret": SECRET,
            "accounts_path": str(state / "accounts.db"), "ledger_path": str(state / "ledger.db"),
            "watermark_key": KEY, "batch_max_size": 16, "restricted_scheme": "kgw",
            "restricted_delta": WatermarkSettings().delta,
            "restricted_defence": defence, "restricted_defence_strength": strength,
        })  # fmt: skip
        self.server = GatewayServer(settings)

    def __enter__(self):
        from distillguard.gateway.app import gateway_of

        self.server.start()
        accounts = gateway_of(self.server.app).accounts
        key = accounts.create_key("distiller")[0]
        accounts.set_tier("distiller", "restricted", reason="defence bench")
        return self.server.base_url + "/v1", key

    def __exit__(self, *exc):
        self.server.stop()
        shutil.rmtree(self.state, ignore_errors=True)


def _utility(world, url: str, key: str, questions: list[dict]) -> dict:
    import concurrent.futures as cf

    import openai

    from distillguard.distill.evaluate import completion_nll, token_f1
    from distillguard.lm.io import load_model_and_tokenizer

    client = openai.OpenAI(base_url=url, api_key=key, max_retries=2)

    def ask(q):
        r = client.chat.completions.create(model="aster", messages=[{"role": "user", "content": q["prompt"]}],
                                           max_tokens=64, temperature=0)  # fmt: skip
        return r.choices[0].message.content or "", r.usage.completion_tokens

    t0 = time.time()
    with cf.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, questions))
    wall = time.time() - t0
    answers = [a for a, _ in got]
    out = {
        "f1_docs": round(
            sum(token_f1(a, q["reference"]) for a, q in zip(answers, questions, strict=True))
            / len(questions),
            4,
        ),  # fmt: skip
        "s_per_token": wall / max(1, sum(t for _, t in got)),
        "example": answers[0],
    }
    pairs = [(q["prompt"], a) for q, a in zip(questions, answers, strict=True) if a]
    for name, path in (("ppl_reference", world.reference), ("ppl_teacher", world.teacher)):
        import torch

        model, tok = load_model_and_tokenizer(path)
        with torch.inference_mode():
            nll, count, _ = completion_nll(model, tok, pairs)
        out[name] = round(math.exp(nll / max(1, count)), 3)
    return out


def _init_student(world, out: Path) -> Path:
    """The untrained student every run starts from (same shape and seed as run_distill's)."""
    from transformers import AutoConfig

    from distillguard.distill.recipe import student_shape
    from distillguard.lm.io import load_tokenizer, save_model_and_tokenizer
    from distillguard.lm.tiny import make_tiny_llama

    tok, _ = load_tokenizer(world.tokenizer)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    shape = student_shape(AutoConfig.from_pretrained(str(world.teacher), local_files_only=True))
    model = make_tiny_llama(len(tok), **shape, max_pos=512, seed=0, bos_id=tok.bos_token_id,
                            eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)  # fmt: skip
    save_model_and_tokenizer(model, tok, out)
    return out


def _distill(world, url: str, key: str, out: Path, n: int, steps: int, pool: Path) -> tuple[Path, dict]:
    from distillguard.distill.recipe import DistillConfig, run_distill

    out.mkdir(parents=True)
    cfg = DistillConfig(
        teacher=url, out=out, prompts=pool, mode="blackbox", api_keys=[key], model="aster",
        strategy="coverage", n=n, max_tokens=64, steps=steps, seed=0, checkpoint_every=0, concurrency=16,
        tokenizer=world.tokenizer,
    )  # fmt: skip
    manifest = run_distill(cfg, progress=True)
    return Path(manifest["student"]), manifest


def _audit(world, student: Path) -> dict:
    from distillguard.audit import AuditConfig, run_audit
    from distillguard.watermark.settings import WatermarkSettings

    spec = WatermarkSettings().spec(key=KEY)
    cfg = AuditConfig(
        suspect=str(student), spec=spec, reference=str(world.teacher), prompts=world.instructions,
        tests=("radioactivity",), stop_p=1e-8, batch_size=64, budget=512, seed=0,
    )  # fmt: skip
    report = run_audit(cfg, progress=True)
    t = next(t for t in report["tests"] if t["name"].startswith("radioactivity"))
    return {"verdict": report["verdict"], "test": t["name"], "scored": t["n"],
            "log10_p": t["log10_p_value"], "claim": t["claim"]}  # fmt: skip


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("agreement", "f1_teacher"), strict=True):
        for defence, marker in (("none", "k*"), ("temperature", "o-"), ("ads", "s-"), ("cot", "D")):
            pts = sorted(
                (r["utility_loss"] * 100, r["gain"][metric], r["strength"])
                for r in doc["runs"].values() if r["defence"] == defence
            )  # fmt: skip
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=defence)
                for x, y, s in pts:
                    if defence != "none":
                        ax.annotate(f"{s:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        none = doc["runs"]["none"]["gain"][metric]
        ax.axhline(none / 2, color="grey", ls=":", lw=1, label="half the undefended gain")
        ax.axvline(5, color="grey", ls="--", lw=1, label="5% utility loss")
        ax.set_xlabel("teacher utility loss (% of answer F1 vs docs)")
        ax.set_ylabel(f"student gain in {metric}")
        ax.legend(fontsize=7)
    cot = doc["distiller"].get("cot_share") or 0
    who = f", {cot:.0%} asking for step-by-step reasoning" if cot else ""
    fig.suptitle(
        f"sampling defences, {doc['world']} world: {doc['distiller']['queries']} distilled answers{who}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

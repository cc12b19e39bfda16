"""Audit benchmark: radioactivity dose-response of students trained the way distillers train.

The distiller collects answers from our watermarked teacher (``--wm-tokens`` watermarked completion
tokens), mixes them with other text so that a fraction rho of the training tokens is ours (exact by
tokens), and trains ``--epochs`` passes over the *whole* mix: the smaller rho, the larger the mix and the
longer the training, as with a real data set that our answers are a small part of.

Axes:

* rho in ``--rhos`` (default 100%, 10%, 5%, 1%, 0.5%), for each kind of other text (``--mixes``):
  ``task`` (the world's docstring answers to the same instruction prompts: the hard case, where our answers
  compete on the same contexts) and ``unrelated`` (the docs corpus and Python source code);
* student initialisation (``--inits``): ``base`` (an independent base model trained on the world's own
  sources, never our outputs) and ``scratch`` (a fresh random model);
* at rho = 5% (unrelated mix, base init): watermarked tokens over ``--tokens-axis``.

Controls (no claim allowed; their p-values are in the results): students trained the same way on our
*unwatermarked* answers, on answers watermarked with other keys, with other seeds, and one that shares our
data (initialised from the world's reference model, trained on the same recipe as our teacher), and one
initialised from our own teacher.

Every student is audited with the radioactivity tests only: closed mode (the suspect's answers to probe
prompts, ``--budget`` queries, sequential stop at p <= 1e-8; read as top-1 tuples and, from the top-20
logprobs returned with them, the mass way: ``closed_mass``) and open mode in the four readings (plain,
watermarked, first-occurrence, mass), Holm-corrected together. With ``--keep-students``,
``audit_retention.py --work DIR`` then measures what each student kept of the key. A student that trains
for hours (rho 1% with a million of our tokens: about 143k steps over the 66M tokens this machine's
Python sources allow, two hours on 2 cores) can be trained over several runs:
``--checkpoint-every N --work DIR`` saves its training state every N steps in DIR, and the same command
run again resumes it where it stopped (model, optimiser, data order and RNGs). Goal (issue): rho = 1%
detected at p < 1e-6 in the closed mode within 200k scored tokens (<= 5k queries) and in the open mode, with 0
of >= 10 controls claimed.
Results: ``bench/results/audit.json`` and ``audit.png`` (``--quick``: the tiny world, ``audit_quick.*``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from distillguard.audit import AuditConfig, run_audit, train_control
from distillguard.distill.recipe import DistillConfig, run_distill, sha256_file
from distillguard.watermark.schemes import WatermarkSpec
from distillguard.world import build_world

RESULTS = Path(__file__).parent / "results"
BENCH_KEY = "northwind-aster-bench"
OTHER_KEYS = ("another-provider-key-1", "another-provider-key-2")
GOAL_TOKENS = 200_000
GOAL_LOG10_P = -6.0
READINGS = ("plain", "watermarked", "first-occurrence", "mass")
# the controls initialised from a model of the world rather than "base" or "scratch", named in the results
INIT_NAMES = {"control_shared_data": "shared data (world reference)", "control_our_init": "our teacher"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny world, small collection, few students")
    parser.add_argument("--rhos", type=float, nargs="*", default=None)
    parser.add_argument("--wm-tokens", type=int, default=None, help="watermarked tokens the distiller has")
    parser.add_argument("--tokens-axis", type=int, nargs="*", default=None, help="wm tokens at rho = 5%%")
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over the whole training mix")
    parser.add_argument("--mixes", nargs="*", default=None, choices=("task", "unrelated"))
    parser.add_argument("--inits", nargs="*", default=None, choices=("base", "scratch"))
    parser.add_argument("--budget", type=int, default=None, help="max closed-mode queries per student")
    parser.add_argument("--own-texts", type=int, default=None, help="our texts read in open mode")
    parser.add_argument("--delta", type=float, default=4.0, help="KGW bias of the teacher's watermark")
    parser.add_argument("--scheme", default="kgw", help="the teacher's watermark scheme (kgw or gumbel)")
    parser.add_argument("--base-steps", type=int, default=None, help="training steps of the base model")
    parser.add_argument(
        "--student-seeds", type=int, nargs="*", default=[0],
        help="training seeds of each watermarked student (replicates; seed 0 is the unsuffixed name)",
    )  # fmt: skip
    parser.add_argument(
        "--base-shape", default=None, metavar="HIDDEN,LAYERS",
        help="size of the base model, and so of the students it initialises (default: 2/3 of the teacher's "
        "width, half its depth)",
    )  # fmt: skip
    parser.add_argument("--world-root", type=Path, default=None, help="a world built earlier at this root")
    parser.add_argument("--out", default="", help="suffix of the results file (audit_<out>.json)")
    parser.add_argument("--only", nargs="*", default=None, help="train and audit only these students")
    parser.add_argument("--resume", action="store_true", help="keep the students of the results file")
    parser.add_argument(
        "--work", type=Path, default=None, help="keep collections here and reuse them (default: a temp dir)"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=0, metavar="STEPS",
        help="save each student's training state in --work every STEPS steps; a rerun resumes it",
    )  # fmt: skip
    parser.add_argument(
        "--keep-students", action="store_true",
        help="keep each student's weights in --work, and audit the students kept there without training them",
    )  # fmt: skip
    args, _ = parser.parse_known_args()
    if args.checkpoint_every < 0 or (args.checkpoint_every and args.work is None):
        parser.error("--checkpoint-every takes a number of steps >= 1 and needs --work (it resumes there)")
    q = args.quick
    preset = "tiny" if q else "default"
    rhos = args.rhos or ([1.0, 0.1, 0.01] if q else [1.0, 0.1, 0.05, 0.01, 0.005])
    wm_tokens = args.wm_tokens or (6_000 if q else 100_000)
    axis = (
        args.tokens_axis
        if args.tokens_axis is not None
        else ([] if q else [10_000, 30_000, 300_000, 1_000_000])
    )
    mixes = args.mixes or (["unrelated"] if q else ["task", "unrelated"])
    inits = args.inits or (["base"] if q else ["base", "scratch"])
    budget = args.budget or (256 if q else 5_000)
    own_texts = args.own_texts or (256 if q else 1024)
    base_steps = args.base_steps or (300 if q else 800)
    t_start = time.time()
    world = build_world(preset, root=args.world_root, progress=True)
    mark = {"scheme": args.scheme, "delta": args.delta}  # the teacher's watermark but its key
    spec = WatermarkSpec(key=BENCH_KEY, **mark)
    work = args.work or Path(tempfile.mkdtemp(prefix="audit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    mix_files: dict[str, Path] = {}  # written once the plan is known (its largest need sizes the source)
    init_dirs = {"scratch": "tiny"}
    base_spec, base_dir = work / "base.spec.json", work / "base"
    shape = _shape(world, args.base_shape)
    base_what = {"steps": base_steps, "seed": 7, **({"shape": shape} if shape else {})}
    if base_spec.is_file() and json.loads(base_spec.read_text()) == base_what:
        print(f"== base model kept from an earlier run ({base_dir})", flush=True)
        init_dirs["base"] = str(base_dir)
    else:  # the base model: a student init, and the controls' init
        print(f"== base model ({base_steps} steps on the world's sources)", flush=True)
        base_spec.unlink(missing_ok=True)
        init_dirs["base"] = str(
            train_control(world, base_dir, steps=base_steps, seed=7, shape=shape, progress=True)
        )
        base_spec.write_text(json.dumps(base_what))

    # one collection per key, large enough for every student; each student takes a prefix of it by tokens.
    # Collected (below) only when a planned student reads it.
    ours, plain = work / "ours.jsonl", work / "plain.jsonl"
    others = [work / f"other{i}.jsonl" for i in range(1 if q else 2)]
    sources = {
        ours: ({"key": BENCH_KEY, **mark}, max([wm_tokens, *axis])),
        plain: (None, wm_tokens),
        **{o: ({"key": k, **mark}, wm_tokens) for o, k in zip(others, OTHER_KEYS, strict=False)},
    }

    mix_sha = functools.cache(sha256_file)  # what a kept student's manifest recorded of its mix

    def student(name: str, collection: Path, tokens: int, rho: float, mix: str, init: str, seed: int = 0):
        out = work / name
        kept = out / "distill.json"
        if args.keep_students and kept.is_file() and (out / "student" / "config.json").is_file():
            manifest = json.loads(kept.read_text())
            mixed = manifest["mix"].get("source_sha256")  # None without a mix (rho 100%)
            if mixed is None or mixed == mix_sha(mix_files[mix]):
                print(f"== student {name} kept from an earlier run", flush=True)  # --keep-students trained it
                return manifest
            print(f"== student {name} was trained on another mix: training it again", flush=True)
        prefix = _prefix(collection, tokens, out / "answers.jsonl")
        cfg = DistillConfig(
            teacher=str(world.teacher), out=out, student=init_dirs.get(init, init), collection=prefix,
            prompts=world.instructions,
            mix=mix_files[mix] if rho < 1.0 else None, rho=rho, epochs=args.epochs, seed=seed,
            checkpoint_every=args.checkpoint_every, resume=args.checkpoint_every > 0,
        )  # fmt: skip
        print(f"== student {name}", flush=True)
        return run_distill(cfg, progress=True, log=lambda msg: print(msg, flush=True))

    plan: list[dict] = []
    for mix in mixes:
        for init in inits:
            for rho in rhos:
                for seed in args.student_seeds:  # seed 0 keeps the name it always had
                    name = f"{mix}_{init}_rho{rho:g}" + (f"_seed{seed}" if seed else "")
                    plan.append(dict(kind="watermarked", name=name, collection=ours, tokens=wm_tokens,
                                     rho=rho, mix=mix, init=init, seed=seed))  # fmt: skip
    for tokens in axis:
        plan.append(dict(kind="watermarked", name=f"axis_{tokens}", collection=ours, tokens=tokens, rho=0.05,
                         mix=mixes[-1], init=inits[0]))  # fmt: skip
    mix0, init0 = mixes[-1], inits[0]
    for rho in rhos:  # controls: our unwatermarked answers at every rho
        plan.append(dict(kind="control", name=f"control_plain_rho{rho:g}", collection=plain, tokens=wm_tokens,
                         rho=rho, mix=mix0, init=init0))  # fmt: skip
    for i, other in enumerate(others):  # answers watermarked with someone else's key
        for rho in (1.0, 0.1)[: 1 if q else 2]:
            plan.append(dict(kind="control", name=f"control_key{i}_rho{rho:g}", collection=other,
                             tokens=wm_tokens, rho=rho, mix=mix0, init=init0))  # fmt: skip
    for seed in (1, 2)[: 1 if q else 2]:
        plan.append(dict(kind="control", name=f"control_seed{seed}", collection=plain, tokens=wm_tokens,
                         rho=0.1, mix=mix0, init=init0, seed=seed))  # fmt: skip
    plan.append(dict(kind="control", name="control_shared_data", collection=plain, tokens=wm_tokens, rho=0.1,
                     mix=mix0, init=str(world.reference)))  # fmt: skip
    # the innocent closest to us: our own model, fine-tuned on our unwatermarked answers (the mass reading's
    # reference is this model's starting point)
    plan.append(dict(kind="control", name="control_our_init", collection=plain, tokens=wm_tokens, rho=0.1,
                     mix=mix0, init=str(world.teacher)))  # fmt: skip

    stem = "audit_quick" if q else "audit"
    stem += f"_{args.out}" if args.out else ""

    def write(rows: dict[str, dict], done: bool) -> dict:
        """The results so far (rewritten after every student: a long run that stops early keeps its rows)."""
        doc = {
            "bench": "audit",
            "complete": done,
            "world": preset,
            "watermark": spec.describe(),
            "distillation": {
                "watermarked_tokens": wm_tokens,
                "tokens_count": "answer (completion) tokens; before 2026-12-04 the bench counted billed "
                "tokens (prompt + completion), about 1.8 times the answers",
                "tokens_axis_at_rho_5pct": axis,
                "epochs": args.epochs,
                "mixes": {
                    "task": "the world's docstring answers to its instruction prompts (same task, same "
                    "contexts)",
                    "unrelated": "the world's docs corpus and Python standard-library source code",
                },
                "inits": {
                    "base": f"independent base model ({base_steps} steps on the world's sources, never ours; "
                    f"shape {shape or 'default: 2/3 of the teacher width, half its depth'})",
                    "scratch": "random initialisation",
                },
                "teacher_temperature": 1.0,
            },
            "audit": {
                "closed_budget_queries": budget,
                "sequential_stop_p": 1e-8,
                "probe_prompts": "world instructions",
                "open_readings": list(READINGS),
                "own_texts": own_texts,
                "decoys": 100,
                "probe_top_logprobs": 20,
                "family": f"Holm over the two closed tests (top-1 tuples; the answers' served top-20 "
                f"logprobs, 'closed_mass') and the {len(READINGS)} open readings",
            },
            "students": rows,
            "summary": _summary(rows),
            "reference": "Sander et al. 2024: 5% watermarked data for p < 1e-5 (open model); 1% at p < 1e-5 "
            "with supervision, closed model",
            "machine": {
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },  # fmt: skip
            "wall_s": round(time.time() - t_start, 1),
            "date": time.strftime("%Y-%m-%d"),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
        _plot(doc, RESULTS / f"{stem}.png")
        return doc

    # the watermarked students first, then the controls; each group cheapest first (the training mix grows
    # as tokens / rho), so a run cut short has the most results
    plan.sort(key=lambda p: (p["kind"] == "control", p["tokens"] / p["rho"]))
    if args.only:
        plan = [p for p in plan if p["name"] in args.only]
    rows: dict[str, dict] = {}
    if args.resume and (RESULTS / f"{stem}.json").is_file():  # students of an earlier run are kept
        rows = json.loads((RESULTS / f"{stem}.json").read_text())["students"]
        print(f"== resuming: {len(rows)} students already audited", flush=True)
    plan = [p for p in plan if p["name"] not in rows]
    for m in dict.fromkeys(p["mix"] for p in plan if p["rho"] < 1.0):
        need = max(round(p["tokens"] * (1 - p["rho"]) / p["rho"]) for p in plan if p["mix"] == m)
        mix_files[m] = _mix_source(world, m, work / f"mix_{m}.jsonl", max_mb=4 if q else 120, need=need)
    for path in dict.fromkeys(p["collection"] for p in plan):  # only what the students left will read
        _collect(world, *sources[path], path, seed=0)
    for p in plan:
        manifest = student(
            p["name"], p["collection"], p["tokens"], p["rho"], p["mix"], p["init"], p.get("seed", 0)
        )
        print(f"== audit {p['name']}", flush=True)
        t0 = time.time()
        cfg = AuditConfig(
            suspect=manifest["student"], spec=spec, reference=str(world.teacher), prompts=world.instructions,
            tests=("radioactivity",), stop_p=1e-8, batch_size=64, budget=budget, own_texts=own_texts, seed=0,
            open_texts=READINGS,
        )  # fmt: skip
        report = run_audit(cfg, progress=True)
        rows[p["name"]] = _row(p, manifest, report, time.time() - t0)
        _print_row(p["name"], rows[p["name"]])
        if not args.keep_students:
            shutil.rmtree(Path(manifest["student"]), ignore_errors=True)
        write(rows, done=False)
    doc = write(rows, done=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(doc["summary"], indent=2))
    print(f"({doc['wall_s']} s)")


# --------------------------------------------------------------------------------------------------
# Data


def _collect(world, watermark: dict | None, tokens: int, path: Path, *, seed: int) -> Path:
    """Sampled teacher answers (temperature 1) to the world's instruction prompts until ``tokens``
    *completion* tokens, with our watermark, another key's, or none.

    The collector's budget counts what an API bills (prompt and completion tokens), so it is raised until
    the answers alone reach ``tokens``; answers already in ``path`` are kept (a rerun only adds)."""
    from distillguard.distill.collect import collect, read_collection
    from distillguard.distill.strategies import sample_queries
    from distillguard.models import open_model
    from distillguard.text.prompts import load_pool
    from distillguard.watermark.schemes import WatermarkSpec

    spec = WatermarkSpec(**watermark) if watermark else None
    teacher = open_model(str(world.teacher), watermark=spec)
    queries = sample_queries("uniform", load_pool(world.instructions), max(64, tokens // 4), seed=seed)
    label = (
        "unwatermarked" if spec is None else ("our key" if watermark["key"] == BENCH_KEY else "another key")
    )
    print(f"== collecting {tokens} completion tokens of answers ({label})", flush=True)

    def answered() -> tuple[int, int]:
        rows = read_collection(path) if path.is_file() else []
        done = sum(int(r.get("completion_tokens") or 0) for r in rows)
        return done, done + sum(int(r.get("prompt_tokens") or 0) for r in rows)

    # a kept collection must come from the same teacher and watermark, or it would be audited as ours
    sidecar = path.with_name(path.name + ".spec.json")
    what = {"teacher": str(world.teacher), "watermark": watermark or None, "seed": seed}
    if watermark and watermark.get("scheme") == "gumbel":  # since 2026-12-05 Gumbel has its own secret
        what["gumbel_secret"] = "domain-separated"
    if path.is_file() and (not sidecar.is_file() or json.loads(sidecar.read_text()) != what):
        raise SystemExit(f"{path} was collected with another teacher or watermark; use another --work")
    sidecar.write_text(json.dumps(what))
    done, billed = answered()
    while done < tokens:
        budget = billed + max(1_000, round((tokens - done) * (billed / done if done else 2.0) * 1.05))
        collect(teacher, queries, path, concurrency=1, max_tokens=64, temperature=1.0, top_logprobs=None,
                token_budget=budget, seed=seed, progress=True)  # fmt: skip
        before, (done, billed) = done, answered()
        if done == before:  # every query answered or failing: nothing more to get
            break
    if done < tokens:
        print(f"   only {done} completion tokens could be collected (asked {tokens})", flush=True)
    return path


def _shape(world, spec: str | None) -> dict | None:
    """``HIDDEN,LAYERS`` as a model shape (the teacher's head count; a feed-forward of 11/4 the width)."""
    if not spec:
        return None
    from transformers import AutoConfig

    hidden, layers = (int(x) for x in spec.split(","))
    heads = AutoConfig.from_pretrained(world.teacher, local_files_only=True).num_attention_heads
    return {"hidden": hidden, "layers": layers, "heads": heads, "intermediate": (hidden * 11 // 4) // 32 * 32}


def _prefix(collection: Path, tokens: int, out: Path) -> Path:
    """The first records of a collection whose completions add up to at least ``tokens`` tokens."""
    from distillguard.distill.collect import read_collection
    from distillguard.jsonl import write_jsonl

    kept, total = [], 0
    for r in read_collection(collection):
        if total >= tokens:
            break
        kept.append(r)
        total += int(r.get("completion_tokens") or 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, kept)
    return out


def _mix_source(world, kind: str, path: Path, *, max_mb: int, need: int = 0) -> Path:
    """The non-teacher text of the mix, as JSONL ``text`` lines.

    ``task``: the world's (question, docstring answer) pairs in the chat format, what an instruction set
    without our outputs looks like here (about 77k tokens: at small rho it samples our answers down).
    ``unrelated``: the docs corpus, then the standard library's source files (shallow first, sorted, up to
    ``max_mb`` MB in all) so that small rho can grow the mix as a distiller's data set would. The docs and
    the standard library hold about 15.7M tokens (about 2.1 characters per token). Where the plan ``need``s
    more other text than 2.6 characters per needed token (a margin) finds there (13M tokens; the 1M-token
    point at rho 5% needs 20M), third-party Python source from site-packages (sorted by path) follows, up
    to that bound; a plan within it gets the same file as before the extension existed.
    """
    from distillguard.jsonl import read_jsonl, write_jsonl
    from distillguard.lm.chat import format_example
    from distillguard.lm.io import load_tokenizer

    texts: list[str] = []
    if kind == "task":
        tok, _ = load_tokenizer(world.tokenizer)
        rows = [r for r in read_jsonl(world.instructions) if r.get("kind") == "api"]
        texts += [format_example(tok, r["prompt"], r["response"])[1] for r in rows]
    else:
        texts += [t.strip() for t in Path(world.corpus).read_text().split("\n\n") if t.strip()]
        size = sum(map(len, texts))
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        # shallow files first; third-party packages are not the standard library
        files = [sorted(stdlib.glob(pattern)) for pattern in ("*.py", "*/*.py", "*/*/**/*.py")]
        stdlib_files = [
            f for level in files for f in level if "site-packages" not in f.relative_to(stdlib).parts
        ]

        def add(f: Path) -> int:
            try:
                code = f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                return 0
            texts.extend(c for c in code.split("\n\n\n") if c.strip())
            return len(code)

        for f in stdlib_files:
            if size > max_mb * 2**20:
                break
            size += add(f)
        # about 2.1 characters per token here (32.5M characters of docs and source gave 15.7M tokens); 2.6
        # leaves room. Third-party sources are listed only when the plan needs more than that.
        cap = min(max_mb * 2**20, need * 2.6)
        if size <= cap:
            for f in sorted(Path(sysconfig.get_paths()["purelib"]).glob("**/*.py")):
                if size > cap:
                    break
                size += add(f)
    write_jsonl(path, ({"text": t} for t in texts))
    return path


# --------------------------------------------------------------------------------------------------
# Results


def _row(p: dict, m: dict, report: dict, wall: float) -> dict:
    row = {
        "kind": p["kind"],
        "mix": p["mix"] if p["rho"] < 1.0 else None,
        "init": INIT_NAMES.get(p["name"], p["init"]),
        "seed": p.get("seed", 0),
        "rho": p["rho"],
        "rho_actual": m["mix"]["rho_actual"],
        "teacher_tokens": m["mix"]["teacher_tokens"],
        "training_tokens": m["mix"]["teacher_tokens"] + m["mix"]["other_tokens"],
        "epochs": m["epochs"],
        "train_steps": m["train"]["steps"],
        "train_wall_s": round(m["train"]["wall_s"], 1),
        "final_loss": round(m["train"]["final_loss"], 4),
        "verdict": report["verdict"],
        "queries_used": report["queries_used"],
        "audit_wall_s": round(wall, 1),
        "tests": {},
    }
    series = report["series"]
    for t in report["tests"]:
        d = t["details"]
        key = t["name"].removeprefix("radioactivity_")
        s = series.get(t["name"]) or (series.get("radioactivity") if key == "closed" else None)
        row["tests"][key] = {
            "scored": t["n"],
            "rate": t["statistic"],
            "log10_p_exact": d["exact_log10_p_value"],
            "log10_p": t["log10_p_value"],
            "log10_p_holm": t["log10_p_value_holm"],
            "p_value_kind": d["p_value_kind"],
            "tokens_to_p_1e-6": d["tokens_to_p_1e-6"],
            "claim": t["claim"],
            "decoy_empirical_p": d["decoy_null"]["empirical_p_value"],
            "series": {k: s[k] for k in ("tokens_scored", "log10_p")} if s else None,
        }
    return row


def _print_row(name: str, row: dict) -> None:
    print(f"  {name}: {row['verdict']} (rho {row['rho_actual']:.4f}, {row['teacher_tokens']} ours of "
          f"{row['training_tokens']} tokens, {row['train_steps']} steps)", flush=True)  # fmt: skip
    for k, t in row["tests"].items():
        print(f"    {k:28s} n={t['scored']:7d} rate={t['rate']:.4f} log10p={t['log10_p']:.2f}", flush=True)


def _summary(rows: dict) -> dict:
    """Minimum rho and minimum watermarked tokens detected at p < 1e-6, per test; controls claimed."""
    out: dict = {"controls": 0, "controls_claimed": 0, "control_min_log10_p": None, "per_test": {}}
    axis_init = _axis_init(rows)
    for name, r in rows.items():
        if r["kind"] == "control":
            out["controls"] += 1
            out["controls_claimed"] += int(r["verdict"] == "distilled")
            low = min(t["log10_p"] for t in r["tests"].values())
            cur = out["control_min_log10_p"]
            out["control_min_log10_p"] = low if cur is None else min(cur, low)
            continue
        for k, t in r["tests"].items():
            slot = out["per_test"].setdefault(
                k, {"min_rho_detected": {}, "min_wm_tokens_detected_at_rho_5pct": None}
            )
            if t["log10_p"] >= GOAL_LOG10_P:
                continue
            if name.startswith("axis_") or _main_at_5pct(r, axis_init):
                cur = slot["min_wm_tokens_detected_at_rho_5pct"]
                slot["min_wm_tokens_detected_at_rho_5pct"] = min(cur or 10**12, r["teacher_tokens"])
            if not name.startswith("axis_"):
                label = f"{r['mix'] or 'none'}/{r['init']}"
                cur = slot["min_rho_detected"].get(label)
                slot["min_rho_detected"][label] = min(cur if cur is not None else 2.0, r["rho"])
    one = [r["tests"]["closed"] for n, r in rows.items() if r["kind"] == "watermarked" and r["rho"] == 0.01]
    out["goal"] = {
        "statement": "rho = 1% detected at p < 1e-6: closed mode within 200k scored tokens, and open mode",
        "closed_met": any(
            t["tokens_to_p_1e-6"] is not None and t["tokens_to_p_1e-6"] <= GOAL_TOKENS for t in one
        ),
        "open_met": any(
            r["tests"][k]["log10_p"] < GOAL_LOG10_P
            for r in rows.values()
            if r["kind"] == "watermarked" and r["rho"] == 0.01
            for k in r["tests"]
            if k.startswith("open")
        ),
        "controls_claimed": out["controls_claimed"],
    }
    return out


def _axis_init(rows: dict) -> str | None:
    """The initialisation of the watermarked-token axis students (None: there are none)."""
    return next((r["init"] for n, r in rows.items() if n.startswith("axis_")), None)


def _main_at_5pct(row: dict, init: str | None) -> bool:
    """The dose-response student at rho 5% that the watermarked-token axis (students initialised with
    ``init``; None: any) extends."""
    return (
        row["kind"] == "watermarked" and row["rho"] == 0.05 and row["mix"] == "unrelated"
        and init in (None, row["init"])
    )  # fmt: skip


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["students"]
    tests = sorted({k for r in rows.values() for k in r["tests"]})
    axis = []  # the axis students and the main student at 5% that they extend
    init = _axis_init(rows)
    if init is not None:
        picked = [r for n, r in rows.items() if n.startswith("axis_") or _main_at_5pct(r, init)]
        axis = [(r["teacher_tokens"], r) for r in sorted(picked, key=lambda r: r["teacher_tokens"])]
    fig, axes = plt.subplots(1, 2 if axis else 1, figsize=(13 if axis else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    # one line per test and kind of student: (mix, init) of the watermarked ones, the controls as crosses
    # (rho 100% has no mix: its point belongs to every mix's line)
    kinds = sorted({(r["mix"] or "", r["init"]) for r in rows.values() if r["kind"] == "watermarked"})
    kinds = [(m, ini) for m, ini in kinds if m] or kinds
    several = len({m for m, _ in kinds}) > 1
    styles = [
        (("watermarked", m, ini), ("o" if m != "task" else "^") + ("-" if ini == "base" else "--"),
         f"students, {m + ', ' if several else ''}{ini}")
        for m, ini in kinds
    ]  # fmt: skip
    styles.append((("control", None, None), "x", "controls"))
    for i, k in enumerate(tests):
        for (label, mix, ini), sel, what in styles:
            pts = sorted(
                (r["rho"], r["tests"][k]["log10_p"])
                for n, r in rows.items()
                if r["kind"] == label and k in r["tests"] and not n.startswith("axis_")
                and (mix is None or (r["mix"] in (mix, None) and r["init"] == ini))
            )  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), sel, color=f"C{i}", ms=5, lw=1, label=f"{k} ({what})")
    ax.axhline(GOAL_LOG10_P, color="grey", lw=1, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("rho (our watermarked share of training tokens)")
    ax.set_ylabel("log10 p (reported; anytime-valid where sequential)")
    ax.set_title("dose-response")
    ax.legend(fontsize=6)
    if axis:
        ax = axes[0][1]
        for i, k in enumerate(tests):
            pts = [(tok, r["tests"][k]["log10_p"]) for tok, r in axis if k in r["tests"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=f"C{i}", label=k)
        ax.axhline(GOAL_LOG10_P, color="grey", lw=1, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("watermarked tokens in the mix (rho = 5%)")
        ax.set_ylabel("log10 p")
        ax.set_title("dose at fixed rho")
        ax.legend(fontsize=7)
    wm = doc["watermark"]
    mark = f"KGW delta {wm['delta']:g}" if wm["scheme"] == "kgw" else f"Gumbel h {wm['context_width']}"
    fig.suptitle(f"radioactivity of students trained {doc['distillation']['epochs']:g} epochs over their mix "
                 f"({doc['world']} world, {mark})", fontsize=12 if axis else 10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

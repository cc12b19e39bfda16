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
from distillguard.watermark.settings import WatermarkSettings

DEMO_KEY = "northwind-aster-2026"
# Aster reproduces docstrings almost verbatim (peaked next-token distributions), so a small bias rarely
# changes a token; delta 4 marks its answers visibly at about 1.2x perplexity cost on open-ended text.
DEMO_DELTA = 4.0
# the demo's own defaults; config ``watermark_*`` settings still win (as in ``serve`` and ``audit run``)
DEMO_WATERMARK = WatermarkSettings(key=DEMO_KEY, delta=DEMO_DELTA)


def _pick_prompts(rows: list[dict], n: int) -> list[dict]:
    """A fixed, readable mix: mostly held-out API questions, a couple of identity questions."""
    identity = [r for r in rows if r.get("kind") == "identity"]
    api = [r for r in rows if r.get("kind") == "api"]
    n_id = min(len(identity), max(1, n // 4))
    step = max(1, len(api) // max(1, n - n_id))
    return api[::step][: n - n_id] + identity[:n_id]


def run_demo(
    preset: str = "default",
    n: int = 24,
    seed: int = 0,
    world_root=None,
    temperature: float = 1.0,
    copycat_queries: int | None = None,
    copycat_steps: int | None = None,
) -> dict:
    from distillguard.jsonl import read_jsonl
    from distillguard.lm.io import load_model_and_tokenizer
    from distillguard.present import format_p
    from distillguard.watermark.detect import detect_ids
    from distillguard.watermark.generate import bind_to_model, generate_watermarked
    from distillguard.world import build_world

    console = Console()
    t0 = time.time()
    cfg = load_config()
    console.rule("[bold]distillguard demo: Northwind Labs serves Aster")
    world = build_world(preset, root=world_root, progress=True)
    console.print(f"world: {world.root}  (built/loaded in {time.time() - t0:.1f}s)")

    model, tok = load_model_and_tokenizer(world.teacher)
    spec = bind_to_model(WatermarkSettings.from_config(cfg, base=DEMO_WATERMARK).spec(), model)
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
            f"{dm['green_fraction']:.2f} / {format_p(dm['p_value'], dm['log10_p_value'])}",
            p["text"],
            f"{dp['green_fraction']:.2f} / {format_p(dp['p_value'], dp['log10_p_value'])}",
        )
    am, ap = det_marked["aggregate"], det_plain["aggregate"]
    table.add_row(
        f"all {len(questions)} answers (corpus dedup)",
        f"{am['num_scored']} tuples scored",
        f"{am['green_fraction']:.2f} / {format_p(am['p_value'], am['log10_p_value'])}",
        f"{ap['num_scored']} tuples scored",
        f"{ap['green_fraction']:.2f} / {format_p(ap['p_value'], ap['log10_p_value'])}",
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
    results |= gateway_chapter(
        world, spec, console, seed=seed, out_dir=out_dir,
        queries=copycat_queries or COPYCAT_QUERIES, steps=copycat_steps or COPYCAT_STEPS,
    )  # fmt: skip
    results["audit"] = audit_chapter(
        world, spec, console, student=results["distillation"]["manifest"]["student"], seed=seed,
        out_dir=out_dir / "audit", control_steps=copycat_steps or COPYCAT_STEPS,
    )  # fmt: skip
    from distillguard.intel.story import intel_chapter

    results["intel"] = intel_chapter(console, out_dir=out_dir, seed=seed)
    results["seconds"] = round(time.time() - t0, 1)
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2))
    console.print(f"finished in {results['seconds']}s")
    console.print(f"results: {path}")
    return results


# Chapter 2 sizes: enough answers and steps for the student to pick up Aster's answers and identity
# on 2 CPU cores in a few minutes.
COPYCAT_QUERIES = 640
COPYCAT_STEPS = 500
COPYCAT_ACCOUNTS = 4
# name -> (org, client IP behind Northwind's load balancer, days since sign-up)
HONEST_ACCOUNTS = {"acme-support": ("Acme", "203.0.113.24", 210), "jdoe": (None, "198.51.100.77", 45)}


def gateway_chapter(
    world,
    spec,
    console: Console,
    *,
    seed: int = 0,
    out_dir=None,
    queries: int = COPYCAT_QUERIES,
    steps: int = COPYCAT_STEPS,
) -> dict:
    """Aster goes online behind the gateway; honest customers and Copycat's accounts use it; Copycat
    distils a student from what it collected; the ledger of every request is verified at the end."""
    import secrets
    import shutil
    from collections import Counter

    import openai

    from distillguard.gateway.serve import GatewayServer
    from distillguard.gateway.settings import GatewaySettings
    from distillguard.jsonl import read_jsonl

    out_dir = out_dir or home() / "demo"
    state = out_dir / "gateway"
    shutil.rmtree(state, ignore_errors=True)  # a fresh deployment each run: new keys, new ledger
    state.mkdir(parents=True)
    settings = GatewaySettings.from_mapping(
        {
            "model": str(world.teacher), "model_name": "aster", "port": 0,
            "accounts_path": str(state / "accounts.db"), "ledger_path": str(state / "ledger.db"),
            "trusted_proxies": ["127.0.0.1/32"],  # the load balancer: client IPs from X-Forwarded-For
            "secret": secrets.token_hex(32),
            "watermark_scheme": spec.scheme, "watermark_key": str(spec.key), "watermark_gamma": spec.gamma,
            "watermark_delta": spec.delta, "watermark_context_width": spec.context_width,
        }
    )  # fmt: skip
    console.rule("[bold]Northwind puts Aster behind the distillguard gateway")
    with GatewayServer(settings) as server:
        accounts = server.app.state.gateway.accounts
        now = time.time()
        keys = {
            name: accounts.create_key(name, org=org, rpm=600, created=now - days * 86400)[0]
            for name, (org, _, days) in HONEST_ACCOUNTS.items()
        }
        copycat_keys = [
            accounts.create_key(f"cc-{i:02d}", org=None, rpm=600)[0] for i in range(1, COPYCAT_ACCOUNTS + 1)
        ]
        console.print(
            f"gateway at {server.base_url}: {len(keys)} honest accounts, {len(copycat_keys)} accounts "
            "opened by Copycat (throwaway sign-ups)"
        )
        honest_questions = [r["prompt"] for r in _pick_prompts(read_jsonl(world.prompts), 8)]
        for i, question in enumerate(honest_questions):
            name = list(keys)[i % len(keys)]
            client = openai.OpenAI(
                base_url=server.base_url + "/v1", api_key=keys[name], max_retries=0,
                default_headers={"X-Forwarded-For": HONEST_ACCOUNTS[name][1]},
            )  # fmt: skip
            reply = client.chat.completions.create(
                model="aster", messages=[{"role": "user", "content": question}], max_tokens=48, user=name
            )
            if i < 2:
                console.print(f"[dim]{name}[/dim] {question} -> {reply.choices[0].message.content[:80]!r}")
        distilled = copycat_distills(
            world, console, seed=seed, out_dir=out_dir / "copycat", teacher_url=server.base_url + "/v1",
            api_keys=copycat_keys, queries=queries, steps=steps,
        )  # fmt: skip
        monitored = monitor_chapter(
            console, settings=settings, state=state, out_dir=out_dir, seed=seed,
            probe=lambda key, ip=None: _probe(server.base_url, key, ip),
            honest=(keys["acme-support"], HONEST_ACCOUNTS["acme-support"][1]), copycat_key=copycat_keys[0],
        )  # fmt: skip
        ledger = server.app.state.gateway.ledger
        report = ledger.verify()
        records = list(ledger.iter_records())
    by_account = Counter()  # requests: a summary record counts the refusals it holds
    for r in records:
        by_account[(r.get("account") or "-", r.get("decision"))] += r.get("repeated", 1)
    table = Table(
        title=f"query ledger: {len(records)} records, hash chain {'intact' if report.ok else 'BROKEN'}"
    )
    for col in ("account", "admitted", "refused"):
        table.add_column(col, justify="left" if col == "account" else "right")
    for name in sorted({a for a, _ in by_account}):
        table.add_row(name, str(by_account[(name, "admitted")]), str(by_account[(name, "refused")]))
    console.print(table)
    return {
        "gateway": {"accounts": list(keys) + [f"cc-{i:02d}" for i in range(1, COPYCAT_ACCOUNTS + 1)]},
        "ledger": {"records": len(records), "intact": report.ok, "first_bad_seq": report.first_bad_seq,
                   "by_account": {f"{a}/{d}": c for (a, d), c in sorted(by_account.items())}},
        "distillation": distilled,
        "monitor": monitored,
    }  # fmt: skip


def copycat_distills(
    world,
    console: Console,
    *,
    teacher_url: str,
    api_keys,
    seed: int = 0,
    out_dir=None,
    queries: int = COPYCAT_QUERIES,
    steps: int = COPYCAT_STEPS,
) -> dict:
    """Copycat collects Aster's (watermarked) answers through the API and trains its own student.

    The queries are what a careful copier sends: topic-coverage sampling over Python-docs questions with
    identity probes mixed in, spread over several accounts' keys.
    """
    from transformers import AutoConfig

    from distillguard.distill.evaluate import evaluate_models
    from distillguard.distill.recipe import DistillConfig, run_distill, student_shape
    from distillguard.present import print_eval_table

    console.rule("[bold]Copycat distils Aster black-box through the API")
    # Copycat picks a student smaller than what it guesses Aster to be (the usual economics of copying)
    shape = student_shape(AutoConfig.from_pretrained(world.teacher, local_files_only=True))
    cfg = DistillConfig(
        teacher=teacher_url, out=out_dir or home() / "demo" / "copycat", api_keys=list(api_keys),
        prompts=world.instructions, strategy="coverage", n=queries, identity_share=0.1, temperature=1.0,
        max_tokens=64, steps=steps, seed=seed, tokenizer=world.tokenizer, checkpoint_every=0, concurrency=8,
        student_shape=shape,
    )  # fmt: skip
    manifest = run_distill(cfg, progress=True, log=console.print)
    report = evaluate_models({"copycat student": manifest["student"]}, world.teacher, world.prompts, n=48)
    print_eval_table(report)
    student = report["models"]["copycat student"]
    console.print(
        f"the student ({student['params'] / 1e6:.2f}M params) learnt from "
        f"{manifest['collection']['completion_tokens']} answer tokens to {manifest['answers']} queries; "
        f"it calls itself Aster by Northwind Labs in {student['identity_rate']:.0%} of identity questions"
    )
    keep = ("mode", "strategy", "queries", "answers", "collection", "train", "student")
    return {"manifest": {k: manifest[k] for k in keep}, "evaluation": report}


def audit_chapter(
    world, spec, console: Console, *, student: str, out_dir, seed: int = 0, control_steps: int = COPYCAT_STEPS
) -> dict:
    """Northwind audits Copycat's student and, as a control, an independent model of the same world.

    Each audit runs radioactivity (closed and open), identity leakage and behavioural provenance against a
    control model that never saw Aster's outputs, and writes a signed evidence bundle with an HTML report.
    """
    from pathlib import Path

    from distillguard.audit.bundle import fingerprint, load_signing_key, summarize, write_bundle
    from distillguard.audit.controls import train_control
    from distillguard.audit.runner import AuditConfig, run_audit
    from distillguard.present import print_audit_summary

    out_dir = Path(out_dir)
    console.rule("[bold]Northwind audits: was this model trained on Aster's outputs?")
    control = train_control(world, out_dir / "control", steps=control_steps, seed=1, log=console.print)
    independent = train_control(world, out_dir / "independent", steps=control_steps, seed=2)
    signer = fingerprint(load_signing_key(None))
    audits: dict[str, dict] = {}
    for name, suspect in (("copycat", student), ("independent", independent)):
        console.print(f"[bold]suspect: {name}[/bold] ({Path(suspect).name})")
        cfg = AuditConfig(
            suspect=str(suspect), spec=spec, reference=str(world.teacher), controls=[str(control)],
            prompts=world.prompts, seed=seed, open_texts=("plain", "mass"),  # audit run's default readings
        )  # fmt: skip
        result = run_audit(cfg, progress=True)
        inputs = {"suspect": str(suspect), "reference": str(world.teacher), "control-1": str(control)}
        bundle = write_bundle(result, out_dir / f"bundle-{name}", inputs=inputs, overwrite=True)
        summary = summarize(result, bundle, signer, cfg.alpha)
        print_audit_summary(summary)
        audits[name] = summary
    return audits


BENIGN_PERSONAS = (
    "casual_chat",
    "coding_assistant",
    "support_bot",
    "batch_summariser",
    "eval_harness",
    "researcher",
)


def _probe(base_url: str, key: str, ip: str | None = None) -> int:
    """One small chat request with ``key`` (from ``ip``); the HTTP status the gateway answers."""
    import httpx

    body = {
        "model": "aster",
        "messages": [{"role": "user", "content": "What is json.dumps?"}],
        "max_tokens": 8,
    }
    headers = {"Authorization": f"Bearer {key}", **({"X-Forwarded-For": ip} if ip else {})}
    return httpx.post(base_url + "/v1/chat/completions", json=body, headers=headers, timeout=60).status_code


def monitor_chapter(
    console: Console, *, settings, state, out_dir, seed: int, probe, honest: tuple[str, str], copycat_key: str
) -> dict:
    """The monitor reads the ledger, links Copycat's accounts and moves them down the ladder.

    It is calibrated on a benign reference period (Northwind's customers' past traffic, simulated with the
    monitor's personas), then scans the live ledger and applies its tiers through the account store; the
    gateway enforces them on the next request.
    """
    from distillguard.config import load_config
    from distillguard.monitor import jobs
    from distillguard.monitor.synth import synthesize_ledger

    console.rule("[bold]The monitor reads the ledger")
    mon = out_dir / "monitor"
    mon.mkdir(parents=True, exist_ok=True)
    history = mon / "benign-history.db"
    history.unlink(missing_ok=True)
    synthesize_ledger(
        history, scale="medium", seed=seed, personas=BENIGN_PERSONAS, labels=mon / "labels.json"
    )
    config = mon / "monitor.toml"
    config.write_text(
        f'secret = "{settings.secret}"\naccounts_path = "{settings.accounts_path}"\n'
        f'ledger_path = "{settings.ledger_path}"\nmonitor_dir = "{mon / "state"}"\n'
        f'monitor_reference = "{mon / "reference.npz"}"\n'
    )
    cfg = load_config(config)  # monitor.toml stays with the results for `distillguard monitor --config`
    cal = jobs.calibrate(cfg, ledger=history, labels=mon / "labels.json")
    added = f", added to {cal['base']['what']} as neighbours" if cal.get("base") else ""
    console.print(f"benign reference: {cal['accounts']} customer accounts of simulated past traffic{added}")
    # a plain-JSON copy (numpy scalars become numbers), as results.json stores it
    report = json.loads(json.dumps(jobs.scan(cfg, apply=True), default=jobs.json_default))
    table = Table(title="monitor decisions")
    for col in ("account", "queries", "p-value", "tier", "cluster", "top reasons"):
        table.add_column(col, justify="right" if col in ("queries", "p-value") else "left")
    for row in sorted(report["accounts"], key=lambda r: r["account"]):
        p = row.get("p_value")
        table.add_row(
            row["account"], str(row.get("queries")), "n/a" if p is None else f"{p:.1e}", row["tier"],
            str(row.get("cluster") or "-"), "; ".join(row.get("reasons") or [])[:70],
        )  # fmt: skip
    console.print(table)
    statuses = {"honest customer": probe(*honest), "Copycat": probe(copycat_key)}
    console.print("next request: " + ", ".join(f"{who} -> HTTP {code}" for who, code in statuses.items()))
    return {
        "reference_accounts": cal["accounts"],
        "accounts": report["accounts"],
        "clusters": report.get("clusters", []),
        "decisions": report.get("decisions", []),
        "next_request_status": statuses,
    }

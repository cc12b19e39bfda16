"""Logprob policy benchmark: the logit-extraction attack against each policy, and what a legitimate logprob
user keeps, through a real gateway serving the world's teacher (watermarked, as in production).

For each policy (``gateway/logprob_policy.py``) the gateway is started with it and attacked with
``distill extract-logits`` in both modes: ``topk`` (biased tokens read in ``top_logprobs``: Carlini et al.
2024) and ``sampled`` (one forced token per request, its reported logprob: the adaptive attack against
logprobs reported before the bias). Reported per attack: the hidden size found and the true one, the
singular-value drop, the projection's subspace error, requests and tokens spent, and the account-days the
policy's daily logprob budget makes it cost.

The legitimate user is a multiple-choice scorer: for each of ``--users`` world questions it asks for the
top-5 logprobs of the answer's first token (no bias) and picks, among four candidate first tokens (the
true answer's and three other answers'), the one with the highest reported logprob (a candidate outside
the top 5 ranks last; ties count as a fractional hit). Its accuracy under each policy is compared with the
exact values, and so is the largest change of a reported logprob.

Results: ``bench/results/logprob_policy.json`` (``--quick``: fewer prompts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SECRET = "logprob-bench-secret-0123456789"

POLICIES = {  # name: GatewaySettings overrides (every logprob field explicit: the defaults change)
    "undefended (after bias)": {"logprobs_after_bias": True, "logprob_decimals": None},
    # the same without our watermark, whose bias on the reported logprobs is part of what the attack reads
    "undefended, unwatermarked": {"logprobs_after_bias": True, "logprob_decimals": None, "watermark": False},
    "before bias": {"logprobs_after_bias": False, "logprob_decimals": None},
    "before bias, 2 decimals": {"logprobs_after_bias": False, "logprob_decimals": 2},
    "before bias, 1 decimal": {"logprobs_after_bias": False, "logprob_decimals": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default="tiny", choices=("tiny", "default"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--users", type=int, default=None, help="questions the multiple-choice user scores")
    ap.add_argument("--budget-tokens", type=int, default=200_000, help="daily logprob budget to price")
    ap.add_argument(
        "--only", nargs="+", choices=list(POLICIES), help="these policies (results: a _only file)"
    )
    args = ap.parse_args()

    from distillguard.world import build_world

    world = build_world(args.world, progress=True)
    hidden = json.loads((Path(world.teacher) / "config.json").read_text())["hidden_size"]
    extra = 2 if args.quick else 14
    n_prompts, n_tokens = hidden + extra, hidden + extra + 5
    users = args.users or (60 if args.quick else 300)
    questions = _questions(world, users)
    t0 = time.time()
    rows: dict[str, dict] = {}
    exact_answers = None
    for name, overrides in POLICIES.items():
        if args.only and name not in args.only:
            continue
        print(f"== policy: {name}", flush=True)
        with _gateway(world, overrides) as (url, key_for):
            answers = _mc_user(url, key_for("user"), questions)
            if exact_answers is None:
                exact_answers = answers  # the first policy reports exact values
            row = {"settings": overrides, "user": _mc_score(answers, exact_answers, questions)}
            for mode in ("topk", "sampled"):
                if mode == "topk" and overrides.get("logprob_decimals"):
                    continue  # the top-k reading already fails before the bias; rounding changes nothing
                if mode == "sampled" and overrides.get("logprobs_after_bias"):
                    continue  # after the bias a forced token reports a logprob of ~0: nothing to read
                row[mode] = _attack(world, url, key_for(f"attacker-{mode}"), mode, n_prompts, n_tokens)
                a = row[mode]
                a["account_days_at_budget"] = (
                    math.ceil(a["tokens_billed"] / args.budget_tokens) if a.get("tokens_billed") else None
                )
                print(f"   {mode}: {json.dumps({k: a.get(k) for k in _SHOWN})}", flush=True)
            print(f"   user: {json.dumps(row['user'])}", flush=True)
            rows[name] = row
    base = (rows.get("undefended (after bias)") or {}).get("topk", {}).get("queries")
    for row in rows.values() if base else ():
        for mode in ("topk", "sampled"):
            a = row.get(mode)
            if a and a.get("queries"):
                a["queries_vs_undefended_topk"] = round(a["queries"] / base, 1)
    doc = {
        "bench": "logprob_policy",
        "world": args.world,
        "true_hidden_size": hidden,
        "attack": {"prompts": n_prompts, "tokens": n_tokens, "bias": 100, "max_tokens": 1},
        "user": {
            "questions": len(questions),
            "task": "4-way multiple choice from top-5 first-token logprobs",
        },
        "budget_priced_tokens_per_day": args.budget_tokens,
        "policies": rows,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "wall_s": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "logprob_policy" + ("_quick" if args.quick else "") + ("_only" if args.only else "")
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out} ({doc['wall_s']} s)")


_SHOWN = ("hidden_size", "exact", "drop_ratio", "subspace_error", "queries", "error")


class _gateway:
    """The world's teacher behind a gateway with the given policy overrides."""

    def __init__(self, world, overrides: dict):
        from distillguard.gateway.serve import GatewayServer
        from distillguard.gateway.settings import GatewaySettings

        state = Path(tempfile.mkdtemp(prefix="lp-bench-"))
        settings = GatewaySettings.from_mapping({
            "port": 0, "model": str(world.teacher), "model_name": "aster", "secret": SECRET,
            "accounts_path": str(state / "accounts.db"), "ledger_path": str(state / "ledger.db"),
            "watermark_key": "logprob-bench-key", "batch_max_size": 16, **overrides,
        })  # fmt: skip
        self.server = GatewayServer(settings)

    def __enter__(self):
        from distillguard.gateway.app import gateway_of

        self.server.start()
        accounts = gateway_of(self.server.app).accounts
        return self.server.base_url + "/v1", lambda name: accounts.create_key(name)[0]

    def __exit__(self, *exc):
        self.server.stop()


def _attack(world, url: str, key: str, mode: str, n_prompts: int, n_tokens: int) -> dict:
    from distillguard.distill.extract import extract_logits
    from distillguard.errors import UserError
    from distillguard.text.prompts import load_pool

    pool = load_pool(Path(world.prompts))
    t0 = time.time()
    try:
        r = extract_logits(
            url, tokenizer_dir=str(world.tokenizer), prompts=[pool[i % len(pool)] for i in range(n_prompts)],
            api_key=key, n_tokens=n_tokens, top_logprobs=20, mode=mode, concurrency=16,
            local_model=str(world.teacher),
        ).as_dict()  # fmt: skip
    except UserError as exc:
        return {"mode": mode, "error": str(exc), "wall_s": round(time.time() - t0, 1)}
    r.pop("spectrum", None)
    r["tokens_billed"] = r["prompt_tokens"] + r["completion_tokens"]
    return r


def _questions(world, n: int) -> list[dict]:
    """World questions with their answer's first token and three other answers' first tokens."""
    import random

    from distillguard.jsonl import read_jsonl
    from distillguard.lm.io import load_tokenizer

    tok, _ = load_tokenizer(world.tokenizer)
    rows = [r for r in read_jsonl(world.instructions) if r.get("kind") == "api"]
    rng = random.Random(0)
    rng.shuffle(rows)
    firsts = [tok.decode(tok.encode(r["response"], add_special_tokens=False)[:1]) for r in rows]
    out = []
    for i, r in enumerate(rows):
        others = [f for f in dict.fromkeys(firsts) if f != firsts[i]]
        if len(others) < 3:
            continue
        out.append(
            {"prompt": r["prompt"], "answer": firsts[i], "options": [firsts[i], *rng.sample(others, 3)]}
        )
        if len(out) >= n:
            break
    return out


def _mc_user(url: str, key: str, questions: list[dict]) -> list[dict]:
    import openai

    client = openai.OpenAI(base_url=url, api_key=key, max_retries=2)
    got = []
    for q in questions:
        r = client.chat.completions.create(
            model="aster", messages=[{"role": "user", "content": q["prompt"]}], max_tokens=1, temperature=0,
            logprobs=True, top_logprobs=5,
        )  # fmt: skip
        got.append({e.token: e.logprob for e in r.choices[0].logprobs.content[0].top_logprobs})
    return got


def _mc_score(answers: list[dict], exact: list[dict], questions: list[dict]) -> dict:
    hits = 0.0
    diff = 0.0
    for a, e, q in zip(answers, exact, questions, strict=True):
        scores = [a.get(o, -math.inf) for o in q["options"]]
        best = max(scores)
        tied = [o for o, s in zip(q["options"], scores, strict=True) if s == best]
        hits += (q["answer"] in tied) / len(tied)
        diff = max([diff, *(abs(a[t] - e[t]) for t in a if t in e)])
    return {"accuracy": round(hits / len(questions), 4), "max_abs_logprob_change": round(diff, 6)}


if __name__ == "__main__":
    main()

"""What each watermark costs in answer diversity: the same prompt asked again, as a user regenerates.

The trade-off table (``watermark_tradeoff.py``) measures quality (F1, perplexity) on one answer per prompt.
It cannot see what Gumbel's exponential-minimum sampling costs: the choice is a function of the key, the
previous ``h`` tokens and the distribution, so asking again gives the same answer whatever the seed. Here
the watermarked teacher answers ``--prompts`` instruction prompts ``--samples`` times each, with a
different sampling seed per time (the gateway's serving path: temperature 1, 64 tokens), for every
watermark of the trade-off grid and for the unwatermarked teacher.

Per watermark, over prompts: the share of prompts whose answers are all identical, the mean number of
distinct answers, the mean pairwise Jaccard similarity of the answers' word bigrams (1: the same text), and
distinct-2 (distinct word bigrams over all bigrams of a prompt's answers). Results:
``bench/results/watermark_diversity.json``.

    python bench/watermark_diversity.py            # default world, about 5 minutes on 2 cores
    python bench/watermark_diversity.py --quick    # tiny world, two watermarks
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from distillguard.world import build_world
from watermark_tradeoff import _WORD, BENCH_KEY, GRID, RESULTS, parse_watermark


def bigrams(text: str) -> list[tuple[str, str]]:
    words = _WORD.findall(text.lower())
    return list(zip(words, words[1:], strict=False))


def diversity(answers: list[list[str]]) -> dict:
    """``answers[i]``: the answers to prompt ``i``, one per seed."""
    same, distinct, jaccard, d2 = [], [], [], []
    for texts in answers:
        distinct.append(len(set(texts)))
        same.append(len(set(texts)) == 1)
        grams = [set(bigrams(t)) for t in texts]
        pairs = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in itertools.combinations(grams, 2)]
        jaccard.append(sum(pairs) / len(pairs))
        every = [g for t in texts for g in bigrams(t)]
        d2.append(len(set(every)) / len(every) if every else 0.0)
    n = len(answers)
    return {
        "prompts": n,
        "identical_share": sum(same) / n,
        "distinct_answers": sum(distinct) / n,
        "pairwise_bigram_jaccard": sum(jaccard) / n,
        "distinct_2": sum(d2) / n,
    }


def sample(world, watermark: dict | None, prompts: list[str], samples: int, work: Path, name: str) -> list:
    """``samples`` answers per prompt, one sampling seed each (the collector's per-query seeds)."""
    from distillguard.distill.collect import collect, read_collection
    from distillguard.distill.strategies import Query
    from distillguard.models import open_model
    from distillguard.watermark.schemes import WatermarkSpec

    spec = WatermarkSpec(key=BENCH_KEY, **watermark) if watermark else None
    teacher = open_model(str(world.teacher), watermark=spec)
    queries = [Query(id=f"d{i}", prompt=p, strategy="diversity") for i, p in enumerate(prompts)]
    out: list[list[str]] = [[] for _ in prompts]
    for seed in range(1, samples + 1):
        path = work / f"{name}_{seed}.jsonl"
        collect(teacher, queries, path, concurrency=1, max_tokens=64, temperature=1.0, top_logprobs=None,
                seed=seed, progress=False)  # fmt: skip
        got = {r["id"]: r["completion"] for r in read_collection(path)}
        for i in range(len(prompts)):
            out[i].append(got[f"d{i}"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny world, two watermarks, few prompts")
    parser.add_argument("--grid", nargs="*", default=None, help="scheme:gamma:delta:h watermarks")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt, one seed each")
    args = parser.parse_args()
    q = args.quick
    world = build_world("tiny" if q else "default", progress=True)
    grid = args.grid or (["kgw:0.25:2:1", "gumbel:0.25:0:1"] if q else list(GRID))
    n = args.prompts or (16 if q else 100)
    from distillguard.jsonl import read_jsonl

    rows = [r for r in read_jsonl(world.instructions) if r.get("kind") == "api" and r.get("response")]
    prompts = [r["prompt"] for r in rows[:: max(1, len(rows) // n)][:n]]
    t0 = time.time()
    results = {}
    with tempfile.TemporaryDirectory(prefix="wm-diversity-") as tmp:
        for text in ["none", *grid]:
            wm = None if text == "none" else parse_watermark(text)
            results[text] = diversity(
                sample(world, wm, prompts, args.samples, Path(tmp), text.replace(":", "_"))
            )
            r = results[text]
            print(f"  {text}: identical {r['identical_share']:.2f}, distinct answers "
                  f"{r['distinct_answers']:.2f}, bigram Jaccard {r['pairwise_bigram_jaccard']:.3f}, "
                  f"distinct-2 {r['distinct_2']:.3f}", flush=True)  # fmt: skip
    doc = {
        "bench": "watermark_diversity",
        "world": "tiny" if q else "default",
        "sampling": f"{args.samples} answers per prompt, one seed each; temperature 1, 64 tokens",
        "watermarks": results,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "wall_s": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "watermark_diversity_quick" if q else "watermark_diversity"
    (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: round(v["identical_share"], 2) for k, v in results.items()}))


if __name__ == "__main__":
    main()

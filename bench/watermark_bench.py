"""Watermark benchmarks: sampling overhead and detection throughput, each against its anchor in the same run.

* Sampling: seconds per generated token with no watermark, our KGW processor, and transformers'
  ``WatermarkLogitsProcessor`` (``generate(watermarking_config=...)``), on a tiny Llama body with a large
  vocabulary (32k, 128k, 152k), batch 1 and 16.
* Detection: tokens/s with dedup, ours (native and transformers-compatible) vs transformers'
  ``WatermarkDetector`` on the same tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
    WatermarkDetector,
    WatermarkingConfig,
)

from distillguard.lm.tiny import make_tiny_llama
from distillguard.watermark.detect import detect_ids
from distillguard.watermark.processor import WatermarkLogitsProcessor
from distillguard.watermark.schemes import WatermarkSpec

RESULTS = Path(__file__).parent / "results"


def tiny_body(vocab: int) -> LlamaForCausalLM:
    return make_tiny_llama(
        vocab,
        hidden=64,
        layers=2,
        heads=4,
        intermediate=128,
        max_pos=256,
        seed=0,
        bos_id=1,
        eos_id=2,
        pad_id=0,
    ).eval()


def time_generate(model, batch: int, new_tokens: int, repeats: int, **kwargs) -> float:
    """Median seconds per generated token (per sequence step) over repeats."""
    ids = torch.randint(3, model.config.vocab_size, (batch, 8), generator=torch.Generator().manual_seed(0))
    common = dict(
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=0,
    )
    times = []
    with torch.no_grad():
        model.generate(ids, **common, max_length=None, **{k: v for k, v in kwargs.items()})  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            model.generate(ids, **common, **kwargs)
            times.append((time.perf_counter() - t) / new_tokens)
    return statistics.median(times)


def bench_sampling(
    vocabs=(32_000, 128_000, 152_064), batches=(1, 16), new_tokens=24, repeats=5
) -> list[dict]:
    rows = []
    for vocab in vocabs:
        model = tiny_body(vocab)
        spec = WatermarkSpec(key=15485863, gamma=0.25, delta=2.0, vocab_size=vocab)
        for batch in batches:
            base = time_generate(model, batch, new_tokens, repeats)
            ours = time_generate(
                model,
                batch,
                new_tokens,
                repeats,
                logits_processor=LogitsProcessorList([WatermarkLogitsProcessor(spec)]),
            )
            hf_cfg = WatermarkingConfig(
                bias=2.0, greenlist_ratio=0.25, hashing_key=15485863, seeding_scheme="lefthash"
            )
            hf = time_generate(
                model, batch, max(4, new_tokens // 4), max(2, repeats // 2), watermarking_config=hf_cfg
            )
            rows.append(
                {
                    "vocab": vocab,
                    "batch": batch,
                    "ms_per_token_no_watermark": base * 1e3,
                    "ms_per_token_ours_kgw": ours * 1e3,
                    "ms_per_token_transformers_kgw": hf * 1e3,
                    "overhead_vs_no_watermark": ours / base - 1,
                    "speedup_vs_transformers_overhead": (hf - base) / max(ours - base, 1e-9),
                    "speedup_vs_transformers_total": hf / ours,
                }
            )
            print(json.dumps(rows[-1]))
    return rows


def bench_detection(vocab=32_000, ours_tokens=2_000_000, hf_tokens=4_096, text_len=256) -> dict:
    rng = np.random.default_rng(0)

    # Zipf-like token stream: realistic repetition for dedup to work on
    def texts(total):
        z = rng.zipf(1.3, size=total) % vocab
        z[z == 1] = 2  # keep transformers' detector's BOS check consistent (no text starts with BOS)
        return [z[i : i + text_len].tolist() for i in range(0, total, text_len)]

    big, small = texts(ours_tokens), texts(hf_tokens)
    out = {"vocab": vocab, "text_len": text_len, "threads": torch.get_num_threads()}
    for name, spec in {
        "ours_native": WatermarkSpec(key=15485863, vocab_size=vocab),
        "ours_hf_compat": WatermarkSpec(key=15485863, vocab_size=vocab, hf_compat=True),
    }.items():
        detect_ids(spec, big[:8])
        t = time.perf_counter()
        detect_ids(spec, big)
        out[f"{name}_tokens_per_s"] = ours_tokens / (time.perf_counter() - t)
        t = time.perf_counter()
        detect_ids(spec, small)
        out[f"{name}_tokens_per_s_on_hf_sample"] = hf_tokens / (time.perf_counter() - t)
    model_cfg = LlamaConfig(vocab_size=vocab)
    wcfg = WatermarkingConfig(bias=2.0, greenlist_ratio=0.25, hashing_key=15485863, seeding_scheme="lefthash")
    det = WatermarkDetector(
        model_config=model_cfg, device="cpu", watermarking_config=wcfg, ignore_repeated_ngrams=True
    )
    batch = torch.tensor(small)
    t = time.perf_counter()
    det(batch)
    out["transformers_tokens_per_s"] = hf_tokens / (time.perf_counter() - t)
    out["speedup_native"] = out["ours_native_tokens_per_s"] / out["transformers_tokens_per_s"]
    out["speedup_hf_compat"] = out["ours_hf_compat_tokens_per_s"] / out["transformers_tokens_per_s"]
    print(json.dumps(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="Smaller sizes (smoke run).")
    ap.add_argument("--detection-only", action="store_true", help="Rerun detection, keep sampling results.")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.quick:
        sampling = bench_sampling(vocabs=(32_000,), batches=(1,), new_tokens=8, repeats=2)
        detection = bench_detection(ours_tokens=100_000, hf_tokens=512)
    elif args.detection_only:
        sampling = json.loads((RESULTS / "watermark.json").read_text())["sampling"]
        detection = bench_detection()
    else:
        sampling = bench_sampling()
        detection = bench_detection()
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "sampling": sampling,
        "detection": detection,
    }
    path = RESULTS / ("watermark_quick.json" if args.quick else "watermark.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

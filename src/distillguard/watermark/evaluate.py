"""``distillguard watermark eval``: how strong, robust and cheap the watermark is on a real model.

Protocol (the KGW paper's, on the embedded world): prompts are the first tokens of corpus documents; each arm
(no watermark, then every registered scheme: KGW, Gumbel) samples 200 tokens at temperature 1 with EOS
suppressed. Reported per scheme:

* TPR at FPR 1e-3 and 1e-6 (exact p-value thresholds, dedup on) after truncation to 25/50/100/200 tokens,
  with the empirical FPR of the unwatermarked arm beside it;
* TPR after 10/20/30% random token substitution and deletion (200 tokens);
* TPR after copy-paste dilution: a watermarked span of 10/25/50% inside unwatermarked text (200 tokens);
* perplexity of each arm under a *second* model trained with another seed (the watermark's quality cost).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from distillguard.watermark.detect import detect_ids
from distillguard.watermark.generate import generate_ids
from distillguard.watermark.schemes import SCHEMES, WatermarkSpec

LENGTHS = (25, 50, 100, 200)
ALPHAS = (1e-3, 1e-6)
RATES = (0.1, 0.2, 0.3)
DILUTION = (0.1, 0.25, 0.5)
PROMPT_TOKENS = 16


def corpus_prompts(corpus_path: Path, tokenizer, n: int, seed: int) -> list[list[int]]:
    """First tokens of n distinct corpus documents (long enough to carry a prompt)."""
    from distillguard.world.corpus import split_documents

    docs = [d for d in split_documents(Path(corpus_path).read_text(encoding="utf-8")) if len(d) > 200]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(docs), size=min(n, len(docs)), replace=False)
    return [tokenizer(docs[i], add_special_tokens=False)["input_ids"][:PROMPT_TOKENS] for i in sorted(picked)]


def tpr(pvals: np.ndarray, alpha: float) -> float:
    return float(np.mean(pvals < alpha)) if len(pvals) else float("nan")


def _pvals(spec: WatermarkSpec, texts: list[list[int]], prompts: list[list[int]]) -> np.ndarray:
    doc = detect_ids(spec, texts, prompts)
    return np.array([10 ** t["log10_p_value"] for t in doc["texts"]])


def substitute(text: list[int], rate: float, vocab: int, rng) -> list[int]:
    out = np.array(text)
    k = int(round(rate * len(out)))
    pos = rng.choice(len(out), size=k, replace=False)
    out[pos] = rng.integers(0, vocab, size=k)
    return out.tolist()


def delete(text: list[int], rate: float, rng) -> list[int]:
    keep = np.ones(len(text), dtype=bool)
    keep[rng.choice(len(text), size=int(round(rate * len(text))), replace=False)] = False
    return np.array(text)[keep].tolist()


def dilute(wm: list[int], plain: list[int], frac: float, rng) -> list[int]:
    """A watermarked span of ``frac * len(plain)`` tokens pasted at a random point of plain text."""
    w = int(round(frac * len(plain)))
    start = int(rng.integers(0, len(plain) - w + 1))
    return plain[:start] + wm[:w] + plain[start : len(plain) - w]


@torch.no_grad()
def perplexity(model, prompts: list[list[int]], texts: list[list[int]], batch_size: int = 32) -> float:
    """exp(mean NLL) of the completion tokens given their prompts."""
    total, count = 0.0, 0
    for s in range(0, len(texts), batch_size):
        rows = [p + t for p, t in zip(prompts[s : s + batch_size], texts[s : s + batch_size], strict=True)]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        attn = torch.zeros_like(ids)
        for i, (p, r) in enumerate(zip(prompts[s : s + batch_size], rows, strict=True)):
            ids[i, : len(r)] = torch.tensor(r)
            attn[i, : len(r)] = 1
            labels[i, len(p) : len(r)] = torch.tensor(r[len(p) :])
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        tgt = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(nll)
        count += int((tgt != -100).sum())
    return math.exp(total / max(count, 1))


def run_eval(
    *,
    model: Path | None = None,
    reference: Path | None = None,
    preset: str = "default",
    corpus: Path | None = None,
    n: int = 200,
    out: Path | None = None,
    key: str = "15485863",
    seed: int = 0,
    new_tokens: int = 200,
    batch_size: int = 50,
    progress: bool = True,
) -> dict:
    from distillguard.config import home
    from distillguard.lm.io import load_model_and_tokenizer
    from distillguard.world import build_world, world_paths

    console = Console(stderr=True, quiet=not progress)
    world = world_paths(preset)
    if model is None or reference is None or corpus is None:
        world = build_world(preset, progress=progress)
    model_dir = Path(model) if model else world.teacher
    ref_dir = Path(reference) if reference else world.reference
    corpus_path = Path(corpus) if corpus else world.corpus
    lm, tok = load_model_and_tokenizer(model_dir)
    ref, _ = load_model_and_tokenizer(ref_dir)
    vocab = int(lm.config.vocab_size)
    prompts = corpus_prompts(corpus_path, tok, n, seed)
    schemes = {  # gamma and delta are read by the schemes that use them
        name: WatermarkSpec(scheme=name, key=key, gamma=0.25, delta=2.0, context_width=1, vocab_size=vocab)
        for name in SCHEMES
    }
    t0 = time.time()
    gen = dict(
        pad_id=tok.pad_token_id,
        eos_id=None,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    arms = {"plain": generate_ids(lm, prompts, None, desc="plain", **gen)}
    for name, spec in schemes.items():
        arms[name] = generate_ids(lm, prompts, spec, desc=name, **gen)
    gen_seconds = time.time() - t0
    rng = np.random.default_rng(seed + 1)
    result: dict = {
        "model": str(model_dir),
        "reference_model": str(ref_dir),
        "n_texts": len(prompts),
        "new_tokens": new_tokens,
        "sampling": "multinomial, temperature 1.0, EOS suppressed",
        "generation_seconds": round(gen_seconds, 1),
        "perplexity": {arm: perplexity(ref, prompts, texts) for arm, texts in arms.items()},
        "schemes": {},
    }
    plain = arms["plain"]
    for name, spec in schemes.items():
        wm = arms[name]
        row: dict = {
            "watermark": spec.describe(),
            "by_length": {},
            "substitution": {},
            "deletion": {},
            "dilution": {},
        }
        for length in LENGTHS:
            p_wm = _pvals(spec, [t[:length] for t in wm], prompts)
            p_plain = _pvals(spec, [t[:length] for t in plain], prompts)
            row["by_length"][length] = {
                **{f"tpr@{a:g}": tpr(p_wm, a) for a in ALPHAS},
                **{f"fpr@{a:g}": tpr(p_plain, a) for a in ALPHAS},
                "median_p_watermarked": float(np.median(p_wm)),
            }
        for rate in RATES:
            subs = [substitute(t, rate, vocab, rng) for t in wm]
            dels = [delete(t, rate, rng) for t in wm]
            row["substitution"][rate] = {f"tpr@{a:g}": tpr(_pvals(spec, subs, prompts), a) for a in ALPHAS}
            row["deletion"][rate] = {f"tpr@{a:g}": tpr(_pvals(spec, dels, prompts), a) for a in ALPHAS}
        for frac in DILUTION:
            mixed = [dilute(w, p, frac, rng) for w, p in zip(wm, plain, strict=True)]
            row["dilution"][frac] = {f"tpr@{a:g}": tpr(_pvals(spec, mixed, prompts), a) for a in ALPHAS}
        row["perplexity_ratio"] = result["perplexity"][name] / result["perplexity"]["plain"]
        result["schemes"][name] = row
    out_dir = Path(out) if out else home() / "eval" / "watermark"
    out_dir.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(plot(result, out_dir / "watermark_eval.png"))
    json_path = out_dir / "watermark_eval.json"
    result["json"] = str(json_path)
    json_path.write_text(json.dumps(result, indent=2))
    _print(console, result)
    return result


def _print(console: Console, result: dict) -> None:
    table = Table(title=f"watermark eval: {result['n_texts']} texts per arm, FPR targets 1e-3 / 1e-6")
    table.add_column("scheme")
    for length in LENGTHS:
        table.add_column(f"TPR {length} tok", justify="right")
    table.add_column("sub 30%", justify="right")
    table.add_column("del 30%", justify="right")
    table.add_column("dilute 25%", justify="right")
    table.add_column("PPL ratio", justify="right")
    for name, row in result["schemes"].items():

        def cell(d: dict) -> str:
            return f"{d['tpr@0.001']:.2f} / {d['tpr@1e-06']:.2f}"

        table.add_row(
            name,
            *[cell(row["by_length"][n]) for n in LENGTHS],
            cell(row["substitution"][0.3]),
            cell(row["deletion"][0.3]),
            cell(row["dilution"][0.25]),
            f"{row['perplexity_ratio']:.3f}",
        )
    console.print(table)
    console.print(f"results: {result['json']}\nplot: {result['plot']}")


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    known = {"kgw": "tab:green", "gumbel": "tab:purple"}
    colors = {name: known.get(name, f"C{i}") for i, name in enumerate(result["schemes"])}
    for name, row in result["schemes"].items():
        for a, style in zip(ALPHAS, ("-", "--"), strict=True):
            k = f"tpr@{a:g}"
            axes[0].plot(
                LENGTHS,
                [row["by_length"][n][k] for n in LENGTHS],
                style,
                marker="o",
                color=colors[name],
                label=f"{name} FPR {a:g}",
            )
            axes[1].plot(
                RATES,
                [row["substitution"][r][k] for r in RATES],
                style,
                marker="o",
                color=colors[name],
                label=f"{name} sub, FPR {a:g}",
            )
            axes[1].plot(
                RATES,
                [row["deletion"][r][k] for r in RATES],
                style,
                marker="x",
                color=colors[name],
                alpha=0.5,
                label=f"{name} del, FPR {a:g}",
            )
            axes[2].plot(
                DILUTION,
                [row["dilution"][f][k] for f in DILUTION],
                style,
                marker="o",
                color=colors[name],
                label=f"{name} FPR {a:g}",
            )
    axes[0].set(title="TPR vs length", xlabel="tokens", ylabel="TPR", ylim=(-0.02, 1.02))
    axes[1].set(title="TPR after edits (200 tokens)", xlabel="fraction edited", ylim=(-0.02, 1.02))
    axes[2].set(title="TPR after dilution (200 tokens)", xlabel="watermarked fraction", ylim=(-0.02, 1.02))
    ppl = result["perplexity"]
    axes[3].bar(list(ppl), list(ppl.values()), color=[colors.get(arm, "grey") for arm in ppl])
    axes[3].set(title="perplexity under an independent model", ylabel="PPL")
    for ax in axes[:3]:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"distillguard watermark eval ({result['n_texts']} texts per arm)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""``distillguard watermark generate|detect|eval``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from distillguard.errors import UserError
from distillguard.jsonl import read_jsonl, write_jsonl
from distillguard.present import format_p
from distillguard.watermark.options import (
    CompatOpt,
    DeltaOpt,
    GammaOpt,
    KeyOpt,
    SchemeOpt,
    VocabOpt,
    WidthOpt,
    build_specs,
)
from distillguard.watermark.settings import DEFAULTS as WM

app = typer.Typer(help="Keyed watermarks: generate, detect, evaluate.", no_args_is_help=True)
err = Console(stderr=True)


@app.command()
def generate(
    model: Annotated[
        Path, typer.Option("--model", help="HF model directory (e.g. `distillguard world path teacher`).")
    ],
    prompts: Annotated[Path, typer.Option("--prompts", help="JSONL with a `prompt` per line.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output JSONL (prompt, prompt_token_ids, token_ids, text).")
    ],
    scheme: SchemeOpt = WM.scheme,
    key: KeyOpt = None,
    gamma: GammaOpt = WM.gamma,
    delta: DeltaOpt = WM.delta,
    context_width: WidthOpt = WM.context_width,
    hf_compat: CompatOpt = WM.hf_compat,
    vocab_size: VocabOpt = None,
    no_watermark: Annotated[bool, typer.Option("--no-watermark", help="Sample without a watermark.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 64,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Top-k filter (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus filter (1 = off).")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch.")] = 16,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    raw: Annotated[
        bool, typer.Option("--raw", help="Feed prompts as-is, without the chat template.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Generate (watermarked) completions for a JSONL of prompts."""
    from distillguard.lm.io import load_model_and_tokenizer
    from distillguard.watermark.generate import generate_watermarked

    records = read_jsonl(prompts)
    for n, r in enumerate(records, 1):
        if not isinstance(r.get("prompt"), str):
            raise UserError(f"{prompts}:{n}: missing string field `prompt`")
    if len(key or []) > 1:
        raise UserError("generate takes one --key")
    specs = build_specs(scheme, key, gamma, delta, context_width, hf_compat, vocab_size)
    lm, tok = load_model_and_tokenizer(model)
    if vocab_size is not None and vocab_size != lm.config.vocab_size:
        raise UserError(
            f"--vocab-size {vocab_size} differs from the model's vocab_size {lm.config.vocab_size}"
        )
    spec = None if no_watermark else specs[0]
    rows = generate_watermarked(
        lm,
        tok,
        [r["prompt"] for r in records],
        spec,
        chat=not raw,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        batch_size=batch_size,
        seed=seed,
        progress=not as_json,
    )
    write_jsonl(out, rows)
    summary = {"out": str(out), "count": len(rows), "watermark": None if spec is None else spec.describe()}
    if as_json:
        print(json.dumps(summary))
    else:
        err.print(f"wrote {len(rows)} completions to {out}")


def load_detection_input(
    path: Path, tokenizer_dir: Path | None
) -> tuple[list[list[int]], list[list[int]], int | None]:
    """Token ids of completions and prompts from JSONL (`text`/`token_ids`, `prompt`/`prompt_token_ids`)."""
    records = read_jsonl(path)
    if not records:
        raise UserError(f"{path}: no records")
    tok = None
    vocab = None
    if tokenizer_dir is not None:
        from distillguard.lm.io import load_tokenizer

        tok, vocab = load_tokenizer(tokenizer_dir)
    completions, prompts = [], []
    for n, r in enumerate(records, 1):
        completions.append(_ids(r, "token_ids", "text", tok, path, n, required=True))
        prompts.append(_ids(r, "prompt_token_ids", "prompt", tok, path, n, required=False))
    return completions, prompts, vocab


def _ids(r: dict, ids_field: str, text_field: str, tok, path: Path, n: int, *, required: bool) -> list[int]:
    if ids_field in r:
        ids = r[ids_field]
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise UserError(f"{path}:{n}: `{ids_field}` must be a list of integers")
        return ids
    if text_field in r:
        if not isinstance(r[text_field], str):
            raise UserError(f"{path}:{n}: `{text_field}` must be a string")
        if tok is None:
            raise UserError(f"{path}:{n}: `{text_field}` needs --tokenizer (or give `{ids_field}`)")
        return tok(r[text_field], add_special_tokens=False)["input_ids"]
    if required:
        raise UserError(f"{path}:{n}: needs `{ids_field}` or `{text_field}`")
    return []


@app.command()
def detect(
    input: Annotated[Path, typer.Option("--input", help="JSONL with `text` or `token_ids` per line.")],
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="Tokenizer/model dir for `text`.")
    ] = None,
    scheme: SchemeOpt = WM.scheme,
    key: KeyOpt = None,
    gamma: GammaOpt = WM.gamma,
    delta: DeltaOpt = WM.delta,
    context_width: WidthOpt = WM.context_width,
    hf_compat: CompatOpt = WM.hf_compat,
    vocab_size: VocabOpt = None,
    no_dedup: Annotated[
        bool, typer.Option("--no-dedup", help="Score repeated tuples (invalid p-values).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the detection JSON document.")] = False,
) -> None:
    """Detect a watermark with exact p-values (dedup on, prompt excluded)."""
    from distillguard.watermark.detect import detect_ids

    completions, prompts, tok_vocab = load_detection_input(input, tokenizer)
    vocab = vocab_size if vocab_size is not None else tok_vocab
    if hf_compat and vocab is None:
        raise UserError(
            "--hf-compat needs --vocab-size (the model config's vocab_size) or a --tokenizer model dir"
        )
    specs = build_specs(scheme, key, gamma, delta, context_width, hf_compat, vocab)
    doc = detect_ids(specs, completions, prompts, dedup=not no_dedup)
    if as_json:
        print(json.dumps(doc))
        return
    table = Table(title=f"watermark detection ({specs[0].scheme}, {len(specs)} key(s))")
    for col in ("#", "tokens", "scored", "score", "z", "p-value"):
        table.add_column(col, justify="right")
    for i, t in enumerate(doc["texts"]):
        table.add_row(
            str(i),
            str(t["num_tokens"]),
            str(t["num_scored"]),
            f"{t['score']:.1f}",
            f"{t['z_score']:.2f}",
            format_p(t["p_value"], t["log10_p_value"]),
        )
    a = doc["aggregate"]
    table.add_row(
        "all",
        str(a["num_tokens"]),
        str(a["num_scored"]),
        f"{a['score']:.1f}",
        f"{a['z_score']:.2f}",
        format_p(a["p_value"], a["log10_p_value"]),
        style="bold",
    )
    Console().print(table)
    if "degenerate_windows" in doc["test"]:
        Console().print(doc["test"]["degenerate_windows"], markup=False)


@app.command("eval")
def evaluate(
    model: Annotated[
        Path | None, typer.Option("--model", help="Model to evaluate (default: world teacher).")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="Model that measures perplexity (default: world reference)."),
    ] = None,
    preset: Annotated[str, typer.Option(help="World preset used for defaults.")] = "default",
    n: Annotated[int, typer.Option(help="Texts per arm.")] = 200,
    out: Annotated[Path | None, typer.Option("--out", help="Output directory (JSON + PNG).")] = None,
    key: Annotated[str, typer.Option("--key", help="Secret key.")] = "15485863",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results JSON.")] = False,
) -> None:
    """TPR at FPR 1e-3/1e-6 vs length, robustness, dilution and perplexity cost; writes JSON and a PNG."""
    from distillguard.watermark.evaluate import run_eval

    result = run_eval(
        model=model,
        reference=reference,
        preset=preset,
        n=n,
        out=out,
        key=key,
        seed=seed,
        progress=not as_json,
    )
    if as_json:
        print(json.dumps(result))

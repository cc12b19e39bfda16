"""``distillguard distill``: train a student from a teacher (dir or URL); ``distill eval``: score students."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from distillguard.errors import UserError

app = typer.Typer(
    help="Distil a student from a teacher (black-box API, grey-box logprobs, white-box logits); evaluate it.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def distill(
    ctx: typer.Context,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher: a local HF model dir or an http(s) API base URL.")
    ] = None,
    student: Annotated[
        str, typer.Option(help="'tiny' (fresh small Llama) or a local HF model dir.")
    ] = "tiny",
    prompts: Annotated[Path | None, typer.Option(help="Prompt pool (JSONL 'prompt' or text lines).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (student/, distill.json, cache).")
    ] = None,
    mode: Annotated[str, typer.Option(help="blackbox | greybox | whitebox (auto: blackbox).")] = "auto",
    api_key: Annotated[list[str] | None, typer.Option("--api-key", help="API key; repeat to spread.")] = None,
    model: Annotated[str | None, typer.Option(help="API model id (default: the first listed).")] = None,
    strategy: Annotated[
        str, typer.Option(help="uniform | coverage | paraphrase | cot | identity")
    ] = "uniform",
    n: Annotated[int, typer.Option(help="Number of queries.")] = 256,
    identity_share: Annotated[float, typer.Option(help="Share of identity probes mixed in.")] = 0.0,
    concurrency: Annotated[int, typer.Option(help="Parallel API requests.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Max answer tokens.")] = 64,
    temperature: Annotated[float, typer.Option(help="Teacher sampling temperature (0 = greedy).")] = 0.0,
    token_budget: Annotated[int | None, typer.Option(help="Stop collecting after this many tokens.")] = None,
    top_logprobs: Annotated[int, typer.Option(help="Grey-box: logprobs per position to request.")] = 5,
    loss: Annotated[str, typer.Option(help="White-box loss: fkl | rkl | jsd.")] = "fkl",
    beta: Annotated[float, typer.Option(help="JSD mixture weight.")] = 0.5,
    kd_temperature: Annotated[float, typer.Option(help="KD softmax temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="White-box sparse KD on the teacher's top-k (0 = full).")] = 0,
    lam: Annotated[float, typer.Option("--lambda", help="White-box on-policy share.")] = 0.0,
    mix: Annotated[
        Path | None, typer.Option(help="Other text to blend in (JSONL 'text' or plain text).")
    ] = None,
    rho: Annotated[float, typer.Option(help="Exact fraction of training tokens from the teacher.")] = 1.0,
    tokenizer: Annotated[
        Path | None, typer.Option(help="Tokenizer for a tiny student of a remote teacher.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps (ignored with --epochs).")] = 300,
    epochs: Annotated[
        float | None,
        typer.Option(help="Passes over the whole training mix (sets the steps from the mix size).", min=0.01),
    ] = None,
    collection: Annotated[
        Path | None,
        typer.Option(help="Train on this existing collection (JSONL from an earlier run); query nothing."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 8,
    seq_len: Annotated[int, typer.Option(help="Tokens per row.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    lora_r: Annotated[int, typer.Option(help="LoRA rank for a real-size student (0 = full fine-tune).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for queries, data order and init.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    resume: Annotated[bool, typer.Option(help="Continue from out/checkpoint.pt if present.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Collect teacher answers (resumable) and train a student; writes OUT/student and OUT/distill.json."""
    if ctx.invoked_subcommand is not None:
        return
    if not teacher or not out:
        raise UserError("distill needs --teacher DIR|URL and --out DIR (see --help)")
    from distillguard.distill.recipe import DistillConfig, run_distill

    cfg = DistillConfig(
        teacher=teacher, out=out, student=student, prompts=prompts, mode=mode, api_keys=list(api_key or []),
        model=model, strategy=strategy, n=n, identity_share=identity_share, concurrency=concurrency,
        max_tokens=max_tokens, temperature=temperature, token_budget=token_budget, top_logprobs=top_logprobs,
        loss=loss, beta=beta, kd_temperature=kd_temperature, top_k=top_k, lam=lam, mix=mix, rho=rho,
        tokenizer=tokenizer, steps=steps, epochs=epochs, collection=collection, batch_size=batch_size,
        seq_len=seq_len, lr=lr, lora_r=lora_r, seed=seed, checkpoint_every=checkpoint_every, resume=resume,
    )  # fmt: skip
    log = (lambda *_: None) if as_json else typer.echo
    manifest = run_distill(cfg, progress=not as_json, log=log)
    if as_json:
        typer.echo(json.dumps(manifest))
    else:
        tr = manifest["train"]
        typer.echo(
            f"student saved to {manifest['student']} ({manifest['mode']}, {tr['steps']} steps, "
            f"final loss {tr['final_loss']:.3f}, {tr['tokens_per_s']:,.0f} tokens/s)"
        )


@app.command("eval")
def eval_cmd(
    student: Annotated[list[Path], typer.Option("--student", help="Student model dir; repeat to compare.")],
    teacher: Annotated[Path, typer.Option(help="Teacher model dir.")],
    prompts: Annotated[Path | None, typer.Option(help="Held-out prompts (default: the world's).")] = None,
    n: Annotated[int, typer.Option(help="Questions (evenly spread).")] = 64,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here too.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Held-out perplexity, agreement with the teacher, answer F1 and identity answers, per model."""
    from distillguard.distill.evaluate import evaluate_models

    if prompts is None:
        from distillguard.world import build_world

        prompts = build_world("default", progress=not as_json).prompts
    if not prompts.is_file():
        raise UserError(f"prompts file not found: {prompts}")
    names: dict[str, Path] = {}
    for s in student:
        names[s.name if s.name not in names else str(s)] = s
    report = evaluate_models(names, teacher, prompts, n=n, progress=not as_json)
    if not _emit(report, out, as_json):
        from distillguard.present import print_eval_table

        print_eval_table(report)


def _emit(report: dict, out: Path | None, as_json: bool) -> bool:
    """Write the report to ``out`` (if given) and print it as JSON with ``--json``; True when printed."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(report))
    return as_json


@app.command("extract-logits")
def extract_logits_cmd(
    teacher: Annotated[str, typer.Option(help="The API to attack: an http(s) OpenAI-compatible base URL.")],
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="The attacker's copy of the teacher's tokenizer (default: the world's)."),
    ] = None,
    prompts: Annotated[Path | None, typer.Option(help="Prompt pool (default: the world's prompts).")] = None,
    api_key: Annotated[str, typer.Option("--api-key", help="API key for the teacher.")] = "none",
    model: Annotated[str | None, typer.Option(help="API model id (default: the first listed).")] = None,
    n_prompts: Annotated[
        int, typer.Option("--prompts-used", help="Prompts (rows of the logit matrix).")
    ] = 150,
    tokens: Annotated[int, typer.Option(help="Token subset (columns of the logit matrix).")] = 200,
    top_logprobs: Annotated[int, typer.Option("--top-logprobs", help="top_logprobs per request.")] = 20,
    mode: Annotated[
        str,
        typer.Option(
            help="topk: biased tokens read in top_logprobs; sampled: one biased, generated token "
            "per request (against APIs that report logprobs before logit_bias)."
        ),
    ] = "topk",  # fmt: skip
    budget: Annotated[int | None, typer.Option(help="Most requests to send.", min=1)] = None,
    concurrency: Annotated[int, typer.Option(help="Parallel requests.", min=1)] = 8,
    seed: Annotated[int, typer.Option(help="Seed for the token subset.")] = 0,
    local_model: Annotated[
        Path | None, typer.Option(help="The true model dir, to score the recovered projection (red team).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here too.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Logit extraction (Carlini et al. 2024): recover the teacher's hidden size and projection subspace
    through logit_bias + top_logprobs; reports queries and tokens spent."""
    from distillguard.distill.extract import extract_logits
    from distillguard.text.prompts import load_pool

    if tokenizer is None or prompts is None:
        from distillguard.world import build_world

        world = build_world("default", progress=not as_json)
        tokenizer = tokenizer or world.tokenizer
        prompts = prompts or world.prompts
    if not Path(prompts).is_file():
        raise UserError(f"prompts file not found: {prompts}")
    pool = load_pool(Path(prompts))
    report = extract_logits(
        teacher, tokenizer_dir=str(tokenizer), prompts=[pool[i % len(pool)] for i in range(n_prompts)],
        api_key=api_key, model=model, n_tokens=tokens, top_logprobs=top_logprobs, mode=mode, budget=budget,
        concurrency=concurrency, seed=seed, local_model=str(local_model) if local_model else None,
    ).as_dict()  # fmt: skip
    if _emit(report, out, as_json):
        return
    truth = f" (true {report['true_hidden_size']})" if report["true_hidden_size"] else ""
    typer.echo(
        f"hidden size {report['hidden_size']}{truth}: singular values drop {report['drop_ratio']:.3g}x; "
        f"{report['prompts']} prompts x {report['tokens']} tokens, {report['queries']} requests "
        f"({report['failed']} failed), {report['prompt_tokens'] + report['completion_tokens']} tokens billed"
    )

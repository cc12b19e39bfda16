"""Watermark options shared by every command that takes them (generate, detect, eval, later serve/audit)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # schemes imports torch; `--help` and the gateway's key commands must not
    from distillguard.watermark.schemes import WatermarkSpec

SchemeOpt = Annotated[str, typer.Option("--scheme", help="Watermark scheme: kgw or gumbel.")]
KeyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--key", help="Secret key (integer or string); repeat to score several keys (Holm-corrected)."
    ),
]
GammaOpt = Annotated[float, typer.Option("--gamma", help="KGW green-list fraction.")]
DeltaOpt = Annotated[float, typer.Option("--delta", help="KGW logit bias added to green tokens.")]
WidthOpt = Annotated[
    int, typer.Option("--context-width", help="Tokens of context that key the watermark (h).")
]
CompatOpt = Annotated[
    bool,
    typer.Option("--hf-compat", help="Bit-compatible with transformers' WatermarkingConfig lefthash (CPU)."),
]
VocabOpt = Annotated[
    int | None, typer.Option("--vocab-size", help="The model config's vocab_size (needed without a model).")
]


def build_specs(
    scheme: str,
    keys: list[str] | None,
    gamma: float,
    delta: float,
    context_width: int,
    hf_compat: bool,
    vocab_size: int | None,
) -> list[WatermarkSpec]:
    """One spec per key; validation errors surface as UserError (one line at the CLI)."""
    from distillguard.watermark.keys import parse_key
    from distillguard.watermark.schemes import HF_DEFAULT_KEY, WatermarkSpec

    keys = keys or [str(HF_DEFAULT_KEY)]
    return [
        WatermarkSpec(
            scheme=scheme.lower(),  # type: ignore[arg-type]
            key=parse_key(k),
            gamma=gamma,
            delta=delta,
            context_width=context_width,
            hf_compat=hf_compat,
            vocab_size=vocab_size,
        )
        for k in keys
    ]

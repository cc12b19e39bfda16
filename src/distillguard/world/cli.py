"""``distillguard world ...``: build the embedded world and print where its parts live."""

from __future__ import annotations

import json

import typer

from distillguard.errors import UserError

app = typer.Typer(
    help="The embedded default world: corpus, tokenizer, teacher (Aster by Northwind Labs).",
    no_args_is_help=True,
    add_completion=False,
)

PARTS = ("teacher", "tokenizer", "corpus", "prompts", "reference", "instructions", "root", "manifest")


@app.command("build")
def build_cmd(
    preset: str = typer.Option("default", help="World preset: default or tiny (fast, for tests)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a matching build is cached."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (paths and manifest)."),
) -> None:
    """Build (or reuse) corpus, instructions, tokenizer, teacher and reference model."""
    from distillguard.world.build import build_world

    paths = build_world(preset, force=force, progress=True)  # progress goes to stderr, JSON to stdout
    manifest = paths.read_manifest()
    if as_json:
        print(
            json.dumps(
                {"preset": preset, "root": str(paths.root), "paths": paths.as_dict(), "manifest": manifest},
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"world '{preset}' (Python {manifest['python']})", show_header=False)
    teacher, quality = manifest["teacher"], manifest.get("eval", {})
    table.add_row(
        "corpus", f"{manifest['corpus']['documents']} docs, sha256 {manifest['corpus']['sha256'][:16]}"
    )
    table.add_row(
        "instructions",
        f"{manifest['instructions']['train']} train, {manifest['instructions']['prompts']} held-out prompts",
    )
    table.add_row(
        "teacher",
        f"{teacher['params'] / 1e6:.2f}M params, loss {teacher['final_loss']}, "
        f"{teacher['tokens_per_s']:.0f} tok/s",
    )
    table.add_row("quality", ", ".join(f"{k} {v}" for k, v in quality.items()))
    table.add_row("build time", f"{manifest['wall_s']} s")
    console = Console()
    console.print(table)
    console.print(str(paths.root), soft_wrap=True, highlight=False)


@app.command("path")
def path_cmd(
    part: str = typer.Argument(..., help=f"One of: {', '.join(PARTS)}."),
    preset: str = typer.Option("default", help="World preset: default or tiny."),
) -> None:
    """Print the path of one part of a built world (does not build)."""
    from distillguard.world.build import world_paths

    if part not in PARTS:
        raise typer.BadParameter(f"choose one of: {', '.join(PARTS)}", param_hint="PART")
    paths = world_paths(preset)
    if not paths.manifest.is_file():
        raise UserError(f"world '{preset}' is not built; run `distillguard world build --preset {preset}`")
    print(getattr(paths, part))

"""The one command-line entry point: ``distillguard ...``.

Each capability mounts its own typer sub-app; this module only wires them and turns user errors into one
line on stderr with a non-zero exit, as DESIGN.md's interface contract requires.
"""

from __future__ import annotations

import sys

import click
import typer

from distillguard.errors import UserError

app = typer.Typer(
    name="distillguard",
    help="Watermark, distil, audit, serve and monitor language models against distillation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _mount() -> None:
    from distillguard.watermark.cli import app as watermark_app
    from distillguard.world.cli import app as world_app

    app.add_typer(world_app, name="world")
    app.add_typer(watermark_app, name="watermark")

    @app.command("demo")
    def demo_cmd(
        preset: str = typer.Option("default", help="World preset: default (demo) or tiny (fast)."),
        n: int = typer.Option(8, help="Number of held-out questions to answer."),
    ) -> None:
        """Play the story: build the world, answer with and without the watermark, detect."""
        from distillguard.demo import run_demo

        run_demo(preset=preset, n=n)


_mount()


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code or 2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()

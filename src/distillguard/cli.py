"""The one command-line entry point: ``distillguard ...``.

Each capability mounts its own typer sub-app; this module only wires them and turns user errors into one
line on stderr with a non-zero exit, as DESIGN.md's interface contract requires.
"""

from __future__ import annotations

import sys

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
    from distillguard.audit.cli import app as audit_app
    from distillguard.distill.cli import app as distill_app
    from distillguard.gateway.cli import accounts_app, keys_app, ledger_app
    from distillguard.gateway.serve import serve as serve_cmd
    from distillguard.monitor.sim_cli import simulate_cmd
    from distillguard.watermark.cli import app as watermark_app
    from distillguard.world.cli import app as world_app

    app.add_typer(world_app, name="world")
    app.add_typer(watermark_app, name="watermark")
    app.add_typer(keys_app, name="keys")
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(ledger_app, name="ledger")
    app.command("serve")(serve_cmd)
    app.add_typer(distill_app, name="distill")
    app.add_typer(audit_app, name="audit")
    from distillguard.monitor.cli import app as monitor_app

    app.add_typer(monitor_app, name="monitor")
    app.command("simulate")(simulate_cmd)

    @app.command("demo")
    def demo_cmd(
        preset: str = typer.Option("default", help="World preset: default (demo) or tiny (fast)."),
        n: int = typer.Option(24, help="Number of held-out questions to answer."),
    ) -> None:
        """Play the story: build the world, answer with and without the watermark, detect."""
        from distillguard.demo import run_demo

        run_demo(preset=preset, n=n)


_mount()


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:  # click returns typer.Exit(n)'s code here instead of raising
            sys.exit(code)
    except UserError as exc:
        _fail(str(exc), 2)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # click's usage errors (vendored or not, depending on the typer version) carry these two attributes
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            _fail(exc.format_message(), exc.exit_code or 2)
        raise


def _fail(message: str, code: int) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()

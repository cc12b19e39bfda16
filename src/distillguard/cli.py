"""The one command-line entry point: ``distillguard ...``.

Each capability mounts its own typer sub-app; this module only wires them and turns user errors into one
line on stderr with a non-zero exit, as docs/architecture.md's interface contract requires.

Start-up is kept short because most commands (help, keys, accounts, ledger, monitor) need no model: the
sub-app modules import torch and transformers only inside the commands that load one, and :func:`main`
builds only the command it runs.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable

import typer

from distillguard.audit.cli import app as audit_app
from distillguard.distill.cli import app as distill_app
from distillguard.errors import UserError
from distillguard.gateway.cli import accounts_app, keys_app, ledger_app
from distillguard.gateway.serve import serve as serve_cmd
from distillguard.heldout.cli import app as heldout_app
from distillguard.intel.cli import app as intel_app
from distillguard.monitor.cli import app as monitor_app
from distillguard.monitor.sim_cli import simulate_cmd
from distillguard.watermark.cli import app as watermark_app
from distillguard.world.cli import app as world_app


def demo_cmd(
    preset: str = typer.Option("default", help="World preset: default (demo) or tiny (fast)."),
    n: int = typer.Option(24, help="Number of held-out questions to answer."),
) -> None:
    """Play the story: build the world, answer with and without the watermark, detect."""
    from distillguard.demo import run_demo

    run_demo(preset=preset, n=n)


# Every command and sub-app, in the order ``--help`` lists them. Importing their modules is cheap (heavy
# imports sit inside the commands); what costs is typer turning every command's signature into options, so an
# invocation builds only the entry it runs (see :func:`build_app`).
ENTRIES: dict[str, typer.Typer | Callable[..., None]] = {
    "world": world_app,
    "watermark": watermark_app,
    "keys": keys_app,
    "accounts": accounts_app,
    "ledger": ledger_app,
    "serve": serve_cmd,
    "distill": distill_app,
    "audit": audit_app,
    "monitor": monitor_app,
    "intel": intel_app,
    "simulate": simulate_cmd,
    "heldout": heldout_app,
    "demo": demo_cmd,
}


def _outline(sub: typer.Typer) -> typer.Typer:
    """``sub`` without its commands: the same name, help and callback in a listing, nothing to build."""
    outline = copy.copy(sub)
    outline.registered_commands = []
    outline.registered_groups = []
    return outline


def build_app(full: Iterable[str] | None = None) -> typer.Typer:
    """The ``distillguard`` app with the entries named in ``full`` complete (all of them when None) and the
    other sub-apps as outlines, which list the same in ``--help`` but cannot run."""
    full = set(ENTRIES if full is None else full)
    app = typer.Typer(
        name="distillguard",
        help="Watermark, distil, audit, serve and monitor language models against distillation.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for name, entry in ENTRIES.items():
        if isinstance(entry, typer.Typer):
            app.add_typer(entry if name in full else _outline(entry), name=name)
        else:
            app.command(name)(entry)
    return app


app = build_app()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    # only the command being run is built in full; `distillguard --help` needs none of them
    cli = build_app(full=args[:1])
    try:
        code = cli(args=args, standalone_mode=False)
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

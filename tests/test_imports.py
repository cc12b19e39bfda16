"""Commands that need no model start without torch or transformers.

Importing torch and transformers costs seconds; ``distillguard --help``, key and account administration, the
ledger's checks and a monitor scan never touch a model, so they must not pay for it. Each case runs in a fresh
interpreter (this test process has long imported both) and reports which heavy modules got loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("torch", "transformers")

# Runs each argv list through the real entry point in one fresh process, then prints one JSON line:
# the exit codes and which HEAVY modules are loaded. ``@synth`` writes a small signed ledger (library call);
# ``@import MODULE`` imports a module, to show that the check sees a heavy import.
WRAPPER = textwrap.dedent(
    """
    import json, sys

    from distillguard.cli import main

    def synth():
        from distillguard.config import load_config
        from distillguard.gateway.accounts import gateway_secret
        from distillguard.gateway.ledger import Ledger
        from distillguard.monitor.synth import synthesize_ledger

        cfg = load_config()
        synthesize_ledger(Ledger.default_path(cfg), scale="tiny", seed=0, secret=gateway_secret(cfg))
        return 0

    codes = []
    for argv in json.loads(sys.argv[1]):
        if argv == ["@synth"]:
            codes.append(synth())
            continue
        if argv[0] == "@import":
            __import__(argv[1])
            codes.append(0)
            continue
        try:
            main(argv)
            codes.append(0)
        except SystemExit as exc:
            codes.append(exc.code or 0)
    print(json.dumps({"codes": codes, "loaded": [m for m in sys.argv[2].split(",") if m in sys.modules]}))
    """
)


def _run(commands: list[list[str]], home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    env |= {"DISTILLGUARD_HOME": str(home), "DISTILLGUARD_MONITOR_SAMPLE_SIZE": "16", "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, json.dumps(commands), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_of_every_command_group_loads_no_model_library(tmp_path: Path) -> None:
    commands = [
        ["--help"],
        ["keys", "--help"],
        ["keys", "create", "--help"],
        ["accounts", "--help"],
        ["ledger", "--help"],
        ["monitor", "--help"],
        ["monitor", "scan", "--help"],
        ["intel", "--help"],
        ["intel", "export", "--help"],
        ["serve", "--help"],
        ["audit", "--help"],
        ["audit", "run", "--help"],
        ["distill", "--help"],
        ["watermark", "--help"],
        ["watermark", "detect", "--help"],
        ["world", "--help"],
        ["simulate", "--help"],
        ["heldout", "--help"],
        ["heldout", "generate", "--help"],
        ["demo", "--help"],
    ]
    result = _run(commands, tmp_path)
    assert result["codes"] == [0] * len(commands)
    assert result["loaded"] == []


def test_keys_accounts_ledger_and_a_monitor_scan_load_no_model_library(tmp_path: Path) -> None:
    commands = [
        ["keys", "create", "--account", "alice", "--json"],
        ["keys", "list", "--json"],
        ["accounts", "list"],
        ["@synth"],
        ["ledger", "verify"],
        ["ledger", "head"],
        ["monitor", "scan", "--json"],
    ]
    result = _run(commands, tmp_path)
    assert result["codes"] == [0] * len(commands)
    assert result["loaded"] == []


def test_the_check_sees_a_heavy_import(tmp_path: Path) -> None:
    result = _run([["--help"], ["@import", "distillguard.audit.radioactivity"]], tmp_path)
    assert result["codes"] == [0, 0]
    assert "torch" in result["loaded"]


def test_help_built_from_outlines_lists_what_the_full_app_lists() -> None:
    """``main`` builds only the command it runs; the outlines of the others must not change ``--help``."""
    from typer.testing import CliRunner

    from distillguard.cli import ENTRIES, build_app

    runner = CliRunner()
    full = runner.invoke(build_app(), ["--help"], prog_name="distillguard", env={"COLUMNS": "100"})
    outline = runner.invoke(build_app(full=[]), ["--help"], prog_name="distillguard", env={"COLUMNS": "100"})
    assert full.exit_code == outline.exit_code == 0
    assert outline.output == full.output
    assert all(name in full.output for name in ENTRIES)
    for name in ("keys", "distill", "monitor"):  # a sub-app built alone has its full help
        alone = runner.invoke(build_app(full=[name]), [name, "--help"], env={"COLUMNS": "100"})
        everything = runner.invoke(build_app(), [name, "--help"], env={"COLUMNS": "100"})
        assert alone.exit_code == 0 and alone.output == everything.output

"""Running the ``distillguard`` CLI in-process from tests."""

from __future__ import annotations

from collections.abc import Sequence

import pytest


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run ``distillguard ARGV`` in this process; returns (exit code, stdout, stderr) as captured (what was
    printed before the call is dropped first)."""
    from distillguard.cli import main

    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err

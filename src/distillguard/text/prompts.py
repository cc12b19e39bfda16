"""Prompt pools from files: the questions a distiller asks a teacher, or an audit asks its models."""

from __future__ import annotations

from pathlib import Path

from distillguard.errors import UserError
from distillguard.jsonl import parse_lines


def load_pool(path: Path) -> list[str]:
    """Prompts from a file: JSONL with ``prompt`` (or ``text`` / ``question``) per line, or plain text lines.

    The format is decided by the first non-empty line: a JSON object means JSONL. Empty lines are skipped.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"prompt file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"prompt file is not UTF-8 text: {p}") from None
    first = next((ln for ln in lines if ln.strip()), "")
    prompts: list[str] = []
    if first.lstrip().startswith("{"):
        for n, obj in parse_lines(lines, p):
            text = next((obj[k] for k in ("prompt", "text", "question") if isinstance(obj.get(k), str)), None)
            if text is None:
                raise UserError(f'{p}:{n}: no "prompt", "text" or "question" string field')
            if text.strip():
                prompts.append(text)
    else:
        prompts = [ln.strip() for ln in lines if ln.strip()]
    if not prompts:
        raise UserError(f"no prompts in {p}")
    return prompts

"""JSONL reading and writing with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from distillguard.errors import UserError


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"file not found: {p}")
    with p.open(encoding="utf-8") as fh:
        for _, obj in parse_lines(fh, p):
            yield obj


def parse_lines(lines: Iterable[str], path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-empty line; a line that is not a JSON object is an error
    naming ``path`` and the line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: malformed JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{n}: expected a JSON object per line")
        yield n, obj


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write atomically: a half-written file never sits at ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(p)
    return p

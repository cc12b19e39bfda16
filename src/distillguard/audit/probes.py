"""Closed-mode probes drawn from the gateway's ledger: what the suspect's accounts asked.

A distiller trains on our answers to its own questions, so the suspect's answers to those questions are
where our watermark is most likely to show. :func:`ledger_probes` reads a ``distillguard ledger export``
(``DIR/ledger.parquet`` or the file itself), keeps the admitted requests of the chosen accounts (every
account when none is chosen), takes each request's last user turn (chat messages) or its prompt
(completions), drops empty and redacted (``sha256:...``) texts, deduplicates, and samples up to ``limit``
of them with a seeded RNG. The result is a plain list of prompts, the same structure as a prompt pool
(:func:`distillguard.text.prompts.load_pool`), plus a record of where they came from for the report.

Pure apart from reading the file; pyarrow is imported on first use.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.errors import UserError

#: The probes sampled when the audit has neither a query budget nor a probe count.
DEFAULT_LIMIT = 1024

_COLUMNS = ("account", "decision", "prompt", "messages")
_REDACTED = re.compile(r"sha256:[0-9a-f]{64}")
_USER_SEP = "\nuser: "  # a rendered chat's last user turn follows the last one (see monitor.features)


@dataclass(frozen=True)
class LedgerProbes:
    """Probe prompts (a pool: a list of texts) and where they came from."""

    prompts: list[str]
    path: Path  # the ledger.parquet read
    accounts: list[str] | None  # as asked; None: every account
    admitted: int  # admitted requests of those accounts
    available: int  # distinct usable prompts among them
    seed: int

    def source(self) -> dict[str, Any]:
        """The record for the audit's config and report (no prompt text)."""
        return {
            "source": "ledger",
            "ledger": str(self.path),
            "accounts": list(self.accounts) if self.accounts is not None else "all",
            "admitted_requests": self.admitted,
            "available": self.available,
            "sampled": len(self.prompts),
            "seed": self.seed,
        }


def ledger_path(path: Path | str) -> Path:
    """The ``ledger.parquet`` that ``path`` names (the file, or an export directory holding it)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "ledger.parquet"
    if not p.is_file():
        raise UserError(
            f"ledger export not found: {p} (write one with `distillguard ledger export --out DIR`)"
        )
    return p


def probe_text(prompt: str | None, messages: str | None) -> str:
    """A request's probe: the last user turn of its chat messages (canonical JSON text), else the last user
    turn of its rendered prompt (a completion's prompt is returned whole)."""
    if messages:
        try:
            entries = json.loads(messages)
        except ValueError:
            entries = None
        if isinstance(entries, list):
            users = [m for m in entries if isinstance(m, dict) and m.get("role") == "user"]
            if users:
                content = users[-1].get("content")
                return content if isinstance(content, str) else ""
            return ""
    return (prompt or "").rsplit(_USER_SEP, 1)[-1]


def ledger_probes(
    path: Path | str, accounts: Sequence[str] | None = None, *, limit: int | None = None, seed: int = 0
) -> LedgerProbes:
    """Up to ``limit`` distinct probe prompts asked by ``accounts`` (None or empty: every account) in
    admitted requests of the ledger export at ``path``, sampled with ``seed`` (same inputs, same probes).

    Raises :class:`UserError` for a missing or unreadable export, an account absent from it, or no usable
    prompt among the admitted requests.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if limit is not None and limit < 1:
        raise UserError(f"probe limit must be at least 1, got {limit}")
    file = ledger_path(path)
    wanted = sorted(dict.fromkeys(a for a in accounts or () if a)) or None
    try:
        schema = pq.read_schema(file)
        missing = [c for c in _COLUMNS if c not in schema.names and c != "messages"]
        if missing:
            raise UserError(f"{file} is not a ledger export (no column {missing[0]!r})")
        if wanted is not None:  # an account absent from the export is a typo, not "no probes"
            present = set(pc.unique(pq.read_table(file, columns=["account"])["account"]).to_pylist())
            absent = [a for a in wanted if a not in present]
            if absent:
                more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
                raise UserError(f"account {absent[0]!r}{more} has no request in the ledger export {file}")
        keep = [("decision", "==", "admitted")] + ([("account", "in", wanted)] if wanted is not None else [])
        cols = [c for c in _COLUMNS if c in schema.names]
        table = pq.read_table(file, columns=cols, filters=keep)  # only these rows' text is read
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read ledger export {file}: {str(exc).splitlines()[0]}") from None
    prompts = table["prompt"].to_pylist()
    messages = table["messages"].to_pylist() if "messages" in table.column_names else [None] * len(prompts)
    texts = (probe_text(p, m) for p, m in zip(prompts, messages, strict=True))
    unique = list(dict.fromkeys(t for t in texts if t.strip() and not _REDACTED.fullmatch(t.strip())))
    who = "every account" if wanted is None else f"account(s) {', '.join(wanted)}"
    if not unique:
        why = (
            "no admitted request" if not len(prompts) else "no admitted request with prompt text (redacted?)"
        )
        raise UserError(f"{who}: {why} in the ledger export {file}")
    n = len(unique) if limit is None else min(limit, len(unique))
    chosen = random.Random(f"{seed}:ledger-probes").sample(unique, n)
    return LedgerProbes(chosen, file, wanted, len(prompts), len(unique), seed)

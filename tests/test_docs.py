"""The documentation the code relies on is in the repository and current.

Docstrings and comments cite documents by path (``docs/architecture.md``); a cited document that is not in
the repository is a dangling reference. And every command the top-level CLI registers is described in the
architecture notes, so a new command group cannot land without its contract being written down.
"""

from __future__ import annotations

import re
from pathlib import Path

from distillguard.cli import build_app

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs/architecture.md"

# a path-like word ending in .md (``docs/architecture.md``, ``README.md``); URLs are removed before matching
DOC_PATH = re.compile(r"(?<![\w./-])([\w][\w./-]*\.md)\b")
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def citing_files() -> list[Path]:
    """Source, tests, benchmarks and scripts, plus the Markdown that ships with the repository."""
    files = [p for d in ("src", "tests", "bench", "scripts") for p in sorted((ROOT / d).rglob("*.py"))]
    files += [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in files if p.is_file()]


def cited_docs(text: str) -> set[str]:
    return set(DOC_PATH.findall(URL.sub(" ", text)))


def test_doc_path_pattern() -> None:
    text = "see docs/architecture.md and README.md; https://example.org/x/NOTES.md; not file.mdx"
    assert cited_docs(text) == {"docs/architecture.md", "README.md"}


def test_cited_documents_exist() -> None:
    missing = []
    for path in citing_files():
        for doc in sorted(cited_docs(path.read_text(encoding="utf-8"))):
            if not ((ROOT / doc).is_file() or (path.parent / doc).is_file()):
                missing.append(f"{path.relative_to(ROOT)} cites {doc}, which is not in the repository")
    assert not missing, "\n".join(missing)


def test_architecture_names_every_command() -> None:
    app = build_app(full=())  # outlines only: names without building every command's options
    names = [g.name for g in app.registered_groups] + [c.name for c in app.registered_commands]
    assert names and all(names)
    text = ARCHITECTURE.read_text(encoding="utf-8")
    absent = [n for n in names if not re.search(rf"`(distillguard )?{re.escape(n)}\b", text)]
    assert not absent, f"commands not described in docs/architecture.md: {', '.join(absent)}"

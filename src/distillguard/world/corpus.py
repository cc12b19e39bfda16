"""The world's pretraining corpus: the running interpreter's own documentation, read offline.

Why the Python docs: they ship with every interpreter, need no download, are freely licensed, and give a
small model real English prose plus a large set of named facts ("json.dumps serializes obj ...") that the
instruction set can ask about. The allow-list is fixed and sorted and only modules without import side
effects are read, so the same interpreter always yields a byte-identical corpus (the SHA-256 proves it).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Curated, sorted; every entry is import-safe (no GUI, no network, no printing at import time).
MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "ast", "base64", "binascii", "bisect", "calendar", "cmath", "codecs",
    "collections", "collections.abc", "colorsys", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "enum", "filecmp", "fnmatch", "fractions",
    "functools", "getopt", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser",
    "http", "inspect", "io", "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging",
    "lzma", "math", "mimetypes", "numbers", "operator", "os", "os.path", "pathlib", "pickle", "pprint",
    "queue", "random", "re", "reprlib", "sched", "secrets", "shlex", "shutil", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "time", "timeit", "tokenize", "traceback", "types", "typing", "unicodedata", "urllib.parse", "uuid",
    "warnings", "weakref", "zipfile", "zlib",
)  # fmt: skip

DOC_SEPARATOR = "\f\n"  # form feed never survives normalisation, so it cannot occur inside a document


@dataclass(frozen=True)
class Doc:
    """One corpus document: a module, an API (``json.dumps``, ``json.JSONEncoder.encode``) or a topic."""

    title: str
    kind: str  # "module" | "api" | "method" | "topic"
    text: str  # the normalised docstring, without the title


def normalise(text: str) -> str:
    """Collapse whitespace inside lines, strip lines, keep paragraph breaks (at most one blank line)."""
    lines = [re.sub(r"\s+", " ", line).strip() for line in text.replace("\r", "\n").split("\n")]
    out = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", out)


def _doc_of(obj: object) -> str:
    doc = getattr(obj, "__doc__", None)
    return normalise(inspect.cleandoc(doc)) if isinstance(doc, str) else ""


def _public_names(mod: object) -> list[str]:
    """Names the module documents as its own: ``__all__`` when present, else objects defined in it."""
    all_names = getattr(mod, "__all__", None)
    if all_names is not None:
        names = [n for n in all_names if isinstance(n, str) and hasattr(mod, n)]
    else:
        real = getattr(mod, "__name__", "")
        names = [n for n, v in vars(mod).items() if getattr(v, "__module__", None) == real]
    return sorted({n for n in names if not n.startswith("_")})


def _is_api(obj: object) -> bool:
    return inspect.isclass(obj) or inspect.isroutine(obj)


def api_documents(module_names: tuple[str, ...] = MODULES) -> list[Doc]:
    """Module, function, class and method docstrings of the allow-listed modules, in a fixed order."""
    docs: list[Doc] = []
    for modname in module_names:
        try:
            mod = importlib.import_module(modname)
        except ImportError:  # an interpreter built without e.g. _sqlite3: skipped, still deterministic
            continue
        text = _doc_of(mod)
        if text:
            docs.append(Doc(modname, "module", text))
        for name in _public_names(mod):
            obj = getattr(mod, name)
            if not _is_api(obj):
                continue
            text = _doc_of(obj)
            if text:
                docs.append(Doc(f"{modname}.{name}", "api", text))
            if inspect.isclass(obj):
                for meth in sorted(vars(obj)):
                    member = vars(obj)[meth]
                    if meth.startswith("_") or not _is_api(member):
                        continue
                    text = _doc_of(member)
                    if text:
                        docs.append(Doc(f"{modname}.{name}.{meth}", "method", text))
    return docs


def topic_documents() -> list[Doc]:
    """The language reference topics that ``help()`` shows (``pydoc_data.topics``), sorted by name."""
    from pydoc_data.topics import topics

    return [Doc(name, "topic", normalise(topics[name])) for name in sorted(topics) if topics[name].strip()]


_CHILD_ENV = "DISTILLGUARD_CORPUS_CHILD"


def corpus_documents() -> list[Doc]:
    """Every document of the corpus, in its fixed order: API docs first, then language topics.

    Read in a fresh interpreter that has imported nothing but the standard library: libraries patch stdlib
    objects when imported (transformers adds ``logging.Logger.warning_once``, torch wraps
    ``inspect.getfile``), so reading the docs in a process that already holds them would make the corpus
    depend on import order.
    """
    if os.environ.get(_CHILD_ENV) == "1":
        return api_documents() + topic_documents()
    code = (
        "import json, sys; from distillguard.world.corpus import corpus_documents; "
        "json.dump([[d.title, d.kind, d.text] for d in corpus_documents()], sys.stdout)"
    )
    env = {**os.environ, _CHILD_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return [Doc(title, kind, text) for title, kind, text in json.loads(out.stdout)]


def render(doc: Doc) -> str:
    """The text a model trains on: a title line, then the docstring."""
    return f"{doc.title}\n{doc.text}"


def corpus_text(docs: list[Doc] | None = None) -> str:
    """The whole corpus as one string, documents separated by :data:`DOC_SEPARATOR`."""
    docs = corpus_documents() if docs is None else docs
    return DOC_SEPARATOR.join(render(d) for d in docs) + "\n"


def split_documents(text: str) -> list[str]:
    """Inverse of :func:`corpus_text` for readers of ``corpus.txt``: the rendered documents."""
    return [part.strip("\n") for part in text.split(DOC_SEPARATOR) if part.strip()]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_corpus(path: Path, docs: list[Doc] | None = None) -> str:
    """Write ``corpus.txt`` and return its SHA-256 (of the UTF-8 bytes written)."""
    text = corpus_text(docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return sha256_text(text)

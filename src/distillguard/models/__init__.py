"""Model clients: one interface to a local HF model directory or an OpenAI-compatible URL.

Distillation (the teacher), audits (suspect, reference and controls) and anything else that asks a model
questions go through here. :func:`open_model` picks the client by the target's form, in the way
``open_quota_store`` picks a store by its URL: ``http(s)://...`` is an :class:`~.http.HTTPModel`, anything
else a :class:`~.local.LocalModel` directory. Importing this package loads neither httpx nor torch; each
client module is imported when it is first opened.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from distillguard.errors import UserError
from distillguard.models.base import Answer, ModelClient, ModelError

__all__ = ["Answer", "ModelClient", "ModelError", "open_model"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_model(
    target: str | Path, api_keys: Sequence[str] = (), *, role: str = "teacher", **options
) -> ModelClient:
    """The client for ``target``: an :class:`~.http.HTTPModel` for ``http(s)://...``, else a
    :class:`~.local.LocalModel` directory. ``options`` go to the client's constructor; one that does not apply
    to that kind of client is a :class:`UserError`, as are another URL scheme and API keys for a directory.
    ``role`` (``teacher``, ``suspect``, ...) names the model in error messages."""
    target = str(target).strip()
    scheme = _SCHEME.match(target)
    try:
        if scheme:
            if scheme.group(1).lower() not in ("http", "https"):
                raise UserError(f"{role} URL must be http:// or https://, got {target!r}")
            from distillguard.models.http import HTTPModel

            return HTTPModel(target, api_keys, role=role, **options)
        if api_keys:
            raise UserError(f"API keys apply to a {role} URL, not to a local model directory")
        from distillguard.models.local import LocalModel

        return LocalModel(Path(target), **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            bad = str(exc).split("unexpected keyword argument")[-1].strip()
            kind = "URL" if scheme else "model directory"
            raise UserError(f"option {bad} does not apply to a {role} {kind}") from None
        raise

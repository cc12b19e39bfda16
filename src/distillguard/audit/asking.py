"""The models an audit asks questions: the suspect, our own model and the controls, each a local Hugging
Face directory or an OpenAI-compatible URL, opened and queried through :class:`Asked` (the readings in
:mod:`.modes` also run forward passes on a local model's weights). Also here: the checks on the targets
(each control once, never the suspect; distinct labels), the seeded prompt streams the models are asked
from, and :class:`Log`, the audit's progress lines on stderr.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distillguard.errors import UserError

if TYPE_CHECKING:
    from distillguard.audit.runner import AuditConfig


class Asked:
    """A model we query through :func:`~distillguard.models.open_model`: a local directory or a URL."""

    def __init__(self, target: str, role: str, *, api_keys: Sequence[str] = (), model: str | None = None):
        from distillguard.models import open_model

        self.role = role
        self.queries = 0
        self.failed = 0
        self.errors: list[str] = []
        target = str(target).strip()
        self.is_url = target.lower().startswith(("http://", "https://"))
        if "://" in target and not self.is_url:
            raise UserError(f"{role} URL must be http:// or https://, got {target!r}")
        try:
            if self.is_url:
                self.client = open_model(target, api_keys, role=role, model=model, max_retries=3)
            else:
                if api_keys:
                    raise UserError(f"API keys apply to a {role} URL, not to a model directory")
                p = Path(target).expanduser()
                if not p.exists():
                    raise UserError(f"{role} is neither a URL nor an existing model directory: {target}")
                self.client = open_model(p, role=role, batch_size=32)
        except UserError as exc:
            raise self._rename(exc) from None
        self.name = self.client.name

    def _rename(self, exc: UserError) -> UserError:
        """The client's errors name the role already; others (a loader's, a bad option) get it as a prefix."""
        msg = str(exc)
        if self.role not in msg:
            msg = f"{self.role}: {msg}"
        return UserError(msg)

    @property
    def model(self):
        return None if self.is_url else self.client.model

    @property
    def tokenizer(self):
        return None if self.is_url else self.client.tokenizer

    def ask(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int,
        temperature: float,
        seed: int,
        concurrency: int,
        top_logprobs: int | None = None,
    ):
        """Answers in prompt order; ``None`` where a request failed for good (counted in ``failed``)."""
        if not prompts:
            return []
        self.queries += len(prompts)
        try:
            if not self.is_url:
                return self.client.answer_many(
                    prompts,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
                    top_logprobs=top_logprobs,
                )
            return asyncio.run(
                self._ask_url(prompts, max_tokens, temperature, seed, concurrency, top_logprobs)
            )
        except UserError as exc:
            raise self._rename(exc) from None

    async def _ask_url(self, prompts, max_tokens, temperature, seed, concurrency, top_logprobs=None):
        """Concurrent requests; each carries a seed derived from ``seed`` and its position, so a server
        that honours OpenAI's ``seed`` answers the same audit the same way (reproducible evidence)."""
        from distillguard.models import ModelError

        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(i: int, p: str):
            async with sem:
                try:
                    return await self.client.answer(
                        p,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        top_logprobs=top_logprobs,
                        seed=seed_of(seed, i),
                    )
                except ModelError as exc:
                    self.failed += 1
                    if len(self.errors) < 10:
                        self.errors.append(str(exc))
                    return None

        try:
            return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        finally:
            await self.client.aclose()


def control_labels(controls: Sequence[Asked]) -> list[str]:
    """One distinct label per control (two directories may carry the same model name)."""
    labels: list[str] = []
    for i, c in enumerate(controls):
        clash = c.name in labels or c.name == "suspect"  # "suspect" is the suspect's own label
        labels.append(f"{c.name} (control {i + 1})" if clash else c.name)
    return labels


def distinct_targets(cfg: AuditConfig) -> None:
    """Each control model once, and never the suspect: a model listed twice would count as two models."""

    def key(t: str) -> str:
        t = str(t).strip()
        return t.rstrip("/").lower() if "://" in t else str(Path(t).expanduser().resolve())

    seen = {key(cfg.suspect): "the suspect"}
    for c in cfg.controls:
        if key(c) in seen:
            raise UserError(f"control {c} is listed twice or is {seen[key(c)]}: list each control model once")
        seen[key(c)] = "another control"


def is_model_dir(path: str) -> bool:
    return (Path(path).expanduser() / "config.json").is_file()


def seed_of(*parts) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def prompt_stream(pool: Sequence[str], seed: int, tag: str):
    """Pool prompts in a fresh seeded order per pass, forever."""
    epoch = 0
    while True:
        order = list(range(len(pool)))
        random.Random(f"{seed}:{tag}:{epoch}").shuffle(order)
        for i in order:
            yield pool[i]
        epoch += 1


def take(it, n: int) -> list[str]:
    return [next(it) for _ in range(n)]


class Log:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[audit] {msg}", file=sys.stderr, flush=True)

"""Collect teacher answers for a query set into a resumable JSONL cache.

Why a cache and not a result list: collecting from a rate-limited API takes hours and gets interrupted
(quota, network, Ctrl-C, a killed job). The cache is append-only, one record per finished query, each line
written whole with a single ``write`` and fsynced, so a killed run leaves at most a torn last line. The next
run truncates that line, skips every query whose id is already there and collects the rest: no duplicates,
no gaps. Only one process may collect into a cache at a time (an exclusive ``flock``).

Record: ``{"id", "prompt", "strategy", "meta", "completion", "finish_reason", "prompt_tokens",
"completion_tokens", "logprobs", "token_ids", "teacher", "ts"}`` (``ts``: Unix seconds when written).

The token budget counts prompt + completion tokens (the server's ``usage``) over the whole cache, earlier
runs included. Once it is reached no new request starts; requests in flight finish and are kept, so the
overshoot is at most ``concurrency`` answers (one batch for a local teacher, which is asked batch by batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from distillguard.distill.strategies import Query
from distillguard.errors import UserError
from distillguard.models import Answer, ModelClient, ModelError

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

MAX_ERRORS_KEPT = 20


@dataclass
class CollectStats:
    """What one :func:`collect` call did. ``failed`` queries were not written; a rerun retries them."""

    requested: int
    done: int
    skipped_cached: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    stopped_by_budget: bool
    wall_s: float
    errors: list[str] = field(default_factory=list)  # the first few failure messages

    def to_dict(self) -> dict:
        return {
            "requested": self.requested,
            "done": self.done,
            "skipped_cached": self.skipped_cached,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "stopped_by_budget": self.stopped_by_budget,
            "wall_s": self.wall_s,
            "errors": list(self.errors),
        }


def query_seed(seed: int, query_id: str) -> int:
    """Per-query sampling seed: the same query gets the same seed in every run, whatever the order."""
    digest = hashlib.sha256(f"{int(seed)}:{query_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def make_record(query: Query, answer: Answer, teacher_name: str, ts: float | None = None) -> dict:
    """The cache record for one answered query."""
    return {
        "id": query.id,
        "prompt": query.prompt,
        "strategy": query.strategy,
        "meta": dict(query.meta),
        "completion": answer.text,
        "finish_reason": answer.finish_reason,
        "prompt_tokens": int(answer.prompt_tokens),
        "completion_tokens": int(answer.completion_tokens),
        "logprobs": answer.logprobs,
        "token_ids": answer.token_ids,
        "teacher": teacher_name,
        "ts": round(time.time() if ts is None else ts, 3),
    }


# --------------------------------------------------------------------------------------------------
# The cache file


def _parse_lines(data: bytes, path: Path) -> tuple[list[dict], int]:
    """Records of a cache's bytes and the length of its intact prefix (a torn last line excluded).

    A line that is not valid JSON is tolerated only at the very end (a write cut by a kill); anywhere else
    the cache was edited or corrupted and we refuse to guess.
    """
    records: list[dict] = []
    good = 0
    pos = 0
    n = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end]
        n += 1
        nxt = len(data) if end < 0 else end + 1
        if not line.strip():
            pos = nxt
            if end >= 0:
                good = nxt
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        torn = end < 0 or (nxt == len(data) and obj is None)
        if obj is None or not isinstance(obj, dict) or "id" not in obj:
            if torn:
                break
            raise UserError(f"{path}:{n}: corrupt collection record (not a JSON object with an id)")
        if end < 0:  # complete JSON but no newline: the kill hit between the object and its "\n"
            break
        records.append(obj)
        good = nxt
        pos = nxt
    return records, good


def read_collection(cache_path: Path) -> list[dict]:
    """All intact records of a cache, in file order (the order answers finished, which with
    ``concurrency > 1`` is not the query order; match records to queries by ``id``). A torn last line
    is ignored (not removed: reading never writes)."""
    p = Path(cache_path)
    if not p.is_file():
        raise UserError(f"collection not found: {p}")
    return _parse_lines(p.read_bytes(), p)[0]


class _Cache:
    """The open, locked, append-only cache file."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self.fd)
                raise UserError(f"collection {path} is in use by another process") from None
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, size, 0) if size else b""
        self.records, good = _parse_lines(data, path)
        if good < len(data):  # drop a torn last line so the next append starts on a fresh line
            os.ftruncate(self.fd, good)
            os.fsync(self.fd)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:  # one write for a regular file in practice; loop for the rare short write
            written = os.write(self.fd, view)
            view = view[written:]
        os.fsync(self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


# --------------------------------------------------------------------------------------------------
# Collection


class _Run:
    """State shared by the workers of one collection."""

    def __init__(self, cache: _Cache, stats: CollectStats, token_budget: int | None, used: int, bar):
        self.cache = cache
        self.stats = stats
        self.budget = token_budget
        self.used = used
        self.bar = bar

    def budget_left(self) -> bool:
        if self.budget is not None and self.used >= self.budget:
            self.stats.stopped_by_budget = True
            return False
        return True

    def write(self, query: Query, answer: Answer, teacher_name: str) -> None:
        self.cache.append(make_record(query, answer, teacher_name))
        tokens = int(answer.prompt_tokens) + int(answer.completion_tokens)
        self.used += tokens
        self.stats.done += 1
        self.stats.prompt_tokens += int(answer.prompt_tokens)
        self.stats.completion_tokens += int(answer.completion_tokens)
        self.bar.update(1)

    def fail(self, query: Query, exc: BaseException) -> None:
        self.stats.failed += 1
        if len(self.stats.errors) < MAX_ERRORS_KEPT:
            self.stats.errors.append(f"{query.id}: {exc}")
        self.bar.update(1)


async def _collect_async(
    teacher: ModelClient, pending: list[Query], run: _Run, concurrency: int, kwargs: dict, seed: int
) -> None:
    sem = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task] = set()
    abort: list[BaseException] = []

    async def one(q: Query) -> None:
        try:
            answer = await teacher.answer(q.prompt, seed=query_seed(seed, q.id), **kwargs)
        except ModelError as exc:
            run.fail(q, exc)
        except Exception as exc:  # UserError (teacher unusable) or a bug: stop launching, re-raise
            abort.append(exc)
        else:
            run.write(q, answer, teacher.name)
        finally:
            sem.release()

    try:
        for q in pending:
            await sem.acquire()
            if abort or not run.budget_left():
                sem.release()
                break
            task = asyncio.create_task(one(q))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        closer = getattr(teacher, "aclose", None)
        if closer is not None:
            await closer()
    if abort:
        raise abort[0]


def _chunks(items: list[Query], size: int) -> Iterator[list[Query]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _collect_batched(teacher, pending: list[Query], run: _Run, kwargs: dict, seed: int) -> None:
    """A local teacher: whole batches through ``answer_many``; the budget is checked between batches."""
    size = max(1, int(getattr(teacher, "batch_size", 16)))
    for chunk in _chunks(pending, size):
        if not run.budget_left():
            break
        answers = teacher.answer_many([q.prompt for q in chunk], seed=query_seed(seed, chunk[0].id), **kwargs)
        for q, a in zip(chunk, answers, strict=True):
            run.write(q, a, teacher.name)


def collect(
    teacher: ModelClient,
    queries: Sequence[Query],
    cache_path: Path,
    *,
    concurrency: int = 4,
    max_tokens: int = 128,
    temperature: float = 0.0,
    top_logprobs: int | None = None,
    token_budget: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> CollectStats:
    """Answer every query not yet in ``cache_path`` and append the answers there.

    Remote teachers are asked ``concurrency`` queries at a time (asyncio); a teacher with ``answer_many``
    (:class:`~distillguard.models.local.LocalModel`) is asked in its own batches. Each query gets a
    sampling seed derived from ``seed`` and its id (:func:`query_seed`), so reruns ask the same thing.
    ``requested`` counts distinct query ids. A query that fails after retries is counted in ``failed`` and
    not written; a :class:`UserError` from the teacher (unreachable, all keys rejected) stops the run after
    the answers in flight are saved, and is raised.
    """
    if concurrency < 1:
        raise UserError(f"concurrency must be >= 1, got {concurrency}")
    if max_tokens < 1:
        raise UserError(f"max_tokens must be >= 1, got {max_tokens}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if token_budget is not None and token_budget < 0:
        raise UserError(f"token budget must be >= 0, got {token_budget}")
    start = time.perf_counter()
    unique: dict[str, Query] = {}
    for q in queries:
        unique.setdefault(q.id, q)
    cache = _Cache(Path(cache_path))
    try:
        have = {r["id"] for r in cache.records}
        used = sum(
            int(r.get("prompt_tokens") or 0) + int(r.get("completion_tokens") or 0) for r in cache.records
        )
        pending = [q for qid, q in unique.items() if qid not in have]
        stats = CollectStats(
            requested=len(unique),
            done=0,
            skipped_cached=len(unique) - len(pending),
            failed=0,
            prompt_tokens=0,
            completion_tokens=0,
            stopped_by_budget=False,
            wall_s=0.0,
        )
        kwargs = {"max_tokens": max_tokens, "temperature": temperature, "top_logprobs": top_logprobs}
        with tqdm(total=len(pending), desc="collect", disable=not progress, leave=False) as bar:
            run = _Run(cache, stats, token_budget, used, bar)
            if pending and run.budget_left():
                if callable(getattr(teacher, "answer_many", None)):
                    _collect_batched(teacher, pending, run, kwargs, seed)
                else:
                    asyncio.run(_collect_async(teacher, pending, run, concurrency, kwargs, seed))
    finally:
        cache.close()
    stats.wall_s = time.perf_counter() - start
    return stats

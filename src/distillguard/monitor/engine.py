"""Where the monitor's feature pass runs: in this process (``local``) or on a Ray cluster (``ray``).

An engine turns a Parquet ledger export into the :class:`FeatureAccumulator` of one pass over it; the
scoring, linking and decisions that follow are the same whichever engine read the ledger. Engines are
objects in :data:`ENGINES`, opened by :func:`open_engine` (``monitor scan --engine``, config
``monitor_engine``).

- ``local``: :func:`monitor.scan.accumulate` (derivation on threads, one in-order fold).
- ``ray``: the export is cut into slices of whole Parquet row groups in ledger order
  (:func:`plan_slices`). Two map + merge rounds run as Ray tasks: the copy table (each slice's claims,
  merged by earliest row: :class:`monitor.merge.CopyClaims`), then the features (each slice folded into
  its own accumulator reading that table, merged pairwise in ledger order as a tree of Ray tasks:
  :func:`monitor.merge.merge_into`). The result equals the local pass (:mod:`monitor.merge` says why).

Why Ray and not Spark: the per-account state is Python objects and numpy arrays (sketches, bounded
counters, a text sample) that merge by a Python function, which Ray's tasks run as they are (the same
process model as the local pass, a ``pip install``, no JVM); in Spark it would be a Python UDF aggregate
over Arrow with the JVM in between. ``bench/engine_bench.py`` measures the local and Ray passes on the
same export.

On a real cluster the workers read the slices themselves, so the export must be at a path every node
sees (a shared file system), and every node needs distillguard installed (or a Ray ``runtime_env``). The
README's "Scale" section shows how to submit a scan.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from distillguard.errors import UserError

Tick = Callable[[int], None]
SLICE_ROWS = 1_000_000  # rows per slice (whole row groups): enough work per task to hide its overhead


@dataclass(frozen=True)
class Slice:
    """Consecutive row groups of one export file; ``base`` is the ledger position of its first row."""

    file: str
    row_groups: tuple[int, ...]
    base: int
    rows: int


def plan_slices(path: Path, slice_rows: int = SLICE_ROWS) -> list[Slice]:
    """The export cut into slices of about ``slice_rows`` rows, in ledger order (Parquet metadata only)."""
    from distillguard.monitor.scan import open_export_file, parquet_files

    out: list[Slice] = []
    base = 0
    for f in parquet_files(path):
        meta = open_export_file(f)[0].metadata
        groups: list[int] = []
        rows = 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= slice_rows or g == meta.num_row_groups - 1:
                out.append(Slice(str(f), tuple(groups), base, rows))
                base += rows
                groups, rows = [], 0
    return out


def slice_batches(s: Slice, columns: tuple[str, ...] | None = None) -> Iterator[Any]:
    """The record batches of a slice, with ``columns`` (default: all the features read)."""
    import pyarrow.parquet as pq

    from distillguard.monitor.features import COLUMNS
    from distillguard.monitor.scan import BATCH_ROWS

    pf = pq.ParquetFile(s.file)
    cols = [c for c in columns or COLUMNS if c in pf.schema_arrow.names]
    yield from pf.iter_batches(batch_size=BATCH_ROWS, row_groups=list(s.row_groups), columns=cols)


def claim_slice(s: Slice, bits: int, min_chars: int) -> tuple[Any, ...]:
    """Map step 1: the copy-table claims of one slice, as sparse arrays."""
    from distillguard.monitor.merge import CopyClaims

    claims = CopyClaims.empty(bits, min_chars)
    base = s.base
    for b in slice_batches(s, ("seq", "ts", "account", "decision", "endpoint", "prompt")):
        claims.add(b, base)
        base += b.num_rows
    return claims.sparse()


def fold_slice(s: Slice, claims: Any, sample_size: int, sketch_key: bytes | None = None) -> Any:
    """Map step 2: one slice's accumulator, reading the whole ledger's copy table (every slice ranks its
    bounded sets under the driver's ``sketch_key``, shipped with the task)."""
    from distillguard.monitor.merge import slice_accumulator
    from distillguard.monitor.scan import accumulate

    acc = accumulate(slice_batches(s), slice_accumulator(claims, sample_size, sketch_key), workers=1)
    acc.claims = None  # the driver holds the table; do not ship it back
    return acc


def merge_pair(a: Any, b: Any) -> Any:
    """Reduce step: two adjacent slices' accumulators as one (``a`` comes first)."""
    from distillguard.monitor.merge import merge_into

    return merge_into(a, b)


class Engine(Protocol):
    name: str
    parquet_only: bool  # reads a Parquet export only (else any batch stream: ledger databases, follow)

    def accumulate(
        self, path: Path, *, sample_size: int, sketch_key: bytes | None = None, progress: Tick | None = None
    ) -> Any:
        """The :class:`FeatureAccumulator` of one pass over the Parquet export at ``path``, its bounded
        sets ranked under ``sketch_key``."""
        ...


@dataclass
class LocalEngine:
    """The feature pass in this process: derivation on ``workers`` threads, one in-order fold."""

    workers: int | None = None
    name: str = "local"
    parquet_only: bool = False

    def accumulate(
        self, path: Path, *, sample_size: int, sketch_key: bytes | None = None, progress: Tick | None = None
    ) -> Any:
        from distillguard.monitor.scan import accumulate, parquet_batches

        return accumulate(
            parquet_batches(path),
            sample_size=sample_size,
            sketch_key=sketch_key,
            workers=self.workers,
            progress=progress,
        )


@dataclass
class RayEngine:
    """The feature pass as Ray tasks. ``address``: a running cluster (``auto``, ``ray://host:10001``, or
    ``RAY_ADDRESS``); none starts a local Ray instance with ``workers`` CPUs for this job."""

    address: str | None = None
    workers: int | None = None
    slice_rows: int = SLICE_ROWS
    name: str = "ray"
    parquet_only: bool = True

    def accumulate(
        self, path: Path, *, sample_size: int, sketch_key: bytes | None = None, progress: Tick | None = None
    ) -> Any:
        from distillguard.monitor.accumulator import COPY_BITS, MIN_COPY_CHARS, FeatureAccumulator
        from distillguard.monitor.merge import CopyClaims, finish

        ray = _ray()
        slices = plan_slices(path, self.slice_rows)
        started = self._connect(ray)
        try:
            bits, min_chars = COPY_BITS, MIN_COPY_CHARS  # a single pass's copy table
            claims = CopyClaims.empty(bits, min_chars)
            read = 0  # stored rows read so far (filtered ones too): each twice (claims, then features)

            def tick(rows: int) -> None:
                nonlocal read
                read += rows
                if progress is not None:
                    progress(read)

            claim = ray.remote(claim_slice)
            pending = {claim.remote(s, bits, min_chars): s.rows for s in slices}
            while pending:  # claims merge in any order (the earliest position wins)
                ready, _ = ray.wait(list(pending), num_returns=1)
                claims.absorb(*ray.get(ready[0]))
                tick(pending.pop(ready[0]))
            table = ray.put(claims)
            fold, merge = ray.remote(fold_slice), ray.remote(merge_pair)
            level = [fold.remote(s, table, sample_size, sketch_key) for s in slices]
            folding = dict(zip(level, (s.rows for s in slices), strict=True))
            while len(level) > 1:  # adjacent pairs, so the merges keep ledger order
                nxt = [merge.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
                level = nxt + ([level[-1]] if len(level) % 2 else [])
            while folding:  # progress only; the merges already hold what they need
                ready, _ = ray.wait(list(folding), num_returns=1, fetch_local=False)
                tick(folding.pop(ready[0]))
            acc = (
                ray.get(level[0])
                if level
                else FeatureAccumulator(sample_size=sample_size, sketch_key=sketch_key)
            )
            acc.claims = claims
            return finish(acc)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join the cluster (or start a local one); whether this call started Ray."""
        import logging

        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            kwargs["address"] = address
        else:
            from distillguard.config import num_threads

            kwargs.update(num_cpus=self.workers or num_threads(), include_dashboard=False)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot reach the Ray cluster at {address or 'local'}: {exc}") from None
        return True


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("the ray engine needs Ray: pip install 'distillguard[ray]'") from None
    return ray


ENGINES: dict[str, Callable[..., Engine]] = {"local": LocalEngine, "ray": RayEngine}


def open_engine(name: str, *, address: str | None = None, **options: Any) -> Engine:
    """The engine called ``name`` (:data:`ENGINES`). ``options`` are settings (``workers``, ``slice_rows``,
    a configured ``default_address``; None: the default) that engines without them ignore; ``address``
    (a command's flag) is for engines that join a cluster, an error for the others."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    engine = ENGINES[name]()
    if address is not None:
        if not hasattr(engine, "address"):
            raise UserError(f"the {name} engine runs in this process: it takes no address")
        engine.address = address  # type: ignore[attr-defined]
    default = options.pop("default_address", None)
    if address is None and default is not None and hasattr(engine, "address"):
        engine.address = default  # type: ignore[attr-defined]
    for key, value in options.items():
        if value is not None and hasattr(engine, key):
            setattr(engine, key, value)
    return engine

"""The ledger's Parquet export: one schema for every ledger engine, the monitor's readers and synthetic
ledgers, and the writer both engines use."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distillguard.errors import UserError
from distillguard.gateway.chain import canonical_json

_ROWS_PER_TABLE = 10_000


def parquet_schema():
    """The Arrow schema of the ledgers' ``export_parquet``, one row per record: the query fields as columns,
    nested fields (``params``, ``messages``, ``watermark``) as canonical JSON text, the answers a request
    asked for when more than one (``choices``: its prompts times ``n``) and the refusals a summary record
    stands for (``repeated``), the full canonical record and its hashes. Synthetic Parquet ledgers and the
    monitor's readers use this one schema."""
    import pyarrow as pa

    s, i, f = pa.string(), pa.int64(), pa.float64()
    return pa.schema(
        [
            ("seq", i), ("ts", f), ("ts_start", f), ("ts_end", f), ("request_id", s), ("account", s),
            ("key_id", s), ("org", s), ("client_ip", s), ("endpoint", s), ("model", s), ("decision", s),
            ("tier", s), ("status", i), ("error_code", s), ("prompt_tokens", i), ("completion_tokens", i),
            ("tokens", i), ("prompt", s), ("completion", s), ("params", s), ("messages", s), ("watermark", s),
            ("choices", i), ("repeated", i), ("record", s), ("prev_hash", s), ("hash", s),
        ]
    )  # fmt: skip


def write_parquet(rows: Iterable[tuple], out_dir: Path) -> Path:
    """Write ``(seq, tokens, prev_hash, hash, canonical_json)`` rows, in order, to ``out_dir/ledger.parquet``
    in :func:`parquet_schema` (atomically: a temp file renamed into place). ``seq`` is the row's position in
    the export (a shared ledger's records keep their chain's own seq in ``record``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out_dir}: {exc}") from None
    schema = parquet_schema()
    plain = {f.name for f in schema} - {"params", "messages", "watermark", "record", "prev_hash", "hash"}
    path = out_dir / "ledger.parquet"
    tmp = out_dir / ".ledger.parquet.tmp"
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        cols: dict[str, list] = {f.name: [] for f in schema}
        for seq, tokens, prev_hash, digest, text in rows:
            rec = json.loads(text)
            for name in plain:
                cols[name].append(_cell(rec.get(name), schema.field(name).type))
            cols["seq"][-1] = seq
            cols["tokens"][-1] = tokens
            for name in ("params", "messages", "watermark"):
                v = rec.get(name)
                cols[name].append(None if v is None else canonical_json(v))
            cols["record"].append(text)
            cols["prev_hash"].append(prev_hash)
            cols["hash"].append(digest)
            if len(cols["record"]) >= _ROWS_PER_TABLE:
                writer.write_table(pa.table(cols, schema=schema))
                cols = {f.name: [] for f in schema}
        if cols["record"]:
            writer.write_table(pa.table(cols, schema=schema))
    os.replace(tmp, path)
    return path


def _cell(value: Any, kind: Any) -> Any:
    """A record value coerced to its Parquet column type (None when it does not fit)."""
    import pyarrow as pa

    if value is None:
        return None
    try:
        if kind == pa.int64():
            return None if isinstance(value, bool) else int(value)
        if kind == pa.float64():
            return float(value)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, str) else canonical_json(value)

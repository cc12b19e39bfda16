"""Put a Parquet export of a held-out run on the simulated clock.

The gateway stamps records with its wall clock, which a held-out run compresses (see
:mod:`distillguard.heldout.drive`). ``schedule.jsonl`` holds the simulated time of every request id the
generator sent; :func:`retime` writes a copy of ``ledger export``'s ``ledger.parquet`` whose ``ts`` and
``ts_start`` are those simulated times (``ts_end`` keeps the real latency), inside the ``record`` JSON too.
Records the generator did not send (none, unless other clients used the gateway) take the time of the
record before them. The copy's ``prev_hash``/``hash`` are recomputed over the new records, so it is a
consistent (unsigned) chain of its own; the gateway's ledger itself is untouched and still verifies.

The gateway's account store records sign-ups on the wall clock too. With ``population`` (the run's
``population.json``), :func:`retime` also writes ``accounts.parquet`` beside the copy, with each account's
simulated sign-up time as ``key_created``: the sign-up log a scan of the copy links accounts by. Give each
copy a directory of its own (the CLI's default is ``sim/`` beside the export): a second copy in the same
directory would replace the sign-ups, and a scan of the directory would read every copy.
"""

from __future__ import annotations

import json
from pathlib import Path

from distillguard.errors import UserError
from distillguard.gateway.ledger import GENESIS, canonical_json


def load_schedule(path: Path) -> dict[str, float]:
    """request id -> simulated UNIX time."""
    out: dict[str, float] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        for rid in (row.get("request_id"), (row.get("first_attempt") or {}).get("request_id")):
            if rid:
                out[rid] = float(row["ts"])
    return out


def retime(parquet: Path, schedule: Path, out: Path, population: Path | None = None) -> dict[str, int]:
    """Write ``out``: ``parquet`` with simulated timestamps (and, with ``population``, ``accounts.parquet``
    beside it with the simulated sign-ups). Returns how many rows matched the schedule."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    sim = load_schedule(schedule)
    try:
        table = pq.read_table(parquet)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UserError(f"cannot read {parquet}: {exc}") from None
    cols = table.to_pydict()
    n = table.num_rows
    records = [json.loads(text) for text in cols["record"]]
    times: list[float | None] = [sim.get(rec.get("request_id") or "") for rec in records]
    matched = sum(t is not None for t in times)
    fill = next((t for t in times if t is not None), None)
    for i, t in enumerate(times):  # unknown rows: the time of the row before (or after, at the start)
        fill = t if t is not None else fill
        times[i] = fill
    prev = GENESIS
    for i, rec in enumerate(records):
        t = times[i] if times[i] is not None else float(rec["ts"])
        start, end = rec.get("ts_start", rec["ts"]), rec.get("ts_end")
        rec["ts"] = rec["ts_start"] = t
        if isinstance(end, int | float) and isinstance(start, int | float):
            rec["ts_end"] = t + max(0.0, float(end) - float(start))
        cols["ts"][i], cols["ts_start"][i], cols["ts_end"][i] = t, t, rec.get("ts_end")
        text = canonical_json(rec)
        digest = hashlib.sha256((prev + text).encode("utf-8")).hexdigest()
        cols["record"][i], cols["prev_hash"][i], cols["hash"][i] = text, prev, digest
        prev = digest
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=table.schema), out, compression="zstd")
    result = {"rows": n, "matched": matched}
    if population is not None:
        result["accounts"] = write_signups(population, out.parent / "accounts.parquet")
    return result


def write_signups(population: Path, out: Path) -> int:
    """``accounts.parquet`` (account, key_created) from a run's ``population.json``; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        accounts = json.loads(Path(population).read_text(encoding="utf-8"))["accounts"]
        names = [str(a["name"]) for a in accounts]
        created = [float(a["signup_ts"]) for a in accounts]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read sign-ups from {population}: {exc}") from None
    table = pa.table({"account": names, "key_created": created})
    pq.write_table(table, out)
    return len(names)

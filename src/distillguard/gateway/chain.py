"""The ledger's hash chain and signatures, as pure functions: what every ledger engine stores and checks.

A record is stored as canonical JSON (sorted keys, no whitespace); its ``hash`` is
``sha256(prev_hash + canonical_json)`` from a fixed genesis (64 zeros), and the JSON includes ``seq`` (and, in
a chain of a shared ledger, ``replica``), so a record moved to another position or chain no longer matches.
A per-record MAC over ``seq`` and ``hash`` and a MAC'd head (record count and last hash) are made with a key
derived from the server secret (:class:`Signer`). The engines (:mod:`ledger`: SQLite, one chain;
:mod:`ledger_pg`: PostgreSQL, one chain per replica) only store rows and page through them: verify is
:func:`walk_chain` over :func:`pages` of :data:`ROW_SELECT` rows, then :func:`check_head` for each signed
head; the threat model is in :mod:`distillguard.gateway.ledger`.

Chains of a shared ledger sign ``record:<replica>:<seq>:<hash>`` and ``head:<replica>:<count>:<hash>``, so a
signature of one chain is never valid in another; the single chain of an embedded ledger signs without the
replica part (the format of ledgers written before there were several chains).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64
# the columns stored beside each record, for filtering without parsing it (checked against it by verify)
COLUMNS = ("ts", "account", "key_id", "client_ip", "decision", "tier", "tokens")
# what verify reads of each stored record, in the order :func:`walk_chain` takes its rows
ROW_SELECT = "seq, " + ", ".join(COLUMNS) + ", prev_hash, hash, mac, record"


@dataclass(frozen=True)
class LedgerEntry:
    """Where an appended record landed: its sequence number and chain hash."""

    seq: int
    hash: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of a ledger's ``verify``. ``first_bad_seq`` is ``None`` when intact or when the damage is not
    in a record (for example a missing or invalid head). ``signed`` says whether signatures were checked.
    ``chain`` names the replica's chain in a shared ledger (None: the embedded ledger's single chain)."""

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str | None
    head_hash: str | None = None
    signed: bool = False
    chain: str | None = None


def overall(reports: Sequence[VerifyReport], signed: bool | None = None) -> VerifyReport:
    """One report for a ledger of several chains: the first bad chain's report (its reason names the chain),
    else intact with every chain's records counted. ``signed`` (default: every chain's) for no chains."""
    for r in reports:
        if not r.ok:
            return r
    signed = bool(reports) and all(r.signed for r in reports) if signed is None else signed
    return VerifyReport(True, sum(r.records for r in reports), None, None, None, signed)


def chains_json(reports: Sequence[VerifyReport], signed: bool | None = None) -> dict[str, Any]:
    """A verification as JSON: the overall report's fields (:func:`overall`) and ``chains``, every chain's
    status (``chain``: its replica, None for an embedded ledger's single chain; ``ok``, ``records``,
    ``first_bad_seq``, ``reason``, ``head_hash``, ``signed``)."""
    fields = ("ok", "records", "first_bad_seq", "reason", "head_hash", "signed")
    out: dict[str, Any] = {f: getattr(overall(reports, signed), f) for f in fields}
    if len(reports) == 1:
        out["head_hash"] = reports[0].head_hash
    out["chains"] = [{"chain": r.chain, **{f: getattr(r, f) for f in fields}} for r in reports]
    return out


def canonical_json(record: Any) -> str:
    """The one byte-exact serialization that is hashed and stored."""
    try:
        return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ledger record is not plain JSON: {exc}") from None


def sha256_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def chain_hash(prev: str, text: str) -> str:
    """A record's chain hash: ``sha256(prev_hash + canonical_json)`` in hex (``GENESIS`` before the first)."""
    return hashlib.sha256((prev + text).encode("utf-8")).hexdigest()


class Signer:
    """The ledger's MACs, keyed from the server secret (``None``: unsigned, every MAC is ``""``)."""

    def __init__(self, secret: bytes | None, chain: str | None = None) -> None:
        self._key = (
            hmac.new(bytes(secret), b"distillguard ledger v1", hashlib.sha256).digest() if secret else None
        )
        self._scope = "" if chain is None else f"{chain}:"

    @property
    def signed(self) -> bool:
        return self._key is not None

    def _mac(self, message: str) -> str:
        if self._key is None:
            return ""
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def record_mac(self, seq: int, digest: str) -> str:
        return self._mac(f"record:{self._scope}{seq}:{digest}")

    def head_mac(self, count: int, digest: str) -> str:
        return self._mac(f"head:{self._scope}{count}:{digest}")

    def valid(self, mac: Any, expected: str) -> bool:
        """Whether a stored MAC matches (always true unsigned: there is nothing to check)."""
        return not self.signed or hmac.compare_digest(str(mac or ""), expected)


def redact(record: dict[str, Any]) -> None:
    """Replace prompt text (and the end-user id and stop sequences in ``params``) by ``sha256:<hex>`` in
    place (see the ledger's redaction notes)."""
    if isinstance(record.get("prompt"), str):
        record["prompt"] = sha256_text(record["prompt"])
    messages = record.get("messages")
    if isinstance(messages, list):
        out = []
        for m in messages:
            if isinstance(m, dict):
                m = dict(m)
                for name in ("content", "name", "tool_calls", "tool_call_id", "function_call"):
                    c = m.get(name)
                    if isinstance(c, str):
                        m[name] = sha256_text(c)
                    elif c is not None:
                        m[name] = sha256_text(canonical_json({name: c}))
            elif isinstance(m, str):
                m = sha256_text(m)
            out.append(m)
        record["messages"] = out
    if record.get("tools") is not None:
        record["tools"] = sha256_text(canonical_json(record["tools"]))
    params = record.get("params")
    if isinstance(params, dict):  # the client's own words there too: an end-user id, stop sequences
        params = dict(params)
        for name in ("user", "stop"):
            if params.get(name) is not None:
                params[name] = sha256_text(canonical_json(params[name]))
        record["params"] = params
    record["prompt_redacted"] = True


def prepare(record: dict[str, Any], redact_prompts: bool, now: float | None = None) -> dict[str, Any]:
    """A checked copy of ``record`` ready to be numbered: a ``decision``, a finite ``ts`` (default now),
    prompts redacted when asked. The caller's dict is not modified."""
    if not isinstance(record, dict):
        raise ValueError("a ledger record is a dict")
    rec = dict(record)
    rec.pop("seq", None)
    decision = rec.get("decision")
    if not isinstance(decision, str) or not decision:
        raise ValueError("a ledger record needs a `decision` (e.g. 'admitted' or 'refused')")
    ts = rec.get("ts")
    if ts is None:
        rec["ts"] = time.time() if now is None else now
    elif isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise ValueError(f"ledger `ts` must be a UNIX timestamp (got {ts!r})")
    if redact_prompts:
        redact(rec)
    return rec


def columns(record: dict[str, Any]) -> tuple:
    """The values of :data:`COLUMNS` for a record."""
    pt, ct = record.get("prompt_tokens"), record.get("completion_tokens")
    tokens = None if pt is None and ct is None else int(pt or 0) + int(ct or 0)
    return (
        float(record["ts"]),
        record.get("account"),
        record.get("key_id"),
        record.get("client_ip"),
        record["decision"],
        record.get("tier"),
        tokens,
    )


def link(prev: str, seq: int, record: dict[str, Any], signer: Signer) -> tuple[str, str, str]:
    """Number ``record`` as ``seq`` after ``prev``: ``(canonical_json, hash, mac)``.
    Sets ``record["seq"]``."""
    record["seq"] = seq
    text = canonical_json(record)
    digest = chain_hash(prev, text)
    return text, digest, signer.record_mac(seq, digest)


def check_record(
    expected: int,
    prev: str,
    seq: int,
    stored_cols: tuple,
    prev_hash: str,
    digest: str,
    mac: str,
    text: str,
    signer: Signer,
    chain: str | None = None,
) -> tuple[int, str] | None:
    """``(bad seq, reason)`` for a stored record that is not the ``expected``-th link after ``prev``, or
    ``None`` when it is. ``chain``: the replica whose chain this is (the record must name it)."""
    if seq != expected:
        return expected, f"missing seq {expected}"
    try:
        rec = json.loads(text)
        rec_seq = rec.get("seq")
    except (TypeError, ValueError, AttributeError):
        return seq, "record is not a JSON object"
    if rec_seq != seq:
        return seq, f"out of order (the record stored here is seq {rec_seq})"
    if chain is not None and rec.get("replica") != chain:
        return seq, f"record belongs to chain {rec.get('replica')!r}"
    if prev_hash != prev:
        return seq, "prev_hash does not match the previous record's hash"
    if chain_hash(prev, text) != digest:
        return seq, "hash mismatch (record or hash edited)"
    try:
        cols = columns(rec)
    except (KeyError, TypeError, ValueError):
        return seq, "record lacks ts or decision"
    for name, want, got in zip(COLUMNS, cols, stored_cols, strict=True):
        if want != got:
            return seq, f"column {name} does not match the record"
    if not signer.valid(mac, signer.record_mac(seq, digest)):
        return seq, "signature mismatch (record rewritten, or a different server secret)"
    return None


@dataclass(frozen=True)
class ChainWalk:
    """What :func:`walk_chain` found: ``records`` good links from seq 1, ``prev`` the last good hash,
    ``hashes`` the hash at each seq it was asked to keep (0: genesis), the first bad record if any."""

    records: int
    prev: str
    hashes: dict[int, str] = field(default_factory=dict)
    bad_seq: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def pages(fetch: Callable[[int], Sequence[tuple]]) -> Iterator[tuple]:
    """Every row of a chain, a page at a time: ``fetch(last)`` returns the next rows after seq ``last``
    (the first column), in seq order, and an empty page at the end."""
    last = 0
    while rows := fetch(last):
        yield from rows
        last = rows[-1][0]


def walk_chain(
    rows: Iterable[tuple], signer: Signer, chain: str | None = None, keep: Collection[Any] = ()
) -> ChainWalk:
    """Check stored rows (:data:`ROW_SELECT`, in seq order) as one chain from genesis, stopping at the first
    bad record. ``keep``: seqs whose hash the caller will compare with a head. Reads nothing itself."""
    prev, expected = GENESIS, 1
    hashes = {0: GENESIS}
    for row in rows:
        seq, digest = row[0], row[9]
        problem = check_record(
            expected, prev, seq, row[1:8], row[8], digest, row[10], row[11], signer, chain=chain
        )
        if problem is not None:
            return ChainWalk(expected - 1, prev, hashes, *problem)
        prev = digest
        expected += 1
        if seq in keep:
            hashes[seq] = digest
    return ChainWalk(expected - 1, prev, hashes)


def check_head(
    walk: ChainWalk, label: str, count: Any, digest: Any, mac: Any, signer: Signer, *, covers_all: bool = True
) -> tuple[int | None, str] | None:
    """``(bad seq or None, reason)`` when a signed head (``label`` names it in the reason) does not pin the
    intact chain ``walk``; ``covers_all``: the head must name every record (the head kept with the rows,
    not a copy that may lag)."""
    if not signer.valid(mac, signer.head_mac(count, str(digest))):
        return None, f"{label} signature is invalid (forged, or a different server secret)"
    n = walk.records
    if count > n:
        return n + 1, f"tail truncated after seq {n} ({label} says {count} records)"
    if covers_all and count < n:
        return count + 1, f"seq {count + 1} is not covered by the signed head"
    if walk.hashes.get(count) != digest:
        return count, f"hash does not match the {label}"
    return None

"""Traffic features per account (and per linked cluster) over the query ledger.

Why the design looks like this:

- **One code path for every source.** The SQLite ledger (``Ledger.iter_records``), a Parquet export and
  the incremental ``monitor follow`` loop all feed Arrow record batches to :class:`FeatureAccumulator`.
  Per-query work is vectorised (Arrow regex kernels, numpy group-bys, a numpy 64-bit string hash), so the
  same code scales from a unit test to a 50M-row export.
- **Bounded memory.** Per account the accumulator keeps counters, a HyperLogLog sketch of distinct prompts,
  a bounded set of IP prefixes and a uniform bottom-K sample of its queries (priority = a hash of the
  ledger ``seq``, so the sample is deterministic and mergeable). Memory grows with the number of accounts,
  never with the number of rows. Text geometry (embeddings, templates, PRADA, MMD) runs on the sample.
- **Features are oriented**: larger means "more like distillation". Each one is documented in
  :data:`FEATURES` with why it separates attackers from the benign hard negatives (an evaluation harness,
  a batch summariser, a support bot, a step-by-step researcher).

Nothing here reads files or talks to the network; :mod:`distillguard.monitor.scan` does the I/O.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.splitmix import mix64_np
from distillguard.text.patterns import COT_PATTERN, IDENTITY_PATTERN, is_cot, is_identity  # noqa: F401 (re-exported)
from distillguard.text.vectors import cosine_distances, iter_farthest_first, text_features

# --------------------------------------------------------------------------------------------------
# Feature catalogue


@dataclass(frozen=True)
class FeatureSpec:
    """One per-entity feature: its name, the unit of its robust scale, and why it is evidence."""

    name: str
    unit: float  # the smallest difference that matters (floor of the robust scale in detectors)
    why: str


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "log_queries",
        0.15,
        "log10 of the number of queries. Distillation needs volume; alone it is weak (batch customers "
        "are bigger), so it only counts together with what the volume is spent on.",
    ),
    FeatureSpec(
        "log_rate",
        0.15,
        "log10 of queries per active hour. Scripts and parallel workers ask far faster than a person "
        "reading answers; a batch job is fast too, but on narrow content.",
    ),
    FeatureSpec(
        "duty_cycle",
        0.05,
        "Share of 10-minute bins with traffic between the first and the last query: campaigns run around "
        "the clock, people and nightly jobs do not.",
    ),
    FeatureSpec(
        "regularity",
        0.1,
        "Minus the standard deviation of log inter-arrival times: machine pacing is regular, human think "
        "time is heavy-tailed.",
    ),
    FeatureSpec(
        "novelty",
        0.05,
        "Distinct prompts / queries (HyperLogLog). A distiller never asks twice; an evaluation harness "
        "replays one fixed benchmark every run.",
    ),
    FeatureSpec(
        "coverage",
        0.25,
        "log2 of the number of k-center topics (farthest-first traversal until every sampled prompt is "
        "within cosine distance 0.75 of a centre): the breadth of the teacher's skills being harvested. "
        "Support bots and batch jobs are narrow; one harness run is bounded by its benchmark size.",
    ),
    FeatureSpec(
        "diversity",
        0.02,
        "Mean pairwise cosine distance of the sampled prompts (hashed bag-of-words).",
    ),
    FeatureSpec(
        "paraphrase_rate",
        0.05,
        "Share of prompts that are not repeats yet nearly the same as an earlier one (cosine >= 0.7): a "
        "few intents pushed through many surface forms to diversify training data.",
    ),
    FeatureSpec(
        "template_rate",
        0.05,
        "Share of prompts mostly made of word 4-grams that recur across the account's other prompts: "
        "machine-generated prompt frames. Support bots are templated too, which is why it is one "
        "dimension among many, not a rule.",
    ),
    FeatureSpec(
        "cot_rate",
        0.05,
        "Share of prompts eliciting step-by-step reasoning (reasoning-trace harvesting). Researchers do "
        "this too, at human pace and volume.",
    ),
    FeatureSpec(
        "identity_rate",
        0.05,
        "Share of identity questions ('who made you?'): distillers probe the identity they will copy.",
    ),
    FeatureSpec(
        "logprobs_rate",
        0.05,
        "Share of requests asking for logprobs / top_logprobs: grey-box extraction targets.",
    ),
    FeatureSpec(
        "logprob_gen_rate",
        0.05,
        "Share of requests asking for logprobs over a generation (no explicit max_tokens below 8): the "
        "teacher's distribution at every position of an answer, a white-box distiller's training target. "
        "Scoring a multiple-choice item reads one or a few tokens.",
    ),
    FeatureSpec(
        "bias_probe_rate",
        0.05,
        "Share of requests that set logit_bias *and* read logprobs: the logit-extraction probe (Carlini et "
        "al. 2024) reads how a bias moves the reported logprobs. A bias alone (banning tokens, forcing a "
        "label) reads nothing.",
    ),
    FeatureSpec(
        "logit_bias_rate",
        0.05,
        "Share of requests with logit_bias: sweeps of +100 biases recover the output projection "
        "(Carlini et al. 2024). Almost no benign client sets it.",
    ),
    FeatureSpec(
        "ip_churn",
        0.05,
        "Distinct /24 (IPv6 /48) prefixes per query: rotating residential proxies give nearly one prefix "
        "per request; customers run from a few fixed addresses.",
    ),
    FeatureSpec(
        "mmd",
        0.5,
        "Benign-calibrated MMD of the account's prompt embeddings against benign reference windows, in "
        "units of the benign null's spread (Liu, Guo, Dong 2026 recipe).",
    ),
    FeatureSpec(
        "prada",
        0.02,
        "Minus the Shapiro-Wilk W of each prompt's minimum distance to earlier ones (Juuti et al. 2019): "
        "synthetic query streams make that distribution far from normal.",
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
# Measured but deliberately not scored: the share of prompts first sent by another account. Customers share
# common prompts (a product FAQ, popular questions), and who happened to ask first decides who looks like
# the copier, so it flagged benign support products in testing. It stays in the counters and evidence.
RATE_FEATURES = frozenset(
    {
        "paraphrase_rate",
        "template_rate",
        "cot_rate",
        "identity_rate",
        "logprobs_rate",
        "logprob_gen_rate",
        "bias_probe_rate",
        "logit_bias_rate",
        "ip_churn",
    }
)

# A rate over n queries is shrunk as k / (n + PSEUDO): a few odd queries of a small account are not evidence.
PSEUDO_QUERIES = 20.0
BIN_SECONDS = 600.0
COVER_RADIUS = 0.75
PARAPHRASE_COSINE = 0.7
SHINGLE = 4

# --------------------------------------------------------------------------------------------------
# Text patterns (RE2-compatible: the same strings run in Arrow kernels and in Python's re; COT_PATTERN and
# IDENTITY_PATTERN live in text/patterns.py, where the countermeasures read them without numpy)

# The last user message of a rendered chat ("system: ...\nuser: ...") follows the last "\nuser: ".
_USER_SEP = "\nuser: "
# Elicitation wrappers, system prompts and identity questions sit at the ends of a prompt: pattern
# matching reads this many characters at each end (a summarised document in the middle costs nothing).
_END_CHARS = 400
_LOGPROBS_RE = r'"(?:logprobs":(?:true|[1-9])|top_logprobs":[1-9])'
_LOGIT_BIAS_RE = r'"logit_bias":\{"'
# an explicit generation bound below 8 tokens: logprobs read for a choice, not over an answer
_SHORT_GEN_RE = r'"max_(?:completion_)?tokens":[1-7][,}]'

_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers him his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours out over own same she should so some such than
that the their theirs them then there these they this those through to too under until up very was
we were what when where which while who whom why will with would you your yours yourself please
can't don't i'm it's what's also get like using use
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_TOKEN_RE = re.compile(r"[a-z0-9_]+(?:'[a-z]+)?|[^\sa-z0-9_]")


def user_text(prompt: str) -> str:
    """The last user turn of a prompt as the gateway renders chats (``role: content`` lines)."""
    return prompt.rsplit(_USER_SEP, 1)[-1]


def tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens with digits folded to ``0`` (order ids, sizes, years
    look alike), the unit of template shingles."""
    return _TOKEN_RE.findall(re.sub(r"\d+", "0", text.lower()))


# --------------------------------------------------------------------------------------------------
# Hashing


_M64 = (1 << 64) - 1
_P = 0x100000001B3
_POW = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> np.ndarray:
    """``P**i mod 2**64`` for i < n (cached, grown by doubling)."""
    global _POW
    if len(_POW) < n:
        m = max(n, 2 * len(_POW))
        out = np.empty(m, dtype=np.uint64)
        out[0] = 1
        k, pk = 1, np.uint64(_P)
        with np.errstate(over="ignore"):
            while k < m:
                e = min(2 * k, m)
                out[k:e] = out[0 : e - k] * pk
                pk = pk * pk
                k = e
        _POW = out
    return _POW


def hash_strings(arr: pa.Array | Sequence[str]) -> np.ndarray:
    """Stable 64-bit hashes of strings (a polynomial hash of the UTF-8 bytes mod 2**64, then splitmix64),
    vectorised over Arrow's buffers: the same text hashes the same in every process and batch, which
    distinct counts, cross-account copy detection and persisted follow state rely on. Nulls hash as ""."""
    if not isinstance(arr, pa.Array):
        arr = pa.array(list(arr), type=pa.large_string())
    arr = pc.fill_null(arr.cast(pa.large_string()), "")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    start, end = (int(off[0]), int(off[-1])) if n else (0, 0)
    lens = np.diff(off)
    acc = np.zeros(n, dtype=np.uint64)
    m = end - start
    if m:
        data = np.frombuffer(bufs[2], dtype=np.uint8)[start:end]
        expo = np.repeat(off[1:] - start, lens) - np.arange(1, m + 1)
        pw = _powers(int(lens.max()))
        with np.errstate(over="ignore"):
            terms = (data.astype(np.uint64) + np.uint64(1)) * pw[expo]
        nz = lens > 0
        acc[nz] = np.add.reduceat(terms, (off[:-1] - start)[nz])
    with np.errstate(over="ignore"):
        h = acc ^ (lens.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(0x2545F4914F6CDD1D)
    return mix64_np(h)


def fingerprint(arr: pa.Array, ends: int = 96) -> np.ndarray:
    """Stable 64-bit fingerprints of texts: :func:`hash_strings` of the first and last ``ends`` characters
    and the full length. Two long texts that agree at both ends and in length collide (a template with a
    different middle); in exchange the cost per row is bounded, which the 50M-row batch path needs."""
    arr = pc.fill_null(arr.cast(pa.large_string()), "")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    lens = pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.uint64)
    long = np.nonzero(lens > 2 * ends)[0]
    if not len(long):
        h = hash_strings(arr)
    else:
        short = np.nonzero(lens <= 2 * ends)[0]
        h = np.empty(len(arr), dtype=np.uint64)
        h[short] = hash_strings(arr.take(pa.array(short)))
        lg = arr.take(pa.array(long))
        sep = pa.scalar("\x00", pa.large_string())
        joined = pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(lg, 0, ends), pc.utf8_slice_codeunits(lg, -ends), sep
        )
        h[long] = hash_strings(joined)
    with np.errstate(over="ignore"):
        return mix64_np(h ^ (lens * np.uint64(0xD6E8FEB86659FD93)))


def hash_ints(values: np.ndarray, salt: int = 0) -> np.ndarray:
    """Stable 64-bit hashes of integers (salted splitmix64)."""
    with np.errstate(over="ignore"):
        v = np.asarray(values).astype(np.int64).view(np.uint64) + np.uint64(salt & _M64)
    return mix64_np(v)


def stable_hash(text: str) -> int:
    """A stable 63-bit hash of one string (CRC-32 of two halves; enough for set identity within a scan)."""
    data = text.encode("utf-8")
    return (zlib.crc32(data) << 31) ^ zlib.crc32(data[::-1] + b"\x01")


# --------------------------------------------------------------------------------------------------
# Embeddings


_BUCKETS: dict[tuple[str, int], tuple[int, float] | None] = {}


def _bucket(word: str, dim: int) -> tuple[int, float] | None:
    """A word's hashed column and sign (``None`` for stopwords and single characters), memoised: a scan
    embeds millions of prompts over a vocabulary of thousands."""
    key = (word, dim)
    hit = _BUCKETS.get(key, False)
    if hit is not False:
        return hit
    if word in STOPWORDS or len(word) <= 1:
        out = None
    else:
        h = zlib.crc32(word.encode("utf-8"))
        out = (h % dim, 1.0 if (h >> 16) & 1 else -1.0)
    if len(_BUCKETS) >= 1_000_000:
        _BUCKETS.clear()
    _BUCKETS[key] = out
    return out


def hash_vectors(texts: Sequence[str], dim: int = 512) -> np.ndarray:
    """Fixed hashed bag-of-words vectors ``[n, dim]`` (float32, L2-normalised; empty texts stay zero).

    The same tokenisation as the distillation strategies (:func:`text_features`: words plus the parts of
    dotted API names), stopwords dropped, sublinear term frequency, CRC-32 bucket and sign. Unlike
    ``text.vectors.embed`` there is no IDF fitted on the batch: an account's vectors must not depend on which
    other prompts are embedded with them, or MMD windows would not be comparable across scans.
    """
    out = np.zeros((len(texts), dim), dtype=np.float32)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for row, text in enumerate(texts):
        counts = Counter(text_features(text))
        for word, c in counts.items():
            b = _bucket(word, dim)
            if b is not None:
                rows.append(row)
                cols.append(b[0])
                vals.append((1.0 + math.log(c)) * b[1])
    if rows:
        np.add.at(out, (np.array(rows), np.array(cols)), np.array(vals, dtype=np.float32))
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


# --------------------------------------------------------------------------------------------------
# From ledger rows to vectorised query batches

COLUMNS = (
    "seq",
    "ts",
    "account",
    "key_id",
    "org",
    "client_ip",
    "decision",
    "prompt",
    "params",
    "prompt_tokens",
    "completion_tokens",
)
_LARGE = ("prompt", "params")  # texts as large_string, the layout derive reads (64-bit offsets)


def records_schema() -> pa.Schema:
    """The :data:`COLUMNS` of the ledger's Parquet schema (``gateway.ledger.parquet_schema``), with the
    texts as ``large_string``: what :func:`records_to_table` builds."""
    from distillguard.gateway.ledger import parquet_schema

    full = parquet_schema()
    return pa.schema([pa.field(n, pa.large_string()) if n in _LARGE else full.field(n) for n in COLUMNS])


def records_to_table(records: Iterable[dict[str, Any]]) -> pa.Table:
    """Ledger records (dicts, as ``Ledger.iter_records`` yields them) as an Arrow table with the columns
    of a Parquet export (``params`` as canonical JSON), so both sources share :func:`derive`."""
    from distillguard.gateway.ledger import canonical_json

    cols: dict[str, list] = {name: [] for name in COLUMNS}
    for r in records:
        cols["seq"].append(r.get("seq"))
        cols["ts"].append(r.get("ts"))
        for name in ("account", "key_id", "org", "client_ip", "decision"):
            v = r.get(name)
            cols[name].append(v if isinstance(v, str) else None)
        prompt = r.get("prompt")
        if not isinstance(prompt, str):
            msgs = r.get("messages")
            prompt = _render(msgs) if isinstance(msgs, list) else None
        cols["prompt"].append(prompt)
        params = r.get("params")
        cols["params"].append(canonical_json(params) if isinstance(params, dict) else None)
        for name in ("prompt_tokens", "completion_tokens"):
            v = r.get(name)
            cols[name].append(v if isinstance(v, int) and not isinstance(v, bool) else None)
    return pa.table(cols, schema=records_schema())


def _render(messages: list) -> str:
    """The prompt of a record that kept only ``messages``: the gateway's own rendering
    (:func:`distillguard.gateway.request_model.render_chat`) of its messages with text content."""
    from distillguard.gateway.request_model import render_chat

    parts = [m for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return render_chat([{**m, "role": m.get("role")} for m in parts], None)


@dataclass
class QueryBatch:
    """Per-query columns of one batch, ready for group-bys (rows without an account are dropped)."""

    accounts: list[str]  # the batch's distinct accounts; ``acct`` indexes into it
    acct: np.ndarray  # int32
    seq: np.ndarray  # int64
    ts: np.ndarray  # float64
    text: pa.Array  # the user's part of the prompt (large_string)
    text_hash: np.ndarray  # uint64
    text_len: np.ndarray  # int64, bytes
    cot: np.ndarray  # bool
    identity: np.ndarray
    logprobs: np.ndarray
    logit_bias: np.ndarray
    logprob_gen: np.ndarray
    bias_probe: np.ndarray
    admitted: np.ndarray
    ips: list[str | None]  # distinct client IPs; ``ip`` indexes into it
    ip: np.ndarray  # int32
    keys: list[str | None]
    key: np.ndarray  # int32
    orgs: list[str | None]  # declared organisations; ``org`` indexes into it
    org: np.ndarray  # int32
    prompt_tokens: np.ndarray  # int64 (0 when unknown)
    completion_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.seq)


def _column(table: pa.Table, name: str, kind: pa.DataType) -> pa.Array:
    if name in table.column_names:
        col = table.column(name).combine_chunks()
        if col.type != kind:
            col = col.cast(kind)
        return col
    return pa.nulls(table.num_rows, type=kind)


def _last_user_turn(prompt: pa.Array) -> pa.Array:
    """The text after the last ``"\\nuser: "`` (rendered multi-message chats), else the prompt itself."""
    has = pc.match_substring(prompt, _USER_SEP)
    if not pc.any(has).as_py():
        return prompt
    parts = pc.split_pattern(prompt.filter(has), pattern=_USER_SEP, reverse=True, max_splits=1)
    if isinstance(parts, pa.ChunkedArray):
        parts = parts.combine_chunks()
    last = pc.list_flatten(parts).take(pa.array(parts.offsets.to_numpy(zero_copy_only=False)[1:] - 1))
    return pc.replace_with_mask(prompt, has, last)


def _encode(arr: pa.Array) -> tuple[np.ndarray, list]:
    enc = pc.dictionary_encode(arr, null_encoding="encode")
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int32), enc.dictionary.to_pylist()


def counted_rows(table: pa.Table | pa.RecordBatch) -> tuple[pa.Table, np.ndarray]:
    """The rows that count as queries, and their positions in ``table``: a row needs an account, and a
    gateway stream's "stream_started" record (which precedes the request's own record) is dropped, so the
    request counts once."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [c for c in ("seq", "ts", "account", "prompt") if c not in table.column_names]
    if missing:
        raise ValueError(f"ledger rows lack column(s) {', '.join(missing)}")
    account = _column(table, "account", pa.string())
    started = pc.fill_null(pc.equal(_column(table, "decision", pa.string()), "stream_started"), False)
    keep = pc.and_(pc.is_valid(account), pc.invert(started))
    if pc.all(keep).as_py():
        return table, np.arange(table.num_rows)
    return table.filter(keep), np.nonzero(keep.to_numpy(zero_copy_only=False))[0]


def prompt_keys(table: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the copy table needs of each counted row, without the rest of :func:`derive`: (row positions
    in ``table``, account-name hashes, text hashes, text lengths in bytes)."""
    table, rows = counted_rows(table)
    text = _last_user_turn(pc.fill_null(_column(table, "prompt", pa.large_string()), ""))
    lens = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    return rows, hash_strings(_column(table, "account", pa.string())), fingerprint(text), lens


def derive(table: pa.Table | pa.RecordBatch) -> QueryBatch:
    """Vectorised per-query columns (flags, hashes, group indices) of a ledger table or record batch.

    Needs ``seq``, ``ts``, ``account`` and ``prompt``; ``params`` (canonical JSON), ``client_ip``,
    ``key_id``, ``decision`` and token counts are used when present.
    """
    table, _ = counted_rows(table)
    account = _column(table, "account", pa.string())
    prompt = pc.fill_null(_column(table, "prompt", pa.large_string()), "")
    text = _last_user_turn(prompt)
    params = pc.fill_null(_column(table, "params", pa.large_string()), "")
    acct, accounts = _encode(account)
    ip, ips = _encode(_column(table, "client_ip", pa.string()))
    key, keys = _encode(_column(table, "key_id", pa.string()))
    org, orgs = _encode(_column(table, "org", pa.string()))
    decision = _column(table, "decision", pa.string())

    def flag(arr: pa.Array, pattern: str, ignore_case: bool = False) -> np.ndarray:
        return pc.match_substring_regex(arr, pattern, ignore_case=ignore_case).to_numpy(zero_copy_only=False)

    def ends_flag(arr: pa.Array, pattern: str) -> np.ndarray:
        head = flag(pc.utf8_slice_codeunits(arr, 0, _END_CHARS), pattern, True)
        long = pc.greater(pc.binary_length(arr), _END_CHARS).to_numpy(zero_copy_only=False)
        if long.any():
            idx = np.nonzero(long)[0]
            tail = pc.utf8_slice_codeunits(arr.take(pa.array(idx)), -_END_CHARS)
            head[idx] |= flag(tail, pattern, True)
        return head

    def ints(name: str) -> np.ndarray:
        col = pc.fill_null(_column(table, name, pa.int64()), 0)
        return col.to_numpy(zero_copy_only=False).astype(np.int64)

    seq = pc.fill_null(_column(table, "seq", pa.int64()), 0).to_numpy(zero_copy_only=False)
    ts = pc.fill_null(_column(table, "ts", pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    lens = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    admitted = pc.fill_null(pc.equal(decision, "admitted"), True).to_numpy(zero_copy_only=False)
    logprobs = flag(params, _LOGPROBS_RE)
    logit_bias = flag(params, _LOGIT_BIAS_RE)
    return QueryBatch(
        accounts=accounts,
        acct=acct,
        seq=seq.astype(np.int64),
        ts=ts.astype(np.float64),
        text=text,
        text_hash=fingerprint(text),
        text_len=lens,
        # reasoning elicitation may sit in the system prompt ("always show your full reasoning"): whole prompt
        cot=ends_flag(prompt, COT_PATTERN),
        identity=ends_flag(text, IDENTITY_PATTERN),
        logprobs=logprobs,
        logit_bias=logit_bias,
        logprob_gen=logprobs & ~flag(params, _SHORT_GEN_RE),
        bias_probe=logprobs & logit_bias,
        admitted=admitted.astype(bool),
        ips=ips,
        ip=ip,
        keys=keys,
        key=key,
        orgs=orgs,
        org=org,
        prompt_tokens=ints("prompt_tokens"),
        completion_tokens=ints("completion_tokens"),
    )


def ip_prefix(ip: str | None) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of an address: what one operator, NAT or proxy pool shares."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


# --------------------------------------------------------------------------------------------------
# The accumulator


_COUNTERS = (
    "n",
    "admitted",
    "cot",
    "identity",
    "logprobs",
    "logit_bias",
    "logprob_gen",
    "bias_probe",
    "copied",
    "copy_eligible",
    "prompt_tokens",
    "completion_tokens",
    "gaps",
    "active_bins",
)
_HLL_P = 10
_HLL_M = 1 << _HLL_P
_HOUR_HASHES = 32
_MAX_PREFIXES = 256
_MAX_KEYS = 64
COPY_BITS = 22  # the copy table's slots: 2**22
MIN_COPY_CHARS = 24  # shorter prompts ("hi", "thanks") are never counted as copied
OTHER = "(other)"  # the prefix counter's bucket for the networks it does not keep


@dataclass
class Sample:
    """A uniform sample of an entity's queries, in ledger order."""

    seq: np.ndarray
    ts: np.ndarray
    text: list[str]
    text_hash: np.ndarray
    cot: np.ndarray
    identity: np.ndarray
    logprobs: np.ndarray
    logit_bias: np.ndarray
    logprob_gen: np.ndarray
    bias_probe: np.ndarray
    copied: np.ndarray

    def __len__(self) -> int:
        return len(self.seq)


@dataclass
class Profile:
    """Everything the accumulator knows about one entity (an account or a pooled cluster of accounts)."""

    accounts: tuple[str, ...]
    counts: dict[str, float]
    first_ts: float
    last_ts: float
    first_seq: int
    last_seq: int
    log_gap_sum: float
    log_gap_sq: float
    span_bins: float
    distinct: float
    prefixes: Counter
    keys: set[str]
    orgs: set[str]  # declared organisations of the accounts (the account store's ``org``)
    sample: Sample
    hour_signature: np.ndarray  # MinHash of active hours, for linking
    # networks each member used beyond its first, summed: churn is within accounts (members of a pooled
    # cluster each on a home network of their own are not one account hopping between networks)
    extra_prefixes: int

    @property
    def n(self) -> int:
        return int(self.counts["n"])


class FeatureAccumulator:
    """Streaming per-account state over ledger batches (see the module docstring).

    ``update`` must see rows in ledger order (increasing ``seq``); gaps and active-time bins assume it.
    State size: a few hundred bytes of counters, ``2**10`` HLL registers, at most ``sample_size`` sampled
    queries and ``256`` IP prefixes per account, plus the cross-account copy table (``copy_bits``).

    Every per-account part is order-free or keeps what a merge needs (:mod:`monitor.merge`): accumulators
    over consecutive slices of the ledger merge into the state of one pass over the whole. The copy table
    is the one cross-account part: a distributed pass computes it first (:class:`monitor.merge.CopyClaims`)
    and hands it to every slice's accumulator as ``claims``.
    """

    def __init__(
        self, *, sample_size: int = 256, copy_bits: int = COPY_BITS, min_copy_chars: int = MIN_COPY_CHARS
    ) -> None:
        if sample_size < 8:
            raise ValueError("sample_size must be >= 8")
        self.sample_size = int(sample_size)
        self.min_copy_chars = int(min_copy_chars)
        self.accounts: list[str] = []
        self.index: dict[str, int] = {}
        self.last_seq = 0
        self.rows = 0
        self._cap = 0
        self.c: dict[str, np.ndarray] = {}
        self.first_ts = self.last_ts = self.log_gap_sum = self.log_gap_sq = np.zeros(0)
        self.head_ts = self.tail_ts = np.zeros(0)  # times of each account's first and last row by seq
        self.first_seq = self.last_seq_acct = self.last_bin = np.zeros(0, dtype=np.int64)
        self.hll = np.zeros((0, _HLL_M), dtype=np.uint8)
        self.hours = np.zeros((0, _HOUR_HASHES), dtype=np.uint64)
        self.prefixes: list[Counter] = []
        self.keys: list[set[str]] = []
        self.orgs: list[str | None] = []  # each account's declared organisation (an account has one)
        self._prefix_cache: dict[str | None, str | None] = {}
        self._worst_prefix: dict[int, tuple[int, str]] = {}  # see count_bounded
        # the copy table: a direct-mapped hash table from prompt hash to the first account that sent it
        self._copy_mask = (1 << copy_bits) - 1
        self._copy_hash = np.zeros(1 << copy_bits, dtype=np.uint64)
        self._copy_owner = np.full(1 << copy_bits, -1, dtype=np.int32)
        self.claims: Any = None  # a whole ledger's copy table, computed beforehand (read only; see merge)
        self._acct_keys = np.zeros(0, dtype=np.uint64)  # account-name hashes (the claims' owners)
        # the sample pool (bottom-K by priority per account), compacted lazily
        self._pool: dict[str, Any] = _empty_pool()
        self._pending: list[dict[str, Any]] = []
        self._pending_rows = 0
        self._thresh = np.zeros(0, dtype=np.uint64)

    # -- bookkeeping ----------------------------------------------------------------------------------

    def _grow(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = max(n, 2 * self._cap, 64)
        extra = cap - self._cap

        def pad(a: np.ndarray, fill: Any) -> np.ndarray:
            shape = (extra, *a.shape[1:])
            return np.concatenate([a, np.full(shape, fill, dtype=a.dtype)])

        for name in _COUNTERS:
            self.c[name] = pad(self.c.get(name, np.zeros(0, dtype=np.float64)), 0.0)
        self.first_ts = pad(self.first_ts, np.inf)
        self.last_ts = pad(self.last_ts, -np.inf)
        self.log_gap_sum = pad(self.log_gap_sum, 0.0)
        self.log_gap_sq = pad(self.log_gap_sq, 0.0)
        self.head_ts = pad(self.head_ts, np.nan)
        self.tail_ts = pad(self.tail_ts, np.nan)
        self.first_seq = pad(self.first_seq, 0)
        self.last_seq_acct = pad(self.last_seq_acct, 0)
        self.last_bin = pad(self.last_bin, -1)
        self.hll = pad(self.hll, 0)
        self.hours = pad(self.hours, np.iinfo(np.uint64).max)
        self._thresh = pad(self._thresh, np.iinfo(np.uint64).max)
        self._cap = cap

    def _ids(self, names: list[str]) -> np.ndarray:
        out = np.empty(len(names), dtype=np.int32)
        for i, name in enumerate(names):
            j = self.index.get(name)
            if j is None:
                j = self.index[name] = len(self.accounts)
                self.accounts.append(name)
                self.prefixes.append(Counter())
                self.keys.append(set())
                self.orgs.append(None)
            out[i] = j
        self._grow(len(self.accounts))
        if self.claims is not None and len(self._acct_keys) < len(self.accounts):
            new = self.accounts[len(self._acct_keys) :]
            self._acct_keys = np.concatenate([self._acct_keys, hash_strings(new)])
        return out

    # -- update ---------------------------------------------------------------------------------------

    def update(self, batch: QueryBatch) -> None:
        """Fold one batch of queries (in ledger order) into the per-account state."""
        if len(batch) == 0:
            return
        a = self._ids(batch.accounts)[batch.acct]
        c = self.c
        for name, values in (
            ("n", None),
            ("admitted", batch.admitted),
            ("cot", batch.cot),
            ("identity", batch.identity),
            ("logprobs", batch.logprobs),
            ("logit_bias", batch.logit_bias),
            ("logprob_gen", batch.logprob_gen),
            ("bias_probe", batch.bias_probe),
            ("prompt_tokens", batch.prompt_tokens),
            ("completion_tokens", batch.completion_tokens),
        ):
            w = None if values is None else values.astype(np.float64)
            c[name][: len(self.accounts)] += np.bincount(a, weights=w, minlength=len(self.accounts))
        self._update_time(a, batch)
        self._update_hll(a, batch.text_hash)
        copied, eligible = self._update_copies(a, batch)
        n_acc = len(self.accounts)
        c["copied"][:n_acc] += np.bincount(a, weights=copied.astype(np.float64), minlength=n_acc)
        c["copy_eligible"][:n_acc] += np.bincount(a, weights=eligible.astype(np.float64), minlength=n_acc)
        self._update_sets(a, batch)
        self._update_sample(a, batch, copied)
        self.last_seq = max(self.last_seq, int(batch.seq.max()))
        self.rows += len(batch)

    def _update_time(self, a: np.ndarray, b: QueryBatch) -> None:
        order = np.lexsort((b.seq, a))
        sa, sts, sseq = a[order], b.ts[order], b.seq[order]
        first = np.ones(len(sa), dtype=bool)
        first[1:] = sa[1:] != sa[:-1]
        prev_ts = np.empty_like(sts)
        prev_ts[1:] = sts[:-1]
        prev_ts[first] = self.tail_ts[sa[first]]  # the account's previous row by seq, as within a batch
        has_prev = np.isfinite(prev_ts)
        gaps = np.maximum(sts - prev_ts, 1e-3)[has_prev]
        lg = np.log(gaps)
        ga = sa[has_prev]
        n_acc = len(self.accounts)
        self.c["gaps"][:n_acc] += np.bincount(ga, minlength=n_acc)
        self.log_gap_sum[:n_acc] += np.bincount(ga, weights=lg, minlength=n_acc)
        self.log_gap_sq[:n_acc] += np.bincount(ga, weights=lg * lg, minlength=n_acc)
        bins = np.floor(sts / BIN_SECONDS).astype(np.int64)
        prev_bin = np.empty_like(bins)
        prev_bin[1:] = bins[:-1]
        prev_bin[first] = self.last_bin[sa[first]]
        self.c["active_bins"][:n_acc] += np.bincount(sa, weights=(bins != prev_bin), minlength=n_acc)
        last = np.ones(len(sa), dtype=bool)
        last[:-1] = sa[1:] != sa[:-1]
        self.last_bin[sa[last]] = bins[last]
        self.tail_ts[sa[last]] = sts[last]
        np.minimum.at(self.first_ts, sa, sts)
        np.maximum.at(self.last_ts, sa, sts)
        untouched = np.isnan(self.head_ts[sa[first]])
        self.first_seq[sa[first][untouched]] = sseq[first][untouched]
        self.head_ts[sa[first][untouched]] = sts[first][untouched]
        self.last_seq_acct[sa[last]] = sseq[last]
        # MinHash of active absolute hours: accounts driven by one scheduler are active in the same hours
        hours = np.floor(sts / 3600.0).astype(np.int64)
        base = int(hours.min()) if len(hours) else 0
        key = np.unique((sa.astype(np.int64) << 32) | (hours - base))
        if key.size:
            pa_acct, pa_hour = key >> 32, (key & 0xFFFFFFFF) + base
            for j in range(_HOUR_HASHES):
                np.minimum.at(self.hours[:, j], pa_acct, hash_ints(pa_hour, salt=0x51ED27 + j))

    def _update_hll(self, a: np.ndarray, h: np.ndarray) -> None:
        reg = (h >> np.uint64(64 - _HLL_P)).astype(np.int64)
        # rank = leading zeros of the remaining bits + 1 (a sentinel bit bounds it)
        rest = (h << np.uint64(_HLL_P)) | np.uint64(1 << (_HLL_P - 1))
        bit_length = np.frexp(rest.astype(np.float64))[1]
        rank = (65 - bit_length).astype(np.uint8)
        np.maximum.at(self.hll, (a, reg), rank)

    def _update_copies(self, a: np.ndarray, b: QueryBatch) -> tuple[np.ndarray, np.ndarray]:
        """Flag prompts first sent by another account. Each table slot belongs to the text of the earliest
        row that reaches it; a text whose slot belongs to another text is not tracked (never flagged). So
        the answer does not depend on how rows are split into batches or slices."""
        eligible = b.text_len >= self.min_copy_chars
        copied = np.zeros(len(a), dtype=bool)
        idx = np.nonzero(eligible)[0]
        if not len(idx):
            return copied, eligible
        h = b.text_hash[idx]
        ai = a[idx]
        if self.claims is not None:
            owner = self.claims.owner_of((h & self.claims.mask).astype(np.int64), h)
            copied[idx] = (owner != 0) & (owner != self._acct_keys[ai])
            return copied, eligible
        slot = (h & np.uint64(self._copy_mask)).astype(np.int64)
        stored = self._copy_hash[slot]
        known = (stored == h) & (self._copy_owner[slot] >= 0)
        empty = self._copy_owner[slot] < 0
        # new texts: the first row of each text claims its slot, the first text to reach a slot wins it
        _, first_pos, inverse = np.unique(h, return_index=True, return_inverse=True)
        claim = np.zeros(len(idx), dtype=bool)
        firsts = np.sort(first_pos[empty[first_pos]])  # by row: the earliest text reaching a slot wins it
        if len(firsts):
            _, win = np.unique(slot[firsts], return_index=True)
            claim[firsts[win]] = True
        claimed_text = claim[first_pos][inverse]
        self._copy_hash[slot[claim]] = h[claim]
        self._copy_owner[slot[claim]] = ai[claim]
        owner = np.where(known, self._copy_owner[slot], ai[first_pos][inverse])
        tracked = known | claimed_text
        copied[idx] = tracked & (owner != ai)
        return copied, eligible

    def _update_sets(self, a: np.ndarray, b: QueryBatch) -> None:
        pre_ids: dict[str | None, int] = {}
        names: list[str | None] = []
        ip_to_pre = np.empty(len(b.ips), dtype=np.int64)
        for k, raw in enumerate(b.ips):
            pre = self._prefix_cache.get(raw)
            if pre is None and raw not in self._prefix_cache:
                pre = self._prefix_cache[raw] = ip_prefix(raw)
                if len(self._prefix_cache) > 100_000:
                    self._prefix_cache.clear()
            if pre not in pre_ids:
                pre_ids[pre] = len(names)
                names.append(pre)
            ip_to_pre[k] = pre_ids[pre]
        for acct, pre, cnt in _distinct_pairs(a, ip_to_pre[b.ip], len(names)):
            name = names[pre]
            if name is not None:
                count_bounded(self.prefixes[acct], name, cnt, _MAX_PREFIXES, self._worst_prefix, acct)
        for acct, k, _ in _distinct_pairs(a, b.key, len(b.keys)):
            kid = b.keys[k]
            if kid is not None:
                add_bounded(self.keys[acct], kid, _MAX_KEYS)
        for acct, k, _ in _distinct_pairs(a, b.org, len(b.orgs)):
            if b.orgs[k] is not None:
                self.orgs[acct] = b.orgs[k]

    def _update_sample(self, a: np.ndarray, b: QueryBatch, copied: np.ndarray) -> None:
        prio = hash_ints(b.seq, salt=0x5A17)
        cand = np.nonzero(prio < self._thresh[a])[0]
        if not len(cand):
            return
        text = b.text.take(pa.array(cand)).to_pylist()
        self._pending.append(
            {
                "acct": a[cand].astype(np.int32),
                "prio": prio[cand],
                "seq": b.seq[cand],
                "ts": b.ts[cand],
                "text": np.array(text, dtype=object),
                "text_hash": b.text_hash[cand],
                "cot": b.cot[cand],
                "identity": b.identity[cand],
                "logprobs": b.logprobs[cand],
                "logit_bias": b.logit_bias[cand],
                "logprob_gen": b.logprob_gen[cand],
                "bias_probe": b.bias_probe[cand],
                "copied": copied[cand],
            }
        )
        self._pending_rows += len(cand)
        # compaction sorts pool + pending: trigger it when pending is as large as the pool (amortised O(1))
        if self._pending_rows >= max(100_000, len(self._pool["seq"])):
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        parts = [self._pool, *self._pending]
        pool = {k: np.concatenate([p[k] for p in parts]) for k in self._pool}
        order = np.lexsort((pool["prio"], pool["acct"]))
        acct = pool["acct"][order]
        starts = np.ones(len(acct), dtype=bool)
        starts[1:] = acct[1:] != acct[:-1]
        group_start = np.maximum.accumulate(np.where(starts, np.arange(len(acct)), 0))
        rank = np.arange(len(acct)) - group_start
        keep = order[rank < self.sample_size]
        self._pool = {k: v[keep] for k, v in pool.items()}
        self._pending, self._pending_rows = [], 0
        counts = np.bincount(self._pool["acct"], minlength=self._cap)
        full = counts >= self.sample_size
        thresh = np.full(self._cap, np.iinfo(np.uint64).max, dtype=np.uint64)
        if full.any():
            mx = np.zeros(self._cap, dtype=np.uint64)
            np.maximum.at(mx, self._pool["acct"], self._pool["prio"])
            thresh[full] = mx[full]
        self._thresh = thresh

    # -- read-out -------------------------------------------------------------------------------------

    def profile(self, accounts: Sequence[str], sample_size: int | None = None) -> Profile:
        """The pooled state of one or more accounts (a cluster is judged as one campaign).

        Counters add, distinct prompts are the union (HLL register maximum), the sample is the union cut
        to the lowest priorities (still uniform over the pooled queries), inter-arrival statistics pool the
        within-account gaps, and the active span is the sum of the members' spans.
        """
        self._compact()
        ids = np.array([self.index[x] for x in accounts], dtype=np.int64)
        counts = {name: float(self.c[name][ids].sum()) for name in _COUNTERS}
        regs = self.hll[ids].max(axis=0)
        size = sample_size or (self.sample_size if len(ids) == 1 else 2 * self.sample_size)
        pool_acct = self._pool["acct"]  # sorted by (account, priority) after compaction
        lo = np.searchsorted(pool_acct, ids.astype(pool_acct.dtype), side="left")
        hi = np.searchsorted(pool_acct, ids.astype(pool_acct.dtype), side="right")
        sel = np.concatenate([np.arange(x, y) for x, y in zip(lo, hi, strict=True)]) if len(ids) else lo
        sel = sel[np.argsort(self._pool["prio"][sel], kind="stable")[:size]]
        sel = sel[np.argsort(self._pool["seq"][sel], kind="stable")]
        p = self._pool
        sample = Sample(
            seq=p["seq"][sel].copy(),
            ts=p["ts"][sel].copy(),
            text=[str(t) for t in p["text"][sel]],
            text_hash=p["text_hash"][sel].copy(),
            cot=p["cot"][sel].copy(),
            identity=p["identity"][sel].copy(),
            logprobs=p["logprobs"][sel].copy(),
            logit_bias=p["logit_bias"][sel].copy(),
            logprob_gen=p["logprob_gen"][sel].copy(),
            bias_probe=p["bias_probe"][sel].copy(),
            copied=p["copied"][sel].copy(),
        )
        prefixes: Counter = Counter()
        keys: set[str] = set()
        for i in ids:
            prefixes.update(self.prefixes[i])
            keys |= self.keys[i]
        first, last = float(self.first_ts[ids].min()), float(self.last_ts[ids].max())
        # a pooled entity's span is the sum of its members' spans: duty cycle = mean member duty cycle
        spans = np.floor(self.last_ts[ids] / BIN_SECONDS) - np.floor(self.first_ts[ids] / BIN_SECONDS) + 1
        return Profile(
            accounts=tuple(accounts),
            counts=counts,
            first_ts=first,
            last_ts=last,
            first_seq=int(self.first_seq[ids].min()),
            last_seq=int(self.last_seq_acct[ids].max()),
            log_gap_sum=float(self.log_gap_sum[ids].sum()),
            log_gap_sq=float(self.log_gap_sq[ids].sum()),
            span_bins=float(spans.sum()),
            distinct=hll_estimate(regs),
            prefixes=prefixes,
            keys=keys,
            orgs={o for i in ids if (o := self.orgs[i]) is not None},
            sample=sample,
            hour_signature=self.hours[ids].min(axis=0),
            extra_prefixes=sum(max(len(self.prefixes[i]) - 1, 0) for i in ids),
        )

    def account_rows(self) -> dict[str, int]:
        """Queries per account so far."""
        return {name: int(self.c["n"][i]) for i, name in enumerate(self.accounts)}

    # -- persistence (monitor follow) -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Arrays and JSON-able metadata that :meth:`from_state` restores exactly."""
        self._compact()
        n = len(self.accounts)
        arrays: dict[str, np.ndarray] = {f"c_{k}": v[:n] for k, v in self.c.items()}
        arrays.update(
            first_ts=self.first_ts[:n],
            last_ts=self.last_ts[:n],
            log_gap_sum=self.log_gap_sum[:n],
            log_gap_sq=self.log_gap_sq[:n],
            head_ts=self.head_ts[:n],
            tail_ts=self.tail_ts[:n],
            first_seq=self.first_seq[:n],
            last_seq_acct=self.last_seq_acct[:n],
            last_bin=self.last_bin[:n],
            hll=self.hll[:n],
            hours=self.hours[:n],
            copy_hash=self._copy_hash,
            copy_owner=self._copy_owner,
        )
        for k, v in self._pool.items():
            if k == "text":  # UTF-8 bytes and offsets: a fixed-width array would take the longest text's size
                arrays["pool_text_utf8"], arrays["pool_text_offsets"] = _pack_texts(v)
            else:
                arrays[f"pool_{k}"] = v
        meta = {
            "accounts": self.accounts,
            "last_seq": self.last_seq,
            "rows": self.rows,
            "sample_size": self.sample_size,
            "min_copy_chars": self.min_copy_chars,
            "prefixes": [dict(x) for x in self.prefixes],
            "keys": [sorted(x) for x in self.keys],
            "orgs": self.orgs,
        }
        return {"arrays": arrays, "meta": meta}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureAccumulator:
        meta, arrays = state["meta"], state["arrays"]
        copy_bits = int(np.log2(len(arrays["copy_hash"])))
        acc = cls(sample_size=meta["sample_size"], copy_bits=copy_bits, min_copy_chars=meta["min_copy_chars"])
        acc._ids(list(meta["accounts"]))
        n = len(acc.accounts)
        for k in _COUNTERS:
            acc.c[k][:n] = arrays[f"c_{k}"]
        for name in ("first_ts", "last_ts", "log_gap_sum", "log_gap_sq", "first_seq", "last_bin", "hll"):
            getattr(acc, name)[:n] = arrays[name]
        acc.last_seq_acct[:n] = arrays["last_seq_acct"]
        acc.head_ts[:n] = arrays.get("head_ts", arrays["first_ts"])  # older states: a row was there
        acc.tail_ts[:n] = arrays.get("tail_ts", arrays["last_ts"])
        acc.hours[:n] = arrays["hours"]
        acc._copy_hash = np.array(arrays["copy_hash"], dtype=np.uint64)
        acc._copy_owner = np.array(arrays["copy_owner"], dtype=np.int32)
        pool = {k: np.asarray(arrays[f"pool_{k}"]) for k in _empty_pool() if k != "text"}
        if "pool_text_utf8" in arrays:
            pool["text"] = _unpack_texts(arrays["pool_text_utf8"], arrays["pool_text_offsets"])
        else:  # a state saved before texts were packed
            pool["text"] = np.asarray(arrays["pool_text"]).astype(object)
        acc._pool = pool
        acc._pending = [dict(pool)]
        acc._pool = _empty_pool()
        acc._pending_rows = len(pool["seq"])
        acc._compact()
        acc.last_seq, acc.rows = int(meta["last_seq"]), int(meta["rows"])
        acc.prefixes = [Counter(x) for x in meta["prefixes"]]
        acc.keys = [set(x) for x in meta["keys"]]
        acc.orgs = list(meta.get("orgs") or [None] * n)
        return acc


def _pack_texts(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data = [str(t).encode("utf-8") for t in texts]
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    return np.frombuffer(b"".join(data), dtype=np.uint8), offsets


def _unpack_texts(utf8: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    raw = np.asarray(utf8, dtype=np.uint8).tobytes()
    bounds = np.asarray(offsets).tolist()
    out = np.empty(len(bounds) - 1, dtype=object)
    out[:] = [raw[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return out


def _empty_pool() -> dict[str, np.ndarray]:
    return {
        "acct": np.zeros(0, dtype=np.int32),
        "prio": np.zeros(0, dtype=np.uint64),
        "seq": np.zeros(0, dtype=np.int64),
        "ts": np.zeros(0, dtype=np.float64),
        "text": np.zeros(0, dtype=object),
        "text_hash": np.zeros(0, dtype=np.uint64),
        "cot": np.zeros(0, dtype=bool),
        "identity": np.zeros(0, dtype=bool),
        "logprobs": np.zeros(0, dtype=bool),
        "logit_bias": np.zeros(0, dtype=bool),
        "logprob_gen": np.zeros(0, dtype=bool),
        "bias_probe": np.zeros(0, dtype=bool),
        "copied": np.zeros(0, dtype=bool),
    }


@functools.lru_cache(maxsize=1 << 16)
def _hash_rank(name: str) -> int:
    return stable_hash(name)


def count_bounded(
    counter: Counter, name: str, cnt: int, cap: int, worst: dict[int, tuple[int, str]], owner: int
) -> None:
    """Count ``name`` in a counter that keeps the ``cap`` names of smallest :func:`stable_hash` and adds
    the rest to :data:`OTHER`. Which names it keeps, and their counts, do not depend on the order names
    arrive in (a name is evicted for good only by a smaller hash), so counters of slices merge exactly.
    ``worst[owner]`` caches the full counter's largest kept hash (a rejection costs one hash)."""
    if name in counter:
        counter[name] += cnt
        return
    if len(counter) - (OTHER in counter) < cap:
        counter[name] = cnt
        return
    w = worst.get(owner)
    if w is None:
        w = worst[owner] = max((_hash_rank(k), k) for k in counter if k != OTHER)
    if _hash_rank(name) < w[0]:
        counter[OTHER] += counter.pop(w[1])
        counter[name] = cnt
        del worst[owner]
    else:
        counter[OTHER] += cnt


def add_bounded(keep: set[str], name: str, cap: int) -> None:
    """:func:`count_bounded` for a set of at most ``cap`` (a few dozen) names: keep the smallest hashes."""
    if name in keep:
        return
    if len(keep) < cap:
        keep.add(name)
        return
    worst = max(keep, key=_hash_rank)
    if _hash_rank(name) < _hash_rank(worst):
        keep.discard(worst)
        keep.add(name)


def _distinct_pairs(acct: np.ndarray, code: np.ndarray, codes: int) -> Iterator[tuple[int, int, int]]:
    """The distinct (account, code) pairs of a batch with their row counts, by one ``np.unique``."""
    width = max(codes, 1)
    keys, counts = np.unique(acct.astype(np.int64) * width + code, return_counts=True)
    for key, cnt in zip(keys.tolist(), counts.tolist(), strict=True):
        acct_i, k = divmod(key, width)
        yield acct_i, k, cnt


def hll_estimate(registers: np.ndarray) -> float:
    """HyperLogLog cardinality with the small-range (linear counting) correction of Flajolet et al."""
    m = len(registers)
    alpha = 0.7213 / (1 + 1.079 / m)
    est = alpha * m * m / float(np.sum(np.power(2.0, -registers.astype(np.float64))))
    zeros = int(np.count_nonzero(registers == 0))
    if est <= 2.5 * m and zeros:
        est = m * math.log(m / zeros)
    return est


# --------------------------------------------------------------------------------------------------
# Entity features


@dataclass
class TextGeometry:
    """Sample-derived text statistics of one entity, with the sampled records behind each."""

    vectors: np.ndarray
    diversity: float
    coverage_topics: int
    centres: list[int]
    paraphrase: np.ndarray  # bool per sample row
    templated: np.ndarray  # bool per sample row
    template_shingles: set[int]
    min_dist: np.ndarray  # per sample row, distance to the nearest earlier row (nan for the first)


def text_geometry(sample: Sample, dim: int = 512) -> TextGeometry:
    """Embeddings, diversity, k-center coverage, paraphrase and template flags of a sample."""
    n = len(sample)
    vec = hash_vectors(sample.text, dim)
    if n == 0:
        empty = np.zeros(0, dtype=bool)
        return TextGeometry(vec, float("nan"), 0, [], empty, empty, set(), np.zeros(0))
    dist = cosine_distances(vec, vec)
    nonempty = np.linalg.norm(vec, axis=1) > 0
    diversity = float(dist[np.triu_indices(n, k=1)].mean()) if n >= 2 else float("nan")
    centres: list[int] = []
    if nonempty.any():
        sub = np.nonzero(nonempty)[0]
        nearest = np.full(len(sub), np.inf)
        for j in iter_farthest_first(vec[sub], 0):
            if np.isfinite(nearest).all() and nearest.max() <= COVER_RADIUS:
                break
            centres.append(int(sub[j]))
            nearest = np.minimum(nearest, dist[sub, sub[j]])
    # nearest earlier row: exact repeats are not paraphrases
    same = sample.text_hash[:, None] == sample.text_hash[None, :]
    earlier = np.tril(np.ones((n, n), dtype=bool), k=-1)
    d_all = np.where(earlier, dist, np.inf)
    min_dist = d_all.min(axis=1)
    min_dist[0] = np.nan
    d_new = np.where(earlier & ~same, dist, np.inf)
    paraphrase = (d_new.min(axis=1) <= 1.0 - PARAPHRASE_COSINE) & nonempty
    repeat = (earlier & same).any(axis=1)
    templated, shingles = _templates(sample.text, repeat)
    return TextGeometry(vec, diversity, len(centres), centres, paraphrase, templated, shingles, min_dist)


def shingle_hashes(texts: Sequence[str]) -> set[int]:
    """The stable hashes of every word 4-gram of ``texts`` (the unit of a template frame): what a small
    account's prompts are made of, to compare with another account's recurring frames."""
    out: set[int] = set()
    for text in texts:
        toks = tokens(text)
        out.update(
            stable_hash(" ".join(toks[i : i + SHINGLE])) for i in range(max(0, len(toks) - SHINGLE + 1))
        )
    return out


def _templates(texts: Sequence[str], repeat: np.ndarray) -> tuple[np.ndarray, set[int]]:
    """Rows mostly covered by word 4-grams that recur in other rows (the frames of a prompt generator).
    Returns the flags and the stable hashes of the recurring frames (for cross-account linking)."""
    grams: list[set[tuple[str, ...]]] = []
    df: Counter = Counter()
    for text in texts:
        toks = tokens(text)
        g = {tuple(toks[i : i + SHINGLE]) for i in range(max(0, len(toks) - SHINGLE + 1))}
        grams.append(g)
        df.update(g)
    n = len(texts)
    # a shingle is a template frame when it recurs in at least 3 prompts and 3% of the sample
    need = max(3, math.ceil(0.03 * n))
    frames = {g for g, c in df.items() if c >= need}
    flags = np.zeros(n, dtype=bool)
    for i, g in enumerate(grams):
        if g and not repeat[i]:
            flags[i] = len(g & frames) >= 0.5 * len(g)
    return flags, {stable_hash(" ".join(f)) for f in frames}


def shrunk_rate(k: float, n: float) -> float:
    """``k / (n + PSEUDO_QUERIES)``: a rate that needs volume before it can look extreme."""
    return float(k) / (float(n) + PSEUDO_QUERIES)


def entity_features(
    profile: Profile, geometry: TextGeometry, *, mmd: float = float("nan"), prada: float = float("nan")
) -> dict[str, float]:
    """The oriented feature values of :data:`FEATURES` for one entity (``nan`` where undefined)."""
    c = profile.counts
    n = max(c["n"], 1.0)
    s = profile.sample
    k = max(len(s), 1)
    active_h = max(c["active_bins"], 1.0) * BIN_SECONDS / 3600.0
    gaps = c["gaps"]
    if gaps >= 5:
        mean = profile.log_gap_sum / gaps
        var = max(profile.log_gap_sq / gaps - mean * mean, 0.0)
        regularity = -math.sqrt(var)
    else:
        regularity = float("nan")
    # rates measured on the sample are scaled to the account's volume before shrinking
    scale = n / k
    return {
        "log_queries": math.log10(n),
        "log_rate": math.log10(n / active_h),
        "duty_cycle": (c["active_bins"] / profile.span_bins) if profile.span_bins >= 6 else float("nan"),
        "regularity": regularity,
        "novelty": min(1.0, profile.distinct / n) if n >= 5 else float("nan"),
        "coverage": math.log2(1 + geometry.coverage_topics),
        "diversity": geometry.diversity if len(s) >= 5 else float("nan"),
        "paraphrase_rate": shrunk_rate(geometry.paraphrase.sum() * scale, n),
        "template_rate": shrunk_rate(geometry.templated.sum() * scale, n),
        "cot_rate": shrunk_rate(c["cot"], n),
        "identity_rate": shrunk_rate(c["identity"], n),
        "logprobs_rate": shrunk_rate(c["logprobs"], n),
        "logprob_gen_rate": shrunk_rate(c["logprob_gen"], n),
        "bias_probe_rate": shrunk_rate(c["bias_probe"], n),
        "logit_bias_rate": shrunk_rate(c["logit_bias"], n),
        "ip_churn": shrunk_rate(profile.extra_prefixes, n),
        "mmd": mmd,
        "prada": prada,
    }


@dataclass
class EntityReport:
    """Features of one entity plus the sampled ledger ``seq`` ids that exhibit each of them."""

    accounts: tuple[str, ...]
    queries: int
    features: dict[str, float]
    evidence: dict[str, list[int]] = field(default_factory=dict)
    first_seq: int = 0
    last_seq: int = 0


def evidence_seqs(profile: Profile, geometry: TextGeometry, limit: int = 8) -> dict[str, list[int]]:
    """For each feature, up to ``limit`` sampled ledger seq ids that show it (what an analyst opens)."""
    s = profile.sample

    def pick(mask: np.ndarray) -> list[int]:
        return [int(x) for x in s.seq[np.asarray(mask, dtype=bool)][:limit]]

    everything = [int(x) for x in s.seq[:limit]]
    spread = [int(s.seq[i]) for i in geometry.centres[:limit]]
    return {
        "log_queries": [profile.first_seq, profile.last_seq],
        "log_rate": everything,
        "duty_cycle": [profile.first_seq, profile.last_seq],
        "regularity": everything,
        "novelty": everything,
        "coverage": spread,
        "diversity": spread,
        "paraphrase_rate": pick(geometry.paraphrase),
        "template_rate": pick(geometry.templated),
        "cot_rate": pick(s.cot),
        "identity_rate": pick(s.identity),
        "logprobs_rate": pick(s.logprobs),
        "logprob_gen_rate": pick(s.logprob_gen),
        "bias_probe_rate": pick(s.bias_probe),
        "logit_bias_rate": pick(s.logit_bias),
        "ip_churn": everything,
        "mmd": everything,
        "prada": everything,
    }

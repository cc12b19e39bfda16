"""Traffic features per account (and per linked cluster) over the query ledger: the feature catalogue, the
text patterns and hashes, and the vectorised derivation of ledger record batches (:func:`derive`) that
:class:`~distillguard.monitor.accumulator.FeatureAccumulator` folds; an entity's feature values come from
:mod:`distillguard.monitor.entity`.

Why the design looks like this:

- **One code path for every source.** The SQLite ledger (``Ledger.iter_records``), a Parquet export and
  the incremental ``monitor follow`` loop all feed Arrow record batches to the accumulator.
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

import ipaddress
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillguard.splitmix import mix64_np
from distillguard.text.patterns import (  # noqa: F401 (is_cot and is_identity re-exported)
    ANY_LOOKALIKE_RE2,
    APOSTROPHES,
    COT_RE2,
    COT_REASONING_RE2,
    DASHES,
    IDENTITY_END_CHARS,
    IDENTITY_RE2,
    INVISIBLE,
    LOOKALIKE_RE2,
    LOOKALIKE_TEXT_RE2,
    PROCEDURE_RE2,
    is_cot,
    is_identity,
)
from distillguard.text.vectors import text_features

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
        "log10 of the number of queries (requests: a batch of prompts is one). Distillation needs volume; "
        "alone it is weak (batch customers are bigger), so it only counts together with what the volume is "
        "spent on.",
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
        "Distinct prompts / requests (HyperLogLog). A distiller never asks twice; an evaluation harness "
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
        "Networks (/24, IPv6 /48) per query beyond an account's own (up to FIXED_NETWORKS that each carry "
        "a tenth of its requests: home, office, a phone carrier), past 256 kept per account a bottom-k "
        "estimate: rotating residential proxies give nearly one network per request; customers run from a "
        "few fixed ones.",
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
# What the features mean, when a name stays and its reading changes (a reference records the revision it
# was fitted under): 1, ip_churn capped at the 256 prefixes kept per account; 2, estimated past them;
# 3, networks counted beyond an account's own (up to FIXED_NETWORKS, each a tenth of its requests), and
# reasoning requests read with procedures ("step-by-step instructions") taken out; 4, reasoning requests
# read in the whole prompt, not only its first and last 400 characters, and request patterns read however
# the text is spaced or encoded; logprobs 0 counted; a completion's prompt read whole; 5, reasoning requests
# that ask for the model's thinking, every step of it, or a question thought through, and request patterns
# read with Cyrillic, Greek and Armenian letters that look Latin as the Latin ones; 6, "reasoning steps" is
# a reasoning request on one line only.
FEATURE_REVISION = 6
REVISION_NOTES = {
    2: "network churn is now estimated past the 256 prefixes kept per account (an account on more networks "
    "than that reads higher than its rows did)",
    3: "network churn now counts the networks beyond an account's own (up to three that each carry a tenth "
    "of its requests: home, office, a phone), so a customer on a few fixed networks reads lower than its "
    "rows did; reasoning requests no longer count procedures asked for or offered ('step-by-step "
    "instructions')",
    4: "reasoning requests are read in the whole prompt, not only in its first and last 400 characters (a "
    "long system prompt that asks for step-by-step reasoning in its middle now counts); reasoning requests "
    "and identity questions are read however the text is spaced or encoded (line breaks, zero-width or "
    "full-width characters); legacy completions' logprobs 0 counts as a logprob request; a legacy "
    "completion's prompt is read whole as its question",
    5: "reasoning requests now include asking for the model's thinking or every step of it ('show your "
    "thinking', 'every intermediate step of your reasoning') and for a question to be thought through "
    "('reason it through carefully'); reasoning requests and identity questions are read with Cyrillic, "
    "Greek and Armenian letters that look Latin as the Latin ones",
    6: "'reasoning step(s)' is a reasoning request on one line only, and 'reason step' is none (a list's "
    "'Find the reason' or 'Check your reasoning' before 'Step 2' on the next line was one)",
}
# networks an account uses without churning: a person's home, office and phone carrier, each carrying at
# least this share of its requests
FIXED_NETWORKS = 3
OWN_NETWORK_SHARE = 0.1
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
# Text patterns (RE2-compatible; the request patterns live in text/patterns.py, where the countermeasures
# and the Python path read them without numpy, and run here in their RE2 forms: COT_RE2, IDENTITY_RE2...)

# The last user message of a rendered chat ("system: ...\nuser: ...") follows the last "\nuser: ".
_USER_SEP = "\nuser: "
_COMPLETIONS = "/v1/completions"  # the ledger's endpoint of legacy completions (gateway.requestctx)
# Identity questions are read at the two ends of the last user turn (IDENTITY_END_CHARS). Reasoning requests
# are read in the whole prompt: a long system prompt says "always reason step by step" anywhere in it.
_END_CHARS = IDENTITY_END_CHARS
# "logprobs": 0 on /v1/completions asks for the sampled token's logprob (the gateway treats it as a request)
_LOGPROBS_RE = r'"(?:logprobs":(?:true|[0-9])|top_logprobs":[1-9])'
_LOGIT_BIAS_RE = r'"logit_bias":\{"'
# an explicit generation bound below 8 tokens: logprobs read for a choice, not over an answer
_SHORT_GEN_RE = r'"max_(?:completion_)?tokens":[1-7][,}]'
# the most answers one request can get (the gateway's MAX_N: prompts times ``n``); a record claiming more
# (a Parquet export is not necessarily ours) counts as this many
MAX_CHOICES = 128
# ``n`` in params JSON (a key starts after "{" or ","; a string's quotes are escaped; the gateway writes no
# spaces, another exporter may): the answers asked for each prompt
_N_RE = r'(?:^|[{,])\s*"n"\s*:\s*(?P<n>[0-9]{1,6})\s*[,}]'

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
    "endpoint",
    "prompt",
    "params",
    "prompt_tokens",
    "completion_tokens",
    "choices",
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
        for name in ("account", "key_id", "org", "client_ip", "decision", "endpoint"):
            v = r.get(name)
            cols[name].append(v if isinstance(v, str) else None)
        prompt = r.get("prompt")
        if not isinstance(prompt, str):
            msgs = r.get("messages")
            prompt = _render(msgs) if isinstance(msgs, list) else None
        cols["prompt"].append(prompt)
        params = r.get("params")
        cols["params"].append(canonical_json(params) if isinstance(params, dict) else None)
        for name in ("prompt_tokens", "completion_tokens", "choices"):
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
    # the prompts each request asked answers for (int64, 1 to MAX_CHOICES): a batched completion's, else 1
    prompts: np.ndarray
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


def _last_user_turn(table: pa.Table) -> pa.Array:
    """The prompts' questions: in a rendered multi-message chat the text after the last ``"\\nuser: "`` (the
    gateway indents a line of a message that starts with a role label, so only it writes that), else the
    prompt itself. A legacy completion's prompt is the client's raw text and read whole."""
    prompt = pc.fill_null(_column(table, "prompt", pa.large_string()), "")
    has = pc.match_substring(prompt, _USER_SEP)
    if "endpoint" in table.column_names:
        raw = pc.fill_null(pc.equal(_column(table, "endpoint", pa.string()), _COMPLETIONS), False)
        has = pc.and_(has, pc.invert(raw))
    if not pc.any(has).as_py():
        return prompt
    parts = pc.split_pattern(prompt.filter(has), pattern=_USER_SEP, reverse=True, max_splits=1)
    if isinstance(parts, pa.ChunkedArray):
        parts = parts.combine_chunks()
    last = pc.list_flatten(parts).take(pa.array(parts.offsets.to_numpy(zero_copy_only=False)[1:] - 1))
    return pc.replace_with_mask(prompt, has, last)


def normalise(arr: pa.Array, invisible: str = "") -> pa.Array:
    """Texts as the request patterns read them (:func:`distillguard.text.patterns.normalise`, vectorised):
    rows with characters beyond ASCII NFKC-normalised, dashes and apostrophes plain, invisible characters
    as ``invisible``, letters that look Latin as the Latin ones."""
    odd = pc.invert(pc.string_is_ascii(arr))
    if not pc.any(odd).as_py():
        return arr
    sub = pc.utf8_normalize(arr.filter(odd), form="NFKC")
    sub = pc.replace_substring_regex(pc.replace_substring_regex(sub, INVISIBLE, invisible), DASHES, "-")
    sub = pc.replace_substring_regex(sub, f"[{APOSTROPHES}]", "'")
    mixed = pc.and_(  # the texts that could hide a request in lookalikes get one pass per Latin letter
        pc.match_substring_regex(sub, ANY_LOOKALIKE_RE2), pc.match_substring_regex(sub, LOOKALIKE_TEXT_RE2)
    )
    if pc.any(mixed).as_py():
        some = sub.filter(mixed)
        for latin, cls in LOOKALIKE_RE2.items():
            some = pc.replace_substring_regex(some, cls, latin)
        sub = pc.replace_with_mask(sub, mixed, some)
    return pc.replace_with_mask(arr, odd, sub)


def readings(arr: pa.Array) -> list[pa.Array]:
    """The texts the patterns read (:func:`distillguard.text.patterns.readings`): normalised, and a second
    time with invisible characters as spaces when some row has one."""
    odd = pc.invert(pc.string_is_ascii(arr))
    if not pc.any(odd).as_py():  # invisible characters are beyond ASCII: most batches stop here
        return [arr]
    out = [normalise(arr)]
    if pc.any(pc.match_substring_regex(arr.filter(odd), INVISIBLE)).as_py():
        out.append(normalise(arr, " "))
    return out


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
    text = _last_user_turn(table)
    lens = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    return rows, hash_strings(_column(table, "account", pa.string())), fingerprint(text), lens


def derive(table: pa.Table | pa.RecordBatch) -> QueryBatch:
    """Vectorised per-query columns (flags, hashes, group indices) of a ledger table or record batch.

    Needs ``seq``, ``ts``, ``account`` and ``prompt``; ``params`` (canonical JSON), ``client_ip``,
    ``key_id``, ``decision``, ``choices`` and token counts are used when present.
    """
    table, _ = counted_rows(table)
    account = _column(table, "account", pa.string())
    prompt = pc.fill_null(_column(table, "prompt", pa.large_string()), "")
    text = _last_user_turn(table)
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
    ts = np.where(np.isfinite(ts), ts, 0.0)  # a time that is no time reads as a missing one
    lens = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    admitted = pc.fill_null(pc.equal(decision, "admitted"), True).to_numpy(zero_copy_only=False)
    prompts = _prompts(table, params, admitted)
    logprobs = flag(params, _LOGPROBS_RE)
    logit_bias = flag(params, _LOGIT_BIAS_RE)
    said = readings(prompt)
    return QueryBatch(
        accounts=accounts,
        acct=acct,
        seq=seq.astype(np.int64),
        ts=ts.astype(np.float64),
        text=text,
        text_hash=fingerprint(text),
        text_len=lens,
        # reasoning elicitation may sit anywhere the client wrote: the system prompt ("always show your full
        # reasoning"), the question, or a history it made up (the API is stateless: the client sends every
        # turn, a few-shot demonstration or a prefill included), so the whole prompt is read (RE2 is linear:
        # it costs what its two ends did), normalised, a bare "step by step" with procedures out
        cot=np.any(
            [
                flag(t, COT_REASONING_RE2, True)
                | flag(pc.replace_substring_regex(t, PROCEDURE_RE2, " "), COT_RE2, True)
                for t in said
            ],
            axis=0,
        ),
        identity=np.any([ends_flag(t, IDENTITY_RE2) for t in readings(text)], axis=0),
        logprobs=logprobs,
        logit_bias=logit_bias,
        logprob_gen=logprobs & ~flag(params, _SHORT_GEN_RE),
        bias_probe=logprobs & logit_bias,
        admitted=admitted.astype(bool),
        prompts=prompts,
        ips=ips,
        ip=ip,
        keys=keys,
        key=key,
        orgs=orgs,
        org=org,
        prompt_tokens=ints("prompt_tokens"),
        completion_tokens=ints("completion_tokens"),
    )


def _prompts(table: pa.Table, params: pa.Array, admitted: np.ndarray) -> np.ndarray:
    """The prompts each row's request asked answers for: its recorded ``choices`` (prompts times ``n``) over
    its ``n`` when it was admitted (a stream the client closed early still got answers), else 1. A ledger
    written before records carried ``choices`` reads 1: a batched completion's prompts are joined into one
    text there, and nothing tells how many it held. ``n`` answers to one prompt are one prompt."""
    choices = _column(table, "choices", pa.int64())
    n = pc.struct_field(pc.extract_regex(params, _N_RE), "n")
    n = pc.cast(pc.if_else(pc.is_valid(n), n, "1"), pa.int64()).to_numpy(zero_copy_only=False)
    got = pc.fill_null(choices, 1).to_numpy(zero_copy_only=False).astype(np.int64)
    prompts = np.clip(got, 1, MAX_CHOICES) // np.clip(n, 1, MAX_CHOICES)
    return np.where(admitted, np.maximum(prompts, 1), 1).astype(np.int64)


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

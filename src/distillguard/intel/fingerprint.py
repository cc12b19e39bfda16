"""Privacy-preserving prompt indicators: template keys, keyed fingerprints and MinHash sketches (pure math).

A *template key* is a short structural view of one prompt that a campaign repeats and a customer's payload
does not: the normalised system prompt, the first and last 3 and 6 normalised tokens of the user turn, and
the request's sampling parameters (the tooling). Keys leave a provider only as **keyed fingerprints**
(HMAC-SHA256 under the trust group's key, truncated to 128 bits): a member holding the key computes the same
fingerprint from its own traffic and can match; an outsider cannot invert or test them. A member can still
test a guess (that is what matching is), which is why only templates frequent in a flagged campaign and
absent from the exporter's benign traffic are ever exported (see :mod:`distillguard.intel.census`).

System prompts also travel as **MinHash sketches** of their keyed word 3-shingles, so a lightly edited
system prompt still matches (Jaccard estimate, standard error about ``sqrt(J(1-J)/k)`` with ``k`` = 64
permutations: about 0.06 at J = 0.5).

Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from distillguard.monitor.features import tokens, user_text
from distillguard.splitmix import mix64_np as mix64

FINGERPRINT_VERSION = "distillguard-template/1"
MINHASH_PERMUTATIONS = 64
SHINGLE = 3
FRAME_TOKENS = (3, 6)
KINDS = ("sys", "pre", "suf", "tool")
_SYSTEM_PREFIX = "system: "
_USER_SEP = "\nuser: "
_TOOL_PARAMS = ("max_tokens", "temperature", "top_p", "n", "logprobs", "top_logprobs", "stream", "seed")


def normalise(text: str) -> str:
    """Lower-case word and punctuation tokens, digits folded to ``0``, single spaces."""
    return " ".join(tokens(text))


def split_prompt(prompt: str) -> tuple[str | None, str]:
    """(system prompt or None, last user turn) of a prompt as the gateway's ledger renders chats."""
    if prompt.startswith(_SYSTEM_PREFIX) and _USER_SEP in prompt:
        return prompt[len(_SYSTEM_PREFIX) : prompt.index(_USER_SEP)], user_text(prompt)
    return None, user_text(prompt)


def tool_key(params: dict | None) -> str | None:
    """The sampling parameters a client sets, canonically: a script sends the same ones every time."""
    if not isinstance(params, dict):
        return None
    picked = {k: v for k in _TOOL_PARAMS if (v := params.get(k)) is not None and v is not False}
    return "tool:" + json.dumps(picked, sort_keys=True, separators=(",", ":")) if picked else None


def template_keys(prompt: str, params: dict | None = None) -> list[str]:
    """The template keys of one request (unkeyed: they never leave the process)."""
    system, user = split_prompt(prompt or "")
    out: list[str] = []
    if system and system.strip():
        out.append("sys:" + normalise(system))
    toks = tokens(user)
    for k in FRAME_TOKENS:
        if len(toks) > k + 2:  # a frame must leave some payload between its ends
            out.append(f"pre{k}:" + " ".join(toks[:k]))
            out.append(f"suf{k}:" + " ".join(toks[-k:]))
    tool = tool_key(params)
    if tool:
        out.append(tool)
    return out


def key_kind(key: str) -> str:
    head = key.split(":", 1)[0]
    return head.rstrip("0123456789")


class Keyring:
    """Keyed fingerprints and shingle hashes under one trust-group key (memoised per distinct string)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a trust-group key needs at least 16 bytes")
        self._key = key
        self.fingerprint = lru_cache(maxsize=1 << 18)(self._fingerprint)
        self._shingle = lru_cache(maxsize=1 << 18)(self._shingle_hash)

    def _fingerprint(self, template_key: str) -> str:
        msg = f"{FINGERPRINT_VERSION}\0{template_key}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    def _shingle_hash(self, shingle: str) -> int:
        h = hashlib.blake2b(shingle.encode(), key=self._key[:64], digest_size=8, person=b"dg-shingle")
        return int.from_bytes(h.digest(), "little")

    def shingle_hashes(self, normalised: str, k: int = SHINGLE) -> np.ndarray:
        """Keyed 64-bit hashes of the word ``k``-shingles of a normalised text (or the text if shorter)."""
        words = normalised.split()
        grams = [" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))]
        return np.array([self._shingle(g) for g in grams if g], dtype=np.uint64)

    def sketch(self, normalised: str, permutations: int = MINHASH_PERMUTATIONS) -> np.ndarray:
        return minhash(self.shingle_hashes(normalised), permutations)


_SEEDS = mix64(np.arange(1, 4 * MINHASH_PERMUTATIONS + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def minhash(hashes: np.ndarray, permutations: int = MINHASH_PERMUTATIONS) -> np.ndarray:
    """The MinHash signature ``[permutations]`` (uint64) of a set of 64-bit hashes: for each seed, the
    minimum of the splitmix64 bijection of ``hash XOR seed`` over the set (vectorised; empty: all ones)."""
    hashes = np.unique(np.asarray(hashes, dtype=np.uint64))
    if not len(hashes):
        return np.full(permutations, np.iinfo(np.uint64).max, dtype=np.uint64)
    seeds = _SEEDS[:permutations]
    return mix64(hashes[None, :] ^ seeds[:, None]).min(axis=1)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Estimated Jaccard similarity of MinHash signatures: ``a`` [k] against ``b`` [k] or [m, k]."""
    a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    return (a == b).mean(axis=-1)


def sketch_to_hex(sig: np.ndarray) -> list[str]:
    return [f"{int(x):016x}" for x in sig]


def sketch_from_hex(values: Sequence[str]) -> np.ndarray:
    return np.array([int(v, 16) for v in values], dtype=np.uint64)


# --------------------------------------------------------------------------------------------------
# Timing and volume


def timing_signature(ts: np.ndarray, account_of: np.ndarray) -> dict[str, float]:
    """Pacing of a campaign from its query times (seconds) and the account of each query: per-account
    inter-arrival quantiles (log10 seconds), the active share of hours of the day and queries per account.
    Sample-size caveat: with fewer than ~30 gaps the quantiles are rough."""
    ts = np.asarray(ts, dtype=np.float64)
    acct = np.asarray(account_of)
    order = np.lexsort((ts, acct))
    ts, acct = ts[order], acct[order]
    same = acct[1:] == acct[:-1]
    gaps = np.maximum(np.diff(ts)[same], 1e-3)
    hours = np.bincount(((ts % 86400.0) // 3600.0).astype(np.int64), minlength=24)
    per_acct = np.unique(acct, return_counts=True)[1] if len(acct) else np.zeros(1)
    q = np.quantile(np.log10(gaps), [0.1, 0.5, 0.9]) if len(gaps) else np.full(3, np.nan)
    return {
        "queries": float(len(ts)),
        "accounts": float(len(per_acct)),
        "queries_per_account_median": float(np.median(per_acct)),
        "gap_log10_s_p10": float(q[0]),
        "gap_log10_s_p50": float(q[1]),
        "gap_log10_s_p90": float(q[2]),
        "gaps": float(len(gaps)),
        "active_hours_share": float((hours > 0).mean()),
    }


def coverage(found: Iterable[str], wanted: Iterable[str]) -> tuple[float, int, int]:
    """Share of ``wanted`` fingerprints among ``found``: (share, matched, wanted)."""
    w = set(wanted)
    if not w:
        return 0.0, 0, 0
    m = len(w & set(found))
    return m / len(w), m, len(w)

"""Watermark keys as people write them: an integer string (``"42"``, ``" 0x2a "``) is that integer.

One parser for every place a key comes in (``--key``, the gateway's settings and key file, a spec's own
key), so ``--key 42``, ``watermark_key = "42"`` and ``key=42`` are the same watermark everywhere. No torch:
the gateway's settings and the command-line options parse keys without loading the watermark's PRF.
"""

from __future__ import annotations


def parse_key(key: int | str) -> int | str:
    """``key`` as an int when it is one or spells one in any base ``int(text, 0)`` reads (surrounding
    whitespace ignored); any other string is returned unchanged (it is hashed, see ``hashing.derive_key``)."""
    if isinstance(key, str):
        try:
            return int(key.strip(), 0)
        except ValueError:
            return key
    return key

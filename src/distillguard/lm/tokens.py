"""Token ids <-> exact bytes, for any HF tokenizer.

Why: APIs report tokens as text plus UTF-8 bytes (OpenAI's ``logprobs``), and grey-box distillation must map
them back to ids exactly. Byte-level BPE vocabularies store each byte as a printable
stand-in character; inverting that table gives a token's exact bytes even when it is half a UTF-8 character,
where ``decode`` would print a replacement character.
"""

from __future__ import annotations


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the others (controls,
    space, ...) for the characters 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_DECODER: dict[str, int] = {c: b for b, c in _byte_level_alphabet().items()}


def is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def token_bytes(tokenizer, token_id: int, byte_level: bool | None = None) -> bytes:
    """The exact bytes one id stands for (special tokens: their text)."""
    raw = tokenizer.convert_ids_to_tokens(int(token_id))
    if byte_level is None:
        byte_level = is_byte_level(tokenizer)
    special = int(token_id) in set(tokenizer.all_special_ids)
    if byte_level and not special and isinstance(raw, str) and raw and all(c in BYTE_DECODER for c in raw):
        return bytes(BYTE_DECODER[c] for c in raw)
    if special and isinstance(raw, str):
        return raw.encode("utf-8")
    return tokenizer.decode([int(token_id)], skip_special_tokens=False).encode("utf-8")


def token_bytes_table(tokenizer) -> dict[bytes, int]:
    """Map each vocabulary entry's exact bytes to its id, so API tokens (text + bytes) find their id."""
    byte_level = is_byte_level(tokenizer)
    table: dict[bytes, int] = {}
    for idx in sorted(tokenizer.get_vocab().values()):
        table.setdefault(token_bytes(tokenizer, idx, byte_level), idx)
    return table


def entry_bytes(entry: dict) -> bytes:
    """An API logprob entry's token bytes (its ``bytes`` list, else its text in UTF-8)."""
    raw = entry.get("bytes")
    return bytes(raw) if raw is not None else str(entry.get("token", "")).encode("utf-8")

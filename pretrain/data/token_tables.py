"""Per-token-id tables for span boundaries (``objectives.TokenTables``), read off the tokenizer once.

A byte-level BPE token (GPT-2's byte alphabet, ours included) is a run of bytes: it starts inside a
character when its first byte is a UTF-8 continuation byte (0b10xxxxxx). Other tokenizers hold text:
SentencePiece's "▁" is a space, its <0xNN> pieces are single bytes, WordPiece's "##" continues a word.
Words are whitespace-delimited, and, as in BERT's basic tokenizer, every punctuation mark, symbol and
CJK ideograph is a word of its own. Added (special) tokens are whole characters and whole words.
"""
from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np
from tokenizers import Tokenizer

from pretrain.objectives.boundaries import TokenTables

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character map (``bytes_to_unicode``), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _is_word_edge(char: str) -> bool:
    """Whitespace, punctuation, a symbol, or a CJK ideograph (each of which BERT splits off as a word)."""
    if char.isspace() or unicodedata.category(char)[0] in "PS":
        return True
    cp = ord(char)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2FA1F
            or 0xF900 <= cp <= 0xFAFF or 0x3000 <= cp <= 0x303F)


def _token_bytes(token: str, byte_level: bool) -> tuple[bytes, bool]:
    """(the token's bytes, whether it continues a word by its spelling, WordPiece's "##")."""
    if byte_level:
        decoder = _byte_decoder()
        return bytes(decoder[c] for c in token), False
    piece = _BYTE_PIECE.match(token)
    if piece:
        return bytes([int(piece.group(1), 16)]), False
    if token.startswith("##") and len(token) > 2:
        return token[2:].encode(), True
    return token.replace("▁", " ").encode(), False


def token_tables(tokenizer: Tokenizer) -> TokenTables:
    size = tokenizer.get_vocab_size()
    added = set(tokenizer.get_added_tokens_decoder())
    tokens = [tokenizer.id_to_token(i) or "" for i in range(size)]
    alphabet = _byte_decoder()
    byte_level = all(c in alphabet for i, t in enumerate(tokens) if i not in added for c in t)
    char_start, word_start, word_end = (np.ones(size, dtype=bool) for _ in range(3))
    for i, token in enumerate(tokens):
        if i in added or not token:
            continue
        raw, continues = _token_bytes(token, byte_level)
        char_start[i] = raw[0] & 0xC0 != 0x80
        text = raw.decode("utf-8", errors="ignore")
        # A token holding only the first bytes of a character: lead bytes E3-E9 start CJK (U+3000-U+9FFF).
        first_is_edge = _is_word_edge(text[0]) if text and raw.decode("utf-8", "replace")[0] == text[0] \
            else 0xE3 <= raw[0] <= 0xE9
        word_start[i] = bool(char_start[i] and not continues and first_is_edge)
        word_end[i] = bool(text) and _is_word_edge(text[-1])
    return TokenTables(char_start, word_start, word_end)

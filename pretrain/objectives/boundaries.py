"""Where a span may begin or end: between whole characters, or between whole words.

With byte-level BPE a token may start inside a multi-byte UTF-8 character (a CJK character is 3
bytes; a small vocabulary splits many of them), and a span cut there decodes to U+FFFD on both sides.
The tokenizer-derived tables below (``pretrain.data.token_tables`` computes them) say, per token id,
whether its text starts a character and whether it starts or ends a word; ``clean_boundaries`` turns
them into the positions of a batch where a span boundary keeps characters (or words) whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Unit = Literal["token", "character", "word"]


@dataclass(frozen=True)
class TokenTables:
    """Per token id (index = id), from the tokenizer's bytes for each token; special tokens are whole
    characters and whole words."""
    char_start: np.ndarray  # [V] bool: the token does not begin inside a UTF-8 character
    word_start: np.ndarray  # [V] bool: it begins a word (whitespace, punctuation or a CJK character first)
    word_end: np.ndarray    # [V] bool: it ends a word (whitespace, punctuation or a CJK character last)

    def __post_init__(self):
        sizes = {len(self.char_start), len(self.word_start), len(self.word_end)}
        if len(sizes) != 1:
            raise ValueError(f"token tables must have one entry per token id, got lengths {sorted(sizes)}")


def clean_boundaries(tokens: np.ndarray, doc_starts: np.ndarray, tables: TokenTables | None,
                     unit: Unit) -> np.ndarray | None:
    """[T + 1] bool: True where a span boundary may sit (before token p; p = T is the end). A document
    that starts with a whole unit starts at one (a piece cut inside a character does not); the end
    qualifies. None when every position qualifies (no tables, or unit "token")."""
    if tables is None or unit == "token":
        return None
    if tokens.max(initial=0) >= len(tables.char_start):
        raise ValueError(f"token id {int(tokens.max())} is outside the token tables ({len(tables.char_start)} ids); "
                         f"build the tables from the tokenizer that made the data")
    clean = np.empty(len(tokens) + 1, dtype=bool)
    clean[:-1] = tables.char_start[tokens]
    if unit == "word":
        word = tables.word_start[tokens]
        word[1:] |= tables.word_end[tokens[:-1]]
        word[doc_starts] = True  # a document's first word starts with it
        clean[:-1] &= word
    clean[-1] = True
    return clean

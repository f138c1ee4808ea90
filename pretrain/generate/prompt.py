"""Text with blanks -> Part A token ids, and the text back with the blanks filled.

A blank is the literal token string of a mask role in the run's tokenizer ("[MASK]", "[sMASK]",
"[gMASK]" unless data.special_tokens renamed them); it becomes that role's id and the text between
blanks is encoded with the tokenizer. Part A is framed as the trainer frames documents: [cls] + text
+ [eos], except that a prompt ending in [gMASK] has no eos (a document-level span runs to the end of
its document, eos included: the model writes it, then eop). Whitespace just before a blank belongs
to the blank: byte-level BPE attaches a word's leading space to the word, so the model writes it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from pretrain.tokens import SpecialTokens

BLANK_ROLES = ("mask", "smask", "gmask")


@dataclass
class Prompt:
    pieces: list[str]  # the text around the blanks: one more piece than blanks
    blanks: list[str]  # the role of each blank, left to right
    part_a: np.ndarray  # int64 token ids, framed, blanks as their role's id


def blank_strings(tokenizer: Tokenizer, special: SpecialTokens) -> dict[str, str]:
    """Token string -> role, for the roles a prompt may use as blanks."""
    return {tokenizer.id_to_token(special[role]): role for role in BLANK_ROLES}


def parse_prompt(text: str, tokenizer: Tokenizer, special: SpecialTokens) -> Prompt:
    strings = blank_strings(tokenizer, special)
    pattern = re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))
    blanks = [strings[found] for found in pattern.findall(text)]
    if not blanks:
        raise ValueError(f"no blank in {text!r}: write {' / '.join(strings)} where the model should write text")
    pieces = [piece.rstrip() for piece in pattern.split(text)]  # trailing whitespace: the blank's, or nothing
    ids = [special.cls]
    for piece, role in zip(pieces, [*blanks, None]):
        ids += tokenizer.encode(piece, add_special_tokens=False).ids if piece else []
        if role is not None:
            ids.append(special[role])
    if not (blanks[-1] == "gmask" and pieces[-1] == ""):
        ids.append(special.eos)
    return Prompt(pieces, blanks, np.array(ids, dtype=np.int64))


def filled_text(prompt: Prompt, fills: list[str], mark: bool = False) -> str:
    """The prompt's text with each blank replaced by its fill (``mark``: shown as [[fill]])."""
    parts = []
    for piece, fill in zip(prompt.pieces, fills):
        if mark:
            stripped = fill.lstrip()
            fill = f"{fill[:len(fill) - len(stripped)]}[[{stripped}]]"
        parts += [piece, fill]
    return "".join(parts) + prompt.pieces[-1]

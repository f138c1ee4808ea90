"""LAMBADA-style cloze examples from held-out text: predict the last word of a passage.

The last word is the final whitespace-delimited run of word characters (at most ``MAX_WORD_CHARS``,
so a clause of a script written without spaces is not taken for a word), before any trailing
punctuation. As in lm-eval's LAMBADA, the word carries its leading space (" word"): context, word and
the punctuation after it are encoded separately, so the word's tokens are exactly what a model
writes after the context. Passages without such a word (Chinese, Japanese) give no example.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from pretrain.tokens import SpecialTokens

MAX_WORD_CHARS = 24
_LAST_WORD = re.compile(rf"\S(\s+\w{{1,{MAX_WORD_CHARS}}})([^\w\s]*)\s*$")


@dataclass
class Cloze:
    tokens: np.ndarray  # [cls] + context + word + rest + [eos] (cls dropped when the context was cut)
    word_start: int  # the word is tokens[word_start:word_start + word_len]
    word_len: int


def split_last_word(text: str) -> tuple[str, str, str] | None:
    """(context, " word", trailing punctuation), or None when the text does not end in a word."""
    found = _LAST_WORD.search(text)
    if found is None:
        return None
    return text[:found.start(1)], found.group(1), found.group(2)


def cloze_example(text: str, tokenizer: Tokenizer, special: SpecialTokens, max_tokens: int) -> Cloze | None:
    """The passage framed as a training document, its context cut from the left to ``max_tokens``."""
    parts = split_last_word(text)
    if parts is None:
        return None
    context, word, rest = (np.array(tokenizer.encode(part, add_special_tokens=False).ids, dtype=np.int64)
                           for part in parts)
    tail = np.concatenate([word, rest, [special.eos]])
    room = max_tokens - len(tail)  # for cls + context
    if room < 2:
        return None
    head = np.concatenate([[special.cls], context]) if len(context) < room else context[len(context) - room:]
    return Cloze(np.concatenate([head, tail]).astype(np.int64), len(head), len(word))

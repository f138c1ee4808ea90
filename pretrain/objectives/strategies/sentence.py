"""[sMASK] whole sentences: GLM's sentence-level objective (Du et al. 2022, §2.3.2 "Multi-Task
Pretraining": spans must be full sentences, covering 15% of the original tokens).

Sentences are drawn per row, in random order, until the row's ``mask_ratio`` is reached in
expectation (``spans.take_units``); a document of several sentences always keeps one of them (drawn)
unmasked, so only a single-sentence document can be masked whole. (Drawing per document and always
taking the first drawn sentence, as before, masked about 35% of short-document rows at 15%.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.infill import Spans
from pretrain.objectives.spans import region_units, snap, take_units
from pretrain.objectives.strategies.base import Strategy, check_fraction, register, renewal_room

# Characters that close a sentence (reference §2.3 set, CJK included), and what may trail them.
SENTENCE_END_CHARS = frozenset(".?!;:。？！；…．｡")
_CLOSERS = "\"'”’)]}」』）》〉 \t\r\u3000"


def sentence_end_ids(token_texts: Sequence[str]) -> np.ndarray:
    """Ids (indices into ``token_texts``, the decoded text of each id) of tokens that end a sentence:
    the text, without trailing spaces and closing quotes/brackets, ends in sentence punctuation, or
    it contains a line break. Whole-token tests avoid GLM's "any token containing '.'" rule."""
    ids = [i for i, text in enumerate(token_texts)
           if "\n" in text or (text.rstrip(_CLOSERS)[-1:] in SENTENCE_END_CHARS and text.rstrip(_CLOSERS))]
    return np.array(ids, dtype=np.int64)


@dataclass
class SentenceConfig:
    # Fraction of each row's tokens to cover with whole sentences (in expectation).
    mask_ratio: float = 0.15

    def validate(self) -> None:
        check_fraction("mask_ratio", self.mask_ratio)


@register("sentence")
class SentenceStrategy(Strategy):
    """A sentence runs from its region start or the token after a sentence end up to and including
    the next sentence end, or to the region end (a trailing fragment counts)."""
    Config = SentenceConfig

    def __init__(self, cfg: SentenceConfig, context):
        super().__init__(cfg, context)
        if context.sentence_end_ids is None:
            raise ValueError("the sentence strategy needs the sentence-end token ids: pass "
                             "sentence_end_ids=pretrain.objectives.sentence_end_ids(<decoded token texts>)")
        end_ids = np.asarray(context.sentence_end_ids, dtype=np.int64)
        # is_end[t]: token t ends a sentence; its last entry (no end id) answers for every larger id.
        # A table lookup: np.isin hashed the row's tokens on every call (half of the strategy's cost).
        self.is_end = np.zeros(int(end_ids.max(initial=-1)) + 2, dtype=bool)
        self.is_end[end_ids] = True

    @classmethod
    def room(cls, cfg: SentenceConfig, n_tokens: int) -> int:
        # Sentences are assumed no shorter than GLM's Poisson(3) token spans on average.
        return renewal_room(cfg.mask_ratio, 3.0, 39, n_tokens)

    def spans(self, docs):
        ends_here = self.is_end[np.minimum(docs.tokens, len(self.is_end) - 1)]
        cut_before = np.zeros(len(docs.tokens), dtype=bool)
        cut_before[1:] = ends_here[:-1]
        starts, ends = region_units(docs, cut_before)
        sent_doc = docs.doc_of(starts)
        # A document of several sentences keeps one, drawn uniformly, out of the draw.
        first = np.searchsorted(sent_doc, np.arange(len(docs.start)))
        n_sentences = np.bincount(sent_doc, minlength=len(docs.start))
        kept = (rng.uniform(docs.key, self.stream("kept")) * n_sentences).astype(np.int64)
        index = np.arange(len(starts)) - first[sent_doc]
        candidate = (n_sentences[sent_doc] == 1) | (index != kept[sent_doc])
        chosen = take_units(docs, sent_doc, ends - starts, candidate, self.cfg.mask_ratio,
                            self.stream("order"), self.stream("round"))
        start, end = snap(docs, starts[chosen], ends[chosen], self.stream("snap"))
        return Spans(start, end, np.full(len(start), self.special.smask)), 0

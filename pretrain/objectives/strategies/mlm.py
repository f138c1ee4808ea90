"""BERT's masked language model (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", §3.1 and Appendix A.1): 15% of the tokens are chosen;
a chosen token becomes [MASK] 80% of the time, a random token 10%, stays itself 10%, and the model
predicts the original at those positions. The GLM paper's baseline (Du et al. 2022, Table 2).

"my dog is hairy", choosing "hairy": "my dog is [MASK]" (80%), "my dog is apple" (10%), "my dog is
hairy" (10%). Everything is Part A (bidirectional, no Part B): each chosen token is an inline span of
length 1 whose mask id is its replacement. With whole-character or whole-word boundaries
(``objective.boundaries``) the chosen units are whole characters or words (whole-word masking), their
tokens replaced one by one as in BERT's release; the count is 15% of each row's tokens in expectation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.infill import Spans
from pretrain.objectives.spans import region_units, take_units
from pretrain.objectives.strategies.base import Strategy, check_fraction, register


@dataclass
class MLMConfig:
    # Fraction of each row's tokens to predict (in expectation).
    mask_ratio: float = 0.15
    # Of the chosen tokens: replaced by [MASK], by a random token; the rest stay themselves.
    mask_prob: float = 0.8
    random_prob: float = 0.1  # of the chosen tokens, replaced by a random ordinary token

    def validate(self) -> None:
        check_fraction("mask_ratio", self.mask_ratio)
        check_fraction("mask_prob", self.mask_prob, low_open=False, high_open=False)
        check_fraction("random_prob", self.random_prob, low_open=False, high_open=False)
        if self.mask_prob + self.random_prob > 1 + 1e-9:
            raise ValueError(f"mask_prob + random_prob = {self.mask_prob + self.random_prob} must be <= 1")


@register("mlm")
class MLMStrategy(Strategy):
    Config = MLMConfig

    def __init__(self, cfg: MLMConfig, context):
        super().__init__(cfg, context)
        if context.vocab_size is None:
            raise ValueError("the mlm strategy replaces 10% of its tokens by random ones: the collator needs "
                             "vocab_size")
        # Random replacements are ordinary tokens, never a special role.
        self.ordinary = np.setdiff1d(np.arange(context.vocab_size), list(self.special.roles().values()))

    @classmethod
    def room(cls, cfg: MLMConfig, n_tokens: int) -> int:
        return 0  # every token stays where it is

    def spans(self, docs):
        starts, ends = region_units(docs, None if docs.boundary is None else docs.boundary[:-1])
        unit_doc = docs.doc_of(starts)
        # A region's first or last unit may be a piece of a character cut off by the window: never masked.
        whole = np.ones(len(starts), dtype=bool) if docs.boundary is None else \
            docs.boundary[starts] & docs.boundary[ends]
        chosen = take_units(docs, unit_doc, ends - starts, whole, self.cfg.mask_ratio, self.stream("order"),
                            self.stream("round"))
        return self.replace(docs, starts[chosen], ends[chosen]), 0

    def replace(self, docs, starts, ends) -> Spans:
        """One inline span per token of the chosen units, with its 80/10/10 replacement."""
        lengths = ends - starts
        token = np.arange(int(lengths.sum())) + (starts - np.cumsum(lengths) + lengths).repeat(lengths)
        doc = docs.doc_of(token)
        row_start = docs.start[np.searchsorted(docs.row, docs.row[doc])]
        key, in_row = docs.row_key[doc], token - row_start                   # keyed by the place in the row
        how = rng.uniform(key, self.stream("replace"), in_row)
        random_ids = self.ordinary[(rng.uniform(key, self.stream("random"), in_row) * len(self.ordinary)).astype(np.int64)]
        keep = docs.tokens[token]
        replacement = np.where(how < self.cfg.mask_prob, self.special.mask,
                               np.where(how < self.cfg.mask_prob + self.cfg.random_prob, random_ids, keep))
        return Spans(token, token + 1, replacement, inline=np.ones(len(token), dtype=bool))

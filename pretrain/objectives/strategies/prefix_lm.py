"""Prefix language modelling (Raffel et al. 2020, T5 §3.2.2 / §3.3.1 "prefix LM" objective; UL2's
S-denoiser): each document is split at a point drawn uniformly over its whole characters; the prefix
is read bidirectionally (Part A, ending in [gMASK]) and the suffix predicted left to right (Part B),
as docs/contracts.md §2: Part B = sop + text[d:], targets text[d:] + eop (no eop loss at a cut).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.spans import Documents, pick_boundaries
from pretrain.objectives.strategies.base import DocumentRoom, Strategy, gmask_spans, register


@dataclass
class PrefixLMConfig(DocumentRoom):
    pass


def prefix_split(docs: Documents, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of each maskable document's suffix span: the split drawn uniformly over the clean
    positions of [lo, end - 1], so the prefix may be empty and the suffix never is."""
    ok = np.flatnonzero(docs.maskable >= 1)
    lo, end = docs.lo[ok], docs.end[ok]
    start = pick_boundaries(docs, lo, end - 1, rng.uniform(docs.key[ok], stream))
    return start, end


@register("prefix_lm")
class PrefixLMStrategy(Strategy):
    Config = PrefixLMConfig

    @classmethod
    def room(cls, cfg: PrefixLMConfig, n_tokens: int) -> int:
        return cfg.document_room(n_tokens)

    def spans(self, docs):
        start, end = prefix_split(docs, self.stream("split"))
        return gmask_spans(start, end, self.special.gmask), 0

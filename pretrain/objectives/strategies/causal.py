"""Plain left-to-right language modelling in GLM's layout (the GPT objective, Radford et al. 2018;
GLM-130B's [gMASK] with an empty prefix, Zeng et al. 2022): one [gMASK] span over the whole text after cls, so Part A is
[cls] [gMASK] and Part B predicts the document up to its eos (docs/contracts.md §2 with d = 0; a piece
cut from a longer document trains no eop at the cut).
"""
from __future__ import annotations

from dataclasses import dataclass

from pretrain.objectives.strategies.base import DocumentRoom, Strategy, gmask_spans, register


@dataclass
class CausalConfig(DocumentRoom):
    pass


@register("causal")
class CausalStrategy(Strategy):
    Config = CausalConfig

    @classmethod
    def room(cls, cfg: CausalConfig, n_tokens: int) -> int:
        return cfg.document_room(n_tokens)

    def spans(self, docs):
        ok = docs.maskable >= 1
        start, end = docs.lo[ok], docs.end[ok]
        return gmask_spans(start, end, self.special.gmask), 0

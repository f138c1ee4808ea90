"""Fill in the middle (Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the
Middle", §3 and Appendix D): with probability ``fim_rate`` a document is cut at two points drawn
uniformly over its characters into prefix, middle, suffix and reordered, half of the time (``spm_rate``)
as SPM; the others stay plain left-to-right text. In the paper's tokens:

    PSM  <PRE> prefix <SUF> suffix <MID> middle <EOT>
    SPM  <PRE> <SUF> suffix <MID> prefix middle <EOT>

Here the reordered text is Part B, one block whose pieces are opened by the sentinels
(<|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>) and closed by eop (the paper's <EOT>); Part A is the
document's cls followed by the pieces' sentinels (SPM's leading <PRE> is an empty piece). A plain
document is causal: [cls] [gMASK] | sop text. The suffix always keeps the last token, so a piece cut
from a longer document keeps its open end inside the block (no eop is trained at the cut).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.infill import Spans
from pretrain.objectives.spans import pick_boundaries
from pretrain.objectives.strategies.base import DocumentRoom, Strategy, check_fraction, register

ROLES = {"fim_prefix": "<|fim_prefix|>", "fim_middle": "<|fim_middle|>", "fim_suffix": "<|fim_suffix|>"}


@dataclass
class FIMConfig(DocumentRoom):
    # Fraction of documents that are reordered (the paper's FIM rate); the rest stay left to right.
    fim_rate: float = 0.5
    # Fraction of the reordered documents in SPM order (the others PSM).
    spm_rate: float = 0.5

    def validate(self) -> None:
        super().validate()
        check_fraction("fim_rate", self.fim_rate, low_open=False, high_open=False)
        check_fraction("spm_rate", self.spm_rate, low_open=False, high_open=False)


@register("fim")
class FIMStrategy(Strategy):
    Config = FIMConfig
    special_tokens = ROLES

    def __init__(self, cfg: FIMConfig, context):
        super().__init__(cfg, context)
        self.pre, self.mid, self.suf = (self.special[role] for role in ROLES)

    @classmethod
    def room(cls, cfg: FIMConfig, n_tokens: int) -> int:
        return cfg.document_room(n_tokens, per_document=6)  # three pieces: 2 tokens each

    def spans(self, docs):
        ok = np.flatnonzero(docs.maskable >= 1)
        lo, end = docs.lo[ok], docs.end[ok]
        u = rng.uniform(docs.key[ok][:, None], self.stream("split"), np.arange(4))     # [D, 4]
        fim = u[:, 0] < self.cfg.fim_rate
        spm = fim & (u[:, 1] < self.cfg.spm_rate)
        a, b = (pick_boundaries(docs, lo, end - 1, u[:, i]) for i in (2, 3))
        i, j = np.minimum(a, b), np.maximum(a, b)
        return self.arrange(lo, i, j, end, fim, spm), 0

    def arrange(self, lo, i, j, end, fim, spm) -> Spans:
        """Each document's pieces as spans in start order: plain [lo, end); PSM prefix [lo, i), middle
        [i, j), suffix [j, end) in block order prefix, suffix, middle; SPM <PRE> (empty at lo), prefix +
        middle [lo, j), suffix [j, end) in block order <PRE>, suffix, prefix + middle."""
        gmask, sop = self.special.gmask, self.special.sop
        pieces = [  # (start, end, sentinel, place in the block) per document and slot, -1: no piece
            (lo, np.where(fim, np.where(spm, lo, i), end), np.where(fim, self.pre, gmask), 0),
            (np.where(fim, np.where(spm, lo, i), -1), np.where(fim, j, -1), self.mid, 2),
            (np.where(fim, j, -1), np.where(fim, end, -1), self.suf, 1),
        ]
        slots = []
        for start, stop, sentinel, place in pieces:
            sentinel = np.broadcast_to(sentinel, start.shape)
            opener = np.where(fim, sentinel, sop)
            slots.append(np.stack([start, stop, sentinel, opener, np.full(len(start), place)]))
        table = np.stack(slots, axis=1)                                      # [5, 3 slots, D]
        table = table.reshape(5, -1, order="F")                               # documents in order
        table = table[:, table[0] >= 0]
        start, stop, sentinel, opener, place = table
        # Empty pieces come first at a shared start (SPM's <PRE>, an empty PSM prefix).
        order = np.lexsort((stop - start > 0, start))
        start, stop, sentinel, opener, place = (c[order] for c in (start, stop, sentinel, opener, place))
        # A plain document is a [gMASK]-role span, as in causal (strategies.base.gmask_spans).
        return Spans(start, stop, sentinel, opener=opener, chain=place, prolong=sentinel == gmask)

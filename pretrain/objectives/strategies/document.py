"""[gMASK] one long span per document: GLM's document-level objective (Du et al. 2022, §2.3.2: a
single span whose length is drawn uniformly from 50%-100% of the document); GLM-130B's [gMASK]
(Zeng et al. 2022, §2.1) takes it as a suffix, so the span runs to the document's end.

A suffix (probability ``suffix_prob``) runs to the end of the document, eos included (docs/contracts.md
§2: Part B = sop + text[d:], targets text[d:] + eop; on a piece cut from a longer document
that eop is not trained); otherwise the span is a long infill placed uniformly with text after it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.spans import snap
from pretrain.objectives.strategies.base import DocumentRoom, Strategy, check_fraction, gmask_spans, register


@dataclass
class DocumentConfig(DocumentRoom):
    # The span covers a uniform fraction in [min_ratio, 1] of the document's text after cls.
    min_ratio: float = 0.5
    # Probability that the span is a suffix (runs to the document's end) rather than an infill.
    suffix_prob: float = 0.5

    def validate(self) -> None:
        super().validate()
        check_fraction("min_ratio", self.min_ratio, high_open=False)
        check_fraction("suffix_prob", self.suffix_prob, low_open=False, high_open=False)


@register("document")
class DocumentStrategy(Strategy):
    Config = DocumentConfig
    streams = {"span": 6}  # the id these draws always had: outputs stay as they were

    @classmethod
    def room(cls, cfg: DocumentConfig, n_tokens: int) -> int:
        return cfg.document_room(n_tokens)

    def spans(self, docs):
        ok = docs.maskable >= 1
        lo, end = docs.lo[ok], docs.end[ok]
        n = end - lo                                                                  # [D] text after cls
        u = rng.uniform(docs.key[ok][:, None], self.stream("span"), np.arange(3))    # [D, 3]
        g_min = np.maximum(1, np.ceil(self.cfg.min_ratio * n - 1e-9).astype(np.int64))
        g = g_min + (u[:, 0] * (n - g_min + 1)).astype(np.int64)
        # An infill leaves at least the last token after it; a span of the whole text is a suffix.
        suffix = (u[:, 1] < self.cfg.suffix_prob) | (g == n)
        start = np.where(suffix, end - g, lo + (u[:, 2] * np.maximum(n - g, 1)).astype(np.int64))
        start, end = snap(docs, start, start + g, self.stream("snap"))
        return gmask_spans(start, end, self.special.gmask), 0

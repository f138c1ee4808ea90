"""[MASK] spans with Poisson lengths: GLM's blank infilling (Du et al. 2022, "GLM: General Language
Model Pretraining with Autoregressive Blank Infilling", §2.1-2.2: spans of length ~ Poisson(3) until
15% of the tokens are covered). ``sentinels: true`` is the paper's Table 6 ablation "sentinel tokens
instead of [MASK]": span k of a document gets its own <extra_id_k> (T5's sentinels) in Part A.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.objectives.infill import Spans
from pretrain.objectives.spans import index_in_group, length_cdf, snap, token_spans
from pretrain.objectives.strategies.base import (SENTINELS, N_SENTINELS, Strategy, check_fraction,
                                                 register, renewal_room)


@dataclass
class TokenConfig:
    # Fraction of the tokens to cover; span lengths ~ Poisson(poisson_lambda) truncated to
    # [1, max_span_length].
    mask_ratio: float = 0.15
    poisson_lambda: float = 3.0  # mean of the (untruncated) span-length distribution
    max_span_length: int = 39  # longest span
    # One sentinel per span (<extra_id_k>) instead of one [MASK] for all (GLM Table 6 ablation).
    sentinels: bool = False

    def validate(self) -> None:
        check_fraction("mask_ratio", self.mask_ratio)
        if not self.poisson_lambda > 0:
            raise ValueError(f"poisson_lambda={self.poisson_lambda} must be > 0")
        if self.max_span_length < 1:
            raise ValueError(f"max_span_length={self.max_span_length} must be >= 1")


@register("token")
class TokenStrategy(Strategy):
    """Spans drawn per row until ``mask_ratio`` of its tokens is covered, placed per document
    (``spans.token_spans``), each replaced by [MASK] (or its sentinel)."""
    Config = TokenConfig
    streams = {"length": 2, "place": 3}  # the ids these draws always had: outputs stay as they were

    def __init__(self, cfg: TokenConfig, context):
        super().__init__(cfg, context)
        self.cdf = length_cdf(cfg.poisson_lambda, cfg.max_span_length)
        self.sentinels = self.sentinel_ids() if cfg.sentinels else None

    @classmethod
    def declared_tokens(cls, cfg: TokenConfig) -> dict[str, str]:
        return dict(SENTINELS) if cfg.sentinels else {}

    @classmethod
    def room(cls, cfg: TokenConfig, n_tokens: int) -> int:
        return renewal_room(cfg.mask_ratio, cfg.poisson_lambda, cfg.max_span_length, n_tokens)

    def spans(self, docs):
        start, end, fallbacks = token_spans(docs, self.cfg.mask_ratio, self.cdf, self.stream("length"),
                                            self.stream("place"))
        start, end = snap(docs, start, end, self.stream("snap"))
        if self.sentinels is None:
            return Spans(start, end, np.full(len(start), self.special.mask)), fallbacks
        k = index_in_group(docs.doc_of(start))
        return Spans(start, end, self.sentinels[k % N_SENTINELS]), fallbacks

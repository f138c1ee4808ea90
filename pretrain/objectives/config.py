"""``ObjectiveConfig``: which masking strategies, in which mixture, with which knobs (flat, typed)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

STRATEGY_NAMES = ("token", "sentence", "document", "causal")

# Named mixtures of the GLM papers: GLM-Base/Large (token only), GLM-10B (token/sentence/document),
# GLM-130B (30% [MASK], 70% [gMASK]).
PRESETS: dict[str, dict[str, float]] = {
    "glm": {"token": 1.0},
    "glm-10b": {"token": 0.5, "sentence": 0.3, "document": 0.2},
    "glm-130b": {"token": 0.3, "document": 0.7},
}


@dataclass
class ObjectiveConfig:
    # A preset (glm, glm-10b, glm-130b), one strategy (token, sentence, document, causal), or
    # "mixture" with explicit weights in `mixture`.
    strategy: str = "glm"
    # Strategy name -> weight (any positive scale, normalised); only with strategy == "mixture".
    mixture: dict[str, float] = field(default_factory=dict)
    # "batch": one strategy per global batch, as GLM does; "sample": one per sample (row).
    mixture_level: Literal["batch", "sample"] = "batch"
    # Part-B blocks in random order (GLM) or left to right (ablation).
    shuffle_order: bool = True
    # Block positions 1..len+1 inside each Part-B block (GLM), or all 1 (ablation).
    block_positions: bool = True
    # "packed": each document is its own segment (no cross-document attention); "legacy": the whole
    # row is one GLM sample (one segment, as the original GLM).
    layout: Literal["packed", "legacy"] = "packed"
    # token ([MASK]): fraction of tokens to cover; span lengths ~ Poisson(lambda) truncated to
    # [1, max_span_length].
    mask_ratio: float = 0.15
    poisson_lambda: float = 3.0  # token: mean span length
    max_span_length: int = 39  # token: longest span
    # sentence ([sMASK]): fraction of tokens to cover with whole sentences.
    sentence_ratio: float = 0.15
    # document ([gMASK]): one span of [min_ratio, 1] of the document; a suffix with probability
    # suffix_prob, otherwise a long infill placed uniformly.
    document_min_ratio: float = 0.5
    document_suffix_prob: float = 0.5  # document: probability that the span is a suffix
    # document and causal take one span (2 extra tokens) per document: raw_length reserves room
    # for one document per this many raw tokens. Rows of shorter documents may overflow and lose
    # spans (collator.stats["overflow_rows"]); lower it for corpora of very short documents.
    tokens_per_document: int = 64

    def weights(self) -> dict[str, float]:
        """Normalised strategy -> probability, only strategies with positive weight, fixed order."""
        if self.strategy == "mixture":
            raw = self.mixture
        elif self.strategy in PRESETS:
            raw = PRESETS[self.strategy]
        else:
            raw = {self.strategy: 1.0}
        total = sum(raw.values())
        return {name: raw[name] / total for name in STRATEGY_NAMES if raw.get(name, 0) > 0}

    def validate(self) -> None:
        known = (*PRESETS, *STRATEGY_NAMES, "mixture")
        if self.strategy not in known:
            raise ValueError(f"strategy={self.strategy!r} is unknown; use one of {list(known)}")
        if self.strategy == "mixture":
            unknown = sorted(set(self.mixture) - set(STRATEGY_NAMES))
            if unknown:
                raise ValueError(f"mixture has unknown strategy name(s) {unknown}; "
                                 f"valid names are {list(STRATEGY_NAMES)}")
            bad = {k: v for k, v in self.mixture.items() if not v >= 0}
            if bad or sum(self.mixture.values()) <= 0:
                raise ValueError(f"mixture={self.mixture!r} needs non-negative weights with a positive sum")
        elif self.mixture:
            raise ValueError(f"mixture={self.mixture!r} is only used with strategy='mixture', "
                             f"not strategy={self.strategy!r}; remove it or set strategy: mixture")
        for name in ("mask_ratio", "sentence_ratio"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name}={value} must lie in (0, 1)")
        if not 0 < self.document_min_ratio <= 1:
            raise ValueError(f"document_min_ratio={self.document_min_ratio} must lie in (0, 1]")
        if not 0 <= self.document_suffix_prob <= 1:
            raise ValueError(f"document_suffix_prob={self.document_suffix_prob} must lie in [0, 1]")
        if not self.poisson_lambda > 0:
            raise ValueError(f"poisson_lambda={self.poisson_lambda} must be > 0")
        if self.tokens_per_document < 2:
            raise ValueError(f"tokens_per_document={self.tokens_per_document} must be >= 2 "
                             f"(a document with a span has at least 2 tokens)")
        if self.max_span_length < 1:
            raise ValueError(f"max_span_length={self.max_span_length} must be >= 1")

"""T5's span corruption in decoder form (Raffel et al. 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer", §3.1.4 and Fig. 2; the noise mask of its
``random_spans_noise_mask``: mean span length 3, 15% of the tokens).

Fig. 2: "Thank you for inviting me to your party last week." becomes the input "Thank you <X> me to
your party <Y> week." and the target "<X> for inviting <Y> last <Z>". Here Part A is the input (one
sentinel <extra_id_k> per span, in order) and Part B is one block holding ``sentinel_k span_k`` in
order: inputs "<X> for inviting <Y> last", targets "for inviting <Y> last <eop>" (eop plays the
final sentinel's part). Each span's Part-B tokens take its sentinel's position (GLM's 2-D positions).

Per document (a segment of its own, not a 512-token example): noise = ratio * n rounded at random
(floor(ratio * n + u), so short documents keep the mean rate where T5's round() would give them one
span each), m = round(noise / mean) spans (at least 1); noise and non-noise lengths are uniformly
random compositions, as T5's; the first and last gaps may be empty (T5 rolls its mask for the same
reason: without it the last span always ends the text). More than 100 spans reuse the sentinels in
order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.infill import Spans, offsets
from pretrain.objectives.spans import Documents, compositions, index_in_group, snap
from pretrain.objectives.strategies.base import (N_SENTINELS, SENTINELS, Strategy, check_fraction,
                                                 register)


@dataclass
class T5Config:
    # Fraction of each document's tokens to corrupt (T5's noise_density).
    mask_ratio: float = 0.15
    # Mean corrupted span length (T5's mean_noise_span_length).
    mean_span_length: float = 3.0

    def validate(self) -> None:
        check_fraction("mask_ratio", self.mask_ratio)
        if not (math.isfinite(self.mean_span_length) and self.mean_span_length >= 1):
            raise ValueError(f"mean_span_length={self.mean_span_length} must be >= 1")


def corruption_room(mask_ratio: float, mean_span_length: float, n_tokens: int) -> int:
    """2 per span, about n r / mu spans (fixed by the rounding, not drawn) with slack for the spans that
    rounding adds to short documents; rows of many very short documents may still overflow (counted)."""
    spans = n_tokens * mask_ratio / mean_span_length
    return 2 * math.ceil(spans + 2 * math.sqrt(spans) + 2)


def span_corruption(docs: Documents, mask_ratio: float, mean_span_length: float, streams: dict) -> tuple:
    """(start, end) of T5 noise spans in every document's maskable region, sorted."""
    n = docs.maskable                                                           # [D]
    noise = np.floor(n * mask_ratio + rng.uniform(docs.key, streams["count"])).astype(np.int64)
    noise = np.clip(noise, 0, np.maximum(n - 1, 0))
    spans = np.where(noise > 0, np.maximum(1, np.rint(noise / mean_span_length)), 0).astype(np.int64)
    spans = np.minimum(spans, n - noise + 1)             # spans need a gap between them
    noise_len = compositions(noise, spans, docs.key, streams["noise"])          # [K]
    # Gaps: spans + 1 parts of the clean tokens, the first and last possibly empty.
    has = spans > 0
    gap_parts = spans + has
    gap_len = compositions(n - noise + 2, gap_parts, docs.key, streams["gaps"])
    first_gap = offsets(gap_parts)[:-1][has]
    gap_len[first_gap] -= 1
    gap_len[first_gap + spans[has]] -= 1
    span_doc = np.arange(len(n)).repeat(spans)
    # Gap k precedes span k; each document with spans holds one more gap than spans.
    gap_index = np.arange(len(span_doc)) + np.arange(int(has.sum())).repeat(spans[has])
    before = gap_len[gap_index] + noise_len
    covered = before.cumsum() - noise_len                   # clean + noise tokens before each span, flat
    covered -= (covered - gap_len[gap_index])[np.searchsorted(span_doc, span_doc)]  # per document
    start = docs.lo[span_doc] + covered
    return start, start + noise_len


def sentinel_spans(docs: Documents, start: np.ndarray, end: np.ndarray, sentinels: np.ndarray) -> Spans:
    """T5's form of the spans: sentinel k in Part A and as the opener of span k's text, one Part-B
    block per document (the spans in order)."""
    k = index_in_group(docs.doc_of(start))
    sentinel = sentinels[k % N_SENTINELS]
    return Spans(start, end, sentinel, opener=sentinel, chain=k)


@register("t5")
class T5Strategy(Strategy):
    Config = T5Config
    special_tokens = SENTINELS

    def __init__(self, cfg: T5Config, context):
        super().__init__(cfg, context)
        self.sentinels = self.sentinel_ids()
        self.noise_streams = {p: self.stream(p) for p in ("count", "noise", "gaps")}

    @classmethod
    def room(cls, cfg: T5Config, n_tokens: int) -> int:
        return corruption_room(cfg.mask_ratio, cfg.mean_span_length, n_tokens)

    def spans(self, docs):
        start, end = span_corruption(docs, self.cfg.mask_ratio, self.cfg.mean_span_length, self.noise_streams)
        start, end = snap(docs, start, end, self.stream("snap"))
        return sentinel_spans(docs, start, end, self.sentinels), 0

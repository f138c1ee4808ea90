"""Several samples in one fixed-length row: segments, Part-B order, room for Part B, the mask rule.

A row is ``[A_0; B_0; A_1; B_1; ...; padding]``. In the packed layout every document is its own
segment (no attention across documents); in the legacy layout the whole row is one segment, as in
the original GLM. Rows never exceed ``seq_len``: ``raw_length`` reserves room for Part B up front,
and the rare row that still overflows loses its last spans (the text stays, as context; counted).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.config import ObjectiveConfig
from pretrain.objectives.infill import Spans
from pretrain.objectives.strategies import STRATEGIES


@dataclass
class TextSample:
    sample_id: int                 # global sample id (Megatron consumed_samples order)
    documents: list[np.ndarray]    # int token arrays: documents or cut pieces of one, in order; a piece
                                   # that starts a document begins with cls, one that ends it ends with eos
    language: str = ""
    # Instruction samples (prompt, response): per document piece, 0 for plain text, or k > 0 when tokens
    # [0, k) are the prompt and [k, len) the response (laid out as one [gMASK] span over the response).
    prompt_lengths: list[int] | None = None


def raw_length(cfg: ObjectiveConfig, seq_len: int) -> int:
    """Raw tokens per row such that Part B (2 extra tokens per span for most strategies) fits in
    ``seq_len``: the room of the most demanding strategy of the mixture (the bound grows with the
    text, so sizing it for ``seq_len`` tokens is conservative)."""
    room = max(STRATEGIES[name].room(cfg.section(name), seq_len) for name in cfg.weights())
    length = seq_len - room
    if length < 2:
        raise ValueError(f"seq_len={seq_len} leaves no room for text after reserving {room} "
                         f"tokens for Part B; use a larger seq_len")
    return length


def segments(doc_lengths: np.ndarray, doc_rows: np.ndarray, n_rows: int, layout: str):
    """(segment lengths, segment rows): one segment per document (packed) or per row (legacy)."""
    if layout == "packed":
        return doc_lengths, doc_rows
    return np.bincount(doc_rows, weights=doc_lengths, minlength=n_rows).astype(np.int64), np.arange(n_rows)


def overflow_keep(span_row: np.ndarray, span_growth: np.ndarray, row_text: np.ndarray, seq_len: int) -> np.ndarray:
    """Mask of spans to keep so that each row fits: drops a row's last spans that add tokens until it
    does (spans that add none, MLM's replaced tokens, always stay). ``span_growth``: ``Spans.growth()``."""
    row_growth = np.bincount(span_row, weights=span_growth, minlength=len(row_text))
    excess = row_text + row_growth - seq_len                                           # [R]
    after = row_growth.cumsum()[span_row] - span_growth.cumsum()                       # [K] growth of later spans
    return (span_growth == 0) | (after >= excess[span_row])


def part_b_rank(span_seg: np.ndarray, span_key: np.ndarray, shuffle: bool) -> np.ndarray:
    """Part-B slot of every block inside its segment: uniform random permutation, or left to right.

    ``span_seg`` (one entry per block) is non-decreasing; ``span_key`` is the random key of each
    block's row (packed: of its document)."""
    n = len(span_seg)
    first = span_seg.searchsorted(span_seg)                                           # [K]
    index = np.arange(n) - first
    if not shuffle:
        return index
    order = np.argsort(span_seg + rng.uniform(span_key, rng.STREAM_ORDER, index))     # grouped by segment
    rank = np.empty(n, dtype=np.int64)
    rank[order] = index
    return rank


def order_part_b(spans: Spans, span_seg: np.ndarray, span_key: np.ndarray, shuffle: bool) -> None:
    """Set ``spans.rank`` and ``spans.closes``: blocks (a span with chain 0 and the spans that join it)
    are ordered by ``part_b_rank``; inside a block its spans follow their chain; inline spans come
    last. A block's last span closes it with eop."""
    if spans.chain is None and spans.inline is None:
        spans.rank = part_b_rank(span_seg, span_key, shuffle)
        return
    inline = np.zeros(len(spans), dtype=bool) if spans.inline is None else spans.inline
    chain = np.zeros(len(spans), dtype=np.int64) if spans.chain is None else spans.chain
    heads = np.flatnonzero(~inline & (chain == 0))
    in_b = np.flatnonzero(~inline)
    block = np.zeros(len(spans), dtype=np.int64)
    block[in_b] = np.searchsorted(heads, in_b, side="right") - 1        # the last head at or before the span
    block_rank = np.zeros(len(spans), dtype=np.int64)
    block_rank[in_b] = part_b_rank(span_seg[heads], span_key[heads], shuffle)[block[in_b]]
    # Sort by (segment, inline, block rank, chain): the position inside the segment is the rank.
    key = np.lexsort((chain, block_rank, inline, span_seg))
    rank = np.empty(len(spans), dtype=np.int64)
    rank[key] = np.arange(len(spans)) - span_seg.searchsorted(span_seg[key])
    spans.rank = rank
    last_in_block = np.zeros(len(spans), dtype=bool)
    block_last = np.full(len(heads), -1)
    np.maximum.at(block_last, block[in_b], chain[in_b])
    last_in_block[in_b] = chain[in_b] == block_last[block[in_b]]
    spans.closes = last_in_block


def attention_matrix(segment_ids, part_a):
    """Dense reference of docs/contracts.md §4, bool [..., S, S] (query, key): q attends k iff
    seg[q] == seg[k] != -1 and (part_a[k] or k <= q); a padding token attends only to itself.
    Accepts numpy arrays or torch tensors and returns the same kind."""
    if type(segment_ids).__module__.startswith("torch"):
        import torch
        dense = attention_matrix(segment_ids.cpu().numpy(), part_a.cpu().numpy())
        return torch.from_numpy(dense).to(segment_ids.device)
    seg, a = np.asarray(segment_ids), np.asarray(part_a, dtype=bool)
    size = seg.shape[-1]
    causal = np.tril(np.ones((size, size), dtype=bool))
    same = (seg[..., :, None] == seg[..., None, :]) & (seg[..., :, None] != -1)
    pad_self = (seg[..., :, None] == -1) & np.eye(size, dtype=bool)
    return same & (a[..., None, :] | causal) | pad_self

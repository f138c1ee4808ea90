"""Several samples in one fixed-length row: segments, Part-B order, room for Part B, the mask rule.

A row is ``[A_0; B_0; A_1; B_1; ...; padding]``. In the packed layout every document is its own
segment (no attention across documents); in the legacy layout the whole row is one segment, as in
the original GLM. Rows never exceed ``seq_len``: ``raw_length`` reserves room for Part B up front,
and the rare row that still overflows loses its last spans (the text stays, as context; counted).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pretrain.objectives import rng
from pretrain.objectives.config import ObjectiveConfig
from pretrain.objectives.strategies import expected_spans


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
    """Raw tokens per row such that the 2 extra tokens per span of Part B fit in ``seq_len`` (the
    span count bound grows with the text, so sizing it for ``seq_len`` tokens is conservative)."""
    spans = max(expected_spans(cfg, name, seq_len) for name in cfg.weights())
    length = seq_len - 2 * math.ceil(spans)
    if length < 2:
        raise ValueError(f"seq_len={seq_len} leaves no room for text after reserving {2 * math.ceil(spans)} "
                         f"tokens for Part B; use a larger seq_len")
    return length


def segments(doc_lengths: np.ndarray, doc_rows: np.ndarray, n_rows: int, layout: str):
    """(segment lengths, segment rows): one segment per document (packed) or per row (legacy)."""
    if layout == "packed":
        return doc_lengths, doc_rows
    return np.bincount(doc_rows, weights=doc_lengths, minlength=n_rows).astype(np.int64), np.arange(n_rows)


def overflow_keep(span_row: np.ndarray, row_text: np.ndarray, seq_len: int) -> np.ndarray:
    """Mask of spans to keep so that text + 2 per span fits each row; drops a row's last spans."""
    n_rows = len(row_text)
    n_spans = np.bincount(span_row, minlength=n_rows)
    n_drop = np.maximum(0, row_text + 2 * n_spans - seq_len + 1) // 2                # [R]
    from_end = n_spans.cumsum()[span_row] - 1 - np.arange(len(span_row))              # [K]
    return from_end >= n_drop[span_row]


def part_b_rank(span_seg: np.ndarray, span_key: np.ndarray, shuffle: bool) -> np.ndarray:
    """Part-B slot of every span inside its segment: uniform random permutation, or left to right.

    ``span_seg`` is non-decreasing; ``span_key`` is the random key of each span's row."""
    n = len(span_seg)
    first = span_seg.searchsorted(span_seg)                                           # [K]
    index = np.arange(n) - first
    if not shuffle:
        return index
    order = np.argsort(span_seg + rng.uniform(span_key, rng.STREAM_ORDER, index))     # grouped by segment
    rank = np.empty(n, dtype=np.int64)
    rank[order] = index
    return rank


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

"""The deterministic core of blank infilling (DESIGN.md contracts 1-2, reference §2.5).

A segment is one GLM sample: its text with each span replaced by one mask token (Part A), then one
block per span in Part-B order, input ``sop + span`` and target ``span + eop``. Part-A tokens keep
their index in Part A as first position; a Part-B block takes the index of its mask token and block
positions 1..len+1. ``layout_rows`` lays out any number of segments into fixed-length rows in one
vectorised pass; ``build_sample`` is the single-segment view of the same code. Nothing else builds
layouts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InfillSample:
    """One segment laid out (contract 1): numpy int arrays of length n + 2 * len(spans)."""
    input_ids: np.ndarray
    target_ids: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    block_position_ids: np.ndarray
    prefix_len: int  # len(Part A), GLM's `sep`


@dataclass
class Spans:
    """Spans over a flat token array, sorted by start, non-overlapping, each inside one segment."""
    start: np.ndarray    # [K] int64, absolute offsets
    end: np.ndarray      # [K] int64, exclusive
    mask_id: np.ndarray  # [K] int64, the Part-A token that replaces the span
    rank: np.ndarray     # [K] int64, position of the span in its segment's Part B (a permutation)


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(x, out=out[1:])
    return out


def layout_rows(tokens: np.ndarray, seg_lengths: np.ndarray, seg_rows: np.ndarray, n_rows: int,
                seq_len: int, spans: Spans, pad_id: int, sop_id: int, eop_id: int,
                block_positions: bool = True) -> dict[str, np.ndarray]:
    """Lay out segments (which tile ``tokens`` in order; ``seg_rows`` non-decreasing) into rows.

    Each row holds its segments as [A_0; B_0; A_1; B_1; ...] then padding (segment -1, pad id,
    positions 0, loss 0). Returns numpy arrays [n_rows, seq_len] keyed as the batch dict, with
    ``segment_ids`` counting segments inside each row from 0. Raises ValueError if a row does not fit.
    """
    n_tok, n_seg, n_span = len(tokens), len(seg_lengths), len(spans.start)
    seg_first_tok = _exclusive_cumsum(seg_lengths)                                    # [G+1]
    span_len = spans.end - spans.start                                                # [K]
    span_seg = np.searchsorted(seg_first_tok, spans.start, side="right") - 1         # [K]
    seg_n_spans = np.bincount(span_seg, minlength=n_seg)
    seg_masked = np.bincount(span_seg, weights=span_len, minlength=n_seg).astype(np.int64)
    seg_out_len = seg_lengths + 2 * seg_n_spans                                       # [G]
    seg_a_len = seg_lengths - seg_masked + seg_n_spans                                # [G]

    # Flat output offset of every segment: rows are seq_len apart, segments packed from row start.
    out_cum = _exclusive_cumsum(seg_out_len)
    row_first_seg = np.searchsorted(seg_rows, np.arange(n_rows + 1))                  # [B+1]
    row_used = out_cum[row_first_seg[1:]] - out_cum[row_first_seg[:-1]]               # [B]
    if (row_used > seq_len).any():
        row = int(np.argmax(row_used > seq_len))
        raise ValueError(f"row {row} needs {row_used[row]} tokens (text + 2 per span) but seq_len is "
                         f"{seq_len}; drop spans or shorten the text before laying out")
    seg_out = seg_rows * seq_len + out_cum[:-1] - out_cum[row_first_seg[seg_rows]]   # [G]

    # Part A: span interiors vanish, a span's first token becomes its mask token.
    interior = np.zeros(n_tok + 1, dtype=np.int64)
    interior[spans.start + 1] += 1
    interior[spans.end] -= 1
    keep = np.cumsum(interior[:-1]) == 0                                              # [T]
    keep_cum = _exclusive_cumsum(keep)                                                # [T+1]
    tok_seg = np.repeat(np.arange(n_seg), seg_lengths)                                # [T]
    pos_a = keep_cum[1:] - 1 - keep_cum[seg_first_tok[tok_seg]]                       # [T] index in Part A
    a_ids = tokens.copy()
    a_ids[spans.start] = spans.mask_id
    a_dest = (seg_out[tok_seg] + pos_a)[keep]

    size = n_rows * seq_len
    input_ids = np.full(size, pad_id, dtype=np.int64)
    target_ids = np.full(size, pad_id, dtype=np.int64)
    position_ids = np.zeros(size, dtype=np.int64)
    block_position_ids = np.zeros(size, dtype=np.int64)
    loss_mask = np.zeros(size, dtype=np.float32)
    part_a = np.zeros(size, dtype=bool)
    input_ids[a_dest] = a_ids[keep]
    target_ids[a_dest] = a_ids[keep]  # placeholders under loss 0, as the reference
    position_ids[a_dest] = pos_a[keep]
    part_a[a_dest] = True

    # Part B: span k of a segment goes to slot rank[k]; spans are grouped by segment, so the slot
    # in a global Part-B order is the segment's first span index plus the rank.
    seg_first_span = _exclusive_cumsum(seg_n_spans)
    by_slot = np.empty(n_span, dtype=np.int64)
    by_slot[seg_first_span[span_seg] + spans.rank] = np.arange(n_span)
    b_start, b_len, b_seg = spans.start[by_slot], span_len[by_slot], span_seg[by_slot]   # [K]
    b_mask_pos = pos_a[b_start]
    block_cum = _exclusive_cumsum(b_len + 1)                                          # [K+1]
    b_dest = seg_out[b_seg] + seg_a_len[b_seg] + block_cum[:-1] - block_cum[seg_first_span[b_seg]]
    tok_block = np.repeat(np.arange(n_span), b_len + 1)                               # [TB]
    within = np.arange(block_cum[-1]) - block_cum[tok_block]                          # [TB] 0..len
    src = b_start[tok_block] + within                                                 # text index of the target
    padded_tokens = np.append(tokens, pad_id)  # src == n_tok only where the target is eop
    b_dest_tok = b_dest[tok_block] + within
    input_ids[b_dest_tok] = np.where(within == 0, sop_id, padded_tokens[src - 1])
    target_ids[b_dest_tok] = np.where(within == b_len[tok_block], eop_id, padded_tokens[src])
    position_ids[b_dest_tok] = b_mask_pos[tok_block]
    block_position_ids[b_dest_tok] = within + 1 if block_positions else 1
    loss_mask[b_dest_tok] = 1.0

    # Segment ids fill each row from the start, in row-major order, so one masked assignment works.
    used = np.arange(seq_len) < row_used[:, None]                                     # [B, S]
    segment_ids = np.full((n_rows, seq_len), -1, dtype=np.int64)
    segment_ids[used] = np.repeat(np.arange(n_seg) - row_first_seg[seg_rows], seg_out_len)
    shape = (n_rows, seq_len)
    return {
        "input_ids": input_ids.reshape(shape), "target_ids": target_ids.reshape(shape),
        "loss_mask": loss_mask.reshape(shape), "position_ids": position_ids.reshape(shape),
        "block_position_ids": block_position_ids.reshape(shape), "segment_ids": segment_ids,
        "part_a": part_a.reshape(shape),
    }


def build_sample(tokens, spans, order, mask_id: int, sop_id: int, eop_id: int,
                 block_positions: bool = True) -> InfillSample:
    """Contract 1: lay out one text with half-open ``spans`` (sorted by start, non-overlapping) and
    ``order[k]`` = index of the span written k-th in Part B."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or len(tokens) == 0:
        raise ValueError(f"tokens must be a non-empty 1-D int array, got shape {tokens.shape}")
    span_arr = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    order_arr = np.asarray(order, dtype=np.int64).reshape(-1)
    _check_spans(span_arr, len(tokens))
    if sorted(order_arr.tolist()) != list(range(len(span_arr))):
        raise ValueError(f"order={order_arr.tolist()} must be a permutation of 0..{len(span_arr) - 1}")
    specials = {"mask_id": mask_id, "sop_id": sop_id, "eop_id": eop_id}
    if len(set(specials.values())) != 3:
        raise ValueError(f"special ids must be distinct, got {specials}")
    rank = np.empty(len(order_arr), dtype=np.int64)
    rank[order_arr] = np.arange(len(order_arr))
    seq_len = len(tokens) + 2 * len(span_arr)
    rows = layout_rows(tokens, np.array([len(tokens)]), np.zeros(1, dtype=np.int64), 1, seq_len,
                       Spans(span_arr[:, 0], span_arr[:, 1], np.full(len(span_arr), mask_id), rank),
                       pad_id=0, sop_id=sop_id, eop_id=eop_id, block_positions=block_positions)
    return InfillSample(
        input_ids=rows["input_ids"][0], target_ids=rows["target_ids"][0],
        loss_mask=rows["loss_mask"][0].astype(np.int64), position_ids=rows["position_ids"][0],
        block_position_ids=rows["block_position_ids"][0], prefix_len=int(rows["part_a"][0].sum()))


def _check_spans(spans: np.ndarray, n: int) -> None:
    for k, (start, end) in enumerate(spans.tolist()):
        if not 0 <= start < end <= n:
            raise ValueError(f"span {k} = ({start}, {end}) must satisfy 0 <= start < end <= {n} (len(tokens))")
        if k and start < spans[k - 1, 1]:
            raise ValueError(f"span {k} = ({start}, {end}) overlaps or precedes span {k - 1} = "
                             f"{tuple(spans[k - 1].tolist())}; spans must be sorted and disjoint")

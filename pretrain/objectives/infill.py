"""The deterministic core of blank infilling (docs/contracts.md §1-2, reference §2.5).

A segment is one GLM sample: its text with each span replaced by one mask token (Part A), then its
spans' texts in Part-B order, each opened by an opener (sop) and predicted with its targets shifted by
one; a block ends with a target eop. Part-A tokens keep their index in Part A as first position; a
span's Part-B tokens take the index of its mask token and block positions 1..len+1 (GLM's 2-D
positions); a span that ``prolong``s the text takes first positions mask + 1, mask + 2, ... instead,
continuing the text after its mask token (GLM-130B's [gMASK] under 1-D positions). ``layout_rows``
lays out any number of segments into fixed-length rows in one vectorised pass; ``build_sample`` is the
single-segment view of the same code. Nothing else builds layouts.

Per span, strategies other than GLM's may set: the opener (T5's sentinel, FIM's <|fim_suffix|>), that
a span continues the previous one's block instead of closing its own with eop (T5's one block of
``sentinel_k span_k ...``), or that it stays in Part A (``inline``: MLM's replaced token, predicted in
place; an empty inline span inserts a marker, UL2's mode token), or that its block prolongs the text
(``prolong``). tests/test_objective_layout.py holds a plain loop-based reference of this function and
checks the two agree on random inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass
class InfillSample:
    """One segment laid out (docs/contracts.md §1): numpy int arrays of length n + 2 * len(spans)."""
    input_ids: np.ndarray
    target_ids: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    block_position_ids: np.ndarray
    prefix_len: int  # len(Part A), GLM's `sep`


@dataclass
class Spans:
    """Spans over a flat token array, sorted by start (an empty span before a span at the same start),
    non-overlapping, each inside one segment (an empty span at p belongs to the segment of token p)."""
    start: np.ndarray                  # [K] int64, absolute offsets
    end: np.ndarray                    # [K] int64, exclusive; end == start: an empty span
    mask_id: np.ndarray                # [K] int64, the Part-A token that stands for the span
    opener: np.ndarray | None = None   # [K] the Part-B input before the span's text (None: sop for all)
    chain: np.ndarray | None = None    # [K] place in its Part-B block: 0 opens a block, k > 0 joins the block
                                       # of the last span with chain 0 before it (None: one block per span)
    inline: np.ndarray | None = None   # [K] bool: no Part B; length 1: the mask token replaces the token and
                                       # is trained to predict it (MLM); length 0: an inserted marker, no loss
    prolong: np.ndarray | None = None  # [K] bool: the block's first positions continue the text after its
                                       # mask token (mask + 1, + 2, ...) instead of all being the mask's
                                       # (None: none); strategies set it on [gMASK]-role spans, the collator
                                       # keeps it under objective.gmask_positions=continue
    # Set by the collator from chain and its Part-B order; read by layout_rows.
    rank: np.ndarray | None = None     # [K] slot in its segment's Part B, a permutation (inline spans last);
                                       # None: left to right
    closes: np.ndarray | None = None   # [K] bool: the span's text ends its block, with target eop (None: all)
    eop_loss: np.ndarray | None = None  # [K] bool: that eop is trained (None: all); not at the end of a piece
                                        # cut from a longer document (contract 2)

    def __len__(self) -> int:
        return len(self.start)

    def growth(self) -> np.ndarray:
        """[K] tokens each span adds to its row: 2 for a Part-B span (its mask token, opener and text
        replace its text), 1 - length for an inline one."""
        if self.inline is None:
            return np.full(len(self), 2, dtype=np.int64)
        return np.where(self.inline, 1 - (self.end - self.start), 2)

    def take(self, index: np.ndarray) -> "Spans":
        """The spans at ``index`` (a mask or indices), every field alike."""
        return Spans(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                        for f in fields(self)})

    @staticmethod
    def merge(parts: list["Spans"], sop_id: int) -> "Spans":
        """``concat`` of ``parts`` sorted by start, an empty span (a marker) before a span at its start."""
        merged = Spans.concat(parts, sop_id)
        return merged.take(np.lexsort((merged.end > merged.start, merged.start)))

    @staticmethod
    def concat(parts: list["Spans"], sop_id: int) -> "Spans":
        """The spans of ``parts`` one after the other; an optional field set in one part gets its
        default (opener sop, chain 0, not inline, no prolong, closes, eop trained) in the others."""
        defaults = {"opener": lambda n: np.full(n, sop_id), "chain": lambda n: np.zeros(n, dtype=np.int64),
                    "inline": lambda n: np.zeros(n, dtype=bool), "prolong": lambda n: np.zeros(n, dtype=bool),
                    "closes": lambda n: np.ones(n, dtype=bool),
                    "eop_loss": lambda n: np.ones(n, dtype=bool)}
        merged = {}
        for f in fields(Spans):
            columns = [getattr(p, f.name) for p in parts]
            if all(c is None for c in columns):
                merged[f.name] = None
            elif f.name in defaults:
                merged[f.name] = np.concatenate([defaults[f.name](len(p)) if c is None else c
                                                 for p, c in zip(parts, columns)])
            else:
                merged[f.name] = np.concatenate(columns)
        return Spans(**merged)


def offsets(x: np.ndarray) -> np.ndarray:
    """[0, x0, x0 + x1, ..., total]: where each group of sizes ``x`` begins, then where the last ends."""
    out = np.zeros(len(x) + 1, dtype=np.int64)
    x.cumsum(out=out[1:])
    return out


def layout_rows(tokens: np.ndarray, seg_lengths: np.ndarray, seg_rows: np.ndarray, n_rows: int,
                seq_len: int, spans: Spans, pad_id: int, sop_id: int, eop_id: int,
                block_positions: bool = True) -> dict[str, np.ndarray]:
    """Lay out segments (which tile ``tokens`` in order; ``seg_rows`` non-decreasing) into rows.

    Each row holds its segments as [A_0; B_0; A_1; B_1; ...] then padding (segment -1, pad id,
    positions 0, loss 0). Returns numpy arrays [n_rows, seq_len] keyed as the batch dict, with
    ``segment_ids`` counting segments inside each row from 0. Raises ValueError if a row does not fit.
    The last span of each segment's Part B must close its block.

    The output is a sequence of runs, each copying a contiguous stretch of one table,
    [tokens; pads; mask ids; openers]. Per segment: per span the text before it and its mask token,
    then the text after the last span (Part A); per Part-B slot the span's opener and its text; per
    row a padding run. Every output array is then a few ``np.repeat`` of per-run values over the
    whole batch (R = 4K + G + B runs for K spans, G segments, B rows).
    """
    n_tok, n_seg, n_span = len(tokens), len(seg_lengths), len(spans.start)
    span_len = spans.end - spans.start                                                # [K]
    seg_first_tok = offsets(seg_lengths)                                              # [G+1]
    span_seg = seg_first_tok.searchsorted(spans.start, side="right") - 1              # [K]
    seg_n_spans = np.bincount(span_seg, minlength=n_seg)                              # [G]
    seg_first_span = offsets(seg_n_spans)                                             # [G+1]
    inline = spans.inline
    in_b = None if inline is None else ~inline                                        # [K] has Part-B runs
    seg_out_len = seg_lengths + np.bincount(span_seg, weights=spans.growth(), minlength=n_seg).astype(np.int64)
    out_cum = offsets(seg_out_len)
    row_first_seg = seg_rows.searchsorted(np.arange(n_rows + 1))                      # [B+1]
    row_used = out_cum[row_first_seg[1:]] - out_cum[row_first_seg[:-1]]               # [B]
    if row_used.max() > seq_len:
        row = int(np.argmax(row_used > seq_len))
        raise ValueError(f"row {row} needs {row_used[row]} tokens (text + 2 per span) but seq_len is "
                         f"{seq_len}; drop spans or shorten the text before laying out")

    # Where each run goes in the run sequence.
    seg_run = 4 * seg_first_span[:-1] + np.arange(n_seg) + seg_rows                  # [G] first run
    span_index = np.arange(n_span) - seg_first_span[span_seg]                         # [K] index in segment
    piece_run = seg_run[span_seg] + 2 * span_index                                    # [K] text before
    mask_run = piece_run + 1                                                          # [K]
    tail_run = seg_run + 2 * seg_n_spans                                              # [G]
    rank = span_index if spans.rank is None else spans.rank
    open_run = tail_run[span_seg] + 1 + 2 * rank                                      # [K]
    text_run = open_run + 1                                                           # [K]
    pad_run = 4 * seg_first_span[row_first_seg[1:]] + row_first_seg[1:] + np.arange(n_rows)  # [B]

    # Run lengths and where they copy from in the table.
    pad_src, mask_src = n_tok, n_tok + seq_len
    open_src = mask_src + n_span
    prev_end = np.where(span_index == 0, seg_first_tok[span_seg], np.concatenate(([0], spans.end[:-1])))
    has_spans = seg_n_spans > 0
    last_end = np.where(has_spans, spans.end[np.maximum(seg_first_span[1:] - 1, 0)] if n_span else 0,
                        seg_first_tok[:-1])                                           # [G]
    n_runs = 4 * n_span + n_seg + n_rows
    run_len = np.empty(n_runs, dtype=np.int64)
    run_src = np.empty(n_runs, dtype=np.int64)
    span_ids = np.arange(n_span)
    run_len[piece_run], run_src[piece_run] = spans.start - prev_end, prev_end
    run_len[mask_run], run_src[mask_run] = 1, mask_src + span_ids
    run_len[tail_run], run_src[tail_run] = seg_first_tok[1:] - last_end, last_end
    run_len[open_run] = 1 if in_b is None else in_b
    run_src[open_run] = open_src if spans.opener is None else open_src + span_ids
    run_len[text_run] = span_len if in_b is None else np.where(in_b, span_len, 0)
    run_src[text_run] = spans.start
    run_len[pad_run], run_src[pad_run] = seq_len - row_used, pad_src
    run_out = offsets(run_len)[:-1]                 # rows are exactly seq_len: flat offsets

    # Per-run values of the outputs that are affine in the flat index.
    seg_out = run_out[seg_run]                                                        # [G] flat start
    run_kind = np.full(n_runs, 1, dtype=np.int8)              # 0 Part A, 1 Part B, 2 padding
    run_pos = np.zeros(n_runs, dtype=np.int64)
    run_seg = np.empty(n_runs, dtype=np.int64)
    run_block = np.zeros(n_runs, dtype=np.int64)
    seg_in_row = np.arange(n_seg) - row_first_seg[seg_rows]
    for runs, seg in ((piece_run, span_seg), (mask_run, span_seg), (tail_run, np.arange(n_seg))):
        run_kind[runs], run_pos[runs], run_seg[runs] = 0, -seg_out[seg], seg_in_row[seg]
    mask_pos = run_out[mask_run] - seg_out[span_seg]                                  # [K] index in Part A
    # A span's Part-B runs (opener, then text) count block positions 1..len+1 from its opener.
    block = 1 - run_out[open_run] if block_positions else 1
    for runs in (open_run, text_run):
        run_pos[runs], run_seg[runs], run_block[runs] = mask_pos, seg_in_row[span_seg], block
    run_kind[pad_run], run_seg[pad_run] = 2, -1
    # Runs whose first positions count up with the flat index: Part A, and the Part-B runs of a span
    # that prolongs the text (mask + 1 at its opener, whatever block_positions says).
    run_counts = None                                         # None: Part A only
    if spans.prolong is not None and spans.prolong.any():
        prolong = spans.prolong
        run_counts = run_kind == 0
        first = (mask_pos + 1 - run_out[open_run])[prolong]
        for runs in (open_run[prolong], text_run[prolong]):
            run_pos[runs], run_counts[runs] = first, True

    # Full-size arrays are filled in place where possible: at large batches fresh temporaries
    # cost page faults, not just arithmetic.
    flat = np.arange(n_rows * seq_len)
    openers = [sop_id] if spans.opener is None else spans.opener
    table = np.concatenate([tokens, np.full(seq_len, pad_id), spans.mask_id, openers])
    source = (run_src - run_out).repeat(run_len)
    source += flat
    input_ids = table[source]
    kind = run_kind.repeat(run_len)
    part_a, part_b = kind == 0, kind == 1
    position_ids = run_pos.repeat(run_len)
    counts_up = part_a if run_counts is None else run_counts.repeat(run_len)
    np.add(position_ids, flat, out=position_ids, where=counts_up)
    block_position_ids = run_block.repeat(run_len)
    if block_positions:
        np.add(block_position_ids, flat, out=block_position_ids, where=part_b)
    # Targets are the inputs shifted by one inside Part B (eop closes each block); Part A targets
    # are placeholders (copies of the inputs) under loss 0, as in the reference.
    target_ids = input_ids.copy()
    np.copyto(target_ids[:-1], input_ids[1:], where=part_b[:-1])
    loss_mask = part_b.astype(np.float32)
    block_end = run_out[open_run] + span_len                  # [K] flat index of a span's last Part-B token
    closing = spans.closes
    if in_b is not None:
        closing = in_b if closing is None else closing & in_b
    eop_at = block_end if closing is None else block_end[closing]
    target_ids[eop_at] = eop_id
    if spans.eop_loss is not None:
        open_end = ~spans.eop_loss if closing is None else closing & ~spans.eop_loss
        loss_mask[block_end[open_end]] = 0
    if inline is not None:
        replaced = inline & (span_len == 1)
        at = run_out[mask_run[replaced]]
        target_ids[at], loss_mask[at] = tokens[spans.start[replaced]], 1
    shape = (n_rows, seq_len)
    return {
        "input_ids": input_ids.reshape(shape), "target_ids": target_ids.reshape(shape),
        "loss_mask": loss_mask.reshape(shape), "position_ids": position_ids.reshape(shape),
        "block_position_ids": block_position_ids.reshape(shape),
        "segment_ids": run_seg.repeat(run_len).reshape(shape), "part_a": part_a.reshape(shape),
    }


def build_sample(tokens, spans, order, mask_id: int, sop_id: int, eop_id: int,
                 block_positions: bool = True, prolong=None) -> InfillSample:
    """docs/contracts.md §1: lay out one text with half-open ``spans`` (sorted by start, non-overlapping) and
    ``order[k]`` = index of the span written k-th in Part B; ``prolong[k]``: span k's block positions
    continue after its mask token (docs/contracts.md §2, GLM-130B's [gMASK]; default: none)."""
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
    if prolong is not None:
        prolong = np.asarray(prolong, dtype=bool).reshape(-1)
        if len(prolong) != len(span_arr):
            raise ValueError(f"prolong has {len(prolong)} entries for {len(span_arr)} spans; give one per span")
    rank = np.empty(len(order_arr), dtype=np.int64)
    rank[order_arr] = np.arange(len(order_arr))
    seq_len = len(tokens) + 2 * len(span_arr)
    rows = layout_rows(tokens, np.array([len(tokens)]), np.zeros(1, dtype=np.int64), 1, seq_len,
                       Spans(span_arr[:, 0], span_arr[:, 1], np.full(len(span_arr), mask_id), rank=rank,
                             prolong=prolong),
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

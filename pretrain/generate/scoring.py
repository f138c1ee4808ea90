"""Teacher-forced scoring of texts with blanks: the layout, and per-example counts from a forward.

An example is a text whose ``spans`` become blanks of one mask token; its Part-B blocks (left to
right) are scored by teacher forcing on the span's own tokens: the first ``scored`` of each block,
or all of them when ``scored`` is None (never the closing eop: a model that only learned where
blanks end would otherwise score 1/(mean span length + 1) on recovering their text). Examples are packed in order into rows, one segment each,
through the objective's own layout (``infill.layout_rows``), so they are encoded exactly as in
training. From a forward's per-token cross entropy and greedy predictions, ``example_counts``
sums per example: scored tokens, tokens the model would have written itself (argmax), and CE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pretrain.objectives.config import prolongs_gmask_blocks
from pretrain.objectives.infill import Spans, layout_rows
from pretrain.tokens import SpecialTokens


@dataclass
class Scored:
    tokens: np.ndarray  # int64 text
    spans: np.ndarray  # [K, 2] int64 (start, end), sorted, disjoint
    mask_id: int
    scored: int | None = None  # span tokens scored per block, from its start (None: all; never eop)


def layout_scored(examples: Sequence[Scored], seq_len: int, special: SpecialTokens, block_positions: bool = True,
                  rows_multiple: int = 1, gmask_positions: str = "mask") -> dict[str, np.ndarray]:
    """Batch arrays [R, seq_len] (R a multiple of ``rows_multiple``; spare rows are padding), plus
    ``example``: the index of the example whose target is scored at each position, -1 elsewhere.
    ``block_positions`` and ``gmask_positions`` ("mask" or "continue": a [gMASK] example's blocks
    prolong the text) encode the examples as the run's resolved objective does."""
    if not examples:
        raise ValueError("no examples to lay out")
    prolong = prolongs_gmask_blocks(gmask_positions)
    sizes = np.array([len(e.tokens) + 2 * len(e.spans) for e in examples])
    if sizes.max() > seq_len:
        raise ValueError(f"example {int(np.argmax(sizes > seq_len))} needs {sizes.max()} tokens laid out, more "
                         f"than seq_len={seq_len}")
    rows, row, used = np.empty(len(examples), dtype=np.int64), 0, 0
    for i, size in enumerate(sizes):  # in order; a new row when the next example does not fit
        if used + size > seq_len:
            row, used = row + 1, 0
        rows[i], used = row, used + size
    n_rows = math.ceil((row + 1) / rows_multiple) * rows_multiple
    lengths = np.array([len(e.tokens) for e in examples])
    spans = np.concatenate([e.spans + start for e, start in zip(examples, np.cumsum(lengths) - lengths)])
    per_example = [len(e.spans) for e in examples]
    index_in_example = np.arange(len(spans)) - np.repeat(np.cumsum(per_example) - per_example, per_example)
    mask_ids = np.repeat([e.mask_id for e in examples], per_example)
    batch = layout_rows(np.concatenate([e.tokens for e in examples]), lengths, rows, n_rows, seq_len,
                        Spans(spans[:, 0], spans[:, 1], mask_ids, rank=index_in_example,  # blocks left to right
                              prolong=mask_ids == special.gmask if prolong else None),
                        pad_id=special.pad, sop_id=special.sop, eop_id=special.eop, block_positions=True)
    # segment k of row r is example (first example of row r) + k; target j of a block sits at block position j + 1
    row_first = np.searchsorted(rows, np.arange(n_rows))
    example = np.where(batch["segment_ids"] >= 0, row_first[:, None] + batch["segment_ids"], -1)
    limit = np.array([seq_len if e.scored is None else e.scored for e in examples] + [0])[example]
    span_target = (batch["loss_mask"] > 0) & (batch["target_ids"] != special.eop)
    batch["example"] = np.where(span_target & (batch["block_position_ids"] <= limit), example, -1)
    if not block_positions:  # the ablation's encoding: every Part-B token at block position 1
        batch["block_position_ids"] = (batch["loss_mask"] > 0).astype(np.int64)
    return batch


def example_counts(example: torch.Tensor, correct: torch.Tensor, ce: torch.Tensor, n_examples: int) -> torch.Tensor:
    """[n_examples, 3] float64: scored tokens, correctly predicted ones, summed cross entropy."""
    scored = example >= 0
    values = torch.stack([scored.double(), (correct & scored).double(), torch.where(scored, ce.double(), 0.0)], dim=-1)
    out = torch.zeros(n_examples, 3, dtype=torch.float64, device=example.device)
    return out.index_add_(0, example.clamp(min=0).flatten(), values.flatten(0, 1))

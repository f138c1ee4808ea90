"""Context parallelism for the GLM mask: each row's sequence split over the cp ranks, attention exact.

Layout (Llama 3 / torchtitan load balancing): a row is cut into 2·cp equal chunks and cp rank r holds
chunks r and 2·cp−1−r, so every rank gets the same share of a causal row's work. Every [B, S] field of
the batch (ids, 2-D positions, segments, part_a, targets, loss mask, strategies) is sharded the same
way (``shard_rows``), so positions travel with their tokens and the model runs unchanged on [B, S / cp].

Attention: K and V are all-gathered over cp with autograd (functional collectives: all-gather forward,
reduce-scatter backward) and put back in row order; each rank's queries then attend the whole row
under the GLM rule (docs/contracts.md §4). The Llama 3 report chose this over a ring for document masks:
one collective per layer whatever the segments, and the mask stays a function of row positions. The
rule needs the row's segments and Part-A flags, all-gathered once per batch (integers, no autograd).

    sdpa   attention.SegmentSDPAAttention with this rank's two query windows: Part-A queries over the
           segment's Part A, Part-B queries over the segment's keys before the window unmasked plus
           their own span causally. Linear memory, no masked pair computed.
    flex   the rule's mask_mod with local query indices mapped to row positions (Q_LEN = S/cp, KV_LEN = S).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from pretrain.model.attention import (SegmentSDPAAttention, _compiled_create_block_mask, _compiled_flex_attention,
                                      glm_mask_mod)
from pretrain.parallel.config import ParallelConfig


def check_context(parallel: ParallelConfig, seq_len: int, attention_backend: str, attention_dropout: float = 0.0) -> None:
    """Raise ValueError naming what to change when the rows cannot be split over cp ranks."""
    cp = parallel.cp
    if cp == 1:
        return
    if seq_len % (2 * cp):
        raise ValueError(f"train.seq_len={seq_len} is not divisible by 2 x parallel.cp = {2 * cp} (each row is cut "
                         f"into 2·cp chunks); choose a seq_len that is a multiple of {2 * cp} or change cp")
    if parallel.sequence_parallel and (seq_len // cp) % parallel.tp:
        raise ValueError(f"train.seq_len / parallel.cp = {seq_len // cp} is not divisible by parallel.tp="
                         f"{parallel.tp} (sequence parallel splits each rank's tokens); change seq_len")
    if attention_backend not in ("auto", "sdpa", "flex"):
        raise ValueError(f"model.attention_backend={attention_backend} has no context-parallel form; use auto, "
                         f"sdpa or flex")
    if attention_dropout:
        raise ValueError(f"model.attention_dropout={attention_dropout}: the context-parallel attention has no "
                         f"dropout; set it to 0 or parallel.cp=1")


def zigzag_windows(seq_len: int, cp: int, rank: int) -> list[tuple[int, int]]:
    """The row ranges held by cp rank ``rank``: chunks ``rank`` and ``2·cp−1−rank`` of 2·cp, in that order."""
    chunk = seq_len // (2 * cp)
    return [(rank * chunk, (rank + 1) * chunk), ((2 * cp - 1 - rank) * chunk, (2 * cp - rank) * chunk)]


def zigzag_positions(seq_len: int, cp: int, rank: int) -> torch.Tensor:
    """Row positions of this rank's tokens, [seq_len / cp], in local order."""
    return torch.cat([torch.arange(start, end) for start, end in zigzag_windows(seq_len, cp, rank)])


def shard_rows(batch: dict[str, torch.Tensor], cp: int, rank: int) -> dict[str, torch.Tensor]:
    """This rank's tokens of every [B, S] field (per-row fields such as sample_ids pass unchanged)."""
    seq_len = batch["input_ids"].shape[1]
    index = zigzag_positions(seq_len, cp, rank).to(batch["input_ids"].device)
    return {k: v.index_select(1, index) if v.dim() == 2 else v for k, v in batch.items()}


def row_order(gathered: torch.Tensor, cp: int, dim: int) -> torch.Tensor:
    """Undo the zig-zag: ``gathered`` holds every rank's shard in rank order along ``dim``."""
    chunks = gathered.chunk(2 * cp, dim)  # rank r's chunks sit at 2r and 2r + 1
    order = [2 * g if g < cp else 2 * (2 * cp - 1 - g) + 1 for g in range(2 * cp)]
    return torch.cat([chunks[i] for i in order], dim)


class ContextParallelAttention:
    """``GLMModel.build_attention`` under context parallelism over ``group``: the same
    ``(backend, segment_ids, part_a) -> attend(q, k, v)`` contract, on this rank's [B, S/cp] tokens."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.cp = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def __call__(self, backend: str, segment_ids: torch.Tensor, part_a: torch.Tensor, dropout_p: float = 0.0):
        if dropout_p:
            raise ValueError(f"attention dropout {dropout_p} under context parallelism (see check_context)")
        if part_a.dtype != torch.bool or segment_ids.shape != part_a.shape or segment_ids.dim() != 2:
            raise ValueError(f"segment_ids {tuple(segment_ids.shape)} and part_a {tuple(part_a.shape)} "
                             f"({part_a.dtype}) must both be [B, S], part_a bool")
        local = torch.stack([segment_ids, part_a.long()])  # [2, B, S/cp]; gloo gathers no bool
        layout = row_order(funcol.all_gather_tensor(local, 2, self.group), self.cp, 2)
        segments, is_a = layout[0], layout[1].bool()  # [B, S] in row order
        seq_len = segments.shape[1]
        if backend == "sdpa":
            attend = SegmentSDPAAttention(segments, is_a, windows=zigzag_windows(seq_len, self.cp, self.rank))
        elif backend == "flex":
            positions = zigzag_positions(seq_len, self.cp, self.rank).to(segments.device)
            attend = FlexRowsAttention(segments, is_a, positions)
        else:
            raise ValueError(f"attention backend {backend!r} has no context-parallel form; use sdpa or flex")
        return GatheredKeysAttention(attend, self.group, self.cp)


class GatheredKeysAttention:
    """All-gathers K and V [B, Hkv, S/cp, D] over cp (autograd: reduce-scatter backward), restores row
    order, and lets ``attend`` compute the local queries over the whole row."""

    def __init__(self, attend, group: dist.ProcessGroup, cp: int):
        self.attend, self.group, self.cp = attend, group, cp

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = (row_order(funcol.all_gather_single_autograd(t.contiguous(), 2, self.group), self.cp, 2)
                for t in (k, v))
        return self.attend(q, k, v)


class FlexRowsAttention:
    """FlexAttention of this rank's queries (row ``positions``) over the whole row: one BlockMask per batch."""

    def __init__(self, segment_ids: torch.Tensor, part_a: torch.Tensor, positions: torch.Tensor):
        rule = glm_mask_mod(segment_ids, part_a)

        def mask_mod(b, h, q_idx, kv_idx):
            return rule(b, h, positions[q_idx], kv_idx)

        batch, seq_len = segment_ids.shape
        self.block_mask = _compiled_create_block_mask()(mask_mod, batch, None, len(positions), seq_len,
                                                       device=segment_ids.device)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _compiled_flex_attention()(q.contiguous(), k, v, block_mask=self.block_mask, enable_gqa=True)

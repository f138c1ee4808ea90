"""The GLM loss: Σ CE(logits, target_ids)·loss_mask / (Part-B tokens of the whole optimizer step).

Dividing every micro-batch by the *global* count (all micro-batches, all data-parallel ranks, known
before the first backward) makes gradient accumulation and data parallelism exact: the summed
gradients equal those of one big batch. With tensor parallelism the logits arrive vocab-sharded
(DTensor ``Shard(-1)``) and ``loss_parallel`` computes the cross entropy without gathering them.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel


def loss_context(logits: torch.Tensor):
    """Forward *and* backward of a vocab-sharded cross entropy must run inside loss_parallel()."""
    return loss_parallel() if isinstance(logits, DTensor) else contextlib.nullcontext()


def token_cross_entropy(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Per-token CE [B, S] (float32) from logits [B, S, V], plain or vocab-sharded; call it under
    ``loss_context(logits)``."""
    batch, seq_len = target_ids.shape
    ce = F.cross_entropy(logits.flatten(0, 1).float(), target_ids.flatten(), reduction="none")  # [B*S]
    if isinstance(ce, DTensor):
        ce = ce.to_local()  # replicated over TP: every rank holds the full per-token loss
    return ce.view(batch, seq_len)


class StrategyLosses:
    """Running Σ CE·mask and Σ mask per masking strategy (indices into collator.strategy_names)."""

    def __init__(self, num_strategies: int, device: torch.device):
        self.sums = torch.zeros(num_strategies, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_strategies, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, weighted_ce: torch.Tensor, loss_mask: torch.Tensor, strategy_ids: torch.Tensor) -> None:
        """``weighted_ce`` = CE·loss_mask [B, S]."""
        ids = strategy_ids.clamp(min=0).flatten()  # padding (-1) has loss_mask 0
        self.sums.index_add_(0, ids, weighted_ce.detach().flatten().double())
        self.counts.index_add_(0, ids, loss_mask.flatten().double())

    def packed(self) -> torch.Tensor:
        return torch.cat([self.sums, self.counts])

    @staticmethod
    def means(packed: torch.Tensor, names: tuple[str, ...], prefix: str) -> dict[str, float]:
        """{prefix/name: mean CE} for strategies that had Part-B tokens (after an all-reduce of packed())."""
        sums, counts = packed.double().cpu().chunk(2)
        return {f"{prefix}/{name}": (s / c).item() for name, s, c in zip(names, sums, counts) if c > 0}

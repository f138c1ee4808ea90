"""A KV cache that enters the model through its ``build_attention`` hook, so glm.py stays cache-free.

GLMModel builds one attention callable per forward from the batch's (segment_ids, part_a) and every
layer calls it with its q, k, v, in layer order. ``KVCache.build_attention`` stands in for that
factory: it appends the new tokens' segment ids and part_a to the history and returns an ``attend``
whose i-th call (layer i) writes that layer's new keys and values into the cache and lets the new
queries see every cached key the GLM rule admits (``glm_dense_mask`` rows from the first new token).

Positions need nothing here: the caller passes each new token's position and block position, RoPE
rotates q and k before ``attend`` (keys are cached rotated), learned 2-D tables are added to the
embeddings. Heads are read from the tensors' shapes, as in the model.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.attention import glm_dense_mask


class KVCache:
    """Keys and values of every layer for ``capacity`` tokens per row, with the mask rule's inputs."""

    def __init__(self, batch: int, capacity: int, device: torch.device):
        self.capacity = capacity
        self.segment_ids = torch.full((batch, capacity), -1, dtype=torch.long, device=device)
        self.part_a = torch.zeros((batch, capacity), dtype=torch.bool, device=device)
        self.length = 0  # tokens cached so far (the same for every row: a finished row caches padding)
        self.keys: list[torch.Tensor] = []  # per layer [B, Hkv, capacity, D], allocated on first use
        self.values: list[torch.Tensor] = []

    def build_attention(self, backend: str, segment_ids: torch.Tensor, part_a: torch.Tensor,
                        dropout_p: float = 0.0) -> "CachedAttention":
        """The model's per-forward attention factory for the new tokens [B, L]. ``backend`` is unused:
        the new queries are few, so one SDPA call with an explicit [L, cached + L] mask serves.
        ``dropout_p`` is 0: generation runs the model in eval mode."""
        if dropout_p:
            raise ValueError(f"attention dropout {dropout_p} while decoding; put the model in eval mode")
        start, end = self.length, self.length + segment_ids.shape[1]
        if end > self.capacity:
            raise ValueError(f"KV cache full: {end} tokens do not fit its capacity of {self.capacity}")
        self.segment_ids[:, start:end] = segment_ids
        self.part_a[:, start:end] = part_a
        self.length = end
        mask = glm_dense_mask(self.segment_ids[:, :end], self.part_a[:, :end], query_start=start)
        return CachedAttention(self, start, end, mask[:, None])  # [B, 1 (heads), L, end]

    def layer(self, index: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if index == len(self.keys):
            shape = (*k.shape[:2], self.capacity, k.shape[-1])
            self.keys.append(k.new_empty(shape))
            self.values.append(k.new_empty(shape))
        return self.keys[index], self.values[index]


class CachedAttention:
    """``attend(q, k, v)`` for one forward; q [B, Hq, L, D], k and v [B, Hkv, L, D] of the new tokens."""

    def __init__(self, cache: KVCache, start: int, end: int, mask: torch.Tensor):
        self.cache, self.start, self.end, self.mask = cache, start, end, mask
        self.calls = 0  # the model calls attend once per layer, in layer order

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values = self.cache.layer(self.calls, k)
        self.calls += 1
        keys[:, :, self.start:self.end] = k
        values[:, :, self.start:self.end] = v
        return F.scaled_dot_product_attention(q, keys[:, :, :self.end], values[:, :, :self.end],
                                              attn_mask=self.mask, enable_gqa=True)


@contextlib.contextmanager
def attached(model: nn.Module, cache: KVCache):
    """Route ``model``'s attention through ``cache`` while the block runs."""
    original = model.build_attention
    model.build_attention = cache.build_attention
    try:
        yield
    finally:
        model.build_attention = original

"""Choosing the next token: greedy, or sampling with temperature, top-k and top-p (nucleus).

The random number of each draw is a pure function of (seed, prompt id, draw index) (objectives/rng.py's
counter-based generator), so a prompt gets the same tokens alone or in any batch, cached or not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pretrain.objectives import rng

STREAM_SAMPLING = 64  # rng stream of these draws (the objective's streams are small integers)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy (argmax); otherwise softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose probability reaches top_p
    seed: int = 0

    def validate(self) -> "Sampling":
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature={self.temperature} must be a finite number >= 0 (0: greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0: no limit)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")
        return self


def next_tokens(logits: torch.Tensor, sampling: Sampling, keys: np.ndarray, draw: int) -> torch.Tensor:
    """[B] token ids from logits [B, V] (banned ids already -inf); ``keys`` [B] from ``rng.keys(seed, prompt ids)``."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / sampling.temperature
    if 0 < sampling.top_k < scores.shape[-1]:
        kth = scores.topk(sampling.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    probs = scores.softmax(dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(before >= sampling.top_p, 0.0))
    cdf = probs.double().cumsum(dim=-1)
    u = torch.from_numpy(rng.uniform(keys, STREAM_SAMPLING, draw)).to(cdf.device)  # [B] in [0, 1)
    chosen = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]  # first id with cdf > u·total
    return chosen.clamp(max=logits.shape[-1] - 1)

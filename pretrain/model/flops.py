"""Matmul parameter count and per-token training FLOPs (PaLM, arXiv 2204.02311 App. B) for MFU.

    flops = 6·N·tokens + 12·L·Hq·D·pairs
N counts matmul weights (every Linear in the blocks plus the LM head, tied or not; embedding lookups
are not matmuls); pairs counts the (query, key) pairs attended. PaLM's per-token figure takes
seq_len keys per query (no causal discount); ``batch_flops`` takes a batch's real pair count
(attention.visible_pairs) to count each mask's actual attention work.
"""
from __future__ import annotations

from pretrain.model.config import ModelConfig


def block_matmul_params(cfg: ModelConfig) -> int:
    """Matmul weights of one transformer block."""
    attention = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = (3 if cfg.mlp != "gelu" else 2) * cfg.hidden_size * cfg.ffn_hidden_size
    return attention + mlp


def matmul_params(cfg: ModelConfig) -> int:
    return cfg.num_layers * block_matmul_params(cfg) + cfg.vocab_size * cfg.hidden_size


def batch_flops(cfg: ModelConfig, tokens: float, pairs: float, layers: int | None = None, head: bool = True) -> float:
    """Training FLOPs (forward + backward) of ``tokens`` tokens attending ``pairs`` (query, key) pairs in
    ``layers`` blocks (all by default) and the LM head: a pipeline stage holds some blocks, one the head."""
    layers = cfg.num_layers if layers is None else layers
    matmul = layers * block_matmul_params(cfg) + (cfg.vocab_size * cfg.hidden_size if head else 0)
    return 6.0 * matmul * tokens + 12.0 * layers * cfg.num_heads * cfg.head_dim * pairs


def flops_per_token(cfg: ModelConfig, seq_len: int, attended_pairs_per_token: float | None = None) -> float:
    return batch_flops(cfg, 1, seq_len if attended_pairs_per_token is None else attended_pairs_per_token)

"""Matmul parameter count and per-token training FLOPs (PaLM, arXiv 2204.02311 App. B) for MFU.

    flops_per_token = 6·N + 12·L·Hq·D·P
N counts matmul weights (every Linear in the blocks plus the LM head, tied or not; embedding lookups
are not matmuls), P is the number of keys each query attends. PaLM uses P = seq_len (no causal
discount); pass the batch's real average (attention.visible_pairs / tokens) to count each mask's
actual attention work.
"""
from __future__ import annotations

from pretrain.model.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    attention = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = (3 if cfg.mlp != "gelu" else 2) * cfg.hidden_size * cfg.ffn_hidden_size
    return cfg.num_layers * (attention + mlp) + cfg.vocab_size * cfg.hidden_size


def flops_per_token(cfg: ModelConfig, seq_len: int, attended_pairs_per_token: float | None = None) -> float:
    pairs = seq_len if attended_pairs_per_token is None else attended_pairs_per_token
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * pairs

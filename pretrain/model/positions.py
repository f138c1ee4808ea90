"""Rotary position encodings of the GLM family (the learned 2-D tables are plain nn.Embedding in glm.py).

One rotation covers all three RoPE variants: the rotated part of a head is split into *sections*, each
rotated by its own position stream.
  rope_1d (GLM-130B, GLM-4): one section of int(head_dim · partial_rotary_factor) dims, by position_ids.
  rope_2d (ChatGLM-6B):      two sections of head_dim / 2, by position_ids and by block_position_ids.
Within a section the pairs are either the two halves (GPT-NeoX "rotate_half": GLM-130B, ChatGLM) or
adjacent (even, odd) dims (GLM-4, as in transformers' GlmForCausalLM).
"""
from __future__ import annotations

import torch

from pretrain.model.config import ModelConfig


def rotary_cos_sin(cfg: ModelConfig, position_ids: torch.Tensor, block_position_ids: torch.Tensor,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, S, 1, n_sections, section_dim // 2]; computed once per batch, used by every layer.

    Frequencies are recomputed here (a few flops) instead of living in a buffer, so a model built on the
    meta device needs no buffer re-initialisation. The angles are fp32; the tables are returned in the
    dtype of the q/k they rotate: ``dtype`` (the hidden states'), or autocast's when it is on (then the
    projections emit that dtype while the hidden states stay fp32). An fp32 table would promote q and k
    to fp32 next to a bf16 v, and attention kernels (Flex) would then run on mixed dtypes.
    """
    device_type = position_ids.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    streams = [position_ids] if cfg.position_encoding == "rope_1d" else [position_ids, block_position_ids]
    section_dim = cfg.rotary_dim // len(streams)
    exponent = torch.arange(0, section_dim, 2, device=position_ids.device, dtype=torch.float32) / section_dim
    inv_freq = 1.0 / (cfg.rope_theta ** exponent)  # [section_dim // 2]
    angles = torch.stack([p.float() for p in streams], dim=-1)[..., None] * inv_freq  # [B, S, n_sec, sec/2]
    angles = angles.unsqueeze(2)  # [B, S, 1 (heads), n_sec, sec/2]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate the leading rotary dims of x [B, S, H, D]; the remaining dims pass through unchanged."""
    n_sections, half = cos.shape[-2], cos.shape[-1]
    rotary_dim = n_sections * half * 2
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:  # pairs (2i, 2i+1) inside a section
        pairs = rotated.unflatten(-1, (n_sections, half, 2))
        x1, x2 = pairs[..., 0], pairs[..., 1]
        pair_dim = -1
    else:  # pairs (i, i + half) inside a section
        pairs = rotated.unflatten(-1, (n_sections, 2, half))
        x1, x2 = pairs[..., 0, :], pairs[..., 1, :]
        pair_dim = -2
    out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=pair_dim).flatten(-3)
    return torch.cat((out, passed), dim=-1)

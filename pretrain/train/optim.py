"""AdamW (no decay on norms and biases) and the linear warmup + cosine schedule (a function of the step)."""
from __future__ import annotations

import math

import torch
from torch import nn
from pretrain.parallel.clip import mesh_of
from pretrain.train.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # One group per (decay, mesh): foreach kernels cannot mix DTensors of different meshes.
    groups: dict[tuple[bool, object], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            decay = param.ndim >= 2  # matrices and embeddings; norms and biases are 1-D
            groups.setdefault((decay, mesh_of(param)), []).append(param)
    param_groups = [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0}
                    for (decay, _), params in groups.items()]
    # fused: one kernel for the whole update on CUDA; foreach (grouped per-tensor ops) elsewhere
    fused = all(p.device.type == "cuda" for group in param_groups for p in group["params"])
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None,
                             foreach=not fused)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for optimizer step ``step`` (0-based): linear warmup to 1, then cosine
    to ``min_lr_ratio`` at ``lr_decay_steps`` (default max_steps), constant after that. A pure function
    of the step, so a checkpoint needs only the step (no scheduler state tied to param groups)."""
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

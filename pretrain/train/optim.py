"""AdamW (no decay on norms and biases), linear warmup + cosine schedule (a function of the step),
and a gradient-norm clip that works when parameters live on different device meshes (TP-sharded
weights on (dp, tp), replicated norms on dp only)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from pretrain.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # One group per (decay, mesh): foreach kernels cannot mix DTensors of different meshes.
    groups: dict[tuple[bool, object], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            decay = param.ndim >= 2  # matrices and embeddings; norms and biases are 1-D
            groups.setdefault((decay, _mesh_of(param)), []).append(param)
    param_groups = [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0}
                    for (decay, _), params in groups.items()]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for optimizer step ``step`` (0-based): linear warmup to 1, then cosine
    to ``min_lr_ratio`` at ``lr_decay_steps`` (default max_steps), constant after that. A pure function
    of the step, so a checkpoint needs only the step (no scheduler state tied to param groups)."""
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def clip_grad_norm_(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global L2 norm of all gradients (over every rank's shards); clip to ``max_norm`` if > 0.

    torch's clip_grad_norm_ stacks per-tensor norms, which fails for DTensors on different meshes,
    so the norm is taken per mesh, materialized, and combined."""
    params_by_mesh: dict[object, list[nn.Parameter]] = {}
    for param in parameters:
        if param.grad is not None:
            params_by_mesh.setdefault(_mesh_of(param), []).append(param)
    squares = []
    for params in params_by_mesh.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm) ** 2)
    total = torch.stack(squares).sum().sqrt()
    if max_norm > 0:
        for params in params_by_mesh.values():
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def _mesh_of(tensor: torch.Tensor):
    return tensor.device_mesh if isinstance(tensor, DTensor) else None

"""The engine contract (``Engine``) and the torch engine: a (dp, tp) mesh, DTensor TP + FSDP2
(parallelize.py), AdamW, DCP state.

An engine owns the parallelized model and its optimizer and exposes the few verbs the training loop
needs, so the loop is the same for this engine and DeepSpeed's (deepspeed_engine.py).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from pretrain.parallel.clip import clip_grad_norm_

# Optimizer state keyed per parameter FQN ("state.<fqn>.exp_avg", "param_groups.<fqn>.lr"), not by
# param-group position: the optimizer's groups depend on the mesh layout (optim.py), so a checkpoint
# must not (as torchtitan does).
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class Engine(Protocol):
    """What the training loop asks of a parallel engine."""
    name: str
    reshardable: bool  # its checkpoints load under another (dp, tp) layout
    model: nn.Module  # the parallelized model: forward, train(), eval()

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Accumulate gradients of one micro-batch; gradients are reduced on the last one."""

    def step(self, lr: float, max_norm: float, skip: bool) -> float:
        """Clip and apply the update (unless ``skip`` or the norm is not finite); returns the global grad norm."""

    def save(self, path: Path) -> None:
        """Collective: write model and optimizer state under ``path``."""

    def load(self, path: Path) -> None:
        """Collective: restore what ``save`` wrote."""


class TorchEngine:
    name = "torch"
    reshardable = True  # DCP loads any saved (dp, tp) layout into the current one

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, reduce_every_microbatch: bool = False):
        self.model, self.optimizer = model, optimizer
        self.reduce_every_microbatch = reduce_every_microbatch

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # FSDP2 reduce-scatters once per step (unsharded gradients accumulate until then) unless asked to
        # reduce every micro-batch into the sharded gradients
        self.model.set_requires_gradient_sync(last_micro_batch or self.reduce_every_microbatch)
        loss.backward()

    def step(self, lr: float, max_norm: float, skip: bool) -> float:
        """Clip and apply the update unless ``skip`` or the global grad norm is not finite; returns the norm."""
        grad_norm = clip_grad_norm_(list(self.model.parameters()), max_norm).item()
        if not skip and math.isfinite(grad_norm):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def save(self, path: Path) -> None:
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=_OPTIONS)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path)

    def load(self, path: Path) -> None:
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=_OPTIONS)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=_OPTIONS)

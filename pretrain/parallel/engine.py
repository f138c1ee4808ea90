"""The engine contract (``Engine``) and the torch engine: a (pp, dp, cp, tp) mesh, DTensor TP + FSDP2
(parallelize.py), pipeline stages (pipeline.py), AdamW, DCP state.

An engine owns the parallelized model and its optimizer and exposes the few verbs the training loop
needs, so the loop is the same for this engine and DeepSpeed's (deepspeed_engine.py).
"""
from __future__ import annotations

import dataclasses
import math
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from pretrain.parallel import safe_dcp
from pretrain.parallel.clip import clip_grad_norm_

if TYPE_CHECKING:
    from pretrain.parallel.pipeline import Pipeline

# Optimizer state keyed per parameter FQN ("state.<fqn>.exp_avg", "param_groups.<fqn>.lr"), not by
# param-group position: the optimizer's groups depend on the mesh layout (optim.py), so a checkpoint
# must not (as torchtitan does).
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class Engine(Protocol):
    """What the training loop asks of a parallel engine."""
    name: str
    reshardable: bool  # its checkpoints load under another (dp, tp) layout
    model: nn.Module  # the parallelized model: forward, train(), eval() (None under pipeline parallelism)
    pipeline: "Pipeline | None"  # the torch engine's pipeline stages and schedule when parallel.pp > 1

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        """Accumulate gradients of one micro-batch; gradients are reduced on the last one."""

    def step(self, lr: float, max_norm: float, skip: bool) -> float:
        """Clip and apply the update (unless ``skip`` or the norm is not finite); returns the global grad norm."""

    def save(self, path: Path, async_group: dist.ProcessGroup | None = None) -> Future | None:
        """Collective: write model and optimizer state under ``path``. An engine that can write in the
        background does so with ``async_group`` (a gloo group) and returns the write's future."""

    def load(self, path: Path) -> None:
        """Collective: restore what ``save`` wrote."""


class TorchEngine:
    """The model parts this rank holds (one, or its pipeline stages) with one AdamW each (torchtitan's
    model-parts container): their state dicts are merged by FQN, so a checkpoint is independent of
    which rank held which layer."""
    name = "torch"
    reshardable = True  # DCP loads any saved (pp, dp, cp, tp) layout into the current one

    def __init__(self, parts: list[nn.Module], optimizers: list[torch.optim.Optimizer],
                 pipeline: "Pipeline | None" = None, pp_group: dist.ProcessGroup | None = None,
                 reduce_every_microbatch: bool = False):
        self.parts, self.optimizers, self.pipeline, self.pp_group = parts, optimizers, pipeline, pp_group
        self.model = parts[0] if pipeline is None else None  # under pp the loop runs ``pipeline`` instead
        self.reduce_every_microbatch = reduce_every_microbatch

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # FSDP2 reduce-scatters once per step (unsharded gradients accumulate until then) unless asked to
        # reduce every micro-batch into the sharded gradients
        self.model.set_requires_gradient_sync(last_micro_batch or self.reduce_every_microbatch)
        loss.backward()

    def step(self, lr: float, max_norm: float, skip: bool) -> float:
        """Clip and apply the update unless ``skip`` or the global grad norm is not finite; returns the norm."""
        uncounted = []
        if self.pipeline is not None:
            self.pipeline.reduce_tied_gradients()
            uncounted = self.pipeline.uncounted
        params = [p for part in self.parts for p in part.parameters()]
        grad_norm = clip_grad_norm_(params, max_norm, self.pp_group, uncounted).item()
        for optimizer in self.optimizers:
            if not skip and math.isfinite(grad_norm):
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _state(self) -> dict:
        model_state, optim_state = {}, {}
        for part, optimizer in zip(self.parts, self.optimizers):
            part_model, part_optim = get_state_dict(part, optimizer, options=_OPTIONS)
            model_state.update(part_model)
            optim_state.update(part_optim)
        return {"model": model_state, "optim": optim_state}

    def save(self, path: Path, async_group: dist.ProcessGroup | None = None) -> Future | None:
        """With ``async_group``: the state is copied to CPU memory now and written by a background thread
        (DCP's async_save; its collectives run on that group, beside the training's)."""
        if async_group is None:
            dcp.save(self._state(), checkpoint_id=path)
            return None
        return dcp.async_save(self._state(), checkpoint_id=path, process_group=async_group)

    def load(self, path: Path) -> None:
        state = self._state()
        safe_dcp.load(state, path)  # no pickled object is built from the files; shapes checked first
        # each part takes its own keys from the merged dicts
        options = _OPTIONS if len(self.parts) == 1 else dataclasses.replace(_OPTIONS, strict=False)
        for part, optimizer in zip(self.parts, self.optimizers):
            set_state_dict(part, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                           options=options)

"""Apply parallelism to a plain GLMModel (or one pipeline stage of it) in torchtitan's order: TP ->
activation checkpointing -> compile -> FSDP2 over the ranks that hold the same parameters (dp x cp).
Each step only wraps or re-registers modules; the model code itself is untouched.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from pretrain.parallel.mesh import param_mesh
from pretrain.parallel.tp import apply_tp

logger = logging.getLogger(__name__)


def parallelize(model: nn.Module, mesh: DeviceMesh, *, sequence_parallel: bool, activation_checkpointing: bool,
                compile: bool, param_dtype: torch.dtype, reshard_after_forward: bool) -> nn.Module:
    if mesh["tp"].size() > 1:
        apply_tp(model, mesh["tp"], sequence_parallel)
        logger.info("tensor parallel over %d ranks (sequence parallel: %s)", mesh["tp"].size(), sequence_parallel)
    if activation_checkpointing:
        _wrap_layers(model, checkpoint_wrapper)  # the wrapper's state-dict hooks keep the FQNs unchanged
        logger.info("activation checkpointing on every block")
    if compile:
        _wrap_layers(model, lambda layer: layer.compile() or layer)  # in place, per block
        logger.info("torch.compile per block")
    apply_fsdp(model, param_mesh(mesh), param_dtype, reshard_after_forward)
    return model


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, param_dtype: torch.dtype, reshard_after_forward: bool) -> None:
    """FSDP2 per block, then the root (embeddings, norm, head). Also used at dp=1: it is where the
    mixed-precision cast lives, so there is one code path. Gradients are reduced in fp32 and *summed*
    over dp (and cp) ranks: the loss is already divided by the global count of Part-B tokens."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.layers.values():
        fully_shard(layer, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # The root's parameters are needed again right after forward (the head's backward comes first).
    fully_shard(model, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=False)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def _wrap_layers(model: nn.Module, wrap) -> None:
    for name, layer in list(model.layers.named_children()):
        model.layers.register_module(name, wrap(layer))

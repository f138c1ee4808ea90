"""Materialize a model built on the meta device after it was parallelized: allocate only the local
shards, then run the model's own ``init_weights()`` on them so that the values equal a full
single-process initialization under the same seed, on any mesh layout.

DTensor's own random init cannot promise that: on CPU (no offset-based RNG tracker) every rank draws
its shard from the start of the same local stream, so TP ranks would hold identical heads; on CUDA
the offset-based tracker gives each shard its own slice of the stream, which need not equal the
full build's values. Instead each random
in-place init of a DTensor draws its *full* tensor from the global generator (the same draws, in
the same order, as the full build) and keeps the local slice: one full parameter at a time (the
largest is the embedding table), never the whole model.

The full build draws on the CPU and then moves the model; this draws on the training device. On CPU
the two are bit-identical; on CUDA the values come from the CUDA generator instead, so they differ
from a full build's but are still the same for every (dp, tp) layout and every run with that seed.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.overrides import TorchFunctionMode

# These nn.init functions dispatch on their own before reaching the Tensor methods; the other random
# nn.init helpers (xavier_normal_, trunc_normal_, ...) end in the methods.
_RANDOM_INPLACE = (torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_,
                   torch.Tensor.normal_, torch.Tensor.uniform_)


class _FullDrawThenShard(TorchFunctionMode):
    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # nn.init functions arrive with every argument as a keyword (tensor=...); methods with self first
        target = args[0] if args else kwargs.get("tensor")
        if func in _RANDOM_INPLACE and (isinstance(target, DTensor) or getattr(target, "is_meta", False)):
            full = torch.empty(target.shape, dtype=target.dtype, device=self.device)
            if args:
                func(full, *args[1:], **kwargs)
            else:
                func(**{**kwargs, "tensor": full})
            if not isinstance(target, DTensor):  # meta: another pipeline stage's draws, consumed and dropped
                return target
            local = target.to_local()
            # src_data_rank=None: every rank drew the same full tensor, so each slices locally (no comms)
            shard = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None)
            local.copy_(shard.to_local())
            return target
        return func(*args, **kwargs)


def materialize(model: nn.Module, device: torch.device, seed: int, whole: nn.Module | None = None) -> None:
    """``model`` was built under ``torch.device("meta")`` and parallelized; allocates its local shards on
    ``device`` and initializes them to the values of ``torch.manual_seed(seed); GLMModel(cfg)`` (construction
    draws the modules' default inits, then ``init_weights()``), sliced to this rank's shards.

    ``whole``: when ``model`` is a pipeline stage, the meta model it was cut from. The draws run over the
    whole model's modules in order, the other stages' ones into throwaway tensors on ``device`` (one at a
    time), so that a stage too gets exactly its part of the full build's values.

    The model must hold no buffers that need recomputing (GLMModel computes its RoPE tables in forward).
    """
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise ValueError(f"materialize: buffers {buffers} would be left uninitialized by to_empty; "
                         f"recompute them in the model's init_weights() and drop this check")
    model.to_empty(device=device)
    source = model if whole is None else _within(whole, model)
    torch.manual_seed(seed)
    with torch.no_grad(), _FullDrawThenShard(device):
        # The full build draws each module's default init while constructing it, in module order,
        # before init_weights(): replay those draws so that init_weights() continues the same stream.
        for module in source.modules():
            if hasattr(module, "reset_parameters") and next(module.parameters(recurse=False), None) is not None:
                module.reset_parameters()
        source.init_weights()


def _within(whole: nn.Module, part: nn.Module) -> nn.Module:
    """A shallow copy of ``whole`` holding ``part``'s modules where it has them (the rest stay meta).
    Containers both hold (the layers ModuleDict) are merged child by child; anything else of ``part``
    replaces the whole subtree, so wrapped layers (activation checkpointing, compile) keep their order."""
    merged = copy.copy(whole)
    merged._modules = dict(whole._modules)
    for name, child in whole._modules.items():
        own = part._modules.get(name)
        if own is not None:
            both_containers = isinstance(own, nn.ModuleDict) and isinstance(child, nn.ModuleDict)
            merged._modules[name] = _within(child, own) if both_containers else own
    return merged

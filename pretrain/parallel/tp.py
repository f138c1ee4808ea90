"""Tensor-parallel plan for GLMModel (module names pinned in docs/architecture.md).

Megatron's layout expressed as DTensor styles: vocab-parallel embedding, q/k/v and gate/up split by
output features (heads), o/down split by input features, logits left sharded over the vocabulary
for ``loss_parallel``. With ``sequence_parallel`` the norms and the residual stream between blocks
are split over the sequence instead of replicated (all-reduce becomes reduce-scatter + all-gather).

The head: GLMModel computes ``logits = F.linear(norm(h), W)`` with ``W`` = ``lm_head.weight`` or, when
tied, ``embed_tokens.weight`` (it does not call ``lm_head`` as a module). Both weights are sharded over
the vocabulary (``Shard(0)``), and a hook on the final ``norm`` hands the matmul a replicated DTensor,
so DTensor yields vocab-sharded logits ``Shard(-1)`` for ``loss_parallel``. A tied weight's gradient
gets both contributions on its own shard, with no extra communication.
"""
from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, ParallelStyle, PrepareModuleInput, PrepareModuleOutput,
                                               RowwiseParallel, SequenceParallel, parallelize_module)

_COLWISE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
_ROWWISE = ("self_attn.o_proj", "mlp.down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm")
_POSITION_TABLES = ("position_embeddings", "block_position_embeddings")


def check_tp_divisibility(num_heads: int, num_kv_heads: int, ffn_hidden_size: int, vocab_size: int, seq_len: int,
                          tp: int, sequence_parallel: bool) -> None:
    """Raise ValueError naming the first size that tensor parallelism cannot split evenly."""
    checks = [("model.num_heads", num_heads, ""), ("model.num_kv_heads", num_kv_heads, ""),
              ("model.ffn_hidden_size", ffn_hidden_size, ""), ("model.vocab_size", vocab_size, "")]
    if sequence_parallel:
        checks.append(("train.seq_len", seq_len, " (sequence parallel splits the sequence)"))
    for key, value, why in checks:
        if value % tp:
            raise ValueError(f"{key}={value} is not divisible by parallel.tp={tp}{why}; choose a tp that "
                             f"divides it or change {key}")


def tp_plan(model: nn.Module, sequence_parallel: bool) -> dict[str, ParallelStyle]:
    """Plan keyed by the model's own module paths (only the modules it really has)."""
    seq = Shard(1)  # [B, S, D] activations split over S under sequence parallelism
    between_blocks = seq if sequence_parallel else Replicate()
    names = {name for name, _ in model.named_modules()}
    plan: dict[str, ParallelStyle] = {}
    if "embed_tokens" in names:  # absent on later pipeline stages of an untied model
        plan["embed_tokens"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=between_blocks)
    if sequence_parallel:
        # Learned 2-D positions are added to the token embedding, so they must arrive split over S
        # the same way: treat each table like a (small) vocab-parallel embedding.
        for table in _POSITION_TABLES:
            if table in names:
                plan[table] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    for layer in _layer_names(model):
        if sequence_parallel:
            # Gather the sequence once per sub-block (attention reads S from its input's shape).
            # Attention.forward(x, attend, rotary), MLP.forward(x): only x is a sharded tensor.
            plan[f"{layer}.self_attn"] = PrepareModuleInput(
                input_layouts=(seq, None, None), desired_input_layouts=(Replicate(), None, None),
                use_local_output=True)
            plan[f"{layer}.mlp"] = PrepareModuleInput(
                input_layouts=(seq,), desired_input_layouts=(Replicate(),), use_local_output=True)
        for sub in _COLWISE:
            if f"{layer}.{sub}" in names:
                plan[f"{layer}.{sub}"] = ColwiseParallel()
        for sub in _ROWWISE:
            plan[f"{layer}.{sub}"] = RowwiseParallel(output_layouts=between_blocks)
        if sequence_parallel:
            for sub in _NORMS:  # local outputs: deepnorm adds the norm output to a local residual
                plan[f"{layer}.{sub}"] = SequenceParallel(use_local_output=True)
    if sequence_parallel and "norm" in names:
        plan["norm"] = SequenceParallel(use_local_output=True)
    if "lm_head" in names:
        plan["lm_head"] = ColwiseParallel()  # only shards the weight; the module itself is never called
    return plan


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """The plan for the modules the model (or pipeline stage: embed_tokens / norm may be absent) has."""
    parallelize_module(model, tp_mesh, tp_plan(model, sequence_parallel))
    if model.norm is not None:  # the head matmul needs a replicated DTensor input (see module docstring)
        parallelize_module(model.norm, tp_mesh, PrepareModuleOutput(
            output_layouts=Shard(1) if sequence_parallel else Replicate(),
            desired_output_layouts=Replicate(), use_local_output=False))


def _layer_names(model: nn.Module) -> list[str]:
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleDict):  # may be empty on a pipeline stage holding only the head
        raise ValueError("the model has no `layers` ModuleDict; the TP plan follows the names in "
                         "docs/architecture.md")
    return [f"layers.{name}" for name, _ in layers.named_children()]

"""Pipeline parallelism with ``torch.distributed.pipelining``: the layers split into stages, one per
pipeline rank (or ``pp_virtual_stages`` of them, looped: stage s on pp rank s mod pp), run by PyTorch's
own schedules (GPipe, 1F1B, interleaved 1F1B).

Stages are pruned copies of the plain GLMModel (torchtitan's approach; the model knows nothing of
this): a stage keeps its layers, the first also the embeddings, the last the final norm and the head.
Each stage is then parallelized (TP, AC, compile, FSDP) like a whole model.

Batch fields: the first stage takes input_ids positionally, every stage takes the positions, segments
and part_a as keyword arguments (the schedule chunks them by rows and passes them to each stage: the
mask and RoPE are needed everywhere), and the last stage's loss function receives each micro-batch's
index as its target, from which the caller reads target_ids, loss_mask and strategy_ids. A model
``output_head`` (the trainer's chunked loss) travels the same way, split by rows: the last stage returns
what it returns instead of logits.

Tied head (GLM-1, GLM-130B), Megatron's solution: the last stage keeps its own copy of embed_tokens
(same FQN, same initial values) for the head, the first stage the embedding; after backward the two
gradients are summed over the embedding group (first and last pp rank of each (dp, cp, tp) coordinate),
so both copies get the same update and stay equal. The gradient norm counts the copy once, and DCP
writes the shared FQN once, so a checkpoint reshards to any pp size (pp=1 included).
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (PipelineScheduleSingle, Schedule1F1B, ScheduleGPipe,
                                                    ScheduleInterleaved1F1B)
from torch.distributed.tensor import DTensor

from pretrain.parallel.config import ParallelConfig

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved_1f1b": ScheduleInterleaved1F1B}
MODEL_KWARGS = ("position_ids", "block_position_ids", "segment_ids", "part_a")  # every stage's inputs


def layers_per_stage(num_layers: int, num_stages: int) -> list[int]:
    """Balanced layer counts with the embedding and the head each weighted as one layer; the remainder
    goes to the middle stages first. GLM-130B's 70 layers on 8 stages: [8, 9, 9, 9, 9, 9, 9, 8]."""
    base, extra = divmod(num_layers + 2, num_stages)
    units = [base] * num_stages
    for stage in [*range(1, num_stages - 1), num_stages - 1, 0][:extra]:
        units[stage] += 1
    units[0] -= 1
    units[-1] -= 1
    if min(units) < 1:
        raise ValueError(f"{num_layers} layers cannot give each of {num_stages} pipeline stages a layer with the "
                         f"embedding and the head weighted as one layer each (split {units}); set "
                         f"parallel.pp_layers_per_stage or use fewer stages")
    return units


def stage_layer_counts(parallel: ParallelConfig, num_layers: int) -> list[int]:
    counts = parallel.pp_layers_per_stage or layers_per_stage(num_layers, parallel.pp_stages)
    if sum(counts) != num_layers:
        raise ValueError(f"parallel.pp_layers_per_stage={counts} holds {sum(counts)} layers; the model has "
                         f"num_layers={num_layers}")
    return counts


def check_pipeline(parallel: ParallelConfig, num_layers: int, accumulation_steps: int) -> None:
    """Raise ValueError naming what to change when the layers or the micro-batches do not fit the pipeline."""
    if parallel.pp == 1:
        return
    stage_layer_counts(parallel, num_layers)
    microbatches = parallel.pp_microbatches or accumulation_steps
    if accumulation_steps % microbatches:
        raise ValueError(f"parallel.pp_microbatches={microbatches} does not divide the {accumulation_steps} "
                         f"micro-batches of a step per rank (global_batch_size / (micro_batch_size x dp)); "
                         f"choose a divisor of {accumulation_steps}")
    rounds = max(1, microbatches // parallel.pp)
    if parallel.pp_virtual_stages > 1 and microbatches % rounds:
        raise ValueError(f"parallel.pp_schedule={parallel.pp_schedule} runs micro-batches in rounds: "
                         f"{microbatches} per schedule run is not a multiple of {rounds} rounds of pp={parallel.pp}; "
                         f"make parallel.pp_microbatches a multiple of {parallel.pp}")


def pipeline_parts(model: nn.Module, parallel: ParallelConfig, pp_rank: int) -> tuple[list[nn.Module], list[int]]:
    """This pp rank's stage modules and their stage indices."""
    indices = stage_indices(pp_rank, parallel.pp, parallel.pp_virtual_stages)
    counts = stage_layer_counts(parallel, len(model.layers))
    return [stage_module(model, index, counts) for index in indices], indices


def stage_indices(pp_rank: int, pp: int, virtual_stages: int) -> list[int]:
    """Looped placement: pp rank r holds stages r, r + pp, r + 2·pp, ..."""
    return list(range(pp_rank, pp * virtual_stages, pp))


def stage_module(model: nn.Module, stage: int, counts: list[int]) -> nn.Module:
    """A copy of ``model`` with only stage ``stage``'s parts (the dropped modules are never copied)."""
    first_layer = sum(counts[:stage])
    is_first, is_last = stage == 0, stage == len(counts) - 1
    dropped = [layer for name, layer in model.layers.items()
               if not first_layer <= int(name) < first_layer + counts[stage]]
    if not is_first:
        dropped += [getattr(model, table, None) for table in ("position_embeddings", "block_position_embeddings")]
        if not (is_last and model.lm_head is None):  # a tied head keeps the embedding for the logits
            dropped.append(model.embed_tokens)
    if not is_last:
        dropped += [model.norm, model.lm_head]
    part = copy.deepcopy(model, memo={id(module): None for module in dropped if module is not None})
    for name in [name for name, layer in part.layers.items() if layer is None]:
        del part.layers[name]
    return part


class Pipeline:
    """This rank's stages, the schedule that runs them, and the tied-embedding gradient sum."""

    def __init__(self, parts: list[nn.Module], indices: list[int], num_stages: int, mesh: DeviceMesh,
                 schedule: str, microbatches: int, device: torch.device, tied: bool):
        self.parts, self.microbatches = parts, microbatches
        pp_group = mesh["pp"].get_group()
        self.stages = [PipelineStage(part, index, num_stages, device, group=pp_group)
                       for part, index in zip(parts, indices)]
        self.has_first = any(stage.is_first for stage in self.stages)
        self.has_last = any(stage.is_last for stage in self.stages)
        self._loss = None
        kind = SCHEDULES[schedule]
        self.schedule = kind(self.stages[0] if issubclass(kind, PipelineScheduleSingle) else self.stages,
                             n_microbatches=microbatches, loss_fn=self._stage_loss, scale_grads=False)
        # Tied copies of embed_tokens on this rank: the first stage's (counted in the norm) and the last's.
        self.tied_copies = [part.embed_tokens.weight for part in parts if tied and part.embed_tokens is not None]
        self.uncounted = [part.embed_tokens.weight for part, stage in zip(parts, self.stages)
                          if tied and part.embed_tokens is not None and not stage.is_first]
        self.embedding_group = _embedding_group(mesh) if tied else None

    def _stage_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._loss(logits, int(target[0]))

    def run(self, micro: list[dict[str, torch.Tensor]], loss_fn, backward: bool, heads: list | None = None) -> None:
        """Forward (and backward) of every micro-batch in ``micro``, ``microbatches`` per schedule run.
        On the last stage ``loss_fn(output, i)`` returns micro-batch i's scalar to backpropagate, where
        ``output`` is the logits or, given ``heads`` (one model ``output_head`` per micro-batch: a pytree
        whose tensors have the rows first, which the schedule splits like the batch), what micro-batch i's
        head returned. The schedule's first run also calls it once to infer shapes, so it must be
        idempotent per ``i``."""
        for part in self.parts:
            part.train(backward)
        run = self.schedule.step if backward else self.schedule.eval
        for start in range(0, len(micro), self.microbatches):
            group = micro[start:start + self.microbatches]
            self._loss = lambda output, i, start=start: loss_fn(output, start + i)
            inputs = {key: torch.cat([batch[key] for batch in group]) for key in ("input_ids", *MODEL_KWARGS)}
            if heads is not None:
                inputs["output_head"] = _concatenate(heads[start:start + self.microbatches])
            rows = group[0]["input_ids"].shape[0]
            target = torch.arange(len(group)).repeat_interleave(rows) if self.has_last else None
            input_ids = inputs.pop("input_ids")
            args = (input_ids,) if self.has_first else ()
            run(*args, target=target, return_outputs=False, **inputs)
        self._loss = None

    @torch.no_grad()
    def reduce_tied_gradients(self) -> None:
        """Sum the embedding and head gradients of a tied model over the embedding group (every copy gets it)."""
        grads = [_local(param.grad) for param in self.tied_copies if param.grad is not None]
        if self.embedding_group is None or not grads:  # untied, or a middle stage (not in the group)
            return
        total = torch.stack(grads).sum(0)
        dist.all_reduce(total, group=self.embedding_group)
        for grad in grads:
            grad.copy_(total)


def _concatenate(trees: list):
    """One pytree of the same structure whose tensors are those of ``trees`` concatenated along rows."""
    leaves, spec = zip(*(pytree.tree_flatten(tree) for tree in trees))
    return pytree.tree_unflatten([torch.cat(column) if isinstance(column[0], torch.Tensor) else column[0]
                                  for column in zip(*leaves)], spec[0])


def _embedding_group(mesh: DeviceMesh) -> dist.ProcessGroup | None:
    """For each (dp, cp, tp) coordinate, its first and last pp rank; collective (every rank calls it)."""
    ranks = mesh.mesh  # [pp, dp, cp, tp] global ranks
    pairs = torch.stack([ranks[0], ranks[-1]]).flatten(1).T.tolist()
    group, _ = dist.new_subgroups_by_enumeration(pairs)
    return group


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


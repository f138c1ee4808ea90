"""A dry run of a config's first-step setup for a cluster this machine is not: every rank's view of the
world from rank 0, with no GPU and no weights.

On a fake process group of ``gpus`` ranks (torch.testing's FakeStore backend: collectives return at
once, as torchtitan's dry runs do), the trainer's own steps run as they would on rank 0: the
topology checks, the device mesh, the model built on the meta device, parallelized by the engine
(TP plan, activation checkpointing, FSDP2) and its optimizer. Nothing is allocated; what comes out is
what rank 0 would hold, to set against the planner's prediction. Data is not opened (the model's
vocabulary must be known: the section's or its preset's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from pretrain.config import ConfigError
from pretrain.parallel.mesh import build_mesh
from pretrain.train.config import Config
from pretrain.train.setup import build_engine, resolve_dtype, validate_topology


@dataclass
class DryRun:
    mesh_shape: dict[str, int]
    local_params: int  # parameters rank 0 holds (its shards)
    total_params: int  # of the whole model
    engine: str


def planning_model(cfg: Config):
    """The run's ModelConfig without a tokenizer: the section's vocab_size, else its preset's."""
    from pretrain.model.presets import PRESETS
    section = cfg.model
    if "vocab_size" in section.fields:
        return section.resolve(vocab_size=section.fields["vocab_size"])
    if section.preset is None:
        raise ConfigError("model.vocab_size is unset and there is no preset to take it from; set model.vocab_size "
                          "to plan without the tokenizer")
    return section.resolve(vocab_size=PRESETS[section.preset].vocab_size)


def dry_run(cfg: Config, gpus: int) -> DryRun:
    """Rank 0's setup of ``cfg`` on ``gpus`` ranks (see the module docstring). Joins and leaves a fake
    process group: call it where no other process group is initialized."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from pretrain.model.glm import GLMModel
    if cfg.parallel.engine != "torch":
        raise ConfigError(f"the dry run builds the torch engine; parallel.engine={cfg.parallel.engine!r} takes a "
                          f"materialized model")
    dims = validate_topology(cfg, gpus)
    model_cfg = planning_model(cfg)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=gpus)
    try:
        mesh = build_mesh("cpu", dims)
        with torch.device("meta"):
            model = GLMModel(model_cfg)
        total = model.num_params()
        # the engine as the trainer builds it, minus allocation: the model stays on the meta device
        unallocated = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_device="full"))
        accumulation = cfg.train.global_batch_size // (cfg.train.micro_batch_size * dims.dp)
        engine = build_engine(unallocated, model, mesh, dims, accumulation,
                              resolve_dtype(cfg.train.dtype, torch.device("cuda")), torch.device("meta"))
        modules = engine.parts  # rank 0's model, or its pipeline stages
        local = sum((p.to_local() if isinstance(p, DTensor) else p).numel()
                    for module in modules for p in module.parameters())
        return DryRun(mesh_shape=dict(zip(mesh.mesh_dim_names, mesh.shape)), local_params=local,
                      total_params=total, engine=engine.name)
    finally:
        dist.destroy_process_group()
